"""python -m pygpt.prepare text with any tokenizer: streaming documents, separators, shared
tokenizers (--tokenizer-from), ASCII normalisation for char vocabularies, byte counts and bits per
byte, uint32 token files, and the bad-input errors."""

from __future__ import annotations

import importlib.util
import json
import math

import numpy as np
import pytest

from pygpt import data
from pygpt.tokenizers import CharTokenizer, tokenizer_from_dict

from test_data import assert_one_line_error, run_prepare_inprocess


def read_ids(out, meta):
    dt = np.dtype(meta["dtype"])
    return np.concatenate([np.fromfile(out / "train.bin", dtype=dt), np.fromfile(out / "val.bin", dtype=dt)])


def test_doc_blank_lines_split_and_char_joiner(tmp_path, capsys):
    src = tmp_path / "books.txt"
    src.write_text("book one\nline\n\n\n\n\nbook two\n\n\nstill two\n", encoding="utf-8")
    out = tmp_path / "out"
    proc = run_prepare_inprocess(capsys, "text", "--input", src, "--out", out, "--doc-blank-lines", "4", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((out / "meta.json").read_text())
    assert meta["documents"] == 2 and meta["separator"] is None  # char data: a blank line joins documents
    tok = tokenizer_from_dict(meta["tokenizer"])
    assert tok.decode(read_ids(out, meta).tolist()) == "book one\nline\n\nbook two\n\n\nstill two\n"
    assert meta["bytes"] == meta["train_bytes"] + meta["val_bytes"] == len("book one\nline\n\nbook two\n\n\nstill two\n")


def test_tokenizer_from_and_ascii_normalisation(tmp_path, capsys):
    small = tmp_path / "small.txt"
    small.write_text("It's a tale -- told \"here\".\n", encoding="utf-8")
    base = tmp_path / "base"
    assert run_prepare_inprocess(capsys, "text", "--input", small, "--out", base, "--no-progress").returncode == 0
    big = tmp_path / "big.txt"
    big.write_text("It\u2019s a \u201ctale\u201d \u2014 told here\u2026 \u00e9\n", encoding="utf-8")
    out = tmp_path / "out"
    # without normalisation the unknown characters are an error naming one
    line = assert_one_line_error(run_prepare_inprocess(capsys, "text", "--input", big, "--out", out,
                                                       "--tokenizer-from", base, "--no-progress"))
    assert "not in the tokenizer's vocabulary" in line
    proc = run_prepare_inprocess(capsys, "text", "--input", big, "--out", out, "--tokenizer-from", base,
                                 "--normalize", "ascii", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((out / "meta.json").read_text())
    assert meta["tokenizer"] == json.loads((base / "meta.json").read_text())["tokenizer"]  # the same tokenizer
    tok = tokenizer_from_dict(meta["tokenizer"])
    assert tok.decode(read_ids(out, meta).tolist()) == "It's a \"tale\" -- told here... \n"
    assert meta["dropped_chars"] == 1  # only 'é': the quotes, dash and ellipsis were mapped to ASCII
    # the dropped characters are exactly those the small vocabulary lacks after normalisation
    norm = data.normalize_ascii(big.read_text(encoding="utf-8"))
    assert meta["dropped_chars"] == sum(c not in tok.stoi for c in norm)


def test_uint32_when_the_vocabulary_needs_it(tmp_path):
    chars = [chr(0x4E00 + i) for i in range(20000)] + [chr(0x10000 + i) for i in range(50000)]
    tok = CharTokenizer(chars)
    assert tok.vocab_size > 2**16
    src = tmp_path / "wide.txt"
    text = "".join(chars[i] for i in (0, 69999, 123, 65536, 5, 65537, 7, 69998, 1, 2))
    src.write_text(text, encoding="utf-8")
    meta = data.prepare_corpus(str(src), str(tmp_path / "out"), tok, {"name": "t"}, progress=False)
    assert meta["dtype"] == "uint32"
    ids = read_ids(tmp_path / "out", meta)
    assert tok.decode(ids.tolist()) == text and ids.max() == 69999


def test_bits_per_byte():
    meta = {"val_tokens": 100, "val_bytes": 400}
    assert data.bits_per_byte(math.log(2) * 2.0, meta, "val") == pytest.approx(0.5)  # 2 bits/token, 4 bytes/token
    assert data.bits_per_byte(1.0, {}, "val") is None  # data sets from before byte counts


def test_prepare_records_bytes_for_char_data(tmp_path):
    meta = data.prepare("héllo wörld\n" * 20, str(tmp_path / "o"), {"name": "t"})
    assert meta["bytes"] == len(("héllo wörld\n" * 20).encode()) == meta["train_bytes"] + meta["val_bytes"]


@pytest.mark.parametrize("content,message", [
    (b"", "empty"),
    (b"\x00\x01\x02binary\x00", "binary"),
    (b"caf\xe9 latin-1", "not UTF-8"),
])
def test_bad_corpus_files(tmp_path, capsys, content, message):
    src = tmp_path / "in.txt"
    src.write_bytes(content)
    line = assert_one_line_error(run_prepare_inprocess(capsys, "text", "--input", src, "--out", tmp_path / "out",
                                                       "--no-progress"))
    assert message in line
    assert not (tmp_path / "out" / "meta.json").exists()


@pytest.mark.parametrize("args,message", [
    (["--tokenizer", "wordpiece"], "--tokenizer must be one of"),
    (["--tokenizer", "char", "--vocab-size", "100"], "does not apply"),
    (["--tokenizer", "bpe"], "needs --vocab-size"),
    (["--vocab-size", "0", "--tokenizer", "bpe"], "--vocab-size must be >= 1"),
    (["--tokenizer-from", "nowhere", "--no-progress"], "does not exist"),
])
def test_bad_tokenizer_arguments(tmp_path, capsys, args, message):
    src = tmp_path / "in.txt"
    src.write_text("some text\n" * 10, encoding="utf-8")
    line = assert_one_line_error(run_prepare_inprocess(capsys, "text", "--input", src, "--out", tmp_path / "out", *args))
    assert message in line


def test_tokenizer_from_excludes_tokenizer(tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_text("some text\n" * 10, encoding="utf-8")
    line = assert_one_line_error(run_prepare_inprocess(capsys, "text", "--input", src, "--out", tmp_path / "o",
                                                       "--tokenizer-from", src, "--tokenizer", "bpe"))
    assert "--tokenizer-from" in line


def test_shakespeare_char_rejects_tokenizer_flags(tmp_path, capsys):
    line = assert_one_line_error(run_prepare_inprocess(capsys, "shakespeare_char", "--out", tmp_path / "o",
                                                       "--tokenizer", "bpe"))
    assert "'text'" in line


@pytest.mark.parametrize("kind", ["bpe", "sentencepiece", "sentencepiece-unigram"])
def test_subword_data_set_with_separators(tmp_path, capsys, kind):
    module = "pygpt.tokenizers.bpe" if kind == "bpe" else "pygpt.tokenizers.spm"
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not there yet")
    if kind != "bpe" and importlib.util.find_spec("sentencepiece") is None:
        pytest.skip("sentencepiece is not installed")
    folder = tmp_path / "docs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    words = ["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), size=rng.integers(2, 9))) for _ in range(400)]
    texts = [" ".join(rng.choice(words, size=600)) + f"\nDocument {i}.\n" for i in range(3)]
    for i, t in enumerate(texts):
        (folder / f"{i}.txt").write_text(t, encoding="utf-8")
    out = tmp_path / "out"
    proc = run_prepare_inprocess(capsys, "text", "--input", folder, "--out", out, "--tokenizer", kind,
                                 "--vocab-size", "320", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((out / "meta.json").read_text())
    assert meta["documents"] == 3 and meta["separator"] == "<|endoftext|>" and meta["vocab_size"] == 320
    tok = tokenizer_from_dict(meta["tokenizer"])
    ids = read_ids(out, meta)
    sep = tok.encode("<|endoftext|>")
    assert len(sep) == 1 and int((ids == sep[0]).sum()) == 2  # between the three documents
    assert tok.decode(ids.tolist()) == "<|endoftext|>".join(texts)
    assert meta["bytes"] == sum(len(t.encode()) for t in texts)
    # the finetuning data set reuses it
    other = tmp_path / "other.txt"
    other.write_text("the lazy dog\n" * 50, encoding="utf-8")
    proc = run_prepare_inprocess(capsys, "text", "--input", other, "--out", tmp_path / "ft", "--tokenizer-from", out,
                                 "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "ft" / "meta.json").read_text())["tokenizer"] == meta["tokenizer"]


def test_bpe_vocab_smaller_than_the_byte_alphabet(tmp_path, capsys):
    if importlib.util.find_spec("pygpt.tokenizers.bpe") is None:
        pytest.skip("bpe not there yet")
    src = tmp_path / "in.txt"
    src.write_text("some text\n" * 10, encoding="utf-8")
    line = assert_one_line_error(run_prepare_inprocess(capsys, "text", "--input", src, "--out", tmp_path / "o",
                                                       "--tokenizer", "bpe", "--vocab-size", "100", "--no-progress"))
    assert "100" in line and "257" in line
    assert not (tmp_path / "o" / "meta.json").exists()


def test_gpt2_files_folder_and_missing_merges(tmp_path, capsys):
    if importlib.util.find_spec("pygpt.tokenizers.bpe") is None:
        pytest.skip("bpe not there yet")
    from pygpt.tokenizers.bpe import BPETokenizer

    src = tmp_path / "in.txt"
    src.write_text("the cat sat on the mat\n" * 40, encoding="utf-8")
    tok = BPETokenizer.train(src.read_text(), 265)
    files = tmp_path / "gpt2files"
    files.mkdir()
    tok.save_gpt2_files(str(files / "vocab.json"), str(files / "merges.txt"))
    assert (files / "vocab.json").is_file() and (files / "merges.txt").is_file()
    out = tmp_path / "o"
    proc = run_prepare_inprocess(capsys, "text", "--input", src, "--out", out, "--tokenizer-from", files, "--no-progress")
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((out / "meta.json").read_text())
    assert tokenizer_from_dict(meta["tokenizer"]).encode("the cat") == tok.encode("the cat")
    (files / "merges.txt").unlink()
    line = assert_one_line_error(run_prepare_inprocess(capsys, "text", "--input", src, "--out", tmp_path / "o2",
                                                       "--tokenizer-from", files, "--no-progress"))
    assert "merges.txt" in line
