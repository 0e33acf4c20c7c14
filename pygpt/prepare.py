"""Prepare a data set: python -m pygpt.prepare shakespeare_char | text --input PATH.

    python -m pygpt.prepare shakespeare_char [--input FILE] [--out DIR]
    python -m pygpt.prepare text --input FILE_OR_FOLDER [--out DIR]

Writes train.bin / val.bin (uint16 tokens, 90/10 split) and meta.json (the tokenizer and counts).
"""

from __future__ import annotations

import argparse
import os
import sys

from . import data
from ._cli import run


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m pygpt.prepare", description=__doc__.split("\n")[0])
    p.add_argument("dataset", choices=["shakespeare_char", "text"], help="what to prepare")
    p.add_argument("--input", help="text file (or, for 'text', a folder of .txt files); "
                   "for shakespeare_char the default is a verified download")
    p.add_argument("--out", help="output folder (default: $PYGPT_DATA_DIR/<name>, PYGPT_DATA_DIR defaults to ./data)")
    p.add_argument("--force", action="store_true", help="overwrite files in --out that pygpt did not write")
    args = p.parse_args(argv)

    if args.dataset == "shakespeare_char":
        meta = data.prepare_shakespeare_char(args.out, args.input, force=args.force)
        out = args.out or os.path.join(data.data_root(), "shakespeare_char")
    else:
        if not args.input:
            raise ValueError("'text' needs --input FILE_OR_FOLDER")
        text, files = data.read_text(args.input)
        name = os.path.basename(os.path.normpath(args.input)).rsplit(".", 1)[0] or "text"
        out = args.out or os.path.join(data.data_root(), name)
        source = {"name": "text", "path": os.path.abspath(args.input), "files": len(files)}
        meta = data.prepare(text, out, source, force=args.force)
    print(
        f"wrote {out}: vocab {meta['vocab_size']}, train {meta['train_tokens']:,} tokens, "
        f"val {meta['val_tokens']:,} tokens ({meta['dtype']})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
