"""The classify task: it learns, it scores, its checkpoints load, its inputs are checked, its
route answers and refuses, its ONNX graph matches PyTorch."""
from __future__ import annotations

import argparse
import base64
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from omniformer.config import ConfigError, load_config
from omniformer.tasks.classify import (TASK, ClassifierModel, ClassifyConfig, ClassifyDataWarning, ClassifyPredictor,
                                       label_vocabulary, load_data)
from omniformer.train import checkpoint as ckpt

torch.set_num_threads(1)

SHAPES = ("circle", "square", "triangle")


def draw(shape: str, rng: random.Random, size: int = 16) -> tuple[Image.Image, str]:
    """One white-ish shape at a random place and size on black; and whether it is bright or dim."""
    im = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(im)
    r = rng.randint(3, 5)
    x, y = rng.randint(r, size - r - 1), rng.randint(r, size - r - 1)
    fill = rng.randint(140, 255)
    if shape == "circle":
        d.ellipse([x - r, y - r, x + r, y + r], fill=fill)
    elif shape == "square":
        d.rectangle([x - r, y - r, x + r, y + r], fill=fill)
    else:
        d.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=fill)
    return im, "bright" if fill > 200 else "dim"


def write_shapes(root: Path, train: int = 120, test: int = 30, seed: int = 0) -> Path:
    """A manifest of 3 classes of shapes (train and test splits, brightness in meta)."""
    rng, lines = random.Random(seed), []
    (root / "img").mkdir(parents=True, exist_ok=True)
    for split, n in (("train", train), ("test", test)):
        for i in range(n):
            for shape in SHAPES:
                im, brightness = draw(shape, rng)
                name = f"img/{split}_{shape}_{i}.png"
                im.save(root / name)
                lines.append({"id": f"{split}-{shape}-{i}", "image": name, "label": shape, "split": split,
                              "meta": {"brightness": brightness}})
    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return manifest


def write_manifest(path: Path, samples: list[dict]) -> Path:
    path.write_text("".join(json.dumps(s) + "\n" for s in samples))
    return path


TINY_MODEL = {"width": 32, "heads": 2, "depth": 1, "tower_depth": 0, "dropout": 0.0, "modalities": ["image"],
              "image": {"size": 16, "channels": 1, "patch_size": 4, "mean": [0.5], "std": [0.5]},
              "audio": {"n_mels": 16, "subsample": 4, "max_seconds": 1.0}, "text": {"max_len": 12}}


