"""CTC decoding in plain PyTorch and Python: the per-frame best path (greedy), a prefix beam
search that can keep to a closed word list, and word timings from the alignment."""
from __future__ import annotations

import copy
import heapq
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from torch import Tensor


@dataclass
class Hypothesis:
    """Emitted label ids (blanks and repeats collapsed), the frame where each was first
    emitted, and the path's log-probability."""
    tokens: list[int]
    frames: list[int]
    score: float = 0.0


def greedy_decode(log_probs: Tensor, lengths: Tensor | None = None, blank: int = 0) -> list[Hypothesis]:
    """The best label of each frame, repeats collapsed and blanks dropped; (B, T, V) or (T, V)."""
    if log_probs.dim() == 2:
        log_probs = log_probs[None]
    if log_probs.dim() != 3:
        raise ValueError(f"log_probs: expected (B, T, V) or (T, V), got shape {tuple(log_probs.shape)}")
    best, ids = log_probs.max(-1)
    batch, steps = log_probs.shape[:2]
    if lengths is None:
        lengths = [steps] * batch
    else:
        lengths = lengths.reshape(-1).tolist()
        if len(lengths) != batch or not all(0 <= n <= steps for n in lengths):
            raise ValueError(f"lengths: expected {batch} frame counts in [0, {steps}], got {lengths}")
    out = []
    for row_ids, row_best, n in zip(ids.tolist(), best.tolist(), lengths):
        tokens, frames, previous = [], [], blank
        for t, label in enumerate(row_ids[: int(n)]):
            if label != blank and label != previous:
                tokens.append(label)
                frames.append(t)
            previous = label
        out.append(Hypothesis(tokens, frames, float(sum(row_best[: int(n)]))))
    return out


class Lexicon:
    """A closed word list as a trie over label ids; ``alphabet[i]`` is what label i writes, the
    ``blank``'s entry ignored.

    Characters: each word is spelt letter by letter and the space (which must be a label)
    separates words. Word pieces: ``spell(word)`` gives a word's labels, and a label whose text
    begins with a space (a word's first piece) starts the next word (``starts``).
    """

    def __init__(self, words: Iterable[str], alphabet: Sequence[str], blank: int = 0,
                 spell: Callable[[str], list[int]] | None = None):
        self.starts = frozenset(i for i, c in enumerate(alphabet) if len(c) > 1 and c.startswith(" "))
        if spell is None:
            index = {c: i for i, c in enumerate(alphabet) if c and i != blank}
            if " " not in index:
                raise ValueError(f"alphabet: expected the space (the word separator) among its characters, "
                                 f"got {''.join(alphabet)!r}")

            def spell(word: str) -> list[int]:
                missing = next((ch for ch in word if ch not in index), None)
                if missing is not None:
                    raise ValueError(f"words: {word!r} has the character {missing!r}, which the model cannot "
                                     f"write (its alphabet: {''.join(alphabet)!r})")
                return [index[ch] for ch in word]
        self.root: dict = {}
        count = 0
        for word in words:
            if not word or " " in word:
                raise ValueError(f"words: expected single words without spaces, got {word!r}")
            labels = spell(word)
            if not labels:
                raise ValueError(f"words: the model cannot write {word!r} (its word pieces lack it)")
            node = self.root
            for label in labels:
                node = node.setdefault(label, {})
            node[None] = True  # a word ends here
            count += 1
        if not count:
            raise ValueError("words: the word list is empty")

    def walk(self, node: dict, label: int) -> dict | None:
        """The trie node after ``label`` from ``node`` (None: no word continues so)."""
        return node.get(label)

    @staticmethod
    def ends_word(node: dict) -> bool:
        return None in node

    def _node(self, ids: Sequence[int]) -> dict | None:
        node: dict | None = self.root
        for label in ids:
            node = node.get(label) if node is not None else None
        return node

    def is_prefix(self, ids: Sequence[int]) -> bool:
        """Whether label ids ``ids`` begin some word of the list."""
        return self._node(ids) is not None

    def is_word(self, ids: Sequence[int]) -> bool:
        node = self._node(ids)
        return node is not None and None in node


