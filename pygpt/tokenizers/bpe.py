"""BPETokenizer: byte-level byte-pair encoding, GPT-2 style, written here in plain Python.

Why bytes
---------
The lecture's CharTokenizer has one token per character of its training text and cannot encode a
character it has never seen. Byte-level BPE starts one level lower: any Python string becomes a
sequence of UTF-8 bytes, and the 256 possible byte values are the first 256 tokens. Nothing is
ever out of vocabulary. Training then *compresses*: it repeatedly finds the most frequent adjacent
pair of tokens in the training text and mints a new token for it ("t" + "h" -> "th", then
"th" + "e" -> "the", ...). Each new token is one *merge*, and the ordered list of merges is the
whole model: to encode, replay the merges; to decode, concatenate every token's bytes. (This is
the tokenizer of GPT-2 and of Karpathy's minbpe; the code here is its own.)

The regex pre-split
-------------------
Merges are never learned, nor applied, across the boundaries of a pre-split. GPT-2 first cuts the
text into chunks with a regular expression, so that "dog", "dog." and "dog!" do not each get their
own token and letters, digits, punctuation and whitespace stay apart::

    gpt2:  's|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+

A chunk is an English contraction suffix, a run of letters, of digits or of other symbols
(each with at most one leading space: " world" is one chunk), or a run of whitespace; the
``\\s+(?!\\S)`` branch leaves the last space of a whitespace run to the word that follows it, so
"a   b" splits as "a", "  ", " b". GPT-4's tokenizer (tiktoken's cl100k_base) uses::

    gpt4:  (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+

(case-insensitive contractions, one optional non-letter prefix to a letter run, numbers in groups
of at most three digits, newlines kept together). Both patterns match every character, so the
chunks always concatenate back to the text. They need the `regex` module (``\\p{L}`` classes).

Training (``BPETokenizer.train``)
---------------------------------
1. Split out the special tokens (they are never learned from), pre-split the rest with the
   pattern and count the distinct chunks: tiny Shakespeare's 1.1 MB is ~298k chunks but only
   ~15k distinct ones, so each distinct chunk is stored once with its frequency.
2. Count every adjacent pair over the distinct chunks (weighted by frequency) and remember, for
   each pair, the set of chunks that contain it.
3. Repeat until the vocabulary is full: take the most frequent pair (a, b), mint the token
   bytes(a) + bytes(b), and rewrite only the chunks that contain the pair; for those chunks,
   subtract the counts of their old pairs and add those of their new ones. The best pair is picked
   from a heap with lazy invalidation: the pairs whose count grows (those with the new token) get
   a fresh entry and all other counts only go down, so the newest entry of a pair is an upper
   bound; a popped entry whose count is stale is pushed back with the current count.

The naive algorithm (minbpe's ``BasicTokenizer``) recounts the whole text for every merge:
O(merges x text). Here one merge costs O(size of the chunks containing its pair + log heap),
which is large for the first merges and quickly becomes small. Tiny Shakespeare to 4096 tokens
takes under a second in pure Python on a 2-core development machine (0.6 s to 1024 tokens);
most of the time goes to the regex pre-split and the first pair count.

Tie-breaking: among pairs with the same count, the smallest pair (key(a), key(b)) wins, where a
merged token's key is its id (its creation order) and a byte's key is its position in GPT-2's
byte-to-unicode table (the printable bytes "!".."~", "¡".."¬", "®".."ÿ" in order, then the
other 68 bytes in order). This is exactly Hugging Face ``tokenizers``' rule (its ``BpeTrainer``
pops the max count, then the smallest pair of ids, and its ids for a byte-level alphabet are those
characters sorted by code point, merged tokens numbered in creation order), so on the same text
both trainers learn the same merges. If a merge produces bytes that are already a token (e.g.
"a" + "bc" after "ab" + "c"), the existing token is reused, as Hugging Face does; ``vocab_size``
counts distinct tokens, so such a tokenizer has a few more merges than ``vocab_size - 256 -
len(special_tokens)``.

Encoding
--------
Special tokens are split out first by exact string match (every registered special token is
recognised anywhere in the text, as tiktoken's ``allowed_special="all"``; the longest one wins
where two overlap); the rest is pre-split with the pattern and every chunk is encoded on its own
bytes: repeatedly merge the adjacent pair with the lowest merge rank (leftmost first on ties),
until no adjacent pair has a merge. This is tiktoken's and Hugging Face's rule, and gives the same
tokens as GPT-2's ``bpe()`` (which merges every occurrence of the lowest-rank pair at once) except
in a contrived case that needs a merge to re-create an existing token. It runs in O(n log n) per
chunk (a linked list of symbols and a heap of candidate merges). Chunk encodings are cached (an
LRU cache of 64k chunks), which is what makes encoding a large text fast (~3 MB/s on tiny
Shakespeare): most chunks are common words.

Exact round trip
----------------
``decode(encode(s)) == s`` for EVERY Python str: emoji, CJK, combining marks, "\\x00", "\\r\\n",
whitespace runs, and even lone surrogates such as "\\ud800" (which are not valid Unicode text
and which ``str.encode("utf-8")`` refuses). Strings become bytes with
``s.encode("utf-8", "surrogatepass")`` and come back with the matching "surrogatepass" decode.
For an *arbitrary* id sequence (a model's sample, or ids cut in the middle of a character) the
concatenated bytes need not be valid UTF-8: decode then puts U+FFFD for each invalid byte
sequence instead of raising. Ids outside the vocabulary raise ValueError.

Stored format (``to_dict``, what meta.json and checkpoints hold)
----------------------------------------------------------------
``{"type": "bpe", "pattern": "gpt2", "merges": [[a, b], ...], "special_tokens": {"<|endoftext|>":
4095}, "vocab_size": 4096}``: the merges in rank order as pairs of token ids (no strings), plus,
only when they differ from the defaults, ``"byte_ids"`` (the id of each byte value 0..255;
default: byte b has id b) and ``"merge_ids"`` (the id each merge produces). By default the ids
follow the rule "each merge whose bytes are new gets the next id after the largest byte or merge
id so far, skipping the special tokens' ids; a merge whose bytes already exist reuses that
token's id", which holds for tokenizers trained here, for GPT-2's own files and for those that
Hugging Face trains, so 4096 tokens store as ~4k small pairs (47 KB of JSON; 93 KB as ``save``
indents it), and GPT-2's 50,257 as 50k pairs plus 256 byte ids.

GPT-2 files (``from_gpt2_files``)
---------------------------------
GPT-2's ``vocab.json`` maps token *strings* to ids, where each byte is shown as a printable
character (``bytes_to_unicode``: the 188 printable bytes stand for themselves, the other 68 get
the characters U+0100 onwards, so a space is "Ġ" and a newline "Ċ"); ``merges.txt`` lists the
merges in rank order, one "left right" pair of such strings per line. Loading keeps the ids of
vocab.json, so a tokenizer loaded from GPT-2's files uses GPT-2's ids, and one loaded from files
saved by Hugging Face ``tokenizers`` encodes as that tokenizer does (tests/test_bpe.py checks it
on the whole of tiny Shakespeare). ``save_gpt2_files`` writes the same two files.
"""

