"""The server never opens a path that a request names: every field, file name and URL that
names a real file on the server's disk is answered from the request's bytes alone (a 4xx), and
an audit hook sees no attempt to open it."""
from __future__ import annotations

import base64
import sys
import urllib.parse

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from omniformer.serve.app import create_app  # noqa: E402
from test_serve import build_random_qa_checkpoint, png_bytes, wav_bytes  # noqa: E402

OPENED: list[str] = []
WATCHING: list[str] = []  # the secret folder, while a test watches


def _audit(event: str, args: tuple) -> None:
    if WATCHING and event in ("open", "os.listdir", "os.scandir", "shutil.copyfile", "os.stat"):
        target = str(args[0]) if args else ""
        if WATCHING[0] in target:
            OPENED.append(f"{event} {target}")


sys.addaudithook(_audit)  # cannot be removed; it does nothing unless a test watches


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("paths")
    secret = root / "secret-folder"
    secret.mkdir()
    (secret / "scene.png").write_bytes(png_bytes())   # real, decodable media: opening them would work
    (secret / "question.wav").write_bytes(wav_bytes(0.5))
    (secret / "notes.txt").write_text("do not serve")
    app = create_app(build_random_qa_checkpoint(root / "qa"), examples_manifest=None)
    with TestClient(app) as client:
        yield client, secret


def test_no_request_opens_a_path_it_names(served):
    client, secret = served
    image, audio, notes = secret / "scene.png", secret / "question.wav", secret / "notes.txt"
    requests = [
        # multipart: the path as a field's text, and as the upload's file name with other bytes
        ("post", "/v1/answer", {"data": {"question": "what?", "image": str(image)},
                                "files": {"x": ("x.txt", b"x", "text/plain")}}),
        ("post", "/v1/answer", {"data": {"question": str(notes)},
                                "files": {"image": (str(image), b"not an image", "image/png")}}),
        ("post", "/v1/answer", {"files": {"image": ("scene.png", str(image).encode(), "image/png"),
                                          "audio": (str(audio), str(audio).encode(), "audio/wav")}}),
        ("post", "/v1/answer", {"files": {"image": (f"file://{image}", b"\x89PNG", "image/png")},
                                "data": {"question": f"file://{image}"}}),
        # JSON: paths and file URLs where base64 bytes belong
        ("post", "/v1/answer.json", {"json": {"image": str(image), "question": "what?"}}),
        ("post", "/v1/answer.json", {"json": {"image": f"file://{image}", "audio": str(audio)}}),
        ("post", "/v1/answer.json", {"json": {"image": base64.b64encode(str(image).encode()).decode(),
                                              "question": "what?"}}),
        # URLs: traversal to the secret folder
        ("get", "/static/" + urllib.parse.quote(f"../../../../{notes}", safe=""), {}),
        ("get", f"/static/..%2f..%2f{secret.name}%2fnotes.txt", {}),
        ("get", "/v1/examples/0/image", {}),
        ("get", "/v1/examples/" + urllib.parse.quote(str(image), safe="") + "/image", {}),
    ]
    WATCHING[:] = [secret.name]
    try:
        statuses = [getattr(client, method)(url, **kw).status_code for method, url, kw in requests]
    finally:
        WATCHING.clear()
    assert OPENED == []
    assert all(400 <= s < 500 for s in statuses), statuses


def test_the_audit_hook_would_see_an_open(served):
    """The hook is live: opening the secret file here is seen (so the test above could fail)."""
    _, secret = served
    WATCHING[:] = [secret.name]
    try:
        (secret / "notes.txt").read_text()
    finally:
        WATCHING.clear()
    assert OPENED and "notes.txt" in OPENED.pop()
