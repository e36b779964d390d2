"""The main job as functions: data → tokenizer → pretrain → fine-tune QA → evaluate.

``omniformer pretrain|finetune|evaluate|quickstart`` are thin wrappers over these.
"""
from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import RunConfig, to_dict
from ..data.batching import MultimodalDataset, collate
from ..data.text import Tokenizer
from ..train import checkpoint as ckpt
from ..train.loop import fit, resolve_device, seed_everything
from .common import audio_preprocessor, build_tokenizer, image_preprocessor, is_caption, is_qa, samples_by_split
from .pretrain import PretrainingModel
from .qa.model import NAME as QA_TASK
from .qa.model import QAModel, evaluate_qa, qa_dataset


def ensure_data(cfg: RunConfig, progress: bool = True) -> Path:
    """The manifest to train on: the configured one, or ShapesWorld (made if absent)."""
    if cfg.data.manifest:
        path = Path(cfg.data.manifest)
        if not path.is_file():
            raise FileNotFoundError(f"data.manifest: {path} does not exist")
        return path
    from ..data.shapes import generate_shapes
    out = Path(cfg.data.shapes_dir)
    manifest, info = out / "manifest.jsonl", out / "info.json"
    if manifest.is_file() and info.is_file():
        made_with = json.loads(info.read_text()).get("config", {})
        if made_with == to_dict(cfg.data.shapes):
            return manifest
        raise FileExistsError(f"{out} holds ShapesWorld made with other settings ({made_with}); "
                              f"choose another data.shapes_dir or delete it")
    # Generation runs in processes of its own, whatever the training loader's worker count; its
    # output is the same for any number of them, so every core takes a share.
    return generate_shapes(out, cfg.data.shapes, workers=os.cpu_count() or 1, progress=progress)


def answer_vocabulary(samples: list[dict]) -> list[str]:
    return sorted({s["answer"] for s in samples if s.get("answer") is not None})


def in_curriculum(sample: dict, cfg: RunConfig) -> bool:
    """Whether a QA sample's family is one the fine-tuning curriculum starts with."""
    return bool(cfg.finetune.curriculum_steps) and sample.get("meta", {}).get("family") in cfg.finetune.curriculum_families


def question_modes(samples: list[dict], cfg: RunConfig) -> tuple[list[str], list[str]]:
    """How each training question is asked, "text" or "audio" (a ``cfg.spoken_fraction`` of
    those with a recording by voice), and what its sample carries: the same, except that a
    ``cfg.spotter_overhears`` share of those asked in text bring their recording too ("both"),
    for the word spotter alone. With a curriculum, only questions of its families do: the
    spotter learns the words while the head learns to bind them, at the cost of one spotter
    pass on those batches instead of on every text batch."""
    rng, overhear = random.Random(cfg.finetune.seed), random.Random(cfg.finetune.seed + 1)
    asked = ["audio" if s.get("question_audio") and rng.random() < cfg.spoken_fraction else "text" for s in samples]
    # No spotter to train, or no question asked by voice for it to hear: nothing overheard.
    share = cfg.spotter_overhears if cfg.spoken_words > 0 and cfg.spoken_fraction > 0 else 0.0

    def overheard(sample: dict, way: str) -> bool:
        in_scope = not cfg.finetune.curriculum_steps or in_curriculum(sample, cfg)
        return way == "text" and bool(sample.get("question_audio")) and overhear.random() < share and in_scope

    carried = ["both" if overheard(s, way) else way for s, way in zip(samples, asked)]
    return asked, carried


def meta_for(task: str, cfg: RunConfig, **extra: Any) -> dict[str, Any]:
    return {"task": task, "config": to_dict(cfg), "omniformer_format": 1, **extra}


def pretrain(cfg: RunConfig, resume: bool = False, progress: bool = True) -> Path:
    """Pretrain on caption samples (image + text + speech); returns the checkpoint folder."""
    seed_everything(cfg.pretrain.seed)
    manifest = ensure_data(cfg, progress)
    splits = samples_by_split(manifest, is_caption)
    if not splits["train"]:
        raise ValueError(f"{manifest}: no training samples with text to pretrain on")
    out = Path(cfg.out_dir) / "pretrain"
    if resume:
        tokenizer = Tokenizer.load(ckpt.find_checkpoint(out / "last") / ckpt.TOKENIZER)
    else:
        all_train = samples_by_split(manifest)["train"]  # questions too: fine-tuning shares the vocabulary
        tokenizer = build_tokenizer(cfg.data, all_train)
    cfg.model.vocab_size = tokenizer.vocab_size
    model = PretrainingModel(cfg.model, cfg.objectives, tokenizer.special_ids, tokenizer.mask_id)
    train_set = MultimodalDataset(manifest, splits["train"], tokenizer=tokenizer,
                                  image=image_preprocessor(cfg.model, cfg.data.augment),
                                  audio=audio_preprocessor(cfg.model, cfg.data),
                                  text_max_len=cfg.model.text.max_len)
    val_set = MultimodalDataset(manifest, splits["val"][:512], tokenizer=tokenizer,
                                image=image_preprocessor(cfg.model, False), audio=audio_preprocessor(cfg.model),
                                text_max_len=cfg.model.text.max_len)
    device = resolve_device(cfg.pretrain.device)

    @torch.no_grad()
    def evaluate(m: PretrainingModel) -> dict[str, float]:
        if len(val_set) == 0:
            return {}
        m.eval()
        gen_state = torch.get_rng_state()
        torch.manual_seed(0)  # the same masks every evaluation, and training's stream untouched
        sums: dict[str, float] = {}
        loader = torch.utils.data.DataLoader(val_set, batch_size=cfg.pretrain.batch_size, collate_fn=collate)
        n = 0
        for batch in loader:
            out = m({k: v.to(device) for k, v in batch.items()})
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            n += 1
        torch.set_rng_state(gen_state)
        metrics = {k: v / n for k, v in sums.items()}
        metrics["score"] = -metrics["loss"]
        return metrics

    fit(model, train_set, cfg.pretrain, out, collate_fn=collate, meta=meta_for("pretrain", cfg), tokenizer=tokenizer,
        lengths=train_set.lengths(), evaluate=evaluate, resume=resume, name="pretrain")
    return out / "last"


