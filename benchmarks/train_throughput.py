"""Training throughput of Omniformer against Hugging Face transformers at the same configuration.

    python benchmarks/train_throughput.py [--cases a,b] [--reps 5] [--steps 3] [--threads 2] [--json out.json]

(a) text-only masked language modelling at a BERT-like shape: 4 layers, width 256, 4 heads,
    FFN 1024, vocabulary 8000, 32 full sequences of 128 tokens (no padding, as in packed BERT
    pretraining), float32. HF ``BertForMaskedLM`` (SDPA attention, its default) against
    Omniformer's ``PretrainingModel`` with only the MLM objective, modalities [text],
    tower_depth 0, depth 4, **post-LN** like BERT (eps 1e-12, exact GELU). Both mask with
    ``omniformer.objectives.mask_tokens`` (15%, 80/10/10); dropout 0.1 on hidden states, 0 on
    attention probabilities, on both. Omniformer projects onto the vocabulary only at masked
    positions; BERT projects every position (its own forward).
(b) image + text QA at a ViLT-base shape with a reduced image: 12 layers, width 768, 12 heads,
    FFN 3072 (``--vilt-*`` to change), images 192x192 in 32-pixel patches (36 patches), 40 text
    slots holding questions of 6..20 tokens (uniform; VQA questions are ~9 tokens with
    [CLS]/[SEP]), vocabulary 30522, 3129 answers, batch 16, dropout 0 (ViLT's default).
    HF ``ViltForQuestionAnswering`` (soft-label BCE, its own loss) against Omniformer's
    ``QAModel`` (pre-LN, patch stem, cross-entropy).

Every step is forward + backward + AdamW step + zero_grad; both sides use
``torch.optim.AdamW(fused=True)`` (the default of HF's Trainer since torch 2.8, and what
``omniformer.train.optim`` builds on CPU and CUDA). Timing: ``--warmup`` steps per model first,
then ``--reps`` repetitions that alternate the two models (ABBA order) with ``--steps`` steps
each; the figure is the median over repetitions of the mean step time.

FLOPs: *executed* FLOPs of one training step per model are counted with
``torch.utils.flop_counter`` (matmuls, convolutions, SDPA incl. the CPU flash kernel); achieved
GFLOP/s = executed FLOPs / step time. *Useful* FLOPs, the same for both sides, are
6 x matmul parameters x tokens + 12 x layers x width x (attended length) x tokens, with the
MLM vocabulary projection counted on masked positions only and padding not counted. The matmul
ceiling is ``torch.mm`` on this machine at the layer shapes.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils import flop_counter as fc

from omniformer.config import ImageConfig, ModelConfig, ObjectiveConfig, TextConfig
from omniformer.objectives import mask_tokens
from omniformer.train.optim import adamw_speed_kwargs
from common import write_json

SPECIALS = [0, 1, 2, 3, 4]  # pad, unk, [CLS], [SEP], [MASK]
MASK_ID = 4

_aten = torch.ops.aten
SDPA_FLOPS = {  # the CPU flash kernel is not in torch's FLOP registry
    _aten._scaled_dot_product_flash_attention_for_cpu:
        lambda q, k, v, *a, out_shape=None, **kw: fc.sdpa_flop_count(q, k, v),
    _aten._scaled_dot_product_flash_attention_for_cpu_backward:
        lambda g, q, k, v, *a, out_shape=None, **kw: fc.sdpa_backward_flop_count(g, q, k, v),
}


@dataclass
class Side:
    name: str
    step: Callable[[int], None]     # one training step on batch i
    parameters: int
    flops: float = 0.0              # executed per step
    times: list[float] = field(default_factory=list)


@dataclass
class Case:
    key: str
    title: str
    samples: int                    # per step
    tokens: float                   # real tokens per step (mean over batches)
    useful_flops: float             # per step, the same for both sides
    sides: list[Side]
    notes: str = ""


def count_flops(step: Callable[[int], None]) -> float:
    with fc.FlopCounterMode(display=False, custom_mapping=SDPA_FLOPS) as counter:
        step(0)
    return float(counter.get_total_flops())


def matmul_params(model: torch.nn.Module, skip: tuple[str, ...] = ()) -> int:
    """Weights of Linear layers (the per-token matmuls), minus the names in ``skip``."""
    return sum(m.weight.numel() for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and not any(s in name for s in skip))


def make_optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, **adamw_speed_kwargs("cpu"))


def train_step(model, optimizer, loss_fn):
    loss = loss_fn()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


# ---------------------------------------------------------------------------------------------
# (a) BERT-like masked language modelling
# ---------------------------------------------------------------------------------------------

def case_mlm(args) -> Case:
    import transformers
    from omniformer.tasks.pretrain import PretrainingModel

    B, S, V, W, L, H, FF = args.mlm_batch, args.mlm_seq, 8000, 256, 4, 4, 1024
    gen = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(4):
        ids = torch.randint(len(SPECIALS), V, (B, S), generator=gen)
        batches.append({"text": ids, "text_mask": torch.ones(B, S, dtype=torch.bool), "index": torch.arange(B)})

    torch.manual_seed(0)
    cfg = ModelConfig(width=W, depth=L, tower_depth=0, heads=H, mlp_ratio=FF / W, dropout=0.1, attn_dropout=0.0,
                      norm=args.mlm_norm, layer_norm_eps=1e-12, activation="gelu", vocab_size=V,
                      modalities=["text"], text=TextConfig(max_len=S))
    omni = PretrainingModel(cfg, ObjectiveConfig(mlm=1.0, matching=0.0, contrastive=0.0, masked_patch=0.0),
                            SPECIALS, MASK_ID).train()
    hf_cfg = transformers.BertConfig(vocab_size=V, hidden_size=W, num_hidden_layers=L, num_attention_heads=H,
                                     intermediate_size=FF, max_position_embeddings=S, hidden_dropout_prob=0.1,
                                     attention_probs_dropout_prob=0.0, layer_norm_eps=1e-12)
    hf = transformers.BertForMaskedLM(hf_cfg).train()
    omni_fwd = torch.compile(omni) if args.compile else omni
    o_opt, h_opt = make_optimizer(omni), make_optimizer(hf)

    def omni_step(i):
        train_step(omni, o_opt, lambda: omni_fwd(batches[i % len(batches)])["loss"])

    def hf_step(i):
        b = batches[i % len(batches)]
        ids, labels = mask_tokens(b["text"], b["text_mask"], V, SPECIALS, 0.15, mask_id=MASK_ID)
        train_step(hf, h_opt, lambda: hf(input_ids=ids, attention_mask=b["text_mask"].long(), labels=labels).loss)

    # Useful FLOPs: encoder matmuls on every token, the MLM head (dense + vocabulary) on the 15% masked.
    tokens = B * S
    body = matmul_params(omni.backbone)
    head = matmul_params(omni.mlm_head)
    useful = 6 * body * tokens + 6 * head * 0.15 * tokens + 12 * L * W * S * tokens
    return Case("a", f"MLM, BERT-like: {L} layers, width {W}, {H} heads, FFN {FF}, vocab {V}, seq {S}, batch {B}, "
                     f"fp32; Omniformer {args.mlm_norm}-LN",
                B, tokens, useful,
                [Side("hf BertForMaskedLM", hf_step, sum(p.numel() for p in hf.parameters())),
                 Side("omniformer" + (" (compiled)" if args.compile else ""), omni_step,
                      sum(p.numel() for p in omni.parameters()))],
                notes="no padding; Omniformer adds its fusion [CLS] (129 positions); tokens = 128 x batch")


# ---------------------------------------------------------------------------------------------
# (b) ViLT-like image + text question answering
# ---------------------------------------------------------------------------------------------

def case_vqa(args) -> Case:
    import transformers
    from omniformer.tasks.qa import QAModel

    B, T, V, A = args.vqa_batch, 40, 30522, 3129
    W, L, H, FF, I, P = args.vilt_width, args.vilt_depth, args.vilt_heads, 4 * args.vilt_width, args.image, 32
    gen = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(4):
        lengths = torch.randint(6, 21, (B,), generator=gen)
        mask = torch.arange(T)[None] < lengths[:, None]
        ids = torch.randint(len(SPECIALS), V, (B, T), generator=gen).masked_fill(~mask, 0)
        answers = torch.randint(0, A, (B,), generator=gen)
        batches.append({"text": ids, "text_mask": mask, "image": torch.randn(B, 3, I, I, generator=gen),
                        "answer": answers, "labels": F.one_hot(answers, A).float(),
                        "pixel_mask": torch.ones(B, I, I, dtype=torch.long)})

    torch.manual_seed(0)
    cfg = ModelConfig(width=W, depth=L, tower_depth=0, heads=H, mlp_ratio=4.0, dropout=0.0, attn_dropout=0.0,
                      norm="pre", layer_norm_eps=1e-12, activation="gelu", vocab_size=V,
                      modalities=["text", "image"], text=TextConfig(max_len=T),
                      image=ImageConfig(size=I, patch_size=P, stem="patch"))
    omni = QAModel(cfg, A).train()
    hf_cfg = transformers.ViltConfig(vocab_size=V, hidden_size=W, num_hidden_layers=L, num_attention_heads=H,
                                     intermediate_size=FF, image_size=I, patch_size=P, max_position_embeddings=T,
                                     num_labels=A, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    hf = transformers.ViltForQuestionAnswering(hf_cfg).train()
    omni_fwd = torch.compile(omni) if args.compile else omni
    o_opt, h_opt = make_optimizer(omni), make_optimizer(hf)

    def omni_step(i):
        b = batches[i % len(batches)]
        train_step(omni, o_opt, lambda: omni_fwd({k: b[k] for k in ("text", "text_mask", "image", "answer")})["loss"])

    def hf_step(i):
        b = batches[i % len(batches)]
        train_step(hf, h_opt, lambda: hf(input_ids=b["text"], attention_mask=b["text_mask"].long(),
                                         pixel_values=b["image"], pixel_mask=b["pixel_mask"],
                                         labels=b["labels"]).loss)

    n_patch = (I // P) ** 2
    text_tokens = statistics.mean(float(b["text_mask"].sum()) for b in batches)
    tokens = text_tokens + B * n_patch
    seq = tokens / B + 1  # the attended length per sample: real tokens + [CLS]
    per_token = matmul_params(omni.backbone.fusion)
    patch_macs = omni.backbone.embedders["image"].stem.weight.numel()  # per patch
    head = matmul_params(omni.answer_head)
    useful = (6 * per_token * (tokens + B) + 6 * patch_macs * B * n_patch + 6 * head * B
              + 12 * L * W * seq * (tokens + B))
    return Case("b", f"VQA, ViLT-like: {L} layers, width {W}, {H} heads, FFN {FF}, image {I} / patch {P} "
                     f"({n_patch} patches) + {T} text slots, vocab {V}, {A} answers, batch {B}, fp32",
                B, tokens, useful,
                [Side("hf ViltForQuestionAnswering", hf_step, sum(p.numel() for p in hf.parameters())),
                 Side("omniformer" + (" (compiled)" if args.compile else ""), omni_step,
                      sum(p.numel() for p in omni.parameters()))],
                notes="questions of 6..20 tokens padded to 40; tokens = real text tokens + patches")


# ---------------------------------------------------------------------------------------------

def matmul_rate(shapes: list[tuple[int, int, int]], repeats: int = 5) -> float:
    """Best-of GFLOP/s of fp32 ``torch.mm`` over ``shapes`` (m, k, n), summed."""
    mats = [(torch.randn(m, k), torch.randn(k, n)) for m, k, n in shapes]
    flops = sum(2 * m * k * n for m, k, n in shapes)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for a, b in mats:
            torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return flops / best / 1e9


def run_case(case: Case, args) -> None:
    for side in case.sides:
        for i in range(args.warmup):
            side.step(i)
        side.flops = count_flops(side.step)
    for rep in range(args.reps):
        order = case.sides if rep % 2 == 0 else case.sides[::-1]
        for side in order:
            start = time.perf_counter()
            for i in range(args.steps):
                side.step(i)
            side.times.append((time.perf_counter() - start) / args.steps)


def report(case: Case, mm_gflops: float) -> dict:
    rows = []
    print(f"\n({case.key}) {case.title}\n    {case.notes}")
    print(f"    {'model':<34} {'params':>8} {'step ms':>9} {'samples/s':>10} {'tokens/s':>9} "
          f"{'exec GFLOP':>10} {'GFLOP/s':>8} {'useful GFLOP/s':>14}")
    for side in case.sides:
        t = statistics.median(side.times)
        row = {"model": side.name, "parameters": side.parameters, "step_seconds": t,
               "step_seconds_all": side.times, "samples_per_second": case.samples / t,
               "tokens_per_second": case.tokens / t, "executed_gflop_per_step": side.flops / 1e9,
               "achieved_gflops": side.flops / t / 1e9, "useful_gflops": case.useful_flops / t / 1e9,
               "matmul_floor_seconds": side.flops / (mm_gflops * 1e9)}
        rows.append(row)
        print(f"    {side.name:<34} {side.parameters / 1e6:>7.1f}M {1000 * t:>9.1f} {row['samples_per_second']:>10.1f} "
              f"{row['tokens_per_second']:>9.0f} {side.flops / 1e9:>10.1f} {row['achieved_gflops']:>8.1f} "
              f"{row['useful_gflops']:>14.1f}")
    hf, omni = rows
    speedup = hf["step_seconds"] / omni["step_seconds"]
    print(f"    Omniformer / HF tokens/s: {speedup:.2f}x   (executed FLOPs ratio HF/Omniformer "
          f"{hf['executed_gflop_per_step'] / omni['executed_gflop_per_step']:.2f}; useful GFLOP/step "
          f"{case.useful_flops / 1e9:.1f})")
    return {"case": case.key, "title": case.title, "notes": case.notes, "samples_per_step": case.samples,
            "tokens_per_step": case.tokens, "useful_gflop_per_step": case.useful_flops / 1e9,
            "speedup": speedup, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="a,b")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="steps per repetition")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="torch.compile the Omniformer model")
    parser.add_argument("--mlm-norm", choices=["post", "pre"], default="post")
    parser.add_argument("--mlm-batch", type=int, default=32)
    parser.add_argument("--mlm-seq", type=int, default=128)
    parser.add_argument("--vqa-batch", type=int, default=16)
    parser.add_argument("--image", type=int, default=192)
    parser.add_argument("--vilt-width", type=int, default=768)
    parser.add_argument("--vilt-depth", type=int, default=12)
    parser.add_argument("--vilt-heads", type=int, default=12)
    parser.add_argument("--json", default="", help="write the results here")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    import transformers
    shapes = [(4096, 256, 1024), (4096, 1024, 256), (1232, 768, 3072), (1232, 3072, 768)]
    mm = matmul_rate(shapes)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {args.threads} threads, "
          f"{platform.processor() or platform.machine()}; fp32 torch.mm at layer shapes: {mm:.1f} GFLOP/s")
    results = {"torch": torch.__version__, "transformers": transformers.__version__, "threads": args.threads,
               "cpu": platform.processor() or platform.machine(), "matmul_gflops": mm, "reps": args.reps,
               "steps_per_rep": args.steps, "warmup": args.warmup, "compile": args.compile, "cases": []}
    builders = {"a": case_mlm, "b": case_vqa}
    for key in args.cases.split(","):
        case = builders[key.strip()](args)
        run_case(case, args)
        results["cases"].append(report(case, mm))
        del case
    write_json(args.json, results)


if __name__ == "__main__":
    main()
