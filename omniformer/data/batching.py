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

from .manifest import MediaError, load_media, open_media, resolve
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
            with open_media(resolve(self.manifest, relative)) as f:  # a file or a tar shard's member
                return sf.info(f).duration
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


# -- Static shapes for compiled steps ------------------------------------------------------------

def bucket_edges(cap: int | None, first: int = 16, limit: int = 1 << 20) -> list[int]:
    """Powers of two from ``first`` up to ``cap`` (exclusive), then ``cap`` itself; without a
    cap, powers of two up to ``limit``. Why powers of two: a length pads by less than 2x and
    a model's whole range of lengths takes a handful of shapes (log2(cap / first) + 1)."""
    top = limit if cap is None else int(cap)
    edges, e = [], max(1, int(first))
    while e < top:
        edges.append(e)
        e *= 2
    return edges + [top]


def static_edges(model: Any) -> dict[str, list[int]]:
    """The edges ``StaticShapes`` uses for ``model``'s batches, each list capped by what the
    model can read, so that padding never runs past its positions: ``text`` by the backbone's
    ``text.max_len``, ``audio`` by its ``audio.max_frames``, ``target`` by a decoder's
    positions; ``transcript`` (a target no position table reads) in uncapped powers of two."""
    from ..model.decoder import TextDecoder
    from ..model.fusion import Omniformer
    caps: dict[str, int] = {}

    def cap(key: str, n: int) -> None:
        caps[key] = min(caps.get(key, n), int(n))

    for module in model.modules():
        if isinstance(module, Omniformer):
            if "text" in module.modalities:
                cap("text", module.cfg.text.max_len)
            if "audio" in module.modalities:
                cap("audio", module.cfg.audio.max_frames)
        elif isinstance(module, TextDecoder):
            cap("target", module.max_positions)
    edges = {key: bucket_edges(n, first=64 if key == "audio" else 16) for key, n in caps.items()}
    edges["transcript"] = bucket_edges(None, first=16)
    return edges


class StaticShapes:
    """``collate_fn`` whose batches have their variable lengths padded up to fixed edges, so that
    a compiled step (``torch.compile(dynamic=False)``, CUDA graphs) meets a few shapes and reuses
    their graphs instead of compiling one per batch length.

    ``edges`` maps a batch key to ascending lengths (``static_edges(model)`` gives a model's, see
    ``for_model``); a key without its own takes those of the modality it is padded like
    (``PADDED_LIKE``: ``transcript`` and ``target`` like ``text``). A key is padded when it has
    edges and a ``<key>_mask`` of shape (B, T) whose T is its own last axis (the layout
    ``Modality.collate`` gives every sequence: text, audio, transcript, target): the value is
    padded along its last axis up to the smallest edge >= T, with the pad id for text-like keys
    (``pad_id``, as ``collate`` uses), the modality's ``pad_value`` for a registered one, or
    ``pad_values[key]``, and the mask with False. Every other entry is left as it is: fixed
    sizes (``image``, masks of shape (B,)), per-sample values (``index``, ``answer``, ``label``,
    -100 where a sample has none, which has no length axis), ``bad``, and any key it does not
    know, even one whose length happens to equal a padded one (nothing says that axis is a
    length). A length past the last edge is kept (never cut). No task's batch holds -100 along
    a length axis (targets are masked by their ``_mask``, and the models turn padding into -100
    themselves), so nothing is padded with it unless ``pad_values`` says so. The batch axis is
    not padded: rows of padding would change the losses that average over rows.

    The models give the same numbers whatever the padding (masks), so a padded batch has the
    loss of the unpadded one; the objectives that draw random masks over a batch's positions
    (pretraining's MLM and masked patches) draw them over the padded shape, so one seed picks
    other positions with and without static shapes.
    """

    def __init__(self, collate_fn: Callable[[list[dict[str, Any]]], dict[str, Any]],
                 edges: dict[str, Sequence[int]], *, pad_id: int = 0, pad_values: dict[str, float] | None = None):
        self.collate_fn, self.pad_id = collate_fn, pad_id
        self.pad_values = dict(pad_values or {})
        self.edges: dict[str, list[int]] = {}
        for key, values in edges.items():
            values = [int(v) for v in values]
            if not values or values != sorted(set(values)) or values[0] < 1:
                raise ValueError(f"static shapes: edges for {key!r} must be ascending positive lengths, got {values}")
            self.edges[key] = values

    @classmethod
    def for_model(cls, collate_fn: Callable, model: Any, **kwargs: Any) -> "StaticShapes":
        """``collate_fn`` padded to the edges ``static_edges(model)`` gives."""
        return cls(collate_fn, static_edges(model), **kwargs)

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return self.pad(self.collate_fn(items))

    def edges_of(self, key: str) -> list[int] | None:
        return self.edges.get(key, self.edges.get(PADDED_LIKE.get(key, "")))

    def pad_value(self, key: str) -> float:
        if key in self.pad_values:
            return self.pad_values[key]
        name = PADDED_LIKE.get(key, key)
        if name == "text":
            return self.pad_id
        from ..registry import get_modality, modality_names
        return get_modality(name).pad_value if name in modality_names() else 0

    def pad(self, batch: dict[str, Any]) -> dict[str, Any]:
        """``batch`` with each sequence it knows padded up to its edge (a new dict; tensors
        that need no padding are shared)."""
        out = dict(batch)
        for key, value in batch.items():
            mask, edges = batch.get(f"{key}_mask"), self.edges_of(key)
            if (edges is None or not isinstance(value, torch.Tensor) or not isinstance(mask, torch.Tensor)
                    or mask.ndim != 2 or value.ndim < 2 or value.shape[0] != mask.shape[0]
                    or value.shape[-1] != mask.shape[1]):
                continue
            length = mask.shape[1]
            edge = next((e for e in edges if e >= length), length)
            if edge == length:
                continue
            padded = value.new_full((*value.shape[:-1], edge), self.pad_value(key))
            padded[..., :length] = value
            wider = mask.new_zeros((mask.shape[0], edge))
            wider[:, :length] = mask
            out[key], out[f"{key}_mask"] = padded, wider
        return out
