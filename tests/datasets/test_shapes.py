"""ShapesWorld: answers and captions are true, balanced, deterministic; images and speech sane.

Every answer and caption is checked against geometry recomputed here from the scene metadata
(the test does not use the generator's helpers), by parsing the question or caption text.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from omniformer.datasets.shapes import ShapesConfig
from omniformer.datasets.shapes import ANSWERS, COLOURS, FAMILIES, SHAPES, generate_shapes
from omniformer.datasets.shapes.language import vocabulary

NUM = ["zero", "one", "two", "three", "four", "five", "six"]
BANK = Path(__file__).resolve().parents[2] / "omniformer" / "datasets" / "shapes" / "bank"


def read(manifest: Path) -> list[dict]:
    return [json.loads(line) for line in manifest.read_text().splitlines()]


@pytest.fixture(scope="module")
def free(tmp_path_factory):
    out = tmp_path_factory.mktemp("free")
    manifest = generate_shapes(out, ShapesConfig(images=300, seed=1), workers=2, progress=False)
    return manifest, read(manifest)


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    out = tmp_path_factory.mktemp("grid")
    manifest = generate_shapes(out, ShapesConfig(images=60, layout="grid", grid=4, seed=2), workers=1, progress=False)
    return manifest, read(manifest)


# ---- independent geometry ---------------------------------------------------------------------

class Scene:
    def __init__(self, objects: list[dict], size: int = 64):
        self.objects, self.size = objects, size
        self.margin = 2.0 * size / 64  # the documented ambiguity margin: 2 px at 64 px
        self.by_colour = {o["colour"]: o for o in objects}

    def side(self, colour: str, axis: str) -> str:
        """left/right (axis x) or top/bottom (axis y); asserts the object is clear of the midline."""
        offset = self.by_colour[colour][axis] - self.size / 2
        assert abs(offset) >= self.margin, f"{colour} sits on the midline ({offset:+.1f} px)"
        return ("left" if offset < 0 else "right") if axis == "x" else ("top" if offset < 0 else "bottom")

    def extreme_shape(self, colour: str, furthest: bool) -> str:
        me = self.by_colour[colour]
        dist = sorted((math.dist((o["x"], o["y"]), (me["x"], me["y"])), o["shape"])
                      for o in self.objects if o is not me)
        if furthest:
            dist = dist[::-1]
        if len(dist) > 1:
            gap = abs(dist[0][0] - dist[1][0])
            assert gap >= max(0.1 * min(dist[0][0], dist[1][0]), self.margin), f"ambiguous: {dist[:2]}"
        return dist[0][1]

    def same_shape(self, colour: str) -> int:  # counts the object itself
        return sum(o["shape"] == self.by_colour[colour]["shape"] for o in self.objects)

    def count(self, shape: str | None = None) -> int:
        return sum(shape is None or o["shape"] == shape for o in self.objects)

    def has(self, colour: str, shape: str) -> bool:
        return colour in self.by_colour and self.by_colour[colour]["shape"] == shape


def expected_answer(question: str, scene: Scene) -> tuple[str, str]:
    """(family, answer) from the question text alone."""
    rules = [
        (r"what shape is the (\w+) object\?", "shape", lambda c: scene.by_colour[c]["shape"]),
        (r"is the (\w+) object on the left or the right\?", "horizontal", lambda c: scene.side(c, "x")),
        (r"is the (\w+) object at the top or the bottom\?", "vertical", lambda c: scene.side(c, "y")),
        (r"what shape is the object closest to the (\w+) object\?", "closest",
         lambda c: scene.extreme_shape(c, furthest=False)),
        (r"what shape is the object furthest from the (\w+) object\?", "furthest",
         lambda c: scene.extreme_shape(c, furthest=True)),
        (r"how many objects have the same shape as the (\w+) object\?", "count_shape",
         lambda c: NUM[scene.same_shape(c)]),
        (r"how many objects are there\?", "count", lambda: NUM[scene.count()]),
        (r"how many (\w+)s are there\?", "count", lambda s: NUM[scene.count(s)]),
        (r"is there an? (\w+) (\w+)\?", "exists", lambda c, s: "yes" if scene.has(c, s) else "no"),
    ]
    for pattern, family, answer in rules:
        if m := re.fullmatch(pattern, question):
            return family, answer(*m.groups())
    raise AssertionError(f"unrecognised question {question!r}")


def caption_is_true(caption: str, scene: Scene) -> str:
    """Asserts the caption holds for the scene; returns its family."""
    def rel(a: dict, b: dict, relation: str) -> bool:
        m = scene.margin
        return {"left of": b["x"] - a["x"] >= m, "right of": a["x"] - b["x"] >= m,
                "above": b["y"] - a["y"] >= m, "below": a["y"] - b["y"] >= m}[relation]

    if m := re.fullmatch(r"there is no (\w+) (\w+)", caption):
        assert not scene.has(*m.groups()), caption
        return "absent"
    if m := re.fullmatch(r"there is one (\w+)", caption):
        assert scene.count(m[1]) == 1, caption
        return "count"
    if m := re.fullmatch(r"there is an? (\w+) (\w+)", caption):
        assert scene.has(*m.groups()), caption
        return "attribute"
    if m := re.fullmatch(r"there are (\w+) objects", caption):
        assert NUM[scene.count()] == m[1], caption
        return "count"
    if m := re.fullmatch(r"there are (\w+) (\w+)s", caption):
        assert (NUM[scene.count(m[2])] if scene.count(m[2]) else "no") == m[1], caption
        return "count"
    if m := re.fullmatch(r"the (\w+) object is a (\w+)", caption):
        assert scene.has(*m.groups()), caption
        return "attribute"
    if m := re.fullmatch(r"the (\w+) object is on the (left|right)", caption):
        assert scene.side(m[1], "x") == m[2], caption
        return "horizontal"
    if m := re.fullmatch(r"the (\w+) object is at the (top|bottom)", caption):
        assert scene.side(m[1], "y") == m[2], caption
        return "vertical"
    if m := re.fullmatch(r"the object (closest to|furthest from) the (\w+) object is a (\w+)", caption):
        assert scene.extreme_shape(m[2], furthest=m[1] == "furthest from") == m[3], caption
        return "closest" if m[1] == "closest to" else "furthest"
    if m := re.fullmatch(r"(\w+) other objects? (?:has|have) the same shape as the (\w+) object", caption):
        assert (NUM[scene.same_shape(m[2]) - 1] if scene.same_shape(m[2]) > 1 else "no") == m[1], caption
        return "count_shape"
    if m := re.fullmatch(r"the (\w+) (\w+) is (left of|right of|above|below) the (\w+) (\w+)", caption):
        assert scene.has(m[1], m[2]) and scene.has(m[4], m[5]), caption
        assert rel(scene.by_colour[m[1]], scene.by_colour[m[4]], m[3]), caption
        return "relation"
    raise AssertionError(f"unrecognised caption {caption!r}")


# ---- correctness ------------------------------------------------------------------------------

def test_every_answer_is_correct(free):
    _, samples = free
    seen = Counter()
    for s in (s for s in samples if "question" in s):
        family, answer = expected_answer(s["question"], Scene(s["meta"]["objects"]))
        assert (s["meta"]["family"], s["answer"]) == (family, answer), s["id"]
        assert s["meta"]["relational"] == FAMILIES[family] and s["answer"] in ANSWERS
        seen[family] += 1
    assert set(seen) == set(FAMILIES)
    assert 6 <= sum(seen.values()) / 300 <= 8  # about one question per family per image


def test_every_caption_is_true(free):
    _, samples = free
    families = Counter()
    captions_per_image = Counter()
    for s in (s for s in samples if "text" in s):
        family = caption_is_true(s["text"], Scene(s["meta"]["objects"]))
        assert family == s["meta"]["family"], s["text"]
        families[family] += 1
        captions_per_image[s["image"]] += 1
    assert min(captions_per_image.values()) >= 3 and len(captions_per_image) == 300
    assert set(families) >= {"attribute", "count", "relation", "horizontal", "vertical",
                             "closest", "furthest", "count_shape"}


def test_answers_balanced_within_each_family(free):
    _, samples = free
    counts: dict[str, Counter] = defaultdict(Counter)
    for s in samples:
        if "question" in s:
            counts[s["meta"]["family"]][s["answer"]] += 1
    assert set(counts["count_shape"]) == {"one", "two", "three", "four", "five", "six"}
    assert set(counts["count"]) == set(NUM)
    for family, c in counts.items():
        low, high = min(c.values()), max(c.values())
        assert high <= 1.5 * low + 15, (family, dict(c))  # the balancer's bound, summed over 3 splits


# ---- scenes and images ------------------------------------------------------------------------

def test_images_decode_and_objects_do_not_overlap(free):
    manifest, samples = free
    scenes = {s["image"]: s["meta"]["objects"] for s in samples}
    assert len(scenes) == 300
    for image, objects in scenes.items():
        with Image.open(manifest.parent / image) as img:
            assert img.size == (64, 64) and img.mode == "RGB"
        assert 2 <= len(objects) <= 6
        assert len({o["colour"] for o in objects}) == len(objects)  # each colour at most once
        boxes = [(o["x"] - o["size"] / 2, o["y"] - o["size"] / 2, o["size"]) for o in objects]
        for b in boxes:
            assert 0 <= b[0] and b[0] + b[2] <= 64 and 0 <= b[1] and b[1] + b[2] <= 64
            assert 0.15 * 64 - 1 <= b[2] <= 0.22 * 64 + 1
        for i, (ax, ay, asz) in enumerate(boxes):
            for bx, by, bsz in boxes[i + 1:]:
                assert ax + asz <= bx or bx + bsz <= ax or ay + asz <= by or by + bsz <= ay


def test_pixels_match_the_metadata(free):
    manifest, samples = free
    colours = {"red": (220, 40, 40), "blue": (40, 80, 220)}
    s = next(s for s in samples if any(o["colour"] in colours for o in s["meta"]["objects"]))
    pixels = np.asarray(Image.open(manifest.parent / s["image"]))
    for o in s["meta"]["objects"]:
        if o["colour"] in colours:  # the object's centre pixel has its colour
            assert tuple(pixels[int(o["y"]), int(o["x"])]) == colours[o["colour"]]


def test_grid_objects_sit_inside_their_cells(grid):
    _, samples = grid
    cell = 64 / 4
    for objects in {s["image"]: s["meta"]["objects"] for s in samples}.values():
        cells = [tuple(o["cell"]) for o in objects]
        assert len(set(cells)) == len(cells)
        for o, (row, col) in zip(objects, cells):
            half = o["size"] / 2
            assert col * cell <= o["x"] - half and o["x"] + half <= (col + 1) * cell
            assert row * cell <= o["y"] - half and o["y"] + half <= (row + 1) * cell
    for s in (s for s in samples if "question" in s):  # answers hold in this layout too
        assert expected_answer(s["question"], Scene(s["meta"]["objects"]))[1] == s["answer"]


# ---- determinism and splits -------------------------------------------------------------------

def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode() + path.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    cfg = ShapesConfig(images=40, seed=3)
    a = generate_shapes(tmp_path / "a", cfg, workers=1, progress=False).parent
    b = generate_shapes(tmp_path / "b", cfg, workers=2, progress=False).parent  # worker count is irrelevant
    c = generate_shapes(tmp_path / "c", ShapesConfig(images=40, seed=4), workers=1, progress=False).parent
    assert digest(a) == digest(b)
    assert digest(a) != digest(c)


def test_splits_by_image(free):
    manifest, samples = free
    split_of = defaultdict(set)
    for s in samples:
        split_of[s["image"]].add(s["split"])
    assert all(len(v) == 1 for v in split_of.values())
    sizes = Counter(next(iter(v)) for v in split_of.values())
    assert sizes == {"train": 240, "val": 30, "test": 30}
    info = json.loads((manifest.parent / "info.json").read_text())
    assert info["counts"]["images"] == dict(sizes) and info["answers"] == ANSWERS


# ---- speech -----------------------------------------------------------------------------------

def spoken(samples):
    for s in samples:
        if "audio" in s:
            yield s, s["text"], s["audio"]
        if "question_audio" in s:
            yield s, s["question"], s["question_audio"]


def test_held_out_voice_only_in_test(free):
    manifest, samples = free
    info = json.loads((manifest.parent / "info.json").read_text())
    held = info["voices"]["held_out"]
    voices = defaultdict(Counter)
    for s, _, _ in spoken(samples):
        assert s["meta"]["held_out_voice"] == (s["meta"]["voice"] == held)
        voices[s["split"]][s["meta"]["voice"]] += 1
    assert held not in voices["train"] and held not in voices["val"]
    test_total = sum(voices["test"].values())
    assert 0.35 < voices["test"][held] / test_total < 0.65  # about half of the test's spoken items
    assert set(voices["train"]) == set(info["voices"]["train"]) and len(info["voices"]["train"]) == 4


def test_speech_decodes_at_16k_with_plausible_durations(free):
    manifest, samples = free
    files = {}
    for _, sentence, audio in spoken(samples):
        files.setdefault(audio, sentence)
    assert len(files) < sum(1 for _ in spoken(samples)) / 2  # shared, not one file per sample
    for audio, sentence in list(files.items())[::7]:
        data, rate = sf.read(manifest.parent / audio, dtype="float32")
        seconds, n_words = len(data) / rate, len(re.findall(r"[a-z]+", sentence))
        assert rate == 16000 and data.ndim == 1
        assert 0.5 <= seconds <= 8.0 and 0.15 * n_words <= seconds <= 0.75 * n_words + 0.6, (sentence, seconds)
        assert 0.01 < np.abs(data).max() < 1.0


def test_every_word_is_in_the_bank_for_every_voice(free):
    _, samples = free
    index = json.loads((BANK / "index.json").read_text())
    used = {w for _, sentence, _ in spoken(samples) for w in re.findall(r"[a-z]+", sentence)}
    used |= set(COLOURS) | set(SHAPES) | set(vocabulary())
    assert len(index["voices"]) >= 8  # ShapesConfig.voices allows up to 8
    for voice in index["voices"]:
        missing = used - set(voice["offsets"])
        assert not missing, (voice["name"], missing)
        info = sf.info(BANK / voice["file"])
        assert info.samplerate == 16000
        assert all(0 <= a < b <= info.frames for a, b in voice["offsets"].values())


def test_a_folder_made_with_other_settings_is_refused_with_the_override_that_opens_it(grid):
    """A recipe pointed at ShapesWorld made with other settings (the full recipe's folder for the
    asr-shapes recipe) is refused, naming what differs and the option that takes it as it is."""
    import yaml
    from omniformer.datasets.shapes import make
    manifest, _ = grid
    with pytest.raises(FileExistsError, match=r"images 60 \(asked: 300\)") as refused:
        make(manifest, {"images": 300, "layout": "grid", "grid": 4, "seed": 2}, progress=False)
    override = re.search(r"'--data\.dataset_options=(\{.*\})'", str(refused.value)).group(1)
    assert make(manifest, yaml.safe_load(override), progress=False) == manifest


def test_objects_come_back_from_their_metadata():
    from omniformer.datasets.shapes.scene import Obj, sample_scene
    rng = np.random.default_rng(0)
    for layout in ("free", "grid"):
        for _ in range(20):
            objects = sample_scene(rng, 64, 2, 6, layout)
            assert [Obj.from_meta(o.to_meta()) for o in objects] == objects, layout
