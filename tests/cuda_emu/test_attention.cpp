// kernels/attention.cuh run on the CPU emulator (tests/cuda_emu/emu.h) and checked against a float64
// reference. Replicates csrc/cuda/attention_cuda.cu: head dims padded with zeros to kD = 32/64/128
// (kernel_operand), q/k/v read IN PLACE through their strides when the layout allows (here: views of
// one fused (B, T, 3, H, D) qkv buffer) and copied otherwise, strides of size-1 dims passed as 0,
// out/dq/dk/dv of width kD sliced back to D, delta over the caller's D. Every output is
// NaN-poisoned before its kernel runs; padded columns must come out exactly 0.
//
// Tolerances, as relative max error max|v - ref| / max|ref| against float64 attention computed
// from the same 16-bit inputs (the kernels round P, dS and the outputs to the 16-bit type, with
// fp32 accumulation):
//   out:           fp16 1.5e-3, bf16 1e-2   (~3x the output rounding 2^-11 / 2^-8 plus P's;
//                                           measured max 4.1e-4 / 3.6e-3)
//   dq, dk, dv:    fp16 3e-3, bf16 2e-2     (dS = P (dP - delta) rounded to 16 bits before dQ/dK;
//                                           measured max 7.2e-4 / 7.9e-3)
//   lse (fp32):    absolute 1e-4            (natural log; fp32 scores)
//   delta (fp32, from the kernel's own out): relative 1e-5
#include "emu.h"
// the arena behind the header's `extern __shared__ unsigned char smem[]` (defined first)
PYGPT_EMU_DYNAMIC_SMEM(pygpt::attn, unsigned char, smem);
#include "../../kernels/attention.cuh"
#include "check.h"

using namespace emu_test;
namespace attn = pygpt::attn;

namespace {

Suite suite;

// A (B, H, T, D) view of 16-bit elements in emulated device memory (like an at::Tensor).
template <typename T>
struct View {
  T* data = nullptr;
  int64_t size[4] = {0, 0, 0, 0};
  int64_t stride[4] = {0, 0, 0, 0};
  T& at(int64_t b, int64_t h, int64_t t, int64_t d) const {
    return data[b * stride[0] + h * stride[1] + t * stride[2] + d * stride[3]];
  }
};

template <typename T>
View<T> contiguous_view(T* p, int64_t B, int64_t H, int64_t Tn, int64_t D) {
  View<T> v;
  v.data = p;
  v.size[0] = B, v.size[1] = H, v.size[2] = Tn, v.size[3] = D;
  v.stride[3] = 1, v.stride[2] = D, v.stride[1] = Tn * D, v.stride[0] = H * Tn * D;
  return v;
}

// attention_cuda.cu's is_kernel_layout
template <typename T>
bool is_kernel_layout(const View<T>& t) {
  if (t.stride[3] != 1) return false;
  if (reinterpret_cast<uintptr_t>(t.data) % 16 != 0) return false;
  for (int d = 0; d < 3; ++d) {
    if (t.size[d] > 1 && t.stride[d] % 8 != 0) return false;
  }
  return true;
}

// attention_cuda.cu's kernel_operand: zero-padded to kD (a fresh contiguous tensor), or copied when
// not readable in place, else the view itself. New buffers are appended to `keep`.
template <typename T>
View<T> kernel_operand(const View<T>& t, int64_t kD, std::vector<Buf<T>>& keep, bool* in_place) {
  if (t.size[3] == kD && is_kernel_layout(t)) {
    *in_place = true;
    return t;
  }
  *in_place = false;
  const int64_t B = t.size[0], H = t.size[1], Tn = t.size[2], D = t.size[3];
  keep.emplace_back(static_cast<size_t>(B * H * Tn * kD));
  View<T> c = contiguous_view(keep.back().p, B, H, Tn, kD);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < Tn; ++i)
        for (int64_t d = 0; d < kD; ++d) c.at(b, h, i, d) = d < D ? t.at(b, h, i, d) : fromD<T>(0.0);
  return c;
}

