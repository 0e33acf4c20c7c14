// ===========================================================================
// pygpt.gelu_mlp on the CPU: Linear -> GELU -> Linear (the transformer MLP),
// with bias + GELU fused into one pass over the hidden activations in the
// forward, and the GELU derivative fused with the b_fc gradient in the
// backward. The two matmuls of each direction call ATen's GEMM.
// ===========================================================================
//
// What it computes (must match the fake functions registered in Python):
//   weights in nn.Linear layout: w_fc (Hd, C), w_proj (C, Hd); x (..., C)
//   pre = x @ w_fc.T + b_fc                       (..., Hd), x's dtype
//   out = gelu(pre, approximate) @ w_proj.T + b_proj   (..., C)
//   approximate "tanh": 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
//               "none": x Phi(x) (exact, erf-based)
//   Backward returns grads of x, w_fc, b_fc (Hd,), w_proj, b_proj (C,)
//   (the bias grads are always computed).
//
// Forward (M = rows of x flattened over the leading dims):
//   1. pre = x . w_fc^T                      at::mm (ATen GEMM, no bias)
//   2. ONE parallel pass over the M x Hd hidden activations, row by row:
//      pre += b_fc in place, (bf16/fp16: round pre to x's dtype, store it, and
//      continue from the rounded value so the backward sees the same pre),
//      act = gelu(pre) into a separate buffer.
//   3. out = b_proj + act . w_proj^T         at::addmm (at::mm without bias)
//   Stored for the backward (by pygpt/ops/gelu_mlp.py): x, pre (x's dtype),
//   the weights. The activation is NOT stored: the backward recomputes it
//   from pre (cheap elementwise work vs. keeping another M x Hd tensor).
// Backward:
//   1. dact = grad_out . w_proj              at::mm
//   2. ONE parallel pass over the hidden activations: recompute
//      act = gelu(pre) (needed for dW_proj), turn dact into
//      dpre = dact * gelu'(pre) in place, and add dpre into this row chunk's
//      partial b_fc gradient.
//   3. dW_proj = grad_out^T . act, dW_fc = dpre^T . x, dx = dpre . w_fc
//      (at::mm); db_proj = column sums of grad_out (at::sum).
//   db_fc is deterministic: FIXED row chunks (min(M, 64), depending only on M)
//   each own one row of a [chunks, Hd] partial buffer; the final reduction
//   adds the rows in chunk order.
//
// GELU math. float: a hand-written branch-free exp (Cephes expf polynomial,
//   exponent by bit manipulation, ~1 ulp) feeds
//     tanh form: gelu = x * sigmoid(2u) (identity 0.5(1+tanh u) = sigmoid(2u);
//                no cancellation), gelu' = s + 2 x s (1-s) u', 1-s = e*s
//     exact form: Phi(x) from erfc(|x|/sqrt2) by Abramowitz-Stegun 7.1.26
//                (abs. error < 1.5e-7, the same formula ATen's AVX2 erf uses),
//                gelu' = Phi + x phi, phi = exp(-x^2/2)/sqrt(2 pi) shares the
//                exp with erfc.
//   The per-row loops are plain, branch-free float code that GCC
//   auto-vectorises (checked with -fopt-info-vec: the gelu loops are
//   vectorised). The extension is built without -mavx2, so the row functions
//   are target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"): AVX-512 / AVX2+FMA where the CPU has them. double: std::tanh / std::erfc / std::exp, scalar, exact (the fp64
//   path is for gradcheck, not speed).
//
// Dtypes: float32 and float64 compute in their own dtype, GEMMs included.
//   bfloat16 / float16 are UPCAST at the boundary: x and the weights are
//   converted to float32, both GEMMs run in float32 (ATen), the activations
//   are float32, and out / pre / the gradients are rounded to x's dtype once.
//   This is more accurate than a bf16 GEMM chain and on CPUs without native
//   bf16 matmul not slower; it costs float32 copies of x and the weights.
// Parallelisation: at::parallel_for over rows (forward pass) and over fixed
//   row chunks (backward pass); the GEMMs use ATen's own threading.
// Memory: forward allocates pre (M x Hd, returned) and act (M x Hd, freed);
//   backward dact/dpre (M x Hd, in place), act (M x Hd), [chunks, Hd] partials.
// Not supported: the matmuls are not blocked with the epilogue inside the
//   GEMM micro-kernel (the pass over hidden follows the GEMM, so the hidden
//   tile is re-read once from memory/cache). Non-contiguous x is flattened by
//   reshape (a copy when needed); at::mm handles strided weights. No CUDA here.
#include "../checks.h"
#include "../registry.h"
#include "reduce_chunks.h"

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

