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
//   * Sums use several at::vec::Vectorized accumulators (ILP) whose lanes are
//     combined in a fixed order: results do not depend on the thread count.
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
// Vectorisation: at::vec::Vectorized<float|double>. The extension is built
//   without -mavx2, so ATen's generic Vectorized (fixed-width arrays that GCC
//   lowers to SSE) is what is used here; the op is memory-bound anyway.
// Not supported / limitations: any non-contiguous input (x, residual,
//   weight, bias, h, grad_y, grad_h, mean, rstd) is made contiguous at the
//   boundary (a copy); grad_y/grad_h of a dtype other than h's, and mean/rstd
//   of a dtype other than the accumulation dtype, are converted there too.
//   All four floating dtypes work (fp16 like bf16). No CUDA here.
#include "../checks.h"
#include "../registry.h"

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

namespace pygpt {

bool cpu_layer_norm_is_kernel() { return true; }

namespace {

constexpr int64_t kGrainElems = 16384;  // elements per parallel task (forward)
constexpr int64_t kMaxChunks = 64;      // fixed row chunks of the backward reduction

// Sum of v[0..n) with 4 vector accumulators, reduced in a fixed order.
template <typename acc_t>
inline acc_t row_sum(const acc_t* v, int64_t n) {
  using Vec = at::vec::Vectorized<acc_t>;
  constexpr int64_t W = Vec::size();
  Vec a0(0), a1(0), a2(0), a3(0);
  int64_t j = 0;
  for (; j + 4 * W <= n; j += 4 * W) {
    a0 += Vec::loadu(v + j);
    a1 += Vec::loadu(v + j + W);
    a2 += Vec::loadu(v + j + 2 * W);
    a3 += Vec::loadu(v + j + 3 * W);
  }
  for (; j + W <= n; j += W) a0 += Vec::loadu(v + j);
  a0 = (a0 + a1) + (a2 + a3);
  acc_t lanes[W];
  a0.store(lanes);
  acc_t s = 0;
  for (int64_t l = 0; l < W; ++l) s += lanes[l];
  for (; j < n; ++j) s += v[j];
  return s;
}

// Sum of (v - m)^2 over v[0..n).
template <typename acc_t>
inline acc_t row_sqdev(const acc_t* v, int64_t n, acc_t m) {
  using Vec = at::vec::Vectorized<acc_t>;
  constexpr int64_t W = Vec::size();
  const Vec mv(m);
  Vec a0(0), a1(0), a2(0), a3(0);
  int64_t j = 0;
  for (; j + 4 * W <= n; j += 4 * W) {
    Vec d0 = Vec::loadu(v + j) - mv, d1 = Vec::loadu(v + j + W) - mv;
    Vec d2 = Vec::loadu(v + j + 2 * W) - mv, d3 = Vec::loadu(v + j + 3 * W) - mv;
    a0 += d0 * d0;
    a1 += d1 * d1;
    a2 += d2 * d2;
    a3 += d3 * d3;
  }
  for (; j + W <= n; j += W) {
    Vec d = Vec::loadu(v + j) - mv;
    a0 += d * d;
  }
  a0 = (a0 + a1) + (a2 + a3);
  acc_t lanes[W];
  a0.store(lanes);
  acc_t s = 0;
  for (int64_t l = 0; l < W; ++l) s += lanes[l];
  for (; j < n; ++j) s += (v[j] - m) * (v[j] - m);
  return s;
}

// out = (v - m) * rs * w (+ b); out may alias v.
template <typename acc_t>
inline void normalize_row(const acc_t* v, const acc_t* w, const acc_t* b, acc_t m, acc_t rs,
                          acc_t* out, int64_t n) {
  using Vec = at::vec::Vectorized<acc_t>;
  constexpr int64_t W = Vec::size();
  const Vec mv(m), rv(rs);
  int64_t j = 0;
  if (b != nullptr) {
    for (; j + W <= n; j += W) {
      Vec y = (Vec::loadu(v + j) - mv) * rv * Vec::loadu(w + j) + Vec::loadu(b + j);
      y.store(out + j);
    }
    for (; j < n; ++j) out[j] = (v[j] - m) * rs * w[j] + b[j];
  } else {
    for (; j + W <= n; j += W) {
      Vec y = (Vec::loadu(v + j) - mv) * rv * Vec::loadu(w + j);
      y.store(out + j);
    }
    for (; j < n; ++j) out[j] = (v[j] - m) * rs * w[j];
  }
}

template <typename scalar_t, typename acc_t>
void layer_norm_fwd_kernel(const scalar_t* x, const scalar_t* res, const acc_t* w,
                           const acc_t* b, scalar_t* y, scalar_t* h, acc_t* mean, acc_t* rstd,
                           int64_t N, int64_t C, acc_t eps) {
  using Vec = at::vec::Vectorized<acc_t>;
  constexpr int64_t W = Vec::size();
  constexpr bool kFull = std::is_same_v<scalar_t, acc_t>;  // fp32 / fp64: no conversions
  const int64_t grain = std::max<int64_t>(1, kGrainElems / C);
  at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> buf(static_cast<size_t>(C));
    acc_t* bp = buf.data();
    for (int64_t i = begin; i < end; ++i) {
      const scalar_t* xr = x + i * C;
      const acc_t* v = bp;  // the row of h as stored, in acc_t
      if (res != nullptr) {
        const scalar_t* rr = res + i * C;
        scalar_t* hr = h + i * C;
        if constexpr (kFull) {
          int64_t j = 0;
          for (; j + W <= C; j += W) {
            Vec hv = Vec::loadu(xr + j) + Vec::loadu(rr + j);
            hv.store(hr + j);
            hv.store(bp + j);
          }
          for (; j < C; ++j) bp[j] = hr[j] = xr[j] + rr[j];
        } else {
          for (int64_t j = 0; j < C; ++j) {
            const scalar_t hv = static_cast<scalar_t>(static_cast<acc_t>(xr[j]) +
                                                      static_cast<acc_t>(rr[j]));
            hr[j] = hv;
            bp[j] = static_cast<acc_t>(hv);
          }
        }
      } else if constexpr (kFull) {
        v = reinterpret_cast<const acc_t*>(xr);
      } else {
        for (int64_t j = 0; j < C; ++j) bp[j] = static_cast<acc_t>(xr[j]);
      }
      const acc_t m = row_sum(v, C) / static_cast<acc_t>(C);
      const acc_t var = row_sqdev(v, C, m) / static_cast<acc_t>(C);
      const acc_t rs = acc_t(1) / std::sqrt(var + eps);
      mean[i] = m;
      rstd[i] = rs;
      scalar_t* yr = y + i * C;
      if constexpr (kFull) {
        normalize_row(v, w, b, m, rs, reinterpret_cast<acc_t*>(yr), C);
      } else {
        normalize_row(v, w, b, m, rs, bp, C);
        for (int64_t j = 0; j < C; ++j) yr[j] = static_cast<scalar_t>(bp[j]);
      }
    }
  });
}

