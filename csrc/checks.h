// Boundary checks shared by every device implementation of the pygpt ops.
// Each helper raises (TORCH_CHECK -> RuntimeError in Python) with a message
// that starts with the op name and names the offending value.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <optional>
#include <string>
#include <vector>

namespace pygpt {
namespace checks {

// torch-style dtype name ("float32"), as the user wrote it in Python.
inline std::string dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "float32";
    case at::kDouble: return "float64";
    case at::kBFloat16: return "bfloat16";
    case at::kHalf: return "float16";
    case at::kInt: return "int32";
    case at::kLong: return "int64";
    case at::kBool: return "bool";
    default: return c10::toString(t);
  }
}

inline bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf;
}

// Accumulation dtype: float64 stays float64, everything else uses float32.
inline at::ScalarType acc_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

inline void check_dim(const char* op, const char* name, const at::Tensor& t, int64_t dim,
                      const char* layout) {
  TORCH_CHECK(t.dim() == dim, op, ": ", name, " must be a ", dim, "-D ", layout,
              " tensor, got ", t.dim(), "-D tensor of shape ", t.sizes());
}

inline void check_min_dim(const char* op, const char* name, const at::Tensor& t,
                          int64_t min_dim) {
  TORCH_CHECK(t.dim() >= min_dim, op, ": ", name, " must have at least ", min_dim,
              " dimension(s), got ", t.dim(), "-D tensor of shape ", t.sizes());
}

inline void check_dtype_supported(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(is_supported_float(t.scalar_type()), op, ": unsupported dtype ",
              dtype_name(t.scalar_type()), " for ", name,
              "; expected one of float32, float64, bfloat16, float16");
}

inline void check_same_dtype(const char* op, const char* name, const at::Tensor& t,
                             const char* ref_name, const at::Tensor& ref) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": dtype mismatch: ", name, " is ",
              dtype_name(t.scalar_type()), " but ", ref_name, " is ",
              dtype_name(ref.scalar_type()));
}

inline void check_same_device(const char* op, const char* name, const at::Tensor& t,
                              const char* ref_name, const at::Tensor& ref) {
  TORCH_CHECK(t.device() == ref.device(), op, ": device mismatch: ", name, " is on ",
              t.device(), " but ", ref_name, " is on ", ref.device(),
              "; all tensors must be on the same device");
}

inline void check_shape(const char* op, const char* name, const at::Tensor& t,
                        at::IntArrayRef expected, const char* what) {
  TORCH_CHECK(t.sizes() == expected, op, ": ", name, " must have shape ", expected, " (",
              what, "), got ", t.sizes());
}

inline void check_scale(const char* op, double scale) {
  TORCH_CHECK(std::isfinite(scale) && scale > 0, op,
              ": scale must be finite and > 0, got scale=", scale);
}

inline void check_eps(const char* op, double eps) {
  TORCH_CHECK(std::isfinite(eps) && eps > 0, op, ": eps must be finite and > 0, got eps=",
              eps);
}

inline void check_approximate(const char* op, c10::string_view approximate) {
  TORCH_CHECK(approximate == "tanh" || approximate == "none", op,
              ": approximate must be \"tanh\" or \"none\", got \"", std::string(approximate),
              "\"");
}

// ---------------------------------------------------------------------------
// Per-op input validation (shared by csrc/cpu/<op>.cpp and csrc/cuda/<op>_cuda.cu)
// ---------------------------------------------------------------------------

// attention: q (B,H,Tq,D), k/v (B,H,Tk,D).
inline void check_attention_inputs(const at::Tensor& q, const at::Tensor& k,
                                   const at::Tensor& v, bool causal, double scale) {
  constexpr const char* op = "pygpt.attention";
  check_dim(op, "q", q, 4, "(B, H, T, D)");
  check_dim(op, "k", k, 4, "(B, H, T, D)");
  check_dim(op, "v", v, 4, "(B, H, T, D)");
  check_same_device(op, "k", k, "q", q);
  check_same_device(op, "v", v, "q", q);
  check_dtype_supported(op, "q", q);
  check_same_dtype(op, "k", k, "q", q);
  check_same_dtype(op, "v", v, "q", q);
  TORCH_CHECK(k.size(0) == q.size(0) && k.size(1) == q.size(1) && v.size(0) == q.size(0) &&
                  v.size(1) == q.size(1),
              op, ": batch/head dims (B, H) of q, k, v must match, got q ", q.sizes(), ", k ",
              k.sizes(), ", v ", v.sizes());
  TORCH_CHECK(k.size(3) == q.size(3) && v.size(3) == q.size(3), op,
              ": head dim D of q, k, v must match, got q D=", q.size(3), ", k D=", k.size(3),
              ", v D=", v.size(3));
  TORCH_CHECK(k.size(2) == v.size(2), op,
              ": k and v must have the same sequence length, got k Tk=", k.size(2),
              ", v Tk=", v.size(2));
  TORCH_CHECK(!causal || q.size(2) == k.size(2), op,
              ": causal attention requires Tq == Tk, got Tq=", q.size(2), ", Tk=", k.size(2));
  check_scale(op, scale);
}

