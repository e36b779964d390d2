"""A modality added from this file alone: a 1-D sensor series stored as ``.npy``, registered at
run time, read by the manifest, the dataset and ``collate``, embedded by a small Conv1d, trained
by the classify task to tell sines from square waves from noise, evaluated, used through the
predictor and the command line, checked by ``data check`` and exported to ONNX. Also the
registry's own errors. docs/adding-a-modality.md walks through the same modality."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from omniformer.config import ConfigError, load_config
from omniformer.data.batching import collate
from omniformer.data.manifest import check_manifest, read_manifest
from omniformer.modalities.base import Embedder, Modality
from omniformer.registry import (MODALITIES, UnknownModality, get_modality, get_task, modality_names,
                                 register_modality)

torch.set_num_threads(1)


# -- the modality: what a user writes ------------------------------------------------------------

@dataclass
class SensorConfig:
    """``model.options.sensor``: how many channels a series has and the stem's kernel."""
    channels: int = 1
    kernel: int = 5

    def validate(self) -> None:
        if self.channels < 1:
            raise ConfigError(f"channels: must be >= 1, got {self.channels}")
        if self.kernel < 1 or self.kernel % 2 == 0:
            raise ConfigError(f"kernel: must be odd and >= 1, got {self.kernel}")


class SensorEmbedder(Embedder):
    """A series (B, channels, T) -> ceil(T/8) tokens through three stride-2 Conv1d layers; the
    padding is zeroed before each one, so it never reaches a real token's value."""

    modality = "sensor"

    def __init__(self, cfg):
        super().__init__(cfg)
        options = SENSOR.options(cfg)
        k, widths = options.kernel, [options.channels, cfg.width, cfg.width, cfg.width]
        self.convs = nn.ModuleList(nn.Conv1d(a, b, k, stride=2, padding=k // 2) for a, b in zip(widths, widths[1:]))
        self.act = nn.GELU()

    def forward(self, batch, token_mask=None):
        x, mask = batch["sensor"], batch["sensor_mask"].bool()
        for conv in self.convs:
            x = self.act(conv(x * mask[:, None, :].to(x.dtype)))
            mask = mask[:, ::2]
        return self.finish(self.apply_token_mask(x.transpose(1, 2), token_mask), mask)


class SensorModality(Modality):
    """``sensor`` (B, channels, T) float, zero-padded along time; ``sensor_mask`` (B, T)."""

    name = "sensor"
    fields = ("sensor",)
    embedder = SensorEmbedder
    Config = SensorConfig
    value_axes = {0: "batch", 2: "sensor_len"}
    mask_axes = {0: "batch", 1: "sensor_len"}

    def load(self, source, model):
        series = np.load(source, allow_pickle=False) if isinstance(source, (str, Path)) else np.asarray(source)
        channels = self.options(model).channels
        if series.ndim not in (1, 2) or series.size == 0 or series.size % channels:
            raise ValueError(f"expected a non-empty series of {channels} channel(s), got shape {series.shape}")
        if not np.isfinite(series).all():
            raise ValueError("the series has NaN or infinite values")
        return torch.from_numpy(np.ascontiguousarray(series, dtype=np.float32).reshape(channels, -1))

    def example_inputs(self, model, batch, generator, length=None):
        T = length or 64
        lengths = torch.randint(1, T + 1, (batch,), generator=generator)
        lengths[0] = T
        return {"sensor": torch.randn(batch, self.options(model).channels, T, generator=generator),
                "sensor_mask": torch.arange(T)[None, :] < lengths[:, None]}


SENSOR = SensorModality()


# -- fixtures --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sensor():
    """The sensor modality, registered for this module's tests only."""
    register_modality(SENSOR)
    try:
        yield SENSOR
    finally:
        MODALITIES.pop("sensor", None)


def series(kind: str, rng: np.random.Generator) -> np.ndarray:
    """One series of 160 to 320 samples: a sine, a square wave (same frequencies and amplitudes) or noise."""
    t = np.arange(rng.integers(160, 321))
    amplitude, frequency, phase = rng.uniform(0.5, 1.5), rng.uniform(0.02, 0.08), rng.uniform(0, 2 * np.pi)
    wave = np.sin(2 * np.pi * frequency * t + phase)
    shape = {"sine": wave, "square": np.sign(wave), "noise": rng.standard_normal(t.size)}[kind]
    return (amplitude * shape + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


KINDS = ("noise", "sine", "square")


def write_series(root: Path, counts=(("train", 40), ("val", 8), ("test", 12)), seed: int = 0) -> Path:
    """A manifest of the three kinds in train, val and test splits, each series in its own .npy."""
    rng, lines = np.random.default_rng(seed), []
    (root / "series").mkdir(parents=True, exist_ok=True)
    for split, n in counts:
        for i in range(n):
            for kind in KINDS:
                name = f"series/{split}_{kind}_{i}.npy"
                np.save(root / name, series(kind, rng))
                lines.append({"id": f"{split}-{kind}-{i}", "sensor": name, "label": kind, "split": split})
    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return manifest


def sensor_cfg(out_dir: Path, manifest: Path, *extra: str):
    return load_config(overrides=[
        f"--out_dir={out_dir}", "--model.modalities=[sensor]", f"--data.manifest={manifest}",
        "--model.width=32", "--model.heads=2", "--model.depth=1", "--model.tower_depth=0", "--model.dropout=0.0",
        "--finetune.steps=120", "--finetune.batch_size=24", "--finetune.lr=3e-3", "--finetune.warmup_steps=10",
        "--finetune.eval_every=120", "--finetune.save_every=120", "--finetune.log_every=60",
        "--finetune.threads=1", "--finetune.workers=0", "--finetune.progress=false", *extra])


@pytest.fixture(scope="module")
def trained(sensor, tmp_path_factory) -> tuple[Path, Path]:
    """(best checkpoint, manifest) of a sensor classifier trained here."""
    root = tmp_path_factory.mktemp("sensor")
    manifest = write_series(root)
    best = get_task("classify").train(sensor_cfg(root / "run", manifest), progress=False)
    return best, manifest


# -- the registry ----------------------------------------------------------------------------------

def test_unknown_modality_lists_the_known_ones():
    with pytest.raises(UnknownModality, match="'smell' is not registered; known modalities: text, image, audio"):
        get_modality("smell")
    with pytest.raises(ConfigError, match=r"model.modalities: unknown \['smell'\]; known .*\['text', 'image', 'audio'"):
        load_config(overrides=["--model.modalities=[image, smell]"])
    assert modality_names()[:3] == ["text", "image", "audio"]


def test_registering_twice_or_over_another_modalitys_field_is_refused():
    with pytest.raises(ValueError, match="modality 'text' is already registered"):
        register_modality(get_modality("text"))

    class Spoken(SensorModality):
        name, fields = "spoken", ("question_audio",)

    with pytest.raises(ValueError, match="field 'question_audio' already belongs to modality 'audio'"):
        register_modality(Spoken())

    class Labelled(SensorModality):
        name, fields = "labelled", ("label",)

    with pytest.raises(ValueError, match="field 'label' already belongs to the manifest's own fields"):
        register_modality(Labelled())

    class NoEmbedder(SensorModality):
        name, fields, embedder = "bare", ("bare",), None

    with pytest.raises(ValueError, match="embedder must be a subclass"):
        register_modality(NoEmbedder())
    assert "spoken" not in MODALITIES and "labelled" not in MODALITIES and "bare" not in MODALITIES


def test_an_unregistered_modality_is_unknown_to_the_manifest(tmp_path):
    if "sensor" in MODALITIES:
        pytest.skip("the sensor fixture of this module is active")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"id": "a", "sensor": "a.npy", "label": "x"}\n')
    count, problems = check_manifest(manifest)
    assert any(p.field == "sensor" and "unknown field" in p.message for p in problems)


# -- the modality through the data layer -----------------------------------------------------------

def test_options_are_read_by_the_modalitys_config(sensor):
    cfg = load_config(overrides=["--model.modalities=[sensor]", "--model.options.sensor.channels=2"])
    assert SENSOR.options(cfg.model) == SensorConfig(channels=2)
    assert SENSOR.options(load_config(overrides=["--model.modalities=[sensor]"]).model) == SensorConfig()
    with pytest.raises(ConfigError, match=r"model.options.sensor: unknown config key kernal; allowed keys: channels, kernel"):
        load_config(overrides=["--model.options.sensor.kernal=3"])
    with pytest.raises(ConfigError, match=r"model.options.sensor: kernel: must be odd"):
        load_config(overrides=["--model.options.sensor.kernel=4"])
    with pytest.raises(ConfigError, match=r"model.options.text: the text modality declares no options"):
        load_config(overrides=["--model.options.text.max_len=3"])
    with pytest.raises(ConfigError, match=r"model.options.smell: not a registered modality"):
        load_config(overrides=["--model.options.smell.x=1"])


def test_collate_pads_the_series_along_time_with_a_mask(sensor):
    items = [{"index": 0, "sensor": torch.ones(1, 5), "text": torch.tensor([2, 3])},
             {"index": 1, "text": torch.tensor([2, 7, 3])},
             {"index": 2, "sensor": torch.full((1, 3), 2.0)}]
    batch = collate(items)
    assert batch["sensor"].shape == (3, 1, 5) and batch["sensor_mask"].sum(1).tolist() == [5, 0, 3]
    assert (batch["sensor"][2, :, :3] == 2).all() and (batch["sensor"][2, :, 3:] == 0).all()
    assert batch["text_mask"].sum(1).tolist() == [2, 3, 0]
    assert set(collate(items[1:2])) == {"index", "text", "text_mask"}  # no series in the batch: no entries


def test_data_check_decodes_the_series_and_reports_each_bad_file(sensor, tmp_path):
    np.save(tmp_path / "good.npy", np.zeros(50, dtype=np.float32))
    (tmp_path / "broken.npy").write_bytes(b"not an array")
    np.save(tmp_path / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(tmp_path / "nan.npy", np.array([0.0, np.nan], dtype=np.float32))
    lines = [{"id": "good", "sensor": "good.npy"}, {"id": "broken", "sensor": "broken.npy"},
             {"id": "pickled", "sensor": "pickled.npy"}, {"id": "nan", "sensor": "nan.npy"},
             {"id": "gone", "sensor": "gone.npy"}, {"id": "odd", "sensor": 3}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    count, problems = check_manifest(tmp_path / "m.jsonl")
    found = {p.line: p.message for p in problems if p.field == "sensor"}
    assert count == 6 and sorted(found) == [2, 3, 4, 5, 6], problems
    assert "allow_pickle" in found[3] and "NaN" in found[4] and "gone.npy does not exist" in found[5]
    assert "expected a string" in found[6]
    undecoded = check_manifest(tmp_path / "m.jsonl", decode=False)[1]
    assert sorted(p.line for p in undecoded) == [5, 6]  # without decoding: the missing file and the bad value


# -- the modality through the classify task --------------------------------------------------------

def test_classifier_learns_the_series_kinds_and_predicts_one(trained, capsys):
    from omniformer.cli import main
    from omniformer.tasks.classify import ClassifyPredictor
    best, manifest = trained
    task = get_task("classify")
    evaluation = task.evaluate(best, split="test", device="cpu")
    assert evaluation.samples == 36 and evaluation.metrics["accuracy"] >= 0.9, evaluation.metrics

    predictor = ClassifyPredictor.load(best)
    assert predictor.inputs == ["sensor"] and predictor.labels == list(KINDS)
    rng = np.random.default_rng(123)
    for kind in KINDS:  # an unseen series of each kind, as an array and as a file
        wave = series(kind, rng)
        assert predictor.classify(sensor=wave, top_k=1)[0][0] == kind
    sample = next(s for s in read_manifest(manifest) if s["split"] == "test" and s["label"] == "square")
    capsys.readouterr()
    assert main(["predict", "--model", str(best), "--json", "--sensor", str(manifest.parent / sample["sensor"])]) == 0
    assert json.loads(capsys.readouterr().out)["labels"][0]["label"] == "square"
    with pytest.raises(ValueError, match="not trained on image"):
        predictor.classify(sensor=wave, image=np.zeros((4, 4, 3), dtype=np.uint8))


def test_onnx_graph_of_the_sensor_classifier_matches_pytorch(trained, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from omniformer.interop.onnx import example_inputs, export_checkpoint, input_names, onnx_session, run_onnx
    from omniformer.tasks.classify import ClassifyPredictor
    assert input_names(["sensor", "image", "text"]) == ["text", "text_mask", "image", "image_mask",
                                                        "sensor", "sensor_mask"]
    best, _ = trained
    path = export_checkpoint(best, tmp_path / "sensor.onnx")
    session = onnx_session(path)
    assert [i.name for i in session.get_inputs()] == ["sensor", "sensor_mask"]
    model = ClassifyPredictor.load(best).model
    cfg = model.backbone.cfg
    assert list(example_inputs(cfg, batch=2)) == ["sensor", "sensor_mask"]
    for batch, length in ((1, 40), (3, 200)):
        inputs = SENSOR.example_inputs(cfg, batch, torch.Generator().manual_seed(batch), length)
        with torch.no_grad():
            expected = model(inputs)["logits"].numpy()
        assert np.abs(run_onnx(session, inputs) - expected).max() <= 1e-4


def test_the_server_names_a_file_modality_it_cannot_take_yet(trained):
    """The classify routes decode images and audio themselves; a registered modality read from
    files gets a 4xx naming its field, never a 5xx."""
    from fastapi.testclient import TestClient

    from omniformer.serve.app import create_app
    best, _ = trained
    with TestClient(create_app(best)) as client:
        info = client.get("/v1/model").json()
        assert info["task"] == "classify" and info["input_kinds"]["sensor"] == "unsupported"
        series = client.post("/v1/classify", files={"sensor": ("s.npy", b"\x93NUMPY")})
        assert series.status_code == 422 and series.json()["error"]["field"] == "sensor"
        empty = client.post("/v1/classify.json", json={})
        assert 400 <= empty.status_code < 500
