"""Transformer blocks and stacks: a bidirectional Encoder and a causal, cross-attending Decoder.

Weight names are kept plain (``attn.qkv``, ``attn.proj``, ``ln1``, ``ln2``, ``mlp.fc1``,
``mlp.fc2``) so that mapping them to and from Hugging Face checkpoints is a rename table.
"""
from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from .attention import KVCache, MultiHeadAttention
from .layers import Dropout, FeedForward, LayerNorm, dropout


class EncoderBlock(nn.Module):
    """Pre-LN (x + attn(ln(x)); stable, the default) or post-LN (ln(x + attn(x)); BERT)."""

    def __init__(self, width: int, heads: int, mlp_hidden: int, dropout: float = 0.0, attn_dropout: float = 0.0,
                 norm: Literal["pre", "post"] = "pre", eps: float = 1e-5, activation: str = "gelu",
                 causal: bool = False):
        super().__init__()
        if norm not in ("pre", "post"):
            raise ValueError(f"norm must be 'pre' or 'post', got {norm!r}")
        self.pre_norm, self.causal = norm == "pre", causal
        self.ln1 = LayerNorm(width, eps=eps)
        self.attn = MultiHeadAttention(width, heads, dropout=attn_dropout)
        self.ln2 = LayerNorm(width, eps=eps)
        self.mlp = FeedForward(width, mlp_hidden, activation, dropout)
        self.drop = Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if self.pre_norm:
            x = x + self.drop(self.attn(self.ln1(x), key_padding_mask=mask, causal=self.causal))
            return x + self.mlp(self.ln2(x))
        x = self.ln1(x + self.drop(self.attn(x, key_padding_mask=mask, causal=self.causal)))
        return self.ln2(x + self.mlp(x))


