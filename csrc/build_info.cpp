// pygpt::build_info(): what this build of the op library contains.
#include "registry.h"

#include <torch/version.h>

#include <string>
#include <vector>

#define PYGPT_STR2(...) #__VA_ARGS__
#define PYGPT_STR(...) PYGPT_STR2(__VA_ARGS__)

namespace pygpt {
namespace {

std::string compiler_string() {
#if defined(__clang__)
  return std::string("Clang ") + __clang_version__;
#elif defined(__GNUC__)
  return std::string("GCC ") + __VERSION__;
#else
  return "unknown";
#endif
}

std::string torch_version_string() {
#ifdef PYGPT_TORCH_VERSION
  // Full version string (e.g. "2.14.1+cu130"), passed by setup.py / CMake.
  return PYGPT_STR(PYGPT_TORCH_VERSION);
#else
  return std::to_string(TORCH_VERSION_MAJOR) + "." +
         std::to_string(TORCH_VERSION_MINOR) + "." +
         std::to_string(TORCH_VERSION_PATCH);
#endif
}

}  // namespace

BuildInfo build_info() {
  BuildInfo info;
  info.compiler = compiler_string();
  info.torch = torch_version_string();

  // --- CPU: one line per op; flips to a real kernel in the op's own file. --
  if (cpu_attention_is_kernel()) info.cpu_kernels.emplace_back("attention");
  if (cpu_layer_norm_is_kernel()) info.cpu_kernels.emplace_back("layer_norm");
  if (cpu_gelu_mlp_is_kernel()) info.cpu_kernels.emplace_back("gelu_mlp");

#ifdef PYGPT_WITH_CUDA
  info.cuda = true;
  const int v = cuda_runtime_version();  // e.g. 13000 -> "13.0"
  info.cuda_version = std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10);
  for (int arch : cuda_compiled_archs()) {
    info.cuda_archs.push_back("sm_" + std::to_string(arch / 10));
  }
#ifdef PYGPT_WITH_CUBLASLT
  info.cublaslt = true;
#endif
  // --- CUDA: one line per op, defined in csrc/cuda/<op>_cuda.cu. --------
  if (cuda_attention_is_kernel()) info.cuda_kernels.emplace_back("attention");
  if (cuda_layer_norm_is_kernel()) info.cuda_kernels.emplace_back("layer_norm");
  if (cuda_gelu_mlp_is_kernel()) info.cuda_kernels.emplace_back("gelu_mlp");
#endif
  return info;
}

}  // namespace pygpt
