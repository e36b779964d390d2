"""The manifest: Omniformer's one data contract.

A manifest is JSON Lines, one sample a line. Paths are relative to the manifest's folder.
A sample carries any subset of these fields: the fields of the registered modalities
(``Modality.fields``; the built-ins below) and the manifest's own (``CORE_FIELDS``):

    id              unique string
    image           path to an image (PNG, JPEG, ... anything Pillow decodes)      image
    text            a caption or any text for the sample                           text
    audio           path to speech or sound for the sample (WAV, FLAC, OGG)        audio
    question        a question in text                                             text
    question_audio  the question as speech                                         audio
    answer          the answer (a string from a closed vocabulary for QA)
    label           a class label (string or integer)
    split           one of train, val, test
    meta            a JSON object, free for the dataset's own use

``check_manifest`` validates every line and returns every problem with its line and field;
``read_manifest`` stops at structural problems (bad JSON, unknown fields) with the same detail.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:
    from ..modalities.base import Modality

CORE_FIELDS = ("id", "answer", "label", "split", "meta")  # the fields no modality carries
SPLITS = ("train", "val", "test")


def modality_fields() -> dict[str, "Modality"]:
    """Each manifest field that carries a registered modality -> that modality, in registry order."""
    from ..registry import get_modality, modality_names
    return {f: modality for name in modality_names() for modality in [get_modality(name)] for f in modality.fields}


def allowed_fields(carriers: dict[str, "Modality"] | None = None) -> tuple[str, ...]:
    """Every field a sample may carry: ``id``, the registered modalities' fields, then the rest of the core."""
    return ("id", *(modality_fields() if carriers is None else carriers), *CORE_FIELDS[1:])


class ManifestError(ValueError):
    """A manifest cannot be read; the message names the file, line and field."""


@dataclass(frozen=True)
class Problem:
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.field}: {self.message}"


def _structural_problems(line_no: int, raw: str, carriers: dict[str, "Modality"]) -> tuple[dict | None, list[Problem]]:
    try:
        sample = json.loads(raw)
    except json.JSONDecodeError as e:
        return None, [Problem(line_no, "<json>", f"not valid JSON ({e.msg} at column {e.colno})")]
    if not isinstance(sample, dict):
        return None, [Problem(line_no, "<json>", f"expected a JSON object, got {type(sample).__name__}")]
    problems = []
    allowed = allowed_fields(carriers)
    for key in sample:
        if key not in allowed:
            problems.append(Problem(line_no, key, f"unknown field; allowed: {', '.join(allowed)}"))
    texts = ("answer", *(f for f, m in carriers.items() if not m.files))  # values held inline, not paths
    for key in ("id", *carriers, "answer"):
        value = sample.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            problems.append(Problem(line_no, key, f"expected a string, got {json.dumps(value)}"))
        elif key in texts and not value.strip():
            problems.append(Problem(line_no, key, "empty text"))
    if "label" in sample and not isinstance(sample["label"], (str, int)):
        problems.append(Problem(line_no, "label", f"expected a string or integer, got {json.dumps(sample['label'])}"))
    if "split" in sample and sample["split"] not in SPLITS:
        problems.append(Problem(line_no, "split", f"{sample['split']!r} is not one of {', '.join(SPLITS)}"))
    if "meta" in sample and not isinstance(sample["meta"], dict):
        problems.append(Problem(line_no, "meta", "expected a JSON object"))
    if not any(sample.get(k) is not None for k in carriers):
        problems.append(Problem(line_no, "<sample>", f"has none of the modality fields {', '.join(carriers)}"))
    return sample, problems


def read_manifest(path: str | Path) -> list[dict[str, Any]]:
    """Read a manifest; raises ManifestError naming the file, line and field of the first problem."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest {path} does not exist")
    samples, carriers = [], modality_fields()
    with path.open(encoding="utf-8") as f:
        for line_no, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            sample, problems = _structural_problems(line_no, raw, carriers)
            if problems:
                raise ManifestError(f"{path}: {problems[0]}")
            samples.append(sample)
    return samples


def write_manifest(path: str | Path, samples: Iterable[dict[str, Any]]) -> Path:
    """Write samples as JSON Lines, atomically (a crash leaves the old file or the new one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    allowed = allowed_fields()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for sample in samples:
                unknown = [k for k in sample if k not in allowed]
                if unknown:
                    raise ManifestError(f"sample {sample.get('id')!r}: unknown field {unknown[0]!r}")
                f.write(json.dumps(sample, ensure_ascii=False, separators=(",", ":")) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def resolve(manifest_path: str | Path, relative: str) -> Path:
    """A media path as the manifest names it, resolved against the manifest's folder."""
    return Path(manifest_path).resolve().parent / relative


def check_manifest(path: str | Path, decode: bool = True, sample_rate: int = 16000) -> tuple[int, list[Problem]]:
    """Validate every line; returns (number of samples, every problem found). Never stops early.

    With ``decode``, each file of a modality with ``media`` is read by its ``check_file`` (audio
    at ``sample_rate``)."""
    from ..config import ModelConfig

    model = ModelConfig()
    model.audio.sample_rate = sample_rate
    carriers = modality_fields()
    path = Path(path)
    if not path.is_file():
        return 0, [Problem(0, "<file>", f"manifest {path} does not exist")]
    problems: list[Problem] = []
    seen_ids: dict[str, int] = {}
    decoded: dict[str, str | None] = {}  # media shared by many samples is decoded once
    count = 0
    with path.open(encoding="utf-8") as f:
        for line_no, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            count += 1
            sample, found = _structural_problems(line_no, raw, carriers)
            problems.extend(found)
            if sample is None:
                continue
            sample_id = sample.get("id")
            if isinstance(sample_id, str):
                if sample_id in seen_ids:
                    problems.append(Problem(line_no, "id", f"duplicate id {sample_id!r} (first on line {seen_ids[sample_id]})"))
                else:
                    seen_ids[sample_id] = line_no
            for key, modality in carriers.items():
                rel = sample.get(key)
                if not modality.files or not isinstance(rel, str):
                    continue
                media = resolve(path, rel)
                if not media.is_file():
                    problems.append(Problem(line_no, key, f"file {rel} does not exist"))
                    continue
                if not decode or not modality.media:
                    continue
                cache_key = f"{modality.name}:{media}"
                if cache_key not in decoded:
                    try:
                        modality.check_file(media, model)
                        decoded[cache_key] = None
                    except (ValueError, OSError) as e:  # ImageError and AudioError are ValueErrors
                        decoded[cache_key] = str(e)
                if decoded[cache_key] is not None:
                    problems.append(Problem(line_no, key, decoded[cache_key]))
    return count, problems
