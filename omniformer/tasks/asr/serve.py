"""The asr task's side of the server: ``POST /v1/transcribe`` (multipart) and
``POST /v1/transcribe.json`` (base64 JSON), micro-batched, and live transcription over the
WebSocket ``/v1/transcribe/stream``.

    curl -F audio=@seven.wav -F timings=true http://localhost:8000/v1/transcribe
    {"text": "seven", "words": [{"word": "seven", "start": 0.12, "end": 0.46}], "seconds": 0.61, ...}

The stream (``ws://HOST/v1/transcribe/stream?sample_rate=48000``; ``sample_rate`` defaults to
the model's, ``decoder`` to the recipe's): the server says ``{"type": "ready", ...}``; the client
sends binary messages of 16-bit little-endian mono PCM as it records, and the text
``{"type": "end"}`` when it stops; the server sends ``{"type": "partial", "text", "stable",
"seconds"}`` whenever the transcript changes and ``{"type": "final", "text", "words",
"seconds"}`` at the end, then closes. A failure is ``{"type": "error", "error": {"type",
"message", "field"}}`` and a close with a WebSocket code (1003 unsupported data, 1007 invalid
data, 1008 a limit, 1013 busy, 1011 a model failure); the server keeps serving the others.

A recording longer than the model's ``audio.max_seconds`` is cut into pieces at quiet points,
each transcribed in the same micro-batches as other requests' (``Transcriber.windows``); the
server's ``--max-audio-seconds`` (default 120 s here) bounds what one request may send. Every
failure is a 4xx JSON error naming the field (``omniformer.serve.uploads``).
"""
from __future__ import annotations

import asyncio
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import numpy as np
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect

from ...data.audio import AudioError
from ...serve.service import BatchedService, warm_up_seconds
from ...serve.uploads import ERROR_RESPONSES, ApiError, MediaDecoder, b64, check_upload, read_form, read_json
from ..base import ServeLimits
from .predictor import MAX_SECONDS, Transcript, Transcriber
from .streaming import StreamSettings, TranscriptStream

log = logging.getLogger(__name__)

DEFAULT_MAX_SECONDS = 120.0
ENVELOPE = 64 * 1024
STREAM_RATES = (8000, 96000)           # sample rates a stream may send, inclusive
MAX_MESSAGE_BYTES = 256 * 1024         # one binary message: about 8 s of 16 kHz PCM
STREAM_IDLE_SECONDS = 30.0             # a stream silent this long is closed

_MULTIPART_SCHEMA = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["audio"], "properties": {
        "audio": {"type": "string", "format": "binary", "description": "WAV, FLAC or OGG"},
        "timings": {"type": "boolean", "default": False, "description": "each word's start and end in seconds"}}}}}}}

_JSON_SCHEMA = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "additionalProperties": False, "required": ["audio"], "properties": {
        "audio": {"type": "string", "description": "the recording, base64 (WAV, FLAC or OGG)"},
        "timings": {"type": "boolean", "default": False}}}}}}}


class StreamError(Exception):
    """A live stream that cannot go on: sent as an error message, then closed with ``code``."""

    def __init__(self, code: int, type: str, message: str, field: str | None = None):
        super().__init__(message)
        self.code, self.type, self.field = code, type, field


def _flag(value: Any, field: str) -> bool:
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off", ""):
        return value.lower() in ("true", "1", "yes", "on")
    raise ApiError(422, "invalid_field", f"{field}: expected true or false, got {value!r}", field)


