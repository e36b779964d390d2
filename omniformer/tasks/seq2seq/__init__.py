"""Text generation on the backbone: ``translate`` (text to text), a decoder with cross-attention
over the fused source."""
from .config import TranslateConfig
from .data import ParallelDataset, parallel_manifest
from .generator import Generator, GeneratorError
from .metrics import translation_metrics
from .model import Seq2SeqModel
from .predictor import TranslationError, Translator
from .task import TranslateTask

TASK = TranslateTask()

__all__ = ["TASK", "TranslateTask", "TranslateConfig", "Seq2SeqModel", "ParallelDataset", "Translator",
           "TranslationError", "Generator", "GeneratorError", "parallel_manifest", "translation_metrics"]
