"""The classify task's side of the server: ``POST /v1/classify`` (multipart) and
``POST /v1/classify.json`` (base64 JSON), micro-batched.

    curl -F image=@seven.png -F top_k=3 http://localhost:8000/v1/classify
    {"labels": [{"label": "7", "probability": 0.998}, ...], "model": "...", "inputs": ["image"], "time_ms": 4.1}

A request sends at least one of the inputs the model reads, each in the field named for its
modality; every failure is a 4xx JSON error naming the field (``omniformer.serve.uploads``).
The inputs are the model's modalities, looked up in the registry (``input_kind``):

    image, audio   files, decoded here within the server's limits (an image-only model never
                   decodes audio, and the reverse)
    text           a string
    another registered modality without files (``Modality.files`` False: the manifest holds
                   the value itself): the value as its preprocessor takes it, a JSON value
                   in ``.json``, a text field in multipart
    another registered modality with files: not taken over HTTP (the server never turns what a
                   request sends into a file path, and has no decoder for it); a request
                   sending it gets a 422 naming the field, and ``/v1/model`` lists it as
                   ``"unsupported"`` in ``input_kinds``. Use ``ClassifyPredictor`` from Python.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

from fastapi import FastAPI, Request

from ...data.audio import AudioError
from ...data.image import ImageError
from ...registry import get_modality
from ...serve.service import BatchedService, warm_up_seconds
from ...serve.uploads import (ERROR_RESPONSES, ApiError, MediaDecoder, b64, blank_png, check_text, check_top_k,
                              check_upload, read_form, read_json, silent_wav)
from ..base import ServeLimits
from .data import field_of
from .predictor import ClassifyPredictor

log = logging.getLogger(__name__)

MAX_TEXT_CHARS = 2000
BUILT_IN = ("image", "audio", "text")  # always known request fields, so sending one the model does not read is explained
FILES = ("image", "audio")             # the files this server decodes
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


def input_kind(modality: str) -> str:
    """How a request sends ``modality``: ``"image"`` or ``"audio"`` (a file decoded here),
    ``"text"``, ``"value"`` (a registered modality whose manifest holds the value itself) or
    ``"unsupported"`` (a registered modality read from files: no decoder here)."""
    if modality in BUILT_IN:
        return modality
    return "unsupported" if get_modality(modality).files else "value"


class ClassifyService(BatchedService):
    """Validates and decodes requests (decoding in a thread pool), then classifies them in micro-batches."""

    verb = "classify"

    def __init__(self, predictor: ClassifyPredictor, limits: ServeLimits, metrics: Any = None):
        super().__init__(predictor, predictor.classify_items, limits, metrics)
        model = predictor.cfg.model
        self.kinds = {m: input_kind(m) for m in predictor.inputs}
        self.served = [m for m, kind in self.kinds.items() if kind != "unsupported"]
        # Request fields: the built-ins always (to say "this model reads image, not audio"), then
        # the model's other modalities by name.
        self.fields = tuple(dict.fromkeys([*BUILT_IN, *self.kinds]))
        self.max_audio_seconds = float(limits.max_audio_seconds or model.audio.max_seconds)
        self.decoder = MediaDecoder(limits.max_pixels, self.max_audio_seconds, model.audio.sample_rate)

    @property
    def inputs(self) -> list[str]:
        return self.predictor.inputs

    @property
    def example_fields(self) -> dict[str, str]:
        """The manifest field that feeds each input the page can send (the examples read these)."""
        task = self.predictor.task_config
        return {m: field_of(m, task) for m in self.served if m in BUILT_IN}

    async def warm_up(self) -> None:
        """With the built-in inputs the model reads (none: no warm-up)."""
        model = self.predictor.cfg.model
        seconds = warm_up_seconds(self.max_audio_seconds, model.audio.max_seconds)
        warm = {"image": blank_png(model.image.size), "audio": silent_wav(seconds, model.audio.sample_rate),
                "text": "warm up"}
        values = {m: v for m, v in warm.items() if m in self.inputs}
        if values:
            await self.infer(await self.decode(self._prepare, values), 1)

    def info(self) -> dict[str, Any]:
        model = self.predictor.cfg.model
        return {"task": "classify", "model": self.model_id, "labels": self.predictor.labels, "inputs": self.inputs,
                "input_kinds": dict(self.kinds),
                "image_size": model.image.size if "image" in self.inputs else None,
                "audio_sample_rate": model.audio.sample_rate if "audio" in self.inputs else None,
                "max_audio_seconds": self.max_audio_seconds, "max_upload_bytes": self.limits.max_upload_bytes,
                "max_pixels": self.limits.max_pixels, "max_text_chars": MAX_TEXT_CHARS}

    # -- one request ---------------------------------------------------------------------------

    def _prepare(self, values: dict[str, Any]) -> dict[str, Any]:
        """Runs in the decode pool: the request's inputs -> one model item (ApiError naming the
        field on anything undecodable)."""
        item: dict[str, Any] = {"index": 0}
        for m, value in values.items():
            if m == "image":
                value = self.decoder.image(value, "image")
            elif m == "audio":
                value = self.decoder.audio(value, "audio")
            try:
                item.update(self.predictor.prepare(**{m: value}))
            except (ImageError, AudioError, ValueError) as e:
                raise ApiError(400, "invalid_input", f"{m}: {e}", m) from None
            except Exception as e:  # another modality's preprocessor, given what a client sent
                if m in BUILT_IN:
                    raise
                raise ApiError(400, "invalid_input", f"{m}: cannot be read as a {m} input "
                                                     f"({type(e).__name__}: {e})", m) from None
        return item

    def _check(self, values: dict[str, Any]) -> dict[str, Any]:
        """The inputs a request gave, validated: known to the model, within the limits."""
        given = {m: v for m, v in values.items() if v is not None}
        for m, value in given.items():
            if m in FILES:
                check_upload(value, m, self.limits.max_upload_bytes)
            elif self.kinds.get(m, m) == "text":
                given[m] = check_text(value, m, MAX_TEXT_CHARS)
        if not given:
            field = (self.served or self.inputs)[0]
            if not self.served:
                raise ApiError(422, "missing_field", f"{field}: this model reads {', '.join(self.inputs)}, "
                                                     f"which this server cannot take over HTTP", field)
            raise ApiError(422, "missing_field", f"{field}: missing; send at least one input this model "
                                                 f"reads: {', '.join(self.served)}", field)
        for m in given:
            if m not in self.inputs:
                raise ApiError(422, "invalid_field", f"{m}: this model reads {', '.join(self.inputs)}, not {m}", m)
            if self.kinds[m] == "unsupported":
                raise self._unsupported(m)
        return given

    async def classify(self, values: dict[str, Any], top_k: Any = None) -> dict[str, Any]:
        """The response body for one request's inputs (modality -> bytes, text or value; None:
        absent) and ``top_k`` (``time_ms`` is added by the app)."""
        k = check_top_k(top_k, len(self.predictor.labels))
        given = self._check(values)
        labels = await self.infer(await self.decode(self._prepare, given), k)
        if self.metrics is not None:
            self.metrics.answers.inc("+".join(given))
        return {"labels": [{"label": label, "probability": round(p, 6)} for label, p in labels],
                "model": self.model_id, "inputs": list(given)}

    # -- routes --------------------------------------------------------------------------------

    def _unsupported(self, m: str) -> ApiError:
        return ApiError(422, "unsupported_input",
                        f"{m}: this server does not take {m} files (a registered modality read from files; only "
                        f"image and audio files are decoded here); classify it from Python with "
                        f"ClassifyPredictor.classify({m}=...)", m)

    def add_routes(self, app: FastAPI, timed: Callable) -> dict[str, int]:
        """``POST /v1/classify`` and ``POST /v1/classify.json``; returns their body limits."""
        unsupported = tuple(m for m, kind in self.kinds.items() if kind == "unsupported")
        files = (*FILES, *unsupported)
        texts = tuple(m for m in self.fields if m not in files)
        json_fields = (*self.fields, "top_k")

        @app.post("/v1/classify", tags=["classify"], openapi_extra=_MULTIPART_SCHEMA, responses=ERROR_RESPONSES,
                  summary="Classify an image, a recording and/or a text (multipart upload)")
        async def classify_multipart(request: Request):
            try:
                form = await read_form(request, files=files, texts=(*texts, "top_k"))
            except ApiError as e:
                if e.field in unsupported:  # sent as text: still a modality this server cannot take
                    raise self._unsupported(e.field) from None
                raise
            body = await self.classify({m: form.get(m) for m in self.fields}, form.get("top_k"))
            return timed(request, body)

        @app.post("/v1/classify.json", tags=["classify"], openapi_extra=_JSON_SCHEMA, responses=ERROR_RESPONSES,
                  summary="Classify an image, a recording and/or a text (JSON with base64 files)")
        async def classify_json(request: Request):
            data = await read_json(request)
            for key, value in data.items():
                if key not in json_fields:
                    raise ApiError(422, "invalid_field", f"{key}: unknown field; expected {', '.join(json_fields)}",
                                   key)
                if key in unsupported and value is not None:
                    raise self._unsupported(key)
                if key in FILES and value is not None and not isinstance(value, str):
                    raise ApiError(422, "invalid_field", f"{key}: expected the file base64-encoded, "
                                                         f"got {type(value).__name__}", key)
            values = {m: b64(data.get(m), m) if m in FILES else data.get(m) for m in self.fields}
            body = await self.classify(values, data.get("top_k"))
            return timed(request, body)

        size = len(FILES) * self.limits.max_upload_bytes
        return {"/v1/classify": size + ENVELOPE, "/v1/classify.json": size * 4 // 3 + 8 + ENVELOPE}
