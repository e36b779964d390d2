"""The classify recipe's ``task:`` section: what feeds the classifier, its head, its loss and
how it is scored."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ...config import ConfigError

MODALITIES = ("image", "audio", "text")


@dataclass
class ClassifyConfig:
    """Head, loss and evaluation choices of the classify task (``task:`` in a recipe).

    ``inputs`` empty means every modality of ``model.modalities`` that the training samples
    have, so an image-only manifest trains an image-only model without saying so.
    """
    inputs: list[Literal["image", "audio", "text"]] = field(default_factory=list)
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

    def validate(self) -> None:
        if len(set(self.inputs)) != len(self.inputs):
            raise ConfigError(f"inputs: lists a modality twice: {self.inputs}")
        if self.head_hidden < 0:
            raise ConfigError(f"head_hidden: must be >= 0 (0: twice the pooled width), got {self.head_hidden}")
        if not 0 <= self.head_dropout < 1:
            raise ConfigError(f"head_dropout: must be in [0, 1), got {self.head_dropout}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing: must be in [0, 1), got {self.label_smoothing}")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"val_fraction: must be in [0, 1), got {self.val_fraction}")
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
