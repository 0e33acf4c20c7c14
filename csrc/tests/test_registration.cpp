// CTest: the pygpt op library registers every schema and a CPU kernel for
// each, and one op (layer_norm_fwd) computes the same thing as at::layer_norm.
// Linked against pygpt_ops (CMake, --no-as-needed); no Python involved.
#include "registry.h"

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdio>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace {

int failures = 0;

void expect(bool ok, const std::string& what) {
  std::printf("[%s] %s\n", ok ? " OK " : "FAIL", what.c_str());
  if (!ok) ++failures;
}

}  // namespace

int main() {
  const std::vector<std::string> ops = {"attention_fwd",  "attention_bwd", "layer_norm_fwd",
                                        "layer_norm_bwd", "gelu_mlp_fwd",  "gelu_mlp_bwd"};
  auto& dispatcher = c10::Dispatcher::singleton();
  for (const auto& op : ops) {
    const std::string name = "pygpt::" + op;
    auto handle = dispatcher.findSchema({name.c_str(), ""});
    expect(handle.has_value(), "schema registered: " + name);
    if (handle.has_value()) {
      expect(handle->hasKernelForDispatchKey(c10::DispatchKey::CPU),
             "CPU kernel registered: " + name);
    }
  }

  // Call layer_norm_fwd through the dispatcher and compare with at::layer_norm.
  using LNFwd = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
      const at::Tensor&, const std::optional<at::Tensor>&, const at::Tensor&,
      const std::optional<at::Tensor>&, double);
  auto ln = dispatcher.findSchemaOrThrow("pygpt::layer_norm_fwd", "").typed<LNFwd>();
  at::manual_seed(0);
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  const at::Tensor x = at::randn({2, 3, 8}, opts);
  const at::Tensor r = at::randn({2, 3, 8}, opts);
  const at::Tensor w = at::randn({8}, opts);
  const at::Tensor b = at::randn({8}, opts);
  const double eps = 1e-5;

  auto [y, h, mean, rstd] = ln.call(x, std::nullopt, w, b, eps);
  expect(at::allclose(y, at::layer_norm(x, {8}, w, b, eps)), "layer_norm_fwd == at::layer_norm");
  expect(h.numel() == 0, "layer_norm_fwd without residual returns empty h");
  expect(mean.sizes() == at::IntArrayRef({6}) && rstd.sizes() == at::IntArrayRef({6}),
         "layer_norm_fwd mean/rstd have shape (N,)");

  auto [y2, h2, mean2, rstd2] = ln.call(x, r, w, b, eps);
  expect(at::allclose(h2, x + r), "layer_norm_fwd with residual returns h = x + residual");
  expect(at::allclose(y2, at::layer_norm(x + r, {8}, w, b, eps)),
         "layer_norm_fwd(x, residual) == at::layer_norm(x + residual)");

  bool threw = false;
  try {
    ln.call(x, std::nullopt, at::randn({7}, opts), b, eps);
  } catch (const c10::Error& e) {
    threw = std::string(e.what()).find("weight") != std::string::npos;
  }
  expect(threw, "layer_norm_fwd rejects a weight of the wrong shape, naming it");

  const pygpt::BuildInfo info = pygpt::build_info();
  std::printf("build_info: cuda=%d torch=%s compiler=%s cpu_kernels=%zu\n", info.cuda ? 1 : 0,
              info.torch.c_str(), info.compiler.c_str(), info.cpu_kernels.size());
  expect(!info.torch.empty() && !info.compiler.empty(), "build_info has torch and compiler");

  if (failures) {
    std::printf("%d check(s) failed\n", failures);
    return 1;
  }
  std::printf("all checks passed\n");
  return 0;
}
