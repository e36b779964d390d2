"""The QA server: endpoints, answers, validation of every kind of bad input, micro-batching.

Most tests use a QA checkpoint with random weights (built here from the quickstart recipe:
same shapes and compute as a trained one); the accuracy test uses the ``trained_qa`` fixture.
"""
from __future__ import annotations

import base64
import dataclasses
import io
import json
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image, ImageDraw

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from omniformer.serve.app import create_app, sniff_audio, sniff_image  # noqa: E402
from omniformer.serve.batcher import MicroBatcher  # noqa: E402

ANSWERS = ["red", "green", "blue", "circle", "square", "triangle", "yes", "no", "0", "1", "2", "3"]
QUESTIONS = ["what color is the circle?", "what shape is the red object?", "is there a blue square?",
             "how many triangles are there?", "what is left of the green circle?", "is the square above the circle?"]


# ---------------------------------------------------------------------------------------------
# Fixtures and helpers
# ---------------------------------------------------------------------------------------------

def build_random_qa_checkpoint(out: Path, config: str | Path = "configs/quickstart.yaml",
                               model_id: str = "test") -> Path:
    """A QA checkpoint with random weights: the served model's shapes and cost, no training."""
    import torch

    from omniformer.config import load_config
    from omniformer.data.text import Tokenizer
    from omniformer.tasks.qa import QAModel, qa_config
    from omniformer.train.checkpoint import save_checkpoint
    config = Path(config)
    if not config.is_absolute():
        config = Path(__file__).resolve().parents[2] / config
    cfg = load_config(config)
    tokenizer = Tokenizer.train(QUESTIONS * 5 + ["a red circle left of a blue square"], 100)
    cfg.model.vocab_size = tokenizer.vocab_size
    torch.manual_seed(0)
    model = QAModel(cfg.model, len(ANSWERS), qa_config(cfg))
    meta = {"task": "qa", "config": dataclasses.asdict(cfg), "answers": ANSWERS, "model_id": model_id}
    return save_checkpoint(out, model, meta, tokenizer)


