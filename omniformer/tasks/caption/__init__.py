"""Captioning on the backbone: an image (or a recording) read by the backbone, its caption
written by the decoder with cross-attention (the translate task's encoder-decoder)."""
from .config import CaptionConfig
from .data import CaptionDataset, by_input, caption_pairs
from .predictor import CaptionError, Captioner
from .task import CaptionTask, caption_metrics

TASK = CaptionTask()

__all__ = ["TASK", "CaptionTask", "CaptionConfig", "CaptionDataset", "Captioner", "CaptionError", "by_input",
           "caption_pairs", "caption_metrics"]