from __future__ import annotations

import codecs
import functools
import heapq
import json
import os
import sys
import time
import warnings
from collections import Counter
from typing import Iterable

import regex

from ._io import read_json, write_json

GPT2_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# tiktoken's cl100k_base pat_str (GPT-3.5/GPT-4), as published in tiktoken_ext/openai_public.py.
GPT4_SPLIT_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
SPLIT_PATTERNS = {"gpt2": GPT2_SPLIT_PATTERN, "gpt4": GPT4_SPLIT_PATTERN}

# Lone surrogates are encoded/decoded with "surrogatepass"; arbitrary id sequences may still give
# invalid UTF-8, which then becomes U+FFFD rather than an exception.
_ERRORS = "pygpt.bpe.surrogatepass_or_replace"


def _surrogatepass_or_replace(exc):
    if isinstance(exc, UnicodeDecodeError):
        try:
            return codecs.lookup_error("surrogatepass")(exc)
        except UnicodeDecodeError:
            return codecs.lookup_error("replace")(exc)
    raise exc


codecs.register_error(_ERRORS, _surrogatepass_or_replace)


def _to_bytes(s: str) -> bytes:
    return s.encode("utf-8", "surrogatepass")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table byte -> printable character, used by vocab.json / merges.txt.

    The 188 bytes that are printable Latin-1 characters ("!".."~", "¡".."¬", "®".."ÿ") map to
    themselves; the other 68 (controls, space, DEL, NBSP, soft hyphen...) map in byte order to
    chr(256), chr(257), ...: byte 0 -> "Ā", space (32) -> "Ġ", newline (10) -> "Ċ".
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    n = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + n)
            n += 1
    return table


