"""The web page in a real browser: headless Chromium driven by Playwright.

Needs the ``playwright`` Python package and a system Chromium at /usr/bin/chromium (the
Playwright browser download is never used). Skipped, with the reason, when either is missing.

The page shows the panel of the served task: QA's (a random-weights QA model), the
recognition panel of classify (a small shape classifier trained here in seconds, and an
untrained one reading a recording and a text but no image), the speech recognition panel of
asr (a tone recogniser trained here in seconds, see tests/tasks/asr/test_asr_task.py; live
transcription gets a recorded file as the microphone), and the streamed text of translate and
caption (tiny models trained in a second, see test_generate_serve.py); any other task gets a notice. Writes
docs/screenshot.png, docs/screenshot-classify.png and docs/screenshot-asr.png when they are
absent (delete one to take it again).
"""
from __future__ import annotations

import dataclasses
import json
import random
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from test_generate_serve import PAIRS, ServerThread, build_captioner, build_translator, shape_png
from test_serve import build_random_qa_checkpoint, png_bytes, wav_bytes, write_examples_manifest

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "tasks" / "asr"))
from test_asr_task import RATE, WORDS as TONE_WORDS, speak, tiny_cfg, write_tones  # noqa: E402

SCREENSHOT = ROOT / "docs" / "screenshot.png"
SCREENSHOT_CLASSIFY = ROOT / "docs" / "screenshot-classify.png"
SCREENSHOT_ASR = ROOT / "docs" / "screenshot-asr.png"
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
def playwright():
    with sync_api.sync_playwright() as p:  # one per thread: every browser below comes from it
        yield p


@pytest.fixture(scope="module")
def browser(playwright):
    b = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
    yield b
    b.close()


@contextmanager
def open_page(browser, server, expected_bars: int, init_script: str | None = None):
    """A fresh browser context on ``server``'s page (``init_script`` runs before the page's
    own); afterwards, checks that it loaded nothing from elsewhere."""
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    if init_script:
        context.add_init_script(init_script)
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
            status=200, content_type="application/json", body=json.dumps({"task": "segment", "model": "seg-1"})))
        page.goto(shapes_server.url + "/")
        expect(page.locator("#notice")).to_contain_text('"segment" task (model seg-1)')
        expect(page.get_by_role("heading", name="No page for the segment task")).to_be_visible()
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


# ---------------------------------------------------------------------------------------------
# The speech recognition panel (task "asr")
# ---------------------------------------------------------------------------------------------

LIVE_TEXT = "cab dad abc"
# Keeps the page's microphones and AudioContexts, to check that the page lets go of them.
TRACK_AUDIO = """
window.__streams = []; window.__contexts = [];
const getUserMedia = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
navigator.mediaDevices.getUserMedia = async (c) => { const s = await getUserMedia(c); __streams.push(s); return s; };
window.AudioContext = class extends AudioContext { constructor(...a) { super(...a); __contexts.push(this); } };
"""
AUDIO_RELEASED = ("() => [__streams.length, __contexts.length, __streams.every(s => s.getTracks().every("
                  "t => t.readyState === 'ended')), __contexts.every(c => c.state === 'closed')]")


def write_tones_with_pauses(root: Path, extra: int = 80, seed: int = 1) -> Path:
    """test_asr_task's tone recordings, and ``extra`` more in the train split with up to a
    second of quiet (digital silence or faint noise) around their words, at most 1.95 s in all.
    A live stream starts and ends in quiet, which the recogniser must learn to hear as nothing:
    trained on the tones alone it hears words in a second of it."""
    from omniformer.data.audio import write_audio
    manifest = write_tones(root)
    rng, lines = random.Random(seed), []
    for i in range(extra):
        text = " ".join(rng.choice(TONE_WORDS) for _ in range(1 if rng.random() < 0.6 else 2))
        wave = speak(text, rng)
        room = max(0.0, 1.95 - len(wave) / RATE)
        before = rng.uniform(0, room)
        after = rng.uniform(0, room - before)
        level, noise = rng.choice([0.0, 0.003, 0.01]), np.random.default_rng(rng.randint(0, 10**6))
        pad = lambda s: (level * noise.standard_normal(int(RATE * s))).astype(np.float32)  # noqa: E731
        name = f"wav/pause-{i}.wav"
        write_audio(root / name, np.concatenate([pad(before), wave, pad(after)]), RATE)
        lines.append({"id": f"pause-{i}", "audio": name, "text": text, "split": "train"})
    with manifest.open("a") as f:
        f.write("".join(json.dumps(line) + "\n" for line in lines))
    return manifest


