"""The caption recipe's ``task:`` section: what the backbone reads, the text written, and how a
caption is judged."""
from __future__ import annotations

from dataclasses import dataclass, field

from ...config import ConfigError
from ..seq2seq.config import Seq2SeqConfig


CAPTION_INPUTS = ("image", "audio")


@dataclass
class CaptionConfig(Seq2SeqConfig):
    """Image (and/or audio) to text (``task:`` in a caption recipe).

    The backbone reads the inputs (``inputs``, the modalities' manifest fields), the decoder
    writes the ``target`` text. Every caption of a sample's image is one training pair; an
    evaluation captions each image once and scores it against all of its captions.
    """
    inputs: list[str] = field(default_factory=lambda: ["image"])
    target: str = "text"
    max_target_len: int = 32
    max_new_tokens: int = 31
    # A built-in dataset whose ``caption_judge`` says whether a caption is true of its sample
    # (ShapesWorld checks it against the scene). "": the recipe's data.dataset when it has one;
    # "none": no judging.
    judge: str = ""

    def validate(self) -> None:
        if not self.inputs:
            raise ConfigError(f"inputs: expected one or more of {', '.join(CAPTION_INPUTS)}, got none")
        unknown = [m for m in self.inputs if m not in CAPTION_INPUTS]
        if unknown:
            raise ConfigError(f"inputs: {unknown[0]!r} is not a captioned modality; expected some of "
                              f"{', '.join(CAPTION_INPUTS)}")
        if not self.target.strip():
            raise ConfigError("target: expected a manifest field name, got ''")
        super().validate()
