"""Prepare a data set: python -m pygpt.prepare shakespeare_char | text --input PATH.

    python -m pygpt.prepare shakespeare_char [--input FILE] [--out DIR]
    python -m pygpt.prepare text --input FILE_OR_FOLDER [--out DIR]
        [--tokenizer char|bpe|sentencepiece|sentencepiece-unigram] [--vocab-size N]
        [--tokenizer-from DATA_OR_RUN_OR_JSON] [--doc-blank-lines N] [--normalize ascii]

Writes train.bin / val.bin (uint16 tokens, uint32 when the vocabulary needs it; a 90/10 split) and
meta.json (the tokenizer, token and byte counts). `text` streams a file or a folder of .txt files
document by document with a progress bar; a subword tokenizer (bpe, sentencepiece) is trained on
the first --train-chars characters and <|endoftext|> separates documents. --tokenizer-from reuses
the tokenizer of another data set or run, so pretraining and finetuning data share one tokenizer;
with a char tokenizer, --normalize ascii maps curly quotes and dashes to ASCII and drops the
characters the vocabulary lacks (counted in meta.json).
"""

from __future__ import annotations

import os
import sys

from . import data
from ._cli import Parser, run


def main(argv=None) -> int:
    p = Parser(prog="python -m pygpt.prepare", description=__doc__.split("\n")[0])
    p.add_argument("dataset", choices=["shakespeare_char", "text"], help="what to prepare")
    p.add_argument("--input", help="text file (or, for 'text', a folder of .txt files); "
                   "for shakespeare_char the default is a verified download")
    p.add_argument("--out", help="output folder (default: $PYGPT_DATA_DIR/<name>, PYGPT_DATA_DIR defaults to ./data)")
    p.add_argument("--force", action="store_true", help="overwrite files in --out that pygpt did not write")
    p.add_argument("--tokenizer", default=None, help=f"text: {' | '.join(data.TOKENIZERS)} (default char)")
    p.add_argument("--vocab-size", type=int, default=None, help="text: vocabulary size of a bpe/sentencepiece tokenizer")
    p.add_argument("--tokenizer-from", default=None,
                   help="text: reuse the tokenizer of a prepared data set, a run's out dir, a folder with GPT-2 "
                   "vocab.json + merges.txt, or a tokenizer JSON")
    p.add_argument("--train-chars", type=int, default=20_000_000,
                   help="text: characters a subword tokenizer trains on (a prefix of the corpus; default 20M)")
    p.add_argument("--doc-blank-lines", type=int, default=None,
                   help="text: a run of this many blank lines also ends a document (Gutenberg: 4)")
    p.add_argument("--normalize", choices=["ascii"], default=None,
                   help="text, char tokenizer: map typographic characters to ASCII, drop what the vocabulary lacks")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    args = p.parse_args(argv)

    if args.dataset == "shakespeare_char":
        for flag in ("tokenizer", "vocab_size", "tokenizer_from", "doc_blank_lines", "normalize"):
            if getattr(args, flag) is not None:
                raise ValueError(f"--{flag.replace('_', '-')} is for 'text' data sets; shakespeare_char is "
                                 "characters (use: text --input input.txt --tokenizer ...)")
        meta = data.prepare_shakespeare_char(args.out, args.input, force=args.force)
        out = args.out or os.path.join(data.data_root(), "shakespeare_char")
    else:
        if not args.input:
            raise ValueError("'text' needs --input FILE_OR_FOLDER")
        for name in ("vocab_size", "train_chars", "doc_blank_lines"):
            v = getattr(args, name)
            if v is not None and v < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
        if args.tokenizer_from and (args.tokenizer or args.vocab_size):
            raise ValueError("--tokenizer-from reuses a tokenizer: do not also pass --tokenizer / --vocab-size")
        data.text_files(args.input)  # a missing input is reported before anything else
        name = os.path.basename(os.path.normpath(args.input)).rsplit(".", 1)[0] or "text"
        out = args.out or os.path.join(data.data_root(), name)
        data._check_writable(out, args.force)  # fail before spending minutes on a tokenizer
        if args.tokenizer_from:
            tok = data.tokenizer_of(args.tokenizer_from)
        else:
            tok = data.build_tokenizer(args.tokenizer or "char", args.input, args.vocab_size, args.doc_blank_lines,
                                       args.train_chars, args.normalize)
        if args.normalize and tok.kind != "char":
            raise ValueError(f"--normalize applies to char tokenizers; this one is {tok.kind}")
        source = {"name": "text", "path": os.path.abspath(args.input), "files": len(data.text_files(args.input)),
                  "tokenizer_from": os.path.abspath(args.tokenizer_from) if args.tokenizer_from else None}
        meta = data.prepare_corpus(args.input, out, tok, source, args.doc_blank_lines, args.normalize,
                                   force=args.force, progress=args.progress)
    print(
        f"wrote {out}: vocab {meta['vocab_size']}, train {meta['train_tokens']:,} tokens, "
        f"val {meta['val_tokens']:,} tokens ({meta['dtype']}), {meta['bytes'] / max(1, meta['train_tokens'] + meta['val_tokens']):.2f} bytes/token"
    )
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