def wav_file(path: Path, wave: np.ndarray, rate: int = RATE) -> Path:
    import soundfile as sf
    sf.write(path, wave, rate, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def asr_model(tmp_path_factory) -> tuple[Path, Path]:
    """(best checkpoint, manifest) of a tone recogniser trained here (~15 s); its test split
    (tone "speech" it has never heard) are the page's examples."""
    from omniformer.tasks.asr import TASK
    root = tmp_path_factory.mktemp("asr")
    manifest = write_tones_with_pauses(root)
    return TASK.train(tiny_cfg(root / "run", manifest, task={"words": "train"}), progress=False), manifest


@pytest.fixture(scope="module")
def asr_server(asr_model):
    from omniformer.serve.app import create_app
    best, manifest = asr_model
    with ServerThread(create_app(best, examples_manifest=manifest)) as server:
        yield server


@pytest.fixture(scope="module")
def busy_asr_server(asr_model):
    """The same model on a server that takes no live streams."""
    from omniformer.serve.app import create_app
    with ServerThread(create_app(asr_model[0], max_streams=0)) as server:
        yield server


@pytest.fixture(scope="module")
def short_asr_server(asr_model):
    """The same model on a server whose live streams may last 2 s."""
    from omniformer.serve.app import create_app
    with ServerThread(create_app(asr_model[0], max_stream_seconds=2.0)) as server:
        yield server


@pytest.fixture(scope="module")
def live_recording(tmp_path_factory) -> tuple[Path, float]:
    """(the file the fake microphone plays, its seconds): a second of silence, "cab dad abc", a
    second of silence; 48 kHz 16-bit WAV, as a microphone records (Chromium takes 8 kHz too).
    Digital silence, as after the file: the tiny recogniser hears words in seconds of faint
    noise (what follows a file of noisy quiet), even trained with pauses."""
    import soxr
    silence = np.zeros(RATE, np.float32)
    wave = np.concatenate([silence, speak(LIVE_TEXT, random.Random(11)), silence])
    path = wav_file(tmp_path_factory.mktemp("microphone") / "speech.wav", soxr.resample(wave, RATE, 48000), 48000)
    return path, len(wave) / RATE


@pytest.fixture(scope="module")
def live_browser(playwright, live_recording):
    """A Chromium whose microphone plays ``live_recording`` once (then silence)."""
    args = [*CHROMIUM_ARGS, f"--use-file-for-fake-audio-capture={live_recording[0]}%noloop"]
    b = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=args)
    yield b
    b.close()


@pytest.fixture
def asr_page(browser, asr_server):
    with open_page(browser, asr_server, 0) as page:
        yield page


def _transcript_shown(page, how: str) -> str:
    """Waits for a finished transcript whose meta line says ``how``; no error shown."""
    expect = sync_api.expect
    expect(page.locator("#answer-meta")).to_contain_text(f"{how} · ", timeout=15_000)
    expect(page.locator("#answer-meta")).to_contain_text(" s of audio")
    assert page.locator("#error").is_hidden(), page.locator("#error").inner_text()
    return page.locator("#transcript").inner_text().strip()


def _word_times(page) -> list[tuple[str, float, float]]:
    """The listed words with their start and end ("cab 0.08–0.44 s"), checked in order."""
    words = []
    for item in page.locator("#words li").all():
        word = item.locator(".word").inner_text()
        start, end = item.locator(".time").inner_text().removesuffix(" s").split("–")
        words.append((word, float(start), float(end)))
    assert all(0 <= s <= e for _, s, e in words), words
    assert [s for _, s, _ in words] == sorted(s for _, s, _ in words), words
    return words


def test_asr_panel_transcribes_an_uploaded_recording(asr_page, tmp_path):
    page, expect = asr_page, sync_api.expect
    expect(page.get_by_role("heading", name="Transcribe speech")).to_be_visible()
    expect(page.get_by_role("heading", name="Recording", exact=True)).to_be_visible()
    expect(page.get_by_role("heading", name="Transcript", exact=True)).to_be_visible()
    expect(page.locator("#model-name")).to_contain_text("beam decoder · 7 words")
    # Only what a recogniser needs: no image card, question box, text box or label bars.
    assert page.locator("#image-input, #drop, #question, #text, #bars").count() == 0
    expect(page.get_by_role("button", name="Transcribe live")).to_be_enabled()  # 127.0.0.1 is a secure context
    expect(page.locator("#result")).to_have_attribute("aria-live", "polite")
    audio = wav_file(tmp_path / "speech.wav", speak("cab dad", random.Random(7)))
    page.set_input_files("#audio-input", str(audio))  # transcribed at once
    expect(page.locator("#audio-row")).to_be_visible()
    assert _transcript_shown(page, "from the recording") == "cab dad"
    words = _word_times(page)
    assert [w for w, _, _ in words] == ["cab", "dad"] and words[1][1] >= words[0][2], words


