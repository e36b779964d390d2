"""Captioning data: (inputs, caption) pairs for training, and one entry per distinct input
(an image, a recording) with all of its captions for evaluation."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ...data.batching import MultimodalDataset
from ...data.text import Tokenizer
from ..common import samples_by_split
from .config import CaptionConfig


def captioned(sample: dict, task: CaptionConfig) -> bool:
    """A training pair: some caption text and every input the task reads."""
    return bool(sample.get(task.target)) and all(sample.get(m) for m in task.inputs)


def caption_pairs(manifest: str | Path, task: CaptionConfig) -> dict[str, list[dict]]:
    """The manifest's (inputs, caption) samples by split."""
    return samples_by_split(manifest, lambda s: captioned(s, task))


def by_input(samples: Sequence[dict], task: CaptionConfig) -> list[tuple[dict, list[str]]]:
    """(first sample, every caption) for each distinct input (the inputs' file names together),
    in manifest order: what an evaluation captions once and scores against all references."""
    groups: dict[tuple, tuple[dict, list[str]]] = {}
    for s in samples:
        key = tuple(str(s[m]) for m in task.inputs)
        if key not in groups:
            groups[key] = (s, [])
        groups[key][1].append(s[task.target])
    return list(groups.values())


class CaptionDataset(MultimodalDataset):
    """The task's inputs (each through its modality's preprocessor) and the caption as
    ``target`` word pieces, from [CLS] to [SEP], cut at ``max_target_len`` (keeping [SEP])."""

    def __init__(self, manifest: str | Path, samples: Sequence[dict[str, Any]], tokenizer: Tokenizer,
                 preprocessors: dict[str, Callable], task: CaptionConfig):
        super().__init__(manifest, samples, preprocessors=preprocessors, fields={m: m for m in task.inputs})
        self.caption_tokenizer, self.target_field, self.max_target_len = tokenizer, task.target, task.max_target_len

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = super().__getitem__(index)
        caption = self.samples[index].get(self.target_field)
        if caption:
            item["target"] = torch.tensor(self.caption_tokenizer.encode(caption, self.max_target_len), dtype=torch.long)
        return item
