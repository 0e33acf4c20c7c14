// ===========================================================================
// pygpt.gelu_mlp on CUDA: the launcher. Boundary checks, dtype dispatch, the
// choice between the hand-written tensor-core GEMM (kernels/gelu_mlp.cuh),
// cuBLASLt with fused epilogues, and the at::mm path; registration for the
// CUDA dispatch key. Semantics: csrc/cpu/gelu_mlp.cpp (pre is returned in x's
// dtype; the backward recomputes gelu(pre); bias grads always computed).
// ===========================================================================
//
// Paths (per call; the five GEMMs of one direction always run on one path):
//   mma      fp16/bf16, C % 8 == 0, Hd % 8 == 0, C, Hd > 0, sm_80+, sizes < 2^31.
//            forward:  mlp_gemm<K,K,GeluAux>  act, pre = x.w_fc^T + b_fc, GELU
//                      mlp_gemm<K,K,Store>    out = act.w_proj^T + b_proj
//            backward: mlp_gemm<K,N,DGelu>    dpre, act, db_fc partials (fp32,
//                                             [ceil(M/128), Hd], summed by at::sum
//                                             in a fixed order: deterministic)
//                      mlp_gemm<M,N,Store>    dW_proj = dout^T.act, dW_fc = dpre^T.x
//                        or, split-K with S > 1 slices of K = M: mlp_gemm<M,N,Partial>
//                        (fp32 slices into one [S, C, Hd] workspace from the caching
//                        allocator, shared by both) + mlp_splitk_reduce_kernel (slices
//                        summed in order: deterministic, same S -> same bits)
//                      mlp_gemm<K,N,Store>    dx = dpre.w_fc
//                      db_proj = at::sum(dout, 0, fp32)
//   cublaslt (built with PYGPT_WITH_CUBLASLT, same shape rules, approximate ==
//            "tanh" only: cuBLASLt's GELU is the tanh form; "none" always runs
//            on mma). Row-major C = A.B is computed as column-major C^T = B^T.A^T:
//            forward:  EPILOGUE_GELU_AUX_BIAS (GELU_AUX without b_fc): D = act,
//                      aux = pre (ld Hd, divisible by 8), bias = b_fc (x's dtype,
//                      the output type as cuBLASLt requires); EPILOGUE_BIAS
//                      (DEFAULT without b_proj) for out. cuBLASLt applies GELU to
//                      the unrounded fp32 pre; mma to the rounded one.
//            backward: EPILOGUE_DGELU_BGRAD: D = dpre, aux = pre, bias pointer =
//                      db_fc (x's dtype); act = gelu(pre) by mlp_bias_gelu_kernel;
//                      dW_proj, dW_fc, dx by EPILOGUE_DEFAULT matmuls;
//                      db_proj = at::sum. One handle per device (created lazily
//                      under a mutex, never destroyed); workspace from the caching
//                      allocator (at::empty; 4 MiB max, 32 MiB on sm_90+); algorithm
//                      from cublasLtMatmulAlgoGetHeuristic on every call (as torch
//                      does: the heuristic looks at the pointers' alignment). No
//                      algorithm -> the call runs on mma.
//   at::mm   everything else: float32 / float64, and fp16/bf16 shapes the mma
//            kernel cannot take (C or Hd not a multiple of 8, C == 0, Hd == 0,
//            pre-sm_80 devices, sizes >= 2^31). The GEMMs are at::mm / at::addmm
//            (cuBLAS; float32 obeys torch.backends.cuda.matmul.allow_tf32) in the
//            accumulation dtype (fp16/bf16 are upcast to float32 like the CPU
//            backend); ours are the fused elementwise passes: mlp_bias_gelu_kernel
//            (pre = round(in + b_fc), act = gelu(pre)) and mlp_dgelu_kernel
//            (dpre = dact * gelu'(pre), act = gelu(pre)); db_fc, db_proj by at::sum.
// Alignment: every operand is made contiguous; a pointer that is not 16-byte
//   aligned (a view with an odd offset) is copied once (clone) for the mma and
//   cuBLASLt paths, so cp.async's 16-byte copies and cuBLASLt's 16-byte
//   alignment preference hold.
// Which GEMM path: env PYGPT_GEMM, read on every call:
//   "mma"      always the hand-written GEMM (where the shape allows it),
//   "cublaslt" cuBLASLt where it can run (tanh, algorithm found), else mma,
//   "auto" / unset: on the first call for a key (device, dtype, bucket of M, C,
//              Hd, approximate, forward|backward; see gemm_choice_key below)
//              where both can run, both are timed
//              with cudaEvents (1 warm-up + 3 reps each, synchronising the stream
//              once) and the faster is cached in a mutex-protected map; the
//              outputs of that call come from the winner. During CUDA graph
//              capture (cudaStreamIsCapturing) nothing is timed or cached: an
//              undecided key runs on cuBLASLt.
//   any other value: a TORCH_CHECK error naming it.
//   The auto cache key is gemm_choice_key(): (device, dtype, C, Hd, approximate,
//   stage = forward|backward) -- C and Hd fix every GEMM's N and K -- plus
//   gemm_m_bucket(M) instead of M itself: M <= 64 -> 64, else the next power of
//   two >= M, clamped to 65536 (M > 32768 all share one bucket). So an eval or
//   sampling loop whose row count changes every call (1, 2, 3, ... tokens)
//   times both paths once per bucket (8 buckets for M up to 8192), not once per
//   M; the winner measured at the bucket's first M is reused for M within 2x
//   of it (the paths' relative speed changes slowly with M).
// Split-K of the mma path's weight-gradient GEMMs (kernels/gelu_mlp.cuh,
//   "Split-K"): env PYGPT_GEMM_SPLITK, read on every backward call:
//   unset or empty: automatic, S = mk::splitk_slices_auto(C, Hd, M, slots) with
//              slots = SMs x resident CTAs per SM of mlp_gemm<M,N,Partial> (the
//              occupancy API; cached per device); S = 1 when the C x Hd tiles
//              already fill the GPU (or M is too small to split);
//   an integer >= 1: that S (clamped to mk::kMaxSplitK = 64), for tests/tuning;
//   anything else: a TORCH_CHECK error naming the value.
//   It only affects the mma path (cuBLASLt makes its own split-K choices).
#include "../checks.h"
#include "../registry.h"

