"""``ASRTask``: speech recognition as the general commands see it (train, evaluate, report,
predict, serve)."""
from __future__ import annotations

import argparse
import dataclasses
import random
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from torch.utils.data import DataLoader

from ...config import ConfigError, RunConfig
from ...data.batching import collate
from ...train.distributed import in_shares
from ...train.loop import fit, seed_everything
from ..base import Evaluation, ServeLimits, Service, Task
from ..common import load_for_evaluation, require_split
from .config import ASRConfig
from .data import Alphabet, ASRData, Labels, WordPieces, asr_dataset, check_alphabet, load_data, training_words
from .decoding import to_text
from .metrics import asr_metrics
from .model import ASRModel
from .predictor import TASK_NAME, Transcriber, checkpoint_labels


def _need_manifest(cfg: RunConfig) -> Path:
    if not cfg.data.manifest:
        raise ConfigError("data.manifest: the asr task needs a manifest of recordings with transcripts "
                          "(set data.manifest in the recipe or --data.manifest=PATH)")
    return Path(cfg.data.manifest)


def word_list(task: ASRConfig, data: ASRData) -> list[str]:
    """The beam search's closed vocabulary as the recipe names it (none: any spelling)."""
    if task.words == "train":
        return training_words(data.splits["train"])
    return sorted(set(task.words)) if isinstance(task.words, list) else []


def labels_for_run(cfg: RunConfig, task: ASRConfig, data: ASRData, out: Path, init: str | Path | None,
                   resume: bool) -> Labels:
    """What the head of this run writes: the resumed checkpoint's labels (refused if
    ``task.units`` or the transcripts' characters changed), else ``task.alphabet`` or the
    training transcripts' characters, or word pieces (``task.units``)."""
    from ...data.text import Tokenizer
    from ...train import checkpoint as ckpt
    if resume:
        last = ckpt.find_checkpoint(out / "last")
        previous = checkpoint_labels(last, ckpt.read_meta(last))
        if previous.units != task.units:
            raise ValueError(f"--resume: {out / 'last'} writes {previous.units}, not "
                             f"{task.units} (task.units); train afresh instead")
        if isinstance(previous, WordPieces):
            return previous
    texts = [s["text"] for s in data.splits["train"]]
    if task.units == "wordpieces":
        if cfg.data.tokenizer:
            return WordPieces(Tokenizer.load(cfg.data.tokenizer))
        saved = ckpt.find_checkpoint(init) / ckpt.TOKENIZER if init is not None else None
        if saved is not None and saved.is_file():  # the --init checkpoint's text vocabulary
            return WordPieces(Tokenizer.load(saved))
        return WordPieces.from_texts(texts, cfg.data.vocab_size)
    alphabet = Alphabet(task.alphabet) if task.alphabet else Alphabet.from_texts(texts)
    if resume and previous.chars != alphabet.chars:
        raise ValueError(f"--resume: {out / 'last'} writes the characters {previous.chars!r}, but the "
                         f"transcripts of {data.manifest} now need {alphabet.chars!r}; train afresh instead")
    return alphabet


@torch.no_grad()
def transcribe_samples(transcriber: Transcriber, manifest: str | Path, samples: Sequence[dict],
                       workers: int = 0, batch_size: int = 64, decoder: str | None = None) -> list[str]:
    """The transcriber's text for each of ``samples`` (their first ``audio.max_seconds``), in order."""
    model = transcriber.model.eval()
    device = next(model.parameters()).device

    def transcribe(part: Sequence[dict]) -> list[str]:
        dataset = asr_dataset(manifest, part, transcriber.cfg, transcriber.alphabet, train=False)
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate)
        texts = []
        for batch in loader:
            out = model({k: v.to(device) for k, v in batch.items() if k in ("audio", "audio_mask")})
            for hyp in transcriber.decode(out["log_probs"].cpu(), out["lengths"].cpu(), decoder):
                texts.append(to_text(hyp.tokens, transcriber.alphabet.labels).strip())
        return texts

    return in_shares(samples, transcribe)  # a share on each rank of a DDP run


def score(transcriber: Transcriber, manifest: str | Path, samples: Sequence[dict], groups: Sequence[str] = (),
          workers: int = 0, decoder: str | None = None) -> tuple[dict[str, float], list[str]]:
    """(WER, CER and per-group metrics, hypotheses) on transcribed ``samples``."""
    hypotheses = transcribe_samples(transcriber, manifest, samples, workers, decoder=decoder)
    metrics = asr_metrics([s["text"] for s in samples], hypotheses, samples, groups)
    return metrics, hypotheses


