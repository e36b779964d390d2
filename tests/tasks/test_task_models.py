"""Task models on synthetic batches: every objective produces a finite loss and gradients."""
import torch

from omniformer.config import load_config
from omniformer.tasks.pretrain import PretrainingModel
from omniformer.tasks.qa import QAConfig, QAModel, accuracy_report


def batch(B=8, vocab=60):
    g = torch.Generator().manual_seed(0)
    b = {"index": torch.arange(B), "text": torch.randint(5, vocab, (B, 10), generator=g),
         "text_mask": torch.ones(B, 10, dtype=torch.bool), "image": torch.randn(B, 3, 16, 16, generator=g),
         "image_mask": torch.ones(B, dtype=torch.bool), "audio": torch.randn(B, 16, 40, generator=g),
         "audio_mask": torch.ones(B, 40, dtype=torch.bool)}
    b["text"][:, 0], b["text"][:, -1] = 2, 3
    b["text_mask"][1, 6:] = False
    b["image_mask"][2] = False
    b["audio_mask"][3] = False
    return b


def small_cfg(*extra):
    return load_config(overrides=["--model.width=32", "--model.heads=2", "--model.depth=1", "--model.vocab_size=60",
                                  "--model.image.size=16", "--model.image.patch_size=4", "--model.audio.n_mels=16",
                                  *extra])


def test_pretraining_objectives_all_contribute():
    cfg = small_cfg("--objectives.masked_patch=0.5")
    model = PretrainingModel(cfg.model, cfg.objectives, [0, 1, 2, 3, 4], mask_id=4)
    torch.manual_seed(0)
    out = model(batch())
    for key in ("mlm_loss", "matching_loss", "contrastive_image_text_loss", "contrastive_audio_text_loss",
                "contrastive_audio_image_loss", "masked_image_loss", "masked_audio_loss"):
        assert key in out and torch.isfinite(out[key]), key
    out["loss"].backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert any(n.startswith("mlm_head") for n in grads)
    assert any(n.startswith("matching_head") for n in grads)
    assert "contrastive_head.logit_scale" in grads
    assert any(n.startswith("patch_heads.image") for n in grads)


def test_objective_weights_switch_objectives_off():
    cfg = small_cfg("--objectives.matching=0", "--objectives.contrastive=0")
    model = PretrainingModel(cfg.model, cfg.objectives, [0, 1, 2, 3, 4], mask_id=4)
    out = model(batch())
    assert "mlm_loss" in out and "matching_loss" not in out
    assert not any(k.startswith("contrastive") for k in out)


def test_qa_model_with_text_or_audio_questions():
    cfg = small_cfg()
    model = QAModel(cfg.model, num_answers=5)
    b = batch()
    b["answer"] = torch.tensor([0, 1, 2, 3, 4, 0, -100, 1])
    out = model(b)
    assert out["logits"].shape == (8, 5) and torch.isfinite(out["loss"])
    spoken = {k: v for k, v in b.items() if not k.startswith("text")}
    assert model(spoken)["logits"].shape == (8, 5)


def test_accuracy_report_groups():
    samples = [{"answer": "a", "meta": {"family": "shape", "relational": False}},
               {"answer": "b", "meta": {"family": "closest", "relational": True, "held_out_voice": True}},
               {"answer": "b", "meta": {"family": "closest", "relational": True, "held_out_voice": False}}]
    report = accuracy_report(samples + samples[1:], ["a", "b", "a", "a", "b"], [False, False, False, True, True],
                             groups=["family", "relational"], spoken_groups=["held_out_voice"])
    assert report["text/non_relational"] == 1.0 and report["text/relational"] == 0.5
    assert report["text/family/closest"] == 0.5 and report["spoken/family/closest"] == 0.5
    assert report["spoken/held_out_voice"] == 0.0 and report["spoken/non_held_out_voice"] == 1.0
    assert "text/held_out_voice" not in report                     # a spoken group, for spoken questions only
    assert report["accuracy"] == 3 / 5
    # Groups come from the recipe: a user's own meta keys group the same way, and none are implied.
    assert set(accuracy_report(samples, ["a", "b", "b"], [False] * 3)) == {"accuracy", "text/accuracy"}
    mine = accuracy_report([{"answer": "a", "meta": {"question_type": "what color"}}], ["a"], [False],
                           groups=["question_type"])
    assert mine["text/question_type/what color"] == 1.0


