"""Checkpoint averaging: the loop keeps the last N step checkpoints, ``average_checkpoints`` and
``omniformer average`` write their mean as a checkpoint any command loads."""

import pytest
import torch
from safetensors.torch import load_file

from omniformer.cli import main
from omniformer.train import checkpoint as ckpt
from omniformer.train.loop import fit
from omniformer.data.batching import collate

from test_loop import Toy, ToyModel, cfg


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    fit(ToyModel(), Toy(), cfg(steps=20, save_every=4, keep_checkpoints=3), out, collate_fn=collate,
        meta={"task": "toy"})
    return out


def test_the_loop_keeps_the_newest_step_checkpoints_weights_only(run):
    kept = ckpt.step_checkpoints(run)
    assert [p.name for p in kept] == ["0000012", "0000016", "0000020"]
    assert all((p / ckpt.WEIGHTS).is_file() and not (p / ckpt.OPTIMIZER).exists() for p in kept)
    last = load_file(str(run / "last" / ckpt.WEIGHTS))
    newest = load_file(str(kept[-1] / ckpt.WEIGHTS))
    assert all(torch.equal(last[k], newest[k]) for k in last)


def test_the_average_is_the_mean_of_the_weights(run, tmp_path):
    kept = ckpt.step_checkpoints(run, last=2)
    out = ckpt.average_checkpoints(kept, tmp_path / "avg")
    a, b = (load_file(str(p / ckpt.WEIGHTS)) for p in kept)
    avg = load_file(str(out / ckpt.WEIGHTS))
    assert set(avg) == set(a)
    for k in a:
        torch.testing.assert_close(avg[k], (a[k] + b[k]) / 2)
    assert not torch.equal(avg["net.1.weight"], a["net.1.weight"])  # the two really differ
    meta = ckpt.read_meta(out)
    assert meta["task"] == "toy" and meta["averaged_from"] == [str(p) for p in kept]
    model = ToyModel()
    ckpt.load_weights(out, model)  # loads as any checkpoint


def test_average_refuses_mismatched_checkpoints(run, tmp_path):
    kept = ckpt.step_checkpoints(run)
    other = tmp_path / "other"
    ckpt.save_checkpoint(other, torch.nn.Linear(3, 2), {"task": "toy"})
    with pytest.raises(ckpt.CheckpointError, match="tensors differ"):
        ckpt.average_checkpoints([other, kept[-1]], tmp_path / "x")
    ckpt.save_checkpoint(other, ToyModel(), {"task": "qa"})
    with pytest.raises(ckpt.CheckpointError, match="different tasks"):
        ckpt.average_checkpoints([other, kept[-1]], tmp_path / "x")
    with pytest.raises(ckpt.CheckpointError, match="at least two"):
        ckpt.average_checkpoints(kept[:1], tmp_path / "x")
    with pytest.raises(ckpt.CheckpointError, match="keep_checkpoints"):
        ckpt.step_checkpoints(tmp_path)


def test_the_command_averages_a_runs_newest_steps(run, tmp_path, capsys):
    assert main(["average", str(run), "--last", "2", "--out", str(tmp_path / "avg")]) == 0
    assert "averaged 2 checkpoints (0000016, 0000020)" in capsys.readouterr().out
    assert (tmp_path / "avg" / ckpt.WEIGHTS).is_file()
    assert main(["average", str(run), "--last", "1", "--out", str(tmp_path / "avg1")]) == 2
    assert "--last: need at least 2" in capsys.readouterr().err
    assert main(["average", str(tmp_path / "nowhere"), "--out", str(tmp_path / "avg2")]) == 2
    assert "no step checkpoints" in capsys.readouterr().err
