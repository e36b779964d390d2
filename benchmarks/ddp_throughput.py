"""Training throughput on one machine: 2 DDP processes (torchrun, gloo) against one process.

    python benchmarks/ddp_throughput.py [--steps 80] [--skip 20] [--repeats 2] [--json out.json]

The quickstart's QA fine-tuning (its model, data and global batch of 64), through the command
line as a user runs it, with ``--finetune.log_samples=true``: samples a second are read from
the step times in ``samples.jsonl`` after the first ``--skip`` steps (start-up and the first
batches' allocations left out). The settings, alternated ``--repeats`` times:

* ``one-2``: one process, 2 threads (all of this machine's cores);
* ``one-1``: one process, 1 thread;
* ``ddp-2x1``: torchrun, 2 processes of 1 thread each (half the threads each), DDP.

The ratios: ``ddp-2x1 / one-1`` is the scaling of DDP (ideal 2.0); ``ddp-2x1 / one-2`` is what
DDP gains over torch's own threads on the same cores. A matmul rate measured at the start says
how fast the machine was; the load average before and after says what else was running.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def matmul_gflops(threads: int = 1, n: int = 512, reps: int = 50) -> float:
    import torch
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(5):
        a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e9


def run(setting: str, out: Path, steps: int) -> list[dict]:
    """One run's samples.jsonl (the recipe's ShapesWorld is made under data/ on the first run)."""
    args = ["train", "qa", "--config", "quickstart", "--overwrite", f"--out_dir={out}", f"--finetune.steps={steps}", "--finetune.log_samples=true",
            f"--finetune.eval_every={10 ** 6}", f"--finetune.save_every={10 ** 6}", "--finetune.progress=false",
            "--finetune.eval_batches=1"]
    env = {**os.environ}
    if setting == "ddp-2x1":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc-per-node=2",
               "-m", "omniformer", *args, "--finetune.threads=1"]
        env["OMP_NUM_THREADS"] = "1"
    else:
        threads = int(setting.split("-")[1])
        cmd = [sys.executable, "-m", "omniformer", *args, f"--finetune.threads={threads}"]
        env["OMP_NUM_THREADS"] = str(threads)
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"{setting} failed:\n{done.stderr[-2000:]}")
    return [json.loads(line) for line in (out / "qa" / "samples.jsonl").read_text().splitlines()]


def throughput(entries: list[dict], skip: int) -> float:
    timed = entries[skip:]
    samples = sum(len(e["samples"]) for e in timed[1:])
    return samples / (timed[-1]["time"] - timed[0]["time"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--skip", type=int, default=20)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    settings = ["one-2", "one-1", "ddp-2x1"]
    load_before = os.getloadavg()
    gflops = matmul_gflops(1)
    rates: dict[str, list[float]] = {s: [] for s in settings}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for s in (settings if r % 2 == 0 else settings[::-1]):
                rate = throughput(run(s, Path(tmp) / f"{s}-{r}", args.steps), args.skip)
                rates[s].append(rate)
                print(f"{s}: {rate:.1f} samples/s", flush=True)
    median = {s: statistics.median(v) for s, v in rates.items()}
    result = {
        "samples_per_second": median, "runs": rates,
        "ddp_over_one_thread": median["ddp-2x1"] / median["one-1"],
        "ddp_over_two_threads": median["ddp-2x1"] / median["one-2"],
        "two_threads_over_one": median["one-2"] / median["one-1"],
        "steps": args.steps, "skipped": args.skip, "global_batch": 64,
        "matmul_gflops_1_thread": gflops, "load_before": load_before, "load_after": os.getloadavg(),
        "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
