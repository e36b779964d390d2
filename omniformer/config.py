"""Typed configs that validate themselves: YAML files plus ``--key=value`` overrides.

Every config is a dataclass. ``from_dict`` rejects unknown keys (naming the key and the
allowed ones), coerces YAML/CLI strings to the declared type and runs each class's
``validate``; so a typo in a recipe fails at start-up, not an hour into a run.
"""
from __future__ import annotations

import dataclasses
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml


class ConfigError(ValueError):
    """A config value or key is wrong; the message names it and what was expected."""


class RecipeUpgraded(UserWarning):
    """A recipe key was read from where an older layout kept it (see ``upgrade_recipe``)."""


# ---------------------------------------------------------------------------------------------
# Generic machinery
# ---------------------------------------------------------------------------------------------

def _coerce(value: Any, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is Literal:
        if isinstance(value, str):
            for arg in args:  # CLI overrides arrive as strings; match them to literal ints too
                if str(arg) == value:
                    return arg
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v for v in (s.strip() for s in value.split(",")) if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        return [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {annotation.__name__} fields, got {value!r}")
        return from_dict(annotation, value, where)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if annotation is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``; unknown keys and bad values raise ConfigError."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown config key {prefix}{unknown[0]!s}; allowed keys{' in ' + where if where else ''}: "
            + ", ".join(names)
        )
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    obj = cls(**kwargs)
    _validate_tree(obj, where)
    return obj


@dataclass(frozen=True)
class Range:
    """The values a numeric config field may take: ``lo`` to ``hi`` (None: unbounded), each end
    closed unless ``open`` says otherwise ("lo", "hi" or "both"). A config class declares one per
    numeric field in ``RANGES``; for a list of numbers, every element is held to it."""
    lo: float | None = None
    hi: float | None = None
    open: Literal["", "lo", "hi", "both"] = ""

    def admits(self, value: float) -> bool:
        lo_open, hi_open = self.open in ("lo", "both"), self.open in ("hi", "both")
        if value != value:  # NaN
            return False
        if self.lo is not None and (value < self.lo or (lo_open and value == self.lo)):
            return False
        return not (self.hi is not None and (value > self.hi or (hi_open and value == self.hi)))

    def __str__(self) -> str:
        fmt = lambda x: f"{x:,}" if isinstance(x, int) and abs(x) >= 10_000 else f"{x:g}"  # noqa: E731
        if self.hi is None:
            return f"{'>' if self.open in ('lo', 'both') else '>='} {fmt(self.lo)}"
        if self.lo is None:
            return f"{'<' if self.open in ('hi', 'both') else '<='} {fmt(self.hi)}"
        return (f"in {'(' if self.open in ('lo', 'both') else '['}{fmt(self.lo)}, "
                f"{fmt(self.hi)}{')' if self.open in ('hi', 'both') else ']'}")


def numeric_fields(cls: type) -> list[str]:
    """The fields of config class ``cls`` that hold a number or a list of numbers."""
    out = []
    for name, hint in typing.get_type_hints(cls).items():
        if name not in {f.name for f in dataclasses.fields(cls)}:
            continue
        if typing.get_origin(hint) in (list, tuple):
            hint = (typing.get_args(hint) or (Any,))[0]
        if hint in (int, float):
            out.append(name)
    return out


def check_ranges(obj: Any) -> None:
    """Hold each numeric field of a config to its class's ``RANGES``; the error names the key,
    the value and the range, so a negative thread count or a vanishing MLP never reaches torch."""
    for name, allowed in getattr(type(obj), "RANGES", {}).items():
        value = getattr(obj, name)
        values = value if isinstance(value, (list, tuple)) else [value]
        for i, v in enumerate(values):
            if isinstance(v, (int, float)) and not isinstance(v, bool) and not allowed.admits(v):
                at = f"{name}[{i}]" if isinstance(value, (list, tuple)) else name
                raise ConfigError(f"{at}: must be {allowed}, got {v}")


def check_config(obj: Any) -> None:
    """Check one config object as ``from_dict`` does: its ``RANGES``, then its ``validate``."""
    check_ranges(obj)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate()


def _validate_tree(obj: Any, where: str) -> None:
    try:
        check_config(obj)
    except ConfigError as e:
        raise ConfigError(f"{where}.{e}" if where else str(e)) from None


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """``["--train.lr=3e-4", "--model.depth=6"]`` -> nested dict of strings, coerced later."""
    out: dict[str, Any] = {}
    for arg in args:
        if not arg.startswith("--") or "=" not in arg:
            raise ConfigError(f"override {arg!r} must look like --section.key=value")
        key, value = arg[2:].split("=", 1)
        parts = key.split(".")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {arg!r} conflicts with an earlier override")
        node[parts[-1]] = yaml.safe_load(value) if value else value
    return out


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def require(cond: bool, msg: str) -> None:
    """A config check: raise ConfigError(``msg``) unless ``cond``; every config's ``validate`` uses it."""
    if not cond:
        raise ConfigError(msg)


# ---------------------------------------------------------------------------------------------
# The configs
# ---------------------------------------------------------------------------------------------

Activation = Literal["gelu", "gelu_tanh", "quick_gelu", "relu"]

# Bounds several configs share: a share in [0, 1), a loss weight, a layer count, a step count.
DROPOUT = Range(0.0, 1.0, open="hi")
SHARE = Range(0.0, 1.0)
WEIGHT = Range(0.0, 1000.0)
EPS = Range(0.0, 1.0, open="both")
LAYERS = Range(0, 256)
STEPS = Range(0, 10 ** 9)
WIDTH = Range(1, 65536)
HEADS = Range(1, 1024)


@dataclass
class TowerConfig:
    """A modality tower with its own shape, unlike the fusion layers: an imported encoder (BERT,
    ViT, CLIP, Whisper...). Its embedder is built at this width too; a Linear maps the tower's
    output to the model width when the two differ. Set by ``omniformer.interop.hf``."""
    width: int = 128
    depth: int = 1
    heads: int = 4
    mlp_hidden: int = 512
    norm: Literal["pre", "post"] = "pre"
    layer_norm_eps: float = 1e-5
    activation: Activation = "gelu"
    causal: bool = False           # causal self-attention (CLIP's text tower)
    final_ln: bool = True          # a LayerNorm after the blocks (pre-LN towers only)
    embed_ln: bool = True          # the embedder's LayerNorm (BERT, CLIP vision: yes; ViT, Whisper: no)

    RANGES: ClassVar[dict[str, Range]] = {"width": WIDTH, "depth": LAYERS, "heads": HEADS,
                                          "mlp_hidden": Range(1, 1 << 20), "layer_norm_eps": EPS}

    def validate(self) -> None:
        require(self.width % self.heads == 0, f"width: must be a positive multiple of heads ({self.heads}), got {self.width}")


@dataclass
class TextConfig:
    max_len: int = 48
    positions: Literal["learned", "sinusoidal"] = "learned"
    pad_id: int = 0                # the padding token id (RoBERTa: 1)
    tower: TowerConfig | None = None

    RANGES: ClassVar[dict[str, Range]] = {"max_len": Range(2, 65536), "pad_id": Range(0, 10 ** 7)}


@dataclass
class ImageConfig:
    size: int = 64
    channels: int = 3
    patch_size: int = 8
    # "patch": one linear projection per patch (ViT). "conv": a small convolutional stem
    # that ends at the same token grid; it learns shapes from few samples much faster.
    stem: Literal["patch", "conv"] = "conv"
    # Extra 3x3 stride-1 convs at full resolution before the conv stem downsamples (0: none).
    stem_convs: int = 0
    positions: Literal["learned", "sinusoidal"] = "learned"
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    # Two coordinate channels (x, y in [-1, 1]) fed to the conv stem with the pixels, so each
    # token carries where it is in its content (CoordConv; Relation Networks tag cells the
    # same way). Learned positions alone start too small to answer left/right questions early.
    coordinates: bool = True
    cls_token: bool = False        # a learned [CLS] token before the patches (ViT, CLIP)
    patch_bias: bool = True        # the patch stem's bias (CLIP's has none)
    # Leave patches of one flat colour out of the sequence, as padding. On flat-background
    # scenes (ShapesWorld) every background token otherwise carries its position and nothing
    # else, which drowns where the objects are: one-object left/right questions stayed at
    # chance for 300 steps with them and reached 100% in 100 without (measured). No effect on
    # photographs, where no patch is exactly flat.
    drop_flat_patches: bool = False
    tower: TowerConfig | None = None

    RANGES: ClassVar[dict[str, Range]] = {"size": Range(1, 8192), "channels": Range(1, 64),
                                          "patch_size": Range(1, 8192), "stem_convs": Range(0, 8), "mean": Range(-10.0, 10.0),
                                          "std": Range(0.0, 100.0, open="lo")}

    def validate(self) -> None:
        require(self.size % self.patch_size == 0, f"patch_size: must divide size ({self.size}), got {self.patch_size}")
        require(len(self.mean) == self.channels and len(self.std) == self.channels,
               f"mean/std: need {self.channels} values each (channels), got {len(self.mean)} and {len(self.std)}")


@dataclass
class AudioConfig:
    sample_rate: int = 16000
    n_mels: int = 80
    win_ms: float = 25.0
    hop_ms: float = 10.0
    max_seconds: float = 8.0
    # Frames per audio token after the convolutional subsampling stem (4 -> 40 ms tokens).
    subsample: Literal[1, 2, 4, 8] = 4
    # "none": tokens carry no position, only the stem's local view of where they are. A word
    # spotter (heads.WordSpotter) reading them then cannot tell recordings apart by timing.
    positions: Literal["learned", "sinusoidal", "none"] = "sinusoidal"
    # "conv": stride-2 convolutions over time + a projection. "whisper": Whisper's stem, conv(k3,
    # s1) -> GELU -> conv(k3, s2) -> GELU (subsample 2), no projection. "conv2d": 3x3 convolutions
    # over (mel, time) as an image, stride 2 in both, stem_channels maps, then a projection of
    # each frame's maps (the Conformer's subsampling), so a pattern is learned once for every pitch.
    stem: Literal["conv", "whisper", "conv2d"] = "conv"
    stem_channels: int = 32        # feature maps of the conv2d stem
    tower: TowerConfig | None = None

    RANGES: ClassVar[dict[str, Range]] = {"sample_rate": Range(8000, 48000), "n_mels": Range(8, 256),
                                          "win_ms": Range(1.0, 1000.0), "hop_ms": Range(0.0, 1000.0, open="lo"),
                                          "max_seconds": Range(0.0, 3600.0, open="lo"),
                                          "stem_channels": Range(1, 1024)}

    def validate(self) -> None:
        require(self.hop_ms <= self.win_ms, f"hop_ms: must be in (0, win_ms={self.win_ms}], got {self.hop_ms}")
        require(self.max_frames <= 1 << 20, f"max_seconds: {self.max_seconds} s of {self.hop_ms} ms frames is "
                                            f"{self.max_frames:,} frames; at most {1 << 20:,}")
        require(self.stem != "whisper" or self.subsample == 2,
               f"subsample: the whisper stem subsamples by 2, got {self.subsample}")

    @property
    def max_frames(self) -> int:
        return int(self.max_seconds * 1000 / self.hop_ms) + 1


@dataclass
class ModelConfig:
    width: int = 128
    depth: int = 4                 # fusion layers over all modalities
    tower_depth: int = 1           # per-modality layers before fusion (used by contrastive)
    heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.1
    attn_dropout: float = 0.0
    norm: Literal["pre", "post"] = "pre"
    layer_norm_eps: float = 1e-5
    activation: Activation = "gelu"
    vocab_size: int = 0            # filled from the tokenizer
    modalities: list[str] = field(default_factory=lambda: ["text", "image", "audio"])
    text: TextConfig = field(default_factory=TextConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    # Pretrained towers to start from, per modality: {"text": "bert:/path/to/checkpoint", ...};
    # see omniformer.interop.hf (kinds: bert, roberta, clip_text, vit, clip_vision, whisper).
    towers_from: dict[str, str] = field(default_factory=dict)
    # The options of a registered modality that has no section of its own above, read by its
    # ``Config`` dataclass: {"sensor": {"channels": 3}} (omniformer.modalities.base.Modality.options).
    options: dict[str, dict[str, Any]] = field(default_factory=dict)

    RANGES: ClassVar[dict[str, Range]] = {"width": WIDTH, "depth": Range(1, 256), "tower_depth": LAYERS,
                                          "heads": HEADS, "mlp_ratio": Range(0.0, 64.0, open="lo"),
                                          "dropout": DROPOUT, "attn_dropout": DROPOUT, "layer_norm_eps": EPS,
                                          "vocab_size": Range(0, 10 ** 7)}

    def validate(self) -> None:
        require(self.width % self.heads == 0, f"width: must be a positive multiple of heads ({self.heads}), got {self.width}")
        require(int(self.width * self.mlp_ratio) >= 1,
               f"mlp_ratio: {self.mlp_ratio} of width {self.width} leaves the MLP no hidden unit; "
               f"must be >= {1 / self.width:g}")
        from .registry import get_modality, modality_names
        known = modality_names()
        require(bool(self.modalities), f"modalities: empty; name at least one of {known}")
        bad = [m for m in self.modalities if m not in known]
        require(not bad, f"modalities: unknown {bad}; known (omniformer.registry.MODALITIES): {known}")
        for m, source in self.towers_from.items():
            require(m in known and isinstance(source, str) and ":" in source,
                   f"towers_from.{m}: expected a modality in {known} mapped to 'kind:path', got {source!r}")
        for m, given in self.options.items():
            require(m in known, f"options.{m}: not a registered modality; known: {known}")
            require(isinstance(given, dict), f"options.{m}: expected a mapping of the {m} modality's options, got {given!r}")
            modality = get_modality(m)
            require(modality.Config is not None or not given,
                   f"options.{m}: the {m} modality declares no options (its Config is None)")
            modality.options(self)  # its Config checks the keys and values


@dataclass
class ObjectiveConfig:
    mlm: float = 1.0               # weight of masked language modelling
    mlm_probability: float = 0.15
    matching: float = 1.0          # cross-modal matching (true vs mismatched pair)
    hard_negatives: bool = True
    contrastive: float = 0.5       # symmetric InfoNCE between modality towers
    masked_patch: float = 0.0      # masked patch modelling (image and audio)
    masked_patch_probability: float = 0.25
    word_spotting: float = 0.0     # which words a spoken caption says (QA's word spotter learns it)
    # Image-text matching judged by a question-guided head (the caption as the question), which
    # QA fine-tuning with task.head=guided starts from.
    guided_matching: float = 0.0
    guided_glimpses: int = 1       # looks of that head at the image: QA's task.glimpses, which it starts
    # Next-word prediction: a causal decoder (cross-attention to the sample's image and audio,
    # read without the text) writes the caption word by word; a text alone is continued. The
    # caption and translate tasks start their decoder from it.
    next_word: float = 0.0
    next_word_depth: int = 2       # the decoder's layers (a caption/translate recipe's task.decoder_depth)

    RANGES: ClassVar[dict[str, Range]] = {
        **{name: WEIGHT for name in ("mlm", "matching", "contrastive", "masked_patch", "word_spotting",
                                     "guided_matching", "next_word")},
        "next_word_depth": Range(1, 64),
        "mlm_probability": Range(0.0, 1.0, open="both"), "masked_patch_probability": Range(0.0, 1.0, open="both"),
        "guided_glimpses": Range(1, 64)}

    def validate(self) -> None:
        require(self.mlm + self.matching + self.contrastive + self.masked_patch + self.guided_matching
                + self.next_word > 0,
               "objectives: at least one weight must be > 0")


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 64
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    warmup_steps: int = 100
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "auto"
    # auto: bf16 autocast on a GPU with bf16, fp32 on CPU; native-bf16: bf16 wherever the hardware
    # has it (CPUs with AVX512-BF16 or AMX too), fp32 elsewhere.
    precision: Literal["auto", "fp32", "bf16", "fp16", "native-bf16"] = "auto"
    compile: bool = False
    # torch.compile's mode when ``compile`` is on: "reduce-overhead" captures CUDA graphs on a GPU
    # (a small model's step is bound by kernel launches otherwise); "default" everywhere else.
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = "default"
    # Pad text and audio lengths up to fixed bucket edges, so a compiled (or CUDA-graph) step sees a
    # few shapes instead of one per batch.
    static_shapes: bool = False
    # Past one process (docs/scale-out.md): under torchrun, "auto" is DDP when there are several
    # ranks; "fsdp" shards parameters, gradients and optimizer state (FSDP2, fully_shard) and
    # checkpoints with Distributed Checkpoint; "none" refuses a multi-rank launch.
    parallel: Literal["auto", "none", "ddp", "fsdp"] = "auto"
    # Recompute each fusion block's activations in the backward pass: less memory, ~1/3 more compute.
    activation_checkpointing: bool = False
    # Append each optimizer step's sample indices (over every rank), mean loss, gradient norm and
    # wall-clock time to TASK/samples.jsonl: what a step saw, to check a resumed or multi-rank run
    # against another.
    log_samples: bool = False
    workers: int = 2
    eval_every: int = 250
    eval_batches: int = 0          # 0: the whole validation split
    save_every: int = 250
    keep_checkpoints: int = 0      # also keep the weights of the last N save_every steps (steps/), to average
    log_every: int = 20
    threads: int = 0               # torch intra-op threads; 0: the cores other processes leave free (train/threads.py)
    progress: bool = True
    # "length": batches of similar length (least padding). "modality" (QA fine-tuning): batches
    # of questions asked the same way (text, speech, both), otherwise shuffled. ShapesWorld's
    # question length tracks its family, so length buckets held one family each and slowed
    # learning; mixing text with speech instead pads every text question to the speech length.
    bucket: Literal["length", "modality"] = "length"
    # Training samples whose media cannot be used (missing, corrupt, cut short) are skipped,
    # counted and logged once each; past this share of the training set the run stops listing them.
    max_bad_fraction: float = 0.01
    # A step whose loss or gradient is NaN or infinite: "skip" it (counted, logged with its step
    # and sample ids) or "stop" the run (its last checkpoint is kept). Skipping stops the run too
    # after ``max_skipped_steps`` such steps in a row (it has diverged).
    nonfinite: Literal["skip", "stop"] = "skip"
    max_skipped_steps: int = 10

    RANGES: ClassVar[dict[str, Range]] = {
        "max_bad_fraction": SHARE, "max_skipped_steps": Range(1, 10 ** 9),
        "steps": Range(1, 10 ** 9), "batch_size": Range(1, 1 << 20), "grad_accum": Range(1, 1 << 16),
        "lr": Range(0.0, 10.0, open="lo"), "min_lr_ratio": SHARE, "weight_decay": Range(0.0, 10.0),
        "betas": Range(0.0, 1.0, open="hi"), "warmup_steps": STEPS, "grad_clip": Range(0.0, 1e6),
        "seed": Range(0, 2 ** 32 - 1), "workers": Range(0, 256), "eval_every": Range(1, 10 ** 9),
        "eval_batches": STEPS, "save_every": Range(1, 10 ** 9), "keep_checkpoints": Range(0, 10 ** 6), "log_every": Range(1, 10 ** 9),
        "threads": Range(0, 1024)}

    def validate(self) -> None:
        require(len(self.betas) == 2, f"betas: need two values in [0, 1), got {self.betas}")


@dataclass
class DataConfig:
    manifest: str = ""             # the JSON Lines manifest to train on (docs/own-data.md)
    # A built-in dataset that writes ``manifest`` when it is absent ("shapes": ShapesWorld),
    # with its own options; empty for a user's own data.
    dataset: str = ""
    dataset_options: dict[str, Any] = field(default_factory=dict)
    tokenizer: str = ""            # tokenizer.json or vocab.txt; empty: train one
    vocab_size: int = 1000
    # How a trained tokenizer cuts text into words before pieces: true splits off punctuation
    # (BERT's way), false keeps whitespace-separated words whole, so written text decodes back
    # exactly ("T-Shirt", not "T - Shirt"). Empty (null): false for the tasks that write text
    # (translate, caption), true for the rest.
    split_punctuation: bool | None = None
    augment: bool = True           # image augmentation, task-aware: the QA task never flips images
    spec_augment: bool = True      # SpecAugment's time and frequency masks on training speech
    # Training speech sped up or slowed down by a random factor in [low, high] (tempo and
    # pitch together, on the features); [] for none.
    speed_perturbation: list[float] = field(default_factory=lambda: [0.9, 1.1])

    # vocab_size: more than the 5 special tokens; a million is past any real vocabulary (and far
    # past that the tokenizer's trainer aborts the process, out of memory).
    RANGES: ClassVar[dict[str, Range]] = {"vocab_size": Range(6, 1_000_000), "speed_perturbation": Range(0.1, 10.0)}

    def validate(self) -> None:
        sp = self.speed_perturbation
        require(not sp or (len(sp) == 2 and 0 < sp[0] <= sp[1]),
               f"speed_perturbation: expected [] or [low, high] with 0 < low <= high, got {sp}")


@dataclass
class RunConfig:
    """A whole recipe: what the YAML files under configs/ hold."""
    out_dir: str = "runs/quickstart"
    # The task's own section (its head and loss choices), read by the task's Config class
    # (``omniformer.tasks.base.Task.config``); unknown keys are errors named ``task.KEY``.
    task: dict[str, Any] = field(default_factory=dict)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objectives: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    pretrain: TrainConfig = field(default_factory=TrainConfig)
    finetune: TrainConfig = field(default_factory=TrainConfig)
    # Fraction of the task's training labels used (the low-label experiment uses 0.1).
    label_fraction: float = 1.0

    RANGES: ClassVar[dict[str, Range]] = {"label_fraction": Range(0.0, 1.0, open="lo")}


RECIPES = Path(__file__).parent / "configs"


def recipe_path(name: str | None) -> Path | None:
    """A YAML path, or the name of a built-in recipe (``quickstart``, ``shapes-full``)."""
    if name is None:
        return None
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    builtin = RECIPES / f"{name}.yaml"
    if builtin.is_file():
        return builtin
    known = sorted(p.stem for p in RECIPES.glob("*.yaml"))
    raise ConfigError(f"--config {name!r}: no such file or built-in recipe; built-in recipes: {', '.join(known)}")


# Keys that moved out of the general sections when tasks and datasets got their own: a recipe
# or a checkpoint written before reads the same, with each key in its new place.
_MOVED = {("model", "answer_head"): ("task", "head"), ("model", "answer_relations"): ("task", "relations"),
          ("model", "answer_glimpses"): ("task", "glimpses"), ("model", "spoken_question"): ("task", "spoken_question"),
          ("spoken_fraction",): ("task", "spoken_fraction"), ("spoken_words",): ("task", "word_spotting"),
          ("spotter_overhears",): ("task", "spotter_overhears"), ("grounding",): ("task", "grounding"),
          ("objectives", "spoken_words"): ("objectives", "word_spotting")}


def upgrade_recipe(data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A recipe dict in today's layout, and a note per key that moved (an older recipe or
    checkpoint config: QA's head knobs in ``model``, ShapesWorld in ``data.shapes``...)."""
    import copy
    data, notes = copy.deepcopy(data), []
    for old, new in _MOVED.items():
        node = data
        for part in old[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or old[-1] not in node:
            continue
        value = node.pop(old[-1])
        data.setdefault(new[0], {})[new[1]] = value
        notes.append(f"{'.'.join(old)} is now {'.'.join(new)}")
    model = data.get("model")
    if isinstance(model, dict):
        model.pop("num_answers", None)  # read from the checkpoint's answers
    for section in ("pretrain", "finetune"):
        train = data.get(section)
        if not isinstance(train, dict) or "curriculum_steps" not in train and "curriculum_families" not in train:
            continue
        steps, families = train.pop("curriculum_steps", None), train.pop("curriculum_families", None)
        if section == "finetune" and (steps or families):
            curriculum = data.setdefault("task", {}).setdefault("curriculum", {})
            curriculum.setdefault("key", "family")
            if families:
                curriculum["values"] = families
            if steps is not None:
                curriculum["steps"] = steps
            notes.append("finetune.curriculum_families/steps are now task.curriculum {key: family, values, steps}")
    datacfg = data.get("data")
    if isinstance(datacfg, dict) and ("shapes" in datacfg or "shapes_dir" in datacfg):
        folder, options = datacfg.pop("shapes_dir", "data/shapes"), datacfg.pop("shapes", {})
        if not datacfg.get("manifest"):
            datacfg.update(manifest=f"{folder}/manifest.jsonl", dataset="shapes", dataset_options=options)
            notes.append(f"data.shapes_dir/shapes are now data.manifest={folder}/manifest.jsonl, "
                         "data.dataset=shapes and data.dataset_options")
    return data, notes


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None,
                cls: type = RunConfig) -> Any:
    """Load a YAML recipe (or defaults) and apply ``--key=value`` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if path.is_dir():
            raise ConfigError(f"config file {path} is a folder; give a YAML recipe")
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_bytes().decode("utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"config file {path} is not UTF-8 text (byte {e.start}): a YAML recipe is expected") from None
        except OSError as e:
            raise ConfigError(f"config file {path} cannot be read: {e.strerror or e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path}: expected a mapping at the top level")
    if overrides:
        update = parse_overrides(overrides) if isinstance(overrides, list) else overrides
        data = merge(data, update)
    if cls is RunConfig:
        data, notes = upgrade_recipe(data)
        for note in notes:
            warnings.warn(RecipeUpgraded(f"{path or 'recipe'}: {note}"), stacklevel=2)
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path else str(e)) from None


def save_config(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def run_config_from(data: dict[str, Any]) -> "RunConfig":
    """A checkpoint's recorded recipe as a RunConfig, older layouts upgraded in place."""
    return from_dict(RunConfig, upgrade_recipe(data or {})[0])
