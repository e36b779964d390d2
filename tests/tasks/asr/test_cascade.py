"""Spoken questions answered through a transcript (QA's ``task.transcriber``): a recogniser
trained here on tone "speech" hears the questions, the QA model answers the transcript as
text. With a recogniser that hears every question right, spoken accuracy is text accuracy,
whatever the QA model's weights; evaluation, the predictor, the CLI and the route all do it."""
from __future__ import annotations

import io
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
import torch
from PIL import Image

from omniformer.config import load_config
from omniformer.data.audio import write_audio
from omniformer.tasks.qa import TASK as QA
from omniformer.tasks.qa import QAPredictor
from omniformer.train.checkpoint import CheckpointError

from test_asr_task import RATE, WORDS, speak

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[3]
COLOURS = {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200)}


@pytest.fixture(scope="module")
def asr_dir(tone_recogniser):
    return tone_recogniser[0]


def qa_checkpoint(out: Path, questions: list[str]) -> Path:
    """A QA model of the quickstart's shapes with random weights, its tokenizer over ``questions``."""
    import dataclasses

    from omniformer.data.text import Tokenizer
    from omniformer.tasks.qa import QAModel
    from omniformer.tasks.qa.model import qa_config
    from omniformer.train.checkpoint import save_checkpoint
    cfg = load_config(ROOT / "omniformer" / "configs" / "quickstart.yaml")
    tokenizer = Tokenizer.train(questions * 3, 60)
    cfg.model.vocab_size = tokenizer.vocab_size
    torch.manual_seed(0)
    model = QAModel(cfg.model, len(COLOURS), qa_config(cfg))
    meta = {"task": "qa", "config": dataclasses.asdict(cfg), "answers": sorted(COLOURS), "model_id": "cascade"}
    return save_checkpoint(out, model, meta, tokenizer)


@pytest.fixture(scope="module")
def qa_data(tmp_path_factory):
    """(QA checkpoint, manifest): 12 test questions in tone words, asked in text and spoken."""
    root = tmp_path_factory.mktemp("cascade-qa")
    rng, lines = random.Random(4), []
    questions = []
    for i in range(12):
        colour = sorted(COLOURS)[i % 3]
        Image.new("RGB", (48, 48), COLOURS[colour]).save(root / f"img{i}.png")
        question = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 2)))
        write_audio(root / f"q{i}.wav", speak(question, rng), RATE)
        questions.append(question)
        lines.append({"id": f"s{i}", "image": f"img{i}.png", "question": question, "question_audio": f"q{i}.wav",
                      "answer": colour, "split": "test"})
    (root / "manifest.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return qa_checkpoint(root / "qa", questions), root / "manifest.jsonl"


def test_spoken_questions_through_the_transcript_score_as_text(asr_dir, qa_data):
    model_dir, manifest = qa_data
    plain = QA.evaluate(model_dir, manifest, split="test", device="cpu").metrics
    predictor = QAPredictor.load(model_dir)
    cfg = predictor.cfg
    cfg.task = {**cfg.task, "transcriber": str(asr_dir)}
    cascade = QA.evaluate(model_dir, manifest, split="test", device="cpu", cfg=cfg).metrics
    assert cascade["text/accuracy"] == plain["text/accuracy"]
    assert cascade["spoken/accuracy"] == cascade["text/accuracy"]  # every question heard as written


def test_predictor_cli_and_route_answer_the_transcript(asr_dir, qa_data, tmp_path):
    model_dir, manifest = qa_data
    root = manifest.parent
    sample = json.loads(manifest.read_text().splitlines()[0])
    qa = QAPredictor.load(model_dir, transcriber=asr_dir)
    item, heard = qa.prepare_heard(root / sample["image"], audio=root / sample["question_audio"])
    assert heard == sample["question"]
    by_voice = qa.ask(root / sample["image"], audio=root / sample["question_audio"])
    assert by_voice == qa.ask(root / sample["image"], question=sample["question"])
    # the command line says what it heard
    out = subprocess.run([sys.executable, "-m", "omniformer.cli", "predict", "--model", str(model_dir), "--json",
                          "--image", str(root / sample["image"]), "--audio", str(root / sample["question_audio"]),
                          "--transcriber", str(asr_dir)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["transcript"] == sample["question"]
    # the route too, with the recording at another rate than the recogniser's
    from fastapi.testclient import TestClient
    from omniformer.serve.app import create_app
    import soxr
    import numpy as np
    wave, _ = sf.read(root / sample["question_audio"], dtype="float32")
    buf = io.BytesIO()
    sf.write(buf, soxr.resample(wave, RATE, 16000).astype(np.float32), 16000, format="WAV")
    with TestClient(create_app(model_dir, predictor=qa)) as client:
        r = client.post("/v1/answer", files={"image": ("i.png", (root / sample["image"]).read_bytes(), "image/png"),
                                             "audio": ("q.wav", buf.getvalue(), "audio/wav")})
        assert r.status_code == 200, r.text
        assert r.json()["transcript"] == sample["question"] and r.json()["asked_by"] == "voice"
        typed = client.post("/v1/answer", files={"image": ("i.png", (root / sample["image"]).read_bytes(), "image/png")},
                            data={"question": sample["question"]})
        assert "transcript" not in typed.json()


def test_a_transcriber_that_is_not_a_recogniser_is_refused(qa_data, tmp_path):
    model_dir, _ = qa_data
    with pytest.raises(CheckpointError, match="task.transcriber"):
        QAPredictor.load(model_dir, transcriber=tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="task.transcriber.*not an asr model"):
        QAPredictor.load(model_dir, transcriber=model_dir)
