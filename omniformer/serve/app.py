"""The server: any task's checkpoint behind an HTTP API, with operations, examples and a web page.

    from omniformer.serve.app import create_app
    app = create_app("runs/quickstart/qa/best")      # then: uvicorn.run(app)

The checkpoint names its task; the task brings its routes (``Task.service``: QA's
``POST /v1/answer``, recognition's ``POST /v1/classify``, ...). Every task gets (OpenAPI docs
at ``/docs``):

    GET  /healthz            the process is up
    GET  /readyz             the model is loaded, warmed up and its worker running
    GET  /metrics            Prometheus text
    GET  /v1/model           the task, the model and the server's limits
    GET  /v1/examples        a few test samples to try (when started with an examples manifest)
    GET  /v1/examples/{i}/image, /v1/examples/{i}/audio
    GET  /                   the web page

Request bodies are capped while they stream in, and every failure is a 4xx JSON
``{"error": {"type", "message", "field"}}`` (``serve.uploads``); nothing a request sends is
ever used as a filesystem path.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from ..registry import get_task, task_of_checkpoint
from ..tasks.base import ServeLimits
from .metrics import Gauge, ServerMetrics
from .uploads import (HTTP_ERROR_TYPES, ApiError, ErrorResponse, PayloadTooLarge, pydantic_message,
                      sniff_audio, sniff_image, too_large)

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
# The only files the page needs, read once at start-up and served from memory by name.
STATIC_FILES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
                "style.css": "text/css; charset=utf-8",
                "pcm-worklet.js": "text/javascript; charset=utf-8"}  # the asr page's live microphone
# The page loads nothing from elsewhere; blob:/data: are the previews of the user's own files.
PAGE_CSP = ("default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
            "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")

__all__ = ["create_app", "default_torch_threads", "load_examples", "sniff_audio", "sniff_image", "ApiError"]


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
                    error = too_large(limit) if declared > limit else ApiError(
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
# Examples and threads
# ---------------------------------------------------------------------------------------------

@dataclass
class Example:
    sample_id: str
    question: str | None
    answer: str | None
    image: bytes | None
    image_type: str | None
    audio: bytes | None = None
    audio_type: str | None = None
    label: str | None = None   # a classify sample's true label
    text: str | None = None    # a classify sample's text input


def _round_robin(samples: list[dict], key: str, count: int) -> list[dict]:
    """Up to ``count`` samples, different values of ``key`` first (round robin over them)."""
    by_value: dict[str, list[dict]] = {}
    for s in samples:
        by_value.setdefault(str(s.get(key, "")), []).append(s)
    picked: list[dict] = []
    while len(picked) < count and any(by_value.values()):
        for value in list(by_value):
            if by_value[value] and len(picked) < count:
                picked.append(by_value[value].pop(0))
    return picked


def _read_media(root: Path, name: Any, sniff) -> tuple[bytes | None, str | None]:
    """A manifest's file (relative to it) and its sniffed type; (None, None) when absent or unreadable."""
    if not isinstance(name, str) or not name or not (root / name).is_file():
        return None, None
    data = (root / name).read_bytes()
    kind = sniff(data)
    return (data, kind) if kind is not None else (None, None)


