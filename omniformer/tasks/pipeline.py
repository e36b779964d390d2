"""The main job as functions: data → tokenizer → pretrain → fine-tune QA → evaluate.

``omniformer pretrain|finetune|evaluate|quickstart`` are thin wrappers over these.
"""
from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import torch

from ..config import ConfigError, RunConfig, TrainConfig, to_dict
from ..data.batching import MultimodalDataset, collate
from ..data.manifest import manifest_exists
from ..data.text import Tokenizer
from ..train import checkpoint as ckpt
from ..train.loop import Curriculum, fit, resolve_device, seed_everything
from .base import Evaluation
from .common import audio_preprocessor, build_tokenizer, image_preprocessor, is_caption, is_qa, samples_by_split
from .pretrain import PretrainingModel
from .qa.model import NAME as QA_TASK
from .qa.config import QAConfig
from .qa.model import QAModel, evaluate_qa, load_transcriber, qa_config, qa_dataset


def ensure_data(cfg: RunConfig, progress: bool = True) -> Path:
    """The manifest to train on; a built-in dataset (``data.dataset``) writes it when absent."""
    if not cfg.data.manifest:
        raise ConfigError("data.manifest: not set; give the JSON Lines manifest of your data "
                          "(--data.manifest=PATH; docs/own-data.md) or start from a recipe that has one")
    path = Path(cfg.data.manifest)
    if cfg.data.dataset:
        from ..registry import get_dataset
        from ..train.distributed import main_first
        with main_first():  # under torchrun, rank 0 writes it and the others find it made
            return get_dataset(cfg.data.dataset).make(path, cfg.data.dataset_options, progress=progress)
    if not manifest_exists(path):  # a manifest file or a shard folder
        raise FileNotFoundError(f"data.manifest: {path} does not exist")
    return path


def answer_vocabulary(samples: list[dict]) -> list[str]:
    return sorted({s["answer"] for s in samples if s.get("answer") is not None})


def question_modes(samples: list[dict], cfg: RunConfig, task: QAConfig) -> tuple[list[str], list[str]]:
    """How each training question is asked, "text" or "audio" (a ``task.spoken_fraction`` of
    those with a recording by voice), and what its sample carries: the same, except that a
    ``task.spotter_overhears`` share of those asked in text bring their recording too ("both"),
    for the word spotter alone. With a curriculum, only questions of its families do: the
    spotter learns the words while the head learns to bind them, at the cost of one spotter
    pass on those batches instead of on every text batch."""
    rng, overhear = random.Random(cfg.finetune.seed), random.Random(cfg.finetune.seed + 1)
    asked = ["audio" if s.get("question_audio") and rng.random() < task.spoken_fraction else "text" for s in samples]
    # No spotter to train, or no question asked by voice for it to hear: nothing overheard.
    share = task.spotter_overhears if task.word_spotting > 0 and task.spoken_fraction > 0 else 0.0

    def overheard(sample: dict, way: str) -> bool:
        in_scope = not task.curriculum.steps or task.curriculum.admits(sample)
        return way == "text" and bool(sample.get("question_audio")) and overhear.random() < share and in_scope

    carried = ["both" if overheard(s, way) else way for s, way in zip(samples, asked)]
    return asked, carried


def validation_sample(samples: list[dict], cfg: TrainConfig) -> list[dict]:
    """What periodic evaluation scores: the whole split, or ``cfg.eval_batches`` batches drawn
    across all of it (seeded, in manifest order), never just its first lines."""
    n = cfg.eval_batches * cfg.batch_size
    if not cfg.eval_batches or n >= len(samples):
        return samples
    return [samples[i] for i in sorted(random.Random(cfg.seed).sample(range(len(samples)), n))]


def pretraining_samples(manifest: Path) -> dict[str, list[dict]]:
    """Samples to pretrain on, by split: those with a caption (``text``); if there are none, the
    questions read as captions, their recordings as speech (a QA manifest is text and media too)."""
    splits = samples_by_split(manifest, is_caption)
    if splits["train"]:
        return splits
    as_captions = {split: [{**{k: v for k, v in s.items() if k not in ("question", "question_audio", "answer")},
                            "text": s["question"], **({"audio": s["question_audio"]} if s.get("question_audio") else {})}
                           for s in samples if s.get("question")]
                   for split, samples in samples_by_split(manifest).items()}
    if not as_captions["train"]:
        raise ValueError(f"{manifest}: nothing to pretrain on: pretraining reads text (a caption in 'text', or a "
                         f"'question') with any image or audio beside it, and no training sample has either")
    return as_captions


