"""From manifest samples to padded batches.

``MultimodalDataset`` turns manifest samples into preprocessed tensors; ``collate`` pads a
list of them into the batch contract every model in Omniformer reads:

    text   (B, L) long,  text_mask  (B, L) bool   True on real tokens
    image  (B, C, H, W), image_mask (B,)    bool   True where the sample has an image
    audio  (B, M, T),    audio_mask (B, T)  bool   True on real frames
    answer / label (B,) long, -100 where the sample has none

A modality no sample in the batch has is left out of the batch. ``BucketBatchSampler``
groups samples of similar text/audio length so padding stays small.
"""
from __future__ import annotations

import functools
import random
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import Dataset, Sampler

from .manifest import resolve
from .text import Tokenizer

IGNORE = -100


class MultimodalDataset(Dataset):
    """Preprocessed samples of a manifest.

    ``text_field`` and ``audio_field`` say which manifest fields feed the text and audio
    encoders (captions: text/audio; QA: question/question_audio). ``modes`` picks, per
    sample, which of them to use: "text", "audio" or "both" (spoken questions are the
    same samples with the audio view). With ``transcripts``, a sample used by voice ("audio" or
    "both") also carries its text tokens as ``transcript``: a training target for the spoken
    view that no encoder reads.
    """

    def __init__(self, manifest: str | Path, samples: Sequence[dict[str, Any]], *,
                 tokenizer: Tokenizer | None = None, image: Callable | None = None,
                 audio: Callable | None = None, text_field: str = "text", audio_field: str = "audio",
                 text_max_len: int = 64, answers: Sequence[str] | None = None,
                 modes: Sequence[str] | str = "both", transcripts: bool = False,
                 cache_audio: bool = True, cache_images: bool = True):
        self.manifest = Path(manifest)
        self.samples = list(samples)
        self.tokenizer, self.image, self.audio = tokenizer, image, audio
        self.text_field, self.audio_field, self.text_max_len = text_field, audio_field, text_max_len
        self.answer_index = {a: i for i, a in enumerate(answers)} if answers is not None else None
        self.modes = [modes] * len(self.samples) if isinstance(modes, str) else list(modes)
        self.transcripts = transcripts
        if len(self.modes) != len(self.samples):
            raise ValueError(f"modes: expected {len(self.samples)} entries, got {len(self.modes)}")
        # Many samples share one image (captions and questions about the same scene) or one
        # recording (one per distinct sentence), so deterministic features are computed once
        # per worker and kept; augmented ones are drawn fresh every time. An audio preprocessor
        # with ``features`` and ``perturb`` (AudioPreprocessor) perturbs features, not waveforms,
        # so its features are cached even when it augments.
        self._audio_features = self._cached(self._load_audio, audio, cache_audio, 8192)
        self._image_features = self._cached(self._load_image, image, cache_images, 16384)

    def __len__(self) -> int:
        return len(self.samples)

    @staticmethod
    def _cached(load: Callable, preprocessor: Callable | None, enabled: bool, size: int) -> Callable:
        deterministic = preprocessor is not None and (hasattr(preprocessor, "perturb")
                                                      or not getattr(preprocessor, "augment", False))
        return functools.lru_cache(maxsize=size)(load) if enabled and deterministic else load

    def _load_audio(self, rel: str) -> torch.Tensor:
        load = getattr(self.audio, "features", self.audio)
        return load(resolve(self.manifest, rel))

    def _load_image(self, rel: str) -> torch.Tensor:
        return self.image(resolve(self.manifest, rel))

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample, mode = self.samples[index], self.modes[index]
        item: dict[str, Any] = {"index": index}
        text = sample.get(self.text_field)
        as_text, as_transcript = mode in ("text", "both"), self.transcripts and mode in ("audio", "both")
        if self.tokenizer is not None and text and (as_text or as_transcript):
            tokens = torch.tensor(self.tokenizer.encode(text, self.text_max_len), dtype=torch.long)
            if as_text:
                item["text"] = tokens
            if as_transcript:
                item["transcript"] = tokens
        if self.image is not None and sample.get("image"):
            item["image"] = self._image_features(sample["image"])
        audio_rel = sample.get(self.audio_field)
        if self.audio is not None and audio_rel and mode in ("audio", "both"):
            features = self._audio_features(audio_rel)
            item["audio"] = self.audio.perturb(features) if hasattr(self.audio, "perturb") else features
        if self.answer_index is not None and sample.get("answer") is not None:
            answer = sample["answer"]
            if answer not in self.answer_index:
                raise ValueError(f"{self.manifest}: sample {sample.get('id')!r}: answer {answer!r} "
                                 f"is not in the answer vocabulary ({len(self.answer_index)} answers)")
            item["answer"] = self.answer_index[answer]
        return item

    def lengths(self) -> list[int]:
        """A cheap length per sample (text tokens + audio frames/4) for bucketing."""
        out = []
        info = functools.lru_cache(maxsize=None)(lambda rel: sf.info(str(resolve(self.manifest, rel))).duration)
        for sample, mode in zip(self.samples, self.modes):
            n = 0
            if sample.get(self.text_field) and mode in ("text", "both"):
                n += len(sample[self.text_field].split()) + 2
            if sample.get(self.audio_field) and mode in ("audio", "both"):
                n += int(info(sample[self.audio_field]) * 25)
            out.append(n)
        return out


