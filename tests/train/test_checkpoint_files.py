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


def _tiny_cfg():
    from omniformer.config import load_config
    return load_config(None, ["--model.width=32", "--model.heads=2", "--model.depth=1", "--model.image.size=32",
                              "--model.image.patch_size=8", "--model.audio.n_mels=40", "--model.audio.subsample=8",
                              "--model.audio.max_seconds=2"])


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Untrained QA and asr checkpoints (nothing here needs one that knows anything), a
    resumable one with an optimizer, an image and a recording to feed them."""
    import numpy as np
    import soundfile as sf
    from PIL import Image
    from omniformer.data.text import Tokenizer
    from omniformer.tasks.asr.config import ASRConfig
    from omniformer.tasks.asr.data import Alphabet
    from omniformer.tasks.asr.model import ASRModel
    from omniformer.tasks.pipeline import meta_for
    from omniformer.tasks.qa.model import QAModel, qa_config
    root = tmp_path_factory.mktemp("checkpoints")
    cfg = _tiny_cfg()
    tokenizer = Tokenizer.train(["how many objects are there", "a red square left of a blue circle"], vocab_size=60)
    cfg.model.vocab_size = tokenizer.vocab_size
    qa = QAModel(cfg.model, 3, qa_config(cfg))
    optimizer = torch.optim.AdamW(qa.parameters())
    qa(dict(text=torch.ones(1, 4, dtype=torch.long), text_mask=torch.ones(1, 4, dtype=torch.bool),
            index=torch.zeros(1, dtype=torch.long)))["logits"].sum().backward()
    optimizer.step()
    ckpt.save_checkpoint(root / "qa", qa, meta_for("qa", cfg, answers=["1", "2", "3"]), tokenizer=tokenizer,
                         optimizer=optimizer, trainer={"step": 1})
    alphabet = Alphabet("abc")
    asr = ASRModel(cfg.model, len(alphabet), ASRConfig())
    ckpt.save_checkpoint(root / "asr", asr, meta_for("asr", cfg, alphabet=alphabet.chars))
    Image.new("RGB", (32, 32), "white").save(root / "image.png")
    sf.write(root / "speech.wav", (0.3 * np.sin(np.arange(8000) / 5)).astype("float32"), 16000)
    return {"qa": root / "qa", "asr": root / "asr", "image": root / "image.png", "audio": root / "speech.wav"}


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
