"""The held-out split shared by the tasks: a stable hash of the problem puts it in train or val.

`splitmix64` is SplitMix64's finaliser (a fixed, well-mixed 64-bit hash, vectorised in numpy; not
Python's salted hash()). A task hashes an integer key of its problem, e.g. a * 10**n + b, and
calls the pair val when the hash modulo 100 is below VAL_PERCENT. `held_out_pairs` lists a fixed
eval set of val pairs: every one (sorted; a fixed-seed subset when there are more than n) when the
pairs can be enumerated, else a fixed-seed draw of n distinct ones.
"""

from __future__ import annotations

import numpy as np

VAL_PERCENT = 10
EVAL_SEED = 20240607
ENUMERATE_LIMIT = 10**6  # enumerate every pair below this many; draw at random above


def splitmix64(x) -> np.ndarray:
    with np.errstate(over="ignore"):  # arithmetic modulo 2**64: the wrap-around is the point
        x = np.asarray(x, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def is_val_hash(key) -> np.ndarray:
    """True where the problem with this integer key is held out (about VAL_PERCENT %)."""
    return splitmix64(key) % np.uint64(100) < np.uint64(VAL_PERCENT)


def held_out_pairs(hi: int, is_val, n: int, b_min: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n val pairs (a, b) with 0 <= a < hi and b_min <= b < hi, the same on every call.

    `is_val(a, b)` takes arrays and says which pairs are held out."""
    if n < 1:
        raise ValueError(f"the number of eval problems must be >= 1, got {n}")
    if hi * hi <= ENUMERATE_LIMIT:
        a, b = np.divmod(np.arange(hi * hi, dtype=np.int64), hi)
        keep = is_val(a, b) & (b >= b_min)
        a, b = a[keep], b[keep]
        if len(a) > n:
            pick = np.sort(np.random.default_rng(EVAL_SEED).permutation(len(a))[:n])
            a, b = a[pick], b[pick]
        return a, b
    rng = np.random.default_rng(EVAL_SEED)
    seen, a, b = set(), [], []
    while len(a) < n:
        ca, cb = rng.integers(0, hi, size=(2, 20 * n))
        keep = is_val(ca, cb) & (cb >= b_min)
        for x, y in zip(ca[keep].tolist(), cb[keep].tolist()):
            if (x, y) not in seen and len(a) < n:
                seen.add((x, y))
                a.append(x)
                b.append(y)
    return np.array(a, dtype=np.int64), np.array(b, dtype=np.int64)