def load_examples(manifest: str | Path, count: int = 8, split: str = "test", task: str = "qa",
                  fields: dict[str, str] | None = None) -> list[Example]:
    """A few test samples for the page, read once at start-up and kept in memory.

    ``task`` "qa": samples with an image and a text question (and its spoken version where the
    sample has one), different answers first. "asr": samples with a recording and its transcript
    (``audio`` and ``text``, or ``question_audio`` and ``question``), the transcript as ``text``,
    different transcripts first. Any other task: samples with a ``label`` and at
    least one input the model reads, different labels first; ``fields`` maps each input the
    page can send (image, audio, text) to the manifest field that feeds it (default: the field
    of the same name).
    """
    from ..data.manifest import read_manifest
    manifest = Path(manifest)
    root = manifest.parent
    samples = [s for s in read_manifest(manifest) if s.get("split", "train") == split]
    out: list[Example] = []
    if task == "qa":
        picked = _round_robin([s for s in samples if s.get("image") and s.get("question")], "answer", count)
        for s in picked:
            image, kind = _read_media(root, s["image"], sniff_image)
            if image is None:
                continue
            audio, audio_kind = _read_media(root, s.get("question_audio"), sniff_audio)
            out.append(Example(str(s.get("id", len(out))), s.get("question"), s.get("answer"), image, kind,
                               audio, audio_kind))
        return out
    if task == "asr":
        # A recording and its true transcript, from the first pair of fields a sample has (the
        # asr task's default ``pairs``), different transcripts first.
        pairs = (("audio", "text"), ("question_audio", "question"))
        heard = []
        for i, s in enumerate(samples):
            for audio_field, text_field in pairs:
                text = s.get(text_field)
                if s.get(audio_field) and isinstance(text, str) and text.strip():
                    heard.append({"id": str(s.get("id", i)), "audio": s[audio_field], "text": text.strip()})
                    break
        for s in _round_robin(heard, "text", 4 * count):  # some files may be unreadable: a few spare
            audio, audio_kind = _read_media(root, s["audio"], sniff_audio)
            if audio is not None:
                out.append(Example(s["id"], None, None, None, None, audio, audio_kind, text=s["text"]))
                if len(out) == count:
                    break
        return out
    fields = {"image": "image", "audio": "audio", "text": "text"} if fields is None else fields
    usable = [s for s in samples if s.get("label") is not None and any(s.get(f) for f in fields.values())]
    for s in _round_robin(usable, "label", 4 * count):  # some files may be unreadable: a few spare
        image, kind = _read_media(root, s.get(fields["image"]), sniff_image) if "image" in fields else (None, None)
        audio, audio_kind = (_read_media(root, s.get(fields["audio"]), sniff_audio) if "audio" in fields
                             else (None, None))
        text = s.get(fields["text"]) if "text" in fields else None
        text = text if isinstance(text, str) and text.strip() else None
        if image is None and audio is None and text is None:
            continue
        out.append(Example(str(s.get("id", len(out))), None, None, image, kind, audio, audio_kind,
                           label=str(s["label"]), text=text))
        if len(out) == count:
            break
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


# ---------------------------------------------------------------------------------------------
# The app
# ---------------------------------------------------------------------------------------------

def check_limits(**limits: Any) -> None:
    """Refuse a limit no request could meet (``max_upload_bytes=-1`` would refuse every upload),
    naming it and what it may be, before the model is loaded."""
    for name, value in limits.items():
        if value is None and name in ("max_audio_seconds", "max_stream_seconds"):
            continue
        if name in ("max_wait_ms", "max_audio_seconds", "max_stream_seconds"):
            low, ok = (0.0, "0 or more") if name == "max_wait_ms" else (None, "a positive number")
            number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not number or (value < 0 if low is not None else value <= 0):
                raise ValueError(f"{name}: expected {ok} (finite), got {value!r}")
            continue
        low = 0 if name == "max_streams" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name}: expected a whole number of at least {low}, got {value!r}")


