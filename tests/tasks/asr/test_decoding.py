"""CTC decoding: the greedy collapse, the prefix beam search (exact sums over paths, a closed
word list, pruning, frames), word timings and text, on hand-built and random log-probabilities."""
from __future__ import annotations

import itertools
import math
import random

import pytest
import torch

from omniformer.tasks.asr.decoding import (Hypothesis, Lexicon, greedy_decode, prefix_beam_search, to_text,
                                           word_timings)

# label 0 is the blank, 1 the space
ABC = ["", " ", "a", "b", "c"]
ZERO = ["", " ", "e", "n", "o", "r", "z"]


def probs(alphabet, *rows: dict[str, float], floor: float = 1e-4) -> torch.Tensor:
    """(T, V) log-probabilities from rows of {character: probability} ("" the blank), the rest
    ``floor``, each row renormalised."""
    index = {c: i for i, c in enumerate(alphabet)}
    table = torch.full((len(rows), len(alphabet)), floor)
    for t, row in enumerate(rows):
        for ch, p in row.items():
            table[t, index[ch]] = p
    return (table / table.sum(-1, keepdim=True)).log()


def peaked(ids: list[int], vocab: int, off: float = -30.0) -> torch.Tensor:
    lp = torch.full((len(ids), vocab), off)
    lp[torch.arange(len(ids)), torch.tensor(ids)] = 0.0
    return lp.log_softmax(-1)


def exact_prefixes(lp: torch.Tensor, blank: int = 0) -> dict[tuple[int, ...], float]:
    """Every labelling's log-probability, summed over all its paths by enumeration."""
    rows = lp.tolist()
    total: dict[tuple[int, ...], float] = {}
    for path in itertools.product(range(len(rows[0])), repeat=len(rows)):
        out, previous = [], blank
        for v in path:
            if v != blank and v != previous:
                out.append(v)
            previous = v
        p = math.exp(sum(rows[t][v] for t, v in enumerate(path)))
        total[tuple(out)] = total.get(tuple(out), 0.0) + p
    return {k: math.log(v) for k, v in total.items()}


def text(hyp: Hypothesis, alphabet=ABC) -> str:
    return to_text(hyp.tokens, alphabet)


# -- greedy -------------------------------------------------------------------------------------

def test_greedy_collapses_repeats_drops_blanks_and_keeps_first_frames():
    #        a    a    -    a    b    b    -    -    c
    ids = [2, 2, 0, 2, 3, 3, 0, 0, 4]
    lp = peaked(ids, 5, off=-3.0)
    (hyp,) = greedy_decode(lp)  # (T, V) gives a list of one
    assert hyp.tokens == [2, 2, 3, 4] and text(hyp) == "aabc"
    assert hyp.frames == [0, 3, 4, 8]
    assert hyp.score == pytest.approx(lp.max(-1).values.sum().item())


def test_greedy_batch_respects_lengths():
    ids = [2, 2, 0, 2, 3, 3, 0, 0, 4]
    lp = peaked(ids, 5, off=-3.0)
    batch = torch.stack([lp, lp, lp])
    hyps = greedy_decode(batch, torch.tensor([9, 4, 0]))
    assert [text(h) for h in hyps] == ["aabc", "aa", ""]
    assert hyps[1].frames == [0, 3] and hyps[2].frames == []
    assert hyps[1].score == pytest.approx(lp[:4].max(-1).values.sum().item())
    assert hyps[2].score == 0.0


def test_greedy_other_blank_id():
    lp = peaked([4, 4, 2, 4, 0], 5, off=-3.0)  # blank is 4: "a" then "" (label 0)
    assert greedy_decode(lp, blank=4)[0].tokens == [2, 0]


def test_greedy_refuses_bad_shapes():
    with pytest.raises(ValueError, match="log_probs"):
        greedy_decode(torch.zeros(5))
    with pytest.raises(ValueError, match="log_probs"):
        greedy_decode(torch.zeros(1, 2, 3, 4))


def test_greedy_refuses_lengths_that_do_not_fit():
    with pytest.raises(ValueError, match="lengths"):
        greedy_decode(torch.zeros(2, 3, 5), torch.tensor([3]))


# -- prefix beam search ---------------------------------------------------------------------------

def test_beam_equals_greedy_on_peaked_frames():
    rng = random.Random(0)
    for _ in range(30):
        ids = [rng.randrange(5) for _ in range(rng.randint(1, 20))]
        lp = peaked(ids, 5)
        greedy = greedy_decode(lp)[0]
        for width in (1, 4, 8):
            best = prefix_beam_search(lp, beam=width)[0]
            assert best.tokens == greedy.tokens and best.frames == greedy.frames
            assert best.score == pytest.approx(greedy.score, abs=1e-6)


