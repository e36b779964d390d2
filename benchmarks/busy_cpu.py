"""Training and evaluation speed beside a busy core, per thread setting (issue 25).

    python benchmarks/busy_cpu.py [--quick] [--settings a,b] [--nice 0,10] [--reps 1] [--json out.json]

Each cell is a fresh subprocess (libgomp reads the OpenMP environment once, when torch loads it)
that builds the quickstart-shaped QA model (``configs/quickstart.yaml``: width 96, depth 3 +
towers 1, guided head with relations, word spotter; random weights, 30 answers) and times:

* train: fine-tuning steps at batch 64 (forward + backward + fused AdamW step + zero_grad),
  alternating a batch of written questions (6..12 tokens) and one of spoken questions (1.5..2.5 s
  of log-mel frames, with transcripts for the word spotter), each with a 48x48 image;
* eval: forwards of the same batches under ``torch.inference_mode()``;
* eval1: forwards of one sample of each (a single ``ask`` / ``predict``).

Each phase: warm-up calls, then calls until ``--steps`` (eval 2x, eval1 10x) are done or
``--seconds`` (eval 1/2, eval1 1/4) have passed; the figure is the median call. Conditions: the
idle machine; beside a background load this script starts, once per niceness in ``--nice``
(started 0.3 s before the cell's subprocess, killed after it); and, per niceness in
``--late-nice``, a load that starts after the training warm-up (the figure: the mean step over a
``--late-seconds`` window, so it includes the steps before a thread count reacts). The load is
one process spinning in a tight Python loop (``--load numpy``: small numpy matmuls, one BLAS
thread). A setting's cells run back to back; other people's jobs during each cell (busy CPU
time on our cores from /proc/stat minus this script's, its cells' and its load's) are recorded
with the load averages, and a group is run again (``--retries``) when they exceeded
``--foreign`` cores.

Settings (``--settings``):
  torch         torch's default: one thread per core, libgomp's default wait (spin 300k, then sleep)
  1thread       torch.set_num_threads(1)
  passive       OMP_WAIT_POLICY=PASSIVE (idle OpenMP threads sleep at once)
  spin1k        GOMP_SPINCOUNT=1000 (a short spin, then sleep); spin10k: 10000
  auto          omniformer.train.threads.configure_threads(0) once, libgomp's default wait
  auto-passive  the same with OMP_WAIT_POLICY=PASSIVE
  omniformer    omniformer's default: threads.ThreadGovernor(0), stepped every training step
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from omniformer.train.threads import other_load, read_proc_stat, usable_cores  # noqa: E402  (no torch)

# The variables that change OpenMP / BLAS threading: cleared in every cell, then set per setting.
OMP_ENV = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_PROC_BIND", "OMP_PLACES",
           "OMP_DYNAMIC", "MKL_NUM_THREADS", "MKL_DYNAMIC", "KMP_BLOCKTIME", "OPENBLAS_NUM_THREADS")

SETTINGS = {
    "torch": {"env": {}, "threads": None},
    "1thread": {"env": {}, "threads": 1},
    "passive": {"env": {"OMP_WAIT_POLICY": "PASSIVE"}, "threads": None},
    "spin1k": {"env": {"GOMP_SPINCOUNT": "1000"}, "threads": None},
    "spin10k": {"env": {"GOMP_SPINCOUNT": "10000"}, "threads": None},
    "auto": {"env": {}, "threads": "auto"},
    "auto-passive": {"env": {"OMP_WAIT_POLICY": "PASSIVE"}, "threads": "auto"},
    "omniformer": {"env": {}, "threads": "governor"},
}

PHASES = ("train", "eval", "eval1")

SPIN_PYTHON = "while True:\n    pass\n"
SPIN_NUMPY = ("import numpy as np\na = np.random.rand(64, 64)\nwhile True:\n    a = a @ a\n    a /= a.max()\n")


def loadavg() -> list[float]:
    try:
        return [float(x) for x in open("/proc/loadavg").read().split()[:3]]
    except OSError:
        return []


# ---------------------------------------------------------------------------------------------
# the cell: one subprocess
# ---------------------------------------------------------------------------------------------

def make_batches(cfg, batch: int):
    import torch
    g = torch.Generator().manual_seed(0)
    m = cfg.model
    frames = int(2.5 * 1000 / m.audio.hop_ms) + 1
    text_len = 12

    def common():
        return {"image": torch.randn(batch, m.image.channels, m.image.size, m.image.size, generator=g),
                "image_mask": torch.ones(batch, dtype=torch.bool),
                "answer": torch.randint(0, 30, (batch,), generator=g)}

    lengths = torch.randint(6, text_len + 1, (batch,), generator=g)
    mask = torch.arange(text_len)[None] < lengths[:, None]
    written = {**common(), "text": torch.randint(5, m.vocab_size, (batch, text_len), generator=g).masked_fill(~mask, 0),
               "text_mask": mask}
    lengths = torch.randint(int(frames * 0.6), frames + 1, (batch,), generator=g)
    words = torch.randint(3, 7, (batch,), generator=g)
    tmask = torch.arange(8)[None] < words[:, None]
    spoken = {**common(), "audio": torch.randn(batch, m.audio.n_mels, frames, generator=g),
              "audio_mask": torch.arange(frames)[None] < lengths[:, None],
              "transcript": torch.randint(5, m.vocab_size, (batch, 8), generator=g).masked_fill(~tmask, 0),
              "transcript_mask": tmask}
    return [written, spoken]


def timed(call, steps: float, seconds: float, warmup: int = 2, ready=None) -> list[float]:
    for i in range(warmup):
        call(i)
    if ready:
        ready()
    times, start = [], time.perf_counter()
    while len(times) < steps and (len(times) < 2 or time.perf_counter() - start < seconds):
        t = time.perf_counter()
        call(len(times))
        times.append(time.perf_counter() - t)
    return times


def cell(args) -> None:
    setting = SETTINGS[args.cell]
    import torch  # libgomp reads OMP_* now
    from omniformer.train import threads as th
    load_seen, governor = None, None
    if setting["threads"] in ("auto", "governor"):
        load_seen = th.other_load()
        if setting["threads"] == "auto":
            th.configure_threads(0, load=lambda: load_seen)
        else:
            governor = th.ThreadGovernor(0, load=lambda: load_seen)
    elif setting["threads"]:
        th.configure_threads(setting["threads"])
    threads_at_start = torch.get_num_threads()
    from common import random_qa_model
    from omniformer.train.optim import adamw_speed_kwargs
    cfg, model = random_qa_model("quickstart", 30)
    batches = make_batches(cfg, args.batch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, **adamw_speed_kwargs("cpu"))

    def train_step(i):
        if governor is not None:   # as the training loop does, once a step
            governor.step()
        loss = model(batches[i % 2])["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def eval_call(i):
        with torch.inference_mode():
            model(batches[i % 2])

    single = [{k: v[:1] for k, v in b.items()} for b in batches]

    def eval_one(i):
        with torch.inference_mode():
            model(single[i % 2])

    def ready():  # the driver starts the late load, then says go
        print("READY", flush=True)
        sys.stdin.readline()

    model.train()
    if args.late:
        train = timed(train_step, float("inf"), args.late_seconds, ready=ready)
    else:
        train = timed(train_step, args.steps, args.seconds)
    model.eval()
    evals = timed(eval_call, 2 * args.steps, args.seconds / 2)
    evals1 = timed(eval_one, 10 * args.steps, args.seconds / 4, warmup=5)
    info = torch.__config__.parallel_info()
    print(json.dumps({"threads_at_start": threads_at_start, "threads": torch.get_num_threads(),
                      "load_seen": load_seen, "governor_changes": governor.changes if governor else None,
                      "omp_env": {k: os.environ[k] for k in OMP_ENV if k in os.environ},
                      "openmp": next((l.strip() for l in info.splitlines() if l.startswith("OpenMP")), ""),
                      "train_s": train, "eval_s": evals, "eval1_s": evals1}))


# ---------------------------------------------------------------------------------------------
# the driver
# ---------------------------------------------------------------------------------------------

def start_load(kind: str, nice: int) -> subprocess.Popen:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    code = SPIN_NUMPY if kind == "numpy" else SPIN_PYTHON
    proc = subprocess.Popen([sys.executable, "-c", code], env=env,
                            preexec_fn=(lambda: os.nice(nice)) if nice else None)
    time.sleep(0.3)
    return proc


def cpu_seconds() -> tuple[float, float]:
    """(busy CPU seconds on this process's cores per /proc/stat, CPU seconds of this process and
    its waited-for children)."""
    stat, tick = read_proc_stat(), os.sysconf("SC_CLK_TCK")
    busy = sum(sum(t) - t[3] - t[4] for c in usable_cores() for t in [stat.get(f"cpu{c}", [0] * 8)]) / tick
    own = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
              for f in ("ru_utime", "ru_stime"))
    return busy, own


def run_cell(name: str, condition: str, args) -> dict:
    """One cell of setting ``name`` under ``condition``: ``idle``, ``niceN`` (beside the load at
    niceness N from the start) or ``lateN`` (the load starts after the training warm-up)."""
    env = {k: v for k, v in os.environ.items() if k not in OMP_ENV}
    env.update(SETTINGS[name]["env"])
    late = condition.startswith("late")
    nice = None if condition == "idle" else int(condition[4:])
    before = {"loadavg": loadavg(), "other_load": other_load()}
    busy0, own0, t0 = *cpu_seconds(), time.monotonic()
    load = start_load(args.load, nice) if nice is not None and not late else None
    cmd = [sys.executable, __file__, "--cell", name, "--steps", str(args.steps), "--seconds", str(args.seconds),
           "--batch", str(args.batch), "--late-seconds", str(args.late_seconds)] + (["--late"] if late else [])
    try:
        child = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, cwd=ROOT)
        if late:
            line = child.stdout.readline()
            if line.strip() == "READY":
                load = start_load(args.load, nice)
                child.stdin.write("go\n")
                child.stdin.flush()
        stdout, stderr = child.communicate(timeout=600)
    finally:
        if load is not None:
            load.kill()
            load.wait()
    busy1, own1, t1 = *cpu_seconds(), time.monotonic()
    if child.returncode != 0:
        raise RuntimeError(f"cell {name} {condition} failed:\n{stderr[-3000:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    # Cores' worth of CPU that neither this script, its cell nor its background load used:
    # other people's jobs during the cell.
    foreign = max(0.0, (busy1 - busy0) - (own1 - own0)) / (t1 - t0)
    result.update(setting=name, condition=condition, before=before, loadavg_after=loadavg(),
                  foreign_load=foreign)
    for phase in PHASES:
        result[f"{phase}_median_s"] = statistics.median(result[f"{phase}_s"])
        result[f"{phase}_mean_s"] = statistics.fmean(result[f"{phase}_s"])
    # A late load's training figure is the mean over the window: it includes the steps before
    # the thread count reacted.
    result["train_s_figure"] = result["train_mean_s" if late else "train_median_s"]
    result["eval_s_figure"], result["eval1_s_figure"] = result["eval_median_s"], result["eval1_median_s"]
    return result


def wait_for_quiet(limit: float, threshold: float) -> float:
    """Wait up to ``limit`` seconds for other processes' load to fall under ``threshold``
    cores; return the seconds waited."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        reading = other_load(seconds=0.5)
        if reading is None or reading < threshold:
            break
    return time.monotonic() - start


