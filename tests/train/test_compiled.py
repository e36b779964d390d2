"""compile_step: the step the loop calls, eager or compiled, and what a compiled one does on CPU."""
import warnings

import pytest
import torch
from torch._dynamo.utils import counters

from omniformer.config import TrainConfig, load_config
from omniformer.data.batching import StaticShapes, collate
from omniformer.train import compiled as compiled_module
from omniformer.train.compiled import CompileWarning, compile_step

VOCAB = 40


def test_without_compile_the_step_is_the_model():
    model = torch.nn.Linear(2, 2)
    assert compile_step(model, TrainConfig(compile=False, compile_mode="reduce-overhead")) is model


@pytest.mark.parametrize("static, dynamic", [(True, False), (False, None)])
def test_reduce_overhead_on_cpu_compiles_default_with_one_warning(static, dynamic, monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "compile", lambda model, **kw: calls.append(kw) or model)
    model = torch.nn.Linear(2, 2)
    cfg = TrainConfig(compile=True, compile_mode="reduce-overhead", static_shapes=static)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        step = compile_step(model, cfg)
    said = [w for w in caught if issubclass(w.category, CompileWarning)]
    assert len(said) == 1 and "CUDA" in str(said[0].message) and "mode=default" in str(said[0].message)
    assert calls == [{"mode": "default", "dynamic": dynamic}] and step is model
    assert torch._dynamo.config.recompile_limit >= compiled_module.RECOMPILE_LIMIT
    with warnings.catch_warnings(record=True) as caught:   # a mode that runs here: nothing to say
        warnings.simplefilter("always")
        compile_step(model, TrainConfig(compile=True, compile_mode="max-autotune"))
    assert not [w for w in caught if issubclass(w.category, CompileWarning)]
    assert calls[-1]["mode"] == "max-autotune"


def _items(lengths, seed):
    """Questions of the given token lengths (one sample without text), each with an image and a label."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, n in enumerate(lengths):
        it = {"index": i, "image": torch.randn(1, 16, 16, generator=g), "label": i % 3}
        if n:
            it["text"] = torch.randint(5, VOCAB, (n,), generator=g)
        out.append(it)
    return out


@pytest.mark.slow  # inductor compiles a forward and a backward: ~15 s, ~40 s on a cold cache
def test_compiled_step_matches_eager_and_reuses_its_graph_within_an_edge():
    """Three batches whose longest questions (9, 13, 6 tokens) all pad to the 16 edge: one
    compile, then the same graphs; loss and gradients as eager's at every step."""
    from omniformer.tasks.classify import ClassifyConfig
    from omniformer.tasks.classify.model import ClassifierModel

    cfg = load_config(overrides={"model": {"width": 16, "heads": 2, "depth": 1, "tower_depth": 0, "dropout": 0.0,
                                           "vocab_size": VOCAB, "modalities": ["text", "image"],
                                           "text": {"max_len": 32},
                                           "image": {"size": 16, "patch_size": 8, "channels": 1, "stem": "patch",
                                                     "mean": [0.5], "std": [0.5]}}})
    torch.manual_seed(0)
    eager = ClassifierModel(cfg.model, 3, ClassifyConfig(pooling="both", head_dropout=0.0))
    model = ClassifierModel(cfg.model, 3, ClassifyConfig(pooling="both", head_dropout=0.0))
    model.load_state_dict(eager.state_dict())
    collate_fn = StaticShapes.for_model(collate, model)
    batches = [collate_fn(_items(lengths, seed)) for seed, lengths in
               enumerate([[9, 4, 0, 7], [13, 2, 5, 0], [6, 6, 1, 3]])]
    assert {b["text"].shape for b in batches} == {(4, 16)}
    assert [int(b["text_mask"].sum(1).max()) for b in batches] == [9, 13, 6]

    torch._dynamo.reset()
    counters.clear()
    step = compile_step(model, TrainConfig(compile=True, compile_mode="default", static_shapes=True))
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (eager, model)]
    graphs = []
    for batch in batches:
        losses = []
        for m, call, opt in zip((eager, model), (eager, step), optimizers):
            opt.zero_grad(set_to_none=True)
            loss = call(batch)["loss"]
            loss.backward()
            losses.append(loss.detach())
        torch.testing.assert_close(losses[1], losses[0], atol=1e-4, rtol=1e-4)
        for (name, p), q in zip(eager.named_parameters(), model.parameters()):
            assert (p.grad is None) == (q.grad is None), name
            if p.grad is not None:
                torch.testing.assert_close(q.grad, p.grad, atol=1e-4, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")
        for opt in optimizers:
            opt.step()
        graphs.append((counters["stats"]["unique_graphs"], counters["frames"]["ok"]))
    assert graphs[0][0] >= 1, "nothing was compiled"
    assert graphs[1] == graphs[0] and graphs[2] == graphs[0], f"recompiled within one edge: {graphs}"


def test_gpu_step_benchmark_runs_in_cpu_smoke_mode(tmp_path):
    """benchmarks/gpu_step.py is meant for a GPU; --smoke runs the quickstart's QA step through
    StaticShapes and compile_step on CPU (aot_eager), and once warmed up it never recompiles."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_step.py"
    spec = importlib.util.spec_from_file_location("gpu_step", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "step.json"
    threads = torch.get_num_threads()
    try:
        with pytest.warns(CompileWarning, match="CUDA"):
            results = module.main(["--smoke", "--modes", "eager,reduce-overhead", "--steps", "2", "--json", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert json.loads(out.read_text())["smoke"] is True
    eager, compiled = results["rows"]
    assert eager["distinct_shapes"] == 4 and compiled["distinct_shapes"] == 2   # text and spoken, one edge each
    assert not eager["compiled"] and compiled["compiled"] and compiled["compiled_graphs"] >= 1
    assert not compiled["recompiled_after_warmup"]
    for row in results["rows"]:
        assert row["step_ms"] > 0 and row["cpu_aten_ops_per_step"] > 0
        assert abs(row["mean_loss"]) < 100
