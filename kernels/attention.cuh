// ===========================================================================
// pygpt.attention on NVIDIA GPUs: FlashAttention-2 on tensor cores (mma.sync), fwd + bwd.
// ===========================================================================
//
// Torch-free device code plus host launch helpers; csrc/cuda/attention_cuda.cu is the launcher
// (checks, allocation, D padding, dispatch) and tests/cuda_build/attention_instances.cu
// instantiates every kernel below for a build check without torch headers.
//
// Versions of the forward (attention_fwd_kernel<T, kD, kBr>; the backward has one version):
//   v1  kBr = 64   64 query rows per CTA, 4 warps x 16 rows (one m16 mma tile per warp), key blocks
//                  of 64. Every kD (32, 64, 128). The original; kept because it is the only one at
//                  kD = 32, gives twice the CTAs for short sequences / few heads (better SM fill),
//                  and is the reference the 128-row version is checked against (bit-identical at
//                  kD = 64 on the emulator).
//   v2  kBr = 128  128 query rows per CTA, 4 warps x 32 rows (TWO m16 tiles per warp), key blocks of
//                  64 (kD = 64) or 32 (kD = 128). kD in {64, 128}. Why: in v1 every K fragment
//                  (ldmatrix.x4 of K for S = Q K^T) and every V fragment (ldmatrix.x4.trans for
//                  O += P V) feeds 2 mmas (the two n8 halves of one m16 tile); with two m-tiles per
//                  warp the same fragment feeds 4, halving shared-memory (ldmatrix) traffic per mma,
//                  which bounds mma.sync attention; and each K/V tile brought into smem serves 128
//                  queries instead of 64, halving K/V global/L2 reads. 4 warps x 32 rows rather than
//                  8 warps x 16 rows: 8 warps would halve the K/V re-reads per query too, but each
//                  warp would still use each fragment for 2 mmas only (FlashAttention-2's own
//                  sm80 forward also uses 4 warps with 128-row tiles). The price is registers: O is
//                  2 x 16 x kD fp32 per warp (kD = 128: 128 registers per thread), so kD = 128
//                  walks keys 32 at a time (S = 2 x 16 x 32) and re-reads Q from smem; ptxas
//                  (nvcc 13.0): 246 / 251-254 registers at kD = 64 / 128, no spills. Causal: a
//                  warp skips a key block lying entirely right of its 32 rows (warp-uniform branch).
//   Selection: the launcher reads PYGPT_ATTN_FWD_ROWS on every call (choose_fwd_rows below): unset,
//   "" or "auto" -> v2 at kD in {64, 128} (any 32 < D <= 128), v1 at kD = 32; "64" -> v1;
//   "128" -> v2, an error at kD = 32; anything else -> an error naming the value.
//
// Kernels (each a template on the element type T in {__half, __nv_bfloat16} and the head dim
// kD in {32, 64, 128}; `causal` is a run-time flag, so there are 6 instances of each of the three
// matmul kernels, plus 4 of the 128-row forward, and 2 of the delta kernel):
//   attention_fwd_kernel        out, lse = attention(q, k, v).       FlashAttention-2 forward.
//   attention_bwd_delta_kernel  delta_i = rowsum(dO_i o O_i) (fp32). Backward pre-pass: the
//                               dK/dV kernel needs delta of every query, before any P is formed.
//   attention_bwd_dkdv_kernel   dK, dV: one CTA per (key block, b*h), loops over query blocks.
//   attention_bwd_dq_kernel     dQ:     one CTA per (query block, b*h), loops over key blocks.
// Why two backward matmul kernels instead of FA2's one (dK/dV CTAs adding into dQ with float
// atomics): every output element is then written by exactly one CTA, accumulated in a fixed order,
// so the backward is BITWISE DETERMINISTIC (same inputs -> same bits, run after run, like the CPU
// kernel). The price is recomputing S and dP in the dQ kernel: 7 tile matmuls per (query block,
// key block) pair instead of 5, and no atomics / no fp32 dQ scratch buffer.
//
// What it computes (identical to csrc/cpu/attention.cpp, whose conventions the Python autograd
// and fake functions assume):
//   q (B,H,Tq,D), k/v (B,H,Tk,D): batch/head/seq strides are read as given (the model's q/k/v are
//     strided views of one fused qkv projection, read in place), last-dim stride 1.
//   out (B,H,Tq,kD) contiguous, in T;  lse (B,H,Tq) fp32 contiguous,
//     lse_i = ln sum_j exp(scale q_i.k_j)   (NATURAL log; see "base 2" below).
//   causal: query i sees keys j <= i (top-left aligned; the launcher requires Tq == Tk).
//   backward: dq (B,H,Tq,kD), dk, dv (B,H,Tk,kD), contiguous, in T. fp32 accumulation everywhere.
// Head dims other than 32/64/128 (any D <= 128) are zero-padded by the LAUNCHER to the next kD:
// zero columns leave every q.k unchanged, produce zero output/gradient columns, and are sliced off.
//
// Base 2: with c = scale*log2(e), exp(scale*s) = exp2(c*s). The kernels track the running max m in
// these base-2 units (m = max_j c*s_ij) and use ex2.approx (one MUFU op; -inf -> +0). Forward:
// lse = (m + log2(l)) * ln(2) -> natural log. Backward: P_ij = exp2(c*s_ij - lse_i*log2(e)).
//
// Algorithm (Dao, "FlashAttention-2", 2023):
//   forward   CTA = (query block of Br = 64 (v1) or 128 (v2) rows, b*h); 4 warps, warp w owns rows
//             kWR*w..kWR*w+kWR-1 (kWR = 16 or 32: kMT = 1 or 2 m16 tiles, handled alike).
//             The Q tile goes to smem (cp.async) and from there into registers as mma A fragments
//             (ldmatrix.x4; once at kD <= 64, per key block at kD = 128). Key blocks of Bc (64; 32
//             in v2 at kD = 128) are walked left to right, K/V tiles double buffered in smem with
//             cp.async (block j+1 streams in while block j is computed):
//               S = Q K^T             kWR x Bc per warp, fp32 in registers (mma C fragments)
//               masking               only in blocks that cross the causal diagonal or hold the
//                                     key tail (k >= Tk); -inf there
//               online softmax        row max / row sum over the 4 lanes of a quad (shfl_xor 1, 2);
//                                     a row whose keys are all masked so far keeps m = -inf and
//                                     exponentiates against 0 instead (never -inf - -inf = NaN)
//               O = O*alpha + P V     P goes from the C-fragment layout straight into A fragments
//                                     (no smem round trip: the FA2 register-reuse trick)
//             Causal: key blocks entirely right of the diagonal are never loaded. Epilogue: O/l
//             is staged through the warp's own (now unused) Q smem rows for 16-byte global stores.
//   backward  (1) delta kernel. (2) dK/dV kernel, TRANSPOSED formulation: warp w owns keys
//             16w..16w+15 of a key block of 64; K, V stay in smem; query blocks of Bq rows
//             (64, or 32 at kD=128) are double buffered (Q, dO by cp.async, lse*log2e and delta as
//             fp32 rows):
//               S^T  = K Q^T          A = K (ldmatrix),     B = Q  [query][d] (ldmatrix)
//               P^T  = exp2(c S^T - lse[query]*log2e)       query index = accumulator COLUMN
//               dV  += P^T dO         A = P^T (registers),  B = dO [query][d] (ldmatrix.trans)
//               dP^T = V dO^T         A = V (ldmatrix),     B = dO [query][d] (ldmatrix)
//               dS^T = P^T o (dP^T - delta[query])
//               dK  += dS^T Q         A = dS^T (registers), B = Q  [query][d] (ldmatrix.trans)
//             dK *= scale at the end. Causal: query blocks entirely above the diagonal (all
//             queries < the block's first key) are skipped. (3) dQ kernel: warp w owns 16 query
//             rows of a block of 64; key blocks of Bc (64, or 32 at kD=128) double buffered:
//               S = Q K^T, P = exp2(c S - lse*log2e), dP = dO V^T, dS = P o (dP - delta),
//               dQ += dS K (B = K [key][d] via ldmatrix.trans); dQ *= scale at the end.
//
// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32, per lane g = lane>>2 (the
// "group", a row of C), t = lane&3 (the lane within the quad):
//   A (16x16, row-major):  a0 = A[g][2t,2t+1]  a1 = A[g+8][2t,2t+1]  a2 = A[g][2t+8,+9]  a3 = A[g+8][2t+8,+9]
//   B (16x8, "col"):       b0 = B[2t,2t+1][g]   b1 = B[2t+8,2t+9][g]
//   C/D (16x8, fp32):      c0,c1 = C[g][2t,2t+1]   c2,c3 = C[g+8][2t,2t+1]
//   (each b32 register holds two 16-bit values, the lower column/row index in the low half.)
// ldmatrix.x4: lanes 8i..8i+7 supply the 8 row addresses (16 contiguous bytes each) of matrix i;
//   matrix i lands in register i; lane l receives row l>>2, columns 2(l&3),+1 of each matrix;
//   with .trans it receives rows 2(l&3),+1 of column l>>2 (i.e. the transposed matrix's row l>>2).
// Two lane-address patterns therefore cover every operand (r0/c0: the 16x16 block's corner):
//   pattern A   row r0 + (l & 15),                   col c0 + (l >> 4)*8
//     non-trans: A operand of a row-major [m][k] tile (matrices = (rows 0-7|8-15) x (cols 0-7|8-15)
//                in the order a0 a1 a2 a3).
//     .trans:    B operands of TWO n-tiles from a [k][n]-stored tile (V [key][d] for P V, dO / Q
//                [query][d] in the backward): reg0,reg1 = b0,b1 of n-tile c0/8, reg2,reg3 = b0,b1
//                of n-tile c0/8+1.
//   pattern B   row r0 + (l >> 4)*8 + (l & 7),       col c0 + ((l >> 3) & 1)*8
//     non-trans: B operands of TWO n-tiles from an [n][k]-stored tile (K [key][d] for Q K^T, V for
//                dO V^T, Q / dO [query][d] in the dK/dV kernel): reg0,reg1 = b0,b1 of n-tile r0/8,
//                reg2,reg3 = b0,b1 of n-tile r0/8+1.
// C -> A (P, dS, P^T, dS^T as the next mma's A operand, k = the previous n): for k-step kk,
//   a0 = pack(C[2kk].c0, c1)  a1 = pack(C[2kk].c2, c3)  a2 = pack(C[2kk+1].c0, c1)
//   a3 = pack(C[2kk+1].c2, c3)       (n-tiles 2kk, 2kk+1 hold columns 16kk..16kk+15).
//
// Shared memory: every tile is row-major [rows][kD + 8] elements: the 16-byte pad makes the row
// pitch (2kD + 16 bytes) an odd multiple of 16 bytes, so the 8 consecutive row addresses of one
// ldmatrix phase fall in 8 different 4-bank groups: conflict-free ldmatrix, no swizzle needed
// (cp.async stores are conflict-free too, except a harmless 2-way overlap at kD = 32).
//   forward  sQ[Br] | sK[2][Bc] | sV[2][Bc]     v1 kD=32/64/128: 25/45/85 KiB; v2 kD=64/128: 54/68 KiB
//   dK/dV    sK[64] | sV[64] | sQ[2][Bq] | sdO[2][Bq] | fp32 [2][2*Bq]   31/55/68.5 KiB
//   dQ       sQ[64] | sdO[64] | sK[2][Bc] | sV[2][Bc]                30/54/68 KiB
// (> 48 KiB needs cudaFuncSetAttribute, done in the launch helpers; all fit the 99 KiB of sm_86/89.)
// Rows past the end (query >= Tq, key >= Tk) are zero-filled by cp.async (src-size 0), so only
// finite values enter the MMAs; their scores are masked (or, in the dK/dV kernel, their lse is set
// to +inf so P = 0) and they are never stored.
//
// Registers: the forward keeps Q's A fragments in registers at kD <= 64 (kMT*kD/4 registers) and
// re-reads them from smem at kD = 128; the backward kernels always re-read their stationary
// operands (Q/dO resp. K/V) from smem. Block sizes (Cfg below) are chosen so ptxas reports zero
// spills for every kernel on sm_80 and sm_90 (nvcc 13.0: 107-248 registers per thread;
// tests/test_cuda_build.py enforces it). The dK/dV kernel at kD = 64/128 is the tightest
// (~240-248 registers: two 16 x kD fp32 accumulators per warp); shrink kDkvBq first if a future
// compiler spills.
//
// Limits: sm_80 or newer (cp.async, ldmatrix, bf16 mma). sm_90 runs this same mma.sync path: no
// Hopper wgmma/TMA version (out of scope). kD in {32, 64, 128}; the launcher pads other D <= 128.
// Global operands: 16-byte aligned base, batch/head/seq strides multiples of 8 elements (cp.async
// moves 16-byte chunks); the launcher copies anything else. T < 2^30, grid < 2^31 CTAs. 64-bit
// global offsets throughout.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>