class ASRTask(Task):
    """Speech recognition: a CTC head on the backbone's audio tokens, greedy or beam decoding."""

    name = TASK_NAME
    summary = "speech recognition (CTC over characters or word pieces, greedy or beam decoding, WER/CER)"
    recipe = "asr-fsdd"
    general_recipe = "asr"
    Config = ASRConfig
    fields = ("audio", "text", "question_audio", "question")
    predictor = Transcriber

    # -- training and evaluation ---------------------------------------------------------------

    def train(self, cfg: RunConfig, init: str | Path | None = None, resume: bool = False,
              progress: bool = True) -> Path:
        """Train a recogniser on the recipe's manifest (from ``init``, a pretrained backbone, or
        from scratch); returns the best checkpoint by validation WER (the last without val)."""
        from ..pipeline import ensure_data, meta_for, validation_sample
        task = self.config(cfg)
        _need_manifest(cfg)
        manifest = ensure_data(cfg, progress)  # a built-in dataset (data.dataset) is made when absent
        seed_everything(cfg.finetune.seed)
        data = load_data(manifest, task)
        if cfg.label_fraction < 1:  # the low-label setting: a seeded sample of the transcribed recordings
            train = data.splits["train"]
            keep = max(1, round(len(train) * cfg.label_fraction))
            data.splits["train"] = random.Random(cfg.finetune.seed).sample(train, keep)
        if not data.splits["train"]:
            raise ValueError(f"{manifest}: no training recording with a transcript"
                             + (f" ({data.excluded} left out by task.exclude_from_training)" if data.excluded else ""))
        out = Path(cfg.out_dir) / TASK_NAME
        alphabet = labels_for_run(cfg, task, data, out, init, resume)
        check_alphabet(data, alphabet)
        cfg.model.modalities = ["audio"]  # the recogniser's backbone reads speech alone
        model = ASRModel(cfg.model, len(alphabet), task)
        if init is not None and not resume:
            model.load_pretrained(init)
        words = word_list(task, data)
        train_set = asr_dataset(manifest, data.splits["train"], cfg, alphabet, train=True)
        val = validation_sample(data.splits["val"], cfg.finetune)  # drawn across the split, seeded

        def evaluate(m: ASRModel) -> dict[str, float]:
            transcriber = Transcriber(m, cfg, alphabet, words)
            metrics = score(transcriber, manifest, val, (), cfg.finetune.workers)[0]
            m.train()
            return {**metrics, "score": -metrics["wer"]}

        meta = meta_for(TASK_NAME, cfg, **alphabet.describe(), words=words, init=str(init) if init else None,
                        model_id=f"omniformer-asr-{Path(cfg.out_dir).name}")
        tokenizer = alphabet.tokenizer if isinstance(alphabet, WordPieces) else None
        train_cfg = dataclasses.replace(cfg.finetune, progress=cfg.finetune.progress and progress)
        fit(model, train_set, train_cfg, out, collate_fn=collate, meta=meta, tokenizer=tokenizer,
            lengths=train_set.lengths(),
            evaluate=evaluate if val else None, resume=resume, name=TASK_NAME)
        return out / "best"

    def evaluate(self, model_dir: str | Path, manifest: str | Path | None = None, split: str = "test",
                 device: str = "auto", workers: int = 0, cfg: RunConfig | None = None) -> Evaluation:
        """WER, CER and sentence error rate of a checkpoint on ``split``, overall and per group."""
        require_split(split)
        transcriber, run = load_for_evaluation(Transcriber, model_dir, device, cfg)
        task = self.config(run)
        manifest = Path(manifest) if manifest else _need_manifest(run)
        data = load_data(manifest, dataclasses.replace(task, exclude_from_training={}))
        samples = data.splits[split]
        if not samples:
            raise ValueError(f"{manifest}: no recording with a transcript in the {split} split")
        start = time.perf_counter()
        # The recipe's decoder, which a command line's --task.decoder=... may override.
        metrics, hypotheses = score(transcriber, manifest, samples, task.groups, workers, decoder=task.decoder)
        errors = [{"id": s["id"], "reference": s["text"], "hypothesis": h}
                  for s, h in zip(samples, hypotheses) if s["text"] != h]
        return Evaluation(task=TASK_NAME, split=split, samples=len(samples), seconds=time.perf_counter() - start,
                          metrics=metrics, details={"errors": errors[:50], "decoder": task.decoder})

    def report(self, evaluation: Evaluation, out_dir: Path | None = None) -> str:
        """WER and CER overall and per group, then a few of the transcripts it got wrong."""
        m = evaluation.metrics
        lines = [f"  {k:<36} {100 * v:6.2f}%" for k, v in m.items() if k != "score"]
        errors = evaluation.details.get("errors") or []
        if errors:
            lines += ["", f"transcripts with errors ({len(errors)} kept, at most 50; the first 8, reference -> hypothesis):"]
            lines += [f"  {e['id']}: {e['reference']!r} -> {e['hypothesis']!r}" for e in errors[:8]]
        return "\n".join(lines)

    # -- use -----------------------------------------------------------------------------------

    def add_predict_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--audio", action="append", required=True,
                            help="a recording (WAV, FLAC, OGG); give it more than once for several")
        parser.add_argument("--timings", action="store_true", help="each word's start and end in seconds")
        parser.add_argument("--decoder", choices=["greedy", "beam"], help="default: the recipe's")

    def predict_from_args(self, predictor: Transcriber, args: argparse.Namespace) -> dict[str, Any]:
        results = []
        for path in args.audio:
            t = predictor.transcribe(path, timings=args.timings, decoder=args.decoder)
            results.append({"file": path, **t.to_json()})
        return {"transcripts": results}

    def format_prediction(self, result: dict[str, Any]) -> str:
        rows = result["transcripts"]
        lines = []
        for r in rows:
            lines.append(f"{r['file']}: {r['text']}" if len(rows) > 1 else r["text"])
            for w in r.get("words", []):
                lines.append(f"  {w['start']:7.2f} {w['end']:7.2f}  {w['word']}")
        return "\n".join(lines)

    def service(self, predictor: Transcriber, limits: ServeLimits, metrics: Any) -> Service:
        from .serve import ASRService
        return ASRService(predictor, limits, metrics)

