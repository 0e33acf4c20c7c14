// ===========================================================================
// pygpt.layer_norm on CUDA: LayerNorm over the last dim with the residual add
// fused in, forward and backward. Device code + torch-free host launch helpers;
// the torch boundary (checks, dtype dispatch, allocation, stream) is
// csrc/cuda/layer_norm_cuda.cu. Semantics: exactly csrc/cpu/layer_norm.cpp.
// ===========================================================================
//
// What it computes
//   x, residual (optional), y, h: [N, C] row-major (made contiguous by the launcher)
//   h    = x + residual, added in the accumulation type (acc_t: float; double for
//          double rows) and ROUNDED to the row type T; stored only with a residual
//          (otherwise x itself plays h)
//   mean = mean(h), rstd = 1 / sqrt(var_biased(h) + eps)   per row, acc_t
//          -- statistics of h AS STORED (rounded): y == LN(returned h) exactly
//   y    = (h - mean) * rstd * w (+ b), rounded to T
//   backward: xhat = (h - mean) * rstd, g = dy * w,
//   dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) (+ dh),
//   dw = sum_rows(dy * xhat), db = sum_rows(dy)   (acc_t; the launcher casts to w's dtype)
//   w, b arrive already converted to acc_t (one small copy at the boundary).
//
// Kernels (T in {float, __half, __nv_bfloat16, double}; 39 instantiations in all: 14 fwd warp,
// 4 fwd block, 11 bwd warp, 4 bwd block, 4 bwd block-wide, 2 reduce -- see
// tests/cuda_build/layer_norm_instances.cu). Versions, llm.c dev/cuda style: which one runs
// depends only on (T, C), and each exists for the reason given.
//   layer_norm_fwd_warp_kernel<T, kE>   one warp per row, the row held in registers:
//       kE = elements per lane, a compile-time bound (8, 16, 32, 64; double: 8, 16), so
//       C <= 32 * kE (2048; double 512). Why: for the common widths (128 ... 2048) a row
//       fits one warp's registers; reductions are pure shuffles, no shared memory, no
//       __syncthreads, and the chunk loop is unrolled, so all of a lane's loads of a row
//       can be in flight at once.
//       Launch: 128 threads (4 warps = 4 rows in flight per block), grid-strided rows,
//       grid = min(ceil(N / 4), 32 * #SMs).
//   layer_norm_fwd_block_kernel<T>      one block per row, for C > 2048 (double > 512).
//       The row (as stored h, in acc_t) is cached in dynamic shared memory when
//       C * sizeof(acc_t) <= 47 KB (no opt-in needed; C <= 12032 float, 6016 double);
//       wider rows are re-read from global memory (x, or the h this very thread just
//       wrote) for the second and third pass -- L1/L2 hits, correct for any C.
//       Launch: threads = clamp(roundup32(ceil(C / V / 2)), 128, 1024), grid-strided rows,
//       grid = min(N, 32 * #SMs).
//   layer_norm_bwd_warp_kernel<T, kE>   v1 of the backward, one warp per row (kE = 8, 16,
//       32; double 8, 16; C <= 32 * kE = 1024, double 512). The lane keeps xhat and g of its
//       columns in registers between the two row passes, and its running dw/db column
//       partials in registers across ALL its rows (a lane owns the same columns in every
//       row). At the end the 4 warps' partials are summed in warp order through shared
//       memory into row blockIdx.x of partial[2][P][C] (dw rows, then db rows).
//       Launch: 128 threads, P = grid = min(ceil(N / 4), #SMs * occupancy) (one wave).
//   layer_norm_bwd_block_kernel<T, kE>  v2, one block per row for 1024 < C <= 512 * kE
//       (kE = 16: C <= 8192; double kE = 8: 512 < C <= 4096). Why: the warp kernel's idea at
//       block scale. Thread t owns chunks t + k * blockDim (k < kE / V) of EVERY row, so it
//       keeps the dw/db partials of its <= kE columns in registers across all the rows the
//       block grid-strides over, and writes its columns of the block's partial row once, at
//       the end. (Its predecessor, now the -wide kernel below, read-modify-wrote those
//       partials in global memory on every row: 2 x 2 x sizeof(acc_t) = 16 B of partial
//       traffic per element and row (L2 hits at best) on top of the 3-4 x sizeof(T) of
//       h/dy/dx(/dh); estimated, not measured, at 0.35-0.55x of copy bandwidth.) Like
//       the warp kernel it also keeps xhat and g in registers between the two row passes
//       (pass 2 reads only dh): 4 arrays of kE acc_t, 120-128 registers at the 512-thread
//       launch bound, no spills (ptxas -v, sm_80/sm_90). A 32-element bucket (C <= 16384)
//       spilled even without the xhat/g cache (all of a thread's loads in flight), hence
//       the -wide kernel past 8192 (double 4096). SASS (nvcc 13.0): every vec load is
//       LDG.E.128, 16-bit rows store STG.E.128 throughout; for fp32 rows nvcc still splits
//       the stores of chunks 2-3 (dx and partials) into 4-byte STG.E (a known gap).
//       Launch: threads = clamp(roundup32(ceil(C / kE)), 128, 512), P = grid =
//       min(N, #SMs * occupancy, max(1, 2^23 / C)) (one wave).
//   layer_norm_bwd_block_wide_kernel<T> v1 block kernel, kept only for C > 512 * kE (8192;
//       double 4096), where a thread's columns no longer fit its registers.
//       Thread-owned columns; dw/db partials accumulated in the block's own rows of
//       `partial` in global memory (read-modify-write by the owning thread only; zeroed
//       first). The second pass re-reads h, dy, w (L1/L2) and recomputes xhat and g
//       bit-identically. Launch: threads = clamp(roundup32(ceil(C / V / 2)), 128, 1024),
//       P = grid as v2.
//   layer_norm_bwd_reduce_kernel<acc_t>  dw[c] / db[c] = sum over p of partial[0/1][p][c]:
//       block (32, 16) owns 32 columns, thread (tx, ty) sums rows ty, ty + 16, ... in
//       order, then row 0 adds the 16 sums in order. grid (ceil(C / 32), 2). The second
//       kernel of every backward: a fixed-order sum of the per-CTA partials, no atomics.
//
// Algorithm / numerics
//   * Two-pass statistics over the cached row (registers / smem): mean first, then
//     sum((h - mean)^2) -- not E[h^2] - E[h]^2, which cancels for |mean| >> std.
//     Each lane sums its own elements in order, then a butterfly (shfl_xor) warp sum;
//     a block sum adds the per-warp results in warp order. Butterfly sums are bitwise
//     identical in every lane (a + b == b + a), so every thread sees the same mean/rstd.
//   * 1 / sqrtf and divisions by C are IEEE (no fast-math in the build).
//   * The backward computes g = dy * w and xhat = (h - mean) * rstd with __fmul_rn
//     (never contracted into an FMA), so the g summed in pass 1 is exactly the g used
//     in pass 2: for C == 1 (and constant rows) g - mean(g) cancels to exactly 0, as on
//     the CPU (an FMA residue there would be amplified by rstd ~ 1 / sqrt(eps)).
//   * Determinism: no atomics. Row -> warp/block assignment, per-lane/thread summation
//     order, warp-order block sums and the fixed-order column reduction depend only on
//     (N, C, grid P). P depends on (N, C) and the device: its SM count and the kernel's
//     occupancy there (fixed by the build's register count per arch). So dx, dw, db are
//     bitwise identical run to run on one GPU model and build; a GPU with another SM count
//     (another P) sums dw/db in another grouping (rounding-level differences).
//
// Memory access
//   Element chunk ch covers columns [ch * V, ch * V + V) with V = 16 / sizeof(T)
//   (8 half/bf16, 4 float, 2 double). A warp's lane owns chunks lane + 32 k; a block's
//   thread owns chunks tid + k * blockDim. When C % V == 0 and every row / weight /
//   partial base pointer is 16-byte aligned (`vec`, decided on the host), each chunk is
//   one 16-byte load/store (LDG.E.128 / STG.E.128; acc_t weights of 16-bit rows are two);
//   otherwise the same chunk is read element by element with a bounds check (c < C).
//   Columns >= C never reach a sum: their values are 0 and (h - mean) is masked.
//   Offsets are int64 (row * C); column indices are int in the warp kernels (C <= 2048)
//   and int64 in the block kernels; C <= 2^30 is checked on the host. The bwd block
//   kernels' partial rows start at blockIdx * C acc_t: 16-byte aligned whenever C % V == 0.
//
// Limits: C in [1, 2^30]; N >= 0 (N == 0: the launcher launches nothing). Shared memory
//   <= 47 KB dynamic (fwd block kernel) and 16 KB static (bwd warp kernel): no opt-in.
//   Registers: the bwd block kernel is built for 512 threads (<= 128 registers each).
//   Needs sm_53+ for the half/bf16 intrinsics used (built for sm_80, sm_90).
//   Builds with __CUDA_NO_HALF_OPERATORS__ / _CONVERSIONS__ / __CUDA_NO_BFLOAT16_CONVERSIONS__
//   (only explicit intrinsics on half types).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