def test_asr_example_in_one_click_and_screenshot(asr_page):
    page, expect = asr_page, sync_api.expect
    examples = page.locator("#examples li")
    expect(examples).to_have_count(8)  # at most 8, different transcripts first
    expect(page.locator("#examples-hint")).to_contain_text("true transcript")
    first = examples.nth(0)
    expect(first.locator(".thumb")).to_have_text("♪")
    true = first.locator(".q").inner_text().strip().strip("“”")  # as the manifest has it: "CAB CD."
    first.get_by_role("button").click()
    heard = _transcript_shown(page, "from the recording")
    # Held-out tone speech is transcribed exactly (test_asr_task: CER < 5%), so: a tick.
    expect(page.locator("#answer-meta")).to_contain_text(f'true transcript "{true}" ✓')
    assert heard == true.lower().rstrip(".")
    assert [w for w, _, _ in _word_times(page)] == heard.split()
    expect(page.locator("#audio-status")).to_contain_text("Example recording")
    if not SCREENSHOT_ASR.exists():
        SCREENSHOT_ASR.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT_ASR), full_page=True)
        assert SCREENSHOT_ASR.stat().st_size > 10_000


def test_asr_bad_file_shows_the_servers_message(asr_page, tmp_path):
    page, expect = asr_page, sync_api.expect
    fake = tmp_path / "speech.wav"
    fake.write_bytes(b"%PDF-1.4 not audio")
    page.set_input_files("#audio-input", str(fake))
    expect(page.locator("#error")).to_contain_text("the file is a PDF document, not audio")
    expect(page.locator("#error")).to_have_attribute("role", "alert")


def test_asr_records_with_the_microphone(asr_page):
    """Recording (fake microphone: a beep) -> WAV in JS at the model's 8 kHz -> transcribed at once."""
    page, expect = asr_page, sync_api.expect
    record = page.locator("#record")
    record.click()
    expect(record).to_have_attribute("aria-pressed", "true")
    expect(page.locator("#live")).to_be_disabled()  # one user of the microphone at a time
    page.wait_for_timeout(1000)
    record.click()
    expect(page.locator("#audio-status")).to_have_text("Recording ready.", timeout=10_000)
    _transcript_shown(page, "from the recording")
    expect(page.locator("#live")).to_be_enabled()


def test_asr_live_transcription_from_the_microphone(live_browser, asr_server, live_recording):
    """The fake microphone plays "cab dad abc" between two seconds of quiet: partial transcripts
    while it plays (the newest words dimmed), then Stop, and the final one with word times."""
    expect = sync_api.expect
    _, seconds = live_recording
    with open_page(live_browser, asr_server, 0, init_script=TRACK_AUDIO) as page:
        live = page.locator("#live")  # its name goes from "Transcribe live" to "Stop" and back
        page.get_by_role("button", name="Transcribe live").click()
        expect(live).to_have_attribute("aria-pressed", "true")
        expect(page.locator("#live-label")).to_have_text("Stop")
        expect(page.locator("#result")).to_have_attribute("aria-live", "off")  # announced at the end
        # Polled from Python while the file plays (the page's CSP forbids string evaluation).
        partials, tentative = [], False
        deadline = time.monotonic() + seconds + 1.0
        while time.monotonic() < deadline:
            meta = page.locator("#answer-meta").inner_text()
            text = page.locator("#transcript").inner_text().strip()
            if meta.startswith("live ·") and text != "Listening…" and (not partials or partials[-1] != text):
                partials.append(text)
            tentative = tentative or bool(page.locator("#transcript .tentative").inner_text().strip()
                                          if page.locator("#transcript .tentative").count() else "")
            page.wait_for_timeout(100)
        assert partials and tentative, partials
        page.get_by_role("button", name="Stop").click()
        final = _transcript_shown(page, "live")
        assert final == LIVE_TEXT, (final, partials)
        assert page.locator("#transcript .tentative").count() == 0
        words = _word_times(page)
        assert [w for w, _, _ in words] == LIVE_TEXT.split()
        assert 0.8 < words[0][1] < 1.6 and words[-1][2] < seconds, words  # after the second of quiet
        expect(live).to_have_attribute("aria-pressed", "false")
        expect(page.locator("#live-label")).to_have_text("Transcribe live")
        expect(page.locator("#live-status")).to_have_text("Live transcription finished.")
        expect(page.locator("#result")).to_have_attribute("aria-live", "polite")
        assert page.evaluate(AUDIO_RELEASED) == [1, 1, True, True]


