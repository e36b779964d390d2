"""CTC decoders and error rates: greedy collapse, the prefix beam search summing paths and
keeping to a word list, word timings, and WER/CER equal to jiwer's."""
import math
import random

import jiwer
import pytest
import torch
from hypothesis import given, settings, strategies as st

from omniformer.tasks.asr.decoding import (Hypothesis, Lexicon, best_hypothesis, greedy_decode, prefix_beam_search, to_text,
                                           word_timings)
from omniformer.tasks.asr.metrics import asr_metrics, character_error_rate, error_counts, word_error_rate

ALPHABET = ["", " ", "a", "b", "c"]  # label 0 blank, 1 space


def frames(*rows):
    return torch.tensor(rows, dtype=torch.float).clamp(min=1e-6).log()


def test_greedy_collapses_repeats_and_blanks_and_respects_lengths():
    lp = frames([0, 0, 1, 0, 0], [0, 0, 1, 0, 0], [1, 0, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 0, 1, 0])
    hyp = greedy_decode(lp)[0]
    assert to_text(hyp.tokens, ALPHABET) == "aab" and hyp.frames == [0, 3, 4]
    batch = torch.stack([lp, lp])
    assert [to_text(h.tokens, ALPHABET) for h in greedy_decode(batch, torch.tensor([5, 2]))] == ["aab", "a"]


def test_beam_equals_greedy_on_peaked_frames():
    rng = random.Random(0)
    for _ in range(20):
        ids = [rng.randrange(5) for _ in range(12)]
        lp = torch.full((12, 5), -20.0)
        lp[torch.arange(12), torch.tensor(ids)] = 0.0
        assert prefix_beam_search(lp, beam=4)[0].tokens == greedy_decode(lp)[0].tokens


def test_beam_sums_paths_that_the_best_path_misses():
    # Best path: blank, blank -> "" (0.36); but "a" has a-a, a-blank, blank-a = 0.64 in all.
    lp = frames([0.6, 0, 0.4, 0, 0], [0.6, 0, 0.4, 0, 0])
    assert greedy_decode(lp)[0].tokens == []
    best = prefix_beam_search(lp, beam=4)[0]
    assert to_text(best.tokens, ALPHABET) == "a" and math.isclose(math.exp(best.score), 0.64, rel_tol=1e-4)


def test_lexicon_turns_a_near_miss_into_a_word():
    # The frames slightly prefer "ac", the lexicon has "ab" and "b".
    lp = frames([0, 0, 0.9, 0.05, 0.05], [0.1, 0, 0, 0.4, 0.5])
    assert to_text(prefix_beam_search(lp)[0].tokens, ALPHABET) == "ac"
    lex = Lexicon(["ab", "b"], ALPHABET)
    assert to_text(prefix_beam_search(lp, lexicon=lex, space=1)[0].tokens, ALPHABET) == "ab"
    with pytest.raises(ValueError, match="'x'"):
        Lexicon(["ax"], ALPHABET)
    with pytest.raises(ValueError, match="empty"):
        Lexicon([], ALPHABET)


def test_lexicon_results_only_hold_its_words():
    lex_words = {"ab", "c", "bca"}
    lex = Lexicon(lex_words, ALPHABET)
    gen = torch.Generator().manual_seed(0)
    for _ in range(30):
        lp = torch.randn(15, 5, generator=gen).mul(2).log_softmax(-1)
        for hyp in prefix_beam_search(lp, beam=6, lexicon=lex, space=1):
            text = to_text(hyp.tokens, ALPHABET)
            assert set(text.split()) <= lex_words and text == text.strip() and "  " not in text


def test_a_word_outside_the_list_gives_the_best_path_not_nothing():
    lp = frames([0.01, 0.01, 0.01, 0.01, 0.96], [0.01, 0.01, 0.01, 0.01, 0.96])  # "c"; the list has "ab"
    lex = Lexicon(["ab"], ALPHABET)
    assert to_text(best_hypothesis(lp, lexicon=lex, space=1).tokens, ALPHABET) == "c"
    near = frames([0, 0, 0.9, 0.05, 0.05], [0.1, 0, 0, 0.4, 0.5])
    assert to_text(best_hypothesis(near, lexicon=lex, space=1).tokens, ALPHABET) == "ab"
    silent = frames([1, 0, 0, 0, 0])
    assert best_hypothesis(silent, lexicon=lex, space=1).tokens == []


def test_word_timings():
    hyp = Hypothesis([2, 3, 1, 4], [2, 5, 8, 10])
    assert word_timings(hyp, ALPHABET, 0.04) == [{"word": "ab", "start": 0.08, "end": 0.24},
                                                {"word": "c", "start": 0.4, "end": 0.44}]


@pytest.mark.parametrize("ref, hyp", [
    ("the cat sat", "the cat sat"), ("the cat sat", "the sat"), ("a b", "a x b y"), ("one two three", ""),
    ("  many   spaces here ", "many spaces  there"), ("Case Matters", "case matters")])
def test_rates_match_jiwer(ref, hyp):
    assert word_error_rate([ref], [hyp]) == pytest.approx(jiwer.wer(ref, hyp))
    assert character_error_rate([ref], [hyp]) == pytest.approx(jiwer.cer(ref, hyp))


sentence = st.lists(st.text(alphabet="abc", min_size=1, max_size=4), min_size=0, max_size=6).map(" ".join)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(sentence.filter(lambda s: s.strip()), sentence), min_size=1, max_size=4))
def test_corpus_rates_and_counts_match_jiwer(pairs):
    refs, hyps = [r for r, _ in pairs], [h for _, h in pairs]
    assert word_error_rate(refs, hyps) == pytest.approx(jiwer.wer(refs, hyps))
    assert character_error_rate(refs, hyps) == pytest.approx(jiwer.cer(refs, hyps))
    out = jiwer.process_words(refs, hyps)
    counts = error_counts(refs, hyps)
    errors = counts["substitutions"] + counts["deletions"] + counts["insertions"]
    assert errors == out.substitutions + out.deletions + out.insertions
    assert counts["reference_length"] == sum(len(r.split()) for r in refs)


def test_metric_groups_and_bad_input():
    samples = [{"meta": {"held": True, "voice": "v1"}}, {"meta": {"held": False, "voice": "v2"}}]
    m = asr_metrics(["a b", "c d"], ["a b", "c x"], samples, ["held", "voice"])
    assert m["wer"] == 0.25 and m["held/wer"] == 0 and m["non_held/wer"] == 0.5 and m["voice/v2/cer"] == 1 / 3
    assert m["sentence_error_rate"] == 0.5
    with pytest.raises(ValueError, match="differ in number"):
        word_error_rate(["a"], [])
