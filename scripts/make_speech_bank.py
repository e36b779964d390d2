"""Build ShapesWorld's speech bank with espeak-ng. Development only: run once, commit the output.

    python scripts/make_speech_bank.py        # writes omniformer/datasets/shapes/bank/

Every word of the ShapesWorld vocabulary is synthesised in isolation by each voice variant,
resampled to 16 kHz and trimmed of silence. A voice's words are concatenated into one FLAC
(``<voice>.flac``); ``index.json`` gives each word's [start, end) in samples. The package only
reads these files; it never runs espeak-ng.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from omniformer.datasets.shapes.language import vocabulary  # noqa: E402

BANK = ROOT / "omniformer" / "datasets" / "shapes" / "bank"
RATE = 16000
# Distinct accents, genders, pitches (0-99) and speeds (words per minute). ShapesConfig.voices
# takes the first N; the N-th is held out of training.
VOICES = [
    {"name": "us", "espeak": "en-us", "pitch": 50, "speed": 190},
    {"name": "gb_f", "espeak": "en+f3", "pitch": 60, "speed": 180},
    {"name": "scottish", "espeak": "en-gb-scotland+m3", "pitch": 40, "speed": 175},
    {"name": "us_f", "espeak": "en-us+f2", "pitch": 65, "speed": 200},
    {"name": "caribbean", "espeak": "en-029+m1", "pitch": 35, "speed": 185},
    {"name": "rp_f", "espeak": "en-gb-x-rp+f4", "pitch": 55, "speed": 170},
    {"name": "nyc", "espeak": "en-us-nyc+m7", "pitch": 45, "speed": 195},
    {"name": "lancaster_f", "espeak": "en-gb-x-gbclan+f1", "pitch": 70, "speed": 185},
]
# Alone, espeak reads "a" as the letter name; ask for the unstressed schwa instead.
PRONOUNCE = {"a": "[[a#]]", "an": "[[a#n]]"}
GAP = int(0.02 * RATE)          # silence between words in the concatenated file
TRIM_DB = -40.0                 # below this (relative to the word's peak) counts as silence
PAD = int(0.01 * RATE)


def synthesise(word: str, voice: dict, tmp: Path) -> np.ndarray:
    wav = tmp / "word.wav"
    subprocess.run(["espeak-ng", "-v", voice["espeak"], "-p", str(voice["pitch"]), "-s", str(voice["speed"]),
                    "-w", str(wav), PRONOUNCE.get(word, word)], check=True)
    audio, rate = sf.read(wav, dtype="float32")
    audio = soxr.resample(audio, rate, RATE)
    loud = np.flatnonzero(np.abs(audio) > np.abs(audio).max() * 10 ** (TRIM_DB / 20))
    return audio[max(0, loud[0] - PAD): loud[-1] + 1 + PAD]


def main() -> None:
    if shutil.which("espeak-ng") is None:
        sys.exit("espeak-ng is not installed (apt-get install espeak-ng)")
    BANK.mkdir(parents=True, exist_ok=True)
    words = vocabulary()
    index = {"sample_rate": RATE, "words": words, "voices": []}
    with tempfile.TemporaryDirectory() as tmp:
        for voice in VOICES:
            pieces, offsets, pos = [], {}, 0
            for word in words:
                audio = synthesise(word, voice, Path(tmp))
                offsets[word] = [pos, pos + len(audio)]
                pieces += [audio, np.zeros(GAP, np.float32)]
                pos += len(audio) + GAP
            audio = np.concatenate(pieces)
            audio *= 0.9 / np.abs(audio).max()
            sf.write(BANK / f"{voice['name']}.flac", audio, RATE, format="FLAC", subtype="PCM_16")
            index["voices"].append({**voice, "file": f"{voice['name']}.flac", "offsets": offsets})
            print(f"{voice['name']}: {len(words)} words, {pos / RATE:.1f} s")
    (BANK / "index.json").write_text(json.dumps(index, indent=1) + "\n")


if __name__ == "__main__":
    main()
