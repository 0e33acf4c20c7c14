// Every attention kernel the launcher (csrc/cuda/attention_cuda.cu) can launch, instantiated
// explicitly and without torch headers, so tests/test_cuda_build.py can compile this file alone
// (nvcc -cubin -Xptxas -v, sm_80 / sm_90) and check spills and HMMA instructions in seconds.
// The (dtype, head dim) lists are PYGPT_ATTENTION_FOR_EACH_VARIANT (every kernel) and
// PYGPT_ATTENTION_FOR_EACH_FWD128_VARIANT (the 128-row forward), the ones the launcher dispatches on.
#include "../../kernels/attention.cuh"

namespace pygpt {
namespace attn {

#define PYGPT_ATTENTION_INSTANTIATE(T, D)                                      \
  template __global__ void attention_fwd_kernel<T, D>(const FwdParams);        \
  template __global__ void attention_bwd_dkdv_kernel<T, D>(const BwdParams);   \
  template __global__ void attention_bwd_dq_kernel<T, D>(const BwdParams);

PYGPT_ATTENTION_FOR_EACH_VARIANT(PYGPT_ATTENTION_INSTANTIATE)
#undef PYGPT_ATTENTION_INSTANTIATE

// the 128-query-row forward version (PYGPT_ATTN_FWD_ROWS=128 / auto at kD = 64, 128)
#define PYGPT_ATTENTION_INSTANTIATE_FWD128(T, D) \
  template __global__ void attention_fwd_kernel<T, D, 128>(const FwdParams);

PYGPT_ATTENTION_FOR_EACH_FWD128_VARIANT(PYGPT_ATTENTION_INSTANTIATE_FWD128)
#undef PYGPT_ATTENTION_INSTANTIATE_FWD128

template __global__ void attention_bwd_delta_kernel<__half>(const DeltaParams);
template __global__ void attention_bwd_delta_kernel<__nv_bfloat16>(const DeltaParams);

}  // namespace attn
}  // namespace pygpt
