import math

import pytest
import torch

from omniformer.model.layers import FeedForward, LearnedPositions, sinusoidal_positions, sinusoidal_positions_2d
from omniformer.model.transformer import Decoder, Encoder


def test_sinusoidal_matches_formula():
    length, width = 11, 8
    pe = sinusoidal_positions(length, width)
    for pos in range(length):
        for i in range(width // 2):
            angle = pos / 10000 ** (2 * i / width)
            assert pe[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert pe[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


def test_sinusoidal_2d_halves_rows_and_columns():
    h, w, width = 3, 4, 8
    pe = sinusoidal_positions_2d(h, w, width).view(h, w, width)
    rows, cols = sinusoidal_positions(h, 4), sinusoidal_positions(w, 4)
    for r in range(h):
        for c in range(w):
            assert torch.allclose(pe[r, c, :4], rows[r]) and torch.allclose(pe[r, c, 4:], cols[c])


def test_learned_positions_and_feedforward_shapes():
    pos = LearnedPositions(10, 8)
    assert pos(torch.zeros(2, 6, 8)).shape == (2, 6, 8)
    with pytest.raises(ValueError):
        pos(torch.zeros(1, 11, 8))
    assert FeedForward(8, 32, "gelu_tanh").forward(torch.randn(2, 3, 8)).shape == (2, 3, 8)


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_encoder_runs_and_ignores_padding(norm):
    torch.manual_seed(0)
    enc = Encoder(2, 16, 4, 32, norm=norm).eval()
    x = torch.randn(2, 6, 16)
    mask = torch.ones(2, 6, dtype=torch.bool); mask[:, 4:] = False
    y = enc(x, mask)
    x2 = x.clone(); x2[:, 4:] = torch.randn(2, 2, 16) * 10
    assert torch.isfinite(y).all() and y.shape == x.shape
    assert torch.allclose(enc(x2, mask)[:, :4], y[:, :4], atol=1e-6)
    assert isinstance(enc.ln_f, torch.nn.LayerNorm) == (norm == "pre")


def test_encoder_weight_names():
    names = set(Encoder(1, 16, 4, 32).state_dict())
    for n in ["attn.qkv.weight", "attn.proj.weight", "ln1.weight", "ln2.weight", "mlp.fc1.weight", "mlp.fc2.weight"]:
        assert f"blocks.0.{n}" in names


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_decoder_is_causal_and_uses_context(norm):
    torch.manual_seed(0)
    dec = Decoder(2, 16, 4, 32, norm=norm).eval()
    x, ctx = torch.randn(2, 7, 16), torch.randn(2, 5, 16)
    y = dec(x, ctx)
    t = 4
    x2 = x.clone(); x2[:, t] += torch.randn(2, 16)
    y2 = dec(x2, ctx)
    assert torch.allclose(y2[:, :t], y[:, :t], atol=1e-6)
    assert not torch.allclose(y2[:, t], y[:, t], atol=1e-4)
    assert not torch.allclose(dec(x, torch.randn(2, 5, 16)), y, atol=1e-4)
    # With target padding too: still no leak from the future.
    mask = torch.ones(2, 7, dtype=torch.bool); mask[1, 6:] = False
    ctx_mask = torch.ones(2, 5, dtype=torch.bool); ctx_mask[0, 3:] = False
    a, b = dec(x, ctx, mask, ctx_mask), dec(x2, ctx, mask, ctx_mask)
    assert torch.allclose(a[:, :t], b[:, :t], atol=1e-6)
    ctx2 = ctx.clone(); ctx2[0, 3:] = 100.0  # masked context keys change nothing
    assert torch.allclose(dec(x, ctx2, mask, ctx_mask), a, atol=1e-6)