template <typename T>
attn::Strides strides_of(const View<T>& t) {
  return attn::Strides{t.size[0] > 1 ? t.stride[0] : 0, t.size[1] > 1 ? t.stride[1] : 0,
                       t.size[2] > 1 ? t.stride[2] : 0};
}

template <typename T, int kD, int kBr>
void run_kernels_fwd(const attn::FwdParams& p, bool* ok) {
  *ok = launch_ok(attn::launch_attention_fwd<T, kD, kBr>(p, nullptr));
}
template <typename T, int kD>
void run_kernels_bwd(const attn::BwdParams& p, bool* ok) {
  const bool a = launch_ok(attn::launch_attention_bwd_dkdv<T, kD>(p, nullptr));
  const bool b = launch_ok(attn::launch_attention_bwd_dq<T, kD>(p, nullptr));
  *ok = a && b;
}
// fwd_rows: the forward version (64 or 128 query rows per CTA), as attention_cuda.cu's dispatch_fwd
template <typename T>
void dispatch(int64_t kD, int fwd_rows, const attn::FwdParams* fp, const attn::BwdParams* bp, bool* ok) {
  *ok = false;
  if (fp != nullptr && fwd_rows == 128) {
    if (kD == 64) run_kernels_fwd<T, 64, 128>(*fp, ok);
    if (kD == 128) run_kernels_fwd<T, 128, 128>(*fp, ok);
    return;
  }
  if (fp != nullptr && fwd_rows != 64) return;
  if (kD == 32) fp ? run_kernels_fwd<T, 32, 64>(*fp, ok) : run_kernels_bwd<T, 32>(*bp, ok);
  if (kD == 64) fp ? run_kernels_fwd<T, 64, 64>(*fp, ok) : run_kernels_bwd<T, 64>(*bp, ok);
  if (kD == 128) fp ? run_kernels_fwd<T, 128, 64>(*fp, ok) : run_kernels_bwd<T, 128>(*bp, ok);
}

template <typename T>
double tol_out() {
  return std::is_same_v<T, __half> ? 1.5e-3 : 1e-2;
}
template <typename T>
double tol_grad() {
  return std::is_same_v<T, __half> ? 3e-3 : 2e-2;
}

