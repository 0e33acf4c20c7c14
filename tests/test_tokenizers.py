"""CharTokenizer: the lecture's character-level tokenizer and its JSON form."""

from __future__ import annotations

import json

import pytest

from pygpt.tokenizers import CharTokenizer, load_tokenizer, tokenizer_from_dict


def test_shakespeare_round_trip(shakespeare_text):
    tok = CharTokenizer.from_text(shakespeare_text)
    assert tok.vocab_size == 65
    assert tok.chars == sorted(set(shakespeare_text))
    assert tok.chars[0] == "\n" and tok.chars[1] == " "
    ids = tok.encode(shakespeare_text)
    assert len(ids) == len(shakespeare_text) == 1_115_394
    assert min(ids) == 0 and max(ids) == 64
    assert tok.decode(ids) == shakespeare_text


def test_lecture_example():
    tok = CharTokenizer.from_text("hii there")
    assert tok.chars == [" ", "e", "h", "i", "r", "t"]
    assert tok.encode("hii there") == [2, 3, 3, 0, 5, 2, 1, 4, 1]
    assert tok.decode([2, 3, 3]) == "hii"
    assert tok.encode("") == [] and tok.decode([]) == ""


def test_decode_accepts_tensors_and_numpy():
    torch = pytest.importorskip("torch")
    np = pytest.importorskip("numpy")
    tok = CharTokenizer.from_text("abc")
    assert tok.decode(torch.tensor([2, 1, 0])) == "cba"
    assert tok.decode(np.array([0, 2], dtype=np.uint16)) == "ac"


@pytest.mark.parametrize("bad, pos", [("é", 3), ("\t", 0), ("Z", 5)])
def test_encode_unknown_char(bad, pos):
    tok = CharTokenizer.from_text("abcdefgh ")
    s = "abcdefgh"[:pos] + bad + "abc"
    with pytest.raises(ValueError) as ei:
        tok.encode(s)
    msg = str(ei.value)
    assert repr(bad) in msg
    assert f"position {pos}" in msg


def test_encode_unknown_reports_first_position():
    tok = CharTokenizer.from_text("ab")
    with pytest.raises(ValueError, match=r"'z' at position 2"):
        tok.encode("abzyz")


@pytest.mark.parametrize("bad_id", [-1, 3, 1000])
def test_decode_out_of_range(bad_id):
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match=str(bad_id)):
        tok.decode([0, bad_id, 1])


def test_save_load_round_trip(tmp_path, shakespeare_text):
    tok = CharTokenizer.from_text(shakespeare_text)
    path = tmp_path / "tok.json"
    tok.save(str(path))
    d = json.loads(path.read_text(encoding="utf-8"))
    assert d == {"type": "char", "chars": "".join(tok.chars)}
    for loaded in (CharTokenizer.load(str(path)), load_tokenizer(str(path)), tokenizer_from_dict(d)):
        assert isinstance(loaded, CharTokenizer)
        assert loaded == tok
        assert loaded.encode("To be, or not to be") == tok.encode("To be, or not to be")
    assert not list(tmp_path.glob("*.tmp*"))  # the atomic write left nothing behind


def test_save_load_non_ascii(tmp_path):
    tok = CharTokenizer.from_text("héllo wörld ✓\n")
    path = tmp_path / "tok.json"
    tok.save(str(path))
    assert CharTokenizer.load(str(path)) == tok


@pytest.mark.parametrize("d", [{"type": "wordpiece", "vocab": []}, {"chars": "abc"}, {"type": None}, ["char"], None])
def test_tokenizer_from_dict_unknown_type(d):
    with pytest.raises(ValueError, match="unknown tokenizer type"):
        tokenizer_from_dict(d)


def test_tokenizer_from_dict_names_bad_type():
    with pytest.raises(ValueError, match="'wordpiece'.*char, bpe, sentencepiece"):
        tokenizer_from_dict({"type": "wordpiece"})


def test_tokenizer_from_dict_incomplete_bpe():
    with pytest.raises(ValueError, match="merges"):
        tokenizer_from_dict({"type": "bpe"})


@pytest.mark.parametrize("chars", [[], ["ab"], ["a", "a"], ["a", 1]])
def test_bad_vocabulary(chars):
    with pytest.raises(ValueError):
        CharTokenizer(chars)
