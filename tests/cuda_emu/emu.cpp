// The CUDA emulator's implementation: fibers, the scheduler, barriers, warp collectives,
// the PTX operations, device memory and the runtime API subset. See emu.h for the model.
#include "emu.h"

#include <link.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdarg>
#include <cinttypes>
#include <deque>
#include <map>
#include <string>
#include <vector>

#if !defined(__x86_64__) || defined(PYGPT_EMU_FORCE_UCONTEXT)
#include <ucontext.h>
#define PYGPT_EMU_UCONTEXT 1
#endif

// ------------------------------------------------------------------------------------------
// Context switching
// ------------------------------------------------------------------------------------------
#ifndef PYGPT_EMU_UCONTEXT
extern "C" void pygpt_emu_ctx_switch(void** save_sp, void* load_sp);
// Saves the callee-saved registers, MXCSR and the x87 control word on the current stack,
// stores the stack pointer in *save_sp, loads load_sp and restores the same from there.
asm(R"(
  .pushsection .text
  .p2align 4
  .globl pygpt_emu_ctx_switch
  .type pygpt_emu_ctx_switch, @function
pygpt_emu_ctx_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size pygpt_emu_ctx_switch, .-pygpt_emu_ctx_switch
  .popsection
)");
#endif

namespace pygpt_emu {

ThreadView* g_cur = nullptr;
uint3 g_blockIdx = {0, 0, 0};
dim3 g_blockDim, g_gridDim;

namespace {

Stats g_stats;

// ------------------------------------------------------------------------------------------
// Errors
// ------------------------------------------------------------------------------------------
std::string g_kernel_desc = "(no kernel)";  // for messages: the kernel and its launcher
const char* g_kernel_name = "(no kernel)";

[[noreturn]] __attribute__((format(printf, 1, 2))) void die(const char* fmt, ...);

std::string where_now();

void die(const char* fmt, ...) {
  std::fflush(stdout);
  std::fprintf(stderr, "\n[cuda emulator] ERROR in %s: ", where_now().c_str());
  va_list ap;
  va_start(ap, fmt);
  std::vfprintf(stderr, fmt, ap);
  va_end(ap);
  std::fprintf(stderr, "\n");
  std::fflush(stderr);
  std::abort();
}

// ------------------------------------------------------------------------------------------
// Fibers and the block being run
// ------------------------------------------------------------------------------------------
struct Copy {
  uint8_t* dst;
  uint8_t data[16];
};

enum class State { kRunnable, kBlocked, kDone };

enum Kind : int {
  kNone = -1,
  kKindShflIdx = kShflIdx,
  kKindShflXor = kShflXor,
  kKindShflDown = kShflDown,
  kKindShflUp = kShflUp,
  kSyncwarp = 4,
  kMmaF16 = 5,
  kMmaBf16 = 6,
  kLdsm = 7,
  kLdsmT = 8,
};

const char* kind_name(int k) {
  switch (k) {
    case kKindShflIdx: return "__shfl_sync";
    case kKindShflXor: return "__shfl_xor_sync";
    case kKindShflDown: return "__shfl_down_sync";
    case kKindShflUp: return "__shfl_up_sync";
    case kSyncwarp: return "__syncwarp";
    case kMmaF16: return "mma.sync.m16n8k16.f16";
    case kMmaBf16: return "mma.sync.m16n8k16.bf16";
    case kLdsm: return "ldmatrix.x4";
    case kLdsmT: return "ldmatrix.x4.trans";
    default: return "?";
  }
}

struct Fiber : ThreadView {
  void* sp = nullptr;
  char* stack = nullptr;  // usable region [stack, stack + kStackBytes)
#ifdef PYGPT_EMU_UCONTEXT
  ucontext_t uc;
#endif
  int lin = 0, warp = 0, lane = 0;
  State state = State::kDone;
  const char* waiting = "";
  std::vector<Copy> open;                  // cp.async since the last commit
  std::deque<std::vector<Copy>> groups;    // committed, not yet retired
};

constexpr size_t kStackBytes = size_t{256} << 10;
constexpr size_t kGuardBytes = size_t{64} << 10;

struct Slot {
  int kind;
  uint32_t in[10];
  int arg, width;
  uint32_t out[4];
};

struct Warp {
  int arrived = 0;
  int kind = kNone;
  int at_barrier = 0;  // lanes of this warp waiting in __syncthreads
  Slot slot[32];
  std::vector<Fiber*> waiters;
};

// Runnable fibers, per warp; `active` lists the warps that have some.
struct RunQueue {
  std::vector<std::vector<Fiber*>> lanes;
  std::vector<int> active, pos;
  size_t total = 0;
  void reset(int nwarps) {
    lanes.assign(static_cast<size_t>(nwarps), {});
    for (auto& v : lanes) v.reserve(32);
    active.clear();
    pos.assign(static_cast<size_t>(nwarps), -1);
    total = 0;
  }
  void push(Fiber* f);
  Fiber* take(int w, size_t i) {
    std::vector<Fiber*>& v = lanes[static_cast<size_t>(w)];
    Fiber* f = v[i];
    v.erase(v.begin() + static_cast<std::ptrdiff_t>(i));  // keeps lane order (<= 32 entries)
    --total;
    if (v.empty()) {  // drop w from active (swap with the last)
      const int p = pos[static_cast<size_t>(w)];
      const int last = active.back();
      active[static_cast<size_t>(p)] = last;
      pos[static_cast<size_t>(last)] = p;
      active.pop_back();
      pos[static_cast<size_t>(w)] = -1;
    }
    return f;
  }
};

enum SchedMode { kInterleave = 0, kWarpGreedy = 1, kFifo = 2 };

void RunQueue::push(Fiber* f) {
  std::vector<Fiber*>& v = lanes[static_cast<size_t>(f->warp)];
  if (v.empty()) {
    pos[static_cast<size_t>(f->warp)] = static_cast<int>(active.size());
    active.push_back(f->warp);
  }
  v.push_back(f);
  ++total;
}

struct Block {
  std::vector<Fiber*> fibers;
  int nthreads = 0, nwarps = 0;
  std::vector<Warp> warps;
  int bar_arrived = 0;
  std::vector<Fiber*> bar_waiters;
  RunQueue runnable;
  int mode = 0;       // kInterleave / kWarpGreedy / kFifo (chosen per block)
  int last_warp = 0;  // the warp of the fiber that ran last
  int done = 0;
};

std::vector<Fiber*> g_pool;  // fibers (and their stacks) are reused from block to block
Block g_block;
#ifdef PYGPT_EMU_UCONTEXT
ucontext_t g_sched_uc;
#else
void* g_sched_sp = nullptr;  // the stack pointer of run_block's context while fibers run
#endif
Body g_body = nullptr;
void* g_ctx = nullptr;
size_t g_launch_smem = 0;
bool g_in_kernel = false;

// scheduling policy
bool g_sched_random = true;
uint64_t g_rng = 0x9e3779b97f4a7c15ull;
bool g_config_read = false;

void read_config() {
  if (g_config_read) return;
  g_config_read = true;
  if (const char* s = std::getenv("PYGPT_EMU_SCHED")) {
    if (std::strcmp(s, "fifo") == 0) {
      g_sched_random = false;
    } else if (std::strcmp(s, "random") != 0) {
      std::fprintf(stderr, "[cuda emulator] PYGPT_EMU_SCHED must be random or fifo, got %s\n", s);
      std::abort();
    }
  }
  if (const char* s = std::getenv("PYGPT_EMU_SEED")) g_rng ^= std::strtoull(s, nullptr, 10) * 0xbf58476d1ce4e5b9ull;
}

uint64_t next_rand() {  // splitmix64
  uint64_t z = (g_rng += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

Fiber* cur() { return static_cast<Fiber*>(g_cur); }

std::string where_now() {
  char buf[512];
  if (!g_in_kernel) return std::string(g_kernel_name) + " (host)";
  const Fiber* f = cur();
  if (f == nullptr) {
    std::snprintf(buf, sizeof(buf), "%s, block (%u,%u,%u)", g_kernel_name, g_blockIdx.x, g_blockIdx.y,
                  g_blockIdx.z);
  } else {
    std::snprintf(buf, sizeof(buf), "%s, block (%u,%u,%u), thread (%u,%u,%u) [warp %d lane %d]", g_kernel_name,
                  g_blockIdx.x, g_blockIdx.y, g_blockIdx.z, f->tid.x, f->tid.y, f->tid.z, f->warp, f->lane);
  }
  return buf;
}

// The scheduling policy decides which interleavings of the block's warps are exercised:
//   kInterleave   a random runnable fiber of a random warp: warps advance roughly together;
//   kWarpGreedy   stay in the current warp while it can run, then a random other warp: each warp
//                 runs as far as it can between barriers (maximal skew, exposes missing barriers);
//   kFifo         warps in turn, lanes in order (PYGPT_EMU_SCHED=fifo).
// With PYGPT_EMU_SCHED=random (the default) every block draws kInterleave or kWarpGreedy.
Fiber* pick_runnable() {
  RunQueue& q = g_block.runnable;
  if (q.total == 0) return nullptr;
  int w;
  size_t i = 0;
  const std::vector<Fiber*>& cur_lanes = q.lanes[static_cast<size_t>(g_block.last_warp)];
  if (g_block.mode == kFifo) {
    w = -1;  // the next warp after last_warp (cyclically) with a runnable lane
    const int n = static_cast<int>(q.lanes.size());
    for (int k = 1; k <= n && w < 0; ++k) {
      const int c = (g_block.last_warp + k) % n;
      if (!q.lanes[static_cast<size_t>(c)].empty()) w = c;
    }
  } else if (g_block.mode == kWarpGreedy && !cur_lanes.empty()) {
    w = g_block.last_warp;
    i = static_cast<size_t>(next_rand() % cur_lanes.size());
  } else {
    w = q.active[static_cast<size_t>(next_rand() % q.active.size())];
    i = static_cast<size_t>(next_rand() % q.lanes[static_cast<size_t>(w)].size());
  }
  g_block.last_warp = w;
  return q.take(w, i);
}

[[noreturn]] void deadlock() {
  std::fflush(stdout);
  std::fprintf(stderr, "\n[cuda emulator] ERROR in %s, block (%u,%u,%u): DEADLOCK -- no thread can run. Threads:\n",
               g_kernel_name, g_blockIdx.x, g_blockIdx.y, g_blockIdx.z);
  int shown = 0;
  for (Fiber* f : g_block.fibers) {
    if (shown++ > 64) {
      std::fprintf(stderr, "  ...\n");
      break;
    }
    std::fprintf(stderr, "  thread %d (warp %d lane %d): %s\n", f->lin, f->warp, f->lane,
                 f->state == State::kDone ? "exited" : f->waiting);
  }
  std::fprintf(stderr,
               "(a thread exited or waits at a different barrier/collective than the rest of its "
               "block/warp: divergent __syncthreads or warp collective)\n");
  std::abort();
}

void switch_to(Fiber* from, Fiber* to) {
  ++g_stats.switches;
  g_cur = to;
#ifdef PYGPT_EMU_UCONTEXT
  if (from == nullptr) {
    swapcontext(&g_sched_uc, &to->uc);
  } else {
    swapcontext(&from->uc, &to->uc);
  }
#else
  pygpt_emu_ctx_switch(from == nullptr ? &g_sched_sp : &from->sp, to->sp);
#endif
}

// The current fiber (state already set to kBlocked or kDone) gives up the CPU.
void reschedule() {
  Fiber* me = cur();
  Fiber* next = pick_runnable();
  if (next == nullptr) {
    if (g_block.done == g_block.nthreads) {  // the block is finished: back to run_block
      g_cur = nullptr;
#ifdef PYGPT_EMU_UCONTEXT
      swapcontext(&me->uc, &g_sched_uc);
#else
      void* dummy;
      pygpt_emu_ctx_switch(&dummy, g_sched_sp);
#endif
      die("a finished fiber was resumed");
    }
    deadlock();
  }
  if (next == me) {  // cannot happen: me is not runnable
    die("scheduler picked a blocked fiber");
  }
  switch_to(me, next);
  g_cur = me;  // resumed
}

void make_runnable(Fiber* f) {
  f->state = State::kRunnable;
  f->waiting = "";
  g_block.runnable.push(f);
}

void fiber_main() {
  Fiber* me = cur();
  g_body(g_ctx);
  // thread exit
  me->state = State::kDone;
  me->waiting = "exited";
  ++g_block.done;
  Warp& w = g_block.warps[me->warp];
  if (w.arrived > 0) {
    die("DIVERGENCE: this thread exited while %d lane(s) of its warp wait in %s", w.arrived, kind_name(w.kind));
  }
  if (g_block.bar_arrived > 0) {
    die("this thread exited while %d thread(s) of its block wait at __syncthreads (a barrier in "
        "divergent code)",
        g_block.bar_arrived);
  }
  me->open.clear();
  me->groups.clear();
  reschedule();
  die("unreachable");
}

#ifdef PYGPT_EMU_UCONTEXT
void fiber_entry_uc() { fiber_main(); }
#else
void fiber_entry_x86() { fiber_main(); }
#endif

Fiber* new_fiber() {
  Fiber* f = new Fiber();
  const size_t total = kStackBytes + kGuardBytes;
  void* m = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (m == MAP_FAILED) die("mmap of a fiber stack failed");
  if (mprotect(m, kGuardBytes, PROT_NONE) != 0) die("mprotect of a stack guard failed");
  f->stack = static_cast<char*>(m) + kGuardBytes;
  return f;
}

void init_fiber_stack(Fiber* f) {
#ifdef PYGPT_EMU_UCONTEXT
  getcontext(&f->uc);
  f->uc.uc_stack.ss_sp = f->stack;
  f->uc.uc_stack.ss_size = kStackBytes;
  f->uc.uc_link = nullptr;
  makecontext(&f->uc, fiber_entry_uc, 0);
#else
  uintptr_t top = reinterpret_cast<uintptr_t>(f->stack + kStackBytes) & ~uintptr_t{15};
  uint64_t* s = reinterpret_cast<uint64_t*>(top);
  *--s = 0;                                                         // fake return address
  *--s = reinterpret_cast<uint64_t>(&fiber_entry_x86);              // ret target
  for (int i = 0; i < 6; ++i) *--s = 0;                             // rbp rbx r12 r13 r14 r15
  uint32_t mxcsr = 0;
  uint16_t fpucw = 0;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpucw));
  *--s = static_cast<uint64_t>(mxcsr) | (static_cast<uint64_t>(fpucw) << 32);
  f->sp = s;
#endif
}

// ------------------------------------------------------------------------------------------
// Shared memory: the executable's TLS block is the "shared window"
// ------------------------------------------------------------------------------------------
uint8_t* g_tls_base = nullptr;
size_t g_tls_size = 0;

struct Arena {
  uint8_t* base;
  size_t bytes;
  const char* name;
};
std::vector<Arena>& arenas() {
  static std::vector<Arena> a;
  return a;
}

int find_tls(struct dl_phdr_info* info, size_t, void*) {
  // the first object reported is the executable itself
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    if (info->dlpi_phdr[i].p_type == PT_TLS) {
      g_tls_base = static_cast<uint8_t*>(info->dlpi_tls_data);
      g_tls_size = info->dlpi_phdr[i].p_memsz;
    }
  }
  return 1;  // stop after the executable
}

void init_shared_window() {
  if (g_tls_base != nullptr) return;
  dl_iterate_phdr(find_tls, nullptr);
  if (g_tls_base == nullptr || g_tls_size == 0) {
    die("no TLS segment in the executable: __shared__ arrays and the PYGPT_EMU_DYNAMIC_SMEM arena live there");
  }
  for (const Arena& a : arenas()) {
    if (a.base < g_tls_base || a.base + a.bytes > g_tls_base + g_tls_size) {
      die("the dynamic shared memory arena %s is not in the executable's TLS block", a.name);
    }
  }
}

const Arena* arena_of(const uint8_t* p) {
  for (const Arena& a : arenas()) {
    if (p >= a.base && p < a.base + a.bytes) return &a;
  }
  return nullptr;
}

// Host pointer of shared address addr, [addr, addr + n) checked: inside the shared window and,
// for the dynamic arena, inside the launch's dynamic shared memory size.
uint8_t* smem_ptr(uint32_t addr, size_t n, size_t align, const char* what) {
  if (addr % align != 0) die("%s: shared address 0x%x is not %zu-byte aligned", what, addr, align);
  if (static_cast<size_t>(addr) + n > g_tls_size) die("%s: shared address 0x%x is outside shared memory", what, addr);
  uint8_t* p = g_tls_base + addr;
  if (const Arena* a = arena_of(p)) {
    const size_t off = static_cast<size_t>(p - a->base);
    if (off + n > g_launch_smem) {
      die("%s: dynamic shared memory bytes [%zu, %zu) are beyond the launch's %zu bytes", what, off, off + n,
          g_launch_smem);
    }
  }
  return p;
}

// ------------------------------------------------------------------------------------------
// Device (global) memory
// ------------------------------------------------------------------------------------------
// Each allocation ends at a page boundary followed by an inaccessible guard page, and a guard
// page precedes its first page: a plain out-of-bounds load or store past the rounding gap faults
// (reported by the SIGSEGV handler below). The gaps (before the start, and after the end up to
// the next 16 bytes) are 0xff-poisoned and checked after every launch.
struct Alloc {
  uint8_t* map;     // the mapping, guard pages included
  size_t map_bytes;
  size_t bytes;     // requested
  uint8_t* lo;      // first accessible byte (the front gap starts here)
  uint8_t* hi;      // one past the last accessible byte (page boundary)
};
std::map<uintptr_t, Alloc>& allocs() {
  static std::map<uintptr_t, Alloc> m;
  return m;
}
size_t page_size() {
  static const size_t p = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return p;
}

// Out-of-bounds accesses that reach a guard page (or a fiber's stack guard) end here.
void fault_handler(int sig, siginfo_t* si, void*) {
  const uint8_t* addr = static_cast<const uint8_t*>(si->si_addr);
  char desc[320] = "not a guard page of the emulator (a wild pointer?)";
  if (si->si_code == SI_KERNEL || addr == nullptr) {
    std::snprintf(desc, sizeof(desc),
                  "a null pointer, or a general-protection fault: on x86 typically a MISALIGNED 16-byte vector "
                  "access (uint4/float4 need 16-byte alignment, as on the GPU)");
  }
  for (const auto& [user, a] : allocs()) {
    const uint8_t* u = reinterpret_cast<const uint8_t*>(user);
    if (addr >= a.map && addr < a.lo) {
      std::snprintf(desc, sizeof(desc),
                    "%td bytes BEFORE the %zu-byte device allocation at %p (out-of-bounds global access)", u - addr,
                    a.bytes, static_cast<const void*>(u));
    } else if (addr >= a.hi && addr < a.map + a.map_bytes) {
      std::snprintf(desc, sizeof(desc),
                    "%td bytes PAST THE END of the %zu-byte device allocation at %p (out-of-bounds global access)",
                    addr - (u + a.bytes), a.bytes, static_cast<const void*>(u));
    }
  }
  for (const Fiber* f : g_pool) {
    const uint8_t* st = reinterpret_cast<const uint8_t*>(f->stack);
    if (addr >= st - kGuardBytes && addr < st) std::snprintf(desc, sizeof(desc), "fiber stack overflow");
  }
  std::fflush(stdout);
  std::fprintf(stderr, "\n[cuda emulator] ERROR in %s: %s at address %p: %s\n", where_now().c_str(),
               sig == SIGSEGV ? "segmentation fault" : "bus error", static_cast<const void*>(addr), desc);
  std::fflush(stderr);
  signal(sig, SIG_DFL);
  std::abort();
}

void install_fault_handler() {
  static bool done = false;
  if (done) return;
  done = true;
  static std::vector<char> alt(size_t{256} << 10);
  stack_t ss{};
  ss.ss_sp = alt.data();
  ss.ss_size = alt.size();
  sigaltstack(&ss, nullptr);
  struct sigaction sa {};
  sa.sa_sigaction = fault_handler;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGSEGV, &sa, nullptr);
  sigaction(SIGBUS, &sa, nullptr);
}

