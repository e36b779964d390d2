"""Manifests from class folders of images, IDX files and folders of recordings (omniformer.data.folders)."""
from __future__ import annotations

import gzip
import json
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from omniformer.cli import main
from omniformer.data.audio import AudioError, audio_folder_manifest, write_audio
from omniformer.data.folders import (IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, FolderError, IdxError,
                                     idx_manifest, image_folder_manifest, parse_index_splits, read_idx)
from omniformer.data.manifest import check_manifest, read_manifest

MNIST = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "mnist"


def draw(path: Path, shade: int = 0, fmt: str | None = None) -> Path:
    """A tiny image, distinct per shade, in the format its suffix names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.full((6, 5, 3), shade % 256, np.uint8)
    pixels[0, 0] = (255 - shade % 256, 0, 0)
    Image.fromarray(pixels).save(path, format=fmt)
    return path


def class_folder(root: Path, sizes: dict[str, int], suffix: str = ".png") -> Path:
    for label, n in sizes.items():
        for i in range(n):
            draw(root / label / f"{i:03d}{suffix}", shade=10 * i)
    return root


def lines(manifest: Path) -> list[dict]:
    return [json.loads(line) for line in manifest.read_text().splitlines()]


def write_idx(path: Path, array: np.ndarray, magic: int | None = None, compress: bool | None = None,
              extra: bytes = b"", cut: int = 0) -> Path:
    """An IDX file for ``array`` (uint8); ``extra`` appends bytes and ``cut`` drops some, to make bad files."""
    array = np.ascontiguousarray(array, np.uint8)
    magic = (0x0800 | array.ndim) if magic is None else magic
    data = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes() + extra
    data = data[: len(data) - cut]
    compress = path.suffix == ".gz" if compress is None else compress
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


# ---------------------------------------------------------------------------------------------
# image-folder: class folders split by fraction
# ---------------------------------------------------------------------------------------------

def test_class_folders_drawn_into_stratified_splits(tmp_path):
    root = class_folder(tmp_path / "pets", {"cat": 10, "dog": 20})
    draw(root / "bird" / "a.jpg", 1)
    for i in range(9):
        draw(root / "bird" / f"b{i}.jpg", 20 * i)
    out = tmp_path / "manifests" / "pets.jsonl"
    summary = image_folder_manifest(root, out)
    samples = lines(out)
    assert len(samples) == summary.total == 40
    assert samples[0] == {"id": "bird/a", "image": "../pets/bird/a.jpg", "label": "bird", "split": samples[0]["split"]}
    assert all((out.parent / s["image"]).is_file() for s in samples)
    # 10% val and 10% test of every class, rounded half up; the rest train
    by = Counter((s["label"], s["split"]) for s in samples)
    assert by == {("bird", "train"): 8, ("bird", "val"): 1, ("bird", "test"): 1,
                  ("cat", "train"): 8, ("cat", "val"): 1, ("cat", "test"): 1,
                  ("dog", "train"): 16, ("dog", "val"): 2, ("dog", "test"): 2}
    assert summary.counts["train"]["dog"] == 16 and summary.labels == ["bird", "cat", "dog"]
    assert summary.warnings == []
    assert check_manifest(out) == (40, [])  # every image decodes, ids unique, fields known
    assert "dog" in summary.table() and "total" in summary.table()


def test_fraction_split_is_seeded_reproducible_and_per_class(tmp_path):
    root = class_folder(tmp_path / "d", {"a": 30, "b": 30})
    first, again, other = tmp_path / "1.jsonl", tmp_path / "2.jsonl", tmp_path / "3.jsonl"
    image_folder_manifest(root, first, val_fraction=0.2, test_fraction=0.3, seed=7)
    image_folder_manifest(root, again, val_fraction=0.2, test_fraction=0.3, seed=7)
    image_folder_manifest(root, other, val_fraction=0.2, test_fraction=0.3, seed=8)
    assert first.read_text() == again.read_text()
    assert first.read_text() != other.read_text()
    assert Counter(s["split"] for s in lines(first) if s["label"] == "a") == {"train": 15, "test": 9, "val": 6}
    # A new class leaves the other classes' splits as they were.
    class_folder(root, {"c": 5})
    grown = tmp_path / "4.jsonl"
    image_folder_manifest(root, grown, val_fraction=0.2, test_fraction=0.3, seed=7)
    assert [s for s in lines(grown) if s["label"] != "c"] == lines(first)


def test_fractions_zero_and_out_of_range(tmp_path):
    root = class_folder(tmp_path / "d", {"a": 4, "b": 4})
    summary = image_folder_manifest(root, tmp_path / "m.jsonl", val_fraction=0, test_fraction=0)
    assert set(summary.counts) == {"train"} and summary.warnings == []
    with pytest.raises(FolderError, match="val_fraction: must be in"):
        image_folder_manifest(root, tmp_path / "m.jsonl", val_fraction=1.5)
    with pytest.raises(FolderError, match="below 1"):
        image_folder_manifest(root, tmp_path / "m.jsonl", val_fraction=0.5, test_fraction=0.5)


def test_tiny_classes_keep_train_and_warn(tmp_path):
    root = class_folder(tmp_path / "d", {"one": 1, "two": 2})
    summary = image_folder_manifest(root, tmp_path / "m.jsonl")
    assert set(summary.counts) == {"train"}  # nothing can be spared from a class of 1 or 2
    text = "\n".join(summary.warnings)
    assert f"{root / 'one'}: class 'one' has only one image" in text
    assert "too small for any image to go to val" in text and "to go to test" in text


def test_bad_files_in_class_folders_are_named_and_skipped(tmp_path):
    root = class_folder(tmp_path / "d", {"cat": 3, "dog": 3})
    (root / "cat" / "notes.txt").write_text("not a picture")
    (root / "dog" / "fake.png").write_bytes(b"this is text with an image suffix")
    (root / "cat" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "dog" / "Thumbs.db").write_bytes(b"\0" * 8)
    (root / ".hidden-class").mkdir()
    (root / "empty").mkdir()
    (root / "README.md").write_text("about this data")
    draw(root / "cat" / "nested" / "deep.gif", 5, fmt="GIF")  # anywhere under a class folder; any Pillow format
    draw(root / "dog" / "no_suffix", 9, fmt="PNG")  # found by its header, not its suffix
    out = tmp_path / "m.jsonl"
    summary = image_folder_manifest(root, out, val_fraction=0, test_fraction=0)
    ids = {s["id"] for s in lines(out)}
    assert ids == {"cat/000", "cat/001", "cat/002", "cat/nested/deep", "dog/000", "dog/001", "dog/002",
                   "dog/no_suffix"}
    warnings = summary.warnings
    assert len(warnings) == 4, warnings  # no word on .DS_Store, Thumbs.db or the hidden folder
    assert any(w.startswith(f"{root / 'cat' / 'notes.txt'}: not an image") for w in warnings)
    assert any(w.startswith(f"{root / 'dog' / 'fake.png'}: not an image") for w in warnings)
    assert any(w.startswith(f"{root / 'empty'}: class folder holds no images") for w in warnings)
    assert any(w.startswith(f"{root}: 1 file(s) beside the class folders") and "README.md" in w for w in warnings)
    assert check_manifest(out) == (8, [])


def test_ids_keep_the_suffix_only_where_names_collide(tmp_path):
    root = tmp_path / "d"
    draw(root / "a" / "x.png", 1)
    draw(root / "a" / "x.jpg", 2)
    draw(root / "a" / "y.png", 3)
    out = tmp_path / "m.jsonl"
    image_folder_manifest(root, out, val_fraction=0, test_fraction=0)
    assert [s["id"] for s in lines(out)] == ["a/x.jpg", "a/x.png", "a/y"]
    assert len(read_manifest(out)) == 3


def test_folder_without_class_folders_is_an_error_and_keeps_the_old_manifest(tmp_path):
    out = tmp_path / "m.jsonl"
    out.write_text("earlier work\n")
    flat = tmp_path / "flat"
    draw(flat / "a.png")
    with pytest.raises(FolderError, match=r"flat: no class folders; expected .*<class>/<image>; found 1 file"):
        image_folder_manifest(flat, out)
    (tmp_path / "nothing").mkdir()
    with pytest.raises(FolderError, match="it is empty"):
        image_folder_manifest(tmp_path / "nothing", out)
    (tmp_path / "hollow" / "cat").mkdir(parents=True)
    with pytest.raises(FolderError, match="none of its 1 class folder"):
        image_folder_manifest(tmp_path / "hollow", out)
    with pytest.raises(FolderError, match="does not exist"):
        image_folder_manifest(tmp_path / "missing", out)
    with pytest.raises(FolderError, match="is a folder; expected the manifest's file path"):
        image_folder_manifest(tmp_path / "hollow", tmp_path / "nothing")
    assert out.read_text() == "earlier work\n"
    assert not list(tmp_path.glob(".m.jsonl.*"))  # no temporary file left behind


# ---------------------------------------------------------------------------------------------
# image-folder: train/val/test folders
# ---------------------------------------------------------------------------------------------

def test_split_folders_give_the_splits(tmp_path):
    root = tmp_path / "d"
    class_folder(root / "train", {"cat": 4, "dog": 4})
    class_folder(root / "val", {"cat": 2, "dog": 1})
    class_folder(root / "test", {"dog": 2})  # a class may be missing from val or test
    out = root / "manifest.jsonl"  # inside the folder it describes
    summary = image_folder_manifest(root, out)
    samples = lines(out)
    assert Counter((s["split"], s["label"]) for s in samples) == {
        ("train", "cat"): 4, ("train", "dog"): 4, ("val", "cat"): 2, ("val", "dog"): 1, ("test", "dog"): 2}
    first = next(s for s in samples if s["split"] == "val")
    assert first == {"id": "val/cat/000", "image": "val/cat/000.png", "label": "cat", "split": "val"}
    assert summary.counts["val"] == {"cat": 2, "dog": 1}
    assert any("class 'dog' has only one image" in w for w in summary.warnings)
    assert check_manifest(out) == (len(samples), [])


def test_split_folders_reject_unknown_classes_mixed_layouts_and_fractions(tmp_path):
    root = tmp_path / "d"
    class_folder(root / "train", {"cat": 2})
    class_folder(root / "test", {"cat": 2, "dog": 2})
    with pytest.raises(FolderError, match=r"test: class\(es\) dog are not in .*train"):
        image_folder_manifest(root, tmp_path / "m.jsonl")
    (root / "test" / "dog" / "000.png").unlink()
    (root / "test" / "dog" / "001.png").unlink()
    (root / "test" / "dog").rmdir()
    with pytest.raises(FolderError, match="val_fraction/test_fraction apply only"):
        image_folder_manifest(root, tmp_path / "m.jsonl", val_fraction=0.2)
    class_folder(root, {"bird": 2})
    with pytest.raises(FolderError, match="has split folders .* and also bird"):
        image_folder_manifest(root, tmp_path / "m.jsonl")


def test_only_evaluation_folders_need_no_train(tmp_path):
    root = tmp_path / "d"
    class_folder(root / "test", {"cat": 2, "dog": 2})
    draw(root / "test" / "stray.png")
    summary = image_folder_manifest(root, tmp_path / "m.jsonl")
    assert summary.counts == {"test": {"cat": 2, "dog": 2}}
    assert len(summary.warnings) == 1 and "beside the class folders, not in any class (stray.png)" in summary.warnings[0]


# ---------------------------------------------------------------------------------------------
# idx
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def small_idx(tmp_path) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 7, 5), dtype=np.uint8)
    labels = np.array([7, 2, 1, 0, 4, 1, 4, 9, 5, 9, 0, 6], np.uint8)
    return (write_idx(tmp_path / "images-idx3-ubyte.gz", images), write_idx(tmp_path / "labels-idx1-ubyte", labels),
            images, labels)


def test_idx_to_pngs_and_manifest(tmp_path, small_idx):
    images_file, labels_file, images, labels = small_idx
    out = tmp_path / "digits"
    summary = idx_manifest(images_file, labels_file, out, splits="train=0:6,val=6:8,test=9:12")
    samples = lines(out / "manifest.jsonl")
    assert summary.manifest == out / "manifest.jsonl"
    assert [s["id"] for s in samples] == [f"{i:05d}" for i in (0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11)]  # 8 left out
    assert samples[0] == {"id": "00000", "image": "images/00000.png", "label": "7", "split": "train"}
    assert Counter(s["split"] for s in samples) == {"train": 6, "val": 2, "test": 3}
    assert summary.counts["test"] == {"9": 1, "0": 1, "6": 1}
    assert not (out / "images" / "00008.png").exists()
    for sample in samples:
        index = int(sample["id"])
        with Image.open(out / sample["image"]) as im:
            assert im.mode == "L" and np.array_equal(np.asarray(im), images[index])
        assert sample["label"] == str(labels[index])
    assert check_manifest(out / "manifest.jsonl") == (11, [])


def test_idx_default_split_and_plain_files(tmp_path, small_idx):
    _, labels_file, images, _ = small_idx
    plain = write_idx(tmp_path / "plain-images", images, compress=False)
    gzipped = write_idx(tmp_path / "odd-name.bin", images, compress=True)  # gzip found by content
    for images_file in (plain, gzipped):
        summary = idx_manifest(images_file, labels_file, tmp_path / f"{images_file.name}-out")
        assert set(summary.counts) == {"train"} and summary.total == 12
    assert (tmp_path / "plain-images-out" / "manifest.jsonl").read_text() == \
        (tmp_path / "odd-name.bin-out" / "manifest.jsonl").read_text()
    with pytest.raises(IdxError, match="plain-images: is a file; expected a folder"):
        idx_manifest(gzipped, labels_file, plain)


def test_idx_bad_files_are_named(tmp_path, small_idx):
    images_file, labels_file, images, labels = small_idx
    out = tmp_path / "out"
    with pytest.raises(IdxError, match=r"labels-idx1-ubyte: magic number 0x00000801 \(IDX labels .* swapped"):
        idx_manifest(labels_file, images_file, out)
    short = write_idx(tmp_path / "short.gz", images, cut=10)
    with pytest.raises(IdxError, match=r"short.gz: truncated: header says 12 x 7 x 5 = 436 bytes, file has 426"):
        read_idx(short, IDX_IMAGES_MAGIC)
    long = write_idx(tmp_path / "long", labels, extra=b"\0\0")
    with pytest.raises(IdxError, match="long: longer than its header says"):
        read_idx(long, IDX_LABELS_MAGIC)
    with pytest.raises(IdxError, match="stub: 3 bytes, too short"):
        read_idx(write_idx(tmp_path / "stub", labels, cut=17), IDX_LABELS_MAGIC)
    wrong = tmp_path / "picture.png"
    draw(wrong)
    with pytest.raises(IdxError, match=r"picture.png: magic number 0x89504e47; expected 0x00000803"):
        read_idx(wrong, IDX_IMAGES_MAGIC)
    broken = tmp_path / "broken.gz"
    broken.write_bytes(images_file.read_bytes()[:40])
    with pytest.raises(IdxError, match="broken.gz: gzip data is truncated or corrupt"):
        read_idx(broken, IDX_IMAGES_MAGIC)
    floats = write_idx(tmp_path / "floats", images, magic=0x00000D03)
    with pytest.raises(IdxError, match="floats: magic number 0x00000d03; expected 0x00000803"):
        read_idx(floats, IDX_IMAGES_MAGIC)
    few = write_idx(tmp_path / "few-labels", labels[:10])
    with pytest.raises(IdxError, match="has 12 images but .*few-labels has 10 labels"):
        idx_manifest(images_file, few, out)
    with pytest.raises(IdxError, match="missing: file does not exist"):
        idx_manifest(tmp_path / "missing", labels_file, out)
    assert not out.exists()  # nothing is written before every check has passed


def test_index_splits_parsing():
    assert parse_index_splits("train=0:8000,test=8000:10000", 10000) == [("train", 0, 8000), ("test", 8000, 10000)]
    assert parse_index_splits("test=8000:, train=:7000", 10000) == [("test", 8000, 10000), ("train", 0, 7000)]
    assert parse_index_splits("train=0:10,train=20:30", 30) == [("train", 0, 10), ("train", 20, 30)]
    for bad, message in [("train=0:8000,test=7000:10000", "train and test overlap at index 7000"),
                         ("train=0:20000", r"need 0 <= start < end <= 10000"),
                         ("train=5:5", "need 0 <= start < end"),
                         ("dev=0:10", "not split=start:end with split one of train, val, test"),
                         ("train:0:10", "not split=start:end"),
                         ("train=a:b", "whole numbers")]:
        with pytest.raises(IdxError, match=message):
            parse_index_splits(bad, 10000)


def _mnist_or_skip() -> tuple[Path, Path]:
    images, labels = MNIST / "t10k-images-idx3-ubyte.gz", MNIST / "t10k-labels-idx1-ubyte.gz"
    if not (images.is_file() and labels.is_file()):
        pytest.skip(f"MNIST not found at {MNIST.resolve()} (place t10k-*-ubyte.gz under shared/data/mnist)")
    return images, labels


def test_real_mnist_file(tmp_path):
    images_file, labels_file = _mnist_or_skip()
    images, labels = read_idx(images_file, IDX_IMAGES_MAGIC), read_idx(labels_file, IDX_LABELS_MAGIC)
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,)
    assert labels[0] == 7 and set(np.unique(labels)) == set(range(10))
    summary = idx_manifest(images_file, labels_file, tmp_path / "mnist", splits="train=0:40,test=9990:10000")
    samples = lines(tmp_path / "mnist" / "manifest.jsonl")
    assert summary.total == 50 and samples[0]["label"] == "7" and samples[-1]["id"] == "09999"
    assert check_manifest(tmp_path / "mnist" / "manifest.jsonl") == (50, [])


# ---------------------------------------------------------------------------------------------
# the CLI
# ---------------------------------------------------------------------------------------------

def test_cli_image_folder_prints_the_summary_and_warnings(tmp_path, capsys):
    root = class_folder(tmp_path / "d", {"cat": 5, "dog": 5})
    (root / "dog" / "list.csv").write_text("a,b\n")
    out = tmp_path / "m.jsonl"
    assert main(["data", "image-folder", str(root), "--out", str(out), "--val-fraction", "0.2",
                 "--test-fraction", "0", "--seed", "3"]) == 0
    printed = capsys.readouterr()
    assert f"wrote {out}: 10 images, 2 classes" in printed.out
    assert printed.out.splitlines()[1].split() == ["label", "train", "val"]  # no test drawn
    assert f"omniformer data: warning: {root / 'dog' / 'list.csv'}: not an image" in printed.err
    assert Counter(s["split"] for s in lines(out)) == {"train": 8, "val": 2}


def test_cli_errors_exit_2_without_a_traceback(tmp_path, capsys, small_idx):
    images_file, labels_file, _, _ = small_idx
    (tmp_path / "empty").mkdir()
    for argv, message in [
            (["image-folder", str(tmp_path / "empty"), "--out", str(tmp_path / "m.jsonl")], "no class folders"),
            (["idx", str(labels_file), str(images_file), "--out", str(tmp_path / "o")], "swapped"),
            (["idx", str(images_file), str(labels_file), "--out", str(tmp_path / "o"), "--splits", "train=0:99"],
             "need 0 <= start < end <= 12"),
            (["audio-folder", str(tmp_path / "empty"), "--out", str(tmp_path / "a.jsonl")],
             f"{tmp_path / 'empty'}: no audio files")]:
        assert main(["data", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("omniformer data: error: ") and message in err and "Traceback" not in err, err


def test_cli_idx(tmp_path, capsys, small_idx):
    images_file, labels_file, _, _ = small_idx
    assert main(["data", "idx", str(images_file), str(labels_file), "--out", str(tmp_path / "o"),
                 "--splits", "train=0:8,test=8:12"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {tmp_path / 'o' / 'manifest.jsonl'}: 12 images, 8 classes" in printed
    assert printed.splitlines()[-1].split() == ["total", "8", "4"]


# ---------------------------------------------------------------------------------------------
# audio-folder
# ---------------------------------------------------------------------------------------------

def test_audio_folder_needs_audio_and_labels_by_folder(tmp_path, capsys):
    folder = tmp_path / "speech"
    for name in ("yes/a.wav", "yes/b.flac", "no/c.wav", "loose.wav"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        write_audio(folder / name, np.zeros(80, np.float32), 8000)
    out = tmp_path / "speech.jsonl"
    assert main(["data", "audio-folder", str(folder), "--out", str(out), "--label-from", "folder"]) == 0
    assert "4 recordings" in capsys.readouterr().out
    by_id = {s["id"]: s for s in lines(out)}
    assert by_id["yes/b"] == {"id": "yes/b", "audio": "speech/yes/b.flac", "label": "yes", "split": "train"}
    assert by_id["no/c"]["label"] == "no" and "label" not in by_id["loose"]
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("no sound here")
    with pytest.raises(AudioError, match=r"texts: no audio files; expected \.wav, \.flac, \.ogg"):
        audio_folder_manifest(tmp_path / "texts", tmp_path / "x.jsonl")
    with pytest.raises(AudioError, match="nowhere: folder does not exist"):
        audio_folder_manifest(tmp_path / "nowhere", tmp_path / "x.jsonl")
    out.write_text("earlier\n")
    assert main(["data", "audio-folder", str(tmp_path / "texts"), "--out", str(out)]) == 2
    assert out.read_text() == "earlier\n"  # the failed run wrote nothing
