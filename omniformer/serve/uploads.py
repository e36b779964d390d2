"""What every route of the server shares: errors, content sniffing, bounded decoding of
uploaded images and audio, and reading multipart or JSON bodies field by field.

Uploads are untrusted: file types are sniffed from the bytes (never the name or content type),
images are checked against a pixel budget before decoding and audio against a duration budget
before reading samples, and every failure is an ``ApiError`` (a 4xx JSON body naming the field).
A task's routes (``Task.service``) build on these, so every task refuses bad input the same way.
"""
from __future__ import annotations

import base64
import binascii
import io
import json
from typing import Any

import numpy as np
import soundfile as sf
from PIL import Image
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect, Request

from ..data.audio import AudioError, load_audio
from ..data.image import ImageError, load_image

DEFAULT_TOP_K = 5
MAX_TEXT_FIELD_BYTES = 64 * 1024   # one multipart text field (a question, top_k, ...)
MAX_JSON_DEPTH = 32                # nesting of a JSON body: the documented ones are 1 deep
# Multipart parts are parsed up to this size (the route's body cap bounds them first), so that a
# text field over MAX_TEXT_FIELD_BYTES is refused by name rather than by the parser, which
# does not say which part it was.
_PARSE_PART_BYTES = 2 ** 31


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


def too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"request body: larger than the limit of {limit} bytes "
                                              f"({limit / 2 ** 20:.1f} MiB); send a smaller image or recording")


HTTP_ERROR_TYPES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


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


def describe(data: bytes) -> str:
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


class ErrorDetail(BaseModel):
    type: str
    message: str
    field: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


ERROR_RESPONSES = {code: {"model": ErrorResponse, "description": what} for code, what in [
    (400, "undecodable image or audio, malformed body"), (413, "body, image pixels or audio duration over the limit"),
    (415, "not an image / not audio (sniffed from the bytes)"), (422, "missing or invalid field"),
    (503, "not ready or overloaded")]}


class MediaDecoder:
    """Decodes uploaded images and audio within the server's limits; every failure an ApiError."""

    def __init__(self, max_pixels: int, max_audio_seconds: float, sample_rate: int):
        self.max_pixels, self.max_audio_seconds, self.sample_rate = max_pixels, max_audio_seconds, sample_rate

    def image(self, data: bytes, field: str = "image") -> Image.Image:
        kind = sniff_image(data)
        if kind is None:
            raise ApiError(415, "unsupported_media_type", f"{field}: the file is {describe(data)}, not an image; "
                                                          f"expected PNG, JPEG, GIF, BMP or WebP", field)
        try:
            # Header only: the size is known before a single pixel is decoded (decompression bombs).
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
                opened_as = im.format
        except Image.DecompressionBombError as e:  # Pillow's own, far higher, limit
            raise ApiError(413, "image_too_large", f"{field}: too many pixels ({e}); the limit is "
                                                   f"{self.max_pixels} pixels", field) from None
        except Exception as e:
            raise ApiError(400, "invalid_image", f"{field}: looks like {kind} but cannot be read ({e})", field) from None
        if opened_as != kind and not (kind == "JPEG" and opened_as == "MPO"):  # MPO: multi-picture JPEG
            # A header that Pillow reads as another format is not what its magic bytes claim.
            raise ApiError(415, "unsupported_media_type", f"{field}: the data is {opened_as}, expected PNG, JPEG, "
                                                          f"GIF, BMP or WebP", field)
        if width * height > self.max_pixels:
            raise ApiError(413, "image_too_large", f"{field}: {width}x{height} = {width * height} pixels; "
                                                   f"the limit is {self.max_pixels} pixels", field)
        try:
            return load_image(data, max_pixels=self.max_pixels)
        except ImageError as e:
            message = str(e).replace("<bytes>: ", "")
            raise ApiError(400, "invalid_image", f"{field}: {message}", field) from None

    def audio(self, data: bytes, field: str = "audio") -> np.ndarray:
        kind = sniff_audio(data)
        if kind is None:
            raise ApiError(415, "unsupported_media_type", f"{field}: the file is {describe(data)}, not audio; "
                                                          f"expected WAV, FLAC or OGG", field)
        try:
            info = sf.info(io.BytesIO(data))
            frames, rate = info.frames, info.samplerate
        except Exception as e:
            raise ApiError(400, "invalid_audio", f"{field}: looks like {kind} but cannot be read ({e})", field) from None
        # Checked from the header before any samples are read; an unknown length (streamed OGG
        # can report a huge frame count) is caught again by load_audio below.
        if rate > 0 and 0 < frames < 2 ** 62 and frames / rate > self.max_audio_seconds:
            raise ApiError(413, "audio_too_long", f"{field}: {frames / rate:.2f} s long; the limit is "
                                                  f"{self.max_audio_seconds:g} s", field)
        try:
            return load_audio(data, self.sample_rate, max_seconds=self.max_audio_seconds, truncate=False)
        except AudioError as e:
            message = str(e).replace("<bytes>: ", "")
            too_long = "max_seconds" in message
            raise ApiError(413 if too_long else 400, "audio_too_long" if too_long else "invalid_audio",
                           f"{field}: {message}", field) from None