def _logsumexp(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    m = max(a, b)
    return m + math.log(math.exp(a - m) + math.exp(b - m))


class PrefixBeamSearch:
    """CTC prefix beam search, fed frames as they come (``advance``); ``results()`` at any point
    is what ``prefix_beam_search`` would give for the frames so far, so a live stream and a
    whole recording decode alike.

    Each prefix keeps the probability of ending in a blank and in its last label, so every path
    that collapses to it counts (the best path alone can lose to their sum). With ``lexicon``,
    a letter may only continue a word of the list and ``space`` only follow a whole one; a
    prefix ending inside a word is dropped at the end (none left: the empty hypothesis, scored
    as the all-blank path). ``prune``: labels below this log-probability in a frame are not
    tried, except the frame's best.
    """

    def __init__(self, beam: int = 8, blank: int = 0, lexicon: Lexicon | None = None, space: int | None = None,
                 prune: float = -12.0):
        if beam < 1:
            raise ValueError(f"beam: expected at least 1, got {beam}")
        if lexicon is not None and space is None and not lexicon.starts:
            raise ValueError("space: the word separator's label is needed with a lexicon of characters")
        self.beam, self.blank, self.lexicon, self.space, self.prune = beam, blank, lexicon, space, prune
        # prefix -> [p_blank, p_label, frames, trie node, its largest contribution this frame]; the
        # frames follow the largest contribution, so they are where the likeliest way in emitted each label
        root = lexicon.root if lexicon is not None else None
        self.beams: dict[tuple[int, ...], list] = {(): [0.0, -math.inf, (), root, 0.0]}
        self.candidates = self.beams
        self.silence = 0.0  # the all-blank path: the fallback when no prefix ends at a word boundary
        self.frames = 0     # frames decoded so far; the next one's index

    def advance(self, log_probs: Tensor) -> None:
        """Decode ``log_probs`` (T, V), the frames that follow those already seen."""
        if log_probs.dim() != 2:
            raise ValueError(f"log_probs: expected (T, V), got shape {tuple(log_probs.shape)}")
        neg, blank, lexicon, space = -math.inf, self.blank, self.lexicon, self.space
        beams = self.beams
        for t, row in enumerate(log_probs.float().tolist(), start=self.frames):
            self.silence += row[blank]
            best_label = max(range(len(row)), key=row.__getitem__)
            labels = [v for v, p in enumerate(row) if (p >= self.prune or v == best_label) and v != blank]
            nxt: dict[tuple[int, ...], list] = {}
            for prefix, (pb, pl, fr, node, _) in beams.items():
                total = _logsumexp(pb, pl)
                stay_blank = total + row[blank]                          # a blank: the prefix stays
                stay_label = pl + row[prefix[-1]] if prefix else neg     # the last label repeated
                e = nxt.get(prefix)
                if e is None:
                    e = nxt[prefix] = [neg, neg, fr, node, neg]
                e[0], e[1] = _logsumexp(e[0], stay_blank), _logsumexp(e[1], stay_label)
                if max(stay_blank, stay_label) > e[4]:
                    e[2], e[4] = fr, max(stay_blank, stay_label)
                for v in labels:
                    child = node
                    if lexicon is not None:
                        if v == space:
                            if not prefix or prefix[-1] == space or not lexicon.ends_word(node):
                                continue
                            child = lexicon.root
                        elif v in lexicon.starts:  # a word piece that begins the next word
                            if prefix and not lexicon.ends_word(node):
                                continue
                            child = lexicon.walk(lexicon.root, v)
                            if child is None:
                                continue
                        else:
                            child = lexicon.walk(node, v)
                            if child is None:
                                continue
                    # the same label again needs a blank between; any other follows directly
                    source = pb if prefix and v == prefix[-1] else total
                    if source == neg:
                        continue  # no path reaches it: an impossible prefix would only pad the beam
                    extended, gain = prefix + (v,), source + row[v]
                    e = nxt.get(extended)
                    if e is None:
                        e = nxt[extended] = [neg, neg, fr + (t,), child, neg]
                    e[1] = _logsumexp(e[1], gain)
                    if gain > e[4]:
                        e[2], e[4] = fr + (t,), gain
            self.candidates = {k: e for k, e in nxt.items() if e[0] > neg or e[1] > neg}
            beams = dict(heapq.nlargest(self.beam, self.candidates.items(),
                                        key=lambda kv: _logsumexp(kv[1][0], kv[1][1])))
            self.frames = t + 1
        self.beams = beams

    def fork(self) -> "PrefixBeamSearch":
        """A copy to advance on frames that may yet change (``advance`` builds new beams and never
        alters the old ones, so sharing them is safe)."""
        return copy.copy(self)

    def leader(self) -> Hypothesis:
        """The likeliest prefix so far, a word perhaps unfinished: what a live transcript shows."""
        prefix, (pb, pl, fr, _, _) = max(self.beams.items(), key=lambda kv: _logsumexp(kv[1][0], kv[1][1]))
        return Hypothesis(list(prefix), list(fr), _logsumexp(pb, pl))

    def results(self) -> list[Hypothesis]:
        """The hypotheses for the frames so far, best first: the last frame's candidates, before
        the beam's cut; with a lexicon, those ending inside a word are dropped, and a trailing
        space joins its prefix ("ab " is "ab")."""
        lexicon, space = self.lexicon, self.space
        merged: dict[tuple[int, ...], Hypothesis] = {}
        for prefix, (pb, pl, fr, node, _) in self.candidates.items():
            tokens, score = prefix, _logsumexp(pb, pl)
            if lexicon is not None:
                if tokens and tokens[-1] == space:
                    tokens, fr = tokens[:-1], fr[:-1]
                elif tokens and not lexicon.ends_word(node):
                    continue
            seen = merged.get(tokens)
            if seen is None:
                merged[tokens] = Hypothesis(list(tokens), list(fr), score)
            else:
                if score > seen.score:
                    seen.frames = list(fr)
                seen.score = _logsumexp(seen.score, score)
        results = heapq.nlargest(self.beam, merged.values(), key=lambda h: h.score)
        return results or [Hypothesis([], [], self.silence)]


def prefix_beam_search(log_probs: Tensor, beam: int = 8, blank: int = 0, lexicon: Lexicon | None = None,
                       space: int | None = None, prune: float = -12.0) -> list[Hypothesis]:
    """CTC prefix beam search over one utterance's (T, V) log-probabilities, best first
    (``PrefixBeamSearch`` says how)."""
    if log_probs.dim() != 2:
        raise ValueError(f"log_probs: expected (T, V), got shape {tuple(log_probs.shape)}")
    search = PrefixBeamSearch(beam, blank, lexicon, space, prune)
    search.advance(log_probs)
    return search.results()


def best_hypothesis(log_probs: Tensor, beam: int = 8, blank: int = 0, lexicon: Lexicon | None = None,
                    space: int | None = None) -> Hypothesis:
    """The beam search's best for one utterance's (T, V) frames; where that is empty (no prefix
    kept to the word list) but the frames' best path says something, that path: a misspelt
    transcript tells more than none."""
    found = prefix_beam_search(log_probs, beam=beam, blank=blank, lexicon=lexicon, space=space)
    return beam_or_best_path(found, greedy_decode(log_probs, blank=blank)[0])


def beam_or_best_path(found: Sequence[Hypothesis], best_path: Hypothesis) -> Hypothesis:
    """The beam's best, or the best path where the beam kept nothing that says anything."""
    if (not found or not found[0].tokens) and best_path.tokens:
        return best_path
    return found[0] if found else best_path


def to_text(tokens: Sequence[int], alphabet: Sequence[str]) -> str:
    """Label ids as text; ``alphabet[i]`` is label i's character (the blank's is "")."""
    return "".join(alphabet[i] for i in tokens if 0 <= i < len(alphabet))


def word_timings(hyp: Hypothesis, alphabet: Sequence[str], frame_seconds: float, space: str = " ") -> list[dict]:
    """Each word of ``hyp`` with its start (its first label's frame) and end (after its last
    label's frame), in seconds. A label whose text begins with ``space`` ends the word before
    it: the space itself (characters) or a word's first piece (" cat")."""
    words, letters, first, last = [], "", 0, 0
    for label, frame in zip(hyp.tokens, hyp.frames):
        text = alphabet[label]
        if text.startswith(space):
            if letters:
                words.append((letters, first, last))
            letters, text = "", text[len(space):]
        if not text:
            continue
        if not letters:
            first = frame
        letters, last = letters + text, frame
    if letters:
        words.append((letters, first, last))
    return [{"word": w, "start": round(a * frame_seconds, 3), "end": round((b + 1) * frame_seconds, 3)}
            for w, a, b in words]
