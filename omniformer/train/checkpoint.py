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


LFS_POINTER = b"version https://git-lfs.github.com/spec/v1"


def _safetensors_problem(file: Path) -> str | None:
    """What is wrong with a safetensors file, in words (None if its header and size agree): it is
    missing, empty, a git-lfs pointer (a clone without LFS), cut short, or not safetensors at all."""
    if not file.exists():
        return "does not exist"
    if file.is_dir():
        return "is a directory, not a safetensors file"
    try:
        size = file.stat().st_size
        with file.open("rb") as f:
            head = f.read(8)
            if size == 0:
                return "is empty (0 bytes): it was never written, or the disk was full"
            if (head + f.read(len(LFS_POINTER) - len(head))).startswith(LFS_POINTER):
                return ("is a git-lfs pointer, not the weights: the clone fetched no LFS files; "
                        "run 'git lfs pull' in its repository")
            f.seek(8)
            if len(head) < 8:
                return f"is cut short ({size} bytes; a safetensors file starts with an 8-byte header length)"
            n = int.from_bytes(head, "little")
            if n > size - 8:
                return (f"is cut short or not a safetensors file ({size} bytes, but its header says "
                        f"{n:,} bytes of header follow)")
            header = json.loads(f.read(n))
    except OSError as e:
        return f"cannot be read: {e.strerror or e}"
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "is damaged or not a safetensors file (its header is not JSON)"
    if not isinstance(header, dict):
        return "is damaged or not a safetensors file (its header is not a JSON object)"
    end = max((int(t["data_offsets"][1]) for k, t in header.items()
               if k != "__metadata__" and isinstance(t, dict) and len(t.get("data_offsets", ())) == 2), default=0)
    if 8 + n + end > size:
        return f"is cut short: {size:,} bytes of the {8 + n + end:,} its header describes"
    return None


def _safetensors_failed(file: Path, error: Exception) -> CheckpointError:
    problem = _safetensors_problem(file) or f"is damaged or not a safetensors file ({error})"
    return CheckpointError(f"{file} {problem}")