_BYTE_TO_UNICODE = bytes_to_unicode()
# Tie-break key of each byte during training: its rank among GPT-2's byte characters sorted by
# code point (what Hugging Face's trainer uses as the ids of a byte-level alphabet).
_BYTE_KEY = [0] * 256
for _k, _b in enumerate(sorted(range(256), key=lambda b: ord(_BYTE_TO_UNICODE[b]))):
    _BYTE_KEY[_b] = _k
del _k, _b

_CACHE_SIZE = 1 << 16


def _compile_pattern(name: str):
    if name not in SPLIT_PATTERNS:
        raise ValueError(f"unknown pre-split pattern {name!r}; known: {', '.join(SPLIT_PATTERNS)}")
    return regex.compile(SPLIT_PATTERNS[name])


def _special_splitter(specials: Iterable[str]):
    """A compiled regex with one capture group matching any special token (longest first), or None."""
    specials = sorted(specials, key=lambda s: (-len(s), s))
    if not specials:
        return None
    return regex.compile("(" + "|".join(regex.escape(s) for s in specials) + ")")


def _check_specials(specials) -> list[str]:
    if isinstance(specials, str):
        raise TypeError(f"special_tokens must be a list of strings, not the string {specials!r}")
    specials = list(specials)
    for s in specials:
        if not isinstance(s, str) or not s:
            raise ValueError(f"special tokens must be non-empty strings, got {s!r}")
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"special token {s!r} is not valid Unicode (it has a lone surrogate)") from None
    if len(set(specials)) != len(specials):
        dup = sorted({s for s in specials if specials.count(s) > 1})
        raise ValueError(f"duplicate special tokens: {dup}")
    return specials


def _implicit_merge_ids(byte_ids, merges, special_ids) -> list[int]:
    """The ids the default numbering rule gives the merges (see the module docstring)."""
    id_bytes = {i: bytes([b]) for b, i in enumerate(byte_ids)}
    bytes_id = {v: k for k, v in id_bytes.items()}
    next_id = max(byte_ids) + 1
    out = []
    for a, b in merges:
        if a not in id_bytes or b not in id_bytes:
            bad = a if a not in id_bytes else b
            raise ValueError(f"merge {len(out)} ({a}, {b}) uses token id {bad}, which no byte or earlier merge defines")
        nb = id_bytes[a] + id_bytes[b]
        n = bytes_id.get(nb)
        if n is None:
            while next_id in special_ids:
                next_id += 1
            n = next_id
            next_id += 1
            id_bytes[n] = nb
            bytes_id[nb] = n
        out.append(n)
    return out


