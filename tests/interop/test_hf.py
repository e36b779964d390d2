"""Importing Hugging Face checkpoints as towers: parity with the reference models, and errors.

Every reference model is built here from a small config with random weights and saved with
``save_pretrained``; nothing is downloaded.
"""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file, save_file  # noqa: E402

from omniformer.config import ModelConfig  # noqa: E402
from omniformer.interop.hf import TowerImportError, import_tower, pretrained_backbone  # noqa: E402
from omniformer.model import Omniformer  # noqa: E402

TOL = 1e-5


def _save(model, path):
    model.eval().save_pretrained(path)
    return path


def _ours(tower, batch):
    """Our embedder + tower on ``batch``: (hidden (B, N, W), mask (B, N))."""
    cfg = ModelConfig(modalities=[tower.modality], width=tower.tower.width, heads=tower.tower.heads, dropout=0.0)
    tower.apply(cfg)
    model = Omniformer(cfg).eval()
    tower.load_into(model)
    with torch.no_grad():
        x, mask = model.embedders[tower.modality](batch)
        return model.towers[tower.modality](x, mask), mask


def _text_batch(vocab, lengths, lo=3, pad=0, seed=0):
    g = torch.Generator().manual_seed(seed)
    L = max(lengths)
    ids = torch.randint(lo, vocab, (len(lengths), L), generator=g)
    mask = torch.arange(L)[None, :] < torch.tensor(lengths)[:, None]
    return ids.masked_fill(~mask, pad), mask


def _assert_close(ours, ref, mask):
    diff = (ours - ref)[mask].abs().max().item()
    assert diff <= TOL, f"max abs difference {diff:.2e} on valid positions"


# ---------------------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------------------

BERT_CONFIGS = [
    dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48, hidden_act="gelu",
         layer_norm_eps=1e-12),
    dict(hidden_size=48, num_hidden_layers=3, num_attention_heads=3, intermediate_size=80, hidden_act="gelu_new",
         layer_norm_eps=1e-5, type_vocab_size=3),
]


@pytest.mark.parametrize("conf", BERT_CONFIGS)
@pytest.mark.parametrize("with_head", [False, True])
def test_bert_parity(tmp_path, conf, with_head):
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=97, max_position_embeddings=40, **conf)
    ref = transformers.BertForMaskedLM(config) if with_head else transformers.BertModel(config)
    tower = import_tower("bert", _save(ref, tmp_path))
    assert tower.skipped  # the pooler (BertModel) or the MLM head (BertForMaskedLM)
    ids, mask = _text_batch(97, [12, 7, 3])
    base = ref.bert if with_head else ref
    with torch.no_grad():
        expected = base(input_ids=ids, attention_mask=mask.long()).last_hidden_state
    ours, our_mask = _ours(tower, {"text": ids, "text_mask": mask})
    assert torch.equal(our_mask, mask)
    _assert_close(ours, expected, mask)


@pytest.mark.parametrize("conf", BERT_CONFIGS[:1] + [dict(hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                                                          intermediate_size=40, hidden_act="relu", layer_norm_eps=1e-6)])
def test_roberta_parity(tmp_path, conf):
    torch.manual_seed(1)
    config = transformers.RobertaConfig(vocab_size=97, max_position_embeddings=42, pad_token_id=1, type_vocab_size=1,
                                        **conf)
    ref = transformers.RobertaModel(config)
    tower = import_tower("roberta", _save(ref, tmp_path))
    ids, mask = _text_batch(97, [11, 4, 9], pad=1)
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask.long()).last_hidden_state
    ours, _ = _ours(tower, {"text": ids, "text_mask": mask})
    _assert_close(ours, expected, mask)


CLIP_TEXT_CONFIGS = [
    dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, hidden_act="quick_gelu",
         layer_norm_eps=1e-5),
    dict(hidden_size=40, num_hidden_layers=3, num_attention_heads=5, intermediate_size=72, hidden_act="gelu",
         layer_norm_eps=1e-6),
]


