// ===========================================================================
// pygpt.gelu_mlp on CUDA: device code. linear(x, w_fc, b_fc) -> GELU ->
// linear(., w_proj, b_proj), forward and backward (the transformer MLP).
// Torch-free: only CUDA headers, so tests/cuda_build/gelu_mlp_instances.cu can
// compile every kernel alone (nvcc -cubin -Xptxas -v) and check the SASS.
// The launcher (csrc/cuda/gelu_mlp_cuda.cu) owns the boundary checks, the
// dtype dispatch, cuBLASLt and the choice between the paths.
// ===========================================================================
//
// What is computed (the semantics of csrc/cpu/gelu_mlp.cpp; M = rows of x):
//   pre = x . w_fc^T + b_fc          (M, Hd), stored in x's dtype (ROUNDED)
//   act = gelu(rounded pre)          (M, Hd), the down-projection's input
//   out = act . w_proj^T + b_proj    (M, C)
//   backward: dact = dout . w_proj; dpre = dact * gelu'(pre);
//             dW_proj = dout^T . act; dW_fc = dpre^T . x; dx = dpre . w_fc;
//             db_fc = colsum(dpre); db_proj = colsum(dout).
//
// Kernels in this file, and why each exists
// -----------------------------------------
// 1. mlp_gemm_kernel<T, kAKMajor, kBKMajor, kEpi>  (T = __half | __nv_bfloat16)
//    C[M,N] = A[M,K] . B[K,N] on tensor cores (mma.sync m16n8k16, fp32
//    accumulators) with a fused epilogue. Operand layouts (template flags):
//      A K-major: A[i][k] at a + i*lda + k      (x, dout, dpre as row-major M x K)
//      A M-major: A[i][k] at a + k*lda + i      (dout^T, dpre^T for weight grads)
//      B K-major: B[k][j] at b + j*ldb + k      (nn.Linear weights used as W^T)
//      B N-major: B[k][j] at b + k*ldb + j      (w_proj, w_fc, act, x read as is)
//    Epilogues (kEpi):
//      kEpiStore    C = acc (+ bias[j] if bias != nullptr), rounded to T.
//      kEpiGeluAux  up-projection: v = acc + bias[j]; aux = pre = round_T(v);
//                   C = act = round_T(gelu(float(pre))) -- GELU of the ROUNDED
//                   pre, so the backward (which only sees pre) differentiates
//                   exactly what the forward used.
//      kEpiDGelu    backward dact GEMM: p = aux[i][j] (= pre); C = dpre =
//                   round_T(acc * gelu'(p)); act_out = round_T(gelu(p)) (the
//                   dW_proj GEMM's B operand: act is not stored by the forward);
//                   and, when colsum != nullptr, this CTA's column sums of the
//                   rounded dpre over its 128 rows -> colsum[tile_m][j] (fp32),
//                   no atomics: the launcher sums the [tiles_m, N] partials in
//                   a fixed order (deterministic db_fc).
//      kEpiPartial  split-K slice blockIdx.y of S: the fp32 accumulators of K tiles
//                   [splitk_kt_begin(y), splitk_kt_begin(y+1)) stored unrounded to
//                   partial[y][i][j] (ld N); kernel 2 sums the slices. See "Split-K".
//    Variants launched (PYGPT_GELU_MLP_GEMM_VARIANTS below; x2 dtypes = 12):
//      <K,K,GeluAux>  pre/act = x . w_fc^T + b_fc         (fwd up-projection)
//      <K,K,Store>    out = act . w_proj^T + b_proj        (fwd down-projection)
//      <K,N,DGelu>    dpre, act = (dout . w_proj) * gelu'  (bwd, + db_fc partials)
//      <K,N,Store>    dx = dpre . w_fc                     (bwd)
//      <M,N,Store>    dW_proj = dout^T . act, dW_fc = dpre^T . x  (bwd; K = tokens),
//                     when the launcher picks S = 1 split-K slice
//      <M,N,Partial>  the same weight gradients' fp32 slices when S > 1
//    Bias gradients: db_fc = at::sum over the fp32 [ceil(M/128), Hd] partials of
//    <K,N,DGelu> (fixed order, no atomics); db_proj = at::sum(dout, 0, fp32).
//    All five GEMMs of a direction run here on the "mma" path; the launcher's
//    cuBLASLt path and at::mm path are described in csrc/cuda/gelu_mlp_cuda.cu.
// 2. mlp_splitk_reduce_kernel<T>: C = round_T(((ws[0] + ws[1]) + ws[2]) + ... +
//    bias) over the S fp32 slices of <M,N,Partial>, always in slice order, so the
//    bits depend on S only, never on which CTA finished first (no float atomics).
//    Launched by launch_mlp_gemm_splitk right after the partial GEMM, same stream.
// 3. mlp_bias_gelu_kernel<Tin, Tpre, Tact>: elementwise pre = round_Tpre(in +
//    bias), act = gelu(pre). For float32/float64 inputs (whose GEMMs are
//    at::mm, i.e. cuBLAS), for fp16/bf16 shapes the mma kernel cannot take
//    (computed in fp32 like the CPU backend), and (Tin = Tpre = Tact = T, no
//    bias, pre = nullptr) to recompute act from pre in the cuBLASLt backward.
// 4. mlp_dgelu_kernel<Tpre, Acc>: elementwise dpre = dact * gelu'(pre) in
//    place, act = gelu(pre): the backward of the at::mm path.
//
// Split-K (the weight-gradient GEMMs, launch_mlp_gemm_splitk)
// -----------------------------------------------------------
//   dW_fc = dpre^T . x and dW_proj = dout^T . act reduce over K = M tokens (8k-32k)
//   but have few output tiles: C = 768, Hd = 3072 is 6 x 24 = 144 CTAs for the
//   132 x 2 = 264 CTA slots of an H100, so 45% of the GPU idles for the whole,
//   long K loop. Split-K cuts the K tiles into S contiguous slices (slice s:
//   tiles [floor(s*KT/S), floor((s+1)*KT/S)), KT = ceil(K/32); only the last
//   slice holds the K tail; a slice may be empty when KT < S and then stores
//   zeros), runs a (tiles, S) grid of <M,N,Partial> CTAs writing fp32 partial
//   tiles to an [S, m, n] workspace (GEMM m x n = C x Hd or Hd x C), and kernel 2
//   sums them in slice order, adds the bias (if any) and rounds to the 16-bit
//   type, like kEpiStore. Deterministic: the same S gives the
//   same bits run to run; a different S rounds differently (fp32 sums in
//   another grouping), S = 1 is exactly the unsplit <M,N,Store> kernel.
//   Choice of S (splitk_slices_auto, pure; called by the launcher with slots =
//   SMs x resident CTAs per SM from the occupancy API):
//     tiles >= slots (a full wave already) or KT < 2 * 8:  S = 1;
//     else S in 1 .. min(4, KT / 8) minimising the wave-quantised time
//     ceil(S * tiles / slots) / S (in units of one unsplit CTA), smallest S on
//     ties, S = 1 unless strictly better. 8 K tiles (256 rows) at least per slice
//     keeps the 4-stage pipeline's prologue/epilogue small; S <= 4 bounds the
//     workspace (4 x m x n fp32) and its extra traffic (written once, read once
//     by kernel 2: 8 bytes per element per slice, against 2 K flops per element
//     of GEMM). 144 tiles, 264 slots, K >= 768: S = 3 (432 CTAs, 2 waves of a
//     third of the work each = 0.67 of the unsplit time, before the reduction).
//     The constants are an untuned first cut (chosen without a GPU to measure).
//   Forcing: the launcher's env PYGPT_GEMM_SPLITK = integer >= 1 sets S (clamped
//   to kMaxSplitK = 64), for tests and tuning.
// GEMM tiling
// -----------
//   CTA tile 128 (M) x 128 (N) x 32 (K), 256 threads = 8 warps as 2 (M) x 4 (N),
//   warp tile 64 x 32 = 4 m16 x 4 n8 mma tiles = 64 fp32 accumulators/thread.
//   Grid: 1-D, ceil(M/128)*ceil(N/128) CTAs in GROUP_M = 8 super-rows (Triton's
//   L2-friendly order); kEpiPartial adds gridDim.y = S slices (each slice's CTAs
//   walk the same tile order). __launch_bounds__(256, 2): two CTAs per SM.
// Pipeline
// --------
//   4 stages of (A tile 8 KiB + B tile 8 KiB) = 64 KiB dynamic shared memory
//   (opted in with cudaFuncAttributeMaxDynamicSharedMemorySize), filled with
//   cp.async.cg 16-byte copies (2 per thread per operand per stage).
//   Prologue: stages 0..2 issued, one commit group each (empty groups too).
//   Iteration kt: cp.async.wait_group 2 (this thread's copies of tile kt have
//   landed: 3 + kt groups committed, at most 2 pending), __syncthreads (every
//   thread's copies visible, AND every warp has finished reading tile kt-1),
//   then issue tile kt+3 into stage (kt+3)%4 == (kt-1)%4 -- the stage just
//   released by that barrier -- and commit; then 2 k16 steps of ldmatrix +
//   16 mma per warp on stage kt%4. One barrier per K tile.
//   After the loop: wait_group 0 + __syncthreads before the epilogue reuses
//   shared memory (kEpiDGelu's cross-warp column-sum buffer).
// Shared-memory layouts (16-byte chunks, XOR-swizzled, no padding)
// ----------------------------------------------------------------
//   K-major tile (A[m][k] or B[n][k]): 128 rows of 32 elements = 4 chunks of
//     64 bytes; chunk c of row r lives at chunk (c ^ ((r >> 1) & 3)). 8 rows
//     r0..r0+7 (r0 % 8 == 0) at one logical chunk then hit 8 distinct 16-byte
//     bank groups (even rows 0..3, odd rows 4..7): conflict-free ldmatrix.
//   M/N-major tile (A^T[k][m] or B[k][n]): 32 rows (k) of 128 elements = 16
//     chunks; chunk c of row r lives at chunk (c ^ (r & 7)): 8 consecutive k
//     rows at one chunk hit 8 distinct bank groups.
// Fragment layouts (PTX ISA, mma.m16n8k16, lane: g = lane >> 2, t = lane & 3)
// ------------------------------------------------------------------------
//   A (16x16, row): a0 = A[g][2t,2t+1], a1 = A[g+8][2t,..], a2 = A[g][2t+8,..],
//                   a3 = A[g+8][2t+8,..]
//   B (16x8, col):  b0 = B[2t,2t+1][g], b1 = B[2t+8,2t+9][g]
//   C (16x8, f32):  c0,c1 = C[g][2t,2t+1], c2,c3 = C[g+8][2t,2t+1]
//   ldmatrix.x4: lane l gives the row address of matrix l>>3, row l&7; each
//   lane gets per matrix (row l>>2, cols 2(l&3),+1), with .trans (rows
//   2(l&3),+1, col l>>2).
//   A K-major: x4 at rows m0 + (l & 15), chunk k0/8 + (l >> 4): matrices
//     (rows 0-7,k 0-7) (rows 8-15,k 0-7) (rows 0-7,k 8-15) (rows 8-15,k 8-15)
//     = a0..a3.
//   A M-major: x4.trans at k row k0 + (l & 7) + 8*((l>>3) >> 1), m chunk
//     m0/8 + ((l>>3) & 1): matrices (k 0-7,m 0-7) (k 0-7,m 8-15) (k 8-15,m 0-7)
//     (k 8-15,m 8-15); .trans hands lane (k 2t..2t+1, m g) = a0..a3.
//   B K-major (smem [n][k]): x4 at n row n0 + (l & 7) + 8*((l>>3) >> 1),
//     k chunk k0/8 + ((l>>3) & 1): (n 0-7,k 0-7)=b0 and (n 0-7,k 8-15)=b1 of
//     n-tile 0, (n 8-15, ...) = b0, b1 of n-tile 1.
//   B N-major (smem [k][n]): x4.trans at k row k0 + (l & 7) + 8*((l>>3) & 1),
//     n chunk n0/8 + ((l>>3) >> 1): (k 0-7,n 0-7)=b0, (k 8-15,n 0-7)=b1 of
//     n-tile 0, then n-tile 1.
//   Epilogue: acc[mi][ni][r] is C[row][col], row = tile row + wm*64 + mi*16 +
//   g + 8*(r >> 1), col = tile col + wn*32 + ni*8 + 2t + (r & 1); pairs (r,
//   r+1) are adjacent columns, stored as one 32-bit __half2 / __nv_bfloat162.
// Edges and limits
// ----------------
//   Any M, N, K >= 0 (the launcher skips M == 0 or N == 0). Tails are
//   zero-filled by cp.async with src-size 0 (a valid dummy address is passed);
//   accumulators of out-of-range rows/cols are never stored. REQUIRED (the
//   launcher routes other shapes to its at::mm path): the contiguous extent of
//   every operand a multiple of 8 elements (K for K-major operands, M for an
//   M-major A, N for an N-major B and for C/aux/act), every leading dimension
//   a multiple of 8, every pointer 16-byte aligned; M, N, K < 2^31 and
//   ceil(M/128)*ceil(N/128) < 2^31. Offsets are 64-bit. sm_80+ (mma bf16,
//   cp.async, ldmatrix); on older targets the GEMM body is a __trap().
// GELU math (fp32; fp64 in the elementwise kernels for float64)
//   tanh:  0.5 x (1 + tanh u) = x sigmoid(2u), u = sqrt(2/pi)(x + 0.044715 x^3):
//          gelu = x / (1 + e), e = exp(min(-2u, 88)); s = 1/(1+e);
//          gelu' = s + 2 x s (e s) u'  (1 - s = e s, no cancellation; the clamp
//          keeps e finite so e*s never is inf*0) -- csrc/cpu/gelu_mlp.cpp's form.
//   none:  Phi(x) = 0.5 erfc(-x/sqrt2); gelu = x Phi; gelu' = Phi + x phi(x).
//   expf / erfcf are the accurate CUDA math functions (no fast-math).
// Not done: split-K with the reduction fused into the GEMM (last CTA of a tile
//   sums the slices, ordered by an integer semaphore: saves a launch and one
//   workspace read), split-K for the other GEMMs (they have M/128 tiles: enough),
//   wgmma/TMA on sm_90 (mma.sync runs on Hopper at a fraction of its peak; the
//   launcher's auto mode then picks cuBLASLt), smem-staged coalesced epilogue
//   stores (each warp writes 16-byte row pieces).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

