"""The fast paths give the numbers of the plain ones (no timing here: see benchmarks/)."""
import pytest
import torch

from omniformer.config import ImageConfig, ModelConfig, TextConfig, TrainConfig
from omniformer.model import Omniformer
from omniformer.model import fusion as fusion_module
from omniformer.train.optim import adamw_speed_kwargs, build_optimizer


def _cfg(norm="pre", tower_depth=1, modalities=("text", "image")):
    return ModelConfig(width=32, depth=2, tower_depth=tower_depth, heads=4, dropout=0.0, norm=norm, vocab_size=50,
                       modalities=list(modalities), text=TextConfig(max_len=12),
                       image=ImageConfig(size=16, patch_size=8, stem="patch"))


def _batch(lengths, T=12, image_present=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    B = len(lengths)
    mask = torch.arange(T)[None] < torch.tensor(lengths)[:, None]
    ids = torch.randint(5, 50, (B, T), generator=g).masked_fill(~mask, 0)
    batch = {"text": ids, "text_mask": mask, "image": torch.randn(B, 3, 16, 16, generator=g)}
    if image_present is not None:
        batch["image_mask"] = torch.tensor(image_present)
    return batch


def _run(model, batch, fast: bool, monkeypatch):
    monkeypatch.setattr(fusion_module, "_static_graph", lambda: not fast)
    model.zero_grad(set_to_none=True)
    out = model(batch)
    # A fixed random read-out: a post-LN stack's sum of squares is constant and would test nothing.
    g = torch.Generator().manual_seed(1)
    loss = (out.hidden * torch.randn(out.hidden.shape, generator=g)).sum()
    loss = loss + sum((t * torch.randn(t.shape, generator=g)).sum() for t, _ in out.unimodal.values())
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads


@pytest.mark.parametrize("norm", ["pre", "post"])
@pytest.mark.parametrize("lengths, image_present", [
    ([12, 12, 12], None),            # no padding: SDPA gets no mask
    ([5, 3, 7], None),               # columns 7.. padding in every sample: dropped
    ([12, 3, 7], None),              # padding, but no column all padding: the masked path
    ([4, 2, 6], [True, False, True]),  # a sample without its image, and trailing padding
    ([0, 0, 0], None),               # no text in any sample: the text tower has nothing to do
])
def test_padding_fast_paths_equal_the_plain_forward(norm, lengths, image_present, monkeypatch):
    torch.manual_seed(0)
    model = Omniformer(_cfg(norm))
    batch = _batch(lengths, image_present=image_present)
    ref, ref_grads = _run(model, batch, fast=False, monkeypatch=monkeypatch)
    out, grads = _run(model, batch, fast=True, monkeypatch=monkeypatch)
    assert out.hidden.shape == ref.hidden.shape and out.spans == ref.spans
    assert torch.equal(out.mask, ref.mask)
    torch.testing.assert_close(out.hidden, ref.hidden, atol=1e-5, rtol=1e-5)
    for m in ref.unimodal:
        torch.testing.assert_close(out.unimodal[m][0], ref.unimodal[m][0], atol=1e-5, rtol=1e-5)
    assert grads.keys() == ref_grads.keys()
    for name in ref_grads:
        scale = ref_grads[name].abs().max().item()  # sums over tokens: rounding scales with the largest term
        torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-5 * max(scale, 1.0), rtol=1e-4,
                                   msg=lambda m, name=name: f"{name}: {m}")
    # padding outputs are exactly zero either way
    assert (out.hidden[~out.mask] == 0).all()


def test_padding_fast_path_text_only_mlm_shapes(monkeypatch):
    """Text-only (tower_depth 0): the shapes an MLM head indexes into are unchanged."""
    torch.manual_seed(0)
    model = Omniformer(_cfg("post", tower_depth=0, modalities=("text",))).eval()
    batch = _batch([6, 4])
    with torch.no_grad():
        monkeypatch.setattr(fusion_module, "_static_graph", lambda: True)
        ref = model(batch)
        monkeypatch.setattr(fusion_module, "_static_graph", lambda: False)
        out = model(batch)
    assert out.hidden[:, out.spans["text"]].shape == (2, 12, 32)
    torch.testing.assert_close(out.hidden, ref.hidden, atol=1e-5, rtol=1e-5)


def test_fast_paths_are_off_while_tracing():
    torch.manual_seed(0)
    model = Omniformer(_cfg()).eval()
    batch = _batch([5, 3])

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, text, text_mask, image):
            assert not torch.jit.is_tracing() or fusion_module._static_graph()
            return self.m({"text": text, "text_mask": text_mask, "image": image}).hidden

    args = (batch["text"], batch["text_mask"], batch["image"])
    with torch.no_grad():
        traced = torch.jit.trace(Wrap(), args, check_trace=False)
        longer = _batch([9, 2], seed=1)  # a different padding pattern: no trimming baked in
        expected = model(longer).hidden
        got = traced(longer["text"], longer["text_mask"], longer["image"])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_cpu_optimizer_is_fused_and_matches_the_loop():
    assert adamw_speed_kwargs("cpu") == {"fused": True}
    assert adamw_speed_kwargs("cuda") == {"fused": True}
    assert adamw_speed_kwargs("mps") == {"foreach": True}
    torch.manual_seed(0)
    models = [Omniformer(_cfg()) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    cfg = TrainConfig(lr=1e-2, weight_decay=0.05)
    fused = build_optimizer(models[0], cfg, torch.device("cpu"))
    assert fused.defaults["fused"]
    params = dict(models[1].named_parameters())
    names = {id(p): n for n, p in models[0].named_parameters()}
    loop = torch.optim.AdamW([{"params": [params[names[id(p)]] for p in g["params"]], "weight_decay": g["weight_decay"]}
                              for g in fused.param_groups], lr=cfg.lr, betas=tuple(cfg.betas), eps=1e-8, foreach=False)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):  # the same gradients on both: only the update rule is compared
        for (n, a), b in zip(models[0].named_parameters(), models[1].parameters()):
            a.grad = torch.randn(a.shape, generator=g)
            b.grad = a.grad.clone()
        fused.step()
        loop.step()
    for (n, a), b in zip(models[0].named_parameters(), models[1].parameters()):
        # The fused kernel rounds differently from the loop (its vector path depends on alignment),
        # by up to ~3e-6 after three steps of 1e-2; a wrong update rule would differ by ~1e-2.
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4, msg=lambda m, n=n: f"{n}: {m}")


def test_gpu_mfu_script_runs_in_cpu_smoke_mode(tmp_path):
    """benchmarks/gpu_mfu.py is meant for a GPU; its --smoke mode checks the whole script on CPU."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_mfu.py"
    spec = importlib.util.spec_from_file_location("gpu_mfu", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "mfu.json"
    results = module.main(["--smoke", "--steps", "1", "--warmup", "1", "--json", str(out)])
    assert json.loads(out.read_text())["smoke"] is True
    assert [c["case"] for c in results["cases"]] == ["bert", "vilt"]
    for case in results["cases"]:
        assert len(case["rows"]) == 2
        for row in case["rows"]:
            assert row["step_seconds"] > 0 and 0 < row["mfu"] < 1
