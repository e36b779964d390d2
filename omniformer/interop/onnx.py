"""Export a fine-tuned QA model to ONNX.

The graph takes the batch tensors the model takes, as named inputs (only the modalities the
model was built with)::

    text        int64  (batch, text_len)        token ids, right-padded with the pad id
    text_mask   bool   (batch, text_len)        True on real tokens
    image       float  (batch, C, size, size)   normalised pixels (ImagePreprocessor)
    image_mask  bool   (batch,)                 False: this sample has no image
    audio       float  (batch, n_mels, frames)  log-mel features (AudioPreprocessor)
    audio_mask  bool   (batch, frames)          True on real frames

and returns ``logits`` (batch, answers). Batch, text length and audio frames are dynamic.
Every input is required: a sample without a question in text gets an all-False ``text_mask``
row (and likewise for audio); a batch without any text still needs a (batch, 1) text input.
A JSON sidecar (``<out>.json``) holds the answer vocabulary and the preprocessing settings.

The exporter is TorchScript-based (``torch.onnx.export(..., dynamo=False)``): it handles the
data-dependent masks without extra dependencies.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..config import ModelConfig, to_dict

INPUTS = ("text", "text_mask", "image", "image_mask", "audio", "audio_mask")
DYNAMIC = {"text": {0: "batch", 1: "text_len"}, "text_mask": {0: "batch", 1: "text_len"},
           "image": {0: "batch"}, "image_mask": {0: "batch"},
           "audio": {0: "batch", 2: "frames"}, "audio_mask": {0: "batch", 1: "frames"}}


class QAGraph(nn.Module):
    """A QA model with positional tensor inputs (what ONNX needs) instead of a batch dict."""

    def __init__(self, model: nn.Module, modalities: list[str]):
        super().__init__()
        self.model, self.modalities = model, list(modalities)
        self.input_names = [n for n in INPUTS if n.split("_")[0] in self.modalities]

    def forward(self, *tensors: Tensor) -> Tensor:
        return self.model(dict(zip(self.input_names, tensors)))["logits"]


def example_inputs(cfg: ModelConfig, batch: int = 2, text_len: int | None = None, frames: int | None = None,
                   seed: int = 0) -> dict[str, Tensor]:
    """Random but well-formed inputs for ``cfg`` (some padding in every variable-length input)."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, Tensor] = {}
    if "text" in cfg.modalities:
        L = text_len or min(12, cfg.text.max_len)
        lengths = torch.randint(1, L + 1, (batch,), generator=g)
        lengths[0] = L
        mask = torch.arange(L)[None, :] < lengths[:, None]
        ids = torch.randint(1, max(cfg.vocab_size, 2), (batch, L), generator=g)
        out["text"], out["text_mask"] = ids.masked_fill(~mask, getattr(cfg.text, "pad_id", 0)), mask
    if "image" in cfg.modalities:
        c = cfg.image
        out["image"] = torch.randn(batch, c.channels, c.size, c.size, generator=g)
        out["image_mask"] = torch.ones(batch, dtype=torch.bool)
    if "audio" in cfg.modalities:
        T = frames or 40
        lengths = torch.randint(1, T + 1, (batch,), generator=g)
        lengths[0] = T
        out["audio"] = torch.randn(batch, cfg.audio.n_mels, T, generator=g)
        out["audio_mask"] = torch.arange(T)[None, :] < lengths[:, None]
    return out


def export_qa(model: nn.Module, cfg: ModelConfig, out: str | Path, opset: int = 17,
              meta: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (a QAModel) as ONNX to ``out`` and its sidecar to ``out`` + ``.json``."""
    if opset < 17:
        raise ValueError(f"opset must be >= 17 (LayerNormalization), got {opset}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    graph = QAGraph(model, cfg.modalities).eval()
    # Batch 2 and real padding, so no shape is specialised to 1 and the mask paths are traced.
    inputs = example_inputs(cfg, batch=2)
    args = tuple(inputs[n] for n in graph.input_names)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about shape checks turned into constants
        torch.onnx.export(graph, args, str(out), input_names=graph.input_names, output_names=["logits"],
                          dynamic_axes={**{n: DYNAMIC[n] for n in graph.input_names}, "logits": {0: "batch"}},
                          opset_version=opset, dynamo=False, do_constant_folding=True)
    sidecar = {"inputs": graph.input_names, "outputs": ["logits"], "opset": opset, "model": to_dict(cfg),
               **(meta or {})}
    Path(str(out) + ".json").write_text(json.dumps(sidecar, indent=2))
    return out


def export_checkpoint(model_dir: str | Path, out: str | Path, opset: int = 17) -> Path:
    """Export a fine-tuned QA checkpoint folder (what ``omniformer finetune`` writes)."""
    from ..tasks.qa import QAPredictor
    predictor = QAPredictor.load(model_dir)
    return export_qa(predictor.model, predictor.cfg.model, out, opset,
                     meta={"answers": predictor.answers, "model_id": predictor.model_id,
                           "text_max_len": predictor.cfg.model.text.max_len})


def onnx_session(path: str | Path, threads: int = 0):
    """An onnxruntime CPU session for an exported model."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(session, inputs: dict[str, Tensor]):
    """Logits (numpy) for a batch dict of tensors; only the graph's inputs are passed."""
    names = [i.name for i in session.get_inputs()]
    return session.run(["logits"], {n: inputs[n].numpy() for n in names})[0]