// Kernel launches are written PYGPT_LAUNCH(grid, block, smem, stream, kernel)(args...): the
// triple-chevron launch; tests/cuda_emu/emu.h (the host emulator that runs these kernels in CI, see
// tests/test_cuda_emulation.py) defines it first to run them on the CPU.
#ifndef PYGPT_LAUNCH
#define PYGPT_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<grid, block, smem, stream>>>
#endif

namespace pygpt {
namespace ln {

constexpr int kWarpsPerBlock = 4;                   // warp kernels: 4 rows per block
constexpr int kWarpThreads = 32 * kWarpsPerBlock;   // 128
constexpr int kMaxBlockThreads = 1024;              // fwd block, bwd block-wide kernels
constexpr int kBwdBlockThreads = 512;               // bwd block kernel: <= 128 regs/thread
constexpr int kMaxC = 1 << 30;                      // int column arithmetic stays in range
constexpr int kMaxCacheBytes = 47 * 1024;           // fwd block kernel's smem row cache
constexpr int kGridRowsPerSM = 32;                  // fwd grid cap: 32 blocks per SM
constexpr int kReduceRowThreads = 16;               // reduce kernel: block (32, 16)
constexpr int64_t kMaxPartialElems = int64_t{1} << 23;  // bwd: P * C <= 8M (32 MiB fp32) per grad

// ---------------------------------------------------------------------------
// Types: accumulation type, vector width, the largest register-row bucket, and
// the explicit conversions (the build forbids implicit ones on half types).
// ---------------------------------------------------------------------------
template <typename T>
struct LnTraits;

template <>
struct LnTraits<float> {
  using acc_t = float;
  static constexpr int kVec = 4;
  static constexpr int kMaxFwdE = 64;  // fwd warp kernel: C <= 2048
  static constexpr int kMaxBwdE = 32;  // bwd warp kernel: C <= 1024
  static constexpr int kMaxBlockBwdE = 16;  // bwd block kernel: C <= 512 * 16 = 8192
  static __device__ __forceinline__ float to_acc(float v) { return v; }
  static __device__ __forceinline__ float from_acc(float v) { return v; }
};

template <>
struct LnTraits<double> {
  using acc_t = double;
  static constexpr int kVec = 2;
  static constexpr int kMaxFwdE = 16;  // C <= 512
  static constexpr int kMaxBwdE = 16;  // C <= 512
  static constexpr int kMaxBlockBwdE = 8;  // C <= 4096 (acc_t double: 2 registers each)
  static __device__ __forceinline__ double to_acc(double v) { return v; }
  static __device__ __forceinline__ double from_acc(double v) { return v; }
};

template <>
struct LnTraits<__half> {
  using acc_t = float;
  static constexpr int kVec = 8;
  static constexpr int kMaxFwdE = 64;
  static constexpr int kMaxBwdE = 32;
  static constexpr int kMaxBlockBwdE = 16;
  static __device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
  static __device__ __forceinline__ __half from_acc(float v) { return __float2half_rn(v); }
};

template <>
struct LnTraits<__nv_bfloat16> {
  using acc_t = float;
  static constexpr int kVec = 8;
  static constexpr int kMaxFwdE = 64;
  static constexpr int kMaxBwdE = 32;
  static constexpr int kMaxBlockBwdE = 16;
  static __device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __device__ __forceinline__ __nv_bfloat16 from_acc(float v) {
    return __float2bfloat16_rn(v);
  }
};

template <typename T>
using acc_of = typename LnTraits<T>::acc_t;

template <typename A, typename B>
struct SameType {
  static constexpr bool value = false;
};
template <typename A>
struct SameType<A, A> {
  static constexpr bool value = true;
};

// ---------------------------------------------------------------------------
// Parameters (plain structs, passed by value to the kernels)
// ---------------------------------------------------------------------------
template <typename T>
struct LnFwdParams {
  const T* x;              // [N, C]
  const T* res;            // [N, C] or nullptr
  const acc_of<T>* w;      // [C]
  const acc_of<T>* b;      // [C] or nullptr
  T* y;                    // [N, C]
  T* h;                    // [N, C]; nullptr iff res == nullptr
  acc_of<T>* mean;         // [N]
  acc_of<T>* rstd;         // [N]
  int64_t N;
  int C;
  acc_of<T> eps;
  bool vec;                // 16-byte path; set by launch_layer_norm_fwd
};

template <typename T>
struct LnBwdParams {
  const T* dy;             // [N, C]
  const T* dh;             // [N, C] or nullptr
  const T* h;              // [N, C] (x itself when the forward had no residual)
  const acc_of<T>* w;      // [C]
  const acc_of<T>* mean;   // [N]
  const acc_of<T>* rstd;   // [N]
  T* dx;                   // [N, C]
  acc_of<T>* partial;      // [2, P, C] with P = the plan's blocks (dw rows, then db rows)
  int64_t N;
  int C;
  bool vec;                // set by launch_layer_norm_bwd_rows
};

// ---------------------------------------------------------------------------
// Device helpers
// ---------------------------------------------------------------------------
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float acc_sqrt(float v) { return sqrtf(v); }
__device__ __forceinline__ double acc_sqrt(double v) { return sqrt(v); }

template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;  // bitwise the same in all 32 lanes
}

// Sum over the block (blockDim.x a multiple of 32) of a and b; every thread gets the same
// totals (warp partials added in warp order). scratch: 2 x 32 shared values. Contains
// __syncthreads(): call from block-uniform control flow only.
template <typename A>
__device__ __forceinline__ void block_sum2(A& a, A& b, A (*scratch)[32]) {
  a = warp_sum(a);
  b = warp_sum(b);
  const int warp = threadIdx.x >> 5;
  if ((threadIdx.x & 31) == 0) {
    scratch[0][warp] = a;
    scratch[1][warp] = b;
  }
  __syncthreads();
  A ta = A(0), tb = A(0);
  const int nw = blockDim.x >> 5;
  for (int i = 0; i < nw; ++i) {
    ta += scratch[0][i];
    tb += scratch[1][i];
  }
  __syncthreads();  // scratch may be reused right after
  a = ta;
  b = tb;
}

template <typename A>
__device__ __forceinline__ A block_sum(A a, A (*scratch)[32]) {
  A unused = A(0);
  block_sum2(a, unused, scratch);
  return a;
}

// Load the chunk at p (V columns of which the first n exist; n >= 1) into acc_t registers.
// vec: one (acc_t weights of 16-bit rows: two) 16-byte uint4 access(es); p must then be
// 16-byte aligned and n >= V (both hold when C % V == 0 and the row bases are aligned).
// Else element by element, 0 for columns >= n.
// The 16-byte path goes through uint4 on purpose: with element-typed accesses the compiler
// merges the two branches' identical stores into predicated scalar ones. Callers that loop
// over chunks use a 64-bit column index: with a 32-bit one nvcc (13.0) splits the 16-byte
// stores into 4-byte ones (checked in the SASS).
template <int V, typename U, typename A>
__device__ __forceinline__ void ld_chunk(const U* p, int64_t n, bool vec, A (&out)[V]) {
  static_assert(SameType<acc_of<U>, A>::value, "ld_chunk: accumulator type mismatch");
  constexpr int kQ = V * static_cast<int>(sizeof(U)) / 16;  // 16-byte accesses per chunk
  static_assert(kQ >= 1 && kQ * 16 == V * static_cast<int>(sizeof(U)), "chunk of whole uint4s");
  if (vec) {
    uint4 raw[kQ];
#pragma unroll
    for (int q = 0; q < kQ; ++q) raw[q] = reinterpret_cast<const uint4*>(p)[q];
    U e[V];
    memcpy(e, raw, sizeof(e));
#pragma unroll
    for (int j = 0; j < V; ++j) out[j] = LnTraits<U>::to_acc(e[j]);
  } else {
#pragma unroll
    for (int j = 0; j < V; ++j) out[j] = (j < n) ? LnTraits<U>::to_acc(p[j]) : A(0);
  }
}

// Store the first min(n, V) values of the chunk at p, rounding acc_t to U. vec: as ld_chunk.
template <int V, typename U, typename A>
__device__ __forceinline__ void st_chunk(U* p, int64_t n, bool vec, const A (&in)[V]) {
  static_assert(SameType<acc_of<U>, A>::value, "st_chunk: accumulator type mismatch");
  constexpr int kQ = V * static_cast<int>(sizeof(U)) / 16;
  static_assert(kQ >= 1 && kQ * 16 == V * static_cast<int>(sizeof(U)), "chunk of whole uint4s");
  if (vec) {
    U e[V];
#pragma unroll
    for (int j = 0; j < V; ++j) e[j] = LnTraits<U>::from_acc(in[j]);
    uint4 raw[kQ];
    memcpy(raw, e, sizeof(e));
#pragma unroll
    for (int q = 0; q < kQ; ++q) reinterpret_cast<uint4*>(p)[q] = raw[q];
  } else {
#pragma unroll
    for (int j = 0; j < V; ++j)
      if (j < n) p[j] = LnTraits<U>::from_acc(in[j]);
  }
}

// ---------------------------------------------------------------------------
// Forward: one warp per row, row in registers (C <= 32 * kE)
// ---------------------------------------------------------------------------
template <typename T, int kE>
__global__ void __launch_bounds__(kWarpThreads)
    layer_norm_fwd_warp_kernel(const LnFwdParams<T> p) {
  using A = acc_of<T>;
  constexpr int V = LnTraits<T>::kVec;
  constexpr int K = kE / V;  // chunks per lane: lane owns chunks lane + 32 k
  static_assert(kE % V == 0 && K >= 1, "kE must be a multiple of the vector width");
  const int lane = threadIdx.x & 31;
  const int C = p.C;
  const bool vec = p.vec;
  const A fC = static_cast<A>(C);
  const int64_t wstride = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
       row < p.N; row += wstride) {
    const int64_t off = row * C;
    const T* xr = p.x + off;
    A v[K][V];  // h as stored, in acc_t; 0 for columns >= C
    A s = A(0);
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int c0 = (lane + 32 * k) * V;
      if (c0 < C) {
        ld_chunk<V>(xr + c0, C - c0, vec, v[k]);
        if (p.res != nullptr) {
          A r[V];
          ld_chunk<V>(p.res + off + c0, C - c0, vec, r);
#pragma unroll
          for (int j = 0; j < V; ++j)
            v[k][j] = LnTraits<T>::to_acc(LnTraits<T>::from_acc(v[k][j] + r[j]));
          st_chunk<V>(p.h + off + c0, C - c0, vec, v[k]);  // exact: v is representable in T
        }
      } else {
#pragma unroll
        for (int j = 0; j < V; ++j) v[k][j] = A(0);
      }
#pragma unroll
      for (int j = 0; j < V; ++j) s += v[k][j];
    }
    const A mean = warp_sum(s) / fC;
    A sq = A(0);
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int c0 = (lane + 32 * k) * V;
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const A d = (c0 + j < C) ? v[k][j] - mean : A(0);
        sq += d * d;
      }
    }
    const A rstd = A(1) / acc_sqrt(warp_sum(sq) / fC + p.eps);
    if (lane == 0) {
      p.mean[row] = mean;
      p.rstd[row] = rstd;
    }
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int c0 = (lane + 32 * k) * V;
      if (c0 < C) {
        A w[V], o[V];
        ld_chunk<V>(p.w + c0, C - c0, vec, w);
        if (p.b != nullptr) {
          A b[V];
          ld_chunk<V>(p.b + c0, C - c0, vec, b);
#pragma unroll
          for (int j = 0; j < V; ++j) o[j] = (v[k][j] - mean) * rstd * w[j] + b[j];
        } else {
#pragma unroll
          for (int j = 0; j < V; ++j) o[j] = (v[k][j] - mean) * rstd * w[j];
        }
        st_chunk<V>(p.y + off + c0, C - c0, vec, o);
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Forward: one block per row (any C). use_cache: the row of h (acc_t) lives in
// dynamic shared memory (C * sizeof(acc_t) bytes); else it is re-read from global.
// Thread t owns chunks t + i * blockDim.x (columns c0 = (t + i * blockDim.x) * V).
// ---------------------------------------------------------------------------
template <typename T>
__global__ void __launch_bounds__(kMaxBlockThreads)
    layer_norm_fwd_block_kernel(const LnFwdParams<T> p, const bool use_cache) {
  using A = acc_of<T>;
  constexpr int V = LnTraits<T>::kVec;
  extern __shared__ __align__(16) unsigned char ln_fwd_smem[];
  __shared__ A scratch[2][32];
  A* cache = reinterpret_cast<A*>(ln_fwd_smem);
  const int64_t C = p.C;
  const bool vec = p.vec;
  const bool has_res = p.res != nullptr;
  const A fC = static_cast<A>(C);
  const int64_t first = static_cast<int64_t>(threadIdx.x) * V;
  const int64_t step = static_cast<int64_t>(blockDim.x) * V;
  for (int64_t row = blockIdx.x; row < p.N; row += gridDim.x) {
    const T* xr = p.x + row * C;
    const T* rr = has_res ? p.res + row * C : nullptr;
    T* hr = has_res ? p.h + row * C : nullptr;
    T* yr = p.y + row * C;
    // This thread's chunk of h as stored (cache, or the h / x row this thread itself wrote / read).
    auto load_h = [&](int64_t c0, A (&v)[V]) {
      if (use_cache)
        ld_chunk<V>(cache + c0, C - c0, vec, v);
      else
        ld_chunk<V>(has_res ? static_cast<const T*>(hr) + c0 : xr + c0, C - c0, vec, v);
    };
    // pass 1: h = x (+ res) rounded to T, store h, cache it, sum
    A s = A(0);
    for (int64_t c0 = first; c0 < C; c0 += step) {
      A v[V];
      ld_chunk<V>(xr + c0, C - c0, vec, v);
      if (has_res) {
        A r[V];
        ld_chunk<V>(rr + c0, C - c0, vec, r);
#pragma unroll
        for (int j = 0; j < V; ++j)
          v[j] = LnTraits<T>::to_acc(LnTraits<T>::from_acc(v[j] + r[j]));
        st_chunk<V>(hr + c0, C - c0, vec, v);
      }
      if (use_cache) st_chunk<V>(cache + c0, C - c0, vec, v);
#pragma unroll
      for (int j = 0; j < V; ++j) s += v[j];  // 0 for columns >= C
    }
    const A mean = block_sum(s, scratch) / fC;
    // pass 2: sum of squared deviations
    A sq = A(0);
    for (int64_t c0 = first; c0 < C; c0 += step) {
      A v[V];
      load_h(c0, v);
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const A d = (c0 + j < C) ? v[j] - mean : A(0);
        sq += d * d;
      }
    }
    const A rstd = A(1) / acc_sqrt(block_sum(sq, scratch) / fC + p.eps);
    if (threadIdx.x == 0) {
      p.mean[row] = mean;
      p.rstd[row] = rstd;
    }
    // pass 3: y
    for (int64_t c0 = first; c0 < C; c0 += step) {
      A v[V], w[V], o[V];
      load_h(c0, v);
      ld_chunk<V>(p.w + c0, C - c0, vec, w);
      if (p.b != nullptr) {
        A b[V];
        ld_chunk<V>(p.b + c0, C - c0, vec, b);
#pragma unroll
        for (int j = 0; j < V; ++j) o[j] = (v[j] - mean) * rstd * w[j] + b[j];
      } else {
#pragma unroll
        for (int j = 0; j < V; ++j) o[j] = (v[j] - mean) * rstd * w[j];
      }
      st_chunk<V>(yr + c0, C - c0, vec, o);
    }
    // The next row's pass 1 rewrites only this thread's own cache chunks: no sync needed.
  }
}

