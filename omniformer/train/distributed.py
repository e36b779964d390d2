"""Training past one process, on PyTorch's own engine: torchrun's ranks, DDP or FSDP2.

Every rank reads the same global batches (one sampler, one seed) and takes its slice of each,
so the global batch, the learning-rate schedule and the samples a step sees do not depend on
the number of ranks; a run resumed on another number of ranks continues the same sequence.
Gradients are weighted by each rank's share of the global batch's samples, so the averaged
gradient is that of one process reading the whole batch (docs/scale-out.md).
"""
from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.distributed as dist
from torch import nn

# A rank that waits for another longer than this (a slow evaluation on rank 0, a stalled
# filesystem) ends the run with an error that names the collective, rather than hanging forever.
TIMEOUT = timedelta(minutes=60)


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training processes (rank 0 of 1 when alone)."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one that logs, shows progress and writes the checkpoint's files."""
        return self.rank == 0

    def slice(self, batch: Sequence[int]) -> list[int]:
        """This rank's share of a global batch: every ``world``-th sample from ``rank`` on (ranks
        get batches of similar length when the batch was bucketed by length)."""
        return list(batch[self.rank::self.world])


def launched_world() -> int:
    """How many processes torchrun started (1 when run directly)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        raise ValueError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r}: expected a whole number "
                         f"(set by torchrun)") from None


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def current() -> Ranks:
    if not active():
        return Ranks()
    return Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))


def init(device_type: str = "cpu", parallel: str = "auto") -> Ranks:
    """Join torchrun's process group once (gloo on CPU, NCCL on CUDA); alone, a 1-rank group only
    for ``parallel="fsdp"`` (FSDP2 shards over a process group, even of one)."""
    world = launched_world()
    if parallel == "none" and world > 1:
        raise ValueError(f"train.parallel=none, but torchrun started {world} processes; use train.parallel=auto, "
                         f"ddp or fsdp, or run one process")
    if active():
        return current()
    if world == 1 and parallel != "fsdp":
        return Ranks()
    if not dist.is_available():
        raise ValueError("this build of torch has no torch.distributed; train.parallel needs it")
    backend = "nccl" if device_type == "cuda" else "gloo"
    if world == 1:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=TIMEOUT)
    else:
        for key in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
            if key not in os.environ:
                raise ValueError(f"WORLD_SIZE={world} but {key} is not set: start the processes with torchrun "
                                 f"(torchrun --nproc-per-node N -m omniformer train ...)")
        if device_type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend, timeout=TIMEOUT)
    return current()


def close() -> None:
    """Leave the process group (at the end of a command), so the process exits cleanly."""
    if active():
        dist.destroy_process_group()


def barrier() -> None:
    if active() and dist.get_world_size() > 1:
        dist.barrier()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (making a dataset, say); the others wait, then run it and find
    its result in place instead of writing the same files at the same time."""
    ranks = current()
    if not ranks.main:
        barrier()
    yield
    if ranks.main:
        barrier()


def all_sum(values: Sequence[float], device: torch.device | str = "cpu") -> list[float]:
    """Each value summed over the ranks (in float64); the values themselves when alone."""
    if not active() or dist.get_world_size() == 1:
        return [float(v) for v in values]
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def gather_json(value: Any) -> list[Any]:
    """``value`` from every rank, in rank order, sent as JSON bytes (nothing is pickled, unlike
    ``all_gather_object``)."""
    if not active() or dist.get_world_size() == 1:
        return [value]
    data = torch.frombuffer(bytearray(json.dumps(value).encode()), dtype=torch.uint8)
    sizes = [torch.zeros(1, dtype=torch.long) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([data.numel()]))
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros(longest, dtype=torch.uint8)
    padded[: data.numel()] = data
    parts = [torch.zeros(longest, dtype=torch.uint8) for _ in sizes]
    dist.all_gather(parts, padded)
    return [json.loads(bytes(p[: int(n.item())].tolist()).decode()) for p, n in zip(parts, sizes)]


_sharing = False  # set while a DDP run evaluates: each rank scores a share of the samples


