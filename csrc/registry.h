// Which ops have a REAL hand-written kernel, per device, plus build facts.
//
// Each csrc/cpu/<op>.cpp defines `bool pygpt::cpu_<op>_is_kernel()`; it returns
// false while the file is a composite-ATen placeholder. Each csrc/cuda/<op>_cuda.cu
// defines `bool pygpt::cuda_<op>_is_kernel()` the same way (CUDA builds only).
//
// No Python in here: this is part of the plain `pygpt_ops` library.
#pragma once

#include <string>
#include <vector>

namespace pygpt {

bool cpu_attention_is_kernel();
bool cpu_layer_norm_is_kernel();
bool cpu_gelu_mlp_is_kernel();

#ifdef PYGPT_WITH_CUDA
bool cuda_attention_is_kernel();
bool cuda_layer_norm_is_kernel();
bool cuda_gelu_mlp_is_kernel();
#endif

struct BuildInfo {
  bool cuda = false;
  std::string cuda_version;             // "13.0"; empty when !cuda
  std::vector<std::string> cuda_archs;  // {"sm_80", "sm_90"}
  bool cublaslt = false;                // gelu_mlp's cuBLASLt path was built
  std::string compiler;                 // "GCC 12.2.0"
  std::string torch;                    // torch version built against
  std::vector<std::string> cpu_kernels;   // ops with a real CPU kernel
  std::vector<std::string> cuda_kernels;  // ops with a real CUDA kernel
};

BuildInfo build_info();

#ifdef PYGPT_WITH_CUDA
// Defined in csrc/cuda/build_info_cuda.cu (compiled by nvcc).
std::vector<int> cuda_compiled_archs();  // e.g. {800, 900}
int cuda_runtime_version();               // CUDART_VERSION, e.g. 13000
#endif

}  // namespace pygpt