namespace pygpt {

bool cpu_gelu_mlp_is_kernel() { return true; }

namespace {

constexpr int64_t kGrainElems = 32768;  // hidden elements per parallel task
constexpr int64_t kMaxChunks = 64;      // fixed row chunks of the db_fc reduction

constexpr double kSqrt2OverPi = 0.7978845608028654;  // sqrt(2/pi)
constexpr double kCubic = 0.044715;
constexpr double kInvSqrt2 = 0.7071067811865476;
constexpr double kInvSqrt2Pi = 0.3989422804014327;  // 1/sqrt(2 pi)

// ---- float: vectorisable elementwise math ----------------------------------

// GCC only if-converts (and so vectorises) the selects below when it may assume that
// float compares/arithmetic do not trap; -ftrapping-math is its default, so turn it
// off for these few functions only. Clang assumes no traps by default.
// Built for the baseline ISA (no -mavx2), so the row functions are compiled twice,
// for AVX2 and the baseline, and the clone is picked at load time (Linux x86-64).
#if defined(__x86_64__) && defined(__linux__) && defined(__has_attribute)
#if __has_attribute(target_clones)
#define PYGPT_MLP_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#endif
#endif
#ifndef PYGPT_MLP_CLONES
#define PYGPT_MLP_CLONES
#endif

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("no-trapping-math")
#endif

// exp(x) for float, branch-free (clamped to the normal range), ~1 ulp.
inline __attribute__((always_inline)) float exp_f(float x) {
  x = x < 88.3762626647949f ? x : 88.3762626647949f;
  x = x > -87.3365447505531f ? x : -87.3365447505531f;
  // n = round(x / ln2) by the 1.5 * 2^23 trick (no -ffast-math, so it is kept)
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  const float r2 = r * r;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r2 + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// Φ(x), the standard normal CDF, from erfc(|x|/√2) by Abramowitz-Stegun 7.1.26 (|error| < 1.5e-7);
// also returns exp(-x²/2), which GELU's derivative needs.
inline __attribute__((always_inline)) float normal_cdf(float x, float* ez) {
  const float z = (x < 0.0f ? -x : x) * static_cast<float>(kInvSqrt2);
  const float t = 1.0f / (1.0f + 0.3275911f * z);
  const float poly =
      t * (0.254829592f +
           t * (-0.284496736f + t * (1.421413741f + t * (-1.453152027f + t * 1.061405429f))));
  *ez = exp_f(-z * z);
  const float q = poly * *ez;  // erfc(z)
  return x < 0.0f ? 0.5f * q : 1.0f - 0.5f * q;
}

// a = gelu(p) over a row of n floats.
template <bool kTanh>
PYGPT_MLP_CLONES void gelu_fwd_row(const float* __restrict p, float* __restrict a, int64_t n) {
  if constexpr (kTanh) {
    for (int64_t j = 0; j < n; ++j) {
      const float x = p[j];
      const float u = static_cast<float>(kSqrt2OverPi) * (x + static_cast<float>(kCubic) * x * x * x);
      a[j] = x / (1.0f + exp_f(-2.0f * u));
    }
  } else {
    for (int64_t j = 0; j < n; ++j) {
      const float x = p[j];
      float ez;
      const float phi_cdf = normal_cdf(x, &ez);
      a[j] = x * phi_cdf;
    }
  }
}

// a = gelu(p); d = d * gelu'(p)  (d: dact in, dpre out) over a row of n floats.
template <bool kTanh>
PYGPT_MLP_CLONES void gelu_bwd_row(const float* __restrict p, float* __restrict a, float* __restrict d,
                         int64_t n) {
  if constexpr (kTanh) {
    for (int64_t j = 0; j < n; ++j) {
      const float x = p[j];
      const float x2 = x * x;
      const float u = static_cast<float>(kSqrt2OverPi) * (x + static_cast<float>(kCubic) * x2 * x);
      const float du = static_cast<float>(kSqrt2OverPi) * (1.0f + 3.0f * static_cast<float>(kCubic) * x2);
      const float e = exp_f(-2.0f * u);
      const float s = 1.0f / (1.0f + e);  // sigmoid(2u) = 0.5 (1 + tanh u)
      a[j] = x * s;
      d[j] = d[j] * (s + 2.0f * x * s * (e * s) * du);
    }
  } else {
    for (int64_t j = 0; j < n; ++j) {
      const float x = p[j];
      float ez;  // exp(-x^2 / 2)
      const float phi_cdf = normal_cdf(x, &ez);
      a[j] = x * phi_cdf;
      d[j] = d[j] * (phi_cdf + x * ez * static_cast<float>(kInvSqrt2Pi));
    }
  }
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

// ---- double: exact scalar math ---------------------------------------------

template <bool kTanh>
static void gelu_fwd_row(const double* p, double* a, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    const double x = p[j];
    if constexpr (kTanh) {
      a[j] = 0.5 * x * (1.0 + std::tanh(kSqrt2OverPi * (x + kCubic * x * x * x)));
    } else {
      a[j] = 0.5 * x * std::erfc(-x * kInvSqrt2);
    }
  }
}

template <bool kTanh>
static void gelu_bwd_row(const double* p, double* a, double* d, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    const double x = p[j];
    if constexpr (kTanh) {
      const double t = std::tanh(kSqrt2OverPi * (x + kCubic * x * x * x));
      const double du = kSqrt2OverPi * (1.0 + 3.0 * kCubic * x * x);
      a[j] = 0.5 * x * (1.0 + t);
      d[j] *= 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du;
    } else {
      const double cdf = 0.5 * std::erfc(-x * kInvSqrt2);
      a[j] = x * cdf;
      d[j] *= cdf + x * std::exp(-0.5 * x * x) * kInvSqrt2Pi;
    }
  }
}

// ---- the two fused passes ----------------------------------------------------

// pre_acc (M, Hd) in acc_t: += b, (low precision: round, store into pre_low, reload),
// act = gelu(pre).
template <typename scalar_t, typename acc_t, bool kTanh>
void fwd_pass(acc_t* pre_acc, const acc_t* b, scalar_t* pre_low, acc_t* act, int64_t M,
              int64_t Hd) {
  constexpr bool kFull = std::is_same_v<scalar_t, acc_t>;
  const int64_t grain = std::max<int64_t>(1, kGrainElems / std::max<int64_t>(Hd, 1));
  at::parallel_for(0, M, grain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      acc_t* __restrict pr = pre_acc + i * Hd;
      if (b != nullptr) {
        for (int64_t j = 0; j < Hd; ++j) pr[j] += b[j];
      }
      if constexpr (!kFull) {
        scalar_t* pl = pre_low + i * Hd;
        for (int64_t j = 0; j < Hd; ++j) {
          pl[j] = static_cast<scalar_t>(pr[j]);
          pr[j] = static_cast<acc_t>(pl[j]);
        }
      }
      gelu_fwd_row<kTanh>(pr, act + i * Hd, Hd);
    }
  });
}

