"""Data-loading throughput: preprocessed samples/s of the ShapesWorld and FSDD pipelines.

    python benchmarks/data_loading.py [--workers 0,1,2] [--shapes-images 1000] [--json out.json]

ShapesWorld: caption samples (image + text + speech) and QA samples (image + question +
spoken question), as pretraining and fine-tuning read them. FSDD: the 8 kHz Free Spoken
Digit recordings in ../shared/data/fsdd, resampled to 16 kHz and turned into log-mel.
Each figure is one pass over the data with a fresh loader (worker start-up included);
audio features are cached per worker where deterministic, so a second epoch is faster.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]


def throughput(dataset, workers: int, batch_size: int = 64, epochs: int = 1) -> float:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                        collate_fn=__import__("omniformer.data.batching", fromlist=["collate"]).collate,
                        persistent_workers=workers > 0)
    start, n = time.perf_counter(), 0
    for _ in range(epochs):
        for batch in loader:
            n += len(batch["index"])
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="0,1,2")
    parser.add_argument("--shapes-images", type=int, default=1000)
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from omniformer.config import load_config
    from omniformer.datasets.shapes import ShapesConfig
    from omniformer.data.audio import AudioPreprocessor, audio_folder_manifest
    from omniformer.data.batching import MultimodalDataset
    from omniformer.data.manifest import read_manifest
    from omniformer.datasets.shapes import generate_shapes
    from omniformer.tasks.common import image_preprocessor, is_caption, is_qa, texts_of
    from omniformer.data.text import Tokenizer

    cfg = load_config(ROOT / "configs" / "quickstart.yaml")
    workers = [int(w) for w in args.workers.split(",")]
    results = {"workers": workers, "pipelines": {}}
    with tempfile.TemporaryDirectory() as tmp:
        shapes_cfg = ShapesConfig(**{**cfg.data.dataset_options, "images": args.shapes_images})
        manifest = generate_shapes(Path(tmp) / "shapes", shapes_cfg, workers=2, progress=False)
        samples = [s for s in read_manifest(manifest) if s.get("split") == "train"]
        tok = Tokenizer.train(texts_of(samples), vocab_size=200)
        common = dict(tokenizer=tok, image=image_preprocessor(cfg.model, False),
                      audio=AudioPreprocessor(cfg.model.audio), text_max_len=cfg.model.text.max_len)
        pipelines = {
            "shapes_captions": MultimodalDataset(manifest, [s for s in samples if is_caption(s)], **common),
            "shapes_qa": MultimodalDataset(manifest, [s for s in samples if is_qa(s)], text_field="question",
                                           audio_field="question_audio", modes="both", **common),
        }
        fsdd = ROOT.parent / "shared" / "data" / "fsdd" / "recordings"
        if fsdd.is_dir():
            fsdd_manifest = Path(tmp) / "fsdd" / "manifest.jsonl"
            fsdd_manifest.parent.mkdir()
            audio_folder_manifest(fsdd, fsdd_manifest)
            pipelines["fsdd"] = MultimodalDataset(fsdd_manifest, read_manifest(fsdd_manifest),
                                                  audio=AudioPreprocessor(cfg.model.audio), cache_audio=False)
        for name, dataset in pipelines.items():
            row = {}
            for w in workers:
                row[str(w)] = throughput(dataset, w)
            results["pipelines"][name] = {"samples": len(dataset), "samples_per_second": row}

    print(f"{'pipeline':<18}{'samples':>9}" + "".join(f"{f'{w} workers':>14}" for w in workers))
    for name, r in results["pipelines"].items():
        print(f"{name:<18}{r['samples']:>9}" + "".join(f"{r['samples_per_second'][str(w)]:>14.0f}" for w in workers))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