@pytest.mark.parametrize("conf", CLIP_TEXT_CONFIGS)
def test_clip_text_parity(tmp_path, conf):
    torch.manual_seed(2)
    config = transformers.CLIPTextConfig(vocab_size=97, max_position_embeddings=24, bos_token_id=95, eos_token_id=96,
                                         **conf)
    ref = transformers.CLIPTextModel(config)
    tower = import_tower("clip_text", _save(ref, tmp_path))
    assert tower.tower.causal
    ids, mask = _text_batch(97, [10, 6, 2], pad=1)
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask.long()).last_hidden_state
    ours, _ = _ours(tower, {"text": ids, "text_mask": mask})
    _assert_close(ours, expected, mask)


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------

VIT_CONFIGS = [
    dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, hidden_act="gelu",
         layer_norm_eps=1e-12, image_size=16, patch_size=4),
    dict(hidden_size=48, num_hidden_layers=3, num_attention_heads=6, intermediate_size=40, hidden_act="gelu_new",
         layer_norm_eps=1e-6, image_size=24, patch_size=8, qkv_bias=False),
]


def _images(size, B=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    present = torch.tensor([True, False, True])[:B]  # the second sample has no image
    return {"image": torch.randn(B, 3, size, size, generator=g), "image_mask": present}


@pytest.mark.parametrize("conf", VIT_CONFIGS)
def test_vit_parity(tmp_path, conf):
    torch.manual_seed(3)
    ref = transformers.ViTModel(transformers.ViTConfig(**conf))
    path = _save(ref, tmp_path)
    (path / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.4, 0.5, 0.6],
                                                               "image_std": [0.2, 0.3, 0.4]}))
    tower = import_tower("vit", path)
    assert tower.settings["mean"] == [0.4, 0.5, 0.6] and tower.settings["std"] == [0.2, 0.3, 0.4]
    batch = _images(conf["image_size"])
    with torch.no_grad():
        expected = ref(pixel_values=batch["image"]).last_hidden_state
    ours, mask = _ours(tower, batch)
    assert ours.shape == expected.shape  # [CLS] + patches
    _assert_close(ours, expected, mask)


CLIP_VISION_CONFIGS = [
    dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, hidden_act="quick_gelu",
         layer_norm_eps=1e-5, image_size=16, patch_size=4),
    dict(hidden_size=24, num_hidden_layers=3, num_attention_heads=2, intermediate_size=56, hidden_act="gelu",
         layer_norm_eps=1e-6, image_size=20, patch_size=5),
]


@pytest.mark.parametrize("conf", CLIP_VISION_CONFIGS)
def test_clip_vision_parity(tmp_path, conf):
    torch.manual_seed(4)
    ref = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**conf))
    tower = import_tower("clip_vision", _save(ref, tmp_path))
    batch = _images(conf["image_size"])
    with torch.no_grad():
        vision = getattr(ref, "vision_model", ref)  # transformers 5 flattened CLIPVisionModel
        expected = vision.post_layernorm(ref(pixel_values=batch["image"]).last_hidden_state)
    ours, mask = _ours(tower, batch)
    _assert_close(ours, expected, mask)


def test_clip_full_model_imports_each_tower(tmp_path):
    torch.manual_seed(5)
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=97, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=16),
        vision_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
                           image_size=16, patch_size=8), projection_dim=16)
    ref = transformers.CLIPModel(config)
    path = _save(ref, tmp_path)
    text, vision = import_tower("clip_text", path), import_tower("clip_vision", path)
    assert any(s.startswith("vision_model.") for s in text.skipped) and "text_projection.weight" in text.skipped
    ids, mask = _text_batch(97, [9, 5], pad=1)
    with torch.no_grad():
        expected = ref.text_model(input_ids=ids, attention_mask=mask.long()).last_hidden_state
    _assert_close(_ours(text, {"text": ids, "text_mask": mask})[0], expected, mask)
    batch = _images(16)
    with torch.no_grad():
        expected = ref.vision_model.post_layernorm(ref.vision_model(pixel_values=batch["image"]).last_hidden_state)
    ours, mask = _ours(vision, batch)
    _assert_close(ours, expected, mask)


