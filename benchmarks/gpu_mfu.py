"""Training-step MFU on one GPU: Omniformer and Hugging Face at BERT-base and ViLT-base shapes.

    python benchmarks/gpu_mfu.py [--compile] [--cases bert,vilt] [--steps 10] [--json out.json]
    python benchmarks/gpu_mfu.py --smoke      # tiny shapes on CPU, fp32: checks the script runs

Cases (batch and shapes as in the two papers' pretraining/fine-tuning set-ups):

* bert: MLM, 12 layers, width 768, 12 heads, FFN 3072, vocabulary 30522, batch 64 x 512 tokens
  (no padding), 15% masking (``omniformer.objectives.mask_tokens``). HF ``BertForMaskedLM``
  (SDPA) against Omniformer's ``PretrainingModel`` (MLM only, text only, tower_depth 0, post-LN).
* vilt: VQA, the same encoder shape, image 384 in 32-pixel patches (144 patches) + 40 text slots
  (questions of 6..20 tokens), vocabulary 30522, 3129 answers, batch 128. HF
  ``ViltForQuestionAnswering`` (eager attention: ViLT has no SDPA path in transformers) against
  Omniformer's ``QAModel`` (pre-LN, patch stem).

Each step: bf16 autocast forward, backward, fused AdamW step, zero_grad; ``--warmup`` steps,
then ``--steps`` timed with CUDA events. Dropout 0.1 (BERT) / 0 (ViLT) on both sides.

MFU = useful FLOPs per step / step time / the bf16 matmul ceiling measured here (best of
``torch.mm`` at 8192^3). Useful FLOPs per token = 6 x (matmul parameters) + 12 x layers x
width x sequence length, counting the MLM head (its dense layer and the vocabulary
projection) on masked positions only, the patch projection per patch and the QA head per
sample; padding tokens are not useful. The same useful FLOPs are charged to both libraries, so
HF's projection of every position onto the vocabulary is work it does that earns it nothing.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F

from omniformer.config import ImageConfig, ModelConfig, ObjectiveConfig, TextConfig
from omniformer.objectives import mask_tokens
from omniformer.train.optim import adamw_speed_kwargs

SPECIALS, MASK_ID = [0, 1, 2, 3, 4], 4

FULL = dict(width=768, depth=12, heads=12, vocab=30522, bert_batch=64, seq=512, vilt_batch=128, image=384, patch=32,
            text=40, answers=3129)
SMOKE = dict(width=64, depth=2, heads=4, vocab=500, bert_batch=4, seq=32, vilt_batch=4, image=64, patch=32,
             text=12, answers=17)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_ceiling(device: torch.device, dtype: torch.dtype, n: int) -> float:
    """Best-of TFLOP/s of ``torch.mm`` at n x n x n."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        torch.mm(a, b)
    best = 0.0
    for _ in range(5):
        sync(device)
        start, reps = time.perf_counter(), 10
        for _ in range(reps):
            torch.mm(a, b)
        sync(device)
        best = max(best, 2 * n ** 3 * reps / (time.perf_counter() - start) / 1e12)
    return best


def linear_params(module: torch.nn.Module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Linear))