// Kernel launches are written PYGPT_LAUNCH(grid, block, smem, stream, kernel)(args...): the
// triple-chevron launch; tests/cuda_emu/emu.h (the host emulator that runs these kernels in CI, see
// tests/test_cuda_emulation.py) defines it first to run them on the CPU.
#ifndef PYGPT_LAUNCH
#define PYGPT_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<grid, block, smem, stream>>>
#endif

namespace pygpt {
namespace mlp_kernels {

// ---------------------------------------------------------------------------
// Tile configuration
// ---------------------------------------------------------------------------
constexpr int kBM = 128;
constexpr int kBN = 128;
constexpr int kBK = 32;
constexpr int kStages = 4;
constexpr int kThreads = 256;
constexpr int kWarpsM = 2;
constexpr int kWarpsN = 4;
constexpr int kWM = kBM / kWarpsM;  // 64
constexpr int kWN = kBN / kWarpsN;  // 32
constexpr int kMTiles = kWM / 16;   // 4 m16 tiles per warp
constexpr int kNTiles = kWN / 8;    // 4 n8 tiles per warp
constexpr int kTileAElems = kBM * kBK;  // 4096 (K-major 128x32 or M-major 32x128)
constexpr int kTileBElems = kBN * kBK;  // 4096
constexpr int kStageElems = kTileAElems + kTileBElems;
constexpr int kSmemBytes = kStages * kStageElems * 2;  // 64 KiB (16-bit elements)
constexpr int kGroupM = 8;
constexpr int kAlign = 8;  // elements per 16-byte chunk: the operand alignment unit

static_assert(kWarpsM * kWarpsN * 32 == kThreads, "8 warps");
static_assert(kBM * kBK / 8 == 2 * kThreads && kBN * kBK / 8 == 2 * kThreads,
              "two 16-byte chunks per thread per operand per stage");
static_assert(kBK == 32 && kBM == 128 && kBN == 128, "the swizzles below assume 32 x 128 tiles");
static_assert(kWarpsM * kBN * 4 <= kSmemBytes, "column-sum scratch fits in the stage buffers");

enum : int { kEpiStore = 0, kEpiGeluAux = 1, kEpiDGelu = 2, kEpiPartial = 3 };

// Split-K (kEpiPartial; see "Split-K" in the header comment).
constexpr int kMaxSplitK = 64;       // slices at most (a forced PYGPT_GEMM_SPLITK is clamped to it)
constexpr int kMaxAutoSplitK = 4;    // slices at most when the launcher chooses
constexpr int kMinSplitKTiles = 8;   // auto: every slice gets >= 8 K tiles (256 rows of K)

struct MlpGemmParams {
  const void* a;      // T, layout by kAKMajor
  const void* b;      // T, layout by kBKMajor
  void* c;            // T, row-major M x N, ldc
  const void* bias;   // T [N] or nullptr (kEpiStore, kEpiGeluAux)
  void* aux;          // T, ld_aux: pre OUT (kEpiGeluAux) / pre IN (kEpiDGelu)
  void* act;          // T, ld_act: act OUT (kEpiDGelu)
  float* colsum;      // fp32 [ceil(M/128), N] partial column sums of C (kEpiDGelu) or nullptr
  float* partial;     // fp32 [splits, M, N] split-K workspace (kEpiPartial; c, ldc unused)
  int64_t lda, ldb, ldc, ld_aux, ld_act;
  int m, n, k;
  int gelu_tanh;      // 1: tanh approximation, 0: exact erf form
  int splits;         // kEpiPartial: number of K slices (= gridDim.y)
};

// First K tile (of kBK) of slice s of S over ktiles tiles: floor(s * ktiles / S). Slice s covers
// tiles [begin(s), begin(s + 1)): sizes differ by at most one tile, only the last slice can hold the
// K tail (a partial tile), and a slice may be empty (ktiles < S) -- it then stores zeros.
__host__ __device__ __forceinline__ int splitk_kt_begin(int s, int splits, int ktiles) {
  return static_cast<int>(static_cast<int64_t>(s) * ktiles / splits);
}

// ---------------------------------------------------------------------------
// Numeric helpers (no implicit half conversions: torch builds with
// __CUDA_NO_HALF_CONVERSIONS__ and friends)
// ---------------------------------------------------------------------------
template <typename T>
struct Num;
template <>
struct Num<__half> {
  using acc = float;
  using pair = __half2;
  static __device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
  template <typename A>
  static __device__ __forceinline__ __half from_acc(A v) { return __float2half_rn(static_cast<float>(v)); }
  static __device__ __forceinline__ __half2 pack(float lo, float hi) { return __floats2half2_rn(lo, hi); }
  static __device__ __forceinline__ float2 unpack(__half2 v) { return __half22float2(v); }
};
template <>
struct Num<__nv_bfloat16> {
  using acc = float;
  using pair = __nv_bfloat162;
  static __device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }
  template <typename A>
  static __device__ __forceinline__ __nv_bfloat16 from_acc(A v) {
    return __float2bfloat16_rn(static_cast<float>(v));
  }
  static __device__ __forceinline__ __nv_bfloat162 pack(float lo, float hi) {
    return __floats2bfloat162_rn(lo, hi);
  }
  static __device__ __forceinline__ float2 unpack(__nv_bfloat162 v) { return __bfloat1622float2(v); }
};
template <>
struct Num<float> {
  using acc = float;
  static __device__ __forceinline__ float to_acc(float v) { return v; }
  template <typename A>
  static __device__ __forceinline__ float from_acc(A v) { return static_cast<float>(v); }
};
template <>
struct Num<double> {
  using acc = double;
  static __device__ __forceinline__ double to_acc(double v) { return v; }
  template <typename A>
  static __device__ __forceinline__ double from_acc(A v) { return static_cast<double>(v); }
};

// ---------------------------------------------------------------------------
// GELU and its derivative (formulas of csrc/cpu/gelu_mlp.cpp)
// ---------------------------------------------------------------------------
constexpr float kSqrt2OverPiF = 0.7978845608028654f;
constexpr float kCubicF = 0.044715f;
constexpr float kInvSqrt2F = 0.7071067811865476f;
constexpr float kInvSqrt2PiF = 0.3989422804014327f;
constexpr double kSqrt2OverPi = 0.7978845608028654;
constexpr double kCubic = 0.044715;
constexpr double kInvSqrt2 = 0.7071067811865476;
constexpr double kInvSqrt2Pi = 0.3989422804014327;

__device__ __forceinline__ float gelu(float x, bool tanh_form) {
  if (tanh_form) {
    const float u = kSqrt2OverPiF * (x + kCubicF * x * x * x);
    const float e = expf(fminf(-2.0f * u, 88.0f));
    return x / (1.0f + e);  // x * sigmoid(2u) = 0.5 x (1 + tanh u)
  }
  return 0.5f * x * erfcf(-x * kInvSqrt2F);  // x * Phi(x)
}

__device__ __forceinline__ void gelu_and_grad(float x, bool tanh_form, float& g, float& dg) {
  if (tanh_form) {
    const float x2 = x * x;
    const float u = kSqrt2OverPiF * (x + kCubicF * x2 * x);
    const float du = kSqrt2OverPiF * (1.0f + 3.0f * kCubicF * x2);
    const float e = expf(fminf(-2.0f * u, 88.0f));
    const float s = 1.0f / (1.0f + e);  // sigmoid(2u); 1 - s = e * s
    g = x * s;
    dg = s + 2.0f * x * s * (e * s) * du;
  } else {
    const float cdf = 0.5f * erfcf(-x * kInvSqrt2F);
    g = x * cdf;
    dg = cdf + x * kInvSqrt2PiF * expf(-0.5f * x * x);
  }
}

__device__ __forceinline__ double gelu(double x, bool tanh_form) {
  if (tanh_form) return 0.5 * x * (1.0 + tanh(kSqrt2OverPi * (x + kCubic * x * x * x)));
  return 0.5 * x * erfc(-x * kInvSqrt2);
}

__device__ __forceinline__ void gelu_and_grad(double x, bool tanh_form, double& g, double& dg) {
  if (tanh_form) {
    const double t = tanh(kSqrt2OverPi * (x + kCubic * x * x * x));
    const double du = kSqrt2OverPi * (1.0 + 3.0 * kCubic * x * x);
    g = 0.5 * x * (1.0 + t);
    dg = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du;
  } else {
    const double cdf = 0.5 * erfc(-x * kInvSqrt2);
    g = x * cdf;
    dg = cdf + x * exp(-0.5 * x * x) * kInvSqrt2Pi;
  }
}

// ---------------------------------------------------------------------------
// PTX wrappers
// ---------------------------------------------------------------------------
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte async copy global -> shared; pred false: src-size 0, the 16 bytes are zero-filled
// and nothing is read (src must still be a valid address: callers pass the operand's base).
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, bool pred) {
  const int src_size = pred ? 16 : 0;
#ifdef PYGPT_CUDA_EMULATION
  pygpt_emu::cp_async_cg_16(dst, src, src_size);
#else
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_size)
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
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#ifdef PYGPT_CUDA_EMULATION
  pygpt_emu::cp_async_wait(N);