class Encoder(nn.Module):
    """``depth`` EncoderBlocks; a final LayerNorm for pre-LN (post-LN blocks end normalised). depth 0 = identity.

    ``causal=True`` makes every block's self-attention causal (CLIP's text tower); ``final_ln=False``
    drops the final LayerNorm of a pre-LN stack (an imported tower that has none).
    """

    def __init__(self, depth: int, width: int, heads: int, mlp_hidden: int, dropout: float = 0.0,
                 attn_dropout: float = 0.0, norm: Literal["pre", "post"] = "pre", eps: float = 1e-5,
                 activation: str = "gelu", causal: bool = False, final_ln: bool = True):
        super().__init__()
        self.blocks = nn.ModuleList(
            EncoderBlock(width, heads, mlp_hidden, dropout, attn_dropout, norm, eps, activation, causal)
            for _ in range(depth)
        )
        self.ln_f = LayerNorm(width, eps=eps) if norm == "pre" and depth > 0 and final_ln else nn.Identity()

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x (B, N, W); mask (B, N) True = real token."""
        for block in self.blocks:
            x = block(x, mask)
        return self.ln_f(x)


class DecoderBlock(nn.Module):
    """Causal self-attention, cross-attention to a context, feed-forward; pre- or post-LN."""

    def __init__(self, width: int, heads: int, mlp_hidden: int, dropout: float = 0.0, attn_dropout: float = 0.0,
                 norm: Literal["pre", "post"] = "pre", eps: float = 1e-5, activation: str = "gelu"):
        super().__init__()
        if norm not in ("pre", "post"):
            raise ValueError(f"norm must be 'pre' or 'post', got {norm!r}")
        self.pre_norm = norm == "pre"
        self.ln1 = LayerNorm(width, eps=eps)
        self.attn = MultiHeadAttention(width, heads, dropout=attn_dropout)
        self.ln_cross = LayerNorm(width, eps=eps)
        self.cross_attn = MultiHeadAttention(width, heads, dropout=attn_dropout, cross=True)
        self.ln2 = LayerNorm(width, eps=eps)
        self.mlp = FeedForward(width, mlp_hidden, activation, dropout)
        self.drop = Dropout(dropout)

    def forward(self, x: Tensor, context: Tensor | None, mask: Tensor | None = None,
                context_mask: Tensor | None = None, cache: tuple[KVCache, KVCache] | None = None) -> Tensor:
        """``cache``: (self-attention, cross-attention) caches for incremental decoding; ``mask``
        then covers every key, the cached ones first."""
        own, cross = cache if cache is not None else (None, None)
        # No source (no context, none cached): a language model, the cross-attention skipped.
        sourced = context is not None or (cross is not None and cross.k is not None)
        if self.pre_norm:
            x = x + dropout(self.drop, self.attn(self.ln1(x), key_padding_mask=mask, causal=True, cache=own))
            if sourced:
                x = x + dropout(self.drop, self.cross_attn(self.ln_cross(x), key_padding_mask=context_mask,
                                                           context=context, cache=cross))
            return x + self.mlp(self.ln2(x))
        x = self.ln1(x + dropout(self.drop, self.attn(x, key_padding_mask=mask, causal=True, cache=own)))
        if sourced:
            x = self.ln_cross(x + dropout(self.drop, self.cross_attn(x, key_padding_mask=context_mask,
                                                                     context=context, cache=cross)))
        return self.ln2(x + self.mlp(x))


class Decoder(nn.Module):
    """``depth`` DecoderBlocks with a final LayerNorm for pre-LN."""

    def __init__(self, depth: int, width: int, heads: int, mlp_hidden: int, dropout: float = 0.0,
                 attn_dropout: float = 0.0, norm: Literal["pre", "post"] = "pre", eps: float = 1e-5,
                 activation: str = "gelu"):
        super().__init__()
        self.blocks = nn.ModuleList(
            DecoderBlock(width, heads, mlp_hidden, dropout, attn_dropout, norm, eps, activation) for _ in range(depth)
        )
        self.ln_f = LayerNorm(width, eps=eps) if norm == "pre" and depth > 0 else nn.Identity()

    def forward(self, x: Tensor, context: Tensor | None, mask: Tensor | None = None,
                context_mask: Tensor | None = None, cache: list[tuple[KVCache, KVCache]] | None = None) -> Tensor:
        """x (B, T, W) targets; context (B, S, W); masks True = real token; ``cache`` one pair
        per block (``new_cache()``) for incremental decoding."""
        for i, block in enumerate(self.blocks):
            x = block(x, context, mask, context_mask, None if cache is None else cache[i])
        return self.ln_f(x)

    def new_cache(self) -> list[tuple[KVCache, KVCache]]:
        """Empty (self-attention, cross-attention) caches, one pair per block."""
        return [(KVCache(), KVCache()) for _ in self.blocks]


def tower_kwargs(cfg, modality: str) -> dict:
    """Encoder keyword arguments (with depth) for ``modality``'s tower: its TowerConfig if it has one
    (an imported tower), else the model's shape with ``tower_depth`` layers."""
    tower = getattr(getattr(cfg, modality, None), "tower", None)
    if tower is None:
        return dict(depth=cfg.tower_depth, **block_kwargs(cfg))
    return dict(depth=tower.depth, width=tower.width, heads=tower.heads, mlp_hidden=tower.mlp_hidden,
                dropout=cfg.dropout, attn_dropout=cfg.attn_dropout, norm=tower.norm, eps=tower.layer_norm_eps,
                activation=tower.activation, causal=tower.causal, final_ln=tower.final_ln)


def block_kwargs(cfg) -> dict:
    """Encoder/Decoder keyword arguments from a ModelConfig (minus depth)."""
    return dict(width=cfg.width, heads=cfg.heads, mlp_hidden=int(cfg.width * cfg.mlp_ratio), dropout=cfg.dropout,
                attn_dropout=cfg.attn_dropout, norm=cfg.norm, eps=cfg.layer_norm_eps, activation=cfg.activation)
