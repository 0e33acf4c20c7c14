// ===========================================================================
// PLACEHOLDER: composite-ATen reference implementation of pygpt.attention on
// CPU (matmul + masked softmax, materialising the full (Tq, Tk) score matrix).
// It is correct but NOT a hand-written kernel: a later issue replaces this
// file with the real CPU kernel (flash-attention style tiling with an online
// softmax, no Tq x Tk buffer) and flips cpu_attention_is_kernel() to true.
// ===========================================================================
//
// Semantics (must match the fake functions registered in Python):
//   q (B,H,Tq,D), k/v (B,H,Tk,D)
//   out (B,H,Tq,D) in q's dtype, contiguous
//   lse (B,H,Tq) float32 (float64 for float64 inputs) = logsumexp_j(scale q.k_j)
//   causal: query i sees keys j <= i (top-left aligned, requires Tq == Tk).
#include "../checks.h"
#include "../registry.h"

#include <torch/library.h>

#include <limits>
#include <tuple>

namespace pygpt {

// Flip to true when this file holds a real hand-written kernel.
bool cpu_attention_is_kernel() { return false; }

namespace {

// Scaled (and causally masked) scores in the accumulation dtype.
at::Tensor attention_scores(const at::Tensor& qf, const at::Tensor& kf, bool causal,
                            double scale) {
  at::Tensor s = at::matmul(qf, kf.transpose(-2, -1)).mul_(scale);
  if (causal) {
    const int64_t T = qf.size(2);
    at::Tensor mask = at::ones({T, T}, qf.options().dtype(at::kBool)).triu_(1);
    s.masked_fill_(mask, -std::numeric_limits<double>::infinity());
  }
  return s;
}

std::tuple<at::Tensor, at::Tensor> attention_fwd_cpu(const at::Tensor& q, const at::Tensor& k,
                                                     const at::Tensor& v, bool causal,
                                                     double scale) {
  checks::check_attention_inputs(q, k, v, causal, scale);
  const auto acc = checks::acc_dtype(q.scalar_type());
  const at::Tensor qf = q.to(acc), kf = k.to(acc), vf = v.to(acc);
  const at::Tensor s = attention_scores(qf, kf, causal, scale);
  at::Tensor lse = at::logsumexp(s, {-1});
  at::Tensor p = at::exp(s - lse.unsqueeze(-1));
  at::Tensor out = at::matmul(p, vf).to(q.scalar_type()).contiguous();
  return {out, lse.contiguous()};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_bwd_cpu(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, bool causal, double scale) {
  checks::check_attention_bwd_inputs(grad_out, q, k, v, out, lse, causal, scale);
  const auto acc = checks::acc_dtype(q.scalar_type());
  const at::Tensor qf = q.to(acc), kf = k.to(acc), vf = v.to(acc);
  const at::Tensor dof = grad_out.to(acc), of = out.to(acc);
  // Recompute probabilities from the saved logsumexp (masked entries -> 0).
  const at::Tensor p = at::exp(attention_scores(qf, kf, causal, scale) -
                               lse.to(acc).unsqueeze(-1));
  at::Tensor dv = at::matmul(p.transpose(-2, -1), dof);
  at::Tensor dp = at::matmul(dof, vf.transpose(-2, -1));
  at::Tensor delta = (dof * of).sum(-1, /*keepdim=*/true);  // rowsum(dO * O)
  at::Tensor ds = p * (dp - delta);
  at::Tensor dq = at::matmul(ds, kf).mul_(scale);
  at::Tensor dk = at::matmul(ds.transpose(-2, -1), qf).mul_(scale);
  return {dq.to(q.scalar_type()).contiguous(), dk.to(k.scalar_type()).contiguous(),
          dv.to(v.scalar_type()).contiguous()};
}

}  // namespace
}  // namespace pygpt

TORCH_LIBRARY_IMPL(pygpt, CPU, m) {
  m.impl("attention_fwd", &pygpt::attention_fwd_cpu);
  m.impl("attention_bwd", &pygpt::attention_bwd_cpu);
}