def finetune(cfg: RunConfig, init: str | Path | None = None, resume: bool = False,
             progress: bool = True) -> Path:
    """Fine-tune QA from a pretrained checkpoint (``init``) or from scratch; returns the best checkpoint."""
    seed_everything(cfg.finetune.seed)
    manifest = ensure_data(cfg, progress)
    splits = samples_by_split(manifest, is_qa)
    if not splits["train"]:
        raise ValueError(f"{manifest}: no training samples with a question and an answer")
    answers = answer_vocabulary(splits["train"] + splits["val"] + splits["test"])
    out = Path(cfg.out_dir) / "qa"
    if resume:
        tokenizer = Tokenizer.load(ckpt.find_checkpoint(out / "last") / ckpt.TOKENIZER)
    elif init is not None:
        tokenizer = Tokenizer.load(ckpt.find_checkpoint(init) / ckpt.TOKENIZER)
    else:
        tokenizer = build_tokenizer(cfg.data, samples_by_split(manifest)["train"])
    cfg.model.vocab_size, cfg.model.num_answers = tokenizer.vocab_size, len(answers)
    model = QAModel(cfg.model, len(answers), spoken_words=cfg.spoken_words, grounding=cfg.grounding)
    if init is not None and not resume:
        model.load_pretrained(init)

    train = splits["train"]
    if cfg.label_fraction < 1:
        keep = max(1, round(len(train) * cfg.label_fraction))
        train = random.Random(cfg.finetune.seed).sample(train, keep)
    asked, modes = question_modes(train, cfg)
    train_set = qa_dataset(manifest, train, cfg, tokenizer, answers, modes, train=True,
                           transcripts=cfg.spoken_words > 0)
    val = splits["val"]
    if cfg.finetune.eval_batches:
        val = val[: cfg.finetune.eval_batches * cfg.finetune.batch_size]
    device = resolve_device(cfg.finetune.device)

    def evaluate(m: QAModel) -> dict[str, float]:
        ways = ("text", "audio") if cfg.spoken_fraction > 0 else ("text",)
        return evaluate_qa(m, manifest, val, cfg, tokenizer, answers, ways=ways, workers=cfg.finetune.workers,
                           device=device)

    meta = meta_for(QA_TASK, cfg, answers=answers, init=str(init) if init else None,
                    model_id=f"omniformer-qa-{Path(cfg.out_dir).name}")
    # The curriculum's questions are asked in text: speech joins once words are bound to objects.
    curriculum = [i for i, (s, way) in enumerate(zip(train, asked))
                  if way == "text" and in_curriculum(s, cfg)] if cfg.finetune.curriculum_steps else None
    # Bucket keys: equal keys keep their shuffled order, so "modality" batches are otherwise random.
    lengths = train_set.lengths() if cfg.finetune.bucket == "length" else [("text", "audio", "both").index(m) for m in modes]
    fit(model, train_set, cfg.finetune, out, collate_fn=collate, meta=meta, tokenizer=tokenizer,
        lengths=lengths, evaluate=evaluate if val else None, resume=resume, name="finetune",
        curriculum=curriculum)
    return out / "best"


@dataclass
class Evaluation:
    metrics: dict[str, float]
    split: str
    samples: int
    seconds: float


def evaluate(model_dir: str | Path, manifest: str | Path | None = None, split: str = "test",
             ways: tuple[str, ...] = ("text", "audio"), device: str = "auto", workers: int = 0) -> Evaluation:
    """Accuracy of a QA checkpoint on a split of its manifest (or another manifest); ``workers``
    processes read and preprocess the samples (0: this one)."""
    from .qa.model import QAPredictor
    predictor = QAPredictor.load(model_dir, device=str(resolve_device(device)))
    cfg = predictor.cfg
    manifest = Path(manifest) if manifest else ensure_data(cfg, progress=False)
    samples = samples_by_split(manifest, is_qa)[split]
    if not samples:
        raise ValueError(f"{manifest}: no QA samples in split {split!r}")
    start = time.perf_counter()
    metrics = evaluate_qa(predictor.model, manifest, samples, cfg, predictor.tokenizer, predictor.answers, ways=ways,
                          workers=workers, device=next(predictor.model.parameters()).device)
    return Evaluation(metrics, split, len(samples), time.perf_counter() - start)
