"""What every task needs from the data layer: samples by split, preprocessors, a tokenizer."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from ..config import DataConfig
from ..data.manifest import read_manifest
from ..data.text import Tokenizer
from ..modalities.audio import audio_preprocessor  # noqa: F401  (the tasks' preprocessors, re-exported)
from ..modalities.image import image_preprocessor  # noqa: F401
from ..registry import get_modality


def samples_by_split(manifest: str | Path, keep=lambda s: True) -> dict[str, list[dict[str, Any]]]:
    """Samples of a manifest grouped by split; a sample without a split counts as train."""
    out: dict[str, list[dict[str, Any]]] = {"train": [], "val": [], "test": []}
    for sample in read_manifest(manifest):
        if keep(sample):
            out[sample.get("split", "train")].append(sample)
    return out


def is_caption(sample: dict) -> bool:
    return bool(sample.get("text"))


def is_qa(sample: dict) -> bool:
    return sample.get("answer") is not None and bool(sample.get("question") or sample.get("question_audio"))


def texts_of(samples: Iterable[dict]) -> Iterable[str]:
    """Every text the samples carry (in each field of the text modality): a tokenizer's training text."""
    fields = get_modality("text").fields
    for s in samples:
        for key in fields:
            if s.get(key):
                yield s[key]


def build_tokenizer(data: DataConfig, train_samples: list[dict]) -> Tokenizer:
    """The configured tokenizer file, or a WordPiece vocabulary trained on the training text."""
    if data.tokenizer:
        return Tokenizer.load(data.tokenizer)
    return Tokenizer.train(texts_of(train_samples), vocab_size=data.vocab_size)