# ---------------------------------------------------------------------------------------------
# Audio: the Whisper encoder
# ---------------------------------------------------------------------------------------------

WHISPER_CONFIGS = [
    dict(d_model=32, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=64, num_mel_bins=16,
         max_source_positions=24, activation_function="gelu"),
    dict(d_model=48, encoder_layers=3, encoder_attention_heads=6, encoder_ffn_dim=40, num_mel_bins=20,
         max_source_positions=16, activation_function="relu"),
]


def _whisper(conf):
    small_decoder = dict(decoder_layers=1, decoder_attention_heads=conf["encoder_attention_heads"],
                         decoder_ffn_dim=32, vocab_size=64, max_target_positions=8, pad_token_id=0,
                         bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
    config = transformers.WhisperConfig(**conf, **small_decoder, attn_implementation="eager")
    return transformers.WhisperModel(config)


def _whisper_reference(encoder, features, frame_mask):
    """Whisper's encoder with a padding mask (Whisper itself never masks; its layers accept one)."""
    x = features * frame_mask[:, None, :].to(features.dtype)
    x = F.gelu(encoder.conv2(F.gelu(encoder.conv1(x)))).permute(0, 2, 1)
    n = x.size(1)
    x = x + encoder.embed_positions.weight[:n]
    valid = frame_mask[:, ::2]
    additive = torch.zeros(x.size(0), 1, n, n).masked_fill(~valid[:, None, None, :], torch.finfo(x.dtype).min)
    for layer in encoder.layers:
        x = layer(x, additive)
    return encoder.layer_norm(x), valid


@pytest.mark.parametrize("conf", WHISPER_CONFIGS)
def test_whisper_parity(tmp_path, conf):
    torch.manual_seed(6)
    ref = _whisper(conf)
    path = _save(ref, tmp_path)
    (path / "preprocessor_config.json").write_text(json.dumps({
        "feature_size": conf["num_mel_bins"], "sampling_rate": 16000, "hop_length": 160, "n_fft": 400}))
    tower = import_tower("whisper", path)
    assert any(s.startswith("decoder.") for s in tower.skipped)
    assert tower.settings["n_mels"] == conf["num_mel_bins"] and tower.settings["win_ms"] == 25.0
    P, M = conf["max_source_positions"], conf["num_mel_bins"]
    encoder = ref.encoder.eval()

    # Full length, no padding: exactly Whisper's own forward.
    feats = torch.randn(2, M, 2 * P)
    with torch.no_grad():
        expected = encoder(feats).last_hidden_state
    ours, mask = _ours(tower, {"audio": feats, "audio_mask": torch.ones(2, 2 * P, dtype=torch.bool)})
    _assert_close(ours, expected, mask)

    # Padded batch (odd and even lengths), compared on valid tokens.
    T = 2 * P - 5
    lengths = torch.tensor([T, T - 8, 7])
    frame_mask = torch.arange(T)[None, :] < lengths[:, None]
    feats = torch.randn(3, M, T).masked_fill(~frame_mask[:, None, :], 3.0)  # padding values must not matter
    with torch.no_grad():
        expected, valid = _whisper_reference(encoder, feats, frame_mask)
    ours, mask = _ours(tower, {"audio": feats, "audio_mask": frame_mask})
    assert torch.equal(mask, valid)
    _assert_close(ours, expected, mask)


# ---------------------------------------------------------------------------------------------
# Errors: every tensor accounted for
# ---------------------------------------------------------------------------------------------

def _small_bert(tmp_path):
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=20)
    return _save(transformers.BertModel(config), tmp_path)


def _edit_weights(path, fn):
    tensors = load_file(str(path / "model.safetensors"))
    fn(tensors)
    save_file(tensors, str(path / "model.safetensors"))


