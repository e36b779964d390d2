"""One entry point for every checkpoint that has a text decoder: translate, caption, and
pretraining with ``objectives.next_word``::

    from omniformer import Generator
    g = Generator.load("runs/multi30k-de-en/translate/best")
    g.generate(text="Ein Hund läuft im Schnee.")                       # "A dog runs in the snow."
    g.generate("A dog", text="Ein Hund läuft im Schnee.", num_beams=1)  # starts with "A dog"
    Generator.load("runs/caption-shapes/caption/best").generate(image="scene.png")
    Generator.load("runs/quickstart/pretrain/last").generate("there is a red")   # a text continued
    for piece in g.stream(text="Ein Hund läuft."):
        print(piece, end="", flush=True)

Why: the commands and the Python API need not know which task wrote a checkpoint to make it write.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from ...config import RunConfig, run_config_from
from ...data.batching import collate
from ...data.text import Tokenizer, TokenizerError
from ...model.generate import GenerationConfig, GenerationError, generate, stream
from ...train import checkpoint as ckpt

GENERATING_TASKS = ("translate", "caption", "pretrain")
SOURCES = ("text", "image", "audio")


class GeneratorError(ValueError):
    """A checkpoint that cannot generate, or a source, prompt or option it cannot take; the
    message names the option (``text``, ``image``, ``audio``, ``prompt``, ``num_beams``...)."""


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


class _PretrainDecoder:
    """A pretraining checkpoint's next-word decoder as the generator uses it: the model, its recipe
    and tokenizer, the preprocessors of the media it reads, and its decoding defaults."""

    task = "pretrain"

    def __init__(self, path: Path, meta: dict[str, Any], device: str | torch.device):
        from ...registry import get_modality
        from ..pretrain import PretrainingModel
        self.cfg: RunConfig = run_config_from(meta["config"])
        self.tokenizer = Tokenizer.load(path / ckpt.TOKENIZER)
        cfg = self.cfg
        if cfg.objectives.next_word <= 0 or "text" not in cfg.model.modalities or not ckpt.has_weights(path, "decoder."):
            raise GeneratorError(f"checkpoint {path} is a pretraining model without a decoder: it cannot write text; "
                                 f"pretrain with objectives.next_word > 0 (e.g. --objectives.next_word=1.0) to "
                                 f"train one, or load a translate or caption checkpoint")
        model = PretrainingModel(cfg.model, cfg.objectives, self.tokenizer.special_ids, self.tokenizer.mask_id)
        ckpt.load_weights(path, model)
        self.model = model.to(device).eval()
        self.decoder = self.model.decoder
        self.inputs = [m for m in cfg.model.modalities if m != "text"]
        self.modalities = {m: get_modality(m) for m in self.inputs}
        self.preprocessors = {m: self.modalities[m].preprocessor(cfg.model) for m in self.inputs}
        self.model_id = meta.get("model_id", path.name)

    def generation_config(self, **options: Any) -> GenerationConfig:
        """Greedy decoding of at most the decoder's positions by default (pretraining has no
        decoding recipe), with ``options`` over it."""
        base = GenerationConfig(max_new_tokens=min(64, self.decoder.max_positions - 1))
        limit = self.decoder.max_positions - 1
        if options.get("max_new_tokens", 0) > limit:
            raise GeneratorError(f"max_new_tokens: at most {limit} (the decoder's positions), "
                                 f"got {options['max_new_tokens']}")
        return base.replace(**options).check(self.tokenizer.vocab_size)


class Generator:
    """Any checkpoint with a text decoder, ready to write: a translate checkpoint (through
    ``Translator``), a caption checkpoint (through ``Captioner``) or a pretraining checkpoint
    trained with ``objectives.next_word``, behind one ``generate()`` and one ``stream()``."""

    def __init__(self, predictor: Any, path: Path | None = None):
        self.predictor = predictor
        self.task: str = predictor.task
        self.tokenizer: Tokenizer = predictor.tokenizer
        self.cfg: RunConfig = predictor.cfg
        self.model_id: str = getattr(predictor, "model_id", "")
        self.path = path
        if self.task == "translate":
            self.inputs = ["text"]
        else:
            self.inputs = list(predictor.inputs)

    # -- loading -----------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> "Generator":
        """The checkpoint folder ``path`` of a translate, caption or pretraining (next-word) model;
        its task is read from its config.json. Another task is a GeneratorError naming it."""
        path = ckpt.find_checkpoint(path)
        meta = ckpt.read_meta(path)
        task = meta.get("task")
        if task == "translate":
            from .predictor import Translator
            return cls(Translator.load(path, device=device), path)
        if task == "caption":
            from ..caption import Captioner
            return cls(Captioner.load(path, device=device), path)
        if task == "pretrain":
            ckpt.require_meta(path, meta, "config")
            return cls(_PretrainDecoder(path, meta, device), path)
        raise GeneratorError(f"checkpoint {path} is {_article(str(task))} {task!r} model, which writes no text; "
                             f"generate works with translate, caption and pretraining (objectives.next_word > 0) "
                             f"checkpoints")

    # -- what the checkpoint reads -----------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return next(self.predictor.model.parameters()).device

    @property
    def decoder(self):
        """The ``TextDecoder`` that writes (the model's own, or the pretraining model's)."""
        return self.predictor.decoder if self.task == "pretrain" else self.predictor.model.decoder

    @property
    def max_positions(self) -> int:
        """The decoder's positions: [CLS], the prompt and the new tokens must fit in them."""
        return self.decoder.max_positions

    def describe(self) -> str:
        """What this checkpoint reads, in words (for messages)."""
        if self.task == "translate":
            return "a translate checkpoint reads text (the source)"
        if self.task == "caption":
            return f"a caption checkpoint reads {' and '.join(self.inputs)}"
        if self.inputs:
            return (f"a pretraining decoder reads {' or '.join(self.inputs)}, or nothing (it continues the "
                    f"prompt)")
        return "a pretraining decoder on text alone reads nothing but the prompt"

    def _sources(self, given: dict[str, Any]) -> tuple[int | None, dict[str, list[Any]]]:
        """(how many inputs, or None for one; each given source as a list), checked against what
        the checkpoint reads."""
        given = {k: v for k, v in given.items() if v is not None}
        for name in given:
            if self.task == "translate" and name != "text":
                raise GeneratorError(f"{name}: {self.describe()}, not {_article(name)} {name}")
            if self.task != "translate" and name == "text":
                hint = "; give the text to continue as the prompt" if self.task == "pretrain" else ""
                raise GeneratorError(f"text: {self.describe()}, not a source text{hint}")
            if self.task != "translate" and name not in self.inputs:
                raise GeneratorError(f"{name}: {self.describe()}; it was not trained on {name}")
        needed = [m for m in self.inputs if m not in given] if self.task != "pretrain" else []
        if needed:
            what = {"text": "the text to translate", "image": "an image", "audio": "a recording"}[needed[0]]
            raise GeneratorError(f"{needed[0]}: missing; {self.describe()}: give {what}")
        counts = {k: (len(v) if isinstance(v, (list, tuple)) else None) for k, v in given.items()}
        if len(set(counts.values())) > 1:
            raise GeneratorError(f"{', '.join(counts)}: give one of each or lists of the same length, got "
                                 f"{', '.join(f'{k}: {1 if n is None else n}' for k, n in counts.items())}")
        count = next(iter(counts.values()), None)
        if count == 0:
            raise GeneratorError(f"{next(iter(counts))}: an empty list; give at least one")
        listed = {k: (list(v) if count is not None else [v]) for k, v in given.items()}
        for i, source in enumerate(listed.get("text", [])):
            where = f"text {i}" if count is not None else "text"
            if not isinstance(source, str) or not source.strip():
                raise GeneratorError(f"{where}: empty; give the sentence to translate")
        return count, listed

    def _prompts(self, prompt: Any, count: int | None) -> tuple[int | None, list[list[int]] | None]:
        """(how many inputs, the prompt's word pieces per row, without [CLS]/[SEP]), checked."""
        if prompt is None:
            return count, None
        many = isinstance(prompt, (list, tuple))
        texts = list(prompt) if many else [prompt]
        if many and count is not None and len(texts) != count:
            raise GeneratorError(f"prompt: {len(texts)} prompts for {count} inputs; give one prompt, or one per input")
        if many and not texts:
            raise GeneratorError("prompt: an empty list; give at least one prompt or leave it out")
        rows = []
        for i, text in enumerate(texts):
            where = f"prompt {i}" if many else "prompt"
            if not isinstance(text, str):
                raise GeneratorError(f"{where}: expected text, got {type(text).__name__}")
            if not text.strip():
                raise GeneratorError(f"{where}: empty; give the words the text must start with, or leave it out")
            try:
                ids = self.tokenizer.encode(text)[1:-1]  # the tokenizer adds [CLS] ... [SEP]: the decoder starts from [CLS]
            except TokenizerError as e:
                raise GeneratorError(f"{where}: {e}") from None
            room = self.max_positions - 2  # [CLS] before it, one new token after it
            if len(ids) > room:
                raise GeneratorError(f"{where}: {len(ids)} word pieces, more than the decoder's {self.max_positions} "
                                     f"positions leave room for ([CLS] and one new token): at most {room}")
            rows.append(ids)
        if count is None and many:
            count = len(rows)
        return count, rows

    def config(self, prompts: list[list[int]] | None, streaming: bool = False, **options: Any) -> GenerationConfig:
        """The checkpoint's decoding defaults with ``options`` over them, checked; with a prompt and
        no ``max_new_tokens`` given, the new tokens are capped to the positions the prompt leaves."""
        options = {k: v for k, v in options.items() if v is not None}
        if streaming:
            if options.get("num_beams", 1) > 1:
                raise GeneratorError(f"num_beams: streaming needs num_beams=1 (beam search knows its best sequence "
                                     f"only at the end), got {options['num_beams']}; leave it out or do not stream")
            options["num_beams"] = 1  # the recipe's beams are for whole answers
        try:
            config = self.predictor.generation_config(**options)
        except GenerationError as e:
            raise GeneratorError(str(e)) from None
        if prompts and "max_new_tokens" not in options:
            room = self.max_positions - 1 - max(len(p) for p in prompts)
            if config.max_new_tokens > room:
                config = config.replace(max_new_tokens=room, min_new_tokens=min(config.min_new_tokens, room))
        return config

    # -- decoding ----------------------------------------------------------------------------

    def _context(self, sources: dict[str, list[Any]], rows: slice) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """What the decoder attends to for ``rows`` of the inputs: the fused source, or None."""
        if self.task == "translate":
            ids, mask = self.predictor.encode(sources["text"][rows])
            return self.predictor.model.encode({"text": ids.to(self.device), "text_mask": mask.to(self.device)})
        if self.task == "caption":
            count = len(next(iter(sources.values()))[rows])
            items = [self.predictor.prepare(**{m: sources[m][rows][i] for m in self.inputs}) for i in range(count)]
            batch = collate([{**it, "index": i} for i, it in enumerate(items)])
            return self.predictor.model.encode({k: v.to(self.device) for k, v in batch.items()})
        if not sources:
            return None, None
        from ...data.audio import AudioError
        from ...data.image import ImageError
        count = len(next(iter(sources.values()))[rows])
        items = []
        for i in range(count):
            item: dict[str, Any] = {"index": i}
            for m, values in sources.items():
                try:
                    item[m] = self.predictor.preprocessors[m](values[rows][i])
                except (ImageError, AudioError) as e:
                    raise GeneratorError(f"{m}: {e}") from None
            items.append(item)
        batch = collate(items)
        keys = {k for m in sources for k in self.predictor.modalities[m].batch_keys if k in batch}
        fused = self.predictor.model.backbone({k: batch[k].to(self.device) for k in keys})
        return fused.hidden, fused.mask

    def _arguments(self, prompts: list[list[int]] | None, config: GenerationConfig) -> dict[str, Any]:
        tk = self.tokenizer
        return dict(bos_id=tk.cls_id, stop_ids=[tk.sep_id], banned_ids=[tk.pad_id, tk.cls_id, tk.mask_id],
                    prompts=prompts, config=config)

    def _prepare(self, prompt: Any, text: Any, image: Any, audio: Any):
        count, sources = self._sources({"text": text, "image": image, "audio": audio})
        count, prompts = self._prompts(prompt, count)
        total = count or 1
        if prompts is not None and len(prompts) == 1 and total > 1:
            prompts = prompts * total  # one prompt for every input
        return count, sources, prompts, total

    @torch.no_grad()
    def generate(self, prompt: str | Sequence[str] | None = None, *, text: Any = None, image: Any = None,
                 audio: Any = None, batch_size: int = 64, **options: Any) -> str | list[str]:
        """The text the decoder writes, the prompt included: each output starts with ``prompt``
        (as the tokenizer writes it back: a lowercasing vocabulary lowercases it) and goes on with
        what the model makes of it. One string for one input, a list for lists.

        The source is what the checkpoint reads: ``text`` (translate), ``image`` and/or ``audio``
        (caption; a pretraining decoder too, which with neither continues the prompt alone), each
        a value or a list; an image or recording is a path, bytes, a PIL image or a waveform.
        ``prompt``: the text the output must start with (one for all inputs, or one per input).
        ``options``: ``GenerationConfig`` fields over the checkpoint's decoding defaults
        (``num_beams``, ``do_sample``, ``temperature``, ``top_k``, ``top_p``, ``repetition_penalty``,
        ``no_repeat_ngram_size``, ``min_new_tokens``, ``max_new_tokens``, ``length_penalty``, ``seed``).
        """
        count, sources, prompts, total = self._prepare(prompt, text, image, audio)
        config = self.config(prompts, **options)
        out: list[str] = []
        for start in range(0, total, batch_size):
            rows = slice(start, start + batch_size)
            context, context_mask = self._context(sources, rows)
            these = None if prompts is None else prompts[rows]
            n = len(these) if these is not None else (context.size(0) if context is not None else 1)
            try:
                made = generate(self.decoder, context, context_mask, batch=n, **self._arguments(these, config))
            except GenerationError as e:
                raise GeneratorError(str(e)) from None
            out.extend(self.tokenizer.decode((these[i] if these else []) + g.tokens) for i, g in enumerate(made))
        return out if count is not None else out[0]

    def stream(self, prompt: str | None = None, *, text: Any = None, image: Any = None, audio: Any = None,
               **options: Any) -> Iterator[str]:
        """The text of ``generate()`` for one input, in pieces as the tokens are made: the prompt
        first (when given), then what each token adds; the pieces join to the text ``generate()``
        returns with ``num_beams=1``. Greedy or sampling only: ``num_beams`` > 1 is a GeneratorError
        (the recipe's beam width is not used: a stream decodes with one beam). The inputs and
        options are checked here, before the first piece is asked for."""
        for name, value in (("prompt", prompt), ("text", text), ("image", image), ("audio", audio)):
            if isinstance(value, (list, tuple)):
                raise GeneratorError(f"{name}: stream writes one text at a time; give one {name}, not a list")
        _, sources, prompts, _ = self._prepare(prompt, text, image, audio)
        config = self.config(prompts, streaming=True, **options)
        with torch.no_grad():
            context, context_mask = self._context(sources, slice(0, 1))
            steps = stream(self.decoder, context, context_mask, batch=1, **self._arguments(prompts, config))
            try:
                first = next(steps, None)  # the prompt's fit and the first token, before any piece
            except GenerationError as e:
                raise GeneratorError(str(e)) from None
        return self._pieces(prompts[0] if prompts else [], first, steps)

    def _pieces(self, start: list[int], first: list[int | None] | None, steps: Iterator) -> Iterator[str]:
        """Text pieces from the decoder's steps: what each token adds to the decoded text."""
        tokens = list(start)
        written = self.tokenizer.decode(tokens)
        if written:
            yield written
        step = first
        with torch.no_grad():
            while step is not None and step[0] is not None:
                tokens.append(step[0])
                now = self.tokenizer.decode(tokens)
                if now.startswith(written) and len(now) > len(written):
                    yield now[len(written):]
                    written = now
                step = next(steps, None)
        final = self.tokenizer.decode(tokens)
        if final != written and final.startswith(written):
            yield final[len(written):]
