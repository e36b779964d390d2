"""Text: a BERT-style WordPiece tokenizer built on Hugging Face ``tokenizers``.

Train one from a manifest's text, save/load it as ``tokenizer.json``, or load an existing
``tokenizer.json`` or BERT ``vocab.txt``. Encoding adds ``[CLS] ... [SEP]``, truncates to a
maximum length and pads batches with an attention mask.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = [PAD, UNK, CLS, SEP, MASK]


class TokenizerError(ValueError):
    """A tokenizer file is missing, unreadable or lacks a special token."""


def _bert_pipeline(tk: HFTokenizer, lowercase: bool, split_punctuation: bool = True) -> HFTokenizer:
    tk.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=lowercase)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer() if split_punctuation else pre_tokenizers.WhitespaceSplit()
    # Whole words decode exactly as written; BERT's clean-up would rewrite them (" do not" ->
    # " don't"). Split punctuation needs it to close "word ." back up.
    tk.decoder = decoders.WordPiece(cleanup=split_punctuation)
    return tk


class Tokenizer:
    """A thin, typed wrapper over ``tokenizers.Tokenizer`` with BERT's special tokens."""

    def __init__(self, tokenizer: HFTokenizer, source: str = "<memory>"):
        self._tk = tokenizer
        missing = [t for t in SPECIAL_TOKENS if tokenizer.token_to_id(t) is None]
        if missing:
            raise TokenizerError(f"tokenizer {source} lacks special tokens {missing}; expected {SPECIAL_TOKENS}")
        self.pad_id = tokenizer.token_to_id(PAD)
        self.unk_id = tokenizer.token_to_id(UNK)
        self.cls_id = tokenizer.token_to_id(CLS)
        self.sep_id = tokenizer.token_to_id(SEP)
        self.mask_id = tokenizer.token_to_id(MASK)
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{CLS} $A {SEP}", pair=f"{CLS} $A {SEP} $B:1 {SEP}:1",
            special_tokens=[(CLS, self.cls_id), (SEP, self.sep_id)],
        )
        tokenizer.no_padding()
        tokenizer.no_truncation()

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 1000, min_frequency: int = 1,
              lowercase: bool = True, split_punctuation: bool = True) -> "Tokenizer":
        """A WordPiece vocabulary of ``texts``; ``split_punctuation=False`` keeps every
        whitespace-separated word whole before it is cut into pieces ("don't" never becomes
        three words, "T-Shirt," is "T ##- ##Shirt ##,"), so decoding gives the text back as
        written: what a recogniser or a translator that writes pieces needs."""
        if vocab_size < len(SPECIAL_TOKENS) + 1:
            raise TokenizerError(f"vocab_size must be > {len(SPECIAL_TOKENS)}, got {vocab_size}")
        tk = _bert_pipeline(HFTokenizer(models.WordPiece(unk_token=UNK)), lowercase, split_punctuation)
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                            special_tokens=SPECIAL_TOKENS, show_progress=False)
        texts = [t for t in texts if t and t.strip()]
        if not texts:
            raise TokenizerError("cannot train a tokenizer: no non-empty text given")
        tk.train_from_iterator(texts, trainer=trainer)
        return cls(tk)

    @classmethod
    def load(cls, path: str | Path, lowercase: bool = True) -> "Tokenizer":
        """Load ``tokenizer.json`` or ``vocab.txt`` (or a folder holding either)."""
        path = Path(path)
        if path.is_dir():
            for name in ("tokenizer.json", "vocab.txt"):
                if (path / name).is_file():
                    path = path / name
                    break
            else:
                raise TokenizerError(f"folder {path} holds neither tokenizer.json nor vocab.txt")
        if not path.is_file():
            raise TokenizerError(f"tokenizer file {path} does not exist")
        try:
            if path.suffix == ".txt":
                tk = _bert_pipeline(HFTokenizer(models.WordPiece.from_file(str(path), unk_token=UNK)), lowercase)
            else:
                tk = HFTokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception on malformed files
            raise TokenizerError(f"cannot read tokenizer {path}: {e}") from None
        return cls(tk, source=str(path))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        if path.suffix != ".json":
            path = path / "tokenizer.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        self._tk.save(str(path))
        return path

    # -- use ----------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self._tk.get_vocab_size()

    @property
    def special_ids(self) -> list[int]:
        return [self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id]

    def encode(self, text: str, max_len: int | None = None, special: bool = True) -> list[int]:
        """Token ids of ``text``, within ``[CLS] ... [SEP]`` unless ``special`` is False."""
        if not isinstance(text, str) or not text.strip():
            raise TokenizerError(f"cannot encode empty text {text!r}")
        ids = self._tk.encode(text, add_special_tokens=special).ids
        if max_len is not None and len(ids) > max_len:
            # keep [SEP] so the sequence stays well-formed
            ids = ids[: max_len - 1] + [self.sep_id] if special else ids[:max_len]
        return ids

    def pad(self, sequences: list[list[int]], length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-pad id lists to one length: (ids (B, L), mask (B, L) True on real tokens)."""
        length = length or max((len(s) for s in sequences), default=1)
        ids = torch.full((len(sequences), max(length, 1)), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids, dtype=torch.bool)
        for i, seq in enumerate(sequences):
            ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[i, : len(seq)] = True
        return ids, mask

    def encode_batch(self, texts: list[str], max_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.pad([self.encode(t, max_len) for t in texts])

    def decode(self, ids: list[int] | torch.Tensor, skip_special: bool = True) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self._tk.decode(ids, skip_special_tokens=skip_special)

    def tokens(self, text: str) -> list[str]:
        return self._tk.encode(text).tokens

    def id_to_token(self, i: int) -> str | None:
        return self._tk.id_to_token(i)
