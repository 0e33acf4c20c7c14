"""Compare tokenizers on a text file: python -m pygpt.tokenize compare --input FILE.

    python -m pygpt.tokenize compare --input input.txt --vocab-size 4096
    python -m pygpt.tokenize compare --input big.txt --max-chars 5000000 --tokenizers bpe,sentencepiece-bpe \\
        --json results.json

Why: the lecture tokenizes tiny Shakespeare by character (65 tokens) and points at what practice
uses instead, subword tokenizers: Google's SentencePiece and OpenAI's byte-level BPE (GPT-2's
tiktoken vocabulary has 50,257 tokens and spells "hii there" in 3 tokens, not 9). The trade-off it
names is codebook size against sequence length: long sequences over a small vocabulary, or short
ones over a large vocabulary. Shorter sequences put more text into a context window of
block_size tokens and make an epoch fewer tokens; a bigger vocabulary costs embedding and lm_head
parameters, and each token is seen less often in training. This command puts numbers on that
trade for your corpus, for each tokenizer pygpt has:

    char                    CharTokenizer: one token per distinct character (--vocab-size ignored)
    bpe                     BPETokenizer: byte-level BPE, GPT-2 style, written in Python here
    sentencepiece-bpe       SentencePieceTokenizer, model_type="bpe" (Google's C++ library)
    sentencepiece-unigram   SentencePieceTokenizer, model_type="unigram"

Each is trained on the text (a prefix of --max-chars characters for big corpora) and measured on
the SAME text: vocabulary size, tokens, UTF-8 bytes per token and characters per token (how much
text a token carries: higher is shorter sequences), training time, encode and decode speed in MB/s
(10^6 UTF-8 bytes of text per second; best of up to --repeats runs, fewer when one run takes over
10 s; all runs are in the JSON, the first of a tokenizer with a cache - bpe's chunk cache - is its
cold run) and whether decode(encode(text)) == text for the whole text.

Caveats: the figures are in-sample (a subword tokenizer compresses the text it was trained on
better than unseen text); the speeds are single-threaded Python calls on this machine. A tokenizer
that cannot be imported is listed as "not available: <reason>"; one that fails to train (e.g.
--vocab-size too large for sentencepiece on a small text) is listed with its error, the others
still run, and the command then exits with that error (status 2).
"""

from __future__ import annotations

import argparse
import codecs
import datetime as _dt
import gc
import os
import platform
import sys
import time
import warnings

from ._cli import Parser, run

TOKENIZERS = ("char", "bpe", "sentencepiece-bpe", "sentencepiece-unigram")
SLOW_RUN_S = 10.0  # a tokenizer whose encode (or decode) takes longer is timed once
FORMAT = "pygpt-tokenize-compare-1"


# ----------------------------------------------------------------------------------------------
# input


