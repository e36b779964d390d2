"""The recogniser: the Omniformer backbone over speech alone, and a CTC head on its audio tokens."""
from __future__ import annotations

from pathlib import Path

import torch.nn.functional as F
from torch import Tensor, nn

from ...config import ModelConfig
from ...model import Omniformer, init_weights
from ...model.layers import Dropout
from ...train import checkpoint as ckpt
from .config import ASRConfig

BLANK = 0  # CTC's blank is label 0; the alphabet's characters are 1..len(alphabet)


class CTCHead(nn.Module):
    """Audio tokens (B, N, width) -> per-token label logits (B, N, 1 + characters)."""

    def __init__(self, width: int, num_labels: int, dropout: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=eps)
        self.dropout = Dropout(dropout)
        self.proj = nn.Linear(width, num_labels)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.proj(self.dropout(self.norm(tokens)))


class ASRModel(nn.Module):
    """Backbone + ``CTCHead``.

    ``forward(batch)`` reads ``audio``/``audio_mask`` and gives ``log_probs`` (B, N, labels),
    ``lengths`` (B,) valid tokens per row and, when the batch carries a ``transcript`` (label ids,
    1-based, padded with 0), the CTC ``loss`` (mean over rows of the loss per target label).
    """

    def __init__(self, cfg: ModelConfig, num_labels: int, task: ASRConfig | None = None):
        super().__init__()
        task = task or ASRConfig()
        if "audio" not in cfg.modalities:
            raise ValueError("the asr task reads speech: model.modalities must include audio")
        if num_labels < 2:
            raise ValueError(f"a CTC head needs the blank and at least one character, got {num_labels} labels")
        self.backbone = Omniformer(cfg)
        self.reads = task.reads
        self.head = CTCHead(cfg.width, num_labels, task.head_dropout, cfg.layer_norm_eps)
        self.head.apply(init_weights)

    def audio_tokens(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """The audio tokens the head reads, (B, N, width), and their mask (B, N)."""
        audio = {"audio": batch["audio"], "audio_mask": batch["audio_mask"]}
        if self.reads == "tower":
            return self.backbone.encode_unimodal(audio, "audio")[0]
        fused = self.backbone(audio, modalities=["audio"])
        span = fused.spans["audio"]
        return fused.hidden[:, span], fused.mask[:, span]

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        tokens, mask = self.audio_tokens(batch)
        log_probs = F.log_softmax(self.head(tokens).float(), dim=-1)
        lengths = mask.sum(1)
        out = {"log_probs": log_probs, "lengths": lengths}
        targets = batch.get("transcript")
        if targets is not None:
            target_lengths = batch["transcript_mask"].sum(1)
            rows = target_lengths > 0
            if rows.any():
                # zero_infinity: a recording too short for its transcript adds no gradient instead of inf.
                loss = F.ctc_loss(log_probs.transpose(0, 1)[:, rows], targets[rows], lengths[rows],
                                  target_lengths[rows], blank=BLANK, reduction="mean", zero_infinity=True)
                out["loss"] = loss
                out["too_short"] = (lengths[rows] < target_lengths[rows]).float().mean()
        return out

    def load_pretrained(self, path: str | Path) -> None:
        """The backbone's audio parts (embedder, tower) and fusion layers from a pretraining or
        other task's checkpoint; embedders of other modalities are left out."""
        missing = ckpt.load_weights(path, self.backbone, prefix="backbone.", strict=False)
        if missing:
            raise ckpt.CheckpointError(f"checkpoint {path}: its backbone lacks {len(missing)} weights this "
                                       f"recogniser needs, e.g. {sorted(missing)[:3]}; was it built with other "
                                       f"model sizes or audio settings?")


def frame_seconds(cfg: ModelConfig) -> float:
    """Seconds of speech per audio token: the mel hop times the embedder's subsampling."""
    return cfg.audio.hop_ms / 1000 * cfg.audio.subsample
