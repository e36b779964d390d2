"""``omniformer serve``: any task's checkpoint behind the HTTP API, metrics and web page, under uvicorn."""
from __future__ import annotations

import argparse
import math
from pathlib import Path


WS_MAX_BYTES = 512 * 1024

# Every numeric option's allowed range (inclusive) and how it is named in the message; None: not set.
OPTION_RANGES = {"port": (0, 65535, "0 (any free port) to 65535"),
                 "max_batch": (1, 4096, "1 to 4096"),
                 "max_wait_ms": (0.0, 10_000.0, "0 to 10000 ms"),
                 "max_upload_mb": (0.001, 4096.0, "0.001 to 4096 MiB"),
                 "max_pixels": (1, 1_000_000_000, "1 to 1,000,000,000"),
                 "max_audio_seconds": (0.05, 86_400.0, "0.05 to 86400 s"),
                 "max_streams": (0, 1024, "0 (no live streams) to 1024"),
                 "max_stream_seconds": (1.0, 86_400.0, "1 to 86400 s"),
                 "threads": (1, 1024, "1 to 1024")}


def check_options(args: argparse.Namespace) -> None:
    """Refuse an out-of-range ``serve`` option before anything is loaded, naming it and its range."""
    for name, (low, high, allowed) in OPTION_RANGES.items():
        value = getattr(args, name, None)
        if value is None:
            continue
        if not (math.isfinite(value) and low <= value <= high):
            raise ValueError(f"--{name.replace('_', '-')}: expected {allowed}, got {value}")
    if not args.host.strip():
        raise ValueError("--host: expected an address to listen on (e.g. 127.0.0.1 or 0.0.0.0), got ''")


def default_examples(model_dir: str | Path) -> Path | None:
    """The manifest the model was trained on, if it is still where its config says."""
    from ..config import run_config_from
    from ..train import checkpoint as ckpt
    try:
        cfg = run_config_from(ckpt.read_meta(model_dir)["config"])
    except Exception:
        return None
    manifest = Path(cfg.data.manifest) if cfg.data.manifest else None
    return manifest if manifest is not None and manifest.is_file() else None


def cmd_serve(args, overrides) -> int:
    import uvicorn

    from .app import create_app, default_torch_threads
    check_options(args)
    examples = None if args.no_examples else (Path(args.examples) if args.examples else default_examples(args.model))
    if args.examples and not examples.is_file():
        raise FileNotFoundError(f"--examples: {examples} does not exist")
    predictor = None
    if args.transcriber:
        from ..registry import task_of_checkpoint
        if task_of_checkpoint(args.model).name != "qa":
            raise ValueError(f"--transcriber: hears spoken questions for a qa model; {args.model} is not one")
        from ..tasks.qa import QAPredictor
        predictor = QAPredictor.load(args.model, transcriber=args.transcriber)
    app = create_app(args.model, predictor=predictor, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                     max_upload_bytes=int(args.max_upload_mb * 2 ** 20), max_pixels=args.max_pixels,
                     max_audio_seconds=args.max_audio_seconds, examples_manifest=examples,
                     max_streams=args.max_streams, max_stream_seconds=args.max_stream_seconds,
                     torch_threads=args.threads or default_torch_threads())
    print(f"serving {args.model} on http://{args.host}:{args.port}/  (API docs: /docs, metrics: /metrics)"
          + (f"; examples from {examples}" if examples else ""))
    # One process: the micro-batcher lives in it, and more processes would only split batches.
    # ws_max_size: a WebSocket message larger than the asr stream's own limit is refused unread.
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=args.access_log,
                ws_max_size=WS_MAX_BYTES)
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("serve", help="serve a trained model (its task's routes): HTTP API, web page, Prometheus metrics")
    p.add_argument("--model", required=True, help="checkpoint folder (its task is read from it)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=32, dest="max_batch", help="questions per model call (default 32)")
    p.add_argument("--max-wait-ms", type=float, default=5.0, dest="max_wait_ms",
                   help="how long a batch may wait for questions already being decoded (default 5)")
    p.add_argument("--max-upload-mb", type=float, default=10.0, dest="max_upload_mb", help="per file (default 10)")
    p.add_argument("--max-pixels", type=int, default=16_000_000, dest="max_pixels",
                   help="image width x height limit (default 16,000,000)")
    p.add_argument("--max-audio-seconds", type=float, dest="max_audio_seconds",
                   help="longest spoken question (default: the model's audio.max_seconds)")
    p.add_argument("--transcriber", help="qa: an asr checkpoint folder; spoken questions are transcribed by it "
                                         "and answered as text (default: heard by the qa model itself)")
    p.add_argument("--max-streams", type=int, default=8, dest="max_streams",
                   help="live streams open at once: asr transcription, translate/caption generation (default 8)")
    p.add_argument("--max-stream-seconds", type=float, dest="max_stream_seconds",
                   help="longest live transcription stream (asr; default 900; a generation stream ends at max_new_tokens)")
    p.add_argument("--examples", help="manifest with test samples for the page's examples "
                                      "(default: the model's training data, if present)")
    p.add_argument("--no-examples", action="store_true", dest="no_examples")
    p.add_argument("--threads", type=int, help="torch threads (default: half the usable CPU cores, at most 8)")
    p.add_argument("--log-level", default="info", dest="log_level",
                   choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--access-log", action="store_true", dest="access_log", help="log every request")
    p.set_defaults(func=cmd_serve)
    return p
