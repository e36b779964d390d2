"""``TranslateTask``: machine translation (text to text) as the general commands see it."""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any, Sequence

from ...config import ConfigError, RunConfig
from ...data.batching import collate
from ...train.distributed import in_shares
from ...train.loop import fit, seed_everything
from ...generation_flags import add_generation_arguments, generation_options
from ..base import Evaluation, Task
from ..common import load_for_evaluation, require_split, samples_by_split, seq2seq_tokenizer
from .config import TranslateConfig
from .data import ParallelDataset
from .metrics import translation_metrics
from .model import Seq2SeqModel
from .predictor import TASK_NAME, Translator


def _need_manifest(cfg: RunConfig) -> Path:
    if not cfg.data.manifest:
        raise ConfigError("data.manifest: the translate task needs a manifest of sentence pairs (text, target); "
                          "make one with 'omniformer data parallel FOLDER --source de --target en --out M'")
    return Path(cfg.data.manifest)


def pairs_of(manifest: Path, task: TranslateConfig) -> dict[str, list[dict]]:
    """The manifest's samples with both a source and a target, by split."""
    return samples_by_split(manifest, lambda s: bool(s.get(task.source)) and bool(s.get(task.target)))


def score(translator: Translator, samples: Sequence[dict], task: TranslateConfig,
          **options: Any) -> tuple[dict[str, float], list[str]]:
    """(BLEU, chrF and exact-match, hypotheses) on ``samples``."""
    sources = [s[task.source] for s in samples]
    hypotheses = in_shares(sources, lambda part: translator.translate(list(part), **options))  # DDP: a share a rank
    return translation_metrics([s[task.target] for s in samples], hypotheses), hypotheses


class TranslateTask(Task):
    """Text to text: the backbone reads the source, a decoder with cross-attention writes the target."""

    name = TASK_NAME
    summary = "machine translation (an encoder-decoder on the backbone; beam search; BLEU, chrF)"
    recipe = "multi30k-de-en"
    general_recipe = "translate"
    Config = TranslateConfig
    fields = ("text", "target")
    predictor = Translator

    def train(self, cfg: RunConfig, init: str | Path | None = None, resume: bool = False,
              progress: bool = True) -> Path:
        """Train on the recipe's sentence pairs; returns the best checkpoint by validation BLEU."""
        from ..pipeline import meta_for, validation_sample
        task = self.config(cfg)
        manifest = _need_manifest(cfg)
        seed_everything(cfg.finetune.seed)
        splits = pairs_of(manifest, task)
        if not splits["train"]:
            raise ValueError(f"{manifest}: no training sample with both {task.source!r} and {task.target!r}")
        out = Path(cfg.out_dir) / TASK_NAME
        # Trained, where it is, as one vocabulary for both languages, on both sides of the pairs.
        tokenizer = seq2seq_tokenizer(out, init, resume, cfg.data, lambda: [
            s[f] for s in splits["train"] for f in (task.source, task.target)], task.lowercase)
        cfg.model.vocab_size = tokenizer.vocab_size
        cfg.model.modalities = ["text"]
        model = Seq2SeqModel(cfg.model, task, tokenizer.pad_id)
        if init is not None and not resume:
            model.load_pretrained(init)
        train_set = ParallelDataset(manifest, splits["train"], tokenizer, task.source, task.target,
                                    cfg.model.text.max_len, task.max_target_len)
        val = validation_sample(splits["val"], cfg.finetune)

        def evaluate(m: Seq2SeqModel) -> dict[str, float]:
            translator = Translator(m, cfg, tokenizer)
            metrics = score(translator, val, task, num_beams=task.val_beams)[0]
            m.train()
            return {**metrics, "score": metrics["bleu"]}

        meta = meta_for(TASK_NAME, cfg, init=str(init) if init else None,
                        model_id=f"omniformer-translate-{Path(cfg.out_dir).name}",
                        parameters=sum(p.numel() for p in model.parameters()))
        train_cfg = dataclasses.replace(cfg.finetune, progress=cfg.finetune.progress and progress)
        fit(model, train_set, train_cfg, out, collate_fn=collate, meta=meta, tokenizer=tokenizer,
            lengths=train_set.lengths(), evaluate=evaluate if val else None, resume=resume, name=TASK_NAME)
        return out / "best"

    def evaluate(self, model_dir: str | Path, manifest: str | Path | None = None, split: str = "test",
                 device: str = "auto", workers: int = 0, cfg: RunConfig | None = None) -> Evaluation:
        """BLEU (cased and lowercased), chrF and exact matches of a checkpoint on ``split``."""
        require_split(split)
        translator, run = load_for_evaluation(Translator, model_dir, device, cfg)
        task = self.config(run)
        translator.task_config = task  # a command line's --task.num_beams=... decodes this evaluation
        manifest = Path(manifest) if manifest else _need_manifest(run)
        samples = pairs_of(manifest, task)[split]
        if not samples:
            raise ValueError(f"{manifest}: no sentence pair in the {split} split")
        start = time.perf_counter()
        metrics, hypotheses = score(translator, samples, task)
        examples = [{"id": s["id"], "source": s[task.source], "reference": s[task.target], "hypothesis": h}
                    for s, h in zip(samples[:20], hypotheses)]
        return Evaluation(task=TASK_NAME, split=split, samples=len(samples), seconds=time.perf_counter() - start,
                          metrics=metrics, details={"examples": examples, "num_beams": task.num_beams})

    def report(self, evaluation: Evaluation, out_dir: Path | None = None) -> str:
        m = evaluation.metrics
        lines = [f"  {'BLEU (sacrebleu, cased)':<32} {m['bleu']:6.2f}", f"  {'BLEU lowercased':<32} {m['bleu_lowercase']:6.2f}",
                 f"  {'chrF':<32} {m['chrf']:6.2f}", f"  {'exact':<32} {100 * m['exact']:6.2f}%"]
        examples = evaluation.details.get("examples") or []
        if examples:
            lines += ["", "first translations (source -> hypothesis | reference):"]
            lines += [f"  {e['source']} -> {e['hypothesis']} | {e['reference']}" for e in examples[:5]]
        return "\n".join(lines)

    def add_predict_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_generation_arguments(parser)
        parser.add_argument("--text", action="append", required=True, help="a sentence; give it more than once for several")

    def predict_from_args(self, predictor: Translator, args: argparse.Namespace) -> dict[str, Any]:
        texts = args.text
        return {"translations": [{"source": s, "translation": t}
                                 for s, t in zip(texts, predictor.translate(texts, **generation_options(args)))]}

    def format_prediction(self, result: dict[str, Any]) -> str:
        return "\n".join(r["translation"] for r in result["translations"])

    def service(self, predictor: Translator, limits: Any, metrics: Any) -> Any:
        from .serve import GenerateService
        return GenerateService(predictor, limits, metrics)
