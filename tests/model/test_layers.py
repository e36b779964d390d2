"""Dropout on a CPU: the mask torch's own dropout would draw, in law (rate, scale, gradient)."""
from __future__ import annotations

import pytest
import torch

from omniformer.model.layers import Dropout


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_dropout_zeroes_a_p_fraction_and_keeps_the_mean(p, dtype):
    torch.manual_seed(0)
    x = torch.ones(400, 500, dtype=dtype, requires_grad=True)
    y = Dropout(p)(x)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - p) < 0.005                      # 200,000 draws: the standard error is ~0.001
    kept = y[y != 0].float()
    assert torch.allclose(kept, torch.full_like(kept, 1 / (1 - p)), rtol=1e-2)
    assert abs(y.float().mean().item() - 1) < 0.01
    y.backward(torch.ones_like(y))
    assert torch.equal(x.grad, y.detach())               # d(out)/d(x) is the same mask and scale


def test_dropout_is_the_identity_in_eval_or_at_zero_and_seeded_draws_repeat():
    x = torch.randn(8, 16)
    drop = Dropout(0.4)
    assert drop.eval()(x) is x
    assert Dropout(0.0)(x) is x
    drop.train()
    torch.manual_seed(3)
    first = drop(x)
    torch.manual_seed(3)
    assert torch.equal(first, drop(x))
    assert not torch.equal(first, drop(x))
    assert torch.equal(Dropout(1.0)(x), torch.zeros_like(x))