def create_app(model_dir: str | Path, *, max_batch: int = 32, max_wait_ms: float = 5.0,
               max_upload_bytes: int = 10 * 2 ** 20, max_pixels: int = 16_000_000,
               max_audio_seconds: float | None = None, examples_manifest: str | Path | None = None,
               torch_threads: int | None = None, decode_threads: int = 2, max_queue: int = 1024,
               max_streams: int = 8, max_stream_seconds: float | None = None, predictor: Any = None) -> FastAPI:
    """A FastAPI app serving the checkpoint in ``model_dir``, through the routes of its task.

    ``max_upload_bytes`` caps each file (the request body gets a little more for the multipart
    envelope, 4/3 more for base64 JSON); ``max_pixels`` caps image width x height;
    ``max_audio_seconds`` defaults to the model's own ``audio.max_seconds``.
    ``max_streams`` and ``max_stream_seconds`` bound live streams (asr's WebSocket, the
    generation tasks' Server-Sent Events).
    ``examples_manifest`` enables ``/v1/examples``. ``torch_threads`` sets torch's
    (process-wide) intra-op threads; ``omniformer serve`` passes ``default_torch_threads()``.
    ``predictor``: an already loaded one (of the checkpoint's task) instead of ``model_dir``.
    """
    check_limits(max_upload_bytes=max_upload_bytes, max_pixels=max_pixels, max_batch=max_batch, max_queue=max_queue,
                 decode_threads=decode_threads, max_streams=max_streams, max_wait_ms=max_wait_ms,
                 max_audio_seconds=max_audio_seconds, max_stream_seconds=max_stream_seconds)
    if torch_threads:  # process-wide, so only when asked (the CLI passes default_torch_threads())
        torch.set_num_threads(torch_threads)
    task = task_of_checkpoint(model_dir) if predictor is None else get_task(getattr(predictor, "task", "qa"))
    if predictor is None:
        predictor = task.load(model_dir)
    limits = ServeLimits(max_upload_bytes=max_upload_bytes, max_pixels=max_pixels, max_audio_seconds=max_audio_seconds,
                         max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue,
                         decode_threads=decode_threads, max_streams=max_streams,
                         max_stream_seconds=max_stream_seconds)
    metrics = ServerMetrics(predictor.model_id)
    service = task.service(predictor, limits, metrics)
    # The examples the page offers: the inputs this service takes, from the fields that feed them.
    examples = (load_examples(examples_manifest, task=task.name, fields=getattr(service, "example_fields", None))
                if examples_manifest else [])
    metrics.add(Gauge("omniformer_queue_depth", "Requests waiting for the model.", read=lambda: service.queued))
    metrics.add(Gauge("omniformer_ready", "1 once the model is loaded and warmed up.", read=lambda: int(service.ready)))
    static = {name: (STATIC / name).read_bytes() for name in STATIC_FILES if (STATIC / name).is_file()}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(title=f"Omniformer {task.name}", version="1", lifespan=lifespan, description=task.summary)
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
            return error_response(too_large(exc.limit))
        kind = HTTP_ERROR_TYPES.get(exc.status_code, "bad_request" if exc.status_code < 500 else "internal")
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"{request.url.path}: no such endpoint or item"
        elif exc.status_code == 405:
            message = f"{request.method} {request.url.path}: method not allowed"
        return error_response(ApiError(exc.status_code, kind, message))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        message, field = pydantic_message(exc.errors())
        return error_response(ApiError(422, "invalid_field", message, field))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unexpected error on %s", request.url.path)
        return error_response(ApiError(500, "internal", f"unexpected server error: {type(exc).__name__}"))

    def timed(request: Request, body: dict[str, Any]) -> JSONResponse:
        start = getattr(request.state, "start", None) or time.perf_counter()
        body["time_ms"] = round((time.perf_counter() - start) * 1000, 2)
        return JSONResponse(body)

    # -- operations ----------------------------------------------------------------------------

    @app.get("/healthz", tags=["operations"], summary="The process is up")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"], summary="The model is loaded, warmed up and answering",
             responses={503: {"model": ErrorResponse}})
    async def readyz():
        if not (service.ready and service.running):
            raise ApiError(503, "not_ready", "the model is not ready (loading, warming up or stopped)")
        return {"status": "ready", "task": task.name, "model": predictor.model_id}

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics",
             response_class=Response, responses={200: {"content": {"text/plain": {}}}})
    async def metrics_endpoint():
        return Response(metrics.render(), media_type=ServerMetrics.CONTENT_TYPE)

    @app.get("/v1/model", tags=["operations"], summary="The task, the model being served and the server's limits")
    async def model_info():
        return service.info()

    # -- examples: by index into a list loaded at start-up, never by a path from the request -----

    def example_at(i: int) -> Example:
        if not 0 <= i < len(examples):
            raise ApiError(404, "not_found", f"example {i}: no such example; there are {len(examples)}")
        return examples[i]

    @app.get("/v1/examples", tags=["examples"], summary="A few test samples to try")
    async def list_examples():
        return {"examples": [{"index": i, "id": e.sample_id, "question": e.question, "answer": e.answer,
                              "label": e.label, "text": e.text, "has_image": e.image is not None,
                              "has_audio": e.audio is not None} for i, e in enumerate(examples)]}

    no_example = {404: {"model": ErrorResponse, "description": "no such example, or it has none"}}

    @app.get("/v1/examples/{i}/image", tags=["examples"], response_class=Response, responses=no_example)
    async def example_image(i: int):
        e = example_at(i)
        if e.image is None:
            raise ApiError(404, "not_found", f"example {i}: has no image")
        return Response(e.image, media_type=_MIME[e.image_type], headers={"Cache-Control": "max-age=3600"})

    @app.get("/v1/examples/{i}/audio", tags=["examples"], response_class=Response, responses=no_example)
    async def example_audio(i: int):
        e = example_at(i)
        if e.audio is None:
            raise ApiError(404, "not_found", f"example {i}: has no " + ("spoken question" if e.question else "recording"))
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

    # The task's routes, each with its own body limit; everything else gets the small envelope.
    body_limits = service.add_routes(app, timed)
    app.add_middleware(BodyLimitMiddleware, limits=body_limits, default=64 * 1024, on_reject=metrics.errors.inc)
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes_of=lambda: app.router.routes)
    return app
