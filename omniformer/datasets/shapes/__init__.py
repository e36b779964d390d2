"""ShapesWorld: Omniformer's built-in multimodal dataset of coloured shapes.

Images of 2-6 coloured squares, circles and triangles; true captions; Sort-of-CLEVR style
questions with a closed, balanced answer vocabulary; and every caption and question spoken
in several voices (one held out for testing). ``generate_shapes`` writes it all with a
manifest.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from ...config import ConfigError, from_dict, to_dict
from .config import ShapesConfig
from .generate import generate_shapes
from .language import ANSWERS, FAMILIES
from .scene import COLOURS, SHAPES

__all__ = ["generate_shapes", "make", "describe", "caption_judge", "ShapesConfig", "Config", "ANSWERS", "FAMILIES", "COLOURS",
           "SHAPES"]

Config = ShapesConfig


def make(manifest: str | Path, options: dict[str, Any], progress: bool = True) -> Path:
    """ShapesWorld at ``manifest`` (its folder holds the images and speech), written if absent;
    one already there must have been made with the same options."""
    cfg = from_dict(ShapesConfig, options, "data.dataset_options")
    manifest = Path(manifest)
    out, info = manifest.parent, manifest.parent / "info.json"
    if manifest.is_file():
        made_with = json.loads(info.read_text()).get("config", {}) if info.is_file() else None
        wanted = to_dict(cfg)
        if made_with is not None and made_with != wanted:
            differ = ", ".join(f"{k} {made_with.get(k)!r} (asked: {wanted.get(k)!r})"
                               for k in sorted(set(made_with) | set(wanted)) if made_with.get(k) != wanted.get(k))
            flow = yaml.safe_dump(made_with, default_flow_style=True, sort_keys=False, width=10 ** 6).strip()
            raise FileExistsError(f"{out} holds ShapesWorld made with other settings: {differ}. To use it as it "
                                  f"is, give its settings: '--data.dataset_options={flow}'; else choose another "
                                  f"data.manifest folder or delete it")
        return manifest
    if manifest.name != "manifest.jsonl":
        raise ConfigError(f"data.manifest: {manifest} does not exist, and ShapesWorld (data.dataset=shapes) "
                          f"writes DIR/manifest.jsonl; for your own data set data.dataset to ''")
    # Generation runs in processes of its own, whatever the training loader's worker count; its
    # output is the same for any number of them, so every core takes a share.
    return generate_shapes(out, cfg, workers=os.cpu_count() or 1, progress=progress)


def describe(options: dict[str, Any]) -> str:
    """The setting in words, for the quickstart's first line."""
    s = from_dict(ShapesConfig, options, "data.dataset_options")
    layout = "objects on a grid aligned with the image patches (the easier setting)" if s.layout == "grid" \
        else "objects placed freely (the standard setting)"
    return (f"ShapesWorld {s.size}x{s.size}, {s.min_objects}-{s.max_objects} objects, {layout}, "
            f"{s.images} images, {s.voices} voices (one held out for test)")


def caption_judge(manifest: str | Path):
    """``judge(sample, caption) -> bool``: whether a caption is true of the scene of a
    ShapesWorld sample (its ``meta.objects``), by the generator's own semantics; the image size
    is read from the manifest's ``info.json``."""
    from .language import caption_is_true
    from .scene import Obj
    info = Path(manifest).parent / "info.json"
    try:
        size = int(json.loads(info.read_text())["config"]["size"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{info}: cannot read ShapesWorld's image size ({e}); judging captions needs the "
                          f"info.json that 'omniformer data shapes' writes beside the manifest") from None

    def judge(sample: dict, caption: str) -> bool:
        objects = (sample.get("meta") or {}).get("objects")
        if objects is None:
            raise ValueError(f"sample {sample.get('id')!r}: no meta.objects, so no ShapesWorld scene to judge against")
        return caption_is_true(caption, [Obj.from_meta(o) for o in objects], size)

    return judge
