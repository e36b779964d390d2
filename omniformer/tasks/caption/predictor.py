"""A trained captioner from Python: load a checkpoint folder, caption images (or recordings)::

    from omniformer.tasks.caption import Captioner
    captioner = Captioner.load("runs/caption-shapes/caption/best")
    captioner.caption("scene.png")                                  # "there are three objects"
    captioner.caption(["a.png", "b.png"], num_beams=1, do_sample=True, top_p=0.9, seed=0)
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from ...data.batching import collate
from ...data.image import ImageError
from ...data.audio import AudioError
from ...registry import get_modality
from ..seq2seq.predictor import Seq2SeqPredictor
from .config import CaptionConfig

TASK_NAME = "caption"


class CaptionError(ValueError):
    """An input the captioner cannot read (missing, not an image, not audio); the message says which."""


class Captioner(Seq2SeqPredictor):
    """A caption checkpoint ready to use: its model, recipe, tokenizer, preprocessors and decoding defaults."""

    task = TASK_NAME
    Config = CaptionConfig
    Error = CaptionError

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.inputs = list(self.task_config.inputs)
        # Each input's preprocessor as its modality makes it for evaluation (no augmentation).
        self.preprocessors = {m: get_modality(m).preprocessor(self.cfg.model) for m in self.inputs}

    def prepare(self, image: Any = None, audio: Any = None) -> dict[str, Any]:
        """One item from raw inputs: paths, file bytes, PIL images, or mono waveforms (NumPy, at
        the model's sample rate)."""
        given = {"image": image, "audio": audio}
        missing = [m for m in self.inputs if given[m] is None]
        if missing:
            raise CaptionError(f"this captioner reads {' and '.join(self.inputs)}; no {missing[0]} was given")
        unread = [m for m, v in given.items() if v is not None and m not in self.inputs]
        if unread:
            raise CaptionError(f"this captioner reads {' and '.join(self.inputs)}; it was not trained on {unread[0]}")
        item: dict[str, Any] = {"index": 0}
        for m in self.inputs:
            try:
                item[m] = self.preprocessors[m](given[m])
            except (ImageError, AudioError) as e:
                raise CaptionError(f"{m}: {e}") from None
        return item

    def caption_items(self, items: Sequence[dict[str, Any]], **options: Any) -> list[str]:
        """The caption of each prepared item, decoded together (the server's batch function)."""
        config = self.generation_config(**options)
        return self.decode(collate([{**it, "index": i} for i, it in enumerate(items)]), config)

    @torch.no_grad()
    def caption(self, images: Any = None, audio: Any = None, batch_size: int = 64, **options: Any) -> str | list[str]:
        """The caption of an image (a path, bytes or PIL image), or of each of a list of them;
        ``audio`` likewise for a model that hears. ``options``: any ``GenerationConfig`` field
        (``num_beams``, ``do_sample``, ``top_p``, ``seed``...)."""
        single = not isinstance(images if images is not None else audio, (list, tuple))
        count = 1 if single else len(images if images is not None else audio)
        def nth(values: Any, i: int) -> Any:
            return values if single or values is None else values[i]
        items = [self.prepare(nth(images, i), nth(audio, i)) for i in range(count)]
        out: list[str] = []
        for start in range(0, len(items), batch_size):
            out.extend(self.caption_items(items[start:start + batch_size], **options))
        return out[0] if single else out

    predict = caption
