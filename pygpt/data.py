"""Data: get the text, tokenize it once into train.bin / val.bin, and serve random batches.

A prepared data set is a folder:

    train.bin   the first 90 % of the token stream, uint16 (uint32 if the vocabulary is larger)
    val.bin     the last 10 %
    meta.json   the tokenizer, token counts, dtype and where the text came from

`Dataset(folder).get_batch('train', batch_size, block_size)` then picks `batch_size` random
offsets and returns inputs x = data[i : i+T] and targets y = data[i+1 : i+T+1]: every position
of every row is a next-token prediction problem (the lecture's get_batch).
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.request

import numpy as np
import torch

from .tokenizers import CharTokenizer, tokenizer_from_dict

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
TRAIN_FRACTION = 0.9


def data_root() -> str:
    """Where prepared data sets live by default: $PYGPT_DATA_DIR, else ./data."""
    return os.environ.get("PYGPT_DATA_DIR", "data")


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_shakespeare(cache_path: str, url: str | None = None) -> str:
    """Return the path of a verified copy of tiny Shakespeare, downloading it if needed."""
    url = url or SHAKESPEARE_URL  # read at call time, so the module constant can be overridden
    if os.path.exists(cache_path):
        digest = sha256_file(cache_path)
        if digest != SHAKESPEARE_SHA256:
            raise ValueError(
                f"cached {cache_path} has sha256 {digest}, expected {SHAKESPEARE_SHA256}; "
                "remove it or pass --input FILE"
            )
        return cache_path
    os.makedirs(os.path.dirname(cache_path) or ".", exist_ok=True)
    tmp = f"{cache_path}.part{os.getpid()}"
    try:
        with urllib.request.urlopen(url, timeout=30) as r, open(tmp, "wb") as f:
            f.write(r.read())
    except OSError as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        reason = getattr(e, "reason", None) or e
        raise ConnectionError(
            f"could not download tiny Shakespeare from {url} ({reason}); "
            "offline? pass --input /path/to/input.txt"
        ) from None
    digest = sha256_file(tmp)
    if digest != SHAKESPEARE_SHA256:
        os.remove(tmp)
        raise ValueError(f"downloaded file has sha256 {digest}, expected {SHAKESPEARE_SHA256}")
    os.replace(tmp, cache_path)
    return cache_path


def read_text(path: str) -> tuple[str, list[str]]:
    """Read a UTF-8 text file, or every .txt file below a folder (sorted, joined by a blank line)."""
    if os.path.isdir(path):
        files = sorted(
            os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs if f.endswith(".txt")
        )
        if not files:
            raise FileNotFoundError(f"no .txt files under {path}")
    elif os.path.isfile(path):
        files = [path]
    else:
        raise FileNotFoundError(f"input {path} does not exist")
    parts = []
    for f in files:
        try:
            with open(f, encoding="utf-8") as fh:
                parts.append(fh.read())
        except UnicodeDecodeError as e:
            raise ValueError(f"{f} is not UTF-8 text ({e})") from None
    text = "\n\n".join(parts)
    if not text:
        raise ValueError(f"input {path} is empty")
    return text, files


def prepare(text: str, out_dir: str, source: dict, tokenizer=None, force: bool = False) -> dict:
    """Tokenize `text` and write train.bin / val.bin / meta.json into `out_dir` (90/10 split).

    Refuses to overwrite a folder holding files it did not write, unless `force`.
    """
    tok = tokenizer or CharTokenizer.from_text(text)
    ids = np.array(tok.encode(text), dtype=np.int64)
    n = len(ids)
    if n < 2:
        raise ValueError(f"the text has only {n} tokens; need at least 2")
    dtype = np.uint16 if tok.vocab_size <= 2**16 else np.uint32
    split = int(n * TRAIN_FRACTION)
    os.makedirs(out_dir, exist_ok=True)
    meta_path = os.path.join(out_dir, "meta.json")
    owned = os.path.exists(meta_path) and _read_meta(meta_path).get("format") == "pygpt-data-1"
    for name in ("train.bin", "val.bin", "meta.json"):
        p = os.path.join(out_dir, name)
        if os.path.exists(p) and not owned and not force:
            raise FileExistsError(f"{p} exists and was not written by pygpt.prepare; pass --force to overwrite")
    meta = {
        "format": "pygpt-data-1",
        "tokenizer": tok.to_dict(),
        "vocab_size": tok.vocab_size,
        "dtype": np.dtype(dtype).name,
        "train_tokens": split,
        "val_tokens": n - split,
        "chars": len(text),
        "source": source,
    }
    for name, part in (("train.bin", ids[:split]), ("val.bin", ids[split:])):
        p = os.path.join(out_dir, name)
        part.astype(dtype).tofile(p + ".tmp")
        os.replace(p + ".tmp", p)
    with open(meta_path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(meta, f, ensure_ascii=False, indent=1)
    os.replace(meta_path + ".tmp", meta_path)
    return meta


def _read_meta(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {path}: {e}") from None


def prepare_shakespeare_char(out_dir: str | None = None, input_path: str | None = None, force: bool = False) -> dict:
    out_dir = out_dir or os.path.join(data_root(), "shakespeare_char")
    if input_path is None:
        input_path = fetch_shakespeare(os.path.join(out_dir, "input.txt"))
    text, _ = read_text(input_path)
    source = {"name": "shakespeare_char", "path": os.path.abspath(input_path), "sha256": sha256_file(input_path)}
    return prepare(text, out_dir, source, force=force)


class Dataset:
    """A prepared data set folder: memory-mapped token streams plus its tokenizer."""

    def __init__(self, path: str):
        meta_path = os.path.join(path, "meta.json")
        if not os.path.isfile(meta_path):
            raise FileNotFoundError(
                f"{path} is not a prepared data set (no meta.json); run python -m pygpt.prepare first"
            )
        self.path = path
        self.meta = _read_meta(meta_path)
        self.tokenizer = tokenizer_from_dict(self.meta["tokenizer"])
        self.vocab_size = self.tokenizer.vocab_size
        self.data = {}
        for split in ("train", "val"):
            p = os.path.join(path, f"{split}.bin")
            if not os.path.isfile(p):
                raise FileNotFoundError(f"{p} is missing; re-run python -m pygpt.prepare")
            self.data[split] = np.memmap(p, dtype=np.dtype(self.meta["dtype"]), mode="r")

    def get_batch(self, split: str, batch_size: int, block_size: int, device="cpu", generator=None):
        """Random (x, y) windows of `block_size` tokens; y is x shifted left by one."""
        if split not in self.data:
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        data = self.data[split]
        if len(data) <= block_size:
            raise ValueError(
                f"the {split} split of {self.path} has {len(data)} tokens, "
                f"too few for block_size {block_size}"
            )
        ix = torch.randint(len(data) - block_size, (batch_size,), generator=generator).tolist()
        x = torch.from_numpy(np.stack([data[i : i + block_size].astype(np.int64) for i in ix]))
        y = torch.from_numpy(np.stack([data[i + 1 : i + 1 + block_size].astype(np.int64) for i in ix]))
        device = torch.device(device)
        if device.type == "cuda":
            # pinned host memory lets the copy run asynchronously with the GPU's work
            return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        return x.to(device), y.to(device)


def get_batch(dataset: Dataset, split: str, batch_size: int, block_size: int, device="cpu", generator=None):
    """Functional spelling of `Dataset.get_batch`, as in the lecture."""
    return dataset.get_batch(split, batch_size, block_size, device, generator)


def resolve_dataset(name_or_path: str) -> str:
    """A data set argument is a prepared folder, or a known name under data_root()."""
    if os.path.isdir(name_or_path) and os.path.isfile(os.path.join(name_or_path, "meta.json")):
        return name_or_path
    aliases = {"shakespeare": "shakespeare_char", "shakespeare_char": "shakespeare_char"}
    if name_or_path in aliases:
        folder = os.path.join(data_root(), aliases[name_or_path])
        if not os.path.isfile(os.path.join(folder, "meta.json")):
            prepare_shakespeare_char(folder)
        return folder
    if os.path.isdir(name_or_path):
        raise FileNotFoundError(f"{name_or_path} has no meta.json; prepare it with python -m pygpt.prepare text --input ... --out {name_or_path}")
    raise FileNotFoundError(
        f"unknown data set {name_or_path!r}: give a folder made by python -m pygpt.prepare, or one of: "
        + ", ".join(sorted(aliases))
    )
