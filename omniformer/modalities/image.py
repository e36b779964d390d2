"""Images: a picture file resized and normalised (``data.image.ImagePreprocessor``) for ``ImageEmbedder``."""
from __future__ import annotations

import torch

from ..data.image import ImagePreprocessor, load_image
from ..model.encoders import ImageEmbedder
from .base import Modality, stack_present


def image_preprocessor(model, augment: bool) -> ImagePreprocessor:
    """Pixels for ``model`` (a ModelConfig); ``augment``: random crops and colour jitter.
    Never flipped: a mirrored scene turns every left/right question and caption into a lie."""
    return ImagePreprocessor.from_config(model.image, augment=augment, flip=False)


class ImageModality(Modality):
    """``image`` (B, C, size, size) normalised pixels; ``image_mask`` (B,) False: no image."""

    name = "image"
    fields = ("image",)
    embedder = ImageEmbedder

    def preprocessor(self, model, data=None, tokenizer=None) -> ImagePreprocessor:
        return image_preprocessor(model, augment=data is not None and data.augment)

    def collate(self, values, pad_value=None):
        return stack_present(values)

    def check_file(self, path, model) -> None:
        load_image(path)

    def example_inputs(self, model, batch, generator, length=None):
        c = model.image
        return {"image": torch.randn(batch, c.channels, c.size, c.size, generator=generator),
                "image_mask": torch.ones(batch, dtype=torch.bool)}

    def describe(self, model):
        c = model.image
        return {"size": c.size, "channels": c.channels, "mean": c.mean, "std": c.std,
                "resize": "the whole image, bilinear", "scale": "pixels / 255"}


MODALITY = ImageModality()
