"""python -m pygpt.gpucheck without a GPU: its plan, its summary tables from benchmark JSON, and the
README section it generates. The check itself runs on a GPU machine (see README)."""

from __future__ import annotations

import json

import pytest

from pygpt import gpucheck


def test_plan_covers_build_tests_sanitizers_and_benchmarks(capsys):
    assert gpucheck.main(["--plan"]) == 0
    out = capsys.readouterr().out
    names = [line.split()[0] for line in out.strip().splitlines()]
    assert names[:3] == ["build", "info", "tests"]
    assert {"memcheck-all", "racecheck-attention", "racecheck-layer_norm"} <= set(names)
    assert {f"bench-attention-D{D}-{m}" for D in (64, 128) for m in ("causal", "full")} <= set(names)
    assert {"bench-layer_norm", "bench-gelu_mlp"} <= set(names)
    assert "--no-deps" in out and "-k cuda or triton" in out  # offline install; cuda + triton kernel tests


def test_plan_skip_build(capsys):
    gpucheck.main(["--plan", "--skip-build"])
    assert not capsys.readouterr().out.startswith("build")


def test_needs_a_gpu_or_says_so():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match="needs a CUDA device"):
        gpucheck.main(["--skip-build"])


def fake_bench(tmp_path, op, args, rows):
    ms = [{"contender": c, "mode": mode, "T": T, "median_ms": ms_, "rate": rate, "shape": shape, **extra}
          for (c, mode, T, ms_, rate, shape, extra) in rows]
    path = tmp_path / f"x-{op}.json"
    path.write_text(json.dumps({"op": op, "args": args, "measurements": ms}))
    return str(path)


def test_summary_tables_and_readme(tmp_path):
    attn = fake_bench(tmp_path, "attention", {"head_dim": 64, "causal": True, "heads": 32}, [
        ("cuda", "fwd+bwd", 1024, 1.0, 300.0, {"B": 16}, {"vs_sdpa_best": 1.1, "vs_sdpa-flash": 1.2}),
        ("sdpa-flash", "fwd+bwd", 1024, 1.2, 250.0, {"B": 16}, {}),
        ("cuda", "fwd", 1024, 0.3, 350.0, {"B": 16}, {}),
    ])
    ln = fake_bench(tmp_path, "layer_norm", {"width": 2048}, [
        ("copy", "fwd+bwd", 1024, 0.1, 3000.0, {"rows": 8192}, {"vs_copy": 1.0}),
        ("cuda", "fwd+bwd", 1024, 0.11, 2700.0, {"rows": 8192}, {"vs_copy": 0.9}),
    ])
    mlp = fake_bench(tmp_path, "gelu_mlp", {"width": 1024, "hidden": 4096}, [
        ("eager", "fwd+bwd", 1024, 2.0, 1.0, {}, {"vs_eager": 1.0}),
        ("cuda-mma", "fwd+bwd", 1024, 1.6, 1.0, {}, {"vs_eager": 1.25}),
        ("cuda-cublaslt", "fwd+bwd", 1024, 1.5, 1.0, {}, {"vs_eager": 1.33}),
    ])
    figs = gpucheck.key_figures([attn, ln, mlp], str(tmp_path))
    a = figs["attention"][0]
    assert (a["D"], a["T"], a["B"], a["cuda fwd+bwd"], a["cuda/sdpa_best fwd+bwd"]) == (64, 1024, 16, 300.0, 1.1)
    assert a["sdpa_best fwd+bwd"] == 250.0 and a["cuda fwd"] == 350.0
    assert figs["layer_norm"][0]["cuda vs copy"] == 0.9
    assert figs["gelu_mlp"][0]["mma / cublaslt speed"] == pytest.approx(1.5 / 1.6)

    summary = {"kind": "gpucheck", "gpu": "NVIDIA H100 80GB HBM3", "date": "20261125", "created": "2026-11-25T20:00:00",
               "torch": "2.11.0", "triton": "3.6.0", "cuda": "13.0",
               "steps": [{"step": "build", "status": "ok"}, {"step": "tests", "status": "ok", "summary": "9 passed"},
                         {"step": "bench-layer_norm", "status": "ok"}], "figures": figs}
    text = gpucheck.render(summary)
    assert "NVIDIA H100 80GB HBM3" in text and "9 passed" in text and "| 300 " in text and "0.90" in text

    results = tmp_path / "results"
    results.mkdir()
    (results / "nvidia-h100-80gb-hbm3-20261125.json").write_text(json.dumps(summary))
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{gpucheck.README_START}\nold\n{gpucheck.README_END}\n\nrest\n")
    gpucheck.update_readme(str(results), str(readme))
    new = readme.read_text()
    assert "old" not in new and "NVIDIA H100" in new and new.endswith("rest\n")


def test_readme_without_results_says_unmeasured(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"{gpucheck.README_START}\n{gpucheck.README_END}\n")
    gpucheck.update_readme(str(tmp_path), str(readme))
    assert "Unmeasured" in readme.read_text()


def test_readme_needs_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="markers"):
        gpucheck.update_readme(str(tmp_path), str(readme))
    assert readme.read_text() == "no markers\n"  # nothing a user wrote is lost
