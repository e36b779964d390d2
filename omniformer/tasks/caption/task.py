"""``CaptionTask``: image (and/or audio) to text, as the general commands see it."""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from ...config import ConfigError, RunConfig
from ...data.batching import collate
from ...train.distributed import in_shares
from ...data.manifest import manifest_exists, resolve
from ...generation_flags import add_generation_arguments, generation_options
from ...registry import get_dataset, get_modality, UnknownTask
from ...train.loop import fit, seed_everything
from ..base import Evaluation, Task
from ..common import load_for_evaluation, require_split, seq2seq_tokenizer
from ..seq2seq.model import Seq2SeqModel
from .config import CaptionConfig
from .data import CaptionDataset, by_input, caption_pairs
from .predictor import TASK_NAME, Captioner


def caption_metrics(references: Sequence[Sequence[str]], hypotheses: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU (sacrebleu, cased and lowercased) and chrF of one caption per input against
    all of that input's captions; ``exact``: the share of captions equal to one of them; and
    ``distinct``: distinct captions over inputs, low when one template is written for every
    input (true of many scenes, informative of none)."""
    import sacrebleu
    if len(references) != len(hypotheses) or not hypotheses:
        raise ValueError(f"{len(references)} reference sets for {len(hypotheses)} captions")
    most = max(len(r) for r in references)
    streams = [[r[i] if i < len(r) else None for r in references] for i in range(most)]  # None: no i-th reference
    hyps = list(hypotheses)
    return {"bleu": sacrebleu.corpus_bleu(hyps, streams).score,
            "bleu_lowercase": sacrebleu.corpus_bleu(hyps, streams, lowercase=True).score,
            "chrf": sacrebleu.corpus_chrf(hyps, streams).score,
            "exact": sum(h.strip() in {x.strip() for x in r} for r, h in zip(references, hyps)) / len(hyps),
            "distinct": len({" ".join(h.split()) for h in hyps}) / len(hyps)}


def judge_maker(task: CaptionConfig, cfg: RunConfig) -> Callable[[Path], Callable[[dict, str], bool]] | None:
    """The ``caption_judge`` of the dataset ``task.judge`` names, else of the recipe's built-in
    ``data.dataset`` when it has one; None for "none" or a dataset without one. Checked before
    any data is read, so a wrong name costs nothing."""
    name = task.judge or cfg.data.dataset
    if not name or name == "none":
        return None
    try:
        module = get_dataset(name)
    except UnknownTask as e:
        raise ConfigError(f"task.judge: {e}") from None
    make = getattr(module, "caption_judge", None)
    if make is None and task.judge:
        raise ConfigError(f"task.judge: the {name!r} dataset cannot judge captions")
    return make


def judge_for(task: CaptionConfig, cfg: RunConfig, manifest: Path) -> Callable[[dict, str], bool] | None:
    """The judge of this manifest's captions (see ``judge_maker``), or None."""
    make = judge_maker(task, cfg)
    return make(manifest) if make is not None else None


def score(captioner: Captioner, groups: Sequence[tuple[dict, list[str]]], manifest: Path,
          judge: Callable[[dict, str], bool] | None, **options: Any) -> tuple[dict[str, float], list[str]]:
    """(metrics, captions) of one caption per input group; ``true_captions`` when there is a judge."""
    task = captioner.task_config

    def caption(part: Sequence[tuple[dict, list[str]]]) -> list[str]:
        items = [captioner.prepare(**{m: resolve(manifest, s[m]) for m in task.inputs}) for s, _ in part]
        return [c for start in range(0, len(items), 64) for c in captioner.caption_items(items[start:start + 64], **options)]

    captions = in_shares(groups, caption)  # a share on each rank of a DDP run
    metrics = caption_metrics([refs for _, refs in groups], captions)
    if judge is not None:
        metrics["true_captions"] = sum(judge(s, c) for (s, _), c in zip(groups, captions)) / len(captions)
    return metrics, captions


def _need_manifest(cfg: RunConfig) -> Path:
    from ..pipeline import ensure_data  # a built-in dataset (data.dataset) is written when absent
    return ensure_data(cfg, progress=cfg.finetune.progress)


class CaptionTask(Task):
    """Image (and/or audio) to text: the backbone reads the inputs, a decoder writes the caption."""

    name = TASK_NAME
    summary = "captioning (image or audio to text; a decoder with cross-attention; BLEU, truth of the scene)"
    recipe = "caption-shapes"
    Config = CaptionConfig
    fields = ("image", "audio", "text")
    predictor = Captioner

    def train(self, cfg: RunConfig, init: str | Path | None = None, resume: bool = False,
              progress: bool = True) -> Path:
        """Train on every (input, caption) pair; returns the best checkpoint by validation BLEU
        (or by the share of true captions, where the dataset judges them)."""
        from ..pipeline import meta_for
        task = self.config(cfg)
        make_judge = judge_maker(task, cfg)
        manifest = _need_manifest(cfg)
        seed_everything(cfg.finetune.seed)
        splits = caption_pairs(manifest, task)
        if not splits["train"]:
            raise ValueError(f"{manifest}: no training sample with {' and '.join(task.inputs)} and a {task.target!r}")
        judge = make_judge(manifest) if make_judge is not None else None
        out = Path(cfg.out_dir) / TASK_NAME
        tokenizer = seq2seq_tokenizer(out, init, resume, cfg.data, lambda: [s[task.target] for s in splits["train"]],
                                      task.lowercase)
        cfg.model.vocab_size = tokenizer.vocab_size
        cfg.model.modalities = list(task.inputs)
        model = Seq2SeqModel(cfg.model, task, tokenizer.pad_id)
        if init is not None and not resume:
            model.load_pretrained(init)
        preprocessors = {m: get_modality(m).preprocessor(cfg.model, cfg.data, tokenizer) for m in task.inputs}
        train_set = CaptionDataset(manifest, splits["train"], tokenizer, preprocessors, task)
        groups = by_input(splits["val"], task)
        if cfg.finetune.eval_batches:
            groups = groups[: cfg.finetune.eval_batches * cfg.finetune.batch_size]

        def evaluate(m: Seq2SeqModel) -> dict[str, float]:
            metrics = score(Captioner(m, cfg, tokenizer), groups, manifest, judge, num_beams=task.val_beams)[0]
            m.train()
            return {**metrics, "score": metrics.get("true_captions", metrics["bleu"] / 100)}

        meta = meta_for(TASK_NAME, cfg, init=str(init) if init else None,
                        model_id=f"omniformer-caption-{Path(cfg.out_dir).name}",
                        parameters=sum(p.numel() for p in model.parameters()))
        train_cfg = dataclasses.replace(cfg.finetune, progress=cfg.finetune.progress and progress)
        fit(model, train_set, train_cfg, out, collate_fn=collate, meta=meta, tokenizer=tokenizer,
            evaluate=evaluate if groups else None, resume=resume, name=TASK_NAME)
        return out / "best"

    def evaluate(self, model_dir: str | Path, manifest: str | Path | None = None, split: str = "test",
                 device: str = "auto", workers: int = 0, cfg: RunConfig | None = None) -> Evaluation:
        """BLEU, chrF and the share of true captions of one caption per input of ``split``."""
        require_split(split)
        captioner, run = load_for_evaluation(Captioner, model_dir, device, cfg)
        task = self.config(run)
        captioner.task_config = task  # a command line's --task.num_beams=... decodes this evaluation
        manifest = Path(manifest) if manifest else Path(run.data.manifest or "")
        if not manifest_exists(manifest):  # a manifest file or a shard folder
            raise ValueError(f"manifest: {manifest} is not a file; give --manifest")
        groups = by_input(caption_pairs(manifest, task)[split], task)
        if not groups:
            raise ValueError(f"{manifest}: no captioned {' or '.join(task.inputs)} in the {split} split")
        start = time.perf_counter()
        metrics, captions = score(captioner, groups, manifest, judge_for(task, run, manifest))
        examples = [{"id": s["id"], **{m: s[m] for m in task.inputs}, "caption": c, "references": refs}
                    for (s, refs), c in zip(groups[:20], captions)]
        return Evaluation(task=TASK_NAME, split=split, samples=len(groups), seconds=time.perf_counter() - start,
                          metrics=metrics, details={"examples": examples, "num_beams": task.num_beams})

    def report(self, evaluation: Evaluation, out_dir: Path | None = None) -> str:
        m = evaluation.metrics
        lines = []
        if "true_captions" in m:
            lines.append(f"  {'true of their input':<32} {100 * m['true_captions']:6.2f}%")
        lines += [f"  {'BLEU (sacrebleu, cased)':<32} {m['bleu']:6.2f}", f"  {'chrF':<32} {m['chrf']:6.2f}",
                  f"  {'equal to a reference':<32} {100 * m['exact']:6.2f}%",
                  f"  {'distinct captions':<32} {100 * m['distinct']:6.2f}%"]
        examples = evaluation.details.get("examples") or []
        if examples:
            lines += ["", "first captions:"] + [f"  {e['id']}: {e['caption']}" for e in examples[:5]]
        return "\n".join(lines)

    def add_predict_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_generation_arguments(parser)
        parser.add_argument("--image", action="append", help="an image file; give it more than once for several")
        parser.add_argument("--audio", action="append", help="a recording, for a model that hears")

    def predict_from_args(self, predictor: Captioner, args: argparse.Namespace) -> dict[str, Any]:
        images, audio = args.image, args.audio
        count = len(images or audio or [])
        if not count:
            raise ValueError(f"give --image (this model reads {', '.join(predictor.inputs)})")
        captions = predictor.caption(images, audio, **generation_options(args))
        names = images or audio
        return {"captions": [{"input": n, "caption": c} for n, c in zip(names, captions)]}

    def format_prediction(self, result: dict[str, Any]) -> str:
        return "\n".join(r["caption"] for r in result["captions"])

    def service(self, predictor: Captioner, limits: Any, metrics: Any) -> Any:
        from ..seq2seq.serve import GenerateService
        return GenerateService(predictor, limits, metrics)
