"""The text-writing tasks' server (translate, caption): ``POST /v1/generate`` and its ``.json``
twin, micro-batched or streamed as Server-Sent Events.

Both models are tiny and trained here for a second or two (a 36-sentence toy translation, six
captioned shapes), so that what they write depends on their input: a response equal to
``Translator.translate``/``Captioner.caption`` means the same input reached the same decoding.
The stream tests run a real uvicorn server in a thread (a dropped connection must be a real one).
"""
from __future__ import annotations

import base64
import dataclasses
import http.client
import io
import json
import socket
import threading
import time
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from omniformer.serve.app import create_app  # noqa: E402
from test_serve import bomb_png, check_error, png_bytes, wav_bytes  # noqa: E402  (tests/serve, on the path)

ROOT = Path(__file__).resolve().parents[2]
COLOURS = {"roter": "red", "blauer": "blue", "grüner": "green"}
NOUNS = {"hund": "dog", "katze": "cat", "mann": "man", "vogel": "bird"}
VERBS = {"läuft": "runs", "schläft": "sleeps", "singt": "sings"}
PAIRS = [(f"ein {c} {n} {v}", f"a {COLOURS[c]} {NOUNS[n]} {VERBS[v]}") for c in COLOURS for n in NOUNS for v in VERBS]
RGB = {"red": (220, 30, 30), "green": (30, 180, 30), "blue": (30, 30, 220)}
SHAPES = [(colour, shape) for colour in RGB for shape in ("circle", "square")]
TINY = {"width": 32, "heads": 2, "depth": 1, "tower_depth": 0, "dropout": 0.0}
MAX_NEW = 15  # the tiny decoders' max_new_tokens (max_target_len 16)


# ---------------------------------------------------------------------------------------------
# Tiny models, trained here
# ---------------------------------------------------------------------------------------------

def _fit(model, batch: dict, steps: int) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the machine is shared: one core
    try:
        torch.manual_seed(0)
        optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
        model.train()
        for _ in range(steps):
            loss = model(batch)["loss"]
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        model.eval()
    finally:
        torch.set_num_threads(threads)


def build_translator(out: Path, model_id: str = "test-translate", steps: int = 150) -> Path:
    """A translate checkpoint (width 32, 12 source positions, beams 2 by default) that has
    learnt the toy sentences: ``ein roter hund läuft`` -> ``a red dog runs``."""
    from omniformer.config import from_dict, load_config
    from omniformer.data.text import Tokenizer
    from omniformer.tasks.seq2seq.config import TranslateConfig
    from omniformer.tasks.seq2seq.model import Seq2SeqModel
    from omniformer.train.checkpoint import save_checkpoint
    cfg = load_config(ROOT / "configs" / "translate.yaml", overrides={
        "model": {**TINY, "modalities": ["text"], "text": {"max_len": 12}},
        "task": {"decoder_depth": 1, "max_target_len": MAX_NEW + 1, "max_new_tokens": MAX_NEW, "num_beams": 2},
        "data": {"manifest": str(out.parent / "m.jsonl"), "vocab_size": 80}})
    tokenizer = Tokenizer.train([s for pair in PAIRS for s in pair], 80)
    cfg.model.vocab_size = tokenizer.vocab_size
    torch.manual_seed(0)
    model = Seq2SeqModel(cfg.model, from_dict(TranslateConfig, cfg.task, "task"), tokenizer.pad_id)
    source, source_mask = tokenizer.encode_batch([s for s, _ in PAIRS], 12)
    target, target_mask = tokenizer.encode_batch([t for _, t in PAIRS], MAX_NEW + 1)
    _fit(model, {"text": source, "text_mask": source_mask, "target": target, "target_mask": target_mask}, steps)
    meta = {"task": "translate", "config": dataclasses.asdict(cfg), "model_id": model_id}
    return save_checkpoint(out, model, meta, tokenizer)