def read_safetensors(file: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file. A missing, empty, cut-short or git-lfs pointer file is
    a CheckpointError naming it and what is wrong, not safetensors' own message (which names no file);
    every weights file of the project and of an imported checkpoint is read through here."""
    file = Path(file)
    problem = _safetensors_problem(file)
    if problem:
        raise CheckpointError(f"{file} {problem}")
    try:
        return load_file(str(file))
    except Exception as e:  # SafetensorError (not a ValueError), or a bad dtype/shape in the header
        raise _safetensors_failed(file, e) from None


def safetensors_names(file: str | Path) -> list[str]:
    """The tensor names of a safetensors file (its header only), checked as ``read_safetensors`` does."""
    file = Path(file)
    problem = _safetensors_problem(file)
    if problem:
        raise CheckpointError(f"{file} {problem}")
    try:
        with safe_open(str(file), framework="pt") as f:
            return list(f.keys())
    except Exception as e:
        raise _safetensors_failed(file, e) from None


def read_safetensors_with_metadata(file: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, the header's ``__metadata__``) of a safetensors file, checked as ``read_safetensors`` does."""
    file = Path(file)
    problem = _safetensors_problem(file)
    if problem:
        raise CheckpointError(f"{file} {problem}")
    try:
        with safe_open(str(file), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as e:
        raise _safetensors_failed(file, e) from None


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


def weights_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's tensors as a checkpoint stores them."""
    return untied(model.state_dict())


def untied(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict as a checkpoint stores it: on the CPU, contiguous, and tied weights (the MLM
    decoder is the token embedding) once, as safetensors requires."""
    out, seen = {}, set()
    for name, tensor in state.items():
        key = (tensor.data_ptr(), tuple(tensor.shape), tensor.dtype)
        if tensor.data_ptr() and key in seen:
            continue
        seen.add(key)
        out[name] = tensor.detach().cpu().contiguous()
    return out


def save_checkpoint(path: str | Path, model: nn.Module | None, meta: dict[str, Any], tokenizer=None,
                    optimizer: torch.optim.Optimizer | None = None, trainer: dict[str, Any] | None = None,
                    weights: dict[str, torch.Tensor] | None = None) -> Path:
    """Write a checkpoint folder atomically (temporary folder, then renames). ``weights`` stands
    for ``model``'s when given (a sharded model's, gathered)."""
    path = Path(path)
    tmp = begin_checkpoint(path)
    try:
        write_checkpoint_files(tmp, weights if weights is not None else weights_of(model), meta, tokenizer,
                               optimizer, trainer)
    except OSError as e:  # a full disk, say: the previous checkpoint stays as it was
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"could not write checkpoint {path}: {e}") from e
    return swap_in(tmp, path)


def begin_checkpoint(path: Path) -> Path:
    """A fresh temporary folder beside ``path`` that a checkpoint is written into."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def write_checkpoint_files(tmp: Path, weights: dict[str, torch.Tensor], meta: dict[str, Any], tokenizer=None,
                           optimizer: torch.optim.Optimizer | None = None,
                           trainer: dict[str, Any] | None = None) -> None:
    save_file(weights, str(tmp / WEIGHTS))
    _write_json(tmp / CONFIG, meta)
    if tokenizer is not None:
        tokenizer.save(tmp / TOKENIZER)
    if optimizer is not None:
        tensors, opt_meta = _optimizer_tensors(optimizer)
        save_file(tensors, str(tmp / OPTIMIZER), metadata={"meta": json.dumps(opt_meta)})
    if trainer is not None:
        _write_json(tmp / TRAINER, {**trainer, "rng": rng_state()})
    for f in tmp.iterdir():
        if f.is_file():
            with f.open("rb") as fh:
                os.fsync(fh.fileno())


def swap_in(tmp: Path, path: Path) -> Path:
    """Put the finished ``tmp`` in ``path``'s place with renames, keeping ``path.old`` until the
    new folder is in, so that a kill at any moment leaves one good checkpoint."""
    old = path.with_name(path.name + ".old")
    if path.exists():  # else a kill interrupted the last swap, and ``old`` is the good one: keep it
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    shutil.rmtree(old, ignore_errors=True)
    return path


SHARDED = "dcp"  # beside the weights: the sharded model and optimizer state of an FSDP run


def is_sharded(path: str | Path) -> bool:
    return (find_checkpoint(path) / SHARDED).is_dir()


def gathered_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """A sharded (FSDP2) model's whole weights, as a checkpoint stores them: every rank must call
    this (it gathers the shards); rank 0 gets them, on the CPU."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    return untied(get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)))


def save_sharded_weights(path: str | Path, model: nn.Module, meta: dict[str, Any], tokenizer=None,
                         main: bool = True) -> Path:
    """Every rank of an FSDP run calls this: rank 0 writes the gathered weights as an ordinary
    (not resumable) checkpoint, the others wait for it."""
    from .distributed import barrier
    weights = gathered_weights(model)
    if main:
        save_checkpoint(path, None, meta, tokenizer, weights=weights)
    barrier()
    return Path(path)


def save_sharded_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                            meta: dict[str, Any], tokenizer=None, trainer: dict[str, Any] | None = None,
                            main: bool = True) -> Path:
    """Every rank of an FSDP run calls this: each writes its shards of the model and optimizer
    with Distributed Checkpoint into ``dcp/``, rank 0 the whole weights as ``model.safetensors``
    (for inference, as any checkpoint) and the rest; then rank 0 swaps the folder in atomically."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from .distributed import barrier
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if main:
        begin_checkpoint(path)
    barrier()
    weights = gathered_weights(model)
    model_state, optim_state = get_state_dict(model, optimizer)
    failed = None
    try:
        dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(tmp / SHARDED))
        if main:
            write_checkpoint_files(tmp, weights, meta, tokenizer, None, trainer)
    except OSError as e:
        failed = e
    barrier()
    if failed is not None:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"could not write checkpoint {path}: {failed}") from failed
    if main:
        swap_in(tmp, path)
    barrier()
    return path


