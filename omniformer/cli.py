"""``omniformer``: the command line. Thin: parse, call the library, print.

Recipe options are ``--section.key=value`` overrides on top of ``--config`` (a YAML file or
the name of a built-in recipe under configs/), e.g.::

    omniformer quickstart --pretrain.steps=200 --model.depth=2
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .config import ConfigError, load_config

RECIPES = Path(__file__).parent / "configs"


def recipe_path(name: str | None) -> Path | None:
    """A YAML path, or the name of a built-in recipe (``quickstart``, ``shapes-full``)."""
    if name is None:
        return None
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    builtin = RECIPES / f"{name}.yaml"
    if builtin.is_file():
        return builtin
    known = sorted(p.stem for p in RECIPES.glob("*.yaml"))
    raise ConfigError(f"--config {name!r}: no such file or built-in recipe; built-in recipes: {', '.join(known)}")


def _load(args, overrides: list[str], default: str | None = "quickstart"):
    return load_config(recipe_path(args.config or default), overrides)


def _count(text: str) -> int:
    """argparse type: a whole number >= 0."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return int(text)


def _write_json(path: str | None, data) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(data, indent=2))
        print(f"metrics written to {path}")


def print_table(metrics: dict[str, float], title: str) -> None:
    print(f"\n{title}")
    width = max(len(k) for k in metrics) if metrics else 10
    for key, value in metrics.items():
        if key == "score":
            continue
        print(f"  {key:<{width}}  {100 * value:6.2f}%")


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------

def cmd_data_shapes(args, overrides) -> int:
    from .config import ShapesConfig, from_dict
    from .data.shapes import generate_shapes
    values = {"images": args.images, "seed": args.seed, "size": args.size, "layout": args.layout,
              "max_objects": args.max_objects, "voices": args.voices}
    cfg = from_dict(ShapesConfig, {k: v for k, v in values.items() if v is not None})
    start = time.perf_counter()
    manifest = generate_shapes(args.out, cfg, workers=args.workers, progress=not args.quiet)
    print(f"wrote {manifest} in {time.perf_counter() - start:.1f} s")
    return cmd_data_check(argparse.Namespace(manifest=str(manifest), no_decode=True, quiet=args.quiet), [])


def cmd_data_check(args, overrides) -> int:
    from .data.manifest import check_manifest
    count, problems = check_manifest(args.manifest, decode=not args.no_decode)
    for problem in problems:
        print(f"{args.manifest}: {problem}")
    status = "OK" if not problems else f"{len(problems)} problem(s)"
    print(f"{args.manifest}: {count} samples checked, {status}")
    return 1 if problems else 0


def cmd_data_audio_folder(args, overrides) -> int:
    from .data.audio import audio_folder_manifest
    n = audio_folder_manifest(args.folder, args.out)
    print(f"wrote {args.out}: {n} recordings")
    return 0


def cmd_data_tokenizer(args, overrides) -> int:
    from .data.manifest import read_manifest
    from .data.text import Tokenizer
    from .tasks.common import texts_of
    tokenizer = Tokenizer.train(texts_of(read_manifest(args.manifest)), vocab_size=args.vocab_size)
    path = tokenizer.save(args.out)
    print(f"wrote {path}: {tokenizer.vocab_size} tokens")
    return 0


# ---------------------------------------------------------------------------------------------
# training and use
# ---------------------------------------------------------------------------------------------

def cmd_pretrain(args, overrides) -> int:
    from .tasks.pipeline import pretrain
    cfg = _load(args, overrides)
    path = pretrain(cfg, resume=args.resume)
    print(f"pretrained checkpoint: {path}")
    return 0


def cmd_finetune(args, overrides) -> int:
    from .tasks.pipeline import finetune
    cfg = _load(args, overrides)
    path = finetune(cfg, init=args.init, resume=args.resume)
    print(f"fine-tuned QA checkpoint: {path}")
    return 0


def cmd_evaluate(args, overrides) -> int:
    from .tasks.pipeline import evaluate
    ways = tuple(w for w in args.ways.split(",") if w)
    result = evaluate(args.model, args.manifest, args.split, ways=ways, device=args.device, workers=args.workers)
    print_table(result.metrics, f"{args.model} on {args.split} ({result.samples} questions, "
                                f"{result.seconds:.1f} s)")
    _write_json(args.json, {"split": args.split, "samples": result.samples, "metrics": result.metrics})
    return 0


def cmd_ask(args, overrides) -> int:
    from .tasks.qa import QAPredictor
    if args.question is None and args.audio is None:
        raise ConfigError("ask: give --question TEXT or --audio WAV (or both)")
    predictor = QAPredictor.load(args.model)
    answers = predictor.ask(args.image, question=args.question, audio=args.audio, top_k=args.top_k)
    asked = args.question if args.question is not None else f"(spoken) {args.audio}"
    print(f"Q: {asked}")
    for answer, p in answers:
        print(f"  {answer:<12} {p:6.1%}")
    return 0


