"""The asr task's side of the server: ``POST /v1/transcribe`` (multipart) and
``POST /v1/transcribe.json`` (base64 JSON), micro-batched.

    curl -F audio=@seven.wav -F timings=true http://localhost:8000/v1/transcribe
    {"text": "seven", "words": [{"word": "seven", "start": 0.12, "end": 0.46}], "seconds": 0.61, ...}

A recording longer than the model's ``audio.max_seconds`` is cut into pieces at quiet points,
each transcribed in the same micro-batches as other requests' (``Transcriber.windows``); the
server's ``--max-audio-seconds`` (default 120 s here) bounds what one request may send. Every
failure is a 4xx JSON error naming the field (``omniformer.serve.uploads``).
"""
from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from fastapi import FastAPI, Request

from ...data.audio import AudioError
from ...serve.batcher import BatcherStopped, MicroBatcher, Overloaded
from ...serve.uploads import ERROR_RESPONSES, ApiError, MediaDecoder, b64, check_upload, read_form, read_json, silent_wav
from ..base import ServeLimits
from .predictor import Transcript, Transcriber

log = logging.getLogger(__name__)

DEFAULT_MAX_SECONDS = 120.0
ENVELOPE = 64 * 1024

_MULTIPART_SCHEMA = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["audio"], "properties": {
        "audio": {"type": "string", "format": "binary", "description": "WAV, FLAC or OGG"},
        "timings": {"type": "boolean", "default": False, "description": "each word's start and end in seconds"}}}}}}}

_JSON_SCHEMA = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "additionalProperties": False, "required": ["audio"], "properties": {
        "audio": {"type": "string", "description": "the recording, base64 (WAV, FLAC or OGG)"},
        "timings": {"type": "boolean", "default": False}}}}}}}


def _flag(value: Any, field: str) -> bool:
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off", ""):
        return value.lower() in ("true", "1", "yes", "on")
    raise ApiError(422, "invalid_field", f"{field}: expected true or false, got {value!r}", field)


