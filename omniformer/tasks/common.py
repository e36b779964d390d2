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
    return Tokenizer.train(texts_of(train_samples), vocab_size=data.vocab_size,
                           split_punctuation=data.split_punctuation is not False)


SPLITS = ("train", "val", "test")


def require_split(split: str) -> None:
    """Refuse a split name a manifest cannot hold, naming the three it can."""
    if split not in SPLITS:
        raise ValueError(f"split: expected train, val or test, got {split!r}")


def load_for_evaluation(predictor_class: Any, model_dir: str | Path, device: str, cfg: Any = None) -> tuple[Any, Any]:
    """(predictor, run config) for evaluating a checkpoint: the run is ``cfg`` (a command line's
    data and task overrides) or the checkpoint's own recipe, with the checkpoint's architecture."""
    import dataclasses
    from ..train.loop import resolve_device
    predictor = predictor_class.load(model_dir, device=resolve_device(device))
    return predictor, dataclasses.replace(cfg or predictor.cfg, model=predictor.cfg.model)


def seq2seq_tokenizer(out: Path, init: str | Path | None, resume: bool, data: DataConfig,
                      texts: Any, lowercase: bool) -> Tokenizer:
    """The vocabulary of an encoder-decoder run: the resumed run's, else the ``--init``
    checkpoint's (its embedding and decoder speak it), else ``data.tokenizer``, else one trained
    on ``texts()`` (called only then), of whole words unless ``data.split_punctuation`` is true,
    so the text it writes keeps its spacing."""
    from ..train import checkpoint as ckpt
    if resume:
        return Tokenizer.load(ckpt.find_checkpoint(out / "last") / ckpt.TOKENIZER)
    if init is not None:
        return Tokenizer.load(ckpt.find_checkpoint(init) / ckpt.TOKENIZER)
    if data.tokenizer:
        return Tokenizer.load(data.tokenizer)
    return Tokenizer.train(texts(), vocab_size=data.vocab_size, lowercase=lowercase,
                           split_punctuation=data.split_punctuation is True)
