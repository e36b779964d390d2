"""Transcripts for folders of recordings: ``omniformer data audio-folder --transcripts`` and
``--digit-words``, the layouts people have, and the errors they meet."""
import json
import subprocess
import sys

import numpy as np
import pytest

from omniformer.data.audio import AudioError, audio_folder_manifest, read_transcripts, write_audio


def _folder(tmp_path, names=("a.wav", "b.wav", "sub/c.flac")):
    folder = tmp_path / "clips"
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        write_audio(folder / name, np.zeros(160, np.float32), 16000)
    return folder


def _texts(out):
    return {s["id"]: s.get("text") for s in map(json.loads, out.read_text().splitlines())}


def test_tab_separated_transcripts_by_name_and_path(tmp_path):
    folder = _folder(tmp_path)
    tsv = tmp_path / "t.tsv"
    tsv.write_text("# id<TAB>text\na\tHello   world\nb.wav\tsecond one\nsub/c\tthird\n", encoding="utf-8")
    report = audio_folder_manifest(folder, tmp_path / "m.jsonl", transcripts=tsv)
    assert (report.recordings, report.transcribed, report.warnings) == (3, 3, [])
    assert _texts(tmp_path / "m.jsonl") == {"a": "Hello world", "b": "second one", "sub/c": "third"}


def test_csv_with_header_and_partial_coverage(tmp_path):
    folder = _folder(tmp_path)
    csv = tmp_path / "t.csv"
    csv.write_text('file,speaker,transcript\na.wav,x,"one, two"\nzzz.wav,y,orphan\n', encoding="utf-8")
    report = audio_folder_manifest(folder, tmp_path / "m.jsonl", transcripts=csv)
    assert report.transcribed == 1
    assert any("2 of 3 recordings have no transcript" in w for w in report.warnings)
    assert any("match no recording" in w and "zzz.wav" in w for w in report.warnings)
    assert _texts(tmp_path / "m.jsonl")["a"] == "one, two"


@pytest.mark.parametrize("content, message", [
    (b"a\t\n", "a.*empty transcript"),
    (b"a\tone\na\ttwo\n", "twice"),
    (b"\xff\xfe\x00bad", "not UTF-8"),
    (b"# nothing\n\n", "no transcripts"),
])
def test_bad_transcript_files_name_the_line(tmp_path, content, message):
    path = tmp_path / "t.tsv"
    path.write_bytes(content)
    with pytest.raises(AudioError, match=message) as info:
        read_transcripts(path)
    assert str(path) in str(info.value)


def test_no_transcript_matches_is_an_error_and_keeps_the_old_manifest(tmp_path):
    folder = _folder(tmp_path)
    out = tmp_path / "m.jsonl"
    out.write_text("old\n")
    tsv = tmp_path / "t.tsv"
    tsv.write_text("nobody\tsomething\n")
    with pytest.raises(AudioError, match="no transcript matches"):
        audio_folder_manifest(folder, out, transcripts=tsv)
    assert out.read_text() == "old\n"


def test_digit_words_for_fsdd_names(tmp_path):
    folder = _folder(tmp_path, ("7_jackson_0.wav", "0_theo_12.wav"))
    report = audio_folder_manifest(folder, tmp_path / "m.jsonl", digit_words=True)
    assert report.transcribed == 2
    texts = _texts(tmp_path / "m.jsonl")
    assert texts == {"7_jackson_0": "seven", "0_theo_12": "zero"}
    with pytest.raises(AudioError, match="digit-words"):
        audio_folder_manifest(_folder(tmp_path / "other", ("hello.wav",)), tmp_path / "n.jsonl", digit_words=True)


def test_cli_reports_transcripts_and_warns(tmp_path):
    folder = _folder(tmp_path)
    tsv = tmp_path / "t.tsv"
    tsv.write_text("a\thello\n")
    run = subprocess.run([sys.executable, "-m", "omniformer.cli", "data", "audio-folder", str(folder), "--out",
                          str(tmp_path / "m.jsonl"), "--transcripts", str(tsv)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "3 recordings, 1 with a transcript" in run.stdout
    assert "warning: 2 of 3 recordings have no transcript" in run.stderr
    missing = subprocess.run([sys.executable, "-m", "omniformer.cli", "data", "audio-folder", str(folder), "--out",
                              str(tmp_path / "m.jsonl"), "--transcripts", str(tmp_path / "none.tsv")],
                             capture_output=True, text=True)
    assert missing.returncode != 0 and "Traceback" not in missing.stderr and "none.tsv" in missing.stderr
