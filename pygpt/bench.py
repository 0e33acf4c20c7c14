"""Benchmark the hot ops and the trainer: python -m pygpt.bench attention|layer_norm|gelu_mlp|train.

    python -m pygpt.bench attention --device cpu              # eager vs sdpa vs fused vs torch.compile
    python -m pygpt.bench layer_norm --device cuda --dtype float32
    python -m pygpt.bench gelu_mlp --quick                    # tiny smoke configuration
    python -m pygpt.bench train --preset shakespeare-cpu --device cpu --iters 100

Op modes time every backend `pygpt.ops.available_backends(op, device)` reports (eager, sdpa for
attention, cpu / cuda / triton where they can run) plus `compile` = torch.compile of the op's eager
reference, in two modes: `fwd` (forward, inputs requiring grad as in training) and `fwd+bwd`
(forward, then torch.autograd.backward with a fixed random output gradient; input grads are reset
to None before every repetition, outside the timed region). Backends that cannot run are listed
with the reason `unavailable_reason` gives, never dropped silently.

Timing: a few warm-up calls (at least one; compile's first call is its compile time, recorded as
`first_call_s`), then repetitions until `--budget` seconds have passed and at least `--min-reps`
were taken, or `--reps` were taken. Each repetition is timed alone: time.perf_counter on the CPU,
a pair of CUDA events (after a synchronize) on CUDA. The table reports the MEDIAN (and the min);
the JSON keeps every repetition's time.

Work counted per call (the same count for every contender, so rates compare like for like):
  attention  FLOPs as FlashAttention counts them: forward 4·B·H·T²·D (two T×T×D matmuls),
             halved when causal (even for eager, which computes the masked half anyway);
             backward 2.5 × forward, so fwd+bwd = 3.5 × forward. Reported in GFLOP/s (TFLOP/s on CUDA).
  gelu_mlp   2·M·K·N per GEMM with M = B·T rows, C = width, hidden = 4C (default): forward 2 GEMMs
             (M×C×H and M×H×C), backward 4 (input and weight gradient of each); bias and GELU ignored.
  layer_norm effective memory traffic, the minimum an ideal fused kernel moves (mean/rstd and any
             temporaries ignored), s = bytes per element, M rows of C:
             fwd  reads x, residual (2·M·C·s) + weight, bias (2·C·s); writes y, h = x + residual (2·M·C·s)
             bwd  reads dy, dh, h (3·M·C·s) + weight (C·s); writes dx (M·C·s; x and residual share it)
                  + dweight, dbias (2·C·s)
             Reported in GB/s (bytes / median time).

Output: a table on stdout; under --out (default bench/results) <device>-<op>-<YYYYMMDD-HHMMSS>
.json (machine info from pygpt.info.collect(), the arguments, every measurement), .md (the table)
and .png (median ms vs T per contender, one log-y subplot per mode).

`train` runs `python -m pygpt.train` once per variant - eager (--backend eager), sdpa (the trainer's
default), fused (--fused, only if every op resolves to a fused backend on the device) and compile
(--compile) - each in a fresh process with its own temporary --out-dir, and reads
`train_tokens_per_s` from its summary.json; unknown flags (--n-layer 2 ...) are passed on to the
trainer. That figure averages every training step including the first, so compile's includes its
compile time; `steady_tokens_per_s`, the median over the later half of steps from log.jsonl, does not.
"""

from __future__ import annotations

import datetime as _dt
import gc
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from . import ops
from ._cli import Parser, run

OP_MODES = ("attention", "layer_norm", "gelu_mlp")
MODES = ("fwd", "fwd+bwd")
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}
INTERPRETER_NOTE = "interpreter (not a speed figure)"
REFERENCES = {"attention": ops.attention_reference, "layer_norm": ops.layer_norm_reference,
              "gelu_mlp": ops.gelu_mlp_reference}
QUICK = dict(seq_lens=[32, 64], batch=1, heads=2, head_dim=16, width=64, budget=0.02, reps=5, min_reps=2,
             warmup=1, iters=3)
TRAIN_VARIANTS = ("eager", "sdpa", "fused", "compile")
# every contender's speed-up is reported against each of these that ran ('torch': add + F.layer_norm;
# 'sdpa_best': the fastest of torch's SDPA backends at that shape, CUDA only; 'copy': a device copy
# of the same bytes, so 'vs copy' of a layer_norm contender is its fraction of the copy bandwidth)
RATIO_BASES = ("eager", "sdpa", "sdpa_best", "torch", "compile", "copy")
# torch's SDPA backends, each timed alone on CUDA (torch.nn.attention.SDPBackend names)
SDPA_BACKENDS = {"sdpa-flash": "FLASH_ATTENTION", "sdpa-efficient": "EFFICIENT_ATTENTION", "sdpa-cudnn": "CUDNN_ATTENTION"}
# the CUDA gelu_mlp's two GEMM paths, forced through PYGPT_GEMM (the cuda backend itself picks the faster)
GEMM_PATHS = {"cuda-mma": "mma", "cuda-cublaslt": "cublaslt"}
# the CUDA attention forward's two tile heights (query rows per CTA), forced via PYGPT_ATTN_FWD_ROWS
ATTN_FWD_ROWS = {"cuda-rows64": "64", "cuda-rows128": "128"}


