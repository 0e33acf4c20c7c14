"""pygpt.tasks.calculator (+ - * / with traces), its trainer hook, eval_task and python -m pygpt.calc."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from pygpt import calc, checkpoint
from pygpt.tasks import CalculatorTask, make_task, task_from_config
from test_tasks import TINY, one_line_error, pygpt

OPS = "+-*/"


def test_format_examples():
    t = CalculatorTask()
    assert t.tokenizer.chars == list("0123456789+-*/=,>r$") and t.vocab_size == 19
    assert t.text("+", 123, 456) == "123+456=>9750$"
    assert t.text("+", 999, 999) == "999+999=>8991$"
    assert t.text("-", 123, 456) == "123-456=>-333$"
    assert t.text("-", 400, 123) == "400-123=>+772$"
    assert t.text("*", 12, 45) == "12*45=060,840>0450$"
    # 97 / 12: step 1 x=9 q=0 p=0 r=9, step 2 x=97 q=8 p=96 r=1
    assert t.text("/", 97, 12) == "97/12=900000090,790869010>80r10$"
    assert t.text("/", 5, 1) == "05/01=000000000,500550000>50r00$"
    assert CalculatorTask(mul_digits=3).text("*", 123, 456) == "123*456=8370,5160,2940,888600>880650$"
    assert CalculatorTask(trace=False).text("*", 12, 45) == "12*45=>0450$"
    assert CalculatorTask(trace=False).text("/", 97, 12) == "97/12=>80r10$"
    assert t.seq_len == 32 and t.block_size == 31 and t.name == "calculator-3d2d"
    assert CalculatorTask(ops="*+", trace=False, mask=False).name == "calculator-3d2d-addmul-notrace-nomask"


@pytest.mark.parametrize("digits,mul_digits,trace", [(3, 2, True), (1, 1, True), (2, 3, True), (3, 2, False)])
def test_every_line_is_right_and_parses_back(digits, mul_digits, trace):
    t = CalculatorTask(digits, mul_digits, trace=trace)
    rng = random.Random(digits * 10 + mul_digits)
    for op in OPS:
        w = t.width(op)
        lengths = set()
        for _ in range(300):
            a, b = rng.randrange(10**w), rng.randrange(1 if op == "/" else 0, 10**w)
            s = t.text(op, a, b)
            lengths.add(len(s))
            prompt, rest = s[: s.index("=") + 1], s[s.index("=") + 1 :]
            assert prompt == f"{a:0{w}d}{op}{b:0{w}d}=" and rest.endswith("$") and rest.count("$") == 1
            assert t.parse_answer(op, rest) == t.answer(op, a, b)
            assert t.tokenizer.decode(t.tokenizer.encode(s)) == s
            steps = rest.split(">")[0].split(",") if trace and op in "*/" else []
            assert (rest.split(">")[0] == "") == (not steps)
            if op == "*" and trace:  # partial products a * b_j, then running sums
                bd = str(b).zfill(w)[::-1]
                for j in range(w):
                    assert int(steps[j][::-1]) == a * int(bd[j])
                assert len(steps) == w + max(0, w - 2)
            if op == "/" and trace:  # long division: x, q, q*b, r per digit of a
                r = 0
                for digit, st in zip(str(a).zfill(w), steps):
                    x = 10 * r + int(digit)
                    assert int(st[: w + 1][::-1]) == x and int(st[w + 1]) == x // b
                    assert int(st[w + 2 : 2 * w + 3][::-1]) == (x // b) * b
                    r = int(st[2 * w + 3 :][::-1])
                    assert r == x % b
                assert len(steps) == w
        assert len(lengths) == 1  # fixed width: one length per operator


def test_parse_answer_rejects_malformed_lines():
    t = CalculatorTask()
    for op, g in [("+", "9750"), ("+", ">975$"), ("+", ">97a0$"), ("-", ">3330$"), ("-", ">*333$"),
                  ("*", "060,840>045$"), ("/", ">80x10$"), ("/", ">8r10$"), ("*", "")]:
        assert t.parse_answer(op, g) is None, (op, g)
    assert t.parse_answer("+", ">9750$$$") == 579  # what follows the first end is ignored


def test_masks_learn_the_trace_and_answer_never_the_padding():
    t = CalculatorTask()
    x, y = t.get_batch("train", 64, t.block_size, "cpu", torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (64, 31)
    end = t.tokenizer.stoi["$"]
    for xr, yr in zip(x.tolist(), y.tolist()):
        s = t.tokenizer.decode(xr)
        p = s.index("=") + 1
        n = s.index("$") + 1 if "$" in s else len(s) + 1  # the row's own length
        learned = [i for i, v in enumerate(yr) if v >= 0]
        assert learned == list(range(p - 1, n - 1))  # everything after the prompt up to its "$"
        assert yr[n - 2] == end and all(yr[i] == xr[i + 1] for i in learned[:-1] if i + 1 < len(xr))
    nomask = CalculatorTask(mask=False)
    x2, y2 = nomask.get_batch("train", 64, t.block_size, "cpu", torch.Generator().manual_seed(0))
    assert torch.equal(x, x2)
    for xr, yr in zip(x2.tolist(), y2.tolist()):
        s = t.tokenizer.decode(xr)
        n = s.index("$") + 1 if "$" in s else len(s) + 1
        assert [i for i, v in enumerate(yr) if v >= 0] == list(range(0, n - 1))


def test_operators_are_mixed_and_held_out_problems_never_served():
    t = CalculatorTask(digits=2, mul_digits=2)
    g = torch.Generator().manual_seed(1)
    served = {op: set() for op in OPS}
    for _ in range(25):
        for op, a, b in t.sample("train", 4096, g):
            served[op].add((a, b))
    for op in OPS:
        a, b = t.eval_problems(op)
        val = set(zip(a.tolist(), b.tolist()))
        every = {(i, j) for i in range(100) for j in range(1 if op == "/" else 0, 100)}
        assert val == {p for p in every if t.is_val(op, *p)} and 0.07 < len(val) / len(every) < 0.13
        assert not served[op] & val and len(served[op]) > 0.9 * (len(every) - len(val))
        assert all(b > 0 for _, b in served[op]) if op == "/" else True
    # the split depends on the operator: 12+34 and 12*34 are not tied together
    pairs = [(i, j) for i in range(100) for j in range(1, 100)]
    assert [t.is_val("+", *p) for p in pairs] != [t.is_val("*", *p) for p in pairs]
    assert all(t.is_val(op, a, b) for op, a, b in t.sample("val", 200, g))


def test_eval_sets_are_deterministic_and_bounded():
    t = CalculatorTask()
    a1, b1 = t.eval_problems("+", 2000)
    a2, b2 = CalculatorTask().eval_problems("+", 2000)
    assert np.array_equal(a1, a2) and np.array_equal(b1, b2) and len(set(zip(a1, b1))) == 2000
    a, b = t.eval_problems("/")  # 2 digits: every held-out pair, fewer than 10,000
    assert 800 < len(a) < 1200 and (b >= 1).all()
    a, b = CalculatorTask(mul_digits=4).eval_problems("*", 300)  # drawn, not listed
    assert len(a) == 300 and CalculatorTask(mul_digits=4).is_val("*", a, b).all()


@pytest.mark.parametrize("kw", [dict(digits=0), dict(mul_digits=10), dict(digits=True), dict(ops=""),
                                dict(ops="+^"), dict(ops="++")])
def test_bad_options(kw):
    with pytest.raises(ValueError, match="--digits|--mul-digits|--ops"):
        CalculatorTask(**kw)


def test_config_roundtrip():
    for t in (CalculatorTask(), CalculatorTask(2, 1, trace=False, mask=False, ops="/*")):
        again = task_from_config(t.config())
        assert again.config() == t.config() and again.name == t.name
    assert make_task("calculator").ops == "+-*/" and CalculatorTask(ops="/*").ops == "*/"
    with pytest.raises(ZeroDivisionError):
        CalculatorTask().text("/", 5, 0)
    with pytest.raises(ValueError, match="at most 2 digits"):
        CalculatorTask().text("*", 100, 5)


class Oracle(torch.nn.Module):
    """A fake model whose logits spell the right line (or, with `break_op`, a wrong answer digit there)."""

    def __init__(self, task, break_op=None):
        super().__init__()
        self.task, self.break_op = task, break_op
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # so that next(parameters()) has a device

    def forward(self, idx):
        t = self.task
        B, T = idx.shape
        logits = torch.zeros(B, T, t.vocab_size)
        for i, row in enumerate(idx.tolist()):
            s = t.tokenizer.decode(row)
            op = next(c for c in s if c in OPS)
            a, b = (int(v) for v in s[: s.index("=")].split(op))
            line = t.text(op, a, b)
            if op == self.break_op and a % 2 == 0:  # a wrong first answer digit on even a
                k = line.index(">") + (2 if op == "-" else 1)
                line = line[:k] + str((int(line[k]) + 1) % 10) + line[k + 1 :]
            for pos in range(T):
                nxt = line[pos + 1] if pos + 1 < len(line) else "$"
                logits[i, pos, t.tokenizer.stoi[nxt]] = 1.0
        return logits, None


@pytest.mark.parametrize("greedy", [True, False])
def test_exact_match_per_operator_on_a_stub_model(greedy):
    t = CalculatorTask(digits=2, mul_digits=2)
    right = t.exact_match(Oracle(t), n=60, batch_size=25, greedy=greedy)
    assert right["by_op"] == {op: 1.0 for op in OPS} and right["accuracy"] == 1.0 and right["wrong"] == []
    assert right["total"] == 240
    broken = t.exact_match(Oracle(t, break_op="*"), n=60, batch_size=25, greedy=greedy)
    assert broken["by_op"]["+"] == broken["by_op"]["-"] == broken["by_op"]["/"] == 1.0
    assert 0.2 < broken["by_op"]["*"] < 0.8 and len(broken["wrong"]) == 5
    w = broken["wrong"][0]
    a, b = map(int, w["problem"].split("*"))
    assert w["expected"] == a * b and w["got"] is not None and w["got"] != a * b


def test_calc_cli_answers_with_the_model_and_shows_its_trace(monkeypatch, capsys):
    t = CalculatorTask()
    model = Oracle(t)
    monkeypatch.setattr(checkpoint, "load_model", lambda *a, **k: (model, t.tokenizer, {"task": t.config()}))
    assert calc.main(["12*45", "97/12", "123-456", "999+999", "--trace", "--check"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "12*45 = 540  (correct)" in out and "97/12 = 8 r 1  (correct)" in out
    assert "123-456 = -333  (correct)" in out and "999+999 = 1998  (correct)" in out
    assert "  12 * 5 = 60" in out and "  12 * 4 = 48, shifted: 480" in out
    assert "  97 / 12 = 8 (8 * 12 = 96), remainder 1" in out
    assert "  as written: 12*45=060,840>0450$" in out
    assert calc.main(["97", "/", "12"]) == 0 and capsys.readouterr().out == "97/12 = 8 r 1\n"
    assert calc.main(["7 x 6", "8÷3"]) == 0 and capsys.readouterr().out == "7*6 = 42\n8/3 = 2 r 2\n"
    model.break_op = "*"
    assert calc.main(["12*45", "--check"]) == 0
    assert capsys.readouterr().out.strip() == "12*45 = 541  (wrong: 12*45 = 540)"  # the model's answer, flagged


@pytest.mark.parametrize("expr,words", [
    ("12**45", "not an expression"), ("12*", "not an expression"), ("", "not an expression"),
    ("1.5*2", "not an expression"), ("-5+3", "negative"), ("5+-3", "negative"),
    ("5/0", "division by zero"), ("123*4", "123 has more than 2 digits"), ("1000+1", "1000 has more than 3"),
    ("1/000", "division by zero"),
])
def test_calc_refuses_what_the_model_did_not_learn(expr, words):
    with pytest.raises(ValueError, match=words):
        calc.parse_expression(expr, CalculatorTask())
    assert calc.parse_expression("007*0012", CalculatorTask()) == ("*", 7, 12)  # leading zeros are fine
    with pytest.raises(ValueError, match="not trained on /"):
        calc.parse_expression("8/2", CalculatorTask(ops="+*"))


def test_calc_flags_a_remainder_not_below_the_divisor(monkeypatch, capsys):
    t = CalculatorTask()
    monkeypatch.setattr(checkpoint, "load_model", lambda *a, **k: (Oracle(t), t.tokenizer, {"task": t.config()}))
    monkeypatch.setattr(CalculatorTask, "generate", lambda self, model, problems, device="cpu", amp=None:
                        ["200000020,320551080>50r80$" for _ in problems])  # 23/5 "= 5 r 8", as a real model wrote
    assert calc.main(["23/5", "--check"]) == 1
    assert capsys.readouterr().out == ("23/5: the model's answer 5 r 8 is not a division result "
                                       "(remainder 8 >= divisor 5); the true answer is 4 r 3\n")


def test_calc_reports_a_malformed_model_line(monkeypatch, capsys):
    t = CalculatorTask()

    class Garbage(Oracle):
        def forward(self, idx):
            logits = torch.zeros(*idx.shape, t.vocab_size)
            logits[..., t.tokenizer.stoi["r"]] = 1.0  # "rrrr...": never a well-formed answer
            return logits, None

    monkeypatch.setattr(checkpoint, "load_model", lambda *a, **k: (Garbage(t), t.tokenizer, {"task": t.config()}))
    assert calc.main(["1+2"]) == 1
    assert "did not write a well-formed answer" in capsys.readouterr().out


def test_train_eval_task_and_calc_end_to_end(tmp_path):
    out = tmp_path / "calc"
    r = pygpt("pygpt.train", "--task", "calculator", "--digits", "1", "--mul-digits", "1", "--out-dir", str(out),
              *TINY, "--max-iters", "20", "--eval-interval", "10", "--eval-problems", "20")
    assert "task:calculator-1d1d" in r.stdout and "[+ " in r.stdout and "/ " in r.stdout
    evals = [json.loads(l) for l in open(out / "log.jsonl") if "val_loss" in l]
    assert [e["iter"] for e in evals] == [0, 10, 20] and set(evals[-1]["exact_match_by_op"]) == set(OPS)
    state = torch.load(out / "ckpt.pt", weights_only=True)
    assert state["task"] == {"name": "calculator", "digits": 1, "mul_digits": 1, "trace": True, "mask": True,
                             "ops": "+-*/"}
    e = pygpt("pygpt.eval_task", "--ckpt", str(out), "--n", "20")
    assert e.stdout.startswith("calculator-1d1d (iter 20): exact match") and "\n  /: " in e.stdout
    c = pygpt("pygpt.calc", "--ckpt", str(out), "7*8", "9/4", "--trace", check=False)
    assert c.returncode in (0, 1) and c.stderr == ""  # an untrained model: answers or "not well-formed"
    assert c.stdout.startswith("7*8")
    one_line_error(pygpt("pygpt.calc", "--ckpt", str(out), "12*4", check=False), "12 has more than 1 digit")
    one_line_error(pygpt("pygpt.calc", "--ckpt", str(out), "4/0", check=False), "division by zero")
    one_line_error(pygpt("pygpt.calc", "--ckpt", str(out), "4^2", check=False), "not an expression")
    one_line_error(pygpt("pygpt.calc", "--ckpt", str(tmp_path / "none"), "1+1", check=False), "no checkpoint")


def test_task_flags_belong_to_their_task(tmp_path):
    out = tmp_path / "x"
    run = lambda task, *a: pygpt("pygpt.train", "--task", task, "--out-dir", str(out), *TINY, *a, check=False)  # noqa: E731
    one_line_error(run("calculator", "--no-reverse"), "--reverse does not apply to --task calculator")
    one_line_error(run("addition", "--mul-digits", "2"), "--mul-digits does not apply to --task addition")
    one_line_error(run("addition", "--no-trace"), "--trace does not apply")
    one_line_error(run("calculator", "--ops=+^"), "--ops")
    one_line_error(run("calculator", "--mul-digits", "0"), "--mul-digits")
    one_line_error(pygpt("pygpt.train", "--mul-digits", "2", "--out-dir", str(out), check=False), "needs --task")
    assert not out.exists()
    # an addition checkpoint is not a calculator
    add = tmp_path / "add"
    pygpt("pygpt.train", "--task", "addition", "--digits", "1", "--out-dir", str(add), *TINY, "--max-iters", "2",
          "--eval-interval", "2")
    one_line_error(pygpt("pygpt.calc", "--ckpt", str(add), "1+1", check=False), "not a calculator checkpoint")
