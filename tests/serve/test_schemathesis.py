"""Property-based tests of every task's server from its own OpenAPI schema (schemathesis).

For each task (qa, classify, asr, translate, caption) a checkpoint with random weights is served in-process
(``create_app``, called through ASGI: no network, no uvicorn), and schemathesis generates
requests for every operation the app's ``/openapi.json`` lists, valid and invalid ones. No
response may be a 5xx, and every error response is JSON ``{"error": {"type", "message", ...}}``.
A last test checks that the POST operations of each schema are exactly the ones exercised, so a
route added later is fuzzed without editing this file.

Not covered: the asr WebSocket ``/v1/transcribe/stream`` (not in OpenAPI; see test_serve.py and
tests/tasks/asr/test_streaming.py). The text-writing tasks' ``stream=true`` answers (Server-Sent
Events) are fuzzed like the rest; their dropped connections and limits are in
test_generate_serve.py.
"""
from __future__ import annotations

import dataclasses
import json
from collections import Counter, defaultdict
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis.checks import negative_data_rejection, positive_data_acceptance  # noqa: E402
from schemathesis.core.file_samples import FILE_SAMPLES  # noqa: E402
from schemathesis.core.transport import response_content_type  # noqa: E402
from schemathesis.generation.modes import GenerationMode  # noqa: E402
from schemathesis.python import asgi  # noqa: E402
from schemathesis.specs.openapi.formats import unregister_string_format  # noqa: E402

from test_generate_serve import build_captioner, build_translator  # noqa: E402  (tests/serve, on the path)
from test_serve import build_random_qa_checkpoint, png_bytes, wav_bytes  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TASKS = ("qa", "classify", "asr", "translate", "caption")
MAX_EXAMPLES = 50  # per operation and generation mode (positive, negative); the file runs in ~20 s
MAX_UPLOAD_BYTES = 32 * 1024  # small, so that generated bodies (and the envelope limits) stay cheap

# (task, METHOD, path) -> requests sent / their status codes, filled by the fuzz test and read
# by the coverage test (run with -s to see them).
CALLS: Counter[tuple[str, str, str]] = Counter()
STATUSES: defaultdict[tuple[str, str, str], Counter[int]] = defaultdict(Counter)

TINY = {"width": 32, "heads": 2, "depth": 1, "tower_depth": 0, "dropout": 0.0}


def build_random_classifier(out: Path) -> Path:
    """An untrained classify checkpoint reading an image, a recording and a text (every input
    the server decodes), as small as loads."""
    import torch

    from omniformer.config import load_config
    from omniformer.data.text import Tokenizer
    from omniformer.tasks.classify import ClassifierModel, ClassifyConfig
    from omniformer.train.checkpoint import save_checkpoint
    cfg = load_config(ROOT / "configs" / "classify.yaml", overrides={
        "model": {**TINY, "modalities": ["image", "audio", "text"],
                  "image": {"size": 16, "channels": 1, "patch_size": 4, "mean": [0.5], "std": [0.5]},
                  "audio": {"n_mels": 16, "subsample": 4, "max_seconds": 2.0}, "text": {"max_len": 12}},
        "data": {"manifest": str(out.parent / "m.jsonl"), "vocab_size": 60}})
    labels = ["down", "go", "no", "stop", "up", "yes"]
    tokenizer = Tokenizer.train([f"say {w} now" for w in labels] * 5, 60)
    cfg.model.vocab_size = tokenizer.vocab_size
    torch.manual_seed(0)
    model = ClassifierModel(cfg.model, len(labels), ClassifyConfig())
    meta = {"task": "classify", "config": dataclasses.asdict(cfg), "labels": labels, "model_id": "fuzz-classify"}
    return save_checkpoint(out, model, meta, tokenizer)


def build_random_recogniser(out: Path) -> Path:
    """An untrained asr checkpoint (CTC over a few letters), as small as loads."""
    import torch

    from omniformer.config import from_dict, load_config
    from omniformer.tasks.asr import Alphabet, ASRConfig, ASRModel
    from omniformer.train.checkpoint import save_checkpoint
    cfg = load_config(ROOT / "configs" / "asr.yaml", overrides={
        "model": {**TINY, "modalities": ["audio"],
                  "audio": {"sample_rate": 8000, "n_mels": 16, "subsample": 2, "max_seconds": 2.0}},
        "data": {"manifest": str(out.parent / "m.jsonl")}})
    alphabet = Alphabet(" abcd")
    torch.manual_seed(0)
    model = ASRModel(cfg.model, len(alphabet), from_dict(ASRConfig, cfg.task or {}, "task"))
    meta = {"task": "asr", "config": dataclasses.asdict(cfg), "alphabet": alphabet.chars,
            "words": ["ab", "cab", "dad"], "model_id": "fuzz-asr"}
    return save_checkpoint(out, model, meta)


BUILDERS = {"qa": build_random_qa_checkpoint, "classify": build_random_classifier, "asr": build_random_recogniser,
            "translate": build_translator, "caption": build_captioner}


