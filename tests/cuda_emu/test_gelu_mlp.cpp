// kernels/gelu_mlp.cuh run on the CPU emulator (tests/cuda_emu/emu.h) and checked against float64
// references. The GEMM kernel is driven through the exact launch sequence of the "mma" path of
// csrc/cuda/gelu_mlp_cuda.cu (fwd_mma: <K,K,GeluAux> then <K,K,Store>; bwd_mma: <K,N,DGelu> with
// the db_fc column-sum partials, the two weight gradients through launch_mlp_gemm_splitk (S = 1:
// <M,N,Store>; S > 1: <M,N,Partial> + mlp_splitk_reduce_kernel, one shared workspace), <K,N,Store>
// for dx; the db_fc partials summed in a fixed order like at::sum), so all four operand layouts and
// all four GEMM epilogues run. run_wgrad drives the weight-gradient GEMMs alone with split-K S = 1,
// 2, 3 (M = 1, 17, 113, 300, 1100: empty slices, a K tail in the last slice, uneven slices), checks
// every slice's fp32 partial against its float64 sum over the slice's rows (rel 1e-5; an empty slice
// must be exactly 0), the result bitwise against round_T of the slices summed in order in fp32, and
// a second run with the same S (workspace and outputs re-poisoned) bitwise against the first. The
// auto rule splitk_slices_auto is checked on hand-computed cases. The elementwise kernels (mlp_bias_gelu_kernel, mlp_dgelu_kernel) run in every
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
//   split-K partials (fp32, unrounded): 1e-5 relative to the slice's max |ref| (fp32 accumulation
//   of exact 16-bit products; measured max ~1e-7).
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

// The weight-gradient GEMMs as bwd_mma launches them (S slices; workspace null for S = 1).
template <typename T>
bool wgrad_gemm(const mk::MlpGemmParams& p, int splits, float* ws) {
  return launch_ok(mk::launch_mlp_gemm_splitk<T, false, false>(p, splits, ws, nullptr));
}

