"""Import Hugging Face checkpoints as Omniformer towers.

A checkpoint folder (``config.json`` + ``model.safetensors``, sharded safetensors, or
``pytorch_model.bin`` read with ``torch.load(weights_only=True)``) becomes one modality's
embedder and tower::

    tower = import_tower("bert", "path/to/bert")      # ImportedTower
    cfg = ModelConfig(modalities=["text"])
    tower.apply(cfg)                                    # width, depth, heads... of cfg.text.tower
    model = Omniformer(cfg)
    tower.load_into(model)                              # embedders.text.* and towers.text.*

or, from a recipe, ``model.towers_from: {text: "bert:path", image: "vit:path"}`` with
``resolve_towers(cfg)`` (architecture) and ``load_pretrained_towers(model, towers)`` (weights).

Kinds: ``bert``, ``roberta``, ``clip_text`` (text); ``vit``, ``clip_vision`` (image);
``whisper`` (audio, the encoder). Every tensor of the checkpoint's tower is accounted for:
a missing tensor, a tensor of the wrong shape or one the importer does not know raises
``TowerImportError`` naming it, unless ``allow_missing`` / ``allow_unused`` say otherwise.
Tensors outside the tower (BERT's MLM head, CLIP's other tower, Whisper's decoder) and
known heads that towers do not use (``pooler.*``) are skipped and listed in ``skipped``.

What each tower outputs (the reference these are tested against, valid positions only):
BERT/RoBERTa/ViT/CLIP text/Whisper: ``last_hidden_state``; CLIP vision:
``post_layernorm(last_hidden_state)`` (CLIP applies it to [CLS] only; here every token is
normalised before fusion).
"""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..config import ConfigError, ModelConfig, TowerConfig, check_config
from ..train.checkpoint import CheckpointError, read_json_file, read_safetensors

KINDS = {"bert": "text", "roberta": "text", "clip_text": "text", "vit": "image", "clip_vision": "image",
         "whisper": "audio"}

_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "quick_gelu": "quick_gelu",
                "relu": "relu"}


class TowerImportError(CheckpointError):
    """A checkpoint cannot become a tower; the message names the file, tensor or setting."""


# ---------------------------------------------------------------------------------------------
# Reading checkpoint folders
# ---------------------------------------------------------------------------------------------

def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a checkpoint folder (config.json, preprocessor_config.json...); anything
    else, or a missing, damaged or git-lfs pointer file, is an error naming it."""
    try:
        data = read_json_file(path)
    except CheckpointError as e:
        raise TowerImportError(str(e)) from None
    if not isinstance(data, dict):
        raise TowerImportError(f"{path}: expected a JSON object of settings, got {type(data).__name__}")
    return data


def read_weights(path: str | Path) -> dict[str, Tensor]:
    """All tensors of a checkpoint folder: safetensors (single or sharded) preferred, else a
    ``pytorch_model.bin`` loaded with ``weights_only=True`` (no arbitrary unpickling). A damaged
    file (cut short, empty, a git-lfs pointer) is a TowerImportError naming it."""
    try:
        return _read_weights(Path(path))
    except TowerImportError:
        raise
    except CheckpointError as e:
        raise TowerImportError(str(e)) from None


def _read_weights(path: Path) -> dict[str, Tensor]:
    if (path / "model.safetensors").is_file():
        return read_safetensors(path / "model.safetensors")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise TowerImportError(f"{index}: expected a 'weight_map' of tensor names to shard files")
        out: dict[str, Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            out.update(read_safetensors(path / shard))
        return out
    if (path / "pytorch_model.bin").is_file():
        try:
            state = torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
        except Exception as e:  # an unsafe pickle is refused here, not executed
            raise TowerImportError(f"cannot load {path / 'pytorch_model.bin'} with weights_only=True: {e}") from None
        return dict(state.get("state_dict", state))
    raise TowerImportError(f"{path}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


class _Source:
    """The checkpoint's tensors under one prefix; ``take`` checks and records each use."""

    def __init__(self, tensors: dict[str, Tensor], root: str, where: str, allow_missing: bool):
        self.tensors, self.root, self.where, self.allow_missing = tensors, root, where, allow_missing
        self.used: set[str] = set()
        self.missing: list[str] = []

    def has(self, name: str) -> bool:
        return self.root + name in self.tensors

    def take(self, name: str, *shape: int) -> Tensor | None:
        full = self.root + name
        t = self.tensors.get(full)
        if t is None:
            if self.allow_missing:
                self.missing.append(full)
                return None
            raise TowerImportError(f"{self.where}: missing tensor {full!r} (expected shape {tuple(shape)}); "
                                   f"pass allow_missing=True to keep those weights at their initial values")
        if tuple(t.shape) != tuple(shape):
            raise TowerImportError(f"{self.where}: tensor {full!r} has shape {tuple(t.shape)}, "
                                   f"expected {tuple(shape)} from config.json")
        self.used.add(full)
        return t.detach().to(torch.float32)


