"""The web page in a real browser: headless Chromium driven by Playwright.

Needs the ``playwright`` Python package and a system Chromium at /usr/bin/chromium (the
Playwright browser download is never used). Skipped, with the reason, when either is missing.

The page shows the panel of the served task: QA's (a random-weights QA model) and the
recognition panel of classify (a small shape classifier trained here in seconds, and an
untrained one reading a recording and a text but no image); any other task gets a notice.
Writes docs/screenshot.png and docs/screenshot-classify.png when they are absent (delete one
to take it again).
"""
from __future__ import annotations

import dataclasses
import json
import random
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from test_serve import build_random_qa_checkpoint, png_bytes, wav_bytes, write_examples_manifest

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "docs" / "screenshot.png"
SCREENSHOT_CLASSIFY = ROOT / "docs" / "screenshot-classify.png"
SHAPES = ("circle", "square", "triangle")
WORDS = ("down", "go", "no", "stop", "up", "yes")
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


@contextmanager
def open_page(browser, server, expected_bars: int):
    """A fresh browser context on ``server``'s page; afterwards, checks that it loaded nothing
    from elsewhere."""
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    page.requested = requested
    page.expected_bars = expected_bars
    page.goto(server.url + "/")
    yield page
    # Works offline: every request went to this server (or is the page's own blob/data URL).
    strays = [u for u in requested if not u.startswith((server.url, "blob:", "data:"))]
    assert not strays, f"the page fetched from elsewhere: {strays}"
    context.close()


@pytest.fixture
def page(browser, served):
    server, _ = served
    with open_page(browser, server, server.top_k) as page:
        yield page


def _answer_shown(page, asked: str) -> str:
    """Waits for the result (answers or labels) whose meta line says ``asked``; checks its bars."""
    expect = sync_api.expect
    expect(page.locator("#answer-meta")).to_contain_text(asked, timeout=15_000)
    expect(page.locator("#bars li")).to_have_count(page.expected_bars, timeout=15_000)
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


# ---------------------------------------------------------------------------------------------
# The recognition panel (task "classify")
# ---------------------------------------------------------------------------------------------

def draw_shape(shape: str, rng: random.Random, size: int = 32) -> Image.Image:
    """One light shape at a random place and size on black."""
    im = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(im)
    r = rng.randint(size // 5, size // 3)
    x, y = rng.randint(r, size - r - 1), rng.randint(r, size - r - 1)
    fill = rng.randint(170, 255)
    if shape == "circle":
        d.ellipse([x - r, y - r, x + r, y + r], fill=fill)
    elif shape == "square":
        d.rectangle([x - r, y - r, x + r, y + r], fill=fill)
    else:
        d.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=fill)
    return im


def write_shapes_manifest(root: Path, train: int = 60, test: int = 3, seed: int = 0) -> Path:
    """Three classes of shapes (``label``), train and test splits."""
    rng, lines = random.Random(seed), []
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", train), ("test", test)):
        for i in range(n):
            for shape in SHAPES:
                name = f"{split}_{shape}_{i}.png"
                draw_shape(shape, rng).save(root / name)
                lines.append({"id": f"{split}-{shape}-{i}", "image": name, "label": shape, "split": split})
    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return manifest


TINY_MODEL = {"width": 32, "heads": 2, "depth": 1, "tower_depth": 0, "dropout": 0.0,
              "image": {"size": 16, "channels": 1, "patch_size": 4, "mean": [0.5], "std": [0.5]},
              "audio": {"n_mels": 16, "subsample": 4, "max_seconds": 2.0}, "text": {"max_len": 12}}


def train_shape_classifier(root: Path) -> tuple[Path, Path]:
    """(best checkpoint, manifest) of an image classifier of 3 shapes, trained in a few seconds."""
    from omniformer.config import load_config
    from omniformer.registry import get_task
    manifest = write_shapes_manifest(root / "data")
    cfg = load_config(overrides={
        "out_dir": str(root / "shapes"), "model": {**TINY_MODEL, "modalities": ["image"]},
        "data": {"manifest": str(manifest), "augment": False, "vocab_size": 60},
        "finetune": {"steps": 300, "batch_size": 32, "lr": 3e-3, "warmup_steps": 10, "eval_every": 300,
                     "save_every": 300, "workers": 0, "progress": False, "log_every": 100}})
    return get_task("classify").train(cfg, progress=False), manifest