#include "../../kernels/gelu_mlp.cuh"

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#if defined(PYGPT_WITH_CUBLASLT) && PYGPT_WITH_CUBLASLT
#define PYGPT_MLP_LT 1
#include <cublasLt.h>
#else
#define PYGPT_MLP_LT 0
#endif

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <initializer_list>
#include <mutex>
#include <optional>
#include <tuple>
#include <unordered_map>
#include <vector>

namespace pygpt {

bool cuda_gelu_mlp_is_kernel() { return true; }

namespace {

namespace mk = ::pygpt::mlp_kernels;

constexpr const char* kOpFwd = "pygpt.gelu_mlp";
constexpr const char* kOpBwd = "pygpt.gelu_mlp_bwd";

template <typename T>
struct Tag {
  using type = T;
};

// ---------------------------------------------------------------------------
// small helpers
// ---------------------------------------------------------------------------
enum class GemmMode { kAuto, kMma, kLt };

GemmMode gemm_mode_from_env(const char* op) {
  const char* v = std::getenv("PYGPT_GEMM");
  if (v == nullptr || v[0] == '\0' || std::strcmp(v, "auto") == 0) return GemmMode::kAuto;
  if (std::strcmp(v, "mma") == 0) return GemmMode::kMma;
  if (std::strcmp(v, "cublaslt") == 0) return GemmMode::kLt;
  TORCH_CHECK(false, op, ": environment variable PYGPT_GEMM must be \"mma\", \"cublaslt\" or \"auto\", got \"",
              v, "\"");
  return GemmMode::kAuto;
}

// PYGPT_GEMM_SPLITK: 0 = automatic (unset or empty), else the forced number of split-K slices.
int splitk_from_env(const char* op) {
  const char* v = std::getenv("PYGPT_GEMM_SPLITK");
  if (v == nullptr || v[0] == '\0') return 0;
  bool ok = v[0] >= '0' && v[0] <= '9';  // digits only: no sign, no spaces, no "2.0"
  long long n = 0;
  for (const char* c = v; ok && *c != '\0'; ++c) {
    ok = *c >= '0' && *c <= '9';
    if (ok && n <= mk::kMaxSplitK) n = n * 10 + (*c - '0');  // saturates above the clamp
  }
  TORCH_CHECK(ok && n >= 1, op, ": environment variable PYGPT_GEMM_SPLITK must be unset (automatic) or an integer "
              ">= 1 (the number of split-K slices of the weight-gradient GEMMs), got \"", v, "\"");
  return static_cast<int>(std::min<long long>(n, mk::kMaxSplitK));
}

// CTAs of the split-K GEMM the device runs at once: SMs x resident CTAs per SM (occupancy API, with the
// kernel's 64 KiB dynamic shared memory). Cached per device (per T: its own instantiation).
template <typename T>
int64_t gemm_slots(int device) {
  static std::mutex mu;
  static auto* cache = new std::unordered_map<int, int64_t>();  // never destroyed
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache->find(device);
  if (it != cache->end()) return it->second;
  int sms = 0, per_sm = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  auto* kernel = &mk::mlp_gemm_kernel<T, false, false, mk::kEpiPartial>;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, mk::kSmemBytes));
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, mk::kThreads, mk::kSmemBytes));
  const int64_t slots = static_cast<int64_t>(sms) * std::max(per_sm, 1);
  cache->emplace(device, slots);
  return slots;
}

bool aligned16(const at::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; }

// Contiguous, and 16-byte aligned (a misaligned view is copied once).
at::Tensor contig_aligned(const at::Tensor& t) {
  at::Tensor c = t.contiguous();
  if (!aligned16(c)) c = c.clone(at::MemoryFormat::Contiguous);
  return c;
}

int compute_capability(int device) {
  int major = 0, minor = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  return major * 10 + minor;
}

int64_t rows_of(const at::Tensor& x) {
  int64_t m = 1;
  for (int64_t d = 0; d + 1 < x.dim(); ++d) m *= x.size(d);
  return m;
}

// Can the hand-written GEMM (and cuBLASLt, same rules) run this MLP?
bool mma_shape_ok(at::ScalarType dt, int64_t M, int64_t C, int64_t Hd, int cc) {
  if (dt != at::kHalf && dt != at::kBFloat16) return false;
  if (cc < 80 || C <= 0 || Hd <= 0 || C % mk::kAlign != 0 || Hd % mk::kAlign != 0) return false;
  return mk::mma_operands_ok(M, Hd, C) && mk::mma_operands_ok(M, C, Hd) && mk::mma_operands_ok(C, Hd, M) &&
         mk::mma_operands_ok(Hd, C, M);
}

template <typename F>
void dispatch_half(at::ScalarType dt, F&& f) {
  if (dt == at::kHalf) {
    f(Tag<__half>{});
  } else {
    TORCH_INTERNAL_ASSERT(dt == at::kBFloat16);
    f(Tag<__nv_bfloat16>{});
  }
}

