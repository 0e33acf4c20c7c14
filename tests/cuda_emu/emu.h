// ===========================================================================
// A host (CPU) emulator of the CUDA subset used by kernels/*.cuh, so that their
// REAL device code runs in CI, where there is no GPU (tests/test_cuda_emulation.py).
// ===========================================================================
//
// Usage: compile a host C++17 file with g++ -DPYGPT_CUDA_EMULATION -ffp-contract=off
// -fno-strict-aliasing -fno-extern-tls-init (tests/test_cuda_emulation.py has the full
// command), include THIS header first, then PYGPT_EMU_DYNAMIC_SMEM(...) for the header's
// dynamic shared memory, then the unmodified kernels/<op>.cuh, and call the header's host
// launch helpers on memory from pygpt_emu::dev_alloc. Link tests/cuda_emu/emu.cpp
// (Linux: ELF TLS, dl_iterate_phdr, mmap). The .cuh files carry
// two kinds of hooks, nothing else: their PTX wrappers call the pygpt_emu:: functions
// below under #ifdef PYGPT_CUDA_EMULATION, and their launches are written
// PYGPT_LAUNCH(grid, block, smem, stream, kernel)(args...), which each .cuh defines as
// kernel<<<grid, block, smem, stream>>>(args...) unless this header defined it first.
//
// How each CUDA feature is modelled
//   threads      one fiber (own stack, hand-written context switch on x86-64, ucontext
//                elsewhere) per CUDA thread of ONE block; the blocks of a grid run one
//                after the other. Fibers switch only inside the emulator (barriers and
//                warp collectives), in an order picked by a seeded random scheduler
//                (PYGPT_EMU_SEED): each block either interleaves random lanes of random warps
//                (warps advance together) or runs one warp as far as it can before the next
//                (maximal skew between barriers); PYGPT_EMU_SCHED=fifo: warps in turn.
//   threadIdx... macros reading the current fiber (threadIdx) and the block's globals.
//   __syncthreads  a real block barrier over all threads of the block. A thread that exits
//                while others wait at a barrier aborts; a state where no fiber can run (e.g.
//                a barrier some thread never reaches) is reported as a deadlock with each
//                thread's position. (Call sites are not compared: g++ legitimately
//                duplicates a barrier into both arms of a branch, which nvcc never does.)
//   warp collectives (__shfl*_sync, __syncwarp, ldmatrix, mma): each lane deposits its
//                operands in its warp's slots and blocks; the 32nd arrival checks that all
//                32 lanes called the SAME collective, computes every lane's result from all
//                deposits and releases the warp. A lane that exits, or calls another
//                collective or __syncthreads while lanes of its warp wait in a collective
//                (or the reverse) aborts ("DIVERGENCE"). Only full masks (0xffffffff).
//   mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}: per PTX ISA fragment layouts (see
//                emu.cpp); D = C + sum_k A*B with the 16 products of 16-bit inputs exact,
//                summed in double and rounded once to fp32 per k16 step.
//   ldmatrix.sync.aligned.m8n8.x4(.trans).shared.b16: lanes 8i..8i+7 give matrix i's row
//                addresses (16-byte aligned, checked, in bounds); lane l receives row l>>2,
//                columns 2(l&3),+1 (.trans: rows 2(l&3),+1 of column l>>2).
//   cp.async.cg.shared.global 16 (+ src-size): the 16 source bytes (src-size of them, the
//                rest zero) are read at issue from a registered device allocation (bounds
//                and 16-byte alignment checked); the destination is POISONED (0xff) at
//                issue and written only when this thread's cp.async.wait_group retires the
//                group. So a read of a tile before the wait (or before the barrier that
//                publishes other threads' copies) sees NaNs: a missing or too-weak wait, or
//                a prefetch into a buffer another warp still reads, shows up in the outputs
//                -- when the scheduler happens to order the fibers that way.
//   __shared__   thread_local (all fibers of a block run on one OS thread, so one instance
//                per kernel instantiation is shared by the block); extern __shared__
//                dynamic memory is a per-op arena defined with PYGPT_EMU_DYNAMIC_SMEM. The
//                executable's whole TLS block (all __shared__ arrays + the arenas) is filled
//                with 0xff bytes (NaN in every float format) before every block, and the
//                arena bytes past the launch's dynamic smem size must still hold it after
//                the block (out-of-bounds smem writes abort).
//   __cvta_generic_to_shared  offset in that TLS block (32-bit); ldmatrix/cp.async
//                addresses are mapped back and bounds-checked against the launch's smem.
//   ex2.approx.ftz.f32  exact exp2 rounded to fp32, denormal inputs and results flushed to 0.
//   launch       checks the configuration like the runtime (block <= 1024 threads, a
//                multiple of 32 here; grid dims; dynamic smem <= 48 KiB unless raised by
//                cudaFuncSetAttribute for that kernel, <= 227 KiB), records
//                cudaErrorInvalidValue / InvalidConfiguration for cudaGetLastError, copies
//                the arguments once (as kernel parameters), runs the grid synchronously,
//                then checks the poisoned gaps around every dev_alloc buffer.
//   global memory  dev_alloc buffers sit between guard pages: an out-of-bounds load or store
//                that leaves the buffer's last/first page faults, and the SIGSEGV handler
//                names the buffer, the distance and the kernel/block/thread; smaller overruns
//                land in 0xff-poisoned gaps (NaN reads, writes detected after the launch).
//                (A misaligned uint4 access usually faults too, x86's aligned SSE moves.)
//   runtime      cudaGetLastError/PeekAtLastError, cudaFuncSetAttribute,
//                cudaDeviceGetAttribute/cudaGetDeviceProperties (an H100: sm_90, 132 SMs,
//                227 KiB opt-in smem), cudaOccupancyMaxActiveBlocksPerMultiprocessor
//                (threads-limited estimate: min(2048 / threads, 32)).
//   intrinsics   __fmul_rn/__dmul_rn (no contraction: build with -ffp-contract=off),
//                __fdividef, __expf, rsqrtf, __int_as_float..., min/max; cuda_fp16.h and
//                cuda_bf16.h supply their own host conversions.
// What this does NOT model (see tests/test_cuda_emulation.py): real warp scheduling and
// timing, the memory model (no race detector; races only show when the scheduler happens to
// expose them), bank conflicts, register limits, asynchronous completion of cp.async
// relative to other threads beyond the rules above, PTX semantics beyond our reading of the
// ISA, the exact rounding of the tensor cores and MUFU; speed means nothing.
#pragma once
#define PYGPT_CUDA_EMU_H 1

