"""Export any task's model to ONNX, through the graph its task declares (``Task.export_graph``).

A task graph takes the batch tensors the model takes, as named inputs (only the modalities the
model was built with)::

    text        int64  (batch, text_len)        token ids, right-padded with the pad id
    text_mask   bool   (batch, text_len)        True on real tokens
    image       float  (batch, C, size, size)   normalised pixels (ImagePreprocessor)
    image_mask  bool   (batch,)                 False: this sample has no image
    audio       float  (batch, n_mels, frames)  log-mel features (AudioPreprocessor)
    audio_mask  bool   (batch, frames)          True on real frames

and returns ``logits`` (batch, answers or labels); another registered modality adds its
``name`` and ``name_mask`` the same way, in registry order (``Modality.dynamic_axes``,
``Modality.example_inputs``). Batch, text length and audio frames are dynamic.
Every input is required: a sample without a question in text gets an all-False ``text_mask``
row (and likewise for audio); a batch without any text still needs a (batch, 1) text input.
A JSON sidecar (``<out>.json``) holds the task, its output vocabulary and the preprocessing settings.

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
from ..registry import get_modality, modality_names
from ..tasks.base import ExportGraph


def input_names(modalities: list[str]) -> list[str]:
    """The graph's inputs for a model of ``modalities``: each one's tensor and mask, in registry
    order (text, text_mask, image, image_mask, audio, audio_mask for the built-ins)."""
    return [key for m in modality_names() if m in modalities for key in get_modality(m).batch_keys]


def dynamic_axes(modalities: list[str]) -> dict[str, dict[int, str]]:
    """The dynamic axes of those inputs, as each modality declares them."""
    return {k: v for m in modality_names() if m in modalities for k, v in get_modality(m).dynamic_axes().items()}


class BatchGraph(nn.Module):
    """A task model that reads a batch dict, with positional tensor inputs (what ONNX needs)
    and one output tensor taken from its result dict."""

    def __init__(self, model: nn.Module, modalities: list[str], output: str = "logits"):
        super().__init__()
        self.model, self.modalities, self.output = model, list(modalities), output
        self.input_names = input_names(self.modalities)

    def forward(self, *tensors: Tensor) -> Tensor:
        return self.model(dict(zip(self.input_names, tensors)))[self.output]


def batch_graph(model: nn.Module, cfg: ModelConfig, sidecar: dict[str, Any] | None = None) -> ExportGraph:
    """The usual graph of a task model: the modalities' batch tensors in, ``logits`` out."""
    graph = BatchGraph(model, cfg.modalities).eval()
    # Batch 2 and real padding, so no shape is specialised to 1 and the mask paths are traced.
    inputs = example_inputs(cfg, batch=2)
    return ExportGraph(graph, {n: inputs[n] for n in graph.input_names}, ["logits"],
                       {**dynamic_axes(graph.modalities), "logits": {0: "batch"}},
                       {"model": to_dict(cfg), **(sidecar or {})})


def example_inputs(cfg: ModelConfig, batch: int = 2, text_len: int | None = None, frames: int | None = None,
                   seed: int = 0) -> dict[str, Tensor]:
    """Random but well-formed inputs for ``cfg`` (some padding in every variable-length input),
    each modality's from its ``Modality.example_inputs``, in registry order from one generator;
    ``text_len`` and ``frames``: the text and audio lengths."""
    g = torch.Generator().manual_seed(seed)
    lengths = {"text": text_len, "audio": frames}
    out: dict[str, Tensor] = {}
    for m in modality_names():
        if m in cfg.modalities:
            out.update(get_modality(m).example_inputs(cfg, batch, g, lengths.get(m)))
    return out


def max_opset() -> int:
    """The newest ONNX opset this torch can write (torch raises a RuntimeError past it)."""
    try:
        from torch.onnx._constants import ONNX_MAX_OPSET
        return int(ONNX_MAX_OPSET)
    except (ImportError, AttributeError):  # a torch that moved it: the newest known when this was written
        return 23


def export_graph(graph: ExportGraph, out: str | Path, opset: int = 17) -> Path:
    """Write ``graph`` as ONNX to ``out`` and its sidecar to ``out`` + ``.json``."""
    newest = max_opset()
    if not 17 <= opset <= newest:
        raise ValueError(f"opset: must be 17 (LayerNormalization) to {newest} (the newest this torch writes), "
                         f"got {opset}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    names = list(graph.inputs)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about shape checks turned into constants
        torch.onnx.export(graph.module.eval(), tuple(graph.inputs.values()), str(out), input_names=names,
                          output_names=graph.outputs, dynamic_axes=graph.dynamic_axes, opset_version=opset,
                          dynamo=False, do_constant_folding=True)
    sidecar = {"inputs": names, "outputs": graph.outputs, "opset": opset, **graph.sidecar}
    Path(str(out) + ".json").write_text(json.dumps(sidecar, indent=2))
    return out


def export_qa(model: nn.Module, cfg: ModelConfig, out: str | Path, opset: int = 17,
              meta: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (a QAModel) as ONNX to ``out`` and its sidecar to ``out`` + ``.json``."""
    return export_graph(batch_graph(model, cfg, {"task": "qa", **(meta or {})}), out, opset)


def export_checkpoint(model_dir: str | Path, out: str | Path, opset: int = 17) -> Path:
    """Export a trained checkpoint folder through its task's graph (the task is read from it)."""
    from ..registry import task_of_checkpoint
    task = task_of_checkpoint(model_dir)
    return export_graph(task.export_graph(task.load(model_dir)), out, opset)


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
