"""A trained recogniser from Python: load a checkpoint folder, transcribe recordings::

    from omniformer.tasks.asr import Transcriber
    asr = Transcriber.load("runs/asr-fsdd/asr/best")
    asr.transcribe("7_jackson_3.wav").text                 # "seven"
    asr.transcribe(waveform, timings=True).words           # [{"word": "seven", "start": 0.12, "end": 0.46}]
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ...config import RunConfig, from_dict, run_config_from
from ...data.audio import AudioError, load_audio, rms_dbfs
from ...data.batching import collate
from ...modalities.audio import audio_preprocessor
from ...train import checkpoint as ckpt
from .config import ASRConfig
from ...data.text import Tokenizer
from .data import Alphabet, Labels, WordPieces
from .decoding import Hypothesis, Lexicon, best_hypothesis, greedy_decode, to_text, word_timings
from .model import BLANK, ASRModel, frame_seconds
from .streaming import SILENCE_DBFS, StreamSettings, TranscriptStream

TASK_NAME = "asr"
MAX_SECONDS = 15 * 60  # longest recording transcribe() takes in one call
# A long recording is cut where this much of it is quietest: longer than the gaps inside a word.
QUIET_SPAN_MS = 100


@dataclass
class Transcript:
    """One recording's transcript; ``words`` with their start and end in seconds when asked for."""
    text: str
    words: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0           # the recording's length as the model heard it

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"text": self.text, "seconds": round(self.seconds, 3)}
        if self.words:
            out["words"] = self.words
        return out


