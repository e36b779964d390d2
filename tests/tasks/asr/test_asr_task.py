"""The asr task: it learns (tone "speech", one pitch per letter, trained here), it scores,
its checkpoints load and transcribe files and long recordings, its transcripts are checked,
its command line and its route answer and refuse."""
from __future__ import annotations

import base64
import io
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from omniformer.config import load_config
from omniformer.data.audio import write_audio
from omniformer.tasks.asr.metrics import word_error_rate
from omniformer.tasks.asr import TASK, Alphabet, ASRConfig, ASRModel, Transcriber, TranscriptError, load_data, normalise

torch.set_num_threads(1)

RATE = 8000
PITCH = {"a": 500.0, "b": 900.0, "c": 1400.0, "d": 2100.0}
WORDS = ["ab", "cab", "dad", "bad", "cd", "abc", "da"]


def speak(text: str, rng: random.Random) -> np.ndarray:
    """Each letter a 90-130 ms tone at its own pitch, 40-80 ms gaps, 150 ms between words, some noise."""
    parts = [np.zeros(int(RATE * rng.uniform(0.05, 0.1)), np.float32)]
    for w, word in enumerate(text.split()):
        if w:
            parts.append(np.zeros(int(RATE * 0.15), np.float32))
        for ch in word:
            n = int(RATE * rng.uniform(0.09, 0.13))
            t = np.arange(n) / RATE
            f = PITCH[ch] * rng.uniform(0.97, 1.03)
            parts.append((0.5 * np.sin(2 * np.pi * f * t) * np.hanning(n)).astype(np.float32))
            parts.append(np.zeros(int(RATE * rng.uniform(0.04, 0.08)), np.float32))
    wave = np.concatenate(parts)
    return wave + np.float32(0.01) * np.random.default_rng(rng.randint(0, 10**6)).standard_normal(len(wave)).astype(np.float32)


def write_tones(root: Path, train: int = 160, test: int = 40, seed: int = 0) -> Path:
    rng, lines = random.Random(seed), []
    (root / "wav").mkdir(parents=True, exist_ok=True)
    for split, n in (("train", train), ("test", test)):
        for i in range(n):
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 2)))
            name = f"wav/{split}-{i}.wav"
            write_audio(root / name, speak(text, rng), RATE)
            lines.append({"id": f"{split}-{i}", "audio": name, "text": text.upper() + ".", "split": split,
                          "meta": {"long": len(text) > 4}})
    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return manifest


TINY = {"width": 48, "heads": 2, "depth": 2, "tower_depth": 0, "dropout": 0.0, "modalities": ["audio"],
        "audio": {"sample_rate": RATE, "n_mels": 32, "subsample": 2, "max_seconds": 2.0}}


def tiny_cfg(out_dir: Path, manifest: Path, steps: int = 300, task: dict | None = None):
    return load_config(overrides={
        "out_dir": str(out_dir), "model": TINY, "task": {"groups": ["long"], **(task or {})},
        "data": {"manifest": str(manifest), "spec_augment": False, "speed_perturbation": []},
        "finetune": {"steps": steps, "batch_size": 16, "lr": 3e-3, "warmup_steps": 20, "eval_every": steps,
                     "save_every": steps, "workers": 0, "progress": False, "log_every": 50}})


@pytest.fixture
def trained(tone_recogniser) -> tuple[Path, Path]:
    """(best checkpoint, manifest) of the recogniser trained once for these tests (tests/conftest.py)."""
    return tone_recogniser


def test_it_learns_to_transcribe(trained):
    model_dir, manifest = trained
    ev = TASK.evaluate(model_dir, manifest, split="test", device="cpu")
    m = ev.metrics
    assert ev.samples == 40 and set(m) >= {"wer", "cer", "sentence_error_rate", "long/wer", "non_long/wer"}
    assert m["cer"] < 0.05 and m["wer"] < 0.10, m
    greedy = TASK.evaluate(model_dir, manifest, split="test", device="cpu",
                           cfg=load_config(overrides={"task": {"decoder": "greedy"}, "model": TINY,
                                                      "data": {"manifest": str(manifest)}}))
    assert greedy.details["decoder"] == "greedy" and greedy.metrics["cer"] < 0.1
    assert ev.to_json()["wer"] == m["wer"]


def test_transcriber_files_arrays_long_recordings_and_timings(trained, tmp_path):
    model_dir, _ = trained
    asr = Transcriber.load(model_dir)
    rng = random.Random(7)
    assert asr.transcribe(speak("cab dad", rng)).text == "cab dad"
    path = tmp_path / "x.wav"
    write_audio(path, speak("bad", rng), RATE)
    t = asr.transcribe(path, timings=True)
    assert t.text == "bad" and [w["word"] for w in t.words] == ["bad"]
    assert 0 <= t.words[0]["start"] < t.words[0]["end"] <= t.seconds + 1e-6
    # 14 words, ~6 s: longer than the model's 2 s, transcribed piece by piece at quiet points.
    text = "ab cab dad bad cd abc da ab cd dad bad abc cab da"
    long = asr.transcribe(speak(text, rng), timings=True)
    assert long.seconds > 5 and word_error_rate([text], [long.text]) <= 0.15, long.text
    starts = [w["start"] for w in long.words]
    assert starts == sorted(starts) and starts[-1] > 4
    with pytest.raises(ValueError, match="mono"):
        asr.transcribe(np.zeros((2, 100), np.float32))


