"""Captions, questions, the closed answer vocabulary and per-family answer balancing.

Question families follow Sort-of-CLEVR (Santoro et al. 2017) plus counting and existence:

    shape        what shape is the red object?                        square | circle | triangle
    horizontal   is the red object on the left or the right?          left | right (of the image centre)
    vertical     is the red object at the top or the bottom?          top | bottom
    count        how many objects are there? / how many circles are there?   zero .. six
    exists       is there a red circle?                               yes | no
    closest      what shape is the object closest to the red object?  (relational)
    furthest     what shape is the object furthest from the red object?     (relational)
    count_shape  how many objects have the same shape as the red object?    (relational)
                 -- counting the red object itself, so the answer is one .. six.

Ambiguous questions are never asked and ambiguous statements never captioned: a centre
within ``midline_margin`` of the midline has no left/right (top/bottom), and closest/furthest
need the best distance to beat the runner-up by ``max(10%, 2 px at 64 px)``. Distances are
between object centres. Captions are true statements built from the same geometry.
"""
from __future__ import annotations

import math
import re
from collections import defaultdict

import numpy as np

from .scene import COLOURS, SHAPES, Obj

NUMBERS = ["zero", "one", "two", "three", "four", "five", "six"]
ANSWERS = SHAPES + ["left", "right", "top", "bottom", "yes", "no"] + NUMBERS
FAMILIES = {  # family -> relational (needs comparing objects to each other)
    "shape": False, "horizontal": False, "vertical": False, "count": False, "exists": False,
    "closest": True, "furthest": True, "count_shape": True,
}
CAPTIONS_PER_IMAGE = 5
# A family's question for an image is dropped when its answer would already be more than
# BALANCE_RATIO x (the family's rarest answer) + BALANCE_SLACK; see AnswerBalancer.
BALANCE_RATIO = 1.5
BALANCE_SLACK = 4

QUESTION_TEMPLATES = {
    "shape": "what shape is the {colour} object?",
    "horizontal": "is the {colour} object on the left or the right?",
    "vertical": "is the {colour} object at the top or the bottom?",
    "count": "how many objects are there?",
    "count_of": "how many {shape}s are there?",
    "exists": "is there {a} {colour} {shape}?",
    "closest": "what shape is the object closest to the {colour} object?",
    "furthest": "what shape is the object furthest from the {colour} object?",
    "count_shape": "how many objects have the same shape as the {colour} object?",
}


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def words(sentence: str) -> list[str]:
    return re.findall(r"[a-z]+", sentence.lower())


def midline_margin(image: int) -> float:
    return 2.0 * image / 64


def distance_margin(best: float, image: int) -> float:
    return max(0.1 * best, 2.0 * image / 64)


def family_answers(max_objects: int) -> dict[str, list[str]]:
    """The answers each family can take with at most ``max_objects`` objects."""
    return {
        "shape": list(SHAPES), "closest": list(SHAPES), "furthest": list(SHAPES),
        "horizontal": ["left", "right"], "vertical": ["top", "bottom"], "exists": ["yes", "no"],
        "count": NUMBERS[: max_objects + 1], "count_shape": NUMBERS[1: max_objects + 1],
    }


# --------------------------------------------------------------------------------------------
# Geometry shared by questions and captions
# --------------------------------------------------------------------------------------------

def _side(value: float, image: int, low: str, high: str) -> str | None:
    offset = value - image / 2
    if abs(offset) < midline_margin(image):
        return None
    return low if offset < 0 else high


def extreme_object(target: Obj, objects: list[Obj], image: int, furthest: bool) -> Obj | None:
    """The unambiguously closest (or furthest) other object, or None."""
    others = [o for o in objects if o is not target]
    if not others:
        return None
    dist = [math.hypot(o.x - target.x, o.y - target.y) for o in others]
    order = sorted(range(len(others)), key=lambda i: -dist[i] if furthest else dist[i])
    if len(order) > 1:
        best, second = dist[order[0]], dist[order[1]]
        if abs(best - second) < distance_margin(min(best, second), image):
            return None
    return others[order[0]]


