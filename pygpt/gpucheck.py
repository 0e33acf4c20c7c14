"""The GPU check: one command that builds, tests, sanitizes and benchmarks pygpt on a CUDA machine.

    python -m pygpt.gpucheck                  # everything, within --deadline seconds (default 520)
    python -m pygpt.gpucheck --skip-build     # the extension is already built for this GPU
    python -m pygpt.gpucheck --plan           # print the steps and exit (no GPU needed)
    python -m pygpt.gpucheck --readme         # regenerate README's GPU section from bench/results

Steps, in order, each a subprocess with its own time limit, logged to <out>/gpucheck-logs/:
  1. build     pip install --no-build-isolation --no-deps -e .  for this GPU's architecture only
               (no network needed: torch, Triton and nvcc must already be there)
  2. info      python -m pygpt.info
  3. tests     pytest on every kernel test on cuda and triton (tests/kernels -k "cuda or triton"),
               plus the CUDA build checks (tests/test_cuda_build.py)
  4. memcheck  compute-sanitizer --tool memcheck  on small attention, layer_norm, gelu_mlp calls
     racecheck compute-sanitizer --tool racecheck on small attention and layer_norm calls
  5. bench     python -m pygpt.bench for attention (D = 64 and 128, causal and not, T = 1k..16k),
               layer_norm and gelu_mlp, bf16, side by side with SDPA's backends / a device copy /
               eager, each writing its own JSON, markdown and PNG
Then it writes bench/results/<gpu>-<YYYYMMDD>.json (every step's status, the test counts, the key
figures of every benchmark) and .md (the tables README shows), and exits non-zero if a step failed.
A step that would start after the deadline is skipped and reported as such, never silently dropped.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import time

from ._cli import Parser, run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README_START, README_END = "<!-- gpu-results:start -->", "<!-- gpu-results:end -->"
# the attention benchmark grid: (head_dim, causal) x T, with B·T = 16k tokens and H·D = 2048 as
# FlashAttention's own benchmark does (so every T does the same work per token)
ATTN_TS = (1024, 2048, 4096, 8192, 16384)
TOKENS, HIDDEN = 16384, 2048
LONG_T = 4096  # from here on eager and compile (which materialise T x T) are left out


def _slug(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-")


def sanitizer_payload(which: str) -> None:
    """Small calls of every CUDA kernel, run under compute-sanitizer (python -m pygpt.gpucheck --payload X)."""
    import torch

    from . import ops

    dev = torch.device("cuda")
    g = torch.Generator(device="cpu").manual_seed(0)

    def rand(*shape, dtype=torch.bfloat16):
        return torch.randn(*shape, generator=g).to(dev, dtype).requires_grad_()

    if which in ("all", "attention"):
        for causal, T, D in ((True, 77, 64), (False, 33, 40), (True, 130, 128)):
            q, k, v = (rand(2, 3, T, D) for _ in range(3))
            ops.attention(q, k, v, causal=causal, backend="cuda").sum().backward()
    if which in ("all", "layer_norm"):
        for C in (7, 1000, 4097):
            x, r = rand(65, C, dtype=torch.float32), rand(65, C, dtype=torch.float32)
            w, b = rand(C, dtype=torch.float32), rand(C, dtype=torch.float32)
            y, h = ops.layer_norm(x, w, b, residual=r, backend="cuda")
            (y.sum() + h.sum()).backward()
            xb, wb = rand(33, C), rand(C)
            ops.layer_norm(xb, wb, None, backend="cuda").sum().backward()
    if which in ("all", "gelu_mlp"):
        for path in ("mma", "cublaslt"):
            os.environ["PYGPT_GEMM"] = path
            x, w1, b1 = rand(37, 72), rand(288, 72), rand(288)
            w2, b2 = rand(72, 288), rand(72)
            ops.gelu_mlp(x, w1, b1, w2, b2, backend="cuda").sum().backward()
    torch.cuda.synchronize()
    print(f"payload {which}: ok")


def plan(args, py=None):
    """[(name, argv, env additions, timeout s)] for this run."""
    py = py or sys.executable
    steps = []
    if not args.skip_build:
        env = {"MAX_JOBS": str(os.cpu_count() or 4)}
        if args.arch:
            env["TORCH_CUDA_ARCH_LIST"] = args.arch
        steps.append(("build", [py, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "-e", ROOT], env, 300))
    steps.append(("info", [py, "-m", "pygpt.info"], {}, 60))
    tests = [py, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider", os.path.join(ROOT, "tests", "kernels"),
             "-k", "cuda or triton", os.path.join(ROOT, "tests", "test_cuda_build.py")]
    # one Triton config per kernel in the tests: correctness needs no tuning, and the autotuner
    # would re-tune every new (T, D) of the shape list
    steps.append(("tests", tests + (["-x"] if args.quick else []), {"PYGPT_TRITON_AUTOTUNE": "0"}, 240))
    sani = args.sanitizer or "compute-sanitizer"
    for tool, which in (("memcheck", "all"), ("racecheck", "attention"), ("racecheck", "layer_norm")):
        steps.append((f"{tool}-{which}", [sani, "--tool", tool, "--error-exitcode", "7", py, "-m", "pygpt.gpucheck",
                                          "--payload", which], {"PYGPT_GEMM": "auto"}, 120))
    bench = [py, "-m", "pygpt.bench", "--device", "cuda", "--dtype", "bfloat16", "--out", args.out,
             "--budget", str(args.budget), "--warmup", "3"] + (["--no-plot"] if args.quick else [])
    for D in (64, 128):
        for causal in (True, False):
            steps.append((f"bench-attention-D{D}-{'causal' if causal else 'full'}",
                          bench + ["attention", "--head-dim", str(D), "--heads", str(HIDDEN // D),
                                   "--causal" if causal else "--no-causal", "--tokens", str(TOKENS),
                                   "--seq-lens", ",".join(map(str, ATTN_TS)), "--eager-max-t", str(LONG_T // 2)],
                          {}, 150))
    steps.append(("bench-layer_norm", bench + ["layer_norm", "--batch", "8", "--seq-lens", "1024,2048,4096",
                                               "--width", "2048"], {}, 150))
    steps.append(("bench-gelu_mlp", bench + ["gelu_mlp", "--batch", "8", "--seq-lens", "1024,2048",
                                             "--width", "1024"], {}, 150))
    return steps


def run_steps(steps, args, log_dir):
    deadline = time.monotonic() + args.deadline
    results = []
    for name, argv, env_add, limit in steps:
        left = deadline - time.monotonic()
        rec = {"step": name, "cmd": " ".join(argv), "env": env_add}
        if left < 15:
            rec.update(status="skipped", why=f"deadline ({args.deadline:.0f}s) reached")
            results.append(rec)
            print(f"[gpucheck] {name}: skipped (deadline)", flush=True)
            continue
        env = {**os.environ, **env_add}
        t0 = time.monotonic()
        log_path = os.path.join(log_dir, f"{name}.log")
        try:
            r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=min(limit, left), cwd=ROOT)
            out, rc = r.stdout + r.stderr, r.returncode
        except subprocess.TimeoutExpired as e:
            out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
            out += f"\n[gpucheck] timed out after {min(limit, left):.0f}s"
            rc = "timeout"
        except FileNotFoundError as e:
            out, rc = f"[gpucheck] cannot run: {e}", "missing"
        rec.update(status="ok" if rc == 0 else "failed", rc=rc, seconds=round(time.monotonic() - t0, 1),
                   log=os.path.relpath(log_path, ROOT))
        with open(log_path, "w", encoding="utf-8") as f:
            f.write(out)
        if name == "tests":
            rec["summary"] = next((ln.strip() for ln in reversed(out.splitlines())
                                   if re.search(r"\d+ (passed|failed|error)", ln)), None)
        if name.startswith("bench-"):
            wrote = re.findall(r"wrote (.+)", out)
            rec["files"] = wrote[-1].split(", ") if wrote else []
        tail = "\n".join(out.strip().splitlines()[-3:])
        print(f"[gpucheck] {name}: {rec['status']} in {rec['seconds']}s" + (f"\n{tail}" if rc != 0 else ""), flush=True)
        results.append(rec)
    return results


# ----------------------------------------------------------------------------------------------
# the summary tables (also README's GPU section)


def _load_bench(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def key_figures(bench_files, results_dir):
    """Rows of the three summary tables from the benchmark JSON files this check wrote."""
    attn, ln, mlp = [], [], []
    for path in bench_files:
        if not path.endswith(".json"):
            continue
        r = _load_bench(path if os.path.isabs(path) else os.path.join(ROOT, path)) or \
            _load_bench(os.path.join(results_dir, os.path.basename(path)))
        if r is None:
            continue
        ms = [m for m in r["measurements"] if "median_ms" in m]
        get = lambda c, mode, T: next((m for m in ms if m["contender"] == c and m["mode"] == mode and m["T"] == T), None)  # noqa: E731
        for T in sorted({m["T"] for m in ms}):
            if r["op"] == "attention":
                a = r["args"]
                shape = next(m["shape"] for m in ms if m["T"] == T)
                row = {"D": a["head_dim"], "causal": a["causal"], "T": T, "B": shape["B"], "H": a["heads"]}
                for mode in ("fwd", "fwd+bwd"):
                    for c in ("cuda", "triton", "sdpa-flash"):
                        m = get(c, mode, T)
                        row[f"{c} {mode}"] = m["rate"] if m else None
                    best = [m for m in ms if m["mode"] == mode and m["T"] == T and m["contender"].startswith("sdpa")]
                    row[f"sdpa_best {mode}"] = max((m["rate"] for m in best), default=None)
                    for c in ("cuda", "triton"):
                        m = get(c, mode, T)
                        row[f"{c}/sdpa_best {mode}"] = m.get("vs_sdpa_best") if m else None
                        row[f"{c}/flash {mode}"] = m.get("vs_sdpa-flash") if m else None
                attn.append(row)
            elif r["op"] == "layer_norm":
                row = {"rows": r["measurements"][0]["shape"]["rows"] if r["measurements"] else None, "T": T,
                       "C": r["args"]["width"]}
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
    from .bench import md_table

    fig = summary["figures"]
    lines = [f"GPU check on **{summary['gpu']}** ({summary['date']}; torch {summary['torch']}, "
             f"Triton {summary['triton']}, CUDA {summary['cuda']}). Steps: "
             + ", ".join(f"{s['step']} {s['status']}" for s in summary["steps"] if not s["step"].startswith("bench-"))
             + f"; benchmarks: {sum(s['status'] == 'ok' for s in summary['steps'] if s['step'].startswith('bench-'))}"
             f"/{sum(s['step'].startswith('bench-') for s in summary['steps'])} ran.", ""]
    tests = next((s for s in summary["steps"] if s["step"] == "tests"), None)
    if tests and tests.get("summary"):
        lines += [f"Kernel tests on the GPU: {tests['summary']}", ""]
    if fig["attention"]:
        lines += ["Attention, bf16, TFLOP/s (FlashAttention's count), B·T = 16k tokens, H·D = 2048:", ""]
        hdr = ["D", "mask", "T", "cuda fwd", "cuda fwd+bwd", "triton fwd+bwd", "sdpa best fwd+bwd",
               "cuda / sdpa best", "cuda / sdpa flash", "triton / sdpa best"]
        rows = [[r["D"], "causal" if r["causal"] else "full", r["T"], _f(r["cuda fwd"], ".0f"),
                 _f(r["cuda fwd+bwd"], ".0f"), _f(r["triton fwd+bwd"], ".0f"), _f(r["sdpa_best fwd+bwd"], ".0f"),
                 _f(r["cuda/sdpa_best fwd+bwd"], ".2f"), _f(r["cuda/flash fwd+bwd"], ".2f"),
                 _f(r["triton/sdpa_best fwd+bwd"], ".2f")]
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


def newest_summary(results_dir):
    found = []
    for path in glob.glob(os.path.join(results_dir, "*.json")):
        if re.search(r"-\d{8}\.json$", path):
            r = _load_bench(path)
            if r and r.get("kind") == "gpucheck":
                found.append((r.get("created", ""), path, r))
    return max(found)[1:] if found else (None, None)


def update_readme(results_dir, readme=os.path.join(ROOT, "README.md")) -> str:
    """Rewrite README's GPU section (between the gpu-results markers) from the newest check."""
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


