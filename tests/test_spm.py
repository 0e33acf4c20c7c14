"""SentencePieceTokenizer: exact round trips, byte fallback, both model types, storage, errors."""

from __future__ import annotations

import base64
import json
import pickle
import random

import pytest

pytest.importorskip("sentencepiece")

from pygpt.tokenizers import load_tokenizer, tokenizer_from_dict  # noqa: E402
from pygpt.tokenizers.spm import META_SYMBOL, SentencePieceTokenizer  # noqa: E402

EOT = "<|endoftext|>"
WORDS = ("the of and to in is was he for it with as his on be at by had not are but from or have an they which "
         "one you were her all she there would their we him been has when who will more no if out so said what up "
         "its about into than them can only other new some could time these two may then do first any my now such "
         "like our over man me even most made after also did many before must through back years where much your "
         "way well down should because each just those people how too little state good very make world still own "
         "see men work long get here between both life being under never day same another know while last might us "
         "great old year off come since against go came right used take three").split()


def make_text(n_words: int = 6000, seed: int = 0) -> str:
    """Deterministic English-like text: lines, paragraphs, punctuation, a few digits and indentation."""
    rng = random.Random(seed)
    out, line = [], []
    for i in range(n_words):
        w = rng.choice(WORDS)
        if rng.random() < 0.08:
            w = w.capitalize()
        if rng.random() < 0.03:
            w += rng.choice(",.;:!?")
        if rng.random() < 0.01:
            w = str(rng.randrange(10_000))
        line.append(w)
        if len(line) >= rng.randrange(6, 14):
            indent = "    " if rng.random() < 0.1 else ""
            out.append(indent + " ".join(line) + ("\n\n" if rng.random() < 0.15 else "\n"))
            line = []
    out.append(" ".join(line) + "\n")
    return "".join(out)


TEXT = make_text()


@pytest.fixture(scope="module", params=["bpe", "unigram"])
def tok(request):
    return SentencePieceTokenizer.train(TEXT, 600, model_type=request.param)


@pytest.fixture(scope="module")
def shakespeare_100k(shakespeare_path):
    return shakespeare_path.read_text(encoding="utf-8")[:100_000]


TRICKY = [
    "",
    " ",
    "\n",
    "hello world",
    "  two leading spaces",
    "trailing spaces   ",
    "a  b   c    d",
    "line one\nline two\n\nparagraph\n\n\n",
    "\r\n windows \r\n line ends \r",
    "tab\tseparated\tvalues\t",
    " \n \n\t\n",
    f"{EOT}",
    f"first document{EOT}second document\n{EOT}",
    f"{EOT}{EOT}",
    META_SYMBOL,
    f"{META_SYMBOL}{META_SYMBOL} {META_SYMBOL} x{META_SYMBOL}",
    "<unk> <s> </s> <0x41>",
    "\x00 nul \x7f del",
    "e\u0301 (e + combining acute), \u00e9 (precomposed)",
    "\ufb01 ligature, \uff11\uff12 fullwidth, \u00a0 nbsp, \u3000 ideographic space",
    "emoji \U0001F600 \U0001F44D\U0001F3FD family \U0001F468\u200d\U0001F469\u200d\U0001F467",
    "中文, 日本語, 한국어, العربية, עברית",
    "\ufeffBOM at the start",
    "digits 1234567890 and 3.14159",
    "x" * 3000 + " " + "y " * 2000,
]


@pytest.mark.parametrize("s", TRICKY, ids=range(len(TRICKY)))
def test_round_trip_tricky(tok, s):
    ids = tok.encode(s)
    assert all(isinstance(i, int) and 0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == s


def test_round_trip_text_newlines_spaces_special(tok):
    doc = "  Hello there,\n\n  said he.   \nAnd then\n" + EOT + "\n" + TEXT[:2000]
    ids = tok.encode(doc)
    assert tok.decode(ids) == doc
    assert tok.decode(tok.encode(TEXT)) == TEXT
    eot = tok.special_token_id(EOT)
    assert tok.encode(EOT) == [eot]
    assert ids.count(eot) == 1
    assert tok.special_tokens == (EOT,)
    # "\n" is an ordinary character of the pieces, learned with its neighbours
    assert any("\n" in tok.id_to_piece(i) and len(tok.id_to_piece(i)) > 1 for i in range(tok.vocab_size))


def test_byte_fallback_for_unseen_characters(tok):
    unseen = "\U0001F600 \u4e2d\u6587 \u00e9\t\u2603"
    assert not set(unseen) - {" "} & set(TEXT)
    ids = tok.encode(unseen)
    assert tok.decode(ids) == unseen
    assert 0 not in ids  # never <unk> (id 0)
    pieces = [tok.id_to_piece(i) for i in tok.encode("\U0001F600")]
    assert pieces == ["<0xF0>", "<0x9F>", "<0x98>", "<0x80>"]


def test_every_code_point_round_trips():
    tok = SentencePieceTokenizer.train(TEXT[:20_000], 400, model_type="bpe")
    every = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000)
    assert tok.decode(tok.encode(every)) == every
    for c in every[::101]:  # a sample of single characters, each alone
        assert tok.decode(tok.encode(c)) == c