def test_spoken_words_pretraining_trains_a_spotter_that_qa_starts_from(tmp_path):
    from omniformer.train import checkpoint as ckpt
    cfg = small_cfg("--objectives.word_spotting=1.0")
    task = QAConfig(head="guided", spoken_question="words", word_spotting=1.0)
    model = PretrainingModel(cfg.model, cfg.objectives, [0, 1, 2, 3, 4], mask_id=4)
    out = model(batch())
    assert torch.isfinite(out["word_spotting_loss"])
    out["loss"].backward()
    assert model.word_spotter.score.weight.grad.abs().sum() > 0
    assert PretrainingModel(cfg.model, small_cfg().objectives, [0, 1, 2, 3, 4], mask_id=4).word_spotter is None
    ckpt.save_checkpoint(tmp_path / "pre", model, {"task": "pretrain"})
    qa = QAModel(cfg.model, 5, task)
    qa.load_pretrained(tmp_path / "pre")
    assert torch.equal(qa.word_spotter.score.weight, model.word_spotter.score.weight)
    assert torch.equal(qa.backbone.fusion.blocks[0].attn.qkv.weight, model.backbone.fusion.blocks[0].attn.qkv.weight)
    without = PretrainingModel(cfg.model, small_cfg().objectives, [0, 1, 2, 3, 4], mask_id=4)
    ckpt.save_checkpoint(tmp_path / "plain", without, {"task": "pretrain"})
    fresh = QAModel(cfg.model, 5, task)
    before = fresh.word_spotter.score.weight.clone()
    fresh.load_pretrained(tmp_path / "plain")                  # no spotter there: it keeps its own
    assert torch.equal(fresh.word_spotter.score.weight, before)


def test_guided_matching_pretrains_the_head_that_qa_answers_with(tmp_path, monkeypatch):
    import omniformer.tasks.pretrain as pretrain
    from omniformer.objectives import matching_loss
    from omniformer.train import checkpoint as ckpt
    cfg = small_cfg("--objectives.guided_matching=1.0", "--objectives.guided_glimpses=2")
    torch.manual_seed(0)
    model = PretrainingModel(cfg.model, cfg.objectives, [0, 1, 2, 3, 4], mask_id=4)
    b = batch()
    out = model(b)
    assert torch.isfinite(out["guided_matching_loss"]) and 0 <= out["guided_matching_accuracy"] <= 1
    out["loss"].backward()
    head = model.guided_matching_head
    assert head.key[1].weight.grad.abs().sum() > 0 and head.question["text"].weight.grad.abs().sum() > 0

    # Recomputed by hand: each caption (read unmasked) against its own image and its partner's.
    rows = (b["text_mask"].any(1) & b["image_mask"]).nonzero().squeeze(1)
    partner = torch.tensor([1, 0, 3, 2, 5, 6, 4])          # any derangement of the 7 rows
    model.eval()
    with torch.no_grad():
        fused = model.backbone(b)
        monkeypatch.setattr(pretrain, "hard_negative_indices", lambda sim, generator=None: partner)
        loss, _ = model._guided_matching(b, fused, b["text_mask"].any(1) & b["image_mask"],
                                         torch.zeros(len(rows), len(rows)), hard=True)
        text = model.backbone.embedders["text"]
        table = text.ln(text.token.weight + text.type_embedding)   # each word as the embedder outputs it
        caption = torch.stack([table[b["text"][r][b["text_mask"][r]].unique()].mean(0) for r in rows.tolist()])
        image, mask = (t[rows] for t in fused.embedded["image"])
        zeros = torch.zeros_like(caption)
        pos = head(zeros, {"text": caption}, image, mask).squeeze(-1)
        neg = head(zeros, {"text": caption}, image[partner], mask[partner]).squeeze(-1)
    assert torch.allclose(loss, matching_loss(pos, neg))

    ckpt.save_checkpoint(tmp_path / "pre", model, {"task": "pretrain"})
    qa = QAModel(cfg.model, 5, QAConfig(head="guided", glimpses=2))
    output = qa.answer_head.classifier.net[-1].weight.clone()
    qa.load_pretrained(tmp_path / "pre")
    assert torch.equal(qa.answer_head.key[1].weight, head.key[1].weight)
    assert torch.equal(qa.answer_head.seen[0].weight, head.seen[0].weight)
    assert torch.equal(qa.answer_head.classifier.net[0].weight, head.classifier.net[0].weight)
    assert torch.equal(qa.answer_head.classifier.net[-1].weight, output)   # one logit vs five answers: its own


def test_guided_matching_checkpoint_loads_into_a_head_with_relations(tmp_path):
    from omniformer.train import checkpoint as ckpt
    cfg = small_cfg("--objectives.guided_matching=1.0")
    torch.manual_seed(0)
    model = PretrainingModel(cfg.model, cfg.objectives, [0, 1, 2, 3, 4], mask_id=4)
    ckpt.save_checkpoint(tmp_path / "pre", model, {"task": "pretrain"})
    qa = QAModel(cfg.model, 5, QAConfig(head="guided", relations=True))
    first = qa.answer_head.classifier.net[0].weight.clone()
    qa.load_pretrained(tmp_path / "pre")       # matching had no relations: those and the classifier's input are new
    head = model.guided_matching_head
    assert torch.equal(qa.answer_head.key[0].weight, head.key[0].weight)
    assert torch.equal(qa.answer_head.classifier.net[0].weight, first)
    assert torch.equal(qa.answer_head.classifier.net[2].weight, head.classifier.net[2].weight)
