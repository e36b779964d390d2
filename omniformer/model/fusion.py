"""The Omniformer backbone: per-modality embedders and towers, then one single-stream fusion encoder.

    batch --embedders--> tokens --towers (tower_depth)--> unimodal --[CLS] + concat--> fusion (depth)

The towers see one modality at a time (their pooled outputs feed contrastive alignment); the
fusion encoder attends across every modality present. Missing modalities are handled at two
levels: a key absent from the batch is skipped entirely, and a sample without a modality has an
all-False mask row for it, so its tokens are invisible to every other token.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..registry import get_modality
from .encoders import embedder_config
from .transformer import Encoder, block_kwargs, tower_kwargs


@dataclass
class FusionOutput:
    hidden: Tensor                              # (B, 1+N, width); position 0 is [CLS]; invalid tokens zeroed
    mask: Tensor                                # (B, 1+N) True = real token; [CLS] always True
    cls: Tensor                                 # (B, width) = hidden[:, 0]
    spans: dict[str, slice]                     # where each modality's tokens sit in ``hidden``
    unimodal: dict[str, tuple[Tensor, Tensor]]  # tower outputs (B, N_m, width) and masks (B, N_m)
    embedded: dict[str, tuple[Tensor, Tensor]]  # embedder outputs, before the towers, same shapes


def _static_graph() -> bool:
    """True while tracing, exporting or compiling: no data-dependent shapes or host syncs then."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export()


def run_encoder(encoder: Encoder, x: Tensor, mask: Tensor) -> Tensor:
    """``encoder(x, mask)`` on the valid tokens; outputs at padding positions are left unspecified
    (the callers zero them).

    Fast paths, each exact for every valid token: with no padding at all SDPA gets no mask (its
    unmasked kernels); token columns that are padding in *every* sample (a batch padded past its
    longest question) are dropped before the stack and put back as zeros after it, so padding
    costs neither matmuls nor attention. Skipped while tracing, exporting or compiling.
    """
    if len(encoder.blocks) == 0 or _static_graph():
        return encoder(x, mask)
    keep = mask.any(0)  # (N,) columns with at least one real token
    if bool(mask.all()):
        return encoder(x, None)
    if bool(keep.all()):
        return encoder(x, mask)
    idx = keep.nonzero().squeeze(1)
    sub_mask = mask.index_select(1, idx)
    y = encoder(x.index_select(1, idx), None if bool(sub_mask.all()) else sub_mask)
    return x.new_zeros(x.shape[:2] + y.shape[2:]).index_copy(1, idx, y)


def init_weights(module: nn.Module) -> None:
    """N(0, 1/fan_in) for projections and embeddings (the MLM decoder is tied to the token
    embedding, so it too gets unit-scale logits), zero biases.

    BERT/nanoGPT's fixed std of 0.02 suits widths near 768; at the small widths a CPU trains,
    it leaves attention logits ~16x too flat, and binding a question's words to the right
    image tokens took several times more steps on ShapesWorld (measured).
    """
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=module.weight.shape[1] ** -0.5)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=module.weight.shape[1] ** -0.5)
        if module.padding_idx is not None:
            module.weight.data[module.padding_idx].zero_()


class Omniformer(nn.Module):
    """Multimodal Transformer backbone built from a ModelConfig."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.modalities = list(cfg.modalities)
        # Each registered modality brings its embedder (omniformer.registry.MODALITIES).
        self.embedders = nn.ModuleDict({m: get_modality(m).embedder(embedder_config(cfg, m)) for m in self.modalities})
        self.towers = nn.ModuleDict({m: Encoder(**tower_kwargs(cfg, m)) for m in self.modalities})
        # An imported tower narrower or wider than the fusion layers gets a projection to the model width.
        widths = {m: tower_kwargs(cfg, m)["width"] for m in self.modalities}
        self.tower_proj = nn.ModuleDict({m: nn.Linear(w, cfg.width) for m, w in widths.items() if w != cfg.width})
        self.cls_token = nn.Parameter(torch.randn(1, 1, cfg.width) * 0.02)
        self.fusion = Encoder(cfg.depth, **block_kwargs(cfg))
        self.apply(init_weights)

    def present(self, batch: dict, modalities: list[str] | None = None) -> list[str]:
        """The configured modalities that are in the batch (and in ``modalities`` if given), in config order."""
        return [m for m in self.modalities if m in batch and (modalities is None or m in modalities)]

    def encode_unimodal(self, batch: dict, modality: str, token_mask: Tensor | None = None,
                        ) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        """Embed one modality and run its tower: ``(tower output, embedder output)``, each a pair
        (tokens (B, N, width), mask (B, N)) with invalid tokens zeroed."""
        embedded, mask = self.embedders[modality](batch, token_mask=token_mask)
        tokens = run_encoder(self.towers[modality], embedded, mask)
        if modality in self.tower_proj:
            tokens = self.tower_proj[modality](tokens)
        valid = mask[..., None].to(tokens.dtype)
        return (tokens * valid, mask), (embedded * valid.to(embedded.dtype), mask)

    def forward(self, batch: dict, token_masks: dict[str, Tensor] | None = None,
                modalities: list[str] | None = None) -> FusionOutput:
        token_masks = token_masks or {}
        present = self.present(batch, modalities)
        if not present:
            raise ValueError(f"batch holds none of the modalities {modalities or self.modalities}; keys: {sorted(batch)}")
        encoded = {m: self.encode_unimodal(batch, m, token_masks.get(m)) for m in present}
        unimodal = {m: pair[0] for m, pair in encoded.items()}
        B = next(iter(unimodal.values()))[0].size(0)
        cls = self.cls_token.expand(B, -1, -1)
        parts, masks, spans, start = [cls], [torch.ones(B, 1, dtype=torch.bool, device=cls.device)], {}, 1
        for m in present:
            tokens, mask = unimodal[m]
            parts.append(tokens.to(cls.dtype))
            masks.append(mask)
            spans[m] = slice(start, start + tokens.size(1))
            start += tokens.size(1)
        x, mask = torch.cat(parts, dim=1), torch.cat(masks, dim=1)
        hidden = run_encoder(self.fusion, x, mask) * mask[..., None].to(x.dtype)
        return FusionOutput(hidden=hidden, mask=mask, cls=hidden[:, 0], spans=spans, unimodal=unimodal,
                            embedded={m: pair[1] for m, pair in encoded.items()})

    @staticmethod
    def pool(tokens: Tensor, mask: Tensor) -> Tensor:
        """Masked mean over tokens; rows without a valid token give zeros (never NaN)."""
        weights = mask.to(tokens.dtype)[..., None]
        return (tokens * weights).sum(1) / weights.sum(1).clamp(min=1.0)

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)
