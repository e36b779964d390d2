import random

import torch

from omniformer.data.batching import IGNORE, BucketBatchSampler, MultimodalDataset, collate, padding_fraction


def test_collate_mixed_missing_and_variable_modalities():
    items = [
        {"index": 0, "text": torch.tensor([2, 5, 6, 3]), "image": torch.ones(3, 4, 4), "answer": 1},
        {"index": 1, "audio": torch.ones(8, 10)},
        {"index": 2, "text": torch.tensor([2, 3]), "audio": torch.full((8, 4), 2.0), "image": torch.zeros(3, 4, 4)},
    ]
    b = collate(items, pad_id=0)
    assert b["text"].shape == (3, 4) and b["text_mask"].tolist() == [[1, 1, 1, 1], [0, 0, 0, 0], [1, 1, 0, 0]]
    assert b["text"][2].tolist() == [2, 3, 0, 0]
    assert b["image"].shape == (3, 3, 4, 4) and b["image_mask"].tolist() == [True, False, True]
    assert b["audio"].shape == (3, 8, 10)
    assert b["audio_mask"].sum(1).tolist() == [0, 10, 4]
    assert (b["audio"][2, :, 4:] == 0).all() and (b["audio"][2, :, :4] == 2).all()
    assert b["answer"].tolist() == [1, IGNORE, IGNORE]
    assert b["index"].tolist() == [0, 1, 2]


def test_collate_leaves_out_absent_modalities():
    b = collate([{"index": 0, "text": torch.tensor([2, 3])}])
    assert set(b) == {"index", "text", "text_mask"}


def test_bucketing_reduces_padding_and_covers_every_sample():
    rng = random.Random(0)
    lengths = [rng.randint(5, 300) for _ in range(2000)]
    bucketed = list(BucketBatchSampler(lengths, 32, shuffle=True, seed=1))
    plain = [list(range(i, min(i + 32, 2000))) for i in range(0, 2000, 32)]
    assert sorted(i for b in bucketed for i in b) == list(range(2000))
    assert padding_fraction(bucketed, lengths) < 0.25 * padding_fraction(plain, lengths)
    again = BucketBatchSampler(lengths, 32, shuffle=True, seed=1)
    assert list(again) == bucketed  # the same order for a seed and epoch
    assert list(again) != bucketed  # and a new one next epoch


def test_dataset_views_text_and_audio(tmp_path):
    from omniformer.data.text import Tokenizer
    samples = [{"id": "q", "question": "what shape is it?", "question_audio": "q.wav", "answer": "circle"}]
    tok = Tokenizer.train(["what shape is it?"], vocab_size=50)
    (tmp_path / "q.wav").write_bytes(b"")  # there, though never decoded
    fake_audio = lambda path: torch.zeros(8, 5)
    both = MultimodalDataset(tmp_path / "m.jsonl", samples, tokenizer=tok, audio=fake_audio, text_field="question",
                             audio_field="question_audio", answers=["circle", "square"], modes="both")[0]
    assert "text" in both and both["audio"].shape == (8, 5) and both["answer"] == 0
    spoken = MultimodalDataset(tmp_path / "m.jsonl", samples, tokenizer=tok, audio=fake_audio, text_field="question",
                               audio_field="question_audio", answers=["circle", "square"], modes="audio")[0]
    assert "text" not in spoken and "audio" in spoken


def test_spoken_view_carries_its_transcript_only_when_asked(tmp_path):
    from omniformer.data.text import Tokenizer
    samples = [{"id": "q", "question": "what shape is it?", "question_audio": "q.wav", "answer": "circle"},
               {"id": "r", "question": "is it red?", "question_audio": "r.wav", "answer": "square"}]
    tok = Tokenizer.train([s["question"] for s in samples], vocab_size=50)
    for name in ("q.wav", "r.wav"):
        (tmp_path / name).write_bytes(b"")  # there, though never decoded
    fake_audio = lambda path: torch.zeros(8, 5)
    data = MultimodalDataset(tmp_path / "m.jsonl", samples, tokenizer=tok, audio=fake_audio, text_field="question",
                             audio_field="question_audio", answers=["circle", "square"], modes=["audio", "text"],
                             transcripts=True)
    spoken, written = data[0], data[1]
    assert "text" not in spoken and spoken["transcript"].tolist() == tok.encode("what shape is it?", 64)
    assert "transcript" not in written and "text" in written
    batch = collate([spoken, written])
    assert batch["transcript_mask"].tolist()[1] == [False] * batch["transcript"].size(1)
    assert batch["text_mask"][0].sum() == 0 and batch["transcript_mask"][0].sum() == len(spoken["transcript"])
    plain = MultimodalDataset(tmp_path / "m.jsonl", samples, tokenizer=tok, audio=fake_audio, text_field="question",
                              audio_field="question_audio", answers=["circle", "square"], modes="audio")[0]
    assert "transcript" not in plain
    both = MultimodalDataset(tmp_path / "m.jsonl", samples, tokenizer=tok, audio=fake_audio, text_field="question",
                             audio_field="question_audio", answers=["circle", "square"], modes="both",
                             transcripts=True)[1]
    assert both["text"].tolist() == both["transcript"].tolist() == tok.encode("is it red?", 64) and "audio" in both


def test_augmented_speech_is_decoded_once_and_perturbed_at_every_draw(tmp_path):
    """An augmenting AudioPreprocessor perturbs features: the dataset caches each recording's
    features and draws a new perturbation for every use."""
    import numpy as np

    from omniformer.config import AudioConfig
    from omniformer.data.audio import AudioPreprocessor, write_audio
    t = np.arange(8000) / 16000
    write_audio(tmp_path / "q.wav", (0.5 * np.sin(2 * np.pi * 700 * t)).astype(np.float32), 16000)
    pre = AudioPreprocessor(AudioConfig(n_mels=40), augment=True, seed=0, speed=(0.8, 1.25), spec_augment=False)
    decoded = []
    features = pre.features
    pre.features = lambda source: decoded.append(source) or features(source)
    data = MultimodalDataset(tmp_path / "m.jsonl", [{"id": "q", "audio": "q.wav"}] * 2, audio=pre, modes="audio")
    draws = [data[i % 2]["audio"] for i in range(6)]
    assert len(decoded) == 1                                          # one decode for six draws
    assert len({d.shape[1] for d in draws}) > 1                       # each draw has its own speed
    plain = MultimodalDataset(tmp_path / "m.jsonl", [{"id": "q", "audio": "q.wav"}],
                              audio=AudioPreprocessor(AudioConfig(n_mels=40)), modes="audio")
    assert plain[0]["audio"] is plain[0]["audio"]                     # no augmentation: the cached tensor
