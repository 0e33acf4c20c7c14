"""Tokenizers: turn text into integers and back.

The lecture starts with the simplest possible one: every distinct character is a token. The
vocabulary is tiny (65 symbols for tiny Shakespeare) and sequences are long; subword tokenizers
(SentencePiece, GPT-2's byte-level BPE) trade a bigger vocabulary for shorter sequences.

Every tokenizer here has the same small interface:

    encode(str) -> list[int]      decode(list[int]) -> str      vocab_size
    to_dict() / from_dict(d)      save(path) / load(path)        (JSON)

One module per tokenizer: char.py (CharTokenizer), bpe.py (BPETokenizer, byte-level BPE written
here), spm.py (SentencePieceTokenizer, a wrapper of Google's sentencepiece). `tokenizer_from_dict` rebuilds any of them from
the dict stored in a data set's meta.json and in checkpoints; the modules of the other kinds are
imported only when such a tokenizer is used.
"""

from __future__ import annotations

import importlib

from ._io import read_json
from .char import CharTokenizer

# type name in to_dict() -> "module:class" (imported on first use)
_KINDS = {"char": "char:CharTokenizer", "bpe": "bpe:BPETokenizer", "sentencepiece": "spm:SentencePieceTokenizer"}


def tokenizer_class(kind: str):
    if kind not in _KINDS:
        raise ValueError(f"unknown tokenizer type {kind!r}; known: {', '.join(_KINDS)}")
    module, name = _KINDS[kind].split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def tokenizer_from_dict(d: dict):
    """Rebuild any tokenizer from its `to_dict()` form (as stored in meta.json and checkpoints)."""
    kind = d.get("type") if isinstance(d, dict) else None
    return tokenizer_class(kind).from_dict(d)


def load_tokenizer(path: str):
    return tokenizer_from_dict(read_json(path))


__all__ = ["CharTokenizer", "load_tokenizer", "tokenizer_class", "tokenizer_from_dict"]
