"""Multi-head attention on top of ``F.scaled_dot_product_attention``.

Masks follow one convention everywhere in Omniformer: ``True`` means "a real token".
The mask handed to SDPA is built to keep the fast kernels whenever possible: no mask at all
when there is no padding, ``is_causal=True`` for causal attention without padding, and a
boolean ``(B, 1, 1|T, S)`` mask otherwise.

Incremental decoding passes a ``KVCache``: self-attention appends the step's keys and values to
it and its queries sit at the end of the keys (query i sees keys up to ``S - T + i``);
cross-attention projects its context once, builds its SDPA mask once, and reuses both every step.
Cross-attention also takes a context with fewer rows than the queries when they divide them
(``B`` contexts for ``B * K`` beams, each context's ``K`` rows consecutive): the rows that share a
context attend to it as one group of queries, so its keys and values are projected and read once
per context, not once per beam.

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
    if causal and q_len > 1:  # the queries are the last q_len keys (q_len < k_len when earlier keys are cached)
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
        self.mask: Tensor | None = None  # cross-attention: the context's additive SDPA mask, built with k and v

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
        the cached ones first); context (C, S, W) for cross-attention, C = B or a divisor of it (see
        the module doc), with key_padding_mask (C, S); not needed once its cache is filled."""
        if self.cross:
            if causal:
                raise ValueError("causal masking is meaningless for cross-attention")
            B, T = x.size(0), x.size(1)
            if cache is not None and cache.k is not None:
                k, v, attn_mask = cache.k, cache.v, cache.mask
            else:
                if context is None:
                    raise ValueError("cross-attention needs a context")
                k, v = (self._split_heads(t) for t in self.kv(context).split(self.width, dim=-1))
                attn_mask = build_attention_mask(key_padding_mask, False, T, k.size(2))
                if attn_mask is not None:  # additive, as SDPA would make it from a boolean one each call
                    attn_mask = torch.zeros(attn_mask.shape, dtype=x.dtype, device=x.device).masked_fill(
                        ~attn_mask, float("-inf"))
                if cache is not None:
                    cache.append(k, v)
                    cache.mask = attn_mask
            C, D = k.size(0), self.width // self.heads
            group = B // C
            if group * C != B:
                raise ValueError(f"{B} query rows for {C} context rows: they must divide them")
            if group > 1:  # (B, T, W) -> (C, H, group * T, D): one context, a group of queries
                q = self.q(x).view(C, group, T, self.heads, D).permute(0, 3, 1, 2, 4)
                q = q.reshape(C, self.heads, group * T, D)
            else:
                q = self._split_heads(self.q(x))
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                               dropout_p=self.dropout if self.training else 0.0)
            if group > 1:  # (C, H, group * T, D) -> (B, T, W)
                y = y.view(C, self.heads, group, T, D).permute(0, 2, 3, 1, 4).reshape(B, T, self.width)
            else:
                y = y.transpose(1, 2).reshape(B, T, self.width)
            return self.proj(y)
        if context is not None:
            raise ValueError("self-attention takes no context; build with cross=True")
        B, T = x.size(0), x.size(1)  # (B, T, 3W) -> 3 x (B, H, T, D), views of one tensor
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, self.width // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
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
