"""The shared training loop and checkpoints, on a toy task so they are tested on their own."""
import os

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from omniformer.config import TrainConfig
from omniformer.data.batching import collate
from omniformer.train import checkpoint as ckpt
from omniformer.train.loop import Curriculum, fit, resolve_device


class Toy(Dataset):
    def __init__(self, n=96):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, 2, 2, generator=g)
        self.y = (self.x.sum((1, 2, 3)) > 0).long()

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"index": i, "image": self.x[i], "answer": int(self.y[i])}


class ToyModel(nn.Module):
    def __init__(self, fail_at=None):
        super().__init__()
        torch.manual_seed(0)  # the same initial weights in every run being compared
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.LayerNorm(16), nn.GELU(), nn.Dropout(0.2),
                                 nn.Linear(16, 2))
        self.losses, self.fail_at = [], fail_at

    def forward(self, batch):
        if self.fail_at is not None and len(self.losses) == self.fail_at:
            raise RuntimeError("simulated crash")
        logits = self.net(batch["image"])
        loss = nn.functional.cross_entropy(logits, batch["answer"])
        self.losses.append(loss.item())
        return {"loss": loss, "accuracy": (logits.argmax(-1) == batch["answer"]).float().mean()}


def cfg(**kw):
    base = dict(steps=12, batch_size=16, lr=3e-2, warmup_steps=2, workers=0, save_every=4, eval_every=6,
                log_every=2, progress=False, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def test_learns_and_keeps_best(tmp_path):
    model = ToyModel()
    data = Toy()

    def evaluate(m):
        m.eval()
        with torch.no_grad():
            out = m(collate([data[i] for i in range(len(data))]))
        return {"score": float(out["accuracy"])}

    result = fit(model, data, cfg(steps=60), tmp_path, collate_fn=collate, meta={"task": "toy"}, evaluate=evaluate)
    assert result.steps == 60
    assert result.best_score > 0.9
    assert sum(model.losses[-10:]) / 10 < 0.6 * sum(model.losses[:10]) / 10
    assert (tmp_path / "best" / ckpt.WEIGHTS).is_file() and (tmp_path / "last" / ckpt.OPTIMIZER).is_file()
    assert list((tmp_path / "tb").iterdir())


def test_resume_gives_identical_next_steps(tmp_path):
    straight = ToyModel()
    fit(straight, Toy(), cfg(), tmp_path / "a", collate_fn=collate, meta={})
    crashed = ToyModel(fail_at=6)  # dies during step 7, after the step-4 checkpoint
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(crashed, Toy(), cfg(), tmp_path / "b", collate_fn=collate, meta={})
    resumed = ToyModel()
    fit(resumed, Toy(), cfg(), tmp_path / "b", collate_fn=collate, meta={}, resume=True)
    assert resumed.losses == pytest.approx(straight.losses[4:], abs=1e-6)
    assert resumed.losses[0] == straight.losses[4]  # the very next step, bit for bit


def test_kill_mid_checkpoint_keeps_previous(tmp_path, monkeypatch):
    model = ToyModel()
    first = ckpt.save_checkpoint(tmp_path / "last", model, {"step": 1})
    before = ckpt.load_weights(first, ToyModel())
    with torch.no_grad():
        model.net[1].weight.add_(1.0)

    real_replace = os.replace
    calls = []

    def dying_replace(src, dst):  # the process dies between moving the old folder away and the new one in
        calls.append((src, dst))
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", dying_replace)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path / "last", model, {"step": 2})
    monkeypatch.setattr(os, "replace", real_replace)
    found = ckpt.find_checkpoint(tmp_path / "last")
    restored = ToyModel()
    ckpt.load_weights(found, restored)
    assert ckpt.read_meta(found) == {"step": 1}
    assert before == [] and torch.equal(restored.net[1].weight, ToyModel().net[1].weight * 0 + restored.net[1].weight)


def test_a_save_after_an_interrupted_swap_keeps_the_good_folder_until_the_new_one_is_in(tmp_path, monkeypatch):
    """A kill between the swap's renames leaves only last.old; the next save must not delete it
    before its own folder is in place (a second kill there lost every checkpoint)."""
    model = ToyModel()
    ckpt.save_checkpoint(tmp_path / "last", model, {"step": 1})
    os.replace(tmp_path / "last", tmp_path / "last.old")  # as the first kill left it
    real_replace, calls = os.replace, []

    def dying_replace(src, dst):
        calls.append((src, dst))
        raise KeyboardInterrupt("killed again")

    monkeypatch.setattr(os, "replace", dying_replace)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path / "last", model, {"step": 2})
    monkeypatch.setattr(os, "replace", real_replace)
    assert ckpt.read_meta(ckpt.find_checkpoint(tmp_path / "last")) == {"step": 1}
    ckpt.save_checkpoint(tmp_path / "last", model, {"step": 3})  # and the next save completes
    assert ckpt.read_meta(ckpt.find_checkpoint(tmp_path / "last")) == {"step": 3}


