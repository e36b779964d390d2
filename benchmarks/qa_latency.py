"""QA inference latency of the quickstart model (PyTorch eager, CPU), against the floor of its FLOPs.

    python benchmarks/qa_latency.py [--config quickstart] [--threads 2] [--calls 300] [--json out.json]

The model is ``QAModel`` built from configs/quickstart.yaml with random weights, a vocabulary
of ``data.vocab_size`` (200) tokens and ``--answers`` (30) answers; latency does not depend on
the weights. Two ways of asking about one 48x48 image:

* text: a question of ``--text-len`` (12) tokens;
* spoken: ``--seconds`` (2.5 s) of speech as log-mel frames (10 ms hop: 251 frames), no text.

Batch 1: p50 / p99 / mean over ``--calls`` calls after ``--warmup`` calls, each call one full
``model(batch)`` under ``torch.inference_mode``. Batch 32: samples/s from the median call, with
padding as a server's micro-batch has it (questions of 6..12 tokens, speech of 1.5..2.5 s).
The floor is the call's FLOPs (counted with ``torch.utils.flop_counter``, SDPA included) divided
by this machine's fp32 ``torch.mm`` rate, measured here at a large square shape (the best case)
and at the model's own batch-1 layer shape.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from torch.utils import flop_counter as fc

from common import random_qa_model, write_json

_aten = torch.ops.aten
SDPA_FLOPS = {
    _aten._scaled_dot_product_flash_attention_for_cpu:
        lambda q, k, v, *a, out_shape=None, **kw: fc.sdpa_flop_count(q, k, v),
}


def mm_gflops(m: int, k: int, n: int, seconds: float = 0.5) -> float:
    a, b = torch.randn(m, k), torch.randn(k, n)
    for _ in range(3):
        torch.mm(a, b)
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.mm(a, b)
        calls += 1
    return 2 * m * k * n * calls / (time.perf_counter() - start) / 1e9


def inputs(cfg, batch: int, way: str, text_len: int, frames: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    c = cfg.image
    out = {"image": torch.randn(batch, c.channels, c.size, c.size, generator=g),
           "image_mask": torch.ones(batch, dtype=torch.bool)}
    if way == "text":
        lengths = torch.randint(max(1, text_len // 2), text_len + 1, (batch,), generator=g)
        lengths[0] = text_len
        mask = torch.arange(text_len)[None] < lengths[:, None]
        out["text"] = torch.randint(5, cfg.vocab_size, (batch, text_len), generator=g).masked_fill(~mask, 0)
        out["text_mask"] = mask
    else:
        lengths = torch.randint(int(frames * 0.6), frames + 1, (batch,), generator=g)
        lengths[0] = frames
        out["audio"] = torch.randn(batch, cfg.audio.n_mels, frames, generator=g)
        out["audio_mask"] = torch.arange(frames)[None] < lengths[:, None]
    return out


def timed_calls(model, batch, calls: int, warmup: int) -> list[float]:
    with torch.inference_mode():
        for _ in range(warmup):
            model(batch)
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            model(batch)
            times.append(1000 * (time.perf_counter() - start))
    return times


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))]


def count_flops(model, batch) -> float:
    with torch.inference_mode(), fc.FlopCounterMode(display=False, custom_mapping=SDPA_FLOPS) as counter:
        model(batch)
    return float(counter.get_total_flops())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="quickstart")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calls", type=int, default=300, help="timed calls at batch 1")
    parser.add_argument("--batch-calls", type=int, default=20, help="timed calls at the large batch")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--text-len", type=int, default=12)
    parser.add_argument("--seconds", type=float, default=2.5)
    parser.add_argument("--answers", type=int, default=30)
    parser.add_argument("--json", default="")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    cfg, model = random_qa_model(args.config, args.answers)
    params = sum(p.numel() for p in model.parameters())
    frames = int(args.seconds * 1000 / cfg.model.audio.hop_ms) + 1
    W = cfg.model.width
    peak = mm_gflops(1024, 1024, 1024)
    small = mm_gflops(64, W, 4 * W)  # ~ the batch-1 token count at the FFN shape
    results = {"config": args.config, "parameters": params, "threads": args.threads, "torch": torch.__version__,
               "cpu": platform.processor() or platform.machine(), "mm_gflops_1024": peak,
               f"mm_gflops_64x{W}x{4 * W}": small, "text_len": args.text_len, "frames": frames, "rows": []}
    print(f"QA model from {args.config}: {params / 1e6:.2f} M parameters, width {W}, depth {cfg.model.depth} "
          f"+ towers {cfg.model.tower_depth}; {args.threads} threads, torch {torch.__version__}")
    print(f"fp32 torch.mm: {peak:.1f} GFLOP/s at 1024^3, {small:.1f} GFLOP/s at 64x{W}x{4 * W}\n")
    print(f"{'way':<7} {'batch':>5} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'samples/s':>10} {'MFLOP':>8} "
          f"{'floor ms':>9} {'p50/floor':>9}")
    for way in ("text", "spoken"):
        for batch in (1, args.batch):
            x = inputs(cfg.model, batch, way, args.text_len, frames, seed=batch)
            flops = count_flops(model, x)
            times = timed_calls(model, x, args.calls if batch == 1 else args.batch_calls, args.warmup)
            p50 = statistics.median(times)
            row = {"way": way, "batch": batch, "p50_ms": p50, "p99_ms": percentile(times, 99),
                   "mean_ms": statistics.fmean(times), "samples_per_second": batch / p50 * 1000,
                   "mflop_per_call": flops / 1e6, "floor_ms": flops / (peak * 1e9) * 1000,
                   "floor_ms_at_small_mm_rate": flops / (small * 1e9) * 1000, "calls": len(times)}
            results["rows"].append(row)
            print(f"{way:<7} {batch:>5} {p50:>8.2f} {row['p99_ms']:>8.2f} {row['mean_ms']:>8.2f} "
                  f"{row['samples_per_second']:>10.1f} {flops / 1e6:>8.1f} {row['floor_ms']:>9.3f} "
                  f"{p50 / row['floor_ms']:>9.1f}")
    write_json(args.json, results)


if __name__ == "__main__":
    main()
