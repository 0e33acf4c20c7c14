// kernels/gelu_mlp.cuh run on the CPU emulator (tests/cuda_emu/emu.h) and checked against float64
// references. The GEMM kernel is driven through the exact launch sequence of the "mma" path of
// csrc/cuda/gelu_mlp_cuda.cu (fwd_mma: <K,K,GeluAux> then <K,K,Store>; bwd_mma: <K,N,DGelu> with
// the db_fc column-sum partials, <M,N,Store> twice for the weight gradients, <K,N,Store> for dx; the
// partials summed in a fixed order like at::sum), so all four operand layouts and all three
// epilogues run. The elementwise kernels (mlp_bias_gelu_kernel, mlp_dgelu_kernel) run in every
// (type) variant the launcher instantiates. cuBLASLt is a host library: not emulated. Every output
// is NaN-poisoned before its kernel runs.
//
// Tolerances, as relative max error max|v - ref| / max|ref| against float64 math on the same
// 16-bit inputs (fp32 accumulation, outputs rounded to the 16-bit type):
//   pre, act, dpre (one rounding):       fp16 1e-3, bf16 8e-3 (2x the rounding 2^-11 / 2^-8;
//                                        measured max 4.3e-4 / 3.1e-3)
//   out, dx, dW_fc, dW_proj, db_fc (a rounded operand feeds another rounded GEMM):
//                                        fp16 1.5e-3, bf16 1e-2 (measured max 5.0e-4 / 3.9e-3)
//   db_fc is measured against max_h sum_m |dpre| (a sum of terms of both signs).
//   act (both epilogues) must also equal round_T(float64 gelu(rounded pre)) bitwise in >= 99% of
//   the elements (fp32 GELU error only flips ~1e-4 of the roundings; GELU of the unrounded pre
//   would flip many more).
//   elementwise kernels: pre must be round(in + bias) bitwise; act/dpre vs float64 GELU:
//   fp64 1e-13, fp32 2e-6, and the 16-bit output types as above.
#include "emu.h"
// the arena behind the header's `extern __shared__ uint4 mlp_smem_raw[]` (defined first)
PYGPT_EMU_DYNAMIC_SMEM(pygpt::mlp_kernels, uint4, mlp_smem_raw);
#include "../../kernels/gelu_mlp.cuh"
#include "check.h"

using namespace emu_test;
namespace mk = pygpt::mlp_kernels;

namespace {

Suite suite;

double gelu_ref(double x, bool tanh_form) {
  if (tanh_form) return 0.5 * x * (1.0 + std::tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));
  return 0.5 * x * std::erfc(-x * 0.7071067811865476);
}
double dgelu_ref(double x, bool tanh_form) {
  if (tanh_form) {
    const double t = std::tanh(0.7978845608028654 * (x + 0.044715 * x * x * x));
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * x * x);
  }
  return 0.5 * std::erfc(-x * 0.7071067811865476) + x * std::exp(-0.5 * x * x) * 0.3989422804014327;
}

template <typename T>
double tol1() {
  return std::is_same_v<T, __half> ? 1e-3 : (std::is_same_v<T, __nv_bfloat16> ? 8e-3 : (sizeof(T) == 8 ? 1e-13 : 2e-6));
}
template <typename T>
double tol2() {
  return std::is_same_v<T, __half> ? 1.5e-3 : 1e-2;
}

// act must be GELU of the ROUNDED pre, rounded once: equal to round_T(float64 gelu(pre)) except where
// fp32 GELU's few-ulp error straddles a rounding boundary of T (~1e-4 of the elements). GELU of the
// unrounded pre would differ in a large fraction of them, though within the error tolerance.
void check_rounded(const char* what, long off, size_t n) {
  const double frac = static_cast<double>(off) / static_cast<double>(n);
  char buf[96];
  std::snprintf(buf, sizeof(buf), " %s!=round(gelu64)=%.1e", what, frac);
  suite.line += buf;
  if (!(frac <= 1e-2)) {
    suite.ok = false;
    suite.line += "[>1.0e-02]";
  }
}

template <typename T, bool kA, bool kB, int kEpi>
bool gemm(const mk::MlpGemmParams& p) {
  return launch_ok(mk::launch_mlp_gemm<T, kA, kB, kEpi>(p, nullptr));
}

