"""The server side of the tasks that write text (translate, caption): ``POST /v1/generate``
(multipart) and ``POST /v1/generate.json`` (JSON, files base64), micro-batched, or streamed
token by token as Server-Sent Events with ``stream=true``.

    curl -F text="Ein Hund läuft." http://127.0.0.1:8000/v1/generate
    {"text": "A dog runs.", "source": "Ein Hund läuft.", "truncated": false, "model": "...",
     "decoding": {"num_beams": 4, ...}, "time_ms": 41.3}
    curl -N -F image=@scene.png -F stream=true http://127.0.0.1:8000/v1/generate
    event: token
    data: {"text": "there", "delta": "there", "tokens": 1}
    ...
    event: done
    data: {"text": "there are three objects", "tokens": 4, "stopped": true, ..., "time_ms": 18.2}

The input: ``text`` for translate (a source longer than the model's text positions is cut
there, and the answer says ``"truncated": true``), the files the captioner reads
(``Captioner.inputs``: ``image`` and/or ``audio``) for caption. Every decoding option of
``omniformer translate``/``caption`` is a field (``GENERATION_FLAGS``; absent: the recipe's),
checked before anything runs: each failure is a 4xx JSON error naming the field
(``omniformer.serve.uploads``). Full reference: docs/serving-generation.md.

Without ``stream``, requests join the micro-batcher; a batch is split by decoding options and
each group decoded in one call (a seeded sampler alone, so its draw does not depend on who
shared its batch). With ``stream=true``, the decoder's ``stream()`` runs in a thread of its
own, at most ``--max-streams`` at once (503 ``overloaded`` past them), and stops at the next
token when the client goes away. Streaming decodes one sequence at a time, so it needs
``num_beams=1``: a request asking for more beams is refused; one that does not ask is decoded
greedily (or sampled, with ``do_sample``) whatever the recipe's beam width.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import torch
from fastapi import FastAPI, Request
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from ...data.audio import AudioError
from ...data.batching import collate
from ...data.image import ImageError
from ...data.text import TokenizerError
from ...generation_flags import GENERATION_FLAGS
from ...model.generate import GenerationConfig, GenerationError, stream
from ...serve.service import BatchedService, warm_up_seconds
from ...serve.uploads import (ERROR_RESPONSES, MAX_TEXT_FIELD_BYTES, ApiError, MediaDecoder, b64, blank_png,
                              check_text, check_upload, read_form, read_json, silent_wav)
from ..base import ServeLimits

log = logging.getLogger(__name__)

MAX_TEXT_CHARS = 2000      # one source sentence (the model reads its first text.max_len word pieces)
MAX_BEAMS = 16             # the widest beam one request may ask for (a beam costs a decoder row)
ENVELOPE = 64 * 1024       # multipart boundaries and the option fields
FILES = ("image", "audio")
FLAGS = ("do_sample",)
INTS = ("num_beams", "max_new_tokens", "min_new_tokens", "top_k", "no_repeat_ngram_size", "seed")
FLOATS = ("temperature", "top_p", "repetition_penalty", "length_penalty")
assert set(GENERATION_FLAGS) == set(FLAGS + INTS + FLOATS), "every decoding option has a type here"


# ---------------------------------------------------------------------------------------------
# Decoding options, as a form (text) or JSON (typed values) sends them
# ---------------------------------------------------------------------------------------------

def _invalid(field: str, message: str) -> ApiError:
    return ApiError(422, "invalid_field", f"{field}: {message}", field)


def _shown(value: Any) -> str:
    return repr(value[:20]) if isinstance(value, str) else json.dumps(value)[:20]


def parse_flag(value: Any, field: str, form: bool) -> bool | None:
    """true/false; a form's text also as 1/0, yes/no, on/off ('' is false)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if form and isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "on", "false", "0", "no",
                                                                     "off", ""):
        return value.strip().lower() in ("true", "1", "yes", "on")
    raise _invalid(field, f"expected true or false, got {_shown(value)}")