def read_text(path: str, max_chars: int | None = None) -> tuple[str, bool]:
    """The UTF-8 text of `path` (its first `max_chars` characters), and whether it was cut.

    Newlines are kept as they are in the file ("\\r\\n" too). Missing file -> FileNotFoundError;
    a folder, an empty file, NUL bytes or invalid UTF-8 -> ValueError. With `max_chars` only the
    first 4 * max_chars bytes are read, so a prefix of a huge corpus is cheap.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"input {path} does not exist")
    if os.path.isdir(path):
        raise ValueError(f"input {path} is a folder; compare reads one text file")
    with open(path, "rb") as f:
        if max_chars is None:
            raw, at_end = f.read(), True
        else:
            raw = f.read(4 * max_chars)  # a character is at most 4 UTF-8 bytes
            at_end = len(raw) < 4 * max_chars or not f.read(1)
    try:
        text = codecs.getincrementaldecoder("utf-8")("strict").decode(raw, final=at_end)
    except UnicodeDecodeError as e:
        nul = raw.find(b"\x00", 0, e.start)
        if nul >= 0:
            raise ValueError(f"{path} looks binary (NUL byte at offset {nul}), not text") from None
        raise ValueError(f"{path} is not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}: {e.reason})") from None
    cut = not at_end
    if max_chars is not None and len(text) > max_chars:
        text, cut = text[:max_chars], True
    nul = text.find("\x00")
    if nul >= 0:
        raise ValueError(f"{path} looks binary (NUL character at position {nul}), not text")
    if not text:
        raise ValueError(f"input {path} is empty")
    return text, cut


# ----------------------------------------------------------------------------------------------
# the tokenizers


class NotAvailable(Exception):
    """A tokenizer whose code cannot be imported here (reported in its row, not an error)."""


def _train_char(text: str, vocab_size: int):
    from .tokenizers.char import CharTokenizer

    return CharTokenizer.from_text(text)


def _train_bpe(text: str, vocab_size: int):
    try:
        from .tokenizers.bpe import BPETokenizer

        train = BPETokenizer.train
    except (ImportError, AttributeError) as e:  # being written, or a missing dependency (regex)
        raise NotAvailable(f"{type(e).__name__}: {e}") from None
    return train(text, vocab_size)


def _train_spm(model_type: str):
    def train(text: str, vocab_size: int):
        try:
            import sentencepiece  # noqa: F401  (a dependency; an install may still lack it)

            from .tokenizers.spm import SentencePieceTokenizer
        except (ImportError, AttributeError) as e:
            raise NotAvailable(f"{type(e).__name__}: {e}") from None
        return SentencePieceTokenizer.train(text, vocab_size, model_type=model_type)

    return train


TRAINERS = {
    "char": _train_char,
    "bpe": _train_bpe,
    "sentencepiece-bpe": _train_spm("bpe"),
    "sentencepiece-unigram": _train_spm("unigram"),
}


def parse_tokenizers(spec: str) -> list[str]:
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise ValueError(f"--tokenizers needs at least one of {', '.join(TOKENIZERS)}")
    for n in names:
        if n not in TRAINERS:
            raise ValueError(f"unknown tokenizer {n!r} in --tokenizers; known: {', '.join(TOKENIZERS)}")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"--tokenizers names {', '.join(dup)} twice")
    return names


# ----------------------------------------------------------------------------------------------
# measuring


def _timed(fn, arg, repeats: int):
    """(result of the first call, seconds of every call): up to `repeats` calls, one if slow, gc off."""
    times, out = [], None
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        for k in range(repeats):
            t0 = time.perf_counter()
            r = fn(arg)
            times.append(time.perf_counter() - t0)
            if k == 0:
                out = r
            del r
            if times[-1] > SLOW_RUN_S:
                break
    finally:
        if enabled:
            gc.enable()
    return out, times


def _first_difference(a: str, b: str) -> int:
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def measure(name: str, text: str, vocab_size: int, repeats: int = 3) -> dict:
    """Train tokenizer `name` on `text` and measure it on the same text (one row of the table)."""
    row: dict = {"tokenizer": name}
    n_bytes = len(text.encode("utf-8"))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            t0 = time.perf_counter()
            tok = TRAINERS[name](text, vocab_size)
            row["train_s"] = time.perf_counter() - t0
    except NotAvailable as e:
        return {**row, "status": "not available", "reason": str(e)}
    except ValueError as e:
        return {**row, "status": "error", "error": str(e)}
    row["status"] = "ok"
    if caught:
        row["warnings"] = [str(w.message) for w in caught]
    row["repr"] = repr(tok)
    row["vocab_size"] = tok.vocab_size
    try:
        ids, enc_times = _timed(tok.encode, text, repeats)
        back, dec_times = _timed(tok.decode, ids, repeats)
    except ValueError as e:
        return {**row, "status": "error", "error": f"encode/decode failed: {e}"}
    row["tokens"] = len(ids)
    row["bytes_per_token"] = n_bytes / len(ids) if ids else None
    row["chars_per_token"] = len(text) / len(ids) if ids else None
    row["encode_runs_s"] = enc_times
    row["decode_runs_s"] = dec_times
    row["encode_mb_s"] = n_bytes / 1e6 / min(enc_times)
    row["decode_mb_s"] = n_bytes / 1e6 / min(dec_times)
    row["exact_round_trip"] = back == text
    if back != text:
        row["first_difference"] = _first_difference(back, text)
    return row


# ----------------------------------------------------------------------------------------------
# output


def _cell(s) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def table(rows: list[dict]) -> str:
    head = ["tokenizer", "vocab", "tokens", "bytes/token", "chars/token", "train s", "encode MB/s",
            "decode MB/s", "exact round trip"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r["status"] == "ok":
            cells = [
                r["tokenizer"],
                f"{r['vocab_size']:,}",
                f"{r['tokens']:,}",
                f"{r['bytes_per_token']:.2f}" if r["bytes_per_token"] else "-",
                f"{r['chars_per_token']:.2f}" if r["chars_per_token"] else "-",
                f"{r['train_s']:.2f}",
                f"{r['encode_mb_s']:.2f}",
                f"{r['decode_mb_s']:.2f}",
                "yes" if r["exact_round_trip"] else f"no (first difference at character {r['first_difference']:,})",
            ]
        else:
            why = r.get("reason") or r.get("error")
            cells = [r["tokenizer"], f"{r['status']}: {why}"] + [""] * (len(head) - 2)
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


def _machine() -> dict:
    info = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()}
    try:
        import sentencepiece

        info["sentencepiece"] = sentencepiece.__version__
    except ImportError:
        pass
    return info


# ----------------------------------------------------------------------------------------------


def build_parser() -> Parser:
    p = Parser(prog="python -m pygpt.tokenize", description=__doc__.split("\n")[0], allow_abbrev=False)
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    c = sub.add_parser("compare", help="train each tokenizer on a file and compare them", allow_abbrev=False,
                       description=__doc__.split("\n", 1)[1].strip("\n"),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("--input", required=True, help="a UTF-8 text file")
    c.add_argument("--vocab-size", type=int, default=4096,
                   help="vocabulary size of the subword tokenizers (default 4096; char ignores it)")
    c.add_argument("--tokenizers", default=",".join(TOKENIZERS),
                   help=f"comma-separated, from {','.join(TOKENIZERS)} (default: all)")
    c.add_argument("--max-chars", type=int, default=None,
                   help="train and measure on the first N characters only (for big corpora)")
    c.add_argument("--repeats", type=int, default=3, help="encode/decode timing runs, the best is reported (default 3)")
    c.add_argument("--json", default=None, help="also write the results here (default: none)")
    c.add_argument("--force", action="store_true", help="overwrite an existing --json file")
    return p


def compare(args) -> int:
    if args.vocab_size < 1:
        raise ValueError(f"--vocab-size must be >= 1, got {args.vocab_size}")
    if args.max_chars is not None and args.max_chars < 1:
        raise ValueError(f"--max-chars must be >= 1, got {args.max_chars}")
    if args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
    names = parse_tokenizers(args.tokenizers)
    if args.json:  # before minutes of training, not after
        if os.path.isdir(args.json):
            raise ValueError(f"--json {args.json} is a folder; give a file name")
        if os.path.exists(args.json) and not args.force:
            raise FileExistsError(f"--json {args.json} exists; pass --force to overwrite it")
        parent = os.path.dirname(os.path.abspath(args.json))
        if not os.path.isdir(parent):
            raise FileNotFoundError(f"--json {args.json}: folder {parent} does not exist")

    text, cut = read_text(args.input, args.max_chars)
    n_bytes = len(text.encode("utf-8"))
    what = f"the first {len(text):,} characters of {args.input}" if cut else args.input
    print(f"{what}: {len(text):,} characters, {n_bytes:,} UTF-8 bytes; --vocab-size {args.vocab_size}", flush=True)

    rows = []
    for name in names:
        if sys.stderr.isatty():  # progress for a person watching; stderr stays clean for errors
            print(f"  {name} ...", file=sys.stderr, flush=True)
        rows.append(measure(name, text, args.vocab_size, args.repeats))
    print()
    print(table(rows))
    print("\n(in-sample: each tokenizer is measured on the text it was trained on; MB = 10^6 UTF-8 bytes)")
    for r in rows:
        for w in r.get("warnings", ()):
            print(f"note: {r['tokenizer']}: {w}")

    if args.json:
        from .tokenizers._io import write_json

        result = {
            "format": FORMAT,
            "date": _dt.datetime.now().isoformat(timespec="seconds"),
            "input": os.path.abspath(args.input),
            "chars": len(text),
            "bytes": n_bytes,
            "max_chars": args.max_chars,
            "truncated": cut,
            "vocab_size": args.vocab_size,
            "repeats": args.repeats,
            "machine": _machine(),
            "rows": rows,
        }
        write_json(args.json, result)
        print(f"wrote {args.json}")

    failed = [r for r in rows if r["status"] == "error"]
    if failed:
        raise ValueError("; ".join(f"{r['tokenizer']} failed: {r['error']}" for r in failed))
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return compare(args)


if __name__ == "__main__":
    sys.exit(run(main))
