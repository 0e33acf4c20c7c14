// ===========================================================================
// pygpt.layer_norm on CUDA: the torch boundary of kernels/layer_norm.cuh
// (LayerNorm over the last dim with the fused residual add, forward and backward).
// ===========================================================================
//
// Semantics: exactly csrc/cpu/layer_norm.cpp (see its header): h = x + residual rounded
// to x's dtype (an EMPTY [0] tensor when residual is None; the backward then gets x as h),
// mean/rstd (N,) float32 (float64 for float64 x) of h as stored, y in x's dtype,
// grad_weight/grad_bias (C,) in weight's dtype, grad_bias always computed, grad_h added
// into grad_x when given.
//
// This file: boundary checks (csrc/checks.h, plus CUDA-only limits), contiguity and
// dtype conversions at the boundary (copies, as on the CPU: non-contiguous inputs,
// weight/bias of another floating dtype -> the accumulation dtype, grad_y/grad_h -> h's
// dtype, mean/rstd -> the accumulation dtype), allocation, the current stream, and the
// dtype dispatch: float32, float16, bfloat16, float64 rows (T = float, __half,
// __nv_bfloat16, double). Which kernel runs, the launch shapes and the algorithm are
// described in kernels/layer_norm.cuh.
//
// Backward: two launches. The row kernel (warp kernel for C <= 1024, double 512; block kernel
// with register-resident dw/db partials up to C = 8192, double 4096; the -wide block kernel beyond)
// computes dx and leaves one [2, P, C] acc-dtype tensor of per-CTA dw/db partial sums, each CTA
// writing its own rows once (P = its grid <= #SMs x occupancy, P x C <= 2^23; at::empty is fine:
// every element is written). The reduce kernel then sums the P partial rows per column in a fixed
// order: no atomics, every output bitwise deterministic run to run. The bits of dweight/dbias
// depend on P, i.e. on the GPU's SM count and the kernel's occupancy for this build (its register
// count), not on timing.
#include "../checks.h"
#include "../registry.h"
#include "../../kernels/layer_norm.cuh"

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>
#include <optional>
#include <tuple>