def test_beam_sums_paths_that_the_best_path_misses():
    # Best path: blank, blank = 0.36, so greedy says "". But "a" has a-a, a-blank and blank-a:
    # 0.24 + 0.24 + 0.16 = 0.64.
    lp = probs(ABC, {"": 0.6, "a": 0.4}, {"": 0.6, "a": 0.4}, floor=0.0)
    assert greedy_decode(lp)[0].tokens == []
    found = prefix_beam_search(lp, beam=4)
    assert [text(h) for h in found[:2]] == ["a", ""]
    assert math.exp(found[0].score) == pytest.approx(0.64, rel=1e-5)
    assert math.exp(found[1].score) == pytest.approx(0.36, rel=1e-5)


def test_a_wide_beam_is_exact():
    """Unpruned and wide enough to keep every prefix, the search is the sum over all paths."""
    gen = torch.Generator().manual_seed(1)
    for _ in range(4):
        lp = torch.randn(5, 4, generator=gen).mul(1.5).log_softmax(-1)
        exact = exact_prefixes(lp)
        found = [h for h in prefix_beam_search(lp, beam=10_000, prune=-math.inf) if h.score > -math.inf]
        assert len(found) == len(exact)
        assert {tuple(h.tokens): h.score for h in found} == pytest.approx(exact, abs=1e-9)
        assert found[0].score == pytest.approx(max(exact.values()))
        assert [h.score for h in found] == sorted((h.score for h in found), reverse=True)


def test_beam_returns_at_most_beam_best_first_with_a_frame_per_label():
    gen = torch.Generator().manual_seed(2)
    for width in (1, 3, 8):
        lp = torch.randn(40, 5, generator=gen).mul(2).log_softmax(-1)
        found = prefix_beam_search(lp, beam=width)
        assert 1 <= len(found) <= width
        assert [h.score for h in found] == sorted((h.score for h in found), reverse=True)
        assert len({tuple(h.tokens) for h in found}) == len(found)
        for h in found:
            assert len(h.frames) == len(h.tokens) and h.frames == sorted(set(h.frames))
            assert all(0 <= f < 40 for f in h.frames)


def test_beam_returns_only_possible_prefixes():
    lp = probs(ABC, {"a": 0.5, "b": 0.5}, {"a": 0.5, "b": 0.5}, floor=0.0)
    found = prefix_beam_search(lp, beam=16)
    assert all(h.score > -math.inf for h in found)
    assert sorted(text(h) for h in found) == ["a", "ab", "b", "ba"]


def test_beam_one_keeps_a_single_prefix():
    lp = probs(ABC, {"a": 0.7, "b": 0.3}, {"": 0.9}, {"b": 0.8, "c": 0.2})
    (only,) = prefix_beam_search(lp, beam=1)
    assert text(only) == "ab" and only.frames == [0, 2]
    with pytest.raises(ValueError, match="beam"):
        prefix_beam_search(lp, beam=0)


def test_prune_keeps_the_frames_best_label():
    gen = torch.Generator().manual_seed(3)
    for _ in range(10):
        lp = torch.randn(25, 5, generator=gen).mul(2).log_softmax(-1)
        best = lp.argmax(-1).tolist()
        for h in prefix_beam_search(lp, beam=8, prune=0.0):  # only each frame's best label survives
            assert h.tokens and all(best[f] == v for v, f in zip(h.tokens, h.frames))


def test_beam_refuses_bad_arguments():
    with pytest.raises(ValueError, match="log_probs"):
        prefix_beam_search(torch.zeros(2, 3, 5))
    with pytest.raises(ValueError, match="space"):
        prefix_beam_search(torch.zeros(3, 5), lexicon=Lexicon(["ab"], ABC))


# -- the word list ------------------------------------------------------------------------------

def zer_o() -> torch.Tensor:
    """Frames that spell "zer o": the fourth frame takes the gap for a space."""
    return probs(ZERO, {"z": 0.9}, {"e": 0.9}, {"r": 0.9}, {" ": 0.55, "": 0.1, "o": 0.35}, {"o": 0.9})


def test_lexicon_turns_a_near_miss_into_its_word():
    lp = zer_o()
    assert to_text(greedy_decode(lp)[0].tokens, ZERO) == "zer o"
    assert to_text(prefix_beam_search(lp)[0].tokens, ZERO) == "zer o"
    best = prefix_beam_search(lp, lexicon=Lexicon(["zero", "one"], ZERO), space=1)[0]
    assert to_text(best.tokens, ZERO) == "zero" and best.frames == [0, 1, 2, 3]


