"""pygpt.tasks.addition (the lecture's exercise 2), its trainer hook and pygpt.eval_task."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from pygpt import checkpoint
from pygpt.model import GPT, BigramLanguageModel, GPTConfig
from pygpt.tasks import AdditionTask, make_task, task_from_config
from pygpt.tokenizers import CharTokenizer

REPO = Path(__file__).resolve().parents[1]
TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--batch-size", "32", "--eval-iters", "2",
        "--device", "cpu", "--log-interval", "1"]


def pygpt(*args, check=True):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    if check and r.returncode != 0:
        raise AssertionError(f"{args} exited {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}")
    return r


def text(task, row):
    return task.tokenizer.decode(row)


def test_format_reversed_and_normal():
    rev, normal = AdditionTask(3), AdditionTask(3, reverse=False)
    assert rev.tokenizer.chars == list("0123456789+=") and rev.vocab_size == 12
    assert text(rev, rev.encode([12], [345])[0].tolist()) == "012+345=7530"
    assert text(normal, normal.encode([12], [345])[0].tolist()) == "012+345=0357"
    assert text(rev, rev.encode([999], [999])[0].tolist()) == "999+999=8991"  # 1998, carry into digit n+1
    assert text(rev, AdditionTask(1).encode([0], [7])[0].tolist()) == "0+7=70"
    assert rev.block_size == 11 and rev.seq_len == 12 and rev.prompt_len == 8
    assert rev.answer_value("7530") == 357 and normal.answer_value("0357") == 357 and rev.answer_value("75+0") is None
    # every served row is a correct sum in the same layout
    x, y = rev.get_batch("train", 64, rev.block_size, "cpu", torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (64, 11)
    for row, last in zip(x.tolist(), y[:, -1].tolist()):
        s = text(rev, row + [last])
        a, b, ans = int(s[0:3]), int(s[4:7]), s[8:]
        assert s[3] == "+" and s[7] == "=" and int(ans[::-1]) == a + b


def test_mask_is_exactly_the_prompt_positions():
    for digits in (1, 3):
        t = AdditionTask(digits)
        x, y = t.get_batch("train", 16, t.block_size, "cpu", torch.Generator().manual_seed(1))
        p = t.prompt_len
        assert (y[:, : p - 1] == -1).all()  # the next token is still prompt ("a+b=")
        assert (y[:, p - 1 :] >= 0).all() and y.shape[1] - (p - 1) == digits + 1  # the n+1 answer digits
        assert torch.equal(y[:, p - 1 : -1], x[:, p:])  # targets are the next tokens
    t = AdditionTask(3, mask=False)
    x, y = t.get_batch("train", 16, t.block_size, "cpu", torch.Generator().manual_seed(1))
    assert (y >= 0).all() and torch.equal(y[:, :-1], x[:, 1:])


def test_options_change_the_data_and_roundtrip_through_config():
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    base = AdditionTask(2).get_batch("train", 8, 8, "cpu", g())
    normal = AdditionTask(2, reverse=False).get_batch("train", 8, 8, "cpu", g())
    nomask = AdditionTask(2, mask=False).get_batch("train", 8, 8, "cpu", g())
    assert torch.equal(base[0][:, :6], normal[0][:, :6])  # same problems, same prompts
    assert not torch.equal(base[1], normal[1])  # answers in the other order
    assert torch.equal(base[0], nomask[0]) and (nomask[1] >= 0).all() and (base[1] == -1).any()
    for t in (AdditionTask(4, reverse=False, mask=False), AdditionTask(2)):
        again = task_from_config(t.config())
        assert again.config() == t.config() and again.tokenizer == t.tokenizer
    assert make_task("addition", digits=2).name == "addition-2d"
    assert AdditionTask(1).meta.get("train_tokens") is None  # bits per byte does not apply


@pytest.mark.parametrize("digits", [0, 19, -1, 2.5, True])
def test_bad_digits(digits):
    with pytest.raises(ValueError, match="--digits"):
        AdditionTask(digits)


@pytest.mark.parametrize("digits", [9, 10, 18])
def test_long_operands(digits):
    """Up to 18 digits: sums and keys stay in int64 / uint64; above 9 digits the split hashes a first."""
    t = AdditionTask(digits)
    x, y = t.get_batch("train", 512, t.block_size, "cpu", torch.Generator().manual_seed(digits))
    assert x.shape == (512, 3 * digits + 2)
    top = 10**digits - 1
    assert text(t, t.encode([top], [top])[0].tolist()) == f"{top}+{top}=" + str(2 * top)[::-1]
    for row, last in zip(x.tolist(), y[:, -1].tolist()):
        s = text(t, row + [last])
        a, b = int(s[:digits]), int(s[digits + 1 : 2 * digits + 1])
        assert int(s[2 * digits + 2 :][::-1]) == a + b and not t.is_val(a, b)
    a, b = t.eval_pairs(2000)
    assert t.is_val(a, b).all() and len(set(zip(a.tolist(), b.tolist()))) == 2000
    ra, rb = np.random.default_rng(0).integers(0, 10**digits, size=(2, 20000))
    assert 0.08 < t.is_val(ra, rb).mean() < 0.12
    assert t.exact_match(Oracle(t), n=200, batch_size=64)["accuracy"] == 1.0  # (Oracle: below)


def test_block_size_too_small_and_bad_split():
    t = AdditionTask(3)
    with pytest.raises(ValueError, match="block_size"):
        t.get_batch("train", 4, 10)
    with pytest.raises(ValueError, match="split"):
        t.get_batch("test", 4, 11)


def test_held_out_pairs_are_never_served_in_training():
    t = AdditionTask(2)  # 10,000 pairs: the eval set is every val pair
    a, b = t.eval_pairs()
    val = set(zip(a.tolist(), b.tolist()))
    every = [(i, j) for i in range(100) for j in range(100)]
    assert val == {p for p in every if t.is_val(*p)}
    assert 0.07 < len(val) / len(every) < 0.13
    g = torch.Generator().manual_seed(0)
    served = set()
    for _ in range(200):
        x, _ = t.get_batch("train", 256, t.block_size, "cpu", g)
        served.update(zip((x[:, 0] * 10 + x[:, 1]).tolist(), (x[:, 3] * 10 + x[:, 4]).tolist()))
    assert not served & val
    assert len(served) > 0.95 * (len(every) - len(val))  # and the train split is covered
    x, _ = t.get_batch("val", 256, t.block_size, "cpu", g)  # the val split (for the loss) is the held-out one
    assert set(zip((x[:, 0] * 10 + x[:, 1]).tolist(), (x[:, 3] * 10 + x[:, 4]).tolist())) <= val


def test_eval_set_is_deterministic():
    a1, b1 = AdditionTask(3).eval_pairs()
    a2, b2 = AdditionTask(3).eval_pairs()
    assert len(a1) == 10_000 and np.array_equal(a1, a2) and np.array_equal(b1, b2)
    assert AdditionTask(3).is_val(a1, b1).all() and len(set(zip(a1.tolist(), b1.tolist()))) == 10_000
    a5, b5 = AdditionTask(5).eval_pairs(300)  # drawn, not listed
    a6, b6 = AdditionTask(5).eval_pairs(300)
    assert np.array_equal(a5, a6) and np.array_equal(b5, b6) and AdditionTask(5).is_val(a5, b5).all()
    assert len(set(zip(a5.tolist(), b5.tolist()))) == 300
    n1 = len(AdditionTask(1).eval_pairs()[0])
    assert 0 < n1 < 100 and len(AdditionTask(1).eval_pairs(10_000)[0]) == n1  # all of them when fewer exist


class Oracle(torch.nn.Module):
    """A fake model whose logits spell the right answer (or a wrong one on problems with even a)."""

    def __init__(self, task, wrong=False):
        super().__init__()
        self.task, self.wrong = task, wrong

    def forward(self, idx):
        t, n = self.task, self.task.digits
        B, T = idx.shape
        ids = idx.cpu().numpy()
        a = (ids[:, :n] * 10 ** np.arange(n - 1, -1, -1)).sum(1)
        b = (ids[:, n + 1 : 2 * n + 1] * 10 ** np.arange(n - 1, -1, -1)).sum(1)
        answer = torch.from_numpy(t.encode_answers(a, b))
        if self.wrong:
            answer[a % 2 == 0, 0] = (answer[a % 2 == 0, 0] + 1) % 10
        logits = torch.zeros(B, T, t.vocab_size)
        for pos in range(t.prompt_len - 1, T):
            logits[torch.arange(B), pos, answer[:, pos - t.prompt_len + 1]] = 1.0
        return logits, None


@pytest.mark.parametrize("reverse,greedy", [(True, True), (False, True), (True, False), (False, False)])
def test_exact_match_on_a_stub_model(reverse, greedy):
    t = AdditionTask(3, reverse=reverse)
    right = t.exact_match(Oracle(t), n=500, batch_size=128, greedy=greedy)
    assert right["accuracy"] == 1.0 and right["total"] == 500 and right["wrong"] == []
    wrong = t.exact_match(Oracle(t, wrong=True), n=500, batch_size=128, greedy=greedy)
    assert 0.2 < wrong["accuracy"] < 0.8 and len(wrong["wrong"]) == 5
    w = wrong["wrong"][0]
    a, b = map(int, w["problem"].split("+"))
    assert w["expected"] == a + b and int(w["got"]) != a + b and len(w["got"]) == 4


def train_task(out, *extra, check=True):
    return pygpt("pygpt.train", "--task", "addition", "--out-dir", str(out), *TINY, *extra, check=check)


def test_train_and_eval_task_end_to_end(tmp_path):
    out = tmp_path / "add1"
    r = train_task(out, "--digits", "1", "--max-iters", "30", "--eval-interval", "15")
    assert "exact match" in r.stdout and "task:addition-1d" in r.stdout
    evals = [json.loads(l) for l in open(out / "log.jsonl") if "val_loss" in l]
    assert [e["iter"] for e in evals] == [0, 15, 30] and all(0 <= e["exact_match"] <= 1 for e in evals)
    assert evals[-1]["val_bpb"] is None
    state = torch.load(out / "ckpt.pt", weights_only=True)
    assert state["task"] == {"name": "addition", "digits": 1, "reverse": True, "mask": True}
    assert state["train_config"]["block_size"] == 5 and state["tokenizer"]["chars"] == "0123456789+="
    assert json.load(open(out / "summary.json"))["exact_match"] == evals[-1]["exact_match"]
    e = pygpt("pygpt.eval_task", "--ckpt", str(out), "--n", "50")
    assert e.stdout.startswith("addition-1d (iter 30): exact match")
    acc = float(e.stdout.split("exact match ")[1].split()[0])
    assert abs(acc - evals[-1]["exact_match"]) < 1e-3  # all (fewer than 50) val pairs, like the trainer's eval
    # the trainer's one-pass verdict is greedy decoding's
    model, _, _ = checkpoint.load_model(str(out))
    t = task_from_config(state["task"])
    assert t.exact_match(model, greedy=False)["correct"] == t.exact_match(model, greedy=True)["correct"]
    t3 = AdditionTask(3)  # and on 3-digit problems the model (trained on 1 digit) mostly gets wrong
    model3 = GPT(GPTConfig(**{**model.config.to_dict(), "block_size": t3.block_size}))
    fast, slow = t3.exact_match(model3, 300, greedy=False), t3.exact_match(model3, 300, greedy=True)
    assert fast["correct"] == slow["correct"] and fast["wrong"] == slow["wrong"]
    # --resume continues the task run
    r = train_task(out, "--max-iters", "40", "--eval-interval", "10", "--resume")
    assert "resuming at iter 30" in r.stdout and torch.load(out / "ckpt.pt", weights_only=True)["iter_num"] == 40


def one_line_error(r, *words):
    assert r.returncode != 0 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_bad_inputs_are_one_line_errors(tmp_path):
    out = tmp_path / "x"
    one_line_error(train_task(out, "--data", "shakespeare_char", check=False), "--task and --data")
    one_line_error(train_task(out, "--digits", "0", check=False), "--digits")
    one_line_error(train_task(out, "--digits", "19", check=False), "--digits")
    one_line_error(train_task(out, "--digits", "2", "--block-size", "4", check=False), "--block-size")
    one_line_error(pygpt("pygpt.train", "--digits", "2", "--out-dir", str(out), check=False), "--task")
    one_line_error(pygpt("pygpt.train", "--task", "multiply", "--out-dir", str(out), check=False), "unknown task")
    assert not out.exists()
    # a checkpoint of a text data set
    text_run = tmp_path / "text"
    text_run.mkdir()
    checkpoint.save(str(text_run / "ckpt.pt"), {
        "model": BigramLanguageModel(5).state_dict(), "model_type": "bigram", "model_config": {"vocab_size": 5},
        "tokenizer": CharTokenizer("abcde").to_dict(), "train_config": {}, "iter_num": 3, "data": "/data/x"})
    one_line_error(pygpt("pygpt.eval_task", "--ckpt", str(text_run), check=False), "text data set")
    one_line_error(pygpt("pygpt.eval_task", "--ckpt", str(tmp_path / "none"), check=False), "no checkpoint")


def test_task_curves_report(tmp_path):
    runs = []
    for name, ems in (("fast", [0.0, 0.5, 0.995, 1.0]), ("slow", [0.0, 0.1, 0.4, 0.98])):
        d = tmp_path / name
        d.mkdir()
        with open(d / "log.jsonl", "w") as f:
            f.write(json.dumps({"iter": 5, "loss": 1.0}) + "\n")  # a training line: skipped
            for i, em in enumerate(ems):
                f.write(json.dumps({"iter": 100 * i, "val_loss": 1.0, "exact_match": em, "time": 10.0 * i}) + "\n")
        runs.append(str(d))
    out = tmp_path / "report"
    r = pygpt("pygpt.task_curves", *runs, "--out", str(out))
    assert "| fast | 200 (20 s) | 300 (30 s) | 1.0000 | 1.0000 (300) |" in r.stdout
    assert "| slow | — | — | 0.9800 | 0.9800 (300) |" in r.stdout
    assert sorted(os.listdir(out)) == ["curves.png", "logs.tar.gz", "summary.json", "table.md"]
    assert json.load(open(out / "summary.json"))[0]["iter_99"] == 200
    with tarfile.open(out / "logs.tar.gz") as tar:  # the raw logs, byte for byte, in one archive
        assert tar.getnames() == ["fast.log.jsonl", "slow.log.jsonl"]
        assert tar.extractfile("fast.log.jsonl").read() == (tmp_path / "fast" / "log.jsonl").read_bytes()
    # the report regenerates from its own archive: the same table
    again = tmp_path / "again"
    r2 = pygpt("pygpt.task_curves", str(out / "logs.tar.gz"), "--out", str(again))
    assert r2.stdout == r.stdout
    assert (again / "table.md").read_text() == (out / "table.md").read_text()
    one_line_error(pygpt("pygpt.task_curves", *runs, "--out", str(out), check=False), "not empty")
    one_line_error(pygpt("pygpt.task_curves", str(tmp_path / "nope"), "--out", str(tmp_path / "r2"), check=False),
                   "log.jsonl does not exist")
