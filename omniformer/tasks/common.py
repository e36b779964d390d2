"""What every task needs from the data layer: samples by split, preprocessors, a tokenizer."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from ..config import DataConfig, ModelConfig
from ..data.audio import AudioPreprocessor
from ..data.image import ImagePreprocessor
from ..data.manifest import read_manifest
from ..data.text import Tokenizer


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
    for s in samples:
        for key in ("text", "question"):
            if s.get(key):
                yield s[key]


def build_tokenizer(data: DataConfig, train_samples: list[dict]) -> Tokenizer:
    """The configured tokenizer file, or a WordPiece vocabulary trained on the training text."""
    if data.tokenizer:
        return Tokenizer.load(data.tokenizer)
    return Tokenizer.train(texts_of(train_samples), vocab_size=data.vocab_size)


def image_preprocessor(model: ModelConfig, augment: bool) -> ImagePreprocessor:
    # Never flip: a mirrored scene turns every left/right question and caption into a lie.
    return ImagePreprocessor.from_config(model.image, augment=augment, flip=False)


def audio_preprocessor(model: ModelConfig, data: DataConfig | None = None) -> AudioPreprocessor:
    """Features for ``model``; with ``data`` (training), the speech augmentation it asks for."""
    speed = tuple(data.speed_perturbation) if data is not None and data.speed_perturbation else None
    spec_augment = data is not None and data.spec_augment
    return AudioPreprocessor(model.audio, augment=bool(speed or spec_augment), speed=speed, spec_augment=spec_augment)
