"""Question answering about an image, the question asked in text, in speech, or both.

    from omniformer.tasks.qa import QAPredictor
    qa = QAPredictor.load("runs/quickstart/qa/best")
    qa.ask("scene.png", question="what shape is the red object?")   # [("circle", 0.97), ...]

``model``: the QA model and its evaluation; ``serve``: its routes; this module: the task as the
registry sees it (``omniformer train qa``, ``evaluate``, ``predict``, ``serve``, ``export``).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ...config import RunConfig
from ..base import Evaluation, ExportGraph, ServeLimits, Task, TaskError
from .config import QAConfig
from .model import NAME, QAModel, QAPredictor, accuracy_report, evaluate_qa, predict, qa_config, qa_dataset

__all__ = ["TASK", "QATask", "QAConfig", "QAModel", "QAPredictor", "accuracy_report", "evaluate_qa", "predict", "qa_dataset"]


class QATask(Task):
    """Answers from a closed vocabulary (the manifest's ``answer``) to a ``question`` or a
    ``question_audio`` about an ``image``; accuracy grouped by text or spoken, and by the
    ``meta`` keys the dataset has (ShapesWorld: family, relational, held-out voice)."""

    name = NAME
    summary = ("Show an image and ask about it, in text or by voice. "
               "Answers come from a closed vocabulary, with probabilities.")
    recipe = "quickstart"
    general_recipe = "vqa"
    fields = ("image", "question", "question_audio", "answer")
    predictor = QAPredictor

    def config(self, cfg: RunConfig) -> QAConfig:
        return qa_config(cfg)

    def train(self, cfg: RunConfig, init: str | Path | None = None, resume: bool = False,
              progress: bool = True) -> Path:
        from ..pipeline import finetune
        return finetune(cfg, init=init, resume=resume, progress=progress)

    def evaluate(self, model_dir: str | Path, manifest: str | Path | None = None, split: str = "test",
                 device: str = "auto", workers: int = 0, cfg: RunConfig | None = None,
                 asked: tuple[str, ...] = ("text", "audio")) -> Evaluation:
        from ..pipeline import evaluate
        return evaluate(model_dir, manifest, split, asked=asked, device=device, workers=workers, cfg=cfg)

    def add_predict_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--image", help="the image to ask about")
        parser.add_argument("--question", help="the question in text")
        parser.add_argument("--audio", help="the question as a recording (WAV, FLAC, OGG)")
        parser.add_argument("--top-k", type=int, dest="top_k",
                            help="how many answers (default 5, or all if the model knows fewer)")
        parser.add_argument("--transcriber", help="an asr checkpoint folder that hears --audio: its transcript is "
                                                  "asked as text")

    def predict_from_args(self, predictor: QAPredictor, args: argparse.Namespace) -> Any:
        if not args.image:
            raise TaskError("predict: the qa task needs --image IMG")
        if args.question is None and args.audio is None:
            raise TaskError("predict: give --question TEXT or --audio WAV (or both)")
        if args.top_k is None:
            args.top_k = min(5, len(predictor.answers))
        if not 1 <= args.top_k <= len(predictor.answers):
            raise TaskError(f"--top-k: expected 1 to {len(predictor.answers)} (the answers it knows), got {args.top_k}")
        if getattr(args, "transcriber", None):
            predictor.use_transcriber(args.transcriber)
        item, transcript = predictor.prepare_heard(args.image, question=args.question, audio=args.audio)
        top = predictor.answer_items([item], args.top_k)[0]
        out: dict[str, Any] = {"answers": [{"answer": a, "probability": round(p, 6)} for a, p in top]}
        if transcript is not None:
            out["transcript"] = transcript
        return out

    def format_prediction(self, result: Any) -> str:
        heard = [f"  heard: {result['transcript']!r}"] if "transcript" in result else []
        return "\n".join(heard + [f"  {r['answer']:<12} {r['probability']:6.1%}" for r in result["answers"]])

    def service(self, predictor: QAPredictor, limits: ServeLimits, metrics: Any):
        from .serve import QAService
        return QAService(predictor, limits, metrics)

    def export_graph(self, predictor: QAPredictor) -> ExportGraph:
        from ...interop.onnx import batch_graph
        return batch_graph(predictor.model, predictor.cfg.model,
                           {"task": self.name, "answers": predictor.answers, "model_id": predictor.model_id,
                            "text_max_len": predictor.cfg.model.text.max_len})


TASK = QATask()
