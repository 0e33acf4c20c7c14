"""The GPU check: one command that builds, tests, sanitizes and benchmarks pygpt on a CUDA machine
inside a fixed time budget, and packs what it found into three files.

    python -m pygpt.gpucheck --budget 540 --out "$OUT"   # on a lent GPU machine: everything
    python -m pygpt.gpucheck --plan                      # the steps and their time estimates
    python -m pygpt.gpucheck --dry-run --budget 120      # the whole plan on the CPU (CI runs this)
    python -m pygpt.gpucheck --readme                    # docs/results.md's GPU section from bench/results

Steps, in this order, each a subprocess whose output streams to its own log:
  build        pip install --no-build-isolation --no-deps -e .  for this GPU's architecture only
               (ninja, all cores; no network: torch, Triton and nvcc must be there)
  info         python -m pygpt.info
  tests        the kernel parity tests on cuda and triton (tests/kernels -k "cuda or triton") in
               their planned subset (--gpu-plan, tests/conftest.py: every kernel, dtype, causal mode
               and shape value at least once), one Triton config per kernel, Triton's cache empty at
               the start (its compiles are part of the step's time and counted in the report)
  buildchecks  tests/test_cuda_build.py: nvcc -cubin for sm_80/sm_90, no spills, HMMA in the SASS
  memcheck     compute-sanitizer --tool memcheck on small calls of every CUDA kernel, with the
               caching allocator off (PYTORCH_NO_CUDA_MEMORY_CACHING=1) so an out-of-bounds access
               cannot land inside a larger cached segment unseen
  racecheck    compute-sanitizer --tool racecheck on the same calls
  bench-*      python -m pygpt.bench at a few decisive points, bf16, --no-compile: attention causal
               D = 64 and 128 at T = 1k and 4k (B·T = 16k, H·D = 2048) against every SDPA backend
               (flash, efficient, cuDNN), both forward tiles of the CUDA kernel; LayerNorm + residual
               at C = 2048 against a device copy of the same bytes; the GELU MLP at GPT-2 small's
               width against eager, with both GEMM paths (hand-written mma, cuBLASLt)
  bench-tuned  only if time is left: torch.compile and autotuned Triton at one attention shape

The budget (--budget, seconds, for the whole command) is kept like this: a step starts only if its
estimate fits in what is left (less a reserve for packing); otherwise it is skipped and the report
says why. A step that started gets PYGPT_STOP_AT (a unix time) in its environment: pytest skips the
tests that would start after it (tests/conftest.py) and still prints its summary; the benchmark
records the measurements it did not start as skipped and writes its results. Only a step that
ignores that (a hung build or sanitizer) is killed, at its limit, and its log is kept.

After every step the results so far are written, atomically, to --out (default $OUT if set, else
bench/results): <gpu>-<YYYYMMDD>.json (every step's status, time, estimate, test counts and
failures, sanitizer summaries, the benchmarks' full results and their key figures),
<gpu>-<YYYYMMDD>.md (the report) and <gpu>-<YYYYMMDD>-logs.tar.gz (every log, the pytest JUnit
XML, the benchmarks' own files): three files, so a lease that returns at most 8 brings back all.
The exit status is 1 if a step failed, else 0 (skipped steps are reported, not failures).

The estimates are for an H100/H200 machine with 16 cores from a cold start (empty Triton cache);
they are guesses until a GPU run records real times (each step's `seconds` in the JSON): correct
them from there. `--dry-run` runs the same plan on the CPU with stand-ins (the installed extension
instead of a build, the Triton interpreter, the sanitizer payload without a sanitizer, --quick CPU
benchmarks) and CPU estimates, so CI checks the harness: the order, the budget logic, the packing.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import glob
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET

from ._cli import Parser, run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README_START, README_END = "<!-- gpu-results:start -->", "<!-- gpu-results:end -->"
# the attention benchmark points: B·T = 16k tokens and H·D = 2048 as FlashAttention's own benchmark
# does (so every T does the same work per token)
ATTN_TS = (1024, 4096)
TOKENS, HIDDEN = 16384, 2048
RESERVE_S = 10  # kept back from the budget for the last packing and the summary
ATTN_CONTENDERS = "cuda,cuda-rows64,cuda-rows128,triton,sdpa-flash,sdpa-efficient,sdpa-cudnn"
SANITIZER_UNSUPPORTED = ("Device not supported", "error 999", "unsupported on this device")


def _slug(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-")


def sanitizer_payload(which: str, device: str = "cuda") -> None:
    """Small calls of every CUDA kernel (forward and backward), run under compute-sanitizer
    (python -m pygpt.gpucheck --payload all). --payload-device cpu runs the same calls on the CPU
    backend: the dry run's stand-in."""
    import torch

    from . import ops

    dev = torch.device(device)
    backend = "cuda" if dev.type == "cuda" else "cpu"
    g = torch.Generator(device="cpu").manual_seed(0)
    lowp = torch.bfloat16 if dev.type == "cuda" else torch.float32

    def rand(*shape, dtype=lowp):
        return torch.randn(*shape, generator=g).to(dev, dtype).requires_grad_()

    which = set(which.split(",")) if which != "all" else {"attention", "layer_norm", "gelu_mlp"}
    if "attention" in which:
        rows = (None, "64", "128") if dev.type == "cuda" else (None,)
        for causal, T, D in ((True, 77, 64), (False, 33, 40), (True, 130, 128)):
            for r in rows:  # both forward tiles where the 128-row one applies
                if r == "128" and D not in (64, 128):
                    continue
                if r is not None:
                    os.environ["PYGPT_ATTN_FWD_ROWS"] = r
                q, k, v = (rand(2, 3, T, D) for _ in range(3))
                ops.attention(q, k, v, causal=causal, backend=backend).sum().backward()
        os.environ.pop("PYGPT_ATTN_FWD_ROWS", None)
    if "layer_norm" in which:
        for C in (7, 1000, 2048, 4097):
            x, r = rand(65, C, dtype=torch.float32), rand(65, C, dtype=torch.float32)
            w, b = rand(C, dtype=torch.float32), rand(C, dtype=torch.float32)
            y, h = ops.layer_norm(x, w, b, residual=r, backend=backend)
            (y.sum() + h.sum()).backward()
            xb, wb = rand(33, C), rand(C)
            ops.layer_norm(xb, wb, None, backend=backend).sum().backward()
    if "gelu_mlp" in which:
        for path in (("mma", "cublaslt") if dev.type == "cuda" else ("cpu",)):
            os.environ["PYGPT_GEMM"] = path
            x, w1, b1 = rand(37, 72), rand(288, 72), rand(288)
            w2, b2 = rand(72, 288), rand(72)
            ops.gelu_mlp(x, w1, b1, w2, b2, backend=backend).sum().backward()
        os.environ.pop("PYGPT_GEMM", None)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    print(f"payload {','.join(sorted(which))} on {device}: ok")


