"""Audio: a recording as log-mel features (``data.audio.AudioPreprocessor``) for ``AudioEmbedder``."""
from __future__ import annotations

import torch

from ..data.audio import AudioPreprocessor, load_audio
from ..model.encoders import AudioEmbedder
from .base import Modality


def audio_preprocessor(model, data=None) -> AudioPreprocessor:
    """Features for ``model`` (a ModelConfig); with ``data`` (training), the speech augmentation
    it asks for (``speed_perturbation``, ``spec_augment``)."""
    speed = tuple(data.speed_perturbation) if data is not None and data.speed_perturbation else None
    spec_augment = data is not None and data.spec_augment
    return AudioPreprocessor(model.audio, augment=bool(speed or spec_augment), speed=speed, spec_augment=spec_augment)


class AudioModality(Modality):
    """``audio`` (B, n_mels, frames) log-mel features, zero-padded; ``audio_mask`` (B, frames)."""

    name = "audio"
    fields = ("audio", "question_audio")
    embedder = AudioEmbedder
    value_axes = {0: "batch", 2: "frames"}
    mask_axes = {0: "batch", 1: "frames"}

    def preprocessor(self, model, data=None, tokenizer=None) -> AudioPreprocessor:
        return audio_preprocessor(model, data)

    def check_file(self, path, model) -> None:
        load_audio(path, sample_rate=model.audio.sample_rate)

    def example_inputs(self, model, batch, generator, length=None):
        T = length or 40
        lengths = torch.randint(1, T + 1, (batch,), generator=generator)
        lengths[0] = T
        return {"audio": torch.randn(batch, model.audio.n_mels, T, generator=generator),
                "audio_mask": torch.arange(T)[None, :] < lengths[:, None]}

    def describe(self, model):
        a = model.audio
        return {"sample_rate": a.sample_rate, "n_mels": a.n_mels, "win_ms": a.win_ms, "hop_ms": a.hop_ms,
                "max_seconds": a.max_seconds,
                "features": "log-mel, normalised per utterance (omniformer.data.audio.LogMel)"}


MODALITY = AudioModality()