def test_checkpoint_records_alphabet_and_words(trained):
    model_dir, _ = trained
    meta = json.loads((model_dir / "config.json").read_text()) if (model_dir / "config.json").is_file() else None
    asr = Transcriber.load(model_dir)
    assert asr.alphabet.chars == " abcd" and asr.words == sorted(WORDS)
    assert meta is None or meta["task"] == "asr"


def test_transcripts_normalised_and_alphabet_checked(tmp_path):
    task = ASRConfig()
    assert normalise("  What SHAPE is it?  ", task) == "what shape is it"
    alphabet = Alphabet("ab")
    assert alphabet.decode(alphabet.encode("ab ba").tolist()) == "ab ba"
    with pytest.raises(TranscriptError, match=r"'x'.*U\+0078.*task.alphabet"):
        alphabet.encode("abx", "sample 3")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "q", "audio": "a.wav", "text": "?!"}) + "\n")
    with pytest.raises(TranscriptError, match="m.jsonl:1.*empty once normalised"):
        load_data(manifest, task)
    manifest.write_text(json.dumps({"id": "q", "image": "a.png", "label": "x"}) + "\n")
    with pytest.raises(TranscriptError, match="audio-folder DIR --transcripts"):
        load_data(manifest, task)


def test_a_given_alphabet_refuses_training_text_outside_it(tmp_path):
    manifest = write_tones(tmp_path, train=4, test=1)
    cfg = tiny_cfg(tmp_path / "run", manifest, steps=2, task={"alphabet": "abc"})
    with pytest.raises(TranscriptError, match=r"character 'd'"):
        TASK.train(cfg, progress=False)


def test_shared_recordings_once_and_excluded_voice(tmp_path):
    rows = [{"id": "1", "audio": "x.flac", "text": "a b", "question_audio": "q.flac", "question": "b a?",
             "split": "train", "meta": {"voice": "v1"}},
            {"id": "2", "question_audio": "q.flac", "question": "b a?", "split": "train", "meta": {"voice": "v1"}},
            {"id": "3", "audio": "y.flac", "text": "c", "split": "train", "meta": {"voice": "held"}}]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = load_data(manifest, ASRConfig(exclude_from_training={"voice": ["held"]}))
    assert [s["text"] for s in data.splits["train"]] == ["a b", "b a"] and data.excluded == 1


