"""The one place to look up what Omniformer can do: every task, by name.

A task is registered with one line here, naming the module that defines it (its ``TASK``
attribute, a ``tasks.base.Task``). Modules are imported on first use, so ``omniformer --help``
stays fast and a task's optional dependencies load only when it runs.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .tasks.base import Task

TASKS: dict[str, str] = {
    "pretrain": "omniformer.tasks.pretrain",
    "classify": "omniformer.tasks.classify",
    "qa": "omniformer.tasks.qa",
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