def test_asr_live_refused_and_lost_connections_are_shown(browser, busy_asr_server, asr_server):
    """A server with no stream free says so (and closes); a connection lost before the final
    transcript is an error too. Either way the page lets go of the microphone."""
    expect = sync_api.expect
    with open_page(browser, busy_asr_server, 0, init_script=TRACK_AUDIO) as page:
        page.get_by_role("button", name="Transcribe live").click()
        expect(page.locator("#error")).to_contain_text("live transcription is off on this server")
        expect(page.locator("#live-label")).to_have_text("Transcribe live")
        assert page.evaluate(AUDIO_RELEASED) == [1, 1, True, True]

    def drop_after_a_while(ws):  # the server's "ready", a partial, then gone without a final
        ws.send(json.dumps({"type": "ready", "model": "m", "sample_rate": 48000, "model_sample_rate": 8000,
                            "decoder": "beam", "max_seconds": 900}))
        received = []

        def on_message(message):
            received.append(message)
            if len(received) == 3:
                ws.send(json.dumps({"type": "partial", "text": "cab d", "stable": "cab", "seconds": 0.3}))
            if len(received) == 5:
                ws.close(code=1011, reason="gone")
        ws.on_message(on_message)

    with open_page(browser, asr_server, 0, init_script=TRACK_AUDIO) as page:
        page.route_web_socket("**/v1/transcribe/stream*", drop_after_a_while)
        page.get_by_role("button", name="Transcribe live").click()
        expect(page.locator("#error")).to_contain_text("closed before the final transcript (code 1011)")
        expect(page.locator("#transcript")).to_have_text("cab d")  # the partial stays, as it was heard
        expect(page.locator("#live-label")).to_have_text("Transcribe live")
        assert page.evaluate(AUDIO_RELEASED) == [1, 1, True, True]


def test_asr_live_stops_before_the_servers_limit(browser, short_asr_server):
    """The page stops by itself just before the stream's max_seconds: a transcript, no error."""
    expect = sync_api.expect
    with open_page(browser, short_asr_server, 0, init_script=TRACK_AUDIO) as page:
        page.get_by_role("button", name="Transcribe live").click()
        expect(page.locator("#live-status")).to_contain_text("up to 1.5 s")
        _transcript_shown(page, "live")  # no click on Stop
        seconds = float(page.locator("#answer-meta").inner_text().split(" · ")[1].removesuffix(" s of audio"))
        assert 1.4 <= seconds <= 2.0, seconds
        expect(page.locator("#live-status")).to_have_text("Live transcription finished (stopped at the 1.5 s limit).")
        assert page.evaluate(AUDIO_RELEASED) == [1, 1, True, True]


def test_asr_live_needs_audio_worklet(browser, asr_server):
    """Where the browser has no AudioWorklet (or the page is not a secure context), the live
    button is off and the page says why; uploads still work."""
    expect = sync_api.expect
    with open_page(browser, asr_server, 0, init_script="delete window.AudioWorkletNode;") as page:
        expect(page.get_by_role("button", name="Transcribe live")).to_be_disabled()
        expect(page.locator("#live-status")).to_contain_text("lacks AudioWorklet")
        expect(page.get_by_role("button", name="Record")).to_be_enabled()


# ---------------------------------------------------------------------------------------------
# The text-writing panels (tasks "translate" and "caption"): streamed in token by token
# ---------------------------------------------------------------------------------------------

# Every text #output shows, in order (from a MutationObserver set up before the page's script).
# Every text put in #output, in order, and whether the cursor came with it (more to come): from
# the mutation records, which keep each change even when several tokens arrive in one chunk.
TRACK_OUTPUT = """
window.__outputs = [];
document.addEventListener("DOMContentLoaded", () => {
  new MutationObserver((records) => {
    for (const r of records) {
      if (r.type !== "childList" || r.target.id !== "output" || !r.addedNodes.length) continue;
      const nodes = [...r.addedNodes];
      __outputs.push([nodes.filter((n) => n.nodeType === 3).map((n) => n.data).join(""),
                      String(nodes.some((n) => n.className === "cursor"))]);
    }
  }).observe(document.getElementById("panel"), { childList: true, subtree: true });
});
"""


