"""``omniformer import`` (Hugging Face checkpoints -> towers) and ``omniformer export`` (a task's graph -> ONNX)."""
from __future__ import annotations

import argparse


def cmd_import(args, overrides) -> int:
    from pathlib import Path

    from ..config import load_config, recipe_path
    from .hf import import_pretrained
    sources = {m: getattr(args, m) for m in ("text", "image", "audio") if getattr(args, m)}
    cfg = load_config(recipe_path(args.config or "from-pretrained"))
    if sources:  # the command line names the towers; the recipe's towers_from is ignored
        cfg.model.towers_from = sources
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise FileExistsError(f"--out: {args.out} is a file; give the folder to write the checkpoint into")
    out = import_pretrained(cfg, args.out, allow_unused=args.allow_unused, allow_missing=args.allow_missing)
    for m, source in cfg.model.towers_from.items():
        tower = getattr(cfg.model, m).tower
        print(f"  {m:<6} {source}: {tower.depth} layers, width {tower.width}, {tower.heads} heads")
    print(f"wrote {out}\nfine-tune with: omniformer finetune --config {out / 'recipe.yaml'} --init {out}")
    return 0


def cmd_export(args, overrides) -> int:
    from pathlib import Path

    from .onnx import export_checkpoint
    if Path(args.out).is_dir():
        raise IsADirectoryError(f"--out: {args.out} is a folder; give the file to write, e.g. {Path(args.out) / 'model.onnx'}")
    out = export_checkpoint(args.model, args.out, opset=args.opset)
    print(f"wrote {out} (and {out}.json)")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import", help="build a backbone whose towers come from Hugging Face checkpoints")
    p.add_argument("--config", help="YAML recipe with model.towers_from (default: from-pretrained)")
    p.add_argument("--out", required=True, help="output checkpoint folder")
    for m, kinds in (("text", "bert, roberta, clip_text"), ("image", "vit, clip_vision"), ("audio", "whisper")):
        p.add_argument(f"--{m}", metavar="KIND:PATH", help=f"{m} tower ({kinds}); overrides the recipe's towers_from")
    p.add_argument("--allow-unused", action="store_true", dest="allow_unused",
                   help="ignore checkpoint tensors the importer does not map")
    p.add_argument("--allow-missing", action="store_true", dest="allow_missing",
                   help="keep initial weights where checkpoint tensors are missing")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("export", help="export a trained checkpoint of any task with an ONNX graph (qa, classify)")
    p.add_argument("--model", required=True, help="checkpoint folder (its task is read from it)")
    p.add_argument("--format", default="onnx", choices=["onnx"])
    p.add_argument("--out", required=True, help="output file, e.g. model.onnx")
    p.add_argument("--opset", type=int, default=17)
    p.set_defaults(func=cmd_export)