// Kernel launches are written PYGPT_LAUNCH(grid, block, smem, stream, kernel)(args...): the
// triple-chevron launch; tests/cuda_emu/emu.h (the host emulator that runs these kernels in CI, see
// tests/test_cuda_emulation.py) defines it first to run them on the CPU.
#ifndef PYGPT_LAUNCH
#define PYGPT_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<grid, block, smem, stream>>>
#endif

namespace pygpt {
namespace attn {

constexpr int kThreads = 128;  // 4 warps in every kernel
constexpr int kPad = 8;        // smem row pad in elements (16 bytes)
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// Tile sizes per head dim.
template <int kD>
struct Cfg {
  static_assert(kD == 32 || kD == 64 || kD == 128, "kD must be 32, 64 or 128");
  static constexpr int kPitch = kD + kPad;  // smem row pitch, elements
  // dK/dV: keys per CTA (16 per warp), queries per block (fewer at kD=128: registers)
  static constexpr int kDkvBc = 64;
  static constexpr int kDkvBq = kD <= 64 ? 64 : 32;
  // dQ: query rows per CTA (16 per warp), keys per block
  static constexpr int kDqBr = 64;
  static constexpr int kDqBc = kD <= 64 ? 64 : 32;
};

// Forward tiles: kBr query rows per CTA (the version, 64 or 128; see the header), 4 warps of kMT
// 16-row m-tiles each, key blocks of kBc.
template <int kD, int kBr>
struct FwdCfg {
  static_assert(kBr == 64 || (kBr == 128 && (kD == 64 || kD == 128)),
                "forward configs: 64 rows (kD 32/64/128) or 128 rows (kD 64/128)");
  static constexpr int kMT = kBr / (16 * (kThreads / 32));  // m-tiles per warp: 1 or 2
  // 128 rows at kD = 128: 32-key blocks (S is 2 x 16 x 32 per warp), else the O accumulators
  // (2 x 16 x 128 fp32 = 128 registers per thread) plus S would not fit in 255 registers
  static constexpr int kBc = (kBr == 128 && kD == 128) ? 32 : 64;
  // Q's A fragments stay in registers (kMT * kD / 4 of them) at kD <= 64; re-read at kD = 128
  static constexpr bool kQInRegs = kD <= 64;
};

template <typename T, int kD, int kBr = 64>
constexpr int fwd_smem_bytes() {
  return (kBr + 4 * FwdCfg<kD, kBr>::kBc) * Cfg<kD>::kPitch * static_cast<int>(sizeof(T));
}
template <typename T, int kD>
constexpr int dkdv_smem_bytes() {
  return (2 * Cfg<kD>::kDkvBc + 4 * Cfg<kD>::kDkvBq) * Cfg<kD>::kPitch * static_cast<int>(sizeof(T)) +
         2 * 2 * Cfg<kD>::kDkvBq * static_cast<int>(sizeof(float));
}
template <typename T, int kD>
constexpr int dq_smem_bytes() {
  return (2 * Cfg<kD>::kDqBr + 4 * Cfg<kD>::kDqBc) * Cfg<kD>::kPitch * static_cast<int>(sizeof(T));
}

// Element strides of a (B, H, T, D) operand (the D stride is 1). A stride of a size-1 dim may be 0.
struct Strides {
  int64_t b, h, t;
};

struct FwdParams {
  const void *q, *k, *v;  // (B,H,Tq,kD), (B,H,Tk,kD), (B,H,Tk,kD)
  Strides sq, sk, sv;
  void* out;   // (B,H,Tq,kD) contiguous
  float* lse;  // (B,H,Tq) contiguous, natural log
  int H, BH, Tq, Tk;
  float scale_log2;  // scale * log2(e)
  int causal;
};

struct BwdParams {
  const void *q, *k, *v, *dout;  // dout: (B,H,Tq,kD)
  Strides sq, sk, sv, sdo;
  const float* lse;    // (B,H,Tq) contiguous, natural log (as the forward returned it)
  const float* delta;  // (B,H,Tq) contiguous, rowsum(dO o O)
  void *dq, *dk, *dv;  // contiguous (B,H,T,kD)
  int H, BH, Tq, Tk;
  float scale;       // dQ, dK factor
  float scale_log2;  // scale * log2(e)
  int causal;
};

struct DeltaParams {
  const void *out, *dout;  // (B,H,Tq,D) with unit last-dim stride, D = the caller's (unpadded) D
  Strides so, sdo;
  float* delta;  // (B,H,Tq) contiguous
  int H, Tq, D;
  int64_t rows;  // B*H*Tq
};

// ------------------------------------------------------------------------------------------------
// Element traits: the mma type string and fp32 <-> 16-bit conversions (intrinsics only: torch's
// build defines __CUDA_NO_HALF_OPERATORS__ / _CONVERSIONS__ and friends).
// ------------------------------------------------------------------------------------------------

template <typename T>
struct Elem;

template <>
struct Elem<__half> {
  // Two floats -> one b32 register of two halves, `lo` in the low 16 bits (the lower index).
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    const __half2 v = __floats2half2_rn(lo, hi);
    uint32_t u;
    __builtin_memcpy(&u, &v, sizeof(u));
    return u;
  }
  static __device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
  // D = A*B + D, m16n8k16, fp16 inputs, fp32 accumulators.
  static __device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
#ifdef PYGPT_CUDA_EMULATION
    pygpt_emu::mma_m16n8k16<__half>(d, a, b0, b1);
#else
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
  }
};

