// ===========================================================================
// pygpt.attention on CUDA: the launcher of kernels/attention.cuh.
// ===========================================================================
//
// The device code (FlashAttention-2 forward, deterministic two-kernel backward, on mma.sync tensor
// cores; sm_80+, the sm_90 build runs the same path) and its design notes live in
// kernels/attention.cuh. This file does what needs torch:
//   * boundary checks (each message names the offending value): defined, 4-D, same device and
//     dtype, consistent shapes, causal => Tq == Tk, scale finite and > 0 (csrc/checks.h), plus the
//     CUDA-specific ones: on a CUDA device, dtype float16/bfloat16 (the kernels are tensor-core
//     only; float32/float64 get an error pointing to autocast or the 'triton'/'eager' backends),
//     1 <= D <= 128, T < 2^30, grid size;
//   * operand layout: q/k/v/grad_out are read IN PLACE through their batch/head/seq strides (the
//     model's q, k, v are strided views of one fused qkv projection) when the last-dim stride is 1,
//     the other strides are multiples of 8 elements and the base is 16-byte aligned (cp.async moves
//     16-byte chunks); otherwise they are copied once into a contiguous tensor;
//   * head dims: kernels exist for D in {32, 64, 128}; any other D <= 128 is zero-padded to the
//     next one (zero columns leave q.k unchanged; the padded output/gradient columns are zero and
//     sliced off);
//   * empty problems launch nothing: B*H == 0 or Tq == 0 -> empty results (dk = dv = 0 when only
//     Tq == 0); Tk == 0 -> out = 0 and lse = -inf like the CPU kernel, dq = 0;
//   * the forward version (kernels/attention.cuh's header: 64 or 128 query rows per CTA), chosen
//     on EVERY forward call from the environment variable PYGPT_ATTN_FWD_ROWS (attn::choose_fwd_rows):
//       unset, "" or "auto"  128 rows when the kernel head dim kD is 64 or 128 (D in 33..128),
//                            64 rows at kD = 32 (D <= 32)
//       "64"                 the 64-row version at every head dim
//       "128"                the 128-row version; at kD = 32 (D <= 32, for which it does not exist)
//                            a TORCH_CHECK error naming D
//       anything else        a TORCH_CHECK error naming the value
//     (the 128-row kernels need 54 / 68 KiB of dynamic shared memory at kD = 64 / 128: the launch
//     helper raises the kernel's limit with cudaFuncSetAttribute). The backward has one version;
//     it reads only the forward's out and lse, which both versions compute identically up to
//     rounding (bit-identically at kD = 64);
//   * allocation (out, lse fp32, dq/dk/dv contiguous in the input dtype; delta fp32), the device
//     guard, the current stream, and a check after every launch.
#include "../checks.h"
#include "../registry.h"
#include "../../kernels/attention.cuh"

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <tuple>