def shape_png(colour: str, shape: str, size: int = 32) -> bytes:
    im = Image.new("RGB", (size, size), (255, 255, 255))
    box = (size // 5, size // 5, 4 * size // 5, 4 * size // 5)
    (ImageDraw.Draw(im).ellipse if shape == "circle" else ImageDraw.Draw(im).rectangle)(box, fill=RGB[colour])
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def build_captioner(out: Path, model_id: str = "test-caption", steps: int = 120) -> Path:
    """A caption checkpoint reading a 16x16 image (``task.inputs: [image]``) that has learnt to
    say ``a red circle``, ``a blue square``... of the six shapes."""
    from omniformer.config import from_dict, load_config
    from omniformer.data.batching import collate
    from omniformer.data.text import Tokenizer
    from omniformer.registry import get_modality
    from omniformer.tasks.caption.config import CaptionConfig
    from omniformer.tasks.seq2seq.model import Seq2SeqModel
    from omniformer.train.checkpoint import save_checkpoint
    cfg = load_config(ROOT / "configs" / "caption-shapes.yaml", overrides={
        "model": {**TINY, "modalities": ["image"], "image": {"size": 16, "patch_size": 4, "stem": "conv"}},
        "task": {"inputs": ["image"], "decoder_depth": 1, "max_target_len": MAX_NEW + 1, "max_new_tokens": MAX_NEW,
                 "num_beams": 2},
        "data": {"manifest": str(out.parent / "m.jsonl"), "dataset": "", "vocab_size": 60}})
    captions = [f"a {colour} {shape}" for colour, shape in SHAPES]
    tokenizer = Tokenizer.train(captions * 3 + ["there are three objects"], 60)
    cfg.model.vocab_size = tokenizer.vocab_size
    torch.manual_seed(0)
    model = Seq2SeqModel(cfg.model, from_dict(CaptionConfig, cfg.task, "task"), tokenizer.pad_id)
    image = get_modality("image").preprocessor(cfg.model)
    batch = collate([{"index": i, "image": image(Image.open(io.BytesIO(shape_png(c, s))))}
                     for i, (c, s) in enumerate(SHAPES)])
    batch["target"], batch["target_mask"] = tokenizer.encode_batch(captions, MAX_NEW + 1)
    _fit(model, batch, steps)
    meta = {"task": "caption", "config": dataclasses.asdict(cfg), "model_id": model_id}
    return save_checkpoint(out, model, meta, tokenizer)


@pytest.fixture(scope="module")
def translator_dir(tmp_path_factory) -> Path:
    return build_translator(tmp_path_factory.mktemp("gen") / "translate")


@pytest.fixture(scope="module")
def captioner_dir(tmp_path_factory) -> Path:
    return build_captioner(tmp_path_factory.mktemp("gen") / "caption")


@pytest.fixture(scope="module")
def translator(translator_dir):
    from omniformer.tasks.seq2seq import Translator
    return Translator.load(translator_dir)


@pytest.fixture(scope="module")
def captioner(captioner_dir):
    from omniformer.tasks.caption import Captioner
    return Captioner.load(captioner_dir)


@pytest.fixture(scope="module")
def tr_client(translator_dir):
    with TestClient(create_app(translator_dir, max_wait_ms=0.0, max_upload_bytes=64 * 1024)) as c:
        yield c


@pytest.fixture(scope="module")
def cap_client(captioner_dir):
    with TestClient(create_app(captioner_dir, max_wait_ms=0.0, max_upload_bytes=64 * 1024,
                               max_pixels=512 * 512)) as c:
        yield c


def translate(client, text=None, json_body: bool = False, **options):
    if json_body:
        return client.post("/v1/generate.json", json={**({"text": text} if text is not None else {}), **options})
    data = {k: (json.dumps(v) if isinstance(v, bool) else str(v)) for k, v in options.items()}
    if text is not None:
        data["text"] = text
    return client.post("/v1/generate", data=data, files={"unrelated": ("x.txt", b"x", "text/plain")})


def caption(client, image=None, json_body: bool = False, **options):
    if json_body:
        body = {**({"image": base64.b64encode(image).decode()} if image is not None else {}), **options}
        return client.post("/v1/generate.json", json=body)
    data = {k: (json.dumps(v) if isinstance(v, bool) else str(v)) for k, v in options.items()}
    files = {"image": ("shape.png", image, "image/png")} if image is not None else {
        "unrelated": ("x.txt", b"x", "text/plain")}
    return client.post("/v1/generate", data=data, files=files)


def events(raw: str) -> list[tuple[str, dict]]:
    """(event, data) of each Server-Sent Event in a whole response body."""
    out = []
    for block in raw.split("\n\n"):
        if not block.strip():
            continue
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        out.append((fields["event"], json.loads(fields["data"])))
    return out


# ---------------------------------------------------------------------------------------------
# Answers equal the Python API's
# ---------------------------------------------------------------------------------------------

def test_model_info_says_task_inputs_and_decoding(tr_client, cap_client):
    info = tr_client.get("/v1/model").json()
    assert info["task"] == "translate" and info["inputs"] == ["text"] and info["model"] == "test-translate"
    assert info["decoding"]["num_beams"] == 2 and info["decoding"]["max_new_tokens"] == MAX_NEW
    assert info["max_new_tokens"] == MAX_NEW and info["max_source_tokens"] == 12
    assert info["stream"]["max_streams"] == 8 and info["stream"]["num_beams"] == 1
    info = cap_client.get("/v1/model").json()
    assert info["task"] == "caption" and info["inputs"] == ["image"] and info["image_size"] == 16
    assert tr_client.get("/readyz").json()["task"] == "translate"  # warmed up


OPTIONS = [{}, {"num_beams": 1}, {"num_beams": 3, "length_penalty": 0.5},
           {"do_sample": True, "temperature": 1.5, "top_k": 20, "top_p": 0.9, "seed": 7},
           {"num_beams": 1, "repetition_penalty": 1.8, "no_repeat_ngram_size": 2, "min_new_tokens": 6,
            "max_new_tokens": 9}]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(o) or "recipe")