// fused: q, k, v are strided views of one (B, T, 3, H, D) buffer (the model's qkv projection).
// rows_env: the value of PYGPT_ATTN_FWD_ROWS (nullptr = unset); the forward version is picked from it
// by attn::choose_fwd_rows, as the launcher does. At 128 rows and kD = 64 the 64-row version is run
// on the same operands too and must give bit-identical out and lse (same key blocks of 64, same
// per-row arithmetic; only the CTA/warp tiling differs). The (unchanged, version-independent)
// backward then runs on this forward's out and lse.
template <typename T>
void run_case(int B, int H, int Tq, int Tk, int D, bool causal, bool fused, uint64_t seed,
              const char* rows_env = "64") {
  const int64_t kD = D <= 32 ? 32 : (D <= 64 ? 64 : 128);
  const int fwd_rows = attn::choose_fwd_rows(rows_env, static_cast<int>(kD));
  suite.begin("attention %-4s B=%d H=%d Tq=%-3d Tk=%-3d D=%-3d(kD=%-3" PRId64 ") causal=%d %-10s fwd_rows=%-3d(%s)",
              Ty<T>::name(), B, H, Tq, Tk, D, kD, causal, fused ? "qkv-views" : "contiguous", fwd_rows,
              rows_env ? rows_env : "unset");
  suite.require("PYGPT_ATTN_FWD_ROWS value accepted", fwd_rows == 64 || fwd_rows == 128);
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> nd(0.0, 1.0);
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  const int64_t BH = static_cast<int64_t>(B) * H;

  // ---- inputs ----
  std::vector<Buf<T>> keep;
  View<T> q, k, v;
  Buf<T> qkv, qb, kb, vb;
  if (fused) {
    if (Tq != Tk) std::abort();
    const int64_t Tn = Tq;
    qkv = Buf<T>(static_cast<size_t>(B * Tn * 3 * H * D));
    for (size_t i = 0; i < qkv.n; ++i) qkv[i] = fromD<T>(nd(rng));
    for (int w = 0; w < 3; ++w) {
      View<T> x;
      x.data = qkv.p + w * H * D;
      x.size[0] = B, x.size[1] = H, x.size[2] = Tn, x.size[3] = D;
      x.stride[0] = Tn * 3 * H * D, x.stride[1] = D, x.stride[2] = 3 * H * D, x.stride[3] = 1;
      (w == 0 ? q : (w == 1 ? k : v)) = x;
    }
    // q with a larger spread: peaky softmax rows (the online max matters)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t i = 0; i < Tn; ++i)
          for (int64_t d = 0; d < D; ++d) q.at(b, h, i, d) = fromD<T>(2.0 * dbl(q.at(b, h, i, d)));
  } else {
    qb = Buf<T>(static_cast<size_t>(BH * Tq * D));
    kb = Buf<T>(static_cast<size_t>(BH * Tk * D));
    vb = Buf<T>(static_cast<size_t>(BH * Tk * D));
    for (size_t i = 0; i < qb.n; ++i) qb[i] = fromD<T>(2.0 * nd(rng));
    for (size_t i = 0; i < kb.n; ++i) kb[i] = fromD<T>(nd(rng));
    for (size_t i = 0; i < vb.n; ++i) vb[i] = fromD<T>(nd(rng));
    q = contiguous_view(qb.p, B, H, Tq, D);
    k = contiguous_view(kb.p, B, H, Tk, D);
    v = contiguous_view(vb.p, B, H, Tk, D);
  }
  Buf<T> dob(static_cast<size_t>(BH * Tq * D));
  for (size_t i = 0; i < dob.n; ++i) dob[i] = fromD<T>(nd(rng));
  const View<T> dout = contiguous_view(dob.p, B, H, Tq, D);

  // ---- forward, as attention_fwd_cuda ----
  bool inplace_q, inplace_k, inplace_v;
  const View<T> qk = kernel_operand(q, kD, keep, &inplace_q);
  const View<T> kk = kernel_operand(k, kD, keep, &inplace_k);
  const View<T> vk = kernel_operand(v, kD, keep, &inplace_v);
  // the qkv views are read in place when no padding is needed (else padded copies)
  if (fused) suite.require("q/k/v read in place iff D == kD", (inplace_q && inplace_k && inplace_v) == (D == kD));
  Buf<T> out(static_cast<size_t>(BH * Tq * D));
  Buf<T> out_pad(kD == D ? 0 : static_cast<size_t>(BH * Tq * kD));
  T* out_k = kD == D ? out.p : out_pad.p;
  Buf<float> lse(static_cast<size_t>(BH * Tq));
  attn::FwdParams fp{};
  fp.q = qk.data;
  fp.k = kk.data;
  fp.v = vk.data;
  fp.sq = strides_of(qk);
  fp.sk = strides_of(kk);
  fp.sv = strides_of(vk);
  fp.out = out_k;
  fp.lse = lse.p;
  fp.H = H;
  fp.BH = static_cast<int>(BH);
  fp.Tq = Tq;
  fp.Tk = Tk;
  fp.scale_log2 = static_cast<float>(scale * 1.4426950408889634);
  fp.causal = causal ? 1 : 0;
  bool ok = false;
  dispatch<T>(kD, fwd_rows, &fp, nullptr, &ok);
  suite.require("forward launch", ok);
  if (fwd_rows == 128 && kD == 64) {
    Buf<T> out64(static_cast<size_t>(BH * Tq * kD));
    Buf<float> lse64(static_cast<size_t>(BH * Tq));
    attn::FwdParams fp64 = fp;
    fp64.out = out64.p;
    fp64.lse = lse64.p;
    bool ok64 = false;
    dispatch<T>(kD, 64, &fp64, nullptr, &ok64);
    suite.require("64-row forward launch", ok64);
    // bitwise (memcmp: NaN == NaN would not hold with ==, and -0 vs +0 must not pass)
    suite.require("128-row out bit-identical to 64-row",
                  std::memcmp(out64.p, out_k, static_cast<size_t>(BH * Tq * kD) * sizeof(T)) == 0);
    suite.require("128-row lse bit-identical to 64-row",
                  std::memcmp(lse64.p, lse.p, static_cast<size_t>(BH * Tq) * sizeof(float)) == 0);
  }
  bool pad_zero = true;
  if (kD != D) {
    for (int64_t r = 0; r < BH * Tq; ++r)
      for (int64_t d = 0; d < kD; ++d) {
        const double x = dbl(out_pad[static_cast<size_t>(r * kD + d)]);
        if (d < D) {
          out[static_cast<size_t>(r * D + d)] = out_pad[static_cast<size_t>(r * kD + d)];
        } else if (x != 0.0) {
          pad_zero = false;  // (NaN too)
        }
      }
  }

  // ---- float64 reference: forward and backward ----
  Err e_out, e_lse, e_delta, e_dq, e_dk, e_dv;
  std::vector<double> dq_ref(static_cast<size_t>(BH * Tq * D)), dk_ref(static_cast<size_t>(BH * Tk * D), 0.0),
      dv_ref(static_cast<size_t>(BH * Tk * D), 0.0);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      const int64_t bh = b * H + h;
      std::vector<double> P(static_cast<size_t>(Tq) * Tk), O(static_cast<size_t>(Tq) * D);
      for (int i = 0; i < Tq; ++i) {
        double* pr = &P[static_cast<size_t>(i) * Tk];
        double m = -INFINITY;
        for (int j = 0; j < Tk; ++j) {
          double s = 0;
          for (int d = 0; d < D; ++d) s += dbl(q.at(b, h, i, d)) * dbl(k.at(b, h, j, d));
          pr[j] = (causal && j > i) ? -INFINITY : s * scale;
          m = std::max(m, pr[j]);
        }
        double l = 0;
        for (int j = 0; j < Tk; ++j) l += (pr[j] = std::exp(pr[j] - m));
        for (int j = 0; j < Tk; ++j) pr[j] /= l;
        e_lse.add(lse[static_cast<size_t>(bh * Tq + i)], m + std::log(l));
        for (int d = 0; d < D; ++d) {
          double o = 0;
          for (int j = 0; j < Tk; ++j) o += pr[j] * dbl(v.at(b, h, j, d));
          O[static_cast<size_t>(i) * D + d] = o;
          e_out.add(dbl(out[static_cast<size_t>((bh * Tq + i) * D + d)]), o);
        }
      }
      // backward: dP = dO V^T, dS = P (dP - rowsum(dO o O)), dQ = s dS K, dK = s dS^T Q, dV = P^T dO
      for (int i = 0; i < Tq; ++i) {
        double delta = 0;
        for (int d = 0; d < D; ++d) delta += dbl(dout.at(b, h, i, d)) * O[static_cast<size_t>(i) * D + d];
        std::vector<double> dS(static_cast<size_t>(Tk));
        for (int j = 0; j < Tk; ++j) {
          const double p = P[static_cast<size_t>(i) * Tk + j];
          double dp = 0;
          for (int d = 0; d < D; ++d) dp += dbl(dout.at(b, h, i, d)) * dbl(v.at(b, h, j, d));
          dS[static_cast<size_t>(j)] = p * (dp - delta);
          for (int d = 0; d < D; ++d) {
            dv_ref[static_cast<size_t>((bh * Tk + j) * D + d)] += p * dbl(dout.at(b, h, i, d));
            dk_ref[static_cast<size_t>((bh * Tk + j) * D + d)] += scale * dS[static_cast<size_t>(j)] * dbl(q.at(b, h, i, d));
          }
        }
        for (int d = 0; d < D; ++d) {
          double g = 0;
          for (int j = 0; j < Tk; ++j) g += dS[static_cast<size_t>(j)] * dbl(k.at(b, h, j, d));
          dq_ref[static_cast<size_t>((bh * Tq + i) * D + d)] = scale * g;
        }
      }
    }
  }
  suite.check("out", e_out, tol_out<T>());
  e_lse.scale = 1.0;  // absolute
  suite.check("lse", e_lse, 1e-4);
  if (kD != D) suite.require("padded out columns == 0", pad_zero);

  // ---- backward, as attention_bwd_cuda: (1) delta over the caller's D ----
  Buf<float> delta(static_cast<size_t>(BH * Tq));
  {
    const View<T> o_u = contiguous_view(out.p, B, H, Tq, D);
    attn::DeltaParams dp{};
    dp.out = o_u.data;
    dp.dout = dout.data;
    dp.so = strides_of(o_u);
    dp.sdo = strides_of(dout);
    dp.delta = delta.p;
    dp.H = H;
    dp.Tq = Tq;
    dp.D = D;
    dp.rows = BH * Tq;
    suite.require("delta launch", launch_ok(attn::launch_attention_bwd_delta<T>(dp, nullptr)));
    for (int64_t r = 0; r < BH * Tq; ++r) {
      double s = 0;
      for (int d = 0; d < D; ++d) s += dbl(out[static_cast<size_t>(r * D + d)]) * dbl(dob[static_cast<size_t>(r * D + d)]);
      e_delta.add(delta[static_cast<size_t>(r)], s);
    }
    suite.check("delta", e_delta, 1e-5);
  }
  // (2) dK/dV and (3) dQ on the padded operands
  bool ip;
  const View<T> dok = kernel_operand(dout, kD, keep, &ip);
  Buf<T> dq(static_cast<size_t>(BH * Tq * kD)), dk(static_cast<size_t>(BH * Tk * kD)),
      dv(static_cast<size_t>(BH * Tk * kD));
  attn::BwdParams bp{};
  bp.q = qk.data;
  bp.k = kk.data;
  bp.v = vk.data;
  bp.dout = dok.data;
  bp.sq = strides_of(qk);
  bp.sk = strides_of(kk);
  bp.sv = strides_of(vk);
  bp.sdo = strides_of(dok);
  bp.lse = lse.p;
  bp.delta = delta.p;
  bp.dq = dq.p;
  bp.dk = dk.p;
  bp.dv = dv.p;
  bp.H = H;
  bp.BH = static_cast<int>(BH);
  bp.Tq = Tq;
  bp.Tk = Tk;
  bp.scale = static_cast<float>(scale);
  bp.scale_log2 = static_cast<float>(scale * 1.4426950408889634);
  bp.causal = causal ? 1 : 0;
  dispatch<T>(kD, 64, nullptr, &bp, &ok);
  suite.require("backward launches", ok);
  bool gpad_zero = true;
  auto cmp = [&](const Buf<T>& g, const std::vector<double>& ref, int64_t rows, Err& e) {
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t d = 0; d < kD; ++d) {
        const double x = dbl(g[static_cast<size_t>(r * kD + d)]);
        if (d < D) {
          e.add(x, ref[static_cast<size_t>(r * D + d)]);
        } else if (x != 0.0) {
          gpad_zero = false;
        }
      }
  };
  cmp(dq, dq_ref, BH * Tq, e_dq);
  cmp(dk, dk_ref, BH * Tk, e_dk);
  cmp(dv, dv_ref, BH * Tk, e_dv);
  suite.check("dq", e_dq, tol_grad<T>());
  suite.check("dk", e_dk, tol_grad<T>());
  suite.check("dv", e_dv, tol_grad<T>());
  if (kD != D) suite.require("padded gradient columns == 0", gpad_zero);
  suite.end();
}