// The at::mm path's (x's dtype, accumulation dtype) pairs.
template <typename F>
void dispatch_all(at::ScalarType dt, F&& f) {
  switch (dt) {
    case at::kHalf: f(Tag<__half>{}, Tag<float>{}); break;
    case at::kBFloat16: f(Tag<__nv_bfloat16>{}, Tag<float>{}); break;
    case at::kFloat: f(Tag<float>{}, Tag<float>{}); break;
    case at::kDouble: f(Tag<double>{}, Tag<double>{}); break;
    default: TORCH_CHECK(false, "pygpt.gelu_mlp (CUDA): unsupported dtype ", checks::dtype_name(dt));
  }
}

template <typename T>
T* ptr(const at::Tensor& t) {
  return static_cast<T*>(t.data_ptr());
}
const void* opt_ptr(const at::Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

void check_launch(cudaError_t setup) {
  C10_CUDA_CHECK(setup);           // cudaFuncSetAttribute / size checks of the helper
  C10_CUDA_KERNEL_LAUNCH_CHECK();  // the launch itself
}

// ---------------------------------------------------------------------------
// cuBLASLt
// ---------------------------------------------------------------------------
#if PYGPT_MLP_LT
bool stream_capturing(cudaStream_t s) {
  cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(s, &st));
  return st != cudaStreamCaptureStatusNone;
}

constexpr int kTimingReps = 3;

// Mean time of run() over kTimingReps after one warm-up, in ms (synchronises the stream once).
template <typename F>
float time_ms(cudaStream_t s, F&& run) {
  struct Events {
    cudaEvent_t start = nullptr, stop = nullptr;
    ~Events() {
      if (start != nullptr) (void)cudaEventDestroy(start);
      if (stop != nullptr) (void)cudaEventDestroy(stop);
    }
  } ev;
  C10_CUDA_CHECK(cudaEventCreate(&ev.start));
  C10_CUDA_CHECK(cudaEventCreate(&ev.stop));
  run();  // warm-up: module loading, cudaFuncSetAttribute, first-touch
  C10_CUDA_CHECK(cudaEventRecord(ev.start, s));
  for (int i = 0; i < kTimingReps; ++i) run();
  C10_CUDA_CHECK(cudaEventRecord(ev.stop, s));
  C10_CUDA_CHECK(cudaEventSynchronize(ev.stop));
  float ms = 0.0f;
  C10_CUDA_CHECK(cudaEventElapsedTime(&ms, ev.start, ev.stop));
  return ms / kTimingReps;
}

// (device, dtype, gemm_m_bucket(M), C, Hd, tanh, backward) -> cuBLASLt (true) or mma (false).
using ChoiceKey = std::tuple<int, int, int64_t, int64_t, int64_t, bool, bool>;

constexpr int64_t kMBucketMin = 64;
constexpr int64_t kMBucketMax = int64_t{1} << 16;

// The row-count bucket of the auto cache: M <= 64 -> 64; else the next power of two >= M, at most
// 65536 (every M > 32768 shares the last bucket). Pure.
int64_t gemm_m_bucket(int64_t M) {
  int64_t b = kMBucketMin;
  while (b < M && b < kMBucketMax) b <<= 1;
  return b;
}

// The auto cache key of one call (pure): everything that fixes the GEMMs' N and K (C, Hd), the
// dtype, device, epilogue flavour and stage, and M only through its bucket.
ChoiceKey gemm_choice_key(int device, at::ScalarType dt, int64_t M, int64_t C, int64_t Hd, bool tanh_form,
                          bool backward) {
  return ChoiceKey{device, static_cast<int>(dt), gemm_m_bucket(M), C, Hd, tanh_form, backward};
}

std::mutex& choice_mutex() {
  static std::mutex mu;
  return mu;
}
std::map<ChoiceKey, bool>& choice_map() {
  static auto* m = new std::map<ChoiceKey, bool>();  // never destroyed (no exit-order issues)
  return *m;
}
std::optional<bool> cached_choice(const ChoiceKey& key) {
  std::lock_guard<std::mutex> lock(choice_mutex());
  const auto& m = choice_map();
  auto it = m.find(key);
  if (it == m.end()) return std::nullopt;
  return it->second;
}
void store_choice(const ChoiceKey& key, bool use_lt) {
  std::lock_guard<std::mutex> lock(choice_mutex());
  choice_map()[key] = use_lt;
}