template <typename T>
void run_mlp(int64_t M, int64_t C, int64_t Hd, bool tanh_form, bool biases, uint64_t seed) {
  const int64_t tiles_m = (M + mk::kBM - 1) / mk::kBM;
  suite.begin("gelu_mlp  %-4s M=%-4" PRId64 " C=%-3" PRId64 " Hd=%-3" PRId64 " %s bias=%d (tiles: up %" PRId64
              "x%" PRId64 ", K %" PRId64 "/%" PRId64 "/%" PRId64 ")",
              Ty<T>::name(), M, C, Hd, tanh_form ? "tanh" : "none", biases, tiles_m, (Hd + 127) / 128, C, Hd, M);
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> nd(0.0, 1.0);
  const size_t MC = static_cast<size_t>(M * C), MH = static_cast<size_t>(M * Hd), HC = static_cast<size_t>(Hd * C);
  Buf<T> x(MC), wfc(HC), bfc(static_cast<size_t>(Hd)), wproj(HC), bproj(static_cast<size_t>(C));
  for (size_t i = 0; i < MC; ++i) x[i] = fromD<T>(nd(rng));
  for (size_t i = 0; i < HC; ++i) wfc[i] = fromD<T>(nd(rng) / std::sqrt(static_cast<double>(C)));
  for (size_t i = 0; i < HC; ++i) wproj[i] = fromD<T>(nd(rng) / std::sqrt(static_cast<double>(Hd)));
  for (int64_t i = 0; i < Hd; ++i) bfc[static_cast<size_t>(i)] = fromD<T>(0.5 * nd(rng));
  for (int64_t i = 0; i < C; ++i) bproj[static_cast<size_t>(i)] = fromD<T>(0.5 * nd(rng));

  // ---- forward (fwd_mma) ----
  Buf<T> act(MH), pre(MH), out(MC);
  mk::MlpGemmParams up{};
  up.a = x.p;
  up.lda = C;
  up.b = wfc.p;
  up.ldb = C;
  up.c = act.p;
  up.ldc = Hd;
  up.bias = biases ? bfc.p : nullptr;
  up.aux = pre.p;
  up.ld_aux = Hd;
  up.m = static_cast<int>(M);
  up.n = static_cast<int>(Hd);
  up.k = static_cast<int>(C);
  up.gelu_tanh = tanh_form ? 1 : 0;
  suite.require("up launch", gemm<T, true, true, mk::kEpiGeluAux>(up));
  mk::MlpGemmParams dn{};
  dn.a = act.p;
  dn.lda = Hd;
  dn.b = wproj.p;
  dn.ldb = Hd;
  dn.c = out.p;
  dn.ldc = C;
  dn.bias = biases ? bproj.p : nullptr;
  dn.m = static_cast<int>(M);
  dn.n = static_cast<int>(C);
  dn.k = static_cast<int>(Hd);
  dn.gelu_tanh = up.gelu_tanh;
  suite.require("down launch", gemm<T, true, true, mk::kEpiStore>(dn));

  Err e_pre, e_act, e_out;
  long act_off = 0;  // act != round_T(gelu(rounded pre)) (float64 GELU), bitwise
  std::vector<double> act_ref(MH);
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t h = 0; h < Hd; ++h) {
      double s = biases ? dbl(bfc[static_cast<size_t>(h)]) : 0.0;
      for (int64_t c = 0; c < C; ++c) s += dbl(x[static_cast<size_t>(m * C + c)]) * dbl(wfc[static_cast<size_t>(h * C + c)]);
      const size_t i = static_cast<size_t>(m * Hd + h);
      e_pre.add(dbl(pre[i]), s);
      e_act.add(dbl(act[i]), gelu_ref(dbl(pre[i]), tanh_form));  // GELU of the ROUNDED pre
      act_off += dbl(act[i]) != dbl(fromD<T>(gelu_ref(dbl(pre[i]), tanh_form)));
      act_ref[i] = gelu_ref(s, tanh_form);
    }
  }
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t c = 0; c < C; ++c) {
      double s = biases ? dbl(bproj[static_cast<size_t>(c)]) : 0.0;
      for (int64_t h = 0; h < Hd; ++h) s += act_ref[static_cast<size_t>(m * Hd + h)] * dbl(wproj[static_cast<size_t>(c * Hd + h)]);
      e_out.add(dbl(out[static_cast<size_t>(m * C + c)]), s);
    }
  }
  suite.check("pre", e_pre, tol1<T>());
  suite.check("act", e_act, tol1<T>());
  check_rounded("act", act_off, MH);
  suite.check("out", e_out, tol2<T>());

  // ---- backward (bwd_mma), from the forward's pre ----
  Buf<T> go(MC), dpre(MH), act2(MH), dx(MC), dwfc(HC), dbfc(static_cast<size_t>(Hd)), dwproj(HC);
  for (size_t i = 0; i < MC; ++i) go[i] = fromD<T>(nd(rng));
  Buf<float> partial(static_cast<size_t>(tiles_m * Hd));
  mk::MlpGemmParams p1{};
  p1.a = go.p;
  p1.lda = C;
  p1.b = wproj.p;
  p1.ldb = Hd;
  p1.c = dpre.p;
  p1.ldc = Hd;
  p1.aux = pre.p;
  p1.ld_aux = Hd;
  p1.act = act2.p;
  p1.ld_act = Hd;
  p1.colsum = partial.p;
  p1.m = static_cast<int>(M);
  p1.n = static_cast<int>(Hd);
  p1.k = static_cast<int>(C);
  p1.gelu_tanh = up.gelu_tanh;
  suite.require("dgelu launch", gemm<T, true, false, mk::kEpiDGelu>(p1));
  mk::MlpGemmParams p2{};
  p2.a = go.p;
  p2.lda = C;
  p2.b = act2.p;
  p2.ldb = Hd;
  p2.c = dwproj.p;
  p2.ldc = Hd;
  p2.m = static_cast<int>(C);
  p2.n = static_cast<int>(Hd);
  p2.k = static_cast<int>(M);
  p2.gelu_tanh = up.gelu_tanh;
  suite.require("dW_proj launch", gemm<T, false, false, mk::kEpiStore>(p2));
  mk::MlpGemmParams p3{};
  p3.a = dpre.p;
  p3.lda = Hd;
  p3.b = x.p;
  p3.ldb = C;
  p3.c = dwfc.p;
  p3.ldc = C;
  p3.m = static_cast<int>(Hd);
  p3.n = static_cast<int>(C);
  p3.k = static_cast<int>(M);
  p3.gelu_tanh = up.gelu_tanh;
  suite.require("dW_fc launch", gemm<T, false, false, mk::kEpiStore>(p3));
  mk::MlpGemmParams p4{};
  p4.a = dpre.p;
  p4.lda = Hd;
  p4.b = wfc.p;
  p4.ldb = C;
  p4.c = dx.p;
  p4.ldc = C;
  p4.m = static_cast<int>(M);
  p4.n = static_cast<int>(C);
  p4.k = static_cast<int>(Hd);
  p4.gelu_tanh = up.gelu_tanh;
  suite.require("dx launch", gemm<T, true, false, mk::kEpiStore>(p4));
  // db_fc = at::sum(partial, 0) (fp32), copied into x's dtype
  for (int64_t h = 0; h < Hd; ++h) {
    float s = 0.0f;
    for (int64_t t = 0; t < tiles_m; ++t) s += partial[static_cast<size_t>(t * Hd + h)];
    dbfc[static_cast<size_t>(h)] = fromD<T>(s);
  }

  Err e_dpre, e_act2, e_dx, e_dwfc, e_dbfc, e_dwproj;
  long act2_off = 0;
  std::vector<double> dpre_ref(MH), a_ref(MH);
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t h = 0; h < Hd; ++h) {
      double s = 0;  // dact = dout . w_proj
      for (int64_t c = 0; c < C; ++c) s += dbl(go[static_cast<size_t>(m * C + c)]) * dbl(wproj[static_cast<size_t>(c * Hd + h)]);
      const size_t i = static_cast<size_t>(m * Hd + h);
      const double pv = dbl(pre[i]);
      dpre_ref[i] = s * dgelu_ref(pv, tanh_form);
      a_ref[i] = gelu_ref(pv, tanh_form);
      e_dpre.add(dbl(dpre[i]), dpre_ref[i]);
      e_act2.add(dbl(act2[i]), a_ref[i]);
      act2_off += dbl(act2[i]) != dbl(fromD<T>(a_ref[i]));
    }
  }
  for (int64_t m = 0; m < M; ++m)
    for (int64_t c = 0; c < C; ++c) {
      double s = 0;
      for (int64_t h = 0; h < Hd; ++h) s += dpre_ref[static_cast<size_t>(m * Hd + h)] * dbl(wfc[static_cast<size_t>(h * C + c)]);
      e_dx.add(dbl(dx[static_cast<size_t>(m * C + c)]), s);
    }
  for (int64_t h = 0; h < Hd; ++h) {
    std::vector<double> s(static_cast<size_t>(C), 0.0);
    double sb = 0, sa = 0;
    for (int64_t m = 0; m < M; ++m) {
      const double d = dpre_ref[static_cast<size_t>(m * Hd + h)];
      sb += d;
      sa += std::fabs(d);
      for (int64_t c = 0; c < C; ++c) s[static_cast<size_t>(c)] += d * dbl(x[static_cast<size_t>(m * C + c)]);
    }
    for (int64_t c = 0; c < C; ++c) e_dwfc.add(dbl(dwfc[static_cast<size_t>(h * C + c)]), s[static_cast<size_t>(c)]);
    e_dbfc.add(dbl(dbfc[static_cast<size_t>(h)]), sb);
    e_dbfc.scale = std::max(e_dbfc.scale, sa);
  }
  for (int64_t c = 0; c < C; ++c)
    for (int64_t h = 0; h < Hd; ++h) {
      double s = 0;
      for (int64_t m = 0; m < M; ++m) s += dbl(go[static_cast<size_t>(m * C + c)]) * a_ref[static_cast<size_t>(m * Hd + h)];
      e_dwproj.add(dbl(dwproj[static_cast<size_t>(c * Hd + h)]), s);
    }
  suite.check("dpre", e_dpre, tol1<T>());
  suite.check("act(bwd)", e_act2, tol1<T>());
  check_rounded("act(bwd)", act2_off, MH);
  suite.check("dx", e_dx, tol2<T>());
  suite.check("dW_fc", e_dwfc, tol2<T>());
  suite.check("db_fc", e_dbfc, tol2<T>());
  suite.check("dW_proj", e_dwproj, tol2<T>());
  suite.end();
}

