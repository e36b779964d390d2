"""Spoken questions beyond ShapesWorld: another VQA dataset, its questions spoken by voices and
at rates ShapesWorld's bank never had, answered through a transcript (the asr cascade) and by
the word spotter, against the same questions in text.

    python benchmarks/spoken_vqa.py make               # data/digits-vqa (needs espeak-ng)
    python benchmarks/spoken_vqa.py run [--qa-steps 3000] [--asr-steps 2500] [--json F]

The dataset, Digits-VQA, is made here from MNIST (``../shared/data/mnist``, t10k): a 64x64
scene holds two to four handwritten digits in the cells of a 2x2 grid; its questions ask what
digit a cell holds, what is beside, above or below a digit, how many digits (odd, even) there
are, whether a digit is there, which is the largest or smallest. Nothing of ShapesWorld: other
images, other words, other question forms. Scenes of the train and val splits use digits 0-7,999,
those of the test split digits 8,000-9,999.

Every question is spoken whole by ``espeak-ng`` (connected speech, not words joined with
pauses), in one of ``TRAIN_VOICES`` (train, val and half of test) or ``UNSEEN_VOICES`` (the
other half of test, ``meta.unseen_voice``), each utterance at its voice's rate times a random
factor in [0.88, 1.12]. None of these voices and rates is in ShapesWorld's bank.

``run`` does what a new user would with such a dataset, all through the CLI:
1. ``omniformer train qa --config vqa`` on the manifest (text and spoken questions; the word
   spotter learns the spoken ones), then ``evaluate`` on test: text and spoken (spotter).
2. ``omniformer train asr`` on the training questions' recordings (``task.pairs``:
   ``question_audio`` + ``question``), the beam kept to the training questions' words.
3. ``omniformer evaluate --task.transcriber=ASR``: the spoken test questions transcribed and
   answered as text. The bar: spoken within 3 points of text, unseen voices included.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from common import write_json
from omniformer.data.folders import IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, read_idx
from recognition import ROOT, cli, load_average, machine_speed

MNIST = ROOT.parent / "shared" / "data" / "mnist"
OUT = ROOT / "data" / "digits-vqa"
RUNS = ROOT / "runs" / "bench-spoken-vqa"
# (espeak-ng voice, words per minute, pitch 0-99): none of ShapesWorld's bank voices.
TRAIN_VOICES = [("en-gb+m2", 165, 45), ("en-us+f5", 195, 65), ("en-gb-x-gbcwmd+m4", 180, 40),
                ("en-029+f3", 185, 60), ("en-us-nyc+f1", 175, 72), ("en-gb-scotland+f4", 190, 55)]
UNSEEN_VOICES = [("en-gb-x-rp+m6", 150, 38), ("en-us+m5", 220, 50), ("en-gb-x-gbclan+f5", 205, 78)]
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
CELLS = {(0, 0): "top left", (0, 1): "top right", (1, 0): "bottom left", (1, 1): "bottom right"}
SIZE, CELL = 64, 32


def scene(rng: random.Random, pool: list[int], images: np.ndarray) -> tuple[np.ndarray, dict]:
    """A 64x64 RGB scene and its digits by cell {(row, col): (index, label)}."""
    canvas = np.zeros((SIZE, SIZE), np.uint8)
    cells = rng.sample(sorted(CELLS), rng.randint(2, 4))
    placed = {}
    for r, c in cells:
        i = rng.choice(pool)
        y, x = r * CELL + rng.randint(0, 4), c * CELL + rng.randint(0, 4)
        canvas[y:y + 28, x:x + 28] = np.maximum(canvas[y:y + 28, x:x + 28], images[i])
        placed[(r, c)] = i
    return np.stack([canvas] * 3, -1), placed


def questions(rng: random.Random, digits: dict[tuple[int, int], int]) -> list[tuple[str, str, str]]:
    """Every (question, answer, question_type) the scene answers unambiguously."""
    qs = []
    for (r, c), d in digits.items():
        qs.append((f"what digit is in the {CELLS[(r, c)]}", WORDS[d], "cell"))
        for (r2, c2), d2 in digits.items():
            if (r2, c2) == (r, c) or list(digits.values()).count(d) > 1:
                continue
            if r2 == r and c2 == c + 1:
                qs.append((f"what digit is to the right of the {WORDS[d]}", WORDS[d2], "beside"))
            if r2 == r and c2 == c - 1:
                qs.append((f"what digit is to the left of the {WORDS[d]}", WORDS[d2], "beside"))
            if c2 == c and r2 == r + 1:
                qs.append((f"what digit is below the {WORDS[d]}", WORDS[d2], "above_below"))
            if c2 == c and r2 == r - 1:
                qs.append((f"what digit is above the {WORDS[d]}", WORDS[d2], "above_below"))
    values = list(digits.values())
    qs.append(("how many digits are there", WORDS[len(values)], "count"))
    qs.append(("how many odd digits are there", WORDS[sum(v % 2 for v in values)], "count_parity"))
    qs.append(("how many even digits are there", WORDS[sum(1 - v % 2 for v in values)], "count_parity"))
    asked = rng.choice(range(10))
    qs.append((f"is there a {WORDS[asked]}", "yes" if asked in values else "no", "exists"))
    qs.append(("what is the largest digit", WORDS[max(values)], "largest"))
    qs.append(("what is the smallest digit", WORDS[min(values)], "smallest"))
    return qs


def speak(text: str, voice: tuple[str, int, int], factor: float, path: Path) -> None:
    name, speed, pitch = voice
    subprocess.run(["espeak-ng", "-v", name, "-s", str(int(speed * factor)), "-p", str(pitch), "-w", str(path), text],
                   check=True, capture_output=True)


def make(args) -> dict:
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is not installed (apt-get install espeak-ng)")
    images = read_idx(MNIST / "t10k-images-idx3-ubyte.gz", IDX_IMAGES_MAGIC)
    labels = read_idx(MNIST / "t10k-labels-idx1-ubyte.gz", IDX_LABELS_MAGIC)
    rng = random.Random(args.seed)
    (OUT / "images").mkdir(parents=True, exist_ok=True)
    (OUT / "wav").mkdir(parents=True, exist_ok=True)
    pools = {"train": list(range(0, 7000)), "val": list(range(7000, 8000)), "test": list(range(8000, 10000))}
    counts = {"train": args.train_scenes, "val": args.val_scenes, "test": args.test_scenes}
    rows, jobs = [], []
    for split, n in counts.items():
        for k in range(n):
            pixels, placed = scene(rng, pools[split], images)
            name = f"images/{split}-{k}.png"
            Image.fromarray(pixels).save(OUT / name)
            digits = {cell: int(labels[i]) for cell, i in placed.items()}
            asked = questions(rng, digits)
            for q, (question, answer, kind) in enumerate(rng.sample(asked, min(args.questions, len(asked)))):
                unseen = split == "test" and rng.random() < 0.5
                voices = UNSEEN_VOICES if unseen else TRAIN_VOICES
                v = rng.randrange(len(voices))
                wav = f"wav/{split}-{k}-{q}.wav"
                jobs.append((question, voices[v], rng.uniform(0.88, 1.12), OUT / wav))
                rows.append({"id": f"{split}-{k}-{q}", "image": name, "question": question, "answer": answer,
                             "question_audio": wav, "split": split,
                             "meta": {"question_type": kind, "voice": voices[v][0], "unseen_voice": unseen}})
    start = time.perf_counter()
    with ThreadPoolExecutor(args.jobs) as pool:  # espeak-ng runs as its own process per utterance
        list(pool.map(lambda job: None if job[3].is_file() else speak(*job), jobs))
    (OUT / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    by_split = {s: sum(r["split"] == s for r in rows) for s in counts}
    print(f"wrote {OUT / 'manifest.jsonl'}: {by_split}, speech in {time.perf_counter() - start:.0f} s")
    return {"questions": by_split, "words": sorted({w for r in rows for w in r["question"].split()})}


def evaluate(model: Path, *overrides: str) -> dict:
    out = model.parent / f"metrics{len(overrides)}.json"
    subprocess.run(cli("evaluate", "--model", str(model), "--split", "test", "--json", str(out), *overrides),
                   check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def run(args) -> dict:
    manifest = OUT / "manifest.jsonl"
    if not manifest.is_file():
        raise SystemExit(f"{manifest} is missing; run `python benchmarks/spoken_vqa.py make` first")
    qa_out, asr_out = RUNS / "qa", RUNS / "asr"
    common = [f"--data.manifest={manifest}", f"--finetune.seed={args.seed}", "--finetune.progress=false",
              "--overwrite", f"--finetune.threads={args.threads}", "--finetune.workers=0"]
    qa = cli("train", "qa", "--config", "vqa", f"--out_dir={qa_out}", f"--finetune.steps={args.qa_steps}",
             "--task.groups=[question_type]", "--task.spoken_groups=[unseen_voice]", *common)
    asr = cli("train", "asr", "--config", "asr", f"--out_dir={asr_out}", f"--finetune.steps={args.asr_steps}",
              "--task.pairs=[[question_audio,question]]", "--task.words=train", "--task.groups=[unseen_voice]",
              "--model.audio.max_seconds=5.0", *common)
    timings, procs = {}, {}
    for name, command in (("qa", qa), ("asr", asr)):  # side by side, one thread each by default
        procs[name] = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL)
    start = time.perf_counter()
    while len(timings) < len(procs):  # each one's own wall time, whichever ends first
        for name, proc in procs.items():
            if name not in timings and proc.poll() is not None:
                if proc.returncode != 0:
                    raise SystemExit(f"training {name} failed ({' '.join(map(str, proc.args))})")
                timings[name] = round((time.perf_counter() - start) / 60, 1)
        time.sleep(1)
    asr_metrics = evaluate(asr_out / "asr" / "best")
    spotter = evaluate(qa_out / "qa" / "best")
    cascade = evaluate(qa_out / "qa" / "best", f"--task.transcriber={asr_out / 'asr' / 'best'}")
    keep = lambda m: {k: v for k, v in m.items() if not isinstance(v, (dict, list))}  # noqa: E731
    result = {"train_minutes": timings, "asr": keep(asr_metrics), "qa_spotter": keep(spotter),
              "qa_cascade": keep(cascade), "commands": {"qa": " ".join(qa[2:]), "asr": " ".join(asr[2:])}}
    for name, m in (("spotter", spotter), ("cascade", cascade)):
        print(f"{name}: text {m.get('accuracy')}, spoken {m.get('spoken/accuracy')}, "
              f"unseen voices {m.get('spoken/unseen_voice')}, seen {m.get('spoken/non_unseen_voice')}")
    print(f"asr: wer {asr_metrics.get('wer')}, unseen voices {asr_metrics.get('unseen_voice/wer')}")
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    m = sub.add_parser("make")
    m.add_argument("--train-scenes", type=int, default=2500)
    m.add_argument("--val-scenes", type=int, default=150)
    m.add_argument("--test-scenes", type=int, default=600)
    m.add_argument("--questions", type=int, default=3, help="questions per scene")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--jobs", type=int, default=2)
    m.add_argument("--json")
    r = sub.add_parser("run")
    r.add_argument("--qa-steps", type=int, default=3000)
    r.add_argument("--asr-steps", type=int, default=2500)
    r.add_argument("--threads", type=int, default=1, help="torch threads of each of the two trainings")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--json")
    args = p.parse_args()
    results = {"machine_gflops": machine_speed(), "load_average_before": load_average(), "seed": args.seed}
    results.update({"make": make, "run": run}[args.what](args))
    results["load_average_after"] = load_average()
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