def make_step(model, forward: Callable[[int], torch.Tensor], device, amp: bool, compile_: bool):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, **adamw_speed_kwargs(device))
    ctx = (lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)) if amp else contextlib.nullcontext

    def step(i: int) -> None:
        with ctx():
            loss = forward(i)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def bert_case(s: dict, device, amp: bool, compile_: bool):
    import transformers
    from omniformer.tasks.pretrain import PretrainingModel

    B, S, V, W, L, H = s["bert_batch"], s["seq"], s["vocab"], s["width"], s["depth"], s["heads"]
    g = torch.Generator().manual_seed(0)
    batches = [{"text": torch.randint(len(SPECIALS), V, (B, S), generator=g).to(device),
                "text_mask": torch.ones(B, S, dtype=torch.bool, device=device),
                "index": torch.arange(B, device=device)} for _ in range(2)]
    cfg = ModelConfig(width=W, depth=L, tower_depth=0, heads=H, dropout=0.1, attn_dropout=0.0, norm="post",
                      layer_norm_eps=1e-12, vocab_size=V, modalities=["text"], text=TextConfig(max_len=S))
    omni = PretrainingModel(cfg, ObjectiveConfig(mlm=1.0, matching=0.0, contrastive=0.0), SPECIALS, MASK_ID)
    omni = omni.to(device).train()
    hf = transformers.BertForMaskedLM(transformers.BertConfig(
        vocab_size=V, hidden_size=W, num_hidden_layers=L, num_attention_heads=H, intermediate_size=4 * W,
        max_position_embeddings=max(S, 512), attention_probs_dropout_prob=0.0, layer_norm_eps=1e-12)).to(device).train()
    o_fwd = torch.compile(omni) if compile_ else omni
    h_fwd = torch.compile(hf) if compile_ else hf

    def hf_forward(i):
        b = batches[i % 2]
        ids, labels = mask_tokens(b["text"], b["text_mask"], V, SPECIALS, 0.15, mask_id=MASK_ID)
        return h_fwd(input_ids=ids, attention_mask=b["text_mask"].long(), labels=labels).loss

    tokens = B * S
    useful = (6 * linear_params(omni.backbone) * tokens + 6 * linear_params(omni.mlm_head) * 0.15 * tokens
              + 12 * L * W * S * tokens)
    return {"title": f"BERT-base MLM: {L}x{W}, {H} heads, vocab {V}, batch {B} x {S}", "tokens": tokens,
            "samples": B, "useful_flops": useful,
            "sides": {"hf BertForMaskedLM": make_step(hf, hf_forward, device, amp, compile_),
                      "omniformer": make_step(omni, lambda i: o_fwd(batches[i % 2])["loss"], device, amp, compile_)}}