def test_full_disk_leaves_previous_checkpoint(tmp_path, monkeypatch):
    model = ToyModel()
    ckpt.save_checkpoint(tmp_path / "last", model, {"step": 1})
    import omniformer.train.checkpoint as module

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(module, "save_file", full)
    with pytest.raises(ckpt.CheckpointError, match="No space left"):
        ckpt.save_checkpoint(tmp_path / "last", model, {"step": 2})
    assert ckpt.read_meta(tmp_path / "last") == {"step": 1}
    assert not (tmp_path / "last.tmp").exists()


def test_load_rejects_wrong_shapes_with_tensor_name(tmp_path):
    ckpt.save_checkpoint(tmp_path / "c", ToyModel(), {})
    other = ToyModel()
    other.net[5] = nn.Linear(16, 3)
    with pytest.raises(ckpt.CheckpointError, match=r"net\.5\.(weight|bias)"):
        ckpt.load_weights(tmp_path / "c", other)
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint"):
        ckpt.load_weights(tmp_path / "nothing", other)


class IndexRecorder(ToyModel):
    def __init__(self, fail_at=None):
        super().__init__(fail_at)
        self.seen = []

    def forward(self, batch):
        out = super().forward(batch)
        self.seen.append(sorted(batch["index"].tolist()))
        return out


def test_curriculum_draws_its_subset_first_then_everything(tmp_path):
    subset = list(range(0, 96, 3))  # 32 of the 96 samples: two batches of 16
    model = IndexRecorder()
    config = cfg(steps=10)
    fit(model, Toy(), config, tmp_path, collate_fn=collate, meta={}, curriculum=Curriculum(subset, 4))
    early, late = model.seen[:4], model.seen[4:]
    assert all(set(b) <= set(subset) for b in early)
    assert sorted(i for b in early[:2] for i in b) == subset  # a whole epoch of the subset first
    assert sorted(i for b in late for i in b) == list(range(96))  # then the full set's first epoch


def test_curriculum_resume_is_exact(tmp_path):
    subset = list(range(0, 96, 3))
    config, curriculum = cfg(steps=10, save_every=3), Curriculum(subset, 6)
    straight = IndexRecorder()
    fit(straight, Toy(), config, tmp_path / "a", collate_fn=collate, meta={}, curriculum=curriculum)
    crashed = IndexRecorder(fail_at=4)  # dies during step 5, inside the curriculum, after the step-3 checkpoint
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(crashed, Toy(), config, tmp_path / "b", collate_fn=collate, meta={}, curriculum=curriculum)
    resumed = IndexRecorder()
    fit(resumed, Toy(), config, tmp_path / "b", collate_fn=collate, meta={}, resume=True, curriculum=curriculum)
    assert resumed.seen == straight.seen[3:]
    assert resumed.losses == pytest.approx(straight.losses[3:], abs=1e-6)


def test_curriculum_without_samples_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="curriculum"):
        fit(ToyModel(), Toy(), cfg(), tmp_path, collate_fn=collate, meta={},
            curriculum=Curriculum([], 2, "family in ['shape']"))


def test_resolve_device_names_a_bad_or_missing_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(ValueError, match="'gpu0' is not a device name"):
        resolve_device("gpu0")
    missing = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU: none on a CPU machine
    with pytest.raises(ValueError, match=f"'{missing}' is not available"):
        resolve_device(missing)


