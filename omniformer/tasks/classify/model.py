"""The classifier: the Omniformer backbone plus an MLP head over its pooled fusion output."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...config import ModelConfig
from ...data.batching import IGNORE
from ...model import ClassifierHead, FusionOutput, Omniformer, init_weights
from ...train import checkpoint as ckpt
from .config import ClassifyConfig


class ClassifierModel(nn.Module):
    """Backbone + ``ClassifierHead`` over the fusion output of whatever modalities a sample has.

    ``forward(batch)`` gives ``logits`` (B, labels) and, when the batch carries labels,
    ``loss`` (cross-entropy with label smoothing, rows labelled -100 ignored) and ``accuracy``.
    """

    def __init__(self, cfg: ModelConfig, num_labels: int, task: ClassifyConfig | None = None):
        super().__init__()
        task = task or ClassifyConfig()
        if num_labels < 1:
            raise ValueError(f"a classifier needs at least one label, got {num_labels}")
        self.backbone = Omniformer(cfg)
        self.pooling, self.label_smoothing = task.pooling, task.label_smoothing
        pooled = cfg.width * (2 if task.pooling == "both" else 1)
        self.head = ClassifierHead(pooled, num_labels, hidden=task.head_hidden or None, dropout=task.head_dropout,
                               eps=cfg.layer_norm_eps)
        self.head.apply(init_weights)

    def pool(self, fused: FusionOutput) -> Tensor:
        """What the head reads: [CLS], the masked mean of the other fusion tokens, or both."""
        if self.pooling == "cls":
            return fused.cls
        mean = Omniformer.pool(fused.hidden[:, 1:], fused.mask[:, 1:])
        return mean if self.pooling == "mean" else torch.cat([fused.cls, mean], dim=-1)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        logits = self.head(self.pool(self.backbone(batch)))
        out = {"logits": logits}
        labels = batch.get("label")
        if labels is not None and (labels != IGNORE).any():
            out["loss"] = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE,
                                          label_smoothing=self.label_smoothing)
            valid = labels != IGNORE
            out["accuracy"] = (logits.argmax(-1)[valid] == labels[valid]).float().mean()
        return out

    def load_pretrained(self, path: str | Path) -> None:
        """The backbone from a pretraining checkpoint or an ``omniformer import`` one (weights
        under ``backbone.``). Embedders of modalities this model does not read are left out;
        every weight this backbone has must be in the checkpoint."""
        missing = ckpt.load_weights(path, self.backbone, prefix="backbone.", strict=False)
        if missing:
            raise ckpt.CheckpointError(f"checkpoint {path}: its backbone lacks {len(missing)} weights this "
                                       f"classifier needs, e.g. {sorted(missing)[:3]}; was it built with other "
                                       f"model.modalities or sizes?")