#ifndef PYGPT_CUDA_EMULATION
#error "tests/cuda_emu/emu.h: compile with -DPYGPT_CUDA_EMULATION"
#endif
#ifdef __CUDACC__
#error "tests/cuda_emu/emu.h is for host compilers (g++/clang++), not nvcc"
#endif

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <math.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

// ---- CUDA qualifiers: no-ops on the host, except __shared__ (see above) ----
#undef __global__
#undef __device__
#undef __host__
#undef __forceinline__
#undef __noinline__
#undef __launch_bounds__
#undef __shared__
#undef __constant__
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __shared__ thread_local
#define __constant__ static

namespace pygpt_emu {

// ---- per-thread state (opaque outside emu.cpp except tid) ----
struct ThreadView {
  uint3 tid;
};
extern ThreadView* g_cur;  // the running CUDA thread
extern uint3 g_blockIdx;
extern dim3 g_blockDim, g_gridDim;

// ---- block / warp synchronisation and collectives ----
void syncthreads();
void syncwarp(unsigned mask);
uint64_t shfl(int kind, unsigned mask, uint64_t bits, int arg, int width);
enum ShflKind { kShflIdx = 0, kShflXor = 1, kShflDown = 2, kShflUp = 3 };

// PTX emulation (called from the PTX wrappers of kernels/*.cuh)
void mma_m16n8k16_f16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
void mma_m16n8k16_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
template <typename T>
inline void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<T, __half>) {
    mma_m16n8k16_f16(d, a, b0, b1);
  } else {
    static_assert(std::is_same_v<T, __nv_bfloat16>, "mma_m16n8k16: __half or __nv_bfloat16");
    mma_m16n8k16_bf16(d, a, b0, b1);
  }
}
void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr, bool trans);
void cp_async_cg_16(uint32_t dst, const void* src, int src_size);
void cp_async_commit();
void cp_async_wait(int n);
float ex2_approx_ftz(float x);
size_t cvta_generic_to_shared(const void* p);
[[noreturn]] void trap();

