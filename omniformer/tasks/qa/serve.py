"""The question-answering routes: show an image, ask about it in text or by voice.

    POST /v1/answer          multipart: image file, question text and/or audio file, top_k
    POST /v1/answer.json     JSON: {"image": base64, "question": str, "audio": base64, "top_k": int}

``QAService`` validates the fields, decodes in a thread pool and answers through the
micro-batcher; the generic server (``omniformer.serve.app``) adds operations, examples and the page.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Callable, Literal

from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ...data.audio import AudioError
from ...data.image import ImageError
from ...serve.metrics import ServerMetrics
from ...serve.service import BatchedService, warm_up_seconds
from ..base import ServeLimits
from ...serve.uploads import (DEFAULT_TOP_K, ERROR_RESPONSES, ApiError, MediaDecoder, b64, blank_png,
                              check_text, check_top_k, check_upload, pydantic_message, read_form, read_json,
                              silent_wav)
from .model import QAPredictor

log = logging.getLogger(__name__)

MAX_QUESTION_CHARS = 1000
ANSWER_FIELDS = ("image", "question", "audio", "top_k")


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


_MULTIPART_SCHEMA = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["image"], "properties": {
        "image": {"type": "string", "format": "binary", "description": "PNG, JPEG, GIF, BMP or WebP"},
        "question": {"type": "string", "description": "the question in text (or send audio, or both)"},
        "audio": {"type": "string", "format": "binary", "description": "the question spoken: WAV, FLAC or OGG"},
        "top_k": {"type": "integer", "minimum": 1, "default": DEFAULT_TOP_K}}}}}}}

_JSON_SCHEMA = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": AnswerJSON.model_json_schema()}}}}


class QAService(BatchedService):
    """Turns raw request fields into answers: validation, decoding (in a thread pool) and the
    micro-batched model."""

    def __init__(self, predictor: QAPredictor, limits: ServeLimits, metrics: ServerMetrics):
        super().__init__(predictor, predictor.answer_items, limits, metrics)
        self.sample_rate = predictor.cfg.model.audio.sample_rate
        self.max_upload_bytes, self.max_pixels = limits.max_upload_bytes, limits.max_pixels
        # Longer recordings would be cut, losing the end of the question, so they are refused instead.
        self.max_audio_seconds = limits.max_audio_seconds or float(predictor.cfg.model.audio.max_seconds)
        self.media = MediaDecoder(self.max_pixels, self.max_audio_seconds, self.sample_rate)
        self.num_answers = len(predictor.answers)

    async def warm_up(self) -> None:
        # Both ways of asking, since audio has its own tower.
        size = self.predictor.cfg.model.image.size
        seconds = warm_up_seconds(self.max_audio_seconds, self.predictor.cfg.model.audio.max_seconds)
        image, audio = blank_png(size), silent_wav(seconds, self.sample_rate)
        for wave in (audio, None):  # straight to decode and model: the upload limits are for clients
            item, _ = await self.decode(self._prepare, image, "what is this?", wave)
            await self.infer(item, 1)

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
            check_text(question, "question", MAX_QUESTION_CHARS)
        check_upload(image, "image", self.max_upload_bytes)
        check_upload(audio, "audio", self.max_upload_bytes)
        return check_top_k(top_k, self.num_answers)

    def _prepare(self, image: bytes, question: str | None, audio: bytes | None) -> tuple[dict[str, Any], str | None]:
        pil = self.media.image(image)
        wave = self.media.audio(audio) if audio is not None else None
        try:
            return self.predictor.prepare_heard(pil, question=question, audio=wave)
        except (ImageError, AudioError, ValueError) as e:
            raise ApiError(400, "invalid_input", str(e)) from None

    # -- answering -----------------------------------------------------------------------------

    async def answer(self, image: bytes | None, question: str | None, audio: bytes | None,
                     top_k: Any = None) -> dict[str, Any]:
        k = self.check_fields(image, question, audio, top_k)
        item, transcript = await self.decode(self._prepare, image, question, audio)
        answers = await self.infer(item, k)
        asked_by = "text+voice" if question is not None and audio is not None else "voice" if audio is not None else "text"
        self.metrics.answers.inc(asked_by)
        body = {"answers": [{"answer": a, "probability": round(p, 6)} for a, p in answers],
                "model": self.predictor.model_id, "asked_by": asked_by}
        if transcript is not None:  # task.transcriber heard the question
            body["transcript"] = transcript
        return body

    # -- routes --------------------------------------------------------------------------------

    def add_routes(self, app: FastAPI, timed: Callable) -> dict[str, int]:
        """``POST /v1/answer`` (multipart) and ``POST /v1/answer.json`` (base64 JSON); returns
        their body limits: two files plus small fields (4/3 more for base64)."""
        @app.post("/v1/answer", tags=["answer"], response_model=AnswerResponse, responses=ERROR_RESPONSES,
                  openapi_extra=_MULTIPART_SCHEMA, summary="Answer a question about an image (multipart upload)")
        async def answer_multipart(request: Request):
            fields = await read_form(request, files=("image", "audio"), texts=("question", "top_k"))
            body = await self.answer(fields["image"], fields["question"], fields["audio"], fields["top_k"])
            return timed(request, body)

        @app.post("/v1/answer.json", tags=["answer"], response_model=AnswerResponse, responses=ERROR_RESPONSES,
                  openapi_extra=_JSON_SCHEMA, summary="Answer a question about an image (JSON with base64 files)")
        async def answer_json(request: Request):
            data = await read_json(request)
            if data.get("image") is None:
                raise ApiError(422, "missing_field", "image: missing; expected the image file base64-encoded "
                                                     "(PNG, JPEG, GIF, BMP or WebP)", "image")
            if "top_k" in data and (isinstance(data["top_k"], bool) or not isinstance(data["top_k"], int)):
                raise ApiError(422, "invalid_field", f"top_k: expected an integer from 1 to {self.num_answers}, "
                                                     f"got {json.dumps(data['top_k'])[:20]}", "top_k")
            try:
                req = AnswerJSON.model_validate(data)
            except ValidationError as e:
                message, field = pydantic_message(e.errors(), ANSWER_FIELDS)
                raise ApiError(422, "invalid_field", message, field) from None
            body = await self.answer(b64(req.image, "image"), req.question, b64(req.audio, "audio"), req.top_k)
            return timed(request, body)

        envelope = 64 * 1024
        return {"/v1/answer": 2 * self.max_upload_bytes + envelope,
                "/v1/answer.json": 2 * (self.max_upload_bytes * 4 // 3 + 4) + envelope}

    def info(self) -> dict[str, Any]:
        cfg = self.predictor.cfg.model
        return {"task": "qa", "model": self.model_id, "answers": self.predictor.answers, "image_size": cfg.image.size,
                "audio_sample_rate": cfg.audio.sample_rate, "max_audio_seconds": self.max_audio_seconds,
                "max_upload_bytes": self.max_upload_bytes, "max_pixels": self.max_pixels,
                "max_question_chars": MAX_QUESTION_CHARS}