// ---------------------------------------------------------------------------
// Backward: one warp per row (C <= 32 * kE); dw/db column partials in registers
// ---------------------------------------------------------------------------
template <typename T, int kE>
__global__ void __launch_bounds__(kWarpThreads)
    layer_norm_bwd_warp_kernel(const LnBwdParams<T> p) {
  using A = acc_of<T>;
  constexpr int V = LnTraits<T>::kVec;
  constexpr int K = kE / V;
  static_assert(kE % V == 0 && K >= 1, "kE must be a multiple of the vector width");
  __shared__ A red[kWarpsPerBlock][32 * kE];  // 16 KB at most (float kE=32, double kE=16)
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int C = p.C;
  const bool vec = p.vec;
  const A fC = static_cast<A>(C);
  A dw[K][V], db[K][V];  // this lane's columns, summed over all its rows
#pragma unroll
  for (int k = 0; k < K; ++k)
#pragma unroll
    for (int j = 0; j < V; ++j) dw[k][j] = db[k][j] = A(0);

  const int64_t wstride = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + warp; row < p.N;
       row += wstride) {
    const int64_t off = row * C;
    const A mean = p.mean[row];
    const A rstd = p.rstd[row];
    A xh[K][V], g[K][V];
    A sg = A(0), sgx = A(0);
    // pass 1: xhat, g = dy * w; row sums; this lane's dw/db columns
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int c0 = (lane + 32 * k) * V;
      if (c0 < C) {
        A hv[V], dy[V], w[V];
        ld_chunk<V>(p.h + off + c0, C - c0, vec, hv);
        ld_chunk<V>(p.dy + off + c0, C - c0, vec, dy);
        ld_chunk<V>(p.w + c0, C - c0, vec, w);
#pragma unroll
        for (int j = 0; j < V; ++j) {
          xh[k][j] = (c0 + j < C) ? mul_rn(hv[j] - mean, rstd) : A(0);
          g[k][j] = mul_rn(dy[j], w[j]);  // 0 for columns >= C (dy = w = 0 there)
          sg += g[k][j];
          sgx += g[k][j] * xh[k][j];
          dw[k][j] += dy[j] * xh[k][j];
          db[k][j] += dy[j];
        }
      } else {
#pragma unroll
        for (int j = 0; j < V; ++j) xh[k][j] = g[k][j] = A(0);
      }
    }
    const A ga = warp_sum(sg) / fC;   // mean(g)
    const A gb = warp_sum(sgx) / fC;  // mean(g * xhat)
    // pass 2: dx
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int c0 = (lane + 32 * k) * V;
      if (c0 < C) {
        A o[V];
#pragma unroll
        for (int j = 0; j < V; ++j) o[j] = rstd * ((g[k][j] - ga) - xh[k][j] * gb);
        if (p.dh != nullptr) {
          A d[V];
          ld_chunk<V>(p.dh + off + c0, C - c0, vec, d);
#pragma unroll
          for (int j = 0; j < V; ++j) o[j] += d[j];
        }
        st_chunk<V>(p.dx + off + c0, C - c0, vec, o);
      }
    }
  }

  // The block's dw (which = 0) and db (which = 1) partial rows: warps added in warp order.