// ---- device memory: 16-byte aligned, 0xff-poisoned (NaN), ending at a page boundary between two
// inaccessible guard pages (out-of-bounds loads/stores fault and are reported with the faulting
// kernel/thread); the rounding gaps are checked after every launch ----
void* dev_alloc(size_t bytes);
void dev_free(void* p);
template <typename T>
T* dev_alloc_n(size_t n) {
  return static_cast<T*>(dev_alloc(n * sizeof(T)));
}
void check_red_zones(const char* when);

// ---- dynamic shared memory arenas (PYGPT_EMU_DYNAMIC_SMEM) ----
constexpr size_t kArenaBytes = 232448;  // 227 KiB: an H100's opt-in maximum per block
struct ArenaRegistration {
  ArenaRegistration(void* base, size_t bytes, const char* name);
};

// ---- launch ----
using Body = void (*)(void* ctx);
void run_grid(const void* kernel, const char* name, const char* launcher, dim3 grid, dim3 block, size_t smem,
              Body body, void* ctx);

template <typename... KA>
struct Launch {
  void (*kernel)(KA...);
  const char* name;      // the kernel expression at the launch
  const char* launcher;  // the function that launches it (__PRETTY_FUNCTION__)
  dim3 grid, block;
  size_t smem;
  template <typename... A>
  void operator()(A&&... a) const {
    static_assert(sizeof...(A) == sizeof...(KA), "kernel launched with the wrong number of arguments");
    struct Ctx {
      void (*k)(KA...);
      std::tuple<std::decay_t<KA>...> params;  // the kernel parameters, copied once as by the runtime
    };
    Ctx c{kernel, std::tuple<std::decay_t<KA>...>(std::forward<A>(a)...)};
    run_grid(reinterpret_cast<const void*>(kernel), name, launcher, grid, block, smem,
             [](void* p) {
               Ctx* cx = static_cast<Ctx*>(p);
               std::apply(cx->k, cx->params);  // each CUDA thread gets its own by-value copies
             },
             &c);
  }
};

template <typename... KA>
Launch<KA...> launch(dim3 grid, dim3 block, size_t smem, cudaStream_t, const char* name, const char* launcher,
                     void (*kernel)(KA...)) {
  return Launch<KA...>{kernel, name, launcher, grid, block, smem};
}

// ---- statistics / configuration ----
struct Stats {
  long launches = 0, blocks = 0, threads = 0, collectives = 0, mmas = 0, switches = 0;
};
const Stats& stats();

}  // namespace pygpt_emu