class ASRService(BatchedService):
    """Validates and decodes uploads (in a thread pool), then transcribes them in micro-batches;
    live streams step their own model calls, one at a time, in a thread of their own."""

    verb = "transcribe"

    def __init__(self, predictor: Transcriber, limits: ServeLimits, metrics: Any = None):
        super().__init__(predictor, lambda items, _: predictor.transcribe_items(items, timings=True), limits, metrics)
        model = predictor.cfg.model
        self.inputs = ["audio"]
        self.example_fields = {"audio": "audio"}
        self.max_audio_seconds = float(limits.max_audio_seconds or DEFAULT_MAX_SECONDS)
        self.decoder = MediaDecoder(limits.max_pixels, self.max_audio_seconds, model.audio.sample_rate)
        self.stream_pool: ThreadPoolExecutor | None = None  # live streams' model steps, one at a time
        self.max_streams = int(limits.max_streams)
        self.max_stream_seconds = float(limits.max_stream_seconds or MAX_SECONDS)
        # A model too short-sighted for the stream's look-back still serves uploads; its streams
        # are refused with the reason.
        try:
            self.stream_settings: StreamSettings | None = StreamSettings().resolved(model.audio.max_seconds)
            self.stream_unavailable = None
        except ValueError as e:
            self.stream_settings = None
            self.stream_unavailable = (f"live transcription is unavailable for this model ({e}); "
                                       f"POST /v1/transcribe instead")
        self.streams = 0
        self.idle_seconds = STREAM_IDLE_SECONDS
        if metrics is not None:
            from ...serve.metrics import Gauge
            metrics.add(Gauge("omniformer_streams", "Live transcription streams open.", read=lambda: self.streams))

    async def start(self) -> None:
        self.stream_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="omniformer-stream")
        await super().start()

    async def warm_up(self) -> None:
        # a tone, not silence: a silent recording never reaches the model
        model = self.predictor.cfg.model
        rate = model.audio.sample_rate
        samples = int(rate * warm_up_seconds(self.max_audio_seconds, model.audio.max_seconds))
        tone = (0.1 * np.sin(2 * np.pi * 440 * np.arange(samples) / rate)).astype(np.float32)
        await self.infer({"index": 0, "audio": self.predictor.audio.features(tone)}, 1)

    async def stop(self) -> None:
        await super().stop()
        if self.stream_pool is not None:
            self.stream_pool.shutdown(wait=False, cancel_futures=True)
            self.stream_pool = None

    def info(self) -> dict[str, Any]:
        model = self.predictor.cfg.model
        return {"task": "asr", "model": self.model_id, "inputs": self.inputs,
                **self.predictor.alphabet.describe(), "words": len(self.predictor.words),
                "decoder": self.predictor.task_config.decoder, "audio_sample_rate": model.audio.sample_rate,
                "max_audio_seconds": self.max_audio_seconds, "max_upload_bytes": self.limits.max_upload_bytes,
                "stream": {"route": "/v1/transcribe/stream", "max_streams": self.max_streams,
                           "max_seconds": self.max_stream_seconds,
                           "step_seconds": getattr(self.stream_settings, "step_seconds", None),
                           "lookahead_seconds": getattr(self.stream_settings, "lookahead_seconds", None),
                           "unavailable": self.stream_unavailable,
                           "sample_rates": list(STREAM_RATES), "max_message_bytes": MAX_MESSAGE_BYTES}}

    def _prepare(self, data: bytes) -> list[tuple[float, dict[str, Any] | None, float]]:
        """Runs in the decode pool: the upload -> (start seconds, model item, seconds) per piece;
        a silent piece has no item (it says nothing; the model is not run on it)."""
        wave = self.decoder.audio(data, "audio")
        rate = self.predictor.cfg.model.audio.sample_rate
        try:
            return [(start, None if self.predictor.silent(piece) else
                     {"index": 0, "audio": self.predictor.audio.features(piece)}, len(piece) / rate)
                    for start, piece in self.predictor.windows(wave)]
        except (AudioError, ValueError) as e:
            raise ApiError(400, "invalid_audio", f"audio: {e}", "audio") from None

    async def transcribe(self, audio: bytes | None, timings: Any = None) -> dict[str, Any]:
        """The response body for one upload (``time_ms`` is added by the app)."""
        want_timings = _flag(timings, "timings")
        if audio is None:
            raise ApiError(422, "missing_field", "audio: missing; send the recording (WAV, FLAC or OGG)", "audio")
        check_upload(audio, "audio", self.limits.max_upload_bytes)
        pieces = await self.decode(self._prepare, audio)
        heard = [(start, item) for start, item, _ in pieces if item is not None]
        parts: list[Transcript] = await asyncio.gather(*(self.infer(item, 1) for _, item in heard))
        if self.metrics is not None:
            self.metrics.answers.inc("audio")
        body: dict[str, Any] = {"text": " ".join(p.text for p in parts if p.text),
                                "seconds": round(sum(seconds for _, _, seconds in pieces), 3)}
        if want_timings:
            body["words"] = [{**w, "start": round(w["start"] + start, 3), "end": round(w["end"] + start, 3)}
                             for (start, _), part in zip(heard, parts) for w in part.words]
        return {**body, "model": self.model_id}

    # -- live streams --------------------------------------------------------------------------

    def _stream_options(self, query: Any) -> tuple[int, str | None]:
        """The query's ``sample_rate`` and ``decoder``, checked; unknown keys are errors."""
        for key in query:
            if key not in ("sample_rate", "decoder"):
                raise StreamError(1008, "invalid_field", f"{key}: unknown option; expected sample_rate, decoder", key)
        rate = self.predictor.cfg.model.audio.sample_rate
        raw = query.get("sample_rate")
        if raw is not None:
            try:
                rate = int(raw)
            except ValueError:
                raise StreamError(1008, "invalid_field", f"sample_rate: expected a whole number of Hz, "
                                                         f"got {raw!r}", "sample_rate") from None
            if not STREAM_RATES[0] <= rate <= STREAM_RATES[1]:
                raise StreamError(1008, "invalid_field", f"sample_rate: expected {STREAM_RATES[0]} to "
                                                         f"{STREAM_RATES[1]} Hz, got {rate}", "sample_rate")
        decoder = query.get("decoder")
        if decoder is not None and decoder not in ("greedy", "beam"):
            raise StreamError(1008, "invalid_field", f"decoder: expected greedy or beam, got {decoder!r}", "decoder")
        return rate, decoder

    async def stream(self, ws: WebSocket) -> None:
        """One live transcription, from accept to close; every failure a message and a close code."""
        await ws.accept()
        if self.max_streams == 0:
            return await self._refuse(ws, StreamError(1013, "overloaded", "live transcription is off on this server "
                                                                          "(--max-streams 0); POST /v1/transcribe instead"))
        if self.stream_unavailable is not None:
            return await self._refuse(ws, StreamError(1013, "unavailable", self.stream_unavailable))
        if self.streams >= self.max_streams:
            return await self._refuse(ws, StreamError(1013, "overloaded", f"all {self.max_streams} live streams "
                                                                          f"are in use; try again shortly"))
        self.streams += 1
        try:
            await self._stream(ws)
        except WebSocketDisconnect:
            log.info("a live stream's client went away")
        except StreamError as e:
            await self._refuse(ws, e)
        except Exception:
            log.exception("live transcription failed")
            await self._refuse(ws, StreamError(1011, "internal", "the model failed on this stream"))
        finally:
            self.streams -= 1

    async def _refuse(self, ws: WebSocket, error: "StreamError") -> None:
        if self.metrics is not None:
            self.metrics.errors.inc(error.type)
        try:
            await ws.send_json({"type": "error", **ApiError(400, error.type, str(error), error.field).body()})
            await ws.close(error.code)
        except (WebSocketDisconnect, RuntimeError):
            pass  # the client left first

    async def _stream(self, ws: WebSocket) -> None:
        rate, decoder = self._stream_options(ws.query_params)
        pool = self.stream_pool
        if pool is None or not self.ready:
            raise StreamError(1013, "not_ready", "the model is not ready (loading, warming up or stopped)")
        model_rate = self.predictor.cfg.model.audio.sample_rate
        live = TranscriptStream(self.predictor, self.stream_settings, decoder)
        resampler = None
        if rate != model_rate:
            import soxr
            resampler = soxr.ResampleStream(rate, model_rate, 1, dtype="float32")
        loop = asyncio.get_running_loop()
        await ws.send_json({"type": "ready", "model": self.model_id, "sample_rate": rate, "model_sample_rate": model_rate,
                            "decoder": live.decoder, "max_seconds": self.max_stream_seconds})
        received, odd, last_sent = 0, b"", ("", "")  # nothing said yet: no partial until there is
        while True:
            try:
                message = await asyncio.wait_for(ws.receive(), self.idle_seconds)
            except asyncio.TimeoutError:
                raise StreamError(1008, "timeout", f"nothing received for {self.idle_seconds:g} s; send audio, "
                                                   f'or {{"type": "end"}} to finish') from None
            if message["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(message.get("code", 1000))
            data, text = message.get("bytes"), message.get("text")
            if data is not None:
                if len(data) > MAX_MESSAGE_BYTES:
                    raise StreamError(1009, "payload_too_large", f"audio message: {len(data)} bytes, more than the "
                                                                 f"{MAX_MESSAGE_BYTES} byte limit; send smaller chunks")
                data, odd = odd + data, b""
                if len(data) % 2:
                    data, odd = data[:-1], data[-1:]  # half a sample: kept for the next message
                received += len(data) // 2
                if received > self.max_stream_seconds * rate:
                    raise StreamError(1008, "too_long", f"the stream passed the {self.max_stream_seconds:g} s limit; "
                                                        f"finish it and start another")
                samples = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
                if resampler is not None and samples.size:
                    samples = resampler.resample_chunk(samples)
                update = await loop.run_in_executor(pool, live.feed, samples)
            elif text is not None:
                try:
                    kind = json.loads(text).get("type") if text.strip().startswith("{") else text.strip()
                except (ValueError, AttributeError, RecursionError):  # not JSON, not an object, nested past reason
                    kind = None
                if kind != "end":
                    raise StreamError(1003, "invalid_message", 'text message: expected {"type": "end"} (audio goes '
                                                               "in binary messages of 16-bit PCM)")
                if odd:
                    log.debug("a live stream ended on half a sample; dropped")
                if resampler is not None:
                    await loop.run_in_executor(pool, live.feed, resampler.resample_chunk(np.zeros(0, np.float32),
                                                                                         last=True))
                final = await loop.run_in_executor(pool, live.finish)
                if self.metrics is not None:
                    self.metrics.answers.inc("stream")
                await ws.send_json({**final.to_json(), "model": self.model_id})
                await ws.close(1000)
                return
            else:
                continue
            if update is not None and (update.text, update.stable) != last_sent:
                last_sent = (update.text, update.stable)
                await ws.send_json(update.to_json())

    def add_routes(self, app: FastAPI, timed: Callable) -> dict[str, int]:
        """``POST /v1/transcribe``, ``POST /v1/transcribe.json`` and the WebSocket
        ``/v1/transcribe/stream``; returns the POST routes' body limits."""

        @app.websocket("/v1/transcribe/stream")
        async def transcribe_stream(ws: WebSocket):
            await self.stream(ws)

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
