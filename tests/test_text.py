"""The word-level caption tokenizer."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyclip.text import Tokenizer

CAPTIONS = [
    "Axial CT scan of the abdomen showing a hypodense lesion.",
    "Chest radiograph: right lower lobe consolidation",
    "T2-weighted MRI of the brain (arrow).",
    "CT of the chest.",
]


def test_tokenize_lowercases_and_splits_on_punctuation_and_hyphens():
    assert Tokenizer.tokenize("T2-weighted MRI (arrow).") == ["t2", "weighted", "mri", "arrow"]
    assert Tokenizer.tokenize("Hydro-aériques, 3.5 cm") == ["hydro", "aériques", "3", "5", "cm"]
    assert Tokenizer.tokenize("snake_case/slash") == ["snake", "case", "slash"]
    assert Tokenizer.tokenize(" ... ") == []


def test_fit_ranks_by_frequency_then_alphabetically():
    tok = Tokenizer.fit(["b a c", "c b", "c"])
    assert tok.vocab == ["<pad>", "<unk>", "c", "b", "a"]
    assert tok.vocab_size == 5
    # Ties do not depend on caption order.
    assert Tokenizer.fit(["y x", "z"]).vocab == Tokenizer.fit(["z", "x y"]).vocab == ["<pad>", "<unk>", "x", "y", "z"]


def test_fit_max_vocab_and_min_freq():
    captions = ["a a a b b c", "a b d"]
    assert Tokenizer.fit(captions, max_vocab=4).vocab == ["<pad>", "<unk>", "a", "b"]
    assert Tokenizer.fit(captions, min_freq=2).vocab == ["<pad>", "<unk>", "a", "b"]
    assert Tokenizer.fit(captions, max_vocab=2).vocab == ["<pad>", "<unk>"]
    with pytest.raises(ValueError, match="max_vocab"):
        Tokenizer.fit(captions, max_vocab=1)
    with pytest.raises(ValueError, match="min_freq"):
        Tokenizer.fit(captions, min_freq=0)


def test_encode_decode_round_trip():
    tok = Tokenizer.fit(CAPTIONS)
    ids, mask = tok.encode(CAPTIONS, max_len=16)
    assert ids.shape == mask.shape == (4, 16)
    assert ids.dtype == np.int64 and mask.dtype == bool
    for row, text in zip(ids, CAPTIONS):
        assert tok.decode(row) == " ".join(Tokenizer.tokenize(text))


def test_unknown_words_become_unk():
    tok = Tokenizer.fit(["ct of the chest"])
    ids, mask = tok.encode(["pet of the liver"], max_len=4)
    assert ids[0, 0] == Tokenizer.UNK and ids[0, 3] == Tokenizer.UNK
    assert not mask.any()
    assert tok.decode(ids[0]) == "<unk> of the <unk>"


def test_truncation_padding_and_mask():
    tok = Tokenizer.fit(["a b c d e"])
    ids, mask = tok.encode(["a b c d e", "a b"], max_len=3)
    assert tok.decode(ids[0]) == "a b c"
    np.testing.assert_array_equal(mask, [[False, False, False], [False, False, True]])
    np.testing.assert_array_equal(ids[1], [tok.vocab.index("a"), tok.vocab.index("b"), Tokenizer.PAD])
    one_ids, one_mask = tok.encode_one("a b", max_len=3)
    np.testing.assert_array_equal(one_ids, ids[1])
    np.testing.assert_array_equal(one_mask, mask[1])


@pytest.mark.parametrize("text", ["", "   ", " \t\n", "... (!)"])
def test_caption_without_words_raises_naming_it(text):
    tok = Tokenizer.fit(CAPTIONS)
    with pytest.raises(ValueError, match="caption 1") as info:
        tok.encode(["ct", text], max_len=4)
    assert repr(text) in str(info.value)
    assert Tokenizer.is_empty(text)
    assert Tokenizer.find_empty(["ct", text, "mri", text]) == [1, 3]


def test_encode_rejects_a_single_string_and_bad_max_len():
    tok = Tokenizer.fit(CAPTIONS)
    with pytest.raises(TypeError, match="encode_one"):
        tok.encode("ct of the chest", max_len=4)
    with pytest.raises(ValueError, match="max_len"):
        tok.encode(["ct"], max_len=0)


def test_decode_rejects_ids_outside_the_vocabulary():
    tok = Tokenizer.fit(["a"])
    with pytest.raises(ValueError, match="id 7"):
        tok.decode([2, 7])
    with pytest.raises(ValueError, match="1-D"):
        tok.decode([[2, 0]])


def test_vocab_must_start_with_specials_and_be_unique():
    with pytest.raises(ValueError, match="must start with"):
        Tokenizer(["a", "b"])
    with pytest.raises(ValueError, match="duplicate"):
        Tokenizer(["<pad>", "<unk>", "a", "a"])


def test_save_load_round_trip(tmp_path):
    tok = Tokenizer.fit(CAPTIONS + ["aériques"])
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind
    loaded = Tokenizer.load(path)
    assert loaded.vocab == tok.vocab
    np.testing.assert_array_equal(loaded.encode(CAPTIONS, 8)[0], tok.encode(CAPTIONS, 8)[0])
    assert Tokenizer.from_dict(json.loads(json.dumps(tok.to_dict()))).vocab == tok.vocab


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json"):
        Tokenizer.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        Tokenizer.load(bad)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"vocab": ["<pad>", "<unk>"]}))
    with pytest.raises(ValueError, match="wrong.json"):
        Tokenizer.load(wrong)


_VOCAB_TOKENIZER = Tokenizer.fit(CAPTIONS)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(max_size=60), min_size=1, max_size=5), st.integers(1, 12))
def test_encode_properties(texts, max_len):
    texts = [t for t in texts if not Tokenizer.is_empty(t)]
    if not texts:
        return
    ids, mask = _VOCAB_TOKENIZER.encode(texts, max_len)
    assert ids.shape == (len(texts), max_len)
    np.testing.assert_array_equal(mask, ids == Tokenizer.PAD)
    assert ((ids >= 0) & (ids < _VOCAB_TOKENIZER.vocab_size)).all()
    # Padding only at the end, and every caption keeps at least one token.
    assert not mask[:, 0].any()
    assert (np.diff(mask.astype(int), axis=1) >= 0).all()
    lengths = (~mask).sum(1)
    assert lengths.tolist() == [min(len(Tokenizer.tokenize(t)), max_len) for t in texts]
