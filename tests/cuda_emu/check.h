// Helpers shared by tests/cuda_emu/test_<op>.cpp: element types, device buffers, random data,
// error measurement against float64 references and the one-line-per-case report.
#pragma once
#include "emu.h"

#include <chrono>
#include <cinttypes>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace emu_test {

// ---- element types ----
template <typename T>
struct Ty;
template <>
struct Ty<float> {
  static const char* name() { return "f32"; }
  static double to_d(float v) { return v; }
  static float from_d(double v) { return static_cast<float>(v); }
};
template <>
struct Ty<double> {
  static const char* name() { return "f64"; }
  static double to_d(double v) { return v; }
  static double from_d(double v) { return v; }
};
template <>
struct Ty<__half> {
  static const char* name() { return "f16"; }
  static double to_d(__half v) { return __half2float(v); }
  static __half from_d(double v) { return __float2half_rn(static_cast<float>(v)); }
};
template <>
struct Ty<__nv_bfloat16> {
  static const char* name() { return "bf16"; }
  static double to_d(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __nv_bfloat16 from_d(double v) { return __float2bfloat16_rn(static_cast<float>(v)); }
};
template <typename T>
double dbl(T v) {
  return Ty<T>::to_d(v);
}
template <typename T>
T fromD(double v) {
  return Ty<T>::from_d(v);
}

// ---- device buffers (NaN-poisoned, red zones) ----
template <typename T>
struct Buf {
  T* p = nullptr;
  size_t n = 0;
  int offset = 0;  // elements past the 256-byte aligned allocation start (misalignment tests)
  Buf() = default;
  explicit Buf(size_t count, int off = 0) : n(count), offset(off) {
    p = static_cast<T*>(pygpt_emu::dev_alloc((count + static_cast<size_t>(off)) * sizeof(T))) + off;
  }
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
  Buf(Buf&& o) noexcept : p(o.p), n(o.n), offset(o.offset) { o.p = nullptr; }
  Buf& operator=(Buf&& o) noexcept {
    std::swap(p, o.p);
    std::swap(n, o.n);
    std::swap(offset, o.offset);
    return *this;
  }
  ~Buf() {
    if (p != nullptr) pygpt_emu::dev_free(p - offset);
  }
  void poison() { std::memset(static_cast<void*>(p), 0xff, n * sizeof(T)); }  // NaN in every float format
  T& operator[](size_t i) { return p[i]; }
  const T& operator[](size_t i) const { return p[i]; }
};

// ---- error measurement ----
// max |value - reference| over the elements, and the scale it is measured against
struct Err {
  double max_abs = 0.0;  // max |v - ref|
  double scale = 0.0;    // max |ref| (or a caller-provided scale)
  long nonfinite = 0;
  long count = 0;
  void add(double v, double ref) {
    ++count;
    if (!std::isfinite(v)) {
      ++nonfinite;
      return;
    }
    max_abs = std::max(max_abs, std::fabs(v - ref));
    scale = std::max(scale, std::fabs(ref));
  }
  // relative max error: max |v - ref| / max |ref| (NaN/inf anywhere: +inf)
  double rel() const {
    if (nonfinite > 0) return INFINITY;
    return scale > 0 ? max_abs / scale : max_abs;
  }
};

// ---- cases ----
struct Suite {
  long cases = 0, failures = 0;
  std::chrono::steady_clock::time_point t0 = std::chrono::steady_clock::now();
  std::string line;
  bool ok = true;
  void begin(const char* fmt, ...) __attribute__((format(printf, 2, 3))) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    line = buf;
    ok = true;
    ++cases;
  }
  // one measured error against its tolerance
  void check(const char* what, const Err& e, double tol) {
    const double r = e.rel();
    char buf[160];
    if (e.nonfinite > 0) {
      std::snprintf(buf, sizeof(buf), " %s=NONFINITE(%ld/%ld)", what, e.nonfinite, e.count);
    } else {
      std::snprintf(buf, sizeof(buf), " %s=%.2e", what, r);
    }
    line += buf;
    if (!(r <= tol) || e.count == 0) {
      ok = false;
      std::snprintf(buf, sizeof(buf), "[>%.1e]", tol);
      line += buf;
    }
  }
  void require(const char* what, bool cond) {
    if (!cond) {
      ok = false;
      line += " FAILED:";
      line += what;
    }
  }
  void end() {
    if (!ok) ++failures;
    std::printf("%s %s\n", ok ? "ok  " : "FAIL", line.c_str());
    std::fflush(stdout);
    static const long maxfail = std::getenv("PYGPT_EMU_MAXFAIL") ? std::atol(std::getenv("PYGPT_EMU_MAXFAIL")) : 0;
    if (maxfail > 0 && failures >= maxfail) {  // stop early (mutation testing)
      std::printf("stopping after %ld failure(s) (PYGPT_EMU_MAXFAIL)\n", failures);
      std::exit(1);
    }
  }
  int finish(const char* op) {
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const pygpt_emu::Stats& st = pygpt_emu::stats();
    std::printf("%s: %ld cases, %ld failures, %.1f s (%ld launches, %ld blocks, %ld threads, %ld warp collectives, "
                "%ld mma)\n",
                op, cases, failures, s, st.launches, st.blocks, st.threads, st.collectives, st.mmas);
    return failures == 0 ? 0 : 1;
  }
};

// cudaGetLastError after a launch helper, as C10_CUDA_KERNEL_LAUNCH_CHECK does
inline bool launch_ok(cudaError_t setup) {
  const cudaError_t e = cudaGetLastError();
  return setup == cudaSuccess && e == cudaSuccess;
}

}  // namespace emu_test