def run_group(name: str, conditions: list[str], args) -> list[dict]:
    """The idle cell of ``name`` and one beside the load per niceness, back to back; tried again
    (up to ``--retries``) while other people's jobs used more than ``--foreign`` cores during
    any, keeping the cleanest try. Every try is returned, the kept one last."""
    tries = []
    for attempt in range(args.retries + 1):
        waited = wait_for_quiet(args.quiet_wait, args.foreign)
        group = [run_cell(name, condition, args) for condition in conditions]
        for c in group:
            c.update(attempt=attempt, waited_for_quiet_s=waited)
        tries.append(group)
        if max(c["foreign_load"] for c in group) < args.foreign:
            break
    best = min(tries, key=lambda g: max(c["foreign_load"] for c in g))
    for group in tries:
        for c in group:
            c["kept"] = group is best
    return [c for g in tries if g is not best for c in g] + best


def summarise(cells: list[dict], names: list[str], conditions: list[str]) -> dict:
    """Per setting and phase: the median over repetitions of the idle and busy step times, their
    ratio, and the busy time over torch's default on the idle machine (the reference run)."""
    summary = {}
    for name in names:
        kept = [c for c in cells if c["setting"] == name and c["kept"]]
        summary[name] = {phase: {cond: {"seconds": statistics.median(c[f"{phase}_s_figure"] for c in kept
                                                                     if c["condition"] == cond),
                                        "threads": sorted({(c["threads_at_start"], c["threads"]) for c in kept
                                                           if c["condition"] == cond}),
                                        "foreign_load": max(c["foreign_load"] for c in kept
                                                            if c["condition"] == cond)}
                                 for cond in conditions}
                         for phase in PHASES}
    for row in summary.values():
        for phase, by_cond in row.items():
            idle = by_cond["idle"]["seconds"]
            ref = summary["torch"][phase]["idle"]["seconds"] if "torch" in summary else None
            for cond, entry in by_cond.items():
                entry["over_own_idle"] = entry["seconds"] / idle
                if ref:
                    entry["over_torch_idle"] = entry["seconds"] / ref
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", default="torch,1thread,passive,auto-passive,omniformer")
    parser.add_argument("--reps", type=int, default=1, help="groups (idle + busy cells) per setting")
    parser.add_argument("--steps", type=int, default=12, help="timed training steps per cell (2x as many eval calls)")
    parser.add_argument("--seconds", type=float, default=12.0, help="stop a phase after this long (eval: half)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--load", choices=["python", "numpy"], default="python")
    parser.add_argument("--nice", default="0,10", help="niceness of the background load, one busy cell each")
    parser.add_argument("--late-nice", default="0",
                        help="niceness of a load that starts after the training warm-up, one cell each")
    parser.add_argument("--late-seconds", type=float, default=10.0,
                        help="training window of a late cell; its figure is the mean step over it")
    parser.add_argument("--late", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--foreign", type=float, default=0.3,
                        help="try a group again when other people's jobs used more cores than this during it")
    parser.add_argument("--retries", type=int, default=2)
    parser.add_argument("--quiet-wait", type=float, default=20.0,
                        help="seconds to wait before a group for other people's jobs to quieten")
    parser.add_argument("--quick", action="store_true", help="~2.5 minutes: fewer steps, shorter phases, one retry")
    parser.add_argument("--json", default="")
    parser.add_argument("--cell", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cell:
        return cell(args)
    if args.quick:
        args.steps, args.seconds, args.retries, args.quiet_wait, args.late_seconds = 6, 4.0, 1, 10.0, 5.0
    names = [s.strip() for s in args.settings.split(",") if s.strip()]
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        parser.error(f"--settings: unknown {unknown}; expected some of {list(SETTINGS)}")
    nices = [int(n) for n in args.nice.split(",") if n.strip()]
    lates = [int(n) for n in args.late_nice.split(",") if n.strip()]
    conditions = ["idle", *(f"nice{n}" for n in nices), *(f"late{n}" for n in lates)]

    started = time.time()
    results = {"cpu": platform.processor() or platform.machine(), "cores": usable_cores(), "argv": sys.argv[1:],
               "load": args.load, "conditions": conditions, "batch": args.batch, "steps": args.steps,
               "seconds": args.seconds, "reps": args.reps, "loadavg_start": loadavg(),
               "other_load_start": other_load(), "cells": []}
    print(f"{len(results['cores'])} cores; background load: one {args.load} spinner, conditions {conditions}; "
          f"load average {results['loadavg_start']}")
    head = "  ".join(f"{c:>10}" for c in conditions)
    print(f"{'setting':<11} {'rep':>3} {'threads':>8}  train ms: {head}   eval ms: {head}   eval1 ms: {head}"
          f"   others' cores")
    for rep in range(args.reps):
        for name in names:
            cells = run_group(name, conditions, args)
            results["cells"].extend(cells)
            group = cells[-len(conditions):]
            idle = group[0]

            def cols(phase):
                return "  ".join(f"{1000 * c[f'{phase}_s_figure']:>5.{int(phase == 'eval1')}f}" + (
                    f" {c[f'{phase}_s_figure'] / idle[f'{phase}_s_figure']:>4.1f}x" if c is not idle else " " * 6)
                    for c in group)
            tries = len(cells) // len(conditions)
            foreign = "/".join(f"{c['foreign_load']:.2f}" for c in group)
            threads = "/".join(str(c["threads_at_start"]) + ("" if c["threads"] == c["threads_at_start"]
                                                             else f">{c['threads']}") for c in group)
            retried = f" ({tries} tries)" if tries > 1 else ""
            print(f"{name:<11} {rep:>3} {threads:>8}  {'':>9} {cols('train')}   {'':>8} {cols('eval')}   "
                  f"{'':>9} {cols('eval1')}   "
                  f"{foreign}{retried}  loadavg {group[-1]['loadavg_after']}", flush=True)

    summary = summarise(results["cells"], names, conditions)
    results.update(summary=summary, loadavg_end=loadavg(), other_load_end=other_load(),
                   wall_seconds=time.time() - started)
    print("\nbusy / idle of the same setting, and (in brackets) busy / torch's default idle:")
    print(f"{'setting':<11} " + "  ".join(f"{'train ' + c:>22}" for c in conditions[1:]) + "  "
          + "  ".join(f"{'eval ' + c:>22}" for c in conditions[1:])
          + "  " + "  ".join(f"{'eval1 ' + c:>22}" for c in conditions[1:]))
    for name, row in summary.items():
        parts = [f"{row[p][c]['over_own_idle']:>12.2f}x ({row[p][c].get('over_torch_idle', float('nan')):.2f}x)"
                 for p in PHASES for c in conditions[1:]]
        print(f"{name:<11} " + "  ".join(f"{x:>22}" for x in parts))
    print(f"load average at the end {results['loadavg_end']}; {results['wall_seconds']:.0f} s")
    from common import write_json
    write_json(args.json, results)


if __name__ == "__main__":
    main()