class _Out:
    """Target state dict plus, per target key, the source tensors it came from."""

    def __init__(self):
        self.state: dict[str, Tensor] = {}
        self.sources: dict[str, list[str]] = {}

    def put(self, key: str, src: _Source, names: list[str], tensors: list[Tensor | None],
            combine: Callable[..., Tensor] = lambda t: t) -> None:
        if any(t is None for t in tensors):
            return  # allow_missing: keep the initial value
        self.state[key] = combine(*tensors).contiguous()
        self.sources[key] = [src.root + n for n in names]

    def copy(self, key: str, src: _Source, name: str, *shape: int) -> None:
        self.put(key, src, [name], [src.take(name, *shape)])


def _zeros(*shape: int) -> Tensor:
    return torch.zeros(*shape)


# ---------------------------------------------------------------------------------------------
# The imported tower
# ---------------------------------------------------------------------------------------------

@dataclass
class ImportedTower:
    kind: str
    modality: str
    path: Path
    tower: TowerConfig
    settings: dict[str, Any]                 # fields of cfg.<modality> the checkpoint decides
    capacity: dict[str, Any]                 # limits: the recipe may ask for less (text max_len, audio max_seconds)
    state: dict[str, Tensor]                 # keys relative to the backbone: embedders.<m>.*, towers.<m>.*
    sources: dict[str, list[str]]            # target key -> checkpoint tensors it was made from
    vocab_size: int = 0
    skipped: list[str] = field(default_factory=list)   # tensors outside the tower or known unused heads
    missing: list[str] = field(default_factory=list)   # with allow_missing: tensors not found
    unused: list[str] = field(default_factory=list)    # with allow_unused: tensors not mapped
    tokenizer: Any = None                    # omniformer Tokenizer (BERT) or a raw tokenizers.Tokenizer

    def apply(self, cfg: ModelConfig) -> ModelConfig:
        """Set ``cfg``'s architecture for this modality from the checkpoint (in place; returned)."""
        sub = getattr(cfg, self.modality)
        for key, value in self.settings.items():
            setattr(sub, key, value)
        for key, limit in self.capacity.items():
            setattr(sub, key, min(getattr(sub, key), limit))
        sub.tower = dataclasses.replace(self.tower)
        if self.modality == "text":
            cfg.vocab_size = self.vocab_size
        if self.modality not in cfg.modalities:
            raise TowerImportError(f"{self.path}: a {self.modality} tower, but model.modalities is {cfg.modalities}")
        try:
            check_config(sub)
        except ConfigError as e:
            raise TowerImportError(f"{self.path}: the {self.kind} checkpoint gives model.{self.modality}.{e}") from None
        return cfg

    def load_into(self, model: nn.Module) -> None:
        """Copy the weights into an Omniformer backbone built from a config this tower was applied to."""
        own = model.state_dict()
        state = {}
        for key, value in self.state.items():
            if key not in own:
                raise TowerImportError(f"{self.path}: the model has no {key!r} (from {self.sources[key]}); "
                                       f"was the config built with this tower applied?")
            target = own[key].shape
            if key.endswith("positions.weight") and value.shape[1:] == target[1:] and value.shape[0] >= target[0]:
                value = value[: target[0]]  # the recipe asked for fewer positions than the checkpoint has
            if value.shape != target:
                raise TowerImportError(f"{self.path}: tensor {self.sources[key]} gives {tuple(value.shape)} for "
                                       f"{key!r}, but the model has {tuple(target)}")
            state[key] = value
        model.load_state_dict(state, strict=False)