@pytest.mark.parametrize("json_body", [False, True], ids=["multipart", "json"])
def test_translation_equals_the_translators(tr_client, translator, options, json_body):
    for source, _ in PAIRS[::7]:
        r = translate(tr_client, source, json_body, **options)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["text"] == translator.translate(source, **options)
        assert body["source"] == source and body["truncated"] is False and body["model"] == "test-translate"
        assert body["decoding"] == dataclasses.asdict(translator.generation_config(**options))
        assert body["time_ms"] >= 0
    assert translate(tr_client, "ein blauer vogel singt", num_beams=1).json()["text"] == "a blue bird sings"


@pytest.mark.parametrize("options", OPTIONS[:4], ids=lambda o: ",".join(o) or "recipe")
@pytest.mark.parametrize("json_body", [False, True], ids=["multipart", "json"])
def test_caption_equals_the_captioners(cap_client, captioner, options, json_body):
    for colour, shape in SHAPES:
        image = shape_png(colour, shape)
        r = caption(cap_client, image, json_body, **options)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["text"] == captioner.caption(image, **options) and body["inputs"] == ["image"]
    assert caption(cap_client, shape_png("green", "square"), num_beams=1).json()["text"] == "a green square"


def test_a_long_source_is_cut_and_says_so(tr_client, translator):
    source = " ".join(s for s, _ in PAIRS[:4])  # 16 words: past the 12 text positions
    body = translate(tr_client, source).json()
    assert body["truncated"] is True and body["source"] == source
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert body["text"] == translator.translate(source)
    assert any("text positions" in str(w.message) for w in caught)
    assert translate(tr_client, PAIRS[0][0]).json()["truncated"] is False


def test_a_batch_is_grouped_by_options_and_a_seeded_sampler_decodes_alone(tr_client, translator):
    """The batch function decodes each group of equal options in one call; every answer is
    the one its request would get alone."""
    service = tr_client.app.state.service
    greedy, beams = translator.generation_config(num_beams=1), translator.generation_config(num_beams=3)
    seeded = translator.generation_config(do_sample=True, seed=1, temperature=2.0)
    configs = [greedy, beams, greedy, seeded, beams, seeded, greedy]
    items = [{**service._prepare({"text": PAIRS[i][0]}), "config": c} for i, c in enumerate(configs)]
    calls = []
    decode = translator.decode
    try:
        service.predictor.decode = lambda batch, config: calls.append((len(batch["text"]), config)) or decode(batch, config)
        texts = service._batch(items, 1)
    finally:
        del service.predictor.decode
    assert sorted((n, c.num_beams, c.do_sample) for n, c in calls) == [(1, 1, True), (1, 1, True), (2, 3, False),
                                                                       (3, 1, False)]
    assert texts == [translator.translate(PAIRS[i][0], **{k: v for k, v in dataclasses.asdict(c).items()})
                     for i, c in enumerate(configs)]