#define PYGPT_LT_CHECK(EXPR)                                                                          \
  do {                                                                                                \
    const cublasStatus_t pygpt_lt_status_ = (EXPR);                                                   \
    TORCH_CHECK(pygpt_lt_status_ == CUBLAS_STATUS_SUCCESS, "pygpt.gelu_mlp (CUDA): cuBLASLt call ", \
                #EXPR, " failed with status ", static_cast<int>(pygpt_lt_status_));                  \
  } while (0)

cublasLtHandle_t lt_handle(int device) {
  static std::mutex mu;
  static auto* handles = new std::unordered_map<int, cublasLtHandle_t>();  // one per device, kept
  std::lock_guard<std::mutex> lock(mu);
  auto it = handles->find(device);
  if (it != handles->end()) return it->second;
  cublasLtHandle_t h = nullptr;
  PYGPT_LT_CHECK(cublasLtCreate(&h));
  handles->emplace(device, h);
  return h;
}

size_t lt_max_workspace(int cc) { return cc >= 90 ? (size_t{32} << 20) : (size_t{4} << 20); }

cudaDataType_t lt_dtype(at::ScalarType dt) { return dt == at::kHalf ? CUDA_R_16F : CUDA_R_16BF; }

// One planned column-major matmul D (m x n, ldd) = op(A) (m x k) . op(B) (k x n) + epilogue.
struct LtGemm {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, ld = nullptr;
  cublasLtMatmulHeuristicResult_t heur{};
  const void* a = nullptr;
  const void* b = nullptr;
  void* d = nullptr;
  LtGemm() = default;
  LtGemm(const LtGemm&) = delete;
  LtGemm& operator=(const LtGemm&) = delete;
  ~LtGemm() {
    if (ld != nullptr) (void)cublasLtMatrixLayoutDestroy(ld);
    if (lb != nullptr) (void)cublasLtMatrixLayoutDestroy(lb);
    if (la != nullptr) (void)cublasLtMatrixLayoutDestroy(la);
    if (op != nullptr) (void)cublasLtMatmulDescDestroy(op);
  }
};

struct LtPreference {
  cublasLtMatmulPreference_t p = nullptr;
  ~LtPreference() {
    if (p != nullptr) (void)cublasLtMatmulPreferenceDestroy(p);
  }
};

// Plans g; false (nothing runs) when cuBLASLt offers no algorithm for it.
bool lt_plan(LtGemm& g, cublasLtHandle_t h, cudaDataType_t dt, bool trans_a, bool trans_b, int64_t m, int64_t n,
             int64_t k, const void* a, int64_t lda, const void* b, int64_t ldb, void* d, int64_t ldd,
             cublasLtEpilogue_t epilogue, const void* bias, const void* aux, int64_t ld_aux, size_t max_ws) {
  PYGPT_LT_CHECK(cublasLtMatmulDescCreate(&g.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t ta = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t tb = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  PYGPT_LT_CHECK(cublasLtMatmulDescSetAttribute(g.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
  PYGPT_LT_CHECK(cublasLtMatmulDescSetAttribute(g.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
  PYGPT_LT_CHECK(cublasLtMatmulDescSetAttribute(g.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue)));
  if (bias != nullptr) {
    PYGPT_LT_CHECK(cublasLtMatmulDescSetAttribute(g.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
  }
  if (aux != nullptr) {
    PYGPT_LT_CHECK(
        cublasLtMatmulDescSetAttribute(g.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux, sizeof(aux)));
    PYGPT_LT_CHECK(
        cublasLtMatmulDescSetAttribute(g.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ld_aux, sizeof(ld_aux)));
  }
  // Layouts (rows, cols, ld) of the stored column-major matrices.
  PYGPT_LT_CHECK(cublasLtMatrixLayoutCreate(&g.la, dt, static_cast<uint64_t>(trans_a ? k : m),
                                            static_cast<uint64_t>(trans_a ? m : k), lda));
  PYGPT_LT_CHECK(cublasLtMatrixLayoutCreate(&g.lb, dt, static_cast<uint64_t>(trans_b ? n : k),
                                            static_cast<uint64_t>(trans_b ? k : n), ldb));
  PYGPT_LT_CHECK(
      cublasLtMatrixLayoutCreate(&g.ld, dt, static_cast<uint64_t>(m), static_cast<uint64_t>(n), ldd));

  LtPreference pref;
  PYGPT_LT_CHECK(cublasLtMatmulPreferenceCreate(&pref.p));
  const uint64_t ws = max_ws;
  PYGPT_LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref.p, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                                      sizeof(ws)));
  const uint32_t align = 16;  // every pointer is 16-byte aligned (contig_aligned / fresh allocations)
  for (auto attr : {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES}) {
    PYGPT_LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref.p, attr, &align, sizeof(align)));
  }
  int returned = 0;
  const cublasStatus_t st =
      cublasLtMatmulAlgoGetHeuristic(h, g.op, g.la, g.lb, g.ld, g.ld, pref.p, 1, &g.heur, &returned);
  if (st == CUBLAS_STATUS_NOT_SUPPORTED || (st == CUBLAS_STATUS_SUCCESS && returned == 0)) return false;
  PYGPT_LT_CHECK(st);
  g.a = a;
  g.b = b;
  g.d = d;
  return true;
}

void lt_run(const LtGemm& g, cublasLtHandle_t h, const at::Tensor& ws, cudaStream_t s) {
  const float alpha = 1.0f, beta = 0.0f;  // C = D, beta 0: C is not read
  PYGPT_LT_CHECK(cublasLtMatmul(h, g.op, &alpha, g.a, g.la, g.b, g.lb, &beta, g.d, g.ld, g.d, g.ld, &g.heur.algo,
                                ws.numel() > 0 ? ws.data_ptr() : nullptr, static_cast<size_t>(ws.numel()), s));
}

at::Tensor lt_workspace(std::initializer_list<const LtGemm*> gemms, const at::Tensor& like) {
  size_t need = 0;
  for (const LtGemm* g : gemms) need = std::max(need, g->heur.workspaceSize);
  return at::empty({static_cast<int64_t>(need)}, like.options().dtype(at::kByte));
}
#endif  // PYGPT_MLP_LT

// ---------------------------------------------------------------------------
// forward
// ---------------------------------------------------------------------------
struct Fwd {
  at::Tensor x2, wfc, bfc, wproj, bproj;  // contiguous, aligned; biases undefined when absent
  at::Tensor out, pre;                    // (M, C), (M, Hd) in x's dtype
  int64_t M, C, Hd;
  bool tanh_form;
};

// The hand-written GEMM's parameters for C (m x n, ldc) = A . B (operand layouts are template
// arguments of launch_mlp_gemm); epilogue inputs/outputs (bias, aux, act, colsum) are set by the caller.
mk::MlpGemmParams gemm_params(const void* a, int64_t lda, const void* b, int64_t ldb, void* c, int64_t ldc,
                              int64_t m, int64_t n, int64_t k, bool tanh_form) {
  mk::MlpGemmParams p{};
  p.a = a;
  p.lda = lda;
  p.b = b;
  p.ldb = ldb;
  p.c = c;
  p.ldc = ldc;
  p.m = static_cast<int>(m);
  p.n = static_cast<int>(n);
  p.k = static_cast<int>(k);
  p.gelu_tanh = tanh_form ? 1 : 0;
  return p;
}

template <typename T>
void fwd_mma(const Fwd& f, cudaStream_t s) {
  at::Tensor act = at::empty({f.M, f.Hd}, f.x2.options());
  // up: A[m][c] = x (K-major), B[c][h] = w_fc[h][c] (K-major); epilogue + b_fc, pre -> aux, gelu -> C
  mk::MlpGemmParams up = gemm_params(f.x2.data_ptr(), f.C, f.wfc.data_ptr(), f.C, act.data_ptr(), f.Hd,
                                     f.M, f.Hd, f.C, f.tanh_form);
  up.bias = opt_ptr(f.bfc);
  up.aux = f.pre.data_ptr();
  up.ld_aux = f.Hd;
  check_launch(mk::launch_mlp_gemm<T, true, true, mk::kEpiGeluAux>(up, s));

  // down: A[m][h] = act (K-major), B[h][c] = w_proj[c][h] (K-major); epilogue + b_proj
  mk::MlpGemmParams dn = gemm_params(act.data_ptr(), f.Hd, f.wproj.data_ptr(), f.Hd, f.out.data_ptr(), f.C,
                                     f.M, f.C, f.Hd, f.tanh_form);
  dn.bias = opt_ptr(f.bproj);
  check_launch(mk::launch_mlp_gemm<T, true, true, mk::kEpiStore>(dn, s));
}

#if PYGPT_MLP_LT
struct LtFwd {
  LtGemm up, down;
  at::Tensor act, ws;
};

// Column-major view: pre^T (Hd x M) = w_fc (Hd x C: w_fc's storage is col-major C x Hd, op T) .
// x^T (C x M: x's storage, op N); out^T (C x M) = w_proj (C x Hd: storage col-major Hd x C, op T) . act^T.
bool lt_fwd_plan(LtFwd& lt, cublasLtHandle_t h, const Fwd& f, at::ScalarType dt, int cc) {
  const cudaDataType_t ldt = lt_dtype(dt);
  const size_t max_ws = lt_max_workspace(cc);
  lt.act = at::empty({f.M, f.Hd}, f.x2.options());
  const bool bfc = f.bfc.defined(), bproj = f.bproj.defined();
  if (!lt_plan(lt.up, h, ldt, /*trans_a=*/true, /*trans_b=*/false, f.Hd, f.M, f.C, f.wfc.data_ptr(), f.C,
               f.x2.data_ptr(), f.C, lt.act.data_ptr(), f.Hd,
               bfc ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX, opt_ptr(f.bfc),
               f.pre.data_ptr(), f.Hd, max_ws)) {
    return false;
  }
  if (!lt_plan(lt.down, h, ldt, /*trans_a=*/true, /*trans_b=*/false, f.C, f.M, f.Hd, f.wproj.data_ptr(), f.Hd,
               lt.act.data_ptr(), f.Hd, f.out.data_ptr(), f.C,
               bproj ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT, opt_ptr(f.bproj), nullptr, 0,
               max_ws)) {
    return false;
  }
  lt.ws = lt_workspace({&lt.up, &lt.down}, f.x2);
  return true;
}

void lt_fwd_run(const LtFwd& lt, cublasLtHandle_t h, cudaStream_t s) {
  lt_run(lt.up, h, lt.ws, s);
  lt_run(lt.down, h, lt.ws, s);
}
#endif

// float32/float64 and the shapes mma cannot take: at::mm in the accumulation dtype + our passes.
std::tuple<at::Tensor, at::Tensor> fwd_aten(const at::Tensor& x2, const at::Tensor& w_fc,
                                            const std::optional<at::Tensor>& b_fc, const at::Tensor& w_proj,
                                            const std::optional<at::Tensor>& b_proj, bool tanh_form,
                                            cudaStream_t s) {
  const at::ScalarType dt = x2.scalar_type();
  const at::ScalarType acc = checks::acc_dtype(dt);
  const int64_t M = x2.size(0), Hd = w_fc.size(0);
  const at::Tensor xa = x2.to(acc);
  const at::Tensor wfca = w_fc.to(acc);
  const at::Tensor wproja = w_proj.to(acc);
  const at::Tensor bfca = b_fc.has_value() ? b_fc->to(acc).contiguous() : at::Tensor();
  at::Tensor pre_acc = at::mm(xa, wfca.t()).contiguous();  // (M, Hd), acc dtype
  at::Tensor pre = dt == acc ? pre_acc : at::empty({M, Hd}, x2.options());  // in place when dt == acc
  at::Tensor act = at::empty({M, Hd}, pre_acc.options());
  dispatch_all(dt, [&](auto ts, auto ta) {
    using T = typename decltype(ts)::type;
    using Acc = typename decltype(ta)::type;
    mk::launch_bias_gelu<Acc, T, Acc>(ptr<const Acc>(pre_acc), bfca.defined() ? ptr<const Acc>(bfca) : nullptr,
                                      ptr<T>(pre), ptr<Acc>(act), M, Hd, tanh_form, s);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  at::Tensor out = b_proj.has_value() ? at::addmm(b_proj->to(acc), act, wproja.t()) : at::mm(act, wproja.t());
  return {out.to(dt).contiguous(), pre};
}

std::tuple<at::Tensor, at::Tensor> gelu_mlp_fwd_cuda(const at::Tensor& x, const at::Tensor& w_fc,
                                                     const std::optional<at::Tensor>& b_fc,
                                                     const at::Tensor& w_proj,
                                                     const std::optional<at::Tensor>& b_proj,
                                                     c10::string_view approximate) {
  checks::check_gelu_mlp_fwd_inputs(x, w_fc, b_fc, w_proj, b_proj, approximate);
  TORCH_CHECK(x.is_cuda(), kOpFwd, ": the CUDA kernel got x on ", x.device(), "; expected a CUDA tensor");
  const GemmMode mode = gemm_mode_from_env(kOpFwd);
  const c10::cuda::CUDAGuard guard(x.device());
  const bool tanh_form = approximate == "tanh";
  const at::ScalarType dt = x.scalar_type();
  const int64_t C = x.size(-1);
  const int64_t Hd = w_fc.size(0);
  const int64_t M = rows_of(x);
  std::vector<int64_t> pre_shape(x.sizes().begin(), x.sizes().end());
  pre_shape.back() = Hd;
  if (M == 0) return {at::empty(x.sizes(), x.options()), at::empty(pre_shape, x.options())};

  const int device = x.get_device();
  const int cc = compute_capability(device);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(device)).stream();
  const at::Tensor x2 = x.reshape({M, C});

  if (!mma_shape_ok(dt, M, C, Hd, cc)) {
    auto [out, pre] = fwd_aten(x2.contiguous(), w_fc, b_fc, w_proj, b_proj, tanh_form, stream);
    return {out.reshape(x.sizes()), pre.reshape(pre_shape)};
  }

  Fwd f;
  f.x2 = contig_aligned(x2);
  f.wfc = contig_aligned(w_fc);
  f.wproj = contig_aligned(w_proj);
  if (b_fc.has_value()) f.bfc = contig_aligned(*b_fc);
  if (b_proj.has_value()) f.bproj = contig_aligned(*b_proj);
  f.out = at::empty({M, C}, x.options());
  f.pre = at::empty({M, Hd}, x.options());
  f.M = M;
  f.C = C;
  f.Hd = Hd;
  f.tanh_form = tanh_form;
  auto run_mma = [&] { dispatch_half(dt, [&](auto ts) { fwd_mma<typename decltype(ts)::type>(f, stream); }); };

  bool done = false;
#if PYGPT_MLP_LT
  if (mode != GemmMode::kMma && tanh_form) {  // cuBLASLt's GELU is the tanh form only
    const ChoiceKey key = gemm_choice_key(device, dt, M, C, Hd, tanh_form, /*backward=*/false);
    const std::optional<bool> cached = mode == GemmMode::kAuto ? cached_choice(key) : std::nullopt;
    if (!cached.has_value() || *cached) {
      const cublasLtHandle_t h = lt_handle(device);
      LtFwd lt;
      if (lt_fwd_plan(lt, h, f, dt, cc)) {
        auto run_lt = [&] { lt_fwd_run(lt, h, stream); };
        if (mode == GemmMode::kLt || cached.has_value() || stream_capturing(stream)) {
          run_lt();  // forced, decided, or under graph capture (no timing, nothing cached)
        } else {
          const float t_mma = time_ms(stream, run_mma);
          const float t_lt = time_ms(stream, run_lt);  // runs last: its outputs stand if it wins
          store_choice(key, t_lt < t_mma);
          if (!(t_lt < t_mma)) run_mma();
        }
        done = true;
      } else if (mode == GemmMode::kAuto) {
        store_choice(key, false);  // no cuBLASLt algorithm for this shape
      }
    }
  }
#else
  (void)mode;  // built without cuBLASLt: the hand-written GEMM is the only GEMM path
#endif
  if (!done) run_mma();
  return {f.out.reshape(x.sizes()), f.pre.reshape(pre_shape)};
}

// ---------------------------------------------------------------------------
// backward
// ---------------------------------------------------------------------------
struct Bwd {
  at::Tensor go2, x2, pre2, wfc, wproj;   // contiguous, aligned, x's dtype
  at::Tensor dpre, act;                   // (M, Hd) scratch, x's dtype
  at::Tensor dx, dwfc, dbfc, dwproj;      // outputs, x's dtype (db_proj is computed outside)
  int64_t M, C, Hd;
  bool tanh_form;
  int splitk_forced;  // PYGPT_GEMM_SPLITK: 0 = automatic
  int device;
};

// Split-K slices of the weight-gradient GEMMs (m x n, K = tokens): forced, or the automatic rule.
template <typename T>
int wgrad_splits(const Bwd& b, int64_t m, int64_t n) {
  if (b.splitk_forced > 0) return b.splitk_forced;
  return mk::splitk_slices_auto(m, n, b.M, gemm_slots<T>(b.device));
}

template <typename T>
void bwd_mma(const Bwd& b, cudaStream_t s) {
  const int64_t tiles_m = (b.M + mk::kBM - 1) / mk::kBM;
  at::Tensor partial = at::empty({tiles_m, b.Hd}, b.go2.options().dtype(at::kFloat));

  // dpre = (dout . w_proj) * gelu'(pre), act = gelu(pre), partial column sums of dpre.
  // A[m][c] = dout (K-major), B[c][h] = w_proj[c][h] (N-major).
  mk::MlpGemmParams p1 = gemm_params(b.go2.data_ptr(), b.C, b.wproj.data_ptr(), b.Hd, b.dpre.data_ptr(), b.Hd,
                                     b.M, b.Hd, b.C, b.tanh_form);
  p1.aux = b.pre2.data_ptr();
  p1.ld_aux = b.Hd;
  p1.act = b.act.data_ptr();
  p1.ld_act = b.Hd;
  p1.colsum = ptr<float>(partial);
  check_launch(mk::launch_mlp_gemm<T, true, false, mk::kEpiDGelu>(p1, s));

  // Split-K: one fp32 workspace for both weight gradients (run one after the other on s).
  const int s_proj = wgrad_splits<T>(b, b.C, b.Hd);
  const int s_fc = wgrad_splits<T>(b, b.Hd, b.C);
  const int64_t ws_n =
      std::max(mk::splitk_workspace_floats(b.C, b.Hd, s_proj), mk::splitk_workspace_floats(b.Hd, b.C, s_fc));
  at::Tensor ws = ws_n > 0 ? at::empty({ws_n}, b.go2.options().dtype(at::kFloat)) : at::Tensor();
  float* const wsp = ws_n > 0 ? ptr<float>(ws) : nullptr;

  // dW_proj (C, Hd) = dout^T . act: A[c][m] = dout[m][c] (M-major), B[m][h] = act (N-major), K = tokens.
  check_launch(mk::launch_mlp_gemm_splitk<T, false, false>(
      gemm_params(b.go2.data_ptr(), b.C, b.act.data_ptr(), b.Hd, b.dwproj.data_ptr(), b.Hd, b.C, b.Hd, b.M,
                  b.tanh_form), s_proj, wsp, s));

  // dW_fc (Hd, C) = dpre^T . x: A[h][m] = dpre[m][h] (M-major), B[m][c] = x (N-major).
  check_launch(mk::launch_mlp_gemm_splitk<T, false, false>(
      gemm_params(b.dpre.data_ptr(), b.Hd, b.x2.data_ptr(), b.C, b.dwfc.data_ptr(), b.C, b.Hd, b.C, b.M,
                  b.tanh_form), s_fc, wsp, s));

  // dx (M, C) = dpre . w_fc: A[m][h] = dpre (K-major), B[h][c] = w_fc[h][c] (N-major).
  check_launch(mk::launch_mlp_gemm<T, true, false, mk::kEpiStore>(
      gemm_params(b.dpre.data_ptr(), b.Hd, b.wfc.data_ptr(), b.C, b.dx.data_ptr(), b.C, b.M, b.C, b.Hd,
                  b.tanh_form), s));

  // db_fc: the [tiles_m, Hd] partials summed over tiles (fixed order), rounded into x's dtype.
  static const int64_t kDim0[] = {0};
  b.dbfc.copy_(at::sum(partial, at::IntArrayRef(kDim0)));
}

#if PYGPT_MLP_LT
struct LtBwd {
  LtGemm dgelu, dwproj, dwfc, dx;
  at::Tensor ws;
};

bool lt_bwd_plan(LtBwd& lt, cublasLtHandle_t h, const Bwd& b, at::ScalarType dt, int cc) {
  const cudaDataType_t ldt = lt_dtype(dt);
  const size_t max_ws = lt_max_workspace(cc);
  // dpre^T (Hd x M) = w_proj^T (storage of w_proj is col-major Hd x C, op N) . dout^T (C x M, op N);
  // DGELU with aux = pre^T (ld Hd), bias gradient (length Hd = rows of D) into db_fc.
  if (!lt_plan(lt.dgelu, h, ldt, false, false, b.Hd, b.M, b.C, b.wproj.data_ptr(), b.Hd, b.go2.data_ptr(), b.C,
               b.dpre.data_ptr(), b.Hd, CUBLASLT_EPILOGUE_DGELU_BGRAD, b.dbfc.data_ptr(), b.pre2.data_ptr(), b.Hd,
               max_ws)) {
    return false;
  }
  // dW_proj^T (Hd x C, col-major = dW_proj row-major C x Hd) = act^T (Hd x M, op N) . dout (M x C: dout^T
  // storage C x M, op T).
  if (!lt_plan(lt.dwproj, h, ldt, false, true, b.Hd, b.C, b.M, b.act.data_ptr(), b.Hd, b.go2.data_ptr(), b.C,
               b.dwproj.data_ptr(), b.Hd, CUBLASLT_EPILOGUE_DEFAULT, nullptr, nullptr, 0, max_ws)) {
    return false;
  }
  // dW_fc^T (C x Hd) = x^T (C x M, op N) . dpre (M x Hd: storage Hd x M, op T).
  if (!lt_plan(lt.dwfc, h, ldt, false, true, b.C, b.Hd, b.M, b.x2.data_ptr(), b.C, b.dpre.data_ptr(), b.Hd,
               b.dwfc.data_ptr(), b.C, CUBLASLT_EPILOGUE_DEFAULT, nullptr, nullptr, 0, max_ws)) {
    return false;
  }
  // dx^T (C x M) = w_fc^T (storage of w_fc is col-major C x Hd, op N) . dpre^T (Hd x M, op N).
  if (!lt_plan(lt.dx, h, ldt, false, false, b.C, b.M, b.Hd, b.wfc.data_ptr(), b.C, b.dpre.data_ptr(), b.Hd,
               b.dx.data_ptr(), b.C, CUBLASLT_EPILOGUE_DEFAULT, nullptr, nullptr, 0, max_ws)) {
    return false;
  }
  lt.ws = lt_workspace({&lt.dgelu, &lt.dwproj, &lt.dwfc, &lt.dx}, b.x2);
  return true;
}

template <typename T>
void lt_bwd_run(const LtBwd& lt, cublasLtHandle_t h, const Bwd& b, cudaStream_t s) {
  lt_run(lt.dgelu, h, lt.ws, s);
  // act = gelu(pre) for dW_proj (cuBLASLt's backward epilogue does not produce it).
  mk::launch_bias_gelu<T, T, T>(ptr<const T>(b.pre2), nullptr, nullptr, ptr<T>(b.act), b.M, b.Hd, b.tanh_form, s);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  lt_run(lt.dwproj, h, lt.ws, s);
  lt_run(lt.dwfc, h, lt.ws, s);
  lt_run(lt.dx, h, lt.ws, s);
}
#endif

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> bwd_aten(
    const at::Tensor& go2, const at::Tensor& x2, const at::Tensor& pre2, const at::Tensor& w_fc,
    const at::Tensor& w_proj, bool tanh_form, cudaStream_t s) {
  const at::ScalarType dt = x2.scalar_type();
  const at::ScalarType acc = checks::acc_dtype(dt);
  const int64_t M = x2.size(0), Hd = w_fc.size(0);
  const at::Tensor xa = x2.to(acc);
  const at::Tensor goa = go2.to(acc);
  const at::Tensor wfca = w_fc.to(acc);
  const at::Tensor wproja = w_proj.to(acc);
  at::Tensor dpre = at::mm(goa, wproja).contiguous();  // dact, (M, Hd), becomes dpre in place
  at::Tensor act = at::empty({M, Hd}, dpre.options());
  dispatch_all(dt, [&](auto ts, auto ta) {
    using T = typename decltype(ts)::type;
    using Acc = typename decltype(ta)::type;
    mk::launch_dgelu<T, Acc>(ptr<Acc>(dpre), ptr<const T>(pre2), ptr<Acc>(act), M, Hd, tanh_form, s);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  static const int64_t kDim0[] = {0};
  at::Tensor dwproj = at::mm(goa.t(), act);
  at::Tensor dwfc = at::mm(dpre.t(), xa);
  at::Tensor dx = at::mm(dpre, wfca);
  at::Tensor dbfc = at::sum(dpre, at::IntArrayRef(kDim0));
  at::Tensor dbproj = at::sum(goa, at::IntArrayRef(kDim0));
  return {dx.to(dt).contiguous(), dwfc.to(dt).contiguous(), dbfc.to(dt), dwproj.to(dt).contiguous(),
          dbproj.to(dt)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gelu_mlp_bwd_cuda(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& pre, const at::Tensor& w_fc,
    const at::Tensor& w_proj, c10::string_view approximate) {
  checks::check_gelu_mlp_bwd_inputs(grad_out, x, pre, w_fc, w_proj, approximate);
  TORCH_CHECK(x.is_cuda(), kOpBwd, ": the CUDA kernel got x on ", x.device(), "; expected a CUDA tensor");
  const GemmMode mode = gemm_mode_from_env(kOpBwd);
  const int splitk_forced = splitk_from_env(kOpBwd);
  const c10::cuda::CUDAGuard guard(x.device());
  const bool tanh_form = approximate == "tanh";
  const at::ScalarType dt = x.scalar_type();
  const int64_t C = x.size(-1);
  const int64_t Hd = w_fc.size(0);
  const int64_t M = rows_of(x);
  if (M == 0) {
    return {at::empty(x.sizes(), x.options()), at::zeros({Hd, C}, x.options()), at::zeros({Hd}, x.options()),
            at::zeros({C, Hd}, x.options()), at::zeros({C}, x.options())};
  }
  const int device = x.get_device();
  const int cc = compute_capability(device);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(device)).stream();
  const at::Tensor x2 = x.reshape({M, C});
  const at::Tensor go2 = grad_out.reshape({M, C});
  const at::Tensor pre2 = pre.reshape({M, Hd});

  if (!mma_shape_ok(dt, M, C, Hd, cc)) {
    auto [dx, dwfc, dbfc, dwproj, dbproj] =
        bwd_aten(go2.contiguous(), x2.contiguous(), pre2.contiguous(), w_fc, w_proj, tanh_form, stream);
    return {dx.reshape(x.sizes()), dwfc, dbfc, dwproj, dbproj};
  }

  Bwd b;
  b.go2 = contig_aligned(go2);
  b.x2 = contig_aligned(x2);
  b.pre2 = contig_aligned(pre2);
  b.wfc = contig_aligned(w_fc);
  b.wproj = contig_aligned(w_proj);
  b.dpre = at::empty({M, Hd}, x.options());
  b.act = at::empty({M, Hd}, x.options());
  b.dx = at::empty({M, C}, x.options());
  b.dwfc = at::empty({Hd, C}, x.options());
  b.dbfc = at::empty({Hd}, x.options());
  b.dwproj = at::empty({C, Hd}, x.options());
  b.M = M;
  b.C = C;
  b.Hd = Hd;
  b.tanh_form = tanh_form;
  b.splitk_forced = splitk_forced;
  b.device = device;
  auto run_mma = [&] { dispatch_half(dt, [&](auto ts) { bwd_mma<typename decltype(ts)::type>(b, stream); }); };

  bool done = false;
#if PYGPT_MLP_LT
  if (mode != GemmMode::kMma && tanh_form) {
    const ChoiceKey key = gemm_choice_key(device, dt, M, C, Hd, tanh_form, /*backward=*/true);
    const std::optional<bool> cached = mode == GemmMode::kAuto ? cached_choice(key) : std::nullopt;
    if (!cached.has_value() || *cached) {
      const cublasLtHandle_t h = lt_handle(device);
      LtBwd lt;
      if (lt_bwd_plan(lt, h, b, dt, cc)) {
        auto run_lt = [&] {
          dispatch_half(dt, [&](auto ts) { lt_bwd_run<typename decltype(ts)::type>(lt, h, b, stream); });
        };
        if (mode == GemmMode::kLt || cached.has_value() || stream_capturing(stream)) {
          run_lt();
        } else {
          const float t_mma = time_ms(stream, run_mma);
          const float t_lt = time_ms(stream, run_lt);
          store_choice(key, t_lt < t_mma);
          if (!(t_lt < t_mma)) run_mma();
        }
        done = true;
      } else if (mode == GemmMode::kAuto) {
        store_choice(key, false);
      }
    }
  }
#else
  (void)mode;
#endif
  if (!done) run_mma();
  static const int64_t kDim0[] = {0};
  at::Tensor dbproj = at::sum(b.go2, at::IntArrayRef(kDim0), /*keepdim=*/false, at::kFloat).to(dt);
  return {b.dx.reshape(x.sizes()), b.dwfc, b.dbfc, b.dwproj, dbproj};
}

}  // namespace
}  // namespace pygpt

TORCH_LIBRARY_IMPL(pygpt, CUDA, m) {
  m.impl("gelu_mlp_fwd", &pygpt::gelu_mlp_fwd_cuda);
  m.impl("gelu_mlp_bwd", &pygpt::gelu_mlp_bwd_cuda);
}
