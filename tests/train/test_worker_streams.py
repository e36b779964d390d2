"""DataLoader workers draw their own augmentation: the NumPy generators an augmenter holds are
reseeded in each worker, so two workers, or two epochs, never replay the same masks."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from omniformer.data.audio import SpecAugment
from omniformer.train.loop import _worker_init


class Masked(Dataset):
    """Each item: where SpecAugment put its masks on a (16, 40) block of ones."""

    def __init__(self):
        self.preprocess = type("Pre", (), {})()
        self.preprocess.spec_augment = SpecAugment(seed=None)

    def __len__(self):
        return 8

    def __getitem__(self, i):
        return self.preprocess.spec_augment(torch.ones(16, 40)).flatten()


def epoch(loader) -> list[bytes]:
    return [row.numpy().tobytes() for batch in loader for row in batch]


def test_workers_and_epochs_draw_different_masks():
    data = Masked()
    loader = DataLoader(data, batch_size=1, num_workers=2, worker_init_fn=_worker_init,
                        generator=torch.Generator().manual_seed(0))
    first, second = epoch(loader), epoch(loader)
    assert len(set(first)) == len(first) == 8, "two workers replayed the same augmentation"
    assert not set(first) & set(second), "the second epoch replayed the first"
    # reproducible from the loader's seed
    again = DataLoader(data, batch_size=1, num_workers=2, worker_init_fn=_worker_init,
                       generator=torch.Generator().manual_seed(0))
    assert epoch(again) == first
    assert isinstance(data.preprocess.spec_augment.rng, np.random.Generator)  # the main process's, untouched
