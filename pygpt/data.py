"""Data: get the text, tokenize it once into train.bin / val.bin, and serve random batches.

A prepared data set is a folder:

    train.bin   the first 90 % of the token stream, uint16 (uint32 if the vocabulary is larger)
    val.bin     the last 10 %
    meta.json   the tokenizer, token counts, UTF-8 byte counts per split (for bits per byte), the
                dtype and where the text came from

`prepare_corpus` streams a file or a folder of .txt files document by document (a file is a
document, or is split into documents at runs of blank lines), so no corpus-sized string is held in
memory beyond the sample a subword tokenizer trains on; between documents of a BPE or SentencePiece
data set it puts the separator token <|endoftext|>.

`Dataset(folder).get_batch('train', batch_size, block_size)` then picks `batch_size` random
offsets and returns inputs x = data[i : i+T] and targets y = data[i+1 : i+T+1]: every position
of every row is a next-token prediction problem (the lecture's get_batch).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
import urllib.request
from typing import Iterator

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
    _check_writable(out_dir, force)
    os.makedirs(out_dir, exist_ok=True)
    meta_path = os.path.join(out_dir, "meta.json")
    n_bytes = len(text.encode("utf-8", "surrogatepass"))
    val_bytes = len(tok.decode(ids[split:].tolist()).encode("utf-8", "surrogatepass"))
    meta = {
        "format": "pygpt-data-1",
        "tokenizer": tok.to_dict(),
        "vocab_size": tok.vocab_size,
        "dtype": np.dtype(dtype).name,
        "train_tokens": split,
        "val_tokens": n - split,
        "chars": len(text),
        "bytes": n_bytes,
        "train_bytes": n_bytes - val_bytes,
        "val_bytes": val_bytes,
        "documents": 1,
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


# ----------------------------------------------------------------------------------------------
# corpora of any size, any tokenizer

TOKENIZERS = ("char", "bpe", "sentencepiece", "sentencepiece-unigram")
SEPARATOR = "<|endoftext|>"
CHAR_JOINER = "\n\n"
# --normalize ascii: typographic characters a char vocabulary from plain ASCII text (tiny Shakespeare)
# lacks, mapped to their ASCII spelling before the rest are dropped
ASCII_MAP = {"\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u201c": '"', "\u201d": '"',
             "\u201e": '"', "\u2013": "-", "\u2014": "--", "\u2015": "--", "\u2026": "...", "\u00a0": " ",
             "\u00ab": '"', "\u00bb": '"', "\u2032": "'", "\u2033": '"', "\u00ad": "", "\ufeff": ""}


def text_files(path: str) -> list[str]:
    """The file itself, or every .txt file below a folder, sorted."""
    if os.path.isdir(path):
        files = sorted(os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs if f.endswith(".txt"))
        if not files:
            raise FileNotFoundError(f"no .txt files under {path}")
        return files
    if os.path.isfile(path):
        return [path]
    raise FileNotFoundError(f"input {path} does not exist")


def read_document_file(path: str) -> str:
    """A file's text; a clear error for binary (NUL bytes) or non-UTF-8 content."""
    with open(path, "rb") as f:
        raw = f.read()
    if b"\x00" in raw:
        raise ValueError(f"{path} looks binary (it contains NUL bytes), not text")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text ({e})") from None


def iter_documents(path: str, doc_blank_lines: int | None = None) -> Iterator[str]:
    """Documents of a file or folder, one file at a time; with `doc_blank_lines` N, a run of N or
    more blank lines inside a file also ends a document (the Gutenberg corpus puts 4 between books)."""
    splitter = re.compile(r"\n(?:[ \t]*\n){%d,}" % doc_blank_lines) if doc_blank_lines else None
    for f in text_files(path):
        text = read_document_file(f)
        for doc in (splitter.split(text) if splitter else [text]):
            if doc:
                yield doc


def normalize_ascii(text: str) -> str:
    return text.translate(str.maketrans(ASCII_MAP)) if any(c in text for c in ASCII_MAP) else text


