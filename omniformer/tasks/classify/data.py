"""Labelled samples for the classify task: reading and checking a manifest's labels, the label
vocabulary, a seeded validation share, and the datasets the model reads."""
from __future__ import annotations

import functools
import math
import random
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from ...config import ConfigError, ModelConfig, RunConfig
from ...data.batching import MultimodalDataset
from ...data.image import load_image
from ...data.manifest import manifest_exists, read_manifest
from ...data.text import Tokenizer
from ...registry import get_modality
from .config import ClassifyConfig

SHOWN = 5  # sample ids named in a message before "and N more"


class ClassifyDataWarning(UserWarning):
    """Something in the data the task works around but the user should know (skipped samples,
    classes too small to learn)."""


def label_of(sample: dict[str, Any]) -> str | None:
    """A sample's label as a string (``3`` and ``"3"`` are one class), None when it has none."""
    label = sample.get("label")
    return None if label is None else str(label)


def label_vocabulary(labels: Sequence[str]) -> list[str]:
    """The distinct labels, sorted: numerically when every label is an integer (2 before 10)."""
    distinct = set(labels)
    if distinct and all(re.fullmatch(r"[+-]?\d+", x) for x in distinct):
        return sorted(distinct, key=lambda x: (int(x), x))
    return sorted(distinct)


def field_of(modality: str, task: ClassifyConfig) -> str:
    """The manifest field that feeds ``modality``: ``task.text_field`` and ``task.audio_field``
    for text and audio, a registered modality's first field (``Modality.fields``) otherwise."""
    return {"text": task.text_field, "audio": task.audio_field}.get(modality) or get_modality(modality).fields[0]


def _names(samples: Sequence[dict], lines: dict[int, int]) -> str:
    """The first few samples by id (or line), for messages."""
    names = [repr(s["id"]) if s.get("id") is not None else f"line {lines.get(id(s), '?')}" for s in samples[:SHOWN]]
    more = f" and {len(samples) - SHOWN} more" if len(samples) > SHOWN else ""
    return ", ".join(names) + more


@dataclass
class ClassifyData:
    """A manifest's labelled samples by split, checked, with the label vocabulary of its train split."""
    manifest: Path
    splits: dict[str, list[dict[str, Any]]]
    labels: list[str]
    carved_val: bool = False        # val was carved out of train (task.val_fraction)
    lines: dict[int, int] = field(default_factory=dict)  # id(sample) -> its manifest line, for messages

    def names(self, samples: Sequence[dict]) -> str:
        return _names(samples, self.lines)


def load_data(manifest: str | Path, task: ClassifyConfig, seed: int = 0, labels: Sequence[str] | None = None,
              check: Sequence[str] | None = None) -> ClassifyData:
    """Read and check ``manifest`` for classification.

    Samples without a label are skipped with a warning; a manifest with no label at all, and
    labels in val/test that train lacks, are errors; a class with one training sample is a
    warning. ``labels``: the vocabulary of a trained model (evaluation); its absence means
    the train split's. ``check``: the splits whose labels must be in the vocabulary (default
    val and test). Without a val split, ``task.val_fraction`` of each class's training
    samples (seeded) become val, at least one of each class staying in train, the same
    split at training and at evaluation.
    """
    manifest = Path(manifest)
    if not manifest_exists(manifest):  # a manifest file or a shard folder
        raise FileNotFoundError(f"data.manifest: {manifest} does not exist")
    lines: dict[int, int] = {}
    splits: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    unlabelled: list[dict] = []
    for line, sample in enumerate(read_manifest(manifest), start=1):
        lines[id(sample)] = line
        if label_of(sample) is None:
            unlabelled.append(sample)
        else:
            splits[sample.get("split", "train")].append(sample)
    if not any(splits.values()):
        raise ValueError(f"{manifest}: no sample has a label; the classify task needs a 'label' field "
                         f"(a string or integer) on every sample it learns from")
    if unlabelled:
        warnings.warn(f"{manifest}: {len(unlabelled)} of {len(unlabelled) + sum(map(len, splits.values()))} "
                      f"samples have no label and are skipped: {_names(unlabelled, lines)}",
                      ClassifyDataWarning, stacklevel=2)
    given = labels
    carved = not splits["val"] and task.val_fraction > 0 and bool(splits["train"])
    if carved:
        splits["train"], splits["val"] = carve_val(splits["train"], task.val_fraction, seed)
    if labels is None:
        if not splits["train"]:
            raise ValueError(f"{manifest}: no labelled sample in the train split (samples without a split "
                             f"count as train); the label vocabulary comes from it")
        labels = label_vocabulary([label_of(s) for s in splits["train"]])
        counts: dict[str, list[dict]] = {}
        for s in splits["train"]:
            counts.setdefault(label_of(s), []).append(s)
        single = [label for label in labels if len(counts[label]) == 1]
        if single:
            warnings.warn(f"{manifest}: {len(single)} classes have a single training sample, too few to learn "
                          f"from: {', '.join(map(repr, single[:SHOWN]))}{' ...' if len(single) > SHOWN else ''} "
                          f"(samples {_names([counts[x][0] for x in single], lines)})",
                          ClassifyDataWarning, stacklevel=2)
    known, vocabulary = set(labels), "train split" if given is None else "model's label vocabulary"
    for split in check if check is not None else ("val", "test"):
        strangers = [s for s in splits[split] if label_of(s) not in known]
        if strangers:
            unseen = label_vocabulary([label_of(s) for s in strangers])
            raise ValueError(f"{manifest}: the {split} split has labels the {vocabulary} lacks, so the model "
                             f"cannot predict them: {', '.join(map(repr, unseen[:20]))}"
                             f"{' ...' if len(unseen) > 20 else ''} (samples {_names(strangers, lines)})")
    return ClassifyData(manifest, splits, list(labels), carved, lines)


