"""Addition, served on the fly: the lecture's exercise 2 (teach the GPT to add).

Format (n = digits, 1 <= n <= MAX_DIGITS). A problem a + b with 0 <= a, b < 10**n is one
fixed-length string of 3n + 3 characters, no separators or end symbol (the fixed width says where
everything is):

    a, zero-padded to n digits | "+" | b, zero-padded to n digits | "=" | a + b as n + 1 digits

With `reverse=True` (the default) the n + 1 answer digits are written least significant first, the
order the carry runs, so every answer digit depends only on digits already seen. For n = 3:

    12 + 345 = 357   ->  "012+345=" + "7530"     (reverse=True)
                     ->  "012+345=" + "0357"     (reverse=False, the ablation)

The vocabulary is "0123456789+=" (token id == digit value; "+" is 10, "=" is 11), a CharTokenizer
that checkpoints store like any data set's. `get_batch` returns x = seq[:-1] and y = seq[1:], so
T = 3n + 2. With `mask=True` (the default) the targets of the 2n + 1 positions whose next token is
still part of the prompt "a+b=" are -1 (ignored by the loss): only the n + 1 answer digits are
learned. `mask=False` (the ablation) trains on every next token, prompt digits included.

Held-out set: a stable hash of (a, b) (splitmix64 of a * 10**n + b, pygpt.tasks.split; of
splitmix64(a) + b above 9 digits) puts about 10 % of the pairs in the val bucket. The train sampler
rejects val pairs, so no held-out problem is ever trained on; the eval set is the first N val pairs
of a fixed-seed draw (all val pairs, sorted, when there are at most N), the same on every call.
`exact_match` greedily decodes (argmax) the n + 1 answer digits of the eval problems and compares
them with a + b.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from ..tokenizers import CharTokenizer
from .split import held_out_pairs, is_val_hash, splitmix64

VOCAB = "0123456789+="
PLUS, EQUALS = 10, 11
MAX_DIGITS = 18  # a + b < 2 * 10**18 must fit in int64


class AdditionTask:
    """A Dataset look-alike for the trainer: get_batch, tokenizer, vocab_size, meta, name."""

    def __init__(self, digits: int = 3, reverse: bool = True, mask: bool = True):
        if isinstance(digits, bool) or not isinstance(digits, int) or not 1 <= digits <= MAX_DIGITS:
            raise ValueError(f"--digits must be an integer from 1 to {MAX_DIGITS}, got {digits!r}")
        self.digits, self.reverse, self.mask = digits, bool(reverse), bool(mask)
        self.tokenizer = CharTokenizer(VOCAB)
        self.vocab_size = self.tokenizer.vocab_size
        self.prompt_len = 2 * digits + 2  # "a+b="
        self.answer_len = digits + 1
        self.seq_len = self.prompt_len + self.answer_len  # 3n + 3
        self.block_size = self.seq_len - 1  # T of a batch
        self.name = f"addition-{digits}d" + ("" if self.reverse else "-normal") + ("" if self.mask else "-nomask")
        self.path = f"task:{self.name}"  # what the trainer prints where a data set shows its folder
        self.meta = {"format": "pygpt-task-1", **self.config(), "vocab_size": self.vocab_size,
                     "tokenizer": self.tokenizer.to_dict()}  # no byte counts: bits_per_byte gives None
        self._eval_cache: dict = {}

    def config(self) -> dict:
        """What rebuilds this task (stored in checkpoints as "task")."""
        return {"name": "addition", "digits": self.digits, "reverse": self.reverse, "mask": self.mask}

    # ------------------------------------------------------------------ the split
    def is_val(self, a, b) -> np.ndarray:
        """True for pairs in the held-out bucket (about VAL_PERCENT %)."""
        a, b = np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64)
        if self.digits <= 9:  # the key a * 10**n + b fits in 64 bits
            return is_val_hash(a * np.uint64(10**self.digits) + b)
        with np.errstate(over="ignore"):  # longer operands: hash a first, add b modulo 2**64
            return is_val_hash(splitmix64(a) + b)

    def sample_pairs(self, split: str, count: int, generator=None) -> tuple[np.ndarray, np.ndarray]:
        """`count` random (a, b) pairs of `split`, drawn by rejection from uniform pairs."""
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        want_val = split == "val"
        hi = 10**self.digits
        got_a, got_b, have = [], [], 0
        for _ in range(10_000):
            draw = max(2 * count, 64) if not want_val else max(20 * count, 640)
            ab = torch.randint(hi, (2, draw), generator=generator).numpy()
            keep = self.is_val(ab[0], ab[1]) == want_val
            got_a.append(ab[0][keep])
            got_b.append(ab[1][keep])
            have += int(keep.sum())
            if have >= count:
                return np.concatenate(got_a)[:count], np.concatenate(got_b)[:count]
        raise ValueError(f"the {split} split of {self.name} is empty")

    def eval_pairs(self, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The held-out eval set: N (default 10,000) val pairs, the same on every call."""
        n = 10_000 if n is None else n
        if n not in self._eval_cache:
            a, b = held_out_pairs(10**self.digits, self.is_val, n)
            if len(a) == 0:
                raise ValueError(f"{self.name} has no held-out pairs")
            self._eval_cache[n] = (a, b)
        return self._eval_cache[n]

    # ------------------------------------------------------------------ encoding
    def _digits(self, v: np.ndarray, width: int) -> np.ndarray:
        """(N, width) digits of v, most significant first."""
        powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
        return (np.asarray(v, dtype=np.int64)[:, None] // powers) % 10

    def encode_prompts(self, a, b) -> np.ndarray:
        a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
        col = lambda t: np.full((len(a), 1), t, dtype=np.int64)  # noqa: E731
        return np.concatenate([self._digits(a, self.digits), col(PLUS), self._digits(b, self.digits), col(EQUALS)], 1)

    def encode_answers(self, a, b) -> np.ndarray:
        s = self._digits(np.asarray(a, dtype=np.int64) + np.asarray(b, dtype=np.int64), self.answer_len)
        return s[:, ::-1].copy() if self.reverse else s

    def encode(self, a, b) -> np.ndarray:
        """(N, 3n + 3) token ids of whole problems."""
        return np.concatenate([self.encode_prompts(a, b), self.encode_answers(a, b)], 1)

    def answer_value(self, answer: str) -> int | None:
        """The number an answer string (as the model wrote it) stands for; None if not all digits."""
        if not answer.isdigit():
            return None
        return int(answer[::-1] if self.reverse else answer)

    def batch_from_pairs(self, a, b):
        seq = torch.from_numpy(self.encode(a, b))
        x, y = seq[:, :-1].contiguous(), seq[:, 1:].clone()
        if self.mask:
            y[:, : self.prompt_len - 1] = -1  # targets that are still prompt: not learned
        return x, y

    def get_batch(self, split: str, batch_size: int, block_size: int, device="cpu", generator=None):
        """(x, y) of shape (batch_size, 3n + 2), as pygpt.data.Dataset.get_batch returns."""
        if block_size < self.block_size:
            raise ValueError(f"block_size {block_size} is too small for {self.name}: a problem needs {self.block_size}")
        x, y = self.batch_from_pairs(*self.sample_pairs(split, batch_size, generator))
        device = torch.device(device)
        return x.to(device), y.to(device)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def exact_match(self, model, n: int | None = None, device="cpu", batch_size: int = 1000,
                    max_wrong: int = 5, amp=None, greedy: bool = True) -> dict:
        """Greedy-decode (argmax) the answers of the eval set; {"accuracy", "correct", "total", "wrong"}.

        `wrong` lists up to `max_wrong` misses as {"problem": "12+345", "expected": 357, "got": "357"
        (the model's digits in reading order), "raw": "7530" (as written)}.

        greedy=True decodes the n + 1 digits one forward pass at a time. greedy=False (what the
        trainer uses: about 3x faster) runs one forward pass over the whole correct problem and
        checks the argmax at every answer position: for a causal model this is the same verdict,
        since greedy decoding is right exactly when every step's argmax, given the right digits
        before it, is the right digit (up to float noise on exact ties). The misses it finds are
        then greedily decoded for `wrong`."""
        a_all, b_all = self.eval_pairs(n)
        was_training = getattr(model, "training", False)
        if hasattr(model, "eval"):
            model.eval()
        amp = amp if amp is not None else contextlib.nullcontext()

        def logits_of(idx):
            with amp:
                out = model(idx)
            return out[0] if isinstance(out, tuple) else out

        def decode(a, b):
            idx = torch.from_numpy(self.encode_prompts(a, b)).to(device)
            for _ in range(self.answer_len):
                idx = torch.cat([idx, logits_of(idx)[:, -1, :].argmax(-1, keepdim=True)], 1)
            return idx[:, self.prompt_len :].cpu().numpy()

        correct, wrong = 0, []
        try:
            for i in range(0, len(a_all), batch_size):
                a, b = a_all[i : i + batch_size], b_all[i : i + batch_size]
                answers = self.encode_answers(a, b)
                if greedy:
                    got = decode(a, b)
                    ok = (got == answers).all(1)
                else:
                    seq = torch.from_numpy(self.encode(a, b)).to(device)
                    pred = logits_of(seq[:, :-1])[:, self.prompt_len - 1 :, :].argmax(-1).cpu().numpy()
                    ok = (pred == answers).all(1)
                correct += int(ok.sum())
                miss = np.flatnonzero(~ok)[: max(0, max_wrong - len(wrong))]
                if len(miss):
                    got_miss = got[miss] if greedy else decode(a[miss], b[miss])
                    for j, g in zip(miss, got_miss):
                        raw = self.tokenizer.decode(g.tolist())
                        wrong.append({"problem": f"{a[j]}+{b[j]}", "expected": int(a[j] + b[j]),
                                      "got": raw[::-1] if self.reverse else raw, "raw": raw})
        finally:
            if was_training:
                model.train()
        total = len(a_all)
        return {"accuracy": correct / total, "correct": correct, "total": total, "wrong": wrong}
