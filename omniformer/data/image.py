"""Images in: decode anything Pillow reads to RGB, then resize, augment and normalise.

``load_image`` is the one place that turns a file into pixels, so every image mode is handled
here once: transparency is composited on white, 16-bit and float images are rescaled (a naive
``convert("RGB")`` clips them to white), and the EXIF orientation is applied.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps

from ..config import ImageConfig


class ImageError(ValueError):
    """An image cannot be used; the message names the file (or ``<bytes>``) and what was expected."""


def _name(source: str | Path | bytes) -> str:
    return "<bytes>" if isinstance(source, (bytes, bytearray)) else str(source)


def _open(source: str | Path | bytes) -> Image.Image:
    if isinstance(source, (bytes, bytearray)):
        return Image.open(io.BytesIO(source))
    if not Path(source).is_file():
        from .shards import read_member, tar_member
        member = tar_member(source)  # DIR/shard-000003.tar/000123.image.png: a tar shard's member
        if member is None:
            raise ImageError(f"{source}: file does not exist")
        return Image.open(io.BytesIO(read_member(*member)))
    return Image.open(source)


def _scale_to_8bit(values: np.ndarray, full_scale: float) -> np.ndarray:
    """Map integer/float pixels to 0..255; values outside 0..full_scale are min-max stretched."""
    values = values.astype(np.float64)
    lo, hi = float(values.min()), float(values.max())
    if lo < 0 or hi > full_scale:
        values = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    else:
        values = values / full_scale
    return np.round(values * 255).astype(np.uint8)


def _to_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode.startswith("I;16"):
        return Image.fromarray(_scale_to_8bit(np.asarray(im), 65535)).convert("RGB")
    if mode == "I":
        # 16-bit PNG/TIFF greys decode as "I" in some Pillow versions: treat as 0..65535.
        return Image.fromarray(_scale_to_8bit(np.asarray(im), 65535)).convert("RGB")
    if mode == "F":
        # Float images are conventionally 0..1; anything else is stretched to its range.
        return Image.fromarray(_scale_to_8bit(np.nan_to_num(np.asarray(im)), 1.0)).convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in im.info) \
        or (mode in ("L", "RGB") and "transparency" in im.info)
    if has_alpha:
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def load_image(source: str | Path | bytes, max_pixels: int = 40_000_000) -> Image.Image:
    """Decode ``source`` (a path or the file's bytes) to an RGB image.

    Any Pillow mode is accepted: 1, L, LA, P (with or without transparency), RGB, RGBA, CMYK,
    I;16, I and F. Transparency is composited on white; 16-bit and float pixels are scaled to
    0..255; the EXIF orientation is applied. ``max_pixels`` guards against decompression bombs:
    the size in the header is checked before any pixel is decoded.
    """
    name = _name(source)
    try:
        im = _open(source)
    except ImageError:
        raise
    except Exception as e:  # UnidentifiedImageError, DecompressionBombError, OSError, ...
        raise ImageError(f"{name}: not a readable image ({e})") from None
    with im:
        width, height = im.size
        if width * height > max_pixels:
            raise ImageError(f"{name}: image is {width}x{height} = {width * height} pixels, "
                             f"more than max_pixels={max_pixels}")
        try:
            im.load()  # Image.open is lazy: truncated or corrupt data only fails here
            im = ImageOps.exif_transpose(im)
            return _to_rgb(im)
        except Exception as e:
            raise ImageError(f"{name}: cannot decode the image data, truncated or corrupt ({e})") from None


class ImagePreprocessor:
    """Image -> normalised float tensor (channels, size, size).

    Without augmentation the output is deterministic: the whole image is resized to
    size x size (bilinear, antialiased, with ``reducing_gap`` so huge images shrink fast).

    Augmentation is task-aware. ``augment=True`` takes a random crop covering ``crop_scale`` of
    the image area (mild by default, so objects near the border survive) and, if
    ``color_jitter > 0``, jitters brightness, contrast and saturation by up to that factor.
    ``flip`` is separate and off by default: a horizontal flip silently turns "left of" into
    "right of", corrupting spatial questions and captions. Turn it on only for tasks where
    left/right does not matter. With ``seed`` set, draws are reproducible; note that DataLoader
    workers forked from one instance start from the same random state.
    """

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float], augment: bool = False,
                 flip: bool = False, crop_scale: tuple[float, float] = (0.85, 1.0), color_jitter: float = 0.0,
                 seed: int | None = None, channels: int = 3):
        if channels not in (1, 3):
            raise ValueError(f"channels: must be 1 or 3, got {channels}")
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"mean/std: need {channels} values each, got {list(mean)} and {list(std)}")
        if not 0 < crop_scale[0] <= crop_scale[1] <= 1:
            raise ValueError(f"crop_scale: need 0 < low <= high <= 1, got {crop_scale}")
        self.size, self.channels = size, channels
        self.augment, self.flip = augment, flip
        self.crop_scale, self.color_jitter = tuple(crop_scale), color_jitter
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.rng = np.random.default_rng(seed)

    @classmethod
    def from_config(cls, cfg: ImageConfig, augment: bool = False, flip: bool = False, **kwargs) -> "ImagePreprocessor":
        return cls(cfg.size, cfg.mean, cfg.std, augment=augment, flip=flip, channels=cfg.channels, **kwargs)

    def _random_crop(self, im: Image.Image) -> Image.Image:
        # Same aspect ratio as the image: stretching shapes would change what they look like.
        side = np.sqrt(self.rng.uniform(*self.crop_scale))
        w, h = max(1, round(im.width * side)), max(1, round(im.height * side))
        left = int(self.rng.integers(0, im.width - w + 1))
        top = int(self.rng.integers(0, im.height - h + 1))
        return im.crop((left, top, left + w, top + h))

    def _jitter(self, im: Image.Image) -> Image.Image:
        for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
            im = enhance(im).enhance(self.rng.uniform(1 - self.color_jitter, 1 + self.color_jitter))
        return im

    def __call__(self, image: Image.Image | str | Path | bytes) -> torch.Tensor:
        im = image if isinstance(image, Image.Image) else load_image(image)
        if im.mode != "RGB":
            im = _to_rgb(im)
        if self.augment:
            im = self._random_crop(im)
        im = im.resize((self.size, self.size), Image.BILINEAR, reducing_gap=2.0)
        if self.augment and self.color_jitter > 0:
            im = self._jitter(im)
        if self.flip and self.rng.random() < 0.5:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        if self.channels == 1:
            im = im.convert("L")
        pixels = np.asarray(im, dtype=np.float32).reshape(self.size, self.size, self.channels) / 255.0
        tensor = torch.from_numpy(pixels).permute(2, 0, 1).contiguous()
        return (tensor - self.mean) / self.std
