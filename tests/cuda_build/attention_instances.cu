// Every attention kernel the launcher (csrc/cuda/attention_cuda.cu) can launch, instantiated
// explicitly and without torch headers, so tests/test_cuda_build.py can compile this file alone
// (nvcc -cubin -Xptxas -v, sm_80 / sm_90) and check spills and HMMA instructions in seconds.
// The (dtype, head dim) list is PYGPT_ATTENTION_FOR_EACH_VARIANT, the one the launcher dispatches on.
#include "../../kernels/attention.cuh"

namespace pygpt {
namespace attn {

#define PYGPT_ATTENTION_INSTANTIATE(T, D)                                      \
  template __global__ void attention_fwd_kernel<T, D>(const FwdParams);        \
  template __global__ void attention_bwd_dkdv_kernel<T, D>(const BwdParams);   \
  template __global__ void attention_bwd_dq_kernel<T, D>(const BwdParams);

PYGPT_ATTENTION_FOR_EACH_VARIANT(PYGPT_ATTENTION_INSTANTIATE)
#undef PYGPT_ATTENTION_INSTANTIATE

template __global__ void attention_bwd_delta_kernel<__half>(const DeltaParams);
template __global__ void attention_bwd_delta_kernel<__nv_bfloat16>(const DeltaParams);

}  // namespace attn
}  // namespace pygpt
