"""ShapesWorld scenes: sample non-overlapping coloured shapes and render them.

A scene is a list of ``Obj``: each colour appears at most once, so "the red object" always
names exactly one object. Coordinates are pixels; pixel ``i`` covers ``[i, i + 1)``, so an
object whose box starts at ``left`` with side ``size`` has its centre at ``left + size / 2``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COLOURS = ["red", "green", "blue", "orange", "gray", "yellow"]
SHAPES = ["square", "circle", "triangle"]
RGB = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
    "orange": (245, 150, 30), "gray": (128, 128, 128), "yellow": (230, 210, 30),
}
# Object side as a fraction of the image side (free layout) or of the cell side (grid layout).
FREE_SIZE = (0.15, 0.22)
GRID_SIZE = (0.6, 0.85)
# Per-scene shape mix ~ Dirichlet(SHAPE_ALPHA): below 1 it favours scenes dominated by one
# shape, so "how many objects have the same shape ..." reaches its high answers often enough
# to be balanced; uniform shapes would make "five" and "six" almost never occur.
SHAPE_ALPHA = 0.5


@dataclass(frozen=True)
class Obj:
    colour: str
    shape: str
    left: int
    top: int
    size: int
    cell: tuple[int, int] | None = None   # (row, col) in the grid layout

    @property
    def x(self) -> float:
        return self.left + self.size / 2

    @property
    def y(self) -> float:
        return self.top + self.size / 2

    def to_meta(self) -> dict:
        meta = {"colour": self.colour, "shape": self.shape, "x": self.x, "y": self.y, "size": self.size}
        if self.cell is not None:
            meta["cell"] = list(self.cell)
        return meta

    @classmethod
    def from_meta(cls, meta: dict) -> "Obj":
        """The object ``to_meta`` described (its box back from its centre and side)."""
        cell = tuple(meta["cell"]) if meta.get("cell") is not None else None
        return cls(meta["colour"], meta["shape"], int(round(meta["x"] - meta["size"] / 2)),
                   int(round(meta["y"] - meta["size"] / 2)), meta["size"], cell)


def _boxes_apart(a: tuple[int, int, int], b: tuple[int, int, int], gap: int) -> bool:
    (ax, ay, asz), (bx, by, bsz) = a, b
    return (ax + asz + gap <= bx or bx + bsz + gap <= ax or
            ay + asz + gap <= by or by + bsz + gap <= ay)


def _free_boxes(rng: np.random.Generator, n: int, image: int) -> list[tuple[int, int, int]]:
    lo, hi = (max(3, round(f * image)) for f in FREE_SIZE)
    while True:  # rejection sampling; restart the scene when an object cannot be placed
        boxes: list[tuple[int, int, int]] = []
        for _ in range(n):
            size = int(rng.integers(lo, hi + 1))
            for _try in range(200):
                box = (int(rng.integers(0, image - size + 1)), int(rng.integers(0, image - size + 1)), size)
                if all(_boxes_apart(box, other, gap=1) for other in boxes):
                    boxes.append(box)
                    break
            else:
                break
        if len(boxes) == n:
            return boxes


def _grid_boxes(rng: np.random.Generator, n: int, image: int, grid: int):
    cell = image / grid
    lo, hi = (max(3, int(f * cell)) for f in GRID_SIZE)
    cells = rng.choice(grid * grid, size=n, replace=False)
    out = []
    for c in cells:
        row, col = divmod(int(c), grid)
        size = int(rng.integers(lo, hi + 1))
        # Keep a 1-pixel margin inside the cell; the remaining slack is the jitter.
        x0, x1 = int(np.ceil(col * cell)) + 1, int((col + 1) * cell) - 1 - size
        y0, y1 = int(np.ceil(row * cell)) + 1, int((row + 1) * cell) - 1 - size
        left = int(rng.integers(x0, max(x0, x1) + 1))
        top = int(rng.integers(y0, max(y0, y1) + 1))
        out.append((left, top, size, (row, col)))
    return out


def sample_scene(rng: np.random.Generator, image: int, min_objects: int, max_objects: int,
                 layout: str = "free", grid: int = 4) -> list[Obj]:
    n = int(rng.integers(min_objects, max_objects + 1))
    colours = [COLOURS[i] for i in rng.choice(len(COLOURS), size=n, replace=False)]
    mix = rng.dirichlet([SHAPE_ALPHA] * len(SHAPES))
    shapes = [SHAPES[i] for i in rng.choice(len(SHAPES), size=n, p=mix)]
    if layout == "grid":
        boxes = _grid_boxes(rng, n, image, grid)
        return [Obj(c, s, l, t, z, cell) for c, s, (l, t, z, cell) in zip(colours, shapes, boxes)]
    boxes = _free_boxes(rng, n, image)
    return [Obj(c, s, l, t, z) for c, s, (l, t, z) in zip(colours, shapes, boxes)]


def render(objects: list[Obj], image: int) -> Image.Image:
    """Flat colours, no anti-aliasing: every pixel is background or exactly one object colour."""
    img = Image.new("RGB", (image, image), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for o in objects:
        x0, y0, x1, y1 = o.left, o.top, o.left + o.size - 1, o.top + o.size - 1
        colour = RGB[o.colour]
        if o.shape == "square":
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        elif o.shape == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        else:  # an upright triangle filling its box
            draw.polygon([((x0 + x1) / 2, y0), (x0, y1), (x1, y1)], fill=colour)
    return img


def save_png(img: Image.Image, path: Path) -> None:
    # Pillow writes no timestamps into PNGs, so the bytes depend only on the pixels.
    img.save(path, format="PNG", compress_level=6)
