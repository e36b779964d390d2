"""The translate task: a manifest from aligned files, training that learns (unseen word
combinations translated exactly), BLEU from sacrebleu, the CLI, and bad input named."""
from __future__ import annotations

import json
import random

import pytest

from omniformer.cli import main
from omniformer.data.manifest import ManifestError

WORDS = {"hund": "dog", "katze": "cat", "mann": "man", "frau": "woman", "vogel": "bird"}
VERBS = {"läuft": "runs", "schläft": "sleeps", "sieht": "sees", "singt": "sings"}
COLOURS = {"roter": "red", "blauer": "blue", "grüner": "green"}


def _corpus(folder):
    """Every (colour, noun, verb) sentence; a seeded fifth of the combinations only in val."""
    combos = [(c, n, v) for c in COLOURS for n in WORDS for v in VERBS]
    random.Random(0).shuffle(combos)
    held = combos[: len(combos) // 5]
    for split, rows in (("train", combos[len(held):] * 8), ("val", held)):
        (folder / f"{split}.de").write_text("".join(f"ein {c} {n} {v}.\n" for c, n, v in rows))
        (folder / f"{split}.en.gz").write_bytes(__import__("gzip").compress(
            "".join(f"a {COLOURS[c]} {WORDS[n]} {VERBS[v]}.\n" for c, n, v in rows).encode()))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("translate")
    _corpus(root)
    assert main(["data", "parallel", str(root), "--source", "de", "--target", "en", "--out", str(root / "m.jsonl")]) == 0
    assert main(["train", "translate", f"--data.manifest={root / 'm.jsonl'}", f"--out_dir={root / 'run'}",
                 "--model.width=64", "--model.depth=2", "--model.heads=2", "--model.dropout=0.0",
                 "--task.decoder_depth=2", "--data.vocab_size=120", "--finetune.steps=250",
                 "--finetune.batch_size=32", "--finetune.warmup_steps=25", "--finetune.eval_every=250",
                 "--finetune.save_every=250", "--finetune.workers=0", "--finetune.lr=3e-3", "--finetune.seed=0",
                 "--finetune.threads=1", "--finetune.progress=false"]) == 0
    return root, root / "run" / "translate" / "best"


def test_it_learns_to_translate_unseen_combinations(trained, capsys):
    root, model = trained
    assert main(["evaluate", "--model", str(model), "--split", "val", "--json", str(root / "e.json")]) == 0
    metrics = json.loads((root / "e.json").read_text())
    assert metrics["task"] == "translate" and metrics["samples"] == 12
    assert metrics["exact"] >= 0.9 and metrics["bleu"] >= 80, metrics


def test_translate_command_and_python_api(trained, capsys):
    from omniformer.tasks.seq2seq import Translator
    _, model = trained
    capsys.readouterr()
    assert main(["translate", "--model", str(model), "ein roter hund läuft.", "ein blauer vogel singt.",
                 "--num-beams", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    translator = Translator.load(model)
    assert lines == translator.translate(["ein roter hund läuft.", "ein blauer vogel singt."], num_beams=3)
    assert translator.translate("ein grüner mann sieht.", num_beams=1) == "a green man sees."
    sampled = [translator.translate("ein roter hund läuft.", num_beams=1, do_sample=True, temperature=2.0, seed=s)
               for s in (1, 1)]
    assert sampled[0] == sampled[1]  # a seeded sampler is reproducible


@pytest.mark.parametrize("argv, says", [
    (["--top-p", "2"], "top_p=2.0: expected in (0, 1]"),
    (["--temperature", "0", "--sample"], "temperature"),
    (["--num-beams", "100000"], "num_beams"),
    (["--max-new-tokens", "500"], "max_new_tokens: at most 63"),
])
def test_bad_decoding_options_are_named(trained, capsys, argv, says):
    _, model = trained
    assert main(["translate", "--model", str(model), "ein hund.", *argv]) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err


def test_a_blank_source_is_refused(trained):
    from omniformer.tasks.seq2seq import TranslationError, Translator
    with pytest.raises(TranslationError, match="source 1: empty text"):
        Translator.load(trained[1]).translate(["ein hund.", "  "])


def test_a_source_past_the_positions_is_cut_with_a_warning(trained):
    from omniformer.tasks.seq2seq import Translator
    translator = Translator.load(trained[1])
    with pytest.warns(UserWarning, match="more than the model's 64 text positions"):
        assert isinstance(translator.translate("ein hund " * 60), str)


def test_parallel_files_that_do_not_align_are_named(tmp_path):
    from omniformer.tasks.seq2seq import parallel_manifest
    (tmp_path / "train.de").write_text("a\nb\n")
    (tmp_path / "train.en").write_text("a\n")
    with pytest.raises(ManifestError, match="train.de has 2 lines.*train.en has 1"):
        parallel_manifest(tmp_path, "de", "en", tmp_path / "m.jsonl")
    (tmp_path / "val.de").write_text("a\n")
    (tmp_path / "train.en").write_text("a\nb\n")
    with pytest.raises(ManifestError, match="no val.en"):
        parallel_manifest(tmp_path, "de", "en", tmp_path / "m.jsonl")