#pragma unroll
  for (int which = 0; which < 2; ++which) {
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int c0 = (lane + 32 * k) * V;
#pragma unroll
      for (int j = 0; j < V; ++j)
        if (c0 + j < C) red[warp][c0 + j] = which == 0 ? dw[k][j] : db[k][j];
    }
    __syncthreads();
    A* dst = p.partial + (static_cast<int64_t>(which) * gridDim.x + blockIdx.x) * C;
    for (int c = threadIdx.x; c < C; c += kWarpThreads) {
      A t = red[0][c];
#pragma unroll
      for (int w = 1; w < kWarpsPerBlock; ++w) t += red[w][c];
      dst[c] = t;
    }
    __syncthreads();  // red is rewritten for db
  }
}

// ---------------------------------------------------------------------------
// Backward: one block per row (C <= 512 * kE); dw/db column partials in
// registers across all the block's rows, written to its partial row once at the end.
// ---------------------------------------------------------------------------
// Index arithmetic: chunk ch = columns [ch * V, ch * V + V); thread t owns chunks
// t + k * blockDim.x, k = 0 .. K - 1 (K = kE / V), i.e. columns c0 = (t + k * blockDim.x) * V
// = first + k * step. The launcher picks blockDim.x >= ceil(C / kE), so K * blockDim.x
// chunks cover the row; chunks with c0 >= C are skipped (their registers stay 0). The same
// thread owns the same columns in every row, hence the register-resident column partials.
template <typename T, int kE>
__global__ void __launch_bounds__(kBwdBlockThreads)
    layer_norm_bwd_block_kernel(const LnBwdParams<T> p) {
  using A = acc_of<T>;
  constexpr int V = LnTraits<T>::kVec;
  constexpr int K = kE / V;  // chunks per thread
  static_assert(kE % V == 0 && K >= 1, "kE must be a multiple of the vector width");
  __shared__ A scratch[2][32];
  const int64_t C = p.C;
  const bool vec = p.vec;
  const A fC = static_cast<A>(C);
  // first column of this thread's chunk k, written as (chunk index) * V: with first + k * step
  // nvcc (13.0) splits more of the 16-byte stores into 4-byte ones (checked in the SASS)
  auto chunk_col = [](int k) {
    return (static_cast<int64_t>(threadIdx.x) + static_cast<int64_t>(k) * blockDim.x) * V;
  };
  A dw[K][V], db[K][V];  // this thread's columns, summed over all the block's rows
#pragma unroll
  for (int k = 0; k < K; ++k)
#pragma unroll
    for (int j = 0; j < V; ++j) dw[k][j] = db[k][j] = A(0);

  for (int64_t row = blockIdx.x; row < p.N; row += gridDim.x) {
    const T* hr = p.h + row * C;
    const T* dyr = p.dy + row * C;
    const A mean = p.mean[row];
    const A rstd = p.rstd[row];
    A xh[K][V], g[K][V];  // xhat and g of this thread's columns, kept for pass 2
    // pass 1: xhat, g = dy * w; row sums; this thread's dw/db columns
    A sg = A(0), sgx = A(0);
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int64_t c0 = chunk_col(k);
      if (c0 < C) {
        A hv[V], dy[V], w[V];
        ld_chunk<V>(hr + c0, C - c0, vec, hv);
        ld_chunk<V>(dyr + c0, C - c0, vec, dy);
        ld_chunk<V>(p.w + c0, C - c0, vec, w);
#pragma unroll
        for (int j = 0; j < V; ++j) {
          const A x = (c0 + j < C) ? mul_rn(hv[j] - mean, rstd) : A(0);
          const A gj = mul_rn(dy[j], w[j]);  // 0 for columns >= C (dy = w = 0 there)
          sg += gj;
          sgx += gj * x;
          dw[k][j] += dy[j] * x;
          db[k][j] += dy[j];
          xh[k][j] = x;
          g[k][j] = gj;
        }
      }
    }
    block_sum2(sg, sgx, scratch);
    const A ga = sg / fC;   // mean(g)
    const A gb = sgx / fC;  // mean(g * xhat)
    // pass 2: dx from the registers (reads only dh)
    T* dxr = p.dx + row * C;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int64_t c0 = chunk_col(k);
      if (c0 < C) {
        A o[V];
#pragma unroll
        for (int j = 0; j < V; ++j) o[j] = rstd * ((g[k][j] - ga) - xh[k][j] * gb);
        if (p.dh != nullptr) {
          A d[V];
          ld_chunk<V>(p.dh + row * C + c0, C - c0, vec, d);
#pragma unroll
          for (int j = 0; j < V; ++j) o[j] += d[j];
        }
        st_chunk<V>(dxr + c0, C - c0, vec, o);
      }
    }
    // block_sum2 ends with a __syncthreads: scratch is free for the next row's sums.
  }

  // The block's partial rows: row blockIdx.x of partial[0] (dw) and of partial[1] (db),
  // each column written once, by its owner (P <= N: every block had at least one row).
  A* dwp = p.partial + static_cast<int64_t>(blockIdx.x) * C;
  A* dbp = p.partial + (static_cast<int64_t>(gridDim.x) + blockIdx.x) * C;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int64_t c0 = chunk_col(k);
    if (c0 < C) {
      st_chunk<V>(dwp + c0, C - c0, vec, dw[k]);
      st_chunk<V>(dbp + c0, C - c0, vec, db[k]);
    }
  }
}

