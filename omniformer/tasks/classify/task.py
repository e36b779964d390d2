"""``ClassifyTask``: the classify task as the general commands see it (train, evaluate, report,
predict, serve, export)."""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from ...config import ConfigError, RunConfig
from ...data.batching import collate
from ...data.text import Tokenizer
from ...registry import modality_names
from ...train import checkpoint as ckpt
from ...train.loop import fit, resolve_device, seed_everything
from ..base import Evaluation, ExportGraph, ServeLimits, Service, Task
from ..common import build_tokenizer, require_split
from .config import ClassifyConfig
from .data import ClassifyData, check_groups, check_inputs, classify_dataset, load_data, resolve_inputs
from ...train.distributed import in_shares
from .metrics import classification_metrics, confusion_png, confusion_text
from .model import ClassifierModel
from .predictor import TASK_NAME, ClassifyPredictor


@torch.no_grad()
def score(model: nn.Module, manifest: str | Path, samples: Sequence[dict], cfg: RunConfig, task: ClassifyConfig,
          tokenizer: Tokenizer | None, labels: Sequence[str], device: torch.device | str = "cpu",
          workers: int = 0, batch_size: int | None = None) -> tuple[dict[str, float], dict[str, Any]]:
    """(metrics, details) of ``model`` on labelled ``samples`` (see ``classification_metrics``)."""
    model.eval()

    def logits_and_targets(part: Sequence[dict]) -> torch.Tensor:
        """(len(part), labels + 1): each sample's logits, then its target."""
        dataset = classify_dataset(manifest, part, cfg, task, tokenizer, labels, train=False)
        loader = DataLoader(dataset, batch_size=batch_size or max(cfg.finetune.batch_size, 64), shuffle=False,
                            num_workers=workers, collate_fn=collate)
        rows = [torch.empty(0, len(labels) + 1)]
        for batch in loader:
            logits = model({k: v.to(device) for k, v in batch.items() if k != "label"})["logits"].float().cpu()
            rows.append(torch.cat([logits, batch["label"][:, None].float()], dim=1))
        return torch.cat(rows)

    rows = in_shares(samples, logits_and_targets)  # a share on each rank of a DDP run
    return classification_metrics(rows[:, :-1], rows[:, -1].long(), labels, samples, task.groups)


def _show(labels: Sequence[str] | None, count: int = 8) -> str:
    labels = list(labels or [])
    return ", ".join(map(repr, labels[:count])) + (" ..." if len(labels) > count else "")


def _need_manifest(cfg: RunConfig) -> Path:
    if not cfg.data.manifest:
        raise ConfigError("data.manifest: the classify task needs a manifest whose samples carry a 'label' "
                          "(set data.manifest in the recipe or --data.manifest=PATH)")
    return Path(cfg.data.manifest)


