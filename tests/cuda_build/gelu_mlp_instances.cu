// Every hand-written gelu_mlp CUDA kernel variant that csrc/cuda/gelu_mlp_cuda.cu can launch,
// explicitly instantiated from kernels/gelu_mlp.cuh WITHOUT torch headers, so CI can compile this
// file alone, fast, and check the kernels' resources and SASS:
//
//   nvcc -std=c++17 -O3 --expt-relaxed-constexpr -D__CUDA_NO_HALF_OPERATORS__
//        -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__
//        -D__CUDA_NO_HALF2_OPERATORS__ -gencode=arch=compute_80,code=sm_80 -Xptxas -v
//        -cubin tests/cuda_build/gelu_mlp_instances.cu -o mlp80.cubin      (one command line)
//   cuobjdump --dump-sass mlp80.cubin | grep -c HMMA      (> 0: the GEMMs use the tensor cores)
//
// Expected: 12 GEMM kernels (6 variants x {fp16, bf16}, among them the split-K partial GEMM
// <M,N,Partial> of the weight gradients) with 0 bytes spill stores/loads on sm_80 and sm_90, plus
// 2 split-K reduction kernels and 6 + 4 elementwise kernels. The cuBLASLt path is not compiled here.
// (The split-K reduction's name contains "splitk_reduce", not "gemm": it has no HMMA to check.)
#include "../../kernels/gelu_mlp.cuh"

#define PYGPT_INST_GEMM(T, AK, BK, EPI) \
  template __global__ void pygpt::mlp_kernels::mlp_gemm_kernel<T, AK, BK, EPI>(const pygpt::mlp_kernels::MlpGemmParams);
#define PYGPT_INST_SPLITK_REDUCE(T)                                                                    \
  template __global__ void pygpt::mlp_kernels::mlp_splitk_reduce_kernel<T>(                            \
      const float* __restrict__, int, int64_t, int64_t, const T*, T* __restrict__, int64_t);
#define PYGPT_INST_BIAS_GELU(TIN, TPRE, TACT)                                                          \
  template __global__ void pygpt::mlp_kernels::mlp_bias_gelu_kernel<TIN, TPRE, TACT>(                  \
      const TIN*, const TIN*, TPRE*, TACT* __restrict__, int64_t, int64_t, int);
#define PYGPT_INST_DGELU(TPRE, ACC)                                                                    \
  template __global__ void pygpt::mlp_kernels::mlp_dgelu_kernel<TPRE, ACC>(                            \
      ACC* __restrict__, const TPRE* __restrict__, ACC* __restrict__, int64_t, int64_t, int);

PYGPT_GELU_MLP_GEMM_VARIANTS(PYGPT_INST_GEMM, __half)
PYGPT_GELU_MLP_GEMM_VARIANTS(PYGPT_INST_GEMM, __nv_bfloat16)
PYGPT_GELU_MLP_SPLITK_REDUCE_VARIANTS(PYGPT_INST_SPLITK_REDUCE)
PYGPT_GELU_MLP_BIAS_GELU_VARIANTS(PYGPT_INST_BIAS_GELU)
PYGPT_GELU_MLP_DGELU_VARIANTS(PYGPT_INST_DGELU)
