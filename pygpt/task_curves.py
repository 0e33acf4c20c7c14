"""Compare task runs: python -m pygpt.task_curves RUN_DIR_OR_LOGS... --out DIR [--title T].

Reads each run's log.jsonl (written by python -m pygpt.train --task ...), or every <run>.log.jsonl
in a logs.tar.gz this command wrote (so a report regenerates from its own archive), and writes to DIR:
  curves.png   exact match on the held-out problems against the iteration, one line per run
               (one panel per operator for calculator runs; runs named <name>-s<seed> share a colour)
  table.md     per run: the first iteration (and its wall time) at >= 99 % and at 100 %, the best
               and the final exact match
  summary.json the same numbers, each run's own summary.json as <run>.summary.json when it has one
  logs.tar.gz  every run's log, as <run>.log.jsonl (one compressed file: the raw logs are
               thousands of lines)
A run's name is its folder's name. Existing files in DIR are never overwritten (DIR must be new or empty).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import sys
import tarfile

from ._cli import Parser, run


LOG_SUFFIX = ".log.jsonl"


def _evals(lines, where: str) -> list[dict]:
    evals = [e for e in map(json.loads, lines) if "exact_match" in e]
    if not evals:
        raise ValueError(f"{where} has no exact-match evaluations: was it a --task run?")
    return evals


def read_evals(run_dir: str) -> list[dict]:
    path = os.path.join(run_dir, "log.jsonl")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist: is {run_dir} a run folder of python -m pygpt.train --task?")
    with open(path, encoding="utf-8") as f:
        return _evals(f, path)


def read_logs(source: str) -> dict[str, bytes]:
    """{run name: raw log.jsonl bytes} of a run folder, or of every run in a logs.tar.gz."""
    if os.path.isfile(source) and source.endswith(".tar.gz"):
        with tarfile.open(source, "r:gz") as tar:
            logs = {m.name[:-len(LOG_SUFFIX)]: tar.extractfile(m).read()
                    for m in tar.getmembers() if m.isfile() and m.name.endswith(LOG_SUFFIX)}
        if not logs:
            raise ValueError(f"{source} holds no <run>{LOG_SUFFIX} files")
        return logs
    read_evals(source)  # the folder's checks and messages
    with open(os.path.join(source, "log.jsonl"), "rb") as f:
        return {os.path.basename(os.path.normpath(source)): f.read()}


def write_logs(logs: dict[str, bytes], path: str) -> None:
    """One gzip'd tar of <run>.log.jsonl members, in run order, with fixed metadata (reproducible)."""
    with tarfile.open(path, "w:gz", compresslevel=9) as tar:
        for name, raw in logs.items():
            info = tarfile.TarInfo(name + LOG_SUFFIX)
            info.size, info.mtime, info.mode = len(raw), 0, 0o644
            tar.addfile(info, io.BytesIO(raw))


def first_at(evals: list[dict], level: float, key=lambda e: e["exact_match"]):
    hit = next((e for e in evals if key(e) >= level), None)
    return (hit["iter"], round(hit["time"], 1)) if hit else (None, None)


def summarize(name: str, evals: list[dict]) -> dict:
    s = {"run": name, "iters": evals[-1]["iter"], "final": evals[-1]["exact_match"],
         "best": max(e["exact_match"] for e in evals)}
    s["iter_99"], s["time_99"] = first_at(evals, 0.99)
    s["iter_100"], s["time_100"] = first_at(evals, 1.0)
    if "exact_match_by_op" in evals[-1]:
        s["final_by_op"] = evals[-1]["exact_match_by_op"]
        s["iter_95_by_op"] = {op: first_at(evals, 0.95, lambda e, op=op: e["exact_match_by_op"][op])[0]
                              for op in evals[-1]["exact_match_by_op"]}
    return s


