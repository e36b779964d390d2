"""Word and character error rates, counted as jiwer counts them (its default transforms), and
grouped by ``meta`` keys."""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Sequence


def edit_ops(ref: Sequence, hyp: Sequence) -> tuple[int, int, int, int]:
    """(hits, substitutions, deletions, insertions) of one minimum-edit alignment of ``hyp`` to ``ref``
    (the total of edits is the Levenshtein distance; how it splits may differ from jiwer's)."""
    n, m = len(ref), len(hyp)
    # cost table; each cell keeps (edits, hits) so that among minimum-edit paths the most hits win
    prev = [(j, 0, 0, 0, j) for j in range(m + 1)]  # (edits, hits, subs, dels, ins)
    for i in range(1, n + 1):
        cur = [(i, 0, 0, i, 0)]
        for j in range(1, m + 1):
            e, h, s, d, ins = prev[j - 1]
            diag = (e, h + 1, s, d, ins) if ref[i - 1] == hyp[j - 1] else (e + 1, h, s + 1, d, ins)
            e, h, s, d, ins = prev[j]
            up = (e + 1, h, s, d + 1, ins)
            e, h, s, d, ins = cur[j - 1]
            left = (e + 1, h, s, d, ins + 1)
            cur.append(min(diag, up, left, key=lambda c: (c[0], -c[1])))
        prev = cur
    _, hits, subs, dels, ins = prev[m]
    return hits, subs, dels, ins


def _words(text: str) -> list[str]:
    return text.split()


def _chars(text: str) -> list[str]:
    return list(text.strip())  # as jiwer.cer: ends stripped, inner spaces kept as they are


def error_counts(references: Sequence[str], hypotheses: Sequence[str], unit: str = "word") -> dict[str, int]:
    """Summed hits, substitutions, deletions, insertions and reference length over the corpus."""
    if len(references) != len(hypotheses):
        raise ValueError(f"references and hypotheses differ in number: {len(references)} vs {len(hypotheses)}")
    if unit not in ("word", "char"):
        raise ValueError(f"unit: expected word or char, got {unit!r}")
    split = _words if unit == "word" else _chars
    totals = {"hits": 0, "substitutions": 0, "deletions": 0, "insertions": 0, "reference_length": 0}
    for ref, hyp in zip(references, hypotheses):
        r, h = split(ref), split(hyp)
        if not r:
            raise ValueError(f"reference {ref!r} is empty; an error rate needs words to divide by")
        hits, subs, dels, ins = edit_ops(r, h)
        for key, value in zip(("hits", "substitutions", "deletions", "insertions", "reference_length"),
                              (hits, subs, dels, ins, len(r))):
            totals[key] += value
    return totals


def _rate(counts: dict[str, int]) -> float:
    errors = counts["substitutions"] + counts["deletions"] + counts["insertions"]
    return errors / max(counts["reference_length"], 1)


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """(S + D + I) / reference words over the corpus, words split on whitespace (``jiwer.wer``)."""
    return _rate(error_counts(references, hypotheses, "word"))


def character_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """(S + D + I) / reference characters, ends stripped and inner spaces counted (``jiwer.cer``)."""
    return _rate(error_counts(references, hypotheses, "char"))


def asr_metrics(references: Sequence[str], hypotheses: Sequence[str], samples: Sequence[dict] | None = None,
                groups: Sequence[str] = ()) -> dict[str, float]:
    """``wer``, ``cer``, ``sentence_error_rate``, and per value of each ``meta`` key in ``groups``
    ``KEY/VALUE/wer`` (a boolean key: ``KEY/wer`` and ``non_KEY/wer``), likewise ``/cer``."""
    out = {"wer": word_error_rate(references, hypotheses), "cer": character_error_rate(references, hypotheses),
           "sentence_error_rate": sum(" ".join(r.split()) != " ".join(h.split())
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
