"""Speech recognition on the same backbone: a CTC head on the audio tokens, over characters or
word pieces.

A manifest's samples carry a recording and its transcript (``audio`` + ``text``; ShapesWorld's
spoken questions, ``question_audio`` + ``question``, too). Decoding is greedy or a CTC prefix
beam search, optionally over a closed word list; scored by WER and CER. Registered as ``asr``::

    omniformer data audio-folder ../shared/data/fsdd/recordings --digit-words --out data/fsdd-words/manifest.jsonl
    omniformer train asr --config asr-fsdd
    omniformer transcribe --model runs/asr-fsdd/asr/best recording.wav

    from omniformer.tasks.asr import Transcriber
    Transcriber.load("runs/asr-fsdd/asr/best").transcribe("recording.wav").text

See docs/tasks/asr.md.
"""
from .config import ASRConfig
from .data import Alphabet, TranscriptError, WordPieces, load_data, normalise
from .model import ASRModel, CTCHead
from .predictor import Transcriber, Transcript
from .task import ASRTask, score

TASK = ASRTask()

__all__ = ["TASK", "ASRTask", "ASRConfig", "ASRModel", "Alphabet", "CTCHead", "Transcriber", "Transcript",
           "TranscriptError", "WordPieces", "load_data", "normalise", "score"]