#else
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], uint32_t addr) {
#ifdef PYGPT_CUDA_EMULATION
  pygpt_emu::ldmatrix_x4(r, addr, false);
#else
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
#endif
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], uint32_t addr) {
#ifdef PYGPT_CUDA_EMULATION
  pygpt_emu::ldmatrix_x4(r, addr, true);
#else
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
#endif
}

// d += a . b for one m16n8k16 tile, fp32 accumulators.
template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#ifdef PYGPT_CUDA_EMULATION
  pygpt_emu::mma_m16n8k16<T>(d, a, b[0], b[1]);
#else
  if constexpr (std::is_same_v<T, __half>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    static_assert(std::is_same_v<T, __nv_bfloat16>, "mma_16816: fp16 or bf16");
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
#endif
}

// Swizzled element offsets inside one operand tile (see the header).
// K-major: 128 rows x 32 elements (4 chunks per row).
__device__ __forceinline__ int kmajor_off(int row, int chunk) {
  return row * kBK + ((chunk ^ ((row >> 1) & 3)) << 3);
}
// M/N-major: 32 rows (k) x 128 elements (16 chunks per row).
__device__ __forceinline__ int mnmajor_off(int row, int chunk) {
  return row * kBM + ((chunk ^ (row & 7)) << 3);
}