# ----------------------------------------------------------------------------------------------
# arguments


def build_parser() -> Parser:
    p = Parser(prog="python -m pygpt.bench", description=__doc__.split("\n")[0], allow_abbrev=False,
               epilog="In train mode, flags this parser does not know are passed on to python -m pygpt.train.")
    p.add_argument("op", choices=OP_MODES + ("train",), help="what to benchmark")
    p.add_argument("--device", default="cpu", help="cpu or cuda (or cuda:N) (default: cpu)")
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: float32 on cpu, "
                   "bfloat16 on cuda; in train mode the trainer's own default)")
    p.add_argument("--seq-lens", default=None, help="comma-separated T values (default: 256,512,1024,2048)")
    p.add_argument("--batch", type=int, default=None, help="B (default 4)")
    p.add_argument("--tokens", type=int, default=None, help="B = max(1, tokens // T) for each T instead of a fixed "
                   "--batch (the same work per token at every T, as FlashAttention's benchmark does)")
    p.add_argument("--eager-max-t", type=int, default=None, help="skip eager and compile above this T (they "
                   "materialise the T x T matrix: slow, or out of memory at long T)")
    p.add_argument("--heads", type=int, default=None, help="attention: H (default 4)")
    p.add_argument("--head-dim", type=int, default=None, help="attention: D (default 64)")
    p.add_argument("--causal", dest="causal", action="store_true", default=True, help="attention: causal (default)")
    p.add_argument("--no-causal", dest="causal", action="store_false", help="attention: no mask")
    p.add_argument("--width", type=int, default=None, help="layer_norm / gelu_mlp: C (default 768)")
    p.add_argument("--hidden", type=int, default=None, help="gelu_mlp: hidden width (default 4·C)")
    p.add_argument("--modes", default="fwd,fwd+bwd", help="comma-separated subset of fwd,fwd+bwd")
    p.add_argument("--backends", default=None, help="comma-separated contenders to run (default: all available "
                   "backends plus compile)")
    p.add_argument("--no-compile", dest="compile", action="store_false", default=True,
                   help="skip the torch.compile contender / train variant")
    p.add_argument("--rep-time", "--budget", dest="budget", type=float, default=None,
                   help="seconds of timed repetitions per measurement (default 0.5; --budget is its old name)")
    p.add_argument("--stop-at", type=float, default=None,
                   help="unix time after which no new measurement starts (the rest are recorded as skipped and "
                        "the results written); default: $PYGPT_STOP_AT if set")
    p.add_argument("--reps", type=int, default=None, help="at most this many timed repetitions (default 100)")
    p.add_argument("--min-reps", type=int, default=None, help="at least this many timed repetitions (default 3)")
    p.add_argument("--warmup", type=int, default=None, help="at most this many warm-up calls (default 3; at least 1)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny smoke configuration (tests)")
    p.add_argument("--out", default=os.path.join("bench", "results"), help="results folder (default: bench/results)")
    p.add_argument("--no-plot", dest="plot", action="store_false", default=True, help="skip the PNG")
    # train mode
    p.add_argument("--preset", default="shakespeare-cpu", help="train: the trainer's preset")
    p.add_argument("--iters", type=int, default=None, help="train: steps per variant (default 100; --quick 3)")
    p.add_argument("--data", default=None, help="train: prepared data folder or name (default: the trainer's)")
    p.add_argument("--timeout", type=float, default=1800, help="train: seconds allowed per variant")
    return p


