"""A trained translator from Python: load a checkpoint folder, translate sentences::

    from omniformer.tasks.seq2seq import Translator
    de_en = Translator.load("runs/multi30k-de-en/translate/best")
    de_en.translate(["Ein Hund läuft im Schnee."])                  # ["A dog runs in the snow."]
    de_en.translate("Zwei Männer", num_beams=1, do_sample=True, top_p=0.9, seed=0)
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Sequence

import torch

from ...config import RunConfig, from_dict, run_config_from
from ...data.text import Tokenizer, TokenizerError
from ...model.generate import GenerationConfig, generate
from ...train import checkpoint as ckpt
from .config import Seq2SeqConfig, TranslateConfig
from .model import Seq2SeqModel

TASK_NAME = "translate"


class TranslationError(ValueError):
    """A source the translator cannot read (empty, not text); the message says which."""


class Seq2SeqPredictor:
    """What the predictors of the tasks that write text share: the model, recipe and tokenizer,
    the recipe's decoding defaults with a call's options over them, and the decoding itself."""

    task = ""
    Config: type = Seq2SeqConfig
    Error: type = ValueError

    def __init__(self, model: Seq2SeqModel, cfg: RunConfig, tokenizer: Tokenizer, model_id: str = ""):
        self.model, self.cfg, self.tokenizer = model.eval(), cfg, tokenizer
        self.model_id = model_id or f"omniformer-{self.task}"
        self.task_config = from_dict(self.Config, cfg.task or {}, "task")

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu"):
        """The checkpoint folder ``path`` (what ``omniformer train TASK`` writes)."""
        path, meta = ckpt.read_task_meta(path, cls.task, "config")
        cfg = run_config_from(meta["config"])
        tokenizer = Tokenizer.load(path / ckpt.TOKENIZER)
        model = Seq2SeqModel(cfg.model, from_dict(cls.Config, cfg.task or {}, "task"), tokenizer.pad_id)
        ckpt.load_weights(path, model)
        return cls(model.to(device), cfg, tokenizer, model_id=meta.get("model_id", path.name))

    def generation_config(self, **options: Any) -> GenerationConfig:
        """The recipe's decoding (beams, length penalty, new tokens) with ``options`` over it."""
        t = self.task_config
        base = GenerationConfig(max_new_tokens=t.max_new_tokens, num_beams=t.num_beams, length_penalty=t.length_penalty)
        options = {k: v for k, v in options.items() if v is not None}
        if options.get("do_sample") and "num_beams" not in options:
            options["num_beams"] = 1  # asking to sample overrides the recipe's beam search
        if options.get("max_new_tokens", 0) >= t.max_target_len:
            raise self.Error(f"max_new_tokens: at most {t.max_target_len - 1} (the decoder's positions), "
                             f"got {options['max_new_tokens']}")
        return base.replace(**options).check(self.tokenizer.vocab_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def decode(self, batch: dict[str, torch.Tensor], config: GenerationConfig) -> list[str]:
        """The text the decoder writes for each source of a collated ``batch``."""
        tk = self.tokenizer
        context, context_mask = self.model.encode({k: v.to(self.device) for k, v in batch.items()})
        generated = generate(self.model.decoder, context, context_mask, bos_id=tk.cls_id, stop_ids=[tk.sep_id],
                             banned_ids=[tk.pad_id, tk.cls_id, tk.mask_id], config=config)
        return [tk.decode(g.tokens) for g in generated]


class Translator(Seq2SeqPredictor):
    """A translate checkpoint ready to use: its model, recipe, tokenizer and decoding defaults."""

    task = TASK_NAME
    Config = TranslateConfig
    Error = TranslationError

    def encode(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Source ids and mask; a source longer than the text positions is cut there, with a warning."""
        limit = self.cfg.model.text.max_len
        rows = []
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise TranslationError(f"source {i}: empty text; expected a sentence to translate")
            try:
                ids = self.tokenizer.encode(text)
            except TokenizerError as e:
                raise TranslationError(f"source {i}: {e}") from None
            if len(ids) > limit:
                warnings.warn(f"source {i}: {len(ids)} word pieces, more than the model's {limit} text positions; "
                              f"translating its first {limit - 1}", stacklevel=3)
                ids = ids[: limit - 1] + [self.tokenizer.sep_id]
            rows.append(ids)
        return self.tokenizer.pad(rows)

    @torch.no_grad()
    def translate(self, texts: str | Sequence[str], batch_size: int = 64, **options: Any) -> str | list[str]:
        """The translation of each text (one string for one text). ``options``: any
        ``GenerationConfig`` field (``num_beams``, ``do_sample``, ``top_p``, ``seed``...)."""
        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        config = self.generation_config(**options)
        out: list[str] = []
        for start in range(0, len(texts), batch_size):
            ids, mask = self.encode(texts[start:start + batch_size])
            out.extend(self.decode({"text": ids, "text_mask": mask}, config))
        return out[0] if single else out

    predict = translate
