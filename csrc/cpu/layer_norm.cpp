// ===========================================================================
// pygpt.layer_norm on the CPU: LayerNorm over the last dim with the residual
// add fused in, forward and backward, hand-written (no composite at:: math).
// ===========================================================================
//
// What it computes (must match the fake functions registered in Python):
//   x (..., C), optional residual (same shape/dtype), weight (C,), bias (C,)?
//   h    = x + residual, rounded to x's dtype and returned; when residual is
//          None, h is an EMPTY tensor (shape [0]) and x itself plays h
//   mean = mean(h), rstd = 1 / sqrt(var_biased(h) + eps)  over each row,
//          (N,) with N = numel / C; float32 (float64 for float64 inputs)
//   y    = (h - mean) * rstd * weight + bias, in x's dtype
//   The statistics are those of h AS STORED (after rounding to x's dtype): the
//   backward only sees that h, and y must be exactly LN(returned h).
//   Backward: xhat = (h - mean) * rstd, g = grad_y * weight,
//   grad_x = rstd * (g - mean(g) - xhat * mean(g * xhat)) (+ grad_h),
//   grad_weight = sum_rows(grad_y * xhat), grad_bias = sum_rows(grad_y),
//   both (C,) in weight's dtype (grad_bias is always computed).
//
// Design
//   * One pass over memory per row. The forward reads x (and residual) once,
//     writes h, and keeps the row (as h is stored, upcast to the accumulation
//     type) in a per-thread row buffer of C floats; the statistics and y are
//     then computed from that buffer, which sits in L1/L2 (C = 768 -> 3 KB).
//     For float32/float64 without a residual the row of x is used directly.
//   * Numerically stable statistics: exact two-pass over the cached row
//     (mean first, then the sum of squared deviations) in float32 (float64 for
//     float64 inputs), so a large row mean does not cancel the variance the
//     way the one-pass E[x^2] - E[x]^2 formula would. Since the second pass
//     reads the cached row, it costs no extra memory traffic.
//   * Sums use 16 independent lane accumulators (vectorised, ILP) combined in a
//     fixed order: results do not depend on the thread count.
//   * bf16/fp16: loaded and converted to float32 per row; all math in float32;
//     h and y rounded once on store. weight/bias may have any supported dtype
//     (they are converted to the accumulation type once, C values).
//   * Backward, per row in two passes over the row (both in cache):
//     pass 1 sums g and g*xhat and accumulates grad_y*xhat and grad_y into
//     this chunk's partial dweight/dbias rows; pass 2 writes grad_x.
//     dweight/dbias are deterministic: the rows are split into a FIXED number
//     of chunks (min(N, 64); depends only on N, never on the thread count),
//     each chunk owns one row of a [chunks, C] float32 (float64) buffer, and a
//     final column reduction adds the chunk rows in chunk order.
//
// Parallelisation: at::parallel_for over rows (forward; grain ~16K elements)
//   and over row chunks (backward, grain 1), then over columns for the final
//   dweight/dbias reduction.
// Memory: forward writes y (+ h) and 2N statistics; backward writes grad_x
//   and a [min(N,64), C] x 2 accumulation buffer. No other temporaries.
// Vectorisation: plain branch-free loops over 16-lane blocks, auto-vectorised
//   (verified with -fopt-info-vec) rather than at::vec::Vectorized: the
//   extension is built without -mavx2, where Vectorized is only ATen's generic
//   array fallback (measured mostly scalar code). The row functions are
//   target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"), so AVX-512 or AVX2+FMA is used where the CPU has it
//   (Linux x86-64; elsewhere the baseline build).
// Not supported / limitations: any non-contiguous input (x, residual,
//   weight, bias, h, grad_y, grad_h, mean, rstd) is made contiguous at the
//   boundary (a copy); grad_y/grad_h of a dtype other than h's, and mean/rstd
//   of a dtype other than the accumulation dtype, are converted there too.
//   All four floating dtypes work (fp16 like bf16). No CUDA here.
#include "../checks.h"
#include "../registry.h"
#include "reduce_chunks.h"

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

