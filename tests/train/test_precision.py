"""The training loop's precision choices: native-bf16 autocasts in bf16 only where the hardware
computes it, and fp32 elsewhere; auto stays fp32 on CPU."""
from __future__ import annotations

import contextlib

import pytest
import torch

from omniformer.config import ConfigError, load_config
from omniformer.train.loop import autocast_context, native_bf16

CPU = torch.device("cpu")


@pytest.mark.parametrize("avx512_bf16, amx, expected", [(True, False, True), (False, True, True), (False, False, False)])
def test_native_bf16_on_cpu_follows_the_hardware(monkeypatch, avx512_bf16, amx, expected):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    assert native_bf16(CPU) is expected
    ctx = autocast_context(CPU, "native-bf16")
    if expected:
        assert isinstance(ctx, torch.autocast)
        with ctx:
            out = torch.nn.Linear(8, 8)(torch.randn(2, 8))
        assert out.dtype == torch.bfloat16
    else:
        assert isinstance(ctx, contextlib.nullcontext)
    assert isinstance(autocast_context(CPU, "auto"), contextlib.nullcontext)  # auto: fp32 on CPU, always


def test_native_bf16_without_the_probes_is_fp32(monkeypatch):
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    assert not native_bf16(CPU)


def test_an_unknown_precision_is_refused_by_name():
    with pytest.raises(ConfigError, match="precision"):
        load_config(overrides={"finetune": {"precision": "bf8"}})