def build_parser() -> Parser:
    p = Parser(prog="python -m pygpt.gpucheck", description=__doc__.split("\n")[0], allow_abbrev=False)
    p.add_argument("--skip-build", action="store_true", help="use the extension as it is built")
    p.add_argument("--arch", default=None, help="TORCH_CUDA_ARCH_LIST for the build (default: this GPU's)")
    p.add_argument("--deadline", type=float, default=520, help="seconds for all steps (default 520)")
    p.add_argument("--budget", type=float, default=0.3, help="bench: seconds of timed repetitions per measurement")
    p.add_argument("--quick", action="store_true", help="stop the tests at the first failure; no plots")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results"), help="results folder")
    p.add_argument("--sanitizer", default=None, help="compute-sanitizer binary (default: $CUDA_HOME/bin or PATH)")
    p.add_argument("--plan", action="store_true", help="print the steps and exit")
    p.add_argument("--readme", action="store_true", help="regenerate README's GPU section and exit")
    p.add_argument("--payload", default=None, help=argparse.SUPPRESS)  # the sanitizer steps' small calls
    return p


def find_sanitizer():
    home = os.environ.get("CUDA_HOME") or "/usr/local/cuda"
    cand = os.path.join(home, "bin", "compute-sanitizer")
    return cand if os.path.isfile(cand) else shutil.which("compute-sanitizer")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.payload:
        sanitizer_payload(args.payload)
        return 0
    if args.readme:
        print(f"README GPU section from {update_readme(args.out)}")
        return 0
    if args.deadline <= 0:
        raise ValueError(f"--deadline must be > 0 seconds, got {args.deadline}")
    args.sanitizer = args.sanitizer or find_sanitizer()
    import torch

    if args.plan:
        for name, argv_, env, limit in plan(args):
            print(f"{name:<40} {limit:>4}s  {' '.join(f'{k}={v}' for k, v in env.items())} {' '.join(argv_)}")
        return 0
    if not torch.cuda.is_available():
        raise ValueError("python -m pygpt.gpucheck needs a CUDA device; torch sees none (--plan prints the steps)")
    if args.arch is None:
        major, minor = torch.cuda.get_device_capability()
        args.arch = f"{major}.{minor}"
    gpu = torch.cuda.get_device_name()
    os.makedirs(args.out, exist_ok=True)
    log_dir = os.path.join(args.out, "gpucheck-logs")
    os.makedirs(log_dir, exist_ok=True)
    if not args.sanitizer:
        print("[gpucheck] compute-sanitizer not found: the memcheck/racecheck steps will fail", flush=True)
    steps = run_steps(plan(args), args, log_dir)
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    files = [f for s in steps for f in (s.get("files") or [])]
    date = _dt.date.today().strftime("%Y%m%d")
    summary = {"kind": "gpucheck", "gpu": gpu, "date": date, "created": _dt.datetime.now().isoformat(timespec="seconds"),
               "torch": torch.__version__, "triton": triton_version, "cuda": torch.version.cuda, "arch": args.arch,
               "steps": steps, "bench_files": [os.path.relpath(f, ROOT) if os.path.isabs(f) else f for f in files],
               "figures": key_figures(files, args.out)}
    base = os.path.join(args.out, f"{_slug(gpu)}-{date}")
    with open(base + ".json", "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1, default=str)
    with open(base + ".md", "w", encoding="utf-8") as f:
        f.write(f"# pygpt GPU check: {gpu}, {date}\n\n" + render(summary))
    print(render(summary))
    failed = [s["step"] for s in steps if s["status"] != "ok"]
    print(f"[gpucheck] wrote {base}.json and .md; " + (f"NOT OK: {', '.join(failed)}" if failed else "all steps ok"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(run(main))