// ---------------------------------------------------------------------------
// The GEMM
// ---------------------------------------------------------------------------
template <typename T, bool kAKMajor, bool kBKMajor, int kEpi>
__global__ void __launch_bounds__(kThreads, 2) mlp_gemm_kernel(const MlpGemmParams p) {
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ < 800)
  __trap();  // mma bf16 / cp.async / ldmatrix need sm_80; the launcher never gets here
#else
  extern __shared__ uint4 mlp_smem_raw[];  // 16-byte aligned
  T* const smem = reinterpret_cast<T*>(mlp_smem_raw);
  const T* const A = static_cast<const T*>(p.a);
  const T* const B = static_cast<const T*>(p.b);

  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int wm = warp / kWarpsN;  // 0..1
  const int wn = warp % kWarpsN;  // 0..3

  // ---- which 128 x 128 tile of C: GROUP_M super-rows ----
  const int tiles_m = (p.m + kBM - 1) / kBM;
  const int tiles_n = (p.n + kBN - 1) / kBN;
  const int pid = static_cast<int>(blockIdx.x);
  const int per_group = kGroupM * tiles_n;
  const int first_m = (pid / per_group) * kGroupM;
  const int group_rows = min(tiles_m - first_m, kGroupM);
  const int pid_m = first_m + (pid % per_group) % group_rows;
  const int pid_n = (pid % per_group) / group_rows;
  const int m0 = pid_m * kBM;
  const int n0 = pid_n * kBN;

  // ---- which K tiles: all of them, or (kEpiPartial) slice blockIdx.y's ----
  int kt0 = 0;
  int ktiles = (p.k + kBK - 1) / kBK;
  if constexpr (kEpi == kEpiPartial) {
    const int slice = static_cast<int>(blockIdx.y);
    kt0 = splitk_kt_begin(slice, p.splits, ktiles);
    ktiles = splitk_kt_begin(slice + 1, p.splits, ktiles) - kt0;
  }

  // ---- global -> shared copy of one K tile into one stage ----
  auto load_stage = [&](int stage, int kt) {
    T* const sA = smem + stage * kStageElems;
    T* const sB = sA + kTileAElems;
    const int k0 = kt * kBK;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int id = tid + i * kThreads;  // 0..511
      if constexpr (kAKMajor) {
        const int r = id >> 2, c = id & 3;  // row m, chunk along k
        const int gm = m0 + r, gk = k0 + c * 8;
        const bool ok = gm < p.m && gk < p.k;
        const T* src = ok ? A + static_cast<int64_t>(gm) * p.lda + gk : A;
        cp_async_16(smem_u32(sA + kmajor_off(r, c)), src, ok);
      } else {
        const int r = id >> 4, c = id & 15;  // row k, chunk along m
        const int gk = k0 + r, gm = m0 + c * 8;
        const bool ok = gk < p.k && gm < p.m;
        const T* src = ok ? A + static_cast<int64_t>(gk) * p.lda + gm : A;
        cp_async_16(smem_u32(sA + mnmajor_off(r, c)), src, ok);
      }
      if constexpr (kBKMajor) {
        const int r = id >> 2, c = id & 3;  // row n, chunk along k
        const int gn = n0 + r, gk = k0 + c * 8;
        const bool ok = gn < p.n && gk < p.k;
        const T* src = ok ? B + static_cast<int64_t>(gn) * p.ldb + gk : B;
        cp_async_16(smem_u32(sB + kmajor_off(r, c)), src, ok);
      } else {
        const int r = id >> 4, c = id & 15;  // row k, chunk along n
        const int gk = k0 + r, gn = n0 + c * 8;
        const bool ok = gk < p.k && gn < p.n;
        const T* src = ok ? B + static_cast<int64_t>(gk) * p.ldb + gn : B;
        cp_async_16(smem_u32(sB + mnmajor_off(r, c)), src, ok);
      }
    }
  };

  float acc[kMTiles][kNTiles][4];