// mlp_bias_gelu_kernel<Tin, Tpre, Tact>: pre = round_Tpre(in + bias), act = gelu(pre)
template <typename Tin, typename Tpre, typename Tact>
void run_bias_gelu(int64_t rows, int64_t cols, bool with_bias, bool with_pre, bool tanh_form, uint64_t seed) {
  suite.begin("bias_gelu in=%s pre=%s act=%s rows=%" PRId64 " cols=%" PRId64 " bias=%d pre_out=%d %s", Ty<Tin>::name(),
              Ty<Tpre>::name(), Ty<Tact>::name(), rows, cols, with_bias, with_pre, tanh_form ? "tanh" : "none");
  using Acc = typename mk::Num<Tin>::acc;
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> nd(0.0, 1.0);
  const size_t n = static_cast<size_t>(rows * cols);
  Buf<Tin> in(n), bias(static_cast<size_t>(cols));
  Buf<Tpre> pre(n);
  Buf<Tact> act(n);
  for (size_t i = 0; i < n; ++i) in[i] = fromD<Tin>(2.5 * nd(rng));
  for (int64_t c = 0; c < cols; ++c) bias[static_cast<size_t>(c)] = fromD<Tin>(nd(rng));
  mk::launch_bias_gelu<Tin, Tpre, Tact>(in.p, with_bias ? bias.p : nullptr, with_pre ? pre.p : nullptr, act.p, rows, cols,
                                        tanh_form, nullptr);
  suite.require("launch", launch_ok(cudaSuccess));
  bool exact = true;
  Err e_act;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      const size_t i = static_cast<size_t>(r * cols + c);
      Acc v = mk::Num<Tin>::to_acc(in[i]);
      if (with_bias) v += mk::Num<Tin>::to_acc(bias[static_cast<size_t>(c)]);
      const Tpre pv = mk::Num<Tpre>::from_acc(v);
      if (with_pre && std::memcmp(&pv, &pre[i], sizeof(Tpre)) != 0) exact = false;
      e_act.add(dbl(act[i]), gelu_ref(dbl(pv), tanh_form));
    }
  if (with_pre) suite.require("pre == round(in + bias) bitwise", exact);
  suite.check("act", e_act, tol1<Tact>());
  suite.end();
}