def cmd_quickstart(args, overrides) -> int:
    from .tasks.quickstart import run_quickstart
    cfg = _load(args, overrides)
    summary = run_quickstart(cfg, resume=args.resume)
    _write_json(args.json, summary)
    return 0


# ---------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="omniformer", description="Build, pretrain, fine-tune, evaluate and serve multimodal Transformers "
                                       "over text, images and audio.",
        epilog="Recipe options: --section.key=value overrides, e.g. --pretrain.steps=200 --model.depth=2")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="make, check and prepare data").add_subparsers(dest="data_command",
                                                                                      required=True, metavar="WHAT")
    p = data.add_parser("shapes", help="write the built-in ShapesWorld dataset (images, captions, questions, speech)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--images", type=int, help="number of images (default 10000)")
    p.add_argument("--seed", type=int)
    p.add_argument("--size", type=int, help="image side in pixels (default 64)")
    p.add_argument("--layout", choices=["free", "grid"], help="free placement (standard) or a grid (easier)")
    p.add_argument("--max-objects", type=int, dest="max_objects")
    p.add_argument("--voices", type=int)
    p.add_argument("--workers", type=_count, default=2)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_data_shapes)
    p = data.add_parser("check", help="validate every line of a manifest; non-zero exit on problems")
    p.add_argument("manifest")
    p.add_argument("--no-decode", action="store_true", help="check that media exist without decoding them")
    p.set_defaults(func=cmd_data_check)
    p = data.add_parser("audio-folder", help="write a manifest for a folder of recordings (FSDD naming)")
    p.add_argument("folder")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_data_audio_folder)
    p = data.add_parser("tokenizer", help="train a WordPiece tokenizer on a manifest's text")
    p.add_argument("manifest")
    p.add_argument("--out", required=True, help="tokenizer.json path or folder")
    p.add_argument("--vocab-size", type=int, default=1000, dest="vocab_size")
    p.set_defaults(func=cmd_data_tokenizer)

    for name, func, helptext in [("pretrain", cmd_pretrain, "pretrain on captions: MLM, matching, contrastive"),
                                 ("finetune", cmd_finetune, "fine-tune question answering"),
                                 ("quickstart", cmd_quickstart, "the main job: data, tokenizer, pretrain, "
                                                                "fine-tune, evaluate, example answers")]:
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--config", help="YAML recipe or built-in recipe name (default: quickstart)")
        p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in out_dir")
        if name == "finetune":
            p.add_argument("--init", help="pretrained checkpoint folder (default: train from scratch)")
        if name == "quickstart":
            p.add_argument("--json", help="also write the metrics as JSON here")
        p.set_defaults(func=func)

    p = sub.add_parser("evaluate", help="QA accuracy by family, relational, text vs spoken, held-out voice")
    p.add_argument("--model", required=True, help="QA checkpoint folder")
    p.add_argument("--manifest", help="default: the data the model was trained on")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--ways", default="text,audio", help="ask in text, audio or both (comma-separated)")
    p.add_argument("--device", default="auto", help="auto (a GPU if there is one), cpu, cuda, cuda:1, mps...")
    p.add_argument("--workers", type=_count, default=2, help="processes that read and preprocess the samples")
    p.add_argument("--json", help="also write the metrics as JSON here")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("ask", help="answer one question about an image, asked in text or speech")
    p.add_argument("--model", required=True, help="QA checkpoint folder")
    p.add_argument("--image", required=True)
    p.add_argument("--question")
    p.add_argument("--audio", help="the question as a recording (WAV, FLAC, OGG)")
    p.add_argument("--top-k", type=int, default=5, dest="top_k")
    p.set_defaults(func=cmd_ask)

    for extra in _extensions():
        extra(sub)
    return parser


def _extensions():
    """Subcommands whose modules bring optional dependencies (serving, export)."""
    out = []
    try:
        from .serve.cli import add_parser as serve_parser
        out.append(serve_parser)
    except ImportError:
        pass
    try:
        from .interop.cli import add_parser as export_parser
        out.append(export_parser)
    except ImportError:
        pass
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    overrides = [a for a in rest if a.startswith("--") and "=" in a]
    stray = [a for a in rest if a not in overrides]
    if stray:
        parser.error(f"unrecognised arguments: {' '.join(stray)} (recipe overrides look like --section.key=value)")
    if overrides and args.command not in ("pretrain", "finetune", "quickstart"):
        parser.error(f"{args.command} takes no recipe overrides: {' '.join(overrides)}")
    try:
        return args.func(args, overrides)
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"omniformer {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
