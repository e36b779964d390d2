"""The classify model as ONNX needs it: the batch tensors of the modalities it reads as
positional inputs (``interop.onnx.INPUTS`` order), ``logits`` (batch, labels) out."""
from __future__ import annotations

from ...interop.onnx import batch_graph
from ..base import ExportGraph
from .predictor import ClassifyPredictor


def export_graph(predictor: ClassifyPredictor) -> ExportGraph:
    """Positional inputs (``text``/``text_mask``, ``image``/``image_mask``, ``audio``/``audio_mask``
    for the modalities the model reads), dynamic batch, text length and audio frames; the
    sidecar holds the labels and what a caller must do to the raw inputs."""
    cfg = predictor.cfg.model
    preprocessing: dict = {}
    if "image" in cfg.modalities:
        preprocessing["image"] = {"size": cfg.image.size, "channels": cfg.image.channels, "mean": cfg.image.mean,
                                  "std": cfg.image.std, "resize": "the whole image, bilinear", "scale": "pixels / 255"}
    if "audio" in cfg.modalities:
        preprocessing["audio"] = {"sample_rate": cfg.audio.sample_rate, "n_mels": cfg.audio.n_mels,
                                  "win_ms": cfg.audio.win_ms, "hop_ms": cfg.audio.hop_ms,
                                  "max_seconds": cfg.audio.max_seconds,
                                  "features": "log-mel, normalised per utterance (omniformer.data.audio.LogMel)"}
    if "text" in cfg.modalities:
        preprocessing["text"] = {"max_len": cfg.text.max_len, "tokenizer": "the checkpoint's tokenizer.json",
                                 "pad_id": cfg.text.pad_id}
    return batch_graph(predictor.model, cfg, {
        "task": "classify", "labels": predictor.labels, "model_id": predictor.model_id,
        "probabilities": "softmax over logits", "preprocessing": preprocessing,
        "task_config": dict(predictor.cfg.task or {})})