def test_meta_symbol_is_what_sentencepiece_cannot_round_trip(tok):
    s = f"a{META_SYMBOL}b {META_SYMBOL}"
    assert tok.meta_symbol_as_bytes
    assert tok.decode(tok.encode(s)) == s
    plain = SentencePieceTokenizer(tok.model_proto)  # the library's own behaviour
    assert not plain.meta_symbol_as_bytes
    assert plain.decode(plain.encode(s)) == "a b  "
    assert plain.encode("no meta symbol here") == tok.encode("no meta symbol here")


def test_shakespeare_round_trip_and_compression(shakespeare_100k):
    text = shakespeare_100k
    for model_type in ("bpe", "unigram"):
        tok = SentencePieceTokenizer.train(text, 1000, model_type=model_type)
        assert tok.model_type == model_type and tok.vocab_size == 1000
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert len(ids) < len(text) / 2.3  # ~2.7 characters per token at 1000 pieces


def test_bpe_encodes_long_texts_in_pieces_with_the_same_ids():
    rng = random.Random(1)
    text = TEXT + "".join(rng.choice(["  ", " ", "\n", "    x", "word ", "\t"]) for _ in range(20_000))
    tok = SentencePieceTokenizer.train(text, 800, model_type="bpe")
    assert tok._cut_re is not None
    assert any(set(tok.id_to_piece(i)) == {META_SYMBOL} and len(tok.id_to_piece(i)) > 1 for i in range(tok.vocab_size))
    assert tok.encode(text) == tok._sp.encode(text)  # cut into ~1 KB pieces vs the whole string
    assert tok.decode(tok.encode(text)) == text


def test_train_on_iterable_of_documents():
    docs = [TEXT[:5000], TEXT[5000:10000], "", TEXT[10000:20000]]
    tok = SentencePieceTokenizer.train(iter(docs), 500)
    for d in docs:
        assert tok.decode(tok.encode(d)) == d


def test_long_line_is_trained_on():
    line = " ".join(TEXT.split()) * 2  # one line of ~70 KB, over sentencepiece's 4192-byte sentence limit
    assert "\n" not in line and len(line.encode()) > 20_000
    tok = SentencePieceTokenizer.train(line, 500)
    ids = tok.encode(line)
    assert tok.decode(ids) == line
    assert len(ids) < len(line) / 2  # pieces were learned: the line was not dropped


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_deterministic(model_type):
    a = SentencePieceTokenizer.train(TEXT, 500, model_type=model_type)
    b = SentencePieceTokenizer.train(TEXT, 500, model_type=model_type)
    assert a.model_proto == b.model_proto
    assert a == b


def test_to_dict_from_dict_save_load(tok, tmp_path):
    d = tok.to_dict()
    assert d["type"] == "sentencepiece" and d["model_type"] == tok.model_type and d["vocab_size"] == 600
    assert d["meta_symbol_as_bytes"] is True
    assert base64.b64decode(d["model"]) == tok.model_proto
    d = json.loads(json.dumps(d))
    path = tmp_path / "tok.json"
    tok.save(str(path))
    sample = TEXT[:3000] + EOT + "\U0001F600" + META_SYMBOL
    for other in (SentencePieceTokenizer.from_dict(d), tokenizer_from_dict(d), SentencePieceTokenizer.load(str(path)),
                  load_tokenizer(str(path)), pickle.loads(pickle.dumps(tok))):
        assert isinstance(other, SentencePieceTokenizer)
        assert other == tok
        assert other.encode(sample) == tok.encode(sample)
        assert other.decode(tok.encode(sample)) == sample
    assert not list(tmp_path.glob("*.tmp*"))  # the atomic write left nothing behind
    assert repr(tok) == f"SentencePieceTokenizer(model_type={tok.model_type!r}, vocab_size=600)"


