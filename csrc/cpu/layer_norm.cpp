// ===========================================================================
// PLACEHOLDER: composite-ATen reference implementation of pygpt.layer_norm
// (fused residual-add + LayerNorm) on CPU, built from at:: ops (mean, var,
// broadcasting arithmetic). It is correct but NOT a hand-written kernel: a
// later issue replaces this file with the real CPU kernel (one pass per row,
// Welford statistics, vectorised) and flips cpu_layer_norm_is_kernel() to true.
// ===========================================================================
//
// Semantics (must match the fake functions registered in Python):
//   x (..., C); h = x + residual if residual is given, else h is an EMPTY
//   tensor (shape [0], x's dtype) and the caller treats x as h.
//   y = (h - mean) * rstd * weight + bias, y in x's dtype
//   mean, rstd: (N,) with N = numel / C, float32 (float64 for float64 x),
//   rstd = 1 / sqrt(var_biased + eps).
//   Backward: grad_x = dL/dh (+ grad_h), grad_weight/grad_bias (C,) in
//   weight's dtype (grad_bias always computed).
#include "../checks.h"
#include "../registry.h"

#include <torch/library.h>

#include <optional>
#include <tuple>

namespace pygpt {

// Flip to true when this file holds a real hand-written kernel.
bool cpu_layer_norm_is_kernel() { return false; }

namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> layer_norm_fwd_cpu(
    const at::Tensor& x, const std::optional<at::Tensor>& residual, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, double eps) {
  const int64_t C = checks::check_layer_norm_fwd_inputs(x, residual, weight, bias, eps);
  const auto acc = checks::acc_dtype(x.scalar_type());

  at::Tensor hf = x.to(acc).reshape({-1, C});
  at::Tensor h;
  if (residual.has_value()) {
    hf = hf + residual->to(acc).reshape({-1, C});
    h = hf.to(x.scalar_type()).reshape(x.sizes());
    // Normalise the sum as stored (rounded to x's dtype): y must be LN of the h we return, and the
    // backward, which only sees that h, must see the same statistics.
    hf = h.to(acc).reshape({-1, C});
  } else {
    h = at::empty({0}, x.options());
  }
  at::Tensor mean = hf.mean({-1});
  at::Tensor var = (hf - mean.unsqueeze(-1)).square().mean({-1});  // biased
  at::Tensor rstd = at::rsqrt(var + eps);
  at::Tensor yf = (hf - mean.unsqueeze(-1)) * rstd.unsqueeze(-1) * weight.to(acc);
  if (bias.has_value()) yf = yf + bias->to(acc);
  at::Tensor y = yf.to(x.scalar_type()).reshape(x.sizes()).contiguous();
  return {y, h.contiguous(), mean.contiguous(), rstd.contiguous()};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_bwd_cpu(
    const at::Tensor& grad_y, const std::optional<at::Tensor>& grad_h, const at::Tensor& h,
    const at::Tensor& weight, const at::Tensor& mean, const at::Tensor& rstd) {
  const int64_t C = checks::check_layer_norm_bwd_inputs(grad_y, grad_h, h, weight, mean, rstd);
  const auto acc = checks::acc_dtype(h.scalar_type());

  const at::Tensor hf = h.to(acc).reshape({-1, C});
  const at::Tensor gy = grad_y.to(acc).reshape({-1, C});
  const at::Tensor r = rstd.to(acc).unsqueeze(-1);
  const at::Tensor xhat = (hf - mean.to(acc).unsqueeze(-1)) * r;

  at::Tensor grad_weight = (gy * xhat).sum({0}).to(weight.scalar_type());
  at::Tensor grad_bias = gy.sum({0}).to(weight.scalar_type());

  const at::Tensor g = gy * weight.to(acc);  // dL/dxhat
  at::Tensor gx = r * (g - g.mean({-1}, /*keepdim=*/true) -
                       xhat * (g * xhat).mean({-1}, /*keepdim=*/true));
  if (grad_h.has_value()) gx = gx + grad_h->to(acc).reshape({-1, C});
  at::Tensor grad_x = gx.to(h.scalar_type()).reshape(h.sizes()).contiguous();
  return {grad_x, grad_weight, grad_bias};
}

}  // namespace
}  // namespace pygpt

TORCH_LIBRARY_IMPL(pygpt, CPU, m) {
  m.impl("layer_norm_fwd", &pygpt::layer_norm_fwd_cpu);
  m.impl("layer_norm_bwd", &pygpt::layer_norm_bwd_cpu);
}
