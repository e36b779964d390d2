"""Damaged checkpoint files (cut short, empty, a git-lfs pointer, not safetensors, a missing or
malformed config.json) are errors that name the file and what is wrong, in the library and
through every command that loads a model; never safetensors' own message, which names no file."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from omniformer.train import checkpoint as ckpt

LFS_POINTER = ("version https://git-lfs.github.com/spec/v1\n"
               "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 314516\n")

DAMAGES = {
    "cut": r"is cut short: [\d,]+ bytes of the [\d,]+ its header describes",
    "header_cut": r"is cut short \(5 bytes; a safetensors file starts with an 8-byte header length\)",
    "empty": r"is empty \(0 bytes\)",
    "lfs": r"is a git-lfs pointer, not the weights: .*run 'git lfs pull'",
    "junk": r"is cut short or not a safetensors file",
    "bad_header": r"is damaged or not a safetensors file \(its header is not JSON\)",
}


def damage(file: Path, how: str) -> None:
    data = file.read_bytes()
    if how == "cut":
        file.write_bytes(data[: len(data) // 2])
    elif how == "header_cut":
        file.write_bytes(data[:5])
    elif how == "empty":
        file.write_bytes(b"")
    elif how == "lfs":
        file.write_text(LFS_POINTER)
    elif how == "junk":
        file.write_bytes(bytes(range(256)) * 8)
    elif how == "bad_header":
        file.write_bytes((20).to_bytes(8, "little") + b"{not json at all!!!}" + data[28:])


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    from test_cli_errors import tiny_checkpoints  # tests/, on the path beside conftest.py
    return tiny_checkpoints(tmp_path_factory.mktemp("checkpoints"))


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("how", sorted(DAMAGES))
def test_a_damaged_weights_file_is_named_with_what_is_wrong(checkpoints, tmp_path, how):
    from omniformer.tasks.qa.model import QAModel, qa_config
    from omniformer.config import run_config_from
    path = _copy(checkpoints["qa"], tmp_path / "qa")
    cfg = run_config_from(ckpt.read_meta(path)["config"])
    model = QAModel(cfg.model, 3, qa_config(cfg))
    assert ckpt.load_weights(path, model) == []  # the healthy copy loads
    damage(path / ckpt.WEIGHTS, how)
    pattern = rf"{path / ckpt.WEIGHTS} {DAMAGES[how]}"
    with pytest.raises(ckpt.CheckpointError, match=pattern):
        ckpt.load_weights(path, model)
    with pytest.raises(ckpt.CheckpointError, match=pattern):
        ckpt.has_weights(path, "backbone.")
    with pytest.raises(ckpt.CheckpointError, match=pattern):
        ckpt.read_safetensors(path / ckpt.WEIGHTS)


def test_a_damaged_optimizer_or_trainer_state_is_named(checkpoints, tmp_path):
    path = _copy(checkpoints["qa"], tmp_path / "qa")
    params = [p for p in torch.nn.Linear(1, 1).parameters()]
    damage(path / ckpt.OPTIMIZER, "cut")
    with pytest.raises(ckpt.CheckpointError, match=rf"{path / ckpt.OPTIMIZER} is cut short"):
        ckpt.load_optimizer(path, torch.optim.AdamW(params))
    (path / ckpt.TRAINER).write_text('{"step": ')
    with pytest.raises(ckpt.CheckpointError, match=rf"{path / ckpt.TRAINER}: not valid JSON: .* line 1, column"):
        ckpt.read_trainer_state(path)


@pytest.mark.parametrize("config, expected", [
    (None, r"has no config\.json \(its task and recipe\)"),
    ('{"task": "qa",', r"config\.json: not valid JSON: Expecting .* at line \d+, column \d+"),
    ("[1, 2]", r"config\.json: expected a JSON object"),
    (b"\xff\xfe{}", r"config\.json: not UTF-8 text"),
    (LFS_POINTER, r"config\.json is a git-lfs pointer.*git lfs pull"),
    ('{"task": "qa", "config": 3}', r"'config' must be a JSON object"),
])
def test_a_missing_or_malformed_config_json_is_named(checkpoints, tmp_path, config, expected):
    path = _copy(checkpoints["qa"], tmp_path / "qa")
    if config is None:
        (path / ckpt.CONFIG).unlink()
    elif isinstance(config, bytes):
        (path / ckpt.CONFIG).write_bytes(config)
    else:
        (path / ckpt.CONFIG).write_text(config)
    with pytest.raises(ckpt.CheckpointError, match=expected):
        ckpt.read_meta(path)


def _commands(c: dict[str, Path], qa: Path, asr: Path) -> dict[str, list[str]]:
    return {
        "ask": ["ask", "--model", str(qa), "--image", str(c["image"]), "--question", "how many"],
        "predict": ["predict", "--model", str(qa), "--image", str(c["image"]), "--question", "how many"],
        "evaluate": ["evaluate", "--model", str(qa), "--workers", "0"],
        "transcribe": ["transcribe", "--model", str(asr), str(c["audio"])],
        "predict_asr": ["predict", "--model", str(asr), "--audio", str(c["audio"])],
        "serve": ["serve", "--model", str(qa), "--no-examples", "--port", "0"],
    }


@pytest.mark.parametrize("command", ["ask", "predict", "evaluate", "transcribe", "predict_asr", "serve"])
@pytest.mark.parametrize("how", ["cut", "lfs"])
def test_every_command_that_loads_a_model_names_the_damaged_file(checkpoints, tmp_path, capsys, command, how):
    from omniformer.cli import main
    qa, asr = _copy(checkpoints["qa"], tmp_path / "qa"), _copy(checkpoints["asr"], tmp_path / "asr")
    for path in (qa, asr):
        damage(path / ckpt.WEIGHTS, how)
    argv = _commands(checkpoints, qa, asr)[command]
    assert main(argv) == 2
    err = capsys.readouterr().err
    weights = (asr if "asr" in command or command == "transcribe" else qa) / ckpt.WEIGHTS
    assert f"error: {weights} {'is cut short' if how == 'cut' else 'is a git-lfs pointer'}" in err
    assert "Traceback" not in err and "SafetensorError" not in err


def test_finetune_from_a_damaged_init_names_it(checkpoints, tmp_path):
    """finetune --init reads the pretrained weights through the same reader."""
    from omniformer.config import run_config_from
    from omniformer.tasks.qa.model import QAModel, qa_config
    init = _copy(checkpoints["qa"], tmp_path / "init")
    damage(init / ckpt.WEIGHTS, "lfs")
    cfg = run_config_from(ckpt.read_meta(init)["config"])
    with pytest.raises(ckpt.CheckpointError, match=rf"{init / ckpt.WEIGHTS} is a git-lfs pointer"):
        QAModel(cfg.model, 3, qa_config(cfg)).load_pretrained(init)


def test_no_traceback_reaches_the_user(checkpoints, tmp_path):
    """The installed entry point, as a user runs it: one line naming the file, exit status 2."""
    qa = _copy(checkpoints["qa"], tmp_path / "qa")
    damage(qa / ckpt.WEIGHTS, "lfs")
    run = subprocess.run([sys.executable, "-m", "omniformer.cli", "ask", "--model", str(qa), "--image",
                          str(checkpoints["image"]), "--question", "how many"],
                         capture_output=True, text=True, timeout=120, env={"OMP_NUM_THREADS": "1", "PATH": ""})
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr
    assert f"{qa / ckpt.WEIGHTS} is a git-lfs pointer" in run.stderr and "git lfs pull" in run.stderr


@pytest.mark.parametrize("model, key", [("qa", "answers"), ("qa", "config"), ("asr", "alphabet"), ("asr", "config")])
def test_a_config_json_without_what_its_task_reads_is_named(checkpoints, tmp_path, capsys, model, key):
    """An edited config.json without a QA model's answers was a KeyError."""
    import json
    from omniformer.cli import main
    path = _copy(checkpoints[model], tmp_path / model)
    meta = json.loads((path / ckpt.CONFIG).read_text())
    del meta[key]
    (path / ckpt.CONFIG).write_text(json.dumps(meta))
    argv = (["ask", "--model", str(path), "--image", str(checkpoints["image"]), "--question", "how many"]
            if model == "qa" else ["transcribe", "--model", str(path), str(checkpoints["audio"])])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{path / ckpt.CONFIG} has no '{key}'" in err and "Traceback" not in err
