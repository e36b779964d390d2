"""Transcribed recordings for the asr task: reading (recording, transcript) pairs from a
manifest, normalising transcripts, the character alphabet and the datasets the model reads."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from ...config import RunConfig
from ...data.batching import MultimodalDataset
from ...data.manifest import manifest_exists, read_manifest
from ..common import audio_preprocessor
from .config import ASRConfig

PUNCTUATION = re.compile(r"[.?!,;:\"]")


def normalise(text: str, task: ASRConfig) -> str:
    """A transcript as the task learns and scores it: lower-cased, punctuation dropped, one
    space between words (each as ``task`` says)."""
    if task.lowercase:
        text = text.lower()
    if task.strip_punctuation:
        text = PUNCTUATION.sub(" ", text)
    return " ".join(text.split())


class TranscriptError(ValueError):
    """A transcript the recogniser cannot learn from; the message names the sample and why."""


@dataclass
class Alphabet:
    """The characters the CTC head writes: label ``i + 1`` is ``chars[i]``; label 0 is the blank."""
    chars: str

    def __post_init__(self) -> None:
        if " " not in self.chars:
            self.chars = " " + self.chars  # words are separated by the space label
        self.index = {c: i + 1 for i, c in enumerate(self.chars)}

    @property
    def labels(self) -> list[str]:
        """Every label's character, the blank's as ""."""
        return ["", *self.chars]

    def __len__(self) -> int:
        return len(self.chars) + 1

    def encode(self, text: str, where: str = "") -> torch.Tensor:
        """Label ids of ``text`` (normalised already); a character outside the alphabet is an error."""
        try:
            return torch.tensor([self.index[c] for c in text], dtype=torch.long)
        except KeyError:
            bad = next(c for c in text if c not in self.index)
            raise TranscriptError(f"{where + ': ' if where else ''}transcript {text!r} has the character {bad!r} "
                                  f"(U+{ord(bad):04X}), which is not in the alphabet {self.chars!r}; add it to "
                                  f"task.alphabet or leave task.alphabet empty to take every training "
                                  f"character") from None

    def decode(self, labels: Sequence[int]) -> str:
        return "".join(self.chars[i - 1] for i in labels if 0 < i <= len(self.chars))

    @classmethod
    def from_texts(cls, texts: Sequence[str]) -> "Alphabet":
        return cls("".join(sorted({c for t in texts for c in t} | {" "})))


@dataclass
class ASRData:
    """A manifest's (recording, transcript) pairs by split, one per distinct recording."""
    manifest: Path
    splits: dict[str, list[dict[str, Any]]]
    excluded: int = 0                  # training recordings left out by task.exclude_from_training
    lines: dict[str, int] = field(default_factory=dict)


def load_data(manifest: str | Path, task: ASRConfig) -> ASRData:
    """Every (recording, transcript) pair of ``manifest`` named by ``task.pairs``, as samples
    ``{id, audio, text, split, meta}``: transcripts normalised, each recording once per split
    (many ShapesWorld questions share one), the training ones in ``task.exclude_from_training``
    left out. Errors name the manifest and what is missing: no pair at all, an empty transcript."""
    manifest = Path(manifest)
    if not manifest_exists(manifest):  # a manifest file or a shard folder
        raise FileNotFoundError(f"data.manifest: {manifest} does not exist")
    splits: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    seen: set[tuple[str, str]] = set()
    excluded, lines = 0, {}
    for line, sample in enumerate(read_manifest(manifest), start=1):
        split = sample.get("split", "train")
        for audio_field, text_field in task.pairs:
            audio, text = sample.get(audio_field), sample.get(text_field)
            if not audio or text is None or (split, audio) in seen:
                continue
            seen.add((split, audio))
            words = normalise(str(text), task)
            name = sample.get("id", f"line {line}")
            if not words:
                raise TranscriptError(f"{manifest}:{line}: sample {name!r}: its {text_field} {text!r} is empty "
                                      f"once normalised; a recording needs a transcript to learn from")
            meta = sample.get("meta", {})
            if split == "train" and any(meta.get(k) in v for k, v in task.exclude_from_training.items()):
                excluded += 1
                continue
            entry = {"id": f"{name}/{audio_field}", "audio": audio, "text": words, "split": split, "meta": meta}
            lines[entry["id"]] = line
            splits[split].append(entry)
    if not any(splits.values()):
        fields = ", ".join(f"{a} + {t}" for a, t in task.pairs)
        raise TranscriptError(f"{manifest}: no sample has a recording and its transcript ({fields}); "
                              f"speech recognition learns from both (omniformer data audio-folder DIR "
                              f"--transcripts FILE writes such a manifest)")
    return ASRData(manifest, splits, excluded, lines)


def check_alphabet(data: ASRData, alphabet: Alphabet, splits: Sequence[str] = ("train",)) -> None:
    """Every transcript of ``splits`` spelt with ``alphabet``: the error names the first that is not."""
    for split in splits:
        for sample in data.splits[split]:
            alphabet.encode(sample["text"], f"{data.manifest}:{data.lines.get(sample['id'], '?')}: "
                                            f"sample {sample['id']!r}")


def asr_dataset(manifest: str | Path, samples: Sequence[dict], cfg: RunConfig, alphabet: Alphabet,
                train: bool) -> MultimodalDataset:
    """Recordings as log-mel features and transcripts as label ids (``transcript``, a target
    no encoder reads); ``train`` turns on ``data.speed_perturbation`` and ``data.spec_augment``."""
    return MultimodalDataset(manifest, samples, audio=audio_preprocessor(cfg.model, cfg.data if train else None),
                             preprocessors={"text": alphabet.encode}, modes="audio", transcripts=True)


def training_words(samples: Sequence[dict]) -> list[str]:
    """The distinct words of the transcripts, sorted: a closed vocabulary for the beam search."""
    return sorted({w for s in samples for w in s["text"].split()})
