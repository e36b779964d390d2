"""ONNX export of QA models: onnxruntime matches PyTorch across batch sizes and sequence lengths."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from omniformer.config import ModelConfig, RunConfig, TowerConfig, to_dict  # noqa: E402
from omniformer.interop.onnx import example_inputs, export_qa, onnx_session, run_onnx  # noqa: E402
from omniformer.tasks.qa import QAConfig, QAModel  # noqa: E402

TOL = 1e-4


def small_cfg(**towers) -> ModelConfig:
    cfg = ModelConfig(width=32, heads=4, depth=2, tower_depth=1, vocab_size=60, dropout=0.0)
    cfg.image.size, cfg.image.patch_size = 16, 4
    cfg.audio.n_mels = 16
    for m, tower in towers.items():
        getattr(cfg, m).tower = tower
    return cfg


def _check_round_trip(model, cfg, path):
    session = onnx_session(path)
    assert [i.name for i in session.get_inputs()] == ["text", "text_mask", "image", "image_mask", "audio", "audio_mask"]
    for batch, text_len, frames in [(1, 5, 23), (4, 5, 23), (1, 14, 60), (4, 14, 60)]:
        inputs = example_inputs(cfg, batch, text_len, frames, seed=batch + text_len)
        if batch > 1:  # a sample asked by voice only, and one without an image
            inputs["text_mask"][1] = False
            inputs["image_mask"][2] = False
        with torch.no_grad():
            expected = model(inputs)["logits"].numpy()
        got = run_onnx(session, inputs)
        assert got.shape == expected.shape
        diff = float(np.abs(got - expected).max())
        assert diff <= TOL, f"batch {batch}, text {text_len}, frames {frames}: max abs difference {diff:.2e}"


def test_qa_model_onnx_round_trip(tmp_path):
    torch.manual_seed(0)
    cfg = small_cfg()
    model = QAModel(cfg, num_answers=7).eval()
    path = export_qa(model, cfg, tmp_path / "qa.onnx", meta={"answers": list("abcdefg")})
    import onnx
    graph = onnx.load(str(path))
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 17
    sidecar = json.loads((tmp_path / "qa.onnx.json").read_text())
    assert sidecar["answers"] == list("abcdefg") and sidecar["inputs"][0] == "text"
    _check_round_trip(model, cfg, path)


def test_guided_head_with_relations_and_words_exports(tmp_path):
    """The quickstart's head: glimpses, the anchor relation (its pointer read by the question's
    bag of words, its gate opened so that it counts) and speech heard as words."""
    torch.manual_seed(2)
    cfg = small_cfg()
    model = QAModel(cfg, 6, QAConfig(head="guided", relations=True, spoken_question="words")).eval()
    with torch.no_grad():
        model.answer_head.relate.gate.fill_(1.0)
    _check_round_trip(model, cfg, export_qa(model, cfg, tmp_path / "qa.onnx"))


def test_imported_tower_shapes_export(tmp_path):
    """Towers of other widths (projections), causal text, [CLS] image token, Whisper audio stem."""
    torch.manual_seed(1)
    cfg = small_cfg(text=TowerConfig(width=24, depth=2, heads=3, mlp_hidden=40, causal=True, embed_ln=False,
                                     activation="quick_gelu"),
                    image=TowerConfig(width=16, depth=1, heads=2, mlp_hidden=24, norm="post"),
                    audio=TowerConfig(width=32, depth=1, heads=4, mlp_hidden=48, embed_ln=False))
    cfg.image.cls_token, cfg.image.stem, cfg.image.patch_bias = True, "patch", False
    cfg.audio.stem, cfg.audio.subsample, cfg.audio.positions = "whisper", 2, "learned"
    model = QAModel(cfg, num_answers=5).eval()
    assert set(model.backbone.tower_proj) == {"text", "image"}
    _check_round_trip(model, cfg, export_qa(model, cfg, tmp_path / "qa.onnx"))


def test_conv2d_audio_stem_exports(tmp_path):
    """The (mel, time) convolutions keep the audio length dynamic in the graph."""
    torch.manual_seed(3)
    cfg = small_cfg()
    cfg.audio.stem, cfg.audio.stem_channels = "conv2d", 4
    model = QAModel(cfg, num_answers=5).eval()
    _check_round_trip(model, cfg, export_qa(model, cfg, tmp_path / "qa.onnx"))


def test_cli_export_from_checkpoint(tmp_path):
    from omniformer.cli import main
    from omniformer.data.text import Tokenizer
    from omniformer.train import checkpoint as ckpt
    tokenizer = Tokenizer.train(["what color is the square", "what shape is the red object"], vocab_size=60)
    run = RunConfig()
    run.model = small_cfg()
    run.model.modalities = ["text", "image"]
    run.model.vocab_size = tokenizer.vocab_size
    torch.manual_seed(2)
    model = QAModel(run.model, num_answers=3)
    ckpt.save_checkpoint(tmp_path / "qa", model, {"task": "qa", "config": to_dict(run), "answers": ["a", "b", "c"],
                                                  "omniformer_format": 1}, tokenizer=tokenizer)
    out = tmp_path / "export" / "model.onnx"
    assert main(["export", "--model", str(tmp_path / "qa"), "--format", "onnx", "--out", str(out)]) == 0
    session = onnx_session(out)
    assert [i.name for i in session.get_inputs()] == ["text", "text_mask", "image", "image_mask"]
    inputs = example_inputs(run.model, batch=3, text_len=9)
    with torch.no_grad():
        expected = model.eval()(inputs)["logits"].numpy()
    assert np.abs(run_onnx(session, inputs) - expected).max() <= TOL
    assert json.loads(out.with_name("model.onnx.json").read_text())["answers"] == ["a", "b", "c"]
