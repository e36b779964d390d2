"""Text: a caption or a question as token ids (``data.text.Tokenizer``) for ``TextEmbedder``."""
from __future__ import annotations

import torch
from torch import Tensor

from ..model.encoders import TextEmbedder
from .base import Modality


class TokenIds:
    """A text as the token ids the text embedder reads, at most ``max_len`` of them."""

    def __init__(self, tokenizer, max_len: int):
        self.tokenizer, self.max_len = tokenizer, max_len

    def __call__(self, text: str) -> Tensor:
        return torch.tensor(self.tokenizer.encode(text, self.max_len), dtype=torch.long)


class TextModality(Modality):
    """``text`` (B, L) long token ids right-padded with the pad id; ``text_mask`` (B, L)."""

    name = "text"
    fields = ("text", "question")
    embedder = TextEmbedder
    files = False              # the manifest holds the text itself
    media = False
    value_axes = {0: "batch", 1: "text_len"}
    mask_axes = {0: "batch", 1: "text_len"}

    def preprocessor(self, model, data=None, tokenizer=None) -> TokenIds:
        if tokenizer is None:
            raise ValueError("the text modality needs the tokenizer to turn a text into token ids")
        return TokenIds(tokenizer, model.text.max_len)

    def example_inputs(self, model, batch, generator, length=None):
        L = length or min(12, model.text.max_len)
        lengths = torch.randint(1, L + 1, (batch,), generator=generator)
        lengths[0] = L
        mask = torch.arange(L)[None, :] < lengths[:, None]
        ids = torch.randint(1, max(model.vocab_size, 2), (batch, L), generator=generator)
        return {"text": ids.masked_fill(~mask, getattr(model.text, "pad_id", 0)), "text_mask": mask}

    def describe(self, model):
        return {"max_len": model.text.max_len, "tokenizer": "the checkpoint's tokenizer.json",
                "pad_id": model.text.pad_id}


MODALITY = TextModality()