namespace pygpt {

bool cuda_attention_is_kernel() { return true; }

namespace {

constexpr const char* kFwdOp = "pygpt.attention";
constexpr const char* kBwdOp = "pygpt.attention_bwd";
constexpr int64_t kMaxHeadDim = 128;
constexpr int64_t kMaxSeqLen = int64_t{1} << 30;
constexpr int64_t kMaxCtas = std::numeric_limits<int32_t>::max();

// --------------------------------------------------------------------------------------------
// Checks (local helpers in the style of csrc/checks.h)
// --------------------------------------------------------------------------------------------

void check_defined(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.defined(), op, ": ", name, " is an undefined tensor");
}

void check_on_cuda(const char* op, const at::Tensor& q) {
  TORCH_CHECK(q.is_cuda(), op, ": the CUDA kernel was called with tensors on ", q.device(),
              "; expected CUDA tensors");
}

void check_tensor_core_dtype(const char* op, const at::Tensor& q) {
  const at::ScalarType t = q.scalar_type();
  TORCH_CHECK(t == at::kHalf || t == at::kBFloat16, op, ": dtype ", checks::dtype_name(t),
              " is not supported by the CUDA attention kernel: it runs on tensor cores in float16 "
              "or bfloat16 (with float32 accumulation). Use autocast (torch.autocast('cuda', "
              "dtype=torch.bfloat16)), or backend 'triton' or 'eager' for ",
              checks::dtype_name(t), " inputs");
}

// The kernel's head dim for D: 32, 64 or 128 (D itself or the next one, zero-padded).
int64_t kernel_head_dim(const char* op, int64_t D) {
  TORCH_CHECK(D >= 1, op, ": head dim D=", D,
              " is not supported by the CUDA attention kernel (needs 1 <= D <= ", kMaxHeadDim, ")");
  checks::check_attention_head_dim_max(op, D, kMaxHeadDim, "CUDA attention kernel");
  return D <= 32 ? 32 : (D <= 64 ? 64 : 128);
}

// Sizes the kernels index with 32-bit ints (global offsets are 64-bit).
void check_sizes(const char* op, int64_t BH, int64_t Tq, int64_t Tk) {
  TORCH_CHECK(Tq < kMaxSeqLen && Tk < kMaxSeqLen, op, ": sequence lengths Tq=", Tq, ", Tk=", Tk,
              " exceed the CUDA attention kernel's limit of 2^30");
  TORCH_CHECK(BH <= kMaxCtas, op, ": B*H=", BH, " exceeds the CUDA attention kernel's limit of 2^31 - 1");
}

// scale is folded into scale*log2(e) and applied in float32: it must stay finite and nonzero there.
void check_scale_fp32(const char* op, double scale) {
  const double c = scale * 1.4426950408889634;
  TORCH_CHECK(c <= static_cast<double>(std::numeric_limits<float>::max()) &&
                  c >= static_cast<double>(std::numeric_limits<float>::min()),
              op, ": scale=", scale,
              " is outside the float32 range the CUDA attention kernel computes in");
}

// The forward version (64 or 128 query rows per CTA) from PYGPT_ATTN_FWD_ROWS, read on every call
// (so a test or benchmark can switch versions between calls without reloading the extension).
int fwd_rows_from_env(int64_t D, int64_t kD) {
  const char* env = std::getenv("PYGPT_ATTN_FWD_ROWS");
  const int rows = attn::choose_fwd_rows(env, static_cast<int>(kD));
  TORCH_CHECK(rows != attn::kFwdRowsBadValue, kFwdOp, ": PYGPT_ATTN_FWD_ROWS='", env,
              "' is not a valid forward version: use 'auto' (or leave it unset), '64' or '128'");
  TORCH_CHECK(rows != attn::kFwdRowsUnsupported, kFwdOp,
              ": PYGPT_ATTN_FWD_ROWS=128 is not available for head dim D=", D, " (kernel head dim ", kD,
              "): the 128-row forward exists for kernel head dims 64 and 128 (32 < D <= 128); use '64' "
              "or 'auto'");
  return rows;
}

void check_grid(const char* op, const char* kernel, int64_t ctas) {
  TORCH_CHECK(ctas <= kMaxCtas, op, ": ", kernel, " would need ", ctas,
              " thread blocks, more than the CUDA grid limit of 2^31 - 1 (reduce B*H or T)");
}

// --------------------------------------------------------------------------------------------
// Operands
// --------------------------------------------------------------------------------------------

// What the kernels can read in place: unit last-dim stride, batch/head/seq strides multiples of
// 8 elements (16 bytes), 16-byte aligned base (strides of size-1 dims are never used).
bool is_kernel_layout(const at::Tensor& t) {
  if (t.stride(3) != 1) return false;
  if (reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 != 0) return false;
  for (int64_t d = 0; d < 3; ++d) {
    if (t.size(d) > 1 && t.stride(d) % 8 != 0) return false;
  }
  return true;
}

// A (B,H,T,D) input as a (B,H,T,kD) kernel operand: zero-padded when D < kD, copied into a fresh
// (contiguous, aligned) tensor when its layout is not readable in place; else the tensor itself.
at::Tensor kernel_operand(const at::Tensor& t, int64_t kD) {
  at::Tensor x = t.size(3) == kD ? t : at::constant_pad_nd(t, {0, kD - t.size(3)}, 0);
  if (is_kernel_layout(x)) return x;
  // .contiguous() would return an already-contiguous but misaligned tensor unchanged
  return at::empty(x.sizes(), x.options()).copy_(x);
}

// Last-dim stride 1 (the delta kernel's only requirement).
at::Tensor unit_last_stride(const at::Tensor& t) {
  return (t.size(3) <= 1 || t.stride(3) == 1) ? t : t.contiguous();
}

attn::Strides strides_of(const at::Tensor& t) {
  return attn::Strides{t.size(0) > 1 ? t.stride(0) : 0, t.size(1) > 1 ? t.stride(1) : 0,
                       t.size(2) > 1 ? t.stride(2) : 0};
}

template <typename T>
constexpr at::ScalarType scalar_type_of();
template <>
constexpr at::ScalarType scalar_type_of<__half>() {
  return at::kHalf;
}
template <>
constexpr at::ScalarType scalar_type_of<__nv_bfloat16>() {
  return at::kBFloat16;
}

// --------------------------------------------------------------------------------------------
// Launches (one per kernel variant; PYGPT_ATTENTION_FOR_EACH_VARIANT is also what
// tests/cuda_build/attention_instances.cu instantiates)
// --------------------------------------------------------------------------------------------

template <typename T, int kD, int kBr>
void run_fwd(const attn::FwdParams& p, cudaStream_t stream) {
  check_grid(kFwdOp, "the forward kernel", attn::fwd_ctas<kBr>(p.BH, p.Tq));
  const cudaError_t e = attn::launch_attention_fwd<T, kD, kBr>(p, stream);  // cudaFuncSetAttribute's
  C10_CUDA_CHECK(e);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, int kD>
void run_bwd(const attn::BwdParams& p, cudaStream_t stream) {
  check_grid(kBwdOp, "the dK/dV kernel", attn::dkdv_ctas<kD>(p.BH, p.Tk));
  check_grid(kBwdOp, "the dQ kernel", attn::dq_ctas<kD>(p.BH, p.Tq));
  const cudaError_t e_kv = attn::launch_attention_bwd_dkdv<T, kD>(p, stream);
  C10_CUDA_CHECK(e_kv);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const cudaError_t e_q = attn::launch_attention_bwd_dq<T, kD>(p, stream);
  C10_CUDA_CHECK(e_q);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// rows: the forward version, 64 or 128 (fwd_rows_from_env)
void dispatch_fwd(at::ScalarType dtype, int64_t kD, int rows, const attn::FwdParams& p, cudaStream_t stream) {
#define PYGPT_ATTENTION_FWD_CASE(T, D)                           \
  if (rows == 64 && dtype == scalar_type_of<T>() && kD == (D)) { \
    run_fwd<T, D, 64>(p, stream);                                \
    return;                                                      \
  }
  PYGPT_ATTENTION_FOR_EACH_VARIANT(PYGPT_ATTENTION_FWD_CASE)
#undef PYGPT_ATTENTION_FWD_CASE
#define PYGPT_ATTENTION_FWD128_CASE(T, D)                         \
  if (rows == 128 && dtype == scalar_type_of<T>() && kD == (D)) { \
    run_fwd<T, D, 128>(p, stream);                                \
    return;                                                       \
  }
  PYGPT_ATTENTION_FOR_EACH_FWD128_VARIANT(PYGPT_ATTENTION_FWD128_CASE)
#undef PYGPT_ATTENTION_FWD128_CASE
  TORCH_CHECK(false, kFwdOp, ": internal error: no CUDA kernel for dtype ", checks::dtype_name(dtype),
              ", head dim ", kD, ", ", rows, " query rows per block");
}

void dispatch_bwd(at::ScalarType dtype, int64_t kD, const attn::BwdParams& p, cudaStream_t stream) {
#define PYGPT_ATTENTION_BWD_CASE(T, D)                 \
  if (dtype == scalar_type_of<T>() && kD == (D)) {     \
    run_bwd<T, D>(p, stream);                          \
    return;                                            \
  }
  PYGPT_ATTENTION_FOR_EACH_VARIANT(PYGPT_ATTENTION_BWD_CASE)
#undef PYGPT_ATTENTION_BWD_CASE
  TORCH_CHECK(false, kBwdOp, ": internal error: no CUDA kernel for dtype ", checks::dtype_name(dtype),
              ", head dim ", kD);
}

void launch_delta(at::ScalarType dtype, const attn::DeltaParams& p, cudaStream_t stream) {
  check_grid(kBwdOp, "the delta kernel", attn::delta_ctas(p.rows));
  const cudaError_t e = dtype == at::kHalf ? attn::launch_attention_bwd_delta<__half>(p, stream)
                                           : attn::launch_attention_bwd_delta<__nv_bfloat16>(p, stream);
  C10_CUDA_CHECK(e);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// --------------------------------------------------------------------------------------------
// The ops
// --------------------------------------------------------------------------------------------

std::tuple<at::Tensor, at::Tensor> attention_fwd_cuda(const at::Tensor& q, const at::Tensor& k,
                                                      const at::Tensor& v, bool causal,
                                                      double scale) {
  check_defined(kFwdOp, "q", q);
  check_defined(kFwdOp, "k", k);
  check_defined(kFwdOp, "v", v);
  checks::check_attention_inputs(q, k, v, causal, scale);
  check_on_cuda(kFwdOp, q);
  check_tensor_core_dtype(kFwdOp, q);
  check_scale_fp32(kFwdOp, scale);
  const int64_t B = q.size(0), H = q.size(1), Tq = q.size(2), Tk = k.size(2), D = q.size(3);
  const int64_t kD = kernel_head_dim(kFwdOp, D);
  check_sizes(kFwdOp, B * H, Tq, Tk);
  const int rows = fwd_rows_from_env(D, kD);  // before any early return: a bad value always errors

  const c10::cuda::CUDAGuard guard(q.device());
  at::Tensor out = at::empty({B, H, Tq, D}, q.options());
  at::Tensor lse = at::empty({B, H, Tq}, q.options().dtype(at::kFloat));
  if (B * H == 0 || Tq == 0) return {out, lse};
  if (Tk == 0) {  // softmax over no keys: out = 0, lse = -inf (as the CPU kernel)
    out.zero_();
    lse.fill_(-std::numeric_limits<float>::infinity());
    return {out, lse};
  }

  const at::Tensor qk = kernel_operand(q, kD), kk = kernel_operand(k, kD), vk = kernel_operand(v, kD);
  at::Tensor out_k = kD == D ? out : at::empty({B, H, Tq, kD}, q.options());

  attn::FwdParams p{};
  p.q = qk.data_ptr();
  p.k = kk.data_ptr();
  p.v = vk.data_ptr();
  p.sq = strides_of(qk);
  p.sk = strides_of(kk);
  p.sv = strides_of(vk);
  p.out = out_k.data_ptr();
  p.lse = lse.data_ptr<float>();
  p.H = static_cast<int>(H);
  p.BH = static_cast<int>(B * H);
  p.Tq = static_cast<int>(Tq);
  p.Tk = static_cast<int>(Tk);
  p.scale_log2 = static_cast<float>(scale * 1.4426950408889634);
  p.causal = causal ? 1 : 0;
  dispatch_fwd(q.scalar_type(), kD, rows, p, c10::cuda::getCurrentCUDAStream().stream());

  if (kD != D) out.copy_(out_k.narrow(3, 0, D));
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_bwd_cuda(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, bool causal, double scale) {
  check_defined(kBwdOp, "grad_out", grad_out);
  check_defined(kBwdOp, "q", q);
  check_defined(kBwdOp, "k", k);
  check_defined(kBwdOp, "v", v);
  check_defined(kBwdOp, "out", out);
  check_defined(kBwdOp, "lse", lse);
  checks::check_attention_bwd_inputs(grad_out, q, k, v, out, lse, causal, scale);
  check_on_cuda(kBwdOp, q);
  check_tensor_core_dtype(kBwdOp, q);
  check_scale_fp32(kBwdOp, scale);
  const int64_t B = q.size(0), H = q.size(1), Tq = q.size(2), Tk = k.size(2), D = q.size(3);
  const int64_t kD = kernel_head_dim(kBwdOp, D);
  check_sizes(kBwdOp, B * H, Tq, Tk);

  const c10::cuda::CUDAGuard guard(q.device());
  at::Tensor dq = at::empty({B, H, Tq, D}, q.options());
  at::Tensor dk = at::empty({B, H, Tk, D}, k.options());
  at::Tensor dv = at::empty({B, H, Tk, D}, v.options());
  if (B * H == 0) return {dq, dk, dv};
  if (Tq == 0) {  // no query reads any key
    dk.zero_();
    dv.zero_();
    return {dq, dk, dv};
  }
  if (Tk == 0) {  // out was the constant 0
    dq.zero_();
    return {dq, dk, dv};
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const at::ScalarType dtype = q.scalar_type();

  // (1) delta = rowsum(dO o O) over the caller's D (padding would only add zeros)
  at::Tensor delta = at::empty({B, H, Tq}, q.options().dtype(at::kFloat));
  {
    const at::Tensor o_u = unit_last_stride(out), do_u = unit_last_stride(grad_out);
    attn::DeltaParams dp{};
    dp.out = o_u.data_ptr();
    dp.dout = do_u.data_ptr();
    dp.so = strides_of(o_u);
    dp.sdo = strides_of(do_u);
    dp.delta = delta.data_ptr<float>();
    dp.H = static_cast<int>(H);
    dp.Tq = static_cast<int>(Tq);
    dp.D = static_cast<int>(D);
    dp.rows = B * H * Tq;
    launch_delta(dtype, dp, stream);
  }

  // (2) dK/dV and (3) dQ
  const at::Tensor qk = kernel_operand(q, kD), kk = kernel_operand(k, kD), vk = kernel_operand(v, kD);
  const at::Tensor dok = kernel_operand(grad_out, kD);
  const at::Tensor lse_c = lse.contiguous();
  at::Tensor dq_k = kD == D ? dq : at::empty({B, H, Tq, kD}, q.options());
  at::Tensor dk_k = kD == D ? dk : at::empty({B, H, Tk, kD}, k.options());
  at::Tensor dv_k = kD == D ? dv : at::empty({B, H, Tk, kD}, v.options());

  attn::BwdParams p{};
  p.q = qk.data_ptr();
  p.k = kk.data_ptr();
  p.v = vk.data_ptr();
  p.dout = dok.data_ptr();
  p.sq = strides_of(qk);
  p.sk = strides_of(kk);
  p.sv = strides_of(vk);
  p.sdo = strides_of(dok);
  p.lse = lse_c.data_ptr<float>();
  p.delta = delta.data_ptr<float>();
  p.dq = dq_k.data_ptr();
  p.dk = dk_k.data_ptr();
  p.dv = dv_k.data_ptr();
  p.H = static_cast<int>(H);
  p.BH = static_cast<int>(B * H);
  p.Tq = static_cast<int>(Tq);
  p.Tk = static_cast<int>(Tk);
  p.scale = static_cast<float>(scale);
  p.scale_log2 = static_cast<float>(scale * 1.4426950408889634);
  p.causal = causal ? 1 : 0;
  dispatch_bwd(dtype, kD, p, stream);

  if (kD != D) {
    dq.copy_(dq_k.narrow(3, 0, D));
    dk.copy_(dk_k.narrow(3, 0, D));
    dv.copy_(dv_k.narrow(3, 0, D));
  }
  return {dq, dk, dv};
}

}  // namespace
}  // namespace pygpt

TORCH_LIBRARY_IMPL(pygpt, CUDA, m) {
  m.impl("attention_fwd", &pygpt::attention_fwd_cuda);
  m.impl("attention_bwd", &pygpt::attention_bwd_cuda);
}
