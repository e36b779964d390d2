"""The training step as ``fit`` calls it: the model itself, or the model under ``torch.compile``.

``train.compile`` compiles it with ``train.compile_mode``; with ``train.static_shapes`` (batches
padded to a few length edges, ``data.batching.StaticShapes``) it compiles with ``dynamic=False``:
one graph per edge combination, reused for every batch that lands on it, the form CUDA graphs
(``compile_mode: reduce-overhead``) replay. Why: a small model's GPU step is bound by its
kernel launches (benchmarks/README.md, "The GPU step"), and graphs launch a whole step at once.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable

import torch
from torch import nn

from ..config import TrainConfig

# Graphs dynamo may keep per compiled function: with static shapes, one per combination of
# edges (text x audio x targets, each modality present or not) and per branch a batch takes.
# Past torch's default of 8 the rest of a run would fall back to eager, silently.
RECOMPILE_LIMIT = 64


class CompileWarning(UserWarning):
    """A compile setting that cannot apply here; what runs instead is said."""


def compile_mode(cfg: TrainConfig, device: torch.device) -> str:
    """``cfg.compile_mode`` as it can run on ``device``: "reduce-overhead" needs CUDA for its
    graphs, so elsewhere it is "default", with one warning that says why. (torch itself compiles
    the same kernels on a CPU and skips the graphs without a word.)"""
    mode = cfg.compile_mode
    if mode == "reduce-overhead" and device.type != "cuda":
        warnings.warn(f"train.compile_mode=reduce-overhead captures CUDA graphs, which need a CUDA GPU; on "
                      f"{device.type} the step is compiled with mode=default (the same kernels, no graphs)",
                      CompileWarning, stacklevel=3)
        mode = "default"
    return mode


def _device_of(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


class _GraphStep:
    """The compiled model, each call marked as a new step for CUDA graph trees, so that a
    forward whose backward never ran (a skipped non-finite step) does not pin its graph's
    memory, and earlier outputs may be overwritten."""

    def __init__(self, compiled: Callable):
        self.compiled = compiled

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        torch.compiler.cudagraph_mark_step_begin()
        return self.compiled(*args, **kwargs)


def compile_step(model: nn.Module, cfg: TrainConfig, device: torch.device | None = None,
                 backend: str = "inductor") -> Callable:
    """What the training loop calls with a batch: ``model`` when ``cfg.compile`` is off, else
    ``torch.compile(model, mode=..., dynamic=...)``. ``device``: where the model runs (default:
    its parameters'); "reduce-overhead" off CUDA runs as "default" (``compile_mode``).
    ``backend``: torch.compile's; another than inductor (``aot_eager``: tracing without code
    generation, for quick checks) takes no mode and captures no CUDA graphs.

    ``dynamic=False`` with ``cfg.static_shapes`` (a few shapes, each its own graph, as CUDA
    graphs need); without it, torch's automatic dynamic shapes (``dynamic=None``), because then
    every batch length is a new shape, and ``dynamic=False`` would recompile for each until
    dynamo's limit sent the step back to eager. Returns the model's ``torch.compile`` wrapper,
    or, when CUDA graphs are on (reduce-overhead, max-autotune on CUDA), a callable around it that
    marks each call a new step.
    """
    if not cfg.compile:
        return model
    device = device or _device_of(model)
    mode = compile_mode(cfg, device)
    dynamo = torch._dynamo.config
    dynamo.recompile_limit = max(dynamo.recompile_limit, RECOMPILE_LIMIT)
    dynamic = False if cfg.static_shapes else None
    if backend != "inductor":
        return torch.compile(model, backend=backend, dynamic=dynamic)
    compiled = torch.compile(model, mode=mode, dynamic=dynamic)
    graphs = device.type == "cuda" and mode in ("reduce-overhead", "max-autotune")  # both capture CUDA graphs
    return _GraphStep(compiled) if graphs else compiled
