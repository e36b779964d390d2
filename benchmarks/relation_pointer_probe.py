"""Relation pointer probe: does the anchor relation's pointer find the object the question names?

    python benchmarks/relation_pointer_probe.py runs/quickstart/qa/best --split test --per-family 300

For a fine-tuned QA checkpoint with ``model.answer_relations``, asks ShapesWorld questions in
text, family by family, and reports the share of the pointer's mass (``AnchorRelation.point``)
on the image tokens that hold any pixel of the object named ("the red object"), with the
family's accuracy. Which tokens hold which object comes from re-rendering each object of the
scene alone from the manifest's metadata, so the figure is exact, not estimated. For closest
and furthest questions it also reports the share of the relation heads' selection softmax on
the object that answers (the mean over heads, and the best head's).

Measured 2026-11-30 with the relation's score linear in the distance (``reach``), standard
setting (below), seed 0: the selection puts 0.57 (best head 0.87) on the answer in closest
questions, 0.68 (0.98) in furthest ones; accuracy 0.93 and 1.00 on those 150 each.

Measured 2026-11-30, 150 test questions a family (shape / closest / furthest / count_shape):
- the pointer as it is, read by the question's bag of words and taught by the grounding
  loss (``grounding: 0.2``): at the standard setting (below) 0.92 / 0.92 / 0.93 / 0.90 at
  seed 0, 0.94 / 0.89 / 0.87 / 0.88 at seed 1; in the quickstart (seed 0) 0.95 / 0.95 /
  0.96 / 0.95.
- before that loss, queried by the pooled question: at the standard setting
  (``configs/shapes-full.yaml`` at width 96, depth 3, 3,000 fine-tuning steps from scratch;
  benchmarks/README.md) 0.37 / 0.29 / 0.30 / 0.34 of its mass on the named object; in the
  quickstart (seed 0) 0.31 / 0.31 / 0.28 / 0.24. Most of the place the relation measures
  distances from is not the named object's.
- the same with its anchor also a reading of the classifier: 0.996 in shape questions, but
  0.44 / 0.43 / 0.30 in the relational ones, whose pooled words differ.
- a pointer reading the question word by word (a softmax over (word, token) pairs; tried,
  not kept): 0.91 / 0.75 / 0.76 / 0.80 at seed 0; at seed 1 "to", a word only closest
  questions have, took the pointer (0.33 / 0.31 in closest / furthest questions).
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from omniformer.data.batching import collate
from omniformer.datasets.shapes.language import extreme_object
from omniformer.datasets.shapes.scene import Obj, render
from omniformer.tasks.qa.heads import masked_softmax
from omniformer.tasks.qa import QAPredictor

from common import write_json


def object_tokens(o: dict, size: int, patch: int) -> np.ndarray:
    """(grid*grid,) True on the patches that hold any pixel of object ``o`` (manifest metadata)."""
    grid = size // patch
    drawn = (np.asarray(render([Obj.from_meta(o)], size)) != 255).any(-1)            # (size, size)
    return drawn.reshape(grid, patch, grid, patch).any((1, 3)).reshape(-1)


@torch.no_grad()
def probe(qa: QAPredictor, data_dir: Path, split: str, per_family: int, batch_size: int = 64) -> dict:
    model, image_cfg = qa.model, qa.cfg.model.image
    if getattr(model.answer_head, "relate", None) is None:
        raise SystemExit("this checkpoint has no anchor relation (model.answer_relations)")
    chosen, count = [], defaultdict(int)
    for line in (data_dir / "manifest.jsonl").open():
        sample = json.loads(line)
        meta = sample.get("meta", {})
        if sample["split"] != split or meta.get("kind") != "question" or "colour" not in meta:
            continue
        if meta["colour"] not in [o["colour"] for o in meta["objects"]]:   # "is there a blue circle?" "no"
            continue
        if count[meta["family"]] < per_family:
            count[meta["family"]] += 1
            chosen.append(sample)
    mass, right, selected, best_head = defaultdict(list), defaultdict(list), defaultdict(list), defaultdict(list)
    extra = 1 if image_cfg.cls_token else 0
    for start in range(0, len(chosen), batch_size):
        part = chosen[start:start + batch_size]
        items = [qa.prepare(data_dir / s["image"], question=s["question"]) for s in part]
        batch = collate([{**it, "index": i} for i, it in enumerate(items)])
        fused = model.backbone(batch)
        question, _, words = model._question(fused, batch)
        image, mask, xy = model._image(fused)
        asked = model.answer_head.ask(fused.cls, question)
        pointer = model.answer_head.relate.point(asked, image, mask, words)[:, extra:]
        weights = masked_softmax(model.answer_head.relate.pair_scores(asked, image, mask, xy, words), mask[:, None])[..., extra:]
        # Text questions only, so the head on this backbone pass is the whole model's answer.
        answers = model.answer_head(fused.cls, question, image, mask, xy, words=words).argmax(-1).tolist()
        for s, p, w, a in zip(part, pointer, weights, answers):
            family, objects = s["meta"]["family"], s["meta"]["objects"]
            named = next(o for o in objects if o["colour"] == s["meta"]["colour"])
            held = torch.from_numpy(object_tokens(named, image_cfg.size, image_cfg.patch_size))
            mass[family].append(float(p[held].sum()))
            right[family].append(qa.answers[a] == s["answer"])
            if family in ("closest", "furthest"):
                scene = [Obj.from_meta(o) for o in objects]
                other = extreme_object(scene[objects.index(named)], scene, image_cfg.size, family == "furthest")
                answer = objects[scene.index(other)]
                on_answer = w[:, torch.from_numpy(object_tokens(answer, image_cfg.size, image_cfg.patch_size))].sum(-1)
                selected[family].append(float(on_answer.mean()))
                best_head[family].append(float(on_answer.max()))
    return {family: {"questions": len(mass[family]), "pointer_on_named": float(np.mean(mass[family])),
                     "accuracy": float(np.mean(right[family])),
                     **({"selected_on_answer": float(np.mean(selected[family])),
                         "best_head_on_answer": float(np.mean(best_head[family]))} if family in selected else {})}
            for family in sorted(mass)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a fine-tuned QA checkpoint folder with answer_relations")
    parser.add_argument("--data", default=None, help="ShapesWorld folder (default: the folder of the checkpoint's data.manifest)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--per-family", type=int, default=300)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    qa = QAPredictor.load(args.model)
    results = probe(qa, Path(args.data or Path(qa.cfg.data.manifest).parent), args.split, args.per_family)
    print(f"{'family':<12} {'questions':>9} {'pointer on named':>17} {'accuracy':>9} {'selected on answer':>19} {'best head':>9}")
    for family, r in results.items():
        sel = f"{r['selected_on_answer']:>19.3f} {r['best_head_on_answer']:>9.3f}" if "selected_on_answer" in r else ""
        print(f"{family:<12} {r['questions']:>9} {r['pointer_on_named']:>17.3f} {r['accuracy']:>9.3f} {sel}")
    write_json(args.json, {"model": args.model, "split": args.split, "families": results})


if __name__ == "__main__":
    main()
