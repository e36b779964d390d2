"""Manifests for recognition data as people usually have it: class folders and IDX files.

``image_folder_manifest`` reads the one-subfolder-per-class layout (``DIR/cat/*.jpg``), with
``DIR/train``, ``DIR/val``, ``DIR/test`` giving the splits when they are there and a seeded,
stratified draw giving them when not. ``idx_manifest`` unpacks MNIST-style IDX files into PNGs.
Each writes its manifest with
``write_manifest`` (atomically), so a failed run never leaves half a file, and returns a
``FolderSummary``: the counts per split and class, and the warnings about what was skipped.
"""
from __future__ import annotations

import gzip
import math
import os
import random
import struct
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .manifest import SPLITS, write_manifest


class FolderError(ValueError):
    """A folder cannot be turned into a manifest; the message names the path and what was expected."""


class IdxError(ValueError):
    """An IDX file cannot be read; the message names the file and what was expected."""


# Files that operating systems and tools leave in folders: skipped without a warning.
_SYSTEM_FILES = {"thumbs.db", "desktop.ini"}


def _is_hidden(path: Path) -> bool:
    return path.name.startswith(".") or path.name.lower() in _SYSTEM_FILES


def _visible_children(folder: Path) -> tuple[list[Path], list[Path]]:
    """(sub-folders, files) directly in ``folder``, sorted by name, hidden ones left out."""
    children = sorted((p for p in folder.iterdir() if not _is_hidden(p)), key=lambda p: p.name)
    return [p for p in children if p.is_dir()], [p for p in children if p.is_file()]


@dataclass
class FolderSummary:
    """What a manifest holds (samples per split and label) and what was skipped on the way.

    Kept apart from printing so a caller can assert on it and the CLI can print it."""

    manifest: Path
    counts: dict[str, Counter] = field(default_factory=dict)  # split -> label -> samples
    warnings: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(sum(c.values()) for c in self.counts.values())

    @property
    def labels(self) -> list[str]:
        found = {label for c in self.counts.values() for label in c}
        return sorted(found, key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s))

    def table(self) -> str:
        """Samples per label (rows) and split (columns), with totals."""
        splits = [s for s in SPLITS if s in self.counts]
        labels = self.labels
        width = max([len("label"), len("total"), *(len(label) for label in labels)])
        cols = [max(len(s), 6) for s in splits]
        lines = ["  " + f"{'label':<{width}}" + "".join(f"  {s:>{w}}" for s, w in zip(splits, cols))]
        for label in labels:
            lines.append("  " + f"{label:<{width}}"
                         + "".join(f"  {self.counts[s][label]:>{w}}" for s, w in zip(splits, cols)))
        lines.append("  " + f"{'total':<{width}}"
                     + "".join(f"  {sum(self.counts[s].values()):>{w}}" for s, w in zip(splits, cols)))
        return "\n".join(lines)


def _count(samples: list[dict]) -> dict[str, Counter]:
    counts: dict[str, Counter] = {}
    for sample in samples:
        counts.setdefault(sample["split"], Counter())[sample["label"]] += 1
    return {s: counts[s] for s in SPLITS if s in counts}


def _relative(path: Path, out_path: Path) -> str:
    return Path(os.path.relpath(path.resolve(), out_path.resolve().parent)).as_posix()


# ---------------------------------------------------------------------------------------------
# Class folders
# ---------------------------------------------------------------------------------------------

def _is_image(path: Path) -> bool:
    """Whether Pillow recognises the file's header (lazy: no pixel is decoded)."""
    try:
        with Image.open(path) as im:
            im.size  # noqa: B018 - the header has been parsed once this is known
        return True
    except Image.DecompressionBombError:
        return True  # an image, only too large: load_image (and ``data check``) says so by name
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return False


