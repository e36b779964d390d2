"""Pretraining losses and their masking/sampling helpers (no model code here)."""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

from .model.heads import MAX_LOGIT_SCALE

IGNORE_INDEX = -100  # labels F.cross_entropy skips


def _as_tensor(ids: Iterable[int] | Tensor, device: torch.device) -> Tensor:
    if isinstance(ids, Tensor):
        return ids.to(device=device, dtype=torch.long).flatten()
    return torch.tensor(sorted(int(i) for i in ids), dtype=torch.long, device=device)


def mask_tokens(input_ids: Tensor, attention_mask: Tensor, vocab_size: int, special_ids: Iterable[int] | Tensor,
                probability: float = 0.15, generator: torch.Generator | None = None, *,
                mask_id: int) -> tuple[Tensor, Tensor]:
    """BERT masking: select ``probability`` of the real, non-special tokens; of those 80% -> ``mask_id``,
    10% -> a random non-special token, 10% unchanged. Every row with a maskable token gets at least one.

    Returns (masked_ids, labels); labels hold the original id at selected positions, -100 elsewhere.
    """
    device = input_ids.device
    specials = _as_tensor(special_ids, device)
    maskable = attention_mask.bool() & ~torch.isin(input_ids, specials)

    def rand() -> Tensor:
        # Without a generator, the *_like form: torch.compile traces it over a batch of any size.
        if generator is None:
            return torch.rand_like(input_ids, dtype=torch.float)
        return torch.rand(input_ids.shape, generator=generator, device=device)

    selected = maskable & (rand() < probability)
    # Rows that drew nothing but could have: pick one maskable token at random (max of random scores).
    empty = maskable.any(1) & ~selected.any(1)
    scores = torch.where(maskable, rand(), torch.full_like(input_ids, -1, dtype=torch.float))
    forced = F.one_hot(scores.argmax(1), input_ids.size(1)).bool() & empty[:, None]
    selected = selected | forced

    labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    u = rand()
    to_mask = selected & (u < 0.8)
    to_random = selected & (u >= 0.8) & (u < 0.9)
    allowed = torch.ones(vocab_size, dtype=torch.bool, device=device)
    allowed[specials[(specials >= 0) & (specials < vocab_size)]] = False
    allowed_ids = allowed.nonzero().squeeze(1)
    picks = (torch.randint_like(input_ids, len(allowed_ids)) if generator is None else
             torch.randint(len(allowed_ids), input_ids.shape, generator=generator, device=device))
    masked = torch.where(to_mask, torch.full_like(input_ids, mask_id), input_ids)
    masked = torch.where(to_random, allowed_ids[picks], masked)
    return masked, labels


def info_nce(a: Tensor, b: Tensor, logit_scale: Tensor | float) -> Tensor:
    """Symmetric InfoNCE (CLIP): mean of the a->b and b->a cross-entropies; pair i matches pair i.

    ``logit_scale`` is the learned *log* temperature (``ContrastiveHead.logit_scale``); the cosine
    similarities are multiplied by exp(logit_scale), clamped to at most 100 as in CLIP.
    """
    a, b = F.normalize(a.float(), dim=-1), F.normalize(b.float(), dim=-1)
    scale = torch.as_tensor(logit_scale, dtype=torch.float32, device=a.device).clamp(max=MAX_LOGIT_SCALE).exp()
    logits = scale * a @ b.t()
    targets = torch.arange(a.size(0), device=a.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2


def hard_negative_indices(sim: Tensor, generator: torch.Generator | None = None) -> Tensor | None:
    """For each row i sample a partner j != i with probability softmax(sim[i]) over j != i.

    Harder (more similar) negatives are more likely. Rows whose weights are not usable (non-finite)
    fall back to a uniform choice. Returns None for B = 1, where no negative exists.
    """
    B = sim.size(0)
    if B < 2:
        return None
    eye = torch.eye(B, dtype=torch.bool, device=sim.device)
    probs = torch.softmax(sim.detach().float().masked_fill(eye, float("-inf")), dim=1)
    bad = ~torch.isfinite(probs).all(1) | (probs.sum(1) <= 0)
    uniform = (~eye).float() / (B - 1)
    probs = torch.where(bad[:, None], uniform, probs).masked_fill(eye, 0.0)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def matching_loss(logits_pos: Tensor, logits_neg: Tensor) -> Tensor:
    """Binary cross-entropy with logits: matched pairs -> 1, mismatched pairs -> 0, averaged over all."""
    logits = torch.cat([logits_pos.flatten(), logits_neg.flatten()]).float()
    targets = torch.cat([torch.ones(logits_pos.numel()), torch.zeros(logits_neg.numel())]).to(logits.device)
    return F.binary_cross_entropy_with_logits(logits, targets)


def masked_patch_loss(pred: Tensor, target: Tensor, mask: Tensor, eps: float = 1e-6) -> Tensor:
    """MSE over masked tokens against per-patch normalised targets (MAE).

    pred, target (B, N, D); mask (B, N) True = masked (predicted) token. No masked token: a zero
    that keeps the graph.
    """
    target = target.float()
    target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True, unbiased=False) + eps).sqrt()
    per_token = ((pred.float() - target) ** 2).mean(-1)
    weights = mask.float()
    return (per_token * weights).sum() / weights.sum().clamp(min=1.0)