def test_missing_tensor_is_named(tmp_path):
    path = _small_bert(tmp_path)
    _edit_weights(path, lambda t: t.pop("encoder.layer.0.attention.self.key.weight"))
    with pytest.raises(TowerImportError, match=r"missing tensor 'encoder\.layer\.0\.attention\.self\.key\.weight'"):
        import_tower("bert", path)
    tower = import_tower("bert", path, allow_missing=True)
    assert tower.missing == ["encoder.layer.0.attention.self.key.weight"]
    assert "towers.text.blocks.0.attn.qkv.weight" not in tower.state
    _ours(tower, {"text": torch.tensor([[5, 6, 7]])})  # still builds and runs


def test_wrong_shape_is_named(tmp_path):
    path = _small_bert(tmp_path)
    _edit_weights(path, lambda t: t.__setitem__("encoder.layer.0.output.dense.weight", torch.zeros(16, 31)))
    with pytest.raises(TowerImportError, match=r"'encoder\.layer\.0\.output\.dense\.weight' has shape \(16, 31\)"):
        import_tower("bert", path)


def test_unused_tensor_is_named(tmp_path):
    path = _small_bert(tmp_path)
    _edit_weights(path, lambda t: t.__setitem__("encoder.layer.0.adapter.weight", torch.zeros(4)))
    with pytest.raises(TowerImportError, match=r"'encoder\.layer\.0\.adapter\.weight' is not used"):
        import_tower("bert", path)
    assert import_tower("bert", path, allow_unused=True).unused == ["encoder.layer.0.adapter.weight"]


def test_wrong_kind_and_layer_count(tmp_path):
    path = _small_bert(tmp_path)
    with pytest.raises(TowerImportError, match="embeddings.cls_token"):
        import_tower("vit", path)
    config = json.loads((path / "config.json").read_text())
    config["num_hidden_layers"] = 2  # config.json promises a layer the weights lack
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(TowerImportError, match=r"missing tensor 'encoder\.layer\.1\.attention\.self\.query\.weight'"):
        import_tower("bert", path)


def test_pytorch_bin_is_loaded_weights_only(tmp_path):
    path = _small_bert(tmp_path)
    torch.save(load_file(str(path / "model.safetensors")), path / "pytorch_model.bin")
    (path / "model.safetensors").unlink()
    assert import_tower("bert", path).state
    # A pickle that would run code is refused, not executed.
    torch.save({"x": __import__("collections").OrderedDict(a=print)}, path / "pytorch_model.bin")
    with pytest.raises(TowerImportError, match="weights_only=True"):
        import_tower("bert", path)


def test_towers_from_with_projection_to_fusion_width(tmp_path):
    """A 16-wide BERT tower under a 32-wide fusion model: a projection joins them."""
    path = _small_bert(tmp_path)
    cfg = ModelConfig(width=32, heads=4, depth=1, modalities=["text"], towers_from={"text": f"bert:{path}"},
                      dropout=0.0)
    model, towers = pretrained_backbone(cfg)
    assert cfg.text.tower.width == 16 and cfg.vocab_size == 50 and "text" in model.tower_proj
    out = model({"text": torch.tensor([[2, 7, 9, 3]])})
    assert out.hidden.shape == (1, 5, 32) and torch.isfinite(out.hidden).all()
    wrong = ModelConfig(modalities=["text"], towers_from={"text": f"vit:{path}"})
    with pytest.raises(TowerImportError, match="image tower"):
        pretrained_backbone(wrong)


# ---------------------------------------------------------------------------------------------
# Composition: BERT + ViT + Whisper towers, new fusion layers, a short QA fine-tune
# ---------------------------------------------------------------------------------------------

COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def _tiny_qa_manifest(root):
    import numpy as np
    from PIL import Image

    from omniformer.data.audio import write_audio
    from omniformer.data.manifest import write_manifest
    samples = []
    for i in range(12):
        name = list(COLORS)[i % 3]
        image = Image.new("RGB", (16, 16), (255, 255, 255))
        image.paste(COLORS[name], (4, 4, 12, 12))
        image.save(root / f"img{i}.png")
        t = np.arange(4000) / 16000
        write_audio(root / f"q{i}.wav", 0.3 * np.sin(2 * np.pi * (300 + 200 * (i % 3)) * t), 16000)
        samples.append({"id": f"s{i}", "image": f"img{i}.png", "question": "what color is the square?",
                        "question_audio": f"q{i}.wav", "answer": name, "split": "val" if i >= 9 else "train"})
    return write_manifest(root / "manifest.jsonl", samples)