def table(rows: list[dict]) -> str:
    fmt = lambda it, t: "—" if it is None else f"{it} ({t:.0f} s)"  # noqa: E731
    lines = ["| run | first ≥ 99 % | first 100 % | best | final (iter) |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['run']} | {fmt(r['iter_99'], r['time_99'])} | {fmt(r['iter_100'], r['time_100'])} "
                     f"| {r['best']:.4f} | {r['final']:.4f} ({r['iters']}) |")
    ops = [r for r in rows if "final_by_op" in r]
    if ops:
        lines += ["", "| run | operator | first ≥ 95 % | final |", "|---|---|---|---|"]
        for r in ops:
            for op, acc in r["final_by_op"].items():
                it = r["iter_95_by_op"][op]
                lines.append(f"| {r['run']} | {op} | {'—' if it is None else it} | {acc:.4f} |")
    return "\n".join(lines) + "\n"


def plot(runs: dict, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # runs named <group>-s<seed> share their group's colour, one line style per seed
    groups = list(dict.fromkeys(re.sub(r"-s\d+$", "", n) for n in runs))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    style, seen = {}, {}
    for n in runs:
        g = re.sub(r"-s\d+$", "", n)
        style[n] = dict(color=colours[groups.index(g) % len(colours)], linestyle=("-", "--", ":", "-.")[seen.get(g, 0) % 4])
        seen[g] = seen.get(g, 0) + 1
    ops = sorted({op for ev in runs.values() for op in ev[-1].get("exact_match_by_op", {})}, key="+-*/".index)
    panels = ops or [None]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels) + 1.5, 4), squeeze=False)
    for ax, op in zip(axes[0], panels):
        for name, ev in runs.items():
            ys = [e["exact_match_by_op"][op] if op else e["exact_match"] for e in ev
                  if op is None or op in e.get("exact_match_by_op", {})]
            xs = [e["iter"] for e in ev if op is None or op in e.get("exact_match_by_op", {})]
            ax.plot(xs, ys, marker=".", label=name, **style[name])
        ax.set_title(f"{title} {op}" if op else title)
        ax.set_xlabel("iteration")
        ax.set_ylabel("exact match (held out)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    p = Parser(prog="python -m pygpt.task_curves", description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", help="run folders of python -m pygpt.train --task ..., or logs.tar.gz "
                   "files written by this command")
    p.add_argument("--out", required=True, help="a new (or empty) folder for curves.png, table.md, summary.json")
    p.add_argument("--title", default="exact match")
    args = p.parse_args(argv)
    runs, logs, summaries = {}, {}, {}
    for d in args.runs:
        for name, raw in read_logs(d).items():
            if name in runs:
                raise ValueError(f"two runs are named {name!r}: run folders need distinct names")
            logs[name] = raw
            runs[name] = _evals(raw.decode("utf-8").splitlines(), f"{d}: {name}")
            if os.path.isdir(d) and os.path.exists(os.path.join(d, "summary.json")):
                summaries[name] = os.path.join(d, "summary.json")
            elif os.path.isfile(d) and os.path.exists(os.path.join(os.path.dirname(d), f"{name}.summary.json")):
                summaries[name] = os.path.join(os.path.dirname(d), f"{name}.summary.json")
    if os.path.exists(args.out) and os.listdir(args.out):
        raise FileExistsError(f"{args.out} is not empty: pick a new --out folder")
    os.makedirs(args.out, exist_ok=True)
    rows = [summarize(n, ev) for n, ev in runs.items()]
    write_logs(logs, os.path.join(args.out, "logs.tar.gz"))
    for name, path in summaries.items():
        shutil.copyfile(path, os.path.join(args.out, f"{name}.summary.json"))
    with open(os.path.join(args.out, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(rows, f, indent=1)
    md = table(rows)
    with open(os.path.join(args.out, "table.md"), "w", encoding="utf-8") as f:
        f.write(md)
    plot(runs, os.path.join(args.out, "curves.png"), args.title)
    print(md, end="")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