// ---------------------------------------------------------------------------
// Backward, very wide rows (C > 512 * kE): one block per row; dw/db partials
// in the block's own rows of `partial`, each column read-modified-written only by the
// thread that owns it (a thread's columns no longer fit its registers).
// ---------------------------------------------------------------------------
template <typename T>
__global__ void __launch_bounds__(kMaxBlockThreads)
    layer_norm_bwd_block_wide_kernel(const LnBwdParams<T> p) {
  using A = acc_of<T>;
  constexpr int V = LnTraits<T>::kVec;
  __shared__ A scratch[2][32];
  const int64_t C = p.C;
  const bool vec = p.vec;
  const A fC = static_cast<A>(C);
  const int64_t first = static_cast<int64_t>(threadIdx.x) * V;
  const int64_t step = static_cast<int64_t>(blockDim.x) * V;
  A* dwp = p.partial + static_cast<int64_t>(blockIdx.x) * C;
  A* dbp = p.partial + (static_cast<int64_t>(gridDim.x) + blockIdx.x) * C;
  for (int64_t c0 = first; c0 < C; c0 += step) {
    A z[V];
#pragma unroll
    for (int j = 0; j < V; ++j) z[j] = A(0);
    st_chunk<V>(dwp + c0, C - c0, vec, z);
    st_chunk<V>(dbp + c0, C - c0, vec, z);
  }
  for (int64_t row = blockIdx.x; row < p.N; row += gridDim.x) {
    const T* hr = p.h + row * C;
    const T* dyr = p.dy + row * C;
    const A mean = p.mean[row];
    const A rstd = p.rstd[row];
    // pass 1: row sums and this thread's dw/db columns
    A sg = A(0), sgx = A(0);
    for (int64_t c0 = first; c0 < C; c0 += step) {
      A hv[V], dy[V], w[V], pw[V], pb[V];
      ld_chunk<V>(hr + c0, C - c0, vec, hv);
      ld_chunk<V>(dyr + c0, C - c0, vec, dy);
      ld_chunk<V>(p.w + c0, C - c0, vec, w);
      ld_chunk<V>(static_cast<const A*>(dwp) + c0, C - c0, vec, pw);
      ld_chunk<V>(static_cast<const A*>(dbp) + c0, C - c0, vec, pb);
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const A xh = (c0 + j < C) ? mul_rn(hv[j] - mean, rstd) : A(0);
        const A g = mul_rn(dy[j], w[j]);
        sg += g;
        sgx += g * xh;
        pw[j] += dy[j] * xh;
        pb[j] += dy[j];
      }
      st_chunk<V>(dwp + c0, C - c0, vec, pw);
      st_chunk<V>(dbp + c0, C - c0, vec, pb);
    }
    block_sum2(sg, sgx, scratch);
    const A ga = sg / fC;
    const A gb = sgx / fC;
    // pass 2: dx, with xhat and g recomputed exactly as in pass 1
    T* dxr = p.dx + row * C;
    for (int64_t c0 = first; c0 < C; c0 += step) {
      A hv[V], dy[V], w[V], o[V];
      ld_chunk<V>(hr + c0, C - c0, vec, hv);
      ld_chunk<V>(dyr + c0, C - c0, vec, dy);
      ld_chunk<V>(p.w + c0, C - c0, vec, w);
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const A xh = (c0 + j < C) ? mul_rn(hv[j] - mean, rstd) : A(0);
        const A g = mul_rn(dy[j], w[j]);
        o[j] = rstd * ((g - ga) - xh * gb);
      }
      if (p.dh != nullptr) {
        A d[V];
        ld_chunk<V>(p.dh + row * C + c0, C - c0, vec, d);
#pragma unroll
        for (int j = 0; j < V; ++j) o[j] += d[j];
      }
      st_chunk<V>(dxr + c0, C - c0, vec, o);
    }
  }
}