def tiny_cfg(out_dir: Path, manifest: Path | str, task: dict | None = None, steps: int = 250, **model):
    return load_config(overrides={
        "out_dir": str(out_dir), "task": task or {}, "model": {**TINY_MODEL, **model},
        "data": {"manifest": str(manifest), "augment": False, "vocab_size": 60},
        "finetune": {"steps": steps, "batch_size": 32, "lr": 3e-3, "warmup_steps": 10, "eval_every": steps,
                     "save_every": steps, "workers": 0, "progress": False, "log_every": 50}})


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(best checkpoint, manifest) of a classifier trained here on 360 shape images, val carved from train."""
    root = tmp_path_factory.mktemp("classify")
    manifest = write_shapes(root)
    cfg = tiny_cfg(root / "run", manifest, task={"val_fraction": 0.2, "groups": ["brightness"]}, steps=400)
    return TASK.train(cfg, progress=False), manifest


# -- learning and evaluation -------------------------------------------------------------------

def test_learns_to_tell_shapes_apart(trained):
    best, manifest = trained
    assert best.name == "best" and (best / ckpt.WEIGHTS).is_file()
    evaluation = TASK.evaluate(best, split="test", device="cpu")
    assert evaluation.samples == 90
    assert evaluation.metrics["accuracy"] >= 0.9, evaluation.metrics  # chance is 1/3


def test_evaluation_metrics_report_and_confusion_png(trained, tmp_path):
    best, manifest = trained
    evaluation = TASK.evaluate(best, manifest=manifest, split="test", device="cpu")
    m = evaluation.metrics
    assert m["top5"] == 1.0 and m["top5"] >= m["accuracy"]  # 3 labels: the top 5 hold every one
    assert {f"per_class/{s}" for s in SHAPES} <= set(m) and {"brightness/bright", "brightness/dim"} <= set(m)
    confusion = evaluation.details["confusion"]
    matrix = np.array(confusion["matrix"])
    assert confusion["labels"] == list(SHAPES) and matrix.shape == (3, 3) and matrix.sum() == 90
    assert np.trace(matrix) / 90 == pytest.approx(m["accuracy"])
    assert matrix.sum(1).tolist() == [30, 30, 30]
    as_json = evaluation.to_json()
    assert as_json["task"] == "classify" and "score" not in as_json and as_json["confusion"] == confusion
    text = TASK.report(evaluation, tmp_path)
    assert "accuracy" in text and "circle" in text and "brightness" in text and "true \\ predicted" in text
    with Image.open(tmp_path / "confusion.png") as im:
        assert im.format == "PNG" and im.width > 48 and im.height > 48


def test_val_split_is_carved_per_class_and_the_same_at_evaluation(trained):
    best, manifest = trained
    task = ClassifyConfig(val_fraction=0.2)
    data = load_data(manifest, task, seed=0)
    assert data.carved_val and len(data.splits["val"]) == 72 and len(data.splits["train"]) == 288
    assert sorted({s["label"] for s in data.splits["val"]}) == list(SHAPES)
    again = load_data(manifest, task, seed=0, labels=data.labels, check=("val",))
    assert [s["id"] for s in again.splits["val"]] == [s["id"] for s in data.splits["val"]]
    assert TASK.evaluate(best, split="val", device="cpu").samples == 72


def test_learns_tones_from_recordings(tmp_path):
    """Audio only: three pitches, recordings of different lengths at 8 kHz (resampled to 16 kHz)."""
    import soundfile as sf
    rng, samples = np.random.default_rng(0), []
    for split, n in (("train", 20), ("test", 6)):
        for i in range(n):
            for label, hz in (("low", 300), ("mid", 900), ("high", 2400)):
                t = np.arange(int(8000 * rng.uniform(0.2, 0.4))) / 8000
                wave = rng.uniform(0.2, 0.8) * np.sin(2 * np.pi * hz * t + rng.uniform(0, 6.3))
                name = f"{split}_{label}_{i}.wav"
                sf.write(tmp_path / name, (wave + 0.05 * rng.standard_normal(t.size)).astype(np.float32), 8000)
                samples.append({"id": name, "audio": name, "label": label, "split": split})
    manifest = write_manifest(tmp_path / "tones.jsonl", samples)
    cfg = tiny_cfg(tmp_path / "run", manifest, steps=100, modalities=["audio"])
    best = TASK.train(cfg, progress=False)
    evaluation = TASK.evaluate(best, split="test", device="cpu")
    assert evaluation.metrics["accuracy"] >= 0.9, evaluation.metrics
    predictor = ClassifyPredictor.load(best)
    assert predictor.inputs == ["audio"] and predictor.labels == ["high", "low", "mid"]
    t = np.arange(6400) / 16000  # a waveform at the model's rate
    assert predictor.classify(audio=(0.5 * np.sin(2 * np.pi * 300 * t)).astype(np.float32))[0][0] == "low"


# -- the predictor and the command line --------------------------------------------------------

def test_predictor_round_trip(trained):
    best, manifest = trained
    predictor = ClassifyPredictor.load(best)
    assert predictor.labels == list(SHAPES) and predictor.inputs == ["image"]
    samples = [json.loads(line) for line in manifest.read_text().splitlines()][-30:]
    path = manifest.parent / samples[0]["image"]
    by_path = predictor.classify(image=path, top_k=3)
    assert [label for label, _ in by_path] != [] and len(by_path) == 3
    assert by_path == sorted(by_path, key=lambda x: -x[1]) and sum(p for _, p in by_path) == pytest.approx(1, abs=1e-5)
    by_bytes = predictor.predict(image=path.read_bytes(), top_k=1)
    with Image.open(path) as pil:
        by_pil = predictor.classify(image=pil, top_k=1)
    assert by_bytes[0][0] == by_pil[0][0] == by_path[0][0]
    assert by_bytes[0][1] == pytest.approx(by_path[0][1], abs=1e-6)
    items = [predictor.prepare(image=manifest.parent / s["image"]) for s in samples]
    batched = predictor.classify_items(items, top_k=2)
    assert all(len(r) == 2 for r in batched)
    assert sum(r[0][0] == s["label"] for r, s in zip(batched, samples)) >= 24
    with pytest.raises(ValueError, match="at least one input"):
        predictor.classify()
    with pytest.raises(ValueError, match="not trained on audio"):
        predictor.classify(image=path, audio=np.zeros(1600, dtype=np.float32))


def test_predictor_refuses_a_checkpoint_of_another_task(tmp_path):
    ckpt.save_checkpoint(tmp_path / "qa", torch.nn.Linear(1, 1), {"task": "qa", "config": {}})
    with pytest.raises(ckpt.CheckpointError, match="'qa' model, not a classify model"):
        ClassifyPredictor.load(tmp_path / "qa")


def test_command_line_prediction(trained):
    best, manifest = trained
    predictor = TASK.load(best)
    parser = argparse.ArgumentParser()
    TASK.add_predict_arguments(parser)
    image = str(next((manifest.parent / "img").glob("test_square_*.png")))
    result = TASK.predict_from_args(predictor, parser.parse_args(["--image", image, "--top-k", "2"]))
    assert len(result["labels"]) == 2 and set(result["labels"][0]) == {"label", "probability"}
    json.dumps(result)
    assert result["labels"][0]["label"] in TASK.format_prediction(result)
    for bad in ("0", "4"):
        with pytest.raises(ValueError, match="--top-k: expected 1 to 3"):
            TASK.predict_from_args(predictor, parser.parse_args(["--image", image, "--top-k", bad]))
    with pytest.raises(ValueError, match="at least one input"):
        TASK.predict_from_args(predictor, parser.parse_args([]))
    with pytest.raises(ValueError, match="does not exist"):
        TASK.predict_from_args(predictor, parser.parse_args(["--image", "no/such.png"]))


def test_command_line_evaluate_predict_export(trained, tmp_path, capsys):
    from omniformer.cli import main
    best, manifest = trained
    image = str(next((manifest.parent / "img").glob("test_triangle_*.png")))
    assert main(["predict", "--model", str(best), "--image", image, "--top-k", "2", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["labels"]) == 2
    assert main(["predict", "--model", str(best), "--image", image, "--top-k", "7"]) == 2
    assert "--top-k: expected 1 to 3" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(best), "--workers", "0", "--json", str(tmp_path / "eval.json")]) == 0
    assert json.loads((tmp_path / "eval.json").read_text())["task"] == "classify"
    assert (tmp_path / "confusion.png").is_file()
    assert main(["export", "--model", str(best), "--out", str(tmp_path / "m.onnx")]) == 0
    assert json.loads((tmp_path / "m.onnx.json").read_text())["labels"] == list(SHAPES)


@pytest.mark.parametrize("recipe", ["mnist", "fsdd"])
def test_recipes_are_valid(recipe):
    from omniformer.config import recipe_path
    cfg = load_config(recipe_path(recipe))
    task = TASK.config(cfg)
    assert cfg.data.manifest.endswith("manifest.jsonl") and TASK.recipe == "mnist"
    model = ClassifierModel(cfg.model, 10, task).eval()
    batch = {"index": torch.arange(2)}
    if "image" in cfg.model.modalities:
        c = cfg.model.image
        batch.update(image=torch.randn(2, c.channels, c.size, c.size), image_mask=torch.ones(2, dtype=torch.bool))
    if "audio" in cfg.model.modalities:
        batch.update(audio=torch.randn(2, cfg.model.audio.n_mels, 50), audio_mask=torch.ones(2, 50, dtype=torch.bool))
    with torch.no_grad():
        assert model(batch)["logits"].shape == (2, 10)


# -- data and config checks --------------------------------------------------------------------

def test_label_vocabulary_sorts_integers_numerically():
    assert label_vocabulary(["10", "2", "1", "2"]) == ["1", "2", "10"]
    assert label_vocabulary(["b", "a", "10", "2"]) == ["10", "2", "a", "b"]


def test_bad_manifests_get_clear_messages(tmp_path):
    task = ClassifyConfig()
    base = [{"id": f"s{i}", "image": "x.png", "label": i % 2, "split": "train"} for i in range(6)]
    unlabelled = write_manifest(tmp_path / "unlabelled.jsonl", base + [{"id": "bare", "image": "x.png"}])
    with pytest.warns(ClassifyDataWarning, match=r"1 of 7 samples have no label and are skipped: 'bare'"):
        data = load_data(unlabelled, task)
    assert data.labels == ["0", "1"] and len(data.splits["train"]) == 6

    strangers = write_manifest(tmp_path / "strangers.jsonl",
                               base + [{"id": "v1", "image": "x.png", "label": "7", "split": "val"}])
    with pytest.raises(ValueError, match=r"strangers.jsonl: the val split has labels the train split lacks.*'7'.*'v1'"):
        load_data(strangers, task)

    single = write_manifest(tmp_path / "single.jsonl", base + [{"id": "lonely", "image": "x.png", "label": "z"}])
    with pytest.warns(ClassifyDataWarning, match=r"1 classes have a single training sample.*'z'.*'lonely'"):
        load_data(single, task)

    nothing = write_manifest(tmp_path / "nothing.jsonl", [{"id": "a", "image": "x.png"}])
    with pytest.raises(ValueError, match=r"nothing.jsonl: no sample has a label; the classify task needs a 'label'"):
        TASK.train(tiny_cfg(tmp_path / "run", nothing), progress=False)
    with pytest.raises(FileNotFoundError, match="absent.jsonl does not exist"):
        TASK.train(tiny_cfg(tmp_path / "run", tmp_path / "absent.jsonl"), progress=False)
    with pytest.raises(ConfigError, match="data.manifest"):
        TASK.train(tiny_cfg(tmp_path / "run", ""), progress=False)

    audio_only = write_manifest(tmp_path / "audio.jsonl", [{"id": "a", "audio": "a.wav", "label": "x"}] * 2)
    with pytest.raises(ValueError, match=r"no training sample has any of the fields \['image'\]"):
        TASK.train(tiny_cfg(tmp_path / "run", audio_only), progress=False)
    with pytest.raises(ConfigError, match=r"task.groups\[0\]: no labelled sample .* has 'speaker' in its meta"), \
            pytest.warns(ClassifyDataWarning):
        TASK.train(tiny_cfg(tmp_path / "run", unlabelled, task={"groups": ["speaker"]}), progress=False)


def test_task_config_errors_name_the_key(tmp_path):
    cfg = tiny_cfg(tmp_path, "m.jsonl", task={"groups": ["speaker", "speaker"]})
    with pytest.raises(ConfigError, match=r"task.groups\[1\]: 'speaker' is listed twice"):
        TASK.config(cfg)
    for section, pattern in [({"groups": [" "]}, r"task.groups\[0\]: empty"),
                             ({"val_fraction": 1.5}, r"task.val_fraction: must be in \[0, 1\)"),
                             ({"pooling": "max"}, r"task.pooling: 'max' is not one of"),
                             ({"inputs": ["video"]}, r"task.inputs\[0\]: 'video' is not one of"),
                             ({"poolng": "cls"}, r"unknown config key task.poolng")]:
        with pytest.raises(ConfigError, match=pattern):
            TASK.config(tiny_cfg(tmp_path, "m.jsonl", task=section))


def test_image_affine_augmentation_moves_training_images_only(tmp_path):
    """task.image_rotate/translate/scale: training images move (fresh draws, border-coloured
    fill, never a mirror), evaluation images stay put; bad values name the key."""
    from omniformer.tasks.classify.data import RandomAffine, classify_dataset
    manifest = write_shapes(tmp_path, train=4, test=1)
    samples = [s for s in load_data(manifest, ClassifyConfig()).splits["train"]]
    task = {"image_rotate": 15, "image_translate": 0.1, "image_scale": [0.9, 1.1]}
    cfg = tiny_cfg(tmp_path, manifest, task=task)
    config = TASK.config(cfg)
    train = classify_dataset(manifest, samples, cfg, config, None, list(SHAPES), train=True)
    test = classify_dataset(manifest, samples, cfg, config, None, list(SHAPES), train=False)
    assert isinstance(train.image, RandomAffine) and not isinstance(test.image, RandomAffine)
    draws = [train[0]["image"] for _ in range(3)]
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[1], draws[2])
    assert torch.equal(test[0]["image"], test[0]["image"])
    # The shape moved but the background (black) stays black: the fill is the border colour.
    assert draws[0].shape == test[0]["image"].shape and draws[0].min() == test[0]["image"].min()
    # A white border fills white; no move at all is the identity.
    white = Image.new("RGB", (16, 16), (255, 255, 255))
    ImageDraw.Draw(white).rectangle([6, 6, 9, 9], fill=(0, 0, 0))
    moved = np.asarray(RandomAffine(lambda im: im, rotate=30, translate=0.2, seed=1).move(white))
    assert moved[0, 0].tolist() == [255, 255, 255] and moved.min() < 128
    still = RandomAffine(lambda im: im).move(white)
    assert np.array_equal(np.asarray(still), np.asarray(white))
    for section, pattern in [({"image_rotate": -1}, r"task.image_rotate: must be in \[0, 180\], got -1"),
                             ({"image_translate": 1.0}, r"task.image_translate: must be in \[0, 1\)"),
                             ({"image_scale": [1.2, 0.8]}, r"task.image_scale: expected \[low, high\]")]:
        with pytest.raises(ConfigError, match=pattern):
            TASK.config(tiny_cfg(tmp_path, manifest, task=section))


# -- the model ---------------------------------------------------------------------------------

def multimodal_cfg(**task):
    return tiny_cfg(Path("unused"), "m.jsonl", task=task, modalities=["text", "image", "audio"], vocab_size=40)


def mixed_batch(B: int = 4) -> dict[str, torch.Tensor]:
    """Rows with different inputs: all three, image only, text + audio, audio only."""
    g = torch.Generator().manual_seed(0)
    batch = {"index": torch.arange(B), "text": torch.randint(5, 40, (B, 6), generator=g),
             "text_mask": torch.ones(B, 6, dtype=torch.bool), "image": torch.randn(B, 1, 16, 16, generator=g),
             "image_mask": torch.tensor([True, True, False, False]), "audio": torch.randn(B, 16, 30, generator=g),
             "audio_mask": torch.ones(B, 30, dtype=torch.bool), "label": torch.tensor([0, 1, 2, -100])}
    batch["text_mask"][[1, 3]] = False
    batch["audio_mask"][1] = False
    batch["audio_mask"][2, 20:] = False
    return batch


@pytest.mark.parametrize("pooling", ["cls", "mean", "both"])
def test_model_reads_any_mix_of_modalities(pooling):
    cfg = multimodal_cfg(pooling=pooling, label_smoothing=0.1)
    model = ClassifierModel(cfg.model, 3, TASK.config(cfg))
    out = model(mixed_batch())
    assert out["logits"].shape == (4, 3) and torch.isfinite(out["logits"]).all()
    assert torch.isfinite(out["loss"]) and 0 <= out["accuracy"] <= 1
    out["loss"].backward()
    assert model.head.net[0].weight.grad.abs().sum() > 0
    assert "loss" not in model({k: v for k, v in mixed_batch().items() if k != "label"})


def test_backbone_loads_from_a_pretraining_or_import_checkpoint(tmp_path):
    cfg = multimodal_cfg()
    holder = torch.nn.Module()
    holder.backbone = ClassifierModel(cfg.model, 3).backbone  # what 'omniformer import' writes: backbone.*
    ckpt.save_checkpoint(tmp_path / "imported", holder, {"task": "backbone"})
    image_only = tiny_cfg(tmp_path, "m.jsonl", vocab_size=40)
    model = ClassifierModel(image_only.model, 5)
    model.load_pretrained(tmp_path / "imported")  # the text and audio embedders are left out
    for name, tensor in model.backbone.state_dict().items():
        assert torch.equal(tensor, holder.backbone.state_dict()[name]), name
    wider = ClassifierModel(tiny_cfg(tmp_path, "m.jsonl", width=64).model, 5)
    with pytest.raises(ckpt.CheckpointError, match="shape mismatch"):
        wider.load_pretrained(tmp_path / "imported")


# -- serving -----------------------------------------------------------------------------------

def _png(trained) -> bytes:
    return next((trained[1].parent / "img").glob("test_circle_*.png")).read_bytes()


def test_route_answers_and_refuses_naming_the_field(trained):
    from fastapi.testclient import TestClient

    from omniformer.serve.app import create_app
    png = _png(trained)
    with TestClient(create_app(trained[0])) as client:
        ok = client.post("/v1/classify", files={"image": ("c.png", png, "image/png")}, data={"top_k": "2"})
        assert ok.status_code == 200, ok.text
        body = ok.json()
        assert len(body["labels"]) == 2 and body["labels"][0]["label"] in SHAPES and body["inputs"] == ["image"]
        assert body["labels"][0]["probability"] >= body["labels"][1]["probability"] and "time_ms" in body
        as_json = client.post("/v1/classify.json", json={"image": base64.b64encode(png).decode()})
        assert as_json.status_code == 200 and len(as_json.json()["labels"]) == 3  # top_k defaults to min(5, labels)
        assert as_json.json()["labels"][0]["label"] == body["labels"][0]["label"]
        info = client.get("/v1/model").json()
        assert info["task"] == "classify" and info["labels"] == list(SHAPES)

        def refused(response, status, field):
            assert response.status_code == status, response.text
            assert response.json()["error"].get("field") == field, response.text

        refused(client.post("/v1/classify", files={"top_k": (None, "1")}), 422, "image")
        refused(client.post("/v1/classify", files={"image": ("c.png", png)}, data={"top_k": "9"}), 422, "top_k")
        refused(client.post("/v1/classify", files={"image": ("c.png", b"%PDF-1.4 not an image")}), 415, "image")
        refused(client.post("/v1/classify", files={"image": ("c.png", png)}, data={"text": "a circle"}), 422, "text")
        refused(client.post("/v1/classify.json", json={"image": "%%%"}), 422, "image")
        refused(client.post("/v1/classify.json", json={"image": base64.b64encode(png).decode(), "colour": 1}),
                422, "colour")
        refused(client.post("/v1/classify.json", json={"image": 7}), 422, "image")
        refused(client.post("/v1/classify.json", json={}), 422, "image")


# -- ONNX --------------------------------------------------------------------------------------

def test_onnx_graph_matches_pytorch(tmp_path):
    from omniformer.data.text import Tokenizer
    from omniformer.interop.onnx import export_graph, onnx_session, run_onnx
    tokenizer = Tokenizer.train(["a red circle", "a blue square", "a green triangle"], vocab_size=40)
    cfg = multimodal_cfg(pooling="both")
    cfg.model.vocab_size = tokenizer.vocab_size
    torch.manual_seed(0)
    model = ClassifierModel(cfg.model, 3, TASK.config(cfg))
    predictor = ClassifyPredictor(model, cfg, list(SHAPES), tokenizer, model_id="tiny")
    graph = TASK.export_graph(predictor)
    assert list(graph.inputs) == ["text", "text_mask", "image", "image_mask", "audio", "audio_mask"]
    out = export_graph(graph, tmp_path / "classify.onnx")
    sidecar = json.loads(Path(str(out) + ".json").read_text())
    assert sidecar["labels"] == list(SHAPES) and sidecar["preprocessing"]["image"]["channels"] == 1
    session = onnx_session(out, threads=1)
    batch = mixed_batch()  # another batch size, text length and frame count than the trace's
    with torch.no_grad():
        expected = model(batch)["logits"].numpy()
    np.testing.assert_allclose(run_onnx(session, batch), expected, atol=1e-4, rtol=1e-4)