def _same_shape(target: Obj, objects: list[Obj]) -> int:
    return sum(o.shape == target.shape for o in objects)  # includes the target itself


def _plural(shape: str, n: int) -> str:
    return shape if n == 1 else shape + "s"


# --------------------------------------------------------------------------------------------
# Questions
# --------------------------------------------------------------------------------------------

Candidate = tuple[str, str, dict]  # (question, answer, extra meta)


def question_candidates(objects: list[Obj], image: int) -> dict[str, list[Candidate]]:
    """Every unambiguous question per family, with its answer."""
    q = QUESTION_TEMPLATES
    out: dict[str, list[Candidate]] = {f: [] for f in FAMILIES}
    for o in objects:
        c = {"colour": o.colour}
        out["shape"].append((q["shape"].format(**c), o.shape, c))
        if (side := _side(o.x, image, "left", "right")) is not None:
            out["horizontal"].append((q["horizontal"].format(**c), side, c))
        if (side := _side(o.y, image, "top", "bottom")) is not None:
            out["vertical"].append((q["vertical"].format(**c), side, c))
        for family, furthest in (("closest", False), ("furthest", True)):
            if (other := extreme_object(o, objects, image, furthest)) is not None:
                out[family].append((q[family].format(**c), other.shape, c))
        if len(objects) > 1:
            out["count_shape"].append((q["count_shape"].format(**c), NUMBERS[_same_shape(o, objects)], c))
    out["count"].append((q["count"], NUMBERS[len(objects)], {}))
    for s in SHAPES:
        out["count"].append((q["count_of"].format(shape=s), NUMBERS[sum(o.shape == s for o in objects)], {"shape": s}))
    present = {(o.colour, o.shape) for o in objects}
    for colour in COLOURS:
        for s in SHAPES:
            answer = "yes" if (colour, s) in present else "no"
            out["exists"].append((q["exists"].format(a=article(colour), colour=colour, shape=s), answer, {"colour": colour, "shape": s}))
    return out


class AnswerBalancer:
    """Greedy per-family answer balancing, deterministic given the order of calls.

    For each family it picks, among the answers this image offers, the one used least so far
    (ties broken by the image's RNG), and drops the question when even that answer is already
    above ``ratio * rarest + slack``. So common answers wait for rare ones, and no answer of a
    family can outnumber its rarest by more than that bound. Counters are kept per split so
    that every split is balanced on its own.
    """

    def __init__(self, answers: dict[str, list[str]], ratio: float = BALANCE_RATIO, slack: int = BALANCE_SLACK):
        self.answers = answers
        self.ratio, self.slack = ratio, slack
        self.counts: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)

    def choose(self, split: str, family: str, candidates: list[Candidate],
               rng: np.random.Generator) -> Candidate | None:
        if not candidates:
            return None
        counts = self.counts[(split, family)]
        for a in self.answers[family]:
            counts.setdefault(a, 0)
        offered = sorted({a for _, a, _ in candidates}, key=self.answers[family].index)
        least = min(counts[a] for a in offered)
        ties = [a for a in offered if counts[a] == least]
        answer = ties[int(rng.integers(len(ties)))]
        if counts[answer] > self.ratio * min(counts.values()) + self.slack:
            return None
        counts[answer] += 1
        pool = [c for c in candidates if c[1] == answer]
        return pool[int(rng.integers(len(pool)))]


# --------------------------------------------------------------------------------------------
# Captions (true statements; several families mirror the questions)
# --------------------------------------------------------------------------------------------

RELATIONS = ("left of", "right of", "above", "below")


def _relation_holds(a: Obj, b: Obj, relation: str, image: int) -> bool:
    m = midline_margin(image)
    return {"left of": b.x - a.x >= m, "right of": a.x - b.x >= m,
            "above": b.y - a.y >= m, "below": a.y - b.y >= m}[relation]