def load_sharded_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Model and optimizer state from an FSDP run's ``dcp/``, resharded to however many ranks
    (one included) this run has."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

    folder = find_checkpoint(path) / SHARDED
    if not (folder / ".metadata").is_file():
        raise CheckpointError(f"checkpoint {folder.parent}: {folder.name}/ has no .metadata; the sharded state was "
                              f"not written completely, so it cannot be resumed")
    model_state, optim_state = get_state_dict(model, optimizer)
    stored = set(dcp.FileSystemReader(str(folder)).read_metadata().state_dict_metadata)
    lacking = [k for k in model_state if f"model.{k}" not in stored]
    if lacking:
        raise CheckpointError(f"checkpoint {folder.parent} does not fit the model: its sharded state lacks "
                              f"{len(lacking)} weights, e.g. {lacking[:3]}")
    # A parameter no batch has used yet (an embedder of a modality the data lacks) has no AdamW
    # state in the checkpoint: it keeps the empty state it has here.
    optim_state["state"] = {name: value for name, value in optim_state["state"].items()
                            if any(k.startswith(f"optimizer.state.{name}.") for k in stored)}
    state = {"model": model_state, "optimizer": optim_state}
    try:
        dcp.load(state, checkpoint_id=str(folder))
    except Exception as e:  # DCP raises its own CheckpointException for missing or mismatched shards
        raise CheckpointError(f"checkpoint {folder.parent}: the sharded state does not fit this model ({e})") from None
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                   options=StateDictOptions(strict=False))  # the model's keys were checked above


def find_checkpoint(path: str | Path) -> Path:
    """The folder to load: ``path`` or, if a kill interrupted its swap, the previous one."""
    path = Path(path)
    if (path / WEIGHTS).is_file():
        return path
    old = path.with_name(path.name + ".old")
    if (old / WEIGHTS).is_file():
        return old
    raise CheckpointError(f"no checkpoint at {path}: expected {path / WEIGHTS}")


def read_json_file(file: str | Path) -> Any:
    """A JSON file's content; missing, unreadable, not UTF-8 or not JSON is a CheckpointError naming it
    (and the line and column of a syntax error)."""
    file = Path(file)
    if not file.exists():
        raise CheckpointError(f"{file} does not exist")
    if file.is_dir():
        raise CheckpointError(f"{file} is a directory, not a JSON file")
    try:
        text = file.read_bytes().decode("utf-8")
    except OSError as e:
        raise CheckpointError(f"{file}: cannot be read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{file}: not UTF-8 text (byte {e.start})") from None
    if text.startswith(LFS_POINTER.decode()):
        raise CheckpointError(f"{file} is a git-lfs pointer, not the file: run 'git lfs pull' in its repository")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{file}: not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}") from None


def read_meta(path: str | Path) -> dict[str, Any]:
    """A checkpoint's config.json: its task, recipe and labels."""
    path = find_checkpoint(path)
    if not (path / CONFIG).exists():
        raise CheckpointError(f"checkpoint {path} has no {CONFIG} (its task and recipe): copy the whole folder")
    meta = read_json_file(path / CONFIG)
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path / CONFIG}: expected a JSON object with the checkpoint's task and config, "
                              f"got {type(meta).__name__}")
    if not isinstance(meta.get("config", {}), dict):
        raise CheckpointError(f"{path / CONFIG}: 'config' must be a JSON object (the recipe)")
    return meta


def require_meta(path: str | Path, meta: dict[str, Any], *keys: str) -> None:
    """Refuse a checkpoint whose config.json lacks a key its task's loader reads, naming it."""
    missing = [key for key in keys if meta.get(key) in (None, "", [], {})]
    if missing:
        raise CheckpointError(f"{Path(path) / CONFIG} has no {missing[0]!r}: it was not written by the "
                              f"{meta.get('task')} task's training, or was edited")


def read_task_meta(path: str | Path, task: str, *keys: str) -> tuple[Path, dict[str, Any]]:
    """(the folder to load, its config.json) for a checkpoint of ``task`` that holds ``keys``; a
    checkpoint of another task, or one lacking a key, is a CheckpointError saying so. Why: every
    task's predictor loads through the same checks."""
    path = find_checkpoint(path)
    meta = read_meta(path)
    if meta.get("task") != task:
        article = "an" if task[:1] in "aeiou" else "a"
        raise CheckpointError(f"checkpoint {path} is a {meta.get('task')!r} model, not {article} {task} model; "
                              f"load it with its own task")
    require_meta(path, meta, *keys)
    return path, meta


def has_weights(path: str | Path, prefix: str) -> bool:
    """Whether the checkpoint holds any weight whose name starts with ``prefix`` (reads names only)."""
    return any(k.startswith(prefix) for k in safetensors_names(find_checkpoint(path) / WEIGHTS))


