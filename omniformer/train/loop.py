"""The training loop, one for pretraining and every task.

A task model's ``forward(batch)`` returns a dict with a scalar ``loss`` and any other
scalars to log. ``fit`` runs AdamW with warm-up + cosine decay, gradient accumulation and
clipping, autocast where the device supports it, periodic evaluation with best-checkpoint
keeping, atomic checkpoints every ``save_every`` steps, exact ``resume``, TensorBoard logs
and a progress bar. Samples whose media cannot be used are skipped and counted (up to
``max_bad_fraction`` of the set); a step with a non-finite loss or gradient is skipped or stops
the run (``nonfinite``). Under torchrun the same loop runs on every rank with DDP or FSDP2
(``train.parallel``; ``distributed.py``): each rank takes its slice of the same global batches.
"""
from __future__ import annotations

import contextlib
import json
import math
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..config import TrainConfig
from ..data.batching import BucketBatchSampler, SkippingCollate, StaticShapes, TrainingSamples
from ..data.shards import ShardBatchSampler, shard_of
from . import checkpoint as ckpt
from . import distributed
from .compiled import compile_step
from .memory import keep_freed_memory
from .optim import build_optimizer, build_scheduler
from .threads import ThreadGovernor


def resolve_device(name: str = "auto") -> torch.device:
    """"auto": a CUDA GPU, else Apple's MPS, else the CPU. A named device must exist here: the
    error names it now rather than at the first tensor moved."""
    mps_available = bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if mps_available else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device: {name!r} is not a device name; expected auto, cpu, cuda, cuda:N or mps") from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": mps_available}.get(device.type, True)
    if not available or (device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count()):
        raise ValueError(f"device: {name!r} is not available on this machine; use auto or cpu")
    return device


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes in bf16 in hardware: a GPU with bf16, a CPU with AVX512-BF16
    or AMX. Elsewhere bf16 is emulated and slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
        return any(check is not None and check() for check in checks)
    return False