// ---------------------------------------------------------------------------
// Backward: dw / db = column sums of partial[0] / partial[1] ([P, C] each), fixed order.
// ---------------------------------------------------------------------------
template <typename A>
__global__ void __launch_bounds__(32 * kReduceRowThreads)
    layer_norm_bwd_reduce_kernel(const A* partial, int P, int C, A* dw, A* db) {
  __shared__ A red[kReduceRowThreads][33];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int col = blockIdx.x * 32 + tx;
  const A* src = partial + static_cast<int64_t>(blockIdx.y) * P * C;
  A s = A(0);
  if (col < C)
    for (int r = ty; r < P; r += kReduceRowThreads) s += src[static_cast<int64_t>(r) * C + col];
  red[ty][tx] = s;
  __syncthreads();
  if (ty == 0 && col < C) {
    A t = red[0][tx];
#pragma unroll
    for (int i = 1; i < kReduceRowThreads; ++i) t += red[i][tx];
    (blockIdx.y == 0 ? dw : db)[col] = t;
  }
}

// ---------------------------------------------------------------------------
// Host launch helpers (torch-free). Each launches exactly one kernel and does not
// consume cudaGetLastError(): the caller checks the launch.
// ---------------------------------------------------------------------------
inline bool aligned16(const void* ptr) {
  return (reinterpret_cast<uintptr_t>(ptr) & uintptr_t{15}) == 0;
}