def caption_candidates(objects: list[Obj], image: int) -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    n = len(objects)
    for o in objects:
        out["attribute"] += [f"there is {article(o.colour)} {o.colour} {o.shape}", f"the {o.colour} object is a {o.shape}"]
        if (side := _side(o.x, image, "left", "right")) is not None:
            out["horizontal"].append(f"the {o.colour} object is on the {side}")
        if (side := _side(o.y, image, "top", "bottom")) is not None:
            out["vertical"].append(f"the {o.colour} object is at the {side}")
        if (other := extreme_object(o, objects, image, furthest=False)) is not None:
            out["closest"].append(f"the object closest to the {o.colour} object is a {other.shape}")
        if (other := extreme_object(o, objects, image, furthest=True)) is not None:
            out["furthest"].append(f"the object furthest from the {o.colour} object is a {other.shape}")
        if n > 1:
            k = _same_shape(o, objects) - 1
            verb = "has" if k <= 1 else "have"
            subject = "no other object" if k == 0 else f"{NUMBERS[k]} other {'object' if k == 1 else 'objects'}"
            out["count_shape"].append(f"{subject} {verb} the same shape as the {o.colour} object")
        for other in objects:
            if other is not o:
                for rel in RELATIONS:
                    if _relation_holds(o, other, rel, image):
                        out["relation"].append(f"the {o.colour} {o.shape} is {rel} the {other.colour} {other.shape}")
    out["count"].append(f"there {'is one object' if n == 1 else f'are {NUMBERS[n]} objects'}")
    for s in SHAPES:
        k = sum(o.shape == s for o in objects)
        out["count"].append(f"there is one {s}" if k == 1 else f"there are {'no' if k == 0 else NUMBERS[k]} {s}s")
    present = {(o.colour, o.shape) for o in objects}
    out["absent"] = [f"there is no {c} {s}" for c in COLOURS for s in SHAPES if (c, s) not in present]
    return dict(out)


CORE_CAPTIONS = ("attribute", "count", "relation")
STATEMENT_CAPTIONS = ("horizontal", "vertical", "closest", "furthest", "count_shape", "absent")


def choose_captions(candidates: dict[str, list[str]], rng: np.random.Generator,
                    k: int = CAPTIONS_PER_IMAGE) -> list[tuple[str, str]]:
    """One attribute, one count and one relation caption, then question-like statements
    from distinct families: ``k`` (family, caption) pairs in all, fewer only for tiny scenes."""
    statements = [f for f in STATEMENT_CAPTIONS if candidates.get(f)]
    statements = [statements[i] for i in rng.permutation(len(statements))]
    chosen = []
    for family in [f for f in CORE_CAPTIONS if candidates.get(f)] + statements:
        if len(chosen) == k:
            break
        pool = candidates[family]
        chosen.append((family, pool[int(rng.integers(len(pool)))]))
    return chosen


CAPTION_WORDS = ("there is are a an no one the object objects on at left right top bottom "
                 "closest to furthest from other has have same shape as")


def vocabulary() -> list[str]:
    """Every word any caption or question can use (the speech bank must hold them all)."""
    vocab = set(COLOURS) | set(SHAPES) | {s + "s" for s in SHAPES} | set(NUMBERS)
    vocab |= set(words(" ".join(RELATIONS))) | set(words(CAPTION_WORDS))
    for template in QUESTION_TEMPLATES.values():
        vocab |= set(words(template.format(a="a", colour="red", shape="circle")))
    return sorted(vocab)


def true_captions(objects: list[Obj], image: int) -> set[str]:
    """Every caption the generator could state of this scene: all of them true, none ambiguous."""
    return {c for pool in caption_candidates(objects, image).values() for c in pool}


def caption_is_true(caption: str, objects: list[Obj], image: int) -> bool:
    """Whether ``caption`` is true of the scene by the generator's own semantics: it must be one
    of the statements the generator makes of it (every attribute, count and relation right),
    compared word by word, so case, spacing and a final full stop do not matter."""
    said = " ".join(words(caption))
    return any(said == " ".join(words(c)) for c in true_captions(objects, image))