template <>
struct Elem<__nv_bfloat16> {
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    uint32_t u;
    __builtin_memcpy(&u, &v, sizeof(u));
    return u;
  }
  static __device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
  static __device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
#ifdef PYGPT_CUDA_EMULATION
    pygpt_emu::mma_m16n8k16<__nv_bfloat16>(d, a, b0, b1);
#else
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
  }
};

// ------------------------------------------------------------------------------------------------
// PTX wrappers
// ------------------------------------------------------------------------------------------------

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte global -> shared copy, bypassing L1 (.cg); zero-fills the 16 bytes when !valid
// (src-size 0: nothing is read, `src` must merely be a valid global address).
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, bool valid) {
  const int n = valid ? 16 : 0;
#ifdef PYGPT_CUDA_EMULATION
  pygpt_emu::cp_async_cg_16(dst, src, n);
#else
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(n)
               : "memory");
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#ifdef PYGPT_CUDA_EMULATION
  pygpt_emu::cp_async_commit();
#else
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
// Wait until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#ifdef PYGPT_CUDA_EMULATION
  pygpt_emu::cp_async_wait(N);
#else
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

// volatile + "memory": the same smem address is re-read after __syncthreads with new contents; a
// pure asm could be hoisted out of the loop, and without the clobber the compiler could in principle
// move the read across the plain smem stores that filled the tile.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
#ifdef PYGPT_CUDA_EMULATION
  pygpt_emu::ldmatrix_x4(r, addr, false);
#else
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
#endif
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
#ifdef PYGPT_CUDA_EMULATION
  pygpt_emu::ldmatrix_x4(r, addr, true);
#else
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
#endif
}

// 2^x with one MUFU.EX2 (relative error ~2^-22; ex2(-inf) = +0, flushes denormal results).
__device__ __forceinline__ float fast_exp2(float x) {
#ifdef PYGPT_CUDA_EMULATION
  return pygpt_emu::ex2_approx_ftz(x);
#else
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
#endif
}

__device__ __forceinline__ float pos_inf() { return __int_as_float(0x7f800000); }
__device__ __forceinline__ float neg_inf() { return __int_as_float(static_cast<int>(0xff800000u)); }

// Lane offsets (elements, within a tile of pitch `pitch`) of the two ldmatrix address patterns.
__device__ __forceinline__ int lane_off_a(int lane, int pitch) {
  return (lane & 15) * pitch + ((lane >> 4) << 3);
}
__device__ __forceinline__ int lane_off_b(int lane, int pitch) {
  return (((lane >> 4) << 3) + (lane & 7)) * pitch + (((lane >> 3) & 1) << 3);
}

// Async copy of a kRows x kD tile whose row 0 is at `g` (row stride `ld` elements) into smem `s`
// (pitch kD + kPad); rows >= rows_valid are zero-filled. One 16-byte chunk per thread per step,
// consecutive threads on consecutive chunks of a row (coalesced).
template <int kRows, int kD, typename T>
__device__ __forceinline__ void load_tile(T* s, const T* g, int64_t ld, int rows_valid, int tid) {
  constexpr int kChunksPerRow = kD / 8;
  constexpr int kChunks = kRows * kChunksPerRow;
  static_assert(kChunks % kThreads == 0, "tile must split evenly over the CTA");
  constexpr uint32_t kE = sizeof(T);
  const uint32_t s0 = smem_addr(s);
#pragma unroll
  for (int it = 0; it < kChunks / kThreads; ++it) {
    const int c = tid + it * kThreads;
    const int r = c / kChunksPerRow;
    const int cc = c % kChunksPerRow;
    const bool ok = r < rows_valid;
    const T* src = ok ? g + static_cast<int64_t>(r) * ld + cc * 8 : g;
    cp_async_16(s0 + static_cast<uint32_t>((r * (kD + kPad) + cc * 8) * kE), src, ok);
  }
}

// Stores the 16 rows x kD fp32 accumulator fragments `acc` (C layout, n-tile j = columns 8j..8j+7)
// of one warp, times `mul`, as T: staged through the warp's own smem rows `stage` (pitch kD+kPad,
// not read by any other warp), then 16-byte stores of the rows < rows_valid to `g` (contiguous
// rows of kD elements, row 0 = the warp's first row).
template <typename T, int kD>
__device__ __forceinline__ void store_warp_rows(const float (&acc)[kD / 8][4], float mul0, float mul1,
                                                T* stage, T* g, int rows_valid, int lane) {
  constexpr int P = kD + kPad;
  const int gr = lane >> 2, t4 = lane & 3;
  __syncwarp();
#pragma unroll
  for (int j = 0; j < kD / 8; ++j) {
    const uint32_t lo = Elem<T>::pack(acc[j][0] * mul0, acc[j][1] * mul0);  // row gr
    const uint32_t hi = Elem<T>::pack(acc[j][2] * mul1, acc[j][3] * mul1);  // row gr + 8
    *reinterpret_cast<uint32_t*>(stage + gr * P + j * 8 + 2 * t4) = lo;
    *reinterpret_cast<uint32_t*>(stage + (gr + 8) * P + j * 8 + 2 * t4) = hi;
  }
  __syncwarp();
  constexpr int kChunksPerRow = kD / 8;
#pragma unroll
  for (int it = 0; it < 16 * kChunksPerRow / 32; ++it) {
    const int c = lane + it * 32;
    const int r = c / kChunksPerRow;
    const int cc = c % kChunksPerRow;
    if (r < rows_valid) {
      *reinterpret_cast<uint4*>(g + static_cast<int64_t>(r) * kD + cc * 8) =
          *reinterpret_cast<const uint4*>(stage + r * P + cc * 8);
    }
  }
}

// ================================================================================================
// Forward
// ================================================================================================

