// kernels/layer_norm.cuh run on the CPU emulator (tests/cuda_emu/emu.h) and checked against float64
// references. Drives the header's launch helpers exactly as csrc/cuda/layer_norm_cuda.cu does:
// launch_layer_norm_fwd; plan_layer_norm_bwd, a [2, P, C] partial buffer, launch_layer_norm_bwd_rows,
// launch_layer_norm_bwd_reduce. Every output is NaN-poisoned before the call. `sms` is the SM count
// the launcher would read from the device: small values force small grids (P = min(N, sms x
// occupancy), the emulator's occupancy being min(2048 / threads, 32)), so that one block or warp
// handles several rows, as on a GPU with many more rows than CTAs.
// Each case also checks which backward kernel the plan picked (warp / block / block-wide, from C
// alone, thresholds restated below), and `rerun` cases run the backward a second time into fresh
// NaN-poisoned buffers (another scheduler interleaving) and require bitwise-equal dx, dw, db.
//
// Tolerances: relative max error max|v - ref| / max|ref| per output, with ref the float64 value
// computed from the same (rounded) inputs; y and dx from the kernel's h as stored and its mean/rstd
// (which are checked against float64 statistics of h on their own):
//   (dx against max(|ref|, rstd (|g| + |mean g| + |xhat mean(g xhat)|)): its terms cancel)
//   y, dx (rounded to T):  fp64 1e-13, fp32 2e-6, fp16 1e-3, bf16 8e-3 (2x the output's rounding,
//                          2^-11 / 2^-8 relative, for fp16/bf16; fp32 accumulation; measured max:
//                          fp64 3e-16, fp32 1.4e-7, fp16 4.3e-4, bf16 3.5e-3)
//   mean, rstd (acc_t):    fp64 1e-13, otherwise 2e-6 (fp32 sums of up to 12k terms; measured max
//                          fp64 6.4e-15, fp32 3.0e-7)
//   dw, db (acc_t sums over rows): measured against max_c sum_rows |term| (the sum's condition);
//                          fp64 1e-13, otherwise 2e-6 (measured max fp64 3.5e-16, fp32 1.3e-7)
// and exact checks: h == round_T(x + res) bitwise; C == 1: y == bias, dx == dh (or 0).
#include "emu.h"
// the arena behind the header's `extern __shared__ unsigned char ln_fwd_smem[]` (defined first)
PYGPT_EMU_DYNAMIC_SMEM(pygpt::ln, unsigned char, ln_fwd_smem);
#include "../../kernels/layer_norm.cuh"
#include "check.h"

using namespace emu_test;
using namespace pygpt::ln;

