"""Property-based fuzz tests of the input surfaces: manifests, image and audio decoding, the
tokenizer and the server's POST routes. Whatever the input, each either works or fails with its
documented error (ManifestError, ImageError, AudioError, TokenizerError, a 4xx), never anything else.

Every test is derandomized (the same examples on every run, so CI is reproducible) and keeps no
example database; the whole file runs in well under a minute on one core.
"""
from __future__ import annotations

import base64
import io
import json
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from omniformer.data.audio import AudioError, load_audio
from omniformer.data.image import ImageError, load_image
from omniformer.data.manifest import ManifestError, Problem, check_manifest, read_manifest
from omniformer.data.text import Tokenizer, TokenizerError
from omniformer.serve.app import sniff_audio, sniff_image


def fuzz(max_examples: int):
    return settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ---------------------------------------------------------------------------------------------
# 1. Manifests
# ---------------------------------------------------------------------------------------------

FIELDS = ["id", "text", "image", "audio", "question", "question_audio", "answer", "label", "split", "meta"]
NASTY_TEXT = st.sampled_from([
    "", " ", "\x00", "a\x00b.png", "\ud800", "\udcff.wav", "x" * 5000, "../" * 2000, "/", "/dev/null", ".",
    "\u202e\u2028\ufeff", "😀" * 100, "train", "val", "test", "TRAIN", "\n", "\\", "C:\\x.png",
])
JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
                         st.text(max_size=40), NASTY_TEXT)
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
SAMPLES = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=10), JSON_VALUES, max_size=8)


def _json_line(sample: dict) -> bytes:
    # ensure_ascii: lone surrogates survive as \ud800 escapes, as a hand-written manifest may have them
    return json.dumps(sample, ensure_ascii=True).encode()


# Lines the random generators are unlikely to reach: numbers Python will not parse, nesting past
# the recursion limit, a BOM, bad UTF-8, bare JSON values.
NASTY_LINES = st.sampled_from([
    b"1" * 5000, b'{"id": "a", "text": "t", "label": ' + b"9" * 5000 + b"}", b"[" * 100_000, b"{" * 50_000,
    b'{"text": "t", "meta": ' + b"[" * 5000 + b"]" * 5000 + b"}", b'{"text": "t", "label": NaN}',
    b'{"text": "t", "id": Infinity}', b"\xef\xbb\xbf{}", b"\xff\xfe\x00", b"\xc3\x28", b"\xed\xa0\x80",
    b'"just a string"', b"null", b"[]", b'{"text": "t", "text": 1}', b'{"text": "\\ud800"}',
    b'{"text": "t", "split": {"a": 1}}', b'{"image": "\\u0000"}', b"\x00" * 100, b"\r", b"{\"text\":\"t\"}\r",
])
LINES = st.one_of(st.binary(max_size=200), SAMPLES.map(_json_line), NASTY_LINES,
                  st.text(max_size=100).map(lambda s: s.encode("utf-8", "surrogatepass")))


def _check_problems(count: int, problems: list) -> None:
    assert isinstance(count, int) and count >= 0
    assert isinstance(problems, list) and all(isinstance(p, Problem) for p in problems)
    for p in problems:
        str(p)  # every problem can be shown


@fuzz(150)
@given(lines=st.lists(LINES, max_size=6), newline=st.sampled_from([b"\n", b"\r\n"]))
def test_manifest_never_crashes(lines: list[bytes], newline: bytes):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "manifest.jsonl"
        path.write_bytes(newline.join(lines))
        count, problems = check_manifest(path, decode=False)
        _check_problems(count, problems)
        try:
            samples = read_manifest(path)
        except ManifestError as e:
            assert str(e)
            assert problems, "read_manifest refused a manifest that check_manifest passed"
        else:
            assert isinstance(samples, list) and samples
            assert all(isinstance(s, dict) for s in samples)


@fuzz(40)
@given(data=st.binary(max_size=2000))
def test_manifest_random_bytes(data: bytes):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "manifest.jsonl"
        path.write_bytes(data)
        _check_problems(*check_manifest(path, decode=False))
        try:
            assert isinstance(read_manifest(path), list)
        except ManifestError:
            pass  # the documented error; anything else fails the test


