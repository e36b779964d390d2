"""WER, CER and their counts equal to jiwer's (default transforms) on chosen and generated
corpora; the edit counts of one alignment; metrics per ``meta`` group."""
from __future__ import annotations

import jiwer
import pytest
from hypothesis import given, settings, strategies as st

from omniformer.tasks.asr.metrics import asr_metrics, character_error_rate, edit_ops, error_counts, word_error_rate

CASES = [
    ("the cat sat", "the cat sat"),              # no error
    ("the cat sat", "the cat sat on the mat"),   # insertions only
    ("the cat sat on the mat", "the mat"),       # deletions only
    ("one two three", ""),                       # empty hypothesis
    ("  many   spaces here ", "many spaces  there"),
    ("Case Matters", "case matters"),            # case counts
    ("a b c d", "a x c y z"),                    # a bit of everything
    ("ab ba", "ba ab"),
]


@pytest.mark.parametrize("ref, hyp", CASES)
def test_rates_match_jiwer_on_chosen_sentences(ref, hyp):
    assert word_error_rate([ref], [hyp]) == pytest.approx(jiwer.wer(ref, hyp))
    assert character_error_rate([ref], [hyp]) == pytest.approx(jiwer.cer(ref, hyp))


def test_rates_match_jiwer_on_a_chosen_corpus():
    refs, hyps = [r for r, _ in CASES], [h for _, h in CASES]
    assert word_error_rate(refs, hyps) == pytest.approx(jiwer.wer(refs, hyps))
    assert character_error_rate(refs, hyps) == pytest.approx(jiwer.cer(refs, hyps))


def test_known_values():
    assert word_error_rate(["a b c d"], ["a b"]) == 0.5
    assert word_error_rate(["a b"], ["a b c d"]) == 1.0  # insertions can take WER past 1
    # cer keeps the spaces between words and, inside, as many as there are: "a  b" has 4 characters
    assert character_error_rate(["a  b"], ["a b"]) == 0.25 == jiwer.cer("a  b", "a b")
    assert character_error_rate([" ab "], ["ab"]) == 0.0  # the ends are stripped
    assert word_error_rate(["a  b "], [" a b"]) == 0.0


def test_whitespace_exactly_as_jiwer():
    for ref, hyp in [("a\tb", "a b"), ("a\nb c", "a b c"), ("a\t\tb", "a b")]:
        assert word_error_rate([ref], [hyp]) == pytest.approx(jiwer.wer(ref, hyp))


def test_empty_references_as_jiwer():
    assert word_error_rate(["", "a b"], ["x", "a b"]) == pytest.approx(jiwer.wer(["", "a b"], ["x", "a b"]))
    assert character_error_rate(["  ", "ab"], ["x", "ab"]) == pytest.approx(jiwer.cer(["  ", "ab"], ["x", "ab"]))
    assert word_error_rate([""], ["x y"]) == jiwer.wer("", "x y") == 2
    assert word_error_rate([""], [""]) == jiwer.wer("", "") == 0


def test_bad_input():
    with pytest.raises(ValueError, match="differ"):
        word_error_rate(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="differ"):
        character_error_rate(["a"], [])
    with pytest.raises(ValueError, match="unit"):
        error_counts(["a"], ["a"], unit="phone")


# -- generated corpora --------------------------------------------------------------------------

text = st.text(alphabet="ab ", max_size=12)
corpus = st.lists(st.tuples(text.filter(lambda s: s.strip()), text), min_size=1, max_size=4)


@settings(max_examples=200, deadline=None)
@given(corpus)
def test_rates_match_jiwer(pairs):
    refs, hyps = [r for r, _ in pairs], [h for _, h in pairs]
    assert word_error_rate(refs, hyps) == pytest.approx(jiwer.wer(refs, hyps))
    assert character_error_rate(refs, hyps) == pytest.approx(jiwer.cer(refs, hyps))
    words = error_counts(refs, hyps, "word")
    assert words["reference_length"] == sum(len(r.split()) for r in refs)
    chars = error_counts(refs, hyps, "char")
    assert chars["reference_length"] == sum(len(r.strip()) for r in refs)


@settings(max_examples=200, deadline=None)
@given(corpus)
def test_counts_match_jiwer(pairs):
    refs, hyps = [r for r, _ in pairs], [h for _, h in pairs]
    for unit, process in (("word", jiwer.process_words), ("char", jiwer.process_characters)):
        ours, theirs = error_counts(refs, hyps, unit), process(refs, hyps)
        assert (ours["hits"], ours["substitutions"], ours["deletions"], ours["insertions"]) == \
               (theirs.hits, theirs.substitutions, theirs.deletions, theirs.insertions)


def levenshtein(a, b) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from("abc"), max_size=8), st.lists(st.sampled_from("abc"), max_size=8))
def test_edit_ops_is_one_minimum_alignment(ref, hyp):
    hits, subs, dels, ins = edit_ops(ref, hyp)
    assert subs + dels + ins == levenshtein(ref, hyp)
    assert hits + subs + dels == len(ref) and hits + subs + ins == len(hyp)
    assert min(hits, subs, dels, ins) >= 0


def test_edit_ops_on_chosen_sequences():
    assert edit_ops("abcd", "abcd") == (4, 0, 0, 0)
    assert edit_ops("abcd", "axcd") == (3, 1, 0, 0)
    assert edit_ops("abcd", "ab") == (2, 0, 2, 0)
    assert edit_ops("ab", "abcd") == (2, 0, 0, 2)
    assert edit_ops("", "ab") == (0, 0, 0, 2) and edit_ops("ab", "") == (0, 0, 2, 0)
    assert edit_ops(["the", "cat"], ["the", "hat"]) == (1, 1, 0, 0)  # any sequence: words too


# -- metrics by group ---------------------------------------------------------------------------

def test_asr_metrics_overall_and_by_group():
    refs = ["a b", "c d", "a c", "b d"]
    hyps = ["a b", "c x", "a", "b d"]
    samples = [{"meta": {"held": True, "voice": "v1"}}, {"meta": {"held": False, "voice": "v2"}},
               {"meta": {"held": False, "voice": "v1"}}, {"meta": {"voice": "v2"}}]
    m = asr_metrics(refs, hyps, samples, ["held", "voice"])
    assert m["wer"] == pytest.approx(2 / 8) and m["cer"] == pytest.approx(jiwer.cer(refs, hyps))
    assert m["sentence_error_rate"] == 0.5
    # a boolean key: KEY/... and non_KEY/...; any other: KEY/VALUE/...; a sample without the key: neither
    assert m["held/wer"] == 0.0 and m["non_held/wer"] == pytest.approx(2 / 4)
    assert m["voice/v1/wer"] == pytest.approx(1 / 4) and m["voice/v2/wer"] == pytest.approx(1 / 4)
    assert m["voice/v1/cer"] == pytest.approx(jiwer.cer(["a b", "a c"], ["a b", "a"]))
    assert {k for k in m if "/" in k} >= {"held/wer", "held/cer", "non_held/wer", "non_held/cer",
                                          "voice/v1/wer", "voice/v1/cer", "voice/v2/wer", "voice/v2/cer"}
    assert all(isinstance(v, float) for v in m.values())


def test_asr_metrics_without_groups():
    m = asr_metrics(["a b"], ["a  b "])
    assert m == {"wer": 0.0, "cer": pytest.approx(1 / 3), "sentence_error_rate": 0.0}
    assert set(asr_metrics(["a"], ["a"], [{"meta": {"x": 1}}], ())) == {"wer", "cer", "sentence_error_rate"}
