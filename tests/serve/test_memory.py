"""The server's Python heap stays flat under mixed load: requests answered, spoken, malformed.

What the server keeps per request (metrics, queues, caches, exception state) must not grow
with the number of requests. The resident memory of a real server under 64-client load is
measured by ``benchmarks/serve_load.py`` (it rises while native caches fill, then holds:
benchmarks/README.md, "Hardening"); this test holds the part our code controls, the Python
objects, to a small bound, with tracemalloc, in one process.
"""
from __future__ import annotations

import gc
import tracemalloc

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from omniformer.serve.app import create_app  # noqa: E402
from test_serve import QUESTIONS, build_random_qa_checkpoint, png_bytes, wav_bytes  # noqa: E402


def _requests(client: TestClient, count: int, start: int) -> None:
    image, audio = png_bytes(48), wav_bytes(1.0)
    for i in range(start, start + count):
        kind = i % 6
        files = {"image": ("scene.png", image, "image/png")}
        if kind == 0:
            files["audio"] = ("q.wav", audio, "audio/wav")
        if kind == 4:  # malformed: a cut-short image
            files["image"] = ("scene.png", image[: len(image) // 3], "image/png")
        if kind == 5:  # malformed: broken JSON
            r = client.post("/v1/answer.json", content=b'{"image": "', headers={"content-type": "application/json"})
            assert r.status_code == 400
            continue
        r = client.post("/v1/answer", files=files, data={"question": QUESTIONS[i % len(QUESTIONS)]})
        assert r.status_code == (400 if kind == 4 else 200), r.text


def _python_heap() -> int:
    gc.collect()
    snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
    return sum(stat.size for stat in snapshot.statistics("filename"))


def test_python_heap_is_flat_under_mixed_requests(tmp_path):
    app = create_app(build_random_qa_checkpoint(tmp_path / "qa"), max_batch=8, max_wait_ms=1.0)
    with TestClient(app) as client:
        _requests(client, 120, 0)  # warm: lazy imports, caches, the first batch shapes
        tracemalloc.start()
        try:
            _requests(client, 60, 120)
            before = _python_heap()
            _requests(client, 360, 180)
            grown = _python_heap() - before
        finally:
            tracemalloc.stop()
    # 360 requests: a leak of 1 KiB a request would show as 360 KiB.
    assert grown < 192 * 1024, f"the Python heap grew by {grown / 1024:.0f} KiB over 360 requests"
