"""Shared command-line plumbing: expected errors become one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
import sys

# What a user can cause: bad arguments, missing files, no network, a wrong checkpoint.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, ConnectionError, KeyError, NotADirectoryError)


def run(main, argv=None) -> int:
    try:
        return main(argv) or 0
    except USER_ERRORS as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {msg}", file=sys.stderr)
        return 2


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (`error: ...`, exit 2) instead of usage + error."""

    def error(self, message):
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)