class Bounds:
    """What the server allows each option (beyond ``GenerationConfig.check``): the numbers a
    model can decode with, without overflowing or running for ever."""

    def __init__(self, vocab_size: int, max_new_tokens: int):
        self.vocab_size, self.max_new_tokens = vocab_size, max_new_tokens
        self.ints = {"num_beams": (1, min(vocab_size, MAX_BEAMS)), "max_new_tokens": (1, max_new_tokens),
                     "min_new_tokens": (0, max_new_tokens), "top_k": (0, 10 ** 6),
                     "no_repeat_ngram_size": (0, 4096), "seed": (0, 2 ** 63 - 1)}
        # (low, high, low is exclusive)
        self.floats = {"temperature": (1e-4, 100.0, False), "top_p": (0.0, 1.0, True),
                       "repetition_penalty": (0.01, 100.0, False), "length_penalty": (-10.0, 10.0, False)}

    def expected(self, name: str) -> str:
        if name in self.ints:
            low, high = self.ints[name]
            what = {"num_beams": f" (1: greedy or sampling; at most the vocabulary's {self.vocab_size} tokens and "
                                 f"the server's {MAX_BEAMS} beams)",
                    "max_new_tokens": " (the decoder's positions)", "min_new_tokens": " (and at most max_new_tokens)",
                    "top_k": " (0: off)", "no_repeat_ngram_size": " (0: off)"}.get(name, "")
            return f"a whole number from {low} to {high}{what}"
        low, high, exclusive = self.floats[name]
        if name == "top_p":
            return "a number in (0, 1]"
        if name == "temperature":
            return f"a number greater than 0, from {low:g} to {high:g}"
        return f"a number from {low:g} to {high:g}" + (" (1: off)" if name == "repetition_penalty" else "")

    def parse(self, name: str, value: Any, form: bool) -> Any:
        """One option's value, typed and in range; None when absent (the recipe's)."""
        if value is None:
            return None
        if name in FLAGS:
            return parse_flag(value, name, form)
        if form and isinstance(value, str):
            text = value.strip()
            try:
                value = int(text) if name in INTS else float(text)
            except ValueError:
                raise _invalid(name, f"expected {self.expected(name)}, got {_shown(value)}") from None
        if name in INTS:
            if isinstance(value, bool) or not isinstance(value, int):
                raise _invalid(name, f"expected {self.expected(name)}, got {_shown(value)}")
            low, high = self.ints[name]
            if name == "num_beams" and value > self.vocab_size:
                raise _invalid(name, f"{value} beams is wider than the vocabulary's {self.vocab_size} tokens; "
                                     f"expected a whole number from {low} to {high}")
            if not low <= value <= high:
                raise _invalid(name, f"expected {self.expected(name)}, got {value}")
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _invalid(name, f"expected {self.expected(name)}, got {_shown(value)}")
        low, high, exclusive = self.floats[name]
        if (value <= low if exclusive else value < low) or value > high:
            raise _invalid(name, f"expected {self.expected(name)}, got {value:g}")
        return float(value)

    def schema(self, name: str) -> dict[str, Any]:
        """The option's OpenAPI schema (what ``parse`` accepts from JSON)."""
        description = {
            "num_beams": "beam width; 1: greedy or sampling (streaming needs 1)", "do_sample": "sample instead of searching",
            "max_new_tokens": "at most this many tokens", "min_new_tokens": "no stop before this many tokens",
            "length_penalty": "beam score / new tokens ** this", "temperature": "sampling: logits / this",
            "top_k": "sampling: the k likeliest tokens only (0: off)", "top_p": "sampling: the nucleus of this mass",
            "repetition_penalty": "> 1 discourages repeated tokens (1: off)",
            "no_repeat_ngram_size": "no n-gram of this size twice (0: off)", "seed": "the sampler's seed"}[name]
        if name in FLAGS:
            return {"type": "boolean", "description": description}
        if name in INTS:
            low, high = self.ints[name]
            return {"type": "integer", "minimum": low, "maximum": high, "description": description}
        low, high, exclusive = self.floats[name]
        bound = {"exclusiveMinimum": low} if exclusive else {"minimum": low}
        return {"type": "number", **bound, "maximum": high, "description": description}