// act = gelu(pre); dact *= gelu'(pre) in place; db_part[chunk] += dpre.
template <typename scalar_t, typename acc_t, bool kTanh>
void bwd_pass(const scalar_t* pre, acc_t* act, acc_t* dact, acc_t* db_part, int64_t M,
              int64_t Hd, int64_t rows_per_chunk, int64_t n_chunks) {
  constexpr bool kFull = std::is_same_v<scalar_t, acc_t>;
  at::parallel_for(0, n_chunks, 1, [&](int64_t cbegin, int64_t cend) {
    std::vector<acc_t> buf(kFull ? 0 : static_cast<size_t>(Hd));
    for (int64_t c = cbegin; c < cend; ++c) {
      acc_t* __restrict dbp = db_part + c * Hd;
      const int64_t rend = std::min(M, (c + 1) * rows_per_chunk);
      for (int64_t i = c * rows_per_chunk; i < rend; ++i) {
        const acc_t* pr;
        if constexpr (kFull) {
          pr = reinterpret_cast<const acc_t*>(pre + i * Hd);
        } else {
          for (int64_t j = 0; j < Hd; ++j) buf[j] = static_cast<acc_t>(pre[i * Hd + j]);
          pr = buf.data();
        }
        acc_t* __restrict dr = dact + i * Hd;
        gelu_bwd_row<kTanh>(pr, act + i * Hd, dr, Hd);
        for (int64_t j = 0; j < Hd; ++j) dbp[j] += dr[j];
      }
    }
  });
}


