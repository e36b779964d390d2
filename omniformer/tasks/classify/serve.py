"""The classify task's side of the server: ``POST /v1/classify`` (multipart) and
``POST /v1/classify.json`` (base64 JSON), micro-batched.

    curl -F image=@seven.png -F top_k=3 http://localhost:8000/v1/classify
    {"labels": [{"label": "7", "probability": 0.998}, ...], "model": "...", "inputs": ["image"], "time_ms": 4.1}

A request sends at least one of the inputs the model reads (image and audio files, text);
every failure is a 4xx JSON error naming the field (``omniformer.serve.uploads``).
"""
from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from fastapi import FastAPI, Request

from ...data.audio import AudioError
from ...data.image import ImageError
from ...serve.batcher import BatcherStopped, MicroBatcher, Overloaded
from ...serve.uploads import (ERROR_RESPONSES, ApiError, MediaDecoder, b64, blank_png, check_text, check_top_k,
                              check_upload, read_form, read_json, silent_wav)
from ..base import ServeLimits
from .predictor import ClassifyPredictor

log = logging.getLogger(__name__)

MAX_TEXT_CHARS = 2000
FIELDS = ("image", "audio", "text", "top_k")
ENVELOPE = 64 * 1024  # multipart boundaries and small fields on top of the files

_MULTIPART_SCHEMA = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "properties": {
        "image": {"type": "string", "format": "binary", "description": "PNG, JPEG, GIF, BMP or WebP"},
        "audio": {"type": "string", "format": "binary", "description": "WAV, FLAC or OGG"},
        "text": {"type": "string", "description": "the text input"},
        "top_k": {"type": "integer", "minimum": 1, "default": 5}}}}}}}

_JSON_SCHEMA = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "additionalProperties": False, "properties": {
        "image": {"type": "string", "description": "the image file, base64 (a data: URL prefix is allowed)"},
        "audio": {"type": "string", "description": "the recording, base64 (WAV, FLAC or OGG)"},
        "text": {"type": "string"},
        "top_k": {"type": "integer", "minimum": 1, "default": 5}}}}}}}