bool in_allocation(const void* p, size_t n) {
  const uintptr_t u = reinterpret_cast<uintptr_t>(p);
  auto& m = allocs();
  auto it = m.upper_bound(u);
  if (it == m.begin()) return false;
  --it;
  return u >= it->first && u + n <= it->first + it->second.bytes;
}

// ------------------------------------------------------------------------------------------
// Block barrier and warp collectives
// ------------------------------------------------------------------------------------------
void block_on(const char* what) {
  Fiber* me = cur();
  me->state = State::kBlocked;
  me->waiting = what;
  reschedule();
}

// Deposits are in w.slot[lane] (filled by the caller); returns after all 32 lanes arrived and
// the last arrival computed every lane's out[].
template <typename Compute>
Slot& warp_collective(int kind, Compute&& compute) {
  if (!g_in_kernel) die("%s called outside a kernel", kind_name(kind));
  Fiber* me = cur();
  Warp& w = g_block.warps[me->warp];
  if (w.at_barrier > 0) {
    die("DIVERGENCE: %s called while %d lane(s) of this warp wait at __syncthreads", kind_name(kind),
        w.at_barrier);
  }
  Slot& s = w.slot[me->lane];
  s.kind = kind;
  if (w.arrived == 0) {
    w.kind = kind;
  } else if (w.kind != kind) {
    die("DIVERGENCE: this lane calls %s while %d other lane(s) of its warp wait in %s", kind_name(kind), w.arrived,
        kind_name(w.kind));
  }
  if (++w.arrived == 32) {
    ++g_stats.collectives;
    compute(w.slot);
    w.arrived = 0;
    w.kind = kNone;
    for (Fiber* f : w.waiters) make_runnable(f);
    w.waiters.clear();
  } else {
    w.waiters.push_back(me);
    block_on(kind_name(kind));
  }
  return s;
}

