"""``omniformer``: the command line. Thin: parse, call the library, print.

Recipe options are ``--section.key=value`` overrides on top of ``--config`` (a YAML file or
the name of a built-in recipe under configs/), e.g.::

    omniformer quickstart --pretrain.steps=200 --model.depth=2
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

from .config import RECIPES, ConfigError, DataConfig, load_config, recipe_path

def _load(args, overrides: list[str], default: str | None = "quickstart"):
    return load_config(recipe_path(args.config or default), overrides)


def _whole(lo: int, hi: int):
    """argparse type: a whole number from ``lo`` to ``hi``; argparse's error names the option."""
    def parse(text: str) -> int:
        digits = text.strip().replace("_", "")
        if not digits.isdigit() or not lo <= int(digits) <= hi:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {lo} and <= {hi:,}, got {text!r}")
        return int(digits)
    parse.__name__ = f"whole number {lo} to {hi}"
    return parse


_count = _whole(0, 256)                   # worker processes
_threads = _whole(1, 1024)                # torch threads: a huge count crashes torch, not an error
_top_k = _whole(1, 1_000_000)


def _text(text: str) -> str:
    """argparse type: text that is UTF-8 (a non-UTF-8 byte arrives from the shell as a lone
    surrogate, which the tokenizer cannot take)."""
    check_text(text, "")
    return text


