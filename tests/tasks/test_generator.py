"""``Generator`` and ``omniformer generate``: one entry point for translate, caption and
pretraining (next-word) checkpoints. A toy translator and a toy text continuer are trained here
in a few seconds, so that what is checked is what they learnt, not just that text comes out:
the same text as ``Translator``/``Captioner``, the prompt honoured (and equal to decoding with
``prompts=`` directly), streams that join to the whole text, the CLI printing what the Python API
returns, and every bad input refused in one line naming its option."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from omniformer.cli import main
from test_cli_errors import refused, tiny_checkpoints

NOUNS = {"hund": "dog", "katze": "cat", "mann": "man", "frau": "woman", "vogel": "bird"}
VERBS = {"läuft": "runs", "schläft": "sleeps", "sieht": "sees", "singt": "sings"}
PAIRS = [(f"ein {n} {v}.", f"a {NOUNS[n]} {VERBS[v]}.") for n in NOUNS for v in VERBS]
FACTS = ["the sky is blue .", "the grass is green .", "a dog runs fast ."]


def _cfg(*extra: str):
    from omniformer.config import load_config
    return load_config(None, ["--model.width=32", "--model.heads=2", "--model.depth=1", "--model.tower_depth=1",
                              "--model.image.size=16", "--model.image.patch_size=8", "--model.audio.n_mels=16",
                              "--model.dropout=0.0", *extra])


def _train(model, batch, steps: int, lr: float = 5e-3) -> None:
    """Full-batch AdamW on one thread (a tiny model gains nothing from more, and loses much when
    the cores are shared)."""
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model.train()
    try:
        for _ in range(steps):
            loss = model(batch)["loss"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()


def _translator(root: Path) -> Path:
    """A translate checkpoint trained on 20 sentence pairs until it translates them."""
    from omniformer.data.text import Tokenizer
    from omniformer.tasks.pipeline import meta_for
    from omniformer.tasks.seq2seq import Seq2SeqModel, TranslateConfig
    from omniformer.train.checkpoint import save_checkpoint
    tokenizer = Tokenizer.train([s for pair in PAIRS for s in pair], vocab_size=80, lowercase=False)
    cfg = _cfg("--model.modalities=[text]")
    cfg.model.vocab_size = tokenizer.vocab_size
    cfg.task = {"decoder_depth": 1, "max_target_len": 12, "max_new_tokens": 11, "num_beams": 2}
    torch.manual_seed(0)
    model = Seq2SeqModel(cfg.model, TranslateConfig(**cfg.task), tokenizer.pad_id)
    text, text_mask = tokenizer.encode_batch([s for s, _ in PAIRS])
    target, target_mask = tokenizer.encode_batch([t for _, t in PAIRS])
    _train(model, {"text": text, "text_mask": text_mask, "target": target, "target_mask": target_mask}, 80)
    return save_checkpoint(root / "translate", model, meta_for("translate", cfg), tokenizer)


def _captioner(root: Path) -> Path:
    """An untrained caption checkpoint that reads images."""
    from omniformer.data.text import Tokenizer
    from omniformer.tasks.caption import CaptionConfig
    from omniformer.tasks.pipeline import meta_for
    from omniformer.tasks.seq2seq import Seq2SeqModel
    from omniformer.train.checkpoint import save_checkpoint
    tokenizer = Tokenizer.train(FACTS * 2, vocab_size=60)
    cfg = _cfg("--model.modalities=[image]")
    cfg.model.vocab_size = tokenizer.vocab_size
    cfg.task = {"inputs": ["image"], "decoder_depth": 1, "max_target_len": 10, "max_new_tokens": 9, "num_beams": 2}
    torch.manual_seed(1)
    model = Seq2SeqModel(cfg.model, CaptionConfig(**cfg.task), tokenizer.pad_id)
    return save_checkpoint(root / "caption", model, meta_for("caption", cfg), tokenizer)


def _pretrained(root: Path, next_word: bool) -> Path:
    """A pretraining checkpoint over text and images; with ``next_word``, its decoder trained on
    three texts alone until it continues them."""
    from omniformer.data.text import Tokenizer
    from omniformer.tasks.pipeline import meta_for
    from omniformer.tasks.pretrain import PretrainingModel
    from omniformer.train.checkpoint import save_checkpoint
    tokenizer = Tokenizer.train(FACTS * 2, vocab_size=60)
    objectives = ["--objectives.mlm=0", "--objectives.matching=0", "--objectives.contrastive=0",
                  "--objectives.next_word=1.0", "--objectives.next_word_depth=1"] if next_word else []
    cfg = _cfg("--model.modalities=[text,image]", "--model.text.max_len=12", *objectives)
    cfg.model.vocab_size = tokenizer.vocab_size
    torch.manual_seed(2)
    model = PretrainingModel(cfg.model, cfg.objectives, tokenizer.special_ids, tokenizer.mask_id)
    if next_word:
        text, text_mask = tokenizer.encode_batch(FACTS)
        _train(model, {"index": torch.arange(3), "text": text, "text_mask": text_mask}, 80)
    name = "pretrain" if next_word else "pretrain-plain"
    return save_checkpoint(root / name, model, meta_for("pretrain", cfg), tokenizer)


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    from PIL import Image
    root = tmp_path_factory.mktemp("generator")
    out = tiny_checkpoints(root)  # qa, asr, an image and a recording
    out.update(translate=_translator(root), caption=_captioner(root), pretrain=_pretrained(root, True),
               plain=_pretrained(root, False))
    Image.new("RGB", (16, 16), "red").save(root / "red.png")
    out["red"] = root / "red.png"
    (root / "not-an-image.png").write_text("hello")
    out["bad_image"] = root / "not-an-image.png"
    return out


@pytest.fixture(scope="module")
def translator(made):
    from omniformer import Generator
    return Generator.load(made["translate"])


def test_a_translate_checkpoint_writes_what_translator_writes_and_what_it_learnt(made, translator):
    from omniformer.tasks.seq2seq import Translator
    plain = Translator.load(made["translate"])
    sources = [s for s, _ in PAIRS[:6]]
    for options in ({}, {"num_beams": 1}, {"num_beams": 3, "length_penalty": 0.5},
                    {"do_sample": True, "temperature": 1.5, "top_k": 5, "seed": 3}):
        assert translator.generate(text=sources, **options) == plain.translate(sources, **options), options
    # The toy translator learnt its pairs: greedy, beams, one string for one input.
    assert translator.generate(text="ein hund läuft.") == "a dog runs."
    assert translator.generate(text=sources, num_beams=1) == [t for _, t in PAIRS[:6]]
    assert translator.task == "translate" and translator.inputs == ["text"]


def test_the_prompt_starts_the_output_and_equals_decoding_with_prompts(translator):
    from omniformer.model.generate import generate
    tk = translator.tokenizer
    # Forced to start with another animal, the translator goes on with the sentence's verb.
    assert translator.generate("a cat", text="ein hund läuft.", num_beams=1) == "a cat runs."
    out = translator.generate(["a cat", "a bird"], text=["ein hund schläft.", "ein mann singt."], num_beams=3)
    assert out[0].startswith("a cat") and out[1].startswith("a bird")
    ids, mask = translator.predictor.encode(["ein hund schläft.", "ein mann singt."])
    context, context_mask = translator.predictor.model.encode({"text": ids, "text_mask": mask})
    prompts = [tk.encode("a cat")[1:-1], tk.encode("a bird")[1:-1]]
    direct = generate(translator.predictor.model.decoder, context, context_mask, bos_id=tk.cls_id, stop_ids=[tk.sep_id],
                      banned_ids=[tk.pad_id, tk.cls_id, tk.mask_id], prompts=prompts,
                      config=translator.config(prompts, num_beams=3))
    assert out == [tk.decode(p + g.tokens) for p, g in zip(prompts, direct)]
    # One prompt for several inputs; without max_new_tokens the new tokens fit what the prompt leaves.
    assert translator.generate("a", text=["ein vogel sieht.", "ein frau läuft."], num_beams=1) == \
        ["a bird sees.", "a woman runs."]
    assert translator.config([[5] * 8]).max_new_tokens == 12 - 1 - 8


def test_a_caption_checkpoint_captions_an_image_as_captioner_does(made):
    from omniformer import Generator
    from omniformer.tasks.caption import Captioner
    generator, captioner = Generator.load(made["caption"]), Captioner.load(made["caption"])
    image = str(made["red"])
    for options in ({}, {"num_beams": 1, "no_repeat_ngram_size": 2}, {"do_sample": True, "top_p": 0.9, "seed": 0}):
        assert generator.generate(image=image, **options) == captioner.caption(image, **options), options
    assert generator.generate(image=[image, str(made["image"])]) == captioner.caption([image, str(made["image"])])
    assert generator.generate("the grass", image=image, num_beams=1).startswith("the grass")


def test_a_pretraining_decoder_continues_a_text_and_writes_from_an_image(made):
    from omniformer import Generator
    from omniformer.model.generate import generate
    pretrained = Generator.load(made["pretrain"])
    assert pretrained.task == "pretrain" and pretrained.inputs == ["image"]
    # Its decoder learnt three texts from their own start: given the start, it writes the rest.
    assert pretrained.generate("the sky") == "the sky is blue."
    assert pretrained.generate(["the grass", "a dog"]) == ["the grass is green.", "a dog runs fast."]
    # With an image it reads the image (cross-attention) as pretraining's captions were written.
    tk, model = pretrained.tokenizer, pretrained.predictor.model
    image = pretrained.predictor.preprocessors["image"](str(made["red"]))
    fused = model.backbone({"image": image[None], "image_mask": torch.ones(1, dtype=torch.bool)})
    prompt = [tk.encode("the")[1:-1]]
    direct = generate(model.decoder, fused.hidden, fused.mask, bos_id=tk.cls_id, stop_ids=[tk.sep_id],
                      banned_ids=[tk.pad_id, tk.cls_id, tk.mask_id], prompts=prompt, config=pretrained.config(prompt))
    assert pretrained.generate("the", image=str(made["red"])) == tk.decode(prompt[0] + direct[0].tokens)


@pytest.mark.parametrize("which, call", [
    ("translate", dict(prompt="a", text="ein katze singt.")),
    ("translate", dict(text="ein mann sieht.", do_sample=True, temperature=2.0, seed=5)),
    ("pretrain", dict(prompt="the grass")),
    ("caption", dict(image="red")),
])
def test_stream_pieces_join_to_the_greedy_text(made, which, call):
    from omniformer import Generator
    generator = Generator.load(made[which])
    call = {k: (str(made[v]) if k == "image" else v) for k, v in call.items()}
    pieces = list(generator.stream(**call))
    assert len(pieces) > 1 and all(pieces)
    assert "".join(pieces) == generator.generate(**call, num_beams=1)
    if "prompt" in call:
        assert pieces[0] == call["prompt"]


def test_the_cli_prints_what_the_python_api_returns(made, translator, capsys):
    from omniformer import Generator
    capsys.readouterr()
    assert main(["generate", "--model", str(made["translate"]), "--text", "ein frau singt.", "--num-beams", "3"]) == 0
    assert capsys.readouterr().out == translator.generate(text="ein frau singt.", num_beams=3) + "\n"
    assert main(["generate", "--model", str(made["translate"]), "--text", "ein hund sieht.", "--prompt", "a cat",
                 "--stream"]) == 0
    assert capsys.readouterr().out == "a cat sees.\n"
    assert main(["generate", "--model", str(made["translate"]), "--text", "ein vogel läuft.", "--sample",
                 "--temperature", "3", "--top-p", "0.95", "--seed", "7"]) == 0
    assert capsys.readouterr().out.strip() == translator.generate(text="ein vogel läuft.", do_sample=True,
                                                                  temperature=3.0, top_p=0.95, seed=7)
    assert main(["generate", "--model", str(made["pretrain"]), "--prompt", "the sky"]) == 0
    assert capsys.readouterr().out == "the sky is blue.\n"
    assert main(["generate", "--model", str(made["caption"]), "--image", str(made["red"]), "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.strip() == Generator.load(made["caption"]).generate(image=str(made["red"]),
                                                                                      max_new_tokens=4)


@pytest.mark.parametrize("which, argv, expected", [
    ("translate", [], "text: missing; a translate checkpoint reads text"),
    ("translate", ["--text", "ein hund.", "--image", "red"], "image: a translate checkpoint reads text"),
    ("caption", [], "image: missing; a caption checkpoint reads image"),
    ("caption", ["--text", "ein hund."], "text: a caption checkpoint reads image, not a source text"),
    ("caption", ["--audio", "audio", "--image", "red"], "audio: a caption checkpoint reads image; it was not trained"),
    ("caption", ["--image", "bad_image"], "image: "),
    ("pretrain", ["--text", "the sky"], "give the text to continue as the prompt"),
    ("pretrain", ["--audio", "audio"], "audio: a pretraining decoder reads image"),
    ("translate", ["--text", "ein hund.", "--prompt", ""], "argument --prompt: empty"),
    ("translate", ["--text", " "], "argument --text: empty"),
    ("translate", ["--text", "ein hund.", "--prompt", "a " * 11], "prompt: 11 word pieces, more than the decoder's 12"),
    ("translate", ["--text", "ein hund.", "--prompt", "a dog", "--max-new-tokens", "10"], "max_new_tokens=10"),
    ("translate", ["--text", "ein hund.", "--max-new-tokens", "12"], "max_new_tokens: at most 11"),
    ("pretrain", ["--prompt", "the", "--max-new-tokens", "12"], "max_new_tokens: at most 11"),
    ("translate", ["--text", "ein hund.", "--top-p", "2"], "top_p=2.0: expected in (0, 1]"),
    ("translate", ["--text", "ein hund.", "--sample", "--temperature", "0"], "temperature"),
    ("translate", ["--text", "ein hund.", "--num-beams", "3", "--sample"], "num_beams > 1 with do_sample"),
    ("translate", ["--text", "ein hund.", "--stream"], None),  # the recipe's 2 beams: a stream uses one
    ("translate", ["--text", "ein hund.", "--stream", "--num-beams", "2"], "num_beams: streaming needs num_beams=1"),
    ("qa", [], "'qa' model, which writes no text; generate works with translate, caption and pretraining"),
    ("plain", ["--prompt", "the"], "pretrain with objectives.next_word > 0"),
])
def test_bad_inputs_are_refused_in_one_line_naming_the_option(made, capsys, which, argv, expected):
    argv = [str(made[a]) if a in ("red", "audio", "bad_image") else a for a in argv]
    command = ["generate", "--model", str(made[which]), *argv]
    capsys.readouterr()
    if expected is None:
        assert main(command) == 0
        return
    err = refused(capsys, command, expected)
    errors = [line for line in err.splitlines() if "error:" in line]  # argparse's own come after its usage
    assert len(errors) == 1 and expected in errors[0], err


def test_python_errors_name_what_is_wrong(made, translator):
    from omniformer import GeneratorError
    with pytest.raises(GeneratorError, match="prompt: empty"):
        translator.generate("  ", text="ein hund.")
    with pytest.raises(GeneratorError, match="prompt: 3 prompts for 2 inputs"):
        translator.generate(["a", "a", "a"], text=["ein hund.", "ein mann."])
    with pytest.raises(GeneratorError, match="text 1: empty"):
        translator.generate(text=["ein hund.", ""])
    with pytest.raises(GeneratorError, match="unknown generation option 'beams'"):
        translator.generate(text="ein hund.", beams=2)
    with pytest.raises(GeneratorError, match="text: stream writes one text at a time"):
        translator.stream(text=["ein hund.", "ein mann."])
    with pytest.raises(GeneratorError, match="num_beams: streaming needs num_beams=1"):
        translator.stream(text="ein hund.", num_beams=4)  # refused when called, before any piece
