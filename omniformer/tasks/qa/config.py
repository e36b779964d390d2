"""The QA task's section of a recipe (``task:``): its answer head, how spoken questions are
heard, its extra losses, a curriculum and the metric groups, all named by what they do."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from ...config import SHARE, STEPS, WEIGHT, ModelConfig, Range, require


@dataclass
class Curriculum:
    """The first ``steps`` optimizer steps draw only training samples whose ``meta[key]`` is one
    of ``values`` (asked in text), then every sample: e.g. ShapesWorld's questions that bind a
    colour word to one object first."""
    key: str = "family"
    values: list[str] = field(default_factory=list)
    steps: int = 0

    RANGES: ClassVar[dict[str, Range]] = {"steps": STEPS}

    def validate(self) -> None:
        require(not self.steps or self.values, "values: list the meta values to start with (curriculum.steps is set)")

    def admits(self, sample: dict) -> bool:
        return bool(self.steps) and sample.get("meta", {}).get(self.key) in self.values


@dataclass
class QAConfig:
    # "cls": an MLP on the fusion [CLS]. "guided": the question attends over the image tokens
    # before fusion, and the MLP reads [CLS] with what it saw (GuidedAnswerHead).
    head: Literal["cls", "guided"] = "cls"
    # How the guided head hears a spoken question. "tower": the speech tower's output, pooled.
    # "words": the words a WordSpotter hears, as a bag of the text embedder's word vectors.
    spoken_question: Literal["tower", "words"] = "tower"
    glimpses: int = 1              # looks the guided head takes at the image
    # The guided head relates every image token to the object the question names (AnchorRelation).
    relations: bool = False
    spoken_fraction: float = 0.5   # share of training questions asked by voice instead of in text
    word_spotting: float = 0.0     # weight of the spotter's loss on spoken questions' transcripts
    # Share of questions asked in text whose recording comes along for the spotter alone; with
    # a curriculum, of the curriculum's questions only.
    spotter_overhears: float = 0.0
    grounding: float = 0.0         # weight of the loss that teaches the relation's pointer where the named object is
    curriculum: Curriculum = field(default_factory=Curriculum)
    # ``meta`` keys to report accuracy by, per value (text and spoken): a string or number gives
    # ``text/KEY/VALUE``, a boolean ``text/KEY`` or ``text/non_KEY``. ``spoken_groups``: the same,
    # for spoken questions only (a voice held out, say).
    groups: list[str] = field(default_factory=list)
    spoken_groups: list[str] = field(default_factory=list)
    # An asr checkpoint folder: spoken questions are transcribed by it and answered as text (a
    # cascade) instead of heard by this model's own spoken path. Set when evaluating or serving
    # (--task.transcriber=DIR); "" hears them as ``spoken_question`` says.
    transcriber: str = ""

    RANGES: ClassVar[dict[str, Range]] = {"glimpses": Range(1, 64), "spoken_fraction": SHARE, "word_spotting": WEIGHT,
                                          "spotter_overhears": SHARE, "grounding": WEIGHT}

    def validate(self) -> None:
        require(not self.relations or self.head == "guided", f"relations: needs head=guided, got head={self.head}")
        require(not self.grounding or (self.head == "guided" and self.relations),
               f"grounding: {self.grounding} trains the anchor relation's pointer: it needs head=guided and relations=true")
        require(not self.word_spotting or self.hears_words,
               f"word_spotting: {self.word_spotting} needs head=guided and spoken_question=words")

    @property
    def hears_words(self) -> bool:
        return self.head == "guided" and self.spoken_question == "words"

    def check_model(self, model: ModelConfig) -> None:
        """What this section asks of the architecture."""
        asked_by_voice = self.spoken_fraction > 0 and "audio" in model.modalities
        require(not (self.hears_words and asked_by_voice) or self.word_spotting > 0,
               "task.word_spotting: must be > 0 with task.spoken_question=words: only the transcripts of spoken "
               "questions train the word spotter")
