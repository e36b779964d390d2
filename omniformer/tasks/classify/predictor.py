"""A trained classifier from Python: load a checkpoint folder, classify an image, a recording,
a text, or several at once::

    from omniformer.tasks.classify import ClassifyPredictor
    digits = ClassifyPredictor.load("runs/mnist/classify/best")
    digits.classify(image="seven.png", top_k=3)      # [("7", 0.998), ("1", 0.001), ...]
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ...config import RunConfig, from_dict, run_config_from
from ...data.batching import collate
from ...data.text import Tokenizer
from ...train import checkpoint as ckpt
from ...registry import get_modality
from .config import ClassifyConfig
from .model import ClassifierModel

TASK_NAME = "classify"


class ClassifyPredictor:
    """A classify checkpoint ready to use: its model, recipe, labels, tokenizer and preprocessors."""

    task = TASK_NAME  # what the server dispatches on

    def __init__(self, model: ClassifierModel, cfg: RunConfig, labels: list[str], tokenizer: Tokenizer | None = None,
                 model_id: str = "omniformer-classify"):
        self.model, self.cfg, self.labels = model.eval(), cfg, list(labels)
        self.tokenizer, self.model_id = tokenizer, model_id
        self.task_config: ClassifyConfig = from_dict(ClassifyConfig, cfg.task or {}, "task")
        self.inputs = list(cfg.model.modalities)
        if "text" in self.inputs and tokenizer is None:
            raise ValueError("a classifier that reads text needs its tokenizer")
        # Each input's preprocessor, as its registered modality makes it for evaluation.
        self.preprocessors = {m: get_modality(m).preprocessor(cfg.model, tokenizer=tokenizer) for m in self.inputs}
        self.image, self.audio = self.preprocessors.get("image"), self.preprocessors.get("audio")

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> "ClassifyPredictor":
        """The checkpoint folder ``path`` (what ``omniformer train --task classify`` writes)."""
        path, meta = ckpt.read_task_meta(path, TASK_NAME, "labels", "config")
        cfg = run_config_from(meta["config"])
        task = from_dict(ClassifyConfig, cfg.task or {}, "task")
        model = ClassifierModel(cfg.model, len(meta["labels"]), task)
        ckpt.load_weights(path, model)
        tokenizer = Tokenizer.load(path / ckpt.TOKENIZER) if "text" in cfg.model.modalities else None
        return cls(model.to(device), cfg, list(meta["labels"]), tokenizer, model_id=meta.get("model_id", path.name))

    def prepare(self, image: Any = None, audio: Any = None, text: str | None = None, **inputs: Any) -> dict[str, Any]:
        """One dataset-style item from raw inputs: paths, file bytes, PIL images, or mono waveforms
        (NumPy, at the model's sample rate); another registered modality's input by its name
        (``sensor=path``), as its preprocessor takes it."""
        given = {"image": image, "audio": audio, "text": text, **inputs}
        if all(v is None for v in given.values()):
            raise ValueError(f"classify needs at least one input; this model reads {', '.join(self.inputs)}")
        unread = [m for m, v in given.items() if v is not None and m not in self.inputs]
        if unread:
            raise ValueError(f"this model reads {', '.join(self.inputs)}; it was not trained on {', '.join(unread)}")
        item: dict[str, Any] = {"index": 0}
        for m, value in given.items():
            if value is not None:
                item[m] = self.preprocessors[m](value)
        return item

    @torch.no_grad()
    def probabilities(self, items: list[dict[str, Any]]) -> torch.Tensor:
        """(len(items), labels) class probabilities of prepared items, one model call."""
        items = [{**it, "index": i} for i, it in enumerate(items)]
        device = next(self.model.parameters()).device
        batch = {k: v.to(device) for k, v in collate(items).items()}
        return self.model(batch)["logits"].float().softmax(-1).cpu()

    def classify_items(self, items: list[dict[str, Any]], top_k: int = 5) -> list[list[tuple[str, float]]]:
        """The ``top_k`` (label, probability) pairs of each prepared item, best first: the
        server's micro-batching function."""
        probs = self.probabilities(items)
        top = probs.topk(min(max(top_k, 1), probs.shape[-1]), dim=-1)
        return [[(self.labels[i], float(p)) for p, i in zip(ps.tolist(), ids.tolist())]
                for ps, ids in zip(top.values, top.indices)]

    def classify(self, image: Any = None, audio: Any = None, text: str | None = None,
                 top_k: int = 5, **inputs: Any) -> list[tuple[str, float]]:
        """The ``top_k`` most likely labels of one sample with their probabilities, best first."""
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k: expected an integer >= 1, got {top_k!r}")
        return self.classify_items([self.prepare(image, audio, text, **inputs)], top_k)[0]

    predict = classify