# ----------------------------------------------------------------------------------------------
# the plan


@dataclasses.dataclass
class Step:
    name: str
    argv: list
    env: dict
    estimate: float  # seconds expected (see the module docstring)
    limit: float  # seconds after which it is killed (only a step ignoring PYGPT_STOP_AT gets there)
    what: str  # one line for --plan and the report
    kind: str = "run"  # build | info | pytest | sanitizer | bench
    optional: bool = False  # run only if time is left (no failure if skipped)


def _xdist_workers(n_cpu: int, cap: int) -> list:
    if importlib.util.find_spec("xdist") is None or n_cpu < 4:
        return []
    return ["-n", str(min(cap, n_cpu // 2))]


def plan(args, work: str, py: str | None = None) -> list:
    """The steps of this run (GPU, or the CPU stand-ins with --dry-run), in order."""
    py = py or sys.executable
    dry = args.dry_run
    n_cpu = os.cpu_count() or 4
    logs = os.path.join(work, "logs")
    bench_out = os.path.join(work, "bench")
    steps = []
    if not args.skip_build:
        if dry:
            steps.append(Step("build", [py, "-c", "import torch; from pygpt import _ext; "
                                        "assert _ext.loaded(), _ext.LOAD_ERROR; print('pygpt._C', _ext.build_info())"],
                              {}, 15, 60, "stand-in: the installed extension loads (nothing is built on the CPU)",
                              "build"))
        else:
            env = {"MAX_JOBS": str(n_cpu)}
            if args.arch:
                env["TORCH_CUDA_ARCH_LIST"] = args.arch
            steps.append(Step("build", [py, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "-e", ROOT],
                              env, 100, 300, f"pip install -e . for sm {args.arch or '(this GPU)'} only, ninja, "
                              f"{n_cpu} jobs", "build"))
    steps.append(Step("info", [py, "-m", "pygpt.info"], {}, 15 if not dry else 10, 60, "python -m pygpt.info", "info"))
    pytest = [py, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider"]
    tests_env = {"PYGPT_TRITON_AUTOTUNE": "0", "TRITON_CACHE_DIR": os.path.join(work, "triton-cache")}
    if dry:
        tests_env["TRITON_INTERPRET"] = "1"
        select, est, what = "triton", 90, "stand-in: the planned Triton cases under the interpreter (cuda: none here)"
    else:
        select, est, what = "cuda or triton", 120, "planned kernel parity subset on cuda + triton"
    steps.append(Step("tests", pytest + [os.path.join(ROOT, "tests", "kernels"), "-k", select, "--gpu-plan",
                                         f"--junitxml={os.path.join(logs, 'tests.xml')}"]
                      + _xdist_workers(n_cpu, 8), tests_env, est, 300, what, "pytest"))
    steps.append(Step("buildchecks", pytest + [os.path.join(ROOT, "tests", "test_cuda_build.py"),
                                               f"--junitxml={os.path.join(logs, 'buildchecks.xml')}"]
                      + _xdist_workers(n_cpu, 6), {}, 150 if dry else 30, 240,
                      "nvcc -cubin sm_80/sm_90: no spills, HMMA present", "pytest"))
    payload = [py, "-m", "pygpt.gpucheck", "--payload", "all"]
    sani = args.sanitizer or "compute-sanitizer"
    for tool, env in (("memcheck", {"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"}), ("racecheck", {})):
        if dry:
            steps.append(Step(tool, payload + ["--payload-device", "cpu"], env, 20, 120,
                              f"stand-in: the {tool} payload on the CPU backend, no sanitizer", "sanitizer"))
        else:
            extra = ["--leak-check", "no"] if tool == "memcheck" else []
            steps.append(Step(tool, [sani, "--tool", tool, *extra, "--error-exitcode", "7", *payload],
                              {**env, "PYGPT_GEMM": "auto"}, 60, 180,
                              f"compute-sanitizer {tool} on small calls of every CUDA kernel"
                              + (" (caching allocator off)" if env else ""), "sanitizer"))
    bench = [py, "-m", "pygpt.bench", "--no-plot", "--out", bench_out]
    bench_env = {"PYGPT_TRITON_AUTOTUNE": "0", "TRITON_CACHE_DIR": os.path.join(work, "triton-cache")}
    if dry:
        bench = bench + ["--device", "cpu", "--quick", "--no-compile"]
        for op in ("attention", "layer_norm", "gelu_mlp"):
            steps.append(Step(f"bench-{op}", bench + [op], {}, 25, 120, f"stand-in: {op} --quick on the CPU", "bench"))
        steps.append(Step("bench-tuned", [py, "-m", "pygpt.bench", "--no-plot", "--out", bench_out, "attention",
                                          "--device", "cpu", "--quick", "--backends", "eager,compile"], {}, 60, 180,
                          "stand-in: torch.compile on the CPU", "bench", optional=True))
        return steps
    rep = ["--device", "cuda", "--dtype", "bfloat16", "--rep-time", str(args.rep_time), "--warmup", "2"]
    for D in (64, 128):
        steps.append(Step(f"bench-attention-d{D}", bench + rep + [
            "attention", "--head-dim", str(D), "--heads", str(HIDDEN // D), "--causal", "--tokens", str(TOKENS),
            "--seq-lens", ",".join(map(str, ATTN_TS)), "--no-compile", "--backends", ATTN_CONTENDERS],
            bench_env, 30, 150, f"attention causal D={D}, T=1k/4k vs SDPA flash/efficient/cuDNN, both fwd tiles",
            "bench"))
    steps.append(Step("bench-layer_norm", bench + rep + [
        "layer_norm", "--batch", "8", "--seq-lens", "1024,4096", "--width", "2048", "--no-compile",
        "--backends", "copy,cuda,triton,torch"], bench_env, 25, 120,
        "LayerNorm + residual, 8k and 32k rows of 2048, vs a device copy", "bench"))
    steps.append(Step("bench-gelu_mlp", bench + rep + [
        "gelu_mlp", "--batch", "8", "--seq-lens", "1024", "--width", "768", "--no-compile",
        "--backends", "eager,cuda,cuda-mma,cuda-cublaslt,triton"], bench_env, 30, 120,
        "GELU MLP 8k x 768 (hidden 3072) vs eager, both GEMM paths", "bench"))
    steps.append(Step("bench-tuned", bench + rep + [
        "attention", "--head-dim", "64", "--heads", "32", "--causal", "--tokens", str(TOKENS), "--seq-lens", "4096",
        "--backends", "triton,compile,sdpa-flash"], {"TRITON_CACHE_DIR": os.path.join(work, "triton-cache")},
        120, 240, "if time is left: autotuned Triton and torch.compile, attention D=64 T=4k", "bench", optional=True))
    return steps


# ----------------------------------------------------------------------------------------------
# running the steps


def _run_one(step: Step, timeout: float, stop_at: float, log_path: str):
    """(return code or 'timeout'/'missing', seconds). Output streams into log_path as it comes."""
    env = {**os.environ, **step.env, "PYGPT_STOP_AT": f"{stop_at:.3f}"}
    t0 = time.monotonic()
    with open(log_path, "w", encoding="utf-8") as log:
        log.write(f"$ {' '.join(f'{k}={v}' for k, v in step.env.items())} {' '.join(step.argv)}\n")
        log.flush()
        try:
            proc = subprocess.Popen(step.argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                    start_new_session=True)
        except FileNotFoundError as e:
            log.write(f"[gpucheck] cannot run: {e}\n")
            return "missing", time.monotonic() - t0
        try:
            rc = proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            for sig in (signal.SIGTERM, signal.SIGKILL):  # the whole process group (pytest workers, nvcc)
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=5)
                    break
                except subprocess.TimeoutExpired:
                    continue
            log.write(f"\n[gpucheck] killed at its limit of {timeout:.0f}s\n")
            rc = "timeout"
    return rc, time.monotonic() - t0


def _junit(path: str) -> dict | None:
    """Counts and the failing tests (id and first line of the message) from pytest's JUnit XML."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0, "time_s": 0.0}
    failed, budget_skipped, slowest = [], 0, []
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        counts["tests"] += 1
        counts["time_s"] += float(case.get("time") or 0)
        slowest.append((float(case.get("time") or 0), name))
        for tag in ("failure", "error"):
            el = case.find(tag)
            if el is not None:
                counts["failures" if tag == "failure" else "errors"] += 1
                msg = (el.get("message") or el.text or "").strip().splitlines()
                failed.append({"test": name, "message": msg[0][:300] if msg else ""})
        sk = case.find("skipped")
        if sk is not None:
            counts["skipped"] += 1
            if "gpucheck budget reached" in (sk.get("message") or ""):
                budget_skipped += 1
    counts["time_s"] = round(counts["time_s"], 1)
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return {**counts, "budget_skipped": budget_skipped, "failed": failed[:40],
            "slowest": [{"test": n, "s": round(t, 2)} for t, n in sorted(slowest, reverse=True)[:8]]}


def _inspect(step: Step, rec: dict, out: str, work: str, bench_seen: set) -> None:
    """Fill `rec` with what this step's output says (test counts, sanitizer summary, bench files)."""
    lines = out.strip().splitlines()
    rec["tail"] = lines[-6:]
    if step.kind == "pytest":
        rec["summary"] = next((ln.strip("= ").strip() for ln in reversed(lines)
                               if re.search(r"\d+ (passed|failed|error|skipped|deselected)", ln)), None)
        xml = next((a.split("=", 1)[1] for a in step.argv if a.startswith("--junitxml=")), None)
        rec["junit"] = _junit(xml) if xml else None
        cache = step.env.get("TRITON_CACHE_DIR")
        if cache:
            rec["triton_kernels_compiled"] = len(glob.glob(os.path.join(cache, "*", "*.cubin")))
    elif step.kind == "sanitizer":
        rec["sanitizer_summary"] = next((ln.strip() for ln in reversed(lines) if "SUMMARY" in ln), None)
        if rec["status"] == "failed" and any(m in out for m in SANITIZER_UNSUPPORTED):
            rec["status"], rec["why"] = "unsupported", "compute-sanitizer does not support this device/runtime"
    elif step.kind == "bench":
        new = sorted(set(glob.glob(os.path.join(work, "bench", "*.json"))) - bench_seen)
        bench_seen.update(new)
        rec["bench_files"] = [os.path.basename(f) for f in new]
    elif step.kind == "build":
        rec["ninja"] = shutil.which("ninja") is not None or importlib.util.find_spec("ninja") is not None


def run_steps(steps, args, work: str, write):
    """Run `steps` within args.budget seconds; `write(results)` after every step."""
    t_start = time.monotonic()
    deadline = t_start + args.budget
    results, bench_seen = [], set()
    os.makedirs(os.path.join(work, "logs"), exist_ok=True)
    os.makedirs(os.path.join(work, "bench"), exist_ok=True)
    for step in steps:
        left = deadline - time.monotonic() - RESERVE_S
        rec = {"step": step.name, "what": step.what, "cmd": " ".join(step.argv), "env": step.env,
               "estimate_s": step.estimate, "optional": step.optional}
        if step.estimate > left:
            rec.update(status="skipped", why=f"needs ~{step.estimate:.0f}s, {max(0.0, left):.0f}s left "
                                             f"of the {args.budget:.0f}s budget")
            print(f"[gpucheck] {step.name}: skipped ({rec['why']})", flush=True)
            results.append(rec)
            write(results)
            continue
        limit = min(step.limit, left)
        # the step stops itself a little before its limit, so it ends with its summary written
        stop_at = time.time() + max(0.5 * limit, limit - max(5.0, 0.1 * limit))
        log_path = os.path.join(work, "logs", f"{step.name}.log")
        print(f"[gpucheck] {step.name}: running ({step.what}; ~{step.estimate:.0f}s, limit {limit:.0f}s)", flush=True)
        rc, secs = _run_one(step, limit, stop_at, log_path)
        status = "ok" if rc == 0 else ("timeout" if rc == "timeout" else ("missing" if rc == "missing" else "failed"))
        rec.update(status=status, rc=rc, seconds=round(secs, 1), log=f"logs/{step.name}.log")
        with open(log_path, encoding="utf-8", errors="replace") as f:
            out = f.read()
        _inspect(step, rec, out, work, bench_seen)
        note = rec.get("summary") or rec.get("sanitizer_summary") or ""
        print(f"[gpucheck] {step.name}: {rec['status']} in {rec['seconds']}s {note}".rstrip(), flush=True)
        if rec["status"] not in ("ok",):
            print("\n".join("    " + ln for ln in rec["tail"]), flush=True)
        results.append(rec)
        write(results)
    return results


# ----------------------------------------------------------------------------------------------
# the summary tables (also README's GPU section)


def key_figures(bench_results):
    """Rows of the three summary tables from the benchmark results (pygpt.bench JSON dicts)."""
    attn, ln, mlp = [], [], []
    for r in bench_results:
        if not r or "measurements" not in r:
            continue
        ms = [m for m in r["measurements"] if "median_ms" in m]
        get = lambda c, mode, T: next((m for m in ms if m["contender"] == c and m["mode"] == mode and m["T"] == T), None)  # noqa: E731
        for T in sorted({m["T"] for m in ms}):
            if r["op"] == "attention":
                a = r["args"]
                shape = next(m["shape"] for m in ms if m["T"] == T)
                row = {"D": a["head_dim"], "causal": a["causal"], "T": T, "B": shape.get("B"), "H": a["heads"]}
                for mode in ("fwd", "fwd+bwd"):
                    for c in ("cuda", "triton", "sdpa-flash", "sdpa-cudnn", "cuda-rows64", "cuda-rows128"):
                        m = get(c, mode, T)
                        row[f"{c} {mode}"] = m["rate"] if m else None
                    best = [m for m in ms if m["mode"] == mode and m["T"] == T and m["contender"].startswith("sdpa")]
                    row[f"sdpa_best {mode}"] = max((m["rate"] for m in best), default=None)
                    for c in ("cuda", "triton"):
                        m = get(c, mode, T)
                        row[f"{c}/sdpa_best {mode}"] = m.get("vs_sdpa_best") if m else None
                        row[f"{c}/flash {mode}"] = m.get("vs_sdpa-flash") if m else None
                    r64, r128 = get("cuda-rows64", mode, T), get("cuda-rows128", mode, T)
                    row[f"rows128/rows64 {mode}"] = r64["median_ms"] / r128["median_ms"] if r64 and r128 else None
                attn.append(row)
            elif r["op"] == "layer_norm":
                m0 = next((m for m in ms if m["T"] == T), None)
                row = {"rows": m0["shape"].get("rows") if m0 else None, "T": T, "C": r["args"]["width"]}
                for c in ("copy", "cuda", "triton", "torch", "eager"):
                    m = get(c, "fwd+bwd", T)
                    row[f"{c} GB/s"] = m["rate"] if m else None
                    row[f"{c} vs copy"] = m.get("vs_copy") if m else None
                ln.append(row)
            elif r["op"] == "gelu_mlp":
                row = {"T": T, "C": r["args"]["width"], "hidden": r["args"]["hidden"]}
                for c in ("eager", "cuda", "cuda-mma", "cuda-cublaslt", "triton", "compile"):
                    m = get(c, "fwd+bwd", T)
                    row[f"{c} ms"] = m["median_ms"] if m else None
                    row[f"{c} vs eager"] = m.get("vs_eager") if m else None
                mma, lt = get("cuda-mma", "fwd+bwd", T), get("cuda-cublaslt", "fwd+bwd", T)
                row["mma / cublaslt speed"] = lt["median_ms"] / mma["median_ms"] if mma and lt else None
                mlp.append(row)
    return {"attention": attn, "layer_norm": ln, "gelu_mlp": mlp}


def _f(x, spec):
    return "-" if x is None else format(x, spec)


def render(summary) -> str:
    """The key figures (README's GPU section and the report's head)."""
    from .bench import md_table

    fig = summary["figures"]
    steps = summary["steps"]
    benches = [s for s in steps if s["step"].startswith("bench-")]
    lines = [f"GPU check on **{summary['gpu']}** ({summary['date']}; torch {summary['torch']}, "
             f"Triton {summary['triton']}, CUDA {summary['cuda']}). Steps: "
             + ", ".join(f"{s['step']} {s['status']}" for s in steps if not s["step"].startswith("bench-"))
             + f"; benchmarks: {sum(s['status'] == 'ok' for s in benches)}/{len(benches)} ran.", ""]
    tests = next((s for s in steps if s["step"] == "tests"), None)
    if tests and tests.get("summary"):
        lines += [f"Kernel tests on the GPU (planned subset): {tests['summary']}", ""]
    if fig["attention"]:
        lines += ["Attention, bf16, TFLOP/s (FlashAttention's count), B·T = 16k tokens, H·D = 2048:", ""]
        hdr = ["D", "mask", "T", "cuda fwd", "cuda fwd+bwd", "triton fwd+bwd", "sdpa best fwd+bwd",
               "cuda / sdpa best", "cuda / sdpa flash", "triton / sdpa best", "fwd rows128 / rows64"]
        rows = [[r["D"], "causal" if r["causal"] else "full", r["T"], _f(r["cuda fwd"], ".0f"),
                 _f(r["cuda fwd+bwd"], ".0f"), _f(r["triton fwd+bwd"], ".0f"), _f(r["sdpa_best fwd+bwd"], ".0f"),
                 _f(r["cuda/sdpa_best fwd+bwd"], ".2f"), _f(r["cuda/flash fwd+bwd"], ".2f"),
                 _f(r["triton/sdpa_best fwd+bwd"], ".2f"), _f(r.get("rows128/rows64 fwd"), ".2f")]
                for r in sorted(fig["attention"], key=lambda r: (r["D"], not r["causal"], r["T"]))]
        lines += [md_table(hdr, rows), ""]
    if fig["layer_norm"]:
        lines += ["LayerNorm + residual, bf16, forward+backward, GB/s (vs copy = fraction of a device copy's "
                  "bandwidth measured in the same run):", ""]
        hdr = ["rows", "C", "copy", "cuda", "cuda vs copy", "triton", "triton vs copy", "torch (add + F.layer_norm)"]
        rows = [[r["rows"], r["C"], _f(r["copy GB/s"], ".0f"), _f(r["cuda GB/s"], ".0f"), _f(r["cuda vs copy"], ".2f"),
                 _f(r["triton GB/s"], ".0f"), _f(r["triton vs copy"], ".2f"), _f(r["torch GB/s"], ".0f")]
                for r in fig["layer_norm"]]
        lines += [md_table(hdr, rows), ""]
    if fig["gelu_mlp"]:
        lines += ["GELU MLP, bf16, forward+backward, median ms (speed-up vs eager):", ""]
        hdr = ["T (B=8)", "C", "eager", "cuda (auto)", "cuda mma", "cuda cuBLASLt", "mma / cuBLASLt speed", "triton"]
        rows = [[r["T"], r["C"], _f(r["eager ms"], ".3f"),
                 f"{_f(r['cuda ms'], '.3f')} ({_f(r['cuda vs eager'], '.2f')}x)",
                 f"{_f(r['cuda-mma ms'], '.3f')} ({_f(r['cuda-mma vs eager'], '.2f')}x)",
                 f"{_f(r['cuda-cublaslt ms'], '.3f')} ({_f(r['cuda-cublaslt vs eager'], '.2f')}x)",
                 _f(r["mma / cublaslt speed"], ".2f"),
                 f"{_f(r['triton ms'], '.3f')} ({_f(r['triton vs eager'], '.2f')}x)"] for r in fig["gelu_mlp"]]
        lines += [md_table(hdr, rows), ""]
    return "\n".join(lines).rstrip() + "\n"


def report(summary) -> str:
    """The Markdown report: the verdict, every step, the test failures, then every benchmark's table."""
    from . import bench
    from .bench import md_table

    steps = summary["steps"]
    title = "dry run on the CPU (stand-ins; not GPU results)" if summary.get("dry_run") else summary["gpu"]
    parts = [f"# pygpt GPU check: {title}, {summary['date']}", "", summary["verdict"], ""]
    rows = [[s["step"], s["status"], _f(s.get("seconds"), ".1f"), _f(s["estimate_s"], ".0f"),
             (s.get("why") or s.get("summary") or s.get("sanitizer_summary") or "")[:120]] for s in steps]
    parts += [md_table(["step", "status", "seconds", "estimate", "note"], rows), ""]
    for s in steps:
        j = s.get("junit")
        if j:
            parts.append(f"**{s['step']}**: {j['passed']} passed, {j['failures']} failed, {j['errors']} errors, "
                         f"{j['skipped']} skipped ({j['budget_skipped']} for the budget) of {j['tests']}"
                         + (f"; {s['triton_kernels_compiled']} Triton kernels compiled from an empty cache"
                            if s.get("triton_kernels_compiled") else ""))
            parts += [f"- FAILED {f['test']}: {f['message']}" for f in j["failed"]]
            parts.append("")
    if any(summary["figures"].values()):
        parts += ["## Key figures", "", render(summary)]
    for name, result in summary.get("bench", {}).items():
        try:
            parts += [bench.render(result), ""]
        except (KeyError, TypeError, ValueError) as e:  # a partial result: say so, keep the rest
            parts += [f"## {name}", "", f"(cannot render: {e!r})", ""]
    return "\n".join(parts).rstrip() + "\n"


def newest_summary(results_dir):
    found = []
    for path in glob.glob(os.path.join(results_dir, "*.json")):
        if re.search(r"-\d{8}(-\d+)?\.json$", path):
            r = _load_json(path)
            if r and r.get("kind") == "gpucheck" and not r.get("dry_run"):
                found.append((r.get("created", ""), path, r))
    return max(found, key=lambda t: t[:2])[1:] if found else (None, None)


def _load_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def update_readme(results_dir, readme=os.path.join(ROOT, "docs", "results.md")) -> str:
    """Rewrite the GPU section of docs/results.md (between the gpu-results markers) from the newest check."""
    path, summary = newest_summary(results_dir)
    if summary is None:
        body = ("**Unmeasured.** No GPU has run `python -m pygpt.gpucheck` on this code yet: every CUDA and "
                "Triton speed figure (attention vs SDPA, LayerNorm vs copy bandwidth, GELU MLP vs eager, the "
                "hand-written GEMM vs cuBLASLt) is still to be measured, and the CUDA kernels' GPU parity tests "
                "have not run. They compile for sm_80 and sm_90 in CI.\n")
    else:
        body = f"From `{os.path.relpath(path, ROOT)}` (generated by `python -m pygpt.gpucheck --readme`):\n\n" + render(summary)
    with open(readme, encoding="utf-8") as f:
        text = f.read()
    if README_START not in text or README_END not in text:
        raise ValueError(f"{readme} lacks the {README_START} / {README_END} markers")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    new = f"{head}{README_START}\n{body}{README_END}{tail}"
    if new != text:
        tmp = readme + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(new)
        os.replace(tmp, readme)
    return path or "none"


# ----------------------------------------------------------------------------------------------
# packing


def _atomic_write(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def pack(base: str, work: str, summary: dict) -> list:
    """Write <base>.json, <base>.md and <base>-logs.tar.gz (each replaced atomically); their paths."""
    bench = {}
    for path in sorted(glob.glob(os.path.join(work, "bench", "*.json"))):
        r = _load_json(path)
        if r is not None:
            bench[os.path.basename(path)] = r
    summary["bench"] = bench
    summary["figures"] = key_figures(list(bench.values()))  # a partial one: a step stopped from outside
    files = [base + ".json", base + ".md", base + "-logs.tar.gz"]
    summary["files"] = [os.path.basename(f) for f in files]
    _atomic_write(files[1], report(summary))
    _atomic_write(files[0], json.dumps(summary, indent=1, default=str))
    tmp = files[2] + ".tmp"
    with tarfile.open(tmp, "w:gz") as tar:
        for sub in ("logs", "bench"):
            d = os.path.join(work, sub)
            if os.path.isdir(d):
                tar.add(d, arcname=f"gpucheck-{sub}")
    os.replace(tmp, files[2])
    return files


def _base_path(out: str, name: str, date: str) -> str:
    """<out>/<name>-<date>, or -2, -3, ... if a check of that day is already there (never overwrite)."""
    base, n = os.path.join(out, f"{name}-{date}"), 1
    while any(os.path.exists(base + ext) for ext in (".json", ".md", "-logs.tar.gz")):
        n += 1
        base = os.path.join(out, f"{name}-{date}-{n}")
    return base


# ----------------------------------------------------------------------------------------------
# the command


def build_parser() -> Parser:
    p = Parser(prog="python -m pygpt.gpucheck", description=__doc__.split("\n")[0], allow_abbrev=False)
    p.add_argument("--budget", "--deadline", dest="budget", type=float, default=540,
                   help="seconds for the whole check, build to packing (default 540)")
    p.add_argument("--out", default=None, help="results folder (default: $OUT if set, else bench/results)")
    p.add_argument("--skip-build", action="store_true", help="use the extension as it is built")
    p.add_argument("--arch", default=None, help="TORCH_CUDA_ARCH_LIST for the build (default: this GPU's)")
    p.add_argument("--rep-time", type=float, default=0.1, help="bench: seconds of timed repetitions per measurement")
    p.add_argument("--sanitizer", default=None, help="compute-sanitizer binary (default: $CUDA_HOME/bin or PATH)")
    p.add_argument("--plan", action="store_true", help="print the steps with their time estimates and exit")
    p.add_argument("--dry-run", action="store_true", help="run the plan on the CPU with stand-ins (no GPU needed)")
    p.add_argument("--readme", action="store_true", help="regenerate the GPU section of docs/results.md and exit")
    p.add_argument("--payload", default=None, help=argparse.SUPPRESS)  # the sanitizer steps' small calls
    p.add_argument("--payload-device", default="cuda", help=argparse.SUPPRESS)
    return p


def find_sanitizer():
    home = os.environ.get("CUDA_HOME") or "/usr/local/cuda"
    cand = os.path.join(home, "bin", "compute-sanitizer")
    return cand if os.path.isfile(cand) else shutil.which("compute-sanitizer")


def print_plan(steps, budget: float) -> None:
    used = 0.0
    print(f"{'step':<22} {'estimate':>8} {'limit':>6} {'by':>6}  what / command   (budget {budget:.0f}s, "
          f"{RESERVE_S}s kept for packing)")
    for s in steps:
        fits = used + s.estimate <= budget - RESERVE_S
        used += s.estimate if fits else 0
        mark = f"{used:>5.0f}s" if fits else " skip "
        print(f"{s.name:<22} {s.estimate:>7.0f}s {s.limit:>5.0f}s {mark}  {s.what}"
              + (" [optional]" if s.optional else ""))
        print(f"{'':<46}{' '.join(f'{k}={v}' for k, v in s.env.items())} {' '.join(s.argv)}")
    print(f"estimated total {used:.0f}s of {budget:.0f}s; a step whose estimate does not fit is skipped and reported")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.payload:
        sanitizer_payload(args.payload, args.payload_device)
        return 0
    out = args.out or os.environ.get("OUT") or os.path.join(ROOT, "bench", "results")
    if args.readme:
        print(f"docs/results.md GPU section from {update_readme(args.out or os.path.join(ROOT, 'bench', 'results'))}")
        return 0
    if not (args.budget > RESERVE_S + 5):
        raise ValueError(f"--budget must be more than {RESERVE_S + 5} seconds, got {args.budget}")
    if not args.rep_time > 0:
        raise ValueError(f"--rep-time must be > 0 seconds, got {args.rep_time}")
    t_start = time.monotonic()
    args.sanitizer = args.sanitizer or find_sanitizer()
    import torch

    if args.plan:
        with tempfile.TemporaryDirectory() as work:
            print_plan(plan(args, work), args.budget)
        return 0
    if args.dry_run:
        gpu, arch = "dry-run-cpu", None
    else:
        if not torch.cuda.is_available():
            raise ValueError("python -m pygpt.gpucheck needs a CUDA device; torch sees none "
                             "(--plan prints the steps, --dry-run runs them on the CPU)")
        if args.arch is None:
            major, minor = torch.cuda.get_device_capability()
            args.arch = f"{major}.{minor}"
        gpu, arch = torch.cuda.get_device_name(), args.arch
        if not args.sanitizer:
            print("[gpucheck] compute-sanitizer not found: memcheck and racecheck will report 'missing'", flush=True)
    os.makedirs(out, exist_ok=True)
    date = _dt.date.today().strftime("%Y%m%d")
    base = _base_path(out, _slug(gpu), date)
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    summary = {"kind": "gpucheck", "dry_run": args.dry_run, "gpu": gpu, "date": date,
               "created": _dt.datetime.now().isoformat(timespec="seconds"), "torch": torch.__version__,
               "triton": triton_version, "cuda": torch.version.cuda, "arch": arch, "budget_s": args.budget,
               "argv": list(sys.argv[1:] if argv is None else argv), "verdict": "running", "steps": []}

    with tempfile.TemporaryDirectory(prefix="pygpt-gpucheck-") as work:
        steps = plan(args, work)

        def write(results):
            summary["steps"] = results
            summary["elapsed_s"] = round(time.monotonic() - t_start, 1)
            return pack(base, work, summary)

        write([])
        results = run_steps(steps, args, work, write)
        failed = [s["step"] for s in results if s["status"] in ("failed", "timeout", "missing")]
        skipped = [s["step"] for s in results if s["status"] == "skipped"]
        n_ok = sum(s["status"] == "ok" for s in results)
        elapsed = time.monotonic() - t_start
        summary["verdict"] = (f"{'NOT OK' if failed else 'OK'}: {n_ok} steps ok, {len(failed)} failed"
                              + (f" ({', '.join(failed)})" if failed else "")
                              + f", {len(skipped)} skipped for the budget"
                              + (f" ({', '.join(skipped)})" if skipped else "")
                              + f", {sum(s['status'] == 'unsupported' for s in results)} unsupported; "
                              f"{elapsed:.0f}s of the {args.budget:.0f}s budget")
        files = write(results)
    print(render(summary) if any(summary["figures"].values()) else "", end="")
    print(f"[gpucheck] {summary['verdict']}; wrote {', '.join(files)}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(run(main))
