"""Question answering about an image, the question asked in text, in speech, or both.

``QAModel`` is the fusion backbone plus an answer head over the fusion [CLS] token;
``evaluate_qa`` reports accuracy overall and by question family, relational or not, text
or spoken, and held-out voice; ``QAPredictor`` answers one question from Python::

    from omniformer.tasks.qa import QAPredictor
    qa = QAPredictor.load("runs/quickstart/qa/best")
    qa.ask("scene.png", question="what shape is the red object?")   # [("circle", 0.97), ...]
"""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset

from ...config import ModelConfig, RunConfig, from_dict, run_config_from
from ...data.batching import IGNORE, MultimodalDataset, collate
from ...data.text import Tokenizer
from ...model import ClassifierHead, Omniformer, init_weights
from ...train import checkpoint as ckpt
from ...train.distributed import in_shares
from ..common import audio_preprocessor, image_preprocessor
from .config import QAConfig
from .heads import BagOfWords, GuidedAnswerHead, WordSpotter
from .losses import SAID_WEIGHT, grounding_loss, word_presence_loss

NAME = "qa"


def qa_config(cfg: RunConfig) -> QAConfig:
    """The recipe's ``task:`` section as the QA task reads it, checked against the model."""
    task = from_dict(QAConfig, cfg.task or {}, "task")
    task.check_model(cfg.model)
    return task


