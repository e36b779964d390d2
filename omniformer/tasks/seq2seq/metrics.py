"""Translation quality with sacrebleu, the reference implementation: corpus BLEU (detokenised,
cased, its 13a tokenisation: the figure papers report), BLEU lowercased, and chrF."""
from __future__ import annotations

from typing import Sequence


def translation_metrics(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float]:
    """``bleu``, ``bleu_lowercase`` and ``chrf`` (0 to 100), and ``exact`` (share of identical sentences)."""
    import sacrebleu
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    if not references:
        raise ValueError("no sentences to score")
    refs, hyps = [list(references)], list(hypotheses)
    return {"bleu": sacrebleu.corpus_bleu(hyps, refs).score,
            "bleu_lowercase": sacrebleu.corpus_bleu(hyps, refs, lowercase=True).score,
            "chrf": sacrebleu.corpus_chrf(hyps, refs).score,
            "exact": sum(r.strip() == h.strip() for r, h in zip(references, hypotheses)) / len(references)}