namespace pygpt {

bool cuda_layer_norm_is_kernel() { return true; }

namespace {

template <typename T>
struct Tag {
  using type = T;
};

// Calls f(Tag<T>{}) with the CUDA element type of dtype t.
template <typename F>
void dispatch_row_type(at::ScalarType t, const char* op, F&& f) {
  switch (t) {
    case at::kFloat: f(Tag<float>{}); break;
    case at::kHalf: f(Tag<__half>{}); break;
    case at::kBFloat16: f(Tag<__nv_bfloat16>{}); break;
    case at::kDouble: f(Tag<double>{}); break;
    default:
      TORCH_CHECK(false, op, ": unsupported dtype ", checks::dtype_name(t),
                  " in the CUDA kernel; expected one of float32, float64, bfloat16, float16");
  }
}

void check_cuda_limits(const char* op, const char* name, const at::Tensor& t, int64_t C) {
  TORCH_CHECK(t.is_cuda(), op, ": ", name, " must be a CUDA tensor for the CUDA kernel, got ",
              name, " on ", t.device());
  TORCH_CHECK(C <= ln::kMaxC, op, ": the last dimension C=", C,
              " exceeds the CUDA kernel's maximum of ", ln::kMaxC);
}

int multiprocessor_count(c10::DeviceIndex device) {
  int n = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
  return n > 0 ? n : 1;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> layer_norm_fwd_cuda(
    const at::Tensor& x, const std::optional<at::Tensor>& residual, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, double eps) {
  constexpr const char* op = "pygpt.layer_norm";
  const int64_t C = checks::check_layer_norm_fwd_inputs(x, residual, weight, bias, eps);
  check_cuda_limits(op, "x", x, C);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::ScalarType acc = checks::acc_dtype(x.scalar_type());
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
  if (N == 0) return {y, h, mean, rstd};

  const int sms = multiprocessor_count(x.get_device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  dispatch_row_type(x.scalar_type(), op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using A = ln::acc_of<T>;
    ln::LnFwdParams<T> p{};
    p.x = static_cast<const T*>(xc.const_data_ptr());
    p.res = residual.has_value() ? static_cast<const T*>(rc.const_data_ptr()) : nullptr;
    p.w = wc.const_data_ptr<A>();
    p.b = bias.has_value() ? bc.const_data_ptr<A>() : nullptr;
    p.y = static_cast<T*>(y.mutable_data_ptr());
    p.h = residual.has_value() ? static_cast<T*>(h.mutable_data_ptr()) : nullptr;
    p.mean = mean.mutable_data_ptr<A>();
    p.rstd = rstd.mutable_data_ptr<A>();
    p.N = N;
    p.C = static_cast<int>(C);
    p.eps = static_cast<A>(eps);
    ln::launch_layer_norm_fwd<T>(p, sms, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {y, h, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_bwd_cuda(
    const at::Tensor& grad_y, const std::optional<at::Tensor>& grad_h, const at::Tensor& h,
    const at::Tensor& weight, const at::Tensor& mean, const at::Tensor& rstd) {
  constexpr const char* op = "pygpt.layer_norm_bwd";
  const int64_t C = checks::check_layer_norm_bwd_inputs(grad_y, grad_h, h, weight, mean, rstd);
  check_cuda_limits(op, "h", h, C);
  const c10::cuda::CUDAGuard guard(h.device());
  const at::ScalarType dt = h.scalar_type();
  const at::ScalarType acc = checks::acc_dtype(dt);
  const int64_t N = h.numel() / C;

  const at::Tensor hc = h.contiguous();
  const at::Tensor gyc = grad_y.to(dt).contiguous();
  const at::Tensor ghc = grad_h.has_value() ? grad_h->to(dt).contiguous() : at::Tensor();
  const at::Tensor wc = weight.to(acc).contiguous();
  const at::Tensor mc = mean.to(acc).contiguous();
  const at::Tensor sc = rstd.to(acc).contiguous();

  at::Tensor grad_x = at::empty(h.sizes(), hc.options());
  at::Tensor dw = at::empty({C}, hc.options().dtype(acc));
  at::Tensor db = at::empty({C}, hc.options().dtype(acc));
  if (N == 0) {
    dw.zero_();
    db.zero_();
    return {grad_x, dw.to(weight.scalar_type()), db.to(weight.scalar_type())};
  }

  const int sms = multiprocessor_count(h.get_device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  dispatch_row_type(dt, op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using A = ln::acc_of<T>;
    ln::LnBwdPlan plan{};
    C10_CUDA_CHECK(ln::plan_layer_norm_bwd<T>(N, static_cast<int>(C), sms, &plan));
    at::Tensor partial = at::empty({2, plan.blocks, C}, hc.options().dtype(acc));

    ln::LnBwdParams<T> p{};
    p.dy = static_cast<const T*>(gyc.const_data_ptr());
    p.dh = grad_h.has_value() ? static_cast<const T*>(ghc.const_data_ptr()) : nullptr;
    p.h = static_cast<const T*>(hc.const_data_ptr());
    p.w = wc.const_data_ptr<A>();
    p.mean = mc.const_data_ptr<A>();
    p.rstd = sc.const_data_ptr<A>();
    p.dx = static_cast<T*>(grad_x.mutable_data_ptr());
    p.partial = partial.mutable_data_ptr<A>();
    p.N = N;
    p.C = static_cast<int>(C);
    ln::launch_layer_norm_bwd_rows<T>(p, plan, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    ln::launch_layer_norm_bwd_reduce<A>(partial.const_data_ptr<A>(), plan.blocks,
                                        static_cast<int>(C), dw.mutable_data_ptr<A>(),
                                        db.mutable_data_ptr<A>(), stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_x, dw.to(weight.scalar_type()), db.to(weight.scalar_type())};
}

}  // namespace
}  // namespace pygpt

TORCH_LIBRARY_IMPL(pygpt, CUDA, m) {
  m.impl("layer_norm_fwd", &pygpt::layer_norm_fwd_cuda);
  m.impl("layer_norm_bwd", &pygpt::layer_norm_bwd_cuda);
}