def png_bytes(size: int = 48, color=(200, 40, 40), fmt: str = "PNG") -> bytes:
    im = Image.new("RGB", (size, size), (255, 255, 255))
    ImageDraw.Draw(im).ellipse((size // 4, size // 4, 3 * size // 4, 3 * size // 4), fill=color)
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def wav_bytes(seconds: float = 1.0, rate: int = 16000, fmt: str = "WAV") -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buf = io.BytesIO()
    sf.write(buf, (0.1 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), rate, format=fmt,
             subtype="PCM_16" if fmt != "OGG" else "VORBIS")
    return buf.getvalue()


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb's header)."""
    data = bytearray(png_bytes(4))
    ihdr = data[12:29]  # b"IHDR" + 13 bytes of fields
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    return bytes(data)


def write_examples_manifest(folder: Path, count: int = 4) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(count):
        (folder / f"img{i}.png").write_bytes(png_bytes(48, [(200, 40, 40), (40, 200, 40), (40, 40, 200)][i % 3]))
        (folder / f"q{i}.wav").write_bytes(wav_bytes(1.0))
        lines.append({"id": f"s{i}", "image": f"img{i}.png", "question": QUESTIONS[i % len(QUESTIONS)],
                      "question_audio": f"q{i}.wav", "answer": ANSWERS[i % 3], "split": "test",
                      "meta": {"family": f"f{i % 2}"}})
    lines.append({"id": "train0", "image": "img0.png", "question": "a training question?", "answer": "red",
                  "split": "train"})
    manifest = folder / "manifest.jsonl"
    manifest.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return manifest


@pytest.fixture(scope="module")
def qa_checkpoint(tmp_path_factory) -> Path:
    return build_random_qa_checkpoint(tmp_path_factory.mktemp("serve") / "qa")


@pytest.fixture(scope="module")
def examples_manifest(tmp_path_factory) -> Path:
    return write_examples_manifest(tmp_path_factory.mktemp("examples"))


@pytest.fixture(scope="module")
def client(qa_checkpoint, examples_manifest):
    app = create_app(qa_checkpoint, max_upload_bytes=512 * 1024, max_pixels=4_000_000,
                     examples_manifest=examples_manifest)
    with TestClient(app) as c:
        yield c


def ask(client, image=None, question=None, audio=None, top_k=None, image_name="scene.png",
        image_type="image/png", audio_name="question.wav", audio_type="audio/wav"):
    files, data = {}, {}
    if image is not None:
        files["image"] = (image_name, image, image_type)
    if audio is not None:
        files["audio"] = (audio_name, audio, audio_type)
    if question is not None:
        data["question"] = question
    if top_k is not None:
        data["top_k"] = str(top_k)
    if not files:  # still multipart, so the missing field is what gets reported
        files["unrelated"] = ("x.txt", b"x", "text/plain")
    return client.post("/v1/answer", files=files, data=data)


def check_answer_shape(body: dict, top_k: int = 5, asked_by: str = "text") -> None:
    assert set(body) == {"answers", "model", "asked_by", "time_ms"}
    assert body["model"] == "test"
    assert body["asked_by"] == asked_by
    assert body["time_ms"] >= 0
    answers = body["answers"]
    assert len(answers) == top_k
    assert all(set(a) == {"answer", "probability"} and a["answer"] in ANSWERS for a in answers)
    probs = [a["probability"] for a in answers]
    assert probs == sorted(probs, reverse=True)
    assert all(0 <= p <= 1 for p in probs) and sum(probs) <= 1 + 1e-4


def check_error(response, status: int, error_type: str, *words: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["type"] == error_type, error
    for word in words:
        assert word.lower() in error["message"].lower(), (word, error["message"])
    return error


# ---------------------------------------------------------------------------------------------
# Operations endpoints
# ---------------------------------------------------------------------------------------------

def test_health_ready_metrics_docs(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["model"] == "test"
    client.get("/healthz")
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    for name in ("omniformer_requests_total", "omniformer_errors_total", "omniformer_request_duration_seconds_bucket",
                 "omniformer_batch_size_bucket", "omniformer_model_info", "omniformer_ready 1"):
        assert name in text, name
    assert 'omniformer_requests_total{endpoint="/healthz",status="200"}' in text
    # warm-up went through the batcher, so batches were already counted
    assert "omniformer_batch_size_count" in text
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    spec = client.get("/openapi.json").json()
    assert {"/v1/answer", "/v1/answer.json", "/healthz", "/readyz", "/metrics"} <= set(spec["paths"])
    schema = spec["paths"]["/v1/answer"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert schema["required"] == ["image"] and schema["properties"]["image"]["format"] == "binary"


def test_readyz_is_503_before_start(qa_checkpoint):
    app = create_app(qa_checkpoint)
    plain = TestClient(app)  # no `with`: the lifespan (load + warm-up) has not run
    check_error(plain.get("/readyz"), 503, "not_ready", "not ready")
    assert plain.get("/healthz").status_code == 200


def test_model_info_and_page(client):
    info = client.get("/v1/model").json()
    assert info["answers"] == ANSWERS and info["max_audio_seconds"] == 6.0
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset in ("/static/app.js", "/static/style.css", "/static/pcm-worklet.js"):
        response = client.get(asset)
        assert response.status_code == 200
        # Works offline: nothing is loaded from another host.
        assert "http://" not in response.text and "https://" not in response.text
    assert "http://" not in page.text and "https://" not in page.text
    check_error(client.get("/static/nothing.js"), 404, "not_found")
    check_error(client.get("/static/..%2Fapp.py"), 404, "not_found")


# ---------------------------------------------------------------------------------------------
# Answers
# ---------------------------------------------------------------------------------------------

def test_answer_text(client):
    response = ask(client, png_bytes(), "what color is the circle?")
    assert response.status_code == 200, response.text
    check_answer_shape(response.json())
    # top_k and other image formats
    response = ask(client, png_bytes(fmt="JPEG"), "what shape is it?", top_k=3, image_name="x.jpg",
                   image_type="image/jpeg")
    check_answer_shape(response.json(), top_k=3)
    for fmt in ("GIF", "BMP", "WEBP"):
        check_answer_shape(ask(client, png_bytes(fmt=fmt), "what shape is it?").json())


def test_answer_voice_and_both(client):
    check_answer_shape(ask(client, png_bytes(), audio=wav_bytes()).json(), asked_by="voice")
    check_answer_shape(ask(client, png_bytes(), "what color?", audio=wav_bytes(fmt="FLAC")).json(),
                       asked_by="text+voice")
    check_answer_shape(ask(client, png_bytes(), audio=wav_bytes(fmt="OGG")).json(), asked_by="voice")
    # The file's name and declared type are ignored: the bytes decide.
    check_answer_shape(ask(client, png_bytes(), audio=wav_bytes(), audio_name="q.mp3",
                           audio_type="application/octet-stream").json(), asked_by="voice")


def test_answer_deterministic_and_consistent_with_predictor(client, qa_checkpoint):
    from omniformer.tasks.qa import QAPredictor
    image = png_bytes(color=(40, 40, 200))
    served = ask(client, image, "what color is the circle?", top_k=3).json()["answers"]
    direct = QAPredictor.load(qa_checkpoint).ask(image, question="what color is the circle?", top_k=3)
    assert [a["answer"] for a in served] == [a for a, _ in direct]
    assert [a["probability"] for a in served] == pytest.approx([p for _, p in direct], abs=1e-4)


def test_answer_json(client):
    image = base64.b64encode(png_bytes()).decode()
    response = client.post("/v1/answer.json", json={"image": image, "question": "what color?", "top_k": 2})
    assert response.status_code == 200, response.text
    check_answer_shape(response.json(), top_k=2)
    audio = base64.b64encode(wav_bytes()).decode()
    response = client.post("/v1/answer.json", json={"image": "data:image/png;base64," + image, "audio": audio})
    check_answer_shape(response.json(), asked_by="voice")


# ---------------------------------------------------------------------------------------------
# Bad input: always a 4xx JSON error naming the field and what was expected
# ---------------------------------------------------------------------------------------------

def test_not_an_image(client):
    check_error(ask(client, b"hello, this is text", "what?"), 415, "unsupported_media_type",
                "image", "not an image", "PNG")


def test_pdf_named_png(client):
    pdf = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << >>\n%%EOF\n"
    error = check_error(ask(client, pdf, "what?", image_name="scene.png", image_type="image/png"), 415,
                        "unsupported_media_type", "image", "PDF")
    assert error["field"] == "image"


def test_truncated_png(client):
    data = png_bytes(64)
    check_error(ask(client, data[: len(data) // 2], "what?"), 400, "invalid_image", "image", "truncated")


def test_too_many_pixels(client):
    error = check_error(ask(client, bomb_png(), "what?"), 413, "image_too_large", "image", "pixels", "limit")
    assert error["field"] == "image"
    # Under Pillow's own bomb limit but over the server's: the size is named.
    check_error(ask(client, bomb_png(3000, 3000), "what?"), 413, "image_too_large", "3000x3000", "4000000")


def test_empty_audio(client):
    check_error(ask(client, png_bytes(), audio=b""), 400, "invalid_audio", "audio", "empty")
    check_error(ask(client, png_bytes(), audio=wav_bytes(0.0)), 400, "invalid_audio", "audio", "empty")


def test_audio_wrong_type_and_corrupt(client):
    check_error(ask(client, png_bytes(), audio=png_bytes(), audio_name="q.wav"), 415, "unsupported_media_type",
                "audio", "WAV")
    webm = b"\x1aE\xdf\xa3" + b"\x00" * 100  # what MediaRecorder makes: must be converted to WAV first
    check_error(ask(client, png_bytes(), audio=webm), 415, "unsupported_media_type", "audio", "WebM")
    check_error(ask(client, png_bytes(), audio=b"RIFF\x00\x00\x00\x00WAVEjunk"), 400, "invalid_audio", "audio")


def test_audio_too_long(client):
    error = check_error(ask(client, png_bytes(), audio=wav_bytes(10.0)), 413, "audio_too_long", "audio", "6 s")
    assert error["field"] == "audio"


def test_missing_image(client):
    error = check_error(ask(client, None, "what color?"), 422, "missing_field", "image", "PNG")
    assert error["field"] == "image"


def test_missing_question_and_audio(client):
    check_error(ask(client, png_bytes()), 422, "missing_field", "question", "audio")


@pytest.mark.parametrize("question", ["", "   "])
def test_empty_question(client, question):
    error = check_error(ask(client, png_bytes(), question), 422, "invalid_field", "question", "empty")
    assert error["field"] == "question"


def test_question_too_long(client):
    check_error(ask(client, png_bytes(), "why " * 400), 422, "invalid_field", "question", "at most")


@pytest.mark.parametrize("top_k", [0, -1, 13, 1000, "abc", "2.5"])
def test_top_k_out_of_range(client, top_k):
    check_error(ask(client, png_bytes(), "what?", top_k=top_k), 422, "invalid_field", "top_k", "from 1 to 12")


def test_too_large_body(client):
    big = b"\x89PNG\r\n\x1a\n" + b"\x00" * (2 * 1024 * 1024)
    check_error(ask(client, big, "what?"), 413, "payload_too_large", "limit")


def test_too_large_streamed_body_is_cut_off(client):
    """Without a Content-Length (a chunked upload) the body is counted as it arrives, and
    reading stops at the limit: driven at the ASGI level to see how much was pulled."""
    import asyncio
    app = client.app
    chunk, pulled, sent = b"\x00" * (64 * 1024), 0, []

    head = (b'--xyz\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
            b"Content-Type: image/png\r\n\r\n")

    async def receive():
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": head + chunk if pulled == 1 else chunk, "more_body": pulled < 1000}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/v1/answer", "raw_path": b"/v1/answer", "root_path": "",
             "query_string": b"", "server": ("testserver", 80), "client": ("127.0.0.1", 1),
             "headers": [(b"content-type", b"multipart/form-data; boundary=xyz"),
                         (b"transfer-encoding", b"chunked")]}
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 413
    assert json.loads(sent[1]["body"])["error"]["type"] == "payload_too_large"
    assert pulled * len(chunk) < 2 * 1024 * 1024  # the limit is ~1 MiB here: a 64 MB body was not read
    # Through the test client too (it buffers the body, but has no Content-Length either way).
    response = client.post("/v1/answer", content=(head + chunk if i == 0 else chunk for i in range(64)),
                           headers={"content-type": "multipart/form-data; boundary=xyz"})
    check_error(response, 413, "payload_too_large")


def test_single_file_over_upload_limit(qa_checkpoint):
    """A file over max_upload_bytes is refused even when the whole body is under the body cap."""
    app = create_app(qa_checkpoint, max_upload_bytes=2000)
    image = png_bytes(48)
    assert len(image) < 2000
    with TestClient(app) as c:
        check_error(ask(c, image, audio=wav_bytes(1.0)), 413, "payload_too_large", "audio", "2000 bytes")
        check_answer_shape(ask(c, image, "what?").json())


def test_wrong_body_types(client):
    check_error(client.post("/v1/answer", json={"image": "x"}), 415, "unsupported_media_type", "multipart")
    check_error(client.post("/v1/answer", data={"image": "not a file", "question": "q"},
                            files={"x": ("x", b"x")}), 422, "invalid_field", "image", "file")
    check_error(client.post("/v1/answer", content=b"--xyz\r\ngarbage",
                            headers={"content-type": "multipart/form-data; boundary=xyz"}), 422, "missing_field")


def test_json_errors(client):
    image = base64.b64encode(png_bytes()).decode()
    check_error(client.post("/v1/answer.json", content=b"{not json", headers={"content-type": "application/json"}),
                400, "invalid_body", "JSON")
    check_error(client.post("/v1/answer.json", json=[1, 2]), 422, "invalid_body", "object")
    check_error(client.post("/v1/answer.json", json={"question": "what?"}), 422, "missing_field", "image")
    check_error(client.post("/v1/answer.json", json={"image": "***", "question": "what?"}), 422, "invalid_field",
                "image", "base64")
    check_error(client.post("/v1/answer.json", json={"image": image, "questoin": "what?"}), 422, "invalid_field",
                "questoin", "unknown field")
    check_error(client.post("/v1/answer.json", json={"image": image, "question": "what?", "top_k": "5"}), 422,
                "invalid_field", "top_k")
    check_error(client.post("/v1/answer.json", json={"image": image, "question": 5}), 422, "invalid_field",
                "question")
    check_error(client.post("/v1/answer.json", json={"image": image}), 422, "missing_field", "question")
    check_error(client.post("/v1/answer.json", content=b"x", headers={"content-type": "text/plain"}), 415,
                "unsupported_media_type", "json")


def test_a_text_field_over_64kb_is_named(client):
    """It was a 400 that named no field."""
    error = check_error(ask(client, png_bytes(), "why " * 20_000), 413, "field_too_large", "question", "65536 bytes")
    assert error["field"] == "question"


def test_json_nested_deeply_is_a_400(client):
    """100,000 levels of nesting was a 500 (RecursionError); 33 levels is refused by the same rule."""
    for depth in (100_000, 33):
        body = b'{"image": ' + b"[" * depth + b"]" * depth + b', "question": "what?"}'
        check_error(client.post("/v1/answer.json", content=body, headers={"content-type": "application/json"}),
                    400, "invalid_body", "nested too deeply")
    body = b'{"image": ' + b"[" * 5 + b"]" * 5 + b', "question": "what?"}'  # shallow: the field's own error
    check_error(client.post("/v1/answer.json", content=body, headers={"content-type": "application/json"}),
                422, "invalid_field", "image")


def test_limits_no_request_could_meet_are_refused_before_loading(qa_checkpoint):
    for limit in ({"max_upload_bytes": -1}, {"max_batch": 0}, {"max_wait_ms": float("nan")},
                  {"max_audio_seconds": 0}, {"max_streams": -1}):
        name = next(iter(limit))
        with pytest.raises(ValueError, match=name):
            create_app(qa_checkpoint, **limit)


def test_an_audio_limit_under_a_second_still_starts(qa_checkpoint):
    """The warm-up sent 1 s of audio, so a server limited to 0.5 s failed to start."""
    app = create_app(qa_checkpoint, max_audio_seconds=0.5)
    with TestClient(app) as c:
        assert c.get("/readyz").status_code == 200
        check_answer_shape(ask(c, png_bytes(), audio=wav_bytes(0.4)).json(), asked_by="voice")
        check_error(ask(c, png_bytes(), audio=wav_bytes(1.0)), 413, "audio_too_long", "audio", "0.5 s")


def test_unknown_routes_and_methods(client):
    check_error(client.get("/nope"), 404, "not_found", "/nope")
    check_error(client.get("/v1/answer"), 405, "method_not_allowed")


def test_errors_are_counted_and_worker_survives(client):
    before = client.get("/metrics").text
    ask(client, b"junk", "what?")
    ask(client, png_bytes()[:40], "what?")
    after = client.get("/metrics").text
    assert 'omniformer_errors_total{type="unsupported_media_type"}' in after
    assert 'omniformer_requests_total{endpoint="/v1/answer",status="415"}' in after
    assert before != after
    check_answer_shape(ask(client, png_bytes(), "still there?").json())
    assert client.get("/readyz").status_code == 200


# ---------------------------------------------------------------------------------------------
# Examples: served by index from a list loaded at start-up
# ---------------------------------------------------------------------------------------------

def test_examples(client):
    examples = client.get("/v1/examples").json()["examples"]
    assert len(examples) == 4 and all(e["question"] and e["has_audio"] for e in examples)
    assert "train0" not in {e["id"] for e in examples}  # test split only
    image = client.get("/v1/examples/0/image")
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert sniff_image(image.content) == "PNG"
    audio = client.get("/v1/examples/1/audio")
    assert audio.status_code == 200 and sniff_audio(audio.content) == "WAV"
    check_error(client.get("/v1/examples/4/image"), 404, "not_found", "example 4")
    check_error(client.get("/v1/examples/-1/image"), 404, "not_found")
    assert client.get("/v1/examples/..%2F..%2Fetc%2Fpasswd/image").status_code in (404, 422)
    assert client.get("/v1/examples/img0.png/image").status_code == 422


def test_examples_absent_without_manifest(qa_checkpoint):
    with TestClient(create_app(qa_checkpoint)) as c:
        assert c.get("/v1/examples").json() == {"examples": []}
        check_error(c.get("/v1/examples/0/image"), 404, "not_found")


# ---------------------------------------------------------------------------------------------
# Micro-batching
# ---------------------------------------------------------------------------------------------

def test_concurrent_requests_are_batched(qa_checkpoint):
    app = create_app(qa_checkpoint, max_batch=16, max_wait_ms=50)
    results, errors = [], []
    with TestClient(app) as c:
        start = threading.Barrier(24)

        def one(i):
            try:
                start.wait()
                response = ask(c, png_bytes(color=(i * 10 % 255, 40, 40)), QUESTIONS[i % len(QUESTIONS)],
                               audio=wav_bytes(0.5) if i % 3 == 0 else None)
                results.append((i, response))
            except Exception as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        metrics = app.state.metrics
        text = c.get("/metrics").text
    assert not errors and len(results) == 24
    for i, response in results:
        assert response.status_code == 200, response.text
        check_answer_shape(response.json(), asked_by="text+voice" if i % 3 == 0 else "text")
    sizes = metrics.batch_size.snapshot()
    total = metrics.batch_size.count()
    assert total - sizes[1] > 0, f"no batch had more than one question: {sizes}"
    assert total < 24 + 2  # fewer model calls than questions (+2 warm-up calls)
    assert 'omniformer_batch_size_bucket{le="1"}' in text


def test_single_request_does_not_wait(qa_checkpoint):
    """A lone question runs at once: max_wait_ms only applies while more are being decoded."""
    app = create_app(qa_checkpoint, max_wait_ms=2000)
    with TestClient(app) as c:
        ask(c, png_bytes(), "what?")
        start = time.perf_counter()
        response = ask(c, png_bytes(), "what color?")
        elapsed = time.perf_counter() - start
    assert response.status_code == 200
    assert elapsed < 1.0, f"a single request took {elapsed:.2f} s with max_wait_ms=2000"


def test_batcher_isolates_a_failing_item():
    import asyncio

    def fn(items, top_k):
        if "bad" in items:
            raise ValueError("bad item")
        return [[(x, 1.0)] * top_k for x in items]

    async def main():
        batcher = MicroBatcher(fn, max_batch=8, max_wait_ms=20)
        await batcher.start()
        try:
            with batcher.reserve(), batcher.reserve():
                pass
            tasks = [asyncio.create_task(batcher.submit(x, 2)) for x in ["a", "bad", "c"]]
            results = await asyncio.gather(*tasks, return_exceptions=True)
            again = await batcher.submit("d", 1)  # the worker is still alive
        finally:
            await batcher.stop()
        return results, again

    results, again = asyncio.run(main())
    assert results[0] == [("a", 1.0)] * 2 and results[2] == [("c", 1.0)] * 2
    assert isinstance(results[1], ValueError)
    assert again == [("d", 1.0)]


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------

def test_cli_has_serve(qa_checkpoint):
    from omniformer.cli import build_parser
    args = build_parser().parse_args(["serve", "--model", str(qa_checkpoint), "--port", "9001", "--max-batch", "8",
                                      "--max-wait-ms", "2"])
    assert args.command == "serve" and args.port == 9001 and args.max_batch == 8 and args.max_wait_ms == 2
    assert args.host == "127.0.0.1"


@pytest.mark.parametrize("extra, says", [(["--max-streams", "-1"], "--max-streams"),
                                         (["--max-stream-seconds", "0"], "--max-stream-seconds"),
                                         (["--transcriber", "nowhere"], "task.transcriber"),
                                         (["--port", "70000"], "--port: expected 0 (any free port) to 65535"),
                                         (["--max-upload-mb", "-1"], "--max-upload-mb"),
                                         (["--max-wait-ms", "nan"], "--max-wait-ms"),
                                         (["--max-audio-seconds", "0"], "--max-audio-seconds"),
                                         (["--host", " "], "--host")])
def test_cli_serve_refuses_bad_stream_and_transcriber_options(qa_checkpoint, extra, says):
    """Refused before the server starts, with the option named and no traceback."""
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "omniformer.cli", "serve", "--model", str(qa_checkpoint),
                          "--port", "1", *extra], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and says in out.stderr and "Traceback" not in out.stderr, out.stderr


# ---------------------------------------------------------------------------------------------
# A trained model answers known ShapesWorld questions correctly
# ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_trained_model_answers_shapesworld(trained_qa):
    from omniformer.data.manifest import read_manifest
    model_dir, manifest = trained_qa
    samples = [s for s in read_manifest(manifest)
               if s.get("split") == "test" and s.get("image") and s.get("question") and s.get("answer")][:30]
    assert len(samples) == 30
    app = create_app(model_dir, examples_manifest=manifest)
    correct = 0
    with TestClient(app) as c:
        for s in samples:
            image = (Path(manifest).parent / s["image"]).read_bytes()
            response = ask(c, image, s["question"], top_k=3)
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["asked_by"] == "text" and len(body["answers"]) == 3
            correct += body["answers"][0]["answer"] == s["answer"]
        assert c.get("/v1/examples").json()["examples"]
    assert correct >= 18, f"{correct}/30 correct"  # counting questions; chance is about 8/30