template <typename T, int kD, int kBr = 64>
__global__ void __launch_bounds__(kThreads) attention_fwd_kernel(const FwdParams p) {
  using FC = FwdCfg<kD, kBr>;
  constexpr int Br = kBr, Bc = FC::kBc, P = Cfg<kD>::kPitch;
  constexpr int kMT = FC::kMT;    // 16-row mma m-tiles per warp
  constexpr int kWR = 16 * kMT;   // query rows per warp
  constexpr int kKS = kD / 16;    // k-steps of Q K^T (over d)
  constexpr int kNS = Bc / 8;     // n-tiles of S (keys)
  constexpr int kNO = kD / 8;     // n-tiles of O (d)
  constexpr bool kQInRegs = FC::kQInRegs;
  constexpr uint32_t kE = sizeof(T);  // bytes per element (smem byte offsets stay 32-bit)
  static_assert(Br == kWR * (kThreads / 32), "kMT 16-row mma tiles per warp");

  extern __shared__ __align__(16) unsigned char smem[];
  T* sQ = reinterpret_cast<T*>(smem);  // [Br][P]
  T* sK = sQ + Br * P;                 // [2][Bc][P]
  T* sV = sK + 2 * Bc * P;             // [2][Bc][P]

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t4 = lane & 3;
  const int nq = (p.Tq + Br - 1) / Br;
  // Causal cost grows with the query block: hand out the last (heaviest) blocks first.
  const int qb = nq - 1 - static_cast<int>(blockIdx.x / static_cast<unsigned>(p.BH));
  const int bh = static_cast<int>(blockIdx.x % static_cast<unsigned>(p.BH));
  const int b = bh / p.H, h = bh % p.H;
  const int q0 = qb * Br;

  const T* gQ = static_cast<const T*>(p.q) + b * p.sq.b + h * p.sq.h + q0 * p.sq.t;
  const T* gK = static_cast<const T*>(p.k) + b * p.sk.b + h * p.sk.h;
  const T* gV = static_cast<const T*>(p.v) + b * p.sv.b + h * p.sv.h;

  // keys this block can see: [0, kend)
  const int kend = p.causal ? min(p.Tk, q0 + Br) : p.Tk;
  const int nkb = (kend + Bc - 1) / Bc;

  // cp.async groups: {Q}, {K0, V0}, then one group per loop iteration (the prefetch of the next
  // K/V block, possibly empty) -- wait_group<1> always means "all but the newest group landed".
  load_tile<Br, kD>(sQ, gQ, p.sq.t, min(Br, p.Tq - q0), tid);
  cp_async_commit();
  load_tile<Bc, kD>(sK, gK, p.sk.t, min(Bc, p.Tk), tid);
  load_tile<Bc, kD>(sV, gV, p.sv.t, min(Bc, p.Tk), tid);
  cp_async_commit();

  const int offA = lane_off_a(lane, P), offB = lane_off_b(lane, P);
  const int row_lo = q0 + warp * kWR;  // first query row of this warp; m-tile mt: row_lo + 16 mt

  // Q A-fragments of this warp's kWR rows (pattern A on sQ; m-tile mt at +16 mt rows). Kept in
  // registers (kMT * kD/4 of them) when FwdCfg says so, else re-read from smem every key block
  // (kD = 128: 32 or 64 more registers would push the kernel past ptxas' 255 limit; the smem re-read
  // is kWR x kD per warp per key block, small next to the K and V tiles).
  const uint32_t qbase = smem_addr(sQ) + static_cast<uint32_t>((offA + warp * kWR * P) * kE);
  uint32_t qf[kQInRegs ? kMT : 1][kQInRegs ? kKS : 1][4];
  if constexpr (kQInRegs) {
    cp_async_wait<1>();  // Q landed (K0/V0 may still be in flight)
    __syncthreads();
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
      for (int kk = 0; kk < kKS; ++kk) ldmatrix_x4(qf[mt][kk], qbase + (mt * 16 * P + kk * 16) * kE);
  }

  float o[kMT][kNO][4];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int j = 0; j < kNO; ++j) o[mt][j][0] = o[mt][j][1] = o[mt][j][2] = o[mt][j][3] = 0.f;
  // running max (base-2 units) and this lane's partial row sum, for rows g (index 0), g+8 (1) of
  // each m-tile
  float row_m[kMT][2], row_l[kMT][2];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) row_m[mt][0] = row_m[mt][1] = neg_inf(), row_l[mt][0] = row_l[mt][1] = 0.f;
  const float c = p.scale_log2;

  for (int kb = 0; kb < nkb; ++kb) {
    const int buf = kb & 1;
    if (kb + 1 < nkb) {  // prefetch the next K/V block into the other buffer
      const int k1 = (kb + 1) * Bc;
      load_tile<Bc, kD>(sK + (buf ^ 1) * Bc * P, gK + k1 * p.sk.t, p.sk.t, min(Bc, p.Tk - k1), tid);
      load_tile<Bc, kD>(sV + (buf ^ 1) * Bc * P, gV + k1 * p.sv.t, p.sv.t, min(Bc, p.Tk - k1), tid);
    }
    cp_async_commit();
    cp_async_wait<1>();  // block kb landed
    __syncthreads();

    const int k0 = kb * Bc;
    // Causal: a block whose first key is right of this warp's LAST row is masked for every row of
    // the warp: its P would be all 0 and alpha 1 (the row max is unchanged), so skipping it leaves
    // o, m, l bit-identical. Only happens when Br > Bc or Br > 16 * warps (the 128-row configs:
    // warp 0 of a diagonal CTA sees one key block of the CTA's two or four). Warp-uniform branch:
    // no lane diverges at the warp collectives inside; the __syncthreads below is outside it.
    if (!(p.causal && k0 > row_lo + kWR - 1)) {
      // ---- S = Q K^T (kWR x Bc per warp) ----
      float s[kMT][kNS][4];
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
        for (int j = 0; j < kNS; ++j) s[mt][j][0] = s[mt][j][1] = s[mt][j][2] = s[mt][j][3] = 0.f;
      {
        const uint32_t kbase = smem_addr(sK + buf * Bc * P) + static_cast<uint32_t>(offB * kE);
#pragma unroll
        for (int kk = 0; kk < kKS; ++kk) {
          uint32_t qa[kMT][4];  // A (smem path): m-tile mt's 16 rows x d 16kk..16kk+15 of Q
          if constexpr (!kQInRegs) {
#pragma unroll
            for (int mt = 0; mt < kMT; ++mt) ldmatrix_x4(qa[mt], qbase + (mt * 16 * P + kk * 16) * kE);
          }
#pragma unroll
          for (int jn = 0; jn < Bc / 16; ++jn) {
            // keys 16jn..16jn+15 x d 16kk..16kk+15 of K [key][d] = B operands of n-tiles 2jn, 2jn+1,
            // shared by all kMT m-tiles: one ldmatrix feeds 2 kMT mmas
            uint32_t kf[4];
            ldmatrix_x4(kf, kbase + (jn * 16 * P + kk * 16) * kE);
#pragma unroll
            for (int mt = 0; mt < kMT; ++mt) {
              if constexpr (kQInRegs) {
                Elem<T>::mma(s[mt][2 * jn], qf[mt][kk], kf[0], kf[1]);
                Elem<T>::mma(s[mt][2 * jn + 1], qf[mt][kk], kf[2], kf[3]);
              } else {
                Elem<T>::mma(s[mt][2 * jn], qa[mt], kf[0], kf[1]);
                Elem<T>::mma(s[mt][2 * jn + 1], qa[mt], kf[2], kf[3]);
              }
            }
          }
        }
      }

      // ---- mask: key tail (k >= Tk) and, causal, keys right of the diagonal ----
      if (k0 + Bc > p.Tk || (p.causal && k0 + Bc - 1 > row_lo)) {
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
          for (int j = 0; j < kNS; ++j) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const int key = k0 + j * 8 + 2 * t4 + (e & 1);
              const int row = row_lo + mt * 16 + g + ((e >> 1) << 3);
              if (key >= p.Tk || (p.causal && key > row)) s[mt][j][e] = neg_inf();
            }
          }
      }

      // ---- online softmax: per m-tile, rows g (r = 0: c0,c1) and g+8 (r = 1: c2,c3) ----
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          float mx = neg_inf();
#pragma unroll
          for (int j = 0; j < kNS; ++j) mx = fmaxf(mx, fmaxf(s[mt][j][2 * r], s[mt][j][2 * r + 1]));
          mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));  // the quad holds the whole row
          mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
          const float m_new = fmaxf(row_m[mt][r], mx * c);  // c > 0: max(c s) = c max(s)
          // all keys masked so far: m_new = -inf; exponentiate against 0 (p = exp2(-inf) = 0)
          const float m_use = m_new == neg_inf() ? 0.f : m_new;
          const float alpha = fast_exp2(row_m[mt][r] - m_use);  // row_m = -inf -> 0 (O, l are 0 anyway)
          row_m[mt][r] = m_new;
          float sum = 0.f;