inline float f16_to_float(uint16_t h) {
  __half_raw raw;
  raw.x = h;
  return __half2float(__half(raw));
}

struct HalfTable {
  float v[65536];
  HalfTable() {
    for (uint32_t i = 0; i < 65536; ++i) v[i] = f16_to_float(static_cast<uint16_t>(i));
  }
};
const HalfTable& half_table() {
  static const HalfTable* t = new HalfTable();
  return *t;
}

inline double decode(uint16_t bits, bool bf16) {
  if (bf16) {
    const uint32_t u = static_cast<uint32_t>(bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  return half_table().v[bits];
}

void mma_compute(Slot (&s)[32], bool bf16) {
  ++g_stats.mmas;
  double A[16][16], B[16][8];
  float C[16][8];
  for (int l = 0; l < 32; ++l) {
    const int g = l >> 2, t = l & 3;
    const uint32_t* a = s[l].in;      // a0..a3
    const uint32_t* b = s[l].in + 4;  // b0, b1
    const uint32_t* c = s[l].in + 6;  // c0..c3 (fp32 bits)
    auto lo = [](uint32_t r) { return static_cast<uint16_t>(r & 0xffffu); };
    auto hi = [](uint32_t r) { return static_cast<uint16_t>(r >> 16); };
    A[g][2 * t] = decode(lo(a[0]), bf16);
    A[g][2 * t + 1] = decode(hi(a[0]), bf16);
    A[g + 8][2 * t] = decode(lo(a[1]), bf16);
    A[g + 8][2 * t + 1] = decode(hi(a[1]), bf16);
    A[g][2 * t + 8] = decode(lo(a[2]), bf16);
    A[g][2 * t + 9] = decode(hi(a[2]), bf16);
    A[g + 8][2 * t + 8] = decode(lo(a[3]), bf16);
    A[g + 8][2 * t + 9] = decode(hi(a[3]), bf16);
    B[2 * t][g] = decode(lo(b[0]), bf16);
    B[2 * t + 1][g] = decode(hi(b[0]), bf16);
    B[2 * t + 8][g] = decode(lo(b[1]), bf16);
    B[2 * t + 9][g] = decode(hi(b[1]), bf16);
    std::memcpy(&C[g][2 * t], &c[0], 4);
    std::memcpy(&C[g][2 * t + 1], &c[1], 4);
    std::memcpy(&C[g + 8][2 * t], &c[2], 4);
    std::memcpy(&C[g + 8][2 * t + 1], &c[3], 4);
  }
  float D[16][8];
  for (int i = 0; i < 16; ++i) {
    for (int j = 0; j < 8; ++j) {
      double acc = 0.0;  // products of 16-bit values are exact in double; 16 of them summed
      for (int k = 0; k < 16; ++k) acc += A[i][k] * B[k][j];
      D[i][j] = static_cast<float>(static_cast<double>(C[i][j]) + acc);
    }
  }
  for (int l = 0; l < 32; ++l) {
    const int g = l >> 2, t = l & 3;
    std::memcpy(&s[l].out[0], &D[g][2 * t], 4);
    std::memcpy(&s[l].out[1], &D[g][2 * t + 1], 4);
    std::memcpy(&s[l].out[2], &D[g + 8][2 * t], 4);
    std::memcpy(&s[l].out[3], &D[g + 8][2 * t + 1], 4);
  }
}

void mma_common(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1, bool bf16) {
  Warp& w = g_block.warps[cur()->warp];
  Slot& in = w.slot[cur()->lane];
  for (int i = 0; i < 4; ++i) in.in[i] = a[i];
  in.in[4] = b0;
  in.in[5] = b1;
  std::memcpy(&in.in[6], d, 16);
  Slot& s = warp_collective(bf16 ? kMmaBf16 : kMmaF16, [bf16](Slot(&all)[32]) { mma_compute(all, bf16); });
  std::memcpy(d, s.out, 16);
}

void ldsm_compute(Slot (&s)[32], bool trans) {
  // row r of matrix i: 8 b16 elements at the address given by lane 8i + r
  const uint8_t* row[4][8];
  for (int i = 0; i < 4; ++i) {
    for (int r = 0; r < 8; ++r) {
      row[i][r] = smem_ptr(s[8 * i + r].in[0], 16, 16, trans ? "ldmatrix.x4.trans" : "ldmatrix.x4");
    }
  }
  auto elem = [&](int i, int r, int c) {
    uint16_t v;
    std::memcpy(&v, row[i][r] + 2 * c, 2);
    return static_cast<uint32_t>(v);
  };
  for (int l = 0; l < 32; ++l) {
    for (int i = 0; i < 4; ++i) {
      if (!trans) {
        s[l].out[i] = elem(i, l >> 2, 2 * (l & 3)) | (elem(i, l >> 2, 2 * (l & 3) + 1) << 16);
      } else {
        s[l].out[i] = elem(i, 2 * (l & 3), l >> 2) | (elem(i, 2 * (l & 3) + 1, l >> 2) << 16);
      }
    }
  }
}

void shfl_compute(Slot (&s)[32]) {
  for (int l = 0; l < 32; ++l) {
    const int kind = s[l].kind, arg = s[l].arg, width = s[l].width;
    const int seg = l & ~(width - 1), in_seg = l & (width - 1);
    int src = l;
    switch (kind) {
      case kKindShflIdx: src = seg + (arg & (width - 1)); break;
      case kKindShflXor: {
        const int x = l ^ arg;
        src = (x < seg + width && x >= 0 && x < 32) ? x : l;  // later segments: own value
        break;
      }
      case kKindShflDown: src = (in_seg + arg < width) ? l + arg : l; break;
      case kKindShflUp: src = (in_seg >= arg) ? l - arg : l; break;
      default: die("bad shuffle kind");
    }
    s[l].out[0] = s[src].in[0];
    s[l].out[1] = s[src].in[1];
  }
}

}  // namespace

// ------------------------------------------------------------------------------------------
// Public entry points
// ------------------------------------------------------------------------------------------
const Stats& stats() { return g_stats; }

void syncthreads() {
  if (!g_in_kernel) die("__syncthreads called outside a kernel");
  Fiber* me = cur();
  Warp& w = g_block.warps[me->warp];
  if (w.arrived > 0) {
    die("DIVERGENCE: __syncthreads called while %d lane(s) of this warp wait in %s", w.arrived, kind_name(w.kind));
  }
  if (++g_block.bar_arrived == g_block.nthreads) {
    g_block.bar_arrived = 0;
    for (Fiber* f : g_block.bar_waiters) make_runnable(f);
    g_block.bar_waiters.clear();
    for (Warp& x : g_block.warps) x.at_barrier = 0;
  } else {
    g_block.bar_waiters.push_back(me);
    ++w.at_barrier;
    block_on("__syncthreads");
  }
}

void syncwarp(unsigned mask) {
  if (mask != 0xffffffffu) die("__syncwarp with a partial mask (0x%x) is not emulated", mask);
  warp_collective(kSyncwarp, [](Slot(&)[32]) {});
}

uint64_t shfl(int kind, unsigned mask, uint64_t bits, int arg, int width) {
  if (mask != 0xffffffffu) die("%s with a partial mask (0x%x) is not emulated", kind_name(kind), mask);
  if (width < 1 || width > 32 || (width & (width - 1)) != 0) die("%s: bad width %d", kind_name(kind), width);
  Warp& w = g_block.warps[cur()->warp];
  Slot& in = w.slot[cur()->lane];
  in.in[0] = static_cast<uint32_t>(bits);
  in.in[1] = static_cast<uint32_t>(bits >> 32);
  in.arg = arg;
  in.width = width;
  Slot& s = warp_collective(kind, [](Slot(&all)[32]) { shfl_compute(all); });
  return static_cast<uint64_t>(s.out[0]) | (static_cast<uint64_t>(s.out[1]) << 32);
}

void mma_m16n8k16_f16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  mma_common(d, a, b0, b1, false);
}
void mma_m16n8k16_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  mma_common(d, a, b0, b1, true);
}