#pragma unroll
  for (int mi = 0; mi < kMTiles; ++mi)
#pragma unroll
    for (int ni = 0; ni < kNTiles; ++ni)
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[mi][ni][r] = 0.0f;

  // ---- prologue: tiles 0 .. kStages-2, one commit group each (possibly empty) ----
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < ktiles) load_stage(s, kt0 + s);
    cp_async_commit();
  }

  // Per-lane ldmatrix coordinates (see "Fragment layouts").
  const int lrow16 = lane & 15;      // A K-major: row within the m16 tile
  const int lhi = lane >> 4;         // A K-major: k chunk 0/1
  const int l8 = lane & 7;           // row within an 8x8 matrix
  const int lmat = lane >> 3;        // which of the 4 matrices this lane addresses

  // ---- main loop ----
  for (int kt = 0; kt < ktiles; ++kt) {
    cp_async_wait<kStages - 2>();  // tile kt landed (this thread's copies)
    __syncthreads();               // everyone's copies visible; stage (kt-1)%S free
    {
      const int next = kt + kStages - 1;
      if (next < ktiles) load_stage(next % kStages, kt0 + next);
      cp_async_commit();
    }
    const T* const sA = smem + (kt % kStages) * kStageElems;
    const T* const sB = sA + kTileAElems;

#pragma unroll
    for (int kk = 0; kk < kBK; kk += 16) {
      uint32_t af[kMTiles][4];
      uint32_t bf[kNTiles][2];
#pragma unroll
      for (int mi = 0; mi < kMTiles; ++mi) {
        const int mbase = wm * kWM + mi * 16;
        if constexpr (kAKMajor) {
          const int row = mbase + lrow16;
          const int chunk = (kk >> 3) + lhi;
          ldsm_x4(af[mi], smem_u32(sA + kmajor_off(row, chunk)));
        } else {
          const int krow = kk + l8 + ((lmat >> 1) << 3);
          const int chunk = (mbase >> 3) + (lmat & 1);
          ldsm_x4_trans(af[mi], smem_u32(sA + mnmajor_off(krow, chunk)));
        }
      }
#pragma unroll
      for (int nj = 0; nj < kNTiles / 2; ++nj) {
        const int nbase = wn * kWN + nj * 16;
        uint32_t r[4];
        if constexpr (kBKMajor) {
          const int nrow = nbase + l8 + ((lmat >> 1) << 3);
          const int chunk = (kk >> 3) + (lmat & 1);
          ldsm_x4(r, smem_u32(sB + kmajor_off(nrow, chunk)));
        } else {
          const int krow = kk + l8 + ((lmat & 1) << 3);
          const int chunk = (nbase >> 3) + (lmat >> 1);
          ldsm_x4_trans(r, smem_u32(sB + mnmajor_off(krow, chunk)));
        }
        bf[2 * nj][0] = r[0];
        bf[2 * nj][1] = r[1];
        bf[2 * nj + 1][0] = r[2];
        bf[2 * nj + 1][1] = r[3];
      }
#pragma unroll
      for (int mi = 0; mi < kMTiles; ++mi)
#pragma unroll
        for (int ni = 0; ni < kNTiles; ++ni) mma_16816<T>(acc[mi][ni], af[mi], bf[ni]);
    }
  }
  cp_async_wait<0>();  // only empty groups can be pending here
  __syncthreads();     // all warps done with the stages: the epilogue may reuse smem

  // ---- epilogue ----
  using P2 = typename Num<T>::pair;
  const int g = lane >> 2;
  const int t = lane & 3;
  const int row0 = m0 + wm * kWM + g;
  const int col0 = n0 + wn * kWN + 2 * t;
  const bool tanh_form = p.gelu_tanh != 0;
  T* const Cp = static_cast<T*>(p.c);

  if constexpr (kEpi == kEpiStore || kEpi == kEpiGeluAux) {
    float bias0[kNTiles], bias1[kNTiles];
    const T* const bias = static_cast<const T*>(p.bias);
#pragma unroll
    for (int ni = 0; ni < kNTiles; ++ni) {
      const int col = col0 + ni * 8;
      bias0[ni] = 0.0f;
      bias1[ni] = 0.0f;
      if (bias != nullptr && col < p.n) {
        const float2 bv = Num<T>::unpack(*reinterpret_cast<const P2*>(bias + col));
        bias0[ni] = bv.x;
        bias1[ni] = bv.y;
      }
    }
#pragma unroll
    for (int mi = 0; mi < kMTiles; ++mi) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int row = row0 + mi * 16 + h * 8;
        if (row >= p.m) continue;
#pragma unroll
        for (int ni = 0; ni < kNTiles; ++ni) {
          const int col = col0 + ni * 8;  // even; N % 8 == 0, so col + 1 < N iff col < N
          if (col >= p.n) continue;
          const float v0 = acc[mi][ni][2 * h] + bias0[ni];
          const float v1 = acc[mi][ni][2 * h + 1] + bias1[ni];
          const int64_t ci = static_cast<int64_t>(row) * p.ldc + col;
          if constexpr (kEpi == kEpiStore) {
            *reinterpret_cast<P2*>(Cp + ci) = Num<T>::pack(v0, v1);
          } else {
            const P2 pre2 = Num<T>::pack(v0, v1);  // pre rounded to T, stored
            *reinterpret_cast<P2*>(static_cast<T*>(p.aux) + static_cast<int64_t>(row) * p.ld_aux + col) =
                pre2;
            const float2 pr = Num<T>::unpack(pre2);  // continue from the rounded pre
            *reinterpret_cast<P2*>(Cp + ci) = Num<T>::pack(gelu(pr.x, tanh_form), gelu(pr.y, tanh_form));
          }
        }
      }
    }
  } else if constexpr (kEpi == kEpiPartial) {
    // fp32 partial tile of slice blockIdx.y -> partial[slice][row][col] (ld N), no rounding, no bias:
    // mlp_splitk_reduce_kernel sums the slices in order and applies bias / rounding.
    float* const ws = p.partial + static_cast<int64_t>(blockIdx.y) * p.m * p.n;
#pragma unroll
    for (int mi = 0; mi < kMTiles; ++mi) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int row = row0 + mi * 16 + h * 8;
        if (row >= p.m) continue;
#pragma unroll
        for (int ni = 0; ni < kNTiles; ++ni) {
          const int col = col0 + ni * 8;
          if (col >= p.n) continue;
          *reinterpret_cast<float2*>(ws + static_cast<int64_t>(row) * p.n + col) =
              make_float2(acc[mi][ni][2 * h], acc[mi][ni][2 * h + 1]);
        }
      }
    }
  } else {
    static_assert(kEpi == kEpiDGelu, "unknown epilogue");
    const T* const pre = static_cast<const T*>(p.aux);
    T* const act = static_cast<T*>(p.act);
    float cs0[kNTiles], cs1[kNTiles];  // this thread's column sums of the rounded dpre
#pragma unroll
    for (int ni = 0; ni < kNTiles; ++ni) {
      cs0[ni] = 0.0f;
      cs1[ni] = 0.0f;
    }
#pragma unroll
    for (int mi = 0; mi < kMTiles; ++mi) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int row = row0 + mi * 16 + h * 8;
        if (row >= p.m) continue;
#pragma unroll
        for (int ni = 0; ni < kNTiles; ++ni) {
          const int col = col0 + ni * 8;
          if (col >= p.n) continue;
          const float2 pr = Num<T>::unpack(
              *reinterpret_cast<const P2*>(pre + static_cast<int64_t>(row) * p.ld_aux + col));
          float g0, dg0, g1, dg1;
          gelu_and_grad(pr.x, tanh_form, g0, dg0);
          gelu_and_grad(pr.y, tanh_form, g1, dg1);
          const P2 d2 = Num<T>::pack(acc[mi][ni][2 * h] * dg0, acc[mi][ni][2 * h + 1] * dg1);
          *reinterpret_cast<P2*>(Cp + static_cast<int64_t>(row) * p.ldc + col) = d2;
          *reinterpret_cast<P2*>(act + static_cast<int64_t>(row) * p.ld_act + col) = Num<T>::pack(g0, g1);
          const float2 dr = Num<T>::unpack(d2);
          cs0[ni] += dr.x;
          cs1[ni] += dr.y;
        }
      }
    }
    if (p.colsum != nullptr) {  // uniform over the CTA
      // Sum over the 8 row groups g of the warp (lanes with the same t), then over the 2 warps
      // that share these columns (wm = 0, 1) through shared memory; fixed order: deterministic.
      float* const red = reinterpret_cast<float*>(mlp_smem_raw);  // [kWarpsM][kBN]
#pragma unroll
      for (int ni = 0; ni < kNTiles; ++ni) {
        float s0 = cs0[ni], s1 = cs1[ni];
#pragma unroll
        for (int off = 4; off < 32; off <<= 1) {
          s0 += __shfl_xor_sync(0xffffffffu, s0, off);
          s1 += __shfl_xor_sync(0xffffffffu, s1, off);
        }
        if (g == 0) {
          const int lc = wn * kWN + ni * 8 + 2 * t;  // column within the CTA tile
          red[wm * kBN + lc] = s0;
          red[wm * kBN + lc + 1] = s1;
        }
      }
      __syncthreads();
      if (tid < kBN) {
        const int col = n0 + tid;
        if (col < p.n) {
          float s = 0.0f;
#pragma unroll
          for (int w = 0; w < kWarpsM; ++w) s += red[w * kBN + tid];
          p.colsum[static_cast<int64_t>(pid_m) * p.n + col] = s;
        }
      }
    }
  }
#endif
}

// ---------------------------------------------------------------------------
// Split-K reduction: c[i][j] = round_T((((ws[0][i][j] + ws[1][i][j]) + ws[2][i][j]) + ...) + bias[j])
// -- always this order, whatever order the slices' CTAs ran in: deterministic. Four consecutive
// columns per thread (N % 8 == 0: float4 loads of ws, 16-byte aligned when ws is; two 4-byte pair
// stores into c).
// ---------------------------------------------------------------------------
template <typename T>
__global__ void __launch_bounds__(256) mlp_splitk_reduce_kernel(const float* __restrict__ ws, int splits,
                                                                int64_t m, int64_t n, const T* bias,
                                                                T* __restrict__ c, int64_t ldc) {
  using P2 = typename Num<T>::pair;
  const int64_t slice = m * n;
  // Rows over blockIdx.y, 4-column groups over x (no 64-bit division: it would be a called routine).
  for (int64_t row = blockIdx.y; row < m; row += gridDim.y) {
    for (int64_t col = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * 4; col < n;
         col += static_cast<int64_t>(gridDim.x) * blockDim.x * 4) {
      const int64_t off = row * n + col;
      const float* wp = ws + off;
      float4 s = *reinterpret_cast<const float4*>(wp);
      for (int z = 1; z < splits; ++z) {
        wp += slice;
        const float4 v = *reinterpret_cast<const float4*>(wp);
        s.x += v.x;
        s.y += v.y;
        s.z += v.z;
        s.w += v.w;
      }
      if (bias != nullptr) {
        const float2 b0 = Num<T>::unpack(*reinterpret_cast<const P2*>(bias + col));
        const float2 b1 = Num<T>::unpack(*reinterpret_cast<const P2*>(bias + col + 2));
        s.x += b0.x;
        s.y += b0.y;
        s.z += b1.x;
        s.w += b1.y;
      }
      T* const dst = c + row * ldc + col;
      reinterpret_cast<P2*>(dst)[0] = Num<T>::pack(s.x, s.y);
      reinterpret_cast<P2*>(dst)[1] = Num<T>::pack(s.z, s.w);
    }
  }
}