#pragma unroll
          for (int j = 0; j < kNS; ++j) {
            const float p0 = fast_exp2(fmaf(s[mt][j][2 * r], c, -m_use));
            const float p1 = fast_exp2(fmaf(s[mt][j][2 * r + 1], c, -m_use));
            s[mt][j][2 * r] = p0;
            s[mt][j][2 * r + 1] = p1;
            sum += p0 + p1;
          }
          row_l[mt][r] = row_l[mt][r] * alpha + sum;  // lane-partial; the quad's sum is taken at the end
#pragma unroll
          for (int j = 0; j < kNO; ++j) {
            o[mt][j][2 * r] *= alpha;
            o[mt][j][2 * r + 1] *= alpha;
          }
        }
      }

      // ---- O += P V: P from the S accumulators (C layout) into A fragments, k = keys ----
      {
        const uint32_t vbase = smem_addr(sV + buf * Bc * P) + static_cast<uint32_t>(offA * kE);
#pragma unroll
        for (int kk = 0; kk < Bc / 16; ++kk) {
          uint32_t pf[kMT][4];
#pragma unroll
          for (int mt = 0; mt < kMT; ++mt) {
            pf[mt][0] = Elem<T>::pack(s[mt][2 * kk][0], s[mt][2 * kk][1]);          // P[g][16kk+2t..]
            pf[mt][1] = Elem<T>::pack(s[mt][2 * kk][2], s[mt][2 * kk][3]);          // P[g+8][16kk+2t..]
            pf[mt][2] = Elem<T>::pack(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);  // P[g][16kk+8+2t..]
            pf[mt][3] = Elem<T>::pack(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);  // P[g+8][16kk+8+2t..]
          }
#pragma unroll
          for (int dn = 0; dn < kD / 16; ++dn) {
            // keys 16kk..+15 x d 16dn..+15 of V [key][d], transposed: B of n-tiles 2dn, 2dn+1,
            // shared by the kMT m-tiles
            uint32_t vf[4];
            ldmatrix_x4_trans(vf, vbase + (kk * 16 * P + dn * 16) * kE);
#pragma unroll
            for (int mt = 0; mt < kMT; ++mt) {
              Elem<T>::mma(o[mt][2 * dn], pf[mt], vf[0], vf[1]);
              Elem<T>::mma(o[mt][2 * dn + 1], pf[mt], vf[2], vf[3]);
            }
          }
        }
      }
    }
    __syncthreads();  // everyone is done with buffer `buf` before iteration kb+1 refills it
  }

  // ---- epilogue: out = O / l, lse = (m + log2 l) ln 2; m-tile by m-tile ----
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
    const int mrow = row_lo + mt * 16;
    float inv[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float l = row_l[mt][r];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      inv[r] = l > 0.f ? 1.f / l : 0.f;
      const int row = mrow + g + 8 * r;
      if (t4 == 0 && row < p.Tq) {
        p.lse[static_cast<int64_t>(bh) * p.Tq + row] = l > 0.f ? (row_m[mt][r] + log2f(l)) * kLn2 : neg_inf();
      }
    }
    // staged through the m-tile's own (no longer read) Q smem rows
    T* gO = static_cast<T*>(p.out) + (static_cast<int64_t>(bh) * p.Tq + mrow) * kD;
    store_warp_rows<T, kD>(o[mt], inv[0], inv[1], sQ + (warp * kWR + mt * 16) * P, gO, p.Tq - mrow, lane);
  }
}

// ================================================================================================
// Backward (1): delta = rowsum(dO o O), fp32. One warp per row, lanes stride over d (coalesced),
// butterfly reduction: a fixed summation order.
// ================================================================================================

template <typename T>
__global__ void __launch_bounds__(kThreads) attention_bwd_delta_kernel(const DeltaParams p) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (kThreads / 32) + (threadIdx.x >> 5);
  if (row >= p.rows) return;  // warp-uniform
  const int64_t bh = row / p.Tq;
  const int64_t t = row % p.Tq;
  const int64_t b = bh / p.H, h = bh % p.H;
  const T* o = static_cast<const T*>(p.out) + b * p.so.b + h * p.so.h + t * p.so.t;
  const T* d = static_cast<const T*>(p.dout) + b * p.sdo.b + h * p.sdo.h + t * p.sdo.t;
  float acc = 0.f;
  for (int i = lane; i < p.D; i += 32) acc = fmaf(Elem<T>::to_float(o[i]), Elem<T>::to_float(d[i]), acc);
#pragma unroll
  for (int m = 16; m >= 1; m >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, m);
  if (lane == 0) p.delta[row] = acc;
}

// ================================================================================================
// Backward (2): dK, dV (transposed formulation; see the header).
// ================================================================================================