_OPTION_NAME = re.compile(r"^\s*([a-z_]+)")


def _option_error(e: Exception) -> ApiError:
    """A GenerationError (or the predictor's own) as a 422 naming the option it starts with."""
    message = str(e)
    match = _OPTION_NAME.match(message)
    field = match.group(1) if match and match.group(1) in GENERATION_FLAGS else None
    return ApiError(422, "invalid_field", message, field)


# ---------------------------------------------------------------------------------------------
# Text fields: UTF-8, within the limits
# ---------------------------------------------------------------------------------------------

def utf8_problem(value: str, raw: bytes | None = None) -> str | None:
    """Why ``value`` is not UTF-8 text, or None. A JSON string can hold lone surrogates; a form
    field that was not UTF-8 reaches here decoded as Latin-1 (Starlette's fallback), which is
    told apart by finding those Latin-1 bytes, as a whole part, in the ``raw`` body."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"not valid UTF-8 (a lone surrogate at character {e.start})"
    if raw is None or value.isascii() or any(ord(c) > 255 for c in value):
        return None
    data = value.encode("latin-1")
    try:
        data.decode("utf-8")
        return None  # valid UTF-8 would have been decoded as UTF-8: the value is what was sent
    except UnicodeDecodeError as e:
        if b"\r\n\r\n" + data + b"\r\n--" in raw:
            return f"not UTF-8 text (byte 0x{data[e.start]:02X} at {e.start}); send it encoded as UTF-8"
    return None


def check_source(value: Any, field: str = "text", raw: bytes | None = None) -> str:
    if value is None:
        raise ApiError(422, "missing_field", f"{field}: missing; send the text to translate", field)
    value = check_text(value, field, MAX_TEXT_CHARS)
    problem = utf8_problem(value, raw)
    if problem:
        raise ApiError(422, "invalid_field", f"{field}: {problem}", field)
    return value


# ---------------------------------------------------------------------------------------------
# Server-Sent Events
# ---------------------------------------------------------------------------------------------

def sse(event: str, data: dict[str, Any]) -> bytes:
    """One event: ``event: NAME`` and one ``data:`` line of JSON (JSON has no raw newlines)."""
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


class _Live:
    """One stream under way: the decoding thread's events for the event loop, and ``stop`` for
    the thread (set when the client goes away or the server stops)."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.queue = loop, asyncio.Queue()
        self.stop, self.finished = threading.Event(), threading.Event()
        self.tokens = 0

    def put(self, kind: str, value: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (kind, value))
        except RuntimeError:  # the event loop is gone (the server stopped): nobody to tell
            self.stop.set()

    def cancel(self) -> None:
        self.stop.set()
        self.put("cancelled", None)


class EventStream(Response):
    """``text/event-stream`` from a ``_Live``: one event per token, then ``done`` (or ``error``).
    Watches for the client's disconnect while it streams, and stops the decoding thread then,
    without waiting for the next token to fail to send."""

    media_type = "text/event-stream"

    def __init__(self, live: _Live, final: Callable[[dict[str, Any]], dict[str, Any]]):
        super().__init__(content=None, status_code=200, headers={"Cache-Control": "no-cache",
                                                                 "X-Accel-Buffering": "no"})
        self.live, self.final = live, final
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]  # chunked, as it comes

    async def __call__(self, scope, receive, send) -> None:
        live = self.live

        async def watch() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    live.cancel()
                    return

        watcher = asyncio.create_task(watch())
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            while True:
                kind, value = await live.queue.get()
                if kind == "cancelled":
                    return
                if kind == "token":
                    chunk = sse("token", value)
                elif kind == "done":
                    chunk = sse("done", self.final(value))
                else:
                    chunk = sse("error", value)
                await send({"type": "http.response.body", "body": chunk, "more_body": kind == "token"})
                if kind != "token":
                    return
        except (OSError, ClientDisconnect):  # the client left while we sent
            log.info("a generation stream's client went away")
        finally:
            live.cancel()  # no-op once the thread finished; otherwise it stops at the next token
            watcher.cancel()


