"""The classify model as ONNX needs it: the batch tensors of the modalities it reads as
positional inputs (``interop.onnx.input_names`` order), ``logits`` (batch, labels) out."""
from __future__ import annotations

from ...interop.onnx import batch_graph
from ...registry import get_modality
from ..base import ExportGraph
from .predictor import ClassifyPredictor


def export_graph(predictor: ClassifyPredictor) -> ExportGraph:
    """Positional inputs (``text``/``text_mask``, ``image``/``image_mask``, ``audio``/``audio_mask``
    for the modalities the model reads), dynamic batch, text length and audio frames; the
    sidecar holds the labels and what a caller must do to the raw inputs."""
    cfg = predictor.cfg.model
    preprocessing = {m: get_modality(m).describe(cfg) for m in cfg.modalities}  # each modality says its own
    return batch_graph(predictor.model, cfg, {
        "task": "classify", "labels": predictor.labels, "model_id": predictor.model_id,
        "probabilities": "softmax over logits", "preprocessing": preprocessing,
        "task_config": dict(predictor.cfg.task or {})})
