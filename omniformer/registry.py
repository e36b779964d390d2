"""The one place to look up what Omniformer can do: every task, by name.

A task is registered with one line here, naming the module that defines it (its ``TASK``
attribute, a ``tasks.base.Task``). Modules are imported on first use, so ``omniformer --help``
stays fast and a task's optional dependencies load only when it runs.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .modalities.base import Modality
    from .tasks.base import Task

TASKS: dict[str, str] = {
    "pretrain": "omniformer.tasks.pretrain",
    "classify": "omniformer.tasks.classify",
    "qa": "omniformer.tasks.qa",
    "asr": "omniformer.tasks.asr",
    "translate": "omniformer.tasks.seq2seq",
    "caption": "omniformer.tasks.caption",
}

# Every modality, in the order batches, fusion spans and ONNX inputs list them: a name (the
# batch key) -> the module whose ``MODALITY`` (a ``modalities.base.Modality``) defines it, or the
# Modality itself once ``register_modality`` added it at run time.
MODALITIES: dict[str, "str | Modality"] = {
    "text": "omniformer.modalities.text",
    "image": "omniformer.modalities.image",
    "audio": "omniformer.modalities.audio",
}


# Built-in datasets: a recipe's ``data.dataset`` names one, and its module's ``make`` writes the
# manifest when absent.
DATASETS: dict[str, str] = {
    "shapes": "omniformer.datasets.shapes",
}


class UnknownTask(ValueError):
    """A task name that no registry line defines; the message lists the known ones."""


def get_task(name: str) -> "Task":
    """The registered task ``name``; an UnknownTask error lists the known names."""
    if name not in TASKS:
        raise UnknownTask(f"task {name!r} is not registered; known tasks: {', '.join(sorted(TASKS))}")
    task = importlib.import_module(TASKS[name]).TASK
    if task.name != name:
        raise UnknownTask(f"registry line {name!r} points to {TASKS[name]}, whose task is named {task.name!r}")
    return task


def task_names() -> list[str]:
    return sorted(TASKS)


def task_of_checkpoint(path) -> "Task":
    """The registered task a checkpoint folder was trained for (its ``config.json`` says)."""
    from .train import checkpoint as ckpt
    name = ckpt.read_meta(path).get("task")
    if not name:
        raise UnknownTask(f"checkpoint {path}: its {ckpt.CONFIG} names no task; it was not written by "
                          f"'omniformer train' (known tasks: {', '.join(sorted(TASKS))})")
    if name not in TASKS:
        raise UnknownTask(f"checkpoint {path} is a {name!r} model, and no registered task is named so; "
                          f"known tasks: {', '.join(sorted(TASKS))}")
    return get_task(name)


def get_dataset(name: str):
    """The built-in dataset module ``name`` (``Config``, ``make(manifest, options, progress)``)."""
    if name not in DATASETS:
        raise UnknownTask(f"data.dataset: {name!r} is not a built-in dataset; known: {', '.join(sorted(DATASETS))}")
    return importlib.import_module(DATASETS[name])


class UnknownModality(ValueError):
    """A modality name that no registry line defines; the message lists the known ones."""


def modality_names() -> list[str]:
    """The registered modalities, in registry order (the batch's and the ONNX inputs' order)."""
    return list(MODALITIES)


def get_modality(name: str) -> "Modality":
    """The registered modality ``name``; an UnknownModality error lists the known names."""
    if name not in MODALITIES:
        raise UnknownModality(f"modality {name!r} is not registered; known modalities: {', '.join(MODALITIES)}")
    entry = MODALITIES[name]
    modality = importlib.import_module(entry).MODALITY if isinstance(entry, str) else entry
    if modality.name != name:
        raise UnknownModality(f"registry line {name!r} points to {entry}, whose modality is named {modality.name!r}")
    return modality


def register_modality(modality: "Modality") -> "Modality":
    """Add ``modality`` to ``MODALITIES`` at run time (a plug-in, a test); its name and manifest
    fields must be new. Returns it; ``MODALITIES.pop(name)`` takes it out again."""
    from .data.manifest import CORE_FIELDS
    from .modalities.base import Modality
    if not isinstance(modality, Modality):
        raise TypeError(f"register_modality: expected a Modality instance, got {modality!r}")
    modality.check()
    if modality.name in MODALITIES:
        raise ValueError(f"modality {modality.name!r} is already registered; known modalities: "
                         f"{', '.join(MODALITIES)}")
    taken = {f: "the manifest's own fields" for f in CORE_FIELDS}
    taken.update({f: f"modality {m!r}" for m in MODALITIES for f in get_modality(m).fields})
    clash = [f for f in modality.fields if f in taken]
    if clash:
        raise ValueError(f"modality {modality.name!r}: manifest field {clash[0]!r} already belongs to {taken[clash[0]]}")
    MODALITIES[modality.name] = modality
    return modality
