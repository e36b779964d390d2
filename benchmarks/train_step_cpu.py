"""The translate task's training step on a CPU, with and without the three things that make it
cheaper: malloc keeping freed blocks (``omniformer.train.memory``), dropout's mask from a uniform
draw (``omniformer.model.layers.Dropout``), and logits for real target positions only
(``Seq2SeqModel``). Each variant runs in its own process (malloc's setting is per process),
the variants alternating round after round, and the ratio is against the step with none of them.

    python benchmarks/train_step_cpu.py [--threads 1] [--steps 12] [--rounds 2] [--json F]

The model is the ``multi30k-en-de`` recipe's shape (4 + 4 layers, 128 wide, 256 hidden, dropout
0.3, 8,000 tokens) with seeded random weights; batches of 256 synthetic pairs whose lengths
follow Multi30k's (sources 8-24 word pieces, targets 8-28, bucketed as training buckets them).
Figure: the median step (forward, backward, AdamW) over ``--steps`` after 3 warm-up steps.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

VARIANTS = {  # name: (malloc keeps freed blocks, CPU dropout, real positions only)
    "reference": (False, False, False),
    "malloc kept": (True, False, False),
    "CPU dropout": (False, True, False),
    "real positions": (False, False, True),
    "all three": (True, True, True),
}


def one_variant(name: str, threads: int, steps: int) -> float:
    """The median step of one variant, in this process."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from omniformer.config import ModelConfig
    from omniformer.model import layers
    from omniformer.tasks.seq2seq import Seq2SeqModel, TranslateConfig
    from omniformer.train.memory import keep_freed_memory

    kept, cpu_dropout, real_only = VARIANTS[name]
    if kept:
        keep_freed_memory()
    if not cpu_dropout:
        layers.Dropout.forward = nn.Dropout.forward
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = ModelConfig(modalities=["text"], width=128, depth=4, tower_depth=0, heads=4, mlp_ratio=2.0,
                      dropout=0.3, vocab_size=8000)
    model = Seq2SeqModel(cfg, TranslateConfig(decoder_depth=4, max_target_len=64, label_smoothing=0.1)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def padded_loss(batch):  # the loss before: logits for every position, the padding ignored
        context, context_mask = model.encode(batch)
        logits = model.decoder(batch["target"][:, :-1], context, context_mask)
        labels = batch["target"][:, 1:].masked_fill(~batch["target_mask"][:, 1:], -100)
        return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100,
                               label_smoothing=0.1)

    generator = torch.Generator().manual_seed(1)

    def batch():
        source_len = int(torch.randint(8, 25, (1,), generator=generator))  # bucketed: one length a batch
        source = torch.randint(5, 8000, (256, source_len), generator=generator)
        lengths = (source_len + torch.randint(-4, 5, (256,), generator=generator)).clamp(3, 28)
        width = int(lengths.max())
        target_mask = torch.arange(width)[None, :] < lengths[:, None]
        target = torch.randint(5, 8000, (256, width), generator=generator).masked_fill(~target_mask, 0)
        return {"text": source, "text_mask": torch.ones_like(source, dtype=torch.bool), "target": target,
                "target_mask": target_mask}

    times = []
    for step in range(3 + steps):
        b = batch()
        start = time.perf_counter()
        loss = model(b)["loss"] if real_only else padded_loss(b)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= 3:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", default=None)
    parser.add_argument("--variant", default=None, help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(one_variant(args.variant, args.threads, args.steps)))
        return
    from common import cpu_model, write_json
    from recognition import load_average, matmul_gflops

    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    found: dict[str, list[float]] = {name: [] for name in VARIANTS}
    load_before = load_average()
    for _ in range(args.rounds):
        for name in VARIANTS:
            out = subprocess.run([sys.executable, __file__, "--variant", name, "--threads", str(args.threads),
                                  "--steps", str(args.steps)], capture_output=True, text=True, check=True, env=env)
            found[name].append(float(out.stdout.strip().splitlines()[-1]))
    best = {name: min(times) for name, times in found.items()}
    result = {
        "cpu": cpu_model(), "threads": args.threads, "matmul_gflops_1_thread": round(matmul_gflops(1), 1),
        "load_average_before": load_before, "load_average_after": load_average(),
        "step_seconds": {name: round(t, 4) for name, t in best.items()},
        "speedup_over_reference": {name: round(best["reference"] / t, 2) for name, t in best.items()},
    }
    for name, t in best.items():
        print(f"{name:>15}: {t * 1000:7.1f} ms a step, {best['reference'] / t:.2f}x")
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