def vilt_case(s: dict, device, amp: bool, compile_: bool):
    import transformers
    from omniformer.tasks.qa import QAModel

    B, T, V, A, W, L, H, I, P = (s["vilt_batch"], s["text"], s["vocab"], s["answers"], s["width"], s["depth"],
                                 s["heads"], s["image"], s["patch"])
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(2):
        lengths = torch.randint(min(6, T), min(20, T) + 1, (B,), generator=g)
        mask = torch.arange(T)[None] < lengths[:, None]
        answers = torch.randint(0, A, (B,), generator=g)
        b = {"text": torch.randint(len(SPECIALS), V, (B, T), generator=g).masked_fill(~mask, 0), "text_mask": mask,
             "image": torch.randn(B, 3, I, I, generator=g), "answer": answers,
             "labels": F.one_hot(answers, A).float(), "pixel_mask": torch.ones(B, I, I, dtype=torch.long)}
        batches.append({k: v.to(device) for k, v in b.items()})
    cfg = ModelConfig(width=W, depth=L, tower_depth=0, heads=H, dropout=0.0, attn_dropout=0.0, norm="pre",
                      layer_norm_eps=1e-12, vocab_size=V, modalities=["text", "image"], text=TextConfig(max_len=T),
                      image=ImageConfig(size=I, patch_size=P, stem="patch"))
    omni = QAModel(cfg, A).to(device).train()
    hf = transformers.ViltForQuestionAnswering(transformers.ViltConfig(
        vocab_size=V, hidden_size=W, num_hidden_layers=L, num_attention_heads=H, intermediate_size=4 * W,
        image_size=I, patch_size=P, max_position_embeddings=T, num_labels=A, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0)).to(device).train()
    o_fwd = torch.compile(omni) if compile_ else omni
    h_fwd = torch.compile(hf) if compile_ else hf

    def omni_forward(i):
        b = batches[i % 2]
        return o_fwd({k: b[k] for k in ("text", "text_mask", "image", "answer")})["loss"]

    def hf_forward(i):
        b = batches[i % 2]
        return h_fwd(input_ids=b["text"], attention_mask=b["text_mask"].long(), pixel_values=b["image"],
                     pixel_mask=b["pixel_mask"], labels=b["labels"]).loss

    n_patch = (I // P) ** 2
    real = sum(float(b["text_mask"].sum()) for b in batches) / 2 + B * n_patch + B  # + [CLS]
    seq = real / B
    useful = (6 * linear_params(omni.backbone) * real + 6 * omni.backbone.embedders["image"].stem.weight.numel()
              * B * n_patch + 6 * linear_params(omni.answer_head) * B + 12 * L * W * seq * real)
    return {"title": f"ViLT-base VQA: {L}x{W}, {H} heads, image {I}/{P} ({n_patch} patches) + {T} text, "
                     f"batch {B}", "tokens": real, "samples": B, "useful_flops": useful,
            "sides": {"hf ViltForQuestionAnswering": make_step(hf, hf_forward, device, amp, compile_),
                      "omniformer": make_step(omni, omni_forward, device, amp, compile_)}}


def time_steps(step, device, warmup: int, steps: int) -> list[float]:
    for i in range(warmup):
        step(i)
    sync(device)
    times = []
    for i in range(steps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step(i)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            t = time.perf_counter()
            step(i)
            times.append(time.perf_counter() - t)
    return times


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, CPU unless --device says otherwise")
    parser.add_argument("--device", default="", help="default: cuda if available (cpu with --smoke)")
    parser.add_argument("--cases", default="bert,vilt")
    parser.add_argument("--compile", action="store_true", help="torch.compile both sides")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)

    device = torch.device(args.device or ("cpu" if args.smoke or not torch.cuda.is_available() else "cuda"))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    shapes = SMOKE if args.smoke else FULL
    amp = device.type == "cuda"
    if args.smoke:
        args.warmup, args.steps = min(args.warmup, 1), min(args.steps, 2)
    peak = matmul_ceiling(device, torch.bfloat16 if amp else torch.float32, 8192 if device.type == "cuda" else 256)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{name}; torch {torch.__version__}; {'bf16 autocast' if amp else 'fp32'}; compile {args.compile}; "
          f"matmul ceiling {peak:.1f} TFLOP/s")
    results = {"device": name, "torch": torch.__version__, "amp_bf16": amp, "compile": args.compile,
               "matmul_ceiling_tflops": peak, "smoke": args.smoke, "cases": []}
    builders = {"bert": bert_case, "vilt": vilt_case}
    for key in args.cases.split(","):
        torch.manual_seed(0)
        case = builders[key.strip()](shapes, device, amp, args.compile)
        print(f"\n{case['title']}  (useful {case['useful_flops'] / 1e12:.2f} TFLOP/step)")
        print(f"    {'model':<30} {'step ms':>9} {'samples/s':>10} {'tokens/s':>10} {'TFLOP/s':>8} {'MFU':>6}")
        rows = []
        for side, step in list(case["sides"].items()):
            times = time_steps(step, device, args.warmup, args.steps)
            t = statistics.median(times)
            tflops = case["useful_flops"] / t / 1e12
            row = {"model": side, "step_seconds": t, "step_seconds_all": times, "samples_per_second": case["samples"] / t,
                   "tokens_per_second": case["tokens"] / t, "useful_tflops": tflops, "mfu": tflops / peak}
            if device.type == "cuda":
                row["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
                torch.cuda.reset_peak_memory_stats(device)
            rows.append(row)
            print(f"    {side:<30} {1000 * t:>9.1f} {row['samples_per_second']:>10.1f} {row['tokens_per_second']:>10.0f} "
                  f"{tflops:>8.1f} {100 * row['mfu']:>5.1f}%")
            del case["sides"][side], step  # free this side's model before the next one runs
            if device.type == "cuda":
                torch.cuda.empty_cache()
        results["cases"].append({"case": key, "title": case["title"], "useful_tflop_per_step": case["useful_flops"] / 1e12,
                                 "rows": rows})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
        print(f"\nwrote {args.json}")
    return results


if __name__ == "__main__":
    main()