inline int64_t min_i64(int64_t a, int64_t b) { return a < b ? a : b; }

// Threads for the block-per-row kernels: ~2 chunks per thread, 128 ... 1024.
inline int block_threads_for(int C, int V) {
  const int64_t chunks = (static_cast<int64_t>(C) + V - 1) / V;
  int64_t t = ((chunks + 1) / 2 + 31) / 32 * 32;
  if (t < 128) t = 128;
  if (t > kMaxBlockThreads) t = kMaxBlockThreads;
  return static_cast<int>(t);
}

template <typename T>
inline bool fwd_uses_warp_kernel(int C) {
  return C <= 32 * LnTraits<T>::kMaxFwdE;
}

template <typename T>
inline bool bwd_uses_warp_kernel(int C) {
  return C <= 32 * LnTraits<T>::kMaxBwdE;
}

// Past the warp kernel: the register-partials block kernel up to 512 x kE columns
// (kE = LnTraits<T>::kMaxBlockBwdE), the -wide kernel beyond.
template <typename T>
inline bool bwd_uses_block_kernel(int C) {
  return C <= kBwdBlockThreads * LnTraits<T>::kMaxBlockBwdE;
}

// Threads of the bwd block kernel: enough that kE elements per thread cover the row.
inline int bwd_block_threads_for(int C, int kE) {
  int64_t t = ((static_cast<int64_t>(C) + kE - 1) / kE + 31) / 32 * 32;
  if (t < 128) t = 128;
  if (t > kBwdBlockThreads) t = kBwdBlockThreads;
  return static_cast<int>(t);
}

// Forward. p.vec is computed here. Preconditions (the caller checks): 1 <= C <= kMaxC,
// N >= 1, contiguous [N, C] rows, h != nullptr iff res != nullptr, num_sms >= 1.
template <typename T>
inline void launch_layer_norm_fwd(LnFwdParams<T> p, int num_sms, cudaStream_t stream) {
  using A = acc_of<T>;
  constexpr int V = LnTraits<T>::kVec;
  p.vec = p.C % V == 0 && aligned16(p.x) && aligned16(p.y) && aligned16(p.w) &&
          (p.b == nullptr || aligned16(p.b)) &&
          (p.res == nullptr || (aligned16(p.res) && aligned16(p.h)));
  const int64_t grid_cap = static_cast<int64_t>(num_sms) * kGridRowsPerSM;
  if (fwd_uses_warp_kernel<T>(p.C)) {
    const dim3 grid(static_cast<unsigned>(
        min_i64((p.N + kWarpsPerBlock - 1) / kWarpsPerBlock, grid_cap)));
    if (p.C <= 32 * 8) {
      PYGPT_LAUNCH(grid, kWarpThreads, 0, stream, layer_norm_fwd_warp_kernel<T, 8>)(p);
    } else if (p.C <= 32 * 16) {
      PYGPT_LAUNCH(grid, kWarpThreads, 0, stream, layer_norm_fwd_warp_kernel<T, 16>)(p);
    } else {
      if constexpr (LnTraits<T>::kMaxFwdE >= 64) {
        if (p.C <= 32 * 32)
          PYGPT_LAUNCH(grid, kWarpThreads, 0, stream, layer_norm_fwd_warp_kernel<T, 32>)(p);
        else
          PYGPT_LAUNCH(grid, kWarpThreads, 0, stream, layer_norm_fwd_warp_kernel<T, 64>)(p);
      }
    }
  } else {
    const int threads = block_threads_for(p.C, V);
    const int64_t cache_bytes = static_cast<int64_t>(p.C) * static_cast<int64_t>(sizeof(A));
    const bool use_cache = cache_bytes <= kMaxCacheBytes;
    const dim3 grid(static_cast<unsigned>(min_i64(p.N, grid_cap)));
    PYGPT_LAUNCH(grid, threads, use_cache ? static_cast<size_t>(cache_bytes) : 0, stream,
                 layer_norm_fwd_block_kernel<T>)(p, use_cache);
  }
}

