"""The QA task's own losses: the word spotter's (which words a recording says) and the anchor
relation's grounding (each question finds its own image). Pretraining uses the first on spoken
captions."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


SAID_WEIGHT = 5.0


def word_presence_loss(word_logits: Tensor, transcript: Tensor, transcript_mask: Tensor,
                       rows: Tensor | None = None, said_weight: float = SAID_WEIGHT) -> Tensor:
    """Binary cross-entropy between per-utterance word logits (B, vocab) and the set of words
    in each transcript (token ids (B, L), real where ``transcript_mask``), averaged over the
    vocabulary and over ``rows`` (B,) bool (default: every row with a transcript).

    A word said weighs ``said_weight`` times a word not said. Why: each word is absent from
    most utterances, and at equal weights a spotter trained with a decaying learning rate
    left some colour words at the prior for good (ShapesWorld, 1,600 steps: "red" and
    "yellow" never heard; at 5, every colour heard in the held-out voice). The weight shifts
    the logits it trains by log(said_weight): subtract that to read calibrated probabilities."""
    real = transcript_mask.to(word_logits.dtype)  # padding adds nothing to the word set
    said = torch.zeros_like(word_logits).scatter_add(1, transcript, real).clamp(max=1.0)
    rows = transcript_mask.any(1) if rows is None else rows
    per_row = F.binary_cross_entropy_with_logits(word_logits.float(), said.float(), reduction="none",
                                                 pos_weight=word_logits.new_tensor(said_weight).float()).mean(-1)
    # where, not a product: a row without frames scores the dtype's minimum, and its loss overflows
    return torch.where(rows, per_row, 0.0).sum() / rows.sum().clamp(min=1)


def grounding_loss(match: Tensor, rows: Tensor) -> Tensor:
    """Each question picks its own image out of the batch: cross-entropy over ``match``
    (B questions, B images; row i's own image is column i), averaged over ``rows`` (B,) bool.

    The one image has no rival, so a batch of one gives zero. Two questions about one image
    in a batch count each other's image as a wrong answer; with thousands of images that is
    rare, and it only weakens the loss."""
    per_row = F.cross_entropy(match.float(), torch.arange(match.size(0), device=match.device), reduction="none")
    return torch.where(rows, per_row, 0.0).sum() / rows.sum().clamp(min=1)