def _sample(docs: Iterator[str], max_chars: int) -> list[str]:
    out, n = [], 0
    for d in docs:
        out.append(d[: max_chars - n])
        n += len(out[-1])
        if n >= max_chars:
            break
    return out


def build_tokenizer(kind: str, input_path: str, vocab_size: int | None = None, doc_blank_lines=None,
                    train_chars: int = 20_000_000, normalize: str | None = None):
    """Train a tokenizer of `kind` on (a prefix of at most `train_chars` characters of) the corpus."""
    if kind not in TOKENIZERS:
        raise ValueError(f"--tokenizer must be one of {', '.join(TOKENIZERS)}, got {kind!r}")
    docs = iter_documents(input_path, doc_blank_lines)
    if kind == "char":
        if vocab_size is not None:
            raise ValueError("--vocab-size does not apply to the char tokenizer (its vocabulary is the text's characters)")
        chars: set = set()
        for i, d in enumerate(docs):  # every character of the whole corpus, streamed
            chars.update(normalize_ascii(d) if normalize == "ascii" else d)
            if i:
                chars.add("\n")  # documents of a char data set are joined by a blank line
        if not chars:
            raise ValueError(f"input {input_path} is empty")
        return CharTokenizer(sorted(chars))
    if vocab_size is None:
        raise ValueError(f"--tokenizer {kind} needs --vocab-size N")
    sample = _sample(docs, train_chars)
    if not any(sample):
        raise ValueError(f"input {input_path} is empty")
    if kind == "bpe":
        from .tokenizers.bpe import BPETokenizer

        return BPETokenizer.train(sample, vocab_size, special_tokens=(SEPARATOR,))
    from .tokenizers.spm import SentencePieceTokenizer

    model_type = "unigram" if kind == "sentencepiece-unigram" else "bpe"
    return SentencePieceTokenizer.train(sample, vocab_size, model_type=model_type, special_tokens=(SEPARATOR,))


def tokenizer_of(path: str):
    """The tokenizer of a prepared data set folder, a training run's checkpoint folder, a folder of
    GPT-2 style vocab.json + merges.txt, or a tokenizer JSON file."""
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "vocab.json")) or os.path.isfile(os.path.join(path, "merges.txt")):
            from .tokenizers.bpe import BPETokenizer  # GPT-2 style files; a missing one is an error naming it

            return BPETokenizer.from_gpt2_files(os.path.join(path, "vocab.json"), os.path.join(path, "merges.txt"))
        if os.path.isfile(os.path.join(path, "meta.json")):
            return tokenizer_from_dict(_read_meta(os.path.join(path, "meta.json"))["tokenizer"])
        if os.path.isfile(os.path.join(path, "ckpt.pt")):
            state = torch.load(os.path.join(path, "ckpt.pt"), map_location="cpu", weights_only=False)
            return tokenizer_from_dict(state["tokenizer"])
        raise FileNotFoundError(f"{path} holds neither a prepared data set (meta.json) nor a checkpoint (ckpt.pt)")
    if os.path.isfile(path):
        return tokenizer_from_dict(_read_meta(path))
    raise FileNotFoundError(f"tokenizer source {path} does not exist")


def _separator_id(tok):
    if tok.kind == "char":
        return None
    ids = tok.encode(SEPARATOR)
    return ids[0] if len(ids) == 1 else None


def _check_writable(out_dir: str, force: bool) -> None:
    """Refuse a folder holding train.bin / val.bin / meta.json that pygpt.prepare did not write."""
    meta_path = os.path.join(out_dir, "meta.json")
    owned = os.path.exists(meta_path) and _read_meta(meta_path).get("format") == "pygpt-data-1"
    for name in ("train.bin", "val.bin", "meta.json"):
        p = os.path.join(out_dir, name)
        if os.path.exists(p) and not owned and not force:
            raise FileExistsError(f"{p} exists and was not written by pygpt.prepare; pass --force to overwrite")