void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr, bool trans) {
  Warp& w = g_block.warps[cur()->warp];
  w.slot[cur()->lane].in[0] = addr;
  Slot& s = warp_collective(trans ? kLdsmT : kLdsm, [trans](Slot(&all)[32]) { ldsm_compute(all, trans); });
  for (int i = 0; i < 4; ++i) r[i] = s.out[i];
}

void cp_async_cg_16(uint32_t dst, const void* src, int src_size) {
  if (!g_in_kernel) die("cp.async outside a kernel");
  if (src_size < 0 || src_size > 16) die("cp.async: src-size %d not in [0, 16]", src_size);
  Copy c;
  c.dst = smem_ptr(dst, 16, 16, "cp.async destination");
  std::memset(c.data, 0, 16);
  if (src_size > 0) {
    if (reinterpret_cast<uintptr_t>(src) % 16 != 0) die("cp.async.cg 16: global source %p is not 16-byte aligned", src);
    if (!in_allocation(src, static_cast<size_t>(src_size))) {
      die("cp.async reads %d bytes at %p: outside every device allocation (out-of-bounds global read)", src_size,
          src);
    }
    std::memcpy(c.data, src, static_cast<size_t>(src_size));
  }
  std::memset(c.dst, 0xff, 16);  // in flight: undefined until this thread's wait_group retires it
  cur()->open.push_back(c);
}

