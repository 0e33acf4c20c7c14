"""python -m pygpt.bench: quick (smoke) runs write the table, JSON, markdown and PNG with the expected
structure. Speed is never asserted: these runs are far too small, and the machine may be busy."""

from __future__ import annotations

import json
import re

import pytest

from pygpt import bench, ops
from pygpt._cli import run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_bench(tmp_path, *argv):
    out = tmp_path / "results"
    assert bench.main([*argv, "--out", str(out)]) == 0
    files = sorted(out.iterdir())
    by_ext = {p.suffix: p for p in files}
    assert set(by_ext) == {".json", ".md", ".png"}, files
    stems = {p.stem for p in files}
    assert len(stems) == 1, files
    assert re.fullmatch(rf"cpu-\d+core-{argv[0]}-\d{{8}}-\d{{6}}", stems.pop())
    assert by_ext[".png"].read_bytes()[:8] == PNG_MAGIC
    result = json.loads(by_ext[".json"].read_text())
    return result, by_ext[".md"].read_text()


def check_common(result, op):
    assert result["op"] == op and result["device"] == "cpu"
    assert result["device_name"].startswith("cpu-")
    assert result["info"]["torch"] and "backends" in result["info"]  # pygpt.info.collect()
    assert result["args"]["quick"] is True
    assert set(result["files"]) == {"json", "md", "png"}
    for c in result["contenders"]:
        if not c["available"]:
            assert isinstance(c["note"], str) and c["note"], c  # never dropped without a reason


@pytest.mark.parametrize("op", ["attention", "layer_norm", "gelu_mlp"])
def test_quick_op_run_writes_table_json_md_png(op, tmp_path, capsys):
    result, md = run_bench(tmp_path, op, "--quick", "--no-compile", "--device", "cpu")
    check_common(result, op)
    stdout = capsys.readouterr().out
    assert "median ms" in stdout and "### fwd+bwd" in stdout and "vs eager" in stdout
    assert "### fwd" in md and "median ms" in md

    contenders = {c["name"]: c for c in result["contenders"]}
    assert contenders["eager"]["available"]
    expected_available = set(ops.available_backends(op, "cpu")) | ({"torch"} if op == "layer_norm" else set())
    assert {n for n, c in contenders.items() if c["available"]} == expected_available
    if op == "layer_norm":  # the baseline: x + residual, then F.layer_norm
        assert "vs torch" in stdout
    if op == "attention":
        assert contenders["sdpa"]["available"] and "vs sdpa" in stdout
    # every fused backend appears, run or with the reason it could not
    for b in ops.FUSED:
        assert b in contenders
        if b not in expected_available:
            assert contenders[b]["note"] == ops.unavailable_reason(op, b, "cpu")
            assert f"- {b}: " in md
    assert not contenders["compile"]["available"] and "--no-compile" in contenders["compile"]["note"]

    ms = result["measurements"]
    Ts = result["args"]["seq_lens"]
    assert len(Ts) >= 2
    for name in expected_available:
        for mode in ("fwd", "fwd+bwd"):
            for T in Ts:
                [m] = [m for m in ms if (m["contender"], m["mode"], m["T"]) == (name, mode, T)]
                assert "error" not in m, m
                assert m["median_ms"] > 0 and 0 < m["min_ms"] <= m["median_ms"] <= m["max_ms"]
                assert m["count"] == len(m["times_ms"]) >= 1
                assert m["work"] > 0 and m["rate"] > 0 and m["rate_unit"] in ("GFLOP/s", "GB/s")
                assert m["vs_eager"] is not None and m["vs_eager"] > 0
                if name == "eager":
                    assert m["vs_eager"] == pytest.approx(1.0)
                if op == "attention":
                    assert m["vs_sdpa"] > 0


def test_quick_compile_contender(tmp_path):
    """torch.compile of the eager reference: measured, or skipped with the reason it failed."""
    result, md = run_bench(tmp_path, "gelu_mlp", "--quick", "--seq-lens", "32")
    check_common(result, "gelu_mlp")
    compile_ = next(c for c in result["contenders"] if c["name"] == "compile")
    if not compile_["available"]:
        assert "torch.compile failed" in compile_["note"] and compile_["note"] in md
        pytest.skip(f"torch.compile unusable here: {compile_['note']}")
    ms = [m for m in result["measurements"] if m["contender"] == "compile"]
    assert {m["mode"] for m in ms} == {"fwd", "fwd+bwd"}
    for m in ms:
        assert "error" not in m and m["median_ms"] > 0 and m["vs_compile"] == pytest.approx(1.0)
        assert m["vs_eager"] > 0
    assert "| compile" in md and "vs compile" in md


def test_quick_train_run(tmp_path, shakespeare_path, capsys):
    from pygpt import prepare

    data = tmp_path / "shakespeare_char"
    assert prepare.main(["shakespeare_char", "--input", str(shakespeare_path), "--out", str(data)]) == 0
    result, md = run_bench(
        tmp_path, "train", "--quick", "--no-compile", "--device", "cpu", "--iters", "3", "--data", str(data),
        "--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--block-size", "16", "--batch-size", "2",
    )
    check_common(result, "train")
    contenders = {c["name"]: c for c in result["contenders"]}
    assert list(contenders) == list(bench.TRAIN_VARIANTS)
    by_name = {m["contender"]: m for m in result["measurements"]}
    for name in ("eager", "sdpa"):
        m = by_name[name]
        assert "error" not in m, m
        assert m["train_tokens_per_s"] > 0 and m["summary"]["iters"] == 3
        assert "--n-layer" in m["cmd"] and "--sample-tokens" in m["cmd"]
    assert by_name["eager"]["train_tokens_per_s_vs_eager"] == pytest.approx(1.0)
    fused_ok = all(ops.unavailable_reason(op, "cpu", "cpu") is None for op in ops.OPS)
    assert contenders["fused"]["available"] == fused_ok
    if not fused_ok:
        assert "fused" not in by_name and "no fused backend" in contenders["fused"]["note"]
    assert "compile" not in by_name and "--no-compile" in contenders["compile"]["note"]
    out = capsys.readouterr().out
    assert "train tok/s" in out and "| eager" in out and "| sdpa" in out
    assert "train tok/s" in md