class Transcriber:
    """An asr checkpoint ready to use: its model, recipe, output labels (``alphabet``: characters
    or word pieces), decoder and word list."""

    task = TASK_NAME  # what the server dispatches on

    def __init__(self, model: ASRModel, cfg: RunConfig, alphabet: Labels, words: Sequence[str] = (),
                 model_id: str = "omniformer-asr"):
        self.model, self.cfg, self.alphabet, self.model_id = model.eval(), cfg, alphabet, model_id
        self.task_config: ASRConfig = from_dict(ASRConfig, cfg.task or {}, "task")
        self.words = list(words)
        self.lexicon = Lexicon(self.words, alphabet.labels, spell=alphabet.spell) if self.words else None
        self.audio = audio_preprocessor(cfg.model)
        self.frame_seconds = frame_seconds(cfg.model)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> "Transcriber":
        """The checkpoint folder ``path`` (what ``omniformer train asr`` writes)."""
        path, meta = ckpt.read_task_meta(path, TASK_NAME, "config")
        cfg = run_config_from(meta["config"])
        alphabet = checkpoint_labels(path, meta)
        model = ASRModel(cfg.model, len(alphabet), from_dict(ASRConfig, cfg.task or {}, "task"))
        ckpt.load_weights(path, model)
        return cls(model.to(device), cfg, alphabet, meta.get("words") or [],
                   model_id=meta.get("model_id", path.name))

    def waveform(self, audio: Any) -> np.ndarray:
        """A path, file bytes or mono waveform (NumPy, at the model's sample rate) as the whole
        mono waveform at the model's rate; longer than ``MAX_SECONDS`` is an error."""
        rate = self.cfg.model.audio.sample_rate
        if isinstance(audio, np.ndarray):
            if audio.ndim != 1 or audio.size == 0:
                raise AudioError(f"<array>: expected a non-empty mono waveform (samples,), got shape {audio.shape}")
            if not np.isfinite(audio).all():
                raise AudioError("<array>: waveform contains NaN or infinite samples")
            wave = audio.astype(np.float32)
        else:
            wave = load_audio(audio, rate, max_seconds=MAX_SECONDS + 1, truncate=True)
        if len(wave) > MAX_SECONDS * rate:
            raise AudioError(f"audio is longer than {MAX_SECONDS / 60:.0f} minutes; cut it into parts first")
        return wave

    def windows(self, wave: np.ndarray) -> list[tuple[float, np.ndarray]]:
        """(start in seconds, waveform) pieces of at most ``model.audio.max_seconds`` each, cut
        in the middle of the quietest ``QUIET_SPAN_MS`` of each piece's last second: a pause
        between words, not the quietest instant, which may be a gap inside a word."""
        rate = self.cfg.model.audio.sample_rate
        size, hop = int(self.cfg.model.audio.max_seconds * rate), rate // 100
        pieces, start = [], 0
        while len(wave) - start > size:
            tail = wave[start + size - rate: start + size]
            energy = (tail[: len(tail) // hop * hop].reshape(-1, hop) ** 2).mean(1)  # per 10 ms
            span = max(1, min(len(energy), QUIET_SPAN_MS // 10))
            quietest = int(np.argmin(np.convolve(energy, np.ones(span), mode="valid"))) + span // 2
            cut = start + size - rate + quietest * hop + hop // 2
            pieces.append((start / rate, wave[start:cut]))
            start = cut
        pieces.append((start / rate, wave[start:]))
        return pieces

    @staticmethod
    def silent(wave: np.ndarray) -> bool:
        """Whether a waveform is too quiet to say anything (``SILENCE_DBFS``)."""
        return rms_dbfs(wave) < SILENCE_DBFS

    def prepare(self, audio: Any) -> dict[str, Any]:
        """One dataset-style item (its first ``model.audio.max_seconds``) from a path, file bytes or
        a mono waveform (NumPy, at the model's sample rate)."""
        return {"index": 0, "audio": self.audio(audio)}

    @torch.no_grad()
    def log_probs(self, items: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N, labels) frame log-probabilities and (B,) valid frames of prepared items, one model call."""
        items = [{**it, "index": i} for i, it in enumerate(items)]
        device = next(self.model.parameters()).device
        batch = {k: v.to(device) for k, v in collate(items).items()}
        out = self.model(batch)
        return out["log_probs"].cpu(), out["lengths"].cpu()

    def decode(self, log_probs: torch.Tensor, lengths: torch.Tensor, decoder: str | None = None,
               beam: int | None = None) -> list[Hypothesis]:
        """The best hypothesis of each row, by the recipe's decoder unless ``decoder`` names one."""
        decoder = decoder or self.task_config.decoder
        if decoder not in ("greedy", "beam"):
            raise ValueError(f"decoder: expected greedy or beam, got {decoder!r}")
        if decoder == "greedy":
            return greedy_decode(log_probs, lengths, blank=BLANK)
        width = beam or self.task_config.beam
        out = []
        for row, n in zip(log_probs, lengths.tolist()):
            out.append(best_hypothesis(row[: int(n)], beam=width, blank=BLANK, lexicon=self.lexicon,
                                       space=self.alphabet.space))
        return out

    def transcribe_items(self, items: list[dict[str, Any]], timings: bool = False,
                         decoder: str | None = None) -> list[Transcript]:
        """Transcripts of prepared items: the server's micro-batching function."""
        log_probs, lengths = self.log_probs(items)
        out = []
        for item, hyp in zip(items, self.decode(log_probs, lengths, decoder)):
            words = word_timings(hyp, self.alphabet.labels, self.frame_seconds) if timings else []
            seconds = item["audio"].shape[-1] * self.cfg.model.audio.hop_ms / 1000
            out.append(Transcript(to_text(hyp.tokens, self.alphabet.labels).strip(), words, seconds))
        return out

    def transcribe(self, audio: Any, timings: bool = False, decoder: str | None = None) -> Transcript:
        """One recording's transcript (``timings``: each word's start and end in seconds). A
        recording longer than the model's ``audio.max_seconds`` is transcribed piece by piece;
        a piece quieter than ``SILENCE_DBFS`` says nothing (the model is not run on it)."""
        all_pieces = self.windows(self.waveform(audio))
        pieces = [(start, w) for start, w in all_pieces if not self.silent(w)]
        parts = self.transcribe_items([{"index": 0, "audio": self.audio.features(w)} for _, w in pieces],
                                      timings, decoder) if pieces else []
        words = [{**w, "start": round(w["start"] + start, 3), "end": round(w["end"] + start, 3)}
                 for (start, _), part in zip(pieces, parts) for w in part.words]
        seconds = sum(len(w) for _, w in all_pieces) / self.cfg.model.audio.sample_rate
        return Transcript(" ".join(p.text for p in parts if p.text), words, seconds)

    predict = transcribe

    def stream(self, settings: "StreamSettings | None" = None, decoder: str | None = None) -> "TranscriptStream":
        """A live recording's transcriber: ``feed`` it samples as they come, ``finish`` at the end
        (``omniformer.tasks.asr.streaming``)."""
        return TranscriptStream(self, settings, decoder)


def checkpoint_labels(path: Path, meta: dict[str, Any]) -> Labels:
    """The labels a checkpoint's head writes: its alphabet, or the word pieces of the tokenizer
    saved beside it (``units: wordpieces``)."""
    if meta.get("units", "characters") == "wordpieces":
        return WordPieces(Tokenizer.load(path / ckpt.TOKENIZER))
    ckpt.require_meta(path, meta, "alphabet")
    return Alphabet(meta["alphabet"])
