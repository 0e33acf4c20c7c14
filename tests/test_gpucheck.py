"""python -m pygpt.gpucheck without a GPU: its plan, its summary tables from benchmark JSON, and the
README section it generates. The check itself runs on a GPU machine (see README)."""

from __future__ import annotations

import json
import os

import pytest

from pygpt import gpucheck


def test_plan_covers_build_tests_sanitizers_and_benchmarks(capsys):
    assert gpucheck.main(["--plan"]) == 0
    out = capsys.readouterr().out
    names = [line.split()[0] for line in out.strip().splitlines()[1:-1] if not line.startswith(" ")]
    assert names[:5] == ["build", "info", "tests", "buildchecks", "memcheck"]
    assert names[5] == "racecheck" and all(n.startswith("bench-") for n in names[6:])
    assert {"bench-attention-d64", "bench-attention-d128", "bench-layer_norm", "bench-gelu_mlp"} <= set(names)
    assert "--no-deps" in out and "-k cuda or triton --gpu-plan" in out  # offline install; the planned subset
    assert "PYTORCH_NO_CUDA_MEMORY_CACHING=1" in out  # memcheck sees through the caching allocator
    assert "sdpa-cudnn" in out and "cuda-rows128" in out and "cuda-cublaslt" in out
    # the planned steps fit the default budget by their own estimates (the optional one may not)
    assert "bench-gelu_mlp" in out and " skip " not in [ln for ln in out.splitlines() if ln.startswith("bench-gelu")][0]


def test_plan_skip_build(capsys):
    gpucheck.main(["--plan", "--skip-build"])
    assert not capsys.readouterr().out.splitlines()[1].startswith("build")


def test_needs_a_gpu_or_says_so():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match="needs a CUDA device"):
        gpucheck.main(["--skip-build"])


def test_bad_budget_is_refused():
    with pytest.raises(ValueError, match="--budget"):
        gpucheck.main(["--plan", "--budget", "3"])


class Args:
    budget = 60.0


def step(name, code, estimate, limit=30, kind="run"):
    import sys

    return gpucheck.Step(name, [sys.executable, "-c", code], {}, estimate, limit, name, kind)


def test_budget_skips_what_cannot_finish_and_stops_the_rest_cleanly(tmp_path, monkeypatch):
    monkeypatch.setattr(gpucheck, "RESERVE_S", 2)
    args = Args()
    args.budget = 8.0
    writes = []
    steps = [step("a", "print('hi')", 1),
             step("too-long", "print('never')", 100),  # its estimate does not fit: skipped, not started
             # honours PYGPT_STOP_AT: stops itself before its limit and reports what it did
             step("cooperative", "import os, time\nwhile time.time() < float(os.environ['PYGPT_STOP_AT']): "
                  "time.sleep(0.05)\nprint('stopped at PYGPT_STOP_AT')", 1, limit=3),
             step("b", "import sys; sys.exit(3)", 0.5)]
    res = gpucheck.run_steps(steps, args, str(tmp_path), lambda r: writes.append([s["step"] for s in r]))
    by = {r["step"]: r for r in res}
    assert [r["step"] for r in res] == ["a", "too-long", "cooperative", "b"]  # the order is kept
    assert by["a"]["status"] == "ok" and by["a"]["tail"] == ["$  " + " ".join(steps[0].argv), "hi"]
    assert by["too-long"]["status"] == "skipped" and "needs ~100s" in by["too-long"]["why"]
    assert by["cooperative"]["status"] == "ok" and "stopped at PYGPT_STOP_AT" in by["cooperative"]["tail"][-1]
    assert by["b"]["status"] == "failed" and by["b"]["rc"] == 3
    assert writes == [["a"], ["a", "too-long"], ["a", "too-long", "cooperative"], ["a", "too-long", "cooperative", "b"]]


def test_a_step_that_ignores_its_limit_is_killed_and_its_log_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(gpucheck, "RESERVE_S", 1)
    args = Args()
    res = gpucheck.run_steps([step("hang", "import time; print('started', flush=True); time.sleep(60)", 1, limit=2)],
                             args, str(tmp_path), lambda r: None)
    assert res[0]["status"] == "timeout" and res[0]["seconds"] < 15
    log = (tmp_path / "logs" / "hang.log").read_text()
    assert "started" in log and "killed at its limit" in log


def test_pytest_stops_at_the_budget_and_still_reports(tmp_path):
    """tests/conftest.py skips the tests that would start after PYGPT_STOP_AT; pytest's summary and
    the JUnit counts come back."""
    import os
    import subprocess
    import sys
    import time

    (tmp_path / "conftest.py").write_text(open(os.path.join(gpucheck.ROOT, "tests", "conftest.py")).read())
    (tmp_path / "test_x.py").write_text("import time\n\ndef test_a():\n    time.sleep(1.5)\n\n"
                                        "def test_b():\n    pass\n\ndef test_c():\n    pass\n")
    xml = tmp_path / "r.xml"
    env = dict(os.environ, PYGPT_STOP_AT=str(time.time() + 1.0))
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path),
                        f"--junitxml={xml}"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    j = gpucheck._junit(str(xml))
    assert (j["tests"], j["passed"], j["skipped"], j["budget_skipped"]) == (3, 1, 2, 2), j
    assert "1 passed, 2 skipped" in r.stdout


def test_gpu_plan_covers_every_parameter_value_with_fewer_cases(tmp_path):
    import subprocess
    import sys

    (tmp_path / "conftest.py").write_text(open(gpucheck.ROOT + "/tests/conftest.py").read())
    (tmp_path / "test_p.py").write_text(
        "import pytest\n\n@pytest.mark.parametrize('backend,device', [('x', 'cuda'), ('y', 'cuda')])\n"
        "@pytest.mark.parametrize('dtype', ['f16', 'bf16'])\n@pytest.mark.parametrize('causal', [True, False])\n"
        "@pytest.mark.parametrize('T', [1, 17, 113, 1023])\n@pytest.mark.parametrize('D', [32, 64, 128])\n"
        "def test_k(backend, device, dtype, causal, T, D):\n    pass\n\ndef test_plain():\n    pass\n")
    r = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                        "--gpu-plan", str(tmp_path)], capture_output=True, text=True, cwd=tmp_path)
    ids = [ln for ln in r.stdout.splitlines() if "::" in ln]
    assert "test_p.py::test_plain" in ids[-1] or any(i.endswith("test_plain") for i in ids)
    cases = [i.split("[", 1)[1].rstrip("]").split("-") for i in ids if "[" in i]
    assert len(cases) < 2 * 2 * 2 * 4 * 3  # a subset of the 96 cases
    for backend in ("x", "y"):  # per backend: every value of every parameter, every dtype x causal pair
        mine = [c for c in cases if c[-2] == backend]
        for pos, values in ((0, ["32", "64", "128"]), (1, ["1", "17", "113", "1023"])):
            assert {c[pos] for c in mine} == set(values), (backend, pos, mine)
        assert {(c[3], c[2]) for c in mine} == {(d, k) for d in ("f16", "bf16") for k in ("True", "False")}


def fake_bench(tmp_path, op, args, rows):
    ms = [{"contender": c, "mode": mode, "T": T, "median_ms": ms_, "rate": rate, "shape": shape, **extra}
          for (c, mode, T, ms_, rate, shape, extra) in rows]
    return {"op": op, "args": args, "measurements": ms}


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
    figs = gpucheck.key_figures([attn, ln, mlp])
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


def test_pack_writes_three_files_and_never_overwrites(tmp_path):
    import tarfile

    work, out = tmp_path / "work", tmp_path / "out"
    (work / "logs").mkdir(parents=True)
    (work / "bench").mkdir()
    (work / "logs" / "tests.log").write_text("3 passed\n")
    (work / "bench" / "x-layer_norm.json").write_text(json.dumps({"op": "layer_norm", "args": {"width": 8},
                                                                  "measurements": []}))
    out.mkdir()
    (out / "gpu-20261204.json").write_text("a user's file")  # an earlier check of the same day
    base = gpucheck._base_path(str(out), "gpu", "20261204")
    assert base.endswith("gpu-20261204-2")
    summary = {"kind": "gpucheck", "gpu": "gpu", "date": "20261204", "torch": "t", "triton": None, "cuda": None,
               "verdict": "OK: 1 steps ok", "steps": [{"step": "tests", "status": "ok", "estimate_s": 1,
                                                      "seconds": 0.5, "summary": "3 passed"}]}
    files = gpucheck.pack(base, str(work), summary)
    assert sorted(os.path.basename(f) for f in files) == ["gpu-20261204-2-logs.tar.gz", "gpu-20261204-2.json",
                                                          "gpu-20261204-2.md"]
    assert (out / "gpu-20261204.json").read_text() == "a user's file"
    assert len(os.listdir(out)) == 4  # no temporary files left behind
    back = json.loads((out / "gpu-20261204-2.json").read_text())
    assert "x-layer_norm.json" in back["bench"] and back["steps"][0]["summary"] == "3 passed"
    assert "OK: 1 steps ok" in (out / "gpu-20261204-2.md").read_text()
    with tarfile.open(out / "gpu-20261204-2-logs.tar.gz") as t:
        assert "gpucheck-logs/tests.log" in t.getnames()
