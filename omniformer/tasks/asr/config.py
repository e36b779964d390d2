"""The asr recipe's ``task:`` section: which fields hold the recordings and their transcripts,
the output alphabet, the decoder and how the result is scored."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from ...config import DROPOUT, ConfigError, Range


@dataclass
class ASRConfig:
    """Speech recognition choices (``task:`` in a recipe).

    ``pairs`` lists the (recording field, transcript field) pairs read from every sample:
    captions (``audio``, ``text``) and spoken questions (``question_audio``, ``question``), so a
    ShapesWorld manifest trains on both and a folder of recordings on the first.
    """
    pairs: list[list[str]] = field(default_factory=lambda: [["audio", "text"], ["question_audio", "question"]])
    # What the head writes, besides CTC's blank: "characters", or "wordpieces" (the text
    # tokenizer's pieces: data.tokenizer, else an --init checkpoint's tokenizer, else pieces
    # trained on the transcripts with data.vocab_size of them). Pieces need fewer labels a word.
    units: Literal["characters", "wordpieces"] = "characters"
    # The characters the head writes (units: characters); "" means every character of the
    # training transcripts (after ``lowercase``). A transcript with a character outside a given
    # alphabet is an error naming its sample and the character.
    alphabet: str = ""
    lowercase: bool = True
    # Transcripts whose trailing punctuation (.?!,;:) is dropped before training and scoring.
    strip_punctuation: bool = True
    # Which part of the backbone the CTC head reads: the fusion encoder over the audio alone,
    # or the audio tower's output (before fusion).
    reads: Literal["fusion", "tower"] = "fusion"
    head_dropout: float = 0.1
    # Decoding: the per-frame best label ("greedy"), or a CTC prefix beam search of ``beam``
    # prefixes ("beam"); ``words`` closes its vocabulary: "train" (the words of the training
    # transcripts), a list of words, or "" for any spelling.
    decoder: Literal["greedy", "beam"] = "beam"
    beam: int = 8
    words: str | list[str] = ""
    # ``meta`` keys to report WER and CER per value of (``held_out_voice`` -> ``held_out_voice/wer``).
    groups: list[str] = field(default_factory=list)
    # Samples left out of training whose ``meta`` has one of these values: {key: [values]}, e.g.
    # {voice: [held0]}; evaluation still scores them.
    exclude_from_training: dict[str, list] = field(default_factory=dict)

    RANGES: ClassVar[dict[str, Range]] = {"head_dropout": DROPOUT, "beam": Range(1, 256)}

    def validate(self) -> None:
        if not self.pairs:
            raise ConfigError("pairs: empty; expected [[recording field, transcript field], ...], e.g. [[audio, text]]")
        for i, pair in enumerate(self.pairs):
            if len(pair) != 2 or not all(isinstance(f, str) and f for f in pair):
                raise ConfigError(f"pairs[{i}]: expected [recording field, transcript field], got {pair!r}")
        if self.alphabet and self.units != "characters":
            raise ConfigError(f"alphabet: applies to units: characters; with units: {self.units} the "
                              f"tokenizer's pieces are the labels (leave alphabet empty)")
        if len(set(self.alphabet)) != len(self.alphabet):
            raise ConfigError(f"alphabet: lists a character twice: {self.alphabet!r}")
        if isinstance(self.words, str) and self.words not in ("", "train"):
            raise ConfigError(f"words: expected 'train', a list of words or '' (any spelling), got {self.words!r}")
        if isinstance(self.words, list) and not all(isinstance(w, str) and w.strip() for w in self.words):
            raise ConfigError("words: every entry must be a non-empty word")
        for i, key in enumerate(self.groups):
            if not key.strip() or "/" in key:
                raise ConfigError(f"groups[{i}]: expected a key of the samples' meta without '/', got {key!r}")
        for key, values in self.exclude_from_training.items():
            if not isinstance(values, list) or not values:
                raise ConfigError(f"exclude_from_training.{key}: expected a non-empty list of meta values")
