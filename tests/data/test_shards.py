"""Tar shards (webdataset layout): written from a manifest and read back as the same samples and
media, corrupt shards named by shard and member, the shard-by-shard batch sampler, the
``data shard`` command, and a classify run trained and evaluated from a shard folder."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image
from torch import nn

from omniformer.cli import main
from omniformer.data import shards as shards_module
from omniformer.data.audio import load_audio
from omniformer.data.batching import BucketBatchSampler, MultimodalDataset, collate, padding_fraction
from omniformer.data.image import load_image
from omniformer.data.manifest import (ManifestError, MediaError, check_manifest, load_media, manifest_exists,
                                     read_manifest, resolve, write_manifest)
from omniformer.data.shards import ShardBatchSampler, read_index, shard_of, write_shards

COLOURS = ("red", "blue", "green")
MEDIA = ("image", "audio", "question_audio")


def make_manifest(root: Path, n: int = 12, test: int = 3, text_only: bool = True) -> Path:
    """``n`` labelled samples: three images shared round the samples (ShapesWorld-like), a recording
    of its own length for each, text on every other one, a spoken question on every fourth (sharing
    the recordings), the last ``test`` in the test split; and one sample of text alone."""
    media = root / "media"
    media.mkdir(parents=True, exist_ok=True)
    for colour in COLOURS:
        Image.new("RGB", (16, 16), colour).save(media / f"{colour}.png")
    samples = []
    for i in range(n):
        t = np.arange(800 + 400 * (i % 5)) / 16000
        sf.write(media / f"say{i}.wav", (0.3 * np.sin(2 * np.pi * (200 + 100 * i) * t)).astype(np.float32), 16000)
        colour = COLOURS[i % 3]
        sample = {"id": f"s{i}", "image": f"media/{colour}.png", "audio": f"media/say{i}.wav", "label": colour,
                  "split": "test" if i >= n - test else "train", "meta": {"number": i}}
        if i % 2:
            sample["text"] = f"sample number {i}"
        if i % 4 == 0:
            sample.update(question="what colour is it?", question_audio=f"media/say{i // 4}.wav", answer=colour)
        samples.append(sample)
    if text_only:
        samples.append({"id": "words", "text": "only words here", "label": "red"})
    return write_manifest(root / "manifest.jsonl", samples)


def rewrite_member(tar: Path, name: str, data: bytes | None) -> None:
    """Rewrite ``tar`` with member ``name``'s bytes replaced by ``data`` (None: left out)."""
    with tarfile.open(tar) as archive:
        members = [(m, archive.extractfile(m).read()) for m in archive]
    with tarfile.open(tar, "w", format=tarfile.USTAR_FORMAT) as archive:
        for member, content in members:
            if member.name == name:
                if data is None:
                    continue
                content, member.size = data, len(data)
            archive.addfile(member, io.BytesIO(content))


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> tuple[Path, Path]:
    """(manifest, its shard folder of 5 samples a shard); read only."""
    root = tmp_path_factory.mktemp("packed")
    manifest = make_manifest(root)
    return manifest, write_shards(manifest, root / "shards", samples_per_shard=5)


# -- writing and reading -----------------------------------------------------------------------

