"""Does pretraining help? Fine-tune QA on a fraction of the labels from a pretrained
checkpoint and from scratch, same recipe, same seed, same steps; report test accuracy.

    python benchmarks/pretraining_gain.py --init runs/quickstart/pretrain/last \\
        --json benchmarks/results/pretraining_gain.json
    python benchmarks/pretraining_gain.py --config configs/quickstart.yaml --label-fraction 0.1 \\
        --finetune.steps=1500 [--key=value ...]          # no --init: pretrains first

The issue's bar: with 10% of the QA labels, the pretrained start beats scratch by >= 10
points. Both runs see the same labelled subset (``label_fraction`` draws it with the
fine-tuning seed) and the same curriculum; only the initial backbone weights differ. The
answer head starts from the same seeded initialisation in both.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import write_json  # noqa: E402

from omniformer.cli import recipe_path  # noqa: E402
from omniformer.config import load_config  # noqa: E402
from omniformer.tasks.pipeline import evaluate, finetune, pretrain  # noqa: E402

HEADLINE = ("text/accuracy", "text/non_relational", "text/relational", "spoken/accuracy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="quickstart")
    parser.add_argument("--init", help="a pretraining checkpoint; omitted: pretrain with the recipe first")
    parser.add_argument("--label-fraction", type=float, default=0.1)
    parser.add_argument("--out", default="runs/pretraining-gain")
    parser.add_argument("--json", default="")
    args, overrides = parser.parse_known_args()
    overrides = [*overrides, f"--label_fraction={args.label_fraction}"]

    def recipe(name: str):
        return load_config(recipe_path(args.config), [*overrides, f"--out_dir={args.out}/{name}"])

    init = args.init
    if init is None:
        init = pretrain(recipe("pretrained"))
    results = {"config": args.config, "label_fraction": args.label_fraction, "init": str(init), "overrides": overrides}
    for name, start in (("pretrained", init), ("scratch", None)):
        t = time.perf_counter()
        best = finetune(recipe(name), init=start)
        evaluation = evaluate(best, split="test")
        results[name] = {**evaluation.metrics, "finetune_seconds": time.perf_counter() - t}
    gain = {k: 100 * (results["pretrained"][k] - results["scratch"][k])
            for k in HEADLINE if k in results["pretrained"] and k in results["scratch"]}
    results["gain_points"] = gain

    print(f"\nQA test accuracy with {args.label_fraction:.0%} of the training labels ({args.config})")
    print(f"{'':22s}{'pretrained':>12s}{'scratch':>10s}{'gain':>8s}")
    for k, g in gain.items():
        print(f"{k:22s}{100 * results['pretrained'][k]:11.1f}%{100 * results['scratch'][k]:9.1f}%{g:+8.1f}")
    write_json(args.json, results)


if __name__ == "__main__":
    main()
