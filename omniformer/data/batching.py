"""From manifest samples to padded batches.

``MultimodalDataset`` turns manifest samples into preprocessed tensors; ``collate`` pads a
list of them into the batch contract every model in Omniformer reads:

    text   (B, L) long,  text_mask  (B, L) bool   True on real tokens
    image  (B, C, H, W), image_mask (B,)    bool   True where the sample has an image
    audio  (B, M, T),    audio_mask (B, T)  bool   True on real frames
    answer / label (B,) long, -100 where the sample has none

and likewise for every other registered modality (``omniformer.registry.MODALITIES``: its
``Modality`` loads and pads it). A modality no sample in the batch has is left out of the
batch. ``BucketBatchSampler`` groups samples of similar text/audio length so padding stays small.
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

from .manifest import MediaError, load_media, resolve
from .text import Tokenizer

IGNORE = -100


class MultimodalDataset(Dataset):
    """Preprocessed samples of a manifest.

    Each modality the dataset has a preprocessor for is read from its manifest field: text
    through ``tokenizer``, images through ``image``, recordings through ``audio``, any other
    registered modality through ``preprocessors[name]`` (what its ``Modality.preprocessor``
    gives). A modality reads its first field (``Modality.fields``) unless ``fields`` names
    another; ``text_field`` and ``audio_field`` say it for text and audio (captions: text/audio;
    QA: question/question_audio). ``modes`` picks, per sample, which of text and audio to use:
    "text", "audio" or "both" (spoken questions are the same samples with the audio view); the
    other modalities are read in every mode. With ``transcripts``, a sample used by voice
    ("audio" or "both") also carries its text tokens as ``transcript``: a training target for
    the spoken view that no encoder reads.
    """

    def __init__(self, manifest: str | Path, samples: Sequence[dict[str, Any]], *,
                 tokenizer: Tokenizer | None = None, image: Callable | None = None,
                 audio: Callable | None = None, text_field: str = "text", audio_field: str = "audio",
                 text_max_len: int = 64, answers: Sequence[str] | None = None,
                 modes: Sequence[str] | str = "both", transcripts: bool = False,
                 cache_audio: bool = True, cache_images: bool = True,
                 preprocessors: dict[str, Callable] | None = None, fields: dict[str, str] | None = None):
        from ..registry import get_modality
        self.manifest = Path(manifest)
        self.samples = list(samples)
        self.tokenizer, self.text_max_len = tokenizer, text_max_len
        self.answer_index = {a: i for i, a in enumerate(answers)} if answers is not None else None
        self.modes = [modes] * len(self.samples) if isinstance(modes, str) else list(modes)
        self.transcripts = transcripts
        if len(self.modes) != len(self.samples):
            raise ValueError(f"modes: expected {len(self.samples)} entries, got {len(self.modes)}")
        self.preprocessors = {name: pre for name, pre in (("image", image), ("audio", audio)) if pre is not None}
        self.preprocessors.update(preprocessors or {})
        self.image, self.audio = self.preprocessors.get("image"), self.preprocessors.get("audio")
        text = self.preprocessors.pop("text", None)
        self._encode_text = text or (functools.partial(_token_ids, tokenizer, text_max_len) if tokenizer else None)
        modalities = {name: get_modality(name) for name in self.preprocessors}  # unknown names fail here
        self.fields = {name: m.fields[0] for name, m in modalities.items()}
        self.fields.update({"text": text_field, "audio": audio_field, **(fields or {})})
        self.text_field, self.audio_field = self.fields["text"], self.fields["audio"]
        # Many samples share one image (captions and questions about the same scene) or one
        # recording (one per distinct sentence), so deterministic features are computed once
        # per worker and kept; augmented ones are drawn fresh every time. A preprocessor with
        # ``features`` and ``perturb`` (AudioPreprocessor) perturbs features, not waveforms, so
        # its features are cached even when it augments. Only files are cached (by their path).
        cache = {"audio": cache_audio, "image": cache_images}
        self._features = {
            name: self._cached(functools.partial(self._load, name, m.files), self.preprocessors[name],
                               cache.get(name, True) and m.files, 16384 if name == "image" else 8192)
            for name, m in modalities.items()}

    def __len__(self) -> int:
        return len(self.samples)

    @staticmethod
    def _cached(load: Callable, preprocessor: Callable | None, enabled: bool, size: int) -> Callable:
        deterministic = preprocessor is not None and (hasattr(preprocessor, "perturb")
                                                      or not getattr(preprocessor, "augment", False))
        return functools.lru_cache(maxsize=size)(load) if enabled and deterministic else load

    def _load(self, name: str, files: bool, value: Any) -> torch.Tensor:
        """A sample's features for modality ``name``; a file that cannot be used is a MediaError
        naming it (the checks and decoders ``data check`` uses)."""
        preprocessor = self.preprocessors[name]
        load = getattr(preprocessor, "features", preprocessor)
        return load_media(resolve(self.manifest, value), load) if files else load(value)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample, mode = self.samples[index], self.modes[index]
        item: dict[str, Any] = {"index": index}
        views = VIEWS.get(mode, ())
        text = sample.get(self.fields["text"])
        as_text, as_transcript = "text" in views, self.transcripts and "audio" in views
        if self._encode_text is not None and text and (as_text or as_transcript):
            tokens = self._encode_text(text)
            if as_text:
                item["text"] = tokens
            if as_transcript:
                item["transcript"] = tokens
        for name, preprocessor in self.preprocessors.items():
            value = sample.get(self.fields[name])
            if not value or (name in VIEWED and name not in views):
                continue
            features = self._features[name](value)
            item[name] = preprocessor.perturb(features) if hasattr(preprocessor, "perturb") else features
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
        info = functools.lru_cache(maxsize=None)(self._duration)
        for sample, mode in zip(self.samples, self.modes):
            n = 0
            text, audio = sample.get(self.fields["text"]), sample.get(self.fields["audio"])
            if text and mode in ("text", "both"):
                n += len(text.split()) + 2
            if audio and mode in ("audio", "both"):
                n += int(info(audio) * 25)
            out.append(n)
        return out


    def _duration(self, relative: str) -> float:
        """A recording's length in seconds from its header; 0 for one that cannot be read (it is
        reported when it is loaded)."""
        try:
            return sf.info(str(resolve(self.manifest, relative))).duration
        except (RuntimeError, OSError, ValueError):  # soundfile's LibsndfileError is a RuntimeError
            return 0.0


class TrainingSamples(Dataset):
    """A dataset as training reads it. Each sample's random draws (augmentation) come from
    (``seed``, ``epoch``, its index): every ``np.random.Generator`` the dataset holds is reseeded
    before the sample is made, so a run is the same whatever its worker count and whenever it is
    resumed. A sample whose media cannot be used comes back as ``{"index", "bad"}`` (the reason,
    naming the file) instead of raising, so that training can skip and count it."""

    def __init__(self, dataset: Dataset, seed: int = 0, epoch: int = 0):
        self.dataset, self.seed, self.epoch = dataset, int(seed), int(epoch)
        self._slots: list[tuple[Any, str]] | None = None  # (owner, attribute) of each generator

    def __len__(self) -> int:
        return len(self.dataset)

    def _reseed(self, index: int) -> None:
        if self._slots is None:  # found once per process (workers have their own copy)
            self._slots = generator_slots(self.dataset)
        for slot, (owner, name) in enumerate(self._slots):
            setattr(owner, name, np.random.default_rng([self.seed, self.epoch, index, slot]))

    def __getitem__(self, index: int) -> dict[str, Any]:
        self._reseed(index)
        try:
            return self.dataset[index]
        except MediaError as e:
            return {"index": index, "bad": str(e)}


def generator_slots(root: Any, depth: int = 4) -> list[tuple[Any, str]]:
    """(owner, attribute name) of each ``np.random.Generator`` in ``root``'s attributes, and in
    theirs (dicts, lists and tuples too), ``depth`` levels down, in a fixed order."""
    seen: set[int] = set()
    slots: list[tuple[Any, str]] = []

    def visit(obj: Any, level: int) -> None:
        if id(obj) in seen or level > depth:
            return
        seen.add(id(obj))
        if isinstance(obj, dict):
            children = list(obj.values())
        elif isinstance(obj, (list, tuple)):
            children = list(obj) if len(obj) <= 64 else []  # containers of objects, not of samples
        elif hasattr(obj, "__dict__") and not isinstance(obj, (torch.Tensor, torch.nn.Module, type)):
            for name, value in vars(obj).items():
                if isinstance(value, np.random.Generator):
                    slots.append((obj, name))
            children = [v for v in vars(obj).values() if not isinstance(v, np.random.Generator)]
        else:
            return
        for child in children:
            visit(child, level + 1)

    visit(root, 0)
    return slots


class SkippingCollate:
    """``collate_fn`` over the good items of a list from ``TrainingSamples``; the bad ones go in
    ``batch["bad"]`` as (index, reason). A batch with no good item is ``{"index": empty, "bad"}``."""

    def __init__(self, collate_fn: Callable):
        self.collate_fn = collate_fn

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        good = [it for it in items if "bad" not in it]
        batch = self.collate_fn(good) if good else {"index": torch.zeros(0, dtype=torch.long)}
        batch["bad"] = [(it["index"], it["bad"]) for it in items if "bad" in it]
        return batch


# Which of the question's two ways each mode reads; modalities outside VIEWED are read in every mode.
VIEWS = {"text": ("text",), "audio": ("audio",), "both": ("text", "audio")}
VIEWED = ("text", "audio")
# Batch entries padded like a modality that no embedder reads: the spoken view's transcript, and
# the text a decoder is taught to write.
PADDED_LIKE = {"transcript": "text", "target": "text"}


def _token_ids(tokenizer: Tokenizer, max_len: int, text: str) -> torch.Tensor:
    return torch.tensor(tokenizer.encode(text, max_len), dtype=torch.long)


def collate(items: list[dict[str, Any]], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Pad a list of dataset items into one batch, with a mask per modality: every registered
    modality some item has, padded by its ``Modality.collate`` (text with ``pad_id``)."""
    from ..registry import get_modality, modality_names
    batch: dict[str, torch.Tensor] = {"index": torch.tensor([it["index"] for it in items])}
    keys = [(key, name) for name in modality_names()
            for key in (name, *(k for k, like in PADDED_LIKE.items() if like == name))]
    for key, name in keys:
        values = [it.get(key) for it in items]
        if any(v is not None for v in values):
            pad = pad_id if name == "text" else None
            batch[key], batch[f"{key}_mask"] = get_modality(name).collate(values, pad_value=pad)
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