void cp_async_commit() {
  if (!g_in_kernel) die("cp.async.commit_group outside a kernel");
  Fiber* me = cur();
  me->groups.push_back(std::move(me->open));
  me->open.clear();
}

void cp_async_wait(int n) {
  if (!g_in_kernel) die("cp.async.wait_group outside a kernel");
  Fiber* me = cur();
  while (static_cast<int>(me->groups.size()) > n) {
    for (const Copy& c : me->groups.front()) std::memcpy(c.dst, c.data, 16);
    me->groups.pop_front();
  }
}

float ex2_approx_ftz(float x) {
  if (std::fpclassify(x) == FP_SUBNORMAL) x = std::copysign(0.0f, x);
  float r = static_cast<float>(std::exp2(static_cast<double>(x)));
  if (std::fpclassify(r) == FP_SUBNORMAL) r = 0.0f;
  return r;
}

size_t cvta_generic_to_shared(const void* p) {
  init_shared_window();
  const uint8_t* b = static_cast<const uint8_t*>(p);
  if (b < g_tls_base || b >= g_tls_base + g_tls_size) {
    die("__cvta_generic_to_shared(%p): not a shared memory pointer", p);
  }
  return static_cast<size_t>(b - g_tls_base);
}

void trap() { die("__trap()"); }

