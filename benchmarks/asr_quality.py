"""Speech recognition beyond the recipes' own test splits: FSDD leave-one-speaker-out, and
ShapesWorld's test sentences spoken in one go by espeak-ng (connected speech).

    python benchmarks/asr_quality.py loso [--steps 3000] [--json F]
    python benchmarks/asr_quality.py connected --model runs/asr-shapes/asr/best [--json F]
    python benchmarks/asr_quality.py mixed [--init runs/asr-shapes/asr/best] [--steps 1500] [--json F]

``loso``: ``configs/asr-fsdd.yaml`` trained once per FSDD speaker on the other three (both of
their splits), scored on all 500 of the held-out speaker's recordings; the word list is the
training transcripts' ten digits. Needs ``data/fsdd-words/manifest.jsonl`` (``omniformer data
audio-folder ../shared/data/fsdd/recordings --digit-words --out data/fsdd-words/manifest.jsonl``).

``connected``: every distinct test-split transcript of the model's ShapesWorld manifest is
spoken whole by ``espeak-ng`` (``apt-get install espeak-ng``): once in the espeak settings of
the bank voice that said it in the test split (same voice, now connected), and once in one of
``NEW_VOICES`` (voices and rates the bank never had), in turn. ShapesWorld's own recordings are
its bank's words joined with pauses; this says how the recogniser meets speech whose words run
together. Scored with ``omniformer evaluate`` on manifests written here.

``mixed``: what training on connected speech buys: the recipe on its manifest plus the training
transcripts spoken whole (``mixed.jsonl``), scored on the test split and both connected sets.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import write_json
from recognition import ROOT, cli, load_average, machine_speed, write_loso

FSDD_WORDS = ROOT / "data" / "fsdd-words" / "manifest.jsonl"
LOSO_OUT = ROOT / "runs" / "bench-asr-loso"
CONNECTED_OUT = ROOT / "data" / "shapes-connected"
# (espeak-ng voice, words per minute, pitch): none of ShapesWorld's bank voices or rates.
NEW_VOICES = [("en-us+m2", 150, 45), ("en-gb+f5", 215, 60), ("en-gb-x-rp+m4", 165, 38),
              ("en-us+f4", 235, 72), ("en-gb-scotland+f2", 160, 58), ("en-029+m5", 205, 42)]


def evaluate(model_dir: Path, manifest: Path | None = None) -> dict:
    out = model_dir / "metrics.json"
    args = ["evaluate", "--model", str(model_dir), "--json", str(out)]
    if manifest is not None:
        args += ["--manifest", str(manifest)]
    subprocess.run(cli(*args), check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def loso(args) -> dict:
    if not FSDD_WORDS.is_file():
        raise SystemExit(f"{FSDD_WORDS} is missing; make it first (see this script's docstring)")
    folds = {}
    for speaker, manifest in write_loso(FSDD_WORDS, LOSO_OUT / "data").items():
        out = LOSO_OUT / speaker
        start = time.perf_counter()
        subprocess.run(cli("train", "asr", "--config", "asr-fsdd", "--overwrite", f"--data.manifest={manifest}",
                           f"--out_dir={out}", f"--finetune.steps={args.steps}", f"--finetune.seed={args.seed}",
                           "--finetune.progress=false", "--task.groups=[]"), check=True, cwd=ROOT)
        metrics = evaluate(out / "asr" / "last")
        folds[speaker] = {"wer": metrics["wer"], "cer": metrics["cer"],
                          "train_minutes": round((time.perf_counter() - start) / 60, 1)}
        print(speaker, folds[speaker], flush=True)
    return {"steps": args.steps, "seed": args.seed, "folds": folds,
            "mean_wer": round(sum(f["wer"] for f in folds.values()) / len(folds), 4)}


def speak(text: str, voice: str, speed: int, pitch: int, path: Path) -> None:
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(path), text],
                   check=True, capture_output=True)


def write_connected(manifest: str | Path, task, limit: int | None = None) -> dict[str, Path]:
    """Manifests ``same_voice`` and ``new_voice`` of the test split's distinct transcripts of
    ``manifest`` spoken whole by espeak-ng (WAVs made once, kept under ``CONNECTED_OUT``)."""
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is not installed (apt-get install espeak-ng)")
    from omniformer.datasets.shapes.speech import BANK_DIR
    from omniformer.tasks.asr.data import load_data
    data = load_data(manifest, task)
    bank = json.loads((BANK_DIR / "index.json").read_text())
    settings = {v["name"]: (v["espeak"], v["speed"], v["pitch"]) for v in bank["voices"]}
    sentences: dict[str, dict] = {}   # each distinct test transcript, with the meta of its first recording
    for s in data.splits["test"]:
        sentences.setdefault(s["text"], s["meta"])
    folder = CONNECTED_OUT
    (folder / "wav").mkdir(parents=True, exist_ok=True)
    lines: dict[str, list] = {"same_voice": [], "new_voice": []}
    for i, (text, meta) in enumerate(sorted(sentences.items())):
        if limit and i >= limit:
            break
        voice = meta.get("voice", "us")
        for kind, (name, speed, pitch) in (("same_voice", settings[voice]), ("new_voice", NEW_VOICES[i % len(NEW_VOICES)])):
            path = folder / "wav" / f"{kind}-{i}.wav"
            if not path.is_file():
                speak(text, name, speed, pitch, path)
            lines[kind].append({"id": f"{kind}-{i}", "audio": f"wav/{path.name}", "text": text, "split": "test",
                                "meta": {"espeak": f"{name}@{speed}", "bank_voice": voice,
                                         "held_out_voice": bool(meta.get("held_out_voice"))}})
    out = {}
    for kind, rows in lines.items():
        out[kind] = folder / f"{kind}.jsonl"
        out[kind].write_text("".join(json.dumps(x) + "\n" for x in rows))
    return out


def connected(args) -> dict:
    from omniformer.config import from_dict, run_config_from
    from omniformer.tasks.asr.config import ASRConfig
    from omniformer.train import checkpoint as ckpt
    model_dir = Path(args.model)
    cfg = run_config_from(ckpt.read_meta(ckpt.find_checkpoint(model_dir))["config"])
    manifests = write_connected(cfg.data.manifest, from_dict(ASRConfig, cfg.task or {}, "task"), args.limit)
    results = {}
    for kind, path in manifests.items():
        metrics = evaluate(model_dir, path)
        results[kind] = {k: v for k, v in metrics.items() if k.endswith("wer") or k.endswith("cer")}
        results[kind]["sentences"] = len(path.read_text().splitlines())
        print(kind, results[kind], flush=True)
    return {"model": str(model_dir), "results": results, "new_voices": NEW_VOICES}


def mixed(args) -> dict:
    """``asr-shapes`` trained again on its manifest plus every distinct training transcript
    spoken whole by espeak-ng in the training voices' settings (rates varied by up to 12%),
    then scored on the original test split and on ``connected``'s two sets."""
    import random

    from omniformer.config import from_dict, load_config
    from omniformer.datasets.shapes.speech import BANK_DIR, voice_split
    from omniformer.tasks.asr.config import ASRConfig
    from omniformer.tasks.asr.data import load_data
    recipe = load_config(ROOT / "omniformer" / "configs" / "asr-shapes.yaml")
    source = ROOT / recipe.data.manifest
    task = from_dict(ASRConfig, recipe.task, "task")
    connected_sets = write_connected(source, task)
    bank = {v["name"]: v for v in json.loads((BANK_DIR / "index.json").read_text())["voices"]}
    voices, _ = voice_split(recipe.data.dataset_options["voices"])
    rng = random.Random(args.seed)
    folder = CONNECTED_OUT
    lines = []
    for line in source.read_text().splitlines():   # the original samples, paths made relative to here
        if line.strip():
            sample = json.loads(line)
            for key in ("image", "audio", "question_audio"):
                if sample.get(key):
                    sample[key] = str(Path("..") / source.parent.name / sample[key])
            lines.append(sample)
    texts = sorted({s["text"] for s in load_data(source, task).splits["train"]})
    for i, text in enumerate(texts):
        v = bank[voices[i % len(voices)]]
        speed = int(v["speed"] * rng.uniform(0.88, 1.12))
        path = folder / "wav" / f"train-{i}.wav"
        if not path.is_file():
            speak(text, v["espeak"], speed, v["pitch"], path)
        lines.append({"id": f"connected-train-{i}", "audio": f"wav/{path.name}", "text": text, "split": "train",
                      "meta": {"voice": v["name"], "connected": True}})
    manifest = folder / "mixed.jsonl"
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = ROOT / "runs" / "bench-asr-mixed"
    start = time.perf_counter()
    init = ["--init", args.init] if args.init else []
    subprocess.run(cli("train", "asr", "--config", "asr-shapes", "--overwrite", f"--data.manifest={manifest}",
                       f"--out_dir={out}", f"--finetune.steps={args.steps}", f"--finetune.seed={args.seed}",
                       "--finetune.progress=false", *init), check=True, cwd=ROOT)
    minutes = round((time.perf_counter() - start) / 60, 1)
    model_dir = out / "asr" / "best"
    results = {"test": {k: v for k, v in evaluate(model_dir).items() if "wer" in k}}
    for kind, path in connected_sets.items():
        results[kind] = {k: v for k, v in evaluate(model_dir, path).items() if "wer" in k}
        print(kind, results[kind], flush=True)
    return {"connected_training_sentences": len(texts), "steps": args.steps, "init": args.init,
            "train_minutes": minutes, "results": results}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    a = sub.add_parser("loso")
    a.add_argument("--steps", type=int, default=3000)
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--json")
    b = sub.add_parser("connected")
    b.add_argument("--model", required=True)
    b.add_argument("--limit", type=int, help="at most this many sentences")
    b.add_argument("--json")
    c = sub.add_parser("mixed")
    c.add_argument("--steps", type=int, default=4000)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--init", help="start from this checkpoint (e.g. runs/asr-shapes/asr/best)")
    c.add_argument("--json")
    args = p.parse_args()
    results = {"machine_gflops": machine_speed(), "load_average_before": load_average()}
    results.update({"loso": loso, "connected": connected, "mixed": mixed}[args.what](args))
    results["load_average_after"] = load_average()
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
