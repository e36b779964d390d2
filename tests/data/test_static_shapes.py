"""StaticShapes: batches padded to fixed length edges, with every task model's loss unchanged."""
import pytest
import torch

from omniformer.config import ObjectiveConfig, load_config
from omniformer.data.batching import StaticShapes, bucket_edges, collate, static_edges
from omniformer.model import fusion as fusion_module

VOCAB = 60


def model_cfg(**model):
    base = {"width": 32, "heads": 2, "depth": 1, "tower_depth": 1, "dropout": 0.0, "vocab_size": VOCAB,
            "image": {"size": 16, "patch_size": 4}, "audio": {"n_mels": 16}}
    return load_config(overrides={"model": {**base, **model}}).model


def items(n=5, text=True, image=True, audio=True, transcript=False, target=False, answer=None, label=None,
          seed=0):
    """Dataset items of unequal lengths (text 5..11 tokens, audio 21..45 frames), each as the
    datasets make them; some lack a modality."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        it = {"index": i}
        if text and i != 1:
            it["text"] = torch.cat([torch.tensor([2]), torch.randint(5, VOCAB, (3 + i + (i % 2) * 3,), generator=g),
                                    torch.tensor([3])])
        if image and i != 2:
            it["image"] = torch.randn(3, 16, 16, generator=g)
        if audio and i != 3:
            it["audio"] = torch.randn(16, 21 + 6 * i, generator=g)
            if transcript:
                it["transcript"] = torch.randint(1, 6, (2 + i,), generator=g)
        if target:
            it["target"] = torch.cat([torch.tensor([2]), torch.randint(5, VOCAB, (2 + 2 * i,), generator=g),
                                      torch.tensor([3])])
        if answer is not None:
            it["answer"] = answer[i]
        if label is not None:
            it["label"] = label[i]
        out.append(it)
    return out


EDGES = {"text": [16, 32, 48], "audio": [64, 128], "target": [16, 20], "transcript": [8, 16]}


def test_lengths_land_on_edges_and_values_pad_as_collate_pads():
    raw = collate(items(transcript=True, target=True, answer=[0, 1, -100, 2, 3]))
    batch = StaticShapes(collate, EDGES, pad_id=7).pad(raw)
    assert raw["text"].shape[1] == 11 and batch["text"].shape == (5, 16) and batch["text_mask"].shape == (5, 16)
    assert raw["audio"].shape[2] == 45 and batch["audio"].shape == (5, 16, 64) and batch["audio_mask"].shape == (5, 64)
    assert batch["transcript"].shape == (5, 8) and batch["target"].shape == (5, 16)
    for key in ("text", "audio", "transcript", "target"):
        T = raw[key].shape[-1]
        assert torch.equal(batch[key][..., :T], raw[key]), key            # the real part is kept
        assert torch.equal(batch[f"{key}_mask"][:, :T], raw[f"{key}_mask"]), key
        assert not batch[f"{key}_mask"][:, T:].any(), key                 # the new part is padding
    assert (batch["text"][:, 11:] == 7).all() and (batch["audio"][..., 45:] == 0).all()
    for key in ("index", "answer", "image", "image_mask"):               # no length axis: the same tensors
        assert batch[key] is raw[key], key


def test_a_length_past_the_last_edge_is_kept_and_one_on_an_edge_untouched():
    raw = collate(items(image=False, audio=False))
    assert raw["text"].shape[1] == 11
    assert StaticShapes(collate, {"text": [8, 10]}).pad(raw)["text"] is raw["text"]     # past 10: never cut
    assert StaticShapes(collate, {"text": [11, 32]}).pad(raw)["text"] is raw["text"]    # on an edge already


def test_keys_it_does_not_know_are_left_untouched():
    raw = collate(items(image=False, audio=False))
    B, L = raw["text"].shape
    raw["extra"] = torch.zeros(B, L)                            # the text's length, but no mask says it is one
    raw["depth"], raw["depth_mask"] = torch.ones(B, 2, L), torch.ones(B, L, dtype=torch.bool)  # no edges for it
    raw["bad"] = [(3, "broken.wav")]
    batch = StaticShapes(collate, EDGES).pad(raw)
    assert batch["text"].shape == (B, 16)
    for key in ("extra", "depth", "depth_mask", "bad"):
        assert batch[key] is raw[key], key


def test_edges_follow_the_model_and_bad_edges_are_refused():
    from omniformer.tasks.seq2seq import Seq2SeqModel, TranslateConfig
    cfg = model_cfg(text={"max_len": 40}, audio={"n_mels": 16, "max_seconds": 2.0})
    edges = static_edges(Seq2SeqModel(cfg, TranslateConfig(max_target_len=24, max_new_tokens=20)))
    assert edges["text"] == [16, 32, 40] and edges["target"] == [16, 24]
    assert edges["audio"] == [64, 128, cfg.audio.max_frames] and edges["transcript"][:3] == [16, 32, 64]
    assert bucket_edges(12) == [12] and bucket_edges(100, first=8) == [8, 16, 32, 64, 100]
    with pytest.raises(ValueError, match="ascending"):
        StaticShapes(collate, {"text": [32, 16]})


# -- every task model: the loss of the padded batch is the loss of the unpadded one -------------------

def _qa():
    from omniformer.tasks.qa import QAConfig, QAModel
    task = QAConfig(head="guided", spoken_question="words", relations=True, word_spotting=1.0, grounding=0.2)
    model = QAModel(model_cfg(), 4, task).train()  # train mode (dropout 0): the grounding loss counts too
    return model, items(transcript=True, answer=[0, 1, 2, 3, -100])


def _classify():
    from omniformer.tasks.classify import ClassifyConfig
    from omniformer.tasks.classify.model import ClassifierModel
    return ClassifierModel(model_cfg(), 3, ClassifyConfig(pooling="both")).eval(), items(label=[0, 1, 2, -100, 1])


def _asr():
    from omniformer.tasks.asr import ASRModel
    cfg = model_cfg(modalities=["audio"], audio={"n_mels": 16, "subsample": 2})
    return ASRModel(cfg, 6).eval(), items(text=False, image=False, transcript=True)


def _translate():
    from omniformer.tasks.seq2seq import Seq2SeqModel, TranslateConfig
    model = Seq2SeqModel(model_cfg(modalities=["text"]), TranslateConfig(decoder_depth=1, max_target_len=20,
                                                                          max_new_tokens=10))
    return model.eval(), items(image=False, audio=False, target=True)


def _caption():
    from omniformer.tasks.caption import CaptionConfig
    from omniformer.tasks.seq2seq import Seq2SeqModel
    model = Seq2SeqModel(model_cfg(), CaptionConfig(inputs=["image", "audio"], decoder_depth=1, max_target_len=20,
                                                    max_new_tokens=10))
    return model.eval(), items(text=False, target=True)


def _pretrain():
    from omniformer.tasks.pretrain import PretrainingModel
    # MLM and masked patches draw their masks over the batch's shape, so padding moves the draws
    # (the class docstring says so); the other objectives read no random positions.
    objectives = ObjectiveConfig(mlm=0.0, masked_patch=0.0, matching=1.0, contrastive=1.0, word_spotting=1.0,
                                 guided_matching=1.0, next_word=1.0, next_word_depth=1)
    return PretrainingModel(model_cfg(), objectives, [0, 1, 2, 3, 4], mask_id=4).eval(), items()


def _loss(model, batch):
    torch.manual_seed(0)  # matching's hard negatives are drawn from the similarities
    with torch.no_grad():
        return model(batch)


@pytest.mark.parametrize("fast", [True, False], ids=["padding-fast-paths", "masked-like-compiled"])
@pytest.mark.parametrize("build", [_qa, _classify, _asr, _translate, _caption, _pretrain],
                         ids=["qa", "classify", "asr", "translate", "caption", "pretrain"])
def test_the_loss_is_the_same_with_static_shapes(build, fast, monkeypatch):
    """``fast=False`` runs the backbone as a compiled step does: every padded column masked,
    none dropped."""
    torch.manual_seed(0)
    model, its = build()
    monkeypatch.setattr(fusion_module, "_static_graph", lambda: not fast)
    plain, padded = collate(its), StaticShapes.for_model(collate, model)(its)
    grown = [k for k in plain if isinstance(plain[k], torch.Tensor) and plain[k].shape != padded[k].shape]
    assert grown, "nothing was padded: the test would test nothing"
    ref, out = _loss(model, plain), _loss(model, padded)
    losses = [k for k in ref if k.endswith("loss")]
    assert "loss" in losses and set(losses) == {k for k in out if k.endswith("loss")}
    if build is _pretrain:
        assert {"matching_loss", "guided_matching_loss", "next_word_loss", "word_spotting_loss"} <= set(losses)
    if build is _qa:
        assert {"word_spotting_loss", "grounding_loss", "answer_loss"} <= set(losses)
    for k in losses:
        torch.testing.assert_close(out[k], ref[k], atol=1e-5, rtol=1e-5, msg=lambda m, k=k: f"{k}: {m}")