def silent_wav(seconds: float, rate: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.zeros(int(seconds * rate), dtype=np.float32), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def blank_png(size: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (128, 128, 128)).save(buf, format="PNG")
    return buf.getvalue()


def b64(value: str | None, field: str) -> bytes | None:
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


def pydantic_message(errors: list[dict], fields: tuple[str, ...] = ()) -> tuple[str, str | None]:
    """The first error as 'field: what was expected'."""
    err = errors[0]
    loc = [str(x) for x in err.get("loc", ()) if x != "body"]
    field = ".".join(loc) or None
    kind = err.get("type", "")
    if kind == "missing":
        return f"{field}: missing", field
    if kind == "extra_forbidden":
        return f"{field}: unknown field; expected {', '.join(fields) or 'the documented fields'}", field
    if kind.startswith("json") or field is None:
        return f"body: not valid JSON ({err.get('msg', '')})", None
    return f"{field}: {err.get('msg', 'invalid')}", field


def check_upload(data: bytes | None, field: str, max_bytes: int) -> None:
    """An uploaded file within the size limit and not empty."""
    if data is None:
        return
    if len(data) > max_bytes:
        raise ApiError(413, "payload_too_large", f"{field}: {len(data)} bytes; the limit is {max_bytes} bytes", field)
    if len(data) == 0:
        kind = "invalid_audio" if "audio" in field else "invalid_image" if "image" in field else "invalid_field"
        raise ApiError(400, kind, f"{field}: the file is empty (0 bytes)", field)


def check_text(value: str | None, field: str, max_chars: int) -> str | None:
    """A text field that is present, not blank and not too long (None stays None)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ApiError(422, "invalid_field", f"{field}: expected text", field)
    if not value.strip():
        raise ApiError(422, "invalid_field", f"{field}: empty; expected text", field)
    if len(value) > max_chars:
        raise ApiError(422, "invalid_field", f"{field}: {len(value)} characters; expected at most {max_chars}", field)
    return value


def check_top_k(value: Any, n: int, default: int = DEFAULT_TOP_K) -> int:
    """``top_k`` as an integer from 1 to ``n`` (a form sends it as text); ``default`` when absent."""
    if value is None:
        return min(default, n)
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ApiError(422, "invalid_field", f"top_k: expected an integer from 1 to {n}, got {value[:20]!r}",
                           "top_k") from None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= n:
        raise ApiError(422, "invalid_field", f"top_k: expected an integer from 1 to {n}, got {json.dumps(value)[:20]}",
                       "top_k")
    return value


async def read_form(request: Request, files: tuple[str, ...], texts: tuple[str, ...],
                    max_text_bytes: int = MAX_TEXT_FIELD_BYTES) -> dict[str, Any]:
    """The named fields of a multipart body: ``files`` as bytes, ``texts`` as str, absent ones None.
    A file sent where text belongs, or text where a file belongs, is a 422 naming the field; a
    text field over ``max_text_bytes`` a 413 naming it and the limit."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise ApiError(415, "unsupported_media_type", f"body: expected multipart/form-data with fields "
                                                      f"{', '.join(files + texts)} (or POST JSON to {request.url.path}.json)")
    try:
        form = await request.form(max_files=len(files) + 2, max_fields=len(texts) + 6,
                                  max_part_size=_PARSE_PART_BYTES)
    except PayloadTooLarge:
        raise
    except ClientDisconnect:  # nobody is left to answer; counted, not logged as a server error
        raise ApiError(400, "client_disconnected", "body: the client disconnected during the upload") from None
    except StarletteHTTPException as e:
        raise ApiError(400, "invalid_body", f"body: malformed multipart/form-data ({e.detail})") from None
    try:
        out: dict[str, Any] = {}
        for name, value in form.multi_items():
            if isinstance(value, str) and len(value.encode("utf-8", "surrogatepass")) > max_text_bytes:
                size = len(value.encode("utf-8", "surrogatepass"))
                raise ApiError(413, "field_too_large", f"{name}: {size} bytes; a text field may have at most "
                                                       f"{max_text_bytes} bytes ({max_text_bytes // 1024} KiB)", name)
        for name in files:
            value = form.get(name)
            if value is None:
                out[name] = None
            elif isinstance(value, str):
                raise ApiError(422, "invalid_field", f"{name}: expected a file upload, got a text field", name)
            else:
                out[name] = await value.read()
        for name in texts:
            value = form.get(name)
            if value is not None and not isinstance(value, str):
                raise ApiError(422, "invalid_field", f"{name}: expected text, got a file", name)
            out[name] = value
    finally:
        await form.close()
    return out


def json_depth(value: Any) -> int:
    """How deeply arrays and objects nest in a parsed JSON value (a scalar is 0), without recursion."""
    depth, level = 0, [(value, 1)]
    while level:
        item, d = level.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        depth = max(depth, d)
        if d > MAX_JSON_DEPTH:  # far enough to refuse: no need to walk the rest
            return d
        level.extend((child, d + 1) for child in children)
    return depth


async def read_json(request: Request) -> dict[str, Any]:
    """A JSON object body; anything else is a 4xx saying what was expected."""
    content_type = request.headers.get("content-type", "")
    if "json" not in content_type.lower():
        raise ApiError(415, "unsupported_media_type", "body: expected application/json")
    try:
        raw = await request.body()
    except ClientDisconnect:
        raise ApiError(400, "client_disconnected", "body: the client disconnected during the upload") from None
    too_deep = ApiError(400, "invalid_body", f"body: JSON nested too deeply; at most {MAX_JSON_DEPTH} levels "
                                             f"of arrays and objects")
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, "invalid_body", f"body: not valid JSON ({e})") from None
    except RecursionError:  # deeper than Python's recursion limit
        raise too_deep from None
    if json_depth(data) > MAX_JSON_DEPTH:
        raise too_deep
    if not isinstance(data, dict):
        raise ApiError(422, "invalid_body", f"body: expected a JSON object, got {type(data).__name__}")
    return data
