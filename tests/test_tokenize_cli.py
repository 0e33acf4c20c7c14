"""python -m pygpt.tokenize compare: the table, the JSON, and one-line errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pygpt import tokenize
from pygpt._cli import run

pytest.importorskip("sentencepiece")

SPM = "char,sentencepiece-bpe,sentencepiece-unigram"


@pytest.fixture(scope="module")
def small_file(tmp_path_factory, shakespeare_path):
    """The first 30 KB of tiny Shakespeare."""
    path = tmp_path_factory.mktemp("tok") / "small.txt"
    with open(shakespeare_path, encoding="utf-8", newline="") as f:
        path.write_text(f.read(30_000), encoding="utf-8", newline="")
    return path


def cli(argv, capsys):
    """Run the command in-process as `python -m pygpt.tokenize` would: (status, stdout, stderr)."""
    rc = run(tokenize.main, [str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def table_rows(out: str) -> dict:
    rows = {}
    for line in out.splitlines():
        if line.startswith("| ") and not line.startswith("| tokenizer"):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            rows[cells[0]] = cells
    return rows


def test_compare_table_and_json(small_file, tmp_path, capsys):
    out_json = tmp_path / "cmp.json"
    rc, out, err = cli(["compare", "--input", small_file, "--vocab-size", 400, "--tokenizers", SPM,
                        "--json", out_json, "--repeats", 1], capsys)
    assert rc == 0, err
    assert "30,000 characters, 30,000 UTF-8 bytes" in out
    assert "| tokenizer | vocab | tokens | bytes/token | chars/token | train s | encode MB/s | decode MB/s | exact round trip |" in out
    rows = table_rows(out)
    assert set(rows) == {"char", "sentencepiece-bpe", "sentencepiece-unigram"}
    assert rows["char"][1:4] == [str(len(set(small_file.read_text()))), "30,000", "1.00"]
    for name in ("sentencepiece-bpe", "sentencepiece-unigram"):
        assert rows[name][1] == "400"
        assert float(rows[name][3]) > 1.4  # bytes per token: 400 pieces, 256 of them bytes
        assert rows[name][-1] == "yes"
    assert f"wrote {out_json}" in out

    d = json.loads(out_json.read_text())
    assert d["format"] == "pygpt-tokenize-compare-1"
    assert d["chars"] == d["bytes"] == 30_000 and d["truncated"] is False and d["vocab_size"] == 400
    by = {r["tokenizer"]: r for r in d["rows"]}
    assert [r["tokenizer"] for r in d["rows"]] == SPM.split(",")
    for r in by.values():
        assert r["status"] == "ok" and r["exact_round_trip"] is True
        assert r["tokens"] * r["bytes_per_token"] == pytest.approx(30_000)
        assert r["encode_mb_s"] > 0 and r["decode_mb_s"] > 0 and r["train_s"] >= 0
        assert len(r["encode_runs_s"]) == 1
    assert by["char"]["tokens"] == 30_000
    assert by["sentencepiece-bpe"]["tokens"] < 30_000 / 1.4


def test_json_not_overwritten_without_force(small_file, tmp_path, capsys):
    out_json = tmp_path / "exists.json"
    out_json.write_text("keep me")
    argv = ["compare", "--input", small_file, "--vocab-size", 400, "--tokenizers", "char", "--json", out_json]
    rc, out, err = cli(argv, capsys)
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and "--force" in err
    assert out_json.read_text() == "keep me"
    rc, out, err = cli(argv + ["--force", "--repeats", 1], capsys)
    assert rc == 0, err
    assert json.loads(out_json.read_text())["rows"][0]["tokenizer"] == "char"


def test_max_chars(small_file, tmp_path, capsys):
    out_json = tmp_path / "prefix.json"
    rc, out, err = cli(["compare", "--input", small_file, "--tokenizers", "char,sentencepiece-bpe", "--vocab-size", 350,
                        "--max-chars", 10_000, "--repeats", 1, "--json", out_json], capsys)
    assert rc == 0, err
    assert "the first 10,000 characters of" in out
    d = json.loads(out_json.read_text())
    assert d["chars"] == 10_000 and d["truncated"] is True and d["max_chars"] == 10_000
    assert d["rows"][0]["tokens"] == 10_000


def test_non_ascii_and_crlf(tmp_path, capsys):
    path = tmp_path / "mixed.txt"
    text = ("Grüße aus Köln, naïve café.\r\n  Indented ▁ line with \U0001F600 and <|endoftext|>.\r\n\r\n" * 150)
    path.write_bytes(text.encode("utf-8"))
    rc, out, err = cli(["compare", "--input", path, "--vocab-size", 330, "--tokenizers", "char,sentencepiece-bpe",
                        "--repeats", 1], capsys)
    assert rc == 0, err
    assert f"{len(text):,} characters, {len(text.encode()):,} UTF-8 bytes" in out
    assert all(r[-1] == "yes" for r in table_rows(out).values())


def test_bpe_row(small_file, tmp_path, capsys):
    pytest.importorskip("pygpt.tokenizers.bpe", reason="pygpt/tokenizers/bpe.py is not there (yet)")
    out_json = tmp_path / "bpe.json"
    rc, out, err = cli(["compare", "--input", small_file, "--vocab-size", 400, "--tokenizers", "bpe",
                        "--repeats", 1, "--json", out_json], capsys)
    assert rc == 0, err
    row = json.loads(out_json.read_text())["rows"][0]
    assert row["status"] == "ok", row
    assert row["vocab_size"] == 400 and row["exact_round_trip"] is True
    assert row["tokens"] < 30_000 / 1.4
    assert table_rows(out)["bpe"][-1] == "yes"


def test_bpe_not_available(small_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "pygpt.tokenizers.bpe", None)  # import now raises ImportError
    out_json = tmp_path / "na.json"
    rc, out, err = cli(["compare", "--input", small_file, "--vocab-size", 400, "--tokenizers", "bpe,char",
                        "--repeats", 1, "--json", out_json], capsys)
    assert rc == 0, err
    rows = table_rows(out)
    assert rows["bpe"][1].startswith("not available: ") and "Error" in rows["bpe"][1]
    assert rows["char"][-1] == "yes"
    row = json.loads(out_json.read_text())["rows"][0]
    assert row["status"] == "not available" and "pygpt.tokenizers.bpe" in row["reason"]


def test_training_failure_keeps_other_rows(small_file, capsys):
    rc, out, err = cli(["compare", "--input", small_file, "--vocab-size", 20_000, "--tokenizers", SPM,
                        "--repeats", 1], capsys)
    assert rc == 2
    rows = table_rows(out)
    assert rows["char"][-1] == "yes"
    assert rows["sentencepiece-unigram"][1].startswith("error: vocab_size 20000 is too large")
    assert err.count("\n") == 1 and err.startswith("error: ") and "sentencepiece-unigram failed" in err


def _bad_inputs(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    nul = tmp_path / "nul.bin"
    nul.write_bytes(b"some text\x00\x01\x02 more")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\u00e9 cr\u00e8me".encode("latin-1"))
    elf = tmp_path / "prog"
    elf.write_bytes(b"\x7fELF\x02\x01\x01" + bytes(range(256)))
    return {
        "missing": (tmp_path / "nope.txt", "does not exist"),
        "empty": (empty, "empty"),
        "nul": (nul, "binary"),
        "latin1": (latin1, "not UTF-8"),
        "elf": (elf, "binary"),
        "folder": (tmp_path, "folder"),
    }


@pytest.mark.parametrize("case", ["missing", "empty", "nul", "latin1", "elf", "folder"])
def test_bad_input_one_line_error(case, tmp_path, capsys):
    path, what = _bad_inputs(tmp_path)[case]
    rc, out, err = cli(["compare", "--input", path, "--tokenizers", "char"], capsys)
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert what in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "extra, what",
    [
        (["--tokenizers", "char,wordpiece"], "unknown tokenizer 'wordpiece'"),
        (["--tokenizers", "char,char"], "twice"),
        (["--tokenizers", ","], "at least one"),
        (["--vocab-size", "0"], "--vocab-size"),
        (["--max-chars", "0"], "--max-chars"),
        (["--repeats", "0"], "--repeats"),
        (["--vocab-size", "many"], "invalid int value"),
        (["--json", "/nonexistent-dir/x.json"], "does not exist"),
    ],
)
def test_bad_arguments_one_line_error(small_file, extra, what, capsys):
    rc, out, err = (None, None, None)
    try:
        rc, out, err = cli(["compare", "--input", small_file] + extra, capsys)
    except SystemExit as e:  # argparse errors exit from the parser
        rc = e.code
        out, err = capsys.readouterr()
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and what in err, err


def test_read_text_keeps_crlf_and_cuts_prefix(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes("a\r\nb\u00e9\U0001F600c\n".encode())
    assert tokenize.read_text(str(path)) == ("a\r\nb\u00e9\U0001F600c\n", False)
    assert tokenize.read_text(str(path), 5) == ("a\r\nb\u00e9", True)
    assert tokenize.read_text(str(path), 7) == ("a\r\nb\u00e9\U0001F600c", True)
    assert tokenize.read_text(str(path), 8) == ("a\r\nb\u00e9\U0001F600c\n", False)
    assert tokenize.read_text(str(path), 100) == ("a\r\nb\u00e9\U0001F600c\n", False)


def test_module_entry_point(tmp_path):
    """The real `python -m pygpt.tokenize`: exit status and a one-line error on stderr."""
    path = tmp_path / "bin.dat"
    path.write_bytes(b"\x00\x01binary")
    p = subprocess.run([sys.executable, "-m", "pygpt.tokenize", "compare", "--input", str(path)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("error: ") and "binary" in p.stderr
