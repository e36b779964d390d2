"""The question-answering server: show an image, ask about it in text or by voice.

    from omniformer.serve.app import create_app
    app = create_app("runs/quickstart/qa/best")      # then: uvicorn.run(app)

Endpoints (OpenAPI docs at ``/docs``):

    POST /v1/answer          multipart: image file, question text and/or audio file, top_k
    POST /v1/answer.json     JSON: {"image": base64, "question": str, "audio": base64, "top_k": int}
    GET  /healthz            the process is up
    GET  /readyz             the model is loaded, warmed up and its worker running
    GET  /metrics            Prometheus text
    GET  /v1/examples        a few test questions to try (when started with an examples manifest)
    GET  /v1/examples/{i}/image, /v1/examples/{i}/audio
    GET  /                   the web page

Uploads are untrusted: the body size is capped while it streams in, file types are sniffed
from the bytes (never the name or content type), images are checked against a pixel budget
before decoding and audio against a duration budget before reading samples. Every failure is
a 4xx JSON ``{"error": {"type", "message", "field"}}``; nothing a request sends is ever used
as a filesystem path.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import soundfile as sf
import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match

from ..data.audio import AudioError, load_audio
from ..data.image import ImageError, load_image
from ..tasks.qa import QAPredictor
from .batcher import BatcherStopped, MicroBatcher, Overloaded
from .metrics import Gauge, ServerMetrics

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
# The only files the page needs, read once at start-up and served from memory by name.
STATIC_FILES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
                "style.css": "text/css; charset=utf-8"}
# The page loads nothing from elsewhere; blob:/data: are the previews of the user's own files.
PAGE_CSP = ("default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
            "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")

MAX_QUESTION_CHARS = 1000
DEFAULT_TOP_K = 5


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------

class ApiError(Exception):
    """A request that cannot be answered; becomes ``{"error": {...}}`` with ``status``."""

    def __init__(self, status: int, type: str, message: str, field: str | None = None):
        super().__init__(message)
        self.status, self.type, self.message, self.field = status, type, message, field

    def body(self) -> dict[str, Any]:
        error = {"type": self.type, "message": self.message}
        if self.field is not None:
            error["field"] = self.field
        return {"error": error}


class PayloadTooLarge(StarletteHTTPException):
    """Raised from inside ``receive`` when a streamed body passes the cap. An HTTPException, so
    FastAPI's body parsing lets it through instead of turning it into a generic 400."""

    def __init__(self, limit: int):
        super().__init__(413, f"the request body is larger than the {limit} byte limit")
        self.limit = limit


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"request body: larger than the limit of {limit} bytes "
                                              f"({limit / 2 ** 20:.1f} MiB); send a smaller image or recording")


_HTTP_ERROR_TYPES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


# ---------------------------------------------------------------------------------------------
# Content sniffing: what the bytes are, whatever the file is called
# ---------------------------------------------------------------------------------------------

