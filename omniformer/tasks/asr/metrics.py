"""Word and character error rates, counted as jiwer counts them (its default transforms), and
grouped by ``meta`` keys."""
from __future__ import annotations

import re
from collections import defaultdict
from typing import Any, Sequence

_RUNS = re.compile(r"\s\s+")


def edit_ops(ref: Sequence, hyp: Sequence) -> tuple[int, int, int, int]:
    """(hits, substitutions, deletions, insertions) of the minimum-edit alignment of ``hyp`` to
    ``ref`` that jiwer picks, so that the counts, not only their total, equal jiwer's.

    As rapidfuzz (which jiwer calls): the common prefix and suffix are hits, the rest a
    Levenshtein table walked back from its end taking a deletion where one is optimal, else an
    insertion, else the diagonal (a hit or a substitution)."""
    ref, hyp = list(ref), list(hyp)
    shorter = min(len(ref), len(hyp))
    head = 0
    while head < shorter and ref[head] == hyp[head]:
        head += 1
    tail = 0
    while tail < shorter - head and ref[-1 - tail] == hyp[-1 - tail]:
        tail += 1
    r, h = ref[head:len(ref) - tail], hyp[head:len(hyp) - tail]
    # cost[j][i]: edits between r[:i] and h[:j]
    cost = [list(range(len(r) + 1))]
    for j, y in enumerate(h, 1):
        above, row = cost[-1], [j]
        for i, x in enumerate(r, 1):
            row.append(min(above[i] + 1, row[i - 1] + 1, above[i - 1] + (x != y)))
        cost.append(row)
    hits, subs, dels, ins = head + tail, 0, 0, 0
    i, j = len(r), len(h)
    while i and j:
        if cost[j][i] - cost[j][i - 1] == 1:
            dels, i = dels + 1, i - 1
            continue
        j -= 1
        if j and cost[j][i] - cost[j][i - 1] == -1:
            ins += 1
            continue
        i -= 1
        if r[i] == h[j]:
            hits += 1
        else:
            subs += 1
    return hits, subs, dels + i, ins + j


def _words(text: str) -> list[str]:
    # jiwer's wer_default: a run of 2+ whitespace characters becomes a space, the ends are
    # stripped, and words are split on " " alone (a lone tab stays inside its word)
    return [w for w in _RUNS.sub(" ", text).strip().split(" ") if w]


def _chars(text: str) -> list[str]:
    return list(text.strip())  # as jiwer.cer: ends stripped, inner spaces kept as they are


def error_counts(references: Sequence[str], hypotheses: Sequence[str], unit: str = "word") -> dict[str, int]:
    """Summed hits, substitutions, deletions, insertions and reference length over the corpus
    (``unit`` "word" or "char"); an empty reference adds its hypothesis as insertions."""
    if len(references) != len(hypotheses):
        raise ValueError(f"references and hypotheses differ in number: {len(references)} vs {len(hypotheses)}")
    if unit not in ("word", "char"):
        raise ValueError(f"unit: expected word or char, got {unit!r}")
    split = _words if unit == "word" else _chars
    totals = {"hits": 0, "substitutions": 0, "deletions": 0, "insertions": 0, "reference_length": 0}
    for ref, hyp in zip(references, hypotheses):
        r, h = split(ref), split(hyp)
        hits, subs, dels, ins = edit_ops(r, h)
        for key, value in zip(("hits", "substitutions", "deletions", "insertions", "reference_length"),
                              (hits, subs, dels, ins, len(r))):
            totals[key] += value
    return totals


def _rate(counts: dict[str, int]) -> float:
    errors = counts["substitutions"] + counts["deletions"] + counts["insertions"]
    # as jiwer: with no reference word at all, the rate is the number of insertions
    return errors / counts["reference_length"] if counts["reference_length"] else float(errors)


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """(S + D + I) / reference words over the corpus, words as ``jiwer.wer`` splits them."""
    return _rate(error_counts(references, hypotheses, "word"))


def character_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """(S + D + I) / reference characters, ends stripped and inner spaces counted (``jiwer.cer``)."""
    return _rate(error_counts(references, hypotheses, "char"))


def asr_metrics(references: Sequence[str], hypotheses: Sequence[str], samples: Sequence[dict] | None = None,
                groups: Sequence[str] = ()) -> dict[str, float]:
    """``wer``, ``cer``, ``sentence_error_rate``, and per value of each ``meta`` key in ``groups``
    ``KEY/VALUE/wer`` (a boolean key: ``KEY/wer`` and ``non_KEY/wer``), likewise ``/cer``."""
    out = {"wer": word_error_rate(references, hypotheses), "cer": character_error_rate(references, hypotheses),
           "sentence_error_rate": sum(_words(r) != _words(h)
                                      for r, h in zip(references, hypotheses)) / max(len(references), 1)}
    if samples is None or not groups:
        return out
    by: dict[str, tuple[list[str], list[str]]] = defaultdict(lambda: ([], []))
    for sample, ref, hyp in zip(samples, references, hypotheses):
        meta: dict[str, Any] = sample.get("meta", {})
        for key in groups:
            if key not in meta:
                continue
            value = meta[key]
            name = (key if value else f"non_{key}") if isinstance(value, bool) else f"{key}/{value}"
            by[name][0].append(ref)
            by[name][1].append(hyp)
    for name in sorted(by):
        refs, hyps = by[name]
        out[f"{name}/wer"] = word_error_rate(refs, hyps)
        out[f"{name}/cer"] = character_error_rate(refs, hyps)
    return out
