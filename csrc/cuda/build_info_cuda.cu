// CUDA build facts for pygpt::build_info(), compiled by nvcc.
//
// nvcc (CUDA >= 11.5) defines __CUDA_ARCH_LIST__ on the host pass as the
// comma-separated list of virtual architectures it compiles for, e.g.
// "800,900" for TORCH_CUDA_ARCH_LIST="8.0;9.0".
//
// No CUDA op kernels live here; a later issue adds csrc/cuda/<op>_cuda.cu
// (with TORCH_LIBRARY_IMPL(pygpt, CUDA, m)) and kernels/<op>.cuh.
#include "../registry.h"

#include <cuda_runtime_api.h>

#include <vector>

namespace pygpt {

std::vector<int> cuda_compiled_archs() {
#ifdef __CUDA_ARCH_LIST__
  return std::vector<int>{__CUDA_ARCH_LIST__};
#else
  return {};  // nvcc older than 11.5: list unknown
#endif
}

int cuda_runtime_version() { return CUDART_VERSION; }

}  // namespace pygpt
