"""The ``task:`` sections of the sequence-to-sequence tasks (translate, caption): the decoder's
size, the loss and how outputs are decoded, plus each task's own source and target fields."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ...config import SHARE, ConfigError, Range


@dataclass
class Seq2SeqConfig:
    """What every task that writes text with the decoder shares (its size, loss and decoding)."""
    decoder_depth: int = 3
    max_target_len: int = 64       # target word pieces, [CLS] and [SEP] included
    label_smoothing: float = 0.1
    lowercase: bool = False        # the tokenizer: cased by default, as BLEU is scored
    # Decoding (evaluate, translate, caption, predict); a command line's flags override them.
    num_beams: int = 4
    length_penalty: float = 1.0
    max_new_tokens: int = 63
    # Periodic evaluation during training decodes greedily, for speed.
    val_beams: int = 1

    RANGES: ClassVar[dict[str, Range]] = {
        "decoder_depth": Range(1, 64), "max_target_len": Range(3, 4096), "label_smoothing": SHARE,
        "num_beams": Range(1, 64), "length_penalty": Range(-10.0, 10.0), "max_new_tokens": Range(1, 4096),
        "val_beams": Range(1, 64)}

    def validate(self) -> None:
        if self.max_new_tokens >= self.max_target_len:
            raise ConfigError(f"max_new_tokens: {self.max_new_tokens} does not fit max_target_len="
                              f"{self.max_target_len} (the decoder's positions, [CLS] included); at most "
                              f"{self.max_target_len - 1}")


@dataclass
class TranslateConfig(Seq2SeqConfig):
    """Text-to-text generation choices (``task:`` in a translate recipe).

    The source is read by the backbone (its text embedder and fusion encoder); the decoder reads
    the fused source through cross-attention and writes the target. Source and target share one
    word-piece vocabulary, trained on both sides of the training pairs, and the decoder's input
    and output embeddings are the backbone's text embedding (tied).
    """
    source: str = "text"           # manifest field of the source sentence
    target: str = "target"         # manifest field of its translation

    def validate(self) -> None:
        for name in ("source", "target"):
            if not getattr(self, name).strip():
                raise ConfigError(f"{name}: expected a manifest field name, got ''")
        if self.source == self.target:
            raise ConfigError(f"source and target: both name the field {self.source!r}")
        super().validate()
