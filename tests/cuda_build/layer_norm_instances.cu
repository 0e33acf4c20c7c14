// Torch-free build check of kernels/layer_norm.cuh: explicitly instantiates every kernel
// template variant that csrc/cuda/layer_norm_cuda.cu can launch (and the host launch helpers
// that pick among them), so CI can compile this file alone, e.g. (one command line):
//   nvcc -std=c++17 -O3 -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__
//        -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__ --expt-relaxed-constexpr
//        -gencode=arch=compute_80,code=sm_80 -Xptxas -v -cubin layer_norm_instances.cu
// and check ptxas' "0 bytes spill stores, 0 bytes spill loads" for each kernel.
//
// Variants (keep in sync with the dispatch in launch_layer_norm_fwd / plan_layer_norm_bwd):
//   fwd warp  <T, kE>: float, half, bf16: kE = 8, 16, 32, 64; double: kE = 8, 16
//   fwd block <T>:     all four T
//   bwd warp  <T, kE>: float, half, bf16: kE = 8, 16, 32;     double: kE = 8, 16
//   bwd block <T, kE>: float, half, bf16: kE = 16;  double: kE = 8  (LnTraits<T>::kMaxBlockBwdE)
//   bwd block-wide <T>: all four T
//   bwd reduce <A>:    float, double
#include "../../kernels/layer_norm.cuh"

namespace pygpt {
namespace ln {

#define PYGPT_LN_FWD_WARP(T, E) template __global__ void layer_norm_fwd_warp_kernel<T, E>(const LnFwdParams<T>);
#define PYGPT_LN_BWD_WARP(T, E) template __global__ void layer_norm_bwd_warp_kernel<T, E>(const LnBwdParams<T>);
#define PYGPT_LN_ALL(T)                                                                       \
  template __global__ void layer_norm_fwd_block_kernel<T>(const LnFwdParams<T>, const bool); \
  template __global__ void layer_norm_bwd_block_wide_kernel<T>(const LnBwdParams<T>);         \
  template __global__ void layer_norm_bwd_block_kernel<T, LnTraits<T>::kMaxBlockBwdE>(         \
      const LnBwdParams<T>);                                                                  \
  template void launch_layer_norm_fwd<T>(LnFwdParams<T>, int, cudaStream_t);                  \
  template cudaError_t plan_layer_norm_bwd<T>(int64_t, int, int, LnBwdPlan*);                 \
  template void launch_layer_norm_bwd_rows<T>(LnBwdParams<T>, const LnBwdPlan&, cudaStream_t);

PYGPT_LN_ALL(float)
PYGPT_LN_ALL(__half)
PYGPT_LN_ALL(__nv_bfloat16)
PYGPT_LN_ALL(double)

PYGPT_LN_FWD_WARP(float, 8)
PYGPT_LN_FWD_WARP(float, 16)
PYGPT_LN_FWD_WARP(float, 32)
PYGPT_LN_FWD_WARP(float, 64)
PYGPT_LN_FWD_WARP(__half, 8)
PYGPT_LN_FWD_WARP(__half, 16)
PYGPT_LN_FWD_WARP(__half, 32)
PYGPT_LN_FWD_WARP(__half, 64)
PYGPT_LN_FWD_WARP(__nv_bfloat16, 8)
PYGPT_LN_FWD_WARP(__nv_bfloat16, 16)
PYGPT_LN_FWD_WARP(__nv_bfloat16, 32)
PYGPT_LN_FWD_WARP(__nv_bfloat16, 64)
PYGPT_LN_FWD_WARP(double, 8)
PYGPT_LN_FWD_WARP(double, 16)

PYGPT_LN_BWD_WARP(float, 8)
PYGPT_LN_BWD_WARP(float, 16)
PYGPT_LN_BWD_WARP(float, 32)
PYGPT_LN_BWD_WARP(__half, 8)
PYGPT_LN_BWD_WARP(__half, 16)
PYGPT_LN_BWD_WARP(__half, 32)
PYGPT_LN_BWD_WARP(__nv_bfloat16, 8)
PYGPT_LN_BWD_WARP(__nv_bfloat16, 16)
PYGPT_LN_BWD_WARP(__nv_bfloat16, 32)
PYGPT_LN_BWD_WARP(double, 8)
PYGPT_LN_BWD_WARP(double, 16)

template __global__ void layer_norm_bwd_reduce_kernel<float>(const float*, int, int, float*, float*);
template __global__ void layer_norm_bwd_reduce_kernel<double>(const double*, int, int, double*,
                                                              double*);
template void launch_layer_norm_bwd_reduce<float>(const float*, int, int, float*, float*,
                                                  cudaStream_t);
template void launch_layer_norm_bwd_reduce<double>(const double*, int, int, double*, double*,
                                                   cudaStream_t);

#undef PYGPT_LN_ALL
#undef PYGPT_LN_BWD_WARP
#undef PYGPT_LN_FWD_WARP

}  // namespace ln
}  // namespace pygpt