// mlp_dgelu_kernel<Tpre, Acc>: d = d * gelu'(pre) in place, act = gelu(pre)
template <typename Tpre, typename Acc>
void run_dgelu(int64_t rows, int64_t cols, bool tanh_form, uint64_t seed) {
  suite.begin("dgelu     pre=%s acc=%s rows=%" PRId64 " cols=%" PRId64 " %s", Ty<Tpre>::name(), Ty<Acc>::name(), rows, cols,
              tanh_form ? "tanh" : "none");
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> nd(0.0, 1.0);
  const size_t n = static_cast<size_t>(rows * cols);
  Buf<Acc> d(n), act(n);
  Buf<Tpre> pre(n);
  std::vector<double> d0(n);
  for (size_t i = 0; i < n; ++i) {
    d[i] = static_cast<Acc>(nd(rng));
    d0[i] = static_cast<double>(d[i]);
    pre[i] = fromD<Tpre>(2.5 * nd(rng));
  }
  mk::launch_dgelu<Tpre, Acc>(d.p, pre.p, act.p, rows, cols, tanh_form, nullptr);
  suite.require("launch", launch_ok(cudaSuccess));
  Err e_d, e_act;
  for (size_t i = 0; i < n; ++i) {
    const double x = dbl(pre[i]);
    e_d.add(static_cast<double>(d[i]), d0[i] * dgelu_ref(x, tanh_form));
    e_act.add(static_cast<double>(act[i]), gelu_ref(x, tanh_form));
  }
  suite.check("dpre", e_d, tol1<Acc>());
  suite.check("act", e_act, tol1<Acc>());
  suite.end();
}

}  // namespace