@pytest.fixture(scope="module")
def translate_server(tmp_path_factory):
    from omniformer.serve.app import create_app
    with ServerThread(create_app(build_translator(tmp_path_factory.mktemp("translate") / "model"))) as server:
        yield server


@pytest.fixture(scope="module")
def caption_server(tmp_path_factory):
    from omniformer.serve.app import create_app
    with ServerThread(create_app(build_captioner(tmp_path_factory.mktemp("caption") / "model"))) as server:
        yield server


def _streamed(page, expected: str) -> list[str]:
    """Waits for ``expected`` as the finished text; returns the texts shown while it streamed,
    checked to grow token by token to it."""
    expect = sync_api.expect
    expect(page.locator("#output")).to_have_text(expected, timeout=15_000)
    expect(page.locator("#output")).to_have_attribute("data-streaming", "false")
    expect(page.locator("#answer-meta")).to_contain_text(" ms")
    assert page.locator("#error").is_hidden(), page.locator("#error").inner_text()
    shown = page.evaluate("() => __outputs")
    start = max(i for i, (text, streaming) in enumerate(shown) if text == "" and streaming == "true")
    texts = list(dict.fromkeys(text for text, streaming in shown[start:] if streaming == "true" and text))
    assert len(texts) >= 3 and texts[-1] == expected, texts  # several tokens, one after the other
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:])), texts
    return texts


def test_translate_panel_translates_as_you_type(browser, translate_server):
    expect = sync_api.expect
    with open_page(browser, translate_server, 0, init_script=TRACK_OUTPUT) as page:
        expect(page.get_by_role("heading", name="Translate a text")).to_be_visible()
        expect(page.locator("#model-name")).to_contain_text("test-translate")
        assert page.locator("#image-input, #record, #bars").count() == 0
        source, target = PAIRS[7]
        page.get_by_label("Type a text to translate").fill(source)  # no click: typing translates
        _streamed(page, target)
        expect(page.locator("#answer-meta")).to_contain_text("tokens ·")
        # Enter translates at once; a text past the model's positions says only its start was read.
        box = page.get_by_label("Type a text to translate")
        box.fill(" ".join(s for s, _ in PAIRS[:4]))
        box.press("Enter")
        expect(page.locator("#answer-meta")).to_contain_text("only the start was read: the model reads 12 word pieces")
        box.fill(PAIRS[20][0])
        page.get_by_role("button", name="Translate", exact=True).click()
        _streamed(page, PAIRS[20][1])
        box.fill("")
        box.press("Enter")
        expect(page.locator("#error")).to_contain_text("Type a text to translate first")


def test_translate_panel_shows_the_servers_message(browser, translate_server):
    expect = sync_api.expect
    with open_page(browser, translate_server, 0) as page:
        page.route("**/v1/generate", lambda route: route.fulfill(
            status=503, content_type="application/json",
            body=json.dumps({"error": {"type": "overloaded", "message": "all 8 generation streams are in use"}})))
        box = page.get_by_label("Type a text to translate")
        box.fill("ein hund")
        box.press("Enter")
        expect(page.locator("#error")).to_contain_text("all 8 generation streams are in use")


def test_caption_panel_captions_a_chosen_image(browser, caption_server, tmp_path):
    expect = sync_api.expect
    with open_page(browser, caption_server, 0, init_script=TRACK_OUTPUT) as page:
        expect(page.get_by_role("heading", name="Caption an image")).to_be_visible()
        assert page.locator("#record, #source, #bars").count() == 0  # an image-only captioner
        expect(page.locator("#result-hint")).to_have_text("Drop or choose an image to see its caption.")
        image = tmp_path / "shape.png"
        image.write_bytes(shape_png("blue", "square"))
        page.set_input_files("#image-input", str(image))  # captioned at once
        expect(page.locator("#preview")).to_be_visible()
        _streamed(page, "a blue square")
        image.write_bytes(shape_png("red", "circle"))
        page.set_input_files("#image-input", str(image))
        _streamed(page, "a red circle")
        page.get_by_role("button", name="Caption", exact=True).click()
        _streamed(page, "a red circle")
        fake = tmp_path / "fake.png"
        fake.write_bytes(b"%PDF-1.4 not an image")
        page.set_input_files("#image-input", str(fake))
        expect(page.locator("#error")).to_contain_text("not an image")
