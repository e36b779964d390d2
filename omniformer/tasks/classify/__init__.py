"""Classification over any modalities: an image, a recording, a text, or several together.

A manifest's samples carry a ``label`` (string or integer); the backbone fuses whatever inputs
a sample has and an MLP head over its pooled output picks the label. Registered as ``classify``::

    omniformer train --task classify --config mnist
    omniformer predict --task classify --model runs/mnist/classify/best --image seven.png

    from omniformer.tasks.classify import ClassifyPredictor
    ClassifyPredictor.load("runs/mnist/classify/best").classify(image="seven.png")

See docs/tasks/classify.md.
"""
from .config import ClassifyConfig
from .data import ClassifyDataWarning, label_vocabulary, load_data
from .metrics import classification_metrics, confusion_png, confusion_text
from .model import ClassifierModel
from .predictor import ClassifyPredictor
from .task import ClassifyTask, score

TASK = ClassifyTask()

__all__ = ["TASK", "ClassifyTask", "ClassifyConfig", "ClassifierModel", "ClassifyPredictor", "ClassifyDataWarning",
           "classification_metrics", "confusion_png", "confusion_text", "label_vocabulary", "load_data", "score"]
