"""Shared fixtures: a small ShapesWorld and a QA model trained on it, made once per test session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Tests compare runs bit for bit: a thread count that follows the machine's load (the default,
# omniformer.train.threads) would let two runs of one test differ in float rounding. Torch's own
# count, stated, for this process's training calls and every command a test starts.
os.environ.setdefault("OMP_NUM_THREADS", str(len(os.sched_getaffinity(0))))
SHARED_DATA = ROOT.parent / "shared" / "data"

# A small, easy ShapesWorld (objects on a grid aligned with the patches) and a small model:
# enough to learn in well under a minute on 2 cores.
SMALL_SHAPES = ["--data.dataset_options.images=1500", "--data.dataset_options.size=32",
                "--data.dataset_options.layout=grid", "--data.dataset_options.grid=4",
                "--data.dataset_options.max_objects=4", "--data.dataset_options.voices=3",
                "--model.image.size=32", "--model.image.patch_size=8"]
SMALL_MODEL = ["--model.width=64", "--model.heads=4", "--model.depth=2", "--model.tower_depth=1",
               "--model.audio.subsample=8", "--model.audio.n_mels=40"]


def small_config(out_dir: Path, data_dir: Path, *extra: str):
    from omniformer.config import load_config
    return load_config(ROOT / "configs" / "quickstart.yaml",
                       [f"--out_dir={out_dir}", f"--data.manifest={data_dir}/manifest.jsonl", *SMALL_SHAPES, *SMALL_MODEL,
                        "--pretrain.workers=0", "--finetune.workers=0", "--pretrain.progress=false",
                        "--finetune.progress=false", *extra])


@pytest.fixture(scope="session")
def small_shapes(tmp_path_factory) -> Path:
    """The manifest of a small ShapesWorld (1500 images, grid layout, 3 voices)."""
    from omniformer.tasks.pipeline import ensure_data
    root = tmp_path_factory.mktemp("shapes")
    cfg = small_config(root / "run", root / "data")
    return ensure_data(cfg, progress=False)


@pytest.fixture(scope="session")
def trained_qa(tmp_path_factory, small_shapes) -> tuple[Path, Path]:
    """(checkpoint folder, manifest) of a QA model fine-tuned from scratch on the object-counting
    questions of ``small_shapes``: a quick model for the tests of what is built around it
    (``test_binding.py`` tests what the quickstart recipe learns)."""
    from omniformer.data.manifest import read_manifest, write_manifest
    from omniformer.tasks.pipeline import finetune
    counting = [s for s in read_manifest(small_shapes) if s.get("question", "").startswith("how many objects are there")]
    manifest = write_manifest(small_shapes.parent / "counting.jsonl", counting)
    root = tmp_path_factory.mktemp("trained_qa")
    cfg = small_config(root, small_shapes.parent, f"--data.manifest={manifest}", "--finetune.steps=600",
                       "--finetune.eval_every=600", "--finetune.lr=2e-3", "--task.spoken_fraction=0.0",
                       "--task.curriculum.steps=0")
    return finetune(cfg, init=None, progress=False), manifest


@pytest.fixture(scope="session")
def tone_recogniser(tmp_path_factory) -> tuple[Path, Path]:
    """(best checkpoint, manifest) of a recogniser trained once per run on 160 recordings of
    tone "speech" (tests/tasks/asr/test_asr_task.py), its beam keeping to the training words."""
    from omniformer.tasks.asr import TASK
    from test_asr_task import tiny_cfg, write_tones  # tests/tasks/asr, on the path once collected
    root = tmp_path_factory.mktemp("asr")
    manifest = write_tones(root)
    return TASK.train(tiny_cfg(root / "run", manifest, task={"words": "train"}), progress=False), manifest