def check_text(text: str, option: str) -> None:
    """Refuse blank text, or text with bytes that are not UTF-8, naming the option (and the byte)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"{option + ': ' if option else ''}empty; give the words")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = text[e.start].encode("utf-8", "surrogateescape")
        raise argparse.ArgumentTypeError(f"{option + ': ' if option else ''}not UTF-8 text: byte {bad!r} at "
                                         f"character {e.start}; give the text in UTF-8") from None


def _writable_file(path: str | None, option: str = "--json") -> None:
    """Refuse an output file that cannot be written before the work whose result it holds, not after."""
    if not path:
        return
    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(f"{option}: {path} is a folder; give the file to write, e.g. {target / 'metrics.json'}")
    parent = next((p for p in target.absolute().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise NotADirectoryError(f"{option}: {path}: {parent} is a file, not a folder")


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
    from .config import from_dict
    from .datasets.shapes import ShapesConfig
    from .datasets.shapes import generate_shapes
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


def cmd_data_shard(args, overrides) -> int:
    from .data.shards import read_index, write_shards
    start = time.perf_counter()
    folder = write_shards(args.manifest, args.out, samples_per_shard=args.samples_per_shard, overwrite=args.overwrite)
    index = read_index(folder)
    print(f"wrote {folder}: {index['samples']} samples in {len(index['shards'])} shards "
          f"({time.perf_counter() - start:.1f} s); train from it with --data.manifest={folder}")
    return 0


def cmd_data_audio_folder(args, overrides) -> int:
    from .data.audio import audio_folder_manifest
    report = audio_folder_manifest(args.folder, args.out, label_from=args.label_from,
                                   transcripts=args.transcripts, digit_words=args.digit_words)
    for warning in report.warnings:
        print(f"omniformer data: warning: {warning}", file=sys.stderr)
    said = f", {report.transcribed} with a transcript" if args.transcripts or args.digit_words else ""
    print(f"wrote {args.out}: {report.recordings} recordings{said}")
    return 0


def _print_summary(summary, took: str = "") -> None:
    """A FolderSummary: its warnings on stderr, then the counts per label and split."""
    for warning in summary.warnings:
        print(f"omniformer data: warning: {warning}", file=sys.stderr)
    print(f"wrote {summary.manifest}: {summary.total} images, {len(summary.labels)} classes{took}")
    print(summary.table())


def cmd_data_image_folder(args, overrides) -> int:
    from .data.folders import image_folder_manifest
    summary = image_folder_manifest(args.folder, args.out, val_fraction=args.val_fraction,
                                    test_fraction=args.test_fraction, seed=args.seed)
    _print_summary(summary)
    return 0


def cmd_data_idx(args, overrides) -> int:
    from .data.folders import idx_manifest
    start = time.perf_counter()
    summary = idx_manifest(args.images, args.labels, args.out, splits=args.splits)
    _print_summary(summary, f" in {time.perf_counter() - start:.1f} s")
    return 0


def cmd_data_parallel(args, overrides) -> int:
    from .tasks.seq2seq import parallel_manifest
    counts = parallel_manifest(args.folder, args.source, args.target, args.out)
    pairs = ", ".join(f"{k} {v:,}" for k, v in counts.items() if not k.endswith("_empty"))
    empty = sum(v for k, v in counts.items() if k.endswith("_empty"))
    print(f"wrote {args.out}: {pairs} pairs" + (f" ({empty} with an empty side left out)" if empty else ""))
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

def _guard_out_dir(cfg, task: str, args) -> None:
    """Refuse to overwrite an earlier run's model unless asked: a second run on other data would
    otherwise replace it without a word."""
    out = Path(cfg.out_dir) / task
    if not getattr(args, "resume", False) and not getattr(args, "overwrite", False) and (out / "last").exists():
        raise FileExistsError(f"{out} already holds a trained model; continue it with --resume, replace it with "
                              f"--overwrite, or write elsewhere with --out_dir=DIR")


def cmd_train(args, overrides) -> int:
    from .registry import get_task
    task = get_task(args.task)
    default = task.recipe or "quickstart"
    if args.config is None and task.general_recipe and any(o.startswith("--data.manifest=") for o in overrides):
        # The user's own data: start from the general recipe, not the built-in dataset's.
        default = task.general_recipe
        print(f"omniformer {args.command}: your own data, so the general recipe '{default}' "
              f"(--config NAME to choose another; 'omniformer recipes {default}' shows it)")
    cfg = _load(args, overrides, default=default)
    task.config(cfg)  # the task section is checked now, not after the data is made
    from .train import distributed
    from .train.loop import resolve_device
    training = cfg.pretrain if task.name == "pretrain" else cfg.finetune
    ranks = distributed.init(resolve_device(training.device).type, training.parallel)  # under torchrun
    try:
        _guard_out_dir(cfg, task.name, args)
        distributed.barrier()  # every rank has looked before rank 0 writes anything
        path = task.train(cfg, init=args.init, resume=args.resume)
    finally:
        distributed.close()
    if ranks.main:
        print(f"{task.name} checkpoint: {path}")
        print(f"evaluate it with: omniformer evaluate --model {path}")
    return 0


def cmd_pretrain(args, overrides) -> int:
    args.task, args.init = "pretrain", None
    return cmd_train(args, overrides)


def cmd_finetune(args, overrides) -> int:
    args.task = "qa"
    return cmd_train(args, overrides)


def _checkpoint_config(model_dir: str, overrides: list[str]):
    """The recipe a checkpoint was trained with, with ``--section.key=value`` overrides applied
    (data and evaluation settings only: the architecture is the checkpoint's)."""
    from .config import RunConfig, from_dict, merge, parse_overrides, run_config_from, to_dict
    from .train import checkpoint as ckpt
    meta = ckpt.read_meta(model_dir)
    update = parse_overrides(overrides) if overrides else {}
    if "model" in update:
        raise ConfigError(f"--model.*: the architecture is the checkpoint's ({model_dir}); only data and "
                          "evaluation settings can be overridden here")
    base = meta.get("config", {})
    try:
        return from_dict(RunConfig, merge(to_dict(run_config_from(base)), update))
    except ConfigError as e:
        raise ConfigError(f"{model_dir}: {e}") from None


def cmd_average(args, overrides) -> int:
    from .train import checkpoint as ckpt
    paths = args.checkpoints
    if args.last is not None and args.last < 2:
        raise ConfigError(f"--last: need at least 2 checkpoints to average, got {args.last}")
    if args.last is not None or len(paths) == 1:
        if len(paths) != 1:
            raise ConfigError("--last: give one folder (a run's task folder or its steps/), not several checkpoints")
        paths = ckpt.step_checkpoints(paths[0], args.last)
    out = ckpt.average_checkpoints(paths, args.out)
    print(f"averaged {len(paths)} checkpoints ({', '.join(Path(p).name for p in paths)}) into {out}")
    return 0


def cmd_evaluate(args, overrides) -> int:
    from .registry import task_of_checkpoint
    _writable_file(args.json)
    asked = list(dict.fromkeys(w.strip() for w in args.asked.split(",") if w.strip()))
    if not asked or any(w not in ("text", "audio") for w in asked):
        raise ValueError(f"--asked: expected text, audio or both (text,audio), got {args.asked!r}")
    task = task_of_checkpoint(args.model)
    cfg = _checkpoint_config(args.model, overrides)
    extra = {}
    if task.name == "qa":
        extra["asked"] = tuple(asked)
    result = task.evaluate(args.model, args.manifest, args.split, device=args.device, workers=args.workers,
                           cfg=cfg if overrides else None, **extra)
    print(f"\n{args.model} ({task.name}) on {args.split}: {result.samples} samples, {result.seconds:.1f} s")
    print(task.report(result, Path(args.json).parent if args.json else None))
    _write_json(args.json, result.to_json())
    return 0


def cmd_predict(args, overrides) -> int:
    from .registry import task_of_checkpoint
    task = task_of_checkpoint(args.model)
    parser = argparse.ArgumentParser(prog=f"omniformer predict --model {args.model}",
                                     description=f"inputs of the {task.name} task")
    task.add_predict_arguments(parser)
    task_args = parser.parse_args(args.task_args)
    for option, value in vars(task_args).items():  # text a task reads as words, not a path
        if option in ("question", "text") and isinstance(value, str):
            try:
                check_text(value, f"--{option}")
            except argparse.ArgumentTypeError as e:
                parser.error(str(e))
    predictor = task.load(args.model, device=str(_device(args.device)))
    result = task.predict_from_args(predictor, task_args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(task.format_prediction(result))
    return 0


def _device(name: str):
    from .train.loop import resolve_device
    return resolve_device(name)


def cmd_recipes(args, overrides) -> int:
    """Print the built-in recipes, or one recipe with every key (defaults included)."""
    from .config import save_config
    if args.name is None:
        print("built-in recipes (omniformer recipes NAME prints one with every key):")
        for path in sorted(RECIPES.glob("*.yaml")):
            first = next((ln.lstrip("# ").strip() for ln in path.read_text().splitlines() if ln.startswith("#")), "")
            print(f"  {path.stem:<18} {first}")
        return 0
    cfg = load_config(recipe_path(args.name), overrides)
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        save_config(cfg, Path(tmp) / "recipe.yaml")
        print((Path(tmp) / "recipe.yaml").read_text(), end="")
    return 0


def cmd_ask(args, overrides) -> int:
    from .tasks.qa import QAPredictor
    if args.question is None and args.audio is None:
        raise ConfigError("ask: give --question TEXT or --audio WAV (or both)")
    predictor = QAPredictor.load(args.model)
    known = len(predictor.answers)
    top_k = min(5, known) if args.top_k is None else args.top_k
    if top_k > known:
        raise ValueError(f"--top-k: expected 1 to {known} (the answers {args.model} knows), got {top_k}")
    answers = predictor.ask(args.image, question=args.question, audio=args.audio, top_k=top_k)
    asked = args.question if args.question is not None else f"(spoken) {args.audio}"
    print(f"Q: {asked}")
    for answer, p in answers:
        print(f"  {answer:<12} {p:6.1%}")
    return 0


def cmd_translate(args, overrides) -> int:
    from .tasks.seq2seq import Translator
    from .generation_flags import generation_options
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    texts = list(args.texts)
    if not texts or texts == ["-"]:
        texts = [line.strip() for line in sys.stdin if line.strip()]
    translator = Translator.load(args.model, device=str(_device(args.device)))
    for text in translator.translate(texts, **generation_options(args)):
        print(text, flush=True)
    return 0


def cmd_caption(args, overrides) -> int:
    from .tasks.caption import Captioner
    from .generation_flags import generation_options
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    captioner = Captioner.load(args.model, device=str(_device(args.device)))
    field = "audio" if captioner.inputs == ["audio"] else "image"
    files = list(args.files)
    captions = captioner.caption(**{("images" if field == "image" else "audio"): files}, **generation_options(args))
    for path, caption in zip(files, captions):
        print(f"{path}\t{caption}" if len(files) > 1 else caption, flush=True)
    return 0


def cmd_generate(args, overrides) -> int:
    from .tasks.seq2seq.generator import Generator
    from .generation_flags import generation_options
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    generator = Generator.load(args.model, device=str(_device(args.device)))
    sources = {"text": args.text, "image": args.image, "audio": args.audio}
    if args.stream:
        for piece in generator.stream(args.prompt, **sources, **generation_options(args)):
            print(piece, end="", flush=True)
        print(flush=True)
    else:
        print(generator.generate(args.prompt, **sources, **generation_options(args)), flush=True)
    return 0


def cmd_transcribe(args, overrides) -> int:
    from .tasks.asr import Transcriber
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    transcriber = Transcriber.load(args.model, device=str(_device(args.device)))
    results = []
    for path in args.files:
        t = transcriber.transcribe(path, timings=args.json, decoder=args.decoder)
        if args.json:
            results.append({"file": path, **t.to_json()})
        else:
            print(f"{path}\t{t.text}" if len(args.files) > 1 else t.text, flush=True)
    if args.json:
        print(json.dumps(results[0] if len(results) == 1 else results, indent=2))
    return 0


def cmd_quickstart(args, overrides) -> int:
    from .tasks.quickstart import run_quickstart
    _writable_file(args.json)
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
    p = data.add_parser("shard", help="pack a manifest and its media into tar shards (webdataset layout) to "
                                      "train from (--data.manifest=DIR)")
    p.add_argument("manifest", help="a manifest (.jsonl), or a shard folder to shard again")
    p.add_argument("--out", required=True, help="the folder for shard-NNNNNN.tar and shards.json (new or empty)")
    p.add_argument("--samples-per-shard", type=_whole(1, 1_000_000), default=1000, dest="samples_per_shard",
                   help="samples in each tar, 1 to 1,000,000 (default 1000)")
    p.add_argument("--overwrite", action="store_true", help="replace the shards of a folder that holds some")
    p.set_defaults(func=cmd_data_shard)
    p = data.add_parser("audio-folder", help="write a manifest for a folder of recordings (FSDD naming)")
    p.add_argument("folder")
    p.add_argument("--out", required=True)
    p.add_argument("--label-from", choices=["digit", "folder"], default="digit", dest="label_from",
                   help="digit: FSDD names {digit}_{speaker}_{index}, takes 0-4 are test (default); "
                        "folder: the parent folder's name")
    p.add_argument("--transcripts", metavar="FILE",
                   help="each recording's transcript (its 'text', for speech recognition): lines of "
                        "'id<TAB>text', or a CSV with id and text columns; the id is the file name or its "
                        "path under the folder, with or without suffix")
    p.add_argument("--digit-words", action="store_true", dest="digit_words",
                   help="FSDD: each recording's transcript is its digit's word (7_jackson_0.wav: 'seven')")
    p.set_defaults(func=cmd_data_audio_folder)
    p = data.add_parser("image-folder", help="write a manifest for class folders of images (DIR/<class>/*.png, "
                                             "or DIR/{train,val,test}/<class>/*.png)")
    p.add_argument("folder")
    p.add_argument("--out", required=True, help="manifest path (.jsonl); image paths are written relative to it")
    p.add_argument("--val-fraction", type=float, dest="val_fraction",
                   help="share of each class drawn for val (default 0.1; not with train/val/test folders)")
    p.add_argument("--test-fraction", type=float, dest="test_fraction",
                   help="share of each class drawn for test (default 0.1; not with train/val/test folders)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split draw")
    p.set_defaults(func=cmd_data_image_folder)
    p = data.add_parser("parallel", help="a translation manifest from sentence-aligned files "
                                         "FOLDER/{train,val,test}.LANG[.gz]")
    p.add_argument("folder")
    p.add_argument("--source", required=True, help="the source language's file suffix (de for train.de.gz)")
    p.add_argument("--target", required=True, help="the target language's file suffix")
    p.add_argument("--out", required=True, help="manifest path (.jsonl)")
    p.set_defaults(func=cmd_data_parallel)
    p = data.add_parser("idx", help="unpack IDX images and labels (MNIST format, gzipped or not) into PNGs "
                                    "and a manifest")
    p.add_argument("images", help="IDX images file (magic 0x00000803)")
    p.add_argument("labels", help="IDX labels file (magic 0x00000801)")
    p.add_argument("--out", required=True, help="output folder: images/ and manifest.jsonl")
    p.add_argument("--splits", help="half-open index ranges, e.g. train=0:8000,test=8000:10000; indices "
                                    "outside every range are left out (default: all train)")
    p.set_defaults(func=cmd_data_idx)
    p = data.add_parser("tokenizer", help="train a WordPiece tokenizer on a manifest's text")
    p.add_argument("manifest")
    p.add_argument("--out", required=True, help="tokenizer.json path or folder")
    vocab = DataConfig.RANGES["vocab_size"]
    p.add_argument("--vocab-size", type=_whole(vocab.lo, vocab.hi), default=1000, dest="vocab_size",
                   help=f"tokens, {vocab.lo} to {vocab.hi:,} (default 1000)")
    p.set_defaults(func=cmd_data_tokenizer)

    from .registry import task_names
    recipe_help = ("YAML recipe or built-in recipe name (default: the task's own; "
                   "'omniformer recipes NAME' prints one with every key)")
    keys_epilog = ("Any recipe key can be overridden as --section.key=value, e.g. --finetune.steps=200 "
                   "--data.manifest=my.jsonl; 'omniformer recipes quickstart' lists every key with its default.")
    p = sub.add_parser("train", help="train a registered task from a recipe", epilog=keys_epilog)
    p.add_argument("task", choices=task_names(), help="the task to train")
    p.add_argument("--config", help=recipe_help)
    p.add_argument("--init", help="start from this checkpoint (pretraining or imported towers)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in out_dir")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier model in out_dir")
    p.set_defaults(func=cmd_train)

    for name, func, helptext in [("pretrain", cmd_pretrain, "pretrain on captions: MLM, matching, contrastive "
                                                            "(the same as 'train pretrain')"),
                                 ("finetune", cmd_finetune, "fine-tune question answering (the same as 'train qa')"),
                                 ("quickstart", cmd_quickstart, "the main job: data, tokenizer, pretrain, "
                                                                "fine-tune, evaluate, example answers")]:
        p = sub.add_parser(name, help=helptext, epilog=keys_epilog)
        p.add_argument("--config", help="YAML recipe or built-in recipe name (default: quickstart)")
        p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in out_dir")
        if name != "quickstart":
            p.add_argument("--overwrite", action="store_true", help="replace an earlier model in out_dir")
        if name == "finetune":
            p.add_argument("--init", help="pretrained checkpoint folder (default: train from scratch)")
        if name == "quickstart":
            p.add_argument("--json", help="also write the metrics as JSON here")
        p.set_defaults(func=func)

    p = sub.add_parser("evaluate", help="a checkpoint's metrics on a split, whatever its task",
                       epilog="Data settings can be overridden as --section.key=value, e.g. --data.manifest=other.jsonl")
    p.add_argument("--model", required=True, help="checkpoint folder (its task is read from it)")
    p.add_argument("--manifest", help="default: the data the model was trained on")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--asked", default="text,audio", help="qa: how to ask each question: text, audio or both (comma-separated)")
    p.add_argument("--device", default="auto", help="auto (a GPU if there is one), cpu, cuda, cuda:1, mps...")
    p.add_argument("--workers", type=_count, default=2, help="processes that read and preprocess the samples")
    p.add_argument("--threads", type=_threads, help="torch threads, 1 to 1024 (default: one per core other processes leave free)")
    p.add_argument("--json", help="also write the metrics as JSON here (top-level keys named for the metric)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("average", help="average checkpoints' weights into one (checkpoint averaging)",
                       epilog="Train with --finetune.keep_checkpoints=N to keep the last N save_every steps in "
                              "RUN/TASK/steps/, then: omniformer average RUN/TASK --last 5 --out RUN/TASK/averaged")
    p.add_argument("checkpoints", nargs="+", help="checkpoint folders, or one folder holding steps/")
    p.add_argument("--last", type=int, help="with one folder: average its newest N step checkpoints (default: all)")
    p.add_argument("--out", required=True, help="where to write the averaged checkpoint")
    p.set_defaults(func=cmd_average)

    p = sub.add_parser("predict", help="one prediction from a checkpoint, whatever its task",
                       epilog="The task's own inputs follow: 'omniformer predict --model DIR --help' lists them")
    p.add_argument("--model", required=True, help="checkpoint folder (its task is read from it)")
    p.add_argument("--device", default="cpu", help="cpu (default), auto, cuda, mps...")
    p.add_argument("--threads", type=_threads, help="torch threads, 1 to 1024 (default: one per core other processes leave free)")
    p.add_argument("--json", action="store_true", help="print the prediction as JSON")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("recipes", help="list the built-in recipes, or print one with every key and default")
    p.add_argument("name", nargs="?", help="a built-in recipe name or a YAML file")
    p.set_defaults(func=cmd_recipes)

    p = sub.add_parser("ask", help="answer one question about an image, asked in text or speech")
    p.add_argument("--model", required=True, help="QA checkpoint folder")
    p.add_argument("--image", required=True)
    p.add_argument("--question", type=_text, help="the question in text (UTF-8)")
    p.add_argument("--audio", help="the question as a recording (WAV, FLAC, OGG)")
    p.add_argument("--top-k", type=_top_k, dest="top_k",
                   help="how many answers, 1 to the answers the model knows (default 5, or all if fewer)")
    p.set_defaults(func=cmd_ask)

    p = sub.add_parser("translate", help="translate sentences with a translate checkpoint")
    p.add_argument("--model", required=True, help="translate checkpoint folder")
    p.add_argument("texts", nargs="*", metavar="TEXT", type=_text,
                   help="sentences to translate (none or '-': one a line from standard input)")
    p.add_argument("--device", default="cpu", help="cpu (default), auto, cuda, mps...")
    p.add_argument("--threads", type=_threads, help="torch threads, 1 to 1024 (default: one per core other processes leave free)")
    from .generation_flags import add_generation_arguments
    add_generation_arguments(p)
    p.set_defaults(func=cmd_translate)

    p = sub.add_parser("caption", help="caption images (or recordings) with a caption checkpoint")
    p.add_argument("--model", required=True, help="caption checkpoint folder")
    p.add_argument("files", nargs="+", metavar="FILE", help="images (PNG, JPEG, ...), or recordings for a model that hears")
    p.add_argument("--device", default="cpu", help="cpu (default), auto, cuda, mps...")
    p.add_argument("--threads", type=_threads, help="torch threads, 1 to 1024 (default: one per core other processes leave free)")
    add_generation_arguments(p)
    p.set_defaults(func=cmd_caption)

    p = sub.add_parser("generate", help="write text with any checkpoint that has a text decoder (translate, caption, "
                                        "pretraining with objectives.next_word)",
                       description="Write text with a translate, caption or pretraining (objectives.next_word > 0) "
                                   "checkpoint: give the source it reads (--text to translate; --image or --audio to "
                                   "caption; a pretraining decoder continues --prompt alone or reads --image/--audio) "
                                   "and, optionally, the words the output must start with (--prompt). The text "
                                   "printed includes the prompt.")
    p.add_argument("--model", required=True, metavar="DIR", help="checkpoint folder (its task is read from it)")
    p.add_argument("--prompt", type=_text, metavar="TEXT", help="the text the output must start with (UTF-8)")
    p.add_argument("--text", type=_text, metavar="TEXT", help="the source text (a translate checkpoint)")
    p.add_argument("--image", metavar="FILE", help="an image (PNG, JPEG, ...): a caption or pretraining checkpoint")
    p.add_argument("--audio", metavar="FILE", help="a recording (WAV, FLAC, OGG): a checkpoint that hears")
    p.add_argument("--stream", action="store_true",
                   help="print the text as it is made, token by token (greedy or --sample; one beam)")
    p.add_argument("--device", default="cpu", help="cpu (default), auto, cuda, mps...")
    p.add_argument("--threads", type=_threads, help="torch threads, 1 to 1024 (default: one per core other processes leave free)")
    add_generation_arguments(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("transcribe", help="transcribe recordings with a speech recognition (asr) checkpoint")
    p.add_argument("--model", required=True, help="asr checkpoint folder")
    p.add_argument("files", nargs="+", metavar="FILE", help="recordings (WAV, FLAC, OGG), any length up to 15 min")
    p.add_argument("--json", action="store_true", help="JSON with each word's start and end in seconds")
    p.add_argument("--decoder", choices=["greedy", "beam"], help="default: the recipe's")
    p.add_argument("--device", default="cpu", help="cpu (default), auto, cuda, mps...")
    p.add_argument("--threads", type=_threads, help="torch threads, 1 to 1024 (default: one per core other processes leave free)")
    p.set_defaults(func=cmd_transcribe)

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


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings (data skipped, a recipe key read from its old place) as one line, no source."""
    print(f"omniformer: warning: {message}", file=sys.stderr if file is None else file)


def main(argv: list[str] | None = None) -> int:
    warnings.showwarning = _show_warning
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["predict"]:  # the task's own options are parsed once its checkpoint is known
        args, rest = parser.parse_known_args(argv)
        if "-h" in rest or "--help" in rest:
            if args.model is None:
                parser.parse_args(["predict", "--help"])
        args.task_args, rest = rest, []
    else:
        args, rest = parser.parse_known_args(argv)
    overrides = [a for a in rest if a.startswith("--") and "=" in a]
    stray = [a for a in rest if a not in overrides]
    if stray:
        parser.error(f"unrecognised arguments: {' '.join(stray)} (recipe overrides look like --section.key=value)")
    if overrides and args.command not in ("train", "pretrain", "finetune", "quickstart", "evaluate", "recipes"):
        parser.error(f"{args.command} takes no recipe overrides: {' '.join(overrides)}")
    if args.command in ("evaluate", "predict", "translate", "caption", "generate", "transcribe"):
        # the user's count, else the cores other processes leave free
        from .train.threads import configure_threads
        configure_threads(getattr(args, "threads", None) or 0)
    try:
        return args.func(args, overrides)
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError, OSError) as e:
        print(f"omniformer {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug, not the user's input: still one line, and the way to see more
        if os.environ.get("OMNIFORMER_TRACEBACK"):
            raise
        print(f"omniformer {args.command}: error: {type(e).__name__}: {e}\n"
              f"omniformer {args.command}: this is a bug in omniformer; please report it with the command "
              f"(OMNIFORMER_TRACEBACK=1 shows where it happened)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