def prepare_corpus(input_path: str, out_dir: str, tokenizer, source: dict, doc_blank_lines=None,
                   normalize: str | None = None, force: bool = False, progress: bool = True) -> dict:
    """Tokenize a file or folder document by document into train.bin / val.bin / meta.json.

    Tokens stream into a temporary file as they are made; the first 90 % become train.bin, the rest
    val.bin. With `normalize='ascii'` (char data sets that share a smaller vocabulary) typographic
    characters are mapped to ASCII first and characters outside the vocabulary are dropped and
    counted (meta.json: dropped_chars); otherwise an unknown character is an error naming it."""
    tok = tokenizer
    _check_writable(out_dir, force)
    os.makedirs(out_dir, exist_ok=True)
    dtype = np.uint16 if tok.vocab_size <= 2**16 else np.uint32
    sep = _separator_id(tok)
    stream_path = os.path.join(out_dir, f"tokens.tmp{os.getpid()}")
    n_tokens = n_chars = n_bytes = n_docs = dropped = 0
    total = sum(os.path.getsize(f) for f in text_files(input_path))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="B", unit_scale=True, desc="tokenizing", leave=False)
    t0 = time.perf_counter()
    try:
        with open(stream_path, "wb") as out:
            for doc in iter_documents(input_path, doc_blank_lines):
                doc_bytes = len(doc.encode("utf-8"))
                if normalize == "ascii":
                    doc = normalize_ascii(doc)
                    if tok.kind == "char":
                        kept = "".join(c for c in doc if c in tok.stoi)
                        dropped += len(doc) - len(kept)
                        doc = kept
                if sep is None and n_docs and tok.kind == "char":
                    doc = CHAR_JOINER + doc  # no separator token in a char vocabulary: a blank line
                ids = tok.encode(doc)
                if sep is not None and n_docs:
                    ids = [sep] + ids
                np.asarray(ids, dtype=dtype).tofile(out)
                n_tokens += len(ids)
                n_chars += len(doc)
                n_bytes += len(doc.encode("utf-8", "surrogatepass"))
                n_docs += 1
                if bar is not None:
                    bar.update(doc_bytes)
        if n_tokens < 2:
            raise ValueError(f"the text has only {n_tokens} tokens; need at least 2")
        ids = np.memmap(stream_path, dtype=dtype, mode="r")
        split = int(n_tokens * TRAIN_FRACTION)
        val = np.asarray(ids[split:])
        val_ids = val[val != sep] if sep is not None else val
        val_bytes = len(tok.decode(val_ids.tolist()).encode("utf-8", "surrogatepass"))
        for name, part in (("train.bin", ids[:split]), ("val.bin", val)):
            p = os.path.join(out_dir, name)
            np.asarray(part).tofile(p + ".tmp")
            os.replace(p + ".tmp", p)
        del ids
    finally:
        if bar is not None:
            bar.close()
        if os.path.exists(stream_path):
            os.remove(stream_path)
    meta = {
        "format": "pygpt-data-1",
        "tokenizer": tok.to_dict(),
        "vocab_size": tok.vocab_size,
        "dtype": np.dtype(dtype).name,
        "train_tokens": split,
        "val_tokens": n_tokens - split,
        "chars": n_chars,
        "bytes": n_bytes,
        "train_bytes": n_bytes - val_bytes,
        "val_bytes": val_bytes,
        "documents": n_docs,
        "separator": SEPARATOR if sep is not None else None,
        "dropped_chars": dropped,
        "normalize": normalize,
        "seconds": round(time.perf_counter() - t0, 1),
        "source": source,
    }
    meta_path = os.path.join(out_dir, "meta.json")
    with open(meta_path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(meta, f, ensure_ascii=False, indent=1)
    os.replace(meta_path + ".tmp", meta_path)
    return meta


def bits_per_byte(loss_nats: float, meta: dict, split: str) -> float | None:
    """A split's mean next-token loss (nats per token) as bits per UTF-8 byte of its text: the
    measure that compares tokenizers honestly (a bigger vocabulary has fewer, harder tokens)."""
    tokens, nbytes = meta.get(f"{split}_tokens"), meta.get(f"{split}_bytes")
    if not tokens or not nbytes:
        return None
    return loss_nats / math.log(2) * tokens / nbytes


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