def build_random_classifier(out: Path, modalities: list[str], labels=WORDS) -> Path:
    """An untrained classify checkpoint reading ``modalities`` (the page's behaviour is under
    test, not accuracy)."""
    import torch

    from omniformer.config import load_config
    from omniformer.data.text import Tokenizer
    from omniformer.tasks.classify import ClassifierModel, ClassifyConfig
    from omniformer.train.checkpoint import save_checkpoint
    cfg = load_config(overrides={"out_dir": str(out.parent), "model": {**TINY_MODEL, "modalities": modalities},
                                 "data": {"manifest": str(out.parent / "m.jsonl"), "vocab_size": 60}})
    tokenizer = None
    if "text" in modalities:
        tokenizer = Tokenizer.train([f"say {w} now" for w in WORDS] * 5, 60)
        cfg.model.vocab_size = tokenizer.vocab_size
    torch.manual_seed(0)
    model = ClassifierModel(cfg.model, len(labels), ClassifyConfig())
    meta = {"task": "classify", "config": dataclasses.asdict(cfg), "labels": list(labels), "model_id": "words-test"}
    return save_checkpoint(out, model, meta, tokenizer)


def write_words_manifest(root: Path) -> Path:
    """Test samples with a recording and a text (one with the text only) and a label."""
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, word in enumerate(WORDS[:3]):
        (root / f"{word}.wav").write_bytes(wav_bytes(0.5))
        lines.append({"id": f"w{i}", "audio": f"{word}.wav", "text": f"say {word} now", "label": word, "split": "test"})
    lines.append({"id": "t0", "text": "say stop now", "label": "stop", "split": "test"})
    lines.append({"id": "train0", "audio": "up.wav", "label": "up", "split": "train"})
    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return manifest


@pytest.fixture(scope="module")
def shapes_server(tmp_path_factory):
    """The trained shape classifier, with its own manifest's test split as the examples."""
    from omniformer.serve.app import create_app
    best, manifest = train_shape_classifier(tmp_path_factory.mktemp("classify"))
    with ServerThread(create_app(best, examples_manifest=manifest)) as server:
        yield server


@pytest.fixture(scope="module")
def words_server(tmp_path_factory):
    """An untrained classifier that reads a recording and a text, but no image."""
    from omniformer.serve.app import create_app
    folder = tmp_path_factory.mktemp("words")
    model_dir = build_random_classifier(folder / "model", ["audio", "text"])
    with ServerThread(create_app(model_dir, examples_manifest=write_words_manifest(folder / "data"))) as server:
        yield server


@pytest.fixture
def shapes_page(browser, shapes_server):
    with open_page(browser, shapes_server, len(SHAPES)) as page:
        yield page


@pytest.fixture
def words_page(browser, words_server):
    with open_page(browser, words_server, 5) as page:  # top 5 of 6 labels
        yield page


def test_recognition_panel_classifies_an_uploaded_image(shapes_page, tmp_path):
    page, expect = shapes_page, sync_api.expect
    expect(page.get_by_role("heading", name="Recognise an image")).to_be_visible()
    expect(page.locator("#model-name")).to_contain_text("3 labels")
    # Only what an image classifier needs: no question, no recording, no text box.
    assert page.locator("#question, #record, #text, #ask").count() == 0
    expect(page.get_by_role("button", name="Classify", exact=True)).to_be_visible()
    image = tmp_path / "shape.png"
    draw_shape("square", random.Random(7)).save(image)
    page.set_input_files("#image-input", str(image))  # a new image is classified at once
    expect(page.locator("#preview")).to_be_visible()
    best = _answer_shown(page, "from the image")
    labels = page.locator("#bars .label").all_inner_texts()
    assert best == labels[0] and sorted(labels) == sorted(SHAPES)
    pcts = [float(t.rstrip("%")) for t in page.locator("#bars .pct").all_inner_texts()]
    assert pcts == sorted(pcts, reverse=True) and abs(sum(pcts) - 100) < 1
    # The button classifies again; a file that is not an image gets the server's message.
    page.get_by_role("button", name="Classify", exact=True).click()
    _answer_shown(page, "from the image")
    fake = tmp_path / "fake.png"
    fake.write_bytes(b"%PDF-1.4 not an image")
    page.set_input_files("#image-input", str(fake))
    expect(page.locator("#error")).to_contain_text("not an image")