def parse_args(argv=None):
    p = build_parser()
    args, extra = p.parse_known_args(argv)
    if args.op != "train" and extra:
        p.error(f"unrecognized arguments: {' '.join(extra)}")
    for bad in ("--out-dir", "--max-iters", "--fused", "--compile", "--backend", "--resume", "--init-from"):
        if any(e == bad or e.startswith(bad + "=") for e in extra):
            p.error(f"{bad} is set by the benchmark per variant; do not pass it")
    args.train_extra = extra
    q = args.quick
    defaults = dict(batch=4, heads=4, head_dim=64, width=768, budget=0.5, reps=100, min_reps=3, warmup=3, iters=100)
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, QUICK[name] if q and name in QUICK else value)
    if args.seq_lens is None:
        args.seq_lens = QUICK["seq_lens"] if q else [256, 512, 1024, 2048]
    else:
        try:
            args.seq_lens = [int(s) for s in str(args.seq_lens).split(",") if s.strip()]
        except ValueError:
            raise ValueError(f"--seq-lens must be comma-separated integers, got {args.seq_lens!r}") from None
    if args.hidden is None:
        args.hidden = 4 * args.width
    for name in ("tokens", "eager_max_t"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("batch", "heads", "head_dim", "width", "hidden", "reps", "min_reps", "warmup", "iters"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not args.seq_lens or min(args.seq_lens) < 1:
        raise ValueError(f"--seq-lens must be positive integers, got {args.seq_lens}")
    if not (args.budget >= 0 and math.isfinite(args.budget)):
        raise ValueError(f"--rep-time must be >= 0 seconds, got {args.budget}")
    if args.stop_at is None and os.environ.get("PYGPT_STOP_AT"):
        try:
            args.stop_at = float(os.environ["PYGPT_STOP_AT"])
        except ValueError:
            raise ValueError(f"PYGPT_STOP_AT must be a unix time in seconds, got {os.environ['PYGPT_STOP_AT']!r}") from None
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in args.modes:
        if m not in MODES:
            raise ValueError(f"--modes: unknown mode {m!r}; modes: {', '.join(MODES)}")
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()] if args.backends else None
    if args.dtype is not None and args.dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {args.dtype!r}")
    return args


def pick_device(name: str) -> torch.device:
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: torch sees no CUDA device")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    elif dev.type != "cpu":
        raise ValueError(f"--device must be cpu or cuda[:N], got {name!r}")
    return dev


def device_name(dev: torch.device) -> str:
    """'cpu-<N>core' or the GPU's name, as a file-name-safe slug."""
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
    else:
        n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        name = f"cpu-{n}core"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def interpreted(backend: str) -> bool:
    return backend == "triton" and os.environ.get("TRITON_INTERPRET") == "1"


# ----------------------------------------------------------------------------------------------
# timing


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def time_calls(call, reset, dev, *, budget, reps, min_reps, warmup):
    """Warm up, then time `call()` repetition by repetition; `reset()` runs untimed before each call."""
    first = None
    t0 = time.perf_counter()
    for i in range(max(1, warmup)):
        reset()
        ts = time.perf_counter()
        call()
        sync(dev)
        if first is None:
            first = time.perf_counter() - ts
        if time.perf_counter() - t0 >= 0.25 * budget:
            break
    times = []
    t0 = time.perf_counter()
    while len(times) < reps and (len(times) < min_reps or time.perf_counter() - t0 < budget):
        reset()
        if dev.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            sync(dev)
            start.record()
            call()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            ts = time.perf_counter()
            call()
            times.append(time.perf_counter() - ts)
    return times, first


# ----------------------------------------------------------------------------------------------
# the ops: inputs, calls, work


def make_case(op, args, T, dev, dtype):
    """(inputs needing grad, call(fn) -> outputs, output grads, work dict) for one shape."""
    g = torch.Generator(device="cpu").manual_seed(args.seed + T)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device=dev, dtype=dtype)

    B = max(1, args.tokens // T) if getattr(args, "tokens", None) else args.batch
    if op == "attention":
        H, D = args.heads, args.head_dim
        q, k, v = (rand(B, H, T, D).requires_grad_() for _ in range(3))
        inputs = [q, k, v]
        causal = args.causal
        fwd = 4 * B * H * T * T * D / (2 if causal else 1)
        work = {"unit": "flop", "fwd": fwd, "fwd+bwd": 3.5 * fwd}
        shape = {"B": B, "H": H, "T": T, "D": D, "causal": causal}

        def call(fn):
            return fn(q, k, v, causal)
    elif op == "layer_norm":
        M, C = B * T, args.width
        x, res = rand(M, C).requires_grad_(), rand(M, C).requires_grad_()
        w, b = (1 + rand(C, scale=0.1)).requires_grad_(), rand(C, scale=0.1).requires_grad_()
        inputs = [x, res, w, b]
        s = torch.tensor([], dtype=dtype).element_size()
        fwd, bwd = (4 * M * C + 2 * C) * s, (4 * M * C + 3 * C) * s
        work = {"unit": "byte", "fwd": fwd, "fwd+bwd": fwd + bwd}
        shape = {"rows": M, "C": C, "B": B, "T": T, "residual": True}

        def call(fn):
            return fn(x, w, b, res)
    else:
        M, C, Hd = B * T, args.width, args.hidden
        x = rand(M, C).requires_grad_()
        w_fc, w_proj = rand(Hd, C, scale=C ** -0.5).requires_grad_(), rand(C, Hd, scale=Hd ** -0.5).requires_grad_()
        b_fc, b_proj = rand(Hd, scale=0.02).requires_grad_(), rand(C, scale=0.02).requires_grad_()
        inputs = [x, w_fc, b_fc, w_proj, b_proj]
        gemm = 2 * M * C * Hd
        work = {"unit": "flop", "fwd": 2 * gemm, "fwd+bwd": 6 * gemm}
        shape = {"M": M, "C": C, "hidden": Hd, "B": B, "T": T}

        def call(fn):
            return fn(x, w_fc, b_fc, w_proj, b_proj)
    return inputs, call, work, shape, g


def backend_fn(op, backend):
    """fn(*op args) for one backend through the public op layer; outputs as a tuple."""
    if op == "attention":
        return lambda q, k, v, causal: (ops.attention(q, k, v, causal=causal, backend=backend),)
    if op == "layer_norm":
        return lambda x, w, b, res: ops.layer_norm(x, w, b, residual=res, backend=backend)
    return lambda *a: (ops.gelu_mlp(*a, backend=backend),)


def sdpa_backend_fn(backend_name):
    """torch's SDPA restricted to one of its CUDA backends (raises where that backend cannot run)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    be = getattr(SDPBackend, backend_name)

    def fn(q, k, v, causal):
        with sdpa_kernel([be]):
            return (torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal),)
    return fn


def env_forced_fn(op, var, value):
    """The cuda backend's `op` with an environment switch its launcher reads at every call forced
    to `value` (PYGPT_GEMM for gelu_mlp's GEMM path, PYGPT_ATTN_FWD_ROWS for attention's tile)."""
    inner = backend_fn(op, "cuda")

    def fn(*a):
        old = os.environ.get(var)
        os.environ[var] = value
        try:
            return inner(*a)
        finally:
            if old is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = old
    return fn


def gemm_path_fn(path):
    return env_forced_fn("gelu_mlp", "PYGPT_GEMM", path)


def copy_step(nbytes, dev):
    """A step that copies nbytes/2 bytes device to device: nbytes moved (read + write), like the op."""
    n = max(1, int(nbytes) // 8)  # float32 elements: 4 bytes read + 4 written each
    src = torch.randn(n, device=dev)
    dst = torch.empty_like(src)

    def step():
        dst.copy_(src)
    return step


def torch_layer_norm(x, w, b, res):
    h = x + res
    return torch.nn.functional.layer_norm(h, (h.size(-1),), w, b, 1e-5), h


def compiled_fn(op):
    ref = torch.compile(REFERENCES[op], dynamic=False)
    if op == "attention":
        return lambda q, k, v, causal: (ref(q, k, v, causal),)
    if op == "layer_norm":
        return lambda x, w, b, res: ref(x, w, b, 1e-5, res)
    return lambda *a: (ref(*a),)


def first_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0] if msg else ''}"[:300]


def rate(work_amount, unit, seconds, dev):
    if not seconds:
        return None, None
    if unit == "flop":
        scale, label = (1e12, "TFLOP/s") if dev.type == "cuda" else (1e9, "GFLOP/s")
    else:
        scale, label = 1e9, "GB/s"
    return work_amount / seconds / scale, label


def bench_op(args, dev, dtype, progress=None):
    """(contenders, measurements); `progress(contenders, measurements)` is called after every shape
    (main writes the results so far, so a run stopped from outside still leaves them)."""
    op = args.op
    available = ops.available_backends(op, dev.type)
    unavailable = {b: ops.unavailable_reason(op, b, dev.type) for b in ops.BACKENDS[:-1] if b not in available}
    if op != "attention":
        unavailable.pop("sdpa", None)  # torch's attention: not a contender for the other ops
    contenders = {b: {"name": b, "kind": "backend", "available": True, "note": INTERPRETER_NOTE if interpreted(b) else None}
                  for b in available}
    for b, why in unavailable.items():
        contenders[b] = {"name": b, "kind": "backend", "available": False, "note": why}
    if op == "layer_norm":  # what a PyTorch user writes: the residual add, then F.layer_norm
        contenders["torch"] = {"name": "torch", "kind": "x + residual, then F.layer_norm", "available": True, "note": None}
    if dev.type == "cuda" and op == "attention":
        for name, be in SDPA_BACKENDS.items():
            contenders[name] = {"name": name, "kind": f"F.scaled_dot_product_attention with SDPBackend.{be} only",
                                "available": True, "note": None}
    if dev.type == "cuda" and op == "gelu_mlp" and "cuda" in available:
        from . import _ext

        for name, path in GEMM_PATHS.items():
            ok = path == "mma" or bool((_ext.build_info() or {}).get("cublaslt"))
            contenders[name] = {"name": name, "kind": f"cuda backend with PYGPT_GEMM={path}", "available": ok,
                                "note": None if ok else "pygpt._C was built without cuBLASLt"}
    if dev.type == "cuda" and op == "attention" and "cuda" in available:
        for name, rows in ATTN_FWD_ROWS.items():
            ok = rows == "64" or args.head_dim in (64, 128)
            contenders[name] = {"name": name, "kind": f"cuda backend with PYGPT_ATTN_FWD_ROWS={rows} (forward tile)",
                                "available": ok, "note": None if ok else f"the 128-row forward takes D = 64 or 128, not {args.head_dim}"}
    if dev.type == "cuda" and op == "layer_norm":
        contenders["copy"] = {"name": "copy", "kind": "device-to-device copy moving the same bytes (the ceiling)",
                              "available": True, "note": None}
    contenders["compile"] = {"name": "compile", "kind": "torch.compile(eager reference)", "available": args.compile,
                             "note": None if args.compile else "skipped (--no-compile)"}
    if args.backends is not None:
        for b in args.backends:
            if b not in contenders:
                raise ValueError(f"--backends: unknown contender {b!r} for {op}; known: {', '.join(contenders)}")
        for name, c in contenders.items():
            if name not in args.backends and c["available"]:
                c["available"], c["note"] = False, "skipped (not in --backends)"
    run_names = [n for n, c in contenders.items() if c["available"]]

    measurements = []
    for T in args.seq_lens:
        inputs, call, work, shape, g = make_case(op, args, T, dev, dtype)
        # fixed output gradients for fwd+bwd, made once per shape from an eager forward
        with torch.no_grad():
            outs = call(backend_fn(op, "eager"))
        grads = [torch.randn(o.shape, generator=g).to(device=dev, dtype=o.dtype) for o in outs]
        del outs
        for name in run_names:
            c = contenders[name]
            if not c["available"]:  # compile failed at an earlier shape
                continue
            if interpreted(name) and T != min(args.seq_lens):
                c.setdefault("skipped_T", []).append(T)
                continue
            if name in ("eager", "compile") and getattr(args, "eager_max_t", None) and T > args.eager_max_t:
                c.setdefault("skipped_T", []).append(T)
                continue
            if name == "compile":
                torch._dynamo.reset()  # a fresh, static-shape compile per T (no recompile limits)
                fn = compiled_fn(op)
            elif name == "torch":
                fn = torch_layer_norm
            elif name in SDPA_BACKENDS:
                fn = sdpa_backend_fn(SDPA_BACKENDS[name])
            elif name in GEMM_PATHS:
                fn = gemm_path_fn(GEMM_PATHS[name])
            elif name in ATTN_FWD_ROWS:
                fn = env_forced_fn("attention", "PYGPT_ATTN_FWD_ROWS", ATTN_FWD_ROWS[name])
            elif name == "copy":
                fn = None  # see copy_step
            else:
                fn = backend_fn(op, name)
            for mode in args.modes:
                rec = {"contender": name, "mode": mode, "T": T, "shape": shape, "work": work[mode],
                       "work_unit": work["unit"], "note": c["note"]}
                if args.stop_at is not None and time.time() + 2 * args.budget + 1 > args.stop_at:
                    rec["skipped"] = "time budget reached (--stop-at)"
                    measurements.append(rec)
                    continue

                def reset():
                    for t in inputs:
                        t.grad = None

                if name == "copy":
                    step = copy_step(work[mode], dev)
                elif mode == "fwd":
                    def step():
                        return call(fn)
                else:
                    def step():
                        torch.autograd.backward(call(fn), grads)
                gc.collect()
                try:
                    times, first = time_calls(step, reset, dev, budget=args.budget, reps=args.reps,
                                              min_reps=args.min_reps, warmup=1 if interpreted(name) else args.warmup)
                except Exception as e:  # noqa: BLE001 - a contender failing must not end the run
                    reset()
                    if name == "compile" and not measurements_for(measurements, "compile"):
                        c["available"], c["note"] = False, f"torch.compile failed: {first_line(e)}"
                        print(f"note: compile skipped: {first_line(e)}", file=sys.stderr)
                        break
                    rec["error"] = first_line(e)
                    measurements.append(rec)
                    print(f"note: {name} {mode} T={T} failed: {rec['error']}", file=sys.stderr)
                    continue
                reset()
                med = statistics.median(times)
                value, label = rate(work[mode], work["unit"], med, dev)
                rec.update(median_ms=med * 1e3, min_ms=min(times) * 1e3, max_ms=max(times) * 1e3, count=len(times),
                           first_call_s=first, rate=value, rate_unit=label, times_ms=[t * 1e3 for t in times])
                measurements.append(rec)
                print(f"  {name:<8} {mode:<7} T={T:<5} median {med * 1e3:9.3f} ms  ({len(times)} reps)", file=sys.stderr)
            del fn
        del inputs, grads
        if progress is not None:
            progress(list(contenders.values()), measurements)
    add_ratios(measurements, [n for n in RATIO_BASES if n in contenders or n == "sdpa_best"])
    return list(contenders.values()), measurements


def measurements_for(measurements, name):
    return [m for m in measurements if m["contender"] == name and "median_ms" in m]


def add_ratios(measurements, baselines):
    """speed-up = baseline median / contender median (> 1: faster than the baseline)."""
    index = {(m["contender"], m["mode"], m["T"]): m for m in measurements if "median_ms" in m}
    per_backend = any(name in SDPA_BACKENDS for name, _, _ in index)  # CUDA runs time each SDPA backend
    for (name, mode, T), m in list(index.items()):  # the fastest SDPA backend at each shape
        if per_backend and (name in SDPA_BACKENDS or name == "sdpa"):
            best = index.get(("sdpa_best", mode, T))
            if best is None or m["median_ms"] < best["median_ms"]:
                index[("sdpa_best", mode, T)] = m
    if any(k[0] == "sdpa_best" for k in index) and "sdpa_best" not in baselines:
        baselines = [*baselines, "sdpa_best"]
    for m in measurements:
        for base in baselines:
            ref = index.get((base, m["mode"], m["T"]))
            ok = ref is not None and "median_ms" in m and m["median_ms"] > 0
            m[f"vs_{base}"] = ref["median_ms"] / m["median_ms"] if ok else None


# ----------------------------------------------------------------------------------------------
# train mode


def train_variants(args, dev):
    """[(name, extra trainer flags, reason it cannot run or None)]."""
    out = [("eager", ["--backend", "eager"], None), ("sdpa", ["--backend", "sdpa"], None)]
    reasons = []
    for op in ops.OPS:
        try:
            ops.resolve(op, "auto", dev)
        except ops.BackendUnavailable as e:
            reasons.append(str(e))
    out.append(("fused", ["--fused"], "; ".join(reasons) or None))
    out.append(("compile", ["--compile"], None if args.compile else "skipped (--no-compile)"))
    return out


def steady_rate(log_path):
    """Median tokens/s over the later half of the logged steps (after warm-up and compilation)."""
    try:
        with open(log_path, encoding="utf-8") as f:
            rates = [r["tokens_per_s"] for r in map(json.loads, f) if "tokens_per_s" in r]
    except (OSError, ValueError):
        return None
    rates = rates[len(rates) // 2:]
    return statistics.median(rates) if rates else None


def bench_train(args, dev):
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    contenders, measurements = [], []
    for name, flags, why in train_variants(args, dev):
        if args.backends is not None and name not in args.backends and why is None:
            why = "skipped (not in --backends)"
        contenders.append({"name": name, "kind": "train variant", "available": why is None, "note": why,
                           "flags": flags})
        if why is not None:
            continue
        with tempfile.TemporaryDirectory(prefix=f"pygpt-bench-{name}-") as tmp:
            cmd = [sys.executable, "-m", "pygpt.train", "--preset", args.preset, "--device", str(dev),
                   "--max-iters", str(args.iters), "--eval-interval", str(args.iters), "--eval-iters", "1",
                   "--sample-tokens", "0", "--log-interval", "1", "--out-dir", tmp, *flags]
            if args.data:
                cmd += ["--data", args.data]
            if args.dtype:
                cmd += ["--dtype", {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}.get(args.dtype, args.dtype)]
            cmd += args.train_extra
            print(f"  train {name}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
            rec = {"contender": name, "mode": "train", "cmd": cmd[1:], "iters": args.iters}
            t0 = time.perf_counter()
            try:
                r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
            except subprocess.TimeoutExpired:
                rec["error"] = f"timed out after {args.timeout:.0f}s"
                measurements.append(rec)
                continue
            rec["wall_s"] = time.perf_counter() - t0
            summary_path = os.path.join(tmp, "summary.json")
            if r.returncode != 0 or not os.path.exists(summary_path):
                tail = (r.stderr.strip() or r.stdout.strip()).splitlines()[-1:] or ["no output"]
                rec["error"] = f"exit {r.returncode}: {tail[0][:300]}"
                print(f"note: train {name} failed: {rec['error']}", file=sys.stderr)
                measurements.append(rec)
                continue
            with open(summary_path, encoding="utf-8") as f:
                summary = json.load(f)
            rec.update(train_tokens_per_s=summary.get("train_tokens_per_s"), tokens_per_s=summary.get("tokens_per_s"),
                       steady_tokens_per_s=steady_rate(os.path.join(tmp, "log.jsonl")), summary=summary)
            measurements.append(rec)
    by_name = {m["contender"]: m for m in measurements if m.get("train_tokens_per_s")}
    for m in measurements:
        for key in ("train_tokens_per_s", "steady_tokens_per_s"):
            base = by_name.get("eager", {}).get(key)
            m[f"{key}_vs_eager"] = m[key] / base if m.get(key) and base else None
    return contenders, measurements


# ----------------------------------------------------------------------------------------------
# output


def fmt(x, spec=".3f", none="-"):
    return none if x is None else format(x, spec)


def fmt_rate(x):
    if x is None:
        return "-"
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}" if x >= 0.1 else f"{x:.2g}"


def fmt_ratio(x):
    return "-" if x is None else f"{x:.2f}x"


def md_table(header, rows):
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows])


def op_tables(result):
    ms = result["measurements"]
    names = [c["name"] for c in result["contenders"]]
    bases = [b for b in RATIO_BASES if any(m["contender"] == b and "median_ms" in m for m in ms)
             or (b == "sdpa_best" and any(m.get("vs_sdpa_best") for m in ms))]
    rate_unit = next((m["rate_unit"] for m in ms if m.get("rate_unit")), "rate")
    header = ["T", "contender", "median ms", "min ms", rate_unit] + [f"vs {b}" for b in bases] + ["reps", "note"]
    out = []
    for mode in result["args"]["modes"]:
        rows = []
        for T in result["args"]["seq_lens"]:
            for m in sorted((m for m in ms if m["mode"] == mode and m["T"] == T), key=lambda m: names.index(m["contender"])):
                if "error" in m or "skipped" in m:
                    rows.append([T, m["contender"], "error" if "error" in m else "skipped", "", "",
                                 *[""] * len(bases), "", m.get("error") or m["skipped"]])
                    continue
                rows.append([T, m["contender"], fmt(m["median_ms"]), fmt(m["min_ms"]),
                             fmt_rate(m["rate"]),
                             *[fmt_ratio(m.get(f"vs_{b}")) for b in bases], m["count"], m["note"] or ""])
        out.append(f"### {mode}\n\n" + md_table(header, rows))
    return out


def unavailable_lines(result):
    return [f"- {c['name']}: {c['note']}" for c in result["contenders"] if not c["available"]]


def train_table(result):
    header = ["variant", "train tok/s", "vs eager", "steady tok/s", "vs eager", "wall s", "note"]
    rows = []
    for c in result["contenders"]:
        m = next((m for m in result["measurements"] if m["contender"] == c["name"]), None)
        if m is None:
            rows.append([c["name"], "-", "-", "-", "-", "-", "not run (see below)"])
        elif "error" in m:
            rows.append([c["name"], "error", "", "", "", "", m["error"]])
        else:
            rows.append([c["name"], f"{m['train_tokens_per_s']:,}", fmt_ratio(m["train_tokens_per_s_vs_eager"]),
                         fmt(m["steady_tokens_per_s"], ",.0f"), fmt_ratio(m["steady_tokens_per_s_vs_eager"]),
                         fmt(m["wall_s"], ".1f"), " ".join(c["flags"])])
    return md_table(header, rows)


def title(result):
    a = result["args"]
    if result["op"] == "train":
        return (f"pygpt.bench train: preset {a['preset']}, {a['iters']} iters, device {result['device']} "
                f"({result['device_name']})")
    if result["op"] == "attention":
        shape = f"B={a['batch']} H={a['heads']} D={a['head_dim']} {'causal' if a['causal'] else 'non-causal'}"
    elif result["op"] == "layer_norm":
        shape = f"rows=B·T (B={a['batch']}) C={a['width']} with residual"
    else:
        shape = f"M=B·T (B={a['batch']}) C={a['width']} hidden={a['hidden']}"
    return f"pygpt.bench {result['op']}: {shape}, {result['dtype']}, device {result['device']} ({result['device_name']})"


def render(result) -> str:
    info = result["info"]
    parts = [f"## {title(result)}", "",
             f"{result['created']} | torch {info['torch']} | {info['cpu']} x{info['cpu_count']} | "
             f"GPU {info['gpu'] or 'none'} | threads {result['threads']}"
             + (" | quick (smoke configuration, not a speed figure)" if result["args"]["quick"] else ""), ""]
    if result["op"] == "train":
        parts += [train_table(result), "",
                  "train tok/s: the trainer's summary.json (all steps, compile time included); "
                  "steady tok/s: median over the later half of the steps."]
    else:
        parts += ["median / min of the timed repetitions; vs X = X's median / this median (> 1: faster); "
                  f"work counted as {result['counting']}.", ""]
        parts += [p + "\n" for p in op_tables(result)]
    if result.get("warning"):
        parts += ["", f"WARNING: {result['warning']}"]
    lines = unavailable_lines(result)
    if lines:
        parts += ["", "not run:", *lines]
    return "\n".join(parts).rstrip() + "\n"


def plot(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ms = [m for m in result["measurements"] if "error" not in m and "skipped" not in m]
    if result["op"] == "train":
        fig, ax = plt.subplots(figsize=(6, 4))
        names = [m["contender"] for m in ms]
        ax.bar(names, [m["train_tokens_per_s"] for m in ms], label="summary (all steps)", alpha=0.6)
        ax.plot(names, [m["steady_tokens_per_s"] or float("nan") for m in ms], "ko", label="steady (later half)")
        ax.set_ylabel("tokens/s")
        ax.legend()
        axes = [ax]
    else:
        modes = result["args"]["modes"]
        fig, axes = plt.subplots(1, len(modes), figsize=(5.5 * len(modes), 4), squeeze=False)
        axes = axes[0]
        for ax, mode in zip(axes, modes):
            for c in result["contenders"]:
                pts = sorted((m["T"], m["median_ms"]) for m in ms if m["contender"] == c["name"] and m["mode"] == mode)
                if pts:
                    label = c["name"] + (" (interpreter)" if c["note"] == INTERPRETER_NOTE else "")
                    ax.plot(*zip(*pts), "o-", label=label)
            ax.set_xscale("log", base=2)
            Ts = sorted({m["T"] for m in ms})
            ax.set_xticks(Ts, [str(t) for t in Ts])
            ax.minorticks_off()
            ax.set_yscale("log")
            ax.set_xlabel("T (sequence length)")
            ax.set_ylabel("median ms")
            ax.set_title(mode)
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=8)
    fig.suptitle(title(result), fontsize=9)
    fig.tight_layout()
    tmp = path + ".tmp"
    fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    os.replace(tmp, path)


def write_results(result, out_dir, make_plot=True):
    os.makedirs(out_dir, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = os.path.join(out_dir, f"{result['device_name']}-{result['op']}-{stamp}")
    n = 1
    while os.path.exists(base + ".json"):  # two runs in one second
        n += 1
        base = os.path.join(out_dir, f"{result['device_name']}-{result['op']}-{stamp}-{n}")
    files = {"json": base + ".json", "md": base + ".md"}
    if make_plot:
        files["png"] = base + ".png"
    result["files"] = {k: os.path.basename(v) for k, v in files.items()}
    with open(files["md"], "w", encoding="utf-8") as f:
        f.write(render(result))
    if make_plot:
        try:
            plot(result, files["png"])
        except Exception as e:  # noqa: BLE001 - a plotting problem must not lose the measurements
            print(f"note: no plot: {first_line(e)}", file=sys.stderr)
            del files["png"], result["files"]["png"]
    tmp = files["json"] + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1, default=str)
    os.replace(tmp, files["json"])
    return files


COUNTING = {
    "attention": "FLOPs: fwd 4·B·H·T²·D (/2 causal), bwd 2.5 x fwd",
    "layer_norm": "bytes: fwd (4·M·C + 2·C)·s, bwd (4·M·C + 3·C)·s",
    "gelu_mlp": "FLOPs: 2·M·K·N per GEMM, 2 GEMMs fwd, 4 bwd",
}


def main(argv=None) -> int:
    args = parse_args(argv)
    dev = pick_device(args.device)
    from .info import collect  # (not `from . import info`: the package's info() function shadows it)

    if args.op == "train":
        dtype_name = args.dtype or "trainer default"
    else:
        dtype = DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if dev.type == "cuda" else torch.float32)
        dtype_name = str(dtype).replace("torch.", "")
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    saved = {k: v for k, v in vars(args).items() if k != "train_extra"}
    saved["train_extra"] = args.train_extra
    result = {"op": args.op, "device": str(dev), "device_name": device_name(dev), "dtype": dtype_name,
              "created": _dt.datetime.now().isoformat(timespec="seconds"), "argv": list(sys.argv[1:] if argv is None else argv),
              "args": saved, "threads": torch.get_num_threads(), "load_before": load, "info": collect(),
              "triton_interpret": os.environ.get("TRITON_INTERPRET") == "1"}
    print(f"{title(result)} - measuring...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    if args.op == "train":
        result["contenders"], result["measurements"] = bench_train(args, dev)
    else:
        result["counting"] = COUNTING[args.op]
        partial = os.path.join(args.out, f"{result['device_name']}-{args.op}-partial-{os.getpid()}.json")

        def progress(contenders, measurements):  # the results so far, replaced atomically
            os.makedirs(args.out, exist_ok=True)
            with open(partial + ".tmp", "w", encoding="utf-8") as f:
                json.dump({**result, "partial": True, "contenders": contenders, "measurements": measurements}, f,
                          default=str)
            os.replace(partial + ".tmp", partial)

        result["contenders"], result["measurements"] = bench_op(args, dev, dtype, progress)
        if os.path.exists(partial):
            os.remove(partial)  # superseded by the full results below
    result["bench_wall_s"] = time.perf_counter() - t0
    result["load_after"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    # load_after includes this benchmark's own threads; only the load found at the start says "busy"
    busy = result["load_before"]
    if dev.type == "cpu" and busy is not None and busy >= 0.5 * (os.cpu_count() or 1):
        result["warning"] = (f"the machine was busy (1-min load average {busy:.2f} on {os.cpu_count()} CPUs at the "
                             "start): other processes competed for the cores, CPU timings are noisy or inflated")
    files = write_results(result, args.out, args.plot)
    print(render(result))
    print("wrote " + ", ".join(files.values()))
    ok = [m for m in result["measurements"] if "error" not in m and "skipped" not in m]
    if not ok:
        print("error: no contender produced a measurement", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
