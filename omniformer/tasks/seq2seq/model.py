"""The encoder-decoder of translate and caption: the Omniformer backbone reads the source (text,
an image, a recording), a ``TextDecoder`` writes the target."""
from __future__ import annotations

from pathlib import Path

import torch.nn.functional as F
from torch import Tensor, nn

from ...config import ModelConfig
from ...model import Omniformer, init_weights
from ...model.decoder import TextDecoder
from ...train import checkpoint as ckpt
from .config import Seq2SeqConfig, TranslateConfig

IGNORE = -100


class Seq2SeqModel(nn.Module):
    """Backbone (encoder over the source's modalities) + a causal decoder with cross-attention.

    ``forward(batch)`` reads the source (``text``/``text_mask``, or any modality the backbone
    has) and, when the batch carries ``target`` (word-piece ids from [CLS] to [SEP], padded),
    gives the label-smoothed next-token ``loss`` and ``token_accuracy``. The decoder's embedding
    is the backbone's text embedding (one shared vocabulary, input and output tied).
    """

    def __init__(self, cfg: ModelConfig, task: Seq2SeqConfig | None = None, pad_id: int = 0):
        super().__init__()
        task = task or TranslateConfig()
        if cfg.vocab_size < 6:
            raise ValueError(f"model.vocab_size: the decoder needs the tokenizer's vocabulary, got {cfg.vocab_size}")
        self.backbone = Omniformer(cfg)
        shared = self.backbone.embedders["text"].token if "text" in self.backbone.embedders else None
        self.decoder = TextDecoder(cfg.vocab_size, task.max_target_len, task.decoder_depth, cfg.width, cfg.heads,
                                   int(cfg.width * cfg.mlp_ratio), cfg.dropout, cfg.attn_dropout, cfg.norm,
                                   cfg.layer_norm_eps, cfg.activation, pad_id, embedding=shared)
        for name, module in self.decoder.named_children():
            if name != "token":  # the shared embedding keeps the backbone's initialisation
                module.apply(init_weights)
        self.label_smoothing, self.pad_id = task.label_smoothing, pad_id

    def encode(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """The fused source, (B, S, width), and its mask (B, S): what the decoder attends to."""
        source = {k: v for k, v in batch.items() if k not in ("target", "target_mask", "index")}
        fused = self.backbone(source)
        return fused.hidden, fused.mask

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        context, context_mask = self.encode(batch)
        out: dict[str, Tensor] = {}
        target = batch.get("target")
        if target is not None:
            # Right-padded targets: the causal mask already hides the padding from every real position.
            logits = self.decoder(target[:, :-1], context, context_mask)
            labels = target[:, 1:].masked_fill(~batch["target_mask"][:, 1:], IGNORE)
            out["loss"] = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE,
                                          label_smoothing=self.label_smoothing)
            real = labels != IGNORE
            out["token_accuracy"] = ((logits.argmax(-1) == labels) & real).sum() / real.sum().clamp(min=1)
        return out

    def load_pretrained(self, path: str | Path) -> None:
        """The backbone from a pretraining or other task's checkpoint (the decoder starts fresh)."""
        missing = ckpt.load_weights(path, self.backbone, prefix="backbone.", strict=False)
        if missing:
            raise ckpt.CheckpointError(f"checkpoint {path}: its backbone lacks {len(missing)} weights this "
                                       f"translator needs, e.g. {sorted(missing)[:3]}; was it built with other "
                                       f"model sizes or vocabulary?")
