"""The quickstart's fine-tuning step on one GPU: eager against torch.compile with CUDA graphs.

    python benchmarks/gpu_step.py [--modes eager,eager-static,default,reduce-overhead] [--steps 50]
                                  [--json benchmarks/results/gpu_step.json]
    python benchmarks/gpu_step.py --smoke     # tiny shapes on CPU, fp32: checks the script runs

The model is ``QAModel`` as ``configs/quickstart.yaml`` builds it for fine-tuning (width 96,
depth 3, guided head with relations, spoken questions heard as words by the word spotter,
grounding and word-spotting losses), random weights, ``data.vocab_size`` (200) tokens and
``--answers`` (30) answers, in train mode. Batches are the recipe's (``finetune.batch_size``
64, ``bucket: modality``): ``--batches`` distinct ones, alternately asked in text (6..14
tokens, [CLS] and [SEP] included) and by voice (1.5..2.5 s of log-mel frames, with the
question's tokens as the spotter's transcript), each with its 48x48 image and answer, made
from dataset-like items by ``data.batching.collate``, as ``fit`` gets them.

The step is ``fit``'s (omniformer/train/loop.py): bf16 autocast forward, the finiteness check
of the loss, backward, the logged scalars read to the host, gradient clipping at
``finetune.grad_clip`` with its finiteness check, fused AdamW, the schedule, zero_grad.

Modes: ``eager`` (batches as collated, each its own length: what fit runs today);
``eager-static`` (padded to ``StaticShapes`` edges: what the padding costs alone); ``default``
and ``reduce-overhead`` (``train.compile_step`` with ``static_shapes``: inductor, and inductor
with CUDA graphs; on a CPU, reduce-overhead runs as default, with a warning).

Timing: ``--warmup`` passes over every batch (compiling and recording each shape), then
``--steps`` steps cycling through the batches, each timed with CUDA events (perf_counter on a
CPU); the median is reported. ``--smoke`` compiles with ``aot_eager`` unless ``--backend`` says
otherwise: dynamo and AOT autograd as on a GPU (graphs, breaks, recompiles), without the
minutes inductor's C++ compile takes on two CPU cores. Launches: ``torch.profiler`` over ``--profile-steps`` further
steps, per step: host-side kernel launch calls (``cudaLaunchKernel`` and the driver's
variants), CUDA graph launches (``cudaGraphLaunch``, one per replayed graph) and the kernels
that ran on the GPU; on a CPU, the aten operator calls instead (nested ones included). The issue's figures for
the eager step: about 42 ms and 2,600 kernel launches on an H200; the bar is <= 10 ms.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import statistics
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from omniformer.config import TrainConfig, load_config, recipe_path
from omniformer.data.batching import StaticShapes, collate
from omniformer.tasks.qa import QAModel, qa_config
from omniformer.train.compiled import compile_step
from omniformer.train.optim import build_optimizer, build_scheduler

# --smoke: the quickstart recipe shrunk to seconds on a CPU (same task, head and losses).
SMOKE = ["--model.width=32", "--model.depth=1", "--model.tower_depth=0", "--model.heads=2",
         "--model.image.size=16", "--model.image.patch_size=8", "--model.audio.n_mels=16",
         "--model.audio.max_seconds=1.0", "--model.text.max_len=16"]
LAUNCHES = {"cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx"}
GRAPH_LAUNCHES = {"cudaGraphLaunch", "cuGraphLaunch"}
MODES = ("eager", "eager-static", "default", "reduce-overhead")


def build(config: str, answers: int, smoke: bool, device: torch.device):
    """(recipe, QAModel in train mode on ``device``), seeded random weights."""
    cfg = load_config(recipe_path(config), overrides=SMOKE if smoke else None)
    cfg.model.vocab_size = cfg.data.vocab_size
    torch.manual_seed(0)
    return cfg, QAModel(cfg.model, answers, qa_config(cfg)).to(device).train()


def make_items(cfg, batch: int, spoken: bool, seed: int, smoke: bool) -> list[dict]:
    """Dataset items of one fine-tuning batch, as ``qa_dataset`` makes them (mode "text" or "audio")."""
    g = torch.Generator().manual_seed(seed)
    m, hop = cfg.model, cfg.model.audio.hop_ms / 1000
    frames = (int(0.5 / hop), int(0.9 / hop)) if smoke else (int(1.5 / hop), int(2.5 / hop))
    items = []
    for i in range(batch):
        n = int(torch.randint(6, min(14, m.text.max_len) + 1, (), generator=g))
        tokens = torch.cat([torch.tensor([2]), torch.randint(5, m.vocab_size, (n - 2,), generator=g), torch.tensor([3])])
        it = {"index": i, "image": torch.randn(m.image.channels, m.image.size, m.image.size, generator=g),
              "answer": int(torch.randint(0, 30, (), generator=g))}
        if spoken:
            T = int(torch.randint(frames[0], frames[1] + 1, (), generator=g))
            it["audio"], it["transcript"] = torch.randn(m.audio.n_mels, T, generator=g), tokens
        else:
            it["text"] = tokens
        items.append(it)
    return items


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def fit_step(model: nn.Module, call, optimizer, scheduler, cfg: TrainConfig, amp):
    """One optimizer step of ``fit`` (grad_accum 1) on ``batch``: what the loop does, minus its
    data loading and logging."""
    def step(batch: dict) -> float:
        with amp():
            out = call(batch)
        loss = out["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss {loss.item()}")
        loss.backward()
        logged = {k: float(v.detach()) for k, v in out.items() if isinstance(v, torch.Tensor) and v.ndim == 0}
        norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        if not torch.isfinite(norm):
            raise FloatingPointError(f"gradient norm {float(norm)}")
        optimizer.step()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler", UserWarning)
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return logged["loss"]
    return step


def count_launches(step, batches: list[dict], device: torch.device, steps: int) -> dict:
    """Per step, from ``torch.profiler``: launch calls, graph launches and GPU kernels (CUDA), or
    aten operator calls, nested ones included (CPU: a proxy, no launches there)."""
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for i in range(steps):
            step(batches[i % len(batches)])
        sync(device)
    events = prof.events()
    if device.type == "cuda":
        gpu = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
        return {"kernel_launches_per_step": sum(e.name in LAUNCHES for e in events) / steps,
                "graph_launches_per_step": sum(e.name in GRAPH_LAUNCHES for e in events) / steps,
                "gpu_kernels_per_step": sum("memcpy" not in e.name.lower() and "memset" not in e.name.lower()
                                            for e in gpu) / steps}
    return {"cpu_aten_ops_per_step": sum(e.name.startswith("aten::") for e in events) / steps}


def run_mode(mode: str, args, device: torch.device) -> dict:
    from torch._dynamo.utils import counters
    cfg, model = build(args.config, args.answers, args.smoke, device)
    train = cfg.finetune
    if args.batch:
        train.batch_size = args.batch
    static = mode != "eager"
    collate_fn = StaticShapes.for_model(collate, model) if static else collate
    batches = [{k: v.to(device) if isinstance(v, torch.Tensor) else v
                for k, v in collate_fn(make_items(cfg, train.batch_size, i % 2 == 1, i, args.smoke)).items()}
               for i in range(args.batches)]
    shapes = sorted({tuple((k, tuple(v.shape)) for k, v in b.items() if k in ("text", "audio", "transcript"))
                     for b in batches})
    torch._dynamo.reset()
    counters.clear()
    compiled = mode in ("default", "reduce-overhead")
    step_cfg = dataclasses.replace(train, compile=compiled, compile_mode=mode if compiled else "default",
                                   static_shapes=static)
    call = compile_step(model, step_cfg, device, backend=args.backend)
    optimizer = build_optimizer(model, train, device)
    scheduler = build_scheduler(optimizer, train)
    amp = (lambda: torch.autocast(device_type="cuda", dtype=torch.bfloat16)) if device.type == "cuda" else contextlib.nullcontext
    step = fit_step(model, call, optimizer, scheduler, train, amp)

    start = time.perf_counter()
    for _ in range(args.warmup):
        for b in batches:
            step(b)
    sync(device)
    warmup_s = time.perf_counter() - start
    times, losses = [], []
    for i in range(args.steps):
        b = batches[i % len(batches)]
        if device.type == "cuda":
            t0, t1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            t0.record()
            losses.append(step(b))
            t1.record()
            t1.synchronize()
            times.append(t0.elapsed_time(t1) / 1000)
        else:
            t = time.perf_counter()
            losses.append(step(b))
            times.append(time.perf_counter() - t)
    graphs = counters["stats"]["unique_graphs"]
    row = {"mode": mode, "static_shapes": static, "compiled": compiled,
           "step_ms": 1000 * statistics.median(times), "step_ms_p90": 1000 * sorted(times)[int(0.9 * (len(times) - 1))],
           "warmup_s": warmup_s, "distinct_shapes": len(shapes), "compiled_graphs": graphs,
           "graph_breaks": sum(counters["graph_break"].values()), "mean_loss": statistics.fmean(losses),
           **count_launches(step, batches, device, args.profile_steps)}
    row["recompiled_after_warmup"] = counters["stats"]["unique_graphs"] != graphs
    if device.type == "cuda":
        row["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
        torch.cuda.reset_peak_memory_stats(device)
    assert math.isfinite(row["mean_loss"])
    return row


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, CPU unless --device says otherwise")
    parser.add_argument("--device", default="", help="default: cuda if available (cpu with --smoke)")
    parser.add_argument("--config", default="quickstart")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--answers", type=int, default=30)
    parser.add_argument("--batch", type=int, default=0, help="default: the recipe's finetune.batch_size")
    parser.add_argument("--batches", type=int, default=8, help="distinct batches, text and spoken alternately")
    parser.add_argument("--warmup", type=int, default=3, help="passes over every batch before timing")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--profile-steps", type=int, default=8)
    parser.add_argument("--backend", default="", help="torch.compile's backend; default inductor "
                        "(aot_eager with --smoke: inductor's C++ compile alone takes minutes on 2 CPU cores)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's; 1 with --smoke)")
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)
    args.backend = args.backend or ("aot_eager" if args.smoke else "inductor")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        parser.error(f"--modes: {unknown} not among {', '.join(MODES)}")

    device = torch.device(args.device or ("cpu" if args.smoke or not torch.cuda.is_available() else "cuda"))
    if args.threads or args.smoke:
        torch.set_num_threads(args.threads or 1)
    if args.smoke:
        args.batch = args.batch or 4
        args.batches, args.warmup = min(args.batches, 4), min(args.warmup, 2)
        args.steps, args.profile_steps = min(args.steps, 4), min(args.profile_steps, 2)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{name}; torch {torch.__version__}; {'bf16 autocast' if device.type == 'cuda' else 'fp32'}; "
          f"{args.config}{' (smoke)' if args.smoke else ''}; compile backend {args.backend}")
    results = {"device": name, "torch": torch.__version__, "smoke": args.smoke, "config": args.config,
               "amp_bf16": device.type == "cuda", "backend": args.backend, "batches": args.batches, "warmup_passes": args.warmup,
               "steps": args.steps, "profile_steps": args.profile_steps,
               "issue": {"eager_step_ms": 42, "eager_kernel_launches": 2600, "bar_step_ms": 10}, "rows": []}
    launches = "kernel_launches_per_step" if device.type == "cuda" else "cpu_aten_ops_per_step"
    print(f"    {'mode':<16} {'step ms':>8} {'p90 ms':>8} {'warmup s':>9} {'shapes':>7} {'graphs':>7} "
          f"{'breaks':>7} {launches:>26}")
    for mode in modes:
        row = run_mode(mode, args, device)
        results["rows"].append(row)
        print(f"    {mode:<16} {row['step_ms']:>8.1f} {row['step_ms_p90']:>8.1f} {row['warmup_s']:>9.1f} "
              f"{row['distinct_shapes']:>7} {row['compiled_graphs']:>7} {row['graph_breaks']:>7} {row[launches]:>26.0f}"
              + (f"  graphs launched {row['graph_launches_per_step']:.0f}, GPU kernels {row['gpu_kernels_per_step']:.0f}"
                 if device.type == "cuda" else ""))
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1))
        print(f"\nwrote {args.json}")
    return results


if __name__ == "__main__":
    main()