template <typename scalar_t, typename acc_t>
void layer_norm_bwd_kernel(const scalar_t* dy, const scalar_t* dh, const scalar_t* h,
                           const acc_t* w, const acc_t* mean, const acc_t* rstd, scalar_t* dx,
                           acc_t* dw_part, acc_t* db_part, int64_t N, int64_t C,
                           int64_t rows_per_chunk, int64_t n_chunks) {
  using Vec = at::vec::Vectorized<acc_t>;
  constexpr int64_t W = Vec::size();
  constexpr bool kFull = std::is_same_v<scalar_t, acc_t>;
  const acc_t invC = acc_t(1) / static_cast<acc_t>(C);
  at::parallel_for(0, n_chunks, 1, [&](int64_t cbegin, int64_t cend) {
    std::vector<acc_t> hbuf(kFull ? 0 : static_cast<size_t>(C));
    std::vector<acc_t> gbuf(kFull ? 0 : static_cast<size_t>(C));
    std::vector<acc_t> obuf(kFull ? 0 : static_cast<size_t>(C));
    for (int64_t c = cbegin; c < cend; ++c) {
      acc_t* dwp = dw_part + c * C;
      acc_t* dbp = db_part + c * C;
      const int64_t rend = std::min(N, (c + 1) * rows_per_chunk);
      for (int64_t i = c * rows_per_chunk; i < rend; ++i) {
        const acc_t* hv;
        const acc_t* gv;
        if constexpr (kFull) {
          hv = reinterpret_cast<const acc_t*>(h + i * C);
          gv = reinterpret_cast<const acc_t*>(dy + i * C);
        } else {
          for (int64_t j = 0; j < C; ++j) {
            hbuf[j] = static_cast<acc_t>(h[i * C + j]);
            gbuf[j] = static_cast<acc_t>(dy[i * C + j]);
          }
          hv = hbuf.data();
          gv = gbuf.data();
        }
        const acc_t m = mean[i], rs = rstd[i];
        const Vec mv(m), rv(rs);
        // pass 1: sum(g), sum(g * xhat); partial dweight / dbias of this chunk
        Vec sg(0), sgx(0);
        int64_t j = 0;
        for (; j + W <= C; j += W) {
          const Vec d = Vec::loadu(gv + j);
          const Vec xh = (Vec::loadu(hv + j) - mv) * rv;
          const Vec g = d * Vec::loadu(w + j);
          sg += g;
          sgx += g * xh;
          (Vec::loadu(dwp + j) + d * xh).store(dwp + j);
          (Vec::loadu(dbp + j) + d).store(dbp + j);
        }
        acc_t lanes_g[W], lanes_gx[W];
        sg.store(lanes_g);
        sgx.store(lanes_gx);
        acc_t sum_g = 0, sum_gx = 0;
        for (int64_t l = 0; l < W; ++l) {
          sum_g += lanes_g[l];
          sum_gx += lanes_gx[l];
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
        const acc_t a = sum_g * invC, bc = sum_gx * invC;
        // pass 2: grad_x = rstd * (g - a - xhat * bc) (+ grad_h)
        acc_t* out = kFull ? reinterpret_cast<acc_t*>(dx + i * C) : obuf.data();
        const Vec av(a), bv(bc);
        j = 0;
        for (; j + W <= C; j += W) {
          const Vec xh = (Vec::loadu(hv + j) - mv) * rv;
          const Vec g = Vec::loadu(gv + j) * Vec::loadu(w + j);
          Vec o = rv * (g - av - xh * bv);
          if constexpr (kFull) {
            if (dh != nullptr) o += Vec::loadu(reinterpret_cast<const acc_t*>(dh + i * C) + j);
          }
          o.store(out + j);
        }
        for (; j < C; ++j) {
          const acc_t xh = (hv[j] - m) * rs;
          acc_t o = rs * (gv[j] * w[j] - a - xh * bc);
          if constexpr (kFull) {
            if (dh != nullptr) o += static_cast<acc_t>(dh[i * C + j]);
          }
          out[j] = o;
        }
        if constexpr (!kFull) {
          scalar_t* dxr = dx + i * C;
          if (dh != nullptr) {
            const scalar_t* dhr = dh + i * C;
            for (int64_t k = 0; k < C; ++k)
              dxr[k] = static_cast<scalar_t>(out[k] + static_cast<acc_t>(dhr[k]));
          } else {
            for (int64_t k = 0; k < C; ++k) dxr[k] = static_cast<scalar_t>(out[k]);
          }
        }
      }
    }
  });
}

// Column sums of part [chunks, C] in chunk order -> out (C,).
template <typename acc_t>
void reduce_chunks(const acc_t* part, acc_t* out, int64_t chunks, int64_t C) {
  at::parallel_for(0, C, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) out[j] = 0;
    for (int64_t c = 0; c < chunks; ++c) {
      const acc_t* row = part + c * C;
      for (int64_t j = begin; j < end; ++j) out[j] += row[j];
    }
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
    layer_norm_fwd_kernel<scalar_t, acc_t>(
        xc.const_data_ptr<scalar_t>(),
        residual.has_value() ? rc.const_data_ptr<scalar_t>() : nullptr,
        wc.const_data_ptr<acc_t>(), bias.has_value() ? bc.const_data_ptr<acc_t>() : nullptr,
        y.mutable_data_ptr<scalar_t>(),
        residual.has_value() ? h.mutable_data_ptr<scalar_t>() : nullptr,
        mean.mutable_data_ptr<acc_t>(), rstd.mutable_data_ptr<acc_t>(), N, C,
        static_cast<acc_t>(eps));
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
    layer_norm_bwd_kernel<scalar_t, acc_t>(
        gyc.const_data_ptr<scalar_t>(),
        grad_h.has_value() ? ghc.const_data_ptr<scalar_t>() : nullptr,
        hc.const_data_ptr<scalar_t>(), wc.const_data_ptr<acc_t>(), mc.const_data_ptr<acc_t>(),
        sc.const_data_ptr<acc_t>(), grad_x.mutable_data_ptr<scalar_t>(),
        dw_part.mutable_data_ptr<acc_t>(), db_part.mutable_data_ptr<acc_t>(), N, C,
        rows_per_chunk, n_chunks);
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