def _reference_checkpoints(root):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "what", "color", "is", "the", "square", "?", "shape"]
    torch.manual_seed(7)
    bert = _save(transformers.BertModel(transformers.BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=48,
        max_position_embeddings=24)), root / "bert")
    (bert / "vocab.txt").write_text("\n".join(vocab) + "\n")
    vit = _save(transformers.ViTModel(transformers.ViTConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=48, image_size=16,
        patch_size=8)), root / "vit")
    (vit / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0.5] * 3}))
    whisper = _save(_whisper(dict(d_model=24, encoder_layers=1, encoder_attention_heads=4, encoder_ffn_dim=32,
                                  num_mel_bins=16, max_source_positions=50)), root / "whisper")
    (whisper / "preprocessor_config.json").write_text(json.dumps(
        {"feature_size": 16, "sampling_rate": 16000, "hop_length": 160, "n_fft": 400}))
    return bert, vit, whisper


def test_compose_pretrained_towers_and_finetune_qa(tmp_path):
    from omniformer.cli import RECIPES, main
    from omniformer.config import load_config
    from omniformer.tasks.pipeline import finetune
    from omniformer.tasks.qa import QAPredictor
    from omniformer.train.checkpoint import load_weights

    manifest = _tiny_qa_manifest(tmp_path)
    bert, vit, whisper = _reference_checkpoints(tmp_path)
    recipe = tmp_path / "recipe.yaml"
    base = load_config(RECIPES / "from-pretrained.yaml", {
        "out_dir": str(tmp_path / "run"),
        "model": {"width": 16, "heads": 2, "depth": 1, "text": {"max_len": 16}, "audio": {"max_seconds": 0.5}},
        "data": {"manifest": str(manifest)},
        "finetune": {"steps": 4, "batch_size": 4, "warmup_steps": 1, "eval_every": 4, "save_every": 4,
                     "log_every": 1, "workers": 0, "device": "cpu", "progress": False, "eval_batches": 1}})
    from omniformer.config import save_config
    save_config(base, recipe)

    imported = tmp_path / "imported"
    assert main(["import", "--config", str(recipe), "--out", str(imported), "--text", f"bert:{bert}",
                 "--image", f"vit:{vit}", "--audio", f"whisper:{whisper}"]) == 0
    cfg = load_config(imported / "recipe.yaml")
    assert cfg.model.text.tower.width == 32 and cfg.model.audio.tower.width == 24 and cfg.model.audio.stem == "whisper"
    assert cfg.model.image.cls_token and cfg.model.image.size == 16 and cfg.model.vocab_size == 12

    # The imported backbone carries BERT's word embeddings.
    holder = torch.nn.Module()
    holder.backbone = Omniformer(cfg.model)
    load_weights(imported, holder)
    ref = transformers.BertModel.from_pretrained(bert)
    assert torch.equal(holder.backbone.embedders["text"].token.weight, ref.embeddings.word_embeddings.weight)

    best = finetune(cfg, init=imported, progress=False)
    qa = QAPredictor.load(best)
    answers = qa.ask(tmp_path / "img0.png", question="what color is the square?", top_k=3)
    assert len(answers) == 3 and {a for a, _ in answers} <= set(COLORS)
    assert qa.ask(tmp_path / "img1.png", audio=tmp_path / "q1.wav")


# ---------------------------------------------------------------------------------------------
# Damaged or unusual checkpoints: errors that name the file and what to do
# ---------------------------------------------------------------------------------------------

def _small_vit(tmp_path, **conf):
    torch.manual_seed(0)
    settings = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                    image_size=16, patch_size=4)
    return _save(transformers.ViTModel(transformers.ViTConfig(**{**settings, **conf})), tmp_path)