namespace {

Suite suite;

template <typename T>
double tol_out() {
  if (sizeof(T) == 8) return 1e-13;
  if (std::is_same_v<T, float>) return 2e-6;
  if (std::is_same_v<T, __half>) return 1e-3;
  return 8e-3;
}
template <typename T>
double tol_acc() {
  return sizeof(T) == 8 ? 1e-13 : 2e-6;
}

// The backward kernel the launcher must pick for C (restated from kernels/layer_norm.cuh: warp kernel
// up to 1024 columns (double 512), register-partials block kernel up to 8192 (double 4096), -wide beyond).
template <typename T>
LnBwdKernel expected_bwd_kernel(int C) {
  const bool d = sizeof(T) == 8;
  if (C <= (d ? 512 : 1024)) return LnBwdKernel::kWarp;
  if (C <= (d ? 4096 : 8192)) return LnBwdKernel::kBlock;
  return LnBwdKernel::kBlockWide;
}
const char* kernel_name(LnBwdKernel k) {
  return k == LnBwdKernel::kWarp ? "warp" : k == LnBwdKernel::kBlock ? "block" : "wide";
}

// mis: 0 all aligned; 1 x misaligned by one element; 2 weight misaligned; 3 dy misaligned
template <typename T>
void run_case(int64_t N, int C, bool res, bool bias, int mis, int sms, uint64_t seed, bool rerun = false) {
  using A = acc_of<T>;
  const size_t NC = static_cast<size_t>(N) * static_cast<size_t>(C);
  constexpr int V = LnTraits<T>::kVec;
  const bool fwd_warp = fwd_uses_warp_kernel<T>(C);
  const bool vec_expected = C % V == 0 && mis != 1 && mis != 2;
  suite.begin("layer_norm %-4s N=%-4" PRId64 " C=%-5d res=%d bias=%d mis=%d sms=%-2d fwd:%s%s", Ty<T>::name(), N, C,
              res, bias, mis, sms, fwd_warp ? "warp" : "block", vec_expected ? "/vec" : "/scalar");
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> nd(0.0, 1.0);
  Buf<T> x(NC, mis == 1), r(NC), y(NC), h(NC);
  Buf<A> w(static_cast<size_t>(C), mis == 2), b(static_cast<size_t>(C)), mean(static_cast<size_t>(N)),
      rstd(static_cast<size_t>(N));
  for (size_t i = 0; i < NC; ++i) {
    x[i] = fromD<T>(2 * nd(rng) + 3);  // |mean| > std: the two-pass statistics matter
    r[i] = fromD<T>(nd(rng));
  }
  for (int c = 0; c < C; ++c) {
    w[c] = static_cast<A>(nd(rng));
    b[c] = static_cast<A>(nd(rng));
  }
  const double eps = 1e-5;
  LnFwdParams<T> p{};
  p.x = x.p;
  p.res = res ? r.p : nullptr;
  p.w = w.p;
  p.b = bias ? b.p : nullptr;
  p.y = y.p;
  p.h = res ? h.p : nullptr;
  p.mean = mean.p;
  p.rstd = rstd.p;
  p.N = N;
  p.C = C;
  p.eps = static_cast<A>(eps);
  launch_layer_norm_fwd<T>(p, sms, nullptr);
  suite.require("fwd launch", launch_ok(cudaSuccess));
  const T* hh = res ? h.p : x.p;

  // h: exactly x + res rounded to T
  if (res) {
    bool exact = true;
    for (size_t i = 0; i < NC; ++i) {
      const T e = LnTraits<T>::from_acc(LnTraits<T>::to_acc(x[i]) + LnTraits<T>::to_acc(r[i]));
      if (std::memcmp(&e, &h[i], sizeof(T)) != 0) exact = false;
    }
    suite.require("h == round(x + res) bitwise", exact);
  }
  Err ey, em, es;
  bool c1_exact = true;
  for (int64_t i = 0; i < N; ++i) {
    double s = 0;
    for (int c = 0; c < C; ++c) s += dbl(hh[i * C + c]);
    const double m = s / C;
    double q = 0;
    for (int c = 0; c < C; ++c) {
      const double d = dbl(hh[i * C + c]) - m;
      q += d * d;
    }
    const double rs = 1 / std::sqrt(q / C + eps);
    em.add(static_cast<double>(mean[i]), m);
    es.add(static_cast<double>(rstd[i]), rs);
    // y from the kernel's own (checked) statistics: with them exact, y's error is its own rounding
    // (with the fp64 ones it would include the fp32 mean's error amplified by rstd for C = 2 rows
    // whose two values nearly coincide -- an fp32 limit, also the CPU kernel's)
    const double mk = static_cast<double>(mean[i]), rk = static_cast<double>(rstd[i]);
    for (int c = 0; c < C; ++c) {
      const double yr = (dbl(hh[i * C + c]) - mk) * rk * w[c] + (bias ? static_cast<double>(b[c]) : 0.0);
      ey.add(dbl(y[i * C + c]), yr);
      if (C == 1) {
        const T e = LnTraits<T>::from_acc(bias ? b[c] : A(0));
        if (std::memcmp(&e, &y[i], sizeof(T)) != 0 && !(dbl(e) == 0 && dbl(y[i]) == 0)) c1_exact = false;
      }
    }
  }
  // mean is measured against the row's spread too (|mean| ~ 3, std ~ 2)
  em.scale = std::max(em.scale, 1.0);
  suite.check("y", ey, tol_out<T>());
  suite.check("mean", em, tol_acc<T>());
  suite.check("rstd", es, tol_acc<T>());

  // backward (the CPU/torch boundary passes the forward's mean/rstd and h)
  Buf<T> dy(NC, mis == 3), dh(NC), dx(NC);
  for (size_t i = 0; i < NC; ++i) {
    dy[i] = fromD<T>(nd(rng));
    dh[i] = fromD<T>(nd(rng));
  }
  const bool use_dh = res;
  LnBwdPlan plan{};
  suite.require("plan", plan_layer_norm_bwd<T>(N, C, sms, &plan) == cudaSuccess);
  Buf<A> part(static_cast<size_t>(2) * static_cast<size_t>(plan.blocks) * static_cast<size_t>(C));
  Buf<A> dw(static_cast<size_t>(C)), db(static_cast<size_t>(C));
  LnBwdParams<T> bp{};
  bp.dy = dy.p;
  bp.dh = use_dh ? dh.p : nullptr;
  bp.h = hh;
  bp.w = w.p;
  bp.mean = mean.p;
  bp.rstd = rstd.p;
  bp.dx = dx.p;
  bp.partial = part.p;
  bp.N = N;
  bp.C = C;
  launch_layer_norm_bwd_rows<T>(bp, plan, nullptr);
  suite.require("bwd rows launch", launch_ok(cudaSuccess));
  launch_layer_norm_bwd_reduce<A>(part.p, plan.blocks, C, dw.p, db.p, nullptr);
  suite.require("bwd reduce launch", launch_ok(cudaSuccess));
  char pl[96];
  std::snprintf(pl, sizeof(pl), " bwd:%s kE=%d threads=%d P=%d", kernel_name(plan.kernel), plan.kE, plan.threads,
                plan.blocks);
  suite.line += pl;
  suite.require("bwd kernel choice", plan.kernel == expected_bwd_kernel<T>(C));
  suite.require("P <= N", plan.blocks >= 1 && plan.blocks <= N);
  if (rerun) {  // the same launches again: bitwise the same dx, dw, db (and every output written)
    Buf<A> part2(part.n), dw2(dw.n), db2(db.n);
    Buf<T> dx2(NC);
    part2.poison();
    dw2.poison();
    db2.poison();
    dx2.poison();
    LnBwdParams<T> bp2 = bp;
    bp2.dx = dx2.p;
    bp2.partial = part2.p;
    launch_layer_norm_bwd_rows<T>(bp2, plan, nullptr);
    suite.require("bwd rows launch (rerun)", launch_ok(cudaSuccess));
    launch_layer_norm_bwd_reduce<A>(part2.p, plan.blocks, C, dw2.p, db2.p, nullptr);
    suite.require("bwd reduce launch (rerun)", launch_ok(cudaSuccess));
    suite.require("rerun: dx bitwise equal", std::memcmp(dx.p, dx2.p, NC * sizeof(T)) == 0);
    suite.require("rerun: dw bitwise equal", std::memcmp(dw.p, dw2.p, static_cast<size_t>(C) * sizeof(A)) == 0);
    suite.require("rerun: db bitwise equal", std::memcmp(db.p, db2.p, static_cast<size_t>(C) * sizeof(A)) == 0);
  }

  Err edx, edw, edb;
  std::vector<double> dwr(static_cast<size_t>(C), 0), dbr(static_cast<size_t>(C), 0), dwa(static_cast<size_t>(C), 0),
      dba(static_cast<size_t>(C), 0);
  for (int64_t i = 0; i < N; ++i) {
    const double m = static_cast<double>(mean[i]), rs = static_cast<double>(rstd[i]);
    double sg = 0, sgx = 0;
    std::vector<double> xh(static_cast<size_t>(C)), g(static_cast<size_t>(C));
    for (int c = 0; c < C; ++c) {
      xh[c] = (dbl(hh[i * C + c]) - m) * rs;
      g[c] = dbl(dy[i * C + c]) * w[c];
      sg += g[c];
      sgx += g[c] * xh[c];
      dwr[c] += dbl(dy[i * C + c]) * xh[c];
      dbr[c] += dbl(dy[i * C + c]);
      dwa[c] += std::fabs(dbl(dy[i * C + c]) * xh[c]);
      dba[c] += std::fabs(dbl(dy[i * C + c]));
    }
    const double ga = sg / C, gb = sgx / C;
    for (int c = 0; c < C; ++c) {
      const double ref = rs * (g[c] - ga - xh[c] * gb) + (use_dh ? dbl(dh[i * C + c]) : 0.0);
      // dx's terms cancel (completely for C = 2 when var >> eps): measured against their size
      edx.scale = std::max(edx.scale, rs * (std::fabs(g[c]) + std::fabs(ga) + std::fabs(xh[c] * gb)));
      const double v = dbl(dx[i * C + c]);
      edx.add(v, ref);
      if (C == 1) {
        const T e = use_dh ? dh[i] : LnTraits<T>::from_acc(A(0));
        if (std::memcmp(&e, &dx[i], sizeof(T)) != 0 && !(dbl(e) == 0 && v == 0)) c1_exact = false;
      }
    }
  }
  for (int c = 0; c < C; ++c) {
    edw.add(static_cast<double>(dw[c]), dwr[c]);
    edb.add(static_cast<double>(db[c]), dbr[c]);
  }
  // dw/db: sums over rows of terms of both signs; measured against the sum of |terms|
  for (int c = 0; c < C; ++c) {
    edw.scale = std::max(edw.scale, dwa[c]);
    edb.scale = std::max(edb.scale, dba[c]);
  }
  suite.check("dx", edx, tol_out<T>());
  suite.check("dw", edw, tol_acc<T>());
  suite.check("db", edb, tol_acc<T>());
  if (C == 1) suite.require("C==1: y == bias, dx == dh exactly", c1_exact);
  suite.end();
}

template <typename T>
void sweep(const std::vector<int>& Cs) {
  uint64_t seed = 1000 * sizeof(T) + (std::is_same_v<T, __half> ? 7 : 0);
  for (int C : Cs) {
    run_case<T>(37, C, true, true, 0, 1, ++seed);    // rows > grid for the block kernel (32 / SM)
    run_case<T>(300, C, false, false, 0, 1, ++seed);  // rows > grid everywhere, P = 16 partial rows
    run_case<T>(37, C, true, false, 1, 3, ++seed);   // x misaligned: scalar forward
    run_case<T>(37, C, false, true, C % 2 ? 2 : 3, 2, ++seed);  // weight / dy misaligned: scalar paths
  }
}

// The backward block kernels (register partials up to 8192 columns, double 4096; -wide beyond) with
// 1, 3 and 37 rows, with and without residual (dh), on a 1-SM "device": with 37 rows every block
// strides over several rows (P = min(37, occupancy) = 16 for 128 threads, 4 for 512), so the register
// partials carry across rows. The 37-row cases rerun the backward (determinism). mis = 3 (dy
// misaligned) takes the scalar chunk path for aligned widths.
template <typename T>
void block_sweep(const std::vector<int>& Cs) {
  uint64_t seed = 5000 + 100 * sizeof(T) + (std::is_same_v<T, __half> ? 7 : 0);
  for (int C : Cs) {
    for (int64_t N : {1, 3, 37}) {
      run_case<T>(N, C, true, true, 0, 1, ++seed, N == 37);
      run_case<T>(N, C, false, N != 3, 0, 1, ++seed, N == 37);
    }
    run_case<T>(37, C, true, false, 3, 2, ++seed);
  }
}

}  // namespace

