"""Parallel text for translation: a manifest from sentence-aligned files, and the dataset."""
from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any, Sequence

import torch

from ...data.batching import MultimodalDataset
from ...data.manifest import SPLITS, ManifestError, write_manifest
from ...data.text import Tokenizer


class ParallelDataset(MultimodalDataset):
    """Source (``task.source``, read as the backbone's text) and ``target`` word pieces, the
    target from [CLS] to [SEP] and cut at ``max_target_len`` (keeping [SEP])."""

    def __init__(self, manifest: str | Path, samples: Sequence[dict[str, Any]], tokenizer: Tokenizer,
                 source: str, target: str, text_max_len: int, max_target_len: int):
        super().__init__(manifest, samples, tokenizer=tokenizer, text_field=source, text_max_len=text_max_len,
                         modes="text")
        self.target_field, self.max_target_len = target, max_target_len

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = super().__getitem__(index)
        target = self.samples[index].get(self.target_field)
        if target:
            item["target"] = torch.tensor(self.tokenizer.encode(target, self.max_target_len), dtype=torch.long)
        return item


def _read_lines(path: Path) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            return [line.rstrip("\n") for line in f]
    except UnicodeDecodeError as e:
        raise ManifestError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except (OSError, EOFError) as e:
        raise ManifestError(f"{path}: cannot be read ({e})") from None


def parallel_manifest(folder: str | Path, source: str, target: str, out: str | Path) -> dict[str, int]:
    """A translation manifest from ``folder/{split}.{lang}`` (or ``.gz``) files, one sentence a
    line, aligned by line: ``text`` is the ``source`` language's sentence, ``target`` the
    ``target``'s. Returns the pairs per split; a pair with an empty side is left out and counted."""
    folder = Path(folder)
    samples, counts = [], {}
    for split in SPLITS:
        files = []
        for lang in (source, target):
            found = [p for p in (folder / f"{split}.{lang}", folder / f"{split}.{lang}.gz") if p.is_file()]
            files.append(found[0] if found else None)
        if files == [None, None]:
            continue
        if None in files:
            missing = f"{split}.{source if files[0] is None else target}"
            raise ManifestError(f"{folder}: has {split} files for one language but no {missing}[.gz]")
        src, tgt = _read_lines(files[0]), _read_lines(files[1])
        if len(src) != len(tgt):
            raise ManifestError(f"{files[0]} has {len(src)} lines, {files[1]} has {len(tgt)}: not aligned")
        kept = 0
        for i, (s, t) in enumerate(zip(src, tgt)):
            if s.strip() and t.strip():
                samples.append({"id": f"{split}-{i}", "text": s.strip(), "target": t.strip(), "split": split})
                kept += 1
        counts[split], counts[f"{split}_empty"] = kept, len(src) - kept
    if not samples:
        raise ManifestError(f"{folder}: no {{train,val,test}}.{source}[.gz] with {{split}}.{target}[.gz] beside it")
    write_manifest(out, samples)
    return counts