template <typename T>
void sweep(uint64_t seed) {
  // every head dim kernel (and a padded one) x causal, at sequence lengths around the 64-row tiles
  for (int D : {32, 64, 128, 40}) {
    for (int causal = 0; causal < 2; ++causal) {
      for (int Tn : {1, 17, 64, 65, 130}) {
        // q/k/v as strided views of one qkv buffer (read in place at D = 32/64/128, padded copies at 40)
        const bool fused = Tn == 64 || Tn == 130;
        // B*H = 2 or 3; a size-1 B or H dim is passed with stride 0 (strides_of)
        const int B = Tn == 130 ? 2 : (Tn == 17 ? 3 : 1), H = Tn == 64 ? 2 : (Tn == 130 || Tn == 17 ? 1 : 3);
        run_case<T>(B, H, Tn, Tn, D, causal != 0, fused, ++seed);
      }
    }
  }
  // Tq != Tk (non-causal): fewer queries than keys and the reverse
  run_case<T>(1, 2, 17, 130, 64, false, false, ++seed);
  run_case<T>(2, 1, 130, 17, 40, false, false, ++seed);
  run_case<T>(1, 2, 17, 130, 128, false, false, ++seed);
  // qkv views with batch AND head strides, causal
  run_case<T>(2, 2, 40, 40, 64, true, true, ++seed);

  // The 128-row forward version (PYGPT_ATTN_FWD_ROWS=128) at both of its head dims, causal and not,
  // at odd T: 1 and 17 (one CTA, 127 resp. 111 of its rows past Tq),
  // 113 (one CTA, a key tail inside the last block), 200 (two CTAs, the second with 72 rows).
  // Causal, warp 0 of the first CTA skips 1 of its 2 (d64, Bc = 64) resp. 3 of its 4 (d128, Bc = 32)
  // key blocks, which lie right of all its rows.
  for (int D : {64, 128}) {
    for (int causal = 0; causal < 2; ++causal) {
      for (int Tn : {1, 17, 113, 200}) {
        const int B = Tn == 200 ? 1 : 2, H = Tn == 113 ? 1 : 2;
        run_case<T>(B, H, Tn, Tn, D, causal != 0, false, ++seed, "128");
      }
    }
  }
  // 128 rows on qkv views read in place (D = kD) and on a padded head dim (D = 80 -> kD = 128),
  // cross attention both ways, and the default (unset / "auto": 128 at kD = 64 and 128, 64 at 32)
  run_case<T>(2, 2, 150, 150, 64, true, true, ++seed, "128");
  run_case<T>(1, 2, 130, 130, 80, true, false, ++seed, "128");
  run_case<T>(1, 2, 17, 200, 128, false, false, ++seed, "128");
  run_case<T>(1, 1, 200, 17, 64, false, false, ++seed, "128");
  run_case<T>(1, 2, 65, 65, 32, true, false, ++seed, nullptr);
  run_case<T>(1, 2, 130, 130, 128, true, true, ++seed, "auto");
}

