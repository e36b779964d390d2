"""Bad command-line values, as a new user types them: each is refused with exit status 2 and
one line naming the option and what it takes, never a traceback (issue 26). Checkpoints here
are untrained and tiny: what is tested is what happens around a model, not what it knows."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from omniformer.cli import main


def _tiny_cfg():
    from omniformer.config import load_config
    return load_config(None, ["--model.width=32", "--model.heads=2", "--model.depth=1", "--model.image.size=32",
                              "--model.image.patch_size=8", "--model.audio.n_mels=40", "--model.audio.subsample=8",
                              "--model.audio.max_seconds=2"])


def tiny_checkpoints(root: Path) -> dict[str, Path]:
    """Untrained QA (3 answers, resumable: optimizer and trainer state) and asr checkpoints, an
    image and a recording to feed them; about a second to make."""
    import numpy as np
    import soundfile as sf
    from PIL import Image
    from omniformer.data.text import Tokenizer
    from omniformer.tasks.asr.config import ASRConfig
    from omniformer.tasks.asr.data import Alphabet
    from omniformer.tasks.asr.model import ASRModel
    from omniformer.tasks.pipeline import meta_for
    from omniformer.tasks.qa.model import QAModel, qa_config
    from omniformer.train import checkpoint as ckpt
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


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    return tiny_checkpoints(tmp_path_factory.mktemp("cli"))


def refused(capsys, argv: list[str], *expected: str) -> str:
    """Run ``omniformer ARGV`` in this process: exit status 2 (argparse's exit counts), each of
    ``expected`` in stderr, no traceback; returns stderr."""
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    for text in expected:
        assert text in err, err
    assert "Traceback" not in err
    return err


NOT_UTF8 = b"how many \xff objects".decode("utf-8", "surrogateescape")  # what Python makes of a non-UTF-8 argv


@pytest.mark.parametrize("top_k, expected", [
    ("-1", "argument --top-k: expected a whole number >= 1 and <= 1,000,000, got '-1'"),
    ("0", "argument --top-k: expected a whole number >= 1 and <= 1,000,000, got '0'"),
    ("two", "argument --top-k: expected a whole number >= 1 and <= 1,000,000, got 'two'"),
    ("4", "--top-k: expected 1 to 3 (the answers"),
])
def test_ask_refuses_a_top_k_out_of_range(checkpoints, capsys, top_k, expected):
    """--top-k -1 was a RuntimeError from torch.topk; 0 printed no answer and exited 0."""
    refused(capsys, ["ask", "--model", str(checkpoints["qa"]), "--image", str(checkpoints["image"]),
                     "--question", "how many objects", "--top-k", top_k], expected)


def test_ask_answers_within_range_and_by_default_all_it_knows_up_to_five(checkpoints, capsys):
    argv = ["ask", "--model", str(checkpoints["qa"]), "--image", str(checkpoints["image"]), "--question", "how many"]
    assert main([*argv, "--top-k", "2"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 1 + 2
    assert main(argv) == 0  # the default 5 is cut to the 3 answers this model knows, not an error
    assert len(capsys.readouterr().out.strip().splitlines()) == 1 + 3


@pytest.mark.parametrize("command", ["ask", "predict"])
@pytest.mark.parametrize("question, expected", [
    (NOT_UTF8, r"--question: not UTF-8 text: byte b'\xff' at character 9"),
    ("   ", "--question: empty"),
])
def test_a_question_that_is_not_text_is_refused(checkpoints, capsys, command, question, expected):
    """Non-UTF-8 bytes in --question reached the tokenizer as a TypeError."""
    refused(capsys, [command, "--model", str(checkpoints["qa"]), "--image", str(checkpoints["image"]),
                     "--question", question], expected)


def test_predict_refuses_a_top_k_out_of_range(checkpoints, capsys):
    qa = ["predict", "--model", str(checkpoints["qa"]), "--image", str(checkpoints["image"]), "--question", "how"]
    refused(capsys, [*qa, "--top-k", "-1"], "--top-k: expected 1 to 3")
    refused(capsys, [*qa, "--top-k", "0"], "--top-k: expected 1 to 3")


@pytest.mark.parametrize("argv, expected", [
    (["predict", "--threads", "0"], "argument --threads: expected a whole number >= 1 and <= 1,024, got '0'"),
    (["predict", "--threads", "100000000"], "argument --threads: expected a whole number >= 1 and <= 1,024"),
    (["transcribe", "--threads", "-2"], "argument --threads: expected a whole number >= 1 and <= 1,024"),
    (["evaluate", "--threads", "5000"], "argument --threads: expected a whole number >= 1 and <= 1,024"),
    (["evaluate", "--workers", "-1"], "argument --workers: expected a whole number >= 0 and <= 256, got '-1'"),
    (["evaluate", "--asked", "speech"], "--asked: expected text, audio or both (text,audio), got 'speech'"),
    (["evaluate", "--asked", ","], "--asked: expected text, audio or both"),
])
def test_numeric_and_choice_options_are_checked_before_any_work(checkpoints, capsys, argv, expected):
    """A huge --threads crashed torch (a segmentation fault), a negative one raised in torch."""
    model = checkpoints["asr"] if argv[0] == "transcribe" else checkpoints["qa"]
    extra = [str(checkpoints["audio"])] if argv[0] == "transcribe" else []
    rest = ["--image", str(checkpoints["image"]), "--question", "how"] if argv[0] == "predict" else []
    refused(capsys, [argv[0], "--model", str(model), *argv[1:], *extra, *rest], expected)


def test_an_output_file_that_cannot_be_written_is_refused_before_the_work(checkpoints, tmp_path, capsys):
    """evaluate --json DIR wrote nothing after the whole evaluation had run (an IsADirectoryError)."""
    refused(capsys, ["evaluate", "--model", str(checkpoints["qa"]), "--json", str(tmp_path)],
            f"--json: {tmp_path} is a folder; give the file to write")
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    refused(capsys, ["quickstart", "--json", str(blocker / "metrics.json")], f"{blocker} is a file, not a folder")
    refused(capsys, ["export", "--model", str(checkpoints["qa"]), "--out", str(tmp_path)],
            f"--out: {tmp_path} is a folder")
    refused(capsys, ["import", "--out", str(blocker), "--text", "bert:nowhere"], f"--out: {blocker} is a file")


@pytest.mark.parametrize("opset", ["16", "999"])
def test_export_refuses_an_opset_torch_cannot_write(checkpoints, tmp_path, capsys, opset):
    """--opset 999 was torch's RuntimeError."""
    refused(capsys, ["export", "--model", str(checkpoints["qa"]), "--out", str(tmp_path / "m.onnx"), "--opset", opset],
            "opset: must be 17 (LayerNormalization) to", f"got {opset}")
    assert not (tmp_path / "m.onnx").exists()


def test_a_recipe_that_is_not_yaml_text_is_named(tmp_path, capsys):
    png = tmp_path / "recipe.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    refused(capsys, ["train", "qa", "--config", str(png)], f"config file {png} is not UTF-8 text")
    refused(capsys, ["recipes", str(tmp_path)], f"config file {tmp_path} is a folder")
    refused(capsys, ["train", "qa", "--model.modalities="], "model.modalities: empty; name at least one of")


def test_an_unexpected_failure_is_one_line_not_a_traceback(monkeypatch, capsys):
    """The last resort: a bug still reaches the user as one line and a non-zero exit."""
    import omniformer.cli as cli

    def broken(args, overrides):
        raise TypeError("something inside went wrong")
    monkeypatch.setattr(cli, "cmd_recipes", broken)
    monkeypatch.delenv("OMNIFORMER_TRACEBACK", raising=False)
    assert cli.main(["recipes"]) == 1
    err = capsys.readouterr().err
    assert "error: TypeError: something inside went wrong" in err and "OMNIFORMER_TRACEBACK=1" in err
    monkeypatch.setenv("OMNIFORMER_TRACEBACK", "1")
    with pytest.raises(TypeError):
        cli.main(["recipes"])


@pytest.mark.parametrize("size", ["3", "2000000", "many"])
def test_data_tokenizer_refuses_a_vocabulary_size_out_of_range(tmp_path, capsys, size):
    """Past a few million the tokenizer's trainer aborted the process (out of memory)."""
    (tmp_path / "m.jsonl").write_text('{"id": "a", "text": "a red circle"}\n')
    refused(capsys, ["data", "tokenizer", str(tmp_path / "m.jsonl"), "--out", str(tmp_path / "t.json"),
                     "--vocab-size", size], "argument --vocab-size: expected a whole number >= 6 and <= 1,000,000")
    assert not (tmp_path / "t.json").exists()