// No FMA contraction in this file: dx = rstd·(g − mean(g) − x̂·mean(g·x̂)) cancels to exactly 0 for
// C = 1 and for constant rows, and a fused multiply-add leaves a rounding residue there that rstd
// (up to 1/sqrt(eps) ≈ 316) amplifies. The kernel is memory-bound; FMAs would not speed it up.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off")
#elif defined(__clang__)
#pragma clang fp contract(off)
#endif

namespace pygpt {

bool cpu_layer_norm_is_kernel() { return true; }

namespace {

constexpr int64_t kGrainElems = 16384;  // elements per parallel task (forward)
constexpr int64_t kMaxChunks = 64;      // fixed row chunks of the backward reduction
constexpr int64_t kLanes = 16;          // independent accumulators per sum (2 AVX2 registers)

// The extension is compiled for the baseline ISA (no -mavx2), where ATen's at::vec::Vectorized
// is only its generic array fallback. So the row loops are plain branch-free loops over
// kLanes-wide blocks, which GCC/Clang vectorise (checked with -fopt-info-vec), and the
// functions that hold them are compiled twice, for AVX2 and for the baseline, with the
// right clone picked at load time (target_clones; Linux x86-64 only).
#if defined(__x86_64__) && defined(__linux__) && defined(__has_attribute)
#if __has_attribute(target_clones)
#define PYGPT_LN_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#endif
#endif
#ifndef PYGPT_LN_CLONES
#define PYGPT_LN_CLONES
#endif
#define PYGPT_LN_INLINE inline __attribute__((always_inline))

// Sum of v[0..n) in kLanes partial sums combined in a fixed order (thread-count independent).
template <typename T>
PYGPT_LN_INLINE T row_sum(const T* __restrict v, int64_t n) {
  T acc[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int64_t l = 0; l < kLanes; ++l) acc[l] += v[j + l];
  T s = 0;
  for (int64_t l = 0; l < kLanes; ++l) s += acc[l];
  for (; j < n; ++j) s += v[j];
  return s;
}

// Sum of (v - m)^2 over v[0..n): the second pass of the two-pass variance.
template <typename T>
PYGPT_LN_INLINE T row_sqdev(const T* __restrict v, int64_t n, T m) {
  T acc[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int64_t l = 0; l < kLanes; ++l) {
      const T d = v[j + l] - m;
      acc[l] += d * d;
    }
  T s = 0;
  for (int64_t l = 0; l < kLanes; ++l) s += acc[l];
  for (; j < n; ++j) s += (v[j] - m) * (v[j] - m);
  return s;
}

// out = (v - m) * rs * w (+ b); out must not alias v.
template <typename T>
PYGPT_LN_INLINE void normalize_row(const T* __restrict v, const T* __restrict w,
                                   const T* __restrict b, T m, T rs, T* __restrict out,
                                   int64_t n) {
  if (b != nullptr) {
    for (int64_t j = 0; j < n; ++j) out[j] = (v[j] - m) * rs * w[j] + b[j];
  } else {
    for (int64_t j = 0; j < n; ++j) out[j] = (v[j] - m) * rs * w[j];
  }
}

template <typename scalar_t, typename acc_t>
struct FwdArgs {
  const scalar_t* x;
  const scalar_t* res;  // nullable
  const acc_t* w;
  const acc_t* b;  // nullable
  scalar_t* y;
  scalar_t* h;  // nullable (no residual)
  acc_t* mean;
  acc_t* rstd;
  int64_t C;
  acc_t eps;
};

// Rows [begin, end) of the forward. buf, obuf: C-element scratch rows.
template <typename scalar_t, typename acc_t>
PYGPT_LN_CLONES void layer_norm_fwd_rows(const FwdArgs<scalar_t, acc_t>& a, int64_t begin,
                                         int64_t end, acc_t* __restrict buf,
                                         acc_t* __restrict obuf) {
  constexpr bool kFull = std::is_same_v<scalar_t, acc_t>;  // fp32 / fp64: no conversions
  const int64_t C = a.C;
  for (int64_t i = begin; i < end; ++i) {
    const scalar_t* __restrict xr = a.x + i * C;
    const acc_t* v = buf;  // the row of h as stored, in acc_t
    if (a.res != nullptr) {
      const scalar_t* __restrict rr = a.res + i * C;
      scalar_t* __restrict hr = a.h + i * C;
      if constexpr (kFull) {
        for (int64_t j = 0; j < C; ++j) {
          const acc_t hv = xr[j] + rr[j];
          hr[j] = hv;
          buf[j] = hv;
        }
      } else {
        for (int64_t j = 0; j < C; ++j) {
          const scalar_t hv = static_cast<scalar_t>(static_cast<acc_t>(xr[j]) +
                                                    static_cast<acc_t>(rr[j]));
          hr[j] = hv;
          buf[j] = static_cast<acc_t>(hv);
        }
      }
    } else if constexpr (kFull) {
      v = reinterpret_cast<const acc_t*>(xr);
    } else {
      for (int64_t j = 0; j < C; ++j) buf[j] = static_cast<acc_t>(xr[j]);
    }
    const acc_t m = row_sum(v, C) / static_cast<acc_t>(C);
    const acc_t var = row_sqdev(v, C, m) / static_cast<acc_t>(C);
    const acc_t rs = acc_t(1) / std::sqrt(var + a.eps);
    a.mean[i] = m;
    a.rstd[i] = rs;
    scalar_t* __restrict yr = a.y + i * C;
    if constexpr (kFull) {
      normalize_row(v, a.w, a.b, m, rs, reinterpret_cast<acc_t*>(yr), C);
    } else {
      normalize_row(v, a.w, a.b, m, rs, obuf, C);
      for (int64_t j = 0; j < C; ++j) yr[j] = static_cast<scalar_t>(obuf[j]);
    }
  }
}

template <typename scalar_t, typename acc_t>
void layer_norm_fwd_kernel(const FwdArgs<scalar_t, acc_t>& a, int64_t N) {
  const int64_t grain = std::max<int64_t>(1, kGrainElems / a.C);
  at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> buf(static_cast<size_t>(2 * a.C));
    layer_norm_fwd_rows<scalar_t, acc_t>(a, begin, end, buf.data(), buf.data() + a.C);
  });
}