// attn::choose_fwd_rows: the PYGPT_ATTN_FWD_ROWS rule the launcher applies
void fwd_rows_selection() {
  suite.begin("attention PYGPT_ATTN_FWD_ROWS selection (choose_fwd_rows)");
  struct Want {
    const char* env;
    int kD, rows;
  };
  const Want want[] = {
      {nullptr, 32, 64},    {nullptr, 64, 128},  {nullptr, 128, 128}, {"", 64, 128},
      {"auto", 32, 64},     {"auto", 64, 128},   {"auto", 128, 128},  {"64", 32, 64},
      {"64", 64, 64},       {"64", 128, 64},     {"128", 64, 128},    {"128", 128, 128},
      {"128", 32, attn::kFwdRowsUnsupported},    {"96", 64, attn::kFwdRowsBadValue},
      {"AUTO", 64, attn::kFwdRowsBadValue},      {"128 ", 128, attn::kFwdRowsBadValue},
      {"064", 64, attn::kFwdRowsBadValue},
  };
  for (const Want& w : want) {
    const int got = attn::choose_fwd_rows(w.env, w.kD);
    if (got != w.rows) {
      char what[128];
      std::snprintf(what, sizeof(what), "env=%s kD=%d -> %d (want %d)", w.env ? w.env : "unset", w.kD, got, w.rows);
      suite.require(what, false);
    }
  }
  suite.end();
}

}  // namespace

int main() {
  fwd_rows_selection();
  sweep<__half>(100);
  sweep<__nv_bfloat16>(200);
  return suite.finish("attention");
}
