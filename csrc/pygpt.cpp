// Operator schemas of the `pygpt` op library.
//
// This file only *declares* the operators (TORCH_LIBRARY). Implementations
// are registered per device in csrc/cpu/<op>.cpp and csrc/cuda/<op>_cuda.cu
// (TORCH_LIBRARY_IMPL). Autograd and fake/meta functions are registered from
// Python (pygpt/ops), so nothing here needs Python: CMake builds this file
// into the plain shared library `pygpt_ops`.
//
// One op = one row across folders, same name everywhere:
//   attention  -> csrc/cpu/attention.cpp,  csrc/cuda/attention_cuda.cu
//   layer_norm -> csrc/cpu/layer_norm.cpp, csrc/cuda/layer_norm_cuda.cu
//   gelu_mlp   -> csrc/cpu/gelu_mlp.cpp,   csrc/cuda/gelu_mlp_cuda.cu

#include <torch/library.h>

TORCH_LIBRARY(pygpt, m) {
  m.def(
      "attention_fwd(Tensor q, Tensor k, Tensor v, bool causal, float scale)"
      " -> (Tensor out, Tensor lse)");
  m.def(
      "attention_bwd(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out,"
      " Tensor lse, bool causal, float scale)"
      " -> (Tensor grad_q, Tensor grad_k, Tensor grad_v)");
  m.def(
      "layer_norm_fwd(Tensor x, Tensor? residual, Tensor weight, Tensor? bias,"
      " float eps) -> (Tensor y, Tensor h, Tensor mean, Tensor rstd)");
  m.def(
      "layer_norm_bwd(Tensor grad_y, Tensor? grad_h, Tensor h, Tensor weight,"
      " Tensor mean, Tensor rstd)"
      " -> (Tensor grad_x, Tensor grad_weight, Tensor grad_bias)");
  m.def(
      "gelu_mlp_fwd(Tensor x, Tensor w_fc, Tensor? b_fc, Tensor w_proj,"
      " Tensor? b_proj, str approximate) -> (Tensor out, Tensor pre)");
  m.def(
      "gelu_mlp_bwd(Tensor grad_out, Tensor x, Tensor pre, Tensor w_fc,"
      " Tensor w_proj, str approximate)"
      " -> (Tensor grad_x, Tensor grad_w_fc, Tensor grad_b_fc,"
      " Tensor grad_w_proj, Tensor grad_b_proj)");
}
