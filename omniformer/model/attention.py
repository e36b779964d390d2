"""Multi-head attention on top of ``F.scaled_dot_product_attention``.

Masks follow one convention everywhere in Omniformer: ``True`` means "a real token".
The mask handed to SDPA is built to keep the fast kernels whenever possible: no mask at all
when there is no padding, ``is_causal=True`` for causal attention without padding, and a
boolean ``(B, 1, 1|T, S)`` mask otherwise.

Fully masked rows: a query whose keys are *all* masked (a sample without that modality, or a
padding query under a causal mask) would softmax over nothing and produce NaN. We let such rows
attend to every key instead; their outputs are meaningless but finite, and callers ignore or
zero them through the same padding mask.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def build_attention_mask(key_padding_mask: Tensor | None, causal: bool, q_len: int, k_len: int) -> Tensor | None:
    """Boolean SDPA mask (True = may attend), or None when SDPA needs none (no padding)."""
    if key_padding_mask is None:
        return None  # causal-only attention is handled by is_causal=True, which keeps flash kernels
    mask = key_padding_mask.bool()[:, None, None, :]  # (B, 1, 1, S)
    if causal:
        future = torch.ones(q_len, k_len, dtype=torch.bool, device=mask.device).tril()
        mask = mask & future  # (B, 1, T, S)
    # Rows with no visible key would be NaN after softmax: let them see everything (see module doc).
    return mask | ~mask.any(dim=-1, keepdim=True)


class MultiHeadAttention(nn.Module):
    """Self-attention (one fused ``qkv`` Linear) or cross-attention (``q`` + fused ``kv``)."""

    def __init__(self, width: int, heads: int, dropout: float = 0.0, bias: bool = True, cross: bool = False):
        super().__init__()
        if width % heads != 0:
            raise ValueError(f"width {width} must be a multiple of heads {heads}")
        self.width, self.heads, self.dropout, self.cross = width, heads, dropout, cross
        if cross:
            self.q = nn.Linear(width, width, bias=bias)
            self.kv = nn.Linear(width, 2 * width, bias=bias)
        else:
            self.qkv = nn.Linear(width, 3 * width, bias=bias)
        self.proj = nn.Linear(width, width, bias=bias)

    def _split_heads(self, t: Tensor) -> Tensor:
        B, N, _ = t.shape
        return t.view(B, N, self.heads, self.width // self.heads).transpose(1, 2)  # (B, H, N, D)

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None, causal: bool = False,
                context: Tensor | None = None) -> Tensor:
        """x (B, T, W); key_padding_mask (B, S) True = valid key; context (B, S, W) for cross-attention."""
        if self.cross:
            if context is None:
                raise ValueError("cross-attention needs a context")
            if causal:
                raise ValueError("causal masking is meaningless for cross-attention")
            q = self.q(x)
            k, v = self.kv(context).split(self.width, dim=-1)
        else:
            if context is not None:
                raise ValueError("self-attention takes no context; build with cross=True")
            q, k, v = self.qkv(x).split(self.width, dim=-1)
        q, k, v = self._split_heads(q), self._split_heads(k), self._split_heads(v)
        attn_mask = build_attention_mask(key_padding_mask, causal, q.size(2), k.size(2))
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=causal and attn_mask is None,
        )
        y = y.transpose(1, 2).reshape(x.size(0), x.size(1), self.width)
        return self.proj(y)
