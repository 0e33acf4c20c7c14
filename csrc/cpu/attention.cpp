// ===========================================================================
// pygpt.attention on the CPU: a hand-written flash-attention kernel.
// ===========================================================================
//
// What it computes (must match the fake functions registered in Python):
//   q (B,H,Tq,D), k/v (B,H,Tk,D)  (any strides; the last dim is used as is when its
//                                  stride is 1, otherwise the tensor is made contiguous)
//   out (B,H,Tq,D) in q's dtype, contiguous
//   lse (B,H,Tq) float32 (float64 for float64 inputs) = logsumexp_j(scale q.k_j)
//   causal: query i sees keys j <= i (top-left aligned, requires Tq == Tk).
//   Backward: grad_q, grad_k, grad_v, contiguous, shaped like q, k, v.
//
// Algorithm (flash attention, Dao et al. 2022, written for a CPU core):
//   forward   one task = (b, h, tile of BQ=64 query rows). The Q tile is packed into a
//             float buffer; the task walks the key tiles (BK=64 rows) left to right:
//               S = Q K^T                      (BQ x BK, register-blocked micro-kernel)
//               online softmax per row          (running max m and sum l, base-2 exponent:
//                                                exp(x*scale) = exp2(x*scale*log2 e))
//               O = O * exp2(m_old - m_new) + P V
//             and finally out = O / l, lse = (m + log2 l) ln 2. The T x T matrix never
//             exists; only one BQ x BK tile of scores per thread. Causal: key tiles
//             entirely right of the diagonal are skipped (never loaded), the diagonal
//             tile is masked element-wise.
//   backward  delta_i = dot(dO_i, O_i) is precomputed for every row (one pass, O(B H Tq)).
//             For a (query tile, key tile) pair, P is recomputed from q, k and the saved
//             lse (P = exp2(S scale log2e - lse log2e)), then
//               dV += P^T dO,  dP = dO V^T,  dS = P o (dP - delta),
//               dK += dS^T Q (scaled),  dQ += dS K (scaled).
//             Parallelisation (deterministic: every output element is accumulated by one
//             thread in a fixed order, no atomics, results independent of the thread count):
//               * B*H >= 2 x threads (the training shapes): one task = one (b, h). It walks
//                 the key tiles in order, accumulating dK/dV for that tile in small
//                 L1-resident buffers and dQ for all rows in a per-thread (Tq x D) float
//                 buffer: 5 tile matmuls per pair, nothing recomputed.
//               * fewer heads than that (e.g. B*H = 1, long T): two passes so both cores
//                 stay busy: dK/dV parallel over (b, h, key tile) iterating over query tiles,
//                 then dQ parallel over (b, h, query tile) iterating over key tiles
//                 (S and dP are recomputed in the second pass: 7 instead of 5 matmuls).
//               Both schemes accumulate dQ over key tiles in the same order with the same
//               micro-kernel, so they give bit-identical results.
//             Causal tasks are handed out in a zig-zag order (light, heavy, light, ...) so
//             the contiguous ranges at::parallel_for gives each thread carry equal work.
//
// Inner loops: all tile products go through one micro-kernel, C (+)= op(A) B with a
//   4-row x 16-column (64-byte) block of C held in registers across the reduction,
//   B read row-major (contiguous along the output columns). It, the masked online
//   softmax and a polynomial exp2 (round-to-nearest range reduction + degree-7
//   polynomial, ~1 ulp in float) are plain loops written for the vectoriser: they are
//   compiled twice, for the baseline x86-64 ISA and (via __attribute__((target))) for
//   AVX2+FMA, and the AVX2 version is chosen at run time when the CPU has it and torch
//   is not pinned to ATEN_CPU_CAPABILITY=default. Vectorisation checked with GCC 12's
//   -fopt-info-vec (micro-kernel: 8 ymm FMAs per reduction step; exp2, scale/clamp, row sum,
//   dS and packing loops: 32-byte vectors) and by timing: the first version, whose softmax
//   loops were not vectorised (a select around a float op is not if-converted under
//   -ftrapping-math), ran the forward 2.3x slower. Accumulation is always in float
//   (bf16/fp16 tiles are widened when packed) or double for float64 inputs (gradcheck).
//
// Memory: O(T) extra. Per thread: a few BQ x D / BK x D / BQ x BK float tiles (80-150 KB
//   at D=64) and, in the per-(b,h) backward scheme, one Tq x D float dQ accumulator.
//   Plus delta (B,H,Tq) in the backward. No Tq x Tk buffer anywhere.
//
// Not supported: dropout (the schema has none; pygpt.ops rejects dropout_p > 0 for
//   this backend), attention masks other than causal, Tq != Tk with causal=True,
//   head dims D > 256 (rejected at the boundary), non-CPU tensors. float16 runs like
//   bfloat16 (widened to float) but is not part of the parity suite.
#include "../checks.h"
#include "../registry.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