class ASRService:
    """Validates and decodes uploads (in a thread pool), then transcribes them in micro-batches."""

    def __init__(self, predictor: Transcriber, limits: ServeLimits, metrics: Any = None):
        self.predictor, self.limits, self.metrics = predictor, limits, metrics
        self.model_id = predictor.model_id
        model = predictor.cfg.model
        self.inputs = ["audio"]
        self.example_fields = {"audio": "audio"}
        self.max_audio_seconds = float(limits.max_audio_seconds or DEFAULT_MAX_SECONDS)
        self.decoder = MediaDecoder(limits.max_pixels, self.max_audio_seconds, model.audio.sample_rate)
        self.batcher = MicroBatcher(lambda items, _: predictor.transcribe_items(items, timings=True),
                                    max_batch=limits.max_batch, max_wait_ms=limits.max_wait_ms,
                                    max_queue=limits.max_queue, on_batch=self._on_batch)
        self.decode_pool: ThreadPoolExecutor | None = None
        self.ready = False

    def _on_batch(self, size: int, seconds: float) -> None:
        if self.metrics is not None:
            self.metrics.batch_size.observe(size)
            self.metrics.inference.observe(seconds)

    async def start(self) -> None:
        self.decode_pool = ThreadPoolExecutor(max_workers=self.limits.decode_threads,
                                              thread_name_prefix="omniformer-decode")
        await self.batcher.start()
        loop = asyncio.get_running_loop()
        wave = silent_wav(1.0, self.predictor.cfg.model.audio.sample_rate)
        pieces = await loop.run_in_executor(self.decode_pool, self._prepare, wave)
        await self.batcher.submit(pieces[0][1], 1)
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
        return {"task": "asr", "model": self.model_id, "inputs": self.inputs,
                "alphabet": self.predictor.alphabet.chars, "words": len(self.predictor.words),
                "decoder": self.predictor.task_config.decoder, "audio_sample_rate": model.audio.sample_rate,
                "max_audio_seconds": self.max_audio_seconds, "max_upload_bytes": self.limits.max_upload_bytes}

    def _prepare(self, data: bytes) -> list[tuple[float, dict[str, Any]]]:
        """Runs in the decode pool: the upload -> (start seconds, model item) per piece."""
        wave = self.decoder.audio(data, "audio")
        try:
            return [(start, {"index": 0, "audio": self.predictor.audio.features(piece)})
                    for start, piece in self.predictor.windows(wave)]
        except (AudioError, ValueError) as e:
            raise ApiError(400, "invalid_audio", f"audio: {e}", "audio") from None

    async def transcribe(self, audio: bytes | None, timings: Any = None) -> dict[str, Any]:
        """The response body for one upload (``time_ms`` is added by the app)."""
        want_timings = _flag(timings, "timings")
        if audio is None:
            raise ApiError(422, "missing_field", "audio: missing; send the recording (WAV, FLAC or OGG)", "audio")
        check_upload(audio, "audio", self.limits.max_upload_bytes)
        if self.decode_pool is None:
            raise ApiError(503, "not_ready", "the model is not ready (loading, warming up or stopped)")
        loop = asyncio.get_running_loop()
        with self.batcher.reserve():
            pieces = await loop.run_in_executor(self.decode_pool, self._prepare, audio)
        try:
            parts: list[Transcript] = await asyncio.gather(*(self.batcher.submit(item, 1) for _, item in pieces))
        except Overloaded as e:
            raise ApiError(503, "overloaded", str(e)) from None
        except BatcherStopped as e:
            raise ApiError(503, "not_ready", str(e)) from None
        except Exception as e:  # the model failed on this input: the worker survives, the client is told
            log.exception("transcribing failed")
            raise ApiError(500, "internal", f"the model failed to transcribe: {type(e).__name__}") from None
        if self.metrics is not None:
            self.metrics.answers.inc("audio")
        body: dict[str, Any] = {"text": " ".join(p.text for p in parts if p.text),
                                "seconds": round(sum(p.seconds for p in parts), 3)}
        if want_timings:
            body["words"] = [{**w, "start": round(w["start"] + start, 3), "end": round(w["end"] + start, 3)}
                             for (start, _), part in zip(pieces, parts) for w in part.words]
        return {**body, "model": self.model_id}

    def add_routes(self, app: FastAPI, timed: Callable) -> dict[str, int]:
        """``POST /v1/transcribe`` and ``POST /v1/transcribe.json``; returns their body limits."""

        @app.post("/v1/transcribe", tags=["asr"], openapi_extra=_MULTIPART_SCHEMA, responses=ERROR_RESPONSES,
                  summary="Transcribe a recording (multipart upload)")
        async def transcribe_multipart(request: Request):
            form = await read_form(request, files=("audio",), texts=("timings",))
            return timed(request, await self.transcribe(form.get("audio"), form.get("timings")))

        @app.post("/v1/transcribe.json", tags=["asr"], openapi_extra=_JSON_SCHEMA, responses=ERROR_RESPONSES,
                  summary="Transcribe a recording (JSON with the file base64-encoded)")
        async def transcribe_json(request: Request):
            data = await read_json(request)
            for key in data:
                if key not in ("audio", "timings"):
                    raise ApiError(422, "invalid_field", f"{key}: unknown field; expected audio, timings", key)
            audio = data.get("audio")
            if audio is not None and not isinstance(audio, str):
                raise ApiError(422, "invalid_field", f"audio: expected the file base64-encoded, "
                                                     f"got {type(audio).__name__}", "audio")
            return timed(request, await self.transcribe(b64(audio, "audio"), data.get("timings")))

        size = self.limits.max_upload_bytes
        return {"/v1/transcribe": size + ENVELOPE, "/v1/transcribe.json": size * 4 // 3 + 8 + ENVELOPE}