def test_ctc_loss_survives_recordings_too_short_for_their_text():
    cfg = load_config(overrides={"model": TINY}).model
    model = ASRModel(cfg, 6)
    batch = {"audio": torch.randn(2, 32, 9), "audio_mask": torch.ones(2, 9, dtype=torch.bool),
             "transcript": torch.tensor([[1, 2, 3, 4, 5, 1, 2, 3, 4, 5], [1, 2, 0, 0, 0, 0, 0, 0, 0, 0]]),
             "transcript_mask": torch.tensor([[True] * 10, [True, True] + [False] * 8])}
    out = model(batch)
    assert torch.isfinite(out["loss"]) and out["too_short"] == 0.5
    out["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_cli_transcribe_and_predict(trained, tmp_path):
    model_dir, _ = trained
    path = tmp_path / "y.wav"
    write_audio(path, speak("dad cd", random.Random(3)), RATE)
    run = subprocess.run([sys.executable, "-m", "omniformer.cli", "transcribe", "--model", str(model_dir), str(path)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "dad cd"
    as_json = subprocess.run([sys.executable, "-m", "omniformer.cli", "transcribe", "--model", str(model_dir),
                              str(path), "--json"], capture_output=True, text=True)
    assert json.loads(as_json.stdout)["words"][1]["word"] == "cd"
    pred = subprocess.run([sys.executable, "-m", "omniformer.cli", "predict", "--model", str(model_dir), "--json",
                           "--audio", str(path)], capture_output=True, text=True)
    assert json.loads(pred.stdout)["transcripts"][0]["text"] == "dad cd", pred.stderr
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF0000WAVEjunk")
    broken = subprocess.run([sys.executable, "-m", "omniformer.cli", "transcribe", "--model", str(model_dir),
                             str(bad)], capture_output=True, text=True)
    assert broken.returncode != 0 and "Traceback" not in broken.stderr and "bad.wav" in broken.stderr


def test_http_transcribe_route(trained):
    from fastapi.testclient import TestClient
    from omniformer.serve.app import create_app
    model_dir, _ = trained
    buf = io.BytesIO()
    sf.write(buf, speak("abc", random.Random(5)), RATE, format="WAV")
    wav = buf.getvalue()
    with TestClient(create_app(model_dir)) as client:
        r = client.post("/v1/transcribe", files={"audio": ("a.wav", wav, "audio/wav")}, data={"timings": "true"})
        assert r.status_code == 200, r.text
        assert r.json()["text"] == "abc" and r.json()["words"][0]["word"] == "abc"
        r = client.post("/v1/transcribe.json", json={"audio": base64.b64encode(wav).decode()})
        assert r.status_code == 200 and r.json()["text"] == "abc" and "words" not in r.json()
        assert client.get("/v1/model").json()["task"] == "asr"
        bad = client.post("/v1/transcribe", files={"audio": ("a.png", b"\x89PNG\r\n\x1a\n" + b"0" * 50, "image/png")})
        assert bad.status_code == 415 and bad.json()["error"]["field"] == "audio"
        assert client.post("/v1/transcribe", files={"timings": (None, "true")}).status_code == 422
        assert client.post("/v1/transcribe.json", json={"audio": "QUJD", "extra": 1}).status_code == 422
        assert client.post("/v1/transcribe", files={"audio": ("a.wav", wav, "audio/wav")},
                           data={"timings": "maybe"}).status_code == 422


def test_silent_clipped_short_long_and_resampled_recordings(trained, tmp_path):
    """What a recogniser meets in the wild: each is transcribed or refused with a clear error."""
    import soxr
    model_dir, _ = trained
    asr = Transcriber.load(model_dir)
    rng = random.Random(9)
    assert asr.transcribe(np.zeros(RATE, np.float32)).text == ""               # silence says nothing
    assert asr.transcribe(np.zeros(int(0.1 * RATE), np.float32)).text == ""    # 0.1 s
    one = asr.transcribe(speak("ab", rng)[: int(0.1 * RATE)])                  # 0.1 s of speech: no crash
    assert isinstance(one.text, str) and one.seconds == pytest.approx(0.1, abs=0.01)
    clipped = np.clip(speak("cab", rng) * 20, -1, 1)                           # hard clipping
    assert word_error_rate(["cab"], [asr.transcribe(clipped).text]) <= 1.0
    # another file rate is resampled to the model's
    wave = speak("dad abc", rng)
    path = tmp_path / "44k.wav"
    write_audio(path, soxr.resample(wave, RATE, 44100).astype(np.float32), 44100)
    assert asr.transcribe(path).text == asr.transcribe(wave).text == "dad abc"
    # ten minutes: transcribed piece by piece; more than fifteen: refused
    long = np.concatenate([speak("cab dad", rng), np.zeros(10 * 60 * RATE, np.float32)])
    assert asr.transcribe(long).text == "cab dad"
    with pytest.raises(ValueError, match="15 minutes"):
        asr.transcribe(np.zeros(16 * 60 * RATE, np.float32))


def test_http_refuses_recordings_past_its_limit(trained):
    from fastapi.testclient import TestClient
    from omniformer.serve.app import create_app
    model_dir, _ = trained
    buf = io.BytesIO()
    sf.write(buf, np.zeros(10 * 60 * RATE, np.float32), RATE, format="WAV", subtype="PCM_16")  # 10 min, 9.6 MB
    with TestClient(create_app(model_dir)) as client:
        r = client.post("/v1/transcribe", files={"audio": ("ten.wav", buf.getvalue(), "audio/wav")})
        assert r.status_code in (400, 413), r.text
        assert "120" in r.json()["error"]["message"] and r.json()["error"]["field"] == "audio"
        assert client.get("/healthz").status_code == 200


def test_a_long_recording_is_cut_in_a_pause_between_words_not_a_gap_inside_one(trained):
    """Letters 110 ms apart by 50 ms gaps, words by 150 ms pauses, noise throughout: every cut
    falls in a pause between words (the quietest 10 ms alone is as likely a gap in a word)."""
    asr = Transcriber.load(trained[0])
    rate = asr.cfg.model.audio.sample_rate
    noise = np.random.default_rng(0)
    parts, pauses, at = [], [], 0
    for word in range(40):
        for letter in range(3):
            n = int(rate * 0.11)
            parts.append(0.5 * np.sin(2 * np.pi * 900 * np.arange(n) / rate) * np.hanning(n))
            gap = int(rate * (0.05 if letter < 2 else 0.15))
            parts.append(np.zeros(gap))
            at += n + gap
        pauses.append((at - gap, at))
    wave = np.concatenate(parts).astype(np.float32)
    wave += np.float32(0.01) * noise.standard_normal(len(wave)).astype(np.float32)
    pieces = asr.windows(wave)
    assert len(pieces) > 3 and sum(len(w) for _, w in pieces) == len(wave)
    for start, _ in pieces[1:]:
        cut = round(start * rate)
        assert any(a <= cut <= b for a, b in pauses), f"cut at {start:.3f} s is inside a word"