class BPETokenizer:
    """Byte-level BPE (GPT-2 style). Build with ``train``, ``from_gpt2_files`` or ``from_dict``.

    ``BPETokenizer(merges, pattern, special_tokens, byte_ids, merge_ids)``: ``merges`` are
    (id_a, id_b) pairs in rank order; ``special_tokens`` maps each special string to its id (a
    list gives them the ids after the last regular token); ``byte_ids`` is the id of each byte
    value (default: byte b is id b); ``merge_ids`` is the id each merge produces (default: the
    numbering rule of the module docstring).
    """

    kind = "bpe"

    def __init__(
        self,
        merges: Iterable = (),
        pattern: str = "gpt2",
        special_tokens=("<|endoftext|>",),
        byte_ids: Iterable[int] | None = None,
        merge_ids: Iterable[int] | None = None,
    ):
        self.pattern = pattern
        self._pat = _compile_pattern(pattern)
        merges = [(int(a), int(b)) for a, b in merges]
        byte_ids = list(range(256)) if byte_ids is None else [int(i) for i in byte_ids]
        if len(byte_ids) != 256 or len(set(byte_ids)) != 256 or min(byte_ids) < 0:
            raise ValueError("byte_ids must be 256 distinct non-negative ids, one per byte value")

        if isinstance(special_tokens, dict):
            specials = dict(zip(_check_specials(special_tokens), (int(i) for i in special_tokens.values())))
        else:
            specials = None
            names = _check_specials(special_tokens)
        if specials is not None:
            special_ids = set(specials.values())
            if len(special_ids) != len(specials):
                raise ValueError(f"two special tokens share an id: {specials}")
        else:
            special_ids = set()

        if merge_ids is None:
            merge_ids = _implicit_merge_ids(byte_ids, merges, special_ids)
        else:
            merge_ids = [int(i) for i in merge_ids]
            if len(merge_ids) != len(merges):
                raise ValueError(f"{len(merges)} merges but {len(merge_ids)} merge_ids")

        # id -> bytes for the regular (non-special) tokens, checking every merge is well defined.
        id_bytes: dict[int, bytes] = {i: bytes([b]) for b, i in enumerate(byte_ids)}
        ranks: dict[tuple[int, int], tuple[int, int]] = {}
        for r, ((a, b), n) in enumerate(zip(merges, merge_ids)):
            if a not in id_bytes or b not in id_bytes:
                bad = a if a not in id_bytes else b
                raise ValueError(f"merge {r} ({a}, {b}) uses token id {bad}, which no byte or earlier merge defines")
            if (a, b) in ranks:
                raise ValueError(f"merge {r} ({a}, {b}) repeats merge {ranks[(a, b)][0]}")
            nb = id_bytes[a] + id_bytes[b]
            if n < 0:
                raise ValueError(f"merge {r} ({a}, {b}) produces a negative id {n}")
            if id_bytes.setdefault(n, nb) != nb:
                raise ValueError(
                    f"merge {r} ({a}, {b}) produces id {n}, which already stands for other bytes {id_bytes[n]!r}"
                )
            ranks[(a, b)] = (r, n)

        if specials is None:  # a list: ids after the last regular token
            start = max(id_bytes) + 1
            specials = {s: start + k for k, s in enumerate(names)}
        for s, i in specials.items():
            if i < 0 or i in id_bytes:
                raise ValueError(f"special token {s!r} has id {i}, which is negative or already a regular token")

        self.merges = merges
        self.merge_ids = merge_ids
        self.byte_ids = byte_ids
        self.special_tokens = specials
        self._ranks = ranks
        self._regular = id_bytes
        self._id_to_bytes = {**id_bytes, **{i: _to_bytes(s) for s, i in specials.items()}}
        self._vocab_size = max(self._id_to_bytes) + 1
        self._identity_bytes = byte_ids == list(range(256))
        self._special_re = _special_splitter(specials)
        self._encode_chunk = functools.lru_cache(maxsize=_CACHE_SIZE)(self._bpe)

    # ------------------------------------------------------------------ basic interface

    @property
    def vocab_size(self) -> int:
        """One more than the largest id (the embedding table size); every id below it is a token
        for tokenizers trained here and for GPT-2 files without holes."""
        return self._vocab_size

    def token_bytes(self, i: int) -> bytes:
        """The bytes of token ``i`` (a special token's are its UTF-8 string)."""
        try:
            return self._id_to_bytes[int(i)]
        except KeyError:
            raise ValueError(f"token id {i} is not in the vocabulary (size {self.vocab_size})") from None

    def _bpe(self, chunk: str) -> tuple[int, ...]:
        """Encode one pre-split chunk: merge the adjacent pair of lowest rank, leftmost first on
        ties, until no adjacent pair has a merge. O(n log n): a linked list of symbols and a heap
        of (rank, position) candidates with lazy invalidation (as Hugging Face's BPE model); it
        gives the same tokens as the textbook loop "find the min-rank pair, merge it, repeat"
        (tests/test_bpe.py checks both) and beats it even on short chunks in Python."""
        data = _to_bytes(chunk)
        if self._identity_bytes:
            sym = list(data)
        else:
            bid = self.byte_ids
            sym = [bid[x] for x in data]
        n = len(sym)
        if n < 2:
            return tuple(sym)
        ranks = self._ranks
        heap = []
        for i in range(n - 1):
            m = ranks.get((sym[i], sym[i + 1]))
            if m is not None:
                heap.append((m[0], i, m[1]))
        if not heap:
            return tuple(sym)
        heapq.heapify(heap)
        prev = list(range(-1, n - 1))
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        alive = [True] * n
        pop, push = heapq.heappop, heapq.heappush
        while heap:
            r, i, new = pop(heap)
            if not alive[i]:
                continue
            j = nxt[i]
            if j < 0 or ranks.get((sym[i], sym[j])) != (r, new):
                continue  # stale: a neighbour was merged since this entry was pushed
            sym[i] = new
            alive[j] = False
            k = nxt[j]
            nxt[i] = k
            if k >= 0:
                prev[k] = i
                m = ranks.get((new, sym[k]))
                if m is not None:
                    push(heap, (m[0], i, m[1]))
            p = prev[i]
            if p >= 0:
                m = ranks.get((sym[p], new))
                if m is not None:
                    push(heap, (m[0], p, m[1]))
        return tuple([s for s, a in zip(sym, alive) if a])

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode ignoring special tokens (their text is encoded as ordinary text)."""
        out: list[int] = []
        enc = self._encode_chunk
        for chunk in self._pat.findall(text):
            out.extend(enc(chunk))
        return out

    def encode(self, text: str) -> list[int]:
        """str -> ids. Registered special tokens found anywhere in ``text`` become their single id."""
        if not isinstance(text, str):
            raise TypeError(f"encode() takes a str, got {type(text).__name__}")
        if self._special_re is None:
            return self.encode_ordinary(text)
        out: list[int] = []
        specials = self.special_tokens
        for k, part in enumerate(self._special_re.split(text)):
            if k % 2:
                out.append(specials[part])
            elif part:
                out.extend(self.encode_ordinary(part))
        return out

    def decode(self, ids: Iterable[int]) -> str:
        """ids -> str. Exact inverse of encode (lone surrogates included); for arbitrary id
        sequences whose bytes are not valid UTF-8, each invalid sequence becomes U+FFFD.
        An id outside the vocabulary raises ValueError."""
        if hasattr(ids, "tolist"):  # torch tensors, numpy arrays
            ids = ids.tolist()
        table = self._id_to_bytes
        try:
            data = b"".join([table[i] for i in ids])
        except (KeyError, TypeError):
            parts = []
            for i in ids:
                try:
                    j = int(i)
                except (TypeError, ValueError):
                    raise ValueError(f"token id {i!r} is not an integer") from None
                if j not in table:
                    raise ValueError(f"token id {j} is not in the vocabulary (size {self.vocab_size})") from None
                parts.append(table[j])
            data = b"".join(parts)
        return data.decode("utf-8", _ERRORS)

    # ------------------------------------------------------------------ training

    @classmethod
    def train(
        cls,
        text,
        vocab_size: int,
        pattern: str = "gpt2",
        special_tokens=("<|endoftext|>",),
        progress: bool = False,
    ) -> "BPETokenizer":
        """Learn ``vocab_size - 256 - len(special_tokens)`` new tokens from ``text`` (a str or an
        iterable of str); ids: bytes 0..255, merged tokens 256.. in creation order, then the
        special tokens. Occurrences of the special tokens in the text are cut out first and never
        learned from. Stops early, with a warning, if the text has no pairs left to merge."""
        specials = _check_specials(special_tokens)
        vocab_size = int(vocab_size)
        base = 256 + len(specials)
        if vocab_size < base:
            raise ValueError(
                f"vocab_size {vocab_size} is smaller than the base alphabet of {base} tokens "
                f"(256 byte tokens + {len(specials)} special tokens)"
            )
        pat = _compile_pattern(pattern)
        splitter = _special_splitter(specials)
        texts = [text] if isinstance(text, str) else text
        t0 = time.perf_counter()

        chunk_counts: Counter = Counter()
        for t in texts:
            if not isinstance(t, str):
                raise TypeError(f"train() takes a str or an iterable of str, got an item of type {type(t).__name__}")
            parts = splitter.split(t)[::2] if splitter is not None else [t]
            for part in parts:
                chunk_counts.update(pat.findall(part))
        if not chunk_counts:
            raise ValueError("cannot train a BPE tokenizer on empty text")

        words = [list(_to_bytes(c)) for c in chunk_counts]
        freqs = list(chunk_counts.values())
        del chunk_counts

        # pair -> weighted count, pair -> ids of the chunks that (may) contain it
        counts: dict[tuple[int, int], int] = {}
        where: dict[tuple[int, int], set] = {}
        for i, (w, f) in enumerate(zip(words, freqs)):
            for p in zip(w, w[1:]):
                counts[p] = counts.get(p, 0) + f
                s = where.get(p)
                if s is None:
                    where[p] = {i}
                else:
                    s.add(i)

        key = list(_BYTE_KEY)  # tie-break key per token id (bytes: GPT-2 char order; merges: their id)
        heap = [(-c, key[a], key[b], a, b) for (a, b), c in counts.items()]
        heapq.heapify(heap)

        id_bytes = [bytes([b]) for b in range(256)]
        bytes_id = {v: i for i, v in enumerate(id_bytes)}
        merges: list[tuple[int, int]] = []
        merge_ids: list[int] = []
        target = vocab_size - len(specials)
        last_report = t0
        while len(id_bytes) < target:
            if not heap:
                warnings.warn(
                    f"BPE training ran out of pairs to merge at {len(id_bytes) + len(specials)} tokens "
                    f"(asked for {vocab_size}): the text is too small",
                    stacklevel=2,
                )
                break
            negc, ka, kb, a, b = heapq.heappop(heap)
            c = counts.get((a, b), 0)
            if c != -negc:
                if c > 0:
                    heapq.heappush(heap, (-c, ka, kb, a, b))
                continue
            nb = id_bytes[a] + id_bytes[b]
            n = bytes_id.get(nb)
            if n is None:
                n = len(id_bytes)
                id_bytes.append(nb)
                bytes_id[nb] = n
                key.append(n)
            merges.append((a, b))
            merge_ids.append(n)

            touched = set()
            for i in where.pop((a, b)):
                w = words[i]
                L = len(w)
                nw = []
                j = 0
                while j < L:
                    x = w[j]
                    if x == a and j + 1 < L and w[j + 1] == b:
                        nw.append(n)
                        j += 2
                    else:
                        nw.append(x)
                        j += 1
                if len(nw) == L:
                    continue  # stale entry: this chunk no longer has the pair
                f = freqs[i]
                for p in zip(w, w[1:]):
                    counts[p] -= f
                for p in zip(nw, nw[1:]):
                    counts[p] = counts.get(p, 0) + f
                    if p[0] == n or p[1] == n:
                        where.setdefault(p, set()).add(i)
                        touched.add(p)
                words[i] = nw
            counts.pop((a, b), None)
            for p in touched:
                c = counts[p]
                if c > 0:
                    heapq.heappush(heap, (-c, key[p[0]], key[p[1]], p[0], p[1]))

            if progress:
                now = time.perf_counter()
                if now - last_report > 1.0 or len(id_bytes) == target:
                    last_report = now
                    print(
                        f"bpe: {len(id_bytes) + len(specials)}/{vocab_size} tokens, merge {len(merges)} "
                        f"{nb!r} (count {-negc}), {now - t0:.1f}s",
                        file=sys.stderr,
                    )

        start = len(id_bytes)
        return cls(
            merges,
            pattern=pattern,
            special_tokens={s: start + k for k, s in enumerate(specials)},
            merge_ids=merge_ids,
        )

    # ------------------------------------------------------------------ GPT-2 files

    @classmethod
    def from_gpt2_files(cls, vocab_json_path, merges_txt_path, special_tokens=None, pattern: str = "gpt2"):
        """Load GPT-2 style ``vocab.json`` (token string -> id) and ``merges.txt`` (one merge per
        line, rank = line order; a leading "#version" line is skipped), keeping vocab.json's ids.

        ``special_tokens=None`` makes every vocab.json entry that is neither a byte nor a merge
        result a special token (GPT-2: "<|endoftext|>" = 50256). A list names them instead: each
        keeps its vocab.json id if it has one, else gets the next free id; any other entry that is
        not a byte or a merge result is then an error."""
        vocab_json_path, merges_txt_path = os.fspath(vocab_json_path), os.fspath(merges_txt_path)
        for p in (vocab_json_path, merges_txt_path):
            if not os.path.isfile(p):
                raise FileNotFoundError(f"GPT-2 tokenizer file not found: {p}")
        try:
            vocab = read_json(vocab_json_path)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{vocab_json_path} is not valid JSON: {e}") from None
        if not isinstance(vocab, dict):
            raise ValueError(f"{vocab_json_path} must hold a JSON object (token -> id), got a {type(vocab).__name__}")
        for s, i in vocab.items():
            if not isinstance(i, int) or isinstance(i, bool) or i < 0:
                raise ValueError(f"{vocab_json_path}: token {s!r} has id {i!r}, not a non-negative integer")
        if len(set(vocab.values())) != len(vocab):
            raise ValueError(f"{vocab_json_path}: two tokens share an id")

        byte_ids = []
        for b in range(256):
            c = _BYTE_TO_UNICODE[b]
            if c not in vocab:
                raise ValueError(f"{vocab_json_path} has no entry for byte {b} (GPT-2 character {c!r})")
            byte_ids.append(vocab[c])

        merges, merge_ids = [], []
        with open(merges_txt_path, encoding="utf-8") as f:
            lines = f.read().split("\n")
        for lineno, line in enumerate(lines, 1):
            line = line.rstrip("\r")
            if (lineno == 1 and line.startswith("#version")) or not line.strip():
                continue
            parts = line.split(" ")
            if len(parts) != 2 or not parts[0] or not parts[1]:
                raise ValueError(
                    f"{merges_txt_path}:{lineno}: expected two tokens separated by one space, got {line!r}"
                )
            a, b = parts
            for t in (a, b, a + b):
                if t not in vocab:
                    raise ValueError(f"{merges_txt_path}:{lineno}: {line!r}: token {t!r} is not in {vocab_json_path}")
            merges.append((vocab[a], vocab[b]))
            merge_ids.append(vocab[a + b])

        regular = set(byte_ids) | set(merge_ids)
        leftover = {s: i for s, i in vocab.items() if i not in regular}
        if special_tokens is None:
            specials = dict(sorted(leftover.items(), key=lambda kv: kv[1]))
        else:
            names = _check_specials(special_tokens)
            unexplained = sorted(set(leftover) - set(names), key=leftover.get)
            if unexplained:
                shown = ", ".join(repr(s) for s in unexplained[:10]) + (" ..." if len(unexplained) > 10 else "")
                raise ValueError(
                    f"{vocab_json_path}: {len(unexplained)} entries are neither bytes, merge results nor "
                    f"special tokens: {shown}; list them in special_tokens (or pass special_tokens=None)"
                )
            next_id = max(vocab.values()) + 1
            specials = {}
            for s in names:
                if s in vocab:
                    if vocab[s] in regular:
                        raise ValueError(f"special token {s!r} is a regular token (id {vocab[s]}) of {vocab_json_path}")
                    specials[s] = vocab[s]
                else:
                    specials[s] = next_id
                    next_id += 1
        try:
            return cls(merges, pattern=pattern, special_tokens=specials, byte_ids=byte_ids, merge_ids=merge_ids)
        except ValueError as e:
            raise ValueError(f"{vocab_json_path} / {merges_txt_path}: {e}") from None

    def save_gpt2_files(self, vocab_json_path, merges_txt_path) -> None:
        """Write GPT-2 style vocab.json and merges.txt (what ``from_gpt2_files`` and Hugging Face
        ``tokenizers.models.BPE.from_file`` read). The pattern is not part of these files."""

        def s(i):
            return "".join(_BYTE_TO_UNICODE[x] for x in self._regular[i])

        vocab = {s(i): i for i in sorted(self._regular)}
        vocab.update(self.special_tokens)
        write_json(os.fspath(vocab_json_path), dict(sorted(vocab.items(), key=lambda kv: kv[1])))
        path = os.fspath(merges_txt_path)
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n")
            for a, b in self.merges:
                f.write(f"{s(a)} {s(b)}\n")
        os.replace(tmp, path)

    # ------------------------------------------------------------------ storage

    def to_dict(self) -> dict:
        d = {
            "type": self.kind,
            "pattern": self.pattern,
            "vocab_size": self.vocab_size,
            "merges": [[a, b] for a, b in self.merges],
            "special_tokens": dict(self.special_tokens),
        }
        if not self._identity_bytes:
            d["byte_ids"] = list(self.byte_ids)
        if _implicit_merge_ids(self.byte_ids, self.merges, set(self.special_tokens.values())) != self.merge_ids:
            d["merge_ids"] = list(self.merge_ids)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "BPETokenizer":
        if not isinstance(d, dict) or d.get("type") != cls.kind:
            raise ValueError(f"not a BPE tokenizer dict (type {d.get('type') if isinstance(d, dict) else d!r})")
        if "merges" not in d:
            raise ValueError("BPE tokenizer dict has no 'merges' (expected a list of [id_a, id_b] pairs)")
        tok = cls(
            d["merges"],
            pattern=d.get("pattern", "gpt2"),
            special_tokens=d.get("special_tokens", {}),
            byte_ids=d.get("byte_ids"),
            merge_ids=d.get("merge_ids"),
        )
        if "vocab_size" in d and int(d["vocab_size"]) != tok.vocab_size:
            raise ValueError(
                f"BPE tokenizer dict says vocab_size {d['vocab_size']} but its merges give {tok.vocab_size}"
            )
        return tok

    def save(self, path: str) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str) -> "BPETokenizer":
        return cls.from_dict(read_json(path))

    def __reduce__(self):  # pickle the compact form, not the caches
        return (type(self).from_dict, (self.to_dict(),))

    def __eq__(self, other) -> bool:
        return (
            isinstance(other, BPETokenizer)
            and self.pattern == other.pattern
            and self.byte_ids == other.byte_ids
            and self.merges == other.merges
            and self.merge_ids == other.merge_ids
            and self.special_tokens == other.special_tokens
        )

    __hash__ = None

    def __repr__(self) -> str:
        return (
            f"BPETokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, "
            f"pattern={self.pattern!r}, special_tokens={list(self.special_tokens)})"
        )
