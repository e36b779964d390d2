"""Live transcription over loopback: the real-time factor on one thread, how soon the first
partial transcript follows the speech, and whether the streamed transcript is the offline one.

    python benchmarks/asr_streaming.py --model runs/asr-shapes/asr/best --split test [--paced 20] [--json F]
    python benchmarks/asr_streaming.py --model runs/asr-shapes/asr/best --split val --tune   # in-process

The server is ``omniformer serve`` in a subprocess with ``--threads 1``; the client (this
process, the ``websockets`` package) reads the recordings of ``--split`` (each once) from the
model's own training manifest and:

* every recording: streamed as 16-bit PCM in messages of exactly one model step (0.2 s), sent
  without waiting, so the server runs one step per message as it does for a live client, only
  back to back; then ``POST /v1/transcribe`` of the same file. Real-time factor = the stream's
  wall time (first message sent to final transcript received) / the recording's length. The
  streamed final transcript against the offline one, and both against the reference (WER).
* ``--paced`` recordings (the first of each voice in turn): sent in 0.1 s messages at the pace
  they would be recorded. First-partial latency = when the first non-empty partial arrived
  minus when the speech onset (the first 10 ms within 30 dB of the loudest) was recorded;
  final latency = when the final transcript arrived minus when the last sample was recorded.

``--tune`` compares stream settings (look-back, look-ahead) in-process on ``--split`` by how
often the final streamed transcript equals the offline one: choose on val, report on test.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

from recognition import load_average, machine_speed
from common import write_json

STEP_SECONDS = 0.2
PACED_MESSAGE_SECONDS = 0.1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def recordings(model_dir: str, split: str, limit: int | None):
    """(sample, waveform at the model's rate) of ``split``, each recording once, as the asr task reads them."""
    from omniformer.config import from_dict, run_config_from
    from omniformer.data.audio import load_audio
    from omniformer.tasks.asr.config import ASRConfig
    from omniformer.tasks.asr.data import load_data
    from omniformer.train import checkpoint as ckpt
    cfg = run_config_from(ckpt.read_meta(ckpt.find_checkpoint(model_dir))["config"])
    data = load_data(cfg.data.manifest, from_dict(ASRConfig, cfg.task or {}, "task"))
    root = Path(cfg.data.manifest).parent
    samples = data.splits[split][:limit] if limit else data.splits[split]
    rate = cfg.model.audio.sample_rate
    return cfg, [(s, load_audio(root / s["audio"], rate)) for s in samples]


def onset_seconds(wave: np.ndarray, rate: int) -> float:
    hop = rate // 100
    frames = wave[: len(wave) // hop * hop].reshape(-1, hop)
    energy = 10 * np.log10((frames ** 2).mean(1) + 1e-12)
    return float(np.argmax(energy > energy.max() - 30) * hop / rate)


def pcm(wave: np.ndarray) -> bytes:
    return (np.clip(wave, -1, 1) * 32767).astype("<i2").tobytes()


def stream_fast(url: str, wave: np.ndarray, rate: int) -> tuple[str, float]:
    """(final transcript, seconds from the first message to the final one), one step per message."""
    from websockets.sync.client import connect
    data, piece = pcm(wave), int(STEP_SECONDS * rate) * 2
    with connect(url, max_size=2 ** 22) as ws:
        json.loads(ws.recv())  # ready
        start = time.perf_counter()
        done: dict = {}

        def receive():
            while True:
                m = json.loads(ws.recv())
                if m["type"] != "partial":
                    done.update(m, at=time.perf_counter())
                    return

        reader = threading.Thread(target=receive)
        reader.start()
        for i in range(0, len(data), piece):
            ws.send(data[i: i + piece])
        ws.send(json.dumps({"type": "end"}))
        reader.join(120)
    if done.get("type") != "final":
        raise RuntimeError(f"the stream failed: {done}")
    return done["text"], done["at"] - start


def stream_paced(url: str, wave: np.ndarray, rate: int) -> dict:
    """Real-time pacing: when each partial arrived, relative to the recording's time line."""
    from websockets.sync.client import connect
    data, piece = pcm(wave), int(PACED_MESSAGE_SECONDS * rate) * 2
    events: list[tuple[float, dict]] = []
    with connect(url, max_size=2 ** 22) as ws:
        json.loads(ws.recv())

        def receive():
            while True:
                m = json.loads(ws.recv())
                events.append((time.perf_counter(), m))
                if m["type"] != "partial":
                    return

        reader = threading.Thread(target=receive)
        reader.start()
        t0 = time.perf_counter()
        for k, i in enumerate(range(0, len(data), piece)):
            recorded = t0 + min(len(data), i + piece) / 2 / rate   # when this piece's last sample was heard
            time.sleep(max(0.0, recorded - time.perf_counter()))
            ws.send(data[i: i + piece])
        ws.send(json.dumps({"type": "end"}))
        reader.join(120)
    onset = onset_seconds(wave, rate)
    partials = [(t - t0, m) for t, m in events if m["type"] == "partial" and m["text"]]
    first = next((t for t, _ in partials if t >= onset), None)
    final_at = events[-1][0] - t0
    return {"onset_s": round(onset, 3), "first_partial_after_onset_s": None if first is None else round(first - onset, 3),
            "partials_before_onset": sum(1 for t, _ in partials if t < onset),
            "final_after_end_s": round(final_at - len(wave) / rate, 3), "final": events[-1][1].get("text")}


def offline(base: str, path: Path) -> str:
    import uuid
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"audio\"; filename=\"a.wav\"\r\n"
            f"Content-Type: audio/wav\r\n\r\n").encode() + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(base + "/v1/transcribe", data=body,
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())["text"]


def tune(model: str, split: str, limit: int | None) -> dict:
    import torch
    from omniformer.tasks.asr import Transcriber
    from omniformer.tasks.asr.streaming import StreamSettings
    torch.set_num_threads(1)
    asr = Transcriber.load(model)
    _, items = recordings(model, split, limit)
    offline_text = [asr.transcribe(w).text for _, w in items]
    out = {}
    for lookback in (3.0, 4.0, 6.0):
        for lookahead in (0.4, 0.8, 1.2):
            settings = StreamSettings(STEP_SECONDS, lookback, lookahead)
            start, same = time.perf_counter(), 0
            seconds = 0.0
            for (_, wave), want in zip(items, offline_text):
                s = asr.stream(settings)
                step = s.step
                for i in range(0, len(wave), step):
                    s.feed(wave[i: i + step])
                same += s.finish().text == want
                seconds += len(wave) / asr.cfg.model.audio.sample_rate
            key = f"lookback {lookback:g} s, lookahead {lookahead:g} s"
            out[key] = {"equal_to_offline": round(same / len(items), 4),
                        "rtf": round((time.perf_counter() - start) / seconds, 4)}
            print(key, out[key], flush=True)
    return {"split": split, "recordings": len(items), "settings": out}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, help="at most this many recordings")
    p.add_argument("--paced", type=int, default=20, help="recordings streamed at real-time pace")
    p.add_argument("--tune", action="store_true")
    p.add_argument("--json")
    args = p.parse_args()
    results: dict = {"machine_gflops": machine_speed(), "load_average_before": load_average()}
    if args.tune:
        results["tune"] = tune(args.model, args.split, args.limit)
        write_json(args.json, results)
        return 0
    from omniformer.tasks.asr.metrics import word_error_rate
    cfg, items = recordings(args.model, args.split, args.limit)
    rate, root = cfg.model.audio.sample_rate, Path(cfg.data.manifest).parent
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "omniformer.cli", "serve", "--model", args.model, "--port",
                               str(port), "--threads", "1", "--no-examples", "--log-level", "warning"],
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    base, url = f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/v1/transcribe/stream"
    try:
        for _ in range(600):
            try:
                with urllib.request.urlopen(base + "/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        rows = []
        for sample, wave in items:
            streamed, wall = stream_fast(url, wave, rate)
            rows.append({"id": sample["id"], "ref": sample["text"], "streamed": streamed,
                         "offline": offline(base, root / sample["audio"]), "seconds": len(wave) / rate, "wall": wall,
                         "held_out": bool(sample["meta"].get("held_out_voice"))})
        rtf = [r["wall"] / r["seconds"] for r in rows]
        unequal = [r for r in rows if r["streamed"] != r["offline"]]
        results.update({
            "model": args.model, "split": args.split, "recordings": len(rows),
            "audio_seconds": round(sum(r["seconds"] for r in rows), 1),
            "rtf_one_thread": {"mean": round(sum(r["wall"] for r in rows) / sum(r["seconds"] for r in rows), 4),
                               "p90": round(float(np.percentile(rtf, 90)), 4), "max": round(max(rtf), 4)},
            "streamed_equals_offline": round(1 - len(unequal) / len(rows), 4),
            "wer_streamed": round(word_error_rate([r["ref"] for r in rows], [r["streamed"] for r in rows]), 4),
            "wer_offline": round(word_error_rate([r["ref"] for r in rows], [r["offline"] for r in rows]), 4),
            "unequal": [{k: r[k] for k in ("id", "ref", "streamed", "offline")} for r in unequal[:20]],
        })
        print({k: v for k, v in results.items() if k != "unequal"}, flush=True)
        # paced: alternate held-out and seen voices
        held = [it for it in items if it[0]["meta"].get("held_out_voice")]
        seen = [it for it in items if not it[0]["meta"].get("held_out_voice")]
        order = [x for pair in zip(held, seen) for x in pair] or items
        paced = [stream_paced(url, wave, rate) for _, wave in order[: args.paced]]
        firsts = [p["first_partial_after_onset_s"] for p in paced if p["first_partial_after_onset_s"] is not None]
        results["paced"] = {
            "recordings": len(paced),
            "first_partial_after_onset_s": {"p50": round(statistics.median(firsts), 3),
                                            "p90": round(float(np.percentile(firsts, 90)), 3), "max": max(firsts)},
            "no_partial_after_onset": len(paced) - len(firsts),
            "partials_before_onset": sum(p["partials_before_onset"] for p in paced),
            "final_after_end_s": {"p50": round(statistics.median(p["final_after_end_s"] for p in paced), 3),
                                  "max": max(p["final_after_end_s"] for p in paced)},
            "each": paced}
        print(results["paced"]["first_partial_after_onset_s"], results["paced"]["final_after_end_s"], flush=True)
    finally:
        server.terminate()
        server.wait(30)
    results["load_average_after"] = load_average()
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