def _class_images(class_dir: Path, warnings: list[str]) -> list[Path]:
    """The images anywhere under one class folder, sorted; other files are named in a warning."""
    images = []
    for path in sorted(class_dir.rglob("*"), key=lambda p: p.relative_to(class_dir).as_posix()):
        rel = path.relative_to(class_dir)
        if any(_is_hidden(Path(part)) for part in rel.parts) or not path.is_file():
            continue
        if _is_image(path):
            images.append(path)
        else:
            warnings.append(f"{path}: not an image Pillow can read (expected PNG, JPEG, ... in a class "
                            f"folder), skipped")
    return images


def _class_folders(root: Path, warnings: list[str]) -> dict[str, list[Path]]:
    """{class name: its images} for the class folders directly in ``root``; empty ones are skipped."""
    folders, files = _visible_children(root)
    if not folders:
        found = f"; found {len(files)} file(s) directly in it" if files else " (it is empty)"
        raise FolderError(f"{root}: no class folders; expected {root}/<class>/<image>{found}")
    if files:
        shown = ", ".join(p.name for p in files[:3]) + (", ..." if len(files) > 3 else "")
        warnings.append(f"{root}: {len(files)} file(s) beside the class folders, not in any class "
                        f"({shown}), skipped")
    classes = {}
    for folder in folders:
        images = _class_images(folder, warnings)
        if not images:
            warnings.append(f"{folder}: class folder holds no images, class {folder.name!r} skipped")
            continue
        if len(images) == 1:
            warnings.append(f"{folder}: class {folder.name!r} has only one image; too few to learn or "
                            f"evaluate it")
        classes[folder.name] = images
    if not classes:
        raise FolderError(f"{root}: none of its {len(folders)} class folder(s) holds an image")
    return classes


def _stratified_splits(images: list[Path], label: str, val_fraction: float, test_fraction: float,
                       seed: int) -> dict[Path, str]:
    """Each image's split: a seeded shuffle of one class, cut by the fractions (rounded half up).

    The shuffle is seeded by ``seed`` and the class name, so adding or removing a class leaves
    the other classes' splits as they were. Train always keeps at least one image."""
    order = list(images)
    random.Random(f"{seed}:{label}").shuffle(order)
    n = len(order)
    n_test = int(n * test_fraction + 0.5)
    n_val = int(n * val_fraction + 0.5)
    while n_test + n_val > n - 1 and (n_test or n_val):
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    splits = ["test"] * n_test + ["val"] * n_val + ["train"] * (n - n_test - n_val)
    return dict(zip(order, splits))


def _unique_ids(paths: list[Path], root: Path) -> list[str]:
    """Ids from the paths under ``root`` without the suffix, keeping it where that would collide."""
    stems = [p.relative_to(root).with_suffix("").as_posix() for p in paths]
    repeated = {s for s, n in Counter(stems).items() if n > 1}
    return [p.relative_to(root).as_posix() if s in repeated else s for p, s in zip(paths, stems)]