@pytest.mark.parametrize("damage, expected", [
    ("cut", r"model\.safetensors is cut short: [\d,]+ bytes of the [\d,]+ its header describes"),
    ("empty", r"model\.safetensors is empty \(0 bytes\)"),
    ("lfs", r"model\.safetensors is a git-lfs pointer.*run 'git lfs pull'"),
])
def test_a_damaged_weights_file_is_named_through_import(tmp_path, capsys, damage, expected):
    from omniformer.cli import main
    path = _small_bert(tmp_path / "bert")
    weights = path / "model.safetensors"
    if damage == "cut":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "empty":
        weights.write_bytes(b"")
    else:
        weights.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:4d7a\nsize 12345\n")
    with pytest.raises(TowerImportError, match=expected):
        import_tower("bert", path)
    assert main(["import", "--out", str(tmp_path / "out"), "--text", f"bert:{path}"]) == 2
    err = capsys.readouterr().err
    assert str(weights) in err and "Traceback" not in err and "SafetensorError" not in err


def test_a_damaged_shard_and_config_are_named(tmp_path):
    path = _small_bert(tmp_path)
    weights = path / "model.safetensors"
    weights.rename(path / "model-00001-of-00001.safetensors")
    index = path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"x": "model-00001-of-00001.safetensors"}}))
    shard = path / "model-00001-of-00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(TowerImportError, match=r"model-00001-of-00001\.safetensors is cut short"):
        import_tower("bert", path)
    (path / "config.json").write_text('{"hidden_size": 16,')
    with pytest.raises(TowerImportError, match=r"config\.json: not valid JSON: .* line 1, column"):
        import_tower("bert", path)
    (path / "config.json").write_text("[16, 2]")
    with pytest.raises(TowerImportError, match=r"config\.json: expected a JSON object"):
        import_tower("bert", path)


def test_vit_image_size_as_a_pair(tmp_path):
    """HF allows image_size [h, w]: a square pair imports; a rectangle is refused by name, since
    the image tower takes one side (model.image.size)."""
    square = import_tower("vit", _small_vit(tmp_path / "square", image_size=[16, 16], patch_size=[4, 4]))
    assert square.settings["size"] == 16 and square.settings["patch_size"] == 4
    cfg = ModelConfig(modalities=["image"], width=16, heads=2)
    square.apply(cfg)
    assert cfg.image.size == 16
    path = _small_vit(tmp_path / "rect", image_size=[32, 48])
    with pytest.raises(TowerImportError, match=r"image_size=\[32, 48\] is not square.*model\.image\.size"):
        import_tower("vit", path)


def test_a_one_channel_vit_asks_for_its_normalisation(tmp_path):
    path = _small_vit(tmp_path, num_channels=1)
    with pytest.raises(TowerImportError, match=r"1-channel image tower.*add .*preprocessor_config\.json with "
                                               r"image_mean and image_std of 1 value"):
        import_tower("vit", path)
    (path / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5]}))
    with pytest.raises(TowerImportError, match=r"preprocessor_config\.json: image_mean .*expected 1 numbers"):
        import_tower("vit", path)
    (path / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.4], "image_std": [0.2]}))
    tower = import_tower("vit", path)
    cfg = ModelConfig(modalities=["image"], width=16, heads=2)
    tower.apply(cfg)
    assert cfg.image.channels == 1 and cfg.image.mean == [0.4] and cfg.image.std == [0.2]
    batch = {"image": torch.randn(2, 1, 16, 16), "image_mask": torch.tensor([True, True])}
    ref = transformers.ViTModel.from_pretrained(path).eval()
    with torch.no_grad():
        expected = ref(pixel_values=batch["image"]).last_hidden_state
    ours, mask = _ours(tower, batch)
    _assert_close(ours, expected, mask)


def test_a_config_value_of_the_wrong_type_is_named(tmp_path):
    path = _small_vit(tmp_path)
    config = json.loads((path / "config.json").read_text())
    config["patch_size"] = "four"
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(TowerImportError, match=r"patch_size='four'"):
        import_tower("vit", path)