template <typename T, int kD>
__global__ void __launch_bounds__(kThreads) attention_bwd_dkdv_kernel(const BwdParams p) {
  constexpr int Bc = Cfg<kD>::kDkvBc, Bq = Cfg<kD>::kDkvBq, P = Cfg<kD>::kPitch;
  constexpr int kKS = kD / 16;  // k-steps of K Q^T and V dO^T (over d)
  constexpr int kNS = Bq / 8;   // n-tiles of S^T, dP^T (queries)
  constexpr int kNO = kD / 8;   // n-tiles of dK, dV (d)
  constexpr uint32_t kE = sizeof(T);
  static_assert(Bc == 16 * (kThreads / 32), "one 16-key mma tile per warp");
  static_assert(2 * Bq <= kThreads, "one thread per lse/delta value");

  extern __shared__ __align__(16) unsigned char smem[];
  T* sK = reinterpret_cast<T*>(smem);  // [Bc][P]
  T* sV = sK + Bc * P;                 // [Bc][P]
  T* sQ = sV + Bc * P;                 // [2][Bq][P]
  T* sdO = sQ + 2 * Bq * P;            // [2][Bq][P]
  float* sStat = reinterpret_cast<float*>(sdO + 2 * Bq * P);  // [2][lse*log2e: Bq | delta: Bq]

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t4 = lane & 3;
  // Causal cost shrinks with the key block: the natural order already runs heavy blocks first.
  const int kb = static_cast<int>(blockIdx.x / static_cast<unsigned>(p.BH));
  const int bh = static_cast<int>(blockIdx.x % static_cast<unsigned>(p.BH));
  const int b = bh / p.H, h = bh % p.H;
  const int k0 = kb * Bc;

  const T* gQ = static_cast<const T*>(p.q) + b * p.sq.b + h * p.sq.h;
  const T* gdO = static_cast<const T*>(p.dout) + b * p.sdo.b + h * p.sdo.h;
  const T* gK = static_cast<const T*>(p.k) + b * p.sk.b + h * p.sk.h + k0 * p.sk.t;
  const T* gV = static_cast<const T*>(p.v) + b * p.sv.b + h * p.sv.h + k0 * p.sv.t;
  const float* gLse = p.lse + static_cast<int64_t>(bh) * p.Tq;
  const float* gDelta = p.delta + static_cast<int64_t>(bh) * p.Tq;

  // Query blocks that can see a key of this block: causal, those with a query >= k0.
  const int nqb = (p.Tq + Bq - 1) / Bq;
  const int qb0 = p.causal ? k0 / Bq : 0;

  // lse*log2e (threads [0, Bq)) or delta (threads [Bq, 2Bq)) of query block qb; rows past Tq get
  // lse = +inf (P = exp2(-inf) = 0) and delta = 0.
  auto stat_of = [&](int qb) -> float {
    if (tid < Bq) {
      const int q = qb * Bq + tid;
      return q < p.Tq ? gLse[q] * kLog2e : pos_inf();
    }
    const int q = qb * Bq + tid - Bq;
    return (tid < 2 * Bq && q < p.Tq) ? gDelta[q] : 0.f;
  };

  // cp.async groups: {K, V, Q[qb0], dO[qb0]}, then one (possibly empty) group per iteration.
  load_tile<Bc, kD>(sK, gK, p.sk.t, min(Bc, p.Tk - k0), tid);
  load_tile<Bc, kD>(sV, gV, p.sv.t, min(Bc, p.Tk - k0), tid);
  {
    const int q0 = qb0 * Bq;
    load_tile<Bq, kD>(sQ, gQ + q0 * p.sq.t, p.sq.t, min(Bq, p.Tq - q0), tid);
    load_tile<Bq, kD>(sdO, gdO + q0 * p.sdo.t, p.sdo.t, min(Bq, p.Tq - q0), tid);
  }
  cp_async_commit();
  {
    const float v = stat_of(qb0);
    if (tid < 2 * Bq) sStat[tid] = v;  // buffer 0; visible after the loop's first __syncthreads
  }

  const int offA = lane_off_a(lane, P), offB = lane_off_b(lane, P);
  const uint32_t kbase = smem_addr(sK + warp * 16 * P) + static_cast<uint32_t>(offA * kE);
  const uint32_t vbase = smem_addr(sV + warp * 16 * P) + static_cast<uint32_t>(offA * kE);
  const float c = p.scale_log2;
  const int key_lo = k0 + warp * 16;  // first key of this warp
  const bool key_tail = k0 + Bc > p.Tk;

  float dk[kNO][4], dv[kNO][4];
#pragma unroll
  for (int j = 0; j < kNO; ++j) {
    dk[j][0] = dk[j][1] = dk[j][2] = dk[j][3] = 0.f;
    dv[j][0] = dv[j][1] = dv[j][2] = dv[j][3] = 0.f;
  }

  for (int qb = qb0; qb < nqb; ++qb) {
    const int buf = (qb - qb0) & 1;
    const bool has_next = qb + 1 < nqb;
    float stat_next = 0.f;
    if (has_next) {  // prefetch query block qb+1 into the other buffer
      const int q1 = (qb + 1) * Bq;
      load_tile<Bq, kD>(sQ + (buf ^ 1) * Bq * P, gQ + q1 * p.sq.t, p.sq.t, min(Bq, p.Tq - q1), tid);
      load_tile<Bq, kD>(sdO + (buf ^ 1) * Bq * P, gdO + q1 * p.sdo.t, p.sdo.t, min(Bq, p.Tq - q1), tid);
      stat_next = stat_of(qb + 1);  // stored to smem at the end of this iteration
    }
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();

    const T* sQb = sQ + buf * Bq * P;
    const T* sdOb = sdO + buf * Bq * P;
    const float* sL = sStat + buf * 2 * Bq;  // lse*log2e, then delta at +Bq

    // ---- S^T = K Q^T and dP^T = V dO^T (16 keys x Bq queries per warp) ----
    float st[kNS][4], dpt[kNS][4];
#pragma unroll
    for (int j = 0; j < kNS; ++j) {
      st[j][0] = st[j][1] = st[j][2] = st[j][3] = 0.f;
      dpt[j][0] = dpt[j][1] = dpt[j][2] = dpt[j][3] = 0.f;
    }
    {
      const uint32_t qbase = smem_addr(sQb) + static_cast<uint32_t>(offB * kE);
      const uint32_t dobase = smem_addr(sdOb) + static_cast<uint32_t>(offB * kE);
#pragma unroll
      for (int kk = 0; kk < kKS; ++kk) {
        uint32_t ka[4], va[4];  // A: this warp's 16 keys x d 16kk..+15 of K, V
        ldmatrix_x4(ka, kbase + kk * 16 * kE);
        ldmatrix_x4(va, vbase + kk * 16 * kE);
#pragma unroll
        for (int jn = 0; jn < Bq / 16; ++jn) {
          // queries 16jn..+15 x d 16kk..+15 of Q / dO [query][d] = B of n-tiles 2jn, 2jn+1
          uint32_t qf[4], df[4];
          ldmatrix_x4(qf, qbase + (jn * 16 * P + kk * 16) * kE);
          Elem<T>::mma(st[2 * jn], ka, qf[0], qf[1]);
          Elem<T>::mma(st[2 * jn + 1], ka, qf[2], qf[3]);
          ldmatrix_x4(df, dobase + (jn * 16 * P + kk * 16) * kE);
          Elem<T>::mma(dpt[2 * jn], va, df[0], df[1]);
          Elem<T>::mma(dpt[2 * jn + 1], va, df[2], df[3]);
        }
      }
    }

    // ---- P^T = exp2(c S^T - lse2[query]), dS^T = P^T o (dP^T - delta[query]) ----
    // Accumulator element (j, e): key row  key_lo + g + 8*(e>>1)   (the mma ROW),
    //                             query    q0 + 8j + 2*t4 + (e&1)  (the mma COLUMN).
    const int q0 = qb * Bq;
    const bool need_mask = key_tail || (p.causal && key_lo + 15 > q0);
#pragma unroll
    for (int j = 0; j < kNS; ++j) {
      const int col = j * 8 + 2 * t4;  // even: 8-byte aligned float2
      const float2 l2 = *reinterpret_cast<const float2*>(sL + col);
      const float2 dl = *reinterpret_cast<const float2*>(sL + Bq + col);
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float lse2 = (e & 1) ? l2.y : l2.x;
        const float del = (e & 1) ? dl.y : dl.x;
        float pt = fast_exp2(fmaf(st[j][e], c, -lse2));
        if (need_mask) {
          const int key = key_lo + g + ((e >> 1) << 3);
          const int query = q0 + col + (e & 1);
          if (key >= p.Tk || (p.causal && key > query)) pt = 0.f;
        }
        st[j][e] = pt;
        dpt[j][e] = pt * (dpt[j][e] - del);
      }
    }

    // ---- dV += P^T dO, dK += dS^T Q (k = queries; A from the accumulators) ----
    {
      const uint32_t qbase = smem_addr(sQb) + static_cast<uint32_t>(offA * kE);
      const uint32_t dobase = smem_addr(sdOb) + static_cast<uint32_t>(offA * kE);
#pragma unroll
      for (int kk = 0; kk < Bq / 16; ++kk) {
        uint32_t pa[4], sa[4];
        pa[0] = Elem<T>::pack(st[2 * kk][0], st[2 * kk][1]);
        pa[1] = Elem<T>::pack(st[2 * kk][2], st[2 * kk][3]);
        pa[2] = Elem<T>::pack(st[2 * kk + 1][0], st[2 * kk + 1][1]);
        pa[3] = Elem<T>::pack(st[2 * kk + 1][2], st[2 * kk + 1][3]);
        sa[0] = Elem<T>::pack(dpt[2 * kk][0], dpt[2 * kk][1]);
        sa[1] = Elem<T>::pack(dpt[2 * kk][2], dpt[2 * kk][3]);
        sa[2] = Elem<T>::pack(dpt[2 * kk + 1][0], dpt[2 * kk + 1][1]);
        sa[3] = Elem<T>::pack(dpt[2 * kk + 1][2], dpt[2 * kk + 1][3]);
#pragma unroll
        for (int dn = 0; dn < kD / 16; ++dn) {
          // queries 16kk..+15 x d 16dn..+15 of dO / Q [query][d], transposed: B of n-tiles 2dn, 2dn+1
          uint32_t df[4], qf[4];
          ldmatrix_x4_trans(df, dobase + (kk * 16 * P + dn * 16) * kE);
          Elem<T>::mma(dv[2 * dn], pa, df[0], df[1]);
          Elem<T>::mma(dv[2 * dn + 1], pa, df[2], df[3]);
          ldmatrix_x4_trans(qf, qbase + (kk * 16 * P + dn * 16) * kE);
          Elem<T>::mma(dk[2 * dn], sa, qf[0], qf[1]);
          Elem<T>::mma(dk[2 * dn + 1], sa, qf[2], qf[3]);
        }
      }
    }

    // the other stat buffer was last read in iteration qb-1, before its trailing __syncthreads
    if (has_next && tid < 2 * Bq) sStat[(buf ^ 1) * 2 * Bq + tid] = stat_next;
    __syncthreads();  // buffers `buf` free for iteration qb+2's prefetch; stat_next visible
  }

  // ---- epilogue: dK *= scale; each warp stages through its own K / V smem rows ----
  const int rows_valid = p.Tk - key_lo;
  T* gdK = static_cast<T*>(p.dk) + (static_cast<int64_t>(bh) * p.Tk + key_lo) * kD;
  T* gdV = static_cast<T*>(p.dv) + (static_cast<int64_t>(bh) * p.Tk + key_lo) * kD;
  store_warp_rows<T, kD>(dk, p.scale, p.scale, sK + warp * 16 * P, gdK, rows_valid, lane);
  store_warp_rows<T, kD>(dv, 1.f, 1.f, sV + warp * 16 * P, gdV, rows_valid, lane);
}