template <typename scalar_t, typename acc_t>
struct BwdArgs {
  const scalar_t* dy;
  const scalar_t* dh;  // nullable
  const scalar_t* h;
  const acc_t* w;
  const acc_t* mean;
  const acc_t* rstd;
  scalar_t* dx;
  acc_t* dw_part;  // [chunks, C], zero-initialised
  acc_t* db_part;
  int64_t N, C, rows_per_chunk;
};

// Row chunks [cbegin, cend) of the backward. hbuf, gbuf, obuf: C-element scratch rows.
template <typename scalar_t, typename acc_t>
PYGPT_LN_CLONES void layer_norm_bwd_chunks(const BwdArgs<scalar_t, acc_t>& a, int64_t cbegin,
                                           int64_t cend, acc_t* __restrict hbuf,
                                           acc_t* __restrict gbuf, acc_t* __restrict obuf) {
  constexpr bool kFull = std::is_same_v<scalar_t, acc_t>;
  const int64_t C = a.C;
  const acc_t invC = acc_t(1) / static_cast<acc_t>(C);
  const acc_t* __restrict w = a.w;
  for (int64_t c = cbegin; c < cend; ++c) {
    acc_t* __restrict dwp = a.dw_part + c * C;
    acc_t* __restrict dbp = a.db_part + c * C;
    const int64_t rend = std::min(a.N, (c + 1) * a.rows_per_chunk);
    for (int64_t i = c * a.rows_per_chunk; i < rend; ++i) {
      const acc_t* __restrict hv;
      const acc_t* __restrict gv;
      if constexpr (kFull) {
        hv = reinterpret_cast<const acc_t*>(a.h + i * C);
        gv = reinterpret_cast<const acc_t*>(a.dy + i * C);
      } else {
        const scalar_t* __restrict hr = a.h + i * C;
        const scalar_t* __restrict gr = a.dy + i * C;
        for (int64_t j = 0; j < C; ++j) {
          hbuf[j] = static_cast<acc_t>(hr[j]);
          gbuf[j] = static_cast<acc_t>(gr[j]);
        }
        hv = hbuf;
        gv = gbuf;
      }
      const acc_t m = a.mean[i], rs = a.rstd[i];
      // pass 1: sum(g), sum(g * xhat) with g = dy * w; this chunk's partial dweight / dbias
      acc_t sg[kLanes] = {}, sgx[kLanes] = {};
      int64_t j = 0;
      for (; j + kLanes <= C; j += kLanes)
        for (int64_t l = 0; l < kLanes; ++l) {
          const acc_t d = gv[j + l];
          const acc_t xh = (hv[j + l] - m) * rs;
          const acc_t g = d * w[j + l];
          sg[l] += g;
          sgx[l] += g * xh;
          dwp[j + l] += d * xh;
          dbp[j + l] += d;
        }
      acc_t sum_g = 0, sum_gx = 0;
      for (int64_t l = 0; l < kLanes; ++l) {
        sum_g += sg[l];
        sum_gx += sgx[l];
      }
      for (; j < C; ++j) {
        const acc_t d = gv[j];
        const acc_t xh = (hv[j] - m) * rs;
        const acc_t g = d * w[j];
        sum_g += g;
        sum_gx += g * xh;
        dwp[j] += d * xh;
        dbp[j] += d;
      }
      const acc_t ga = sum_g * invC, gb = sum_gx * invC;
      // pass 2: grad_x = rstd * (g - mean(g) - xhat * mean(g xhat)) (+ grad_h)
      if constexpr (kFull) {
        acc_t* __restrict out = reinterpret_cast<acc_t*>(a.dx + i * C);
        if (a.dh != nullptr) {
          const acc_t* __restrict dhr = reinterpret_cast<const acc_t*>(a.dh + i * C);
          for (int64_t k = 0; k < C; ++k)
            out[k] = rs * (gv[k] * w[k] - ga - (hv[k] - m) * rs * gb) + dhr[k];
        } else {
          for (int64_t k = 0; k < C; ++k)
            out[k] = rs * (gv[k] * w[k] - ga - (hv[k] - m) * rs * gb);
        }
      } else {
        for (int64_t k = 0; k < C; ++k)
          obuf[k] = rs * (gv[k] * w[k] - ga - (hv[k] - m) * rs * gb);
        scalar_t* __restrict dxr = a.dx + i * C;
        if (a.dh != nullptr) {
          const scalar_t* __restrict dhr = a.dh + i * C;
          for (int64_t k = 0; k < C; ++k)
            dxr[k] = static_cast<scalar_t>(obuf[k] + static_cast<acc_t>(dhr[k]));
        } else {
          for (int64_t k = 0; k < C; ++k) dxr[k] = static_cast<scalar_t>(obuf[k]);
        }
      }
    }
  }
}