def meta_for(task: str, cfg: RunConfig, **extra: Any) -> dict[str, Any]:
    return {"task": task, "config": to_dict(cfg), "omniformer_format": 1, **extra}


def pretrain(cfg: RunConfig, resume: bool = False, progress: bool = True) -> Path:
    """Pretrain on the manifest's captions (text with its image and speech), or, in a manifest
    without captions, on its questions as text (with their image and recording); returns the
    checkpoint folder."""
    seed_everything(cfg.pretrain.seed)
    manifest = ensure_data(cfg, progress)
    splits = pretraining_samples(manifest)
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
    task = qa_config(cfg)
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
    cfg.model.vocab_size = tokenizer.vocab_size
    model = QAModel(cfg.model, len(answers), task)
    if init is not None and not resume:
        model.load_pretrained(init)

    train = splits["train"]
    if cfg.label_fraction < 1:
        keep = max(1, round(len(train) * cfg.label_fraction))
        train = random.Random(cfg.finetune.seed).sample(train, keep)
    asked, modes = question_modes(train, cfg, task)
    train_set = qa_dataset(manifest, train, cfg, tokenizer, answers, modes, train=True,
                           transcripts=task.word_spotting > 0)
    val = validation_sample(splits["val"], cfg.finetune)
    device = resolve_device(cfg.finetune.device)
    transcriber = load_transcriber(task, device)  # a cascade: validation's spoken questions transcribed

    def evaluate(m: QAModel) -> dict[str, float]:
        asked = ("text", "audio") if task.spoken_fraction > 0 else ("text",)
        return evaluate_qa(m, manifest, val, cfg, tokenizer, answers, asked=asked, workers=cfg.finetune.workers,
                           device=device, task=task, transcriber=transcriber)

    meta = meta_for(QA_TASK, cfg, answers=answers, init=str(init) if init else None,
                    model_id=f"omniformer-qa-{Path(cfg.out_dir).name}")
    # The curriculum's questions are asked in text: speech joins once words are bound to objects.
    curriculum = Curriculum([i for i, (s, way) in enumerate(zip(train, asked)) if way == "text"
                             and task.curriculum.admits(s)], task.curriculum.steps,
                            f"{task.curriculum.key} in {task.curriculum.values}") if task.curriculum.steps else None
    # Bucket keys: equal keys keep their shuffled order, so "modality" batches are otherwise random.
    lengths = train_set.lengths() if cfg.finetune.bucket == "length" else [("text", "audio", "both").index(m) for m in modes]
    fit(model, train_set, cfg.finetune, out, collate_fn=collate, meta=meta, tokenizer=tokenizer,
        lengths=lengths, evaluate=evaluate if val else None, resume=resume, name="finetune",
        curriculum=curriculum)
    return out / "best"


def evaluate(model_dir: str | Path, manifest: str | Path | None = None, split: str = "test",
             asked: tuple[str, ...] = ("text", "audio"), device: str = "auto", workers: int = 0,
             cfg: RunConfig | None = None) -> Evaluation:
    """Accuracy of a QA checkpoint on a split of its manifest (or another manifest); ``workers``
    processes read and preprocess the samples (0: this one); ``cfg``: the checkpoint's recipe
    with data settings overridden."""
    from .qa.model import QAPredictor
    predictor = QAPredictor.load(model_dir, device=str(resolve_device(device)))
    cfg = cfg or predictor.cfg
    manifest = Path(manifest) if manifest else ensure_data(cfg, progress=False)
    samples = samples_by_split(manifest, is_qa)[split]
    if not samples:
        raise ValueError(f"{manifest}: no QA samples in split {split!r}")
    start = time.perf_counter()
    device = next(predictor.model.parameters()).device
    task = qa_config(cfg)
    metrics = evaluate_qa(predictor.model, manifest, samples, cfg, predictor.tokenizer, predictor.answers, asked=asked,
                          workers=workers, device=device, task=task, transcriber=load_transcriber(task, device))
    return Evaluation(QA_TASK, split, len(samples), time.perf_counter() - start, metrics)