class ClassifyTask(Task):
    """Recognition over whatever modalities a sample has: image, audio, text, or several."""

    name = TASK_NAME
    summary = "recognition over any modalities (image, audio, text)"
    recipe = "mnist"
    general_recipe = "classify"
    Config = ClassifyConfig
    fields = ("image", "audio", "text", "label")
    predictor = ClassifyPredictor

    # -- training and evaluation ---------------------------------------------------------------

    def train(self, cfg: RunConfig, init: str | Path | None = None, resume: bool = False,
              progress: bool = True) -> Path:
        """Fine-tune a classifier on the recipe's manifest (from ``init``, a pretrained or imported
        backbone, or from scratch); returns the best checkpoint (the last without validation)."""
        task = self.config(cfg)
        manifest = _need_manifest(cfg)
        seed_everything(cfg.finetune.seed)
        data = load_data(manifest, task, seed=cfg.finetune.seed)
        check_groups(data, task)
        out = Path(cfg.out_dir) / "classify"
        if resume:
            previous = ckpt.read_meta(out / "last").get("labels")
            if previous != data.labels:
                raise ValueError(f"--resume: {out / 'last'} was trained on the labels {_show(previous)}, but the "
                                 f"manifest {manifest} now has {_show(data.labels)}; train afresh instead")
        inputs = resolve_inputs(task, cfg.model, data.splits["train"], manifest)
        check_inputs(data, inputs, task)
        cfg.model.modalities = inputs  # the checkpoint's backbone reads only what the data has
        tokenizer = self._tokenizer(cfg, data, out, init, resume) if "text" in inputs else None
        if tokenizer is not None:
            cfg.model.vocab_size = tokenizer.vocab_size
        model = ClassifierModel(cfg.model, len(data.labels), task)
        if init is not None and not resume:
            model.load_pretrained(init)

        train_set = classify_dataset(manifest, data.splits["train"], cfg, task, tokenizer, data.labels, train=True)
        val = data.splits["val"]
        if cfg.finetune.eval_batches:
            val = val[: cfg.finetune.eval_batches * cfg.finetune.batch_size]
        device = resolve_device(cfg.finetune.device)

        def evaluate(m: ClassifierModel) -> dict[str, float]:
            return score(m, manifest, val, cfg, task, tokenizer, data.labels, device, cfg.finetune.workers)[0]

        meta = self.meta(cfg, data.labels, inputs, init)
        train_cfg = dataclasses.replace(cfg.finetune, progress=cfg.finetune.progress and progress)
        fit(model, train_set, train_cfg, out, collate_fn=collate, meta=meta, tokenizer=tokenizer,
            lengths=train_set.lengths(), evaluate=evaluate if val else None, resume=resume, name="classify")
        return out / "best"

    @staticmethod
    def meta(cfg: RunConfig, labels: list[str], inputs: list[str], init: str | Path | None) -> dict[str, Any]:
        from ..pipeline import meta_for
        return meta_for(TASK_NAME, cfg, labels=labels, inputs=inputs, init=str(init) if init else None,
                        model_id=f"omniformer-classify-{Path(cfg.out_dir).name}")

    @staticmethod
    def _tokenizer(cfg: RunConfig, data: ClassifyData, out: Path, init: str | Path | None, resume: bool) -> Tokenizer:
        """The resumed run's tokenizer, the initial checkpoint's (its text embedder was trained with
        it), or the configured one / one trained on the training text."""
        source = out / "last" if resume else init
        if source is not None:
            path = ckpt.find_checkpoint(source) / ckpt.TOKENIZER
            if path.is_file():
                return Tokenizer.load(path)
            if resume:
                raise ckpt.CheckpointError(f"checkpoint {path.parent} has no {ckpt.TOKENIZER}; it cannot be resumed")
        return build_tokenizer(cfg.data, data.splits["train"])

    def evaluate(self, model_dir: str | Path, manifest: str | Path | None = None, split: str = "test",
                 device: str = "auto", workers: int = 0, cfg: RunConfig | None = None) -> Evaluation:
        """Top-1, top-5, per-class and per-group accuracy and the confusion matrix of a checkpoint
        on ``split`` of its manifest (or ``manifest``)."""
        require_split(split)
        device = resolve_device(device)
        predictor = ClassifyPredictor.load(model_dir, device=device)
        run = dataclasses.replace(cfg or predictor.cfg, model=predictor.cfg.model)  # the model is the checkpoint's
        task = self.config(run)
        manifest = Path(manifest) if manifest else _need_manifest(run)
        data = load_data(manifest, task, seed=run.finetune.seed, labels=predictor.labels, check=(split,))
        samples = data.splits[split]
        if not samples:
            hint = " (task.val_fraction carves one out of train when there is none)" if split == "val" else ""
            raise ValueError(f"{manifest}: no labelled sample in the {split} split{hint}")
        check_inputs(data, predictor.inputs, task, splits=(split,))
        check_groups(data, task, splits=(split,))
        start = time.perf_counter()
        metrics, details = score(predictor.model, manifest, samples, run, task, predictor.tokenizer,
                                 predictor.labels, device, workers)
        return Evaluation(task=TASK_NAME, split=split, samples=len(samples), seconds=time.perf_counter() - start,
                          metrics=metrics, details=details)

    def report(self, evaluation: Evaluation, out_dir: Path | None = None) -> str:
        """A table of the metrics, the confusion matrix as text and, with ``out_dir``, as ``confusion.png``."""
        m = evaluation.metrics
        lines = [f"  {'accuracy':<28} {100 * m['accuracy']:6.2f}%", f"  {'top5':<28} {100 * m['top5']:6.2f}%"]
        sections: dict[str, list[str]] = {}
        for key, value in m.items():
            if "/" in key:
                group, value_name = key.split("/", 1)
                sections.setdefault(group, []).append(f"    {value_name:<26} {100 * value:6.2f}%")
        for group, rows in sections.items():
            lines += [f"  {group.replace('_', ' ')}:", *rows]
        confusion = evaluation.details.get("confusion")
        if confusion:
            lines += ["", "confusion matrix (rows: true label, columns: predicted):",
                      confusion_text(confusion["labels"], confusion["matrix"])]
            if out_dir is not None:
                path = confusion_png(confusion["labels"], confusion["matrix"], Path(out_dir) / "confusion.png")
                lines.append(f"confusion matrix drawn in {path}")
        return "\n".join(lines)

    # -- use -----------------------------------------------------------------------------------

    def add_predict_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--image", help="an image file (PNG, JPEG, ...)")
        parser.add_argument("--audio", help="a recording (WAV, FLAC, OGG)")
        parser.add_argument("--text", help="the text input")
        for m in modality_names():  # a registered modality beyond the built-ins: its input file
            if m not in ("image", "audio", "text"):
                parser.add_argument(f"--{m}", dest=m, help=f"the {m} input (a file, as its manifest field names one)")
        parser.add_argument("--top-k", type=int, dest="top_k",
                            help="how many labels to show, 1 to the number of labels (default 5, or all if fewer)")

    def predict_from_args(self, predictor: ClassifyPredictor, args: argparse.Namespace) -> dict[str, Any]:
        given = {m: getattr(args, m, None) for m in modality_names()}
        if all(v is None for v in given.values()):
            raise ValueError(f"predict: give at least one input ({', '.join('--' + m for m in predictor.inputs)})")
        n, top_k = len(predictor.labels), getattr(args, "top_k", None)
        if top_k is None:
            top_k = min(5, n)
        elif not 1 <= top_k <= n:
            raise ValueError(f"--top-k: expected 1 to {n} (the model has {n} labels), got {top_k}")
        result = predictor.classify(**given, top_k=top_k)
        return {"labels": [{"label": label, "probability": round(p, 6)} for label, p in result]}

    def format_prediction(self, result: dict[str, Any]) -> str:
        rows = result["labels"]
        width = max([len(r["label"]) for r in rows] + [5])
        return "\n".join(f"  {r['label']:<{width}}  {100 * r['probability']:6.2f}%" for r in rows)

    def service(self, predictor: ClassifyPredictor, limits: ServeLimits, metrics: Any) -> Service:
        from .serve import ClassifyService
        return ClassifyService(predictor, limits, metrics)

    def export_graph(self, predictor: ClassifyPredictor) -> ExportGraph:
        from .export import export_graph
        return export_graph(predictor)
