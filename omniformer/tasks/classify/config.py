"""The classify recipe's ``task:`` section: what feeds the classifier, its head, its loss and
how it is scored."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from ...config import DROPOUT, ConfigError, Range
from ...registry import modality_names


@dataclass
class ClassifyConfig:
    """Head, loss and evaluation choices of the classify task (``task:`` in a recipe).

    ``inputs`` empty means every modality of ``model.modalities`` that the training samples
    have, so an image-only manifest trains an image-only model without saying so.
    """
    inputs: list[str] = field(default_factory=list)          # registered modalities (image, audio, text, ...)
    text_field: Literal["text", "question"] = "text"        # the manifest field read as the text input
    audio_field: Literal["audio", "question_audio"] = "audio"
    # What the head reads: the fusion [CLS], the mean of the other fusion tokens, or both concatenated.
    pooling: Literal["cls", "mean", "both"] = "cls"
    head_hidden: int = 0           # the head MLP's hidden size; 0: twice what it reads
    head_dropout: float = 0.1
    label_smoothing: float = 0.0
    # Share of each class's training samples held out for validation when the manifest has no
    # val split (seeded by finetune.seed); 0: no validation, the last checkpoint is kept.
    val_fraction: float = 0.0
    # ``meta`` keys to report accuracy per value of (``speaker`` -> ``speaker/jackson``).
    groups: list[str] = field(default_factory=list)
    # Random affine moves of the training images, drawn afresh each time an image is read:
    # a rotation of up to ``image_rotate`` degrees either way, a shift of up to
    # ``image_translate`` of the side along each axis, a zoom by a factor in ``image_scale``.
    # The uncovered border takes the image's border colour; never a flip (digits, letters).
    # Applied before the image preprocessor (and its ``data.augment`` crop, if on). Off: 0, 0, [1, 1].
    image_rotate: float = 0.0
    image_translate: float = 0.0
    image_scale: list[float] = field(default_factory=lambda: [1.0, 1.0])

    RANGES: ClassVar[dict[str, Range]] = {"head_hidden": Range(0, 1 << 20), "head_dropout": DROPOUT,
                                          "label_smoothing": DROPOUT, "val_fraction": DROPOUT,
                                          "image_rotate": Range(0.0, 180.0), "image_translate": DROPOUT,
                                          "image_scale": Range(0.0, 10.0, open="lo")}

    def validate(self) -> None:
        if len(set(self.inputs)) != len(self.inputs):
            raise ConfigError(f"inputs: lists a modality twice: {self.inputs}")
        known = modality_names()
        for i, m in enumerate(self.inputs):
            if m not in known:
                raise ConfigError(f"inputs[{i}]: {m!r} is not one of the registered modalities {known}")
        if len(self.image_scale) != 2 or not 0 < self.image_scale[0] <= self.image_scale[1]:
            raise ConfigError(f"image_scale: expected [low, high] with 0 < low <= high, got {self.image_scale}")
        seen: set[str] = set()
        for i, key in enumerate(self.groups):
            if not key.strip():
                raise ConfigError(f"groups[{i}]: empty; expected a key of the samples' meta, e.g. speaker")
            if "/" in key:
                raise ConfigError(f"groups[{i}]: {key!r} contains '/', which separates a group from its value "
                                  f"in metric names")
            if key in seen:
                raise ConfigError(f"groups[{i}]: {key!r} is listed twice")
            seen.add(key)
