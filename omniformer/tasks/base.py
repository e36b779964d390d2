"""What a task is: one use of the backbone, declared in one place.

A task brings its config section, the manifest fields it reads, its model (heads on the
backbone), training, metrics, a Python predictor, its command-line prediction, its HTTP route
and its ONNX graph. Everything general (``omniformer train|evaluate|predict|serve|export``,
checkpoints, the server's limits and errors) reads a task only through this interface, so a
new task is its own folder plus one line in ``omniformer.registry``::

    class ClassifyTask(Task):
        name, summary, recipe = "classify", "recognition over any modalities", "mnist"
        Config, fields = ClassifyConfig, ("image", "audio", "text", "label")
        ...
    TASK = ClassifyTask()
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

from torch import Tensor, nn

from ..config import RunConfig, from_dict

if TYPE_CHECKING:
    from fastapi import FastAPI


class TaskError(ValueError):
    """A task cannot do what was asked (no predictor, no export graph, wrong checkpoint)."""


@dataclass
class Evaluation:
    """A task's metrics on a split: flat scalars named for the metric (``accuracy``, ``top5``,
    ``wer``, ``bleu``, grouped ones as ``group/value``), plus structured ``details`` (a
    per-class table, a confusion matrix) that do not fit one number."""
    task: str
    split: str
    samples: int
    seconds: float
    metrics: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Every task's metrics in one shape: scripts read ``accuracy`` (or ``wer``...) at the top."""
        return {"task": self.task, "split": self.split, "samples": self.samples, "seconds": round(self.seconds, 3),
                **{k: v for k, v in self.metrics.items() if k != "score"}, **self.details}


class Predictor(Protocol):
    """A trained checkpoint ready to use from Python: ``load(dir)``, then ``predict(...)``."""
    model_id: str
    model: nn.Module
    cfg: RunConfig

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> "Predictor": ...

    def predict(self, *args: Any, **kwargs: Any) -> Any: ...


@dataclass
class ExportGraph:
    """A task model as ONNX needs it: positional tensor inputs, named outputs, dynamic axes,
    example inputs to trace with, and what the sidecar JSON should say about it."""
    module: nn.Module
    inputs: dict[str, Tensor]                   # name -> example tensor, in the graph's argument order
    outputs: list[str]
    dynamic_axes: dict[str, dict[int, str]]
    sidecar: dict[str, Any] = field(default_factory=dict)


@dataclass
class ServeLimits:
    """What the server allows a request; set by ``omniformer serve`` options."""
    max_upload_bytes: int = 10 * 2 ** 20
    max_pixels: int = 16_000_000
    max_audio_seconds: float | None = None     # default: the model's audio.max_seconds
    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 1024
    max_streams: int = 8                       # live streams open at once (asr)
    max_stream_seconds: float | None = None    # longest live stream (default: 15 minutes)
    decode_threads: int = 2


class Service(Protocol):
    """A task's side of the server: its routes, warm-up and what ``/v1/model`` says."""
    model_id: str
    ready: bool

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    @property
    def running(self) -> bool: ...

    @property
    def queued(self) -> int: ...

    def add_routes(self, app: "FastAPI", timed: Callable) -> dict[str, int]:
        """Register the task's endpoints on ``app``; return each one's request-body limit in bytes."""
        ...

    def info(self) -> dict[str, Any]: ...


class Task:
    """Base class of every registered task; the defaults say what a task does not support."""

    name: str = ""
    summary: str = ""
    recipe: str = ""                       # the built-in recipe used when --config is not given
    # The built-in recipe for a user's own data (no dataset's settings): used instead of
    # ``recipe`` when --config is not given and --data.manifest is.
    general_recipe: str = ""
    Config: type | None = None             # the recipe's ``task:`` section (head and loss choices)
    fields: tuple[str, ...] = ()           # manifest fields the task reads
    predictor: type | None = None          # a Predictor class

    # -- configuration -------------------------------------------------------------------------

    def config(self, cfg: RunConfig) -> Any:
        """The recipe's ``task:`` section as this task's Config (unknown keys name ``task.KEY``)."""
        if self.Config is None:
            if cfg.task:
                raise TaskError(f"task: the {self.name} task takes no task section, got keys {sorted(cfg.task)}")
            return None
        return from_dict(self.Config, cfg.task or {}, "task")

    # -- training and evaluation ---------------------------------------------------------------

    def train(self, cfg: RunConfig, init: str | Path | None = None, resume: bool = False,
              progress: bool = True) -> Path:
        """Train from the recipe; returns the checkpoint folder to use (``best`` where there is one)."""
        raise TaskError(f"the {self.name} task cannot be trained with 'omniformer train'")

    def evaluate(self, model_dir: str | Path, manifest: str | Path | None = None, split: str = "test",
                 device: str = "auto", workers: int = 0, cfg: RunConfig | None = None) -> Evaluation:
        """Metrics of a checkpoint on a split of its manifest (or ``manifest``); ``cfg``: the
        checkpoint's recipe with the command line's overrides applied, when there are any."""
        raise TaskError(f"the {self.name} task has no evaluation")

    def report(self, evaluation: Evaluation, out_dir: Path | None = None) -> str:
        """The evaluation as a person reads it; ``out_dir`` may receive figures (a confusion PNG)."""
        lines = [f"  {k:<32} {100 * v:6.2f}%" if 0 <= v <= 1 else f"  {k:<32} {v:.4f}"
                 for k, v in evaluation.metrics.items() if k != "score"]
        return "\n".join(lines)

    # -- use -----------------------------------------------------------------------------------

    def load(self, path: str | Path, device: str = "cpu") -> Predictor:
        if self.predictor is None:
            raise TaskError(f"the {self.name} task has no predictor: its checkpoints are for training other tasks")
        return self.predictor.load(path, device=device)

    def add_predict_arguments(self, parser: argparse.ArgumentParser) -> None:
        """The ``omniformer predict`` options this task takes (its inputs)."""

    def predict_from_args(self, predictor: Predictor, args: argparse.Namespace) -> Any:
        """One prediction from the parsed options, as JSON-able data."""
        raise TaskError(f"the {self.name} task has no command-line prediction")

    def format_prediction(self, result: Any) -> str:
        """A prediction as a person reads it."""
        return str(result)

    def service(self, predictor: Predictor, limits: ServeLimits, metrics: Any) -> Service:
        raise TaskError(f"the {self.name} task cannot be served")

    def export_graph(self, predictor: Predictor) -> ExportGraph:
        raise TaskError(f"the {self.name} task has no ONNX export")