class QAModel(nn.Module):
    """The backbone plus an answer head over the fusion [CLS] (``cls``) or a question-guided one.

    The guided head reads a text question as its bag of words (see ``_question``). A spoken one
    (``task.spoken_question``) either as its speech tower's output, mean-pooled, through a
    projection of its own ("tower"), or as the words a ``WordSpotter`` heard ("words"): the
    word vectors of ``TextEmbedder.word_vectors`` weighted by how surely each was said, through
    the text question's projection, so a spoken question lands where its text already means
    something. Spoken questions whose batch carries their transcript train the spotter
    (``word_presence_loss``, weight ``task.word_spotting``), and nothing else does: the head reads
    what it heard as given, with the loss's weight on words said taken back out of its logits
    (``SAID_WEIGHT``). A row asked in text and speech at once reads its text, so a question
    asked in text can bring its recording for the spotter alone (``task.spotter_overhears``). Why
    words: through the tower, spoken questions never bound to their objects (spoken
    horizontal/vertical ~0.55 while text reached 1.00).
    """

    def __init__(self, cfg: ModelConfig, num_answers: int, task: QAConfig | None = None):
        super().__init__()
        task = task or QAConfig()
        self.backbone = Omniformer(cfg)
        self.guided = task.head == "guided"
        # Loss weights, read in training only (an evaluation or a server never needs them).
        self.word_spotting, self.grounding = task.word_spotting, task.grounding
        self.word_spotter: WordSpotter | None = None
        if self.guided:
            if cfg.towers_from or any(getattr(getattr(cfg, m), "tower", None) for m in ("text", "image", "audio")):
                raise ValueError("task.head=guided reads the embedders at the model width; "
                                 "it does not combine with imported towers (towers_from): use task.head=cls")
            asked_by = [m for m in ("text", "audio") if m in cfg.modalities]
            if task.spoken_question == "words" and "audio" in asked_by:
                if "text" not in cfg.modalities:
                    raise ValueError("task.spoken_question=words hears words of the text vocabulary: "
                                     "model.modalities needs text")
                self.word_spotter = WordSpotter.from_config(cfg)
                asked_by = ["text"]
            self.answer_head = GuidedAnswerHead(cfg.width, cfg.heads, num_answers, asked_by, task.glimpses,
                                                dropout=cfg.dropout, eps=cfg.layer_norm_eps,
                                                relations=task.relations)
        else:
            self.answer_head = ClassifierHead(cfg.width, num_answers, hidden=2 * cfg.width, dropout=cfg.dropout)
        self.answer_head.apply(init_weights)
        if self.word_spotter is not None:
            self.word_spotter.apply(init_weights)

    def load_pretrained(self, path: str | Path) -> None:
        """The backbone from a pretraining checkpoint; its word spotter when both have one; and
        its guided matching head into the guided answer head, all but the last layer (matching
        has one output, QA one per answer)."""
        ckpt.load_weights(path, self.backbone, prefix="backbone.")
        if self.word_spotter is not None and ckpt.has_weights(path, "word_spotter."):
            ckpt.load_weights(path, self.word_spotter, prefix="word_spotter.")
        if self.guided and ckpt.has_weights(path, "guided_matching_head."):
            # Matching has no relational reading, so with one the classifier's input differs too.
            new = [self.answer_head.classifier.net[-1]]
            if self.answer_head.relate is not None:
                new += [self.answer_head.relate, self.answer_head.classifier.net[0]]
            fresh = {name for name, p in self.answer_head.named_parameters()
                     if any(p is q for layer in new for q in layer.parameters())}
            missing = ckpt.load_weights(path, self.answer_head, prefix="guided_matching_head.", strict=False,
                                        skip=fresh)
            unexpected = set(missing) - fresh - {n for n in missing if n.startswith("question.")}
            if unexpected:
                raise ckpt.CheckpointError(f"checkpoint {path}: its guided matching head lacks {sorted(unexpected)[:3]}")

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # Heard as words, speech reaches the head through the spotter alone, and the backbone
        # reads the image and any text. Its audio tokens, most of a spoken sample's sequence,
        # made fine-tuning 1.5x slower for nothing the head used (spoken 72.7% without them,
        # 74.4% with, at 1,500 steps: one seed each).
        seen = batch if self.word_spotter is None else {k: v for k, v in batch.items()
                                                        if k not in ("audio", "audio_mask")}
        fused = self.backbone(seen)
        out: dict[str, torch.Tensor] = {}
        if self.guided:
            question, word_logits, words = self._question(fused, batch)
            image = self._image(fused)
            logits = self.answer_head(fused.cls, question, *image, words=words)
            if self.grounding and self.training and "image" in fused.embedded:
                asked = self.answer_head.ask(fused.cls, question)
                rows = image[1].any(1)
                if words is not None:
                    rows &= words.said.sum(-1) > 0
                out["grounding_loss"] = grounding_loss(self.answer_head.relate.match(asked, *image[:2], words), rows)
            if self.word_spotting and word_logits is not None and "transcript" in batch:
                rows = batch["transcript_mask"].any(1) & batch["audio_mask"].any(1)
                out["word_spotting_loss"] = word_presence_loss(word_logits, batch["transcript"],
                                                              batch["transcript_mask"], rows)
        else:
            logits = self.answer_head(fused.cls)
        out["logits"] = logits
        answers = batch.get("answer")
        if answers is not None and (answers != IGNORE).any():
            out["answer_loss"] = F.cross_entropy(logits, answers, ignore_index=IGNORE)
            out["loss"] = (out["answer_loss"] + self.word_spotting * out.get("word_spotting_loss", 0.0)
                           + self.grounding * out.get("grounding_loss", 0.0))
            valid = answers != IGNORE
            out["accuracy"] = (logits.argmax(-1)[valid] == answers[valid]).float().mean()
        return out

    def _question(self, fused, batch) -> tuple[dict[str, torch.Tensor], torch.Tensor | None, BagOfWords | None]:
        """The question vectors the guided head reads (zeros in rows without that modality),
        the spotter's word logits (B, vocab) when speech is heard as words, and the question's
        bag of words where it comes as words (written, or heard by the spotter).

        A written question reaches the head as the mean of its distinct words' vectors, the form
        a spoken one heard by the spotter has. Why: read as the mean of its embedded tokens
        (positions in), it sat apart from the spoken form, and the counts, sums of sigmoids of
        scores the question sets, came out one too high when heard ("five" for "four"). Over
        three quickstart seeds, one form gave text 97.7% (97.4% before), spoken 94.9% (94.1%)
        and spoken "how many" 86.9% (83.5%; one seed went down, 90.8% -> 82.2%)."""
        question, word_logits, said = {}, None, None
        text = self.backbone.embedders["text"] if "text" in self.backbone.embedders else None
        vectors = None if text is None else text.word_vectors()             # (vocab, width)
        if "text" in fused.embedded:
            written = BagOfWords.written(batch["text"], batch["text_mask"], vectors)
            question["text"], said = written.mean(), written.said
        if "audio" in fused.unimodal and self.word_spotter is None:
            question["audio"] = Omniformer.pool(*fused.unimodal["audio"])
        elif "audio" in batch:
            word_logits = self.word_spotter.hear(batch)
            # Only transcripts train the spotter: the answer loss, let through, kept it from
            # telling colour words apart (spoken left/right 0.60 vs 1.00 at 1,500 steps).
            # Calibrated: the spotter's loss weighs words said SAID_WEIGHT times, which lifts its
            # logits by log(SAID_WEIGHT).
            heard = torch.sigmoid(word_logits - math.log(SAID_WEIGHT)).detach()
            spoken = BagOfWords(heard, vectors).mean()
            if "text" in question:  # a row asked in text too reads its words as written
                in_text = batch["text_mask"].bool().any(1, keepdim=True)
                spoken, heard = spoken.masked_fill(in_text, 0.0), heard.masked_fill(in_text, 0.0)
            question["text"] = question.get("text", 0.0) + spoken
            said = heard if said is None else said + heard
        return question, word_logits, None if said is None else BagOfWords(said, vectors)

    def _image(self, fused) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The image's embedded tokens, their mask and their (x, y) places; one masked zero
        token when no image came."""
        if "image" in fused.embedded:
            return *fused.embedded["image"], self.backbone.embedders["image"].token_xy
        cls = fused.cls
        return (cls.new_zeros(cls.size(0), 1, cls.size(1)), cls.new_zeros(cls.size(0), 1, dtype=torch.bool),
                cls.new_zeros(1, 2))


def qa_dataset(manifest: str | Path, samples: Sequence[dict], cfg: RunConfig, tokenizer: Tokenizer,
               answers: Sequence[str], modes: Sequence[str] | str, train: bool,
               transcripts: bool = False) -> MultimodalDataset:
    """QA samples as model inputs; ``train`` turns on the augmentations the config allows
    (``data.augment`` for images; ``data.speed_perturbation`` and ``data.spec_augment`` for
    speech), each on its own."""
    return MultimodalDataset(
        manifest, samples, tokenizer=tokenizer, image=image_preprocessor(cfg.model, train and cfg.data.augment),
        audio=audio_preprocessor(cfg.model, cfg.data if train else None), text_field="question",
        audio_field="question_audio", text_max_len=cfg.model.text.max_len, answers=answers, modes=modes,
        transcripts=transcripts)


@torch.no_grad()
def predict(model: nn.Module, dataset: MultimodalDataset, batch_size: int = 128, workers: int = 0,
            device: torch.device | str = "cpu") -> torch.Tensor:
    """Answer logits for every sample of ``dataset``, in order."""
    model.eval()

    def logits(indices: Sequence[int]) -> torch.Tensor:
        loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, shuffle=False, num_workers=workers,
                            collate_fn=collate)
        chunks = [model({k: v.to(device) for k, v in batch.items()})["logits"].float().cpu() for batch in loader]
        return torch.cat(chunks) if chunks else torch.empty(0, len(dataset.answer_index or ()))

    return in_shares(range(len(dataset)), logits)  # a share on each rank of a DDP run


def accuracy_report(samples: Sequence[dict], predictions: Sequence[str], spoken: Sequence[bool],
                    groups: Sequence[str] = (), spoken_groups: Sequence[str] = ()) -> dict[str, float]:
    """Accuracy overall, text vs spoken, and per value of each ``meta`` key in ``groups``
    (``spoken_groups``: for spoken questions only). A boolean key gives ``WAY/KEY`` and
    ``WAY/non_KEY``; any other value ``WAY/KEY/VALUE``."""
    scores: dict[str, list[bool]] = defaultdict(list)
    for sample, prediction, is_spoken in zip(samples, predictions, spoken):
        correct = prediction == sample["answer"]
        meta = sample.get("meta", {})
        way = "spoken" if is_spoken else "text"
        scores["accuracy"].append(correct)
        scores[f"{way}/accuracy"].append(correct)
        for key in (*groups, *(spoken_groups if is_spoken else ())):
            if key not in meta:
                continue
            value = meta[key]
            name = (key if value else f"non_{key}") if isinstance(value, bool) else f"{key}/{value}"
            scores[f"{way}/{name}"].append(correct)
    return {k: sum(v) / len(v) for k, v in sorted(scores.items())}


def evaluate_qa(model: nn.Module, manifest: str | Path, samples: Sequence[dict], cfg: RunConfig,
                tokenizer: Tokenizer, answers: Sequence[str], asked: Sequence[str] = ("text", "audio"),
                batch_size: int = 128, workers: int = 0, device: str | torch.device = "cpu",
                task: QAConfig | None = None, transcriber: Any = None) -> dict[str, float]:
    """Each sample is asked once in each way of ``asked`` ("text", "audio") that it supports;
    ``task`` names the metric groups. With ``transcriber`` (an asr ``Transcriber``), a spoken
    question is its transcript asked in text, and still counts as spoken."""
    all_samples, predictions, spoken = [], [], []
    for way in asked:
        field = "question" if way == "text" else "question_audio"
        subset = [s for s in samples if s.get(field)]
        if not subset:
            continue
        modes = way
        if way == "audio" and transcriber is not None:
            heard = transcribe_questions(transcriber, manifest, subset)
            subset = [{**s, "question": heard[s["question_audio"]]} for s in subset]
            modes = "text"
        data = qa_dataset(manifest, subset, cfg, tokenizer, answers, modes=modes, train=False)
        logits = predict(model, data, batch_size, workers, device)
        predictions += [answers[i] for i in logits.argmax(-1).tolist()]
        all_samples += subset
        spoken += [way == "audio"] * len(subset)
    task = QAConfig() if task is None else task
    report = accuracy_report(all_samples, predictions, spoken, task.groups, task.spoken_groups)
    report["score"] = report.get("accuracy", 0.0)
    return report


def transcribe_questions(transcriber: Any, manifest: str | Path, samples: Sequence[dict],
                         batch_size: int = 64) -> dict[str, str]:
    """Each distinct ``question_audio`` of ``samples`` -> its transcript, in batches."""
    root = Path(manifest).parent
    paths = sorted({s["question_audio"] for s in samples})
    out: dict[str, str] = {}
    for i in range(0, len(paths), batch_size):
        chunk = paths[i: i + batch_size]
        items = [transcriber.prepare(root / p) for p in chunk]
        for path, transcript in zip(chunk, transcriber.transcribe_items(items)):
            out[path] = transcript.text or "?"  # nothing heard: a question that answers nothing in particular
    return out


def load_transcriber(task: QAConfig, device: str | torch.device = "cpu") -> Any:
    """The asr checkpoint ``task.transcriber`` names, or None; an error names the option."""
    if not task.transcriber:
        return None
    from ..asr.predictor import Transcriber
    try:
        return Transcriber.load(task.transcriber, device=device)
    except (FileNotFoundError, ckpt.CheckpointError) as e:
        raise ckpt.CheckpointError(f"task.transcriber: {e}") from None


class QAPredictor:
    """A fine-tuned QA checkpoint, ready to answer: the Python face of ``omniformer ask``."""

    task = NAME

    def __init__(self, model: QAModel, cfg: RunConfig, tokenizer: Tokenizer, answers: list[str],
                 model_id: str = "omniformer-qa"):
        self.model, self.cfg, self.tokenizer, self.answers, self.model_id = model.eval(), cfg, tokenizer, answers, model_id
        self.task_cfg = qa_config(cfg)
        self.image = image_preprocessor(cfg.model, augment=False)
        self.audio = audio_preprocessor(cfg.model)
        # task.transcriber: spoken questions are transcribed and answered as text
        self.transcriber = load_transcriber(self.task_cfg, next(model.parameters()).device)

    def use_transcriber(self, path: str | Path | None) -> None:
        """Answer spoken questions through this asr checkpoint's transcript (None: by this model's
        own spoken path)."""
        self.task_cfg.transcriber = str(path) if path else ""
        self.cfg.task = {**(self.cfg.task or {}), "transcriber": self.task_cfg.transcriber}
        self.transcriber = load_transcriber(self.task_cfg, next(self.model.parameters()).device)

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", transcriber: str | Path | None = None) -> "QAPredictor":
        """The checkpoint folder ``path``; ``transcriber``: an asr checkpoint that hears spoken
        questions (as ``task.transcriber``)."""
        path, meta = ckpt.read_task_meta(path, NAME, "answers", "config")
        cfg = run_config_from(meta["config"])
        model = QAModel(cfg.model, len(meta["answers"]), qa_config(cfg))
        ckpt.load_weights(path, model)
        tokenizer = Tokenizer.load(path / ckpt.TOKENIZER)
        if transcriber:
            cfg.task = {**(cfg.task or {}), "transcriber": str(transcriber)}
        return cls(model.to(device), cfg, tokenizer, list(meta["answers"]), model_id=meta.get("model_id", path.name))

    def hear(self, audio) -> str:
        """A spoken question's transcript by ``task.transcriber`` (a path, file bytes, or a mono
        waveform at this model's sample rate)."""
        if isinstance(audio, np.ndarray):
            rate, theirs = self.cfg.model.audio.sample_rate, self.transcriber.cfg.model.audio.sample_rate
            if rate != theirs:
                import soxr
                audio = soxr.resample(audio.astype(np.float32), rate, theirs).astype(np.float32)
        return self.transcriber.transcribe(audio).text

    def prepare(self, image, question: str | None = None, audio=None) -> dict[str, Any]:
        """One dataset-style item from raw inputs (paths, bytes, PIL images or waveforms)."""
        return self.prepare_heard(image, question, audio)[0]

    def prepare_heard(self, image, question: str | None = None, audio=None) -> tuple[dict[str, Any], str | None]:
        """``prepare``'s item and, with ``task.transcriber``, the spoken question's transcript
        (the item then asks it in text; a question also typed in text is asked as typed)."""
        if question is None and audio is None:
            raise ValueError("ask needs a question in text, in audio, or both")
        transcript = None
        if audio is not None and self.transcriber is not None:
            transcript = self.hear(audio)
            question, audio = (transcript or "?") if question is None else question, None
        return self._item(image, question, audio), transcript

    def _item(self, image, question: str | None, audio) -> dict[str, Any]:
        item: dict[str, Any] = {"index": 0, "image": self.image(image)}
        if question is not None:
            item["text"] = torch.tensor(self.tokenizer.encode(question, self.cfg.model.text.max_len))
        if audio is not None:
            item["audio"] = self.audio(audio)
        return item

    @torch.no_grad()
    def answer_items(self, items: list[dict[str, Any]], top_k: int = 5) -> list[list[tuple[str, float]]]:
        items = [{**it, "index": i} for i, it in enumerate(items)]
        device = next(self.model.parameters()).device
        batch = {k: v.to(device) for k, v in collate(items).items()}
        probs = self.model(batch)["logits"].float().softmax(-1)
        top = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
        return [[(self.answers[i], float(p)) for p, i in zip(ps.tolist(), ids.tolist())]
                for ps, ids in zip(top.values, top.indices)]

    def ask(self, image, question: str | None = None, audio=None, top_k: int = 5) -> list[tuple[str, float]]:
        return self.answer_items([self.prepare(image, question, audio)], top_k)[0]

    predict = ask