def test_work_counts():
    class A:
        batch, heads, head_dim, width, hidden, seed, causal = 2, 3, 8, 16, 64, 0, True

    import torch

    _, _, work, _, _ = bench.make_case("attention", A, 32, torch.device("cpu"), torch.float32)
    fwd = 4 * 2 * 3 * 32 * 32 * 8 / 2
    assert work == {"unit": "flop", "fwd": fwd, "fwd+bwd": 3.5 * fwd}
    _, _, work, _, _ = bench.make_case("gelu_mlp", A, 32, torch.device("cpu"), torch.float32)
    assert work["fwd"] == 2 * (2 * 64 * 16 * 64) and work["fwd+bwd"] == 3 * work["fwd"]
    _, _, work, _, _ = bench.make_case("layer_norm", A, 32, torch.device("cpu"), torch.float32)
    M, C = 64, 16
    assert work["fwd"] == (4 * M * C + 2 * C) * 4 and work["fwd+bwd"] == work["fwd"] + (4 * M * C + 3 * C) * 4


def test_interpreter_label(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert bench.interpreted("triton") and not bench.interpreted("cpu")
    monkeypatch.delenv("TRITON_INTERPRET")
    assert not bench.interpreted("triton")


@pytest.mark.parametrize("argv", [["attention", "--seq-lens", "a,b"], ["attention", "--modes", "bwd"],
                                  ["layer_norm", "--dtype", "int8"], ["attention", "--backends", "nope"],
                                  ["train", "--out-dir", "x"], ["gelu_mlp", "--n-layer", "2"]])
def test_bad_arguments_are_one_line_errors(argv, tmp_path, capsys):
    try:
        code = run(bench.main, argv + ["--out", str(tmp_path), "--quick", "--no-compile"])
    except SystemExit as e:  # argparse-level errors
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_an_error(tmp_path, capsys):
    assert run(bench.main, ["attention", "--device", "cuda", "--quick", "--out", str(tmp_path)]) == 2
    assert "no CUDA device" in capsys.readouterr().err


# -- the CUDA-only contenders' plumbing, checked on the CPU ------------------------------------------


def test_sdpa_best_ratio_is_the_fastest_sdpa_backend():
    ms = [{"contender": c, "mode": "fwd", "T": 8, "median_ms": t}
          for c, t in (("sdpa", 3.0), ("sdpa-flash", 2.0), ("sdpa-efficient", 4.0), ("cuda", 1.0))]
    bench.add_ratios(ms, ["sdpa"])
    cuda = ms[-1]
    assert cuda["vs_sdpa"] == 3.0 and cuda["vs_sdpa_best"] == 2.0
    assert ms[1]["vs_sdpa_best"] == 1.0  # flash is the best: ratio 1 to itself


def test_no_sdpa_best_without_per_backend_timings():
    ms = [{"contender": c, "mode": "fwd", "T": 8, "median_ms": t} for c, t in (("sdpa", 3.0), ("cpu", 1.0))]
    bench.add_ratios(ms, ["sdpa"])
    assert "vs_sdpa_best" not in ms[1]


def test_copy_step_moves_the_counted_bytes():
    import torch

    step = bench.copy_step(8000, torch.device("cpu"))
    step()  # 1000 float32: 4000 bytes read + 4000 written
    src, dst = (c.cell_contents for c in step.__closure__ if isinstance(c.cell_contents, torch.Tensor))
    assert src.numel() == 1000 and torch.equal(src, dst)


def test_tokens_sets_batch_per_T(tmp_path):
    result, _ = run_bench(tmp_path, "attention", "--quick", "--tokens", "96", "--eager-max-t", "32")
    shapes = {m["T"]: m["shape"]["B"] for m in result["measurements"] if "shape" in m}
    assert shapes == {32: 3, 64: 1}
    eager_T = {m["T"] for m in result["measurements"] if m["contender"] == "eager"}
    assert eager_T == {32}
    assert next(c for c in result["contenders"] if c["name"] == "eager")["skipped_T"] == [64]


@pytest.mark.parametrize("argv", [["--tokens", "0"], ["--eager-max-t", "-1"]])
def test_bad_tokens_args(argv):
    with pytest.raises(ValueError, match=argv[0]):
        bench.parse_args(["attention", *argv])


def test_triton_under_the_interpreter_runs_end_to_end_and_is_labelled(tmp_path):
    """Without a GPU the Triton contender still runs (TRITON_INTERPRET=1), labelled as no speed figure."""
    import importlib.util
    import os
    import subprocess
    import sys

    if importlib.util.find_spec("triton") is None:
        pytest.skip("Triton is not installed")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    r = subprocess.run([sys.executable, "-m", "pygpt.bench", "layer_norm", "--quick", "--no-compile", "--no-plot",
                        "--seq-lens", "8", "--width", "32", "--out", str(tmp_path)],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(next(tmp_path.glob("*.json")).read_text())
    triton = [m for m in result["measurements"] if m["contender"] == "triton"]
    assert triton and all("median_ms" in m and m["note"] == bench.INTERPRETER_NOTE for m in triton)
    assert "interpreter (not a speed figure)" in r.stdout