// ---------------------------------------------------------------------------
// Elementwise kernels (the at::mm path, and act for the cuBLASLt backward)
// ---------------------------------------------------------------------------
// pre[i] = round_Tpre(in[i] + bias[col]) (skipped when pre == nullptr), act[i] = gelu(pre[i]).
// in may alias pre (same type, in place). Rows over blockIdx.y, columns over x.
template <typename Tin, typename Tpre, typename Tact>
__global__ void __launch_bounds__(256) mlp_bias_gelu_kernel(const Tin* in, const Tin* bias, Tpre* pre,
                                                            Tact* __restrict__ act, int64_t rows,
                                                            int64_t cols, int gelu_tanh) {
  using Acc = typename Num<Tin>::acc;
  const bool tanh_form = gelu_tanh != 0;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    for (int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < cols;
         c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      const int64_t i = r * cols + c;
      Acc v = Num<Tin>::to_acc(in[i]);
      if (bias != nullptr) v += Num<Tin>::to_acc(bias[c]);
      const Tpre pv = Num<Tpre>::from_acc(v);
      if (pre != nullptr) pre[i] = pv;
      const auto x = Num<Tpre>::to_acc(pv);  // GELU of the rounded pre
      act[i] = Num<Tact>::from_acc(gelu(x, tanh_form));
    }
  }
}

// d[i] = d[i] * gelu'(pre[i]) (dact in, dpre out), act[i] = gelu(pre[i]).
template <typename Tpre, typename Acc>
__global__ void __launch_bounds__(256) mlp_dgelu_kernel(Acc* __restrict__ d, const Tpre* __restrict__ pre,
                                                        Acc* __restrict__ act, int64_t rows, int64_t cols,
                                                        int gelu_tanh) {
  const bool tanh_form = gelu_tanh != 0;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    for (int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < cols;
         c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      const int64_t i = r * cols + c;
      const Acc x = static_cast<Acc>(Num<Tpre>::to_acc(pre[i]));
      Acc gv, dg;
      gelu_and_grad(x, tanh_form, gv, dg);
      d[i] = d[i] * dg;
      act[i] = gv;
    }
  }
}

// ---------------------------------------------------------------------------
// Host launch helpers (torch-free). They return the error of the set-up calls;
// the launch itself is checked by the caller (cudaGetLastError /
// C10_CUDA_KERNEL_LAUNCH_CHECK right after), so no error is swallowed here.
// ---------------------------------------------------------------------------
inline bool mma_operands_ok(int64_t m, int64_t n, int64_t k) {
  const int64_t lim = 0x7fffffff;
  if (m < 0 || n < 0 || k < 0 || m > lim || n > lim || k > lim) return false;
  const int64_t tiles = ((m + kBM - 1) / kBM) * ((n + kBN - 1) / kBN);
  return tiles <= lim;
}

template <typename T, bool kAKMajor, bool kBKMajor, int kEpi>
inline cudaError_t launch_mlp_gemm(const MlpGemmParams& p, cudaStream_t stream) {
  if (p.m <= 0 || p.n <= 0) return cudaSuccess;
  if (!mma_operands_ok(p.m, p.n, p.k)) return cudaErrorInvalidValue;
  auto* kernel = &mlp_gemm_kernel<T, kAKMajor, kBKMajor, kEpi>;
  const cudaError_t e =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes);
  if (e != cudaSuccess) return e;
  const int64_t tiles =
      static_cast<int64_t>((p.m + kBM - 1) / kBM) * static_cast<int64_t>((p.n + kBN - 1) / kBN);
  PYGPT_LAUNCH(static_cast<unsigned>(tiles), kThreads, kSmemBytes, stream, kernel)(p);
  return cudaSuccess;
}

inline dim3 elementwise_grid(int64_t rows, int64_t cols) {
  int64_t gx = (cols + 255) / 256;
  gx = gx < 1 ? 1 : (gx > 1024 ? 1024 : gx);
  int64_t gy = rows < 1 ? 1 : (rows > 65535 ? 65535 : rows);
  return dim3(static_cast<unsigned>(gx), static_cast<unsigned>(gy), 1);
}

