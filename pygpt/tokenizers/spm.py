"""SentencePieceTokenizer: Google's sentencepiece (BPE or unigram) behind pygpt's tokenizer interface.

The lecture points at SentencePiece as what Google uses (and Llama after it): subword units learned
from the text, so a common word is one token where the character tokenizer spends one per letter.
This module is a thin wrapper. What it adds is the settings that make decode(encode(s)) == s, and
a JSON form (the serialized model proto, base64) that lives in meta.json and checkpoints like the
other tokenizers'.

Out of the box sentencepiece is built for translation, not for language modelling: it NFKC-
normalizes the text, collapses runs of spaces, adds a space in front of every sentence and maps
characters it has not seen to <unk>. `SentencePieceTokenizer.train` turns all of that off:

    normalization_rule_name="identity"   no Unicode normalization (the text's code points are kept)
    remove_extra_whitespaces=False       spaces, leading and trailing and in runs, are kept
    add_dummy_prefix=False               no space is invented at the start
    byte_fallback=True                   a character that is not a piece is spelled as its UTF-8
                                         bytes (256 byte tokens <0x00>..<0xFF>), never <unk>
    user_defined_symbols=special_tokens  "<|endoftext|>" is always one token
    split_digits=True                    numbers are spelled digit by digit (as Llama does)

Newlines: sentencepiece trains on "sentences". The text is cut into chunks of whole lines (at most
4 KiB each, so none is over max_sentence_length and silently dropped) and "\n" stays an ordinary
character inside them, so pieces like ":\n" and "\n\n" are learned. (Fed one line at a time, the
trainer strips the line's "\n" and the newline ends up as the byte token <0x0A>: it still
round-trips, but tiny Shakespeare then takes 10 % more tokens: 349,015 instead of 315,853 with
BPE at 4096 pieces.)

The one thing sentencepiece itself cannot round-trip is its own meta symbol "▁" (U+2581): it writes
spaces as "▁", so a "▁" in the text decodes as a space. Tokenizers trained here encode every "▁" of
the text as its three byte tokens <0xE2><0x96><0x81> instead (`meta_symbol_as_bytes`), which decode
back to "▁". (Such ids differ from what the sentencepiece library gives for a text containing "▁";
`from_model_file` keeps the library's behaviour unless asked otherwise.)

Measured with these settings (python -m pygpt.tokenize compare, tests/test_spm.py):
decode(encode(s)) == s for the whole of tiny Shakespeare (1,115,394 characters; BPE and unigram,
4096 pieces), for every Unicode code point outside the surrogates (each alone, and all of them in
one string), emoji, tabs, "\r", "\r\n", NUL, leading, trailing and repeated spaces, U+2581, the
special token, and combining sequences (kept as they are, not composed). What does not round-trip:
  - a str holding a lone surrogate ("\ud800") is not UTF-8 encodable: encode raises ValueError;
  - decode of ids that are not a tokenizer's output (the <unk> id decodes to " ⁇ ", byte tokens
    that do not form UTF-8 decode to U+FFFD per bad byte);
  - a "<|endoftext|>" (any special token) written in the text becomes the special token's id, so
    encode is not injective there (decode still gives the same text back);
  - models loaded with `from_model_file` round-trip only as well as their own settings allow
    (NFKC normalization rewrites characters, remove_extra_whitespaces collapses spaces, and
    without byte_fallback unseen characters become <unk>); so do models trained with `options`
    that override the settings above.

Speed: sentencepiece's BPE encoder slows down on long inputs (all of tiny Shakespeare as one
string: 0.63 s; in pieces of ~1 KB: 0.30 s, one thread, 4096 pieces), so `encode` hands a long
text to it in such pieces, cut only before a space that no piece can span: the ids are the same
as for the whole string (tested). Unigram models get the whole string (their Viterbi search is fast on it, and
breaks exact ties by floating-point sums, so a cut text could get a different, equally likely
segmentation).

Training is deterministic: the same text, settings and `num_threads` give the same model bytes
(sentencepiece's result depends on its thread count, so it is fixed, 1 by default, rather than
taken from the machine).
"""

from __future__ import annotations

import base64
import binascii
import io
import itertools
import re
from typing import Iterable

from ._io import read_json, write_json

