"""A calculator for + - * / with chain-of-thought traces: the lecture's "swole doge" exercise.

One model learns four operators. Every problem is one line of characters:

    prompt "a<op>b="  |  trace (may be empty)  |  ">"  |  answer  |  "$" (end)

Operands are zero-padded to a fixed width: `digits` (default 3) for + and -, `mul_digits`
(default 2) for * and /. Every number after "=" is written least significant digit first and
zero-padded to a fixed width, the order in which carries and borrows run, so that each digit the
model writes depends only on digits it has already seen. Examples (digits=3, mul_digits=2):

    123+456=579        "123+456=>9750$"    the sum in n + 1 digits, no trace
    123-456=-333       "123-456=>-333$"    the sign ("+" for >= 0) first, then |a - b| in n digits
    12*45=540          "12*45=060,840>0450$"
        the trace holds the partial products a * b_j, one per digit b_j of b (least significant
        first), each m + 1 digits: 12*5 = 60 -> "060", 12*4 = 48 -> "840". The answer is their
        shifted sum in 2m digits, 60 + 480 = 540 -> "0450". For m > 2 the running sums
        p0 + 10 p1, p0 + 10 p1 + 100 p2, ... (2m digits each) follow the partial products.
    97/12=8 r 1        "97/12=900000090,790869010>80r10$"
        long division, one step per digit a_i of a (most significant first). A step writes
        x = 10 r + a_i (m + 1 digits), the quotient digit q_i = x // b, the product q_i * b
        (m + 1 digits) and the new remainder r = x - q_i * b (m digits): "900" "0" "000" "90"
        (9 / 12 = 0 r 9), then "790" "8" "690" "10" (97 / 12 = 8, 8 * 12 = 96, r 1). The answer is
        the quotient (m digits), "r", the remainder (m digits): "80r10" is 8 r 1.

Division is integer division with quotient and remainder (a = q * b + r, 0 <= r < b); the divisor
is never 0. `trace=False` (the ablation) drops every trace: "12*45=>0450$".

Vocabulary "0123456789+-*/=,>r$" (token id == digit value). Batches pad every row to the longest
problem (the division) with "$"; the loss learns everything after the prompt, up to and including
the first "$" (targets -1 elsewhere; `mask=False` learns the prompt too, never the padding).

Held-out set: as for addition, a stable hash (splitmix64) of (operator, a, b) puts about
10 % of the problems of each operator in the val bucket, which training never serves.
`exact_match` reports the accuracy of each operator separately.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from ..tokenizers import CharTokenizer
from .split import held_out_pairs, is_val_hash

VOCAB = "0123456789+-*/=,>r$"
OPS = "+-*/"
END = "$"
MAX_DIGITS = 9  # (op, a, b) must fit in 64 bits for the hash


def _rev(v: int, width: int) -> str:
    """v in `width` digits, least significant first: _rev(60, 3) == "060", _rev(48, 3) == "840"."""
    if not 0 <= v < 10**width:
        raise ValueError(f"{v} does not fit in {width} digits")
    return str(v).zfill(width)[::-1]


def _unrev(s: str) -> int:
    return int(s[::-1])


class CalculatorTask:
    """A Dataset look-alike for the trainer: get_batch, tokenizer, vocab_size, meta, name."""

    def __init__(self, digits: int = 3, mul_digits: int = 2, trace: bool = True, mask: bool = True,
                 ops: str = OPS):
        for name, v in (("--digits", digits), ("--mul-digits", mul_digits)):
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_DIGITS:
                raise ValueError(f"{name} must be an integer from 1 to {MAX_DIGITS}, got {v!r}")
        if not ops or any(o not in OPS for o in ops) or len(set(ops)) != len(ops):
            raise ValueError(f"--ops must be distinct characters of {OPS!r}, got {ops!r}")
        self.digits, self.mul_digits, self.trace, self.mask = digits, mul_digits, bool(trace), bool(mask)
        self.ops = "".join(o for o in OPS if o in ops)  # canonical order
        self.tokenizer = CharTokenizer(VOCAB)
        self.vocab_size = self.tokenizer.vocab_size
        self.seq_len = max(len(self.text(o, 10 ** self.width(o) - 1, 1)) for o in self.ops)
        self.block_size = self.seq_len - 1
        self.name = (f"calculator-{digits}d{mul_digits}d" + ("" if self.ops == OPS else "-" + self.ops_name())
                     + ("" if self.trace else "-notrace") + ("" if self.mask else "-nomask"))
        self.path = f"task:{self.name}"
        self.meta = {"format": "pygpt-task-1", **self.config(), "vocab_size": self.vocab_size,
                     "tokenizer": self.tokenizer.to_dict()}
        self._eval_cache: dict = {}

    def config(self) -> dict:
        return {"name": "calculator", "digits": self.digits, "mul_digits": self.mul_digits,
                "trace": self.trace, "mask": self.mask, "ops": self.ops}

    def ops_name(self) -> str:
        return "".join({"+": "add", "-": "sub", "*": "mul", "/": "div"}[o] for o in self.ops)

    def width(self, op: str) -> int:
        """Operand digits of an operator."""
        return self.digits if op in "+-" else self.mul_digits

    def prompt_len(self, op: str) -> int:
        """Characters of the prompt "a<op>b=" (both operands zero-padded to width(op))."""
        return 2 * self.width(op) + 2

    # ------------------------------------------------------------------ one problem, spelled out
    def answer(self, op: str, a: int, b: int):
        """The true answer: an int, or (quotient, remainder) for /."""
        return {"+": lambda: a + b, "-": lambda: a - b, "*": lambda: a * b, "/": lambda: divmod(a, b)}[op]()

    def parts(self, op: str, a: int, b: int) -> tuple[str, str, str]:
        """(prompt, trace, answer) strings of one problem; text() joins them."""
        w = self.width(op)
        if not (0 <= a < 10**w and 0 <= b < 10**w):
            raise ValueError(f"operands of {op} must have at most {w} digits, got {a} and {b}")
        prompt = f"{a:0{w}d}{op}{b:0{w}d}="
        trace = []
        if op == "+":
            ans = _rev(a + b, w + 1)
        elif op == "-":
            ans = ("+" if a >= b else "-") + _rev(abs(a - b), w)
        elif op == "*":
            bd = [int(c) for c in str(b).zfill(w)[::-1]]  # digits of b, least significant first
            partial = [a * d for d in bd]
            trace = [_rev(p, w + 1) for p in partial]
            running = [sum(p * 10**j for j, p in enumerate(partial[: k + 1])) for k in range(1, w - 1)]
            trace += [_rev(s, 2 * w) for s in running]
            ans = _rev(a * b, 2 * w)
        elif op == "/":
            if b == 0:
                raise ZeroDivisionError(f"division by zero: {a}/{b}")
            r = 0
            for digit in str(a).zfill(w):  # long division, most significant digit first
                x = 10 * r + int(digit)
                q = x // b
                r = x - q * b
                trace.append(_rev(x, w + 1) + str(q) + _rev(q * b, w + 1) + _rev(r, w))
            q, r = divmod(a, b)
            ans = _rev(q, w) + "r" + _rev(r, w)
        else:
            raise ValueError(f"unknown operator {op!r}")
        return prompt, ",".join(trace) if self.trace else "", ans

    def text(self, op: str, a: int, b: int) -> str:
        prompt, trace, ans = self.parts(op, a, b)
        return f"{prompt}{trace}>{ans}{END}"

    def parse_answer(self, op: str, generated: str):
        """The answer the model wrote after the prompt (trace, ">", answer, "$"), or None if malformed."""
        w = self.width(op)
        if ">" not in generated or END not in generated:
            return None
        ans = generated[: generated.index(END)].rsplit(">", 1)[1]
        if op == "+" and len(ans) == w + 1 and ans.isdigit():
            return _unrev(ans)
        if op == "-" and len(ans) == w + 1 and ans[0] in "+-" and ans[1:].isdigit():
            return (-1 if ans[0] == "-" else 1) * _unrev(ans[1:])
        if op == "*" and len(ans) == 2 * w and ans.isdigit():
            return _unrev(ans)
        if op == "/" and len(ans) == 2 * w + 1 and ans[w] == "r" and (ans[:w] + ans[w + 1 :]).isdigit():
            return _unrev(ans[:w]), _unrev(ans[w + 1 :])
        return None

    def render_trace(self, op: str, a: int, b: int, generated: str) -> list[str]:
        """The model's trace as human-readable lines (best effort: malformed steps are shown raw)."""
        w = self.width(op)
        body = generated.split(">", 1)[0]
        steps = body.split(",") if body else []
        lines = []
        for k, s in enumerate(steps):
            try:
                if op == "*" and k < w:
                    d = str(b).zfill(w)[::-1][k]
                    lines.append(f"{a} * {d} = {_unrev(s)}" + (f", shifted: {_unrev(s) * 10**k}" if k else ""))
                elif op == "*":
                    lines.append(f"running sum of partial products 0..{k - w + 1}: {_unrev(s)}")
                elif op == "/":
                    x, q, p, r = s[: w + 1], s[w + 1], s[w + 2 : 2 * w + 3], s[2 * w + 3 :]
                    lines.append(f"{_unrev(x)} / {b} = {q} ({q} * {b} = {_unrev(p)}), remainder {_unrev(r)}")
                else:
                    lines.append(s)
            except (ValueError, IndexError):
                lines.append(f"(malformed step {s!r})")
        return lines

    # ------------------------------------------------------------------ the split
    def _key(self, op: str, a, b) -> np.ndarray:
        w = self.width(op)
        base = np.uint64(OPS.index(op)) * np.uint64(10 ** (2 * w))
        return base + np.asarray(a, dtype=np.uint64) * np.uint64(10**w) + np.asarray(b, dtype=np.uint64)

    def is_val(self, op: str, a, b) -> np.ndarray:
        return is_val_hash(self._key(op, a, b))

    def _draw(self, op: str, count: int, generator) -> tuple[np.ndarray, np.ndarray]:
        hi = 10 ** self.width(op)
        a = torch.randint(hi, (count,), generator=generator).numpy()
        b = torch.randint(1 if op == "/" else 0, hi, (count,), generator=generator).numpy()
        return a, b

    def sample(self, split: str, count: int, generator=None) -> list[tuple[str, int, int]]:
        """`count` random problems (op, a, b) of `split`: a uniform operator, then uniform operands."""
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        ops = torch.randint(len(self.ops), (count,), generator=generator).tolist()
        out = [None] * count
        for k, op in enumerate(self.ops):
            rows = [i for i, o in enumerate(ops) if o == k]
            got_a, got_b = [], []
            have = 0
            while have < len(rows):
                a, b = self._draw(op, max(2 * len(rows), 64) * (10 if split == "val" else 1), generator)
                keep = self.is_val(op, a, b) == (split == "val")
                got_a.append(a[keep])
                got_b.append(b[keep])
                have += int(keep.sum())
            a, b = np.concatenate(got_a), np.concatenate(got_b)
            for j, i in enumerate(rows):
                out[i] = (op, int(a[j]), int(b[j]))
        return out

    def eval_problems(self, op: str, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The held-out eval set of one operator: n (default 10,000) val pairs, the same every call."""
        n = 10_000 if n is None else n
        if (op, n) not in self._eval_cache:
            a, b = held_out_pairs(10 ** self.width(op), lambda a, b: self.is_val(op, a, b), n, 1 if op == "/" else 0)
            if len(a) == 0:
                raise ValueError(f"{self.name} has no held-out {op} problems")
            self._eval_cache[(op, n)] = (a, b)
        return self._eval_cache[(op, n)]

    # ------------------------------------------------------------------ batches
    def encode_batch(self, problems) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y), each (len(problems), block_size): rows padded with "$", targets -1 where not learned."""
        end = self.tokenizer.stoi[END]
        seq = torch.full((len(problems), self.seq_len), end, dtype=torch.long)
        y = torch.full((len(problems), self.block_size), -1, dtype=torch.long)
        for i, (op, a, b) in enumerate(problems):
            s = self.text(op, a, b)
            ids = torch.tensor(self.tokenizer.encode(s))
            seq[i, : len(ids)] = ids
            first = self.prompt_len(op) - 1 if self.mask else 0  # position whose target is the first trace token
            y[i, first : len(ids) - 1] = ids[first + 1 :]
        return seq[:, :-1].contiguous(), y

    def get_batch(self, split: str, batch_size: int, block_size: int, device="cpu", generator=None):
        if block_size < self.block_size:
            raise ValueError(f"block_size {block_size} is too small for {self.name}: a problem needs {self.block_size}")
        x, y = self.encode_batch(self.sample(split, batch_size, generator))
        device = torch.device(device)
        return x.to(device), y.to(device)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def generate(self, model, problems, device="cpu", amp=None) -> list[str]:
        """Greedy (argmax) continuations of the problems' prompts, up to the end of the longest answer.

        Problems are grouped by operator (one prompt length each) and decoded as a batch."""
        amp = amp if amp is not None else contextlib.nullcontext()
        out = [None] * len(problems)
        for op in self.ops:
            rows = [i for i, p in enumerate(problems) if p[0] == op]
            if not rows:
                continue
            prompts = [self.parts(*problems[i])[0] for i in rows]
            idx = torch.tensor([self.tokenizer.encode(p) for p in prompts], device=device)
            steps = len(self.text(op, 0, 1)) - idx.shape[1]  # every problem of op has the same length
            for _ in range(steps):
                with amp:
                    logits = model(idx[:, -self.block_size :])
                logits = logits[0] if isinstance(logits, tuple) else logits
                idx = torch.cat([idx, logits[:, -1, :].argmax(-1, keepdim=True)], 1)
            gen = idx[:, len(prompts[0]) :].tolist()
            for i, g in zip(rows, gen):
                out[i] = self.tokenizer.decode(g)
        return out

    @torch.no_grad()
    def exact_match(self, model, n: int | None = None, device="cpu", batch_size: int = 1000,
                    max_wrong: int = 5, amp=None, greedy: bool = True) -> dict:
        """Exact match of each operator on its held-out problems (n per operator).

        Returns {"accuracy" (the mean over operators), "correct", "total", "by_op": {op: accuracy},
        "wrong": up to max_wrong misses}. greedy=True decodes and compares the parsed answer with the
        true one. greedy=False (the trainer's fast check) runs one forward pass over each correct
        problem and requires the argmax at every position after the prompt (trace and answer) to be
        the right token: greedy decoding then writes exactly that line, so this is a lower bound
        of the greedy answer accuracy (a wrong trace step with a right answer counts as wrong)."""
        was_training = getattr(model, "training", False)
        if hasattr(model, "eval"):
            model.eval()
        amp_ctx = amp if amp is not None else contextlib.nullcontext()
        by_op, correct, total, wrong = {}, 0, 0, []
        try:
            for op in self.ops:
                a_all, b_all = self.eval_problems(op, n)
                ok_op = 0
                for i in range(0, len(a_all), batch_size):
                    probs = [(op, int(a), int(b)) for a, b in zip(a_all[i : i + batch_size], b_all[i : i + batch_size])]
                    if greedy:
                        gen = self.generate(model, probs, device, amp)
                        ok = [self.parse_answer(op, g) == self.answer(*p) for p, g in zip(probs, gen)]
                    else:
                        x, y = self.encode_batch(probs)
                        with amp_ctx:
                            logits = model(x.to(device))
                        logits = logits[0] if isinstance(logits, tuple) else logits
                        pred = logits.argmax(-1).cpu()
                        learned = y >= 0
                        if not self.mask:  # judge only what follows the prompt
                            learned[:, : self.prompt_len(op) - 1] = False
                        ok = ((pred == y) | ~learned).all(1).tolist()
                    ok_op += sum(ok)
                    miss = [j for j, good in enumerate(ok) if not good][: max(0, max_wrong - len(wrong))]
                    if miss:
                        got = [gen[j] for j in miss] if greedy else self.generate(model, [probs[j] for j in miss], device, amp)
                        for j, g in zip(miss, got):
                            p = probs[j]
                            wrong.append({"problem": f"{p[1]}{p[0]}{p[2]}", "expected": self.answer(*p),
                                          "got": self.parse_answer(op, g), "raw": g})
                by_op[op] = ok_op / len(a_all)
                correct += ok_op
                total += len(a_all)
        finally:
            if was_training:
                model.train()
        return {"accuracy": sum(by_op.values()) / len(by_op), "correct": correct, "total": total,
                "by_op": by_op, "wrong": wrong}