// ---- split-K for the weight-gradient GEMMs (<M,N,Store>: K = tokens, few output tiles) ----
// The automatic number of K slices (pure; the rule of "Split-K" in the header comment). slots = CTAs
// the GPU runs at once (SMs x resident CTAs per SM, the launcher asks the occupancy API).
inline int splitk_slices_auto(int64_t m, int64_t n, int64_t k, int64_t slots) {
  if (m <= 0 || n <= 0 || k <= 0 || slots <= 0) return 1;
  const int64_t tiles = ((m + kBM - 1) / kBM) * ((n + kBN - 1) / kBN);
  if (tiles >= slots) return 1;  // one full wave (or more) already: no split
  const int64_t ktiles = (k + kBK - 1) / kBK;
  int64_t smax = ktiles / kMinSplitKTiles;
  if (smax > kMaxAutoSplitK) smax = kMaxAutoSplitK;
  int best = 1;
  double best_cost = 1.0;  // S = 1: one (partial) wave of full-K CTAs
  for (int64_t s = 2; s <= smax; ++s) {
    // waves of CTAs, each doing 1/S of the unsplit CTA's work
    const double cost = static_cast<double>((s * tiles + slots - 1) / slots) / static_cast<double>(s);
    if (cost < best_cost) {  // strictly better: ties keep the smaller S (less workspace traffic)
      best_cost = cost;
      best = static_cast<int>(s);
    }
  }
  return best;
}

// fp32 elements of the workspace launch_mlp_gemm_splitk needs (0 for splits <= 1).
inline int64_t splitk_workspace_floats(int64_t m, int64_t n, int splits) {
  return splits > 1 ? static_cast<int64_t>(splits) * m * n : 0;
}

// C = A . B (+ bias) like launch_mlp_gemm<T, kAKMajor, kBKMajor, kEpiStore> (which it IS for
// splits <= 1), for splits > 1 as two launches on `stream`: the <.., kEpiPartial> GEMM over a
// (tiles, splits) grid writing fp32 partial tiles into workspace (splitk_workspace_floats(m, n,
// splits) floats, 16-byte aligned, no initialisation needed: every element is written), then
// mlp_splitk_reduce_kernel summing them in slice order into C. The partial launch's error is
// returned (the reduction is not launched after a failed one); the reduction's is left to the
// caller's cudaGetLastError, as for launch_mlp_gemm.
template <typename T, bool kAKMajor, bool kBKMajor>
inline cudaError_t launch_mlp_gemm_splitk(const MlpGemmParams& p, int splits, float* workspace,
                                          cudaStream_t stream) {
  if (splits <= 1) return launch_mlp_gemm<T, kAKMajor, kBKMajor, kEpiStore>(p, stream);
  if (p.m <= 0 || p.n <= 0) return cudaSuccess;
  if (!mma_operands_ok(p.m, p.n, p.k) || splits > kMaxSplitK || workspace == nullptr ||
      reinterpret_cast<uintptr_t>(workspace) % 16 != 0) {
    return cudaErrorInvalidValue;
  }
  auto* kernel = &mlp_gemm_kernel<T, kAKMajor, kBKMajor, kEpiPartial>;
  cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes);
  if (e != cudaSuccess) return e;
  MlpGemmParams q = p;
  q.partial = workspace;
  q.splits = splits;
  const int64_t tiles =
      static_cast<int64_t>((p.m + kBM - 1) / kBM) * static_cast<int64_t>((p.n + kBN - 1) / kBN);
  PYGPT_LAUNCH(dim3(static_cast<unsigned>(tiles), static_cast<unsigned>(splits), 1), kThreads, kSmemBytes,
               stream, kernel)(q);
  e = cudaPeekAtLastError();
  if (e != cudaSuccess) return e;
  PYGPT_LAUNCH(elementwise_grid(p.m, p.n / 4), 256, 0, stream, mlp_splitk_reduce_kernel<T>)(
      workspace, splits, static_cast<int64_t>(p.m), static_cast<int64_t>(p.n), static_cast<const T*>(p.bias),
      static_cast<T*>(p.c), p.ldc);
  return cudaSuccess;
}


template <typename Tin, typename Tpre, typename Tact>
inline void launch_bias_gelu(const Tin* in, const Tin* bias, Tpre* pre, Tact* act, int64_t rows, int64_t cols,
                             bool tanh_form, cudaStream_t stream) {
  if (rows <= 0 || cols <= 0) return;
  PYGPT_LAUNCH(elementwise_grid(rows, cols), 256, 0, stream, mlp_bias_gelu_kernel<Tin, Tpre, Tact>)(
      in, bias, pre, act, rows, cols, tanh_form ? 1 : 0);
}

template <typename Tpre, typename Acc>
inline void launch_dgelu(Acc* d, const Tpre* pre, Acc* act, int64_t rows, int64_t cols, bool tanh_form,
                         cudaStream_t stream) {
  if (rows <= 0 || cols <= 0) return;
  PYGPT_LAUNCH(elementwise_grid(rows, cols), 256, 0, stream, mlp_dgelu_kernel<Tpre, Acc>)(
      d, pre, act, rows, cols, tanh_form ? 1 : 0);
}

}  // namespace mlp_kernels
}  // namespace pygpt

// Every kernel variant the launcher can launch, for tests/cuda_build/gelu_mlp_instances.cu
// (X(T, kAKMajor, kBKMajor, kEpi) / X(Tin, Tpre, Tact) / X(Tpre, Acc)). Keep in sync with
// csrc/cuda/gelu_mlp_cuda.cu.
#define PYGPT_GELU_MLP_GEMM_VARIANTS(X, T)                 \
  X(T, true, true, ::pygpt::mlp_kernels::kEpiGeluAux)      \
  X(T, true, true, ::pygpt::mlp_kernels::kEpiStore)        \
  X(T, true, false, ::pygpt::mlp_kernels::kEpiDGelu)       \
  X(T, true, false, ::pygpt::mlp_kernels::kEpiStore)       \
  X(T, false, false, ::pygpt::mlp_kernels::kEpiStore)      \
  X(T, false, false, ::pygpt::mlp_kernels::kEpiPartial)

// mlp_splitk_reduce_kernel<T> (X(T)).
#define PYGPT_GELU_MLP_SPLITK_REDUCE_VARIANTS(X) \
  X(__half)                                      \
  X(__nv_bfloat16)

#define PYGPT_GELU_MLP_BIAS_GELU_VARIANTS(X) \
  X(float, __half, float)                    \
  X(float, __nv_bfloat16, float)             \
  X(float, float, float)                     \
  X(double, double, double)                  \
  X(__half, __half, __half)                  \
  X(__nv_bfloat16, __nv_bfloat16, __nv_bfloat16)

#define PYGPT_GELU_MLP_DGELU_VARIANTS(X) \
  X(__half, float)                       \
  X(__nv_bfloat16, float)                \
  X(float, float)                        \
  X(double, double)
