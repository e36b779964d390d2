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


def test_a_path_too_long_is_one_problem_not_a_crash(tmp_path):
    """One path past the file system's limit was an OSError traceback for the whole file."""
    make_media(tmp_path)
    lines = [{"id": "long", "image": "x" * 5000 + ".png"}, {"id": "ok", "image": "ok.png"},
             {"id": "dir", "image": "."}, {"id": "nul", "audio": "a\u0000b.wav"}, {"id": "blank", "image": " "}]
    write_manifest(tmp_path / "m.jsonl", lines)
    count, problems = check_manifest(tmp_path / "m.jsonl")
    assert count == 5
    by_line = {p.line: p for p in problems}
    assert set(by_line) == {1, 3, 4, 5}, problems
    assert "too long" in by_line[1].message and "(5004 characters)" in by_line[1].message
    assert len(by_line[1].message) < 200  # the path is shortened in the message, not printed whole
    assert "folder" in by_line[3].message and "NUL" in by_line[4].message and "empty path" in by_line[5].message


def test_a_line_that_is_not_utf8_is_named_and_the_rest_still_checked(tmp_path):
    make_media(tmp_path)
    good = json.dumps({"id": "a", "image": "ok.png"}).encode()
    bad = '{"id": "b", "text": "caf'.encode() + b"\xe9" + b'"}'
    (tmp_path / "m.jsonl").write_bytes(b"\xef\xbb\xbf" + good + b"\n" + bad + b"\n" + json.dumps({"id": "c"}).encode() + b"\n")
    count, problems = check_manifest(tmp_path / "m.jsonl")
    assert count == 3
    assert [(p.line, p.field) for p in problems][:1] == [(2, "<encoding>")]
    assert "not UTF-8" in problems[0].message and "0xe9" in problems[0].message
    assert any(p.line == 3 for p in problems)  # checked past the bad line
    with pytest.raises(ManifestError, match=r"m.jsonl: line 2: <encoding>: not UTF-8"):
        read_manifest(tmp_path / "m.jsonl")


@pytest.mark.parametrize("content", [b"", b"\n\n  \n"])
def test_an_empty_manifest_is_a_problem(tmp_path, content):
    """It said OK and exited 0."""
    (tmp_path / "m.jsonl").write_bytes(content)
    count, problems = check_manifest(tmp_path / "m.jsonl")
    assert count == 0 and len(problems) == 1 and "no samples" in problems[0].message
    with pytest.raises(ManifestError, match="no samples"):
        read_manifest(tmp_path / "m.jsonl")
    run = subprocess.run([sys.executable, "-m", "omniformer.cli", "data", "check", str(tmp_path / "m.jsonl")],
                         capture_output=True, text=True)
    assert run.returncode == 1 and "no samples" in run.stdout + run.stderr and "Traceback" not in run.stderr


def test_a_manifest_that_is_a_folder_or_missing_is_named(tmp_path):
    for path, words in ((tmp_path, "is a folder"), (tmp_path / "gone.jsonl", "does not exist")):
        count, problems = check_manifest(path)
        assert count == 0 and words in problems[0].message and str(path) in problems[0].message
        with pytest.raises(ManifestError, match=words):
            read_manifest(path)


def test_paths_may_leave_the_manifest_folder_as_documented(tmp_path):
    """A relative path resolves against the manifest's folder and may leave it; an absolute one is
    used as it is (the manifest is the user's own file; the server never reads one)."""
    (tmp_path / "media").mkdir()
    (tmp_path / "lists").mkdir()
    make_media(tmp_path / "media")
    write_manifest(tmp_path / "lists" / "m.jsonl", [{"id": "up", "image": "../media/ok.png"},
                                                    {"id": "abs", "audio": str(tmp_path / "media" / "ok.wav")}])
    assert check_manifest(tmp_path / "lists" / "m.jsonl") == (2, [])