def collate(items: list[dict[str, Any]], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Pad a list of dataset items into one batch, with a mask per modality."""
    batch: dict[str, torch.Tensor] = {"index": torch.tensor([it["index"] for it in items])}
    n = len(items)
    for key in ("text", "transcript"):
        texts = [it.get(key) for it in items]
        if any(t is not None for t in texts):
            length = max(len(t) for t in texts if t is not None)
            batch[key] = torch.full((n, length), pad_id, dtype=torch.long)
            batch[f"{key}_mask"] = torch.zeros((n, length), dtype=torch.bool)
            for i, t in enumerate(texts):
                if t is not None:
                    batch[key][i, : len(t)] = t
                    batch[f"{key}_mask"][i, : len(t)] = True
    images = [it.get("image") for it in items]
    if any(im is not None for im in images):
        shape = next(im for im in images if im is not None).shape
        batch["image"] = torch.stack([im if im is not None else torch.zeros(shape) for im in images])
        batch["image_mask"] = torch.tensor([im is not None for im in images])
    audios = [it.get("audio") for it in items]
    if any(a is not None for a in audios):
        mels, frames = next(a for a in audios if a is not None).shape[0], max(a.shape[1] for a in audios if a is not None)
        batch["audio"] = torch.zeros((n, mels, frames))
        batch["audio_mask"] = torch.zeros((n, frames), dtype=torch.bool)
        for i, a in enumerate(audios):
            if a is not None:
                batch["audio"][i, :, : a.shape[1]] = a
                batch["audio_mask"][i, : a.shape[1]] = True
    for key in ("answer", "label"):
        if any(key in it for it in items):
            batch[key] = torch.tensor([it.get(key, IGNORE) for it in items], dtype=torch.long)
    return batch


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of similar length: shuffle, sort within pools of ``pool`` batches, shuffle batches.

    Keeps most of the randomness of plain shuffling while cutting padding for text and audio.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, shuffle: bool = True, pool: int = 50,
                 drop_last: bool = False, seed: int = 0):
        self.lengths, self.batch_size, self.shuffle = list(lengths), batch_size, shuffle
        self.pool, self.drop_last, self.seed, self.epoch = pool, drop_last, seed, 0

    def __iter__(self) -> Iterator[list[int]]:
        rng = random.Random(self.seed + self.epoch)
        self.epoch += 1
        order = list(range(len(self.lengths)))
        if self.shuffle:
            rng.shuffle(order)
        pool_size = self.batch_size * self.pool
        batches = []
        for start in range(0, len(order), pool_size):
            chunk = sorted(order[start: start + pool_size], key=lambda i: self.lengths[i])
            batches += [chunk[i: i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        if self.drop_last:
            batches = [b for b in batches if len(b) == self.batch_size]
        if self.shuffle:
            rng.shuffle(batches)
        return iter(batches)

    def __len__(self) -> int:
        full, rest = divmod(len(self.lengths), self.batch_size)
        return full if self.drop_last else full + (rest > 0)


def padding_fraction(batches: Sequence[Sequence[int]], lengths: Sequence[int]) -> float:
    """Share of padded positions when ``batches`` are padded to their longest member."""
    total = padded = 0
    for b in batches:
        ls = np.array([lengths[i] for i in b])
        total += ls.max() * len(ls)
        padded += (ls.max() - ls).sum()
    return float(padded / total) if total else 0.0