def load_weights(path: str | Path, model: nn.Module, prefix: str = "", strict: bool = True,
                 skip: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """Load ``model.safetensors`` into ``model``; with ``prefix``, only that sub-tree
    (for example the pretrained backbone into a QA model). ``skip``: model keys to leave as
    they are (a head's output layer of another size). Returns the keys left unloaded."""
    path = find_checkpoint(path)
    state = read_safetensors(path / WEIGHTS)
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
    tensors, metadata = read_safetensors_with_metadata(file)
    try:
        meta = json.loads(metadata["meta"])
    except (KeyError, json.JSONDecodeError):
        raise CheckpointError(f"{file}: its header holds no optimizer settings ('meta'); it cannot be resumed") from None
    optimizer.load_state_dict(_optimizer_state(tensors, meta))


def read_trainer_state(path: str | Path) -> dict[str, Any]:
    path = find_checkpoint(path)
    if not (path / TRAINER).is_file():
        raise CheckpointError(f"checkpoint {path} has no {TRAINER}; it cannot be resumed")
    return read_json_file(path / TRAINER)


STEPS_DIR = "steps"  # beside best/ and last/: the weights of each save_every step, when train.keep_checkpoints asks


def keep_step_checkpoint(out_dir: str | Path, step: int, save: Any, keep: int, prune: bool = True) -> Path:
    """Save this step's weights as ``out_dir/steps/NNNNNNN`` (``save(path)`` writes it) and delete
    all but the newest ``keep`` of them (with ``prune``: rank 0 of several): what
    ``average_checkpoints`` averages."""
    steps = Path(out_dir) / STEPS_DIR
    path = steps / f"{step:07d}"
    save(path)
    if not prune:
        return path
    done = sorted(p for p in steps.iterdir() if p.is_dir() and p.name.isdigit())
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def step_checkpoints(folder: str | Path, last: int | None = None) -> list[Path]:
    """The step checkpoints in a ``steps/`` folder (or a run folder holding one), oldest first;
    only the newest ``last`` when given."""
    folder = Path(folder)
    if (folder / STEPS_DIR).is_dir():
        folder = folder / STEPS_DIR
    found = sorted(p for p in folder.iterdir() if p.is_dir() and p.name.isdigit() and (p / WEIGHTS).is_file()) \
        if folder.is_dir() else []
    if not found:
        raise CheckpointError(f"{folder}: no step checkpoints (folders NNNNNNN with {WEIGHTS}); train with "
                              f"--finetune.keep_checkpoints=N to keep them")
    return found[-last:] if last else found


def average_checkpoints(paths: list[str | Path], out: str | Path) -> Path:
    """One checkpoint whose weights are the mean of ``paths``' (same task, same tensors), with the
    newest one's config and tokenizer: checkpoint averaging, which often gives a translation model
    a little more BLEU than any one of its checkpoints. Integer tensors are taken from the newest."""
    if len(paths) < 2:
        raise CheckpointError(f"averaging needs at least two checkpoints, got {len(paths)}")
    folders = [find_checkpoint(p) for p in paths]
    metas = [read_meta(f) for f in folders]
    tasks = {m.get("task") for m in metas}
    if len(tasks) > 1:
        raise CheckpointError(f"cannot average checkpoints of different tasks: {sorted(map(str, tasks))}")
    tokenizers = {(f / TOKENIZER).read_bytes() if (f / TOKENIZER).is_file() else b"" for f in folders}
    if len(tokenizers) > 1:
        raise CheckpointError("cannot average checkpoints with different tokenizers (tokenizer.json differs)")
    newest = read_safetensors(folders[-1] / WEIGHTS)
    sums = {k: v.double() for k, v in newest.items() if v.is_floating_point()}
    for folder in folders[:-1]:
        state = read_safetensors(folder / WEIGHTS)
        if state.keys() != newest.keys():
            odd = sorted(state.keys() ^ newest.keys())[:3]
            raise CheckpointError(f"{folder}: its tensors differ from {folders[-1]}'s (e.g. {odd}); "
                                  f"were they trained with other model sizes?")
        for k, total in sums.items():
            if state[k].shape != total.shape:
                raise CheckpointError(f"{folder}: {k} is {tuple(state[k].shape)}, {folders[-1]} has {tuple(total.shape)}")
            total += state[k].double()
    state = {k: (sums[k] / len(folders)).to(v.dtype) if k in sums else v for k, v in newest.items()}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_file(state, str(tmp / WEIGHTS))
        _write_json(tmp / CONFIG, {**metas[-1], "averaged_from": [str(f) for f in folders]})
        if (folders[-1] / TOKENIZER).is_file():
            shutil.copyfile(folders[-1] / TOKENIZER, tmp / TOKENIZER)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"could not write checkpoint {out}: {e}") from e
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out
