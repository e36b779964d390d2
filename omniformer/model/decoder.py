"""The text decoder: token embedding + positions -> causal Decoder with cross-attention -> logits.

It reads the fused output of whatever modalities a source has (text to translate, an image to
caption, a sound to describe), so one backbone serves every generation task. The output layer
is the input embedding transposed (tied), which halves the vocabulary's parameters and, with
a vocabulary shared with the backbone's text embedder, lets source and target share one table.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import KVCache
from .layers import Dropout, LayerNorm, dropout
from .transformer import Decoder

Cache = list[tuple[KVCache, KVCache]]


class TextDecoder(nn.Module):
    """``forward(tokens, context, ...) -> logits (B, T, vocab)``; with ``cache`` (``new_cache()``)
    it takes only the new tokens of each step."""

    def __init__(self, vocab_size: int, max_positions: int, depth: int, width: int, heads: int, mlp_hidden: int,
                 dropout: float = 0.0, attn_dropout: float = 0.0, norm: str = "pre", eps: float = 1e-5,
                 activation: str = "gelu", pad_id: int = 0, embedding: nn.Embedding | None = None):
        super().__init__()
        if embedding is not None and tuple(embedding.weight.shape) != (vocab_size, width):
            raise ValueError(f"a shared embedding must be ({vocab_size}, {width}), got {tuple(embedding.weight.shape)}")
        self.vocab_size, self.max_positions, self.pad_id = vocab_size, max_positions, pad_id
        self.token = embedding if embedding is not None else nn.Embedding(vocab_size, width, padding_idx=pad_id)
        self.positions = nn.Embedding(max_positions, width)
        self.ln = LayerNorm(width, eps=eps)
        self.drop = Dropout(dropout)
        self.decoder = Decoder(depth, width, heads, mlp_hidden, dropout, attn_dropout, norm, eps, activation)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def new_cache(self) -> Cache:
        return self.decoder.new_cache()

    def forward(self, tokens: Tensor, context: Tensor | None, context_mask: Tensor | None = None,
                mask: Tensor | None = None, positions: Tensor | None = None, cache: Cache | None = None) -> Tensor:
        """tokens (B, T); context (B, S, W) and context_mask (B, S) True = real (or C contexts
        for B = C * K rows, each context's K rows consecutive: beam search); ``mask`` True =
        real token over every key (the cached ones first); ``positions`` (B, T) default counts on
        from the cache's length (left-padded prompts pass their own)."""
        return self.logits(self.states(tokens, context, context_mask, mask, positions, cache))

    def logits(self, states: Tensor) -> Tensor:
        """The vocabulary's scores for decoder states (..., W): the tied output layer."""
        return F.linear(states, self.token.weight.to(states.dtype), self.bias.to(states.dtype))  # one addmm

    def states(self, tokens: Tensor, context: Tensor | None, context_mask: Tensor | None = None,
               mask: Tensor | None = None, positions: Tensor | None = None, cache: Cache | None = None) -> Tensor:
        """The last layer's states (B, T, W), before the output layer; arguments as ``forward``.
        Training scores only the states of real target tokens (``Seq2SeqModel``)."""
        if positions is None:
            start = len(cache[0][0]) if cache else 0
            positions = torch.arange(start, start + tokens.size(1), device=tokens.device).expand(tokens.size(0), -1)
        if tokens.size(1) and int(positions.max()) >= self.max_positions:
            raise ValueError(f"the decoder has {self.max_positions} positions; position {int(positions.max())} "
                             f"is past them (generate fewer tokens or train with more positions)")
        x = dropout(self.drop, self.ln(self.token(tokens) + self.positions(positions)))
        return self.decoder(x, context, mask, context_mask, cache)
