"""Next-word prediction as a pretraining objective: a caption written from its image (and
speech) without seeing its own words, a text alone continued, the decoder learning, and the
caption and translate tasks starting their decoder from it."""
from __future__ import annotations

import torch

from omniformer.tasks.caption import CaptionConfig
from omniformer.tasks.pretrain import PretrainingModel
from omniformer.tasks.seq2seq import Seq2SeqModel, TranslateConfig
from omniformer.train.checkpoint import save_checkpoint
from test_task_models import batch, small_cfg

COLOURS = torch.tensor([[1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]])  # red, green, blue images


def next_word_cfg(*extra):
    return small_cfg("--objectives.mlm=0", "--objectives.matching=0", "--objectives.contrastive=0",
                     "--objectives.next_word=1.0", "--model.dropout=0.0", *extra)


def coloured(n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Images of one colour each, captioned "[CLS] colour-word shade-word [SEP]" (ids 10+c, 20+c)."""
    colour = torch.randint(0, 3, (n,), generator=generator)
    image = COLOURS[colour][:, :, None, None].expand(n, 3, 16, 16) + 0.1 * torch.randn(n, 3, 16, 16, generator=generator)
    text = torch.stack([torch.full_like(colour, 2), 10 + colour, 20 + colour, torch.full_like(colour, 3)], 1)
    return {"index": torch.arange(n), "text": text, "text_mask": torch.ones(n, 4, dtype=torch.bool),
            "image": image, "image_mask": torch.ones(n, dtype=torch.bool)}


def test_next_word_learns_captions_from_the_image_it_cannot_copy():
    cfg = next_word_cfg("--model.modalities=[text,image]")
    torch.manual_seed(0)
    model = PretrainingModel(cfg.model, cfg.objectives, [0, 1, 2, 3, 4], mask_id=4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(120):
        out = model(coloured(32, g))
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        held_out = model(coloured(64, torch.Generator().manual_seed(99)))
    # The colour word is only in the image; the shade word follows from it: all three are learnt.
    assert float(held_out["next_word_accuracy"]) > 0.95, held_out
    # The source is read without the text: changing the words cannot help the decoder predict them.
    b = coloured(64, torch.Generator().manual_seed(99))
    b["image"] = b["image"][torch.randperm(64, generator=torch.Generator().manual_seed(1))]
    with torch.no_grad():
        shuffled = model(b)
    assert float(shuffled["next_word_accuracy"]) < 0.9  # about (1/3 + 1 + 1) / 3: the colour is a guess


def test_next_word_covers_texts_without_another_modality_and_trains_the_decoder():
    cfg = next_word_cfg()
    model = PretrainingModel(cfg.model, cfg.objectives, [0, 1, 2, 3, 4], mask_id=4)
    b = batch()
    b["image_mask"][:] = False  # rows 3 (no audio) then have no source: continued as plain text
    b["audio_mask"][3] = False
    out = model(b)
    assert torch.isfinite(out["next_word_loss"]) and 0 <= float(out["next_word_accuracy"]) <= 1
    out["loss"].backward()
    assert model.decoder.decoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    text_only = {k: v for k, v in batch().items() if k.startswith("text") or k == "index"}
    assert torch.isfinite(model(text_only)["next_word_loss"])
    assert PretrainingModel(small_cfg().model, small_cfg().objectives, [0, 1, 2, 3, 4], mask_id=4).decoder is None


def test_caption_and_translate_start_their_decoder_from_pretraining(tmp_path):
    from omniformer.data.text import Tokenizer
    cfg = next_word_cfg("--objectives.next_word_depth=2", "--model.text.max_len=12")
    torch.manual_seed(0)
    pretrained = PretrainingModel(cfg.model, cfg.objectives, [0, 1, 2, 3, 4], mask_id=4)
    tokenizer = Tokenizer.train(["a red circle", "a blue square"] * 5, 60)
    path = save_checkpoint(tmp_path / "pre", pretrained, {"task": "pretrain", "config": {}}, tokenizer)
    caption_model_cfg = small_cfg("--model.modalities=[image]").model
    task = CaptionConfig(decoder_depth=2, max_target_len=8, max_new_tokens=7)
    model = Seq2SeqModel(caption_model_cfg, task)
    model.load_pretrained(path)
    assert model.decoder_loaded == len(model.decoder.state_dict())
    ours, theirs = model.decoder.state_dict(), pretrained.decoder.state_dict()
    assert torch.equal(ours["decoder.blocks.1.cross_attn.kv.weight"], theirs["decoder.blocks.1.cross_attn.kv.weight"])
    assert torch.equal(ours["token.weight"], pretrained.backbone.embedders["text"].token.weight)
    assert torch.equal(ours["positions.weight"], theirs["positions.weight"][:8])  # the first 8 of 12
    deeper = Seq2SeqModel(caption_model_cfg, CaptionConfig(decoder_depth=3, max_target_len=8, max_new_tokens=7))
    deeper.load_pretrained(path)  # a third layer starts fresh
    assert 0 < deeper.decoder_loaded < len(deeper.decoder.state_dict())
    plain = PretrainingModel(small_cfg().model, small_cfg().objectives, [0, 1, 2, 3, 4], mask_id=4)
    save_checkpoint(tmp_path / "plain", plain, {"task": "pretrain", "config": {}}, tokenizer)
    fresh = Seq2SeqModel(caption_model_cfg, task)
    fresh.load_pretrained(tmp_path / "plain")
    assert fresh.decoder_loaded == 0


def test_the_seq2seq_loss_scores_real_target_tokens_only_as_the_padded_formula_does():
    """Only real positions reach the output layer; the label-smoothed loss and the token accuracy
    equal those of the full padded logits with the padding ignored."""
    torch.manual_seed(0)
    cfg = small_cfg().model
    cfg.modalities = ["text"]
    task = TranslateConfig(decoder_depth=2, max_target_len=12, label_smoothing=0.1)
    model = Seq2SeqModel(cfg, task).eval()
    lengths = torch.tensor([12, 5, 3, 8])
    target_mask = torch.arange(12)[None, :] < lengths[:, None]
    target = torch.randint(5, cfg.vocab_size, (4, 12)).masked_fill(~target_mask, 0)
    source = torch.randint(5, cfg.vocab_size, (4, 7))
    batch = {"text": source, "text_mask": torch.ones_like(source, dtype=torch.bool), "target": target,
             "target_mask": target_mask}
    out = model(batch)
    context, context_mask = model.encode(batch)
    logits = model.decoder(target[:, :-1], context, context_mask)
    labels = target[:, 1:].masked_fill(~target_mask[:, 1:], -100)
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100,
                                                 label_smoothing=0.1)
    assert torch.allclose(out["loss"], expected, atol=1e-6)
    real = labels != -100
    accuracy = ((logits.argmax(-1) == labels) & real).sum() / real.sum()
    assert torch.allclose(out["token_accuracy"], accuracy)
    out["loss"].backward()
    assert model.decoder.bias.grad is not None and model.decoder.bias.grad.abs().sum() > 0
