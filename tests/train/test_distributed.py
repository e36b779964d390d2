"""Training on several processes (torchrun, gloo on CPU) is training on one: DDP and FSDP2 runs
take the same samples and reach the same losses as one process reading the whole global batch,
and a run cut short (stopped, or killed with SIGKILL mid-epoch) resumes on the same or another
number of processes as if it had never stopped."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from omniformer.train.checkpoint import read_safetensors

STEPS = 12
TOL = 1e-5


def write_images(root: Path, per_class: int = 32, seed: int = 0) -> Path:
    """Three classes of 16x16 grey images (a bright quadrant: top-left, top-right or bottom) and a manifest."""
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True)
    lines = []
    for label, (ys, xs) in enumerate(((slice(0, 8), slice(0, 8)), (slice(0, 8), slice(8, 16)), (slice(8, 16), slice(0, 16)))):
        for i in range(per_class):
            pixels = rng.integers(0, 90, (16, 16), dtype=np.uint8)
            pixels[ys, xs] += 120
            name = f"img/{label}_{i}.png"
            Image.fromarray(pixels, "L").save(root / name)
            lines.append({"id": f"{label}-{i}", "image": name, "label": f"c{label}",
                          "split": "val" if i < 4 else "train"})
    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return manifest


def recipe(manifest: Path, out: Path, **finetune) -> list[str]:
    """A tiny image classifier whose learning rate is constant (no warm-up, no decay), so that a run
    of N steps resumed to 2N follows the schedule of a straight 2N-step run."""
    settings = {"steps": STEPS, "batch_size": 8, "lr": 3e-3, "warmup_steps": 0, "min_lr_ratio": 1.0,
                "eval_every": 6, "save_every": 3, "workers": 0, "progress": "false", "threads": 1,
                "log_samples": "true", **finetune}
    return [f"--out_dir={out}", f"--data.manifest={manifest}", "--data.augment=false", "--task.head_dropout=0",
            "--model.width=32", "--model.heads=2", "--model.depth=2", "--model.tower_depth=0", "--model.dropout=0.0",
            "--model.modalities=[image]", "--model.image.size=16", "--model.image.channels=1",
            "--model.image.patch_size=4", "--model.image.mean=[0.5]", "--model.image.std=[0.5]",
            *(f"--finetune.{k}={v}" for k, v in settings.items())]


def command(ranks: int, args: list[str]) -> list[str]:
    if ranks == 1:
        return [sys.executable, "-m", "omniformer", "train", "classify", *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", f"--nproc-per-node={ranks}",
            "-m", "omniformer", "train", "classify", *args]


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def train(ranks: int, args: list[str], *extra: str) -> subprocess.CompletedProcess:
    run = subprocess.run(command(ranks, [*args, *extra]), capture_output=True, text=True, timeout=300, env=ENV)
    assert run.returncode == 0, f"{ranks}-process run failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    return run


def steps_of(out: Path) -> dict[int, dict]:
    """Each step's samples and loss from samples.jsonl (the last line of a step repeated after a resume)."""
    log = out / "classify" / "samples.jsonl"
    return {entry["step"]: entry for entry in map(json.loads, log.read_text().splitlines())}


def assert_same_run(run: dict[int, dict], reference: dict[int, dict], what: str) -> None:
    assert sorted(run) == sorted(reference) == list(range(1, STEPS + 1)), f"{what}: steps {sorted(run)}"
    for step in reference:
        assert run[step]["samples"] == reference[step]["samples"], f"{what}: step {step} saw other samples"
        assert abs(run[step]["loss"] - reference[step]["loss"]) <= TOL, \
            f"{what}: step {step} loss {run[step]['loss']} vs {reference[step]['loss']}"
        # AdamW's update hardly depends on the gradient's scale: its norm is what shows gradients
        # summed over ranks instead of averaged
        assert run[step]["grad_norm"] == pytest.approx(reference[step]["grad_norm"], rel=1e-4), \
            f"{what}: step {step} gradient norm {run[step]['grad_norm']} vs {reference[step]['grad_norm']}"


def assert_same_weights(out: Path, reference: Path, what: str) -> None:
    mine, theirs = (read_safetensors(p / "classify" / "last" / "model.safetensors") for p in (out, reference))
    assert mine.keys() == theirs.keys(), what
    # AdamW divides each gradient by its running magnitude, so a weight whose gradient is about 0
    # moves by up to lr a step on float rounding alone: the bound is a fraction of lr x steps
    worst = max(float((mine[k].float() - theirs[k].float()).abs().max()) for k in theirs)
    assert worst <= 3e-3, f"{what}: weights differ by up to {worst}"


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (from /proc)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for its parent."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_images(tmp_path_factory.mktemp("distributed"))


