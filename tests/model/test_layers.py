"""Dropout on a CPU: the mask torch's own dropout would draw, in law (rate, scale, gradient); and
the linear layer's packed weights for decoding: the same products."""
from __future__ import annotations

import contextlib
import threading

import pytest
import torch
import torch.nn.functional as F

import omniformer.model.generate as generation
from omniformer.model import layers
from omniformer.model.decoder import TextDecoder
from omniformer.model.generate import generate
from omniformer.model.layers import Dropout, Linear, packed_matmuls

MKL = layers._MKL_PACKING


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


# Packed weights (layers.linear inside packed_matmuls): the same products, kept per row count and
# packed again whenever the weight changes. On a build without MKL nothing is ever packed.

def packed_counts(layer) -> list[int]:
    return sorted(layer._packs)


def test_packed_linear_equals_linear_and_packs_only_small_row_counts_without_gradients():
    torch.manual_seed(0)
    lin = Linear(48, 80)
    assert set(lin.state_dict()) == {"weight", "bias"}               # the same checkpoint as nn.Linear
    with torch.no_grad():
        for rows in (1, 3, 4, 7, 32, 256, 257):
            x = torch.randn(rows, 1, 48)
            with packed_matmuls():
                y = lin(x)
            assert y.shape == (rows, 1, 80)
            assert torch.allclose(y, F.linear(x, lin.weight, lin.bias), atol=1e-5)
            if rows in (7, 32):
                assert packed_counts(lin) == ([4, 7] if rows == 7 else [7, 32]) if MKL else []
        assert packed_counts(lin) == ([32, 256] if MKL else [])    # 1, 3 and 257 rows: never packed
        lin(torch.randn(5, 48))                                      # outside packed_matmuls()
    with packed_matmuls():
        x = torch.randn(6, 48, requires_grad=True)
        lin(x).sum().backward()                                      # with gradients: torch's own product
    assert packed_counts(lin) == ([32, 256] if MKL else [])
    assert x.grad is not None and lin.weight.grad is not None


@pytest.mark.parametrize("change", ["in_place", "load_state_dict", "new_parameter"])
def test_a_changed_weight_is_packed_again(change):
    torch.manual_seed(0)
    lin = Linear(16, 24)
    x = torch.randn(8, 16)
    with torch.no_grad(), packed_matmuls():
        before = lin(x)
        if change == "in_place":                                    # what an optimizer step does
            lin.weight.add_(0.5)
        elif change == "load_state_dict":
            lin.load_state_dict({"weight": torch.randn(24, 16), "bias": torch.randn(24)})
        else:
            lin.weight = torch.nn.Parameter(torch.randn(24, 16))
        after = lin(x)
    assert not torch.allclose(before, after)
    assert torch.allclose(after, F.linear(x, lin.weight, lin.bias), atol=1e-5)


@pytest.mark.parametrize("beams", [1, 3])
def test_generate_makes_the_same_tokens_with_packed_weights(beams, monkeypatch):
    torch.manual_seed(0)
    dec = TextDecoder(50, 40, depth=2, width=64, heads=4, mlp_hidden=128).eval()
    with torch.no_grad():
        dec.token.weight.mul_(4.0)  # a peaked distribution: no near-ties for rounding to break
    ctx = torch.randn(8, 6, 64)
    mask = torch.arange(6)[None, :] < torch.tensor([6, 3, 5, 2, 6, 4, 1, 6])[:, None]
    kw = dict(bos_id=1, stop_ids=[2], num_beams=beams, max_new_tokens=12)
    packed = generate(dec, ctx, mask, **kw)
    if MKL:
        assert packed_counts(dec) == [8 * beams] and packed_counts(dec.decoder.blocks[0].mlp.fc1) == [8 * beams]
    monkeypatch.setattr(generation, "packed_matmuls", contextlib.nullcontext)
    plain = generate(dec, ctx, mask, **kw)
    assert [g.tokens for g in packed] == [g.tokens for g in plain]
    assert all(abs(a.score - b.score) < 1e-4 for a, b in zip(packed, plain))


def test_threads_decoding_different_row_counts_with_one_layer_get_their_own_products():
    torch.manual_seed(0)
    lin = Linear(32, 40)
    inputs = {rows: torch.randn(rows, 32) for rows in (4, 5, 6, 7)}  # more row counts than are kept
    expected = {rows: F.linear(x, lin.weight, lin.bias) for rows, x in inputs.items()}
    failures = []

    def decode(rows):
        try:
            with torch.no_grad(), packed_matmuls():
                for _ in range(300):
                    if not torch.allclose(lin(inputs[rows]), expected[rows], atol=1e-5):
                        failures.append(rows)
        except Exception as e:  # noqa: BLE001 - any error in a thread is the failure
            failures.append(repr(e))

    threads = [threading.Thread(target=decode, args=(rows,)) for rows in inputs for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert len(lin._packs) <= layers.PACKED_COUNTS
