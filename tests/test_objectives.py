import math

import torch
import torch.nn.functional as F

from omniformer.objectives import hard_negative_indices, info_nce, mask_tokens, masked_patch_loss, matching_loss
from omniformer.tasks.qa.losses import word_presence_loss

PAD, CLS, SEP, MASK, VOCAB = 0, 1, 2, 3, 100
SPECIALS = {PAD, CLS, SEP, MASK}


def _text_batch(B=512, L=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(L // 2, L + 1, (B,), generator=g)
    attention = torch.arange(L)[None, :] < lengths[:, None]
    ids = torch.randint(4, VOCAB, (B, L), generator=g)
    ids[:, 0] = CLS
    ids[torch.arange(B), lengths - 1] = SEP
    return torch.where(attention, ids, torch.full_like(ids, PAD)), attention


def test_mask_tokens_statistics():
    ids, attention = _text_batch()
    g = torch.Generator().manual_seed(1)
    masked, labels = mask_tokens(ids, attention, VOCAB, SPECIALS, 0.15, g, mask_id=MASK)
    maskable = attention & (ids > SEP)
    selected = labels != -100
    assert not (selected & ~maskable).any()  # no specials or padding ever selected
    assert torch.equal(labels[selected], ids[selected])
    assert abs(selected.sum() / maskable.sum() - 0.15) < 0.01
    n = selected.sum()
    as_mask = (masked == MASK) & selected
    changed = (masked != ids) & selected & ~as_mask
    kept = (masked == ids) & selected
    assert abs(as_mask.sum() / n - 0.8) < 0.02
    # A random replacement can draw the original id (1 in 96): count it among the "unchanged".
    assert abs(changed.sum() / n - 0.1 * 95 / 96) < 0.02
    assert abs(kept.sum() / n - (0.1 + 0.1 / 96)) < 0.02
    assert torch.equal(masked[~selected], ids[~selected])  # nothing outside the selection moves
    assert not torch.isin(masked[changed], torch.tensor(sorted(SPECIALS))).any()


def test_mask_tokens_at_least_one_per_row_and_deterministic():
    ids, attention = _text_batch(B=64, L=6)
    a = mask_tokens(ids, attention, VOCAB, torch.tensor([0, 1, 2, 3]), 0.01, torch.Generator().manual_seed(3), mask_id=MASK)
    b = mask_tokens(ids, attention, VOCAB, torch.tensor([0, 1, 2, 3]), 0.01, torch.Generator().manual_seed(3), mask_id=MASK)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    has_maskable = (attention & (ids > SEP)).any(1)
    assert torch.equal((a[1] != -100).any(1), has_maskable)
    empty = torch.tensor([[CLS, SEP, PAD]])
    _, labels = mask_tokens(empty, empty != PAD, VOCAB, SPECIALS, mask_id=MASK)
    assert (labels == -100).all()


def test_mask_tokens_traces_under_torch_compile_for_any_batch_shape():
    """train.compile=true: dynamo traces the masking with symbolic shapes (it failed on
    torch.rand(shape, generator=None) before), for batches of two lengths."""
    def mask(ids, attention):
        return mask_tokens(ids, attention, 50, [0, 1, 2], mask_id=3)
    compiled = torch.compile(mask, dynamic=True, backend="eager")
    torch.manual_seed(0)
    for length in (8, 13):
        ids = torch.randint(4, 50, (5, length))
        masked, labels = compiled(ids, torch.ones_like(ids, dtype=torch.bool))
        chosen = labels != -100
        assert masked.shape == ids.shape and chosen.any(1).all()
        assert torch.equal(labels[chosen], ids[chosen]) and torch.equal(masked[~chosen], ids[~chosen])


def test_info_nce_hand_computed():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[3.0, 0.0], [1.0, 1.0]])  # normalised: [1, 0], [0.7071, 0.7071]
    scale = 2.0
    r = 1 / math.sqrt(2)
    sim = [[1.0, r], [0.0, r]]  # a_i . b_j
    def ce(row, target):
        logits = [scale * s for s in row]
        return -logits[target] + math.log(sum(math.exp(l) for l in logits))
    a_to_b = (ce(sim[0], 0) + ce(sim[1], 1)) / 2
    b_to_a = (ce([sim[0][0], sim[1][0]], 0) + ce([sim[0][1], sim[1][1]], 1)) / 2
    expected = (a_to_b + b_to_a) / 2
    # info_nce takes the log-scale (ContrastiveHead.logit_scale) and exponentiates it.
    assert abs(info_nce(a, b, math.log(scale)).item() - expected) < 1e-6
    assert abs(info_nce(a, b, torch.tensor(math.log(scale))).item() - expected) < 1e-6
    # The multiplier is clamped to 100: log-scales above log(100) all give the same loss.
    assert abs(info_nce(a, b, math.log(100)).item() - info_nce(a, b, 10.0).item()) < 1e-6