def sniff_image(data: bytes) -> str | None:
    """PNG, JPEG, GIF, BMP or WEBP from the magic bytes; None for anything else."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data.startswith(b"BM") and len(data) >= 26:
        return "BMP"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def sniff_audio(data: bytes) -> str | None:
    """WAV, FLAC or OGG from the magic bytes; None for anything else."""
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "WAV"
    if data.startswith(b"fLaC"):
        return "FLAC"
    if data.startswith(b"OggS"):
        return "OGG"
    return None


def _describe(data: bytes) -> str:
    """A hint at what was sent instead, for error messages."""
    for magic, name in ((b"%PDF", "a PDF document"), (b"PK\x03\x04", "a ZIP archive"), (b"{", "JSON text"),
                        (b"<", "HTML/XML text"), (b"\x1aE\xdf\xa3", "WebM/Matroska"), (b"ID3", "MP3 audio")):
        if data.startswith(magic):
            return name
    if data[4:8] == b"ftyp":
        return "an MP4/M4A/HEIC file"
    if data and sniff_image(data):
        return f"a {sniff_image(data)} image"
    if data and sniff_audio(data):
        return f"{sniff_audio(data)} audio"
    return "unrecognised data"


# ---------------------------------------------------------------------------------------------
# Request and response models (used for validation and for the OpenAPI docs)
# ---------------------------------------------------------------------------------------------

class AnswerJSON(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image: str = Field(description="The image, base64 (PNG, JPEG, GIF, BMP or WebP). A data: URL prefix is allowed.")
    question: str | None = Field(None, description="The question in text.")
    audio: str | None = Field(None, description="The question spoken, base64 (WAV, FLAC or OGG).")
    top_k: int = Field(DEFAULT_TOP_K, description="How many answers to return, best first.")


class Answer(BaseModel):
    answer: str
    probability: float


class AnswerResponse(BaseModel):
    answers: list[Answer]
    model: str
    asked_by: Literal["text", "voice", "text+voice"]
    time_ms: float


class ErrorDetail(BaseModel):
    type: str
    message: str
    field: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


_ERROR_RESPONSES = {code: {"model": ErrorResponse, "description": what} for code, what in [
    (400, "undecodable image or audio, malformed body"), (413, "body, image pixels or audio duration over the limit"),
    (415, "not an image / not audio (sniffed from the bytes)"), (422, "missing or invalid field"),
    (503, "not ready or overloaded")]}

_MULTIPART_SCHEMA = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["image"], "properties": {
        "image": {"type": "string", "format": "binary", "description": "PNG, JPEG, GIF, BMP or WebP"},
        "question": {"type": "string", "description": "the question in text (or send audio, or both)"},
        "audio": {"type": "string", "format": "binary", "description": "the question spoken: WAV, FLAC or OGG"},
        "top_k": {"type": "integer", "minimum": 1, "default": DEFAULT_TOP_K}}}}}}}

_JSON_SCHEMA = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": AnswerJSON.model_json_schema()}}}}


# ---------------------------------------------------------------------------------------------
# Middleware (plain ASGI, so it sees every request, including ones rejected before routing)
# ---------------------------------------------------------------------------------------------

async def _send_json(send, status: int, body: dict[str, Any]) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": payload})


class BodyLimitMiddleware:
    """Cap request bodies: refuse at once on a too-large Content-Length, and stop a streamed
    (chunked) body as soon as it passes the cap, so no body is ever read whole into memory."""

    def __init__(self, app, limits: dict[str, int], default: int, on_reject=None):
        self.app, self.limits, self.default, self.on_reject = app, limits, default, on_reject

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limits.get(scope.get("path", ""), self.default)
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared < 0 or declared > limit:
                    error = _too_large(limit) if declared > limit else ApiError(
                        400, "invalid_body", "Content-Length: expected a non-negative integer")
                    if self.on_reject is not None:
                        self.on_reject(error.type)
                    return await _send_json(send, error.status, error.body())
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLarge(limit)
            return message

        await self.app(scope, limited_receive, send)


class MetricsMiddleware:
    """Count every response by endpoint (the route's template, never the raw path, so label
    values stay few) and status, and time it."""

    def __init__(self, app, metrics: ServerMetrics, routes_of):
        self.app, self.metrics, self.routes_of = app, metrics, routes_of

    def _endpoint(self, scope) -> str:
        for route in self.routes_of():
            match, _ = route.matches(scope)
            if match != Match.NONE:
                return getattr(route, "path", "other")
        return "other"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        scope.setdefault("state", {})["start"] = start  # request.state.start, for time_ms
        status = 500

        async def send_wrapper(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            endpoint = self._endpoint(scope)
            self.metrics.requests.inc(endpoint, str(status))
            self.metrics.latency.observe(time.perf_counter() - start, endpoint)


# ---------------------------------------------------------------------------------------------
# The service: validation, decoding, batching
# ---------------------------------------------------------------------------------------------

@dataclass
class Example:
    sample_id: str
    question: str | None
    answer: str | None
    image: bytes
    image_type: str
    audio: bytes | None = None
    audio_type: str | None = None


def load_examples(manifest: str | Path, count: int = 8, split: str = "test") -> list[Example]:
    """A few samples with an image and a text question, read once at start-up and kept in memory.

    Different question families first (round robin over ``meta.family``), so the page shows variety.
    """
    from ..data.manifest import read_manifest
    manifest = Path(manifest)
    root = manifest.parent
    samples = [s for s in read_manifest(manifest)
               if s.get("split", "train") == split and s.get("image") and s.get("question")]
    by_family: dict[str, list[dict]] = {}
    for s in samples:
        by_family.setdefault(str(s.get("meta", {}).get("family", "")), []).append(s)
    picked: list[dict] = []
    while len(picked) < count and any(by_family.values()):
        for family in list(by_family):
            if by_family[family] and len(picked) < count:
                picked.append(by_family[family].pop(0))
    out = []
    for s in picked:
        image = (root / s["image"]).read_bytes()
        kind = sniff_image(image)
        if kind is None:
            continue
        audio, audio_kind = None, None
        if s.get("question_audio") and (root / s["question_audio"]).is_file():
            audio = (root / s["question_audio"]).read_bytes()
            audio_kind = sniff_audio(audio)
            if audio_kind is None:
                audio = None
        out.append(Example(str(s.get("id", len(out))), s.get("question"), s.get("answer"), image, kind,
                           audio, audio_kind))
    return out


_MIME = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif", "BMP": "image/bmp", "WEBP": "image/webp",
         "WAV": "audio/wav", "FLAC": "audio/flac", "OGG": "audio/ogg"}


def _cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))  # respects taskset/cpuset limits
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def default_torch_threads() -> int:
    """Half the usable cores, at most 8, for torch's intra-op threads.

    The batches are small matrices that gain little from more threads, while the event loop,
    the decode pool (Pillow, soundfile, mel features) and often a proxy or load generator need
    the other half. On 2 cores, 1 thread measured better than 2 in both latency and throughput
    (benchmarks/serve_load.py).
    """
    return max(1, min(8, _cpu_count() // 2))


def _silent_wav(seconds: float, rate: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.zeros(int(seconds * rate), dtype=np.float32), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _blank_png(size: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (128, 128, 128)).save(buf, format="PNG")
    return buf.getvalue()


class QAService:
    """Turns raw request fields into answers: validation, decoding (in a thread pool) and the
    micro-batched model."""

    def __init__(self, predictor: QAPredictor, *, max_batch: int, max_wait_ms: float, max_upload_bytes: int,
                 max_pixels: int, max_audio_seconds: float, metrics: ServerMetrics, decode_threads: int = 2,
                 max_queue: int = 1024):
        self.predictor = predictor
        self.max_upload_bytes, self.max_pixels, self.max_audio_seconds = max_upload_bytes, max_pixels, max_audio_seconds
        self.sample_rate = predictor.cfg.model.audio.sample_rate
        self.metrics = metrics
        self.num_answers = len(predictor.answers)
        self.batcher = MicroBatcher(predictor.answer_items, max_batch=max_batch, max_wait_ms=max_wait_ms,
                                    max_queue=max_queue, on_batch=self._on_batch)
        self.decode_pool = ThreadPoolExecutor(max_workers=decode_threads, thread_name_prefix="omniformer-decode")
        self.ready = False

    def _on_batch(self, size: int, seconds: float) -> None:
        self.metrics.batch_size.observe(size)
        self.metrics.inference.observe(seconds)

    async def start(self) -> None:
        await self.batcher.start()
        # Warm up through the whole path (decode, features, model) so the first user does not
        # pay for lazy initialisation; both ways of asking, since audio has its own tower.
        size = self.predictor.cfg.model.image.size
        image, audio = _blank_png(size), _silent_wav(1.0, self.sample_rate)
        loop = asyncio.get_running_loop()
        for wave in (audio, None):  # straight to decode and model: the upload limits are for clients
            item = await loop.run_in_executor(self.decode_pool, self._prepare, image, "what is this?", wave)
            await self.batcher.submit(item, 1)
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        await self.batcher.stop()
        self.decode_pool.shutdown(wait=False, cancel_futures=True)

    # -- validation (cheap, on the event loop) -------------------------------------------------

    def check_fields(self, image: bytes | None, question: str | None, audio: bytes | None, top_k: Any) -> int:
        if image is None:
            raise ApiError(422, "missing_field", "image: missing; expected an image file "
                                                 "(PNG, JPEG, GIF, BMP or WebP)", "image")
        if question is None and audio is None:
            raise ApiError(422, "missing_field", "question: missing; ask in text (question) "
                                                 "or by voice (audio), or both", "question")
        if question is not None:
            if not question.strip():
                raise ApiError(422, "invalid_field", "question: empty; expected the question as text", "question")
            if len(question) > MAX_QUESTION_CHARS:
                raise ApiError(422, "invalid_field", f"question: {len(question)} characters; expected at most "
                                                     f"{MAX_QUESTION_CHARS}", "question")
        for name, data in (("image", image), ("audio", audio)):
            if data is not None and len(data) > self.max_upload_bytes:
                raise ApiError(413, "payload_too_large", f"{name}: {len(data)} bytes; the limit is "
                                                         f"{self.max_upload_bytes} bytes", name)
            if data is not None and len(data) == 0:
                raise ApiError(400, "invalid_image" if name == "image" else "invalid_audio",
                               f"{name}: the file is empty (0 bytes)", name)
        if top_k is None:
            return DEFAULT_TOP_K
        if isinstance(top_k, str):
            try:
                top_k = int(top_k.strip())
            except ValueError:
                raise ApiError(422, "invalid_field", f"top_k: expected an integer from 1 to {self.num_answers}, "
                                                     f"got {top_k[:20]!r}", "top_k") from None
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= self.num_answers:
            raise ApiError(422, "invalid_field", f"top_k: expected an integer from 1 to {self.num_answers}, "
                                                 f"got {top_k!r}", "top_k")
        return top_k

    # -- decoding (in the decode pool) ---------------------------------------------------------

    def _decode_image(self, data: bytes) -> Image.Image:
        kind = sniff_image(data)
        if kind is None:
            raise ApiError(415, "unsupported_media_type", f"image: the file is {_describe(data)}, not an image; "
                                                          f"expected PNG, JPEG, GIF, BMP or WebP", "image")
        try:
            # Header only: the size is known before a single pixel is decoded (decompression bombs).
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
                opened_as = im.format
        except Image.DecompressionBombError as e:  # Pillow's own, far higher, limit
            raise ApiError(413, "image_too_large", f"image: too many pixels ({e}); the limit is "
                                                   f"{self.max_pixels} pixels", "image") from None
        except Exception as e:
            raise ApiError(400, "invalid_image", f"image: looks like {kind} but cannot be read ({e})", "image") from None
        if opened_as != kind and not (kind == "JPEG" and opened_as == "MPO"):  # MPO: multi-picture JPEG
            # A header that Pillow reads as another format is not what its magic bytes claim.
            raise ApiError(415, "unsupported_media_type", f"image: the data is {opened_as}, expected PNG, JPEG, "
                                                          f"GIF, BMP or WebP", "image")
        if width * height > self.max_pixels:
            raise ApiError(413, "image_too_large", f"image: {width}x{height} = {width * height} pixels; "
                                                   f"the limit is {self.max_pixels} pixels", "image")
        try:
            return load_image(data, max_pixels=self.max_pixels)
        except ImageError as e:
            message = str(e).replace("<bytes>: ", "")
            raise ApiError(400, "invalid_image", f"image: {message}", "image") from None

    def _decode_audio(self, data: bytes) -> np.ndarray:
        kind = sniff_audio(data)
        if kind is None:
            raise ApiError(415, "unsupported_media_type", f"audio: the file is {_describe(data)}, not audio; "
                                                          f"expected WAV, FLAC or OGG", "audio")
        try:
            info = sf.info(io.BytesIO(data))
            frames, rate = info.frames, info.samplerate
        except Exception as e:
            raise ApiError(400, "invalid_audio", f"audio: looks like {kind} but cannot be read ({e})", "audio") from None
        # Checked from the header before any samples are read; an unknown length (streamed OGG
        # can report a huge frame count) is caught again by load_audio below.
        if rate > 0 and 0 < frames < 2 ** 62 and frames / rate > self.max_audio_seconds:
            raise ApiError(413, "audio_too_long", f"audio: {frames / rate:.2f} s long; the limit is "
                                                  f"{self.max_audio_seconds:g} s", "audio")
        try:
            return load_audio(data, self.sample_rate, max_seconds=self.max_audio_seconds, truncate=False)
        except AudioError as e:
            message = str(e).replace("<bytes>: ", "")
            too_long = "max_seconds" in message
            raise ApiError(413 if too_long else 400, "audio_too_long" if too_long else "invalid_audio",
                           f"audio: {message}", "audio") from None

    def _prepare(self, image: bytes, question: str | None, audio: bytes | None) -> dict[str, Any]:
        pil = self._decode_image(image)
        wave = self._decode_audio(audio) if audio is not None else None
        try:
            return self.predictor.prepare(pil, question=question, audio=wave)
        except (ImageError, AudioError, ValueError) as e:
            raise ApiError(400, "invalid_input", str(e)) from None

    # -- answering -----------------------------------------------------------------------------

    async def answer(self, image: bytes | None, question: str | None, audio: bytes | None,
                     top_k: Any = None) -> dict[str, Any]:
        k = self.check_fields(image, question, audio, top_k)
        loop = asyncio.get_running_loop()
        with self.batcher.reserve():  # tells the batcher a question is on its way
            item = await loop.run_in_executor(self.decode_pool, self._prepare, image, question, audio)
        try:
            answers = await self.batcher.submit(item, k)
        except Overloaded as e:
            raise ApiError(503, "overloaded", str(e)) from None
        except BatcherStopped as e:
            raise ApiError(503, "not_ready", str(e)) from None
        except Exception as e:  # the model failed on this input: the worker survives, the client is told
            log.exception("answering failed")
            raise ApiError(500, "internal", f"the model failed to answer: {type(e).__name__}") from None
        asked_by = "text+voice" if question is not None and audio is not None else "voice" if audio is not None else "text"
        self.metrics.answers.inc(asked_by)
        return {"answers": [{"answer": a, "probability": round(p, 6)} for a, p in answers],
                "model": self.predictor.model_id, "asked_by": asked_by}


def _b64(value: str | None, field: str) -> bytes | None:
    if value is None:
        return None
    text = value.strip()
    if text.startswith("data:"):  # a data: URL, as FileReader.readAsDataURL gives
        _, _, text = text.partition(",")
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(422, "invalid_field", f"{field}: not valid base64; expected the file's bytes "
                                             f"base64-encoded", field) from None


def _pydantic_message(errors: list[dict]) -> tuple[str, str | None]:
    """The first error as 'field: what was expected'."""
    err = errors[0]
    loc = [str(x) for x in err.get("loc", ()) if x != "body"]
    field = ".".join(loc) or None
    kind = err.get("type", "")
    if kind == "missing":
        return f"{field}: missing", field
    if kind == "extra_forbidden":
        return f"{field}: unknown field; expected image, question, audio, top_k", field
    if kind.startswith("json") or field is None:
        return f"body: not valid JSON ({err.get('msg', '')})", None
    return f"{field}: {err.get('msg', 'invalid')}", field


# ---------------------------------------------------------------------------------------------
# The app
# ---------------------------------------------------------------------------------------------

def create_app(model_dir: str | Path, *, max_batch: int = 32, max_wait_ms: float = 5.0,
               max_upload_bytes: int = 10 * 2 ** 20, max_pixels: int = 16_000_000,
               max_audio_seconds: float | None = None, examples_manifest: str | Path | None = None,
               torch_threads: int | None = None, decode_threads: int = 2, max_queue: int = 1024,
               predictor: QAPredictor | None = None) -> FastAPI:
    """A FastAPI app serving the QA checkpoint in ``model_dir``.

    ``max_upload_bytes`` caps each file (and the request body: a little more for the multipart
    envelope, 4/3 more for base64 JSON); ``max_pixels`` caps image width x height;
    ``max_audio_seconds`` defaults to the model's own ``audio.max_seconds`` (longer recordings
    would be cut, losing the end of the question, so they are refused instead).
    ``examples_manifest`` (a ShapesWorld manifest) enables ``/v1/examples``. ``torch_threads``
    sets torch's (process-wide) intra-op threads; ``omniformer serve`` passes ``default_torch_threads()``.
    """
    if torch_threads:  # process-wide, so only when asked (the CLI passes default_torch_threads())
        torch.set_num_threads(torch_threads)
    if predictor is None:
        predictor = QAPredictor.load(model_dir)
    if max_audio_seconds is None:
        max_audio_seconds = float(predictor.cfg.model.audio.max_seconds)
    examples = load_examples(examples_manifest) if examples_manifest else []
    metrics = ServerMetrics(predictor.model_id)
    service = QAService(predictor, max_batch=max_batch, max_wait_ms=max_wait_ms, max_upload_bytes=max_upload_bytes,
                        max_pixels=max_pixels, max_audio_seconds=max_audio_seconds, metrics=metrics,
                        decode_threads=decode_threads, max_queue=max_queue)
    metrics.add(Gauge("omniformer_queue_depth", "Questions waiting for the model.", read=lambda: service.batcher.queued))
    metrics.add(Gauge("omniformer_ready", "1 once the model is loaded and warmed up.", read=lambda: int(service.ready)))
    static = {name: (STATIC / name).read_bytes() for name in STATIC_FILES if (STATIC / name).is_file()}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(title="Omniformer QA", version="1", lifespan=lifespan,
                  description="Show an image and ask about it, in text or by voice. "
                              "Answers come from a closed vocabulary, with probabilities.")
    app.state.service, app.state.metrics, app.state.examples = service, metrics, examples

    def error_response(error: ApiError) -> JSONResponse:
        metrics.errors.inc(error.type)
        headers = {"Retry-After": "1"} if error.status == 503 else None
        return JSONResponse(error.body(), status_code=error.status, headers=headers)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        if isinstance(exc, PayloadTooLarge):
            return error_response(_too_large(exc.limit))
        kind = _HTTP_ERROR_TYPES.get(exc.status_code, "bad_request" if exc.status_code < 500 else "internal")
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"{request.url.path}: no such endpoint or item"
        elif exc.status_code == 405:
            message = f"{request.method} {request.url.path}: method not allowed"
        return error_response(ApiError(exc.status_code, kind, message))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        message, field = _pydantic_message(exc.errors())
        return error_response(ApiError(422, "invalid_field", message, field))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unexpected error on %s", request.url.path)
        return error_response(ApiError(500, "internal", f"unexpected server error: {type(exc).__name__}"))

    def timed(request: Request, body: dict[str, Any]) -> JSONResponse:
        start = getattr(request.state, "start", None) or time.perf_counter()
        body["time_ms"] = round((time.perf_counter() - start) * 1000, 2)
        return JSONResponse(body)

    # -- answering -----------------------------------------------------------------------------

    @app.post("/v1/answer", tags=["answer"], response_model=AnswerResponse, responses=_ERROR_RESPONSES,
              openapi_extra=_MULTIPART_SCHEMA, summary="Answer a question about an image (multipart upload)")
    async def answer_multipart(request: Request):
        content_type = request.headers.get("content-type", "")
        if not content_type.lower().startswith("multipart/form-data"):
            raise ApiError(415, "unsupported_media_type", "body: expected multipart/form-data with fields image, "
                                                          "question and/or audio (or POST JSON to /v1/answer.json)")
        try:
            form = await request.form(max_files=4, max_fields=8, max_part_size=64 * 1024)
        except PayloadTooLarge:
            raise
        except ClientDisconnect:  # nobody is left to answer; counted, not logged as a server error
            raise ApiError(400, "client_disconnected", "body: the client disconnected during the upload") from None
        except StarletteHTTPException as e:
            raise ApiError(400, "invalid_body", f"body: malformed multipart/form-data ({e.detail})") from None
        try:
            fields: dict[str, Any] = {}
            for name in ("image", "audio"):
                value = form.get(name)
                if value is None:
                    fields[name] = None
                elif isinstance(value, str):
                    raise ApiError(422, "invalid_field", f"{name}: expected a file upload, got a text field", name)
                else:
                    fields[name] = await value.read()
            question = form.get("question")
            if question is not None and not isinstance(question, str):
                raise ApiError(422, "invalid_field", "question: expected text, got a file (send a recording as "
                                                     "audio)", "question")
            top_k = form.get("top_k")
            if top_k is not None and not isinstance(top_k, str):
                raise ApiError(422, "invalid_field", "top_k: expected an integer, got a file", "top_k")
        finally:
            await form.close()
        body = await service.answer(fields["image"], question, fields["audio"], top_k)
        return timed(request, body)

    @app.post("/v1/answer.json", tags=["answer"], response_model=AnswerResponse, responses=_ERROR_RESPONSES,
              openapi_extra=_JSON_SCHEMA, summary="Answer a question about an image (JSON with base64 files)")
    async def answer_json(request: Request):
        content_type = request.headers.get("content-type", "")
        if "json" not in content_type.lower():
            raise ApiError(415, "unsupported_media_type", "body: expected application/json "
                                                          "(or POST multipart/form-data to /v1/answer)")
        try:
            raw = await request.body()
        except ClientDisconnect:
            raise ApiError(400, "client_disconnected", "body: the client disconnected during the upload") from None
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ApiError(400, "invalid_body", f"body: not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise ApiError(422, "invalid_body", f"body: expected a JSON object, got {type(data).__name__}")
        if data.get("image") is None:
            raise ApiError(422, "missing_field", "image: missing; expected the image file base64-encoded "
                                                 "(PNG, JPEG, GIF, BMP or WebP)", "image")
        if "top_k" in data and (isinstance(data["top_k"], bool) or not isinstance(data["top_k"], int)):
            raise ApiError(422, "invalid_field", f"top_k: expected an integer from 1 to {service.num_answers}, "
                                                 f"got {json.dumps(data['top_k'])[:20]}", "top_k")
        try:
            req = AnswerJSON.model_validate(data)
        except ValidationError as e:
            message, field = _pydantic_message(e.errors())
            raise ApiError(422, "invalid_field", message, field) from None
        body = await service.answer(_b64(req.image, "image"), req.question, _b64(req.audio, "audio"), req.top_k)
        return timed(request, body)

    # -- operations ----------------------------------------------------------------------------

    @app.get("/healthz", tags=["operations"], summary="The process is up")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"], summary="The model is loaded, warmed up and answering",
             responses={503: {"model": ErrorResponse}})
    async def readyz():
        if not (service.ready and service.batcher.running):
            raise ApiError(503, "not_ready", "the model is not ready (loading, warming up or stopped)")
        return {"status": "ready", "model": predictor.model_id, "answers": service.num_answers}

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics",
             response_class=Response, responses={200: {"content": {"text/plain": {}}}})
    async def metrics_endpoint():
        return Response(metrics.render(), media_type=ServerMetrics.CONTENT_TYPE)

    @app.get("/v1/model", tags=["answer"], summary="The model being served and its answer vocabulary")
    async def model_info():
        cfg = predictor.cfg.model
        return {"model": predictor.model_id, "answers": predictor.answers, "image_size": cfg.image.size,
                "audio_sample_rate": cfg.audio.sample_rate, "max_audio_seconds": service.max_audio_seconds,
                "max_upload_bytes": service.max_upload_bytes, "max_pixels": service.max_pixels,
                "max_question_chars": MAX_QUESTION_CHARS}

    # -- examples: by index into a list loaded at start-up, never by a path from the request -----

    def example_at(i: int) -> Example:
        if not 0 <= i < len(examples):
            raise ApiError(404, "not_found", f"example {i}: no such example; there are {len(examples)}")
        return examples[i]

    @app.get("/v1/examples", tags=["examples"], summary="A few test questions to try")
    async def list_examples():
        return {"examples": [{"index": i, "id": e.sample_id, "question": e.question, "answer": e.answer,
                              "has_audio": e.audio is not None} for i, e in enumerate(examples)]}

    @app.get("/v1/examples/{i}/image", tags=["examples"], response_class=Response)
    async def example_image(i: int):
        e = example_at(i)
        return Response(e.image, media_type=_MIME[e.image_type], headers={"Cache-Control": "max-age=3600"})

    @app.get("/v1/examples/{i}/audio", tags=["examples"], response_class=Response)
    async def example_audio(i: int):
        e = example_at(i)
        if e.audio is None:
            raise ApiError(404, "not_found", f"example {i}: has no spoken question")
        return Response(e.audio, media_type=_MIME[e.audio_type], headers={"Cache-Control": "max-age=3600"})

    # -- the page ------------------------------------------------------------------------------

    def static_response(name: str) -> Response:
        if name not in static:
            raise ApiError(404, "not_found", f"/static/{name}: no such file")
        headers = {"Content-Security-Policy": PAGE_CSP, "X-Content-Type-Options": "nosniff",
                   "Cache-Control": "no-cache"}
        return Response(static[name], media_type=STATIC_FILES[name], headers=headers)

    @app.get("/", include_in_schema=False)
    async def index():
        return static_response("index.html")

    @app.get("/static/{name}", include_in_schema=False)
    async def static_file(name: str):
        if name == "index.html":
            raise ApiError(404, "not_found", f"/static/{name}: no such file")
        return static_response(name)

    # Envelope allowance: two files plus small fields and multipart boundaries.
    envelope = 64 * 1024
    multipart_limit = 2 * max_upload_bytes + envelope
    json_limit = 2 * (max_upload_bytes * 4 // 3 + 4) + envelope
    app.add_middleware(BodyLimitMiddleware, limits={"/v1/answer": multipart_limit, "/v1/answer.json": json_limit},
                       default=envelope, on_reject=metrics.errors.inc)
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes_of=lambda: app.router.routes)
    return app
