"""The recogniser these tests share: trained once per run on tone "speech" (test_asr_task)."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tone_recogniser(tmp_path_factory) -> tuple[Path, Path]:
    """(best checkpoint, manifest) of a recogniser trained here on 160 tone recordings, its beam
    keeping to the training words."""
    from omniformer.tasks.asr import TASK
    from test_asr_task import tiny_cfg, write_tones
    root = tmp_path_factory.mktemp("asr")
    manifest = write_tones(root)
    return TASK.train(tiny_cfg(root / "run", manifest, task={"words": "train"}), progress=False), manifest