META_SYMBOL = "\u2581"  # "▁", sentencepiece's stand-in for a space
MODEL_TYPES = ("bpe", "unigram")
_MODEL_TYPE_NAMES = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}  # TrainerSpec.ModelType
_USER_DEFINED = 4  # ModelProto.SentencePiece.Type
_CHUNK_BYTES = 4096  # training sentences are whole lines, at most this many UTF-8 bytes
_MAX_SENTENCE_BYTES = 2 * _CHUNK_BYTES
_ENCODE_PIECE = 1024  # characters: encode() cuts longer texts into pieces of about this size


def _sentencepiece():
    try:
        import sentencepiece
    except ImportError as e:  # a dependency in pyproject.toml; say so if an install lacks it
        raise ImportError("SentencePieceTokenizer needs the sentencepiece package: pip install sentencepiece") from e
    return sentencepiece


# ----------------------------------------------------------------------------------------------
# the few ModelProto fields we read, without depending on protobuf


def _fields(buf: bytes):
    """Yield (field number, wire type, value) of one protobuf message (bytes for length-delimited)."""
    i, n = 0, len(buf)

    def varint():
        nonlocal i
        shift = result = 0
        while True:
            if i >= n:
                raise ValueError("truncated varint")
            b = buf[i]
            i += 1
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7

    while i < n:
        key = varint()
        field, wire = key >> 3, key & 7
        if wire == 0:
            yield field, wire, varint()
        elif wire == 1:
            yield field, wire, buf[i : i + 8]
            i += 8
        elif wire == 2:
            size = varint()
            if i + size > n:
                raise ValueError("truncated field")
            yield field, wire, buf[i : i + size]
            i += size
        elif wire == 5:
            yield field, wire, buf[i : i + 4]
            i += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")


def _model_info(proto: bytes) -> dict:
    """What pygpt needs from a serialized sentencepiece ModelProto: the model type, the pieces (in id
    order), the user-defined symbols, and whether the normalizer leaves the text as it is."""
    info = {"model_type": "unigram", "pieces": [], "special_tokens": []}  # UNIGRAM: TrainerSpec's default
    norm = {"name": "", "add_dummy_prefix": True, "remove_extra_whitespaces": True, "escape_whitespaces": True}
    for field, wire, value in _fields(proto):
        if field == 1 and wire == 2:  # repeated SentencePiece pieces = 1 {piece = 1; score = 2; type = 3}
            piece, kind = "", 1
            for f, w, v in _fields(value):
                if f == 1 and w == 2:
                    piece = v.decode("utf-8")
                elif f == 3 and w == 0:
                    kind = v
            info["pieces"].append(piece)
            if kind == _USER_DEFINED:
                info["special_tokens"].append(piece)
        elif field == 2 and wire == 2:  # TrainerSpec trainer_spec = 2 {model_type = 3}
            for f, w, v in _fields(value):
                if f == 3 and w == 0:
                    info["model_type"] = _MODEL_TYPE_NAMES.get(v, f"type {v}")
        elif field == 3 and wire == 2:  # NormalizerSpec normalizer_spec = 3
            for f, w, v in _fields(value):
                if f == 1 and w == 2:
                    norm["name"] = v.decode("utf-8")
                elif f in (3, 4, 5) and w == 0:
                    norm[("add_dummy_prefix", "remove_extra_whitespaces", "escape_whitespaces")[f - 3]] = bool(v)
    # identity normalization, no dummy prefix, spaces kept and written as "▁": encoding a text in
    # pieces then gives the same ids as encoding it whole, where no piece spans a cut
    info["verbatim"] = norm == {"name": "identity", "add_dummy_prefix": False, "remove_extra_whitespaces": False,
                                "escape_whitespaces": True}
    return info


def _cut_pattern(pieces: list[str]):
    """A regex matching the spaces before which a text can be cut without changing its encoding.

    A piece that spans the boundary before a space contains the character before the space
    followed by "▁" (the space). So a cut before a space whose preceding character c never precedes
    "▁" inside any piece is safe: no piece (and so no BPE merge, no unigram lattice edge) can span
    it, and the encoding of the text is the encodings of its pieces concatenated.
    """
    before = {p[j] for p in pieces for j in range(len(p) - 1) if p[j + 1] == META_SYMBOL}
    if META_SYMBOL in before:  # "▁▁" is a piece: a space (or a literal "▁") before a space is unsafe
        before.add(" ")
    if not before:
        return re.compile(r"(?<=.) ", re.S)
    return re.compile("(?<=[^%s]) " % "".join(re.escape(c) for c in sorted(before)))


# ----------------------------------------------------------------------------------------------