inline void check_attention_bwd_inputs(const at::Tensor& grad_out, const at::Tensor& q,
                                       const at::Tensor& k, const at::Tensor& v,
                                       const at::Tensor& out, const at::Tensor& lse,
                                       bool causal, double scale) {
  constexpr const char* op = "pygpt.attention_bwd";
  check_attention_inputs(q, k, v, causal, scale);
  check_shape(op, "grad_out", grad_out, q.sizes(), "same as q");
  check_shape(op, "out", out, q.sizes(), "same as q");
  check_shape(op, "lse", lse, q.sizes().slice(0, 3), "(B, H, Tq)");
  check_same_device(op, "grad_out", grad_out, "q", q);
  check_same_device(op, "out", out, "q", q);
  check_same_device(op, "lse", lse, "q", q);
  check_same_dtype(op, "grad_out", grad_out, "q", q);
  check_same_dtype(op, "out", out, "q", q);
  const at::ScalarType lse_dtype = acc_dtype(q.scalar_type());
  TORCH_CHECK(lse.scalar_type() == lse_dtype, op, ": lse must be ", dtype_name(lse_dtype),
              " for ", dtype_name(q.scalar_type()), " inputs (as attention_fwd returns it), got ",
              dtype_name(lse.scalar_type()));
}

// A device kernel's limit on the head dim D (e.g. register/L1 tiles sized for D <= 256).
inline void check_attention_head_dim_max(const char* op, int64_t D, int64_t max_D,
                                         const char* kernel) {
  TORCH_CHECK(D <= max_D, op, ": head dim D=", D, " exceeds the ", kernel, "'s maximum of ",
              max_D);
}

// layer_norm over the last dim C. Returns C.
inline int64_t check_layer_norm_fwd_inputs(const at::Tensor& x,
                                           const std::optional<at::Tensor>& residual,
                                           const at::Tensor& weight,
                                           const std::optional<at::Tensor>& bias, double eps) {
  constexpr const char* op = "pygpt.layer_norm";
  check_min_dim(op, "x", x, 1);
  const int64_t C = x.size(-1);
  TORCH_CHECK(C > 0, op, ": x must have a non-empty last dimension C, got shape ", x.sizes());
  check_dtype_supported(op, "x", x);
  check_dtype_supported(op, "weight", weight);
  check_same_device(op, "weight", weight, "x", x);
  check_shape(op, "weight", weight, {C}, "(C,) with C = x.shape[-1]");
  if (bias.has_value()) {
    check_same_device(op, "bias", *bias, "x", x);
    check_same_dtype(op, "bias", *bias, "weight", weight);
    check_shape(op, "bias", *bias, {C}, "(C,) with C = x.shape[-1]");
  }
  if (residual.has_value()) {
    check_same_device(op, "residual", *residual, "x", x);
    check_same_dtype(op, "residual", *residual, "x", x);
    check_shape(op, "residual", *residual, x.sizes(), "same as x");
  }
  check_eps(op, eps);
  return C;
}