@pytest.fixture(scope="module", autouse=True)
def media_files():
    """``format: binary`` fields drawn from real uploads as well as schemathesis' own samples
    (a 1x1 PNG, a PDF, ...) and arbitrary bytes, so that some generated requests get past
    decoding to the model: a small PNG and short WAV, FLAC and OGG recordings."""
    samples = [png_bytes(16), png_bytes(16, fmt="JPEG"), wav_bytes(0.25, 8000), wav_bytes(0.25, 16000, "FLAC"),
               wav_bytes(0.25, 16000, "OGG"), *FILE_SAMPLES.values()]
    schemathesis.openapi.format("binary", st.one_of(st.sampled_from(samples), st.binary(max_size=256)))
    yield
    unregister_string_format("binary")  # back to schemathesis' default


@pytest.fixture(scope="module", params=TASKS)
def api_schema(request, tmp_path_factory):
    """The schemathesis schema of one task's app, read from the app's own /openapi.json."""
    from omniformer.serve.app import create_app
    task = request.param
    model_dir = BUILDERS[task](tmp_path_factory.mktemp(f"fuzz-{task}") / "model")
    app = create_app(model_dir, max_upload_bytes=MAX_UPLOAD_BYTES, max_pixels=64 * 64, max_audio_seconds=1.0,
                     max_batch=4, max_wait_ms=0.0, decode_threads=1)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    assert schema.raw_schema["info"]["title"] == f"Omniformer {task}"
    yield schema
    # schemathesis keeps each app's lifespan (the model's worker) running until exit: stop them here.
    asgi.shutdown_lifespans()


def task_of(schema) -> str:
    return schema.raw_schema["info"]["title"].removeprefix("Omniformer ")


def check_error_shape(case, response) -> None:
    """An error response is JSON with an ``error`` object saying what went wrong."""
    where = f"{case.method} {case.formatted_path} -> {response.status_code}"
    content_type = response_content_type(response) or ""
    assert content_type.startswith("application/json"), f"{where}: content-type {content_type!r}"
    body = json.loads(response.content)
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), f"{where}: {body!r}"
    error = body["error"]
    assert isinstance(error.get("type"), str) and error["type"], f"{where}: {body!r}"
    assert isinstance(error.get("message"), str) and error["message"], f"{where}: {body!r}"


def operations(schema) -> list:
    return [result.ok() for result in schema.get_all_operations()]


# Driven through Hypothesis directly (operation.as_strategy), not schemathesis' pytest
# integration: schemathesis.pytest.from_fixture(...).parametrize() fails on pytest 9.2
# ("'Function' object has no attribute '_nodeid'", schemathesis/pytest/lazy.py), and a
# module-level schema would build three models at collection time.
#
# Every schemathesis check (not_a_server_error, documented status codes and content types, bodies matching
# the response schemas, schema-invalid requests refused) except positive_data_acceptance: a
# schema-valid request can rightly be refused, because the schema cannot say that a file must
# be a real image or recording (415/400), that top_k is at most the number of labels, or that
# QA needs a question or a recording (422). And negative_data_rejection only for JSON bodies: a
# multipart text field is text whatever the schema's type, so a "question" generated as an
# array and sent as the text "null" is a valid question, rightly answered.
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
def test_no_server_errors_and_json_errors(api_schema, mode):
    task = task_of(api_schema)
    for operation in operations(api_schema):
        if mode.is_negative and not operation.body and not any(True for _ in operation.iter_parameters()):
            continue  # nothing to make invalid (GET /healthz, ...)

        @settings(max_examples=MAX_EXAMPLES, derandomize=True, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=mode))
        def fuzz(case):
            response = case.call()
            CALLS[task, case.method.upper(), case.path] += 1
            STATUSES[task, case.method.upper(), case.path][response.status_code] += 1
            multipart = (case.media_type or "").startswith("multipart/")
            case.validate_response(response, excluded_checks=[positive_data_acceptance] + (
                [negative_data_rejection] if multipart else []))
            assert response.status_code < 500, (f"{case.method} {case.formatted_path}: {response.status_code} "
                                                f"{response.text[:300]}")
            if response.status_code >= 400:
                check_error_shape(case, response)

        fuzz()


def test_every_post_route_was_fuzzed(api_schema):
    """The POST operations the schema lists are exactly the ones the fuzz test exercised (a new
    route is picked up from the schema, never from a list here)."""
    task = task_of(api_schema)
    if not any(key[0] == task for key in CALLS):
        pytest.skip("run with test_no_server_errors_and_json_errors (it records the requests)")
    listed = {(op.method.upper(), op.path) for op in operations(api_schema) if op.method.upper() == "POST"}
    fuzzed = {(method, path) for (t, method, path) in CALLS if t == task and method == "POST"}
    assert listed and listed == fuzzed, f"{task}: listed {sorted(listed)}, fuzzed {sorted(fuzzed)}"
    # Every task's upload routes come in pairs: multipart and its .json twin.
    assert {path for _, path in listed} == {p.removesuffix(".json") for _, p in listed} | {
        p.removesuffix(".json") + ".json" for _, p in listed}, listed
    everything = {(op.method.upper(), op.path) for op in operations(api_schema)}
    assert everything == {(m, p) for (t, m, p) in CALLS if t == task}  # the GETs too, at least once
    counts = {(m, p): n for (t, m, p), n in sorted(CALLS.items()) if t == task}
    print(f"\n{task}: requests (status codes) per operation:")
    for (m, p), n in counts.items():
        print(f"  {m} {p}: {n} {dict(sorted(STATUSES[task, m, p].items()))}")
    # An operation without parameters is one request (Hypothesis has nothing to vary); a POST is many.
    assert all(n >= MAX_EXAMPLES for (m, p), n in counts.items() if m == "POST"), counts