def test_shards_read_back_as_the_same_samples_and_media(packed, tmp_path):
    manifest, folder = packed
    index = read_index(folder)
    assert index["format"] == "omniformer-shards" and index["version"] == 1 and index["samples"] == 13
    assert index["source"] == str(manifest.resolve()) and index["samples_per_shard"] == 5
    assert [(s["name"], s["samples"]) for s in index["shards"]] == [
        ("shard-000000.tar", 5), ("shard-000001.tar", 5), ("shard-000002.tar", 3)]
    assert sorted(p.name for p in folder.iterdir()) == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar",
                                                        "shards.json"]  # no temporary left behind
    with tarfile.open(folder / "shard-000000.tar") as tar:
        names = tar.getnames()
    assert names[:3] == ["000000.json", "000000.image.png", "000000.audio.wav"]  # the JSON first, then its media
    assert names.count("000000.json") == 1 and sum(".image." in n for n in names) == 3  # 5 samples, 3 images

    original, read = read_manifest(manifest), read_manifest(folder)
    assert manifest_exists(folder) and len(read) == len(original) == 13
    assert read[5]["image"] == "shard-000001.tar/000005.image.png"
    assert read[6]["image"] == "shard-000001.tar/000006.image.png" and read[8]["image"] == read[5]["image"]
    for mine, theirs in zip(read, original):
        assert {k: v for k, v in mine.items() if k not in MEDIA} == {k: v for k, v in theirs.items() if k not in MEDIA}
        assert set(mine) == set(theirs)
        for key in set(MEDIA) & set(mine):
            assert mine[key].startswith("shard-") and resolve(folder, mine[key]) == folder.resolve() / mine[key]
            if key == "image":
                pixels = [np.asarray(load_media(resolve(m, s[key]), load_image))
                          for m, s in ((folder, mine), (manifest, theirs))]
            else:
                pixels = [load_media(resolve(m, s[key]), load_audio) for m, s in ((folder, mine), (manifest, theirs))]
            np.testing.assert_array_equal(*pixels)
    assert check_manifest(folder) == (13, [])

    # the same data gives the same bytes; a shard folder can be sharded again
    again = write_shards(manifest, tmp_path / "again", samples_per_shard=5)
    assert all((again / n).read_bytes() == (folder / n).read_bytes() for n in ("shard-000000.tar", "shard-000002.tar"))
    one = write_shards(folder, tmp_path / "one", samples_per_shard=100)
    assert [s["label"] for s in read_manifest(one)] == [s["label"] for s in original]
    assert np.array_equal(np.asarray(load_image(resolve(one, read_manifest(one)[7]["image"]))),
                          np.asarray(load_image(manifest.parent / original[7]["image"])))


def test_the_dataset_reads_shard_members_and_their_lengths(packed):
    manifest, folder = packed
    from omniformer.config import ModelConfig
    from omniformer.modalities.audio import audio_preprocessor
    from omniformer.modalities.image import image_preprocessor
    model = ModelConfig()
    model.image.size = 16
    sets = [MultimodalDataset(m, read_manifest(m), image=image_preprocessor(model, augment=False),
                              audio=audio_preprocessor(model)) for m in (manifest, folder)]
    assert sets[0].lengths() == sets[1].lengths() and max(sets[1].lengths()) > 0  # durations from member headers
    for a, b in zip(sets[0][4].values(), sets[1][4].values()):
        assert torch.equal(torch.as_tensor(a), torch.as_tensor(b))
    # the decoders take a member's path too (what the caption task's evaluation and predictors pass)
    sample = read_manifest(folder)[4]
    np.testing.assert_array_equal(load_audio(resolve(folder, sample["audio"])),
                                  load_audio(manifest.parent / "media/say4.wav"))
    assert load_image(resolve(folder, sample["image"])).getpixel((0, 0)) == (0, 0, 255)  # blue
    with pytest.raises(ValueError, match=r"shard-000000\.tar/nothing\.png is missing from its shard"):
        load_image(folder / "shard-000000.tar" / "nothing.png")


def test_a_killed_write_leaves_no_half_shard_and_no_index(packed, tmp_path, monkeypatch):
    manifest, _ = packed
    calls, read = [], shards_module._read_bytes

    def dies_on_the_ninth_file(path):
        calls.append(path)
        if len(calls) == 9:
            raise KeyboardInterrupt  # killed in the middle of the second shard
        return read(path)

    monkeypatch.setattr(shards_module, "_read_bytes", dies_on_the_ninth_file)
    with pytest.raises(KeyboardInterrupt):
        write_shards(manifest, tmp_path / "out", samples_per_shard=5)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["shard-000000.tar"]  # whole; nothing else
    assert not manifest_exists(tmp_path / "out")
    with pytest.raises(ManifestError, match="holds no shards.json"):
        read_manifest(tmp_path / "out")


