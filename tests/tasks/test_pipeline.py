"""The main job end to end on a small ShapesWorld: it learns, resumes, and the CLI drives it."""
import json
import subprocess
import sys

import pytest
from conftest import ROOT, small_config


def test_qa_learns_counting(trained_qa):
    """Trained in the fixture from scratch for 600 steps on "how many objects are there?"
    (two, three or four: chance is a third); it must get nearly all held-out questions right."""
    from omniformer.tasks.pipeline import evaluate
    model_dir, manifest = trained_qa
    result = evaluate(model_dir, manifest, "test", asked=("text",))
    assert result.samples >= 20
    assert result.metrics["text/family/count"] >= 0.85, result.metrics
    # Samples read by worker processes come back in order: the same answers, the same report.
    assert evaluate(model_dir, manifest, "test", asked=("text",), workers=2).metrics == result.metrics
    # The CLI passes --device and --workers through, and names a bad value.
    out = model_dir.parent / "cli_eval.json"
    cli = [sys.executable, "-m", "omniformer.cli", "evaluate", "--model", str(model_dir), "--manifest", str(manifest),
           "--asked", "text", "--device", "cpu", "--workers", "1", "--json", str(out)]
    run = subprocess.run(cli, capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    written = json.loads(out.read_text())  # every task's metrics at the top level, named for the metric
    assert written["task"] == "qa" and written["split"] == "test" and written["samples"] == result.samples
    assert {k: written[k] for k in result.metrics if k != "score"} == {k: v for k, v in result.metrics.items()
                                                                       if k != "score"}
    bad = subprocess.run(cli[:-6] + ["--device", "gpu0"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "'gpu0' is not a device name" in bad.stderr
    bad = subprocess.run(cli[:-6] + ["--workers", "-1"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "whole number >= 0" in bad.stderr


def test_pretrain_then_finetune_from_it_and_resume(tmp_path, small_shapes):
    from omniformer.tasks.pipeline import finetune, pretrain
    from omniformer.train import checkpoint as ckpt
    cfg = small_config(tmp_path, small_shapes.parent, "--pretrain.steps=6", "--pretrain.save_every=3",
                       "--pretrain.eval_every=6", "--pretrain.batch_size=16", "--objectives.masked_patch=0.5")
    pretrained = pretrain(cfg)
    meta = ckpt.read_meta(pretrained)
    assert meta["task"] == "pretrain" and ckpt.read_trainer_state(pretrained)["step"] == 6
    # Resuming a finished run is a no-op; resuming with more steps continues from step 6.
    more = small_config(tmp_path, small_shapes.parent, "--pretrain.steps=8", "--pretrain.save_every=3",
                        "--pretrain.eval_every=8", "--pretrain.batch_size=16", "--objectives.masked_patch=0.5")
    pretrain(more, resume=True)
    assert ckpt.read_trainer_state(tmp_path / "pretrain" / "last")["step"] == 8
    qa_cfg = small_config(tmp_path, small_shapes.parent, "--finetune.steps=4", "--finetune.eval_every=4",
                          "--finetune.batch_size=16", "--finetune.eval_batches=1")
    best = finetune(qa_cfg, init=pretrained)
    assert ckpt.read_meta(best)["init"] == str(pretrained)


def test_quickstart_cli_end_to_end(tmp_path):
    out = tmp_path / "metrics.json"
    args = [sys.executable, "-m", "omniformer.cli", "quickstart", f"--json={out}",
            f"--out_dir={tmp_path / 'run'}", f"--data.manifest={tmp_path / 'data' / 'manifest.jsonl'}",
            "--data.dataset_options.images=60", "--data.dataset_options.voices=3", "--model.width=32", "--model.heads=2",
            "--model.depth=1", "--pretrain.steps=3", "--finetune.steps=3", "--pretrain.batch_size=8",
            "--finetune.batch_size=8", "--pretrain.workers=0", "--finetune.workers=0", "--pretrain.progress=false",
            "--finetune.progress=false"]
    run = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Results on the test split" in run.stdout and "asked by voice" in run.stdout
    summary = json.loads(out.read_text())
    assert 0 <= summary["metrics"]["text/accuracy"] <= 1 and "spoken/accuracy" in summary["metrics"]
    ask = subprocess.run([sys.executable, "-m", "omniformer.cli", "ask", "--model", summary["model"], "--image",
                          str(tmp_path / "data" / summary["examples"][0]["image"]), "--question",
                          summary["examples"][0]["question"]], capture_output=True, text=True, cwd=ROOT)
    assert ask.returncode == 0 and "Q:" in ask.stdout and "%" in ask.stdout


def test_unknown_override_fails_clearly(tmp_path):
    run = subprocess.run([sys.executable, "-m", "omniformer.cli", "pretrain", "--model.widht=3"],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 2 and "model.widht" in run.stderr and "width" in run.stderr


def test_questions_asked_in_text_bring_their_recording_only_for_the_spotter():
    from omniformer.config import RunConfig
    from omniformer.tasks.qa import QAConfig
    from omniformer.tasks.pipeline import question_modes
    samples = [{"question": f"q{i}", "question_audio": f"q{i}.wav"} for i in range(400)] + [{"question": "silent"}]
    cfg, task = RunConfig(), QAConfig(spoken_fraction=0.5)
    asked, carried = question_modes(samples, cfg, task)
    assert carried == asked and asked[-1] == "text" and 150 < asked.count("audio") < 250
    task.head, task.spoken_question, task.word_spotting = "guided", "words", 1.0
    for share, low, high in ((1.0, 1.0, 1.0), (0.5, 0.35, 0.65)):
        task.spotter_overhears = share
        heard_asked, carried = question_modes(samples, cfg, task)
        assert heard_asked == asked                                # the same questions are asked by voice
        assert [c for a, c in zip(asked, carried) if a == "audio"] == ["audio"] * asked.count("audio")
        in_text = [c for a, c in zip(asked[:-1], carried[:-1]) if a == "text"]
        assert set(in_text) <= {"text", "both"} and low <= in_text.count("both") / len(in_text) <= high
        assert carried[-1] == "text"                               # no recording, nothing to hear
    task.word_spotting = 0.0
    assert question_modes(samples, cfg, task)[1] == asked          # no spotter, no recordings for it


def test_with_a_curriculum_only_its_questions_bring_their_recording():
    from omniformer.config import RunConfig
    from omniformer.tasks.qa import QAConfig
    from omniformer.tasks.qa.config import Curriculum
    from omniformer.tasks.pipeline import question_modes
    families = ["shape", "count"]
    samples = [{"question": f"q{i}", "question_audio": f"q{i}.wav", "meta": {"family": families[i % 2]}}
               for i in range(400)]
    cfg = RunConfig()
    task = QAConfig(head="guided", spoken_question="words", spoken_fraction=0.5, word_spotting=1.0,
                    spotter_overhears=1.0, curriculum=Curriculum("family", ["shape"], 10))
    asked, carried = question_modes(samples, cfg, task)
    for sample, way, carries in zip(samples, asked, carried):
        in_curriculum = sample["meta"]["family"] == "shape"
        assert carries == ("both" if way == "text" and in_curriculum else way)
    assert 50 < carried.count("both") < 150
    task.curriculum.steps = 0                                      # no curriculum: every family
    assert {s["meta"]["family"] for s, c in zip(samples, question_modes(samples, cfg, task)[1]) if c == "both"} \
        == set(families)
    task.spoken_fraction = 0.0                                     # nothing asked by voice: nothing to hear
    assert "both" not in question_modes(samples, cfg, task)[1]


def test_pretraining_reads_a_qa_manifest_without_captions(tmp_path, small_shapes):
    """A QA manifest has questions, images and recordings: text and media to pretrain on."""
    from omniformer.data.manifest import read_manifest, write_manifest
    from omniformer.tasks.pipeline import pretrain, pretraining_samples
    questions = [s for s in read_manifest(small_shapes) if s.get("question")][:200]
    manifest = write_manifest(small_shapes.parent / "questions-only.jsonl", questions)
    splits = pretraining_samples(manifest)
    first = splits["train"][0]
    assert first["text"] and "question" not in first and "answer" not in first and first.get("audio")
    cfg = small_config(tmp_path, small_shapes.parent, f"--data.manifest={manifest}", "--data.dataset=",
                       "--pretrain.steps=2", "--pretrain.batch_size=8", "--pretrain.eval_every=2",
                       "--pretrain.save_every=2")
    assert (pretrain(cfg) / "model.safetensors").is_file()
    images_only = write_manifest(tmp_path / "images.jsonl", [{"id": "a", "image": str(small_shapes.parent / first["image"])}])
    with pytest.raises(ValueError, match="nothing to pretrain on"):
        pretraining_samples(images_only)
