"""What the quickstart recipe learns that a plain [CLS] classifier does not: binding a colour
word to its object. Trained here from scratch on small data, with a real threshold."""
from __future__ import annotations

from conftest import small_config

BINDING = ("shape", "horizontal", "vertical")  # "what shape / which side is the <colour> object?"


def test_recipe_binds_colour_words_to_objects(tmp_path, small_shapes):
    from omniformer.data.manifest import read_manifest, write_manifest
    from omniformer.tasks.pipeline import evaluate, finetune
    samples = [s for s in read_manifest(small_shapes) if s.get("meta", {}).get("family") in BINDING]
    manifest = write_manifest(small_shapes.parent / "binding.jsonl", samples)
    cfg = small_config(tmp_path, small_shapes.parent, f"--data.manifest={manifest}", "--finetune.steps=800",
                       "--finetune.eval_every=800", "--finetune.lr=2e-3", "--task.spoken_fraction=0.0",
                       "--task.curriculum.steps=0")
    assert cfg.task["head"] == "guided" and cfg.model.image.drop_flat_patches  # the recipe under test
    model_dir = finetune(cfg, init=None, progress=False)
    metrics = evaluate(model_dir, manifest, split="test", asked=("text",)).metrics
    # Chance: 1/3 for shape, 1/2 for sides. Each family must be learnt, not just one.
    for family in BINDING:
        assert metrics[f"text/family/{family}"] >= 0.85, metrics
