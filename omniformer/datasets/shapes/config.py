"""ShapesWorld's options: how many scenes, their size and layout, how many voices."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ...config import require


@dataclass
class ShapesConfig:
    images: int = 10000
    size: int = 64
    min_objects: int = 2
    max_objects: int = 6
    # "free": objects anywhere (the standard setting); "grid": one object per cell of a
    # grid aligned with the image patches, the easier setting the quickstart uses.
    layout: Literal["free", "grid"] = "free"
    grid: int = 4
    voices: int = 5
    seed: int = 0

    def validate(self) -> None:
        require(self.images >= 1, f"images: must be >= 1, got {self.images}")
        require(self.size >= 16, f"size: must be >= 16 pixels, got {self.size}")
        require(1 <= self.min_objects <= self.max_objects <= 6,
               f"min_objects/max_objects: need 1 <= min <= max <= 6, got {self.min_objects}/{self.max_objects}")
        if self.layout == "grid":
            require(self.grid * self.grid >= self.max_objects,
                   f"grid: {self.grid}x{self.grid} cells cannot hold {self.max_objects} objects")
        require(2 <= self.voices <= 8, f"voices: must be 2..8, got {self.voices}")