int main() {
  // warp kernels: fwd kE 8/16/32/64 (C <= 256/512/1024/2048), bwd kE 8/16/32 (C <= 256/512/1024);
  // block kernels beyond; the fwd block kernel caches the row in smem up to C*sizeof(acc) = 47 KB.
  sweep<float>({1, 2, 7, 8, 31, 33, 127, 128, 256, 257, 511, 513, 768, 1000, 1024, 1025, 1536, 2047, 2048, 2049,
                4097, 12289});
  sweep<__half>({1, 8, 9, 255, 512, 1000, 1032, 2048, 2056, 4097});
  sweep<__nv_bfloat16>({1, 8, 33, 264, 768, 1024, 1030, 2047, 2049, 4096});
  sweep<double>({1, 2, 7, 256, 257, 512, 513, 1000, 6017});
  // many partial rows (P = 20 SMs x 16 > 16: the reduce kernel's strided rows), wide grids
  run_case<float>(700, 1000, true, true, 0, 20, 99);
  run_case<float>(700, 4097, false, true, 0, 20, 98);
  run_case<__nv_bfloat16>(700, 768, true, false, 0, 20, 97);
  run_case<double>(700, 200, true, true, 0, 20, 96);
  // backward block kernels: 1025 (first block width), 2048 (the switch for 16-bit forward too), odd
  // 4097, 8192 (the register kernel's last width: 512 threads), 8193 / 8200 (the -wide kernel)
  block_sweep<float>({1025, 2048, 4097, 8192, 8193});
  block_sweep<__half>({2048, 4097, 8200});
  block_sweep<__nv_bfloat16>({2048, 4097, 8192});
  block_sweep<double>({513, 2048, 4097});
  // many partial rows for the register block kernel (P = 20 SMs x 16 = 320 > 16: strided reduce rows)
  run_case<float>(700, 2048, true, true, 0, 20, 95, true);
  run_case<__nv_bfloat16>(400, 1032, false, true, 0, 20, 94, true);
  return suite.finish("layer_norm");
}