int main() {
  uint64_t seed = 500;
  for (int tanh_form = 1; tanh_form >= 0; --tanh_form) {
    // one CTA tile in N, two in M, K = 40 (a partial 32-wide K tile)
    run_mlp<__half>(130, 40, 168, tanh_form, true, ++seed);
    run_mlp<__nv_bfloat16>(130, 40, 168, tanh_form, true, ++seed);
    // several CTA tiles in M and N; K = 264 / 392 / 300, none a multiple of 32
    run_mlp<__half>(300, 264, 392, tanh_form, tanh_form, ++seed);
    run_mlp<__nv_bfloat16>(300, 264, 392, tanh_form, !tanh_form, ++seed);
  }
  // 9 M tiles: two GROUP_M super-rows; weight gradients with K = 1100 (35 K tiles, the 4-stage ring)
  run_mlp<__nv_bfloat16>(1100, 24, 40, true, true, ++seed);
  run_mlp<__half>(1100, 24, 40, false, false, ++seed);
  // elementwise kernels: every variant the launcher instantiates (at::mm path, cuBLASLt backward)
  for (int tanh_form = 1; tanh_form >= 0; --tanh_form) {
    run_bias_gelu<float, __half, float>(37, 300, true, true, tanh_form, ++seed);
    run_bias_gelu<float, __nv_bfloat16, float>(37, 300, true, true, tanh_form, ++seed);
    run_bias_gelu<float, float, float>(37, 300, true, true, tanh_form, ++seed);
    run_bias_gelu<float, float, float>(5, 600, false, true, tanh_form, ++seed);
    run_bias_gelu<double, double, double>(37, 300, true, true, tanh_form, ++seed);
    run_bias_gelu<__half, __half, __half>(37, 300, false, false, tanh_form, ++seed);
    run_bias_gelu<__nv_bfloat16, __nv_bfloat16, __nv_bfloat16>(37, 300, false, false, tanh_form, ++seed);
    run_dgelu<__half, float>(37, 300, tanh_form, ++seed);
    run_dgelu<__nv_bfloat16, float>(37, 300, tanh_form, ++seed);
    run_dgelu<float, float>(37, 300, tanh_form, ++seed);
    run_dgelu<double, double>(37, 300, tanh_form, ++seed);
  }
  return suite.finish("gelu_mlp");
}
