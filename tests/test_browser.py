"""The web page in a real browser: headless Chromium driven by Playwright.

Needs the ``playwright`` Python package and a system Chromium at /usr/bin/chromium (the
Playwright browser download is never used). Skipped, with the reason, when either is missing.
Writes docs/screenshot.png.
"""
from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from test_serve import build_random_qa_checkpoint, png_bytes, wav_bytes, write_examples_manifest

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parent.parent
SCREENSHOT = ROOT / "docs" / "screenshot.png"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync",
                 # A fake microphone (a beep) that needs no permission prompt, to test recording.
                 "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed "
                                                             "(pip install playwright; no browser download needed)")
if not CHROMIUM.is_file():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)", allow_module_level=True)


class ServerThread:
    """uvicorn on 127.0.0.1 and a free port, in a thread of this process."""

    def __init__(self, app):
        import uvicorn
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))  # bound here, so no other process can take the port meanwhile
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


@pytest.fixture(scope="module")
def served(request, tmp_path_factory):
    """A random-weights model of the quickstart's shape (the page's behaviour, not accuracy, is
    under test here; test_serve checks trained answers) and a small examples manifest."""
    from omniformer.serve.app import create_app
    folder = tmp_path_factory.mktemp("browser")
    model_dir = build_random_qa_checkpoint(folder / "qa")
    manifest = write_examples_manifest(folder / "examples")
    trained = False
    from omniformer.train.checkpoint import read_meta
    app = create_app(model_dir, examples_manifest=manifest)
    with ServerThread(app) as server:
        server.top_k = min(5, len(read_meta(model_dir)["answers"]))  # the page asks for the top 5
        yield server, trained


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, served):
    server, _ = served
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    page.requested = requested
    page.expected_bars = server.top_k
    page.goto(server.url + "/")
    yield page
    # Works offline: every request went to this server (or is the page's own blob/data URL).
    strays = [u for u in requested if not u.startswith((server.url, "blob:", "data:"))]
    assert not strays, f"the page fetched from elsewhere: {strays}"
    context.close()


def _answer_shown(page, asked: str) -> str:
    expect = sync_api.expect
    expect(page.locator("#bars li")).to_have_count(page.expected_bars, timeout=15_000)
    expect(page.locator("#answer-meta")).to_contain_text(asked)
    best = page.locator("#answer-main").inner_text().strip()
    assert page.locator("#error").is_hidden(), page.locator("#error").inner_text()
    # Bars are drawn: the first (best) bar is the widest, and wider than nothing.
    # Polled from Python: the page's CSP forbids the string evaluation wait_for_function uses.
    fill = page.locator("#bars li .fill").first
    for _ in range(100):
        box = fill.bounding_box()
        if box and box["width"] > 2:
            break
        page.wait_for_timeout(100)
    assert box and box["width"] > 2, box
    widths = page.eval_on_selector_all("#bars .fill", "els => els.map(e => e.getBoundingClientRect().width)")
    assert widths[0] == max(widths)
    return best


def test_ask_in_text_with_an_uploaded_image(page, served, tmp_path):
    expect = sync_api.expect
    expect(page.get_by_role("heading", name="Omniformer")).to_be_visible()
    image = tmp_path / "scene.png"
    image.write_bytes(png_bytes(48, (40, 40, 200)))
    page.set_input_files("#image-input", str(image))
    expect(page.locator("#preview")).to_be_visible()
    page.get_by_label("Type a question").fill("what color is the circle?")
    page.get_by_role("button", name="Ask", exact=True).click()
    best = _answer_shown(page, "asked in text")
    labels = page.locator("#bars .label").all_inner_texts()
    assert best == labels[0] and len(set(labels)) == 5


def test_ask_by_voice_with_an_uploaded_recording(page, tmp_path):
    expect = sync_api.expect
    image, audio = tmp_path / "scene.png", tmp_path / "question.wav"
    image.write_bytes(png_bytes())
    audio.write_bytes(wav_bytes(1.0))
    page.set_input_files("#image-input", str(image))
    page.set_input_files("#audio-input", str(audio))
    expect(page.locator("#audio-row")).to_be_visible()
    page.get_by_role("button", name="Ask", exact=True).click()
    _answer_shown(page, "asked by voice")


def test_record_with_the_microphone(page, tmp_path):
    """MediaRecorder (fake microphone) -> WAV in JS -> the server decodes it."""
    expect = sync_api.expect
    image = tmp_path / "scene.png"
    image.write_bytes(png_bytes())
    page.set_input_files("#image-input", str(image))
    record = page.locator("#record")
    record.click()
    expect(record).to_have_attribute("aria-pressed", "true")
    page.wait_for_timeout(1200)
    record.click()
    expect(page.locator("#audio-status")).to_have_text("Recorded question ready.", timeout=10_000)
    # The browser's recording (webm/opus) would be refused with 415: an answer "asked by voice"
    # shows the page converted it to WAV.
    page.get_by_role("button", name="Ask", exact=True).click()
    _answer_shown(page, "asked by voice")


def test_bad_file_shows_the_servers_message(page, tmp_path):
    expect = sync_api.expect
    fake = tmp_path / "scene.png"
    fake.write_bytes(b"%PDF-1.4 not an image")
    page.set_input_files("#image-input", str(fake))
    page.get_by_label("Type a question").fill("what color is the circle?")
    page.get_by_role("button", name="Ask", exact=True).click()
    expect(page.locator("#error")).to_contain_text("not an image")
    page.locator("#question").fill("")
    page.get_by_role("button", name="Ask", exact=True).click()
    expect(page.locator("#error")).to_contain_text("Type a question")


def test_example_in_one_click_and_screenshot(page, served):
    expect = sync_api.expect
    _, trained = served
    examples = page.locator("#examples li")
    expect(examples.first).to_be_visible()
    examples.first.get_by_role("button").first.click()
    _answer_shown(page, "asked in text")
    expect(page.locator("#answer-meta")).to_contain_text("expected")
    # Voice version of an example, where the dataset has spoken questions.
    voice = page.get_by_role("button", name="Ask by voice").first
    if voice.count():
        voice.click()
        _answer_shown(page, "asked by voice")
        examples.first.get_by_role("button").first.click()
        _answer_shown(page, "asked in text")
        expect(page.locator("#audio-row")).to_be_hidden()  # the text example dropped the recording
    # The README's picture: only from the trained model, or when there is none yet.
    if trained or not SCREENSHOT.exists():
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.wait_for_timeout(600)  # let the bars finish growing
        page.screenshot(path=str(SCREENSHOT), full_page=True)
        assert SCREENSHOT.stat().st_size > 10_000