template <typename F>
void dispatch_dtype(at::ScalarType t, F&& f) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t, "gelu_mlp_cpu", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    f(scalar_t{}, acc_t{});
  });
}

std::tuple<at::Tensor, at::Tensor> gelu_mlp_fwd_cpu(const at::Tensor& x, const at::Tensor& w_fc,
                                                    const std::optional<at::Tensor>& b_fc,
                                                    const at::Tensor& w_proj,
                                                    const std::optional<at::Tensor>& b_proj,
                                                    c10::string_view approximate) {
  checks::check_gelu_mlp_fwd_inputs(x, w_fc, b_fc, w_proj, b_proj, approximate);
  const bool tanh_form = approximate == "tanh";
  const auto dt = x.scalar_type();
  const auto acc = checks::acc_dtype(dt);
  const int64_t C = x.size(-1);
  const int64_t Hd = w_fc.size(0);
  const at::Tensor x2 = x.reshape({-1, C}).to(acc);
  const int64_t M = x2.size(0);
  const at::Tensor wfc = w_fc.to(acc);
  const at::Tensor wproj = w_proj.to(acc);
  const at::Tensor bfc = b_fc.has_value() ? b_fc->to(acc).contiguous() : at::Tensor();

  at::Tensor pre_acc = at::mm(x2, wfc.t());  // (M, Hd), contiguous, acc dtype
  TORCH_INTERNAL_ASSERT(pre_acc.is_contiguous());
  at::Tensor act = at::empty({M, Hd}, pre_acc.options());
  at::Tensor pre_low = dt == acc ? pre_acc : at::empty({M, Hd}, x.options());

  dispatch_dtype(dt, [&](auto s, auto a) {
    using scalar_t = decltype(s);
    using acc_t = decltype(a);
    const acc_t* bp = b_fc.has_value() ? bfc.const_data_ptr<acc_t>() : nullptr;
    scalar_t* pl = std::is_same_v<scalar_t, acc_t> ? nullptr : pre_low.mutable_data_ptr<scalar_t>();
    if (tanh_form) {
      fwd_pass<scalar_t, acc_t, true>(pre_acc.mutable_data_ptr<acc_t>(), bp, pl,
                                      act.mutable_data_ptr<acc_t>(), M, Hd);
    } else {
      fwd_pass<scalar_t, acc_t, false>(pre_acc.mutable_data_ptr<acc_t>(), bp, pl,
                                       act.mutable_data_ptr<acc_t>(), M, Hd);
    }
  });

  at::Tensor out = b_proj.has_value() ? at::addmm(b_proj->to(acc), act, wproj.t())
                                      : at::mm(act, wproj.t());
  std::vector<int64_t> pre_shape(x.sizes().begin(), x.sizes().end());
  pre_shape.back() = Hd;
  return {out.to(dt).reshape(x.sizes()).contiguous(), pre_low.reshape(pre_shape)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gelu_mlp_bwd_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& pre,
    const at::Tensor& w_fc, const at::Tensor& w_proj, c10::string_view approximate) {
  checks::check_gelu_mlp_bwd_inputs(grad_out, x, pre, w_fc, w_proj, approximate);
  const bool tanh_form = approximate == "tanh";
  const auto dt = x.scalar_type();
  const auto acc = checks::acc_dtype(dt);
  const int64_t C = x.size(-1);
  const int64_t Hd = w_fc.size(0);
  const at::Tensor x2 = x.reshape({-1, C}).to(acc);
  const int64_t M = x2.size(0);
  const at::Tensor go2 = grad_out.reshape({-1, C}).to(acc);
  const at::Tensor pre2 = pre.reshape({-1, Hd}).contiguous();  // x's dtype, read in the pass
  const at::Tensor wfc = w_fc.to(acc);
  const at::Tensor wproj = w_proj.to(acc);

  at::Tensor dact = at::mm(go2, wproj);  // (M, Hd) -> becomes dpre in place
  TORCH_INTERNAL_ASSERT(dact.is_contiguous());
  at::Tensor act = at::empty({M, Hd}, dact.options());
  const int64_t rows_per_chunk = M > 0 ? (M + kMaxChunks - 1) / kMaxChunks : 1;
  const int64_t n_chunks = M > 0 ? (M + rows_per_chunk - 1) / rows_per_chunk : 0;
  at::Tensor db_part = at::zeros({std::max<int64_t>(n_chunks, 1), Hd}, dact.options());
  at::Tensor db_fc = at::empty({Hd}, dact.options());

  dispatch_dtype(dt, [&](auto s, auto a) {
    using scalar_t = decltype(s);
    using acc_t = decltype(a);
    if (tanh_form) {
      bwd_pass<scalar_t, acc_t, true>(pre2.const_data_ptr<scalar_t>(),
                                      act.mutable_data_ptr<acc_t>(),
                                      dact.mutable_data_ptr<acc_t>(),
                                      db_part.mutable_data_ptr<acc_t>(), M, Hd, rows_per_chunk,
                                      n_chunks);
    } else {
      bwd_pass<scalar_t, acc_t, false>(pre2.const_data_ptr<scalar_t>(),
                                       act.mutable_data_ptr<acc_t>(),
                                       dact.mutable_data_ptr<acc_t>(),
                                       db_part.mutable_data_ptr<acc_t>(), M, Hd, rows_per_chunk,
                                       n_chunks);
    }
    reduce_chunks<acc_t>(db_part.const_data_ptr<acc_t>(), db_fc.mutable_data_ptr<acc_t>(),
                         n_chunks, Hd);
  });
  const at::Tensor& dpre = dact;

  at::Tensor grad_w_proj = at::mm(go2.t(), act);
  at::Tensor grad_b_proj = go2.sum({0});
  at::Tensor grad_w_fc = at::mm(dpre.t(), x2);
  at::Tensor grad_x = at::mm(dpre, wfc).reshape(x.sizes());
  return {grad_x.to(dt).contiguous(), grad_w_fc.to(dt).contiguous(), db_fc.to(dt),
          grad_w_proj.to(dt).contiguous(), grad_b_proj.to(dt)};
}

}  // namespace
}  // namespace pygpt

TORCH_LIBRARY_IMPL(pygpt, CPU, m) {
  m.impl("gelu_mlp_fwd", &pygpt::gelu_mlp_fwd_cpu);
  m.impl("gelu_mlp_bwd", &pygpt::gelu_mlp_bwd_cpu);
}
