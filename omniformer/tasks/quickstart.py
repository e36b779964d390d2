"""``omniformer quickstart``: the whole story on built-in data, on a laptop-class CPU.

ShapesWorld (made if absent) → WordPiece tokenizer → multimodal pretraining → QA
fine-tuning → test-split evaluation → a results table and example answers, one asked by voice.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..config import RunConfig, save_config, to_dict
from .common import is_qa, samples_by_split
from .pipeline import ensure_data, evaluate, finetune, pretrain
from .qa import QAPredictor


def describe_setting(cfg: RunConfig) -> str:
    if not cfg.data.dataset:
        return f"your data ({cfg.data.manifest})"
    from ..registry import get_dataset
    return get_dataset(cfg.data.dataset).describe(cfg.data.dataset_options)


def run_quickstart(cfg: RunConfig, resume: bool = False) -> dict[str, Any]:
    start = time.perf_counter()
    print(f"omniformer quickstart: {describe_setting(cfg)}")
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")

    t = time.perf_counter()
    manifest = ensure_data(cfg)
    data_seconds = time.perf_counter() - t

    t = time.perf_counter()
    pretrained = pretrain(cfg, resume=resume and (out / "pretrain" / "last").exists())
    pretrain_seconds = time.perf_counter() - t

    t = time.perf_counter()
    qa_resume = resume and (out / "qa" / "last").exists()
    model_dir = finetune(cfg, init=pretrained, resume=qa_resume)
    finetune_seconds = time.perf_counter() - t

    result = evaluate(model_dir, manifest, "test")
    m = result.metrics
    total = time.perf_counter() - start

    print(f"\nResults on the test split ({result.samples} questions, each asked in text and by voice;")
    print("the test split's speech is half in a voice never heard in training):")
    rows = [("", "text", "spoken")]
    for key, label in [("non_relational", "non-relational"), ("relational", "relational"), ("accuracy", "all")]:
        rows.append((label, f"{100 * m.get(f'text/{key}', float('nan')):.1f}%",
                     f"{100 * m.get(f'spoken/{key}', float('nan')):.1f}%"))
    families = sorted({k.split("/")[-1] for k in m if "/family/" in k})
    for fam in families:
        rows.append((f"  {fam}", f"{100 * m.get(f'text/family/{fam}', float('nan')):.1f}%",
                     f"{100 * m.get(f'spoken/family/{fam}', float('nan')):.1f}%"))
    for label, a, b in rows:
        print(f"  {label:<22}{a:>9}{b:>9}")
    if "spoken/held_out_voice" in m:
        print(f"  spoken, held-out voice: {100 * m['spoken/held_out_voice']:.1f}%   "
              f"seen voices: {100 * m.get('spoken/non_held_out_voice', float('nan')):.1f}%")

    predictor = QAPredictor.load(model_dir)
    test = samples_by_split(manifest, is_qa)["test"]
    examples = []
    picks = [s for s in test if s.get("meta", {}).get("relational")][:2] + \
            [s for s in test if not s.get("meta", {}).get("relational")][:1]
    print("\nExample answers:")
    for i, sample in enumerate(picks):
        spoken = i == len(picks) - 1 and sample.get("question_audio")
        image = manifest.parent / sample["image"]
        if spoken:
            audio = manifest.parent / sample["question_audio"]
            top = predictor.ask(image, audio=audio, top_k=3)
            asked = f"(asked by voice, {sample['question_audio']}) \"{sample['question']}\""
        else:
            top = predictor.ask(image, question=sample["question"], top_k=3)
            asked = f"\"{sample['question']}\""
        print(f"  {sample['image']}: {asked}")
        print("     -> " + ", ".join(f"{a} {p:.0%}" for a, p in top) + f"   (true: {sample['answer']})")
        examples.append({"image": sample["image"], "question": sample["question"], "spoken": bool(spoken),
                         "answer": sample["answer"], "predicted": top})

    print(f"\nDone in {total / 60:.1f} min (data {data_seconds:.0f} s, pretraining {pretrain_seconds:.0f} s, "
          f"fine-tuning {finetune_seconds:.0f} s). Model: {model_dir}")
    print(f"Ask it yourself: omniformer ask --model {model_dir} --image {manifest.parent / picks[0]['image']} "
          f"--question \"{picks[0]['question']}\"")
    return {"setting": describe_setting(cfg), "config": to_dict(cfg), "model": str(model_dir),
            "metrics": m, "test_questions": result.samples, "examples": examples,
            "seconds": {"total": total, "data": data_seconds, "pretrain": pretrain_seconds,
                        "finetune": finetune_seconds}}
