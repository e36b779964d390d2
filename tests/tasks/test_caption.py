"""The caption task: ShapesWorld's judge (true statements of a scene, and their foils), BLEU
against every reference of an image, training that learns to state true things of unseen
scenes, the commands and the Python API, and bad input named."""
from __future__ import annotations

import json

import pytest

from omniformer.cli import main
from omniformer.datasets.shapes.language import caption_candidates, caption_is_true
from omniformer.datasets.shapes.scene import Obj
from omniformer.tasks.caption import caption_metrics

SCENE = [Obj("red", "circle", 4, 4, 10), Obj("blue", "square", 44, 40, 10), Obj("green", "triangle", 40, 6, 10)]


def test_every_generated_caption_is_true_and_its_foils_are_not():
    candidates = caption_candidates(SCENE, 64)
    stated = [c for pool in candidates.values() for c in pool]
    assert len(stated) > 20 and all(caption_is_true(c, SCENE, 64) for c in stated)
    assert caption_is_true("There are three objects.", SCENE, 64)  # case and full stop do not matter
    for foil in ("there are four objects", "there is a red square", "the red circle is right of the blue square",
                 "the blue object is on the left", "there is no red circle", "the red object is", "", "red"):
        assert not caption_is_true(foil, SCENE, 64), foil


def test_caption_metrics_score_against_every_reference():
    refs = [["there are three objects", "there is a red circle"], ["there is one square"]]
    perfect = caption_metrics(refs, ["there is a red circle", "there is one square"])
    assert perfect["bleu"] == pytest.approx(100) and perfect["exact"] == 1.0
    half = caption_metrics(refs, ["there is a red circle", "the square is blue"])
    assert half["exact"] == 0.5 and half["bleu"] < 100
    assert perfect["distinct"] == 1.0
    assert caption_metrics(refs, ["there is one square", "there is  one square"])["distinct"] == 0.5
    with pytest.raises(ValueError, match="reference sets"):
        caption_metrics(refs, ["one"])


@pytest.fixture(scope="module")
def trained(small_shapes, tmp_path_factory):
    root = tmp_path_factory.mktemp("caption")
    assert main(["train", "caption", f"--data.manifest={small_shapes}", f"--out_dir={root / 'run'}",
                 "--data.dataset=", "--task.judge=shapes",
                 "--model.width=64", "--model.depth=2", "--model.tower_depth=1", "--model.heads=4",
                 "--model.image.size=32", "--model.image.patch_size=8", "--task.decoder_depth=2",
                 "--finetune.steps=600", "--finetune.batch_size=64", "--finetune.eval_every=600",
                 "--finetune.save_every=600", "--finetune.eval_batches=2", "--finetune.lr=3e-3",
                 "--finetune.seed=0", "--finetune.threads=1", "--finetune.progress=false"]) == 0
    return root, root / "run" / "caption" / "best"


def test_it_learns_to_write_captions_of_unseen_scenes(trained, small_shapes):
    """The language of the captions is learnt: BLEU 3 untrained; after 600 steps 31.1 when this
    module runs alone, 26.8 once inside the whole suite (2026-12-07; the same seed and one
    thread, so some state an earlier test leaves moves it), hence the bar of 20. How often a
    caption is true of its scene is measured and reported, not held here (issue 24)."""
    root, model = trained
    assert main(["evaluate", "--model", str(model), "--split", "test", "--manifest", str(small_shapes),
                 "--json", str(root / "e.json")]) == 0
    metrics = json.loads((root / "e.json").read_text())
    assert metrics["task"] == "caption" and metrics["samples"] == 150  # one caption per test image
    assert metrics["bleu"] > 20, metrics
    assert 0 <= metrics["true_captions"] <= 1 and len(metrics["examples"]) == 20
    assert 0 < metrics["distinct"] <= 1


def test_caption_command_predict_and_python_api(trained, small_shapes, capsys):
    from omniformer.tasks.caption import Captioner
    _, model = trained
    images = [str(small_shapes.parent / "images" / name) for name in ("00000.png", "00001.png")]
    capsys.readouterr()
    assert main(["caption", "--model", str(model), *images, "--num-beams", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    captioner = Captioner.load(model)
    assert [line.split("\t")[1] for line in lines] == captioner.caption(images, num_beams=2)
    assert captioner.caption(images[0], num_beams=2) == lines[0].split("\t")[1]
    assert main(["predict", "--model", str(model), "--image", images[0], "--num-beams", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["captions"][0]["caption"] == lines[0].split("\t")[1]
    sampled = [captioner.caption(images[0], do_sample=True, top_p=0.9, seed=3) for _ in range(2)]
    assert sampled[0] == sampled[1]  # a seeded sampler repeats itself


@pytest.mark.parametrize("args, words", [
    (["--top-p", "0"], ["top_p"]),
    (["--temperature", "-1"], ["temperature"]),
    (["--num-beams", "100000"], ["num_beams"]),
    (["--max-new-tokens", "500"], ["max_new_tokens", "23"]),
])
def test_bad_decoding_options_are_named(trained, small_shapes, capsys, args, words):
    _, model = trained
    assert main(["caption", "--model", str(model), str(small_shapes.parent / "images" / "00000.png"), *args]) != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and all(w in err for w in words), err


def test_bad_inputs_and_options_are_named(trained, tmp_path, capsys):
    _, model = trained
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    assert main(["caption", "--model", str(model), str(text)]) != 0
    err = capsys.readouterr().err
    assert "notes.png" in err and "Traceback" not in err
    assert main(["caption", "--model", str(model), str(tmp_path / "missing.png")]) != 0
    assert "missing.png" in capsys.readouterr().err
    assert main(["train", "caption", "--task.inputs=[smell]", f"--out_dir={tmp_path}"]) != 0
    assert "inputs" in capsys.readouterr().err
    assert main(["train", "caption", "--task.judge=nowhere", f"--out_dir={tmp_path}"]) != 0
