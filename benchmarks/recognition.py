"""Recognition: MNIST and FSDD top-1 accuracy of the classify task, with the training time.

    python benchmarks/recognition.py [--threads 2] [--seed 0] [--only mnist,fsdd,loso] [--smoke]
                                     [--json benchmarks/results/recognition.json]

Each figure is one training run of a built-in recipe through the CLI (``omniformer train
classify --config mnist|fsdd``, then ``omniformer evaluate``), timed as the wall time of the
train command (Python start-up included); the exact commands go to the JSON.

- mnist: the ``mnist`` recipe on ``data/mnist/manifest.jsonl`` (t10k images 0-7,999 train,
  8,000-9,999 test); no validation, the last checkpoint is scored on test.
- fsdd: the ``fsdd`` recipe on ``data/fsdd/manifest.jsonl``, the dataset's own split
  (recordings 0-4 of each speaker and digit are test, 200; the other 1,800 train).
- loso: leave one speaker out, four folds. Train: every recording (train and test split) of
  three speakers, 1,500; test: every recording of the fourth, 500. The fold manifests are
  written under ``data/fsdd-loso/<speaker>/`` from ``data/fsdd/manifest.jsonl``.

Machine speed on the day: the GFLOP/s of a 512x512 float32 matmul loop with 1 and 2 threads,
measured at the start and at the end of the run. ``--smoke``: 20 steps per run, to check
the script end to end (its accuracies mean nothing).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
FSDD = ROOT / "data" / "fsdd" / "manifest.jsonl"
LOSO = ROOT / "data" / "fsdd-loso"


def matmul_gflops(threads: int, n: int = 512, seconds: float = 1.5) -> float:
    """GFLOP/s of repeated n x n float32 matmuls on ``threads`` threads (best of 3 windows)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(5):
        a @ b
    best = 0.0
    for _ in range(3):
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 3:
            a @ b
            count += 1
        best = max(best, 2 * n**3 * count / (time.perf_counter() - start) / 1e9)
    torch.set_num_threads(before)
    return best


def machine_speed() -> dict[str, float]:
    return {f"{t}_thread{'s' if t > 1 else ''}": round(matmul_gflops(t), 1) for t in (1, 2)}


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def write_loso(source: Path = FSDD, out: Path = LOSO) -> dict[str, Path]:
    """A manifest per held-out speaker: train = the other speakers' recordings (both splits),
    test = all of the held-out speaker's. Audio paths are rewritten relative to the new folder."""
    samples = [json.loads(line) for line in source.read_text().splitlines() if line.strip()]
    speakers = sorted({s["meta"]["speaker"] for s in samples})
    manifests = {}
    for held in speakers:
        folder = out / held
        folder.mkdir(parents=True, exist_ok=True)
        lines = []
        for s in samples:
            audio = os.path.relpath((source.parent / s["audio"]).resolve(), folder.resolve())
            split = "test" if s["meta"]["speaker"] == held else "train"
            lines.append(json.dumps({**s, "audio": Path(audio).as_posix(), "split": split}))
        path = folder / "manifest.jsonl"
        path.write_text("\n".join(lines) + "\n")
        manifests[held] = path
    return manifests


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "omniformer.cli", *args]


def run(name: str, recipe: str, manifest: Path, out: Path, args: argparse.Namespace, extra: list[str]) -> dict:
    """Train ``recipe`` on ``manifest`` through the CLI, evaluate on test; the figure and how it was made."""
    model_dir = out / name
    train = cli("train", "classify", "--config", recipe, "--overwrite",
                f"--data.manifest={manifest.relative_to(ROOT)}", f"--out_dir={model_dir.relative_to(ROOT)}",
                f"--finetune.threads={args.threads}", f"--finetune.seed={args.seed}",
                "--finetune.progress=false", *extra)
    if args.smoke:
        train += ["--finetune.steps=20", "--finetune.warmup_steps=5"]
    load_before = load_average()
    start = time.perf_counter()
    done = subprocess.run(train, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"{name}: training failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    metrics_path = model_dir / "eval" / "metrics.json"
    evaluate = cli("evaluate", "--model", str((model_dir / "classify" / "best").relative_to(ROOT)),
                   "--split", "test", "--json", str(metrics_path.relative_to(ROOT)))
    done = subprocess.run(evaluate, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{name}: evaluation failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    result = json.loads(metrics_path.read_text())
    metrics = result.get("metrics", result)
    meta_path = model_dir / "classify" / "best" / "config.json"  # the checkpoint's meta: the whole recipe in it
    config = json.loads(meta_path.read_text()).get("config") if meta_path.is_file() else None
    row = {"accuracy": metrics["accuracy"], "errors": round((1 - metrics["accuracy"]) * result.get("samples", 0)),
           "test_samples": result.get("samples"), "train_seconds": round(seconds, 1),
           "load_average_before": load_before, "load_average_after": load_average(),
           "seed": args.seed, "recipe": recipe, "manifest": str(manifest.relative_to(ROOT)),
           "command": "omniformer " + " ".join(train[3:]), "evaluate": "omniformer " + " ".join(evaluate[3:]),
           "per_group": {k: v for k, v in metrics.items() if k.startswith("speaker/")},
           "config": config}
    print(f"{name:<14} {100 * row['accuracy']:6.2f}%  ({row['errors']} errors of {row['test_samples']})  "
          f"train {seconds:6.1f} s", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch threads for training (the bar: 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default="mnist,fsdd,loso", help="which figures, comma-separated")
    parser.add_argument("--smoke", action="store_true", help="20 steps per run: a quick end-to-end check")
    parser.add_argument("--out", default="runs/recognition", help="where the models go (under the repository)")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    only = set(args.only.split(","))
    out = ROOT / args.out
    results: dict = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                                 "cpus": os.cpu_count(), "torch": torch.__version__},
                     "threads": args.threads, "seed": args.seed, "smoke": args.smoke}
    results["matmul_gflops_start"] = machine_speed()
    print(f"512x512 fp32 matmul GFLOP/s: {results['matmul_gflops_start']}", flush=True)
    runs: dict = {}
    if "mnist" in only:
        runs["mnist"] = run("mnist", "mnist", ROOT / "data" / "mnist" / "manifest.jsonl", out, args, [])
        runs["mnist"]["split"] = "train: t10k images 0-7,999; test: 8,000-9,999"
    if "fsdd" in only:
        runs["fsdd"] = run("fsdd", "fsdd", FSDD, out, args, [])
        runs["fsdd"]["split"] = "FSDD's own: recordings 0-4 of each speaker and digit are test (200), the rest train (1,800)"
    if "loso" in only:
        for held, manifest in write_loso().items():
            row = run(f"loso-{held}", "fsdd", manifest, out, args, [])
            row["split"] = f"train: all 1,500 recordings of the other three speakers; test: all 500 of {held}"
            runs[f"fsdd_loso_{held}"] = row
        folds = [r for k, r in runs.items() if k.startswith("fsdd_loso_")]
        results["fsdd_loso_mean_accuracy"] = sum(r["accuracy"] for r in folds) / len(folds)
        print(f"{'loso mean':<14} {100 * results['fsdd_loso_mean_accuracy']:6.2f}%")
    results["runs"] = runs
    results["matmul_gflops_end"] = machine_speed()
    print(f"512x512 fp32 matmul GFLOP/s at the end: {results['matmul_gflops_end']}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
