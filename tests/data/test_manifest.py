import json
import subprocess
import sys

import numpy as np
import soundfile as sf
from PIL import Image

from omniformer.data.manifest import ManifestError, check_manifest, read_manifest, write_manifest
import pytest


def make_media(root):
    Image.new("RGB", (8, 8), "red").save(root / "ok.png")
    sf.write(root / "ok.wav", np.sin(np.linspace(0, 100, 16000)).astype(np.float32) * 0.1, 16000)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    (root / "noise.wav").write_bytes(b"RIFF....WAVEfmt garbage")
    sf.write(root / "empty.wav", np.zeros(0, dtype=np.float32), 16000)
    sf.write(root / "nan.wav", np.array([0.0, np.nan, 0.1] * 100, dtype=np.float32), 16000, subtype="FLOAT")


def test_roundtrip(tmp_path):
    samples = [{"id": "a", "image": "ok.png", "text": "a red square", "split": "train", "meta": {"k": [1, 2]}},
               {"id": "b", "audio": "ok.wav", "label": 3, "split": "test"},
               {"id": "c", "image": "ok.png", "question": "colour?", "question_audio": "ok.wav", "answer": "red"}]
    path = write_manifest(tmp_path / "m.jsonl", samples)
    assert read_manifest(path) == samples
    assert not list(tmp_path.glob(".m.jsonl.*"))  # no temporary left behind


def test_write_rejects_unknown_field(tmp_path):
    with pytest.raises(ManifestError, match="colour"):
        write_manifest(tmp_path / "m.jsonl", [{"id": "a", "text": "x", "colour": "red"}])


def test_check_reports_every_defect_with_line_and_field(tmp_path):
    make_media(tmp_path)
    lines = [
        {"id": "good", "image": "ok.png", "text": "fine", "audio": "ok.wav", "split": "train"},  # 1
        {"id": "missing", "image": "gone.png"},                                                  # 2
        {"id": "corrupt", "image": "broken.png"},                                                # 3
        {"id": "notaudio", "audio": "noise.wav"},                                                # 4
        {"id": "empty", "audio": "empty.wav"},                                                   # 5
        {"id": "nan", "audio": "nan.wav"},                                                       # 6
        {"id": "blank", "text": "   "},                                                          # 7
        {"id": "odd", "text": "x", "colour": "red"},                                             # 8
        {"id": "good", "text": "again"},                                                         # 9 duplicate id
        {"id": "s", "text": "x", "split": "dev"},                                                # 10
    ]
    raw = [json.dumps(x) for x in lines] + ["{not json"]                                        # 11
    (tmp_path / "m.jsonl").write_text("\n".join(raw) + "\n")
    count, problems = check_manifest(tmp_path / "m.jsonl")
    assert count == 11
    found = {(p.line, p.field) for p in problems}
    expected = {(2, "image"), (3, "image"), (4, "audio"), (5, "audio"), (6, "audio"), (7, "text"),
                (8, "colour"), (9, "id"), (10, "split"), (11, "<json>")}
    assert expected <= found, problems
    assert (1, "image") not in found and (1, "audio") not in found
    text = "\n".join(map(str, problems))
    assert "gone.png" in text and "duplicate id 'good'" in text and "first on line 1" in text
    assert "empty" in [p for p in problems if p.line == 5][0].message.lower()


def test_read_stops_with_line_number(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"id": "a", "text": "x"}\n{"id": "b", "txt": "y"}\n')
    with pytest.raises(ManifestError, match=r"line 2: txt"):
        read_manifest(tmp_path / "m.jsonl")


def test_cli_data_check_exit_codes(tmp_path):
    make_media(tmp_path)
    write_manifest(tmp_path / "good.jsonl", [{"id": "a", "image": "ok.png", "text": "x"}])
    (tmp_path / "bad.jsonl").write_text('{"id": "a", "image": "gone.png"}\n{"id": "b", "text": ""}\n')
    ok = subprocess.run([sys.executable, "-m", "omniformer.cli", "data", "check", str(tmp_path / "good.jsonl")],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and "OK" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "omniformer.cli", "data", "check", str(tmp_path / "bad.jsonl")],
                         capture_output=True, text=True)
    assert bad.returncode == 1
    assert "line 1: image" in bad.stdout and "line 2: text" in bad.stdout and "2 problem(s)" in bad.stdout