class ClassifyService:
    """Validates and decodes requests (decoding in a thread pool), then classifies them in micro-batches."""

    def __init__(self, predictor: ClassifyPredictor, limits: ServeLimits, metrics: Any = None):
        self.predictor, self.limits, self.metrics = predictor, limits, metrics
        self.model_id = predictor.model_id
        model = predictor.cfg.model
        self.max_audio_seconds = float(limits.max_audio_seconds or model.audio.max_seconds)
        self.decoder = MediaDecoder(limits.max_pixels, self.max_audio_seconds, model.audio.sample_rate)
        self.batcher = MicroBatcher(predictor.classify_items, max_batch=limits.max_batch,
                                    max_wait_ms=limits.max_wait_ms, max_queue=limits.max_queue,
                                    on_batch=self._on_batch)
        self.decode_pool: ThreadPoolExecutor | None = None
        self.ready = False

    @property
    def inputs(self) -> list[str]:
        return self.predictor.inputs

    def _on_batch(self, size: int, seconds: float) -> None:
        if self.metrics is not None:
            self.metrics.batch_size.observe(size)
            self.metrics.inference.observe(seconds)

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the model worker and warm up through the whole path (decode, features, model)."""
        self.decode_pool = ThreadPoolExecutor(max_workers=self.limits.decode_threads,
                                              thread_name_prefix="omniformer-decode")
        await self.batcher.start()
        model = self.predictor.cfg.model
        image = blank_png(model.image.size) if "image" in self.inputs else None
        audio = silent_wav(1.0, model.audio.sample_rate) if "audio" in self.inputs else None
        text = "warm up" if "text" in self.inputs else None
        item = await asyncio.get_running_loop().run_in_executor(self.decode_pool, self._prepare, image, audio, text)
        await self.batcher.submit(item, 1)
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        await self.batcher.stop()
        if self.decode_pool is not None:
            self.decode_pool.shutdown(wait=False, cancel_futures=True)
            self.decode_pool = None

    @property
    def running(self) -> bool:
        return self.batcher.running

    @property
    def queued(self) -> int:
        return self.batcher.queued

    def info(self) -> dict[str, Any]:
        model = self.predictor.cfg.model
        return {"task": "classify", "model": self.model_id, "labels": self.predictor.labels, "inputs": self.inputs,
                "image_size": model.image.size if "image" in self.inputs else None,
                "audio_sample_rate": model.audio.sample_rate if "audio" in self.inputs else None,
                "max_audio_seconds": self.max_audio_seconds, "max_upload_bytes": self.limits.max_upload_bytes,
                "max_pixels": self.limits.max_pixels, "max_text_chars": MAX_TEXT_CHARS}

    # -- one request ---------------------------------------------------------------------------

    def _prepare(self, image: bytes | None, audio: bytes | None, text: str | None) -> dict[str, Any]:
        """Runs in the decode pool: bytes -> a model item (ApiError on anything undecodable)."""
        pil = self.decoder.image(image, "image") if image is not None else None
        wave = self.decoder.audio(audio, "audio") if audio is not None else None
        try:
            return self.predictor.prepare(image=pil, audio=wave, text=text)
        except (ImageError, AudioError, ValueError) as e:
            raise ApiError(400, "invalid_input", str(e)) from None

    async def classify(self, image: bytes | None, audio: bytes | None, text: Any, top_k: Any = None) -> dict[str, Any]:
        """The response body for one request's fields (``time_ms`` is added by the app)."""
        k = check_top_k(top_k, len(self.predictor.labels))
        text = check_text(text, "text", MAX_TEXT_CHARS)
        for name, data in (("image", image), ("audio", audio)):
            if data is not None:
                check_upload(data, name, self.limits.max_upload_bytes)
        given = [m for m, v in (("image", image), ("audio", audio), ("text", text)) if v is not None]
        if not given:
            raise ApiError(422, "missing_field", f"{self.inputs[0]}: missing; send at least one input this model "
                                                 f"reads: {', '.join(self.inputs)}", self.inputs[0])
        for m in given:
            if m not in self.inputs:
                raise ApiError(422, "invalid_field", f"{m}: this model reads {', '.join(self.inputs)}, not {m}", m)
        loop = asyncio.get_running_loop()
        if self.decode_pool is None:
            raise ApiError(503, "not_ready", "the model is not ready (loading, warming up or stopped)")
        with self.batcher.reserve():  # tells the batcher a request is on its way
            item = await loop.run_in_executor(self.decode_pool, self._prepare, image, audio, text)
        try:
            labels = await self.batcher.submit(item, k)
        except Overloaded as e:
            raise ApiError(503, "overloaded", str(e)) from None
        except BatcherStopped as e:
            raise ApiError(503, "not_ready", str(e)) from None
        except Exception as e:  # the model failed on this input: the worker survives, the client is told
            log.exception("classifying failed")
            raise ApiError(500, "internal", f"the model failed to classify: {type(e).__name__}") from None
        if self.metrics is not None:
            self.metrics.answers.inc("+".join(given))
        return {"labels": [{"label": label, "probability": round(p, 6)} for label, p in labels],
                "model": self.model_id, "inputs": given}

    # -- routes --------------------------------------------------------------------------------

    def add_routes(self, app: FastAPI, timed: Callable) -> dict[str, int]:
        """``POST /v1/classify`` and ``POST /v1/classify.json``; returns their body limits."""

        @app.post("/v1/classify", tags=["classify"], openapi_extra=_MULTIPART_SCHEMA, responses=ERROR_RESPONSES,
                  summary="Classify an image, a recording and/or a text (multipart upload)")
        async def classify_multipart(request: Request):
            form = await read_form(request, files=("image", "audio"), texts=("text", "top_k"))
            body = await self.classify(form.get("image"), form.get("audio"), form.get("text"), form.get("top_k"))
            return timed(request, body)

        @app.post("/v1/classify.json", tags=["classify"], openapi_extra=_JSON_SCHEMA, responses=ERROR_RESPONSES,
                  summary="Classify an image, a recording and/or a text (JSON with base64 files)")
        async def classify_json(request: Request):
            data = await read_json(request)
            for key, value in data.items():
                if key not in FIELDS:
                    raise ApiError(422, "invalid_field", f"{key}: unknown field; expected {', '.join(FIELDS)}", key)
                if key in ("image", "audio") and value is not None and not isinstance(value, str):
                    raise ApiError(422, "invalid_field", f"{key}: expected the file base64-encoded, "
                                                         f"got {type(value).__name__}", key)
            body = await self.classify(b64(data.get("image"), "image"), b64(data.get("audio"), "audio"),
                                       data.get("text"), data.get("top_k"))
            return timed(request, body)

        files = 2 * self.limits.max_upload_bytes
        return {"/v1/classify": files + ENVELOPE, "/v1/classify.json": files * 4 // 3 + 8 + ENVELOPE}