@pytest.fixture(scope="module")
def straight(data) -> Path:
    """The reference: one process, no process group, all 12 steps."""
    out = data.parent / "one"
    train(1, recipe(data, out))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("parallel,accumulate", [("ddp", 1), ("fsdp", 1), ("ddp", 2)])
def test_two_processes_equal_one(data, straight, parallel, accumulate):
    """The same global batch on 2 processes; with gradient accumulation, micro-batches of 4 (2 a rank)."""
    out = data.parent / f"two-{parallel}-{accumulate}"
    accumulation = {"grad_accum": accumulate, "batch_size": 8 // accumulate}
    if accumulate > 1:
        straight = data.parent / f"one-{accumulate}"
        train(1, recipe(data, straight, **accumulation))
    train(2, recipe(data, out, parallel=parallel, **accumulation))
    reference = steps_of(straight)
    assert_same_run(steps_of(out), reference, f"2-process {parallel}")
    assert_same_weights(out, straight, f"2-process {parallel}")
    # Evaluation (DDP: each rank scored half the validation set) chose the same best step.
    states = [json.loads((p / "classify" / "last" / "trainer.json").read_text()) for p in (out, straight)]
    assert states[0]["best_step"] == states[1]["best_step"]
    assert states[0]["best_score"] == pytest.approx(states[1]["best_score"], abs=1e-9)
    for name in ("last", "best"):  # inference reads the whole weights, whatever wrote them
        assert (out / "classify" / name / "model.safetensors").is_file()
    assert (out / "classify" / "last" / "dcp").is_dir() == (parallel == "fsdp")
    # Rank 0 alone writes the logs: one TensorBoard file, one line a step.
    assert len(list((out / "classify" / "tb").iterdir())) == 1
    assert len((out / "classify" / "samples.jsonl").read_text().splitlines()) == STEPS


@pytest.mark.slow
@pytest.mark.parametrize("parallel,before,after", [("ddp", 1, 2), ("fsdp", 2, 1), ("fsdp", 1, 2)])
def test_resume_on_another_number_of_processes(data, straight, parallel, before, after):
    """Half the steps on ``before`` processes, the rest resumed on ``after``: the straight run's samples,
    losses and weights (FSDP's sharded state is resharded by Distributed Checkpoint)."""
    out = data.parent / f"resume-{parallel}-{before}-{after}"
    train(before, recipe(data, out, parallel=parallel, steps=STEPS // 2))
    train(after, recipe(data, out, parallel=parallel), "--resume")
    assert_same_run(steps_of(out), steps_of(straight), f"{parallel} {before}->{after}")
    assert_same_weights(out, straight, f"{parallel} {before}->{after}")


@pytest.mark.slow
def test_killed_mid_epoch_resumes_on_two_and_on_one(data, straight):
    """SIGKILL to a 2-process DDP run between checkpoints, mid-epoch; resumed on 2 processes and,
    from a copy, on 1: each ends as the uninterrupted run, step by step."""
    out = data.parent / "killed"
    args = recipe(data, out, parallel="ddp", steps=400, save_every=3, eval_every=1000)
    log = out / "classify" / "samples.jsonl"
    proc = subprocess.Popen(command(2, args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV,
                            start_new_session=True)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if log.exists() and len(log.read_text().splitlines()) >= 7:
                break
            time.sleep(0.005)
    finally:
        victims = [proc.pid, *descendants(proc.pid)]  # torchrun puts its workers in sessions of their own
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()
    assert len(victims) == 3, f"torchrun and its 2 workers, found {victims}"
    while any(alive(pid) for pid in victims):
        time.sleep(0.01)
    done = len(log.read_text().splitlines())
    assert 7 <= done < 400, f"the kill came at step {done}"
    state = json.loads((out / "classify" / "last" / "trainer.json").read_text())
    assert state["step"] % 3 == 0 and state["step"] < done and state["ranks"] == 2
    # 96 training samples in batches of 8 make 10 steps an epoch (8 val samples are held out)
    assert state["step"] % 10 != 0

    reference = data.parent / "killed-straight"
    train(1, recipe(data, reference, steps=state["step"] + 6, save_every=3, eval_every=1000))
    copy = data.parent / "killed-copy"
    shutil.copytree(out, copy)
    for ranks, folder in ((2, out), (1, copy)):
        train(ranks, recipe(data, folder, steps=state["step"] + 6, save_every=3, eval_every=1000, parallel="ddp"),
              "--resume")
        resumed, expected = steps_of(folder), steps_of(reference)
        for step in range(1, state["step"] + 7):
            assert resumed[step]["samples"] == expected[step]["samples"], f"resumed on {ranks}: step {step}"
            assert abs(resumed[step]["loss"] - expected[step]["loss"]) <= TOL, f"resumed on {ranks}: step {step}"
        assert_same_weights(folder, reference, f"killed, resumed on {ranks}")


def test_parallel_none_refuses_several_processes(data, tmp_path):
    env = {**ENV, "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    run = subprocess.run(command(1, recipe(data, tmp_path / "x", parallel="none", steps=1)), capture_output=True,
                         text=True, timeout=120, env=env)
    assert run.returncode == 2
    assert "train.parallel=none" in run.stderr and "Traceback" not in run.stderr


def test_resuming_with_another_parallel_setting_is_refused(data, straight, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(straight, out)
    run = subprocess.run(command(1, recipe(data, out, parallel="fsdp") + ["--resume"]), capture_output=True,
                         text=True, timeout=120, env=ENV)
    assert run.returncode == 2, run.stderr
    assert "train.parallel" in run.stderr and "Traceback" not in run.stderr


@pytest.mark.slow
def test_shards_are_read_the_same_by_one_process_and_by_two(data, straight):
    """Training from tar shards (read shard by shard through the shuffle buffer): two DDP processes
    see the samples and losses of one, and the order is the shard reader's, not the manifest's."""
    from omniformer.data.shards import write_shards
    shards = write_shards(data, data.parent / "shards", samples_per_shard=16)
    one, two = data.parent / "shards-one", data.parent / "shards-two"
    train(1, recipe(shards, one))
    train(2, recipe(shards, two, parallel="ddp"))
    assert_same_run(steps_of(two), steps_of(one), "2-process DDP from shards")
    from_manifest = steps_of(straight)
    assert any(steps_of(one)[k]["samples"] != from_manifest[k]["samples"] for k in from_manifest)


def test_activation_checkpointing_recomputes_the_same_gradients(tmp_path):
    """Blocks whose activations are recomputed in the backward pass train to the same weights."""
    import torch
    from torch import nn

    from omniformer.config import TrainConfig
    from omniformer.model.transformer import Encoder
    from omniformer.train.distributed import checkpoint_activations
    from omniformer.train.loop import fit

    class Tokens(torch.utils.data.Dataset):
        def __len__(self):
            return 32

        def __getitem__(self, i):
            g = torch.Generator().manual_seed(i)
            return {"index": i, "x": torch.randn(5, 16, generator=g), "y": i % 2}

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.encoder, self.head = Encoder(2, 16, 2, 32), nn.Linear(16, 2)

        def forward(self, batch):
            return {"loss": nn.functional.cross_entropy(self.head(self.encoder(batch["x"]).mean(1)), batch["y"])}

    def collate(items):
        return {"index": torch.tensor([it["index"] for it in items]), "x": torch.stack([it["x"] for it in items]),
                "y": torch.tensor([it["y"] for it in items])}

    weights = []
    for recompute in (False, True):
        model = Model()
        if recompute:
            assert checkpoint_activations(Model()) == 2
        fit(model, Tokens(), TrainConfig(steps=4, batch_size=8, workers=0, progress=False, save_every=4, lr=1e-2,
                                          activation_checkpointing=recompute),
            tmp_path / str(recompute), collate_fn=collate, meta={})
        weights.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    assert weights[0].keys() == weights[1].keys()
    for k in weights[0]:
        assert torch.allclose(weights[0][k], weights[1][k], atol=1e-6), k


SHARES = """
import torch, torch.distributed as dist
from omniformer.train import distributed
dist.init_process_group("gloo")
items = list(range(7))
with distributed.evaluation_in_shares(True):
    rows = distributed.in_shares(items, lambda part: torch.tensor([[i, 10 * i] for i in part], dtype=torch.float32))
    words = distributed.in_shares(items, lambda part: [f"w{i}" for i in part])
    seen = distributed.in_shares(items, lambda part: [dist.get_rank()] * len(part))
alone = distributed.in_shares(items, lambda part: [len(part)] * len(part))
assert rows[:, 0].tolist() == items and rows[:, 1].tolist() == [10 * i for i in items], rows
assert words == [f"w{i}" for i in items], words
assert seen == [i % 2 for i in items], seen
assert alone == [7] * 7, alone
open(__file__ + f".ok{dist.get_rank()}", "w").close()
dist.destroy_process_group()
"""


def test_evaluation_in_shares_gathers_every_rank_s_rows_in_order(tmp_path):
    """Each of 2 ranks computes every other item (7 items: 4 and 3); both get all rows back in
    order, tensors and JSON alike; outside ``evaluation_in_shares`` nothing is split."""
    script = tmp_path / "shares.py"
    script.write_text(SHARES)
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
                          "--nproc-per-node=2", str(script)], capture_output=True, text=True, timeout=120, env=ENV)
    assert run.returncode == 0, run.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.glob("shares.py.ok*")) == ["shares.py.ok0", "shares.py.ok1"]
