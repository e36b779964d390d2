"""Heads shared by tasks: the pretraining objectives' (MLM, matching, contrastive, masked patches)
and a classifier MLP (QA's answer head over [CLS], recognition's head over the pooled output)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import Dropout, LayerNorm

MAX_LOGIT_SCALE = math.log(100.0)  # CLIP: the contrastive temperature never goes below 0.01


class MLMHead(nn.Module):
    """dense -> GELU -> LayerNorm -> decoder tied to the token embedding (+ bias).

    Call it on the masked positions only, ``hidden[labels != -100]`` (B*, width), to skip
    the vocabulary projection of every other token.
    """

    def __init__(self, width: int, vocab_size: int, embedding_weight: nn.Parameter, eps: float = 1e-5):
        super().__init__()
        self.dense = nn.Linear(width, width)
        self.act = nn.GELU()
        self.ln = LayerNorm(width, eps=eps)
        self.decoder = nn.Linear(width, vocab_size)
        self.decoder.weight = embedding_weight  # tied: one Parameter shared with the text embedder
        nn.init.zeros_(self.decoder.bias)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.decoder(self.ln(self.act(self.dense(hidden))))


class MatchingHead(nn.Module):
    """[CLS] (B, width) -> one logit per sample: do these modalities belong together?"""

    def __init__(self, width: int):
        super().__init__()
        self.fc = nn.Linear(width, 1)

    def forward(self, cls: Tensor) -> Tensor:
        return self.fc(cls).squeeze(-1)


class ContrastiveHead(nn.Module):
    """Per-modality linear projections to a shared, L2-normalised space, plus a learned temperature."""

    def __init__(self, width: int, proj_dim: int, modalities: list[str]):
        super().__init__()
        self.proj = nn.ModuleDict({m: nn.Linear(width, proj_dim, bias=False) for m in modalities})
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def scale(self) -> Tensor:
        """The similarity multiplier: exp(logit_scale), at most 100 (``info_nce`` does the same)."""
        return self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()

    def forward(self, pooled: Tensor | dict[str, Tensor], modality: str | None = None) -> Tensor | dict[str, Tensor]:
        """``(pooled (B, width), modality) -> (B, proj_dim)``, or ``{modality: pooled}`` -> a dict of embeddings."""
        if isinstance(pooled, dict):
            return {m: F.normalize(self.proj[m](x), dim=-1) for m, x in pooled.items() if m in self.proj}
        if modality is None:
            raise ValueError("pass the modality of a single pooled tensor")
        return F.normalize(self.proj[modality](pooled), dim=-1)


class ClassifierHead(nn.Module):
    """A classifier over a vocabulary (answers, labels) from one vector: Linear -> GELU ->
    LayerNorm -> Dropout -> Linear."""

    def __init__(self, width: int, num_classes: int, hidden: int | None = None, dropout: float = 0.0,
                 eps: float = 1e-5):
        super().__init__()
        hidden = hidden or 2 * width
        self.net = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), LayerNorm(hidden, eps=eps),
                                 Dropout(dropout), nn.Linear(hidden, num_classes))

    def forward(self, cls: Tensor) -> Tensor:
        return self.net(cls)


class MaskedPatchHead(nn.Module):
    """Hidden states (..., width) -> reconstructed patch (..., patch_dim) for masked patch modelling."""

    def __init__(self, width: int, patch_dim: int):
        super().__init__()
        self.fc = nn.Linear(width, patch_dim)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.fc(hidden)