template <typename T>
void run_mlp(int64_t M, int64_t C, int64_t Hd, bool tanh_form, bool biases, uint64_t seed, int splits = 1) {
  const int64_t tiles_m = (M + mk::kBM - 1) / mk::kBM;
  suite.begin("gelu_mlp  %-4s M=%-4" PRId64 " C=%-3" PRId64 " Hd=%-3" PRId64 " %s bias=%d S=%d (tiles: up %" PRId64
              "x%" PRId64 ", K %" PRId64 "/%" PRId64 "/%" PRId64 ")",
              Ty<T>::name(), M, C, Hd, tanh_form ? "tanh" : "none", biases, splits, tiles_m, (Hd + 127) / 128, C,
              Hd, M);
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
  // one workspace for both weight gradients (same C x Hd size), as bwd_mma allocates it
  const int64_t ws_n = mk::splitk_workspace_floats(C, Hd, splits);
  Buf<float> ws(static_cast<size_t>(ws_n > 0 ? ws_n : 1));
  float* const wsp = ws_n > 0 ? ws.p : nullptr;
  suite.require("dW_proj launch", wgrad_gemm<T>(p2, splits, wsp));
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
  suite.require("dW_fc launch", wgrad_gemm<T>(p3, splits, wsp));
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

// The weight-gradient GEMMs alone, split-K S slices: dW_proj (C, Hd) = dout^T . act and dW_fc (Hd, C)
// = dpre^T . x, K = M, one shared workspace, as bwd_mma runs them.
template <typename T>
void run_wgrad(int64_t M, int64_t C, int64_t Hd, int splits, uint64_t seed) {
  const int ktiles = static_cast<int>((M + mk::kBK - 1) / mk::kBK);
  suite.begin("wgrad     %-4s M=%-4" PRId64 " C=%-3" PRId64 " Hd=%-3" PRId64 " S=%d (K tiles %d, slice tiles %d..%d)",
              Ty<T>::name(), M, C, Hd, splits, ktiles,
              mk::splitk_kt_begin(1, splits, ktiles) - mk::splitk_kt_begin(0, splits, ktiles),
              ktiles - mk::splitk_kt_begin(splits - 1, splits, ktiles));
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> nd(0.0, 1.0);
  const size_t MC = static_cast<size_t>(M * C), MH = static_cast<size_t>(M * Hd), HC = static_cast<size_t>(Hd * C);
  Buf<T> x(MC), go(MC), act(MH), dpre(MH), dwproj(HC), dwfc(HC), dwproj2(HC), dwfc2(HC);
  for (size_t i = 0; i < MC; ++i) x[i] = fromD<T>(nd(rng));
  for (size_t i = 0; i < MC; ++i) go[i] = fromD<T>(nd(rng));
  for (size_t i = 0; i < MH; ++i) act[i] = fromD<T>(nd(rng));
  for (size_t i = 0; i < MH; ++i) dpre[i] = fromD<T>(0.3 * nd(rng));
  const int64_t ws_n = mk::splitk_workspace_floats(C, Hd, splits);
  suite.require("workspace size", ws_n == (splits > 1 ? splits * C * Hd : 0));
  Buf<float> ws(static_cast<size_t>(ws_n > 0 ? ws_n : 1));
  float* const wsp = ws_n > 0 ? ws.p : nullptr;

  auto params = [&](const Buf<T>& a, int64_t lda, const Buf<T>& b, int64_t ldb, Buf<T>& c, int64_t m, int64_t n) {
    mk::MlpGemmParams p{};
    p.a = a.p;
    p.lda = lda;
    p.b = b.p;
    p.ldb = ldb;
    p.c = c.p;
    p.ldc = n;
    p.m = static_cast<int>(m);
    p.n = static_cast<int>(n);
    p.k = static_cast<int>(M);
    return p;
  };
  // A[c][m] = dout[m][c] (M-major), B[m][h] = act; A[h][m] = dpre[m][h], B[m][c] = x
  const mk::MlpGemmParams pp = params(go, C, act, Hd, dwproj, C, Hd);
  const mk::MlpGemmParams pf = params(dpre, Hd, x, C, dwfc, Hd, C);
  std::vector<float> ws_proj, ws_fc;  // the workspace after each GEMM (the emulator runs synchronously)
  suite.require("dW_proj launch", wgrad_gemm<T>(pp, splits, wsp));
  if (ws_n > 0) ws_proj.assign(ws.p, ws.p + ws_n);
  suite.require("dW_fc launch", wgrad_gemm<T>(pf, splits, wsp));
  if (ws_n > 0) ws_fc.assign(ws.p, ws.p + ws_n);

  // float64 references, whole K and per slice
  Err e_proj, e_fc, e_part;
  bool empty_zero = true, order_exact = true;
  auto check = [&](const Buf<T>& A, int64_t lda, const Buf<T>& B, int64_t ldb, const Buf<T>& Cm, int64_t m, int64_t n,
                   Err& e, const std::vector<float>& wsv) {
    std::vector<double> slice_ref(static_cast<size_t>(splits));
    std::vector<Err> e_s(static_cast<size_t>(splits));
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        double total = 0;
        for (int z = 0; z < splits; ++z) {
          const int64_t k0 = static_cast<int64_t>(mk::splitk_kt_begin(z, splits, ktiles)) * mk::kBK;
          const int64_t k1 = std::min<int64_t>(static_cast<int64_t>(mk::splitk_kt_begin(z + 1, splits, ktiles)) * mk::kBK, M);
          double sz = 0;
          for (int64_t k = k0; k < k1; ++k) sz += dbl(A[static_cast<size_t>(k * lda + i)]) * dbl(B[static_cast<size_t>(k * ldb + j)]);
          total += sz;
          slice_ref[static_cast<size_t>(z)] = sz;
        }
        const size_t ci = static_cast<size_t>(i * n + j);
        e.add(dbl(Cm[ci]), total);
        if (splits > 1) {
          float f = 0.0f;
          for (int z = 0; z < splits; ++z) {
            const float v = wsv[static_cast<size_t>(z) * static_cast<size_t>(m * n) + ci];
            f = z == 0 ? v : f + v;  // the fixed order of mlp_splitk_reduce_kernel
            const bool empty = mk::splitk_kt_begin(z, splits, ktiles) == mk::splitk_kt_begin(z + 1, splits, ktiles);
            if (empty) {
              empty_zero = empty_zero && v == 0.0f && !std::signbit(v);
            } else {
              e_s[static_cast<size_t>(z)].add(static_cast<double>(v), slice_ref[static_cast<size_t>(z)]);
            }
          }
          const T r = fromD<T>(static_cast<double>(f));
          order_exact = order_exact && std::memcmp(&r, &Cm[ci], sizeof(T)) == 0;
        }
      }
    for (const Err& es : e_s) {  // the worst slice, each against its own scale
      if (es.count == 0) continue;
      if (es.rel() > e_part.rel() || e_part.count == 0) e_part = es;
    }
  };
  check(go, C, act, Hd, dwproj, C, Hd, e_proj, ws_proj);
  check(dpre, Hd, x, C, dwfc, Hd, C, e_fc, ws_fc);
  suite.check("dW_proj", e_proj, tol2<T>());
  suite.check("dW_fc", e_fc, tol2<T>());
  if (splits > 1) {
    suite.check("partials", e_part, 1e-5);
    suite.require("empty slices store +0", empty_zero);
    suite.require("C == round(slice 0 + slice 1 + ...) bitwise", order_exact);
  }

  // same S again into re-poisoned outputs and workspace: the same bits
  ws.poison();
  mk::MlpGemmParams pp2 = pp, pf2 = pf;
  pp2.c = dwproj2.p;
  pf2.c = dwfc2.p;
  suite.require("dW_proj relaunch", wgrad_gemm<T>(pp2, splits, wsp));
  suite.require("dW_fc relaunch", wgrad_gemm<T>(pf2, splits, wsp));
  suite.require("rerun bitwise equal", std::memcmp(dwproj.p, dwproj2.p, HC * sizeof(T)) == 0 &&
                                           std::memcmp(dwfc.p, dwfc2.p, HC * sizeof(T)) == 0);
  suite.end();
}

