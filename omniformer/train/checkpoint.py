"""Checkpoints: a folder of safetensors weights, JSON config, tokenizer and trainer state.

    model.safetensors       the task model's weights (backbone + heads)
    config.json             {"task": ..., "config": RunConfig as a dict, "answers": [...], ...}
    tokenizer.json          the text tokenizer
    optimizer.safetensors   AdamW moments (only in resumable checkpoints)
    trainer.json            step, best metric, RNG states, data position

Nothing here unpickles: weights and optimizer tensors are safetensors, the rest JSON. A
checkpoint is written into a temporary folder and swapped in with renames, so a process
killed mid-write leaves the previous checkpoint intact (and ``load`` finds it).
"""
from __future__ import annotations

import base64
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

WEIGHTS, CONFIG, TOKENIZER, OPTIMIZER, TRAINER = (
    "model.safetensors", "config.json", "tokenizer.json", "optimizer.safetensors", "trainer.json")


class CheckpointError(ValueError):
    """A checkpoint folder is missing, incomplete or does not fit the model."""


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rng_state() -> dict[str, Any]:
    state = {"python": base64.b64encode(json.dumps(random.getstate()).encode()).decode(),
             "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()}
    np_state = np.random.get_state()
    state["numpy"] = [np_state[0], np_state[1].tolist(), *np_state[2:]]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = json.loads(base64.b64decode(state["python"]))
    random.setstate((py[0], tuple(py[1]), py[2]))
    torch.set_rng_state(torch.from_numpy(np.frombuffer(base64.b64decode(state["torch"]), dtype=np.uint8).copy()))
    np.random.set_state((state["numpy"][0], np.array(state["numpy"][1], dtype=np.uint32), *state["numpy"][2:]))


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, pstate in sd["state"].items():
        for key, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_state(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for name, value in {**tensors, **meta["scalars"]}.items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(path: str | Path, model: nn.Module, meta: dict[str, Any], tokenizer=None,
                    optimizer: torch.optim.Optimizer | None = None, trainer: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint folder atomically (temporary folder, then renames)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        # Tied weights (MLM decoder = token embedding) are stored once, as safetensors requires.
        state, seen = {}, {}
        for name, tensor in model.state_dict().items():
            key = (tensor.data_ptr(), tuple(tensor.shape), tensor.dtype)
            if tensor.data_ptr() and key in seen:
                continue
            seen[key] = name
            state[name] = tensor.detach().cpu().contiguous()
        save_file(state, str(tmp / WEIGHTS))
        _write_json(tmp / CONFIG, meta)
        if tokenizer is not None:
            tokenizer.save(tmp / TOKENIZER)
        if optimizer is not None:
            tensors, opt_meta = _optimizer_tensors(optimizer)
            save_file(tensors, str(tmp / OPTIMIZER), metadata={"meta": json.dumps(opt_meta)})
        if trainer is not None:
            _write_json(tmp / TRAINER, {**trainer, "rng": rng_state()})
        for f in tmp.iterdir():
            with f.open("rb") as fh:
                os.fsync(fh.fileno())
    except OSError as e:  # a full disk, say: the previous checkpoint stays as it was
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"could not write checkpoint {path}: {e}") from e
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    shutil.rmtree(old, ignore_errors=True)
    return path


def find_checkpoint(path: str | Path) -> Path:
    """The folder to load: ``path`` or, if a kill interrupted its swap, the previous one."""
    path = Path(path)
    if (path / WEIGHTS).is_file():
        return path
    old = path.with_name(path.name + ".old")
    if (old / WEIGHTS).is_file():
        return old
    raise CheckpointError(f"no checkpoint at {path}: expected {path / WEIGHTS}")


def read_meta(path: str | Path) -> dict[str, Any]:
    path = find_checkpoint(path)
    try:
        return json.loads((path / CONFIG).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint {path}: cannot read {CONFIG}: {e}") from None


def has_weights(path: str | Path, prefix: str) -> bool:
    """Whether the checkpoint holds any weight whose name starts with ``prefix`` (reads names only)."""
    with safe_open(str(find_checkpoint(path) / WEIGHTS), framework="pt") as f:
        return any(k.startswith(prefix) for k in f.keys())


def load_weights(path: str | Path, model: nn.Module, prefix: str = "", strict: bool = True,
                 skip: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """Load ``model.safetensors`` into ``model``; with ``prefix``, only that sub-tree
    (for example the pretrained backbone into a QA model). ``skip``: model keys to leave as
    they are (a head's output layer of another size). Returns the keys left unloaded."""
    path = find_checkpoint(path)
    state = load_file(str(path / WEIGHTS))
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not state:
            raise CheckpointError(f"checkpoint {path} holds no weights under {prefix!r}")
    state = {k: v for k, v in state.items() if k not in skip}
    own = model.state_dict()
    mismatched = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                  for k, v in state.items() if k in own and own[k].shape != v.shape]
    if mismatched:
        raise CheckpointError(f"checkpoint {path}: shape mismatch for {mismatched[0]}")
    result = model.load_state_dict(state, strict=False)
    unexpected = list(result.unexpected_keys)
    # Tied weights were stored once; their twins count as loaded.
    ptrs = {t.data_ptr() for k, t in model.state_dict().items() if k in state}
    missing = [k for k in result.missing_keys if model.state_dict()[k].data_ptr() not in ptrs]
    if strict and (missing or unexpected):
        what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise CheckpointError(f"checkpoint {path} does not fit the model: {what}")
    return missing


def load_optimizer(path: str | Path, optimizer: torch.optim.Optimizer) -> None:
    path = find_checkpoint(path)
    file = path / OPTIMIZER
    if not file.is_file():
        raise CheckpointError(f"checkpoint {path} has no optimizer state; it cannot be resumed")
    with safe_open(str(file), framework="pt") as f:
        meta = json.loads(f.metadata()["meta"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    optimizer.load_state_dict(_optimizer_state(tensors, meta))


def read_trainer_state(path: str | Path) -> dict[str, Any]:
    path = find_checkpoint(path)
    try:
        return json.loads((path / TRAINER).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} has no {TRAINER}; it cannot be resumed") from None