def carve_val(train: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, val): ``fraction`` of each class drawn (seeded) into val, one of each class kept in train."""
    by_label: dict[str, list[int]] = {}
    for i, s in enumerate(train):
        by_label.setdefault(label_of(s), []).append(i)
    rng, held = random.Random(seed), set()
    for label in label_vocabulary(list(by_label)):
        indices = by_label[label][:]
        rng.shuffle(indices)
        held.update(indices[: min(round(len(indices) * fraction), len(indices) - 1)])
    return [s for i, s in enumerate(train) if i not in held], [s for i, s in enumerate(train) if i in held]


def resolve_inputs(task: ClassifyConfig, model: ModelConfig, samples: Sequence[dict], manifest: Path) -> list[str]:
    """The modalities the classifier reads, in ``model.modalities`` order: ``task.inputs``, or
    those of ``model.modalities`` that some training sample has."""
    if task.inputs:
        absent = [m for m in task.inputs if m not in model.modalities]
        if absent:
            raise ConfigError(f"task.inputs: {absent} not in model.modalities {model.modalities}")
        return [m for m in model.modalities if m in task.inputs]
    found = [m for m in model.modalities if any(s.get(field_of(m, task)) for s in samples)]
    if not found:
        fields = [field_of(m, task) for m in model.modalities]
        raise ValueError(f"{manifest}: no training sample has any of the fields {fields} that feed "
                         f"model.modalities {model.modalities}")
    return found


def check_inputs(data: ClassifyData, inputs: Sequence[str], task: ClassifyConfig,
                 splits: Sequence[str] = ("train", "val", "test")) -> None:
    """Every labelled sample must carry at least one input the model reads."""
    fields = [field_of(m, task) for m in inputs]
    for split in splits:
        bare = [s for s in data.splits[split] if not any(s.get(f) for f in fields)]
        if bare:
            raise ValueError(f"{data.manifest}: {len(bare)} {split} samples have none of the inputs the model "
                             f"reads ({', '.join(fields)}): {data.names(bare)}")


def check_groups(data: ClassifyData, task: ClassifyConfig, splits: Sequence[str] = ("train", "val", "test")) -> None:
    """Each ``task.groups`` key must be in the meta of some labelled sample of ``splits`` (a typo otherwise)."""
    samples = [s for split in splits for s in data.splits[split]]
    present = {k for s in samples for k in (s.get("meta") or {})}
    for i, key in enumerate(task.groups):
        if key not in present:
            raise ConfigError(f"task.groups[{i}]: no labelled sample of {data.manifest} has {key!r} in its meta; "
                              f"meta keys there: {sorted(present) or 'none'}")


class ClassifyDataset(MultimodalDataset):
    """``MultimodalDataset`` items plus ``label``: the index of the sample's label."""

    def __init__(self, manifest: str | Path, samples: Sequence[dict], labels: Sequence[str], **kwargs: Any):
        super().__init__(manifest, samples, **kwargs)
        self.label_index = {label: i for i, label in enumerate(labels)}

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = super().__getitem__(index)
        label = label_of(self.samples[index])
        if label is not None:
            if label not in self.label_index:
                raise ValueError(f"{self.manifest}: sample {self.samples[index].get('id')!r}: label {label!r} "
                                 f"is not one of the model's {len(self.label_index)} labels")
            item["label"] = self.label_index[label]
        return item


