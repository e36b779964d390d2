"""Small building blocks: feed-forward, positional encodings, layer norm."""
from __future__ import annotations

import torch
from torch import Tensor, nn

# nn.LayerNorm, constructed with the config's eps: ``LayerNorm(width, eps=cfg.layer_norm_eps)``.
LayerNorm = nn.LayerNorm


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the GELU approximation CLIP was trained with."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


def activation_layer(name: str) -> nn.Module:
    if name == "gelu":
        return nn.GELU()
    if name == "gelu_tanh":
        return nn.GELU(approximate="tanh")
    if name == "quick_gelu":
        return QuickGELU()
    if name == "relu":
        return nn.ReLU()
    raise ValueError(f"unknown activation {name!r}; expected gelu, gelu_tanh, quick_gelu or relu")


class Dropout(nn.Dropout):
    """``nn.Dropout`` whose mask on a CPU is a uniform draw compared with ``p``: torch's own draws
    it with ``bernoulli_``, slower on a CPU for the same mask
    (benchmarks/README.md, "The CPU training step"); other devices keep torch's kernel."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu" or self.inplace or self.p >= 1:
            return super().forward(x)
        keep = torch.rand(x.shape, device=x.device) >= self.p  # drawn in fp32 whatever x's dtype
        return x * keep.to(x.dtype).mul_(1.0 / (1.0 - self.p))


def dropout(drop: nn.Dropout, x: Tensor) -> Tensor:
    """``drop(x)``, skipped outright where it is the identity (eval mode or p = 0): a decoding
    step calls a dozen of them, each a module call and an op for nothing."""
    return drop(x) if drop.training and drop.p > 0 else x


class FeedForward(nn.Module):
    """fc1 -> activation -> fc2 -> dropout (the Transformer MLP)."""

    def __init__(self, width: int, hidden: int, activation: str = "gelu", dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = activation_layer(activation)
        self.fc2 = nn.Linear(hidden, width)
        self.drop = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return dropout(self.drop, self.fc2(self.act(self.fc1(x))))


def sinusoidal_positions(length: int, width: int) -> Tensor:
    """(length, width): PE[pos, 2i] = sin(pos / 10000^(2i/width)), PE[pos, 2i+1] = cos(...)."""
    pos = torch.arange(length, dtype=torch.float64)[:, None]
    two_i = torch.arange(0, width, 2, dtype=torch.float64)
    angle = pos / torch.pow(10000.0, two_i / width)
    pe = torch.zeros(length, width, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle[:, : width // 2])  # odd widths have one sin column more
    return pe.float()


def sinusoidal_positions_2d(h: int, w: int, width: int) -> Tensor:
    """(h * w, width) in row-major order: the first half of channels encodes the row, the rest the column."""
    rows = sinusoidal_positions(h, width // 2)
    cols = sinusoidal_positions(w, width - width // 2)
    return torch.cat([rows[:, None, :].expand(h, w, -1), cols[None, :, :].expand(h, w, -1)], dim=-1).reshape(h * w, width)


class LearnedPositions(nn.Module):
    """A learned table of ``length`` positions; ``forward(x)`` adds the first ``x.size(1)`` of them."""

    def __init__(self, length: int, width: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(length, width) * 0.02)

    def forward(self, x: Tensor) -> Tensor:
        if x.size(1) > self.weight.size(0):
            raise ValueError(f"sequence of {x.size(1)} tokens exceeds the {self.weight.size(0)} learned positions")
        return x + self.weight[: x.size(1)]


class SinusoidalPositions(nn.Module):
    """Fixed sinusoidal positions; a non-persistent buffer, so checkpoints don't carry it."""

    def __init__(self, length: int, width: int, table: Tensor | None = None):
        super().__init__()
        self.register_buffer("table", sinusoidal_positions(length, width) if table is None else table, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if x.size(1) > self.table.size(0):
            raise ValueError(f"sequence of {x.size(1)} tokens exceeds the {self.table.size(0)} positions")
        return x + self.table[: x.size(1)].to(x.dtype)

