"""Spoken captions and questions composed from the committed per-word speech bank.

An utterance is the bank's words for one voice, joined by random pauses, with leading and
trailing silence, then resampled by a per-utterance factor (tempo and pitch together, like a
faster or slower, higher or lower speaker), scaled by a random gain, with faint noise added.

A *rendition* is one recording of a sentence: (sentence, group, index). Its voice and every
random choice follow from (seed, sentence, group, index) alone, so any process can compute a
rendition's voice or audio without coordination, and the same seed gives the same bytes.
Groups keep splits apart: "train" (train split) and "eval" (val and test) use the training
voices, with different renditions, so evaluation never replays a training recording; "held"
uses the held-out voice and serves the test split only.
"""
from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from .language import words

BANK_DIR = Path(__file__).parent / "bank"
GROUPS = ("train", "eval", "held")
TEMPO = (0.85, 1.15)            # resampling factor: >1 is faster and higher
PAUSE_S = (0.03, 0.15)          # between words
EDGE_S = (0.05, 0.2)            # leading and trailing silence
PEAK_DB = (-14.0, -6.0)         # utterance peak level, dBFS
NOISE_DB = (-80.0, -68.0)       # noise floor (RMS, dBFS): audible as hiss only when turned up


@dataclass(frozen=True)
class Bank:
    sample_rate: int
    voices: list[str]               # bank order; ShapesConfig.voices takes a prefix
    offsets: dict[str, dict[str, list[int]]]
    audio: dict[str, np.ndarray]


@lru_cache(maxsize=1)
def load_bank(bank_dir: Path = BANK_DIR) -> Bank:
    index = json.loads((bank_dir / "index.json").read_text())
    audio, offsets = {}, {}
    for v in index["voices"]:
        data, rate = sf.read(bank_dir / v["file"], dtype="float32")
        assert rate == index["sample_rate"], f"{v['file']}: {rate} Hz"
        audio[v["name"]], offsets[v["name"]] = data, v["offsets"]
    return Bank(index["sample_rate"], [v["name"] for v in index["voices"]], offsets, audio)


def voice_split(voices: int) -> tuple[list[str], str]:
    """(training voices, held-out voice) for ShapesConfig.voices = ``voices``."""
    names = load_bank().voices[:voices]
    return names[:-1], names[-1]


def _stable(text: str) -> int:
    return zlib.crc32(text.encode())


def rendition_voice(seed: int, sentence: str, group: str, index: int, voices: int) -> str:
    train, held = voice_split(voices)
    if group == "held":
        return held
    # Successive renditions of a sentence cycle through the training voices from a
    # sentence-dependent start, so a sentence's few renditions have different speakers.
    start = _stable(f"{seed}/{group}/{sentence}") % len(train)
    return train[(start + index) % len(train)]


def speech_filename(sentence: str, group: str, index: int) -> str:
    return f"{hashlib.sha1(sentence.encode()).hexdigest()[:12]}-{group}{index}.flac"


def compose(sentence: str, voice: str, rng: np.random.Generator) -> np.ndarray:
    bank = load_bank()
    rate, clip = bank.sample_rate, bank.audio[voice]
    silence = lambda lo_hi: np.zeros(int(rng.uniform(*lo_hi) * rate), np.float32)  # noqa: E731
    pieces = [silence(EDGE_S)]
    for i, word in enumerate(words(sentence)):
        start, end = bank.offsets[voice][word]
        pieces += [silence(PAUSE_S)] if i else []
        pieces.append(clip[start:end])
    pieces.append(silence(EDGE_S))
    audio = np.concatenate(pieces)
    factor = rng.uniform(*TEMPO)
    audio = soxr.resample(audio, rate, rate / factor).astype(np.float32)
    audio *= 10 ** (rng.uniform(*PEAK_DB) / 20) / max(1e-6, float(np.abs(audio).max()))
    audio += rng.standard_normal(len(audio)).astype(np.float32) * 10 ** (rng.uniform(*NOISE_DB) / 20)
    return audio


def write_rendition(out_dir: Path, seed: int, sentence: str, group: str, index: int, voices: int) -> float:
    """Compose one rendition and write it as 16-bit FLAC; returns its duration in seconds."""
    voice = rendition_voice(seed, sentence, group, index, voices)
    rng = np.random.default_rng([seed, _stable(sentence), GROUPS.index(group), index])
    audio = compose(sentence, voice, rng)
    rate = load_bank().sample_rate
    pcm = np.clip(np.round(audio * 32767), -32768, 32767).astype(np.int16)
    # libsndfile's FLAC output carries no timestamps: same samples, same bytes.
    sf.write(out_dir / speech_filename(sentence, group, index), pcm, rate, format="FLAC", subtype="PCM_16")
    return len(pcm) / rate