ArenaRegistration::ArenaRegistration(void* base, size_t bytes, const char* name) {
  arenas().push_back(Arena{static_cast<uint8_t*>(base), bytes, name});
}

void* dev_alloc(size_t bytes) {
  install_fault_handler();
  const size_t pg = page_size();
  const size_t user = (std::max<size_t>(bytes, 1) + 15) / 16 * 16;  // 16-byte aligned start
  const size_t body = (user + pg - 1) / pg * pg;
  const size_t total = body + 2 * pg;
  void* m = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) die("dev_alloc(%zu): mmap failed", bytes);
  uint8_t* map = static_cast<uint8_t*>(m);
  if (mprotect(map, pg, PROT_NONE) != 0 || mprotect(map + pg + body, pg, PROT_NONE) != 0) {
    die("dev_alloc: mprotect of a guard page failed");
  }
  std::memset(map + pg, 0xff, body);
  uint8_t* ptr = map + pg + (body - user);
  allocs()[reinterpret_cast<uintptr_t>(ptr)] = Alloc{map, total, bytes, map + pg, map + pg + body};
  return ptr;
}

void dev_free(void* p) {
  if (p == nullptr) return;
  auto& m = allocs();
  auto it = m.find(reinterpret_cast<uintptr_t>(p));
  if (it == m.end()) die("dev_free(%p): not a dev_alloc pointer", p);
  munmap(it->second.map, it->second.map_bytes);
  m.erase(it);
}