inline int64_t check_layer_norm_bwd_inputs(const at::Tensor& grad_y,
                                           const std::optional<at::Tensor>& grad_h,
                                           const at::Tensor& h, const at::Tensor& weight,
                                           const at::Tensor& mean, const at::Tensor& rstd) {
  constexpr const char* op = "pygpt.layer_norm_bwd";
  check_min_dim(op, "h", h, 1);
  const int64_t C = h.size(-1);
  TORCH_CHECK(C > 0, op, ": h must have a non-empty last dimension C, got shape ", h.sizes());
  const int64_t N = h.numel() / C;
  check_dtype_supported(op, "h", h);
  check_dtype_supported(op, "grad_y", grad_y);
  check_dtype_supported(op, "weight", weight);
  check_same_device(op, "grad_y", grad_y, "h", h);
  check_same_device(op, "weight", weight, "h", h);
  check_same_device(op, "mean", mean, "h", h);
  check_same_device(op, "rstd", rstd, "h", h);
  check_shape(op, "grad_y", grad_y, h.sizes(), "same as h");
  check_shape(op, "weight", weight, {C}, "(C,) with C = h.shape[-1]");
  check_shape(op, "mean", mean, {N}, "(N,) with N = h.numel() / C");
  check_shape(op, "rstd", rstd, {N}, "(N,) with N = h.numel() / C");
  if (grad_h.has_value()) {
    check_same_device(op, "grad_h", *grad_h, "h", h);
    check_dtype_supported(op, "grad_h", *grad_h);
    check_shape(op, "grad_h", *grad_h, h.sizes(), "same as h");
  }
  return C;
}

// gelu_mlp: x (..., C), w_fc (Hd, C), b_fc (Hd,), w_proj (C, Hd), b_proj (C,).
inline void check_gelu_mlp_weights(const char* op, const at::Tensor& x, const at::Tensor& w_fc,
                                   const at::Tensor& w_proj, c10::string_view approximate) {
  check_min_dim(op, "x", x, 1);
  check_dtype_supported(op, "x", x);
  check_dim(op, "w_fc", w_fc, 2, "(Hd, C)");
  check_dim(op, "w_proj", w_proj, 2, "(C, Hd)");
  check_same_device(op, "w_fc", w_fc, "x", x);
  check_same_device(op, "w_proj", w_proj, "x", x);
  check_same_dtype(op, "w_fc", w_fc, "x", x);
  check_same_dtype(op, "w_proj", w_proj, "x", x);
  const int64_t C = x.size(-1);
  TORCH_CHECK(w_fc.size(1) == C, op, ": w_fc must have shape (Hd, C) with C = x.shape[-1] = ",
              C, ", got w_fc of shape ", w_fc.sizes());
  const int64_t Hd = w_fc.size(0);
  check_shape(op, "w_proj", w_proj, {C, Hd}, "(C, Hd), the transpose of w_fc's shape");
  check_approximate(op, approximate);
}

inline void check_gelu_mlp_fwd_inputs(const at::Tensor& x, const at::Tensor& w_fc,
                                      const std::optional<at::Tensor>& b_fc,
                                      const at::Tensor& w_proj,
                                      const std::optional<at::Tensor>& b_proj,
                                      c10::string_view approximate) {
  constexpr const char* op = "pygpt.gelu_mlp";
  check_gelu_mlp_weights(op, x, w_fc, w_proj, approximate);
  if (b_fc.has_value()) {
    check_same_device(op, "b_fc", *b_fc, "x", x);
    check_same_dtype(op, "b_fc", *b_fc, "x", x);
    check_shape(op, "b_fc", *b_fc, {w_fc.size(0)}, "(Hd,)");
  }
  if (b_proj.has_value()) {
    check_same_device(op, "b_proj", *b_proj, "x", x);
    check_same_dtype(op, "b_proj", *b_proj, "x", x);
    check_shape(op, "b_proj", *b_proj, {x.size(-1)}, "(C,)");
  }
}

inline void check_gelu_mlp_bwd_inputs(const at::Tensor& grad_out, const at::Tensor& x,
                                      const at::Tensor& pre, const at::Tensor& w_fc,
                                      const at::Tensor& w_proj, c10::string_view approximate) {
  constexpr const char* op = "pygpt.gelu_mlp_bwd";
  check_gelu_mlp_weights(op, x, w_fc, w_proj, approximate);
  check_same_device(op, "grad_out", grad_out, "x", x);
  check_same_device(op, "pre", pre, "x", x);
  check_same_dtype(op, "grad_out", grad_out, "x", x);
  check_same_dtype(op, "pre", pre, "x", x);
  check_shape(op, "grad_out", grad_out, x.sizes(), "same as x");
  std::vector<int64_t> pre_shape(x.sizes().begin(), x.sizes().end());
  pre_shape.back() = w_fc.size(0);
  check_shape(op, "pre", pre, pre_shape, "x.shape[:-1] + (Hd,)");
}

}  // namespace checks
}  // namespace pygpt