# ---------------------------------------------------------------------------------------------
# The service
# ---------------------------------------------------------------------------------------------

class GenerateService(BatchedService):
    """Translate or caption behind ``/v1/generate``: validated requests, micro-batched
    decoding grouped by options, and bounded token streams."""

    verb = "generate"

    def __init__(self, predictor: Any, limits: ServeLimits, metrics: Any = None):
        super().__init__(predictor, self._batch, limits, metrics)
        self.task = predictor.task
        model, t = predictor.cfg.model, predictor.task_config
        self.translate = self.task == "translate"
        self.inputs = ["text"] if self.translate else list(predictor.inputs)
        self.bounds = Bounds(predictor.tokenizer.vocab_size, t.max_target_len - 1)
        self.max_audio_seconds = float(limits.max_audio_seconds or model.audio.max_seconds)
        self.decoder = MediaDecoder(limits.max_pixels, self.max_audio_seconds, model.audio.sample_rate)
        self.max_streams = int(limits.max_streams)
        self.streams = 0                  # streams admitted whose decoding thread has not ended
        self._lock = threading.Lock()
        self._live: set[_Live] = set()
        self.stream_pool: ThreadPoolExecutor | None = None
        self.example_fields = None
        if metrics is not None:
            from ...serve.metrics import Gauge
            metrics.add(Gauge("omniformer_streams", "Generation streams open.", read=lambda: self.streams))

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        if self.max_streams:
            self.stream_pool = ThreadPoolExecutor(max_workers=self.max_streams, thread_name_prefix="omniformer-stream")
        await super().start()

    async def stop(self) -> None:
        with self._lock:
            live_streams = list(self._live)
        for live in live_streams:
            live.stop.set()
        await super().stop()
        if self.stream_pool is not None:
            self.stream_pool.shutdown(wait=False, cancel_futures=True)
            self.stream_pool = None

    async def warm_up(self) -> None:
        """One short generation through the whole path (decode, encoder, decoder)."""
        model = self.predictor.cfg.model
        if self.translate:
            values: dict[str, Any] = {"text": "warm up"}
        else:
            seconds = warm_up_seconds(self.max_audio_seconds, model.audio.max_seconds)
            warm = {"image": blank_png(model.image.size), "audio": silent_wav(seconds, model.audio.sample_rate)}
            values = {m: warm[m] for m in self.inputs}
        config = self.predictor.generation_config(num_beams=1, max_new_tokens=min(2, self.bounds.max_new_tokens))
        prepared = await self.decode(self._prepare, values)
        await self.infer({**prepared, "config": config}, 1)

    def defaults(self) -> dict[str, Any]:
        return dataclasses.asdict(self.predictor.generation_config())

    def info(self) -> dict[str, Any]:
        model = self.predictor.cfg.model
        body: dict[str, Any] = {
            "task": self.task, "model": self.model_id, "inputs": self.inputs, "route": "/v1/generate",
            "decoding": self.defaults(), "options": list(GENERATION_FLAGS),
            "max_new_tokens": self.bounds.max_new_tokens, "max_beams": self.bounds.ints["num_beams"][1],
            "vocab_size": self.predictor.tokenizer.vocab_size,
            "stream": {"route": "/v1/generate", "field": "stream", "max_streams": self.max_streams, "num_beams": 1},
            "max_upload_bytes": self.limits.max_upload_bytes}
        if self.translate:
            body.update(max_text_chars=MAX_TEXT_CHARS, max_source_tokens=model.text.max_len)
        else:
            body.update(image_size=model.image.size if "image" in self.inputs else None,
                        audio_sample_rate=model.audio.sample_rate if "audio" in self.inputs else None,
                        max_audio_seconds=self.max_audio_seconds, max_pixels=self.limits.max_pixels)
        return body

    # -- one request ---------------------------------------------------------------------------

    def _prepare(self, values: dict[str, Any]) -> dict[str, Any]:
        """Runs in the decode pool: the request's input -> the model's (``truncated`` says
        whether a source was cut at the text positions)."""
        if self.translate:
            tk, limit = self.predictor.tokenizer, self.predictor.cfg.model.text.max_len
            try:
                ids = tk.encode(values["text"])
            except (TokenizerError, ValueError) as e:
                raise ApiError(422, "invalid_field", f"text: {e}", "text") from None
            truncated = len(ids) > limit
            if truncated:  # as Translator.encode cuts it: the first limit - 1 pieces and [SEP]
                log.warning("a source of %d word pieces was cut at the model's %d text positions", len(ids), limit)
                ids = ids[: limit - 1] + [tk.sep_id]
            return {"ids": ids, "truncated": truncated, "pieces": len(ids)}
        decoded = {}
        for m, value in values.items():
            decoded[m] = self.decoder.image(value, m) if m == "image" else self.decoder.audio(value, m)
        try:
            return {"item": self.predictor.prepare(**decoded)}
        except (ImageError, AudioError, ValueError) as e:  # CaptionError names the input it could not read
            message = str(e)
            field = next((m for m in decoded if message.startswith(f"{m}:")), next(iter(decoded)))
            raise ApiError(400, "invalid_input", message if message.startswith(f"{field}:") else f"{field}: {message}",
                           field) from None

    def _model_input(self, prepared: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if self.translate:
            ids, mask = self.predictor.tokenizer.pad([p["ids"] for p in prepared])
            return {"text": ids, "text_mask": mask}
        return collate([{**p["item"], "index": i} for i, p in enumerate(prepared)])

    @torch.no_grad()
    def _batch(self, items: list[dict[str, Any]], _top_k: int) -> list[str]:
        """The micro-batcher's function: items grouped by decoding options, one decode per group;
        a seeded sampler decodes alone (its draw would otherwise depend on its batch mates)."""
        groups: dict[Any, list[int]] = {}
        for i, it in enumerate(items):
            config = it["config"]
            key = (dataclasses.astuple(config), i if config.do_sample and config.seed is not None else None)
            groups.setdefault(key, []).append(i)
        out: list[Any] = [None] * len(items)
        for indices in groups.values():
            config = items[indices[0]]["config"]
            texts = self.predictor.decode(self._model_input([items[i] for i in indices]), config)
            for i, text in zip(indices, texts):
                out[i] = text
        return out

    def options(self, given: dict[str, Any], form: bool, streaming: bool) -> GenerationConfig:
        """The request's decoding options over the recipe's, checked (422 naming the option)."""
        options = {name: self.bounds.parse(name, given.get(name), form) for name in GENERATION_FLAGS}
        options = {k: v for k, v in options.items() if v is not None}
        if streaming:
            if options.get("num_beams", 1) > 1:
                raise ApiError(422, "invalid_field", f"num_beams: streaming needs num_beams=1 (beam search knows its "
                                                     f"best sequence only at the end), got {options['num_beams']}; "
                                                     f"leave num_beams out or send stream=false", "num_beams")
            options["num_beams"] = 1  # the recipe's beams are for whole answers
        try:
            return self.predictor.generation_config(**options)
        except (GenerationError, ValueError) as e:
            raise _option_error(e) from None

    def _check_inputs(self, values: dict[str, Any], raw: bytes | None) -> dict[str, Any]:
        """The input fields a request gave, validated for this task."""
        given = {m: v for m, v in values.items() if v is not None}
        if self.translate:
            for m in FILES:
                if m in given:
                    raise ApiError(422, "invalid_field", f"{m}: this model translates text; send the source "
                                                         f"in the text field", m)
            return {"text": check_source(given.get("text"), "text", raw)}
        if "text" in given:
            raise ApiError(422, "invalid_field", f"text: this model captions {' and '.join(self.inputs)}; it reads "
                                                 f"no text", "text")
        for m in FILES:
            if m in given and m not in self.inputs:
                raise ApiError(422, "invalid_field", f"{m}: this model captions {' and '.join(self.inputs)}, "
                                                     f"not {m}", m)
        for m in self.inputs:
            if m not in given:
                what = "the image (PNG, JPEG, GIF, BMP or WebP)" if m == "image" else "the recording (WAV, FLAC or OGG)"
                raise ApiError(422, "missing_field", f"{m}: missing; send {what} to caption", m)
            check_upload(given[m], m, self.limits.max_upload_bytes)
        return {m: given[m] for m in self.inputs}

    def _body(self, text: str, prepared: dict[str, Any], values: dict[str, Any],
              config: GenerationConfig) -> dict[str, Any]:
        body: dict[str, Any] = {"text": text}
        if self.translate:
            body.update(source=values["text"], truncated=prepared["truncated"])
        else:
            body["inputs"] = list(values)
        body.update(model=self.model_id, decoding=dataclasses.asdict(config))
        return body

    async def generate(self, request: Request, values: dict[str, Any], options: dict[str, Any], form: bool,
                       raw: bytes | None = None) -> Response:
        """The answer to one request: JSON, or an event stream with ``stream=true``."""
        streaming = bool(parse_flag(options.get("stream"), "stream", form))
        config = self.options(options, form, streaming)
        values = self._check_inputs(values, raw)
        if streaming:
            return await self._stream(request, values, config)
        prepared = await self.decode(self._prepare, values)
        text = await self.infer({**prepared, "config": config}, 1)
        if self.metrics is not None:
            self.metrics.answers.inc("+".join(values))
        body = self._body(text, prepared, values, config)
        body["time_ms"] = _elapsed_ms(request)
        return _json(body)

    # -- streams -------------------------------------------------------------------------------

    async def _stream(self, request: Request, values: dict[str, Any], config: GenerationConfig) -> Response:
        if self.max_streams == 0:
            raise ApiError(503, "overloaded", "streaming is off on this server (--max-streams 0); send the "
                                              "request without stream=true")
        pool = self.decode_pool
        if pool is None or self.stream_pool is None or not self.ready:
            raise ApiError(503, "not_ready", "the model is not ready (loading, warming up or stopped)")
        prepared = await asyncio.get_running_loop().run_in_executor(pool, self._prepare, values)
        with self._lock:
            if self.streams >= self.max_streams:
                raise ApiError(503, "overloaded", f"all {self.max_streams} generation streams are in use; try again "
                                                  f"shortly, or send the request without stream=true")
            self.streams += 1
            live = _Live(asyncio.get_running_loop())
            self._live.add(live)
        try:
            self.stream_pool.submit(self._decode_stream, live, prepared, config)
        except RuntimeError:  # the pool shut down meanwhile
            self._release(live)
            raise ApiError(503, "not_ready", "the server is shutting down") from None

        def final(result: dict[str, Any]) -> dict[str, Any]:
            if self.metrics is not None:
                self.metrics.answers.inc("stream")
            body = self._body(result["text"], prepared, values, config)
            body.update(tokens=result["tokens"], stopped=result["stopped"], time_ms=_elapsed_ms(request))
            return body

        return EventStream(live, final)

    def _release(self, live: _Live) -> None:
        with self._lock:
            self.streams -= 1
            self._live.discard(live)
        live.finished.set()

    def _decode_stream(self, live: _Live, prepared: dict[str, Any], config: GenerationConfig) -> None:
        """Runs in a stream thread: ``stream()`` one token at a time, each an event with the
        text so far; returns at the next token once ``live.stop`` is set."""
        tk, model = self.predictor.tokenizer, self.predictor.model
        try:
            with torch.no_grad():
                device = self.predictor.device
                batch = {k: v.to(device) for k, v in self._model_input([prepared]).items()}
                context, context_mask = model.encode(batch)
                steps = stream(model.decoder, context, context_mask, bos_id=tk.cls_id, stop_ids=[tk.sep_id],
                               banned_ids=[tk.pad_id, tk.cls_id, tk.mask_id], config=config)
                tokens: list[int] = []
                text, stopped = "", False
                try:
                    for step in steps:
                        if live.stop.is_set():
                            return
                        token = step[0]
                        if token is None:
                            stopped = True
                            break
                        tokens.append(token)
                        new = tk.decode(tokens)
                        event = {"text": new, "delta": new[len(text):] if new.startswith(text) else new,
                                 "tokens": len(tokens)}
                        if not new.startswith(text):
                            event["replace"] = True  # the tokenizer rewrote the end: ``text`` is the whole text
                        text = new
                        live.tokens = len(tokens)
                        live.put("token", event)
                finally:
                    steps.close()
            if not live.stop.is_set():
                live.put("done", {"text": text, "tokens": len(tokens), "stopped": stopped})
        except Exception as e:
            log.exception("the model failed to generate a stream")
            if self.metrics is not None:
                self.metrics.errors.inc("internal")
            live.put("error", ApiError(500, "internal", f"the model failed to {self.verb}: "
                                                        f"{type(e).__name__}").body())
        finally:
            self._release(live)

    # -- routes --------------------------------------------------------------------------------

    def _schemas(self) -> tuple[dict, dict, dict]:
        options = {name: self.bounds.schema(name) for name in GENERATION_FLAGS}
        options["stream"] = {"type": "boolean", "default": False,
                             "description": "Server-Sent Events: one event per token, then the whole text"}
        if self.translate:
            text = {"type": "string", "minLength": 1, "maxLength": MAX_TEXT_CHARS,
                    "description": "the source text (UTF-8)"}
            multipart, as_json, required = {"text": text}, {"text": text}, ["text"]
        else:
            kinds = {"image": "PNG, JPEG, GIF, BMP or WebP", "audio": "WAV, FLAC or OGG"}
            multipart = {m: {"type": "string", "format": "binary", "description": kinds[m]} for m in self.inputs}
            as_json = {m: {"type": "string", "description": f"the file, base64 ({kinds[m]}; a data: URL prefix is "
                                                            f"allowed)"} for m in self.inputs}
            required = list(self.inputs)
        form = {"type": "object", "required": required, "properties": {**multipart, **options}}
        body = {"type": "object", "required": required, "additionalProperties": False,
                "properties": {**as_json, **options}}
        answer = {"type": "object", "required": ["text", "model", "time_ms"], "properties": {
            "text": {"type": "string"}, "model": {"type": "string"}, "time_ms": {"type": "number"},
            "source": {"type": "string"}, "truncated": {"type": "boolean"},
            "inputs": {"type": "array", "items": {"type": "string"}}, "decoding": {"type": "object"}}}
        # One Server-Sent Event (OpenAPI 3.1: the event-stream's schema describes each event).
        token = {"type": "object", "required": ["text", "delta", "tokens"], "properties": {
            "text": {"type": "string"}, "delta": {"type": "string"}, "tokens": {"type": "integer", "minimum": 1},
            "replace": {"type": "boolean"}}}
        done = {**answer, "required": ["text", "model", "time_ms", "tokens", "stopped"], "properties": {
            **answer["properties"], "tokens": {"type": "integer", "minimum": 0}, "stopped": {"type": "boolean"}}}
        error = {"type": "object", "required": ["error"], "properties": {"error": {
            "type": "object", "required": ["type", "message"],
            "properties": {"type": {"type": "string"}, "message": {"type": "string"}}}}}
        event = {"type": "object", "required": ["event", "data"], "properties": {
            "event": {"type": "string", "enum": ["token", "done", "error"]},
            "data": {"type": "string", "contentMediaType": "application/json",
                     "contentSchema": {"anyOf": [token, done, error]}}}}
        responses = {200: {"description": "the text (JSON), or with stream=true its tokens as Server-Sent Events: "
                                          "`token` events (the text so far), then `done` (or `error`)",
                           "content": {"application/json": {"schema": answer},
                                       "text/event-stream": {"schema": event}}}, **ERROR_RESPONSES}
        return ({"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": form}}}},
                {"requestBody": {"required": True, "content": {"application/json": {"schema": body}}}}, responses)

    def add_routes(self, app: FastAPI, timed: Callable) -> dict[str, int]:
        """``POST /v1/generate`` and ``POST /v1/generate.json``; returns their body limits."""
        multipart_schema, json_schema, responses = self._schemas()
        fields = ("text", *FILES)
        options = (*GENERATION_FLAGS, "stream")
        what = "Translate a text" if self.translate else f"Caption {' and '.join(self.inputs)}"

        @app.post("/v1/generate", tags=[self.task], openapi_extra=multipart_schema, responses=responses,
                  response_class=Response, summary=f"{what} (multipart; stream=true for Server-Sent Events)")
        async def generate_multipart(request: Request):
            raw = None
            if self.translate:  # the raw form, to tell a text field that was not UTF-8 (see utf8_problem)
                try:
                    raw = await request.body()
                except ClientDisconnect:
                    raise ApiError(400, "client_disconnected", "body: the client disconnected during the upload") from None
            try:
                form = await read_form(request, files=FILES, texts=("text", *options))
            except ApiError as e:
                if e.type != "unsupported_media_type":
                    raise
                raise ApiError(415, e.type, f"body: expected multipart/form-data with {' and '.join(self.inputs)} "
                                            f"(and any decoding options, stream); or POST JSON to "
                                            f"/v1/generate.json") from None
            return await self.generate(request, {m: form.get(m) for m in fields},
                                       {k: form.get(k) for k in options}, form=True, raw=raw)

        json_fields = (*(self.inputs if not self.translate else ("text",)), *options)

        @app.post("/v1/generate.json", tags=[self.task], openapi_extra=json_schema, responses=responses,
                  response_class=Response, summary=f"{what} (JSON, files base64; stream=true for Server-Sent Events)")
        async def generate_json(request: Request):
            data = await read_json(request)
            for key, value in data.items():
                if key not in json_fields:
                    raise ApiError(422, "invalid_field", f"{key}: unknown field; expected {', '.join(json_fields)}",
                                   key)
                if value is None:
                    raise ApiError(422, "invalid_field", f"{key}: null; leave the field out instead", key)
                if key in FILES and not isinstance(value, str):
                    raise ApiError(422, "invalid_field", f"{key}: expected the file base64-encoded, "
                                                         f"got {type(value).__name__}", key)
            values = {m: b64(data.get(m), m) if m in FILES else data.get(m) for m in fields if m in json_fields}
            return await self.generate(request, values, {k: data.get(k) for k in options}, form=False)

        files = 0 if self.translate else len(self.inputs) * self.limits.max_upload_bytes
        text = MAX_TEXT_FIELD_BYTES if self.translate else 0
        return {"/v1/generate": files + text + ENVELOPE, "/v1/generate.json": (files + text) * 4 // 3 + 8 + ENVELOPE}


def _elapsed_ms(request: Request) -> float:
    start = getattr(request.state, "start", None) or time.perf_counter()
    return round((time.perf_counter() - start) * 1000, 2)


def _json(body: dict[str, Any]) -> Response:
    from fastapi.responses import JSONResponse
    return JSONResponse(body)