// ================================================================================================
// Backward (3): dQ.
// ================================================================================================

template <typename T, int kD>
__global__ void __launch_bounds__(kThreads) attention_bwd_dq_kernel(const BwdParams p) {
  constexpr int Br = Cfg<kD>::kDqBr, Bc = Cfg<kD>::kDqBc, P = Cfg<kD>::kPitch;
  constexpr int kKS = kD / 16;  // k-steps of Q K^T, dO V^T (over d)
  constexpr int kNS = Bc / 8;   // n-tiles of S, dP (keys)
  constexpr int kNO = kD / 8;   // n-tiles of dQ (d)
  constexpr uint32_t kE = sizeof(T);  // bytes per element (smem byte offsets stay 32-bit)
  static_assert(Br == 16 * (kThreads / 32), "one 16-row mma tile per warp");

  extern __shared__ __align__(16) unsigned char smem[];
  T* sQ = reinterpret_cast<T*>(smem);  // [Br][P]
  T* sdO = sQ + Br * P;                // [Br][P]
  T* sK = sdO + Br * P;                // [2][Bc][P]
  T* sV = sK + 2 * Bc * P;             // [2][Bc][P]

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t4 = lane & 3;
  const int nq = (p.Tq + Br - 1) / Br;
  const int qb = nq - 1 - static_cast<int>(blockIdx.x / static_cast<unsigned>(p.BH));  // heavy first
  const int bh = static_cast<int>(blockIdx.x % static_cast<unsigned>(p.BH));
  const int b = bh / p.H, h = bh % p.H;
  const int q0 = qb * Br;

  const T* gQ = static_cast<const T*>(p.q) + b * p.sq.b + h * p.sq.h + q0 * p.sq.t;
  const T* gdO = static_cast<const T*>(p.dout) + b * p.sdo.b + h * p.sdo.h + q0 * p.sdo.t;
  const T* gK = static_cast<const T*>(p.k) + b * p.sk.b + h * p.sk.h;
  const T* gV = static_cast<const T*>(p.v) + b * p.sv.b + h * p.sv.h;

  const int kend = p.causal ? min(p.Tk, q0 + Br) : p.Tk;
  const int nkb = (kend + Bc - 1) / Bc;

  // cp.async groups: {Q, dO, K0, V0}, then one (possibly empty) group per iteration.
  load_tile<Br, kD>(sQ, gQ, p.sq.t, min(Br, p.Tq - q0), tid);
  load_tile<Br, kD>(sdO, gdO, p.sdo.t, min(Br, p.Tq - q0), tid);
  load_tile<Bc, kD>(sK, gK, p.sk.t, min(Bc, p.Tk), tid);
  load_tile<Bc, kD>(sV, gV, p.sv.t, min(Bc, p.Tk), tid);
  cp_async_commit();

  // lse*log2e and delta of this lane's rows g (r=0), g+8 (r=1); rows past Tq: +inf / 0 (P = 0).
  const int row_lo = q0 + warp * 16;
  float lse2[2], del[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = row_lo + g + 8 * r;
    const int64_t i = static_cast<int64_t>(bh) * p.Tq + row;
    lse2[r] = row < p.Tq ? p.lse[i] * kLog2e : pos_inf();
    del[r] = row < p.Tq ? p.delta[i] : 0.f;
  }

  const int offA = lane_off_a(lane, P), offB = lane_off_b(lane, P);
  const uint32_t qbase = smem_addr(sQ + warp * 16 * P) + static_cast<uint32_t>(offA * kE);
  const uint32_t dobase = smem_addr(sdO + warp * 16 * P) + static_cast<uint32_t>(offA * kE);
  const float c = p.scale_log2;

  float dq[kNO][4];
#pragma unroll
  for (int j = 0; j < kNO; ++j) dq[j][0] = dq[j][1] = dq[j][2] = dq[j][3] = 0.f;

  for (int kb = 0; kb < nkb; ++kb) {
    const int buf = kb & 1;
    if (kb + 1 < nkb) {
      const int k1 = (kb + 1) * Bc;
      load_tile<Bc, kD>(sK + (buf ^ 1) * Bc * P, gK + k1 * p.sk.t, p.sk.t, min(Bc, p.Tk - k1), tid);
      load_tile<Bc, kD>(sV + (buf ^ 1) * Bc * P, gV + k1 * p.sv.t, p.sv.t, min(Bc, p.Tk - k1), tid);
    }
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();

    // ---- S = Q K^T, dP = dO V^T (16 rows x Bc keys per warp) ----
    float s[kNS][4], dp[kNS][4];
#pragma unroll
    for (int j = 0; j < kNS; ++j) {
      s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
      dp[j][0] = dp[j][1] = dp[j][2] = dp[j][3] = 0.f;
    }
    {
      const uint32_t kb_base = smem_addr(sK + buf * Bc * P) + static_cast<uint32_t>(offB * kE);
      const uint32_t vb_base = smem_addr(sV + buf * Bc * P) + static_cast<uint32_t>(offB * kE);
#pragma unroll
      for (int kk = 0; kk < kKS; ++kk) {
        uint32_t qa[4], da[4];  // A: this warp's 16 rows x d 16kk..+15 of Q, dO
        ldmatrix_x4(qa, qbase + kk * 16 * kE);
        ldmatrix_x4(da, dobase + kk * 16 * kE);
#pragma unroll
        for (int jn = 0; jn < Bc / 16; ++jn) {
          // keys 16jn..+15 x d 16kk..+15 of K / V [key][d] = B of n-tiles 2jn, 2jn+1
          uint32_t kf[4], vf[4];
          ldmatrix_x4(kf, kb_base + (jn * 16 * P + kk * 16) * kE);
          Elem<T>::mma(s[2 * jn], qa, kf[0], kf[1]);
          Elem<T>::mma(s[2 * jn + 1], qa, kf[2], kf[3]);
          ldmatrix_x4(vf, vb_base + (jn * 16 * P + kk * 16) * kE);
          Elem<T>::mma(dp[2 * jn], da, vf[0], vf[1]);
          Elem<T>::mma(dp[2 * jn + 1], da, vf[2], vf[3]);
        }
      }
    }

    // ---- P = exp2(c S - lse2[row]) (0 where masked), dS = P o (dP - delta[row]) ----
    // Accumulator element (j, e): query row_lo + g + 8*(e>>1) (ROW), key k0 + 8j + 2*t4 + (e&1) (COLUMN).
    const int k0 = kb * Bc;
    const bool need_mask = k0 + Bc > p.Tk || (p.causal && k0 + Bc - 1 > row_lo);
#pragma unroll
    for (int j = 0; j < kNS; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = e >> 1;
        float pv = fast_exp2(fmaf(s[j][e], c, -lse2[r]));
        if (need_mask) {
          const int key = k0 + j * 8 + 2 * t4 + (e & 1);
          const int row = row_lo + g + 8 * r;
          if (key >= p.Tk || (p.causal && key > row)) pv = 0.f;
        }
        dp[j][e] = pv * (dp[j][e] - del[r]);
      }
    }

    // ---- dQ += dS K (k = keys; A = dS from the accumulators, B = K [key][d] transposed) ----
    {
      const uint32_t kt_base = smem_addr(sK + buf * Bc * P) + static_cast<uint32_t>(offA * kE);
#pragma unroll
      for (int kk = 0; kk < Bc / 16; ++kk) {
        uint32_t sa[4];
        sa[0] = Elem<T>::pack(dp[2 * kk][0], dp[2 * kk][1]);
        sa[1] = Elem<T>::pack(dp[2 * kk][2], dp[2 * kk][3]);
        sa[2] = Elem<T>::pack(dp[2 * kk + 1][0], dp[2 * kk + 1][1]);
        sa[3] = Elem<T>::pack(dp[2 * kk + 1][2], dp[2 * kk + 1][3]);
#pragma unroll
        for (int dn = 0; dn < kD / 16; ++dn) {
          uint32_t kf[4];
          ldmatrix_x4_trans(kf, kt_base + (kk * 16 * P + dn * 16) * kE);
          Elem<T>::mma(dq[2 * dn], sa, kf[0], kf[1]);
          Elem<T>::mma(dq[2 * dn + 1], sa, kf[2], kf[3]);
        }
      }
    }
    __syncthreads();
  }

  // ---- epilogue: dQ *= scale, staged through the warp's own Q smem rows ----
  T* gdQ = static_cast<T*>(p.dq) + (static_cast<int64_t>(bh) * p.Tq + row_lo) * kD;
  store_warp_rows<T, kD>(dq, p.scale, p.scale, sQ + warp * 16 * P, gdQ, p.Tq - row_lo, lane);
}