class RandomAffine:
    """A training image moved a little, then handed to ``preprocessor``: rotated by up to
    ``rotate`` degrees either way, shifted by up to ``translate`` of its side along each axis,
    zoomed by a factor drawn from ``scale``; what comes into view takes the image's border
    colour (the median of its edge pixels). Decoded images are kept, the moves drawn afresh.

    Training reseeds ``rng`` for each sample from the run's seed, the epoch and the sample
    (``TrainingSamples``), so workers forked from one instance do not repeat each other's draws.
    """

    augment = True  # MultimodalDataset then never caches its output

    def __init__(self, preprocessor: Any, rotate: float = 0.0, translate: float = 0.0,
                 scale: Sequence[float] = (1.0, 1.0), seed: int | None = None):
        self.preprocessor, self.rotate, self.translate = preprocessor, float(rotate), float(translate)
        self.scale = (float(scale[0]), float(scale[1]))
        self.rng = np.random.default_rng(seed)
        self._decode = functools.lru_cache(maxsize=16384)(load_image)

    def move(self, im: Image.Image) -> Image.Image:
        """``im`` rotated, shifted and zoomed by one random draw."""
        angle = math.radians(self.rng.uniform(-self.rotate, self.rotate))
        zoom = self.rng.uniform(*self.scale)
        tx, ty = self.rng.uniform(-self.translate, self.translate, size=2) * np.array(im.size)
        cx, cy = im.width / 2, im.height / 2
        # PIL maps each output pixel back to the input: in = M (out - centre - shift) + centre.
        cos, sin = math.cos(angle) / zoom, math.sin(angle) / zoom
        a, b, d, e = cos, sin, -sin, cos
        coeffs = (a, b, cx - a * (cx + tx) - b * (cy + ty), d, e, cy - d * (cx + tx) - e * (cy + ty))
        pixels = np.asarray(im).reshape(im.height, im.width, -1)
        edge = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
        fill = tuple(int(v) for v in np.median(edge, axis=0))
        return im.transform(im.size, Image.AFFINE, coeffs, resample=Image.BILINEAR,
                            fillcolor=fill if len(fill) > 1 else fill[0])

    def __call__(self, source: Any) -> torch.Tensor:
        im = source if isinstance(source, Image.Image) else self._decode(source)
        return self.preprocessor(self.move(im))


def classify_dataset(manifest: str | Path, samples: Sequence[dict], cfg: RunConfig, task: ClassifyConfig,
                     tokenizer: Tokenizer | None, labels: Sequence[str], train: bool) -> ClassifyDataset:
    """Samples as model inputs, each modality only when the model reads it; ``train`` turns on
    the augmentations the recipe asks for (``data.augment``, ``data.spec_augment``,
    ``data.speed_perturbation``; ``task.image_rotate``, ``image_translate``, ``image_scale``)."""
    modalities = cfg.model.modalities
    preprocessors = {m: get_modality(m).preprocessor(cfg.model, cfg.data if train else None, tokenizer)
                     for m in modalities}
    image = preprocessors.get("image")
    if image is not None and train and (task.image_rotate or task.image_translate or list(task.image_scale) != [1, 1]):
        preprocessors["image"] = RandomAffine(image, task.image_rotate, task.image_translate, task.image_scale,
                                              seed=cfg.finetune.seed)
    return ClassifyDataset(manifest, samples, labels, preprocessors=preprocessors,
                           fields={m: field_of(m, task) for m in modalities})