void check_red_zones(const char* when) {
  for (const auto& [user, a] : allocs()) {
    const uint8_t* u = reinterpret_cast<const uint8_t*>(user);
    const uint8_t* ranges[2][2] = {{a.lo, u}, {u + a.bytes, a.hi}};
    for (int r = 0; r < 2; ++r) {
      for (const uint8_t* q = ranges[r][0]; q < ranges[r][1]; ++q) {
        if (*q != 0xff) {
          std::fflush(stdout);
          std::fprintf(stderr,
                       "\n[cuda emulator] ERROR after %s: out-of-bounds global write: byte %td %s the %zu-byte "
                       "device allocation at %p was modified\n",
                       when, r == 0 ? u - q : q - (u + a.bytes), r == 0 ? "before" : "after", a.bytes,
                       static_cast<const void*>(u));
          std::abort();
        }
      }
    }
  }
}

// ------------------------------------------------------------------------------------------
// Launch
// ------------------------------------------------------------------------------------------
namespace {
cudaError_t g_last_error = cudaSuccess;
std::map<const void*, int>& max_dyn_smem() {
  static std::map<const void*, int> m;
  return m;
}
constexpr int kDefaultDynSmem = 48 * 1024;
constexpr int kOptinSmem = 232448;  // sm_90

void run_block(dim3 block) {
  Block& b = g_block;
  b.nthreads = static_cast<int>(block.x * block.y * block.z);
  b.nwarps = b.nthreads / 32;
  while (static_cast<int>(g_pool.size()) < b.nthreads) g_pool.push_back(new_fiber());
  b.fibers.assign(g_pool.begin(), g_pool.begin() + b.nthreads);
  b.warps.assign(static_cast<size_t>(b.nwarps), Warp());
  b.bar_arrived = 0;
  b.bar_waiters.clear();
  b.runnable.reset(b.nwarps);
  b.mode = g_sched_random ? static_cast<int>(next_rand() % 2) : kFifo;
  b.last_warp = 0;
  b.done = 0;
  for (int t = 0; t < b.nthreads; ++t) {
    Fiber* f = b.fibers[static_cast<size_t>(t)];
    f->tid = uint3{static_cast<unsigned>(t) % block.x, (static_cast<unsigned>(t) / block.x) % block.y,
                   static_cast<unsigned>(t) / (block.x * block.y)};
    f->lin = t;
    f->warp = t / 32;
    f->lane = t % 32;
    f->open.clear();
    f->groups.clear();
    init_fiber_stack(f);
    make_runnable(f);
  }
  // shared memory content is undefined at block start: poison all of it (NaN in every format)
  std::memset(g_tls_base, 0xff, g_tls_size);
  ++g_stats.blocks;
  g_stats.threads += b.nthreads;
  Fiber* first = pick_runnable();
  g_cur = first;
  switch_to(nullptr, first);  // returns when every thread of the block has exited
  g_cur = nullptr;
  if (b.done != b.nthreads) die("block ended with %d of %d threads done", b.done, b.nthreads);
  // nothing may have been written past the launch's dynamic shared memory
  for (const Arena& a : arenas()) {
    for (size_t i = g_launch_smem; i < a.bytes; ++i) {
      if (a.base[i] != 0xff) {
        die("out-of-bounds shared memory write: byte %zu of %s, beyond the launch's %zu bytes of dynamic smem", i,
            a.name, g_launch_smem);
      }
    }
  }
}
}  // namespace