template <typename scalar_t, typename acc_t>
void layer_norm_bwd_kernel(const BwdArgs<scalar_t, acc_t>& a, int64_t n_chunks) {
  at::parallel_for(0, n_chunks, 1, [&](int64_t cbegin, int64_t cend) {
    std::vector<acc_t> buf(static_cast<size_t>(3 * a.C));
    layer_norm_bwd_chunks<scalar_t, acc_t>(a, cbegin, cend, buf.data(), buf.data() + a.C,
                                           buf.data() + 2 * a.C);
  });
}


std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> layer_norm_fwd_cpu(
    const at::Tensor& x, const std::optional<at::Tensor>& residual, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, double eps) {
  const int64_t C = checks::check_layer_norm_fwd_inputs(x, residual, weight, bias, eps);
  const auto acc = checks::acc_dtype(x.scalar_type());
  const int64_t N = x.numel() / C;

  const at::Tensor xc = x.contiguous();
  const at::Tensor rc = residual.has_value() ? residual->contiguous() : at::Tensor();
  const at::Tensor wc = weight.to(acc).contiguous();
  const at::Tensor bc = bias.has_value() ? bias->to(acc).contiguous() : at::Tensor();

  at::Tensor y = at::empty(x.sizes(), xc.options());
  at::Tensor h = residual.has_value() ? at::empty(x.sizes(), xc.options())
                                      : at::empty({0}, xc.options());
  at::Tensor mean = at::empty({N}, xc.options().dtype(acc));
  at::Tensor rstd = at::empty({N}, xc.options().dtype(acc));

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "layer_norm_fwd_cpu",
                                  [&] {
    using acc_t = at::opmath_type<scalar_t>;
    FwdArgs<scalar_t, acc_t> args{
        xc.const_data_ptr<scalar_t>(),
        residual.has_value() ? rc.const_data_ptr<scalar_t>() : nullptr,
        wc.const_data_ptr<acc_t>(),
        bias.has_value() ? bc.const_data_ptr<acc_t>() : nullptr,
        y.mutable_data_ptr<scalar_t>(),
        residual.has_value() ? h.mutable_data_ptr<scalar_t>() : nullptr,
        mean.mutable_data_ptr<acc_t>(),
        rstd.mutable_data_ptr<acc_t>(),
        C,
        static_cast<acc_t>(eps)};
    layer_norm_fwd_kernel<scalar_t, acc_t>(args, N);
  });
  return {y, h, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_bwd_cpu(
    const at::Tensor& grad_y, const std::optional<at::Tensor>& grad_h, const at::Tensor& h,
    const at::Tensor& weight, const at::Tensor& mean, const at::Tensor& rstd) {
  const int64_t C = checks::check_layer_norm_bwd_inputs(grad_y, grad_h, h, weight, mean, rstd);
  const auto acc = checks::acc_dtype(h.scalar_type());
  const auto dt = h.scalar_type();
  const int64_t N = h.numel() / C;

  const at::Tensor hc = h.contiguous();
  const at::Tensor gyc = grad_y.to(dt).contiguous();
  const at::Tensor ghc = grad_h.has_value() ? grad_h->to(dt).contiguous() : at::Tensor();
  const at::Tensor wc = weight.to(acc).contiguous();
  const at::Tensor mc = mean.to(acc).contiguous();
  const at::Tensor sc = rstd.to(acc).contiguous();

  const int64_t rows_per_chunk = N > 0 ? (N + kMaxChunks - 1) / kMaxChunks : 1;
  const int64_t n_chunks = N > 0 ? (N + rows_per_chunk - 1) / rows_per_chunk : 0;
  at::Tensor dw_part = at::zeros({std::max<int64_t>(n_chunks, 1), C}, hc.options().dtype(acc));
  at::Tensor db_part = at::zeros({std::max<int64_t>(n_chunks, 1), C}, hc.options().dtype(acc));
  at::Tensor grad_x = at::empty(h.sizes(), hc.options());
  at::Tensor dw = at::empty({C}, hc.options().dtype(acc));
  at::Tensor db = at::empty({C}, hc.options().dtype(acc));

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dt, "layer_norm_bwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    BwdArgs<scalar_t, acc_t> args{gyc.const_data_ptr<scalar_t>(),
                                  grad_h.has_value() ? ghc.const_data_ptr<scalar_t>() : nullptr,
                                  hc.const_data_ptr<scalar_t>(),
                                  wc.const_data_ptr<acc_t>(),
                                  mc.const_data_ptr<acc_t>(),
                                  sc.const_data_ptr<acc_t>(),
                                  grad_x.mutable_data_ptr<scalar_t>(),
                                  dw_part.mutable_data_ptr<acc_t>(),
                                  db_part.mutable_data_ptr<acc_t>(),
                                  N,
                                  C,
                                  rows_per_chunk};
    layer_norm_bwd_kernel<scalar_t, acc_t>(args, n_chunks);
    reduce_chunks<acc_t>(dw_part.const_data_ptr<acc_t>(), dw.mutable_data_ptr<acc_t>(), n_chunks,
                         C);
    reduce_chunks<acc_t>(db_part.const_data_ptr<acc_t>(), db.mutable_data_ptr<acc_t>(), n_chunks,
                         C);
  });
  return {grad_x, dw.to(weight.scalar_type()), db.to(weight.scalar_type())};
}

}  // namespace
}  // namespace pygpt

TORCH_LIBRARY_IMPL(pygpt, CPU, m) {
  m.impl("layer_norm_fwd", &pygpt::layer_norm_fwd_cpu);
  m.impl("layer_norm_bwd", &pygpt::layer_norm_bwd_cpu);
}