def _activation(hf: dict, key: str, where: str) -> str:
    name = hf.get(key, "gelu")
    if name not in _ACTIVATIONS:
        raise TowerImportError(f"{where}: activation {key}={name!r} is not supported; known: {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]


def _root(tensors: dict[str, Tensor], candidates: list[str], probe: str, where: str) -> str:
    for root in candidates:
        if root + probe in tensors:
            return root
    raise TowerImportError(f"{where}: found none of {[c + probe for c in candidates]}; is this the right kind of "
                           f"checkpoint? (its first tensors: {sorted(tensors)[:4]})")


def _blocks(src: _Source, out: _Out, m: str, n: int, W: int, F: int, names: dict[str, str],
            k_bias: bool = True, qkv_bias: bool = True) -> None:
    """Map ``n`` Transformer layers onto ``towers.<m>.blocks.*`` (names: the checkpoint's layer parts)."""
    for i in range(n):
        p, t = names["layer"].format(i), f"towers.{m}.blocks.{i}."
        q, k, v = (p + names[x] for x in ("q", "k", "v"))
        out.put(t + "attn.qkv.weight", src, [q + ".weight", k + ".weight", v + ".weight"],
                [src.take(q + ".weight", W, W), src.take(k + ".weight", W, W), src.take(v + ".weight", W, W)],
                lambda a, b, c: torch.cat([a, b, c]))
        if qkv_bias:
            kb = src.take(k + ".bias", W) if k_bias else _zeros(W)
            out.put(t + "attn.qkv.bias", src, [q + ".bias", k + ".bias", v + ".bias"],
                    [src.take(q + ".bias", W), kb, src.take(v + ".bias", W)], lambda a, b, c: torch.cat([a, b, c]))
        else:
            out.state[t + "attn.qkv.bias"], out.sources[t + "attn.qkv.bias"] = _zeros(3 * W), []
        for ours, theirs, shape in (("attn.proj", "o", (W, W)), ("mlp.fc1", "fc1", (F, W)), ("mlp.fc2", "fc2", (W, F)),
                                    ("ln1", "ln1", None), ("ln2", "ln2", None)):
            name = p + names[theirs]
            if shape is None:
                out.copy(t + ours + ".weight", src, name + ".weight", W)
            else:
                out.copy(t + ours + ".weight", src, name + ".weight", *shape)
            out.copy(t + ours + ".bias", src, name + ".bias", shape[0] if shape else W)


def _tower(hf: dict, where: str, *, width: str, depth: str, heads: str, mlp: str, act: str, norm: str,
           eps: float, **kw) -> TowerConfig:
    return TowerConfig(width=hf[width], depth=hf[depth], heads=hf[heads], mlp_hidden=hf[mlp],
                       norm=norm, layer_norm_eps=eps, activation=_activation(hf, act, where), **kw)


# ---------------------------------------------------------------------------------------------
# Text: BERT, RoBERTa, CLIP text
# ---------------------------------------------------------------------------------------------

_BERT_LAYER = {"layer": "encoder.layer.{}.", "q": "attention.self.query", "k": "attention.self.key",
               "v": "attention.self.value", "o": "attention.output.dense", "ln1": "attention.output.LayerNorm",
               "fc1": "intermediate.dense", "fc2": "output.dense", "ln2": "output.LayerNorm"}


def _bert(kind: str, hf: dict, tensors: dict[str, Tensor], where: str, allow_missing: bool):
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise TowerImportError(f"{where}: position_embedding_type={hf['position_embedding_type']!r}; only absolute")
    root = _root(tensors, [f"{kind}.", ""], "embeddings.word_embeddings.weight", where)
    src, out = _Source(tensors, root, where, allow_missing), _Out()
    W, V, P = hf["hidden_size"], hf["vocab_size"], hf["max_position_embeddings"]
    tower = _tower(hf, where, width="hidden_size", depth="num_hidden_layers", heads="num_attention_heads",
                   mlp="intermediate_size", act="hidden_act", norm="post", eps=hf.get("layer_norm_eps", 1e-12))
    pad = hf.get("pad_token_id", 0 if kind == "bert" else 1) or 0
    # RoBERTa numbers positions from pad_token_id + 1 (rows 0..pad are for padding tokens only).
    offset = pad + 1 if kind == "roberta" else 0
    out.copy("embedders.text.token.weight", src, "embeddings.word_embeddings.weight", V, W)
    out.put("embedders.text.positions.weight", src, ["embeddings.position_embeddings.weight"],
            [src.take("embeddings.position_embeddings.weight", P, W)], lambda t: t[offset:])
    # Segment A's token-type embedding is added to every token: it is the modality-type embedding.
    T = hf.get("type_vocab_size", 2)
    out.put("embedders.text.type_embedding", src, ["embeddings.token_type_embeddings.weight"],
            [src.take("embeddings.token_type_embeddings.weight", T, W)], lambda t: t[0])
    out.copy("embedders.text.ln.weight", src, "embeddings.LayerNorm.weight", W)
    out.copy("embedders.text.ln.bias", src, "embeddings.LayerNorm.bias", W)
    _blocks(src, out, "text", tower.depth, W, tower.mlp_hidden, _BERT_LAYER)
    settings = {"positions": "learned", "pad_id": pad}
    return src, out, tower, settings, {"max_len": P - offset}, V, ["pooler."]


_CLIP_LAYER = {"layer": "encoder.layers.{}.", "q": "self_attn.q_proj", "k": "self_attn.k_proj",
               "v": "self_attn.v_proj", "o": "self_attn.out_proj", "ln1": "layer_norm1", "fc1": "mlp.fc1",
               "fc2": "mlp.fc2", "ln2": "layer_norm2"}


def _sub_config(hf: dict, key: str, model_types: tuple[str, ...], where: str) -> dict:
    if key in hf:          # a full CLIPModel config holds both towers' configs
        return hf[key]
    if hf.get("model_type") in model_types:
        return hf
    raise TowerImportError(f"{where}: config.json has no {key!r} and model_type {hf.get('model_type')!r} "
                           f"is not one of {model_types}")


def _clip_text(kind: str, hf: dict, tensors: dict[str, Tensor], where: str, allow_missing: bool):
    c = _sub_config(hf, "text_config", ("clip_text_model",), where)
    src, out = _Source(tensors, _root(tensors, ["text_model.", ""], "embeddings.token_embedding.weight", where),
                       where, allow_missing), _Out()
    W, V, P = c["hidden_size"], c["vocab_size"], c["max_position_embeddings"]
    tower = _tower(c, where, width="hidden_size", depth="num_hidden_layers", heads="num_attention_heads",
                   mlp="intermediate_size", act="hidden_act", norm="pre", eps=c.get("layer_norm_eps", 1e-5),
                   causal=True, final_ln=True, embed_ln=False)
    out.copy("embedders.text.token.weight", src, "embeddings.token_embedding.weight", V, W)
    out.copy("embedders.text.positions.weight", src, "embeddings.position_embedding.weight", P, W)
    out.state["embedders.text.type_embedding"], out.sources["embedders.text.type_embedding"] = _zeros(W), []
    _blocks(src, out, "text", tower.depth, W, tower.mlp_hidden, _CLIP_LAYER)
    out.copy("towers.text.ln_f.weight", src, "final_layer_norm.weight", W)
    out.copy("towers.text.ln_f.bias", src, "final_layer_norm.bias", W)
    settings = {"positions": "learned", "pad_id": c.get("pad_token_id", 1) or 0}
    return src, out, tower, settings, {"max_len": P}, V, []


# ---------------------------------------------------------------------------------------------
# Images: ViT, CLIP vision
# ---------------------------------------------------------------------------------------------

_VIT_LAYER = {"layer": "encoder.layer.{}.", "q": "attention.attention.query", "k": "attention.attention.key",
              "v": "attention.attention.value", "o": "attention.output.dense", "ln1": "layernorm_before",
              "fc1": "intermediate.dense", "fc2": "output.dense", "ln2": "layernorm_after"}


def _side(c: dict, key: str, where: str) -> int:
    """``image_size`` or ``patch_size`` of a vision config as one side in pixels: an integer, or a
    [height, width] pair of equal sides. The image tower takes square images and patches (one
    ``model.image.size``), so a rectangle is refused, not squeezed."""
    value = c[key]
    if isinstance(value, (list, tuple)) and len(value) == 2 and value[0] == value[1]:
        value = value[0]
    if isinstance(value, (list, tuple)):
        raise TowerImportError(f"{where}: config.json {key}={list(value)} is not square; omniformer's image "
                               f"tower takes square images and patches (model.image.size, model.image.patch_size), "
                               f"so this checkpoint cannot be imported as it is")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TowerImportError(f"{where}: config.json {key}={value!r}; expected a whole number of pixels >= 1")
    return value


def _image_settings(c: dict, cls_token: bool, patch_bias: bool, where: str) -> dict:
    return {"size": _side(c, "image_size", where), "patch_size": _side(c, "patch_size", where),
            "channels": c.get("num_channels", 3), "stem": "patch", "positions": "learned", "cls_token": cls_token,
            "patch_bias": patch_bias}


def _vit(kind: str, hf: dict, tensors: dict[str, Tensor], where: str, allow_missing: bool):
    src, out = _Source(tensors, _root(tensors, ["vit.", ""], "embeddings.cls_token", where), where, allow_missing), _Out()
    W, p, C = hf["hidden_size"], _side(hf, "patch_size", where), hf.get("num_channels", 3)
    N = (_side(hf, "image_size", where) // p) ** 2
    tower = _tower(hf, where, width="hidden_size", depth="num_hidden_layers", heads="num_attention_heads",
                   mlp="intermediate_size", act="hidden_act", norm="pre", eps=hf.get("layer_norm_eps", 1e-12),
                   final_ln=True, embed_ln=False)
    out.put("embedders.image.cls", src, ["embeddings.cls_token"], [src.take("embeddings.cls_token", 1, 1, W)],
            lambda t: t.reshape(W))
    out.put("embedders.image.positions.weight", src, ["embeddings.position_embeddings"],
            [src.take("embeddings.position_embeddings", 1, N + 1, W)], lambda t: t[0])
    out.copy("embedders.image.stem.weight", src, "embeddings.patch_embeddings.projection.weight", W, C, p, p)
    out.copy("embedders.image.stem.bias", src, "embeddings.patch_embeddings.projection.bias", W)
    out.state["embedders.image.type_embedding"], out.sources["embedders.image.type_embedding"] = _zeros(W), []
    _blocks(src, out, "image", tower.depth, W, tower.mlp_hidden, _VIT_LAYER, qkv_bias=hf.get("qkv_bias", True))
    out.copy("towers.image.ln_f.weight", src, "layernorm.weight", W)
    out.copy("towers.image.ln_f.bias", src, "layernorm.bias", W)
    return src, out, tower, _image_settings(hf, True, True, where), {}, 0, ["pooler.", "embeddings.mask_token"]


def _clip_vision(kind: str, hf: dict, tensors: dict[str, Tensor], where: str, allow_missing: bool):
    c = _sub_config(hf, "vision_config", ("clip_vision_model",), where)
    src, out = _Source(tensors, _root(tensors, ["vision_model.", ""], "embeddings.class_embedding", where),
                       where, allow_missing), _Out()
    W, p, C = c["hidden_size"], _side(c, "patch_size", where), c.get("num_channels", 3)
    N = (_side(c, "image_size", where) // p) ** 2
    tower = _tower(c, where, width="hidden_size", depth="num_hidden_layers", heads="num_attention_heads",
                   mlp="intermediate_size", act="hidden_act", norm="pre", eps=c.get("layer_norm_eps", 1e-5),
                   final_ln=True, embed_ln=True)
    out.copy("embedders.image.cls", src, "embeddings.class_embedding", W)
    out.copy("embedders.image.positions.weight", src, "embeddings.position_embedding.weight", N + 1, W)
    out.copy("embedders.image.stem.weight", src, "embeddings.patch_embedding.weight", W, C, p, p)
    out.state["embedders.image.type_embedding"], out.sources["embedders.image.type_embedding"] = _zeros(W), []
    out.copy("embedders.image.ln.weight", src, "pre_layrnorm.weight", W)   # (sic: CLIP's spelling)
    out.copy("embedders.image.ln.bias", src, "pre_layrnorm.bias", W)
    _blocks(src, out, "image", tower.depth, W, tower.mlp_hidden, _CLIP_LAYER)
    out.copy("towers.image.ln_f.weight", src, "post_layernorm.weight", W)
    out.copy("towers.image.ln_f.bias", src, "post_layernorm.bias", W)
    return src, out, tower, _image_settings(c, True, False, where), {}, 0, []


# ---------------------------------------------------------------------------------------------
# Audio: the Whisper encoder
# ---------------------------------------------------------------------------------------------

_WHISPER_LAYER = {"layer": "layers.{}.", "q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
                  "o": "self_attn.out_proj", "ln1": "self_attn_layer_norm", "fc1": "fc1", "fc2": "fc2",
                  "ln2": "final_layer_norm"}


def _whisper(kind: str, hf: dict, tensors: dict[str, Tensor], where: str, allow_missing: bool):
    src = _Source(tensors, _root(tensors, ["model.encoder.", "encoder.", ""], "conv1.weight", where), where,
                  allow_missing)
    out = _Out()
    W, M, P = hf["d_model"], hf["num_mel_bins"], hf["max_source_positions"]
    # Whisper's LayerNorms use torch's default eps; the config has no field for it.
    tower = _tower(hf, where, width="d_model", depth="encoder_layers", heads="encoder_attention_heads",
                   mlp="encoder_ffn_dim", act="activation_function", norm="pre", eps=1e-5, final_ln=True,
                   embed_ln=False)
    out.copy("embedders.audio.convs.0.weight", src, "conv1.weight", W, M, 3)
    out.copy("embedders.audio.convs.0.bias", src, "conv1.bias", W)
    out.copy("embedders.audio.convs.1.weight", src, "conv2.weight", W, W, 3)
    out.copy("embedders.audio.convs.1.bias", src, "conv2.bias", W)
    out.copy("embedders.audio.positions.weight", src, "embed_positions.weight", P, W)
    out.state["embedders.audio.type_embedding"], out.sources["embedders.audio.type_embedding"] = _zeros(W), []
    _blocks(src, out, "audio", tower.depth, W, tower.mlp_hidden, _WHISPER_LAYER, k_bias=False)
    out.copy("towers.audio.ln_f.weight", src, "layer_norm.weight", W)
    out.copy("towers.audio.ln_f.bias", src, "layer_norm.bias", W)
    settings = {"n_mels": M, "subsample": 2, "stem": "whisper", "positions": "learned"}
    # P tokens = 2P - 1 frames at most; max_frames = int(max_seconds * 1000 / hop_ms) + 1.
    capacity = {"max_seconds": (2 * P - 1.5) * 10.0 / 1000}
    return src, out, tower, settings, capacity, 0, []


_IMPORTERS = {"bert": _bert, "roberta": _bert, "clip_text": _clip_text, "vit": _vit, "clip_vision": _clip_vision,
              "whisper": _whisper}


# ---------------------------------------------------------------------------------------------
# Preprocessing and tokenizers
# ---------------------------------------------------------------------------------------------

def _preprocessing(tower: ImportedTower, path: Path) -> None:
    """Image mean/std and audio feature settings from ``preprocessor_config.json`` when present.
    An image tower of other than 3 channels needs it: the recipe's default mean/std are RGB's."""
    file = path / "preprocessor_config.json"
    channels = tower.settings.get("channels", 3) if tower.modality == "image" else 3
    if not file.is_file():
        if channels != 3:
            example = json.dumps({"image_mean": [0.5] * channels, "image_std": [0.5] * channels})
            raise TowerImportError(f"{path}: a {channels}-channel image tower (config.json num_channels={channels}) "
                                   f"with no preprocessor_config.json to say how its pixels are normalised; "
                                   f"add {file} with image_mean and image_std of {channels} value(s) each, "
                                   f"e.g. {example}")
        return
    pre = read_json(file)
    if tower.modality == "image":
        channels = tower.settings["channels"]
        for key in ("mean", "std"):
            if f"image_{key}" in pre:
                given = pre[f"image_{key}"]
                given = [given] * channels if isinstance(given, (int, float)) else given
                if not (isinstance(given, list) and len(given) == channels
                        and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in given)):
                    raise TowerImportError(f"{file}: image_{key} {given!r}; expected {channels} numbers, one per "
                                           f"channel (config.json num_channels={channels})")
                tower.settings[key] = [float(x) for x in given]
    elif tower.modality == "audio":
        rate = int(pre.get("sampling_rate", 16000))
        if pre.get("feature_size", tower.settings["n_mels"]) != tower.settings["n_mels"]:
            raise TowerImportError(f"{file}: feature_size {pre['feature_size']} != num_mel_bins "
                                   f"{tower.settings['n_mels']} in config.json")
        tower.settings["sample_rate"] = rate
        if "hop_length" in pre:
            hop_ms = tower.settings["hop_ms"] = 1000.0 * pre["hop_length"] / rate
            tower.capacity["max_seconds"] *= hop_ms / 10.0  # the importer assumed 10 ms frames
        if "n_fft" in pre:
            tower.settings["win_ms"] = 1000.0 * pre["n_fft"] / rate


def _tokenizer(kind: str, path: Path) -> Any:
    """BERT: omniformer's Tokenizer (tokenizer.json or vocab.txt). RoBERTa / CLIP: their byte-level
    BPE has other special tokens than [CLS]/[SEP]/[MASK], so the raw ``tokenizers.Tokenizer``."""
    if kind == "bert":
        from ..data.text import Tokenizer
        if not ((path / "tokenizer.json").is_file() or (path / "vocab.txt").is_file()):
            return None
        lower = True
        if (path / "tokenizer_config.json").is_file():
            lower = bool(read_json(path / "tokenizer_config.json").get("do_lower_case", True))
        return Tokenizer.load(path, lowercase=lower)
    if (path / "tokenizer.json").is_file():
        from tokenizers import Tokenizer as HFTokenizer
        return HFTokenizer.from_file(str(path / "tokenizer.json"))
    return None


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------

def parse_source(source: str) -> tuple[str, Path]:
    """``"bert:/path"`` -> ("bert", Path("/path"))."""
    kind, sep, path = source.partition(":")
    if not sep or kind not in KINDS:
        raise TowerImportError(f"tower source {source!r}: expected 'kind:path' with kind one of {sorted(KINDS)}")
    return kind, Path(path)


def import_tower(kind: str, path: str | Path, allow_unused: bool = False, allow_missing: bool = False) -> ImportedTower:
    """Read a Hugging Face checkpoint folder as one modality's embedder + tower weights."""
    if kind not in KINDS:
        raise TowerImportError(f"unknown tower kind {kind!r}; known: {sorted(KINDS)}")
    path = Path(path)
    if not (path / "config.json").is_file():
        raise TowerImportError(f"{path}: no config.json (a Hugging Face checkpoint folder is expected)")
    hf = read_json(path / "config.json")
    tensors = read_weights(path)
    where = f"{kind} checkpoint {path}"
    try:
        src, out, tower, settings, capacity, vocab, heads = _IMPORTERS[kind](kind, hf, tensors, where, allow_missing)
        check_config(tower)
    except KeyError as e:
        raise TowerImportError(f"{where}: config.json lacks {e.args[0]!r}") from None
    except ConfigError as e:
        raise TowerImportError(f"{where}: config.json gives a tower omniformer cannot build: {e}") from None
    except (TypeError, ValueError, ZeroDivisionError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise TowerImportError(f"{where}: config.json has a setting of the wrong type or value ({e}); "
                               f"sizes and counts must be whole numbers >= 1") from None
    skipped, unused = [], []
    for name in sorted(tensors):
        if name in src.used:
            continue
        inside = name.startswith(src.root)
        rel = name[len(src.root):]
        if not inside or any(rel.startswith(h) for h in heads) or re.search(r"(^|\.)position_ids$", rel):
            skipped.append(name)
        else:
            unused.append(name)
    if unused and not allow_unused:
        raise TowerImportError(f"{where}: tensor {unused[0]!r} is not used by the {kind} importer"
                               + (f" ({len(unused) - 1} more)" if len(unused) > 1 else "")
                               + "; pass allow_unused=True to ignore it")
    imported = ImportedTower(kind=kind, modality=KINDS[kind], path=path, tower=tower, settings=settings,
                             capacity=capacity, state=out.state, sources=out.sources, vocab_size=vocab,
                             skipped=skipped, missing=src.missing, unused=unused, tokenizer=_tokenizer(kind, path))
    _preprocessing(imported, path)
    return imported


def resolve_towers(cfg: ModelConfig, allow_unused: bool = False, allow_missing: bool = False) -> dict[str, ImportedTower]:
    """Import every tower of ``cfg.towers_from`` and set ``cfg``'s architecture from them (in place)."""
    towers = {}
    for modality, source in cfg.towers_from.items():
        kind, path = parse_source(source)
        if KINDS[kind] != modality:
            raise TowerImportError(f"towers_from.{modality}: {kind!r} is a {KINDS[kind]} tower, not {modality}")
        tower = import_tower(kind, path, allow_unused, allow_missing)
        tower.apply(cfg)
        towers[modality] = tower
    return towers


def load_pretrained_towers(model: nn.Module, towers: dict[str, ImportedTower]) -> None:
    """Copy imported towers into an Omniformer backbone built from the config they were applied to."""
    for tower in towers.values():
        tower.load_into(model)


def pretrained_backbone(cfg: ModelConfig, **kwargs):
    """(Omniformer, towers): a backbone whose towers come from ``cfg.towers_from``; fusion layers are new."""
    from ..model import Omniformer
    towers = resolve_towers(cfg, **kwargs)
    model = Omniformer(cfg)
    load_pretrained_towers(model, towers)
    return model, towers


def import_pretrained(cfg, out: str | Path, allow_unused: bool = False, allow_missing: bool = False) -> Path:
    """``omniformer import``: a RunConfig whose ``model.towers_from`` names checkpoints -> an Omniformer
    checkpoint folder ``out`` (backbone weights with the towers loaded and new fusion layers, the
    resolved recipe in config.json and ``recipe.yaml``, the text tower's tokenizer) that
    ``omniformer finetune --config out/recipe.yaml --init out`` starts from."""
    from ..config import save_config, to_dict
    from ..data.text import Tokenizer
    from ..train import checkpoint as ckpt
    if not cfg.model.towers_from:
        raise TowerImportError("model.towers_from is empty: name at least one tower, e.g. text: bert:/path")
    model, towers = pretrained_backbone(cfg.model, allow_unused=allow_unused, allow_missing=allow_missing)
    tokenizer = towers["text"].tokenizer if "text" in towers else None
    if "text" in cfg.model.modalities and not isinstance(tokenizer, Tokenizer):
        if "text" in towers:
            raise TowerImportError(f"{towers['text'].path}: no tokenizer usable by omniformer ([PAD] [UNK] [CLS] "
                                   f"[SEP] [MASK] WordPiece); a {towers['text'].kind} text tower needs its own "
                                   f"preprocessing (see docs/checkpoints.md)")
        if not cfg.data.tokenizer:
            raise TowerImportError("no text tower imported: set data.tokenizer to the tokenizer the text embedder uses")
        tokenizer = Tokenizer.load(cfg.data.tokenizer)
        cfg.model.vocab_size = tokenizer.vocab_size
    if tokenizer is not None and tokenizer.vocab_size != cfg.model.vocab_size:
        raise TowerImportError(f"the tokenizer has {tokenizer.vocab_size} tokens but the text tower's embedding "
                               f"has {cfg.model.vocab_size} rows")
    holder = nn.Module()
    holder.backbone = model  # keys "backbone.*", what finetune(init=...) loads
    meta = {"task": "backbone", "config": to_dict(cfg), "omniformer_format": 1,
            "towers": {m: {"kind": t.kind, "path": str(t.path), "skipped": len(t.skipped),
                           "missing": t.missing, "unused": t.unused} for m, t in towers.items()}}
    out = ckpt.save_checkpoint(out, holder, meta, tokenizer=tokenizer)
    save_config(cfg, out / "recipe.yaml")
    return out