def autocast_context(device: torch.device, precision: str):
    """The forward's autocast: "auto" is bf16 on GPUs that have it and fp32 on CPU (bit-for-bit
    repeatable runs); "native-bf16" is bf16 wherever ``native_bf16``, fp32 elsewhere (on
    AVX512-BF16 cores it did not shorten the quickstart: benchmarks/README.md)."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    elif precision == "native-bf16":
        precision = "bf16" if native_bf16(device) else "fp32"
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def move_to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@dataclass
class Curriculum:
    """A sampler hook: the first ``steps`` optimizer steps draw only the training samples at
    ``indices``; ``what`` says in words which they are, for errors."""
    indices: Sequence[int]
    steps: int
    what: str = "the curriculum"


SHOWN_BAD = 10  # bad files an error lists
SAMPLE_LOG = "samples.jsonl"  # with train.log_samples: each step's samples and loss


class BadDataError(ValueError):
    """More training samples than ``max_bad_fraction`` allows have media that cannot be used."""


@dataclass
class FitResult:
    steps: int
    best_score: float | None
    best_step: int | None
    last_metrics: dict[str, float] = field(default_factory=dict)
    train_seconds: float = 0.0
    samples_per_second: float = 0.0
    bad_samples: dict[int, str] = field(default_factory=dict)  # index into the training set: why
    skipped_steps: int = 0                                     # steps with a non-finite loss or gradient


def sample_ids(dataset: Dataset, indices: Sequence[int], limit: int = 8) -> str:
    """The manifest ids of some samples (their indices where the dataset has no ids), for a message."""
    samples = getattr(dataset, "samples", None)
    shown = [str(samples[i].get("id", i)) if samples is not None and isinstance(samples[i], dict) else str(i)
             for i in list(indices)[:limit]]
    return ", ".join(shown) + (f" and {len(indices) - limit} more" if len(indices) > limit else "")


def _worker_init(worker_id: int) -> None:
    # The global generators, for anything drawing from them; the dataset's own generators are
    # reseeded for each sample (TrainingSamples).
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def fit(model: nn.Module, train_set: Dataset, cfg: TrainConfig, out_dir: str | Path, *,
        collate_fn: Callable, meta: dict[str, Any], tokenizer=None, lengths: list[int] | None = None,
        evaluate: Callable[[nn.Module], dict[str, float]] | None = None, score_key: str = "score",
        resume: bool = False, name: str = "train", curriculum: Curriculum | None = None) -> FitResult:
    """Train ``model`` for ``cfg.steps`` optimizer steps; checkpoints go to ``out_dir/{last,best}``.

    ``curriculum``: indices into ``train_set`` that its first ``steps`` optimizer steps draw from
    (all of them afterwards); ``--resume`` continues either phase exactly.
    """
    out_dir = Path(out_dir)
    device = resolve_device(cfg.device)
    keep_freed_memory()  # a step's large activations reuse the last step's memory, not fresh pages
    ranks = distributed.init(device.type, cfg.parallel)
    mode = distributed.resolve_parallel(cfg.parallel, ranks.world)
    if device.type == "cuda" and ranks.world > 1:
        device = torch.device("cuda", ranks.local_rank)
    if ranks.main:
        out_dir.mkdir(parents=True, exist_ok=True)
    distributed.barrier()
    governor = ThreadGovernor(cfg.threads)  # the user's count, else the cores other processes leave free
    seed_everything(cfg.seed)
    model.to(device)
    last_dir, best_dir = out_dir / "last", out_dir / "best"
    if resume and mode != "fsdp":  # the whole weights, before DDP copies them to every rank
        ckpt.load_weights(last_dir, model)
    if cfg.activation_checkpointing:
        distributed.checkpoint_activations(model)
    trained = distributed.wrap(model, mode, device)
    optimizer = build_optimizer(model, cfg, device, sharded=mode == "fsdp")
    scheduler = build_scheduler(optimizer, cfg)
    lengths = lengths if lengths is not None else [0] * len(train_set)
    samples = getattr(train_set, "samples", None)
    shards = shard_of(samples) if isinstance(samples, list) and len(samples) == len(train_set) else None

    def batch_sampler(indices: Sequence[int], seed: int):
        """Batches of similar length over ``indices``: from tar shards, shard by shard through a
        shuffle buffer; from a manifest, from anywhere in it."""
        picked = [lengths[i] for i in indices]
        drop_last = len(picked) >= cfg.batch_size
        if shards is not None:
            return ShardBatchSampler(picked, cfg.batch_size, shuffle=True, drop_last=drop_last, seed=seed,
                                     shards=[shards[i] for i in indices])
        return BucketBatchSampler(picked, cfg.batch_size, shuffle=True, drop_last=drop_last, seed=seed)

    sampler = batch_sampler(range(len(train_set)), cfg.seed)
    if len(sampler) == 0:
        raise ValueError(f"{name}: the training set is empty")
    warm_batches = curriculum.steps * cfg.grad_accum if curriculum is not None and curriculum.steps else 0
    if warm_batches and not curriculum.indices:
        raise ValueError(f"{name}: the curriculum's {curriculum.steps} steps have no training sample to draw from "
                         f"({curriculum.what})")
    warm = curriculum.indices if warm_batches else []
    warm_sampler = batch_sampler(warm, cfg.seed + 1) if warm_batches else None

    step, best_score, best_step = 0, None, None
    bad: dict[int, str] = {}  # training samples whose media could not be used, and why
    skipped_steps, skipped_in_a_row = 0, 0
    allowed_bad = int(cfg.max_bad_fraction * len(train_set))
    if resume:
        state = ckpt.read_trainer_state(last_dir)
        sharded = ckpt.is_sharded(last_dir)
        if sharded != (mode == "fsdp"):
            raise ckpt.CheckpointError(
                f"{last_dir} was written by a run with train.parallel={'fsdp' if sharded else 'none or ddp'}; "
                f"resume it with the same setting (any number of ranks)")
        if sharded:
            ckpt.load_sharded_checkpoint(last_dir, model, optimizer)
        else:
            ckpt.load_optimizer(last_dir, optimizer)
        step, best_score, best_step = state["step"], state.get("best_score"), state.get("best_step")
        bad = {int(i): why for i, why in state.get("bad_samples", [])}
        skipped_steps = state.get("skipped_steps", 0)
        # The optimizer state restored each group's lr for this step; the schedule continues from it.
        scheduler.last_epoch = step
        ckpt.set_rng_state(state["rng"])
        if step >= cfg.steps:
            return FitResult(step, best_score, best_step)

    writer = None
    if ranks.main:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(out_dir / "tb"), purge_step=step if resume else None)
    compiled = compile_step(trained, cfg, device)
    if cfg.static_shapes:  # lengths padded to a few edges: compiled graphs are reused
        collate_fn = StaticShapes.for_model(collate_fn, model)
    amp = autocast_context(device, cfg.precision)
    sample_log = (out_dir / SAMPLE_LOG).open("a") if cfg.log_samples and ranks.main else None

    def trainer_state() -> dict[str, Any]:
        return {"step": step, "best_score": best_score, "best_step": best_step, "name": name,
                "bad_samples": sorted(bad.items()), "skipped_steps": skipped_steps,
                "ranks": ranks.world, "parallel": mode}

    def count_bad(found: list[tuple[int, str]]) -> None:
        """Log each newly found bad sample once; stop past ``max_bad_fraction``, listing them."""
        for index, why in found:
            if index in bad:
                continue
            bad[index] = why
            say(f"[{name}] skipping sample {sample_ids(train_set, [index])}: {why}")
        if len(bad) > allowed_bad:
            listed = "\n  ".join(list(bad.values())[:SHOWN_BAD])
            more = f"\n  and {len(bad) - SHOWN_BAD} more" if len(bad) > SHOWN_BAD else ""
            raise BadDataError(
                f"{name}: {len(bad)} of {len(train_set)} training samples have media that cannot be used, more "
                f"than train.max_bad_fraction={cfg.max_bad_fraction} allows ({allowed_bad}); run "
                f"'omniformer data check' on the manifest and fix or drop them (last checkpoint: {last_dir}):"
                f"\n  {listed}{more}")

    def nonfinite_step(what: str, indices: list[int]) -> None:
        """A step with a non-finite loss or gradient: stop (``nonfinite: stop``, or too many in a row)
        or skip it, saying which step and samples."""
        nonlocal skipped_steps, skipped_in_a_row
        where = f"{what} at step {step + 1} (samples {sample_ids(train_set, indices)})"
        kept = f"the last checkpoint, {last_dir}, is kept" if (last_dir / ckpt.WEIGHTS).exists() else "no checkpoint yet"
        if cfg.nonfinite == "stop":
            raise FloatingPointError(f"{name}: {where}; stopping as train.nonfinite=stop asks ({kept}); lower "
                                     f"train.lr or check the data, then --resume")
        skipped_steps, skipped_in_a_row = skipped_steps + 1, skipped_in_a_row + 1
        say(f"[{name}] skipped step: {where}")
        if skipped_in_a_row >= cfg.max_skipped_steps:
            raise FloatingPointError(f"{name}: {skipped_in_a_row} steps in a row were not finite (last: {where}); "
                                     f"the run has diverged ({kept}); lower train.lr, then --resume")

    def run_evaluation() -> dict[str, Any]:
        """The task's evaluation of the model on every rank: under DDP each scores a share of the
        samples where the task's scoring is split (``distributed.in_shares``), under FSDP all
        run every forward (each gathers the shards)."""
        with distributed.whole_for_eval(trained, mode) as whole, distributed.evaluation_in_shares(mode == "ddp"):
            return evaluate(whole)

    def say(line: str) -> None:
        if ranks.main:
            bar.write(line)

    def save(path: Path, with_optimizer: bool) -> None:
        if mode == "fsdp":
            if with_optimizer:
                ckpt.save_sharded_checkpoint(path, model, optimizer, meta, tokenizer, trainer_state(), ranks.main)
            else:
                ckpt.save_sharded_weights(path, model, meta, tokenizer, ranks.main)
            return
        if ranks.main:
            ckpt.save_checkpoint(path, model, meta, tokenizer, optimizer if with_optimizer else None,
                                 trainer_state() if with_optimizer else None)
        distributed.barrier()

    def epoch_orders(batch_sampler: BucketBatchSampler, position: int, indices=None):
        """(epoch, batches) from micro-batch ``position`` on; the order depends only on seed and epoch."""
        epoch, skip = divmod(position, len(batch_sampler))
        while True:
            batch_sampler.epoch = epoch
            order = list(batch_sampler)[skip:]
            yield epoch, order if indices is None else [[indices[i] for i in b] for b in order]
            epoch, skip = epoch + 1, 0

    def batches_from(position: int):
        phases = []  # (epoch orders, how many batches, generator seed offset)
        if position < warm_batches:
            phases.append((epoch_orders(warm_sampler, position, warm), warm_batches - position, 50_021))
        phases.append((epoch_orders(sampler, max(0, position - warm_batches)), None, 0))
        for orders, budget, offset in phases:
            for epoch, order in orders:
                if budget is not None:
                    order = order[:budget]
                    budget -= len(order)
                gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch + offset)
                sizes = [len(b) for b in order]  # of the global micro-batches
                order = [ranks.slice(b) for b in order] if ranks.world > 1 else order
                loader = DataLoader(TrainingSamples(train_set, cfg.seed * 100_003 + offset, epoch), batch_sampler=order,
                                    collate_fn=SkippingCollate(collate_fn), num_workers=cfg.workers,
                                    generator=gen, worker_init_fn=_worker_init, pin_memory=device.type == "cuda")
                for batch, size in zip(loader, sizes):
                    batch["global_size"] = size
                    yield batch
                if budget == 0:
                    break

    batches = batches_from(step * cfg.grad_accum)
    sums: dict[str, float] = {}
    counted, samples_seen, t_start, t_window = 0, 0, time.perf_counter(), time.perf_counter()
    samples_window = 0
    bar = tqdm(total=cfg.steps, initial=step, desc=name, disable=not (cfg.progress and ranks.main),
               dynamic_ncols=True, unit="step", leave=True)
    metrics: dict[str, float] = {}
    spare: dict[str, Any] | None = None  # this rank's last good micro-batch (see below)
    try:
        while step < cfg.steps:
            governor.step()  # looks at the load again every second; nothing if the user chose a count
            trained.train()
            if ranks.world > 1:
                torch.manual_seed(distributed.step_seed(cfg.seed, step, ranks.rank))
            step_sums: dict[str, float] = {}
            step_indices: list[int] = []
            finite, step_counted = True, 0
            step_bad: list[tuple[int, str]] = []  # several ranks: pooled at the step's end
            for _ in range(cfg.grad_accum):
                batch = next(batches)
                weight = 1.0
                if ranks.world == 1:
                    if batch["bad"]:
                        count_bad(batch["bad"])
                    if len(batch["index"]) == 0 or not finite:
                        continue  # nothing usable in this micro-batch, or the step is lost already
                else:
                    # Each rank's loss is weighted by its share of the global micro-batch, so that
                    # the gradient DDP/FSDP average is the whole batch's. Every rank takes part in
                    # each forward and backward (they communicate in them): one whose slice has
                    # nothing usable runs its last good micro-batch at weight 0.
                    step_bad.extend(batch["bad"])
                    weight = len(batch["index"]) * ranks.world / batch["global_size"]
                    if len(batch["index"]) == 0 and spare is None:
                        raise BadDataError(f"{name}: rank {ranks.rank}'s first micro-batch has no usable sample "
                                           f"({batch['bad'][0][1] if batch['bad'] else 'an empty slice'}); run "
                                           f"'omniformer data check' on the manifest")
                if len(batch["index"]) == 0:
                    batch = spare
                else:
                    batch = spare = move_to(batch, device)
                    step_indices.extend(batch["index"].tolist())
                with amp:
                    out = compiled(batch)
                loss = out["loss"]
                if ranks.world == 1:
                    if not torch.isfinite(loss):
                        finite = False
                        nonfinite_step(f"loss {loss.item()}", step_indices)
                        continue
                    (loss / cfg.grad_accum).backward()
                else:  # a non-finite loss on any rank shows in the reduced gradient's norm, on every rank
                    (loss * (weight / cfg.grad_accum)).backward()
                for k, v in out.items():
                    if isinstance(v, torch.Tensor) and v.ndim == 0:
                        step_sums[k] = step_sums.get(k, 0.0) + float(v.detach()) * weight
                step_counted += 1
            step_seen = len(step_indices)
            if ranks.world > 1:  # the step's means, bad samples and sample count over every rank
                keys = sorted(step_sums)
                totals = distributed.all_sum([step_sums[k] for k in keys] + [step_counted, len(step_bad), step_seen])
                step_sums = {k: v / ranks.world for k, v in zip(keys, totals)}
                step_counted, step_seen = round(totals[-3] / ranks.world), int(totals[-1])
                if totals[-2]:
                    count_bad([(int(i), why) for part in distributed.gather_json(step_bad) for i, why in part])
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            if finite and (grads or ranks.world > 1):
                grad_norm = (nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or math.inf)
                             if cfg.grad_clip or mode == "fsdp"
                             else torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
                grad_norm = distributed.full_tensor(grad_norm)
                if torch.isfinite(grad_norm):
                    step_sums["grad_norm"] = float(grad_norm) * step_counted
                else:
                    finite = False
                    nonfinite_step(f"gradient norm {float(grad_norm)}", step_indices)
            if finite:
                optimizer.step()  # a step whose micro-batches were all bad has no gradient: no change
                skipped_in_a_row = 0
                for k, v in step_sums.items():
                    sums[k] = sums.get(k, 0.0) + v
                counted += step_counted
                samples_seen += step_seen
                samples_window += step_seen
            with warnings.catch_warnings():  # a skipped step has no optimizer.step(); the schedule still moves on
                warnings.filterwarnings("ignore", "Detected call of `lr_scheduler", UserWarning)
                scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            bar.update(1)
            if cfg.log_samples:
                everyone = distributed.gather_json(step_indices) if ranks.world > 1 else [step_indices]
                if sample_log is not None:
                    means = {k: step_sums.get(k, 0.0) / max(step_counted, 1) for k in ("loss", "grad_norm")}
                    sample_log.write(json.dumps({"step": step, **means, "time": time.time(),
                                                 "samples": sorted(i for part in everyone for i in part)}) + "\n")
                    sample_log.flush()

            if writer is not None and (step % cfg.log_every == 0 or step == cfg.steps):
                now = time.perf_counter()
                rate = samples_window / max(now - t_window, 1e-9)
                means = {k: v / max(counted, 1) for k, v in sums.items()}
                for k, v in means.items():
                    writer.add_scalar(f"{name}/{k}", v, step)
                writer.add_scalar(f"{name}/bad_samples", len(bad), step)
                writer.add_scalar(f"{name}/skipped_steps", skipped_steps, step)
                writer.add_scalar(f"{name}/lr", scheduler.get_last_lr()[0], step)
                writer.add_scalar(f"{name}/samples_per_second", rate, step)
                bar.set_postfix(loss=f"{means.get('loss', float('nan')):.3f}", samples_s=f"{rate:.0f}")
                sums, counted, samples_window, t_window = {}, 0, 0, now

            if evaluate is not None and (step % cfg.eval_every == 0 or step == cfg.steps):
                metrics = run_evaluation()
                score = metrics.get(score_key)
                if ranks.world > 1:  # rank 0's score for all, whatever the float rounding elsewhere
                    scored = ranks.main and score is not None
                    has, value = distributed.all_sum([float(scored), float(score) if scored else 0.0])
                    score = value if has else None
                if score is not None and (best_score is None or score > best_score):
                    best_score, best_step = float(score), step
                    save(best_dir, with_optimizer=False)
                if ranks.main:
                    for k, v in metrics.items():
                        if isinstance(v, (int, float)) and math.isfinite(v):
                            writer.add_scalar(f"{name}_eval/{k}", v, step)
                    say(f"[{name}] step {step}: " + ", ".join(
                        f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
            if step % cfg.save_every == 0 or step == cfg.steps:
                save(last_dir, with_optimizer=True)
                if cfg.keep_checkpoints:
                    ckpt.keep_step_checkpoint(out_dir, step, lambda p: save(p, with_optimizer=False),
                                              cfg.keep_checkpoints, prune=ranks.main)
    except KeyboardInterrupt:
        say(f"[{name}] interrupted at step {step}: saving {last_dir} so that --resume continues here")
        save(last_dir, with_optimizer=True)
        raise
    finally:
        bar.close()
        if writer is not None:
            writer.close()
        if sample_log is not None:
            sample_log.close()
    if best_score is None:  # no evaluation: the last weights are the best we know
        save(best_dir, with_optimizer=False)
    elapsed = time.perf_counter() - t_start
    return FitResult(step, best_score, best_step, metrics, elapsed, samples_seen / max(elapsed, 1e-9), dict(bad),
                     skipped_steps)