// ================================================================================================
// Host launch helpers (no torch). They return the error of cudaFuncSetAttribute, or cudaSuccess
// after the launch WITHOUT reading the launch's error state: the caller checks the launch
// (C10_CUDA_KERNEL_LAUNCH_CHECK in the extension). Nothing is launched for empty problems.
// ================================================================================================

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <typename Kernel>
inline cudaError_t set_smem(Kernel kernel, int bytes) {
  if (bytes <= 48 * 1024) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
}

// CTAs of each kernel (the launcher checks they fit the 2^31 - 1 grid limit before launching).
template <int kBr = 64>
inline int64_t fwd_ctas(int64_t BH, int64_t Tq) { return BH * ceil_div(Tq, kBr); }
template <int kD>
inline int64_t dkdv_ctas(int64_t BH, int64_t Tk) { return BH * ceil_div(Tk, Cfg<kD>::kDkvBc); }
template <int kD>
inline int64_t dq_ctas(int64_t BH, int64_t Tq) { return BH * ceil_div(Tq, Cfg<kD>::kDqBr); }
inline int64_t delta_ctas(int64_t rows) { return ceil_div(rows, kThreads / 32); }

// kBr: the forward version (64 or 128 query rows per CTA; 128 only at kD = 64, 128).
template <typename T, int kD, int kBr = 64>
inline cudaError_t launch_attention_fwd(const FwdParams& p, cudaStream_t stream) {
  if (p.BH <= 0 || p.Tq <= 0 || p.Tk <= 0) return cudaSuccess;
  constexpr int smem = fwd_smem_bytes<T, kD, kBr>();
  const cudaError_t e = set_smem(attention_fwd_kernel<T, kD, kBr>, smem);
  if (e != cudaSuccess) return e;
  const auto grid = static_cast<unsigned>(fwd_ctas<kBr>(p.BH, p.Tq));
  PYGPT_LAUNCH(grid, kThreads, smem, stream, attention_fwd_kernel<T, kD, kBr>)(p);
  return cudaSuccess;
}

// The forward version for PYGPT_ATTN_FWD_ROWS = `env` (nullptr: unset) at kernel head dim kD: the
// launcher calls this on every forward (and turns the two error codes into TORCH_CHECK errors).
//   unset, "" or "auto"  128 at kD in {64, 128}, 64 at kD = 32
//   "64"                 64
//   "128"                128 at kD in {64, 128}; kFwdRowsUnsupported at kD = 32
//   anything else        kFwdRowsBadValue
// (kD is the kernel's head dim: D itself or D zero-padded up to it, so "128" is valid for any
// 32 < D <= 128.)
constexpr int kFwdRowsBadValue = -1;
constexpr int kFwdRowsUnsupported = -2;
inline int choose_fwd_rows(const char* env, int kD) {
  const bool has128 = kD == 64 || kD == 128;
  if (env == nullptr || std::strcmp(env, "") == 0 || std::strcmp(env, "auto") == 0) return has128 ? 128 : 64;
  if (std::strcmp(env, "64") == 0) return 64;
  if (std::strcmp(env, "128") == 0) return has128 ? 128 : kFwdRowsUnsupported;
  return kFwdRowsBadValue;
}

template <typename T>
inline cudaError_t launch_attention_bwd_delta(const DeltaParams& p, cudaStream_t stream) {
  if (p.rows <= 0) return cudaSuccess;
  const auto grid = static_cast<unsigned>(delta_ctas(p.rows));
  PYGPT_LAUNCH(grid, kThreads, 0, stream, attention_bwd_delta_kernel<T>)(p);
  return cudaSuccess;
}

// dK/dV and dQ: independent of each other, both read delta (computed before).
template <typename T, int kD>
inline cudaError_t launch_attention_bwd_dkdv(const BwdParams& p, cudaStream_t stream) {
  if (p.BH <= 0 || p.Tq <= 0 || p.Tk <= 0) return cudaSuccess;
  constexpr int smem = dkdv_smem_bytes<T, kD>();
  const cudaError_t e = set_smem(attention_bwd_dkdv_kernel<T, kD>, smem);
  if (e != cudaSuccess) return e;
  const auto grid = static_cast<unsigned>(dkdv_ctas<kD>(p.BH, p.Tk));
  PYGPT_LAUNCH(grid, kThreads, smem, stream, attention_bwd_dkdv_kernel<T, kD>)(p);
  return cudaSuccess;
}

template <typename T, int kD>
inline cudaError_t launch_attention_bwd_dq(const BwdParams& p, cudaStream_t stream) {
  if (p.BH <= 0 || p.Tq <= 0 || p.Tk <= 0) return cudaSuccess;
  constexpr int smem = dq_smem_bytes<T, kD>();
  const cudaError_t e = set_smem(attention_bwd_dq_kernel<T, kD>, smem);
  if (e != cudaSuccess) return e;
  const auto grid = static_cast<unsigned>(dq_ctas<kD>(p.BH, p.Tq));
  PYGPT_LAUNCH(grid, kThreads, smem, stream, attention_bwd_dq_kernel<T, kD>)(p);
  return cudaSuccess;
}

// Every (T, kD) the launcher dispatches to; tests/cuda_build/attention_instances.cu instantiates
// each kernel for each entry.
#define PYGPT_ATTENTION_FOR_EACH_VARIANT(X) \
  X(__half, 32)                             \
  X(__half, 64)                             \
  X(__half, 128)                            \
  X(__nv_bfloat16, 32)                      \
  X(__nv_bfloat16, 64)                      \
  X(__nv_bfloat16, 128)

// The (T, kD) of the 128-row forward version (attention_fwd_kernel<T, kD, 128>), which the launcher
// selects by PYGPT_ATTN_FWD_ROWS (choose_fwd_rows below); also instantiated by the build check.
#define PYGPT_ATTENTION_FOR_EACH_FWD128_VARIANT(X) \
  X(__half, 64)                                    \
  X(__half, 128)                                   \
  X(__nv_bfloat16, 64)                             \
  X(__nv_bfloat16, 128)

}  // namespace attn
}  // namespace pygpt