def test_matching_loss_hand_computed():
    pos, neg = torch.tensor([2.0, -1.0]), torch.tensor([0.5])
    sp = lambda x: math.log1p(math.exp(x))  # noqa: E731  softplus
    expected = (sp(-2.0) + sp(1.0) + sp(0.5)) / 3  # -log sigmoid(pos), -log(1 - sigmoid(neg))
    assert abs(matching_loss(pos, neg).item() - expected) < 1e-6


def test_hard_negatives_never_diagonal_and_prefer_similar():
    g = torch.Generator().manual_seed(0)
    sim = torch.randn(8, 8, generator=g)
    sim.fill_diagonal_(100.0)  # even an overwhelming diagonal is never chosen
    for _ in range(50):
        idx = hard_negative_indices(sim, g)
        assert idx.shape == (8,) and not (idx == torch.arange(8)).any()
    sim = torch.zeros(4, 4); sim[0, 3] = 10.0
    picks = torch.stack([hard_negative_indices(sim, g) for _ in range(200)])
    assert (picks[:, 0] == 3).float().mean() > 0.95
    assert hard_negative_indices(torch.zeros(1, 1)) is None
    bad = torch.full((3, 3), float("nan"))
    idx = hard_negative_indices(bad, g)
    assert not (idx == torch.arange(3)).any()


def test_masked_patch_loss():
    g = torch.Generator().manual_seed(0)
    target = torch.randn(2, 5, 6, generator=g) * 3 + 1
    mask = torch.zeros(2, 5, dtype=torch.bool); mask[0, 1] = mask[1, 3] = True
    norm = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True, unbiased=False) + 1e-6).sqrt()
    assert masked_patch_loss(norm, target, mask).item() < 1e-10
    pred = torch.randn(2, 5, 6, generator=g)
    expected = F.mse_loss(pred[mask], norm[mask])
    assert abs(masked_patch_loss(pred, target, mask).item() - expected.item()) < 1e-6
    # Unmasked tokens don't count; no masked token gives zero, still differentiable.
    pred2 = pred.clone(); pred2[~mask] = 100.0
    assert abs(masked_patch_loss(pred2, target, mask).item() - expected.item()) < 1e-6
    p = pred.clone().requires_grad_()
    loss = masked_patch_loss(p, target, torch.zeros_like(mask))
    loss.backward()
    assert loss.item() == 0.0 and p.grad is not None


def test_word_presence_loss_hand_computed():
    # vocabulary of 4; row 0 said words {1, 2} (word 2 twice, then padding id 0); row 1 has no transcript
    logits = torch.tensor([[0.0, 2.0, -1.0, 3.0], [5.0, 5.0, 5.0, 5.0]])
    transcript = torch.tensor([[1, 2, 2, 0], [0, 0, 0, 0]])
    mask = torch.tensor([[True, True, True, False], [False] * 4])
    sp = lambda x: math.log1p(math.exp(x))  # noqa: E731  softplus: -log sigmoid(-x)
    # -log sigmoid(z) = softplus(-z) for words said, -log(1 - sigmoid(z)) = softplus(z) otherwise
    expected = (sp(0.0) + sp(-2.0) + sp(1.0) + sp(3.0)) / 4
    assert abs(word_presence_loss(logits, transcript, mask, said_weight=1.0).item() - expected) < 1e-6
    weighted = (sp(0.0) + 5 * sp(-2.0) + 5 * sp(1.0) + sp(3.0)) / 4      # words said weigh 5x by default
    assert abs(word_presence_loss(logits, transcript, mask).item() - weighted) < 1e-6
    rows = torch.tensor([True, True])      # row 1 counted too: every word absent
    both = (weighted + 4 * sp(5.0) / 4) / 2
    assert abs(word_presence_loss(logits, transcript, mask, rows).item() - both) < 1e-5
