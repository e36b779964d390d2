"""Load test for ``omniformer serve``: throughput, latency and batch sizes on loopback.

Starts the server in a subprocess on 127.0.0.1 (so the load generator does not share its GIL),
then for each client count runs that many concurrent httpx clients until ``--requests``
answers or ``--max-seconds`` have passed. Reports answers/s, p50/p90/p99 latency, errors and
the micro-batch sizes (from the server's /metrics), prints a table and writes JSON.

    python benchmarks/serve_load.py --model runs/quickstart/qa/best --clients 1,16 --requests 2000
    python benchmarks/serve_load.py --clients 16 --requests 10000      # random-weights quickstart model
    python benchmarks/serve_load.py --clients 64 --requests 10000 --voice-every 4 --bad-every 5   # the soak

``--bad-every N`` makes every Nth request malformed (a cut-short or fake image, a non-UTF-8 or
empty question, a top_k out of range, the wrong content type, broken JSON, ...): each must get a
4xx. The server's resident memory is sampled through the run (``rss_mb``): flat means no leak.

Without ``--model`` a QA checkpoint with random weights is built from configs/quickstart.yaml:
same shapes, same compute as the trained quickstart model, no training needed.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import io
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def build_random_checkpoint(out: Path, config: Path) -> Path:
    import torch

    from omniformer.config import load_config
    from omniformer.data.text import Tokenizer
    from omniformer.tasks.qa import QAModel, qa_config
    from omniformer.train.checkpoint import save_checkpoint
    cfg = load_config(config)
    texts = [f"what {a} is the {c} {s}?" for a in ("color", "shape", "size") for c in ("red", "green", "blue")
             for s in ("circle", "square", "triangle")]
    tokenizer = Tokenizer.train(texts, 100)
    answers = ["red", "green", "blue", "yellow", "circle", "square", "triangle", "yes", "no", "0", "1", "2", "3"]
    cfg.model.vocab_size = tokenizer.vocab_size
    torch.manual_seed(0)
    meta = {"task": "qa", "config": dataclasses.asdict(cfg), "answers": answers, "model_id": "random-quickstart"}
    return save_checkpoint(out, QAModel(cfg.model, len(answers), qa_config(cfg)), meta, tokenizer)


def make_inputs(count: int, size: int, seed: int = 0) -> tuple[list[bytes], list[str], bytes]:
    """A few distinct PNG scenes, questions and one spoken question (1.5 s WAV)."""
    import soundfile as sf
    from PIL import Image, ImageDraw
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        im = Image.new("RGB", (size, size), "white")
        draw = ImageDraw.Draw(im)
        for _ in range(int(rng.integers(2, 6))):
            x, y = (int(v) for v in rng.integers(4, size - 4, 2))
            r = int(rng.integers(3, 8))
            color = tuple(int(c) for c in rng.integers(0, 255, 3))
            draw.ellipse((x - r, y - r, x + r, y + r), fill=color)
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        images.append(buf.getvalue())
    questions = ["what color is the circle?", "what shape is the red object?", "how many squares are there?",
                 "is the blue circle left of the square?"]
    t = np.arange(int(1.5 * 16000)) / 16000
    buf = io.BytesIO()
    sf.write(buf, (0.1 * np.sin(2 * np.pi * 200 * t)).astype(np.float32), 16000, format="WAV", subtype="PCM_16")
    return images, questions, buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, port: int, max_batch: int, max_wait_ms: float, threads: int | None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "omniformer.cli", "serve", "--model", str(model), "--host", "127.0.0.1",
           "--port", str(port), "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms),
           "--no-examples", "--log-level", "warning"]
    if threads:
        cmd += ["--threads", str(threads)]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    import httpx
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}:\n{proc.stderr.read()}")
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the server did not become ready")


_BUCKET = re.compile(r'^omniformer_batch_size_bucket\{le="([^"]+)"\} (\d+)$', re.M)


def batch_histogram(url: str) -> dict[str, int]:
    import httpx
    return {le: int(n) for le, n in _BUCKET.findall(httpx.get(url + "/metrics", timeout=10).text)}


def batch_summary(before: dict[str, int], after: dict[str, int], answers: int) -> dict:
    cumulative = {le: after.get(le, 0) - before.get(le, 0) for le in after}
    calls = cumulative.get("+Inf", 0)
    per_bucket, previous = {}, 0
    for le, n in cumulative.items():  # cumulative -> per bucket, keeping only used ones
        if n - previous:
            per_bucket[f"<={le}"] = n - previous
        previous = n
    return {"model_calls": calls, "mean_batch": answers / calls if calls else 0.0, "batches": per_bucket}


def malformed_requests(image: bytes, audio: bytes) -> list[tuple[str, dict]]:
    """(kind, httpx.post keyword arguments) of requests a server must refuse with a 4xx."""
    png = ("scene.png", image, "image/png")
    return [
        ("cut-short image", {"files": {"image": ("scene.png", image[: len(image) // 3], "image/png")},
                             "data": {"question": "what color is it?"}}),
        ("text as image", {"files": {"image": ("scene.png", b"hello, not a picture", "image/png")},
                           "data": {"question": "what?"}}),
        ("empty question", {"files": {"image": png}, "data": {"question": "   "}}),
        ("non-UTF-8 question", {"files": {"image": png, "question": ("q.txt", b"caf\xe9?", "text/plain")}}),
        ("top_k out of range", {"files": {"image": png}, "data": {"question": "what?", "top_k": "-3"}}),
        ("no image", {"files": {"x": ("x.txt", b"x", "text/plain")}, "data": {"question": "what?"}}),
        ("cut-short audio", {"files": {"image": png, "audio": ("q.wav", audio[:60], "audio/wav")}}),
        ("wrong content type", {"content": b"image=1", "headers": {"content-type": "text/plain"}}),
        ("broken JSON", {"content": b'{"image": "', "headers": {"content-type": "application/json"},
                         "url": "/v1/answer.json"}),
        ("deep JSON", {"content": b"[" * 50_000 + b"]" * 50_000, "headers": {"content-type": "application/json"},
                       "url": "/v1/answer.json"}),
    ]


def rss_mb(pid: int) -> float:
    """The process's resident memory in MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def run_load(url: str, clients: int, total: int, max_seconds: float, images: list[bytes], questions: list[str],
                   audio: bytes, voice_every: int, bad_every: int = 0, server_pid: int | None = None) -> dict:
    import httpx
    latencies: list[float] = []
    errors: dict[str, int] = {}
    bad_refused, bad_not_refused = 0, {}
    bad = malformed_requests(images[0], audio)
    memory: list[float] = []
    issued = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as http:
        start = time.perf_counter()
        deadline = start + max_seconds

        async def sample_memory() -> None:
            while server_pid is not None:
                memory.append(rss_mb(server_pid))
                await asyncio.sleep(0.5)

        async def client() -> None:
            nonlocal issued, bad_refused
            while issued < total and time.perf_counter() < deadline:
                i = issued
                issued += 1
                if bad_every and i % bad_every == bad_every - 1:
                    kind, request = bad[(i // bad_every) % len(bad)]
                    request = dict(request)
                    try:
                        r = await http.post(request.pop("url", "/v1/answer"), **request)
                        refused = 400 <= r.status_code < 500 and "error" in r.json()
                        why = f"{kind}: HTTP {r.status_code}"
                    except Exception as e:
                        refused, why = False, f"{kind}: {type(e).__name__}: {e}"
                    if refused:
                        bad_refused += 1
                    else:
                        bad_not_refused[why] = bad_not_refused.get(why, 0) + 1
                    continue
                files = {"image": ("scene.png", images[i % len(images)], "image/png")}
                if voice_every and i % voice_every == 0:
                    files["audio"] = ("question.wav", audio, "audio/wav")
                t0 = time.perf_counter()
                try:
                    r = await http.post("/v1/answer", files=files, data={"question": questions[i % len(questions)]})
                    ok = r.status_code == 200 and len(r.json()["answers"]) == 5
                    key = None if ok else f"HTTP {r.status_code}: {r.text[:120]}"
                except Exception as e:  # a broken connection or timeout counts as an error
                    key = f"{type(e).__name__}: {e}"
                latencies.append(time.perf_counter() - t0)
                if key:
                    errors[key] = errors.get(key, 0) + 1

        sampler = asyncio.ensure_future(sample_memory())
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - start
        sampler.cancel()
    lat = np.array(latencies) * 1000
    done = len(latencies)
    extra = {}
    if bad_every:
        extra.update(malformed=bad_refused + sum(bad_not_refused.values()), malformed_refused_4xx=bad_refused,
                     malformed_not_refused=bad_not_refused)
    if memory:
        tenth = max(1, len(memory) // 10)
        extra["rss_mb"] = {"first_tenth": round(float(np.mean(memory[:tenth])), 1),
                           "last_tenth": round(float(np.mean(memory[-tenth:])), 1), "max": round(max(memory), 1),
                           "by_tenth": [round(float(np.mean(part)), 1) for part in np.array_split(memory, 10)]}
    return {**extra, "clients": clients, "requests": done, "seconds": round(elapsed, 3),
            "answers_per_s": round((done - sum(errors.values())) / elapsed, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 2), "p90_ms": round(float(np.percentile(lat, 90)), 2),
            "p99_ms": round(float(np.percentile(lat, 99)), 2), "max_ms": round(float(lat.max()), 2),
            "errors": sum(errors.values()), "error_kinds": errors}


def print_table(rows: list[dict]) -> None:
    head = f"{'clients':>7} {'requests':>8} {'seconds':>8} {'answers/s':>9} {'p50 ms':>7} {'p90 ms':>7} " \
           f"{'p99 ms':>7} {'errors':>6} {'mean batch':>10}  batch sizes"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['clients']:>7} {r['requests']:>8} {r['seconds']:>8.1f} {r['answers_per_s']:>9.1f} "
              f"{r['p50_ms']:>7.1f} {r['p90_ms']:>7.1f} {r['p99_ms']:>7.1f} {r['errors']:>6} "
              f"{r['mean_batch']:>10.2f}  {r['batches']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="QA checkpoint folder (default: random weights from configs/quickstart.yaml)")
    p.add_argument("--config", default=str(ROOT / "configs" / "quickstart.yaml"),
                   help="recipe for the random-weights model")
    p.add_argument("--clients", default="1,16", help="concurrent clients; a comma-separated list runs each in turn")
    p.add_argument("--requests", type=int, default=2000, help="requests per client count")
    p.add_argument("--max-seconds", type=float, default=300, dest="max_seconds",
                   help="stop a run after this long even if --requests are not done")
    p.add_argument("--warmup", type=int, default=50, help="requests before each measured run")
    p.add_argument("--voice-every", type=int, default=0, dest="voice_every",
                   help="every Nth question is also spoken (0: text only)")
    p.add_argument("--bad-every", type=int, default=0, dest="bad_every",
                   help="every Nth request is malformed and must get a 4xx (0: none)")
    p.add_argument("--max-batch", type=int, default=32, dest="max_batch")
    p.add_argument("--max-wait-ms", type=float, default=5.0, dest="max_wait_ms")
    p.add_argument("--threads", type=int, help="server torch threads (default: the server's own choice)")
    p.add_argument("--json", default="benchmarks/results/serve_load.json", help="write results here")
    args = p.parse_args(argv)
    client_counts = [int(c) for c in str(args.clients).split(",") if c]

    with tempfile.TemporaryDirectory() as tmp:
        model = Path(args.model) if args.model else build_random_checkpoint(Path(tmp) / "qa", Path(args.config))
        from omniformer.train.checkpoint import read_meta
        size = read_meta(model)["config"]["model"]["image"]["size"]
        images, questions, audio = make_inputs(16, size)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = start_server(model, port, args.max_batch, args.max_wait_ms, args.threads)
        rows = []
        try:
            wait_ready(url, proc)
            for clients in client_counts:
                asyncio.run(run_load(url, clients, args.warmup, 60, images, questions, audio, args.voice_every))
                before = batch_histogram(url)
                row = asyncio.run(run_load(url, clients, args.requests, args.max_seconds, images, questions, audio,
                                           args.voice_every, args.bad_every, proc.pid))
                row.update(batch_summary(before, batch_histogram(url), row["requests"] - row["errors"]))
                rows.append(row)
                print(f"clients={clients}: {row['answers_per_s']} answers/s, p50 {row['p50_ms']} ms, "
                      f"p99 {row['p99_ms']} ms, errors {row['errors']}"
                      + (f", malformed {row['malformed']} ({row['malformed_refused_4xx']} refused with a 4xx)"
                         if args.bad_every else "") + (f", server memory {row['rss_mb']} MiB" if "rss_mb" in row else ""),
                      flush=True)
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    print()
    print_table(rows)
    result = {"model": str(args.model or f"random weights, {args.config}"), "cpus": len(os.sched_getaffinity(0)),
              "max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms, "voice_every": args.voice_every,
              "runs": rows}
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
        print(f"\nwrote {out}")
    return 1 if any(r["errors"] or r.get("malformed_not_refused") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