// splitk_slices_auto: the documented rule on hand-computed cases (tiles = ceil(m/128) ceil(n/128)).
void run_splitk_auto() {
  suite.begin("splitk_slices_auto (rule of kernels/gelu_mlp.cuh \"Split-K\")");
  struct Case {
    int64_t m, n, k, slots;
    int want;
  };
  const Case cases[] = {
      {768, 3072, 16384, 264, 3},  // 144 tiles, H100: S=2 1.0 (no gain), S=3 0.67, S=4 0.75
      {3072, 768, 16384, 216, 3},  // 144 tiles, A100 (108 SMs): S=2 1.0, S=3 0.67, S=4 0.75
      {2048, 2048, 16384, 216, 1}, // 256 tiles >= slots: a full wave already
      {768, 3072, 255, 264, 1},    // 8 K tiles: no slice of >= 8 tiles left over
      {768, 3072, 512, 264, 1},    // S <= 2 and S = 2 is not strictly better
      {768, 3072, 768, 264, 3},    // 24 K tiles: S <= 3
      {384, 1024, 8192, 264, 4},   // 24 tiles: S = 2 0.5, 3 0.33, 4 0.25 (cap 4)
      {768, 2048, 8192, 264, 2},   // 96 tiles: S = 2 0.5, S = 3 0.67, S = 4 0.5 (tie: smaller S)
      {768, 2048, 8192, 100, 1},   // 96 tiles < 100 slots, but S = 2, 3, 4 all cost 1.0
      {1, 8, 1 << 20, 264, 4},     // one tile
      {768, 3072, 16384, 0, 1},    // no slot information
      {0, 3072, 16384, 264, 1},
  };
  bool ok = true;
  for (const Case& c : cases) {
    const int got = mk::splitk_slices_auto(c.m, c.n, c.k, c.slots);
    if (got != c.want) {
      ok = false;
      char buf[160];
      std::snprintf(buf, sizeof(buf), " m=%" PRId64 " n=%" PRId64 " k=%" PRId64 " slots=%" PRId64 ": S=%d, want %d", c.m,
                    c.n, c.k, c.slots, got, c.want);
      suite.line += buf;
    }
  }
  suite.require("auto S as documented", ok);
  // slice boundaries floor(s * T / S): uneven slices differ by one tile, the larger ones last (so the
  // last slice holds the K tail), empty slices first
  const int b10[] = {0, 3, 6, 10}, b1[] = {0, 0, 0, 1}, b35[] = {0, 17, 35};
  bool bounds = true;
  for (int z = 0; z <= 3; ++z) bounds = bounds && mk::splitk_kt_begin(z, 3, 10) == b10[z] && mk::splitk_kt_begin(z, 3, 1) == b1[z];
  for (int z = 0; z <= 2; ++z) bounds = bounds && mk::splitk_kt_begin(z, 2, 35) == b35[z];
  suite.require("slice boundaries floor(s*T/S)", bounds);
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
  // the whole backward with split-K weight gradients (S = 2, 3: 10 / 35 K tiles)
  run_mlp<__half>(300, 264, 392, true, true, ++seed, 3);
  run_mlp<__nv_bfloat16>(1100, 24, 40, false, true, ++seed, 2);
  // split-K of the weight-gradient GEMMs: S = 1, 2, 3; M = 1, 17 (one K tile: empty slices),
  // 113 (4 tiles, the last partial), 300 (10 tiles, 3/3/4), 1100 (35 tiles: the 4-stage ring)
  for (int splits = 1; splits <= 3; ++splits) {
    for (int64_t M : {1, 17, 113, 300}) {
      run_wgrad<__half>(M, 40, 168, splits, ++seed);
      run_wgrad<__nv_bfloat16>(M, 40, 168, splits, ++seed);
    }
  }
  run_wgrad<__nv_bfloat16>(1100, 136, 24, 3, ++seed);
  run_wgrad<__half>(1100, 136, 24, 2, ++seed);
  run_splitk_auto();
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