def test_lexicon_results_only_hold_its_words():
    words = {"ab", "c", "bca", "cab"}
    lexicon = Lexicon(words, ABC)
    gen = torch.Generator().manual_seed(0)
    for _ in range(40):
        lp = torch.randn(int(torch.randint(3, 25, (1,), generator=gen)), 5, generator=gen).mul(2).log_softmax(-1)
        for h in prefix_beam_search(lp, beam=6, lexicon=lexicon, space=1):
            said = text(h)
            assert set(said.split()) <= words
            assert said == said.strip() and "  " not in said
            assert len(h.frames) == len(h.tokens)


def test_lexicon_space_only_after_a_whole_word():
    # The frames say " ab  c": a leading space, a double space; the list knows "ab" and "c".
    lp = probs(ABC, {" ": 0.9}, {"a": 0.9}, {"b": 0.9}, {" ": 0.9}, {"": 0.9}, {" ": 0.9}, {"c": 0.9})
    assert text(prefix_beam_search(lp)[0]) == " ab  c"
    assert text(prefix_beam_search(lp, lexicon=Lexicon(["ab", "c"], ABC), space=1)[0]) == "ab c"


def test_lexicon_merges_a_trailing_space():
    lp = probs(ABC, {"a": 1.0}, {"b": 1.0}, {"": 0.5, " ": 0.5}, floor=0.0)
    found = prefix_beam_search(lp, lexicon=Lexicon(["ab"], ABC), space=1)
    assert [text(h) for h in found] == ["ab"]
    assert found[0].score == pytest.approx(0.0, abs=1e-6)


def test_lexicon_falls_back_to_a_word_boundary():
    # "ab" then "c": the list has "ab" and "cab", so the text stops mid-word at the end.
    lp = probs(ABC, {"a": 0.9}, {"b": 0.9}, {" ": 0.9}, {"c": 0.9}, {"a": 0.9})
    found = prefix_beam_search(lp, beam=2, lexicon=Lexicon(["ab", "cab"], ABC), space=1)
    assert found and text(found[0]) in ("ab", "")


def test_lexicon_errors():
    with pytest.raises(ValueError, match=r"'bx'.*'x'"):
        Lexicon(["ab", "bx"], ABC)
    with pytest.raises(ValueError, match="empty"):
        Lexicon([], ABC)


def test_lexicon_needs_the_space_in_the_alphabet():
    with pytest.raises(ValueError, match="alphabet"):
        Lexicon(["ab"], ["", "a", "b"])


# -- timings and text ---------------------------------------------------------------------------

def test_word_timings():
    hyp = Hypothesis(tokens=[1, 2, 3, 1, 1, 4, 2], frames=[0, 2, 5, 8, 9, 10, 14], score=-1.0)
    assert word_timings(hyp, ABC, 0.04) == [
        {"word": "ab", "start": pytest.approx(0.08), "end": pytest.approx(0.24)},
        {"word": "ca", "start": pytest.approx(0.40), "end": pytest.approx(0.60)}]
    assert word_timings(Hypothesis([], [], 0.0), ABC, 0.04) == []


def test_to_text():
    assert to_text([2, 1, 3, 4], ABC) == "a bc"
    assert to_text([], ABC) == ""


@pytest.mark.parametrize("lexicon", [False, True])
def test_beam_fed_in_pieces_decodes_as_the_whole(lexicon):
    """A live stream feeds the search a few frames at a time: the results, the leader's frames
    and the scores are those of one call over all frames, and a fork leaves its source as it was."""
    from omniformer.tasks.asr.decoding import PrefixBeamSearch
    rng = random.Random(3)
    lex = Lexicon(["ab", "ba", "cab", "c"], ABC) if lexicon else None
    for trial in range(20):
        lp = (torch.randn(30, len(ABC), generator=torch.Generator().manual_seed(trial)) * 3).log_softmax(-1)
        whole = prefix_beam_search(lp, beam=5, lexicon=lex, space=1)
        search, t = PrefixBeamSearch(5, lexicon=lex, space=1), 0
        while t < 30:
            n = rng.randint(1, 7)
            before = [(h.tokens, h.score) for h in search.results()]
            ahead = search.fork()
            ahead.advance(lp[t: t + 7])
            assert [(h.tokens, h.score) for h in search.results()] == before  # the fork changed nothing
            search.advance(lp[t: t + n])
            t += n
        assert search.frames == 30
        pieces = search.results()
        assert [h.tokens for h in pieces] == [h.tokens for h in whole]
        assert [h.frames for h in pieces] == [h.frames for h in whole]
        assert [h.score for h in pieces] == pytest.approx([h.score for h in whole])