#define PYGPT_LAUNCH(grid, block, smem, stream, ...) \
  ::pygpt_emu::launch(grid, block, smem, stream, #__VA_ARGS__, __PRETTY_FUNCTION__, __VA_ARGS__)

// Defines the thread_local arena that a header's `extern __shared__ TYPE NAME[];` refers to
// (NS: the header's namespace, e.g. pygpt::attn), registered with the emulator. Use it at file
// scope BEFORE including the kernel header: g++ then knows the variable needs no dynamic
// initialisation (else it calls a TLS wrapper function that is never emitted).
#define PYGPT_EMU_DYNAMIC_SMEM(NS, TYPE, NAME)                                                     \
  namespace NS {                                                                                   \
  alignas(128) thread_local TYPE NAME[::pygpt_emu::kArenaBytes / sizeof(TYPE)];                     \
  }                                                                                                \
  static ::pygpt_emu::ArenaRegistration pygpt_emu_arena_##NAME(static_cast<void*>(&NS::NAME[0]), \
                                                               ::pygpt_emu::kArenaBytes, #NS "::" #NAME)

// ---- built-in variables ----
#define threadIdx (::pygpt_emu::g_cur->tid)
#define blockIdx (::pygpt_emu::g_blockIdx)
#define blockDim (::pygpt_emu::g_blockDim)
#define gridDim (::pygpt_emu::g_gridDim)

// ---- runtime C++ API overloads that cuda_runtime.h only declares under nvcc ----
template <class T>
inline cudaError_t cudaFuncSetAttribute(T* func, enum cudaFuncAttribute attr, int value) {
  return ::cudaFuncSetAttribute(reinterpret_cast<const void*>(func), attr, value);
}

// ---- device functions and intrinsics used by the kernels ----
inline void __syncthreads() { ::pygpt_emu::syncthreads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { ::pygpt_emu::syncwarp(mask); }

namespace pygpt_emu {
template <typename T>
inline uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "shuffle of a type > 8 bytes");
  uint64_t u = 0;
  std::memcpy(&u, &v, sizeof(T));
  return u;
}
template <typename T>
inline T from_bits(uint64_t u) {
  T v;
  std::memcpy(&v, &u, sizeof(T));
  return v;
}
}  // namespace pygpt_emu

template <typename T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  return ::pygpt_emu::from_bits<T>(
      ::pygpt_emu::shfl(::pygpt_emu::kShflIdx, mask, ::pygpt_emu::to_bits(v), src, width));
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  return ::pygpt_emu::from_bits<T>(
      ::pygpt_emu::shfl(::pygpt_emu::kShflXor, mask, ::pygpt_emu::to_bits(v), lane_mask, width));
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return ::pygpt_emu::from_bits<T>(::pygpt_emu::shfl(::pygpt_emu::kShflDown, mask, ::pygpt_emu::to_bits(v),
                                                     static_cast<int>(delta), width));
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return ::pygpt_emu::from_bits<T>(
      ::pygpt_emu::shfl(::pygpt_emu::kShflUp, mask, ::pygpt_emu::to_bits(v), static_cast<int>(delta), width));
}

inline size_t __cvta_generic_to_shared(const void* p) { return ::pygpt_emu::cvta_generic_to_shared(p); }
[[noreturn]] inline void __trap() { ::pygpt_emu::trap(); }

// Correctly rounded, never contracted into an FMA (volatile: whatever -ffp-contract says).
inline float __fmul_rn(float a, float b) {
  volatile float r = a * b;
  return r;
}
inline double __dmul_rn(double a, double b) {
  volatile double r = a * b;
  return r;
}
inline float __fadd_rn(float a, float b) {
  volatile float r = a + b;
  return r;
}
inline float __fdividef(float a, float b) { return a / b; }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float __int_as_float(int i) { return ::pygpt_emu::from_bits<float>(static_cast<uint32_t>(i)); }
inline int __float_as_int(float f) { return static_cast<int>(static_cast<uint32_t>(::pygpt_emu::to_bits(f))); }
inline float __uint_as_float(unsigned u) { return ::pygpt_emu::from_bits<float>(u); }
inline unsigned __float_as_uint(float f) { return static_cast<unsigned>(::pygpt_emu::to_bits(f)); }

// CUDA's integer min/max overloads (global namespace, as in crt/math_functions.hpp).
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline long min(long a, long b) { return a < b ? a : b; }
inline long max(long a, long b) { return a > b ? a : b; }
inline unsigned long min(unsigned long a, unsigned long b) { return a < b ? a : b; }
inline unsigned long max(unsigned long a, unsigned long b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }
