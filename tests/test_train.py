"""The trainer and sampler as a user runs them: python -m pygpt.train / pygpt.sample in a subprocess."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "16", "--batch-size", "4",
        "--eval-iters", "2", "--device", "cpu", "--sample-tokens", "0", "--log-interval", "1"]


def pygpt(*args, check=True, **kw):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=kw.pop("cwd", REPO),
                       env=env, timeout=kw.pop("timeout", 300), **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"{args} exited {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}")
    return r


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    if not SHAKESPEARE.exists():
        pytest.skip(f"tiny Shakespeare not found at {SHAKESPEARE}")
    out = tmp_path_factory.mktemp("data") / "shakespeare_char"
    pygpt("pygpt.prepare", "shakespeare_char", "--input", str(SHAKESPEARE), "--out", str(out))
    return str(out)


def train(data_dir, out_dir, *extra, check=True):
    return pygpt("pygpt.train", "--data", data_dir, "--out-dir", str(out_dir), *TINY, *extra, check=check)


def log_records(out_dir):
    return [json.loads(l) for l in open(Path(out_dir) / "log.jsonl")]


def sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_train_writes_checkpoint_log_plot_and_samples(data_dir, tmp_path):
    out = tmp_path / "run"
    r = train(data_dir, out, "--max-iters", "20", "--eval-interval", "10", "--sample-tokens", "30")
    assert "val loss" in r.stdout and "---- sample ----" in r.stdout
    for name in ("ckpt.pt", "log.jsonl", "loss.png", "summary.json"):
        assert (out / name).exists(), name
    evals = [r for r in log_records(out) if "val_loss" in r]
    assert [e["iter"] for e in evals] == [0, 10, 20]
    assert evals[-1]["train_loss"] < evals[0]["train_loss"]
    state = torch.load(out / "ckpt.pt", weights_only=True)
    assert state["iter_num"] == 20 and state["tokenizer"]["type"] == "char"

    s = pygpt("pygpt.sample", "--ckpt", str(out), "--prompt", "ROMEO:", "--max-new-tokens", "40", "--seed", "3")
    assert s.stdout.startswith("ROMEO:") and len(s.stdout) >= 46
    again = pygpt("pygpt.sample", "--ckpt", str(out), "--prompt", "ROMEO:", "--max-new-tokens", "40", "--seed", "3")
    assert again.stdout == s.stdout  # same seed, same text
    two = pygpt("pygpt.sample", "--ckpt", str(out / "ckpt.pt"), "--num-samples", "2", "--max-new-tokens", "10")
    assert two.stdout.count("-" * 40) == 1


def test_resume_continues_exactly(data_dir, tmp_path):
    """Stopping at iter 10 and resuming gives bit-identical weights to one uninterrupted run."""
    common = ("--eval-interval", "5", "--lr-decay-iters", "20", "--warmup-iters", "3")
    train(data_dir, tmp_path / "a", "--max-iters", "20", *common)
    train(data_dir, tmp_path / "b", "--max-iters", "10", *common)
    r = train(data_dir, tmp_path / "b", "--max-iters", "20", "--resume", *common)
    assert "resuming at iter 10" in r.stdout
    a = torch.load(tmp_path / "a" / "ckpt.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "ckpt.pt", weights_only=True)
    assert b["iter_num"] == 20
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    la = [r["loss"] for r in log_records(tmp_path / "a") if "loss" in r]
    lb = [r["loss"] for r in log_records(tmp_path / "b") if "loss" in r]
    assert la == lb


def _wait_for_eval(out, at_least, proc, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"trainer exited early: {proc.stderr.read()}")
        log = out / "log.jsonl"
        if log.exists():
            iters = [r["iter"] for r in log_records(out) if "val_loss" in r]
            if iters and iters[-1] >= at_least:
                return
        time.sleep(0.2)
    raise AssertionError("no checkpoint in time")


def _start(data_dir, out, *extra):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-m", "pygpt.train", "--data", data_dir, "--out-dir", str(out), *TINY,
                             *extra], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_kill_9_then_resume(data_dir, tmp_path):
    out = tmp_path / "k"
    proc = _start(data_dir, out, "--max-iters", "100000", "--eval-interval", "10")
    # the trainer logs an eval, then saves: once eval 30 is logged, checkpoint 20 is complete (and 30
    # may be half-written when the kill lands)
    _wait_for_eval(out, 30, proc)
    proc.kill()  # SIGKILL: no handler runs, possibly in the middle of writing a checkpoint
    proc.wait()
    state = torch.load(out / "ckpt.pt", weights_only=True)  # intact: written to a temp file, then renamed
    saved = state["iter_num"]
    assert saved >= 20 and saved % 10 == 0
    r = train(data_dir, out, "--resume", "--max-iters", str(saved + 10))
    assert f"resuming at iter {saved}" in r.stdout
    assert torch.load(out / "ckpt.pt", weights_only=True)["iter_num"] == saved + 10


def test_ctrl_c_saves_and_resumes(data_dir, tmp_path):
    out = tmp_path / "c"
    proc = _start(data_dir, out, "--max-iters", "100000", "--eval-interval", "10")
    _wait_for_eval(out, 10, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted at iter" in err
    state = torch.load(out / "ckpt.pt", weights_only=True)
    assert state["iter_num"] >= 10
    train(data_dir, out, "--resume", "--max-iters", str(state["iter_num"] + 2))


def test_init_from_finetune_and_bigram(data_dir, tmp_path):
    train(data_dir, tmp_path / "pre", "--max-iters", "6", "--eval-interval", "3")
    r = train(data_dir, tmp_path / "ft", "--init-from", str(tmp_path / "pre"), "--max-iters", "4",
              "--eval-interval", "2", "--learning-rate", "1e-4")
    assert "init from" in r.stdout
    pre = torch.load(tmp_path / "pre" / "ckpt.pt", weights_only=True)
    ft = torch.load(tmp_path / "ft" / "ckpt.pt", weights_only=True)
    assert ft["iter_num"] == 4 and ft["model_config"] == pre["model_config"]
    # bigram preset runs the baseline model through the same loop
    b = pygpt("pygpt.train", "--preset", "bigram", "--data", data_dir, "--out-dir", str(tmp_path / "bi"),
              "--max-iters", "30", "--eval-interval", "15", "--eval-iters", "2", "--sample-tokens", "5")
    assert "bigram" in b.stdout


@pytest.mark.parametrize("args,message", [
    (["--preset", "nope"], "unknown preset 'nope'"),
    (["--data", "no_such_data_set"], "unknown data set 'no_such_data_set'"),
    (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["--learning-rate=-3e-4"], "--learning-rate must be > 0"),
    (["--n-layer=-2"], "--n-layer must be >= 1, got -2"),
    (["--n-embd", "30", "--n-head", "4"], "n_embd (30) must be divisible by n_head (4)"),
    (["--dropout", "1.5"], "dropout must be in [0, 1)"),
    (["--init-from", "/no/such/ckpt"], "no checkpoint at /no/such/ckpt"),
    (["--max-iters", "ten"], "invalid int value: 'ten'"),
])
def test_bad_input_one_line_error(data_dir, tmp_path, args, message):
    cmd = ["pygpt.train", "--data", data_dir, "--out-dir", str(tmp_path / "x"), "--device", "cpu", *args]
    if "--data" in args:
        cmd = ["pygpt.train", "--out-dir", str(tmp_path / "x"), *args]
    r = pygpt(*cmd, check=False)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], r.stderr
    assert not (tmp_path / "x" / "ckpt.pt").exists()


def test_existing_run_is_not_overwritten_and_shapes_must_match(data_dir, tmp_path):
    out = tmp_path / "run"
    train(data_dir, out, "--max-iters", "4", "--eval-interval", "2")
    before = sha(out / "ckpt.pt")
    r = train(data_dir, out, "--max-iters", "4", check=False)
    assert r.returncode == 2 and "pass --resume" in r.stderr
    r = train(data_dir, out, "--resume", "--max-iters", "8", "--n-layer", "3", check=False)
    assert r.returncode == 2 and "--n-layer 3 differs from the checkpoint's 1" in r.stderr
    assert sha(out / "ckpt.pt") == before


def test_fused_without_fused_backend_is_a_clear_error(data_dir, tmp_path):
    from pygpt import ops

    if "cpu" in ops.available_backends("attention", "cpu"):
        pytest.skip("a fused CPU backend exists; --fused is tested by the kernel issues")
    r = train(data_dir, tmp_path / "f", "--fused", "--max-iters", "2", check=False)
    assert r.returncode == 2 and "--fused: no fused backend can run" in r.stderr


def test_sample_bad_input(data_dir, tmp_path):
    out = tmp_path / "run"
    train(data_dir, out, "--max-iters", "2", "--eval-interval", "2")
    cases = [
        (["--prompt", "héllo"], "character 'é' at position 1 is not in the tokenizer's vocabulary"),
        (["--prompt", "x" * 17], "the prompt is 17 tokens, longer than the model's block_size 16"),
        (["--temperature", "-1"], "temperature must be a finite number >= 0"),
        (["--ckpt", str(tmp_path / "missing")], "no checkpoint at"),
    ]
    for args, message in cases:
        ck = [] if "--ckpt" in args else ["--ckpt", str(out)]
        r = pygpt("pygpt.sample", *ck, *args, check=False)
        assert r.returncode == 2 and message in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    r = pygpt("pygpt.sample", "--ckpt", str(tmp_path / "bad.pt"), check=False)
    assert r.returncode == 2 and "cannot read checkpoint" in r.stderr


def test_fused_training_matches_eager(data_dir, tmp_path):
    """200 steps of shakespeare-cpu on the fused CPU kernels track eager step by step (fp32, dropout 0)."""
    from pygpt import ops

    missing = [op for op in ops.OPS if "cpu" not in ops.available_backends(op, "cpu")]
    if missing:
        pytest.skip(f"no fused CPU kernel yet for {', '.join(missing)}")
    common = ["pygpt.train", "--preset", "shakespeare-cpu", "--data", data_dir, "--device", "cpu", "--max-iters", "200",
              "--eval-interval", "200", "--eval-iters", "1", "--log-interval", "1", "--sample-tokens", "0",
              "--dropout", "0"]
    # 200 steps take ~15 s each on an idle 2-core machine; the timeout is for a loaded one
    pygpt(*common, "--out-dir", str(tmp_path / "eager"), "--backend", "eager", timeout=900)
    r = pygpt(*common, "--out-dir", str(tmp_path / "fused"), "--fused", timeout=900)
    assert "backend auto" in r.stdout
    eager = [x["loss"] for x in log_records(tmp_path / "eager") if "loss" in x]
    fused = [x["loss"] for x in log_records(tmp_path / "fused") if "loss" in x]
    assert len(eager) == len(fused) == 200
    worst = max(abs(a - b) for a, b in zip(eager, fused))
    assert worst < 1e-3, f"largest per-step loss difference {worst:.2e}"