# -- corrupt shards ----------------------------------------------------------------------------

def test_a_corrupt_or_missing_member_is_named_by_data_check_and_load_media(packed, tmp_path, capsys):
    manifest, _ = packed
    folder = write_shards(manifest, tmp_path / "shards", samples_per_shard=5)
    rewrite_member(folder / "shard-000001.tar", "000005.image.png", b"garbage, not an image")
    rewrite_member(folder / "shard-000002.tar", "000010.audio.wav", None)
    assert main(["data", "check", str(folder)]) == 1
    out = capsys.readouterr().out
    assert "shard-000001.tar/000005.json: image:" in out
    assert "shard-000001.tar/000005.image.png: not a readable image" in out
    assert "shard-000001.tar/000008.json: image:" in out  # sample 8 shares sample 5's image
    assert ("shard-000002.tar/000010.json: audio: file shard-000002.tar/000010.audio.wav is missing from its "
            "shard shard-000002.tar") in out
    assert "13 samples checked, 3 problem(s)" in out and "0x" not in out
    samples = read_manifest(folder)  # bad media do not stop reading: training skips them
    with pytest.raises(MediaError, match=r"shard-000001\.tar/000005\.image\.png: not a readable image"):
        load_media(resolve(folder, samples[5]["image"]), load_image)
    with pytest.raises(MediaError, match=r"shard-000002\.tar/000010\.audio\.wav is missing from its shard"):
        load_media(resolve(folder, samples[10]["audio"]), load_audio)
    np.asarray(load_media(resolve(folder, samples[6]["image"]), load_image))  # its neighbours still read


def test_a_truncated_tar_and_a_broken_json_member_are_named(packed, tmp_path, capsys):
    manifest, _ = packed
    folder = write_shards(manifest, tmp_path / "cut", samples_per_shard=5)
    tar = folder / "shard-000001.tar"
    with tarfile.open(tar) as archive:
        cut = archive.getmember("000006.json").offset  # cut where a member starts
    tar.write_bytes(tar.read_bytes()[:cut + 300])  # inside its header
    expected = "shard-000001.tar: is truncated: it ends after member 000005.audio.wav"
    with pytest.raises(ManifestError, match=expected):
        read_manifest(folder)
    assert main(["data", "check", str(folder)]) == 1
    assert expected in capsys.readouterr().out
    with pytest.raises(MediaError, match=r"shard-000001\.tar/000005\.image\.png cannot be read: its shard "
                                         r"shard-000001\.tar is truncated"):
        load_media(folder / "shard-000001.tar" / "000005.image.png", load_image)
    tar.write_bytes(tar.read_bytes()[:cut])  # at a member's end, where tarfile sees no damage
    with pytest.raises(ManifestError, match=expected):
        read_manifest(folder)

    broken = write_shards(manifest, tmp_path / "json", samples_per_shard=5)
    rewrite_member(broken / "shard-000000.tar", "000003.json", b'{"id": "s3", "image": ')
    with pytest.raises(ManifestError, match=r"shard-000000\.tar/000003\.json: <json>: not valid JSON"):
        read_manifest(broken)
    count, problems = check_manifest(broken)
    assert count == 12 and [str(p) for p in problems] == [
        "shard-000000.tar/000003.json: <json>: not valid JSON (Expecting value at column 23)"]


