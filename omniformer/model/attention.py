"""Multi-head attention on top of ``F.scaled_dot_product_attention``.

Masks follow one convention everywhere in Omniformer: ``True`` means "a real token".
The mask handed to SDPA is built to keep the fast kernels whenever possible: no mask at all
when there is no padding, ``is_causal=True`` for causal attention without padding, and a
boolean ``(B, 1, 1|T, S)`` mask otherwise.

Incremental decoding passes a ``KVCache``: self-attention appends the step's keys and values to
it and its queries sit at the end of the keys (query i sees keys up to ``S - T + i``);
cross-attention projects its context once and reuses it every step.

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
    if causal:  # the queries are the last q_len keys (q_len < k_len when earlier keys are cached)
        future = torch.ones(q_len, k_len, dtype=torch.bool, device=mask.device).tril(k_len - q_len)
        mask = mask & future  # (B, 1, T, S)
    # Rows with no visible key would be NaN after softmax: let them see everything (see module doc).
    return mask | ~mask.any(dim=-1, keepdim=True)


class KVCache:
    """One attention layer's keys and values from earlier decoding steps, ``(B, H, S, D)`` each.

    Self-attention grows it by the step's tokens; cross-attention fills it once from the context.
    ``reorder(index)`` follows beam search when it keeps, drops or copies hypotheses.
    """

    def __init__(self) -> None:
        self.k: Tensor | None = None
        self.v: Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.k is None else self.k.size(2)

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        self.k = k if self.k is None else torch.cat([self.k, k], dim=2)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=2)
        return self.k, self.v

    def reorder(self, index: Tensor) -> None:
        if self.k is not None:
            self.k, self.v = self.k.index_select(0, index), self.v.index_select(0, index)


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
                context: Tensor | None = None, cache: KVCache | None = None) -> Tensor:
        """x (B, T, W); key_padding_mask (B, S) True = valid key (with a cache: over every key,
        the cached ones first); context (B, S, W) for cross-attention (not needed once its cache is
        filled)."""
        if self.cross:
            if causal:
                raise ValueError("causal masking is meaningless for cross-attention")
            q = self._split_heads(self.q(x))
            if cache is not None and cache.k is not None:
                k, v = cache.k, cache.v
            else:
                if context is None:
                    raise ValueError("cross-attention needs a context")
                k, v = (self._split_heads(t) for t in self.kv(context).split(self.width, dim=-1))
                if cache is not None:
                    cache.append(k, v)
        else:
            if context is not None:
                raise ValueError("self-attention takes no context; build with cross=True")
            q, k, v = (self._split_heads(t) for t in self.qkv(x).split(self.width, dim=-1))
            if cache is not None:
                k, v = cache.append(k, v)
        q_len, k_len = q.size(2), k.size(2)
        attn_mask = build_attention_mask(key_padding_mask, causal, q_len, k_len)
        if causal and attn_mask is None and q_len != k_len:
            # SDPA's is_causal aligns the queries with the first keys; cached queries are the last.
            causal = q_len > 1
            if causal:
                attn_mask = torch.ones(q_len, k_len, dtype=torch.bool, device=q.device).tril(k_len - q_len)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=causal and attn_mask is None,
        )
        y = y.transpose(1, 2).reshape(x.size(0), x.size(1), self.width)
        return self.proj(y)