@contextlib.contextmanager
def evaluation_in_shares(enabled: bool) -> Iterator[None]:
    """While on, ``in_shares`` splits evaluation work across the ranks (DDP: each rank holds the
    whole model; under FSDP every rank must run every forward, so it stays off)."""
    global _sharing
    before, _sharing = _sharing, enabled and active() and dist.get_world_size() > 1
    try:
        yield
    finally:
        _sharing = before


def in_shares(items: Sequence[Any], compute: Callable[[Sequence[Any]], Any]) -> Any:
    """``compute(items)``, computed by each rank on every ``world``-th item and gathered back in
    the items' order, so that evaluation takes 1/N of the time on N ranks. ``compute`` returns one
    row per item: a list of JSON values, or a tensor whose first axis is the items. Outside an
    evaluation that ``evaluation_in_shares`` turned on, simply ``compute(items)``."""
    if not _sharing:
        return compute(items)
    rank, world = dist.get_rank(), dist.get_world_size()
    mine = compute(items[rank::world])
    if isinstance(mine, torch.Tensor):
        parts = _gather_rows(mine.detach().cpu())
        out = torch.empty((len(items), *mine.shape[1:]), dtype=mine.dtype)
        for r, part in enumerate(parts):
            out[r::world] = part
        return out
    parts = gather_json(list(mine))
    return [parts[i % world][i // world] for i in range(len(items))]


def _gather_rows(rows: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's ``rows`` (the same trailing shape and dtype, any number of rows)."""
    counts = [torch.zeros(1, dtype=torch.long) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, torch.tensor([rows.shape[0]]))
    longest = int(max(c.item() for c in counts))
    padded = torch.zeros((longest, *rows.shape[1:]), dtype=rows.dtype)
    padded[: rows.shape[0]] = rows
    parts = [torch.zeros_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    return [p[: int(c.item())] for p, c in zip(parts, counts)]


def resolve_parallel(parallel: str, world: int) -> str:
    """The mode a run uses: "none" alone (unless FSDP is asked for), else DDP unless FSDP is asked."""
    if parallel == "fsdp":
        return "fsdp"
    return "none" if world == 1 else "ddp"


BLOCKS = ("EncoderBlock", "DecoderBlock")  # the units sharded, and recomputed, one by one


def blocks(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if type(m).__name__ in BLOCKS]


def checkpoint_activations(model: nn.Module) -> int:
    """Recompute each Transformer block's activations in the backward pass instead of keeping
    them (less memory, about a third more compute); returns how many blocks."""
    from torch.distributed._composable import checkpoint
    found = blocks(model)
    for block in found:
        checkpoint(block)
    return len(found)


def wrap(model: nn.Module, mode: str, device: torch.device) -> nn.Module:
    """The module training calls: the model itself, DDP around it, or the model sharded in place
    by FSDP2 (each block its own unit, the rest the root's)."""
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel
        # A batch without images, say, leaves the image embedder unused: DDP must not wait for it.
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                       find_unused_parameters=True)
    if mode == "fsdp":
        from torch.distributed.fsdp import fully_shard
        for block in blocks(model):
            fully_shard(block)
        fully_shard(model)
        return model
    return model


def unwrapped(module: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (FSDP2 shards the model in place: it is its own)."""
    return getattr(module, "module", module)


@contextlib.contextmanager
def whole_for_eval(model: nn.Module, mode: str) -> Iterator[nn.Module]:
    """The model as evaluation calls it: under FSDP2 the root's own parameters are gathered for
    the duration (its blocks gather theirs in their forward), so any method of the model works;
    every rank must run the same evaluation."""
    if mode != "fsdp":
        yield unwrapped(model)
        return
    model.unshard()
    try:
        yield model
    finally:
        model.reshard()


def full_tensor(t: Any) -> Any:
    """A DTensor (FSDP2's sharded value) as the whole tensor on every rank; anything else as is."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def step_seed(seed: int, step: int, rank: int) -> int:
    """Dropout's seed for one rank's step: a run on several ranks draws from (seed, step, rank),
    so that it resumes exactly wherever it was cut."""
    return (seed * 1_000_003 + step * 7_919 + rank * 104_729) % 2 ** 63