def test_concurrent_requests_with_mixed_options(translator_dir, translator):
    app = create_app(translator_dir, max_wait_ms=20.0, max_batch=8)
    with TestClient(app) as client:
        jobs = [(PAIRS[i][0], {"num_beams": 1 + i % 2}) for i in range(8)]
        results: dict[int, dict] = {}

        def one(i):
            results[i] = translate(client, jobs[i][0], **jobs[i][1]).json()

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(jobs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert [results[i]["text"] for i in range(len(jobs))] == [translator.translate(s, **o) for s, o in jobs]


# ---------------------------------------------------------------------------------------------
# Streams: the same text, token by token
# ---------------------------------------------------------------------------------------------

def check_stream(r, expected: str) -> dict:
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    got = events(r.text)
    kinds = [k for k, _ in got]
    assert kinds[-1] == "done" and set(kinds[:-1]) == {"token"} and len(kinds) > 2, kinds
    text = ""
    for n, (_, data) in enumerate(got[:-1], 1):
        assert data["tokens"] == n and data["text"] == text + data["delta"]  # the text so far, and what is new
        text = data["text"]
    done = got[-1][1]
    assert done["text"] == text == expected and done["tokens"] == len(got) - 1 and done["stopped"] is True
    assert done["decoding"]["num_beams"] == 1 and done["time_ms"] >= 0
    return done


@pytest.mark.parametrize("json_body", [False, True], ids=["multipart", "json"])
def test_a_stream_ends_in_the_greedy_text(tr_client, cap_client, translator, captioner, json_body):
    for source, target in PAIRS[::9]:
        greedy = translate(tr_client, source, num_beams=1).json()["text"]
        assert greedy == target
        # No num_beams asked: the recipe's 2 beams give way to 1 for the stream.
        done = check_stream(translate(tr_client, source, json_body, stream=True), greedy)
        assert done["source"] == source and done["truncated"] is False
    for colour, shape in SHAPES[:3]:
        image = shape_png(colour, shape)
        greedy = captioner.caption(image, num_beams=1)
        assert greedy == f"a {colour} {shape}"
        check_stream(caption(cap_client, image, json_body, stream=True, num_beams=1), greedy)
    # A seeded sampler streams what it writes whole.
    sampled = translator.translate("ein roter mann singt", do_sample=True, temperature=3.0, seed=5)
    assert events(translate(tr_client, "ein roter mann singt", stream=True, do_sample=True, temperature=3.0,
                            seed=5).text)[-1][1]["text"] == sampled


def test_a_stream_cannot_search_beams(tr_client):
    r = translate(tr_client, "ein hund", stream=True, num_beams=2)
    check_error(r, 422, "invalid_field", "streaming needs num_beams=1")
    assert r.json()["error"]["field"] == "num_beams"
    assert translate(tr_client, "ein hund", stream="false", num_beams=2).status_code == 200


# ---------------------------------------------------------------------------------------------
# Bad options and fields: a 4xx naming them, never a 5xx
# ---------------------------------------------------------------------------------------------

BAD_OPTIONS = [
    ({"top_p": 0}, "top_p", "in (0, 1]"), ({"top_p": 1.5}, "top_p", "in (0, 1]"),
    ({"temperature": 0, "do_sample": True}, "temperature", "greater than 0"),
    ({"temperature": -1}, "temperature", "greater than 0"),
    ({"num_beams": 1000}, "num_beams", "wider than the vocabulary"), ({"num_beams": 0}, "num_beams", "from 1"),
    ({"num_beams": 17}, "num_beams", "at most the vocabulary"),
    ({"max_new_tokens": MAX_NEW + 1}, "max_new_tokens", "decoder's positions"),
    ({"max_new_tokens": 0}, "max_new_tokens", "from 1"),
    ({"min_new_tokens": 5, "max_new_tokens": 3}, "min_new_tokens", "max_new_tokens"),
    ({"num_beams": 2, "do_sample": True}, "num_beams", "not both"),
    ({"top_k": -1}, "top_k", "0 to"), ({"repetition_penalty": 0}, "repetition_penalty", "from 0.01"),
    ({"no_repeat_ngram_size": -2}, "no_repeat_ngram_size", "0 to"), ({"seed": -1}, "seed", "from 0"),
    ({"length_penalty": 1e6}, "length_penalty", "-10 to 10"),
    ({"stream": "maybe"}, "stream", "true or false"), ({"do_sample": "often"}, "do_sample", "true or false"),
]
NOT_NUMBERS = [({"num_beams": "two"}, "num_beams", "whole number"), ({"top_p": "nan"}, "top_p", "got"),
               ({"temperature": "hot"}, "temperature", "number"), ({"seed": "1.5"}, "seed", "whole number"),
               ({"max_new_tokens": "1e3"}, "max_new_tokens", "whole number"), ({"top_k": ""}, "top_k", "whole number")]
JSON_TYPES = [({"num_beams": "2"}, "num_beams", "whole number"), ({"num_beams": 2.5}, "num_beams", "whole number"),
              ({"do_sample": "true"}, "do_sample", "true or false"), ({"top_p": True}, "top_p", "number"),
              ({"stream": 1}, "stream", "true or false"), ({"seed": None}, "seed", "null"),
              ({"temperature": [1]}, "temperature", "number"), ({"beams": 2}, "beams", "unknown field")]


@pytest.mark.parametrize("options, field, says", BAD_OPTIONS + NOT_NUMBERS, ids=lambda x: str(x)[:40])
def test_bad_options_are_named_multipart(tr_client, cap_client, options, field, says):
    for r in (translate(tr_client, "ein hund", **options), caption(cap_client, shape_png("red", "circle"), **options)):
        error = check_error(r, 422, "invalid_field", says)
        assert error["field"] == field and error["message"].startswith(field), error


@pytest.mark.parametrize("options, field, says", BAD_OPTIONS + JSON_TYPES, ids=lambda x: str(x)[:40])
def test_bad_options_are_named_json(tr_client, options, field, says):
    error = check_error(translate(tr_client, "ein hund", json_body=True, **options), 422, "invalid_field", says)
    assert error["field"] == field, error


def raw_form(*parts: tuple[str, bytes]) -> tuple[bytes, dict]:
    body = b"".join(b"--B\r\nContent-Disposition: form-data; name=\"" + name.encode() + b"\"\r\n\r\n" + value + b"\r\n"
                    for name, value in parts) + b"--B--\r\n"
    return body, {"content-type": "multipart/form-data; boundary=B"}


def test_bad_text_is_named(tr_client):
    check_error(translate(tr_client, None), 422, "missing_field", "text: missing")
    for text, says in (("", "empty"), ("  \n", "empty"), ("x" * 2001, "at most 2000")):
        for json_body in (False, True):
            error = check_error(translate(tr_client, text, json_body), 422, "invalid_field", says)
            assert error["field"] == "text"
    check_error(translate(tr_client, "x" * 70_000), 413, "field_too_large", "text:", "65536 bytes")
    body, headers = raw_form(("text", "caf\xe9 au lait".encode("latin-1")))
    error = check_error(tr_client.post("/v1/generate", content=body, headers=headers), 422, "invalid_field",
                        "not UTF-8", "0xE9")
    assert error["field"] == "text"
    body, headers = raw_form(("text", "ein grüner hund".encode()))  # the same letters in UTF-8 are fine
    assert tr_client.post("/v1/generate", content=body, headers=headers).json()["source"] == "ein grüner hund"
    r = tr_client.post("/v1/generate.json", content=b'{"text": "ein \\ud800 hund"}',
                       headers={"content-type": "application/json"})
    check_error(r, 422, "invalid_field", "text:", "surrogate")
    check_error(tr_client.post("/v1/generate.json", content=b'{"text": "a\xff"}',
                               headers={"content-type": "application/json"}), 400, "invalid_body", "not valid JSON")
    check_error(translate(tr_client, 5, json_body=True), 422, "invalid_field", "text: expected text")
    r = tr_client.post("/v1/generate", data={"text": "ein hund"}, files={"image": ("a.png", png_bytes(), "image/png")})
    check_error(r, 422, "invalid_field", "image: this model translates text")
    check_error(tr_client.post("/v1/generate", json={"text": "a"}), 415, "unsupported_media_type",
                "multipart/form-data with text", "/v1/generate.json")
    r = tr_client.post("/v1/generate", data={"text": "ein hund"}, files={"text": ("t.txt", b"ein hund", "text/plain")})
    check_error(r, 422, "invalid_field", "text: expected text, got a file")


def test_bad_images_are_named(cap_client):
    check_error(caption(cap_client, None), 422, "missing_field", "image: missing")
    check_error(caption(cap_client, None, json_body=True), 422, "missing_field", "image: missing")
    check_error(caption(cap_client, b"%PDF-1.4 not an image"), 415, "unsupported_media_type", "PDF", "not an image")
    check_error(caption(cap_client, png_bytes()[:60]), 400, "invalid_image", "image:")
    check_error(caption(cap_client, bomb_png(4000, 4000)), 413, "image_too_large", "image:")
    check_error(caption(cap_client, b""), 400, "invalid_image", "empty")
    check_error(caption(cap_client, b"\x89PNG" + b"0" * 70_000), 413, "payload_too_large", "image:")
    r = cap_client.post("/v1/generate.json", json={"image": "not base64!"})
    check_error(r, 422, "invalid_field", "image: not valid base64")
    r = cap_client.post("/v1/generate.json", json={"image": 5})
    check_error(r, 422, "invalid_field", "image: expected the file base64-encoded")
    r = cap_client.post("/v1/generate", data={"text": "a red circle"}, files={"image": ("s.png", png_bytes(), "image/png")})
    check_error(r, 422, "invalid_field", "text: this model captions image; it reads no text")
    r = cap_client.post("/v1/generate", files={"image": ("s.png", png_bytes(), "image/png"),
                                               "audio": ("a.wav", wav_bytes(0.5), "audio/wav")})
    check_error(r, 422, "invalid_field", "audio: this model captions image, not audio")
    check_error(cap_client.post("/v1/generate.json", json={"image": base64.b64encode(png_bytes()).decode(),
                                                           "text": "x"}), 422, "invalid_field", "text: unknown field")
    # A data: URL is taken, as the page's FileReader gives it.
    data_url = "data:image/png;base64," + base64.b64encode(shape_png("blue", "circle")).decode()
    assert cap_client.post("/v1/generate.json", json={"image": data_url, "num_beams": 1}).json()["text"] == "a blue circle"


def test_errors_were_counted_and_no_server_error(tr_client):
    metrics = tr_client.get("/metrics").text
    assert 'omniformer_errors_total{type="invalid_field"}' in metrics
    assert 'status="5' not in metrics, [line for line in metrics.splitlines() if 'status="5' in line]


# ---------------------------------------------------------------------------------------------
# Live streams on a real server: bounded, and stopped when the client goes away
# ---------------------------------------------------------------------------------------------

class ServerThread:
    """uvicorn on 127.0.0.1 and a free port, in a thread of this process."""

    def __init__(self, app):
        import uvicorn
        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()


@pytest.fixture
def slow_steps(monkeypatch):
    """The service's ``stream()`` at 40 ms a token, counting the steps made and whether the
    generator was closed."""
    from omniformer.tasks.seq2seq import serve
    real, seen = serve.stream, {"steps": 0, "closed": 0, "threads": set()}

    def slow(*args, **kwargs):
        try:
            for step in real(*args, **kwargs):
                seen["steps"] += 1
                seen["threads"].add(threading.current_thread().name)
                time.sleep(0.04)
                yield step
        finally:
            seen["closed"] += 1
    monkeypatch.setattr(serve, "stream", slow)
    return seen


def open_stream(server, text: str = "ein roter hund läuft", **fields) -> tuple[http.client.HTTPConnection, object]:
    """A streaming request on its own connection; (connection, response) once the headers came."""
    fields = {"text": text, "stream": "true", **{k: str(v) for k, v in fields.items()}}
    body, headers = raw_form(*((k, v.encode()) for k, v in fields.items()))
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("POST", "/v1/generate", body=body, headers=headers)
    return conn, conn.getresponse()


def post_form(server, **fields):
    import httpx
    body, headers = raw_form(*((k, v.encode()) for k, v in fields.items()))
    return httpx.post(server.url + "/v1/generate", content=body, headers=headers, timeout=30)


def read_event(response) -> tuple[str, dict]:
    lines = []
    while True:
        line = response.readline().decode()
        if line in ("\n", ""):
            break
        lines.append(line.rstrip("\n"))
    fields = dict(line.split(": ", 1) for line in lines)
    return fields["event"], json.loads(fields["data"])


def wait_until(condition, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def test_a_dropped_stream_stops_its_generation(translator_dir, translator, slow_steps):
    app = create_app(translator_dir, max_wait_ms=0.0)
    service = app.state.service
    with ServerThread(app) as server:
        # Forced to its full 15 tokens (600 ms at this pace), then dropped after the second.
        conn, response = open_stream(server, min_new_tokens=MAX_NEW)
        assert response.status == 200 and response.getheader("content-type").startswith("text/event-stream")
        assert read_event(response)[0] == "token" and read_event(response)[0] == "token"
        assert service.streams == 1
        conn.sock.shutdown(socket.SHUT_RDWR)
        conn.close()
        assert wait_until(lambda: service.streams == 0, 5.0), "the stream's thread kept decoding"
        assert slow_steps["closed"] == 1 and slow_steps["steps"] < MAX_NEW, slow_steps
        steps = slow_steps["steps"]
        time.sleep(0.3)
        assert slow_steps["steps"] == steps  # nothing decodes on
        assert slow_steps["threads"] and all(n.startswith("omniformer-stream") for n in slow_steps["threads"])
        # The server still answers, whole and streamed.
        r = post_form(server, text=PAIRS[0][0], num_beams="1")
        assert r.status_code == 200 and r.json()["text"] == PAIRS[0][1]
        conn, response = open_stream(server, PAIRS[0][0])
        got = [read_event(response)]
        while got[-1][0] == "token":
            got.append(read_event(response))
        assert got[-1][0] == "done" and got[-1][1]["text"] == PAIRS[0][1]
        conn.close()
        import httpx
        assert 'omniformer_streams 0' in httpx.get(server.url + "/metrics").text


def test_max_streams_is_enforced(translator_dir, slow_steps):
    app = create_app(translator_dir, max_wait_ms=0.0, max_streams=1)
    service = app.state.service
    with ServerThread(app) as server:
        first, response = open_stream(server, min_new_tokens=MAX_NEW)
        assert read_event(response)[0] == "token"
        r = post_form(server, text="ein hund", stream="true")
        check_error(r, 503, "overloaded", "all 1 generation streams are in use")
        assert r.headers["retry-after"] == "1"
        # A whole answer does not wait for the stream.
        assert post_form(server, text="ein hund").status_code == 200
        kinds = [read_event(response)[0] for _ in range(MAX_NEW)]
        assert kinds == ["token"] * (MAX_NEW - 1) + ["done"]
        first.close()
        assert wait_until(lambda: service.streams == 0)
        r = post_form(server, text="ein hund", stream="true")
        assert r.status_code == 200 and events(r.text)[-1][0] == "done"


def test_no_streams_on_a_server_without_them(translator_dir):
    with TestClient(create_app(translator_dir, max_streams=0)) as client:
        check_error(translate(client, "ein hund", stream=True), 503, "overloaded", "streaming is off")
        assert translate(client, "ein hund").status_code == 200
        assert client.get("/v1/model").json()["stream"]["max_streams"] == 0


def test_a_model_failing_mid_stream_sends_an_error_event(tr_client, monkeypatch):
    from omniformer.tasks.seq2seq import serve
    real = serve.stream

    def failing(*args, **kwargs):
        steps = real(*args, **kwargs)
        yield next(steps)
        raise RuntimeError("out of memory")
    monkeypatch.setattr(serve, "stream", failing)
    got = events(translate(tr_client, "ein hund", stream=True).text)
    assert [k for k, _ in got] == ["token", "error"]
    assert got[-1][1]["error"]["type"] == "internal" and "RuntimeError" in got[-1][1]["error"]["message"]
    assert "out of memory" not in got[-1][1]["error"]["message"]  # the exception's text stays in the log
    monkeypatch.setattr(serve, "stream", real)
    assert wait_until(lambda: tr_client.app.state.service.streams == 0)  # released as its thread ends
    assert translate(tr_client, PAIRS[3][0], num_beams=1).json()["text"] == PAIRS[3][1]