def test_recognition_examples_in_one_click_and_screenshot(shapes_page):
    page, expect = shapes_page, sync_api.expect
    examples = page.locator("#examples li")
    expect(examples).to_have_count(8)  # at most 8, different labels first
    expect(page.locator("#examples-hint")).to_contain_text("true label")
    first = examples.nth(0)
    label = first.locator(".q").inner_text().strip()
    assert label in SHAPES
    assert {examples.nth(i).locator(".q").inner_text().strip() for i in range(3)} == set(SHAPES)
    first.get_by_role("button").click()
    _answer_shown(page, f'true label "{label}"')
    expect(page.locator("#preview")).to_be_visible()
    if not SCREENSHOT_CLASSIFY.exists():
        SCREENSHOT_CLASSIFY.parent.mkdir(parents=True, exist_ok=True)
        page.wait_for_timeout(600)  # let the bars finish growing
        page.screenshot(path=str(SCREENSHOT_CLASSIFY), full_page=True)
        assert SCREENSHOT_CLASSIFY.stat().st_size > 10_000


def test_recognition_of_a_recording_and_a_text(words_page, tmp_path):
    """A model reading audio and text: no image card; an uploaded recording is classified at
    once, then with the text as well."""
    page, expect = words_page, sync_api.expect
    expect(page.get_by_role("heading", name="Recognise a recording or a text")).to_be_visible()
    assert page.locator("#image-input, #drop").count() == 0
    expect(page.get_by_role("heading", name="Recording", exact=True)).to_be_visible()
    audio = tmp_path / "word.wav"
    audio.write_bytes(wav_bytes(0.5))
    page.set_input_files("#audio-input", str(audio))
    expect(page.locator("#audio-row")).to_be_visible()
    _answer_shown(page, "from the recording ·")
    page.get_by_label("Type a text").fill("say yes now")
    page.get_by_role("button", name="Classify", exact=True).click()
    _answer_shown(page, "from the recording and the text")
    page.get_by_role("button", name="Remove").click()
    page.get_by_label("Type a text").press("Enter")  # Enter classifies the text alone
    _answer_shown(page, "from the text")
    page.get_by_label("Type a text").fill("")
    page.get_by_role("button", name="Classify", exact=True).click()
    expect(page.locator("#error")).to_contain_text("Record or upload a recording or type a text first")


def test_recognition_records_with_the_microphone(words_page):
    """Recording (fake microphone) -> WAV in JS -> classified at once."""
    page, expect = words_page, sync_api.expect
    record = page.locator("#record")
    record.click()
    expect(record).to_have_attribute("aria-pressed", "true")
    page.wait_for_timeout(1000)
    record.click()
    expect(page.locator("#audio-status")).to_have_text("Recording ready.", timeout=10_000)
    _answer_shown(page, "from the recording ·")


def test_recognition_examples_with_recordings_and_texts(words_page):
    page, expect = words_page, sync_api.expect
    examples = page.locator("#examples li")
    expect(examples).to_have_count(4)  # the test split: 3 with a recording and a text, 1 with a text only
    expect(examples.nth(0).locator(".thumb")).to_have_text("♪")
    examples.nth(0).get_by_role("button").click()
    _answer_shown(page, "from the recording and the text")
    expect(page.locator("#answer-meta")).to_contain_text('true label "down"')
    expect(page.locator("#text")).to_have_value("say down now")
    text_only = page.get_by_role("button", name="Classify the example t0 (true label stop)")
    text_only.click()
    _answer_shown(page, 'from the text · ')
    expect(page.locator("#answer-meta")).to_contain_text('true label "stop"')
    expect(page.locator("#audio-row")).to_be_hidden()  # the example has no recording: the last one is gone


def test_a_task_without_a_panel_gets_a_notice(browser, shapes_server):
    """What /v1/model says decides the panel: another task, or a failing model, gets a notice."""
    expect = sync_api.expect
    context = browser.new_context()
    try:
        page = context.new_page()
        page.route("**/v1/model", lambda route: route.fulfill(
            status=200, content_type="application/json", body=json.dumps({"task": "caption", "model": "cap-1"})))
        page.goto(shapes_server.url + "/")
        expect(page.locator("#notice")).to_contain_text('"caption" task (model cap-1)')
        expect(page.get_by_role("heading", name="No page for the caption task")).to_be_visible()
        expect(page.locator("#panel").get_by_role("link", name="/docs")).to_have_attribute("href", "/docs")
        assert page.locator("#image-input, #examples li").count() == 0
        page.unroute("**/v1/model")
        page.route("**/v1/model", lambda route: route.fulfill(
            status=503, content_type="application/json",
            body=json.dumps({"error": {"type": "not_ready", "message": "the model is not ready"}})))
        page.reload()
        expect(page.locator("#notice")).to_contain_text("the model is not ready")
    finally:
        context.close()
