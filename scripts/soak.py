"""Kill -9 soak: training and the server are killed with SIGKILL at random moments and restarted.

Training: a small recognition run (``omniformer train classify`` on built-in images) is run once
straight through, then again while being killed ``--kills`` times: half at a random moment,
half the instant a checkpoint write is seen starting (``last.tmp`` appears). After each kill it
is restarted with ``--resume`` (or afresh when nothing had been saved yet). Checked: every
restart succeeds; the killed run's final weights equal the straight run's bit for bit; no kill
loses more than one checkpoint interval (``save_every`` steps, read from the progress bar).

Server: ``omniformer serve`` on the trained model is killed under load ``--server-kills``
times and restarted. Checked: every restart becomes ready, answers the same request with the
same labels and probabilities, and the model folder is byte-for-byte unchanged.

    python scripts/soak.py                        # 20 training kills, 3 server kills (a few minutes)
    python scripts/soak.py --kills 4 --server-kills 1 --json out.json   # the short version CI runs

Exit status 0 when every check passed; the figures are printed (and written with ``--json``).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

STEPS, SAVE_EVERY = 300, 4


def make_data(root: Path) -> Path:
    """64 small images, bright or dark squares on noise, labelled by brightness."""
    from PIL import Image
    rng = np.random.default_rng(0)
    lines = []
    for i in range(64):
        pixels = rng.integers(0, 60, (16, 16, 3), dtype=np.uint8)
        if i % 2:
            pixels[4:12, 4:12] += 180
        Image.fromarray(pixels).save(root / f"{i}.png")
        lines.append({"id": f"s{i}", "image": f"{i}.png", "label": "bright" if i % 2 else "dark",
                      "split": "val" if i % 8 == 0 else "train"})
    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return manifest


def train_command(manifest: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "omniformer.cli", "train", "classify", "--config", "classify",
            f"--data.manifest={manifest}", f"--out_dir={out}", "--model.width=32", "--model.depth=1",
            "--model.tower_depth=1", "--model.heads=2", "--model.image.size=16", "--model.image.patch_size=4",
            f"--finetune.steps={STEPS}", "--finetune.batch_size=8", f"--finetune.save_every={SAVE_EVERY}",
            f"--finetune.eval_every={STEPS}", "--finetune.warmup_steps=4", "--finetune.workers=0",
            "--finetune.threads=1", "--finetune.progress=true", *extra]


def weights(folder: Path) -> dict[str, bytes]:
    from safetensors.numpy import load_file
    return {k: v.tobytes() for k, v in load_file(str(folder / "model.safetensors")).items()}


def saved_step(run: Path) -> int:
    """The step of the last checkpoint a resume would load (0: none)."""
    for name in ("last", "last.old"):
        state = run / name / "trainer.json"
        if (run / name / "model.safetensors").is_file() and state.is_file():
            return json.loads(state.read_text())["step"]
    return 0


def last_step_shown(progress: bytes) -> int:
    """The highest step the progress bar had printed ('12/40')."""
    steps = [int(m) for m in re.findall(rb"(\d+)/%d" % STEPS, progress)]
    return max(steps, default=0)


def training_started(log: Path) -> bool:
    return last_step_shown(log.read_bytes()) >= 1 if log.exists() else False


def soak_training(root: Path, kills: int, seed: int) -> dict:
    rng = random.Random(seed)
    manifest = make_data(root)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # The straight run, timed from its first step to its end, for when to kill the others.
    with open(root / "straight.log", "wb") as log:
        proc = subprocess.Popen(train_command(manifest, root / "straight"), stdout=log, stderr=log, env=env)
        while proc.poll() is None and not training_started(root / "straight.log"):
            time.sleep(0.01)
        t0 = time.perf_counter()
        if proc.wait():
            raise SystemExit(f"the straight run failed:\n{(root / 'straight.log').read_text()[-2000:]}")
    seconds_per_step = (time.perf_counter() - t0) / STEPS
    run = root / "killed" / "classify"
    restarts, in_write, lost, failures, finished_early = 0, 0, [], [], 0
    for k in range(kills + 1):
        resume = saved_step(run) > 0
        extra = ["--resume"] if resume else (["--overwrite"] if (root / "killed").exists() else [])
        log_path = root / f"attempt{k}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(train_command(manifest, root / "killed", *extra), stdout=log, stderr=log,
                                    env=env)
            if k == kills:  # the last attempt runs to the end
                if proc.wait() != 0:
                    failures.append(f"attempt {k}: exit {proc.returncode}")
                break
            at_write = k % 2 == 1  # odd attempts: the instant a checkpoint write starts
            while proc.poll() is None and not training_started(log_path):
                time.sleep(0.005)
            remaining = max(STEPS - saved_step(run), 1) * seconds_per_step
            deadline = time.perf_counter() + rng.uniform(0.05, 0.6) * remaining
            while proc.poll() is None:
                if time.perf_counter() >= deadline and (not at_write or (run / "last.tmp").exists()):
                    break
                time.sleep(0.0002 if at_write else 0.005)
            if proc.poll() is not None:  # it finished (or failed) before the kill
                finished_early += 1
                if proc.returncode != 0:
                    failures.append(f"attempt {k}: exit {proc.returncode} before the kill")
                continue
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        restarts += 1
        if (run / "last.tmp").exists() or ((run / "last.old").exists() and not (run / "last").exists()):
            in_write += 1
        reached, kept = last_step_shown(log_path.read_bytes()), saved_step(run)
        lost.append(max(0, reached - kept))
    final = run / "last"
    exact = (final / "model.safetensors").is_file() and \
        weights(final) == weights(root / "straight" / "classify" / "last")
    return {"kills": restarts, "kills_inside_a_checkpoint_write": in_write, "finished_before_the_kill": finished_early,
            "restart_failures": failures, "final_weights_identical": bool(exact),
            "most_steps_lost": max(lost, default=0), "save_every": SAVE_EVERY, "steps": STEPS,
            "seconds_per_step": round(seconds_per_step, 4)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def folder_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def soak_server(root: Path, kills: int, seed: int) -> dict:
    import httpx
    model = root / "straight" / "classify" / "best"
    digest = folder_digest(model)
    image = (root / "1.png").read_bytes()
    rng = random.Random(seed)
    answers, failures, served = [], [], 0
    for k in range(kills + 1):
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "omniformer.cli", "serve", "--model", str(model),
                                 "--port", str(port), "--threads", "1", "--no-examples"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        ready = False
        for _ in range(600):
            try:
                ready = httpx.get(f"{url}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                pass
            if ready or proc.poll() is not None:
                break
            time.sleep(0.1)
        if not ready:
            failures.append(f"start {k}: never ready")
            proc.kill()
            proc.wait()
            continue
        body = httpx.post(f"{url}/v1/classify", files={"image": ("a.png", io.BytesIO(image), "image/png")},
                          timeout=30).json()
        answers.append(body.get("labels") or body.get("predictions") or body)
        stop = threading.Event()

        def load() -> None:
            nonlocal served
            with httpx.Client(timeout=10) as c:
                while not stop.is_set():
                    try:
                        c.post(f"{url}/v1/classify", files={"image": ("a.png", io.BytesIO(image), "image/png")})
                        served += 1
                    except httpx.HTTPError:
                        return  # the server was killed

        threads = [threading.Thread(target=load) for _ in range(8)]
        for t in threads:
            t.start()
        time.sleep(rng.uniform(0.5, 2.0))
        if k < kills:
            os.kill(proc.pid, signal.SIGKILL)
        else:
            proc.terminate()
        proc.wait()
        stop.set()
        for t in threads:
            t.join()
    same = all(a == answers[0] for a in answers) and len(answers) == kills + 1
    return {"kills": kills, "restarts_ready": len(answers), "start_failures": failures,
            "same_answer_after_every_restart": same, "model_folder_unchanged": folder_digest(model) == digest,
            "requests_served": served}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--server-kills", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--workdir", help="keep the runs and logs here (default: a temporary folder)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="omniformer-soak-") as tmp:
        root = Path(args.workdir or tmp)
        root.mkdir(parents=True, exist_ok=True)
        result = {"training": soak_training(root, args.kills, args.seed)}
        if args.server_kills >= 0:
            result["server"] = soak_server(root, args.server_kills, args.seed)
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    t, s = result["training"], result.get("server")
    ok = (not t["restart_failures"] and t["final_weights_identical"] and t["most_steps_lost"] <= SAVE_EVERY
          and (s is None or (not s["start_failures"] and s["same_answer_after_every_restart"]
                             and s["model_folder_unchanged"])))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