def test_weight_decay_reaches_linear_maps_whatever_their_names():
    """Matrices of Linear and conv layers decay; embeddings (and a decoder tied to one), norms,
    biases, positions and learned tokens do not. A Linear named ``token`` is still a linear map."""
    from torch import nn

    from omniformer.train.optim import parameter_groups

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.token = nn.Linear(4, 4)                     # named like a token, a linear map all the same
            self.conv = nn.Conv1d(4, 4, 3)
            self.norm = nn.LayerNorm(4)
            self.cls_token = nn.Parameter(torch.zeros(1, 1, 4))
            self.decoder = nn.Linear(4, 10)
            self.decoder.weight = self.embed.weight          # tied

    net = Net()
    decay, keep = parameter_groups(net, 0.1)
    assert {id(p) for p in decay["params"]} == {id(net.token.weight), id(net.conv.weight)}
    assert decay["weight_decay"] == 0.1 and keep["weight_decay"] == 0.0
    assert len(decay["params"]) + len(keep["params"]) == len(list(net.parameters()))


# ---------------------------------------------------------------------------------------------
# Corrupt samples and non-finite steps
# ---------------------------------------------------------------------------------------------

def _image_manifest(root, n=40, bad=(5, 17)):
    """n images of a bright or dark square (the label); samples ``bad`` are a PNG cut short and a
    missing file."""
    import json

    from PIL import Image
    samples = []
    for i in range(n):
        path = root / f"{i}.png"
        Image.new("RGB", (16, 16), (230, 230, 230) if i % 2 else (20, 20, 20)).save(path)
        samples.append({"id": f"s{i}", "image": path.name, "answer": str(i % 2)})
    (root / f"{bad[0]}.png").write_bytes((root / f"{bad[0]}.png").read_bytes()[:30])
    samples[bad[1]]["image"] = "gone.png"
    (root / "m.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    return root / "m.jsonl", samples


class PixelModel(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2))

    def forward(self, batch):
        logits = self.net(batch["image"])
        return {"loss": nn.functional.cross_entropy(logits, batch["answer"])}


def _image_set(manifest, samples):
    from omniformer.config import ModelConfig
    from omniformer.data.batching import MultimodalDataset
    from omniformer.modalities.image import image_preprocessor
    model = ModelConfig()
    model.image.size = 16
    return MultimodalDataset(manifest, samples, image=image_preprocessor(model, augment=False), answers=["0", "1"])


def test_bad_samples_are_skipped_counted_and_agree_with_data_check(tmp_path):
    from omniformer.data.manifest import check_manifest
    manifest, samples = _image_manifest(tmp_path)
    _, problems = check_manifest(manifest)
    flagged = {p.line - 1 for p in problems}
    assert flagged == {5, 17}, problems
    result = fit(PixelModel(), _image_set(manifest, samples), cfg(steps=8, batch_size=8, max_bad_fraction=0.1),
                 tmp_path / "run", collate_fn=collate, meta={})
    assert result.steps == 8 and set(result.bad_samples) == flagged  # training and data check agree
    assert "5.png" in result.bad_samples[5] and "gone.png" in result.bad_samples[17]
    assert "does not exist" in result.bad_samples[17]
    state = ckpt.read_trainer_state(tmp_path / "run" / "last")
    assert [i for i, _ in state["bad_samples"]] == [5, 17]  # carried across --resume


def test_too_many_bad_samples_stop_the_run_listing_them(tmp_path):
    from omniformer.train.loop import BadDataError
    manifest, samples = _image_manifest(tmp_path)
    with pytest.raises(BadDataError) as e:  # 1% of 40 samples allows none
        fit(PixelModel(), _image_set(manifest, samples), cfg(steps=8, batch_size=8), tmp_path / "run",
            collate_fn=collate, meta={})
    message = str(e.value)
    assert "max_bad_fraction=0.01" in message and "data check" in message
    assert "5.png" in message  # the first one found stops the run


