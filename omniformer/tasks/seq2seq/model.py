"""The encoder-decoder of translate and caption: the Omniformer backbone reads the source (text,
an image, a recording), a ``TextDecoder`` writes the target."""
from __future__ import annotations

from pathlib import Path

import torch.nn.functional as F
from torch import Tensor, nn

from ...config import ModelConfig
from ...model import Omniformer, init_weights
from ...model.decoder import TextDecoder
from ...model.generate import row_argmax
from ...train import checkpoint as ckpt
from .config import Seq2SeqConfig, TranslateConfig


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
            # Right-padded targets: the causal mask already hides the padding from every real position,
            # and only real positions reach the output layer (its logits are most of a step's memory).
            states = self.decoder.states(target[:, :-1], context, context_mask)
            real = batch["target_mask"][:, 1:].bool()
            labels = target[:, 1:][real]
            logits = self.decoder.logits(states[real]).float()
            if labels.numel():
                out["loss"] = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
                out["token_accuracy"] = (row_argmax(logits.detach()) == labels).float().mean()
            else:  # no target token past [CLS]: nothing to learn, but a loss the loop can step on
                out["loss"] = logits.sum() + states.sum() * 0
                out["token_accuracy"] = logits.new_zeros(())
        return out

    def load_pretrained(self, path: str | Path) -> None:
        """The backbone from a pretraining or other task's checkpoint, and the decoder too where
        the checkpoint has one (pretraining with ``objectives.next_word``); ``decoder_loaded``
        says how many of the decoder's tensors came from it (0: it starts fresh)."""
        missing = ckpt.load_weights(path, self.backbone, prefix="backbone.", strict=False)
        if missing:
            raise ckpt.CheckpointError(f"checkpoint {path}: its backbone lacks {len(missing)} weights this "
                                       f"model needs, e.g. {sorted(missing)[:3]}; was it built with other "
                                       f"model sizes or vocabulary?")
        self.decoder_loaded = self._load_decoder(path)

    def _load_decoder(self, path: str | Path) -> int:
        """Copy the checkpoint's ``decoder.*`` tensors that fit: its embedding may be stored as the
        backbone's text embedding (tied), and its positions may be more or fewer than ours (the
        first ones are taken); layers past the checkpoint's depth start fresh."""
        state = ckpt.read_safetensors(ckpt.find_checkpoint(path) / ckpt.WEIGHTS)
        theirs = {k[len("decoder."):]: v for k, v in state.items() if k.startswith("decoder.")}
        if not theirs:
            return 0
        tied = "backbone.embedders.text.token.weight"
        if "token.weight" not in theirs and tied in state:
            theirs["token.weight"] = state[tied]
        own = self.decoder.state_dict()
        if "positions.weight" in theirs:
            positions, given = own["positions.weight"].clone(), theirs["positions.weight"]
            n = min(len(positions), len(given))
            positions[:n] = given[:n]
            theirs["positions.weight"] = positions
        fitting = {k: v for k, v in theirs.items() if k in own and own[k].shape == v.shape}
        self.decoder.load_state_dict(fitting, strict=False)
        return len(fitting)
