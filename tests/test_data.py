"""Data preparation (python -m pygpt.prepare) and batching (Dataset.get_batch)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pygpt import data
from pygpt._cli import run as cli_run
from pygpt.prepare import main as prepare_main
from pygpt.data import Dataset, get_batch, resolve_dataset
from pygpt.tokenizers import CharTokenizer, tokenizer_from_dict

REPO_ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE_CHARS = 1_115_394


def run_prepare(*args, env_extra=None, cwd=REPO_ROOT):
    env = dict(os.environ)
    env.setdefault("PYGPT_DATA_DIR", str(Path(env.get("TMPDIR", "/tmp")) / "pygpt-test-data-unused"))
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "pygpt.prepare", *map(str, args)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
    )


def run_prepare_inprocess(capsys, *args):
    """The CLI in this process (same plumbing as `python -m pygpt.prepare`, without a torch import)."""
    rc = cli_run(prepare_main, list(map(str, args)))
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, rc, out, err)


def assert_one_line_error(proc):
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


# ----------------------------------------------------------------------------------------------
# prepare shakespeare_char


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, shakespeare_path):
    out = tmp_path_factory.mktemp("shakespeare_char")
    proc = run_prepare("shakespeare_char", "--input", shakespeare_path, "--out", out,
                       env_extra={"PYGPT_DATA_DIR": str(out.parent / "unused")})
    assert proc.returncode == 0, proc.stderr
    assert str(out) in proc.stdout and "vocab 65" in proc.stdout
    return out


def test_prepare_shakespeare_files(prepared):
    assert sorted(p.name for p in prepared.iterdir()) == ["meta.json", "train.bin", "val.bin"]
    meta = json.loads((prepared / "meta.json").read_text(encoding="utf-8"))
    assert meta["format"] == "pygpt-data-1"
    assert meta["dtype"] == "uint16"
    assert meta["vocab_size"] == 65
    assert meta["chars"] == SHAKESPEARE_CHARS
    assert meta["train_tokens"] + meta["val_tokens"] == SHAKESPEARE_CHARS
    assert meta["train_tokens"] == int(SHAKESPEARE_CHARS * 0.9) == 1_003_854
    assert meta["val_tokens"] == 111_540
    assert meta["source"]["name"] == "shakespeare_char"
    assert meta["source"]["sha256"] == data.SHAKESPEARE_SHA256
    tok = tokenizer_from_dict(meta["tokenizer"])
    assert isinstance(tok, CharTokenizer) and tok.vocab_size == 65 and len(meta["tokenizer"]["chars"]) == 65
    # uint16 on disk: 2 bytes per token
    assert (prepared / "train.bin").stat().st_size == 2 * meta["train_tokens"]
    assert (prepared / "val.bin").stat().st_size == 2 * meta["val_tokens"]


def test_prepare_shakespeare_decodes_back(prepared, shakespeare_text):
    meta = json.loads((prepared / "meta.json").read_text(encoding="utf-8"))
    tok = tokenizer_from_dict(meta["tokenizer"])
    train = np.fromfile(prepared / "train.bin", dtype=np.uint16)
    val = np.fromfile(prepared / "val.bin", dtype=np.uint16)
    assert len(train) == meta["train_tokens"] and len(val) == meta["val_tokens"]
    assert int(max(train.max(), val.max())) < 65
    assert tok.decode(np.concatenate([train, val]).tolist()) == shakespeare_text
    assert tok.decode(val.tolist()) == shakespeare_text[meta["train_tokens"]:]


def test_prepare_rerun_into_own_folder(tmp_path):
    # a folder pygpt wrote may be overwritten without --force (idempotent re-run)
    text = "the quick brown fox jumps over the lazy dog\n" * 20
    src = tmp_path / "in.txt"
    src.write_text(text, encoding="utf-8")
    out = tmp_path / "out"
    for _ in range(2):
        meta = data.prepare_shakespeare_char(str(out), str(src))
    assert meta["train_tokens"] + meta["val_tokens"] == len(text)
    ds = Dataset(str(out))
    ids = np.concatenate([np.asarray(ds.data["train"]), np.asarray(ds.data["val"])])
    assert ds.tokenizer.decode(ids.tolist()) == text


# ----------------------------------------------------------------------------------------------
# prepare text


def test_prepare_text_folder(tmp_path):
    src = tmp_path / "corpus"
    (src / "sub").mkdir(parents=True)
    a, b = "First file: hello world.\n", "Second file, ünïcode ✓.\n"
    (src / "a.txt").write_text(a, encoding="utf-8")
    (src / "sub" / "b.txt").write_text(b, encoding="utf-8")
    (src / "ignored.md").write_text("not a .txt file: QXZ", encoding="utf-8")
    out = tmp_path / "out"
    proc = run_prepare("text", "--input", src, "--out", out)
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    assert meta["source"]["files"] == 2
    expected = a + "\n\n" + b
    tok = tokenizer_from_dict(meta["tokenizer"])
    assert tok.chars == sorted(set(expected))
    assert "Q" not in tok.chars
    n = len(expected)
    assert meta["train_tokens"] == int(n * 0.9) and meta["val_tokens"] == n - int(n * 0.9)
    ids = np.concatenate([np.fromfile(out / "train.bin", dtype=np.uint16), np.fromfile(out / "val.bin", dtype=np.uint16)])
    assert tok.decode(ids.tolist()) == expected


def test_prepare_text_single_file_default_out(tmp_path, monkeypatch, capsys):
    src = tmp_path / "story.txt"
    src.write_text("once upon a time\n" * 10, encoding="utf-8")
    root = tmp_path / "dataroot"
    monkeypatch.setenv("PYGPT_DATA_DIR", str(root))
    proc = run_prepare_inprocess(capsys, "text", "--input", src)
    assert proc.returncode == 0, proc.stderr
    assert (root / "story" / "meta.json").is_file()
    assert resolve_dataset(str(root / "story")) == str(root / "story")


# ----------------------------------------------------------------------------------------------
# bad input


def test_prepare_missing_input(tmp_path):
    missing = tmp_path / "nope" / "input.txt"
    out = tmp_path / "out"
    proc = run_prepare("shakespeare_char", "--input", missing, "--out", out)
    line = assert_one_line_error(proc)
    assert str(missing) in line
    assert not (out / "train.bin").exists()


def test_prepare_text_missing_input_inprocess(tmp_path, capsys):
    missing = tmp_path / "nope"
    line = assert_one_line_error(run_prepare_inprocess(capsys, "text", "--input", missing, "--out", tmp_path / "out"))
    assert str(missing) in line
    assert not (tmp_path / "out").exists()


def test_prepare_text_without_input(tmp_path, capsys):
    line = assert_one_line_error(run_prepare_inprocess(capsys, "text", "--out", tmp_path / "out"))
    assert "--input" in line


def test_prepare_empty_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    line = assert_one_line_error(
        run_prepare_inprocess(capsys, "text", "--input", tmp_path / "empty", "--out", tmp_path / "out")
    )
    assert ".txt" in line


def test_prepare_non_utf8(tmp_path, capsys):
    src = tmp_path / "latin1.txt"
    src.write_bytes("caf\xe9\n".encode("latin-1"))
    line = assert_one_line_error(run_prepare_inprocess(capsys, "text", "--input", src, "--out", tmp_path / "out"))
    assert "UTF-8" in line and "latin1.txt" in line


def test_prepare_refuses_foreign_files(tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_text("some text to tokenize\n" * 5, encoding="utf-8")
    out = tmp_path / "out"
    out.mkdir()
    foreign = out / "train.bin"
    payload = b"\x00\x01precious bytes not written by pygpt\xff"
    foreign.write_bytes(payload)
    line = assert_one_line_error(run_prepare("text", "--input", src, "--out", out))
    assert "train.bin" in line and "--force" in line
    assert foreign.read_bytes() == payload
    assert not (out / "meta.json").exists() and not (out / "val.bin").exists()
    # with --force it goes ahead
    proc = run_prepare_inprocess(capsys, "text", "--input", src, "--out", out, "--force")
    assert proc.returncode == 0, proc.stderr
    assert foreign.read_bytes() != payload


def test_prepare_refuses_foreign_meta(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "meta.json").write_text('{"format": "something-else"}', encoding="utf-8")
    with pytest.raises(FileExistsError, match="meta.json"):
        data.prepare("abcabc", str(out), {"name": "test"})
    assert json.loads((out / "meta.json").read_text()) == {"format": "something-else"}


def test_prepare_too_short(tmp_path):
    with pytest.raises(ValueError, match="at least 2"):
        data.prepare("a", str(tmp_path / "out"), {"name": "test"})


def test_offline_download_says_pass_input(tmp_path, monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(data, "SHAKESPEARE_URL", "http://127.0.0.1:9/x")
    out = tmp_path / "out"
    with pytest.raises(ConnectionError) as ei:
        data.prepare_shakespeare_char(str(out))
    msg = str(ei.value)
    assert "--input" in msg
    assert "127.0.0.1:9" in msg  # the patched URL was used: nothing reached the network
    # no partial download left behind, nothing prepared
    assert not out.exists() or not list(out.iterdir())


def test_fetch_shakespeare_rejects_wrong_cache(tmp_path):
    cache = tmp_path / "input.txt"
    cache.write_text("not tiny Shakespeare\n", encoding="utf-8")
    with pytest.raises(ValueError) as ei:
        data.fetch_shakespeare(str(cache), url="http://127.0.0.1:9/x")
    msg = str(ei.value)
    assert "sha256" in msg
    assert data.sha256_file(str(cache)) in msg and data.SHAKESPEARE_SHA256 in msg
    assert cache.read_text(encoding="utf-8") == "not tiny Shakespeare\n"  # untouched


def test_fetch_shakespeare_accepts_verified_cache(shakespeare_path):
    # the shared copy is a verified cache: returned as is, no download attempted
    assert data.fetch_shakespeare(str(shakespeare_path), url="http://127.0.0.1:9/x") == str(shakespeare_path)


# ----------------------------------------------------------------------------------------------
# Dataset / get_batch


def test_get_batch_shapes_and_shift(prepared):
    ds = Dataset(str(prepared))
    assert ds.vocab_size == 65
    B, T = 8, 32
    for split in ("train", "val"):
        x, y = ds.get_batch(split, B, T, generator=torch.Generator().manual_seed(42))
        assert x.shape == y.shape == (B, T)
        assert x.dtype == y.dtype == torch.int64
        assert x.device.type == "cpu"
        assert torch.equal(x[:, 1:], y[:, :-1])
        # the offsets come from torch.randint with the same generator
        mem = ds.data[split]
        ix = torch.randint(len(mem) - T, (B,), generator=torch.Generator().manual_seed(42)).tolist()
        for b, i in enumerate(ix):
            assert torch.equal(x[b], torch.from_numpy(mem[i : i + T].astype(np.int64)))
            assert torch.equal(y[b], torch.from_numpy(mem[i + 1 : i + T + 1].astype(np.int64)))


def test_get_batch_reproducible(prepared):
    ds = Dataset(str(prepared))
    a = ds.get_batch("train", 4, 16, generator=torch.Generator().manual_seed(7))
    b = get_batch(ds, "train", 4, 16, generator=torch.Generator().manual_seed(7))
    c = ds.get_batch("train", 4, 16, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_get_batch_decodes_to_text(prepared, shakespeare_text):
    ds = Dataset(str(prepared))
    x, _ = ds.get_batch("train", 3, 64, generator=torch.Generator().manual_seed(0))
    for row in x:
        assert ds.tokenizer.decode(row.tolist()) in shakespeare_text


@pytest.fixture
def small_dataset(tmp_path):
    text = "abcdefghij" * 3  # 30 tokens: train 27, val 3
    out = tmp_path / "small"
    meta = data.prepare(text, str(out), {"name": "test"})
    assert (meta["train_tokens"], meta["val_tokens"]) == (27, 3)
    return Dataset(str(out))


def test_get_batch_block_size_too_large(small_dataset):
    for split, n in (("train", 27), ("val", 3)):
        for T in (n, n + 1, 1000):
            with pytest.raises(ValueError, match=f"block_size {T}"):
                small_dataset.get_batch(split, 2, T)
        x, y = small_dataset.get_batch(split, 2, n - 1)  # the largest block that fits
        assert x.shape == (2, n - 1)
        assert torch.equal(x[0], x[1])  # only one possible offset: 0
        assert torch.equal(y[0], torch.from_numpy(np.asarray(small_dataset.data[split][1:n], dtype=np.int64)))


def test_get_batch_bad_split(small_dataset):
    with pytest.raises(ValueError, match="split"):
        small_dataset.get_batch("test", 2, 2)


def test_dataset_missing_files(tmp_path, small_dataset):
    with pytest.raises(FileNotFoundError, match="meta.json"):
        Dataset(str(tmp_path / "nothing"))
    os.remove(os.path.join(small_dataset.path, "val.bin"))
    with pytest.raises(FileNotFoundError, match="val.bin"):
        Dataset(small_dataset.path)


def test_resolve_dataset(tmp_path, monkeypatch, small_dataset):
    monkeypatch.setenv("PYGPT_DATA_DIR", str(tmp_path / "root"))
    assert resolve_dataset(small_dataset.path) == small_dataset.path
    with pytest.raises(FileNotFoundError, match="no_such_dataset"):
        resolve_dataset("no_such_dataset")
    (tmp_path / "bare").mkdir()
    with pytest.raises(FileNotFoundError, match="meta.json"):
        resolve_dataset(str(tmp_path / "bare"))
    assert not (tmp_path / "root").exists()


def test_resolve_dataset_alias_uses_prepared_folder(tmp_path, monkeypatch):
    # the alias finds an already prepared folder under $PYGPT_DATA_DIR without downloading
    monkeypatch.setenv("PYGPT_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(data, "SHAKESPEARE_URL", "http://127.0.0.1:9/x")
    folder = tmp_path / "shakespeare_char"
    data.prepare("to be or not to be\n", str(folder), {"name": "test"})
    assert resolve_dataset("shakespeare") == str(folder)
    assert resolve_dataset("shakespeare_char") == str(folder)