class Poisoned(ToyModel):
    """A non-finite loss (or, with ``gradient``, a finite loss with a NaN gradient) on any batch
    holding sample ``poison``; ``always``: on every batch."""

    def __init__(self, poison=7, gradient=False, always=False):
        super().__init__()
        self.poison, self.gradient, self.always = poison, gradient, always

    def forward(self, batch):
        out = super().forward(batch)
        if self.always or self.poison in batch["index"].tolist():
            if self.gradient:  # sqrt'(0) is infinite: a zero loss term with a NaN gradient
                out["loss"] = out["loss"] + torch.sqrt(self.net[1].weight.sum() * 0.0)
            else:
                out["loss"] = out["loss"] * float("nan")
        return out


@pytest.mark.parametrize("gradient", [False, True])
def test_a_nonfinite_step_is_skipped_and_named(tmp_path, capsys, gradient):
    model = Poisoned(gradient=gradient)
    result = fit(model, Toy(), cfg(steps=12, progress=True), tmp_path, collate_fn=collate, meta={})
    # Toy has 96 samples in batches of 16: 12 steps see sample 7 twice (once an epoch)
    assert result.steps == 12 and result.skipped_steps == 2
    assert all(torch.isfinite(p).all() for p in model.parameters())
    out = capsys.readouterr().out
    assert out.count("skipped step:") == 2 and ("gradient norm nan" if gradient else "loss nan at step") in out


def test_nonfinite_stop_keeps_the_last_checkpoint(tmp_path):
    clean = ToyModel()
    fit(clean, Toy(), cfg(steps=4), tmp_path, collate_fn=collate, meta={})  # a checkpoint at step 4
    before = (tmp_path / "last" / ckpt.WEIGHTS).read_bytes()
    with pytest.raises(FloatingPointError, match=r"train.nonfinite=stop .*last checkpoint.* is kept"):
        fit(Poisoned(), Toy(), cfg(steps=12, nonfinite="stop"), tmp_path, collate_fn=collate, meta={}, resume=True)
    assert (tmp_path / "last" / ckpt.WEIGHTS).read_bytes() == before  # sample 7 is met at step 7
    assert ckpt.read_trainer_state(tmp_path / "last")["step"] == 4


def test_a_diverged_run_stops_after_so_many_skipped_steps_in_a_row(tmp_path):
    with pytest.raises(FloatingPointError, match="3 steps in a row were not finite"):
        fit(Poisoned(always=True), Toy(), cfg(max_skipped_steps=3), tmp_path, collate_fn=collate, meta={})


class NoisyToy(Toy):
    """Toy with augmentation: noise from a generator the dataset holds (as augmenters do)."""

    def __init__(self):
        super().__init__()
        self.rng = np.random.default_rng()  # unseeded: training must reseed it to be reproducible

    def __getitem__(self, i):
        item = super().__getitem__(i)
        item["image"] = item["image"] + torch.from_numpy(self.rng.normal(0, 0.3, (3, 2, 2)).astype(np.float32))
        return item


def test_an_augmenting_run_is_exact_across_processes_workers_and_a_resume_mid_epoch(tmp_path):
    """Augmentation drew from unseeded generators, so no two runs (or a resumed one) matched."""
    straight = ToyModel()
    fit(straight, NoisyToy(), cfg(save_every=3), tmp_path / "a", collate_fn=collate, meta={})
    again = ToyModel()
    fit(again, NoisyToy(), cfg(save_every=3, workers=2), tmp_path / "w", collate_fn=collate, meta={})
    assert again.losses == straight.losses  # two workers, the same draws
    crashed = ToyModel(fail_at=7)  # dies during step 8; the step-6 checkpoint is mid-epoch (8 steps an epoch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(crashed, NoisyToy(), cfg(save_every=3, steps=12, batch_size=12), tmp_path / "b", collate_fn=collate,
            meta={})
    reference = ToyModel()
    fit(reference, NoisyToy(), cfg(save_every=3, steps=12, batch_size=12), tmp_path / "c", collate_fn=collate,
        meta={})
    resumed = ToyModel()
    fit(resumed, NoisyToy(), cfg(save_every=3, steps=12, batch_size=12), tmp_path / "b", collate_fn=collate,
        meta={}, resume=True)
    assert resumed.losses == reference.losses[6:]