namespace pygpt {

bool cpu_attention_is_kernel() { return true; }

namespace {

constexpr int64_t kMaxHeadDim = 256;
constexpr int64_t BQ = 64;  // query rows per tile
constexpr int64_t BK = 64;  // key rows per tile
constexpr int64_t MR = 4;   // micro-kernel rows
constexpr int64_t kPadD = 16;  // head dim padded to a multiple of this (zero columns)

#if defined(__GNUC__)
#define PYGPT_INLINE inline __attribute__((always_inline))
#else
#define PYGPT_INLINE inline
#endif

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define PYGPT_ATTN_HAVE_AVX2 1
#define PYGPT_TARGET_AVX2 __attribute__((target("avx2,fma")))
#else
#define PYGPT_ATTN_HAVE_AVX2 0
#endif

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// --------------------------------------------------------------------------------------------
// Scalar building blocks (inlined into both ISA variants)
// --------------------------------------------------------------------------------------------

template <typename T, bool kFma>
PYGPT_INLINE T madd(T a, T b, T c) {  // a * b + c
  if constexpr (kFma) {
    return std::fma(a, b, c);
  } else {
    return a * b + c;
  }
}

// x[j] <- clamp(x[j] * mul - sub, -126, 126) (float; the domain of exp2_approx), j < n.
// (Its own loop: fused into the exp2 loop, GCC jump-threads the constant clamp and the
// loop no longer vectorises.) double: no clamp, std::exp2 handles any input.
template <typename T>
PYGPT_INLINE void exp2_arg(T* __restrict__ x, int64_t n, T mul, T sub) {
  for (int64_t j = 0; j < n; ++j) {
    T y = x[j] * mul - sub;
    if constexpr (std::is_same_v<T, float>) {
      y = y < -126.0f ? -126.0f : y;
      y = y > 126.0f ? 126.0f : y;
    }
    x[j] = y;
  }
}

// 2^x for x in [-126, 126]. float: range reduction to r in [-1/2, 1/2] with the 1.5*2^23
// rounding trick, then e^(r ln2) by a degree-7 Taylor polynomial (error < 1e-8 relative) and
// 2^n via the exponent bits; pure arithmetic, so loops over it vectorise. 2^-126 stands in for
// underflow (callers zero masked entries explicitly). double: std::exp2 (the gradcheck path).
template <typename T, bool kFma>
PYGPT_INLINE T exp2_approx(T x) {
  if constexpr (std::is_same_v<T, float>) {
    constexpr float magic = 12582912.0f;  // 1.5 * 2^23
    const float t = x + magic;
    const float n = t - magic;
    const float r = (x - n) * 0.6931471805599453f;  // in [-ln2/2, ln2/2]
    const int32_t ni = __builtin_bit_cast(int32_t, t) - __builtin_bit_cast(int32_t, magic);
    float p = 1.0f / 5040.0f;
    p = madd<float, kFma>(p, r, 1.0f / 720.0f);
    p = madd<float, kFma>(p, r, 1.0f / 120.0f);
    p = madd<float, kFma>(p, r, 1.0f / 24.0f);
    p = madd<float, kFma>(p, r, 1.0f / 6.0f);
    p = madd<float, kFma>(p, r, 0.5f);
    p = madd<float, kFma>(p, r, 1.0f);
    p = madd<float, kFma>(p, r, 1.0f);
    return p * __builtin_bit_cast(float, (ni + 127) << 23);
  } else {
    return std::exp2(x);
  }
}

// C[M, N] (+)= op(A)[M, K] . B[K, N], all row-major with leading dims lda/ldb/ldc.
// op(A)(i, k) = A[i*lda + k], or A[k*lda + i] when kTransA. M % MR == 0 and N % NR == 0:
// callers pad rows/columns (padded A rows / B columns are zero or ignored). A MR x NR block
// of C (NR = 64 bytes of T) stays in registers for the whole reduction.
template <typename T, bool kFma, bool kTransA, bool kAccum>
PYGPT_INLINE void mm(int64_t M, int64_t N, int64_t K, const T* __restrict__ A, int64_t lda,
                     const T* __restrict__ B, int64_t ldb, T* __restrict__ C, int64_t ldc) {
  constexpr int64_t NR = 64 / sizeof(T);
  for (int64_t i = 0; i < M; i += MR) {
    for (int64_t j = 0; j < N; j += NR) {
      T acc[MR][NR];
#pragma GCC unroll 4
      for (int64_t r = 0; r < MR; ++r) {
#pragma GCC unroll 16
        for (int64_t c = 0; c < NR; ++c) acc[r][c] = kAccum ? C[(i + r) * ldc + j + c] : T(0);
      }
      for (int64_t k = 0; k < K; ++k) {
        const T* __restrict__ b = B + k * ldb + j;
#pragma GCC unroll 4
        for (int64_t r = 0; r < MR; ++r) {
          const T a = kTransA ? A[k * lda + i + r] : A[(i + r) * lda + k];
#pragma GCC unroll 16
          for (int64_t c = 0; c < NR; ++c) acc[r][c] = madd<T, kFma>(a, b[c], acc[r][c]);
        }
      }
#pragma GCC unroll 4
      for (int64_t r = 0; r < MR; ++r) {
#pragma GCC unroll 16
        for (int64_t c = 0; c < NR; ++c) C[(i + r) * ldc + j + c] = acc[r][c];
      }
    }
  }
}

// --------------------------------------------------------------------------------------------
// Strided (B, H, T, D) views with a unit-stride last dim
// --------------------------------------------------------------------------------------------

template <typename T>
struct View {
  const T* p;
  int64_t sB, sH, sT;
  const T* row(int64_t b, int64_t h, int64_t t) const { return p + b * sB + h * sH + t * sT; }
};

// Last dim must be unit-stride for the row pointers; anything else is copied once.
at::Tensor unit_last_stride(const at::Tensor& t) {
  return (t.size(3) <= 1 || t.stride(3) == 1) ? t : t.contiguous();
}

template <typename T>
View<T> view_of(const at::Tensor& t) {
  return View<T>{t.data_ptr<T>(), t.stride(0), t.stride(1), t.stride(2)};
}

// dst rows [0, n) <- src rows t0.., widened to acc_t; rows [n, n_pad) zeroed. Columns
// [D, ld) are never written (zero from allocation).
template <typename scalar_t, typename acc_t>
PYGPT_INLINE void pack_rows(acc_t* dst, int64_t ld, const View<scalar_t>& v, int64_t b, int64_t h,
                            int64_t t0, int64_t n, int64_t n_pad, int64_t D) {
  for (int64_t r = 0; r < n; ++r) {
    const scalar_t* s = v.row(b, h, t0 + r);
    acc_t* d = dst + r * ld;
    for (int64_t c = 0; c < D; ++c) d[c] = static_cast<acc_t>(s[c]);
  }
  for (int64_t r = n; r < n_pad; ++r) std::fill_n(dst + r * ld, ld, acc_t(0));
}

// dst[d * BK + j] <- src row t0 + j, column d (a transposed key/value tile); columns
// j in [n, BK) zeroed.
template <typename scalar_t, typename acc_t>
PYGPT_INLINE void pack_transposed(acc_t* dst, const View<scalar_t>& v, int64_t b, int64_t h,
                                  int64_t t0, int64_t n, int64_t D) {
  for (int64_t j = 0; j < n; ++j) {
    const scalar_t* s = v.row(b, h, t0 + j);
    for (int64_t d = 0; d < D; ++d) dst[d * BK + j] = static_cast<acc_t>(s[d]);
  }
  if (n < BK) {
    for (int64_t d = 0; d < D; ++d) std::fill(dst + d * BK + n, dst + d * BK + BK, acc_t(0));
  }
}

// Task index -> tile index. Causal tiles have linearly growing (forward, dQ) or shrinking
// (dK/dV) cost; interleaving cheap and expensive tiles balances at::parallel_for's
// contiguous per-thread ranges.
inline int64_t zigzag(int64_t idx, int64_t n) { return (idx % 2 == 0) ? idx / 2 : n - 1 - idx / 2; }

// Number of visible keys of local key range [k0, k0 + bk) for global query row qi.
inline int64_t visible(bool causal, int64_t qi, int64_t k0, int64_t bk) {
  if (!causal) return bk;
  return std::clamp<int64_t>(qi - k0 + 1, 0, bk);
}

// --------------------------------------------------------------------------------------------
// Forward
// --------------------------------------------------------------------------------------------

template <typename scalar_t>
struct FwdArgs {
  View<scalar_t> q, k, v;
  scalar_t* out;   // contiguous (B, H, Tq, D)
  void* lse;       // contiguous (B, H, Tq), acc dtype
  int64_t B, H, Tq, Tk, D;
  bool causal;
  double scale;
};

template <typename scalar_t, typename acc_t, bool kFma>
PYGPT_INLINE void fwd_tasks(const FwdArgs<scalar_t>& a, int64_t begin, int64_t end) {
  const int64_t D = a.D, Dp = round_up(std::max<int64_t>(D, 1), kPadD);
  const int64_t nq = (a.Tq + BQ - 1) / BQ;
  const acc_t c = static_cast<acc_t>(a.scale * 1.4426950408889634);  // scale * log2(e)
  const acc_t neg_inf = -std::numeric_limits<acc_t>::infinity();

  std::vector<acc_t> Qb(BQ * Dp, 0), Kt(Dp * BK, 0), Vb(BK * Dp, 0), S(BQ * BK, 0), O(BQ * Dp, 0);
  acc_t m[BQ], l[BQ];
  acc_t* lse = static_cast<acc_t*>(a.lse);

  for (int64_t task = begin; task < end; ++task) {
    const int64_t bh = task / nq;
    const int64_t qt = a.causal ? zigzag(task % nq, nq) : task % nq;
    const int64_t b = bh / a.H, h = bh % a.H;
    const int64_t q0 = qt * BQ, bq = std::min(BQ, a.Tq - q0), Mr = round_up(bq, MR);

    pack_rows(Qb.data(), Dp, a.q, b, h, q0, bq, Mr, D);
    std::fill_n(O.data(), Mr * Dp, acc_t(0));
    for (int64_t i = 0; i < BQ; ++i) {
      m[i] = neg_inf;
      l[i] = 0;
    }

    const int64_t kend = a.causal ? std::min(a.Tk, q0 + bq) : a.Tk;
    for (int64_t k0 = 0; k0 < kend; k0 += BK) {
      const int64_t bk = std::min(BK, a.Tk - k0);
      pack_transposed(Kt.data(), a.k, b, h, k0, bk, D);
      pack_rows(Vb.data(), Dp, a.v, b, h, k0, bk, bk, D);

      mm<acc_t, kFma, false, false>(Mr, BK, D, Qb.data(), Dp, Kt.data(), BK, S.data(), BK);

      for (int64_t i = 0; i < bq; ++i) {
        acc_t* __restrict__ s = S.data() + i * BK;
        const int64_t nv = visible(a.causal, q0 + i, k0, bk);
        if (nv == 0) {
          std::fill_n(s, BK, acc_t(0));
          continue;
        }
        // Masked / out-of-range columns -> -inf, then the row max of the scaled scores.
        // (Every loop here is branch-free over the whole tile so that it vectorises: with
        // -ftrapping-math GCC will not if-convert a select around a float op.)
        std::fill(s + nv, s + BK, neg_inf);
        acc_t part[16];
        for (int64_t u = 0; u < 16; ++u) part[u] = neg_inf;
        for (int64_t j = 0; j < BK; j += 16) {
          for (int64_t u = 0; u < 16; ++u) part[u] = s[j + u] > part[u] ? s[j + u] : part[u];
        }
        acc_t mx = part[0];
        for (int64_t u = 1; u < 16; ++u) mx = std::max(mx, part[u]);
        const acc_t m_new = std::max(m[i], mx * c);  // c > 0: max(s) c = max(s c)
        // P = exp2(s c - m_new), 0 where masked; row sum
        exp2_arg(s, BK, c, m_new);
        for (int64_t j = 0; j < BK; ++j) s[j] = exp2_approx<acc_t, kFma>(s[j]);
        std::fill(s + nv, s + BK, acc_t(0));
        for (int64_t u = 0; u < 16; ++u) part[u] = 0;
        for (int64_t j = 0; j < BK; j += 16) {
          for (int64_t u = 0; u < 16; ++u) part[u] += s[j + u];
        }
        acc_t sum = 0;
        for (int64_t u = 0; u < 16; ++u) sum += part[u];
        if (m[i] == neg_inf) {
          l[i] = sum;
        } else {
          const acc_t alpha = static_cast<acc_t>(std::exp2(m[i] - m_new));
          l[i] = l[i] * alpha + sum;
          if (alpha != acc_t(1)) {
            acc_t* __restrict__ o = O.data() + i * Dp;
            for (int64_t d = 0; d < Dp; ++d) o[d] *= alpha;
          }
        }
        m[i] = m_new;
      }
      // rows [bq, Mr) of S are scores of zero query rows: clear them so P V adds nothing
      for (int64_t i = bq; i < Mr; ++i) std::fill_n(S.data() + i * BK, BK, acc_t(0));

      mm<acc_t, kFma, false, true>(Mr, Dp, bk, S.data(), BK, Vb.data(), Dp, O.data(), Dp);
    }

    scalar_t* out = a.out + (bh * a.Tq + q0) * D;
    acc_t* lse_row = lse + bh * a.Tq + q0;
    for (int64_t i = 0; i < bq; ++i) {
      const acc_t inv = l[i] > 0 ? acc_t(1) / l[i] : acc_t(0);
      const acc_t* o = O.data() + i * Dp;
      for (int64_t d = 0; d < D; ++d) out[i * D + d] = static_cast<scalar_t>(o[d] * inv);
      lse_row[i] = l[i] > 0 ? (m[i] + std::log2(l[i])) * static_cast<acc_t>(0.6931471805599453)
                            : neg_inf;
    }
  }
}

template <typename scalar_t>
void fwd_tasks_default(const FwdArgs<scalar_t>& a, int64_t begin, int64_t end) {
  fwd_tasks<scalar_t, at::opmath_type<scalar_t>, false>(a, begin, end);
}

#if PYGPT_ATTN_HAVE_AVX2
template <typename scalar_t>
PYGPT_TARGET_AVX2 void fwd_tasks_avx2(const FwdArgs<scalar_t>& a, int64_t begin, int64_t end) {
  fwd_tasks<scalar_t, at::opmath_type<scalar_t>, true>(a, begin, end);
}
#endif

// --------------------------------------------------------------------------------------------
// Backward
// --------------------------------------------------------------------------------------------

template <typename scalar_t>
struct BwdArgs {
  View<scalar_t> q, k, v, dout;
  const void* lse;    // contiguous (B, H, Tq), acc dtype
  const void* delta;  // contiguous (B, H, Tq), acc dtype
  scalar_t *dq, *dk, *dv;  // contiguous
  int64_t B, H, Tq, Tk, D;
  bool causal;
  double scale;
};

// Per-thread tiles of the backward.
template <typename acc_t>
struct BwdBuffers {
  int64_t Dp;
  std::vector<acc_t> Qn, dOn, Kt, Vt, Kn, P, dS, dK, dV, dQ, lse2, delta;
  BwdBuffers(int64_t Dp_, int64_t dq_rows)
      : Dp(Dp_), Qn(BQ * Dp_, 0), dOn(BQ * Dp_, 0), Kt(Dp_ * BK, 0), Vt(Dp_ * BK, 0),
        Kn(BK * Dp_, 0), P(BQ * BK, 0), dS(BQ * BK, 0), dK(BK * Dp_, 0), dV(BK * Dp_, 0),
        dQ(dq_rows * Dp_, 0), lse2(BQ, 0), delta(BQ, 0) {}
};

// Loads query tile [q0, q0 + bq): Q, dO (rows up to Mr zero-padded), lse * log2(e), delta.
template <typename scalar_t, typename acc_t>
PYGPT_INLINE void load_query_tile(const BwdArgs<scalar_t>& a, BwdBuffers<acc_t>& w, int64_t b,
                                  int64_t h, int64_t q0, int64_t bq, int64_t Mr) {
  pack_rows(w.Qn.data(), w.Dp, a.q, b, h, q0, bq, Mr, a.D);
  pack_rows(w.dOn.data(), w.Dp, a.dout, b, h, q0, bq, Mr, a.D);
  const int64_t off = (b * a.H + h) * a.Tq + q0;
  const acc_t* lse = static_cast<const acc_t*>(a.lse) + off;
  const acc_t* delta = static_cast<const acc_t*>(a.delta) + off;
  for (int64_t i = 0; i < bq; ++i) {
    w.lse2[i] = lse[i] * static_cast<acc_t>(1.4426950408889634);
    w.delta[i] = delta[i];
  }
}

// Loads key tile [k0, k0 + bk): K^T and V^T (for S and dP), and K row-major for dQ if asked.
template <typename scalar_t, typename acc_t>
PYGPT_INLINE void load_key_tile(const BwdArgs<scalar_t>& a, BwdBuffers<acc_t>& w, int64_t b,
                                int64_t h, int64_t k0, int64_t bk, bool with_kn) {
  pack_transposed(w.Kt.data(), a.k, b, h, k0, bk, a.D);
  pack_transposed(w.Vt.data(), a.v, b, h, k0, bk, a.D);
  if (with_kn) pack_rows(w.Kn.data(), w.Dp, a.k, b, h, k0, bk, round_up(bk, MR), a.D);
}

// For the loaded (query tile, key tile): P = exp2(S c - lse2) (0 where masked or padded) and
// dS = P o (dO V^T - delta), both BQ x BK with rows [bq, Mr) zero.
template <typename scalar_t, typename acc_t, bool kFma>
PYGPT_INLINE void probs_and_dscores(const BwdArgs<scalar_t>& a, BwdBuffers<acc_t>& w, int64_t q0,
                                    int64_t bq, int64_t Mr, int64_t k0, int64_t bk) {
  const acc_t c = static_cast<acc_t>(a.scale * 1.4426950408889634);
  acc_t* __restrict__ P = w.P.data();
  acc_t* __restrict__ dS = w.dS.data();
  mm<acc_t, kFma, false, false>(Mr, BK, a.D, w.Qn.data(), w.Dp, w.Kt.data(), BK, P, BK);
  mm<acc_t, kFma, false, false>(Mr, BK, a.D, w.dOn.data(), w.Dp, w.Vt.data(), BK, dS, BK);
  for (int64_t i = 0; i < bq; ++i) {
    const int64_t nv = visible(a.causal, q0 + i, k0, bk);
    const acc_t l2 = w.lse2[i], dl = w.delta[i];
    acc_t* __restrict__ p = P + i * BK;
    acc_t* __restrict__ ds = dS + i * BK;
    // separate branch-free loops so each vectorises (see fwd_tasks)
    exp2_arg(p, BK, c, l2);
    for (int64_t j = 0; j < BK; ++j) p[j] = exp2_approx<acc_t, kFma>(p[j]);
    std::fill(p + nv, p + BK, acc_t(0));
    for (int64_t j = 0; j < BK; ++j) ds[j] = p[j] * (ds[j] - dl);
  }
  for (int64_t i = bq; i < Mr; ++i) {
    std::fill_n(P + i * BK, BK, acc_t(0));
    std::fill_n(dS + i * BK, BK, acc_t(0));
  }
}

// dK, dV of key tile kt of head bh, iterating over the query tiles that can see it. If
// dq_acc is given (per-head scheme), also dq_acc[q rows] += dS K for every query tile.
template <typename scalar_t, typename acc_t, bool kFma>
PYGPT_INLINE void bwd_key_tile(const BwdArgs<scalar_t>& a, BwdBuffers<acc_t>& w, int64_t bh,
                               int64_t kt, acc_t* dq_acc) {
  const int64_t b = bh / a.H, h = bh % a.H, Dp = w.Dp;
  const int64_t k0 = kt * BK, bk = std::min(BK, a.Tk - k0), Mk = round_up(bk, MR);
  load_key_tile(a, w, b, h, k0, bk, dq_acc != nullptr);
  std::fill_n(w.dK.data(), Mk * Dp, acc_t(0));
  std::fill_n(w.dV.data(), Mk * Dp, acc_t(0));

  const int64_t qstart = a.causal ? (k0 / BQ) * BQ : 0;
  for (int64_t q0 = qstart; q0 < a.Tq; q0 += BQ) {
    const int64_t bq = std::min(BQ, a.Tq - q0), Mr = round_up(bq, MR);
    load_query_tile(a, w, b, h, q0, bq, Mr);
    probs_and_dscores<scalar_t, acc_t, kFma>(a, w, q0, bq, Mr, k0, bk);
    // dV += P^T dO, dK += dS^T Q  (reduction over the bq query rows)
    mm<acc_t, kFma, true, true>(Mk, Dp, bq, w.P.data(), BK, w.dOn.data(), Dp, w.dV.data(), Dp);
    mm<acc_t, kFma, true, true>(Mk, Dp, bq, w.dS.data(), BK, w.Qn.data(), Dp, w.dK.data(), Dp);
    if (dq_acc != nullptr) {  // dQ += dS K  (reduction over the bk keys)
      mm<acc_t, kFma, false, true>(Mr, Dp, bk, w.dS.data(), BK, w.Kn.data(), Dp,
                                   dq_acc + q0 * Dp, Dp);
    }
  }

  const acc_t sc = static_cast<acc_t>(a.scale);
  scalar_t* dk = a.dk + (bh * a.Tk + k0) * a.D;
  scalar_t* dv = a.dv + (bh * a.Tk + k0) * a.D;
  for (int64_t j = 0; j < bk; ++j) {
    for (int64_t d = 0; d < a.D; ++d) {
      dk[j * a.D + d] = static_cast<scalar_t>(w.dK[j * Dp + d] * sc);
      dv[j * a.D + d] = static_cast<scalar_t>(w.dV[j * Dp + d]);
    }
  }
}

template <typename scalar_t, typename acc_t>
PYGPT_INLINE void store_dq(const BwdArgs<scalar_t>& a, const acc_t* acc, int64_t Dp, int64_t bh,
                           int64_t q0, int64_t bq) {
  const acc_t sc = static_cast<acc_t>(a.scale);
  scalar_t* dq = a.dq + (bh * a.Tq + q0) * a.D;
  for (int64_t i = 0; i < bq; ++i) {
    for (int64_t d = 0; d < a.D; ++d) dq[i * a.D + d] = static_cast<scalar_t>(acc[i * Dp + d] * sc);
  }
}

// Scheme 1: one task = one (b, h); dK/dV per key tile and dQ accumulated for the whole head.
template <typename scalar_t, typename acc_t, bool kFma>
PYGPT_INLINE void bwd_heads(const BwdArgs<scalar_t>& a, int64_t begin, int64_t end) {
  const int64_t Dp = round_up(std::max<int64_t>(a.D, 1), kPadD);
  const int64_t nk = (a.Tk + BK - 1) / BK;
  BwdBuffers<acc_t> w(Dp, round_up(a.Tq, BQ));
  for (int64_t bh = begin; bh < end; ++bh) {
    std::fill(w.dQ.begin(), w.dQ.end(), acc_t(0));
    for (int64_t kt = 0; kt < nk; ++kt) bwd_key_tile<scalar_t, acc_t, kFma>(a, w, bh, kt, w.dQ.data());
    store_dq(a, w.dQ.data(), Dp, bh, 0, a.Tq);
  }
}

// Scheme 2, pass 1: one task = (b, h, key tile): dK, dV.
template <typename scalar_t, typename acc_t, bool kFma>
PYGPT_INLINE void bwd_key_tiles(const BwdArgs<scalar_t>& a, int64_t begin, int64_t end) {
  const int64_t Dp = round_up(std::max<int64_t>(a.D, 1), kPadD);
  const int64_t nk = (a.Tk + BK - 1) / BK;
  BwdBuffers<acc_t> w(Dp, 0);
  for (int64_t task = begin; task < end; ++task) {
    const int64_t kt = a.causal ? zigzag(task % nk, nk) : task % nk;
    bwd_key_tile<scalar_t, acc_t, kFma>(a, w, task / nk, kt, nullptr);
  }
}

// Scheme 2, pass 2: one task = (b, h, query tile): dQ over the visible key tiles.
template <typename scalar_t, typename acc_t, bool kFma>
PYGPT_INLINE void bwd_query_tiles(const BwdArgs<scalar_t>& a, int64_t begin, int64_t end) {
  const int64_t Dp = round_up(std::max<int64_t>(a.D, 1), kPadD);
  const int64_t nq = (a.Tq + BQ - 1) / BQ;
  BwdBuffers<acc_t> w(Dp, BQ);
  for (int64_t task = begin; task < end; ++task) {
    const int64_t bh = task / nq, b = bh / a.H, h = bh % a.H;
    const int64_t qt = a.causal ? zigzag(task % nq, nq) : task % nq;
    const int64_t q0 = qt * BQ, bq = std::min(BQ, a.Tq - q0), Mr = round_up(bq, MR);
    load_query_tile(a, w, b, h, q0, bq, Mr);
    std::fill(w.dQ.begin(), w.dQ.end(), acc_t(0));
    const int64_t kend = a.causal ? std::min(a.Tk, q0 + bq) : a.Tk;
    for (int64_t k0 = 0; k0 < kend; k0 += BK) {
      const int64_t bk = std::min(BK, a.Tk - k0);
      load_key_tile(a, w, b, h, k0, bk, true);
      probs_and_dscores<scalar_t, acc_t, kFma>(a, w, q0, bq, Mr, k0, bk);
      mm<acc_t, kFma, false, true>(Mr, Dp, bk, w.dS.data(), BK, w.Kn.data(), Dp, w.dQ.data(), Dp);
    }
    store_dq(a, w.dQ.data(), Dp, bh, q0, bq);
  }
}

enum class BwdPass { kHeads, kKeyTiles, kQueryTiles };

template <typename scalar_t, typename acc_t, bool kFma>
PYGPT_INLINE void bwd_run(BwdPass pass, const BwdArgs<scalar_t>& a, int64_t begin, int64_t end) {
  switch (pass) {
    case BwdPass::kHeads: bwd_heads<scalar_t, acc_t, kFma>(a, begin, end); break;
    case BwdPass::kKeyTiles: bwd_key_tiles<scalar_t, acc_t, kFma>(a, begin, end); break;
    case BwdPass::kQueryTiles: bwd_query_tiles<scalar_t, acc_t, kFma>(a, begin, end); break;
  }
}

template <typename scalar_t>
void bwd_tasks_default(BwdPass pass, const BwdArgs<scalar_t>& a, int64_t begin, int64_t end) {
  bwd_run<scalar_t, at::opmath_type<scalar_t>, false>(pass, a, begin, end);
}

#if PYGPT_ATTN_HAVE_AVX2
template <typename scalar_t>
PYGPT_TARGET_AVX2 void bwd_tasks_avx2(BwdPass pass, const BwdArgs<scalar_t>& a, int64_t begin,
                                      int64_t end) {
  bwd_run<scalar_t, at::opmath_type<scalar_t>, true>(pass, a, begin, end);
}
#endif

// --------------------------------------------------------------------------------------------
// ISA choice and the op entry points
// --------------------------------------------------------------------------------------------

bool use_avx2() {
#if PYGPT_ATTN_HAVE_AVX2
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                         at::get_cpu_capability() != "DEFAULT";
  return ok;
#else
  return false;
#endif
}

std::tuple<at::Tensor, at::Tensor> attention_fwd_cpu(const at::Tensor& q_in, const at::Tensor& k_in,
                                                     const at::Tensor& v_in, bool causal,
                                                     double scale) {
  checks::check_attention_inputs(q_in, k_in, v_in, causal, scale);
  checks::check_attention_head_dim_max("pygpt.attention", q_in.size(3), kMaxHeadDim, "CPU kernel");
  TORCH_CHECK(q_in.device().is_cpu(), "pygpt.attention: CPU kernel called with tensors on ",
              q_in.device());
  const at::Tensor q = unit_last_stride(q_in), k = unit_last_stride(k_in), v = unit_last_stride(v_in);
  const int64_t B = q.size(0), H = q.size(1), Tq = q.size(2), Tk = k.size(2), D = q.size(3);
  const auto acc = checks::acc_dtype(q.scalar_type());
  at::Tensor out = at::empty({B, H, Tq, D}, q.options());
  at::Tensor lse = at::empty({B, H, Tq}, q.options().dtype(acc));
  if (out.numel() == 0 && lse.numel() == 0) return {out, lse};

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "pygpt_attention_fwd", [&] {
    FwdArgs<scalar_t> a{view_of<scalar_t>(q), view_of<scalar_t>(k), view_of<scalar_t>(v),
                        out.data_ptr<scalar_t>(), lse.data_ptr(), B, H, Tq, Tk, D, causal, scale};
    const int64_t ntasks = B * H * ((Tq + BQ - 1) / BQ);
    const bool avx2 = use_avx2();
    at::parallel_for(0, ntasks, 1, [&](int64_t begin, int64_t end) {
#if PYGPT_ATTN_HAVE_AVX2
      if (avx2) return fwd_tasks_avx2<scalar_t>(a, begin, end);
#endif
      fwd_tasks_default<scalar_t>(a, begin, end);
    });
    (void)avx2;
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_bwd_cpu(
    const at::Tensor& grad_out_in, const at::Tensor& q_in, const at::Tensor& k_in,
    const at::Tensor& v_in, const at::Tensor& out_in, const at::Tensor& lse_in, bool causal,
    double scale) {
  checks::check_attention_bwd_inputs(grad_out_in, q_in, k_in, v_in, out_in, lse_in, causal, scale);
  checks::check_attention_head_dim_max("pygpt.attention_bwd", q_in.size(3), kMaxHeadDim,
                                       "CPU kernel");
  TORCH_CHECK(q_in.device().is_cpu(), "pygpt.attention_bwd: CPU kernel called with tensors on ",
              q_in.device());
  const at::Tensor q = unit_last_stride(q_in), k = unit_last_stride(k_in), v = unit_last_stride(v_in);
  const at::Tensor dout = unit_last_stride(grad_out_in), out = unit_last_stride(out_in);
  const at::Tensor lse = lse_in.contiguous();
  const int64_t B = q.size(0), H = q.size(1), Tq = q.size(2), Tk = k.size(2), D = q.size(3);
  const auto acc = checks::acc_dtype(q.scalar_type());

  at::Tensor dq = at::empty({B, H, Tq, D}, q.options());
  at::Tensor dk = at::empty({B, H, Tk, D}, k.options());
  at::Tensor dv = at::empty({B, H, Tk, D}, v.options());
  if (B * H == 0) return {dq, dk, dv};
  at::Tensor delta = at::empty({B, H, Tq}, q.options().dtype(acc));

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "pygpt_attention_bwd", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    // delta_i = dot(dO_i, O_i), in the accumulation dtype
    {
      const View<scalar_t> vo = view_of<scalar_t>(out), vd = view_of<scalar_t>(dout);
      acc_t* dl = delta.data_ptr<acc_t>();
      at::parallel_for(0, B * H * Tq, 256, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          const int64_t t = r % Tq, bh = r / Tq;
          const scalar_t* o = vo.row(bh / H, bh % H, t);
          const scalar_t* g = vd.row(bh / H, bh % H, t);
          acc_t s = 0;
          for (int64_t d = 0; d < D; ++d) s += static_cast<acc_t>(o[d]) * static_cast<acc_t>(g[d]);
          dl[r] = s;
        }
      });
    }
    BwdArgs<scalar_t> a{view_of<scalar_t>(q), view_of<scalar_t>(k), view_of<scalar_t>(v),
                        view_of<scalar_t>(dout), lse.data_ptr(), delta.data_ptr(),
                        dq.data_ptr<scalar_t>(), dk.data_ptr<scalar_t>(), dv.data_ptr<scalar_t>(),
                        B, H, Tq, Tk, D, causal, scale};
    const bool avx2 = use_avx2();
    auto launch = [&](BwdPass pass, int64_t ntasks) {
      at::parallel_for(0, ntasks, 1, [&](int64_t begin, int64_t end) {
#if PYGPT_ATTN_HAVE_AVX2
        if (avx2) return bwd_tasks_avx2<scalar_t>(pass, a, begin, end);
#endif
        bwd_tasks_default<scalar_t>(pass, a, begin, end);
      });
    };
    (void)avx2;
    if (B * H >= 2 * at::get_num_threads()) {
      launch(BwdPass::kHeads, B * H);
    } else {
      launch(BwdPass::kKeyTiles, B * H * ((Tk + BK - 1) / BK));
      launch(BwdPass::kQueryTiles, B * H * ((Tq + BQ - 1) / BQ));
    }
  });
  return {dq, dk, dv};
}

}  // namespace
}  // namespace pygpt

TORCH_LIBRARY_IMPL(pygpt, CPU, m) {
  m.impl("attention_fwd", &pygpt::attention_fwd_cpu);
  m.impl("attention_bwd", &pygpt::attention_bwd_cpu);
}