// Backward plan: which row kernel, its block size, and P = its grid = the number of
// partial rows per gradient (the caller allocates partial as [2, P, C] acc_t).
// P = min(rows / rows per block, #SMs x occupancy, max(1, kMaxPartialElems / C)).
enum class LnBwdKernel { kWarp, kBlock, kBlockWide };

struct LnBwdPlan {
  LnBwdKernel kernel;
  int kE;       // kWarp: elements per lane; kBlock: elements per thread; kBlockWide: 0
  int threads;
  int blocks;   // P
};

template <typename K>
inline cudaError_t ln_occupancy(K kernel, int threads, int* blocks_per_sm) {
  const cudaError_t e =
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(blocks_per_sm, kernel, threads, 0);
  if (e == cudaSuccess && *blocks_per_sm < 1) *blocks_per_sm = 1;
  return e;
}

// Preconditions as launch_layer_norm_fwd (N >= 1). Returns the occupancy query's error.
template <typename T>
inline cudaError_t plan_layer_norm_bwd(int64_t N, int C, int num_sms, LnBwdPlan* plan) {
  int occ = 1;
  cudaError_t e = cudaSuccess;
  int64_t rows_per_block = 1;
  if (bwd_uses_warp_kernel<T>(C)) {
    plan->kernel = LnBwdKernel::kWarp;
    plan->threads = kWarpThreads;
    rows_per_block = kWarpsPerBlock;
    if (C <= 32 * 8) {
      plan->kE = 8;
      e = ln_occupancy(layer_norm_bwd_warp_kernel<T, 8>, kWarpThreads, &occ);
    } else if (C <= 32 * 16) {
      plan->kE = 16;
      e = ln_occupancy(layer_norm_bwd_warp_kernel<T, 16>, kWarpThreads, &occ);
    } else {
      plan->kE = 32;
      if constexpr (LnTraits<T>::kMaxBwdE >= 32)
        e = ln_occupancy(layer_norm_bwd_warp_kernel<T, 32>, kWarpThreads, &occ);
    }
  } else if (bwd_uses_block_kernel<T>(C)) {
    constexpr int kE = LnTraits<T>::kMaxBlockBwdE;
    plan->kernel = LnBwdKernel::kBlock;
    plan->kE = kE;
    plan->threads = bwd_block_threads_for(C, kE);
    e = ln_occupancy(layer_norm_bwd_block_kernel<T, kE>, plan->threads, &occ);
  } else {
    plan->kernel = LnBwdKernel::kBlockWide;
    plan->kE = 0;
    plan->threads = block_threads_for(C, LnTraits<T>::kVec);
    e = ln_occupancy(layer_norm_bwd_block_wide_kernel<T>, plan->threads, &occ);
  }
  if (e != cudaSuccess) occ = 1;
  const int64_t want = (N + rows_per_block - 1) / rows_per_block;
  int64_t p = min_i64(want, static_cast<int64_t>(num_sms) * occ);
  p = min_i64(p, kMaxPartialElems / C);  // bounded workspace for very wide rows
  plan->blocks = static_cast<int>(p < 1 ? 1 : p);
  return e;
}

// Backward rows: dx, and the [2, plan.blocks, C] partials (every element written: each
// block writes its own partial rows, zeros where it got no rows). p.vec is computed here.
template <typename T>
inline void launch_layer_norm_bwd_rows(LnBwdParams<T> p, const LnBwdPlan& plan,
                                       cudaStream_t stream) {
  constexpr int V = LnTraits<T>::kVec;
  p.vec = p.C % V == 0 && aligned16(p.dy) && aligned16(p.h) && aligned16(p.w) &&
          aligned16(p.dx) && aligned16(p.partial) && (p.dh == nullptr || aligned16(p.dh));
  const dim3 grid(static_cast<unsigned>(plan.blocks));
  if (plan.kernel == LnBwdKernel::kBlock) {
    constexpr int kE = LnTraits<T>::kMaxBlockBwdE;
    PYGPT_LAUNCH(grid, plan.threads, 0, stream, layer_norm_bwd_block_kernel<T, kE>)(p);
    return;
  }
  if (plan.kernel == LnBwdKernel::kBlockWide) {
    PYGPT_LAUNCH(grid, plan.threads, 0, stream, layer_norm_bwd_block_wide_kernel<T>)(p);
    return;
  }
  switch (plan.kE) {
    case 8:
      PYGPT_LAUNCH(grid, kWarpThreads, 0, stream, layer_norm_bwd_warp_kernel<T, 8>)(p);
      break;
    case 16:
      PYGPT_LAUNCH(grid, kWarpThreads, 0, stream, layer_norm_bwd_warp_kernel<T, 16>)(p);
      break;
    default:
      if constexpr (LnTraits<T>::kMaxBwdE >= 32)
        PYGPT_LAUNCH(grid, kWarpThreads, 0, stream, layer_norm_bwd_warp_kernel<T, 32>)(p);
      break;
  }
}

// dw, db ([C] each, acc_t) from partial [2, P, C].
template <typename A>
inline void launch_layer_norm_bwd_reduce(const A* partial, int P, int C, A* dw, A* db,
                                         cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((C + 31) / 32), 2);
  const dim3 block(32, kReduceRowThreads);
  PYGPT_LAUNCH(grid, block, 0, stream, layer_norm_bwd_reduce_kernel<A>)(partial, P, C, dw, db);
}

}  // namespace ln
}  // namespace pygpt
