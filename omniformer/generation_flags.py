"""The decoding options as command-line flags, shared by every command that generates text
(``translate``, ``predict`` of a generating task); kept free of heavy imports so that building
the parser stays fast."""
from __future__ import annotations

import argparse
from typing import Any


def add_generation_arguments(parser: argparse.ArgumentParser) -> None:
    """The decoding options as flags (default: the recipe's)."""
    g = parser.add_argument_group("decoding (default: the recipe's)")
    g.add_argument("--num-beams", type=int, dest="num_beams", help="beam width (1: greedy or sampling)")
    g.add_argument("--length-penalty", type=float, dest="length_penalty", help="beam score / new tokens**this")
    g.add_argument("--max-new-tokens", type=int, dest="max_new_tokens")
    g.add_argument("--min-new-tokens", type=int, dest="min_new_tokens")
    g.add_argument("--sample", action="store_true", dest="do_sample", default=None, help="sample instead of searching")
    g.add_argument("--temperature", type=float)
    g.add_argument("--top-k", type=int, dest="top_k")
    g.add_argument("--top-p", type=float, dest="top_p")
    g.add_argument("--repetition-penalty", type=float, dest="repetition_penalty")
    g.add_argument("--no-repeat-ngram-size", type=int, dest="no_repeat_ngram_size")
    g.add_argument("--seed", type=int, help="the sampler's seed")


GENERATION_FLAGS = ("num_beams", "length_penalty", "max_new_tokens", "min_new_tokens", "do_sample", "temperature",
                    "top_k", "top_p", "repetition_penalty", "no_repeat_ngram_size", "seed")


def generation_options(args: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(args, k) for k in GENERATION_FLAGS if getattr(args, k, None) is not None}
