"""How long ShapesWorld takes to generate, and how much disk it takes.

    python benchmarks/shapes_generation.py [--images 10000] [--workers 2] [--out results.json]

Generates into a temporary folder (deleted afterwards) and prints one JSON object: wall
seconds, bytes on disk (apparent file sizes and allocated blocks), file count and samples.
Budget for the default 10,000 images on 2 cores: <= 120 s and <= 500 MB.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

from omniformer.datasets.shapes import ShapesConfig
from omniformer.datasets.shapes import generate_shapes


def disk_usage(root: Path) -> tuple[int, int, int]:
    files = apparent = allocated = 0
    for dirpath, _, names in os.walk(root):
        for name in names:
            st = os.stat(os.path.join(dirpath, name))
            files, apparent, allocated = files + 1, apparent + st.st_size, allocated + st.st_blocks * 512
    return files, apparent, allocated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--layout", default="free", choices=["free", "grid"])
    parser.add_argument("--out", default="shapes_generation.json", help="where to write the JSON result")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        manifest = generate_shapes(Path(tmp) / "shapes", ShapesConfig(images=args.images, layout=args.layout),
                                   workers=args.workers, progress=True)
        seconds = time.perf_counter() - start
        files, apparent, allocated = disk_usage(manifest.parent)
        info = json.loads((manifest.parent / "info.json").read_text())
        kinds = Counter(json.loads(line)["meta"]["kind"] for line in manifest.open())
        by_part = {p.name: disk_usage(p)[1] if p.is_dir() else p.stat().st_size for p in manifest.parent.iterdir()}
    result = {
        "images": args.images, "workers": args.workers, "layout": args.layout,
        "wall_seconds": round(seconds, 1),
        "disk_bytes": apparent, "disk_mb": round(apparent / 1e6, 1),
        "disk_allocated_mb": round(allocated / 1e6, 1),
        "mb_by_part": {k: round(v / 1e6, 1) for k, v in sorted(by_part.items())},
        "files": files, "samples": dict(kinds), "speech": info["speech"],
        "questions_per_family": {f: sum(c.values()) for f, c in info["counts"]["answers"].items()},
        "count_shape_answers": info["counts"]["answers"].get("count_shape"),
    }
    print(json.dumps(result, indent=1))
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
