"""Transcribed recordings for the asr task: reading (recording, transcript) pairs from a
manifest, normalising transcripts, the labels the CTC head writes (characters or word pieces)
and the datasets the model reads."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from ...config import RunConfig
from ...data.batching import MultimodalDataset
from ...data.manifest import manifest_exists, read_manifest
from ...data.text import Tokenizer
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
    units = "characters"
    spell = None  # a closed word list is spelt letter by letter (decoding.Lexicon)

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

    @property
    def space(self) -> int:
        """The word separator's label."""
        return self.index[" "]

    def describe(self) -> dict[str, Any]:
        return {"units": self.units, "alphabet": self.chars}

    @classmethod
    def from_texts(cls, texts: Sequence[str]) -> "Alphabet":
        return cls("".join(sorted({c for t in texts for c in t} | {" "})))


class WordPieces:
    """A WordPiece tokenizer's pieces as CTC labels: label ``i + 1`` is token id ``i``; label 0
    is the blank. Why: a piece stands for several letters, so a transcript is a few labels and
    the head need not spell every word out.

    ``labels[i]`` is what label i writes: a word's first piece with the space before it
    (" cat"), a continuation without its "##" ("s"), special tokens nothing; so joining the
    labels of a transcript gives its text back, as for characters.
    """

    units = "wordpieces"
    space = None  # words begin with a piece of their own, not with a separator label

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        special = set(tokenizer.special_ids)
        pieces = [tokenizer.id_to_token(i) or "" for i in range(tokenizer.vocab_size)]
        self.labels = ["", *("" if i in special else p[2:] if p.startswith("##") else " " + p
                             for i, p in enumerate(pieces))]

    def __len__(self) -> int:
        return len(self.labels)

    def spell(self, word: str) -> list[int]:
        """The labels of one word (its pieces); [] when the vocabulary cannot write it."""
        ids = self.tokenizer.encode(word, special=False)
        return [] if self.tokenizer.unk_id in ids else [i + 1 for i in ids]

    def encode(self, text: str, where: str = "") -> torch.Tensor:
        """Label ids of ``text`` (normalised already). A word the vocabulary writes only as
        [UNK], or splits into several words (at punctuation), is an error naming it."""
        ids = [i + 1 for i in self.tokenizer.encode(text, special=False)]
        if self.decode(ids) != text:
            for word in text.split():
                labels = self.spell(word)
                if not labels or self.decode(labels) != word:
                    how = ("is not in the vocabulary (its pieces: [UNK])" if not labels else
                           f"is cut into the words {self.decode(labels)!r} by the tokenizer")
                    raise TranscriptError(f"{where + ': ' if where else ''}transcript {text!r}: the word {word!r} "
                                          f"{how}; leave data.tokenizer unset to train word pieces on the "
                                          f"transcripts, or use task.units: characters") from None
            raise TranscriptError(f"{where + ': ' if where else ''}transcript {text!r} is not read back as "
                                  f"written from its word pieces ({self.decode(ids)!r})")
        return torch.tensor(ids, dtype=torch.long)

    def decode(self, labels: Sequence[int]) -> str:
        return "".join(self.labels[i] for i in labels if 0 < i < len(self.labels)).strip()

    def describe(self) -> dict[str, Any]:
        return {"units": self.units, "pieces": len(self.labels) - 1}

    @classmethod
    def from_texts(cls, texts: Sequence[str], vocab_size: int) -> "WordPieces":
        """Pieces trained on ``texts`` (normalised transcripts): words split at whitespace only,
        nothing lower-cased or stripped of accents beyond what the task's normalising did."""
        return cls(Tokenizer.train(texts, vocab_size=vocab_size, lowercase=False, split_punctuation=False))


Labels = Alphabet | WordPieces


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


def check_alphabet(data: ASRData, alphabet: Labels, splits: Sequence[str] = ("train",)) -> None:
    """Every transcript of ``splits`` written with ``alphabet``: the error names the first that is not."""
    for split in splits:
        for sample in data.splits[split]:
            alphabet.encode(sample["text"], f"{data.manifest}:{data.lines.get(sample['id'], '?')}: "
                                            f"sample {sample['id']!r}")


def asr_dataset(manifest: str | Path, samples: Sequence[dict], cfg: RunConfig, alphabet: Labels,
                train: bool) -> MultimodalDataset:
    """Recordings as log-mel features and transcripts as label ids (``transcript``, a target
    no encoder reads); ``train`` turns on ``data.speed_perturbation`` and ``data.spec_augment``."""
    return MultimodalDataset(manifest, samples, audio=audio_preprocessor(cfg.model, cfg.data if train else None),
                             preprocessors={"text": alphabet.encode}, modes="audio", transcripts=True)


def training_words(samples: Sequence[dict]) -> list[str]:
    """The distinct words of the transcripts, sorted: a closed vocabulary for the beam search."""
    return sorted({w for s in samples for w in s["text"].split()})