def _training_sentences(texts: Iterable[str], split_meta: bool) -> list[str]:
    """Cut the texts into chunks of whole lines of at most _CHUNK_BYTES UTF-8 bytes ("\n" kept)."""
    out: list[str] = []
    for k, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"SentencePieceTokenizer.train takes a str or an iterable of str; item {k} is {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"text {k} is not valid Unicode: {e.reason} at position {e.start}") from None
        for segment in text.split(META_SYMBOL) if split_meta else [text]:
            cur, size = [], 0
            for line in segment.splitlines(keepends=True):
                n = len(line.encode("utf-8"))
                if n > _CHUNK_BYTES:  # a very long line: cut it (4 bytes per character at most)
                    step = _CHUNK_BYTES // 4
                    pieces = [line[j : j + step] for j in range(0, len(line), step)]
                else:
                    pieces = [line]
                for p in pieces:
                    m = n if len(pieces) == 1 else len(p.encode("utf-8"))
                    if cur and size + m > _CHUNK_BYTES:
                        out.append("".join(cur))
                        cur, size = [], 0
                    cur.append(p)
                    size += m
            if cur:
                out.append("".join(cur))
    return out


def _training_error(e: Exception, vocab_size: int, model_type: str) -> ValueError:
    """sentencepiece's RuntimeError (a C++ CHECK message) as a ValueError saying what to change."""
    msg = str(e)
    m = re.search(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)", msg)
    if m:
        return ValueError(
            f"vocab_size {vocab_size} is too small for sentencepiece on this text: it needs at least "
            f"{m.group(2)} pieces (<unk>, the special tokens, 256 byte tokens and each character of the text "
            f"that character_coverage keeps); use vocab_size >= {m.group(2)}"
        )
    m = re.search(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)", msg)
    if m:
        return ValueError(
            f"vocab_size {vocab_size} is too large for this text: sentencepiece's {model_type} model "
            f"finds at most {m.group(2)} pieces in it; use vocab_size <= {m.group(2)} or train on more text"
        )
    return ValueError(f"sentencepiece training failed (vocab_size {vocab_size}, {model_type}): {msg.strip()}")


