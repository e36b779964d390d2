"""What several benchmarks share: the quickstart-shaped QA model and the JSON result file."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from omniformer.cli import recipe_path
from omniformer.config import load_config
from omniformer.tasks.qa import QAModel, qa_config


def random_qa_model(config: str, answers: int):
    """(recipe, QAModel in eval mode) with seeded random weights: the same compute as a trained one."""
    cfg = load_config(recipe_path(config))
    cfg.model.vocab_size = cfg.data.vocab_size
    torch.manual_seed(0)
    return cfg, QAModel(cfg.model, answers, qa_config(cfg)).eval()


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo): hosts of one machine type differ, and the relative
    cost of ops with them (benchmarks/README.md, "Decoding speed")."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def write_json(path: str, results: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(results, indent=2))
        print(f"\nwrote {path}")
