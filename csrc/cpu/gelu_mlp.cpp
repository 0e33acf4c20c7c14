// ===========================================================================
// PLACEHOLDER: composite-ATen reference implementation of pygpt.gelu_mlp
// (Linear -> GELU -> Linear) on CPU via at::linear / at::gelu /
// at::gelu_backward. It is correct but NOT a hand-written kernel: a later
// issue replaces this file with the real CPU kernel (blocked GEMM with the
// bias + GELU fused into the epilogue) and flips cpu_gelu_mlp_is_kernel().
// ===========================================================================
//
// Semantics (must match the fake functions registered in Python):
//   weights in nn.Linear layout: w_fc (Hd, C), w_proj (C, Hd); x (..., C)
//   pre = x @ w_fc.T + b_fc            (..., Hd), x's dtype
//   out = gelu(pre, approximate) @ w_proj.T + b_proj   (..., C)
//   approximate in {"tanh", "none"}
//   Backward returns grads of x, w_fc, b_fc (Hd,), w_proj, b_proj (C,).
#include "../checks.h"
#include "../registry.h"

#include <torch/library.h>

#include <optional>
#include <tuple>

namespace pygpt {

// Flip to true when this file holds a real hand-written kernel.
bool cpu_gelu_mlp_is_kernel() { return false; }

namespace {

std::tuple<at::Tensor, at::Tensor> gelu_mlp_fwd_cpu(const at::Tensor& x, const at::Tensor& w_fc,
                                                    const std::optional<at::Tensor>& b_fc,
                                                    const at::Tensor& w_proj,
                                                    const std::optional<at::Tensor>& b_proj,
                                                    c10::string_view approximate) {
  checks::check_gelu_mlp_fwd_inputs(x, w_fc, b_fc, w_proj, b_proj, approximate);
  at::Tensor pre = at::linear(x, w_fc, b_fc).contiguous();
  at::Tensor out = at::linear(at::gelu(pre, approximate), w_proj, b_proj).contiguous();
  return {out, pre};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gelu_mlp_bwd_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& pre,
    const at::Tensor& w_fc, const at::Tensor& w_proj, c10::string_view approximate) {
  checks::check_gelu_mlp_bwd_inputs(grad_out, x, pre, w_fc, w_proj, approximate);
  const int64_t C = x.size(-1);
  const int64_t Hd = w_fc.size(0);
  const at::Tensor x2 = x.reshape({-1, C});
  const at::Tensor go2 = grad_out.reshape({-1, C});
  const at::Tensor pre2 = pre.reshape({-1, Hd});
  const at::Tensor act2 = at::gelu(pre2, approximate);

  at::Tensor grad_w_proj = go2.t().mm(act2);
  at::Tensor grad_b_proj = go2.sum({0});
  const at::Tensor grad_act = go2.mm(w_proj);
  const at::Tensor grad_pre = at::gelu_backward(grad_act, pre2, approximate);
  at::Tensor grad_w_fc = grad_pre.t().mm(x2);
  at::Tensor grad_b_fc = grad_pre.sum({0});
  at::Tensor grad_x = grad_pre.mm(w_fc).reshape(x.sizes());
  return {grad_x.contiguous(), grad_w_fc.contiguous(), grad_b_fc, grad_w_proj.contiguous(),
          grad_b_proj};
}

}  // namespace
}  // namespace pygpt

TORCH_LIBRARY_IMPL(pygpt, CPU, m) {
  m.impl("gelu_mlp_fwd", &pygpt::gelu_mlp_fwd_cpu);
  m.impl("gelu_mlp_bwd", &pygpt::gelu_mlp_bwd_cpu);
}