class PixelModel(nn.Module):
    """Brightness of the image to the label: enough to take a step."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 3))

    def forward(self, batch):
        return {"loss": nn.functional.cross_entropy(self.net(batch["image"]), batch["answer"])}


def test_a_corrupt_member_is_skipped_or_fatal_as_max_bad_fraction_says(packed, tmp_path):
    from omniformer.config import ModelConfig, TrainConfig
    from omniformer.modalities.image import image_preprocessor
    from omniformer.train.loop import BadDataError, fit
    manifest, _ = packed
    folder = write_shards(manifest, tmp_path / "shards", samples_per_shard=5)
    rewrite_member(folder / "shard-000001.tar", "000006.image.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    samples = [{**s, "answer": s["label"]} for s in read_manifest(folder) if s.get("image")]
    model = ModelConfig()
    model.image.size = 8
    dataset = MultimodalDataset(folder, samples, image=image_preprocessor(model, augment=False), answers=COLOURS)
    cfg = dict(steps=3, batch_size=4, lr=1e-2, warmup_steps=1, workers=0, save_every=3, eval_every=3, log_every=1,
               progress=False)
    result = fit(PixelModel(), dataset, TrainConfig(**cfg, max_bad_fraction=0.2), tmp_path / "run",
                 collate_fn=collate, meta={})
    assert sorted(result.bad_samples) == [6, 9]  # sample 9 shares sample 6's image
    assert "shard-000001.tar/000006.image.png: not a readable image" in result.bad_samples[6]
    with pytest.raises(BadDataError, match=r"shard-000001\.tar/000006\.image\.png"):
        fit(PixelModel(), dataset, TrainConfig(**cfg, max_bad_fraction=0.0), tmp_path / "run0",
            collate_fn=collate, meta={})


# -- the sampler -------------------------------------------------------------------------------

def _sampler(epoch: int = 0, **kw) -> ShardBatchSampler:
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 200, size=1000).tolist()  # 20 shards of 50
    args = dict(batch_size=10, shuffle=True, pool=4, drop_last=False, seed=7, shards=[i // 50 for i in range(1000)],
                buffer=50)
    args.update(kw)
    sampler = ShardBatchSampler(lengths, **args)
    sampler.epoch = epoch
    return sampler


def test_the_sampler_gives_every_sample_once_per_epoch_in_a_seeded_order():
    sampler = _sampler()
    epochs = [list(sampler) for _ in range(3)]  # each pass moves to the next epoch, as the loop's does
    assert sampler.epoch == 3 and len(sampler) == 100
    for batches in epochs:
        assert len(batches) == 100 and sorted(i for b in batches for i in b) == list(range(1000))
    assert epochs[0] != epochs[1] != epochs[2]
    assert list(_sampler(epoch=2)) == epochs[2]  # (seed, epoch) alone: a resumed run sees the same batches
    assert list(_sampler(epoch=2, seed=8)) != epochs[2]
    cut = _sampler(drop_last=True, batch_size=64)
    kept = list(cut)
    assert len(kept) == len(cut) == 15 and all(len(b) == 64 for b in kept) and len({i for b in kept for i in b}) == 960
    ordered = list(_sampler(shuffle=False))
    assert ordered == list(_sampler(shuffle=False, epoch=5))  # in order: the first pool is the first 40
    assert sorted(i for b in ordered[:4] for i in b) == list(range(40))


def test_the_sampler_reads_few_shards_at_a_time_and_batches_similar_lengths():
    sampler = _sampler()
    lengths, shard = sampler.lengths, [i // 50 for i in range(1000)]
    batches = list(sampler)
    def shards_per_pool(batches: list[list[int]]) -> list[int]:
        return [len({shard[i] for b in batches[k:k + 4] for i in b}) for k in range(0, len(batches), 4)]

    # a pool of 40 samples comes out of a buffer of 50 filled shard after shard: a few shards
    # (the one being read and what is left of the last ones), where a plain shuffle reads everywhere
    mine, bucket = shards_per_pool(batches), shards_per_pool(list(BucketBatchSampler(lengths, 10, pool=4, seed=7)))
    assert np.mean(mine) < 6 and max(mine) <= 10 and min(bucket) >= 12
    plain = [list(range(i, i + 10)) for i in range(0, 1000, 10)]
    assert padding_fraction(batches, lengths) < padding_fraction(plain, lengths) / 2


def test_shard_of_names_each_samples_shard(packed):
    manifest, folder = packed
    assert shard_of(read_manifest(manifest)) is None
    assert shard_of(read_manifest(folder)) == [0] * 5 + [1] * 5 + [2] * 3  # text alone goes with its neighbour
    with pytest.raises(ValueError, match="shards: expected one shard number per sample"):
        ShardBatchSampler([1, 2, 3], 2, shards=[0, 0])
    with pytest.raises(ValueError, match="buffer: expected a whole number >= 1"):
        ShardBatchSampler([1, 2], 2, shards=[0, 0], buffer=0)


# -- the command line --------------------------------------------------------------------------

def test_data_shard_writes_and_refuses_what_it_should(packed, tmp_path, capsys):
    manifest, _ = packed
    out = tmp_path / "out"
    assert main(["data", "shard", str(manifest), "--out", str(out), "--samples-per-shard", "2"]) == 0
    assert "13 samples in 7 shards" in capsys.readouterr().out

    def refused(argv: list[str], *expected: str) -> None:
        try:
            code = main(["data", "shard", *argv])
        except SystemExit as e:  # argparse's refusals
            code = e.code
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err, err
        for text in expected:
            assert text in err, err

    refused([str(manifest), "--out", str(out)], f"--out {out}: not empty", "--overwrite")
    refused([str(manifest), "--out", str(tmp_path / "x"), "--samples-per-shard", "0"],
            "argument --samples-per-shard: expected a whole number >= 1 and <= 1,000,000, got '0'")
    refused([str(tmp_path / "gone.jsonl"), "--out", str(tmp_path / "x")], "gone.jsonl does not exist")
    (tmp_path / "bad.jsonl").write_text('{"id": "a", "image": "media/red.png"}\n{"id": "b", "imag": "x.png"}\n')
    refused([str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "x")], "bad.jsonl: line 2: imag: unknown field")
    (tmp_path / "gone.jsonl").write_text('{"id": "a", "image": "nowhere.png"}\n')
    refused([str(tmp_path / "gone.jsonl"), "--out", str(tmp_path / "x")],
            "gone.jsonl: line 1: image: file nowhere.png does not exist")
    refused([str(manifest), "--out", str(manifest)], f"--out {manifest}: is a file")
    assert not (tmp_path / "x").exists()
    with pytest.raises(ManifestError, match="is a folder, not a file"):
        read_manifest(tmp_path)

    assert main(["data", "shard", str(manifest), "--out", str(out), "--samples-per-shard", "10", "--overwrite"]) == 0
    assert "13 samples in 2 shards" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["shard-000000.tar", "shard-000001.tar", "shards.json"]
    assert len(read_manifest(out)) == 13


# -- training from shards ----------------------------------------------------------------------

def test_train_classify_from_a_shard_folder_and_evaluate(tmp_path, capsys):
    manifest = make_manifest(tmp_path / "data", n=24, test=6, text_only=False)
    folder = write_shards(manifest, tmp_path / "shards", samples_per_shard=7)
    tiny = ["--model.width=32", "--model.heads=2", "--model.depth=1", "--model.tower_depth=0",
            "--model.image.size=16", "--model.image.patch_size=8", "--model.audio.n_mels=16",
            "--model.audio.max_seconds=1.0", "--model.text.max_len=8", "--data.vocab_size=40"]
    run = ["--finetune.steps=3", "--finetune.batch_size=8", "--finetune.eval_every=3", "--finetune.save_every=3",
           "--finetune.warmup_steps=1", "--finetune.workers=1", "--finetune.progress=false"]
    assert main(["train", "classify", "--config", "classify", f"--data.manifest={folder}",
                 f"--out_dir={tmp_path / 'run'}", *tiny, *run]) == 0, capsys.readouterr().err
    best = tmp_path / "run" / "classify" / "best"
    assert main(["evaluate", "--model", str(best), "--workers", "0", "--json", str(tmp_path / "eval.json")]) == 0
    evaluation = json.loads((tmp_path / "eval.json").read_text())
    assert "test: 6 samples" in capsys.readouterr().out and 0 <= evaluation["accuracy"] <= 1