void run_grid(const void* kernel, const char* name, const char* launcher, dim3 grid, dim3 block, size_t smem,
              Body body, void* ctx) {
  read_config();
  init_shared_window();
  ++g_stats.launches;
  g_kernel_desc = std::string("kernel `") + name + "` launched by `" + launcher + "`";
  g_kernel_name = g_kernel_desc.c_str();
  const uint64_t nthreads = static_cast<uint64_t>(block.x) * block.y * block.z;
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535 ||
      nthreads == 0 || nthreads > 1024 || block.z > 64) {
    std::fprintf(stderr, "[cuda emulator] %s: invalid launch configuration grid (%u,%u,%u) block (%u,%u,%u)\n", name,
                 grid.x, grid.y, grid.z, block.x, block.y, block.z);
    g_last_error = cudaErrorInvalidConfiguration;
    return;
  }
  if (nthreads % 32 != 0) die("the emulator runs whole warps only: %" PRIu64 " threads per block", nthreads);
  auto it = max_dyn_smem().find(kernel);
  const size_t limit = static_cast<size_t>(it == max_dyn_smem().end() ? kDefaultDynSmem : it->second);
  if (smem > limit) {
    std::fprintf(stderr,
                 "[cuda emulator] %s: %zu bytes of dynamic shared memory > the kernel's limit of %zu "
                 "(cudaFuncSetAttribute(MaxDynamicSharedMemorySize) missing?)\n",
                 name, smem, limit);
    g_last_error = cudaErrorInvalidValue;
    return;
  }
  if (smem > 0 && arenas().empty()) die("dynamic shared memory requested but no PYGPT_EMU_DYNAMIC_SMEM arena defined");
  g_launch_smem = smem;
  g_blockDim = block;
  g_gridDim = grid;
  g_body = body;
  g_ctx = ctx;
  g_in_kernel = true;
  for (unsigned z = 0; z < grid.z; ++z) {
    for (unsigned y = 0; y < grid.y; ++y) {
      for (unsigned x = 0; x < grid.x; ++x) {
        g_blockIdx = uint3{x, y, z};
        run_block(block);
      }
    }
  }
  g_in_kernel = false;
  g_kernel_name = "(no kernel)";
  char when[600];
  std::snprintf(when, sizeof(when), "kernel %s", name);
  check_red_zones(when);
}

}  // namespace pygpt_emu

// ------------------------------------------------------------------------------------------
// CUDA runtime API subset (an H100-like device)
// ------------------------------------------------------------------------------------------
extern "C" {

cudaError_t cudaGetLastError(void) {
  const cudaError_t e = pygpt_emu::g_last_error;
  pygpt_emu::g_last_error = cudaSuccess;
  return e;
}

cudaError_t cudaPeekAtLastError(void) { return pygpt_emu::g_last_error; }

const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    default: return "cuda emulator error";
  }
}

cudaError_t cudaFuncSetAttribute(const void* func, enum cudaFuncAttribute attr, int value) {
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    if (value < 0 || value > pygpt_emu::kOptinSmem) return cudaErrorInvalidValue;
    pygpt_emu::max_dyn_smem()[func] = value;
    return cudaSuccess;
  }
  if (attr == cudaFuncAttributePreferredSharedMemoryCarveout) return cudaSuccess;
  return cudaErrorInvalidValue;
}

cudaError_t cudaDeviceGetAttribute(int* value, enum cudaDeviceAttr attr, int device) {
  if (device != 0) return cudaErrorInvalidDevice;
  switch (attr) {
    case cudaDevAttrMultiProcessorCount: *value = 132; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMajor: *value = 9; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMinor: *value = 0; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = pygpt_emu::kOptinSmem; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = 49152; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor: *value = 233472; return cudaSuccess;
    case cudaDevAttrMaxThreadsPerBlock: *value = 1024; return cudaSuccess;
    case cudaDevAttrMaxThreadsPerMultiProcessor: *value = 2048; return cudaSuccess;
    case cudaDevAttrWarpSize: *value = 32; return cudaSuccess;
    default: return cudaErrorInvalidValue;
  }
}

cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp* prop, int device) {
  if (device != 0) return cudaErrorInvalidDevice;
  std::memset(prop, 0, sizeof(*prop));
  std::snprintf(prop->name, sizeof(prop->name), "pygpt CUDA emulator (H100-like)");
  prop->major = 9;
  prop->minor = 0;
  prop->multiProcessorCount = 132;
  prop->sharedMemPerBlock = 49152;
  prop->sharedMemPerBlockOptin = pygpt_emu::kOptinSmem;
  prop->sharedMemPerMultiprocessor = 233472;
  prop->maxThreadsPerBlock = 1024;
  prop->maxThreadsPerMultiProcessor = 2048;
  prop->warpSize = 32;
  prop->regsPerBlock = 65536;
  prop->regsPerMultiprocessor = 65536;
  return cudaSuccess;
}

cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(int* num_blocks, const void*, int block_size,
                                                                   size_t dyn_smem, unsigned int) {
  if (block_size <= 0 || block_size > 1024) return cudaErrorInvalidValue;
  int n = std::min(2048 / block_size, 32);
  if (dyn_smem > 0) n = std::min(n, static_cast<int>(233472 / (dyn_smem + 1024)));
  *num_blocks = n;
  return cudaSuccess;
}

cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* num_blocks, const void* func, int block_size,
                                                          size_t dyn_smem) {
  return cudaOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(num_blocks, func, block_size, dyn_smem, 0);
}

}  // extern "C"
