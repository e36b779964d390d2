"""The task registry and the commands that work for every task: train, evaluate, predict, recipes."""
import json
import shutil

import pytest
from conftest import ROOT, SMALL_MODEL, SMALL_SHAPES

from omniformer.cli import main
from omniformer.registry import TASKS, UnknownTask, get_task, task_of_checkpoint
from omniformer.tasks.base import Task


def test_every_registered_task_loads_under_its_own_name():
    for name in TASKS:
        task = get_task(name)
        assert isinstance(task, Task) and task.name == name and task.summary


def test_unknown_task_lists_the_known_ones(tmp_path, capsys):
    with pytest.raises(UnknownTask, match="known tasks: .*qa"):
        get_task("segmentation")
    (tmp_path / "config.json").write_text(json.dumps({"config": {}}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(UnknownTask, match="names no task"):
        task_of_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"task": "segmentation", "config": {}}))
    assert main(["evaluate", "--model", str(tmp_path)]) == 2
    assert "no registered task is named so" in capsys.readouterr().err


def test_recipes_lists_and_prints_every_key(capsys):
    assert main(["recipes"]) == 0
    listing = capsys.readouterr().out
    assert "quickstart" in listing and "shapes-full" in listing
    assert main(["recipes", "quickstart", "--finetune.steps=7"]) == 0
    printed = capsys.readouterr().out
    assert "manifest:" in printed and "steps: 7" in printed  # the data.manifest key a user needs is shown


def test_train_evaluate_predict_for_qa(tmp_path, small_shapes, capsys):
    """``train qa`` is ``finetune``; the checkpoint names its task, so evaluate and predict need only --model."""
    out = tmp_path / "run"
    common = [f"--out_dir={out}", f"--data.manifest={small_shapes}", *SMALL_SHAPES, *SMALL_MODEL,
              "--finetune.steps=4", "--finetune.eval_every=4", "--finetune.save_every=4", "--finetune.batch_size=16",
              "--finetune.workers=0", "--finetune.progress=false", "--finetune.eval_batches=1",
              "--task.curriculum.steps=0"]
    assert main(["train", "qa", "--config", str(ROOT / "configs" / "quickstart.yaml"), *common]) == 0
    model = out / "qa" / "best"
    assert task_of_checkpoint(model).name == "qa"
    # A second run into the same folder would replace the model: refused unless asked.
    assert main(["train", "qa", "--config", "quickstart", *common]) == 2
    assert "--overwrite" in capsys.readouterr().err

    metrics = tmp_path / "m.json"
    assert main(["evaluate", "--model", str(model), "--split", "val", "--asked", "text", "--workers", "0",
                 "--threads", "1", "--json", str(metrics)]) == 0
    written = json.loads(metrics.read_text())
    assert written["task"] == "qa" and 0 <= written["accuracy"] <= 1 and written["samples"] > 0
    # Overrides follow the same convention as training; the architecture cannot be overridden.
    assert main(["evaluate", "--model", str(model), "--model.depth=9"]) == 2
    assert "architecture is the checkpoint's" in capsys.readouterr().err

    sample = next(json.loads(line) for line in small_shapes.read_text().splitlines()
                  if '"question"' in line and '"split":"test"' in line)
    image = str(small_shapes.parent / sample["image"])
    capsys.readouterr()
    assert main(["predict", "--model", str(model), "--json", "--image", image, "--question", sample["question"],
                 "--top-k", "2"]) == 0
    answers = json.loads(capsys.readouterr().out)["answers"]
    assert len(answers) == 2 and answers[0]["probability"] >= answers[1]["probability"]
    assert main(["predict", "--model", str(model), "--image", image]) == 2
    assert "--question" in capsys.readouterr().err
    assert main(["predict", "--model", str(model), "--image", image, "--question", "what?", "--top-k", "0"]) == 2
    assert "--top-k" in capsys.readouterr().err

    # A checkpoint copied elsewhere keeps its task.
    moved = tmp_path / "moved"
    shutil.copytree(model, moved)
    assert task_of_checkpoint(moved).name == "qa"


def test_a_checkpoint_from_before_the_task_sections_loads(tmp_path, trained_qa, capsys):
    """Checkpoints written when QA's head knobs sat in ``model`` and ShapesWorld in ``data.shapes``."""
    from omniformer.tasks.qa import QAPredictor
    model_dir, manifest = trained_qa
    old = tmp_path / "old"
    shutil.copytree(model_dir, old)
    meta = json.loads((old / "config.json").read_text())
    cfg = meta["config"]
    task = cfg.pop("task")
    old_names = {"head": "answer_head", "relations": "answer_relations", "glimpses": "answer_glimpses",
                 "spoken_question": "spoken_question"}
    cfg["model"].update({old_names[k]: v for k, v in task.items() if k in old_names}, num_answers=len(meta["answers"]))
    cfg.update({{"word_spotting": "spoken_words"}.get(k, k): v for k, v in task.items()
                if k in ("spoken_fraction", "word_spotting", "spotter_overhears", "grounding")})
    curriculum = task.get("curriculum", {})
    cfg["finetune"].update(curriculum_families=curriculum.get("values", []), curriculum_steps=curriculum.get("steps", 0))
    data = cfg["data"]
    data["shapes_dir"], data["shapes"] = str(manifest.parent), data.pop("dataset_options")
    data.pop("dataset")
    (old / "config.json").write_text(json.dumps(meta))
    predictor = QAPredictor.load(old)
    assert predictor.task_cfg.head == task["head"] and predictor.task_cfg.spoken_fraction == task["spoken_fraction"]
    assert main(["evaluate", "--model", str(old), "--manifest", str(manifest), "--asked", "text", "--workers", "0"]) == 0
    assert "accuracy" in capsys.readouterr().out


def test_own_data_without_a_recipe_starts_from_the_general_one(tmp_path, monkeypatch, capsys):
    """--data.manifest without --config: not the built-in dataset's recipe (its curriculum, its sizes)."""
    seen = {}
    for name in ("qa", "classify"):
        task = get_task(name)
        monkeypatch.setattr(task, "train", lambda cfg, init=None, resume=False, n=name: seen.setdefault(n, cfg)
                            or tmp_path)
        assert main(["train", name, f"--data.manifest={tmp_path / 'mine.jsonl'}", f"--out_dir={tmp_path / name}"]) == 0
        assert "general recipe" in capsys.readouterr().out
    assert seen["qa"].data.dataset == "" and "curriculum" not in seen["qa"].task
    assert seen["classify"].model.image.channels == 3 and seen["classify"].data.dataset == ""
    seen.clear()
    assert main(["train", "qa", "--config", "quickstart", f"--out_dir={tmp_path / 'q'}",
                 f"--data.manifest={tmp_path / 'x.jsonl'}"]) == 0     # an explicit recipe is kept
    assert "general recipe" not in capsys.readouterr().out and seen["qa"].task["curriculum"]["steps"] == 900