class SentencePieceTokenizer:
    """A trained sentencepiece model (BPE or unigram) with pygpt's tokenizer interface.

    `SentencePieceTokenizer.train(text, vocab_size)` trains one in memory; `from_model_file(path)`
    wraps an existing `.model` file; `to_dict()` / `save()` store the model proto (base64) as JSON.
    See the module docstring for which strings round-trip exactly.
    """

    kind = "sentencepiece"

    def __init__(self, model_proto: bytes, meta_symbol_as_bytes: bool | None = False):
        """Wrap a serialized sentencepiece ModelProto. `meta_symbol_as_bytes`: encode "▁" in the text
        as its byte tokens (see the module docstring); None: whenever the model allows it (byte
        tokens and a normalizer that keeps the text verbatim), as `train` does."""
        if not isinstance(model_proto, (bytes, bytearray)) or not model_proto:
            raise ValueError("SentencePieceTokenizer needs the serialized model proto (non-empty bytes)")
        model_proto = bytes(model_proto)
        spm = _sentencepiece()
        try:
            self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        except (RuntimeError, OSError) as e:
            raise ValueError(f"not a valid sentencepiece model ({str(e).strip()})") from None
        try:
            info = _model_info(model_proto)
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"not a valid sentencepiece model ({e})") from None
        self.model_proto = model_proto
        self.model_type = info["model_type"]
        self.special_tokens = tuple(info["special_tokens"])
        self._size = self._sp.get_piece_size()
        # BPE: cut long texts where no piece can span (the same ids, and sentencepiece's BPE encoder
        # is ~2x faster on 1 KB pieces than on a 1 MB string). Not for unigram: there the Viterbi
        # search breaks exact ties by floating-point sums that depend on where the text starts, so
        # a cut text can get an equally likely but different segmentation (seen on indentation).
        self._cut_re = _cut_pattern(info["pieces"]) if info["verbatim"] and self.model_type == "bpe" else None
        meta_ids = [self._sp.piece_to_id(f"<0x{b:02X}>") for b in META_SYMBOL.encode("utf-8")]
        can_escape = info["verbatim"] and all(self._sp.is_byte(i) for i in meta_ids)
        if meta_symbol_as_bytes and not can_escape:
            raise ValueError(
                "meta_symbol_as_bytes needs a model with byte tokens (byte_fallback=True) and a verbatim "
                "normalizer (identity rules, no dummy prefix, extra whitespace kept)"
            )
        escape = can_escape if meta_symbol_as_bytes is None else bool(meta_symbol_as_bytes)
        self._meta_ids = meta_ids if escape else None

    # -- training and loading ------------------------------------------------------------------

    @classmethod
    def train(
        cls,
        text: str | Iterable[str],
        vocab_size: int,
        model_type: str = "bpe",
        special_tokens: Iterable[str] = ("<|endoftext|>",),
        character_coverage: float = 1.0,
        byte_fallback: bool = True,
        split_digits: bool = True,
        num_threads: int = 1,
        **options,
    ) -> "SentencePieceTokenizer":
        """Train a sentencepiece model on `text` (a str, or an iterable of str documents), in memory.

        `vocab_size` counts every piece: <unk>, the special tokens, the 256 byte tokens (with
        byte_fallback) and the learned pieces. Too small or too large for the text -> ValueError
        naming the bound sentencepiece reports. `options` go to SentencePieceTrainer.train as they
        are (e.g. max_sentencepiece_length=8) and override the settings listed in the module
        docstring; changing those can make the round trip inexact.
        """
        if model_type not in MODEL_TYPES:
            raise ValueError(f"model_type must be one of {', '.join(MODEL_TYPES)}, got {model_type!r}")
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
            raise ValueError(f"vocab_size must be a positive integer, got {vocab_size!r}")
        if isinstance(special_tokens, str):
            special_tokens = (special_tokens,)
        special_tokens = list(special_tokens)
        for t in special_tokens:
            if not isinstance(t, str) or not t or any(c.isspace() for c in t):
                raise ValueError(f"special tokens must be non-empty strings without whitespace, got {t!r}")
        if len(set(special_tokens)) != len(special_tokens):
            raise ValueError(f"special tokens are not unique: {special_tokens}")
        if not 0 < character_coverage <= 1:
            raise ValueError(f"character_coverage must be in (0, 1], got {character_coverage}")
        for key in ("sentence_iterator", "model_writer", "input", "model_prefix", "vocab_size", "model_type"):
            if key in options:
                raise ValueError(f"{key} is set by SentencePieceTokenizer.train itself")

        texts = [text] if isinstance(text, str) else text
        escape = byte_fallback and (  # "▁" will be byte tokens: do not train on it either
            options.get("normalization_rule_name", "identity") == "identity"
            and not options.get("add_dummy_prefix", False)
            and not options.get("remove_extra_whitespaces", False)
        )
        sentences = _training_sentences(texts, split_meta=escape)
        if not any(sentences):
            raise ValueError("cannot train a SentencePieceTokenizer on empty text")

        settings = dict(
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=character_coverage,
            byte_fallback=byte_fallback,
            split_digits=split_digits,
            user_defined_symbols=special_tokens,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,
            allow_whitespace_only_pieces=True,  # runs of spaces (indentation) can be one piece
            bos_id=-1,  # no <s> / </s>: pygpt adds its own separators; <unk> must stay (id 0)
            eos_id=-1,
            max_sentence_length=_MAX_SENTENCE_BYTES,
            num_threads=num_threads,
            minloglevel=2,  # quiet: errors still raise
        )
        settings.update(options)
        spm = _sentencepiece()
        writer = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences), model_writer=writer, **settings)
        except RuntimeError as e:
            raise _training_error(e, vocab_size, model_type) from None
        return cls(writer.getvalue(), meta_symbol_as_bytes=None if escape else False)

    @classmethod
    def from_model_file(cls, path: str, meta_symbol_as_bytes: bool = False) -> "SentencePieceTokenizer":
        """Wrap an existing sentencepiece `.model` file (e.g. Llama's tokenizer.model).

        Its ids are the library's own; `meta_symbol_as_bytes=True` encodes "▁" in the text as byte
        tokens (exact round trip of "▁", ids that differ from the library's for such texts).
        """
        with open(path, "rb") as f:
            proto = f.read()
        try:
            return cls(proto, meta_symbol_as_bytes=meta_symbol_as_bytes)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    def save_model_file(self, path: str) -> None:
        """Write the model as a sentencepiece `.model` file (for use with the library elsewhere)."""
        with open(path, "wb") as f:
            f.write(self.model_proto)

    # -- the tokenizer interface ---------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self._size

    @property
    def meta_symbol_as_bytes(self) -> bool:
        return self._meta_ids is not None

    def encode(self, s: str) -> list[int]:
        if not isinstance(s, str):
            raise TypeError(f"encode takes a str, got {type(s).__name__}")
        try:
            if self._meta_ids is None or META_SYMBOL not in s:
                return self._encode(s)
            out: list[int] = []
            for k, part in enumerate(s.split(META_SYMBOL)):
                if k:
                    out.extend(self._meta_ids)
                if part:
                    out.extend(self._encode(part))
            return out
        except (RuntimeError, TypeError, UnicodeError):
            try:
                s.encode("utf-8")
            except UnicodeEncodeError as e:
                raise ValueError(f"cannot encode: {e.reason} at position {e.start} ({s[e.start]!r})") from None
            raise

    def _encode(self, s: str) -> list[int]:
        """sentencepiece's encoding of `s`, computed on pieces of ~1 KB cut where no token can span."""
        n = len(s)
        if self._cut_re is None or n <= 2 * _ENCODE_PIECE:
            return self._sp.encode(s)
        parts, start = [], 0
        while start + _ENCODE_PIECE < n:
            m = self._cut_re.search(s, start + _ENCODE_PIECE)
            if m is None:
                break
            parts.append(s[start : m.start()])
            start = m.start()
        parts.append(s[start:])
        if len(parts) == 1:
            return self._sp.encode(s)
        return list(itertools.chain.from_iterable(self._sp.encode(parts, num_threads=1)))

    def decode(self, ids: Iterable[int]) -> str:
        if hasattr(ids, "tolist"):  # torch tensors, numpy arrays
            ids = ids.tolist()
        elif not isinstance(ids, list):
            ids = list(ids)
        if not set(map(type, ids)) <= {int}:  # numpy scalars, bools, floats, strings: int() them
            try:
                ids = [int(i) for i in ids]
            except (TypeError, ValueError) as e:
                raise ValueError(f"token ids must be integers ({e})") from None
        try:
            return self._sp.decode(ids)  # checks the range itself (IndexError; TypeError past C++ int)
        except (IndexError, TypeError):
            bad = next((i for i in ids if not 0 <= i < self._size), None)
            if bad is None:
                raise
            raise ValueError(f"token id {bad} is outside the vocabulary [0, {self._size})") from None

    def id_to_piece(self, i: int) -> str:
        """The piece of id `i` as sentencepiece writes it ("▁" for a space, "<0x0A>" for a byte)."""
        i = int(i)
        if not 0 <= i < self._size:
            raise ValueError(f"token id {i} is outside the vocabulary [0, {self._size})")
        return self._sp.id_to_piece(i)

    def special_token_id(self, token: str) -> int:
        """The id of a special token (a user-defined symbol such as "<|endoftext|>")."""
        if token not in self.special_tokens:
            raise ValueError(f"{token!r} is not a special token of this tokenizer (it has: {list(self.special_tokens)})")
        return self._sp.piece_to_id(token)

    # -- serialization -------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {
            "type": self.kind,
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "meta_symbol_as_bytes": self.meta_symbol_as_bytes,
            "model": base64.b64encode(self.model_proto).decode("ascii"),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "SentencePieceTokenizer":
        if not isinstance(d, dict) or d.get("type") != cls.kind:
            got = d.get("type") if isinstance(d, dict) else type(d).__name__
            raise ValueError(f"not a SentencePieceTokenizer dict (type {got!r})")
        model = d.get("model")
        if not isinstance(model, str):
            raise ValueError("SentencePieceTokenizer dict has no 'model' (the base64 model proto)")
        try:
            proto = base64.b64decode(model.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError) as e:
            raise ValueError(f"SentencePieceTokenizer 'model' is not valid base64 ({e})") from None
        tok = cls(proto, meta_symbol_as_bytes=bool(d.get("meta_symbol_as_bytes", False)))
        for key, have in (("model_type", tok.model_type), ("vocab_size", tok.vocab_size)):
            if key in d and d[key] != have:
                raise ValueError(f"SentencePieceTokenizer dict says {key} {d[key]!r} but its model has {have!r}")
        return tok

    def save(self, path: str) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str) -> "SentencePieceTokenizer":
        return cls.from_dict(read_json(path))

    def __getstate__(self) -> dict:  # picklable (DataLoader workers, multiprocessing)
        return self.to_dict()

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(type(self).from_dict(state).__dict__)

    def __eq__(self, other) -> bool:
        return (
            isinstance(other, SentencePieceTokenizer)
            and self.model_proto == other.model_proto
            and self.meta_symbol_as_bytes == other.meta_symbol_as_bytes
        )

    __hash__ = None

    def __repr__(self) -> str:
        return f"SentencePieceTokenizer(model_type={self.model_type!r}, vocab_size={self.vocab_size})"