def test_model_file(tok, tmp_path):
    import sentencepiece

    path = tmp_path / "m.model"
    tok.save_model_file(str(path))
    loaded = SentencePieceTokenizer.from_model_file(str(path))
    assert loaded.model_type == tok.model_type and loaded.vocab_size == tok.vocab_size
    assert not loaded.meta_symbol_as_bytes and loaded != tok
    assert SentencePieceTokenizer.from_model_file(str(path), meta_symbol_as_bytes=True) == tok
    lib = sentencepiece.SentencePieceProcessor(model_file=str(path))
    assert loaded.encode(TEXT[:5000]) == lib.encode(TEXT[:5000])
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="bad.model"):
        SentencePieceTokenizer.from_model_file(str(bad))
    with pytest.raises(FileNotFoundError):
        SentencePieceTokenizer.from_model_file(str(tmp_path / "missing.model"))


def test_decode_accepts_numpy(tok):
    np = pytest.importorskip("numpy")
    ids = tok.encode("hello world")
    assert tok.decode(np.array(ids, dtype=np.uint16)) == "hello world"


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_vocab_size_too_small(model_type):
    with pytest.raises(ValueError, match=r"vocab_size 100 is too small.*at least \d+") as ei:
        SentencePieceTokenizer.train(TEXT, 100, model_type=model_type)
    minimum = int(str(ei.value).split("at least ")[1].split()[0])
    assert minimum > 256  # the byte tokens alone take 256
    SentencePieceTokenizer.train(TEXT, minimum + 10, model_type=model_type)  # the number it names is right


def test_vocab_size_too_large():
    with pytest.raises(ValueError, match=r"vocab_size 5000 is too large.*at most \d+"):
        SentencePieceTokenizer.train("a tiny text\n", 5000)


@pytest.mark.parametrize("text", ["", [], ["", ""], iter([])])
def test_empty_text(text):
    with pytest.raises(ValueError, match="empty"):
        SentencePieceTokenizer.train(text, 500)


@pytest.mark.parametrize("bad_id", [-1, 600, 10**6])
def test_decode_out_of_range(tok, bad_id):
    with pytest.raises(ValueError, match=str(bad_id)):
        tok.decode([5, bad_id, 6])
    with pytest.raises(ValueError, match=str(bad_id)):
        tok.id_to_piece(bad_id)


def test_lone_surrogate(tok):
    with pytest.raises(ValueError, match="position 2"):
        tok.encode("ab\ud800cd")
    with pytest.raises(ValueError, match="not valid Unicode"):
        SentencePieceTokenizer.train(["fine", "bad \udc00"], 500)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"model_type": "word"}, "model_type"),
        ({"vocab_size": 0}, "vocab_size"),
        ({"vocab_size": 2.5}, "vocab_size"),
        ({"special_tokens": [""]}, "special tokens"),
        ({"special_tokens": ["<a b>"]}, "whitespace"),
        ({"special_tokens": ["<x>", "<x>"]}, "unique"),
        ({"character_coverage": 0}, "character_coverage"),
        ({"model_writer": None}, "model_writer"),
    ],
)
def test_bad_training_arguments(kwargs, match):
    args = {"vocab_size": 500, **kwargs}
    with pytest.raises(ValueError, match=match):
        SentencePieceTokenizer.train(TEXT[:2000], **args)


def test_special_tokens(tok):
    with pytest.raises(ValueError, match="not a special token"):
        tok.special_token_id("<|nope|>")
    t = SentencePieceTokenizer.train(TEXT[:20_000], 500, special_tokens=("<|a|>", "<|b|>,<|c|>"))
    assert t.special_tokens == ("<|a|>", "<|b|>,<|c|>")  # a comma survives sentencepiece's CSV option
    s = "x<|a|>y<|b|>,<|c|>z"
    ids = t.encode(s)
    assert t.special_token_id("<|b|>,<|c|>") in ids and t.decode(ids) == s


@pytest.mark.parametrize(
    "d, match",
    [
        ({"type": "char", "chars": "ab"}, "not a SentencePieceTokenizer"),
        ({"type": "sentencepiece"}, "model"),
        ({"type": "sentencepiece", "model": "***"}, "base64"),
        ({"type": "sentencepiece", "model": base64.b64encode(b"garbage").decode()}, "not a valid sentencepiece model"),
    ],
)
def test_from_dict_errors(d, match):
    with pytest.raises(ValueError, match=match):
        SentencePieceTokenizer.from_dict(d)


def test_from_dict_inconsistent(tok):
    d = dict(tok.to_dict(), vocab_size=tok.vocab_size + 1)
    with pytest.raises(ValueError, match="vocab_size"):
        SentencePieceTokenizer.from_dict(d)
