"""Generate ShapesWorld: images, captions, questions and their speech, plus a manifest.

Pipeline (deterministic for a seed, whatever the number of workers):
  1. workers sample and render each image from an RNG seeded by (seed, image index) and
     return its true captions and every unambiguous question per family;
  2. the parent walks images in order, picks at most one question per family per image with
     per-split answer balancing, and picks a speech rendition for every caption and question;
  3. workers synthesise each distinct (sentence, rendition) once, as FLAC;
  4. the parent writes manifest.jsonl and info.json.

Questions per image: one per family (8 families) when the family has an unambiguous question
and answer balancing accepts it -- about 7 on average. Captions per image: CAPTIONS_PER_IMAGE.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import shutil
from collections import Counter, defaultdict
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .config import ShapesConfig
from ...data.manifest import write_manifest
from .language import (ANSWERS, CAPTIONS_PER_IMAGE, FAMILIES, AnswerBalancer, caption_candidates,
                       choose_captions, family_answers, question_candidates)
from .scene import render, sample_scene, save_png
from .speech import rendition_voice, speech_filename, voice_split, write_rendition

SPLITS = {"train": 0.8, "val": 0.1, "test": 0.1}
# Renditions per distinct sentence and group. Captions are many distinct sentences (~1,300),
# questions few (~60) but the spoken-QA task hinges on them, so they get more speakers.
RENDITIONS = {"caption": {"train": 2, "eval": 1, "held": 1},
              "question": {"train": 8, "eval": 2, "held": 2}}
HELD_OUT_SHARE = 0.5      # of the test split's spoken items
GENERATOR = "shapesworld"


def assign_splits(n: int, seed: int) -> list[str]:
    order = np.random.default_rng([seed, 101]).permutation(n)
    n_train, n_val = round(n * SPLITS["train"]), round(n * SPLITS["val"])
    splits = [""] * n
    for rank, index in enumerate(order):
        splits[index] = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
    return splits


def _image_job(args: tuple) -> dict:
    index, seed, size, min_objects, max_objects, layout, grid, image_path = args
    rng = np.random.default_rng([seed, index])
    objects = sample_scene(rng, size, min_objects, max_objects, layout, grid)
    save_png(render(objects, size), Path(image_path))
    return {"objects": objects,
            "questions": question_candidates(objects, size),
            "captions": choose_captions(caption_candidates(objects, size), rng)}


def _speech_job(args: tuple) -> float:
    out_dir, seed, sentence, group, index, voices = args
    return write_rendition(Path(out_dir), seed, sentence, group, index, voices)


def _map(fn, jobs: list, workers: int, desc: str, progress: bool, ordered: bool = True):
    bar = tqdm(total=len(jobs), desc=desc, disable=not progress, unit="")
    chunk = max(1, min(64, len(jobs) // (8 * max(1, workers))))
    if workers <= 1:
        for job in jobs:
            yield fn(job)
            bar.update()
    else:
        # fork starts in milliseconds and works from any __main__ (even stdin); the workers
        # use only numpy, Pillow, soxr and soundfile, never torch, so a parent that has
        # started torch threads is no hazard. Elsewhere fall back to spawn.
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        with mp.get_context(method).Pool(workers) as pool:
            mapper = pool.imap if ordered else pool.imap_unordered
            for result in mapper(fn, jobs, chunksize=chunk):
                yield result
                bar.update()
    bar.close()


def _prepare(out_dir: Path) -> None:
    info = out_dir / "info.json"
    if out_dir.exists() and any(out_dir.iterdir()):
        if not info.is_file() or json.loads(info.read_text()).get("generator") != GENERATOR:
            raise FileExistsError(f"{out_dir} is not empty and holds no ShapesWorld; refusing to overwrite it")
        for name in ("images", "speech"):
            shutil.rmtree(out_dir / name, ignore_errors=True)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "speech").mkdir(parents=True, exist_ok=True)


class _SpeechPlanner:
    """Picks a rendition for each spoken item and remembers which renditions to synthesise."""

    def __init__(self, seed: int, voices: int):
        self.seed, self.voices = seed, voices
        self.needed: set[tuple[str, str, int]] = set()

    def assign(self, sentence: str, kind: str, split: str, rng: np.random.Generator) -> tuple[str, dict]:
        if split == "train":
            group = "train"
        elif split == "test" and rng.random() < HELD_OUT_SHARE:
            group = "held"
        else:
            group = "eval"
        index = int(rng.integers(RENDITIONS[kind][group]))
        self.needed.add((sentence, group, index))
        voice = rendition_voice(self.seed, sentence, group, index, self.voices)
        return f"speech/{speech_filename(sentence, group, index)}", {"voice": voice, "held_out_voice": group == "held"}


def generate_shapes(out_dir: str | Path, cfg: ShapesConfig | None = None, workers: int = 2,
                    progress: bool = True) -> Path:
    """Write ShapesWorld under ``out_dir``; returns the path of its manifest.jsonl."""
    cfg = cfg or ShapesConfig()
    out_dir = Path(out_dir)
    _prepare(out_dir)
    n, seed = cfg.images, cfg.seed
    width = max(5, len(str(n - 1)))
    splits = assign_splits(n, seed)
    image_jobs = [(i, seed, cfg.size, cfg.min_objects, cfg.max_objects, cfg.layout, cfg.grid,
                   str(out_dir / "images" / f"{i:0{width}d}.png")) for i in range(n)]

    balancer = AnswerBalancer(family_answers(cfg.max_objects))
    planner = _SpeechPlanner(seed, cfg.voices)
    samples: list[dict] = []
    for i, scene in enumerate(_map(_image_job, image_jobs, workers, "shapes: images", progress)):
        split, rng = splits[i], np.random.default_rng([seed, i, 202])
        base = {"image": f"images/{i:0{width}d}.png", "split": split}
        objects = [o.to_meta() for o in scene["objects"]]
        for k, (family, caption) in enumerate(scene["captions"]):
            audio, voice_meta = planner.assign(caption, "caption", split, rng)
            samples.append({"id": f"shapes-{i:0{width}d}-c{k}", **base, "text": caption, "audio": audio,
                            "meta": {"kind": "caption", "family": family, **voice_meta, "objects": objects}})
        for family, relational in FAMILIES.items():
            chosen = balancer.choose(split, family, scene["questions"][family], rng)
            if chosen is None:
                continue
            question, answer, extra = chosen
            audio, voice_meta = planner.assign(question, "question", split, rng)
            samples.append({"id": f"shapes-{i:0{width}d}-{family}", **base, "question": question,
                            "question_audio": audio, "answer": answer,
                            "meta": {"kind": "question", "family": family, "relational": relational, **extra,
                                     **voice_meta, "objects": objects}})

    speech_jobs = [(str(out_dir / "speech"), seed, s, g, r, cfg.voices) for s, g, r in sorted(planner.needed)]
    durations = list(_map(_speech_job, speech_jobs, workers, "shapes: speech", progress, ordered=False))

    manifest = write_manifest(out_dir / "manifest.jsonl", samples)
    (out_dir / "info.json").write_text(json.dumps(_info(cfg, samples, durations), indent=1) + "\n")
    return manifest


def _info(cfg: ShapesConfig, samples: list[dict], durations: list[float]) -> dict:
    images, captions, questions = Counter(), Counter(), defaultdict(Counter)
    answers: dict[str, Counter] = defaultdict(Counter)
    for s in samples:
        if s["meta"]["kind"] == "caption":
            captions[s["split"]] += 1
            if s["id"].endswith("-c0"):
                images[s["split"]] += 1
        else:
            questions[s["split"]][s["meta"]["family"]] += 1
            answers[s["meta"]["family"]][s["answer"]] += 1
    train_voices, held = voice_split(cfg.voices)
    return {
        "generator": GENERATOR, "config": asdict(cfg),
        "counts": {"images": dict(images), "captions": dict(captions),
                   "questions": {k: dict(v) for k, v in questions.items()},
                   "answers": {k: dict(v) for k, v in answers.items()}},
        "answers": ANSWERS, "families": FAMILIES,
        "captions_per_image": CAPTIONS_PER_IMAGE, "questions_per_image": "at most one per family",
        "voices": {"train": train_voices, "held_out": held}, "held_out_share_of_test": HELD_OUT_SHARE,
        "renditions": RENDITIONS, "speech": {"files": len(durations), "seconds": round(sum(durations), 1),
                   "max_seconds": round(max(durations, default=0.0), 2)},
    }
