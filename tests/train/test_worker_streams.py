"""Training's random draws depend on (seed, epoch, sample) only: the NumPy generators an
augmenter holds are reseeded for each sample (TrainingSamples), so two workers, or two epochs,
never replay the same masks, and a run is the same whatever its worker count, its order, or
where it was resumed."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from omniformer.data.audio import SpecAugment
from omniformer.data.batching import TrainingSamples, generator_slots
from omniformer.train.loop import _worker_init


class Masked(Dataset):
    """Each item: where SpecAugment put its masks on a (16, 40) block of ones."""

    def __init__(self):
        self.preprocess = type("Pre", (), {})()
        self.preprocess.spec_augment = SpecAugment(seed=None)
        self.by_name = {"audio": SpecAugment(seed=None)}  # generators inside dicts are found too

    def __len__(self):
        return 8

    def __getitem__(self, i):
        return self.preprocess.spec_augment(torch.ones(16, 40)).flatten()


def epoch(data, workers: int, order=None) -> list[bytes]:
    loader = DataLoader(data, batch_size=1, num_workers=workers, worker_init_fn=_worker_init,
                        sampler=order, generator=torch.Generator().manual_seed(0))
    return [row.numpy().tobytes() for batch in loader for row in batch]


def test_draws_depend_on_seed_epoch_and_sample_only():
    data = Masked()
    assert len(generator_slots(data)) == 2
    first = epoch(TrainingSamples(data, seed=3, epoch=0), workers=2)
    assert len(set(first)) == len(first) == 8, "two workers or two samples replayed the same augmentation"
    second = epoch(TrainingSamples(data, seed=3, epoch=1), workers=2)
    assert not set(first) & set(second), "the second epoch replayed the first"
    assert epoch(TrainingSamples(data, seed=3, epoch=0), workers=0) == first  # whatever the worker count
    backwards = epoch(TrainingSamples(data, seed=3, epoch=0), workers=0, order=list(range(7, -1, -1)))
    assert backwards == first[::-1]  # whatever the order (a resumed epoch starts part-way)
    assert epoch(TrainingSamples(data, seed=4, epoch=0), workers=0) != first
