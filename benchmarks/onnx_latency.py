"""QA inference latency on CPU: ONNX Runtime vs PyTorch eager, at batch 1 and 32.

    python benchmarks/onnx_latency.py [--config quickstart] [--threads 2] [--repeats 30] [--json out.json]

The model is the quickstart-size QA model (configs/quickstart.yaml) with random weights and a
vocabulary of ``data.vocab_size`` tokens; latency does not depend on the weights. Each input
is one question about one image, asked in text (12 tokens) and in speech (2 s, 200 frames),
with some padding in every batch. Figures are the median wall time of ``--repeats`` calls
after 3 warm-up calls, both runtimes pinned to the same number of threads; the table also
shows the largest logit difference between the two.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from omniformer.interop.onnx import example_inputs, export_qa, onnx_session, run_onnx
from common import random_qa_model, write_json


def median_ms(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="quickstart")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--text-len", type=int, default=12)
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--answers", type=int, default=30)
    parser.add_argument("--json", default="onnx_latency.json")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    cfg, model = random_qa_model(args.config, args.answers)
    params = sum(p.numel() for p in model.parameters())
    results = {"config": args.config, "parameters": params, "threads": args.threads, "repeats": args.repeats,
               "text_len": args.text_len, "frames": args.frames, "torch": torch.__version__,
               "cpu": platform.processor() or platform.machine(), "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        path = export_qa(model, cfg.model, Path(tmp) / "qa.onnx")
        results["export_seconds"] = time.perf_counter() - start
        import onnxruntime
        results["onnxruntime"] = onnxruntime.__version__
        session = onnx_session(path, threads=args.threads)
        for batch in (int(b) for b in args.batches.split(",")):
            inputs = example_inputs(cfg.model, batch, args.text_len, args.frames, seed=batch)
            with torch.inference_mode():
                expected = model(inputs)["logits"].numpy()
                torch_ms = median_ms(lambda: model(inputs), args.repeats)
            diff = float(np.abs(run_onnx(session, inputs) - expected).max())
            ort_ms = median_ms(lambda: run_onnx(session, inputs), args.repeats)
            results["rows"].append({"batch": batch, "torch_ms": torch_ms, "onnxruntime_ms": ort_ms,
                                    "speedup": torch_ms / ort_ms, "max_abs_diff": diff})

    print(f"\nQA model from {args.config} ({params / 1e6:.2f} M parameters), {args.threads} threads, "
          f"text {args.text_len} tokens + image {cfg.model.image.size}px + audio {args.frames} frames")
    print(f"{'batch':>5}  {'PyTorch ms':>10}  {'ORT ms':>8}  {'speed-up':>8}  {'max |diff|':>10}")
    for r in results["rows"]:
        print(f"{r['batch']:>5}  {r['torch_ms']:>10.2f}  {r['onnxruntime_ms']:>8.2f}  {r['speedup']:>7.2f}x  "
              f"{r['max_abs_diff']:>10.1e}")
    write_json(args.json, results)


if __name__ == "__main__":
    main()