@pytest.mark.parametrize("line", [b"1" * 5000, b'{"text": "t", "label": ' + b"9" * 5000 + b"}", b"[" * 100_000])
def test_manifest_unparseable_json_is_a_problem(line: bytes):
    """Found by the fuzzer: json.loads raises ValueError (huge integers) and RecursionError (deep
    nesting), not JSONDecodeError, on these lines; they are problems of that line, not crashes."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "manifest.jsonl"
        path.write_bytes(b'{"text": "fine"}\n' + line + b"\n")
        count, problems = check_manifest(path, decode=False)
        assert count == 2 and [(p.line, p.field) for p in problems] == [(2, "<json>")]
        with pytest.raises(ManifestError, match="line 2: <json>"):
            read_manifest(path)


def test_manifest_not_a_file():
    with tempfile.TemporaryDirectory() as tmp:
        for path in (Path(tmp), Path(tmp) / "missing.jsonl", Path(tmp) / ("x" * 300)):
            count, problems = check_manifest(path, decode=False)
            assert count == 0 and problems and problems[0].field == "<file>"
            with pytest.raises(ManifestError):
                read_manifest(path)


# ---------------------------------------------------------------------------------------------
# 2. Images
# ---------------------------------------------------------------------------------------------

def _image_bytes(fmt: str, size: tuple[int, int], mode: str) -> bytes:
    rng = np.random.default_rng(size[0] * 1000 + size[1])
    channels = {"RGB": 3, "RGBA": 4, "L": 1, "LA": 2}[mode]
    pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    im = Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode=mode)
    if fmt == "JPEG" and mode not in ("RGB", "L"):
        im = im.convert("RGB")
    buf = io.BytesIO()
    try:
        im.save(buf, format=fmt)
    except OSError:  # a mode the format cannot hold (LA as BMP, say)
        buf = io.BytesIO()
        im.convert("RGB").save(buf, format=fmt)
    return buf.getvalue()


IMAGES = st.builds(_image_bytes, st.sampled_from(["PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF"]),
                   st.tuples(st.integers(1, 40), st.integers(1, 40)), st.sampled_from(["RGB", "RGBA", "L", "LA"]))


@st.composite
def damaged(draw, files):
    """A valid file, truncated at a random point and/or with random bytes overwritten (often in the header)."""
    data = bytearray(draw(files))
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, min(len(data) - 1, draw(st.sampled_from([32, 64, len(data) - 1])))))
        data[at] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


def _assert_image_or_error(data: bytes) -> None:
    try:
        im = load_image(data, max_pixels=1_000_000)
    except ImageError as e:
        assert str(e).startswith("<bytes>: ")
        return
    assert isinstance(im, Image.Image) and im.mode == "RGB" and im.width * im.height <= 1_000_000


@fuzz(60)
@given(data=st.binary(max_size=500) | st.builds(lambda magic, rest: magic + rest, st.sampled_from(
    [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"BM", b"RIFF\x00\x00\x00\x00WEBP", b"II*\x00"]),
    st.binary(max_size=300)))
def test_image_random_bytes(data: bytes):
    _assert_image_or_error(data)
    assert sniff_image(data) in (None, "PNG", "JPEG", "GIF", "BMP", "WEBP")
    assert sniff_audio(data) in (None, "WAV", "FLAC", "OGG")


@fuzz(80)
@given(data=damaged(IMAGES))
def test_image_damaged(data: bytes):
    _assert_image_or_error(data)


def test_image_header_claims_huge_size():
    data = bytearray(_image_bytes("PNG", (4, 4), "RGB"))
    ihdr = bytearray(data[12:29])
    ihdr[4:12] = struct.pack(">II", 2 ** 31 - 1, 2 ** 31 - 1)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    with pytest.raises(ImageError):
        load_image(bytes(data))


# ---------------------------------------------------------------------------------------------
# 3. Audio
# ---------------------------------------------------------------------------------------------

def _audio_bytes(fmt: str, rate: int, frames: int, channels: int, subtype: str) -> bytes:
    t = np.arange(frames) / max(rate, 1)
    wave = 0.5 * np.sin(2 * np.pi * 3 * t)[:, None].repeat(channels, axis=1)
    buf = io.BytesIO()
    sf.write(buf, wave.astype(np.float32), rate, format=fmt, subtype=subtype if fmt == "WAV" else "PCM_16")
    return buf.getvalue()


def _wav_header(rate: int, channels: int, bits: int, fmt_tag: int, payload: bytes) -> bytes:
    """A hand-made RIFF/WAVE file: any sample rate, channel count and format, even nonsense ones."""
    block = max(1, channels * bits // 8)
    fmt = struct.pack("<HHIIHH", fmt_tag, channels, rate, (rate * block) & 0xFFFFFFFF, block & 0xFFFF, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(payload)) + payload
    return b"RIFF" + struct.pack("<I", len(body)) + body


# WAV, FLAC up to 655 kHz; frames kept small so that resampling 1 Hz up to 16 kHz stays cheap.
AUDIO = st.one_of(
    st.builds(_audio_bytes, st.just("WAV"), st.integers(1, 400_000), st.integers(1, 200), st.integers(1, 3),
              st.sampled_from(["PCM_16", "PCM_U8", "PCM_24", "FLOAT", "DOUBLE"])),
    # FLAC: rates above 65535 Hz must be whole multiples of 10 Hz
    st.builds(_audio_bytes, st.just("FLAC"), st.integers(1, 65535) | st.integers(6554, 40_000).map(lambda r: 10 * r),
              st.integers(1, 200), st.integers(1, 2),
              st.just("PCM_16")),
)
HAND_MADE_WAV = st.builds(_wav_header, st.integers(0, 2 ** 32 - 1) | st.sampled_from([0, 1, 8000, 400_000]),
                          st.integers(0, 2000) | st.just(1), st.sampled_from([0, 1, 8, 16, 24, 32, 64, 7]),
                          st.sampled_from([1, 3, 6, 7, 0xFFFE, 0, 2, 85]),
                          st.binary(max_size=400) | st.just(struct.pack("<4f", np.nan, np.inf, 1e30, -1)))


def _assert_audio_or_error(data: bytes, max_seconds: float | None = None, truncate: bool = True) -> None:
    try:
        wave = load_audio(data, 16000, max_seconds=max_seconds, truncate=truncate)
    except AudioError as e:
        assert str(e).startswith("<bytes>: ")
        return
    assert isinstance(wave, np.ndarray) and wave.dtype == np.float32 and wave.ndim == 1 and wave.size > 0
    assert np.isfinite(wave).all() and np.abs(wave).max(initial=0.0) <= 1.0
    if max_seconds is not None:
        assert len(wave) <= int(max_seconds * 16000)


@fuzz(40)
@given(data=st.binary(max_size=500) | st.builds(lambda magic, rest: magic + rest,
                                                st.sampled_from([b"RIFF\x00\x00\x00\x00WAVE", b"fLaC", b"OggS"]),
                                                st.binary(max_size=300)))
def test_audio_random_bytes(data: bytes):
    _assert_audio_or_error(data)


@fuzz(60)
@given(data=damaged(AUDIO) | AUDIO, max_seconds=st.none() | st.floats(0.0001, 5.0), truncate=st.booleans())
def test_audio_damaged(data: bytes, max_seconds: float | None, truncate: bool):
    _assert_audio_or_error(data, max_seconds, truncate)


@pytest.mark.parametrize("rate", [400_000, 10_000_000])
def test_audio_shorter_than_one_output_sample(rate: int):
    """Found by the fuzzer: one sample at 400 kHz resamples to no sample at 16 kHz; that is empty audio."""
    with pytest.raises(AudioError, match="empty"):
        load_audio(_wav_header(rate, 1, 16, 1, b"\x00\x10"), 16000)


@fuzz(60)
@given(data=HAND_MADE_WAV)
def test_audio_hand_made_headers(data: bytes):
    _assert_audio_or_error(data, max_seconds=5.0)


# ---------------------------------------------------------------------------------------------
# 4. Tokenizer
# ---------------------------------------------------------------------------------------------

CORPUS = ["what color is the circle?", "a red circle left of a blue square", "how many triangles are there?",
          "Ünïcödé wörds ünd 中文 字符 😀", "is the square above the green circle?"] * 5
VOCAB = 120


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.train(CORPUS, VOCAB)


@fuzz(200)
@given(text=st.text(max_size=300) | st.sampled_from(["\x00", "\u200b", "\u0301" * 50, "a" * 10_000, "😀" * 200,
                                                     "\t\x0b\x0c\x1c", "[CLS] [SEP] [MASK] [PAD]", "##"]),
       max_len=st.none() | st.integers(1, 64))
def test_tokenizer_encode_any_text(tokenizer: Tokenizer, text: str, max_len: int | None):
    if not text.strip():
        with pytest.raises(TokenizerError):
            tokenizer.encode(text, max_len)
        return
    ids = tokenizer.encode(text, max_len)
    assert isinstance(ids, list) and ids and all(isinstance(i, int) for i in ids)
    assert all(0 <= i < tokenizer.vocab_size <= VOCAB for i in ids)
    assert ids[-1] == tokenizer.sep_id
    if max_len is not None:
        assert len(ids) <= max_len
    if max_len is None or max_len >= 2:
        assert ids[0] == tokenizer.cls_id
    assert isinstance(tokenizer.decode(ids), str)
    assert isinstance(tokenizer.decode(ids, skip_special=False), str)


# ---------------------------------------------------------------------------------------------
# 5. The server's POST routes
# ---------------------------------------------------------------------------------------------

ANSWERS = ["red", "green", "blue", "circle", "square", "triangle", "yes", "no", "0", "1", "2", "3"]


@pytest.fixture(scope="module")
def serve_client(tmp_path_factory):
    """A QA server over a checkpoint with random weights, as tests/serve/test_serve.py builds one."""
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    import dataclasses

    import torch
    from fastapi.testclient import TestClient

    from omniformer.config import load_config
    from omniformer.serve.app import create_app
    from omniformer.tasks.qa import QAModel, qa_config
    from omniformer.train.checkpoint import save_checkpoint

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml")
    tokenizer = Tokenizer.train(CORPUS, 100)
    cfg.model.vocab_size = tokenizer.vocab_size
    torch.manual_seed(0)
    model = QAModel(cfg.model, len(ANSWERS), qa_config(cfg))
    meta = {"task": "qa", "config": dataclasses.asdict(cfg), "answers": ANSWERS, "model_id": "fuzz"}
    path = save_checkpoint(tmp_path_factory.mktemp("fuzz_serve") / "qa", model, meta, tokenizer)
    app = create_app(path, max_upload_bytes=64 * 1024, max_pixels=1_000_000, max_audio_seconds=1.0)
    with TestClient(app, raise_server_exceptions=False) as client:
        routes = [p for p, ops in app.openapi()["paths"].items() if "post" in ops]
        yield client, routes


# Field values: often valid, sometimes broken, so that requests get past each check in turn.
PNG = _image_bytes("PNG", (16, 16), "RGB")
JPEG = _image_bytes("JPEG", (24, 8), "RGB")
WAV = _audio_bytes("WAV", 16000, 1600, 1, "PCM_16")
FLAC = _audio_bytes("FLAC", 8000, 800, 2, "PCM_16")
IMAGE_FILES = st.one_of(st.sampled_from([PNG, JPEG]), damaged(st.sampled_from([PNG, JPEG])), IMAGES,
                        st.binary(max_size=64), st.sampled_from([b"", WAV, b"%PDF-1.4", b"GIF89a", b"BM" + b"\0" * 30]))
AUDIO_FILES = st.one_of(st.sampled_from([WAV, FLAC]), damaged(st.sampled_from([WAV, FLAC])), AUDIO, HAND_MADE_WAV,
                        st.binary(max_size=64), st.sampled_from([b"", PNG, b"OggS" + b"\0" * 40]))
QUESTIONS = st.one_of(st.sampled_from(["what color is the circle?", "how many triangles are there?", " ", "",
                                       "x" * 1001, "?" * 1000, "\x00", "[CLS] [SEP] [MASK]"]), st.text(max_size=40))
TOP_K = st.one_of(st.integers(1, 12), st.integers(1, 12), st.integers(-3, 20),
                  st.sampled_from([True, 1.5, "3", None, [], {}, 10 ** 30]))
OTHER_FIELDS = st.sampled_from(["text", "timings", "unrelated", "images", ""]) | st.text(max_size=6)


def _b64(data: bytes, how: str) -> str:
    text = base64.b64encode(data).decode()
    return {"plain": text, "url": "data:image/png;base64," + text, "spaced": " \n".join([text[:10], text[10:]]),
            "broken": text + "*"}[how]


VALID = {"image": st.sampled_from([PNG, JPEG]), "audio": st.none() | st.sampled_from([WAV, FLAC]),
         "question": st.sampled_from(["what color is the circle?", "how many triangles are there?"]),
         "top_k": st.none() | st.integers(1, 12)}
BROKEN = {"image": IMAGE_FILES, "audio": AUDIO_FILES, "question": QUESTIONS | st.none(), "top_k": TOP_K | st.text(max_size=4)}
# Which field is broken (None: none, "extra": an unknown field besides valid ones, "all": every field random)
WHAT_BROKEN = st.sampled_from([None, None, "image", "image", "audio", "audio", "question", "top_k", "extra", "all"])


def _fields(draw, broken: str | None) -> dict:
    return {name: draw(BROKEN[name] if broken in (name, "all") else VALID[name]) for name in VALID}


@st.composite
def multipart_requests(draw) -> dict:
    broken = draw(WHAT_BROKEN)
    fields, files, data = _fields(draw, broken), {}, {}
    for name in ("image", "audio"):
        value = fields[name]
        if value is None:
            continue
        if broken in (name, "all") and draw(st.integers(0, 5)) == 0:
            data[name] = value.decode("latin-1")  # text where a file belongs
        else:
            files[name] = (draw(st.sampled_from([f"{name}.bin", "", "../../etc/passwd", "\u00e9.png"])), value,
                           draw(st.sampled_from(["application/octet-stream", "image/png", "audio/wav", "text/plain"])))
    if fields["question"] is not None:
        if broken in ("question", "all") and draw(st.integers(0, 5)) == 0:
            files["question"] = ("q.txt", fields["question"].encode(), "text/plain")  # a file where text belongs
        else:
            data["question"] = fields["question"]
    if fields["top_k"] is not None:
        data["top_k"] = str(fields["top_k"])
    if broken in ("extra", "all"):
        for name in draw(st.lists(OTHER_FIELDS, min_size=1, max_size=2)):
            data[name] = draw(QUESTIONS)
    if not files:  # still multipart, so the fields are what gets checked
        files["unrelated"] = ("x.txt", b"x", "text/plain")
    return {"files": files, "data": data}


@st.composite
def json_requests(draw) -> dict:
    broken = draw(WHAT_BROKEN)
    fields = _fields(draw, broken)
    body = {}
    for name, value in fields.items():
        if isinstance(value, bytes):
            how = "plain" if broken not in (name, "all") else draw(st.sampled_from(["plain", "url", "spaced", "broken"]))
            value = _b64(value, how)
        if broken in (name, "all") and draw(st.integers(0, 4)) == 0:
            value = draw(JSON_VALUES)  # any JSON where a string or integer belongs
        if value is not None or draw(st.booleans()):  # null and absent are both allowed for optional fields
            body[name] = value
    if broken in ("extra", "all"):
        body.update(draw(st.dictionaries(OTHER_FIELDS, JSON_VALUES, min_size=1, max_size=2)))
    return body


RAW_BODIES = st.one_of(
    st.binary(max_size=100), JSON_VALUES.map(lambda v: json.dumps(v).encode()),
    st.sampled_from([b"[" * 100_000, b'{"image": ' + b"[" * 200 + b"]" * 200 + b"}", b"1" * 5000, b"",
                     b'{"image": "' + base64.b64encode(PNG) + b'", "question": "\\ud800?"}',
                     b"--x\r\nContent-Disposition: form-data; name=\"image\"\r\n\r\n\x89PNG", b"--x--"]))
CONTENT_TYPES = st.sampled_from(["application/json", "multipart/form-data", "multipart/form-data; boundary=x",
                                 "text/plain", "application/json; charset=latin-1", ""])


@fuzz(150)
@given(route=st.integers(0, 10), kind=st.sampled_from(["route", "route", "route", "raw"]), data=st.data())
def test_serve_post_routes_never_500(serve_client, route: int, kind: str, data):
    client, routes = serve_client
    assert routes
    path = routes[route % len(routes)]
    if kind == "raw":
        response = client.post(path, content=data.draw(RAW_BODIES), headers={"content-type": data.draw(CONTENT_TYPES)})
    elif path.endswith(".json"):
        # NaN, Infinity and lone surrogates (\ud800 escapes) are what a careless client may send
        response = client.post(path, content=json.dumps(data.draw(json_requests())).encode(),
                               headers={"content-type": "application/json"})
    else:
        response = client.post(path, **data.draw(multipart_requests()))
    assert response.status_code < 500, (path, response.status_code, response.text[:300])
    body = response.json()
    if response.status_code == 200:
        assert body["answers"] and all(a["answer"] in ANSWERS for a in body["answers"])
    else:
        assert set(body) == {"error"} and body["error"]["message"]