def image_folder_manifest(folder: str | Path, out_path: str | Path, val_fraction: float | None = None,
                          test_fraction: float | None = None, seed: int = 0) -> FolderSummary:
    """Write a manifest (``id``, ``image``, ``label``, ``split``) for a folder of class folders.

    Two layouts: ``folder/<class>/<image>``, split by drawing ``val_fraction`` and
    ``test_fraction`` of every class (default 0.1 each; stratified, seeded by ``seed``); or
    ``folder/{train,val,test}/<class>/<image>`` (any subset), where the folders are the splits
    and the fractions must not be given. The label is the class folder's name; images are found
    by their header, anywhere under a class folder; hidden files are ignored. Problems that
    lose data are errors: no class folders, a val/test class that train lacks, folders beside the
    split folders. The rest (an empty class, a non-image file, files beside the class folders, a
    class of one image) are warnings in the returned summary.
    """
    folder, out_path = Path(folder), Path(out_path)
    if not folder.is_dir():
        raise FolderError(f"{folder}: folder does not exist")
    if out_path.is_dir():
        raise FolderError(f"--out {out_path}: is a folder; expected the manifest's file path (e.g. manifest.jsonl)")
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if value is not None and not 0 <= value < 1:
            raise FolderError(f"{name}: must be in [0, 1), got {value}")
    warnings: list[str] = []
    subfolders, _ = _visible_children(folder)
    split_dirs = {s: folder / s for s in SPLITS if (folder / s).is_dir()}

    if split_dirs:
        if val_fraction is not None or test_fraction is not None:
            raise FolderError(f"{folder}: has split folders ({', '.join(split_dirs)}), which give the splits; "
                              f"val_fraction/test_fraction apply only to a folder of class folders")
        others = [p.name for p in subfolders if p.name not in SPLITS]
        if others:
            raise FolderError(f"{folder}: has split folders ({', '.join(split_dirs)}) and also "
                              f"{', '.join(others)}; expected either only train/val/test folders, each "
                              f"holding class folders, or only class folders")
        _, stray = _visible_children(folder)
        if stray:
            warnings.append(f"{folder}: {len(stray)} file(s) beside the split folders "
                            f"({', '.join(p.name for p in stray[:3])}{', ...' if len(stray) > 3 else ''}), skipped")
        by_split = {s: _class_folders(d, warnings) for s, d in split_dirs.items()}
        if "train" in by_split:
            for split, classes in by_split.items():
                missing = sorted(set(classes) - set(by_split["train"]))
                if missing:
                    raise FolderError(f"{split_dirs[split]}: class(es) {', '.join(missing)} are not in "
                                      f"{split_dirs['train']}; a model cannot learn a class it never "
                                      f"sees in training")
        entries = [(path, label, split) for split, classes in by_split.items()
                   for label, paths in classes.items() for path in paths]
    else:
        val_fraction = 0.1 if val_fraction is None else val_fraction
        test_fraction = 0.1 if test_fraction is None else test_fraction
        if val_fraction + test_fraction >= 1:
            raise FolderError(f"val_fraction + test_fraction must be below 1 (train needs images), "
                              f"got {val_fraction} + {test_fraction}")
        classes = _class_folders(folder, warnings)
        entries = []
        for label, paths in classes.items():
            split_of = _stratified_splits(paths, label, val_fraction, test_fraction, seed)
            entries.extend((path, label, split_of[path]) for path in paths)
        drawn = Counter(split for _, _, split in entries)
        for split, fraction in (("val", val_fraction), ("test", test_fraction)):
            if fraction > 0 and not drawn[split]:
                warnings.append(f"{folder}: {split}_fraction={fraction} but the classes are too small for "
                                f"any image to go to {split}")

    ids = _unique_ids([path for path, _, _ in entries], folder)
    samples = [{"id": sample_id, "image": _relative(path, out_path), "label": label, "split": split}
               for sample_id, (path, label, split) in zip(ids, entries)]
    write_manifest(out_path, samples)
    return FolderSummary(out_path, _count(samples), warnings)


# ---------------------------------------------------------------------------------------------
# IDX files (MNIST and its relatives)
# ---------------------------------------------------------------------------------------------

IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions: count x rows x cols
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension: count


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, un-gzipped when it starts with the gzip magic (whatever its suffix)."""
    if not path.is_file():
        raise IdxError(f"{path}: file does not exist")
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as e:
        raise IdxError(f"{path}: gzip data is truncated or corrupt ({e})") from None


def read_idx(path: str | Path, magic: int) -> np.ndarray:
    """An IDX file's array, gzipped or not, checked against the ``magic`` number it should have.

    The header (magic, then one big-endian uint32 per dimension) must promise exactly the bytes
    that follow, so a truncated download or a swapped images/labels argument fails here by name."""
    path = Path(path)
    data = _read_bytes(path)
    kinds = {IDX_IMAGES_MAGIC: "IDX images (uint8, count x rows x cols)", IDX_LABELS_MAGIC: "IDX labels (uint8, count)"}
    expected = kinds.get(magic, f"IDX magic 0x{magic:08x}")
    if len(data) < 4:
        raise IdxError(f"{path}: {len(data)} bytes, too short for an IDX header; expected {expected}")
    (found,) = struct.unpack(">I", data[:4])
    if found != magic:
        hint = f" ({kinds[found]}: are the arguments swapped?)" if found in kinds else ""
        raise IdxError(f"{path}: magic number 0x{found:08x}{hint}; expected 0x{magic:08x}, {expected}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IdxError(f"{path}: truncated header ({len(data)} bytes, {header} needed for {ndim} dimensions)")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    needed = header + math.prod(shape)
    if len(data) != needed:
        what = "truncated" if len(data) < needed else "longer than its header says (wrong file?)"
        raise IdxError(f"{path}: {what}: header says {' x '.join(map(str, shape))} = {needed} bytes, "
                       f"file has {len(data)}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def parse_index_splits(text: str, count: int) -> list[tuple[str, int, int]]:
    """``"train=0:8000,test=8000:10000"`` -> [(split, start, end)], half-open, within ``count``.

    ``start:`` runs to the end and ``:end`` starts at 0; ranges may not overlap, and a split may
    have several."""
    ranges = []
    for part in (p.strip() for p in text.split(",")):
        name, eq, span = part.partition("=")
        start_text, colon, end_text = span.partition(":")
        if not eq or not colon or name not in SPLITS:
            raise IdxError(f"splits: {part!r} is not split=start:end with split one of {', '.join(SPLITS)} "
                           f"(e.g. train=0:8000,test=8000:10000)")
        try:
            start = int(start_text) if start_text.strip() else 0
            end = int(end_text) if end_text.strip() else count
        except ValueError:
            raise IdxError(f"splits: {part!r}: start and end must be whole numbers") from None
        if not 0 <= start < end <= count:
            raise IdxError(f"splits: {part!r}: need 0 <= start < end <= {count} (the number of images)")
        ranges.append((name, start, end))
    ordered = sorted(ranges, key=lambda r: r[1])
    for (a, _, a_end), (b, b_start, _) in zip(ordered, ordered[1:]):
        if b_start < a_end:
            raise IdxError(f"splits: {a} and {b} overlap at index {b_start}; ranges must be disjoint")
    return ranges


def idx_manifest(images_path: str | Path, labels_path: str | Path, out_dir: str | Path,
                 splits: str | None = None) -> FolderSummary:
    """Unpack IDX images and labels into ``out_dir/images/*.png`` and ``out_dir/manifest.jsonl``.

    Each sample is ``id`` (the zero-padded index), ``image``, ``label`` (the number as a string,
    so it reads like a folder name) and ``split``, from ``splits`` as ``parse_index_splits``
    reads it (default: all train). Images outside every range are neither written nor listed.
    """
    images_path, labels_path, out_dir = Path(images_path), Path(labels_path), Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise IdxError(f"--out {out_dir}: is a file; expected a folder for images/ and manifest.jsonl")
    images = read_idx(images_path, IDX_IMAGES_MAGIC)
    labels = read_idx(labels_path, IDX_LABELS_MAGIC)
    if len(images) != len(labels):
        raise IdxError(f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels; "
                       f"expected one label per image")
    if len(images) == 0:
        raise IdxError(f"{images_path}: holds no images")
    ranges = parse_index_splits(splits if splits is not None else f"train=0:{len(images)}", len(images))
    digits = max(5, len(str(len(images) - 1)))
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    samples = []
    for split, start, end in sorted(ranges, key=lambda r: r[1]):
        for index in range(start, end):
            name = f"{index:0{digits}d}"
            Image.fromarray(images[index]).save(out_dir / "images" / f"{name}.png")
            samples.append({"id": name, "image": f"images/{name}.png", "label": str(int(labels[index])),
                            "split": split})
    manifest = write_manifest(out_dir / "manifest.jsonl", samples)
    return FolderSummary(manifest, _count(samples))


# ---------------------------------------------------------------------------------------------
# Folders of recordings
# ---------------------------------------------------------------------------------------------

