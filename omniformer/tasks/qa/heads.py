"""The QA task's own heads: a question-guided answer head with an anchor relation, and a word
spotter that hears a spoken question as a bag of words.

Why these shapes, with the experiments' figures: ``benchmarks/README.md`` (the binding, relation
and word-spotting probes).
"""
from __future__ import annotations

import copy
from typing import NamedTuple, Sequence

import torch
from torch import Tensor, nn

from ...model.encoders import AudioEmbedder
from ...model.heads import ClassifierHead


def masked_softmax(scores: Tensor, valid: Tensor) -> Tensor:
    """Softmax over the last dim where ``valid``. The fill is finite and the scores' own
    dtype's minimum (under autocast they are bf16 while the tokens are not), so a row with
    nothing valid spreads evenly over its padding instead of giving NaN."""
    return scores.masked_fill(~valid, torch.finfo(scores.dtype).min).softmax(-1)


class BagOfWords(NamedTuple):
    """A question as the words it says, whatever their order: ``said`` (B, vocab) in [0, 1]
    (written: 1 for each word present; heard: the word spotter's probability) and the
    vocabulary's ``vectors`` (vocab, width), as ``TextEmbedder.word_vectors`` gives them."""
    said: Tensor
    vectors: Tensor

    @classmethod
    def written(cls, ids: Tensor, mask: Tensor, vectors: Tensor) -> "BagOfWords":
        """Token ids (B, L) with mask (B, L) -> each vocabulary word said (1) or not (0)."""
        mask = mask.to(vectors.dtype)
        said = mask.new_zeros(ids.size(0), vectors.size(0)).scatter_add(1, ids, mask).clamp(max=1.0)
        return cls(said, vectors)

    def mean(self) -> Tensor:
        """(B, width): the mean of the vectors of the words said, each weighed by how surely."""
        return (self.said @ self.vectors) / self.said.sum(-1, keepdim=True).clamp(min=1.0)


class GuidedAnswerHead(nn.Module):
    """Question-guided attention over the image, then an answer classifier (top-down attention,
    Anderson et al. 2018; stacked attention networks, Yang et al. 2016).

    A question vector (its text, its speech, or both, each through its own projection, summed)
    queries the image tokens' embeddings, multi-head. Each of ``glimpses`` looks gives two
    readings: the softmax-attended image vector (what the question points at) and, per head,
    the sum of sigmoid scores over the image tokens (how many tokens match: a count, which a
    softmax normalises away). Glimpse g+1 queries with the question plus what glimpse g saw,
    a second hop for "the object closest to the red one". With ``relations``, an
    ``AnchorRelation`` also relates every image token to the object the question names
    (closest, furthest, same shape). The classifier reads [CLS], the question and every
    glimpse's readings (and the relation's). ``QAModel`` gives it the question's embedded
    tokens, before any Transformer layer, and speech as its tower's output or the words heard.
    Why: "what shape is the red object?" needs the word "red" to pick one image token. Through
    the fusion stack that pick is a two-hop circuit ([CLS] -> word -> object) that stayed at
    chance for 3,000 steps on ShapesWorld, while this one-hop path learnt it in about 300
    (measured with benchmarks/qa_binding_probe.py).
    """

    def __init__(self, width: int, heads: int, num_answers: int, question_modalities: Sequence[str] = ("text", "audio"),
                 glimpses: int = 1, dropout: float = 0.0, eps: float = 1e-5, relations: bool = False):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} must be a multiple of heads {heads}")
        if glimpses < 1:
            raise ValueError(f"glimpses must be >= 1, got {glimpses}")
        self.heads = heads
        self.question = nn.ModuleDict({m: nn.Linear(width, width) for m in question_modalities})
        self.query = nn.ModuleList(nn.Linear(width, width) for _ in range(glimpses))
        self.key = nn.ModuleList(nn.Linear(width, width) for _ in range(glimpses))
        self.seen = nn.ModuleList(nn.Linear(width, width) for _ in range(glimpses - 1))
        self.relate = AnchorRelation(width, heads) if relations else None
        readings = (2 + glimpses) * width + glimpses * heads + (0 if self.relate is None else width + heads)
        self.classifier = ClassifierHead(readings, num_answers, hidden=2 * width, dropout=dropout, eps=eps)

    def ask(self, cls: Tensor, question: dict[str, Tensor]) -> Tensor:
        """The question vectors, each through its projection, summed: (B, width)."""
        return sum((self.question[m](x) for m, x in question.items()), cls.new_zeros(cls.shape))

    def forward(self, cls: Tensor, question: dict[str, Tensor], image: Tensor, image_mask: Tensor,
                coordinates: Tensor | None = None, words: BagOfWords | None = None) -> Tensor:
        """cls (B, width); question {modality: question vector (B, width), zeros where the
        sample lacks it}; image (B, N, width) with image_mask (B, N); coordinates (N, 2) of
        the image tokens, needed with ``relations``; ``words``, the question's bag of words, for
        the relation's pointer (see ``AnchorRelation``) -> logits (B, answers)."""
        B, N, W = image.shape
        h, d = self.heads, W // self.heads
        asked = self.ask(cls, question)
        v = image.view(B, N, h, d).transpose(1, 2)
        valid = image_mask[:, None, None, :]
        readings, context = [], asked
        for g, (query, key) in enumerate(zip(self.query, self.key)):
            q = query(context).view(B, h, 1, d)
            k = key(image).view(B, N, h, d).transpose(1, 2)
            scores = (q @ k.transpose(-1, -2)) * d ** -0.5
            # A sample without image tokens attends evenly over its padding, which the caller
            # zeroes, so its attended vector is zero rather than NaN.
            attended = (masked_softmax(scores, valid) @ v).reshape(B, W)
            counts = (torch.sigmoid(scores) * valid).sum(-1).reshape(B, h)
            readings += [attended, counts]
            if g < len(self.seen):
                context = asked + self.seen[g](attended)
        if self.relate is not None:
            if coordinates is None:
                raise ValueError("the guided head's relations need the image tokens' coordinates")
            readings += self.relate(asked, image, image_mask, coordinates, words)
        return self.classifier(torch.cat([cls, asked, *readings], dim=-1))


class AnchorRelation(nn.Module):
    """Every image token related to the object the question names: a Relation Network
    (Santoro et al. 2017) with one side of each pair fixed to that anchor, so N pairs, not N^2.

    A pointer, a softmax over the image tokens, finds the anchor, which gives its vector and,
    from the tokens' coordinates, its place. g(token, anchor, question, geometry) is an MLP on
    the token, the anchor, their elementwise product (same shape?), the question, and the
    offset and distance between the two (closest? furthest?); its first layer is a sum of
    projections, a linear layer on their concatenation. Per head, g scores every token: a
    softmax reads the token selected (the object closest to the anchor) and the sum of
    sigmoids counts the tokens that pass (objects of the anchor's shape). Why: the glimpses'
    ``q . k`` cannot rank tokens by their distance to another token, and relations were what
    the full recipe missed (closest 78.9%, furthest 84.3%, count_shape 77.5% on its truncated
    GPU run).

    The pointer's query is the question's bag of words (``BagOfWords``), each word through an
    MLP of its own, summed: a product of experts, one per word, so "red" points the same way
    in "what shape is the red object?" and in "... closest to the red object?". Without words
    (speech through its tower) it is the pooled question's projection. ``match`` scores a
    question against every image of a batch by its best token, for ``objectives.grounding_loss``,
    which teaches the pointer where the named object is by telling a question's own image from
    the others: an image without a red object cannot answer "the red object". Why: the answer
    loss alone, through the gated relation, never taught it; the pointer spread its mass evenly
    over the objects (0.3 on the named one), and read by the question's words it did no better.
    With the grounding loss it put 0.92 on the named object (benchmarks/README.md, "The
    grounding loss"). The image is detached there, so the loss moves the pointer alone and leaves
    the colour-word binding the glimpses learn in the curriculum as it was.

    Each head's score also has a term linear in the token's distance from the anchor, its slope
    per head set by the question (``reach``): steep and negative picks the closest token, positive
    the furthest. Why: an argmin over distances needs a large gain (two objects' distances differ
    by 10% of the nearer one), which g, an MLP on the geometry, learnt slowly; its softmax
    blended the nearest objects. With it, closest went from 77.4% to 93.5% and furthest from
    82.6% to 98.2% at the standard setting from scratch (benchmarks/README.md, "A score linear
    in the distance"), and the synthetic closest task of tests/model/test_encoders.py from 0.62 to
    0.94 in 500 steps.
    """

    GEOMETRY = 4  # dx, dy, distance, squared distance
    # Distances are in image widths: so scaled, a reach of order one, what a linear layer gives,
    # already moves a score by 2 per patch on an 8x8 grid.
    REACH_SCALE = 16.0

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.find = nn.Linear(width, width)
        self.word_query = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, width))
        self.key = nn.Linear(width, width)
        self.token = nn.Linear(width, width)
        self.anchor = nn.Linear(width, width, bias=False)
        self.same = nn.Linear(width, width, bias=False)
        self.asked = nn.Linear(width, width, bias=False)
        self.geometry = nn.Linear(self.GEOMETRY, width, bias=False)
        self.hidden = nn.Linear(width, width)
        self.score = nn.Linear(width, heads)
        # Zero at the start: the relation begins as without it.
        self.reach = nn.Linear(width, heads)
        nn.init.zeros_(self.reach.weight)
        nn.init.zeros_(self.reach.bias)
        self.act = nn.GELU()
        # Its readings reach the classifier through a gate that starts shut (ReZero-style), so
        # early fine-tuning, when the glimpse learns to bind colour words, goes as without it.
        self.gate = nn.Parameter(torch.zeros(()))

    def query(self, asked: Tensor, words: BagOfWords | None = None) -> Tensor:
        """(B, width): what the pointer looks for; by the words where a row has any."""
        by_question = self.find(asked)
        if words is None:
            return by_question
        said = words.said.to(by_question.dtype)
        # Detached: the word vectors are the text embedder's, which the glimpses bind to objects.
        by_words = said @ self.word_query(words.vectors.detach().to(by_question.dtype))
        return torch.where(said.sum(-1, keepdim=True) > 0, by_words, by_question)

    def point(self, asked: Tensor, image: Tensor, image_mask: Tensor, words: BagOfWords | None = None) -> Tensor:
        """(B, N): where the object the question names is, a distribution over the image tokens."""
        scores = (self.key(image) @ self.query(asked, words)[:, :, None]).squeeze(-1) * image.size(-1) ** -0.5
        return masked_softmax(scores, image_mask)

    def match(self, asked: Tensor, image: Tensor, image_mask: Tensor, words: BagOfWords | None = None) -> Tensor:
        """(B questions, B images): how well each question's pointer finds something in each
        image, the logsumexp of its scores over the image's tokens (the log of the pointer's
        normaliser). The image is detached (see the class's docstring)."""
        keys = self.key(image.detach())                                                   # (B, N, W)
        scores = torch.einsum("qw,inw->qin", self.query(asked, words), keys) * image.size(-1) ** -0.5
        scores = scores.float().masked_fill(~image_mask[None], torch.finfo(torch.float32).min)
        return scores.logsumexp(-1)

    def pair_scores(self, asked: Tensor, image: Tensor, image_mask: Tensor, coordinates: Tensor,
                    words: BagOfWords | None = None) -> Tensor:
        """(B, heads, N): g's score for every image token against the anchor (arguments as in
        ``forward``)."""
        pointer = self.point(asked, image, image_mask, words)                        # (B, N)
        anchor = (pointer[:, None] @ image).squeeze(1)                               # (B, W)
        where = pointer @ coordinates.to(pointer.dtype)                              # (B, 2)
        offset = coordinates.to(image.dtype)[None] - where[:, None]                  # (B, N, 2)
        squared = offset.square().sum(-1, keepdim=True)
        distance = (squared + 1e-6).sqrt()                                           # (B, N, 1)
        geometry = torch.cat([offset, distance, squared], -1)
        pair = self.act(self.token(image) + self.same(image * anchor[:, None]) + self.geometry(geometry)
                        + (self.anchor(anchor) + self.asked(asked))[:, None])
        scores = self.score(self.act(self.hidden(pair))).transpose(1, 2)            # (B, heads, N)
        return scores + self.REACH_SCALE * self.reach(asked)[:, :, None] * distance.transpose(1, 2)

    def forward(self, asked: Tensor, image: Tensor, image_mask: Tensor, coordinates: Tensor,
                words: BagOfWords | None = None) -> list[Tensor]:
        """asked (B, width); image (B, N, width), image_mask (B, N); coordinates (N, 2), each
        token's place in the image in [0, 1]; the question's words, if it has them ->
        [the selected tokens (B, width), the counts (B, heads)]."""
        B, N, W = image.shape
        h, d = self.heads, W // self.heads
        scores = self.pair_scores(asked, image, image_mask, coordinates, words)     # (B, heads, N)
        valid = image_mask[:, None, :]
        weights = masked_softmax(scores, valid)
        selected = (weights[..., None] * image.view(B, N, h, d).transpose(1, 2)).sum(2).reshape(B, W)
        counts = (torch.sigmoid(scores) * valid).sum(-1)
        return [self.gate * selected, self.gate * counts]


class WordSpotter(nn.Module):
    """Speech -> (B, vocab) logits: was each vocabulary word said? Each frame scores every word;
    the utterance pools each word's frame scores by a soft maximum, log-mean-exp (weakly
    supervised keyword spotting, trained from transcripts alone, as in Palaz et al. 2016, who
    take the hard maximum). Why soft: the hard maximum passes its gradient to one frame, and a
    spotter trained with a decaying learning rate left some colour words at the prior (spotter
    alone on ShapesWorld's questions, 1,600 steps: colour, shape and relation words heard at
    0.70 recall with the maximum, 0.94 with log-mean-exp, both with ``word_presence_loss``'s
    weight on words said). A row without frames scores the dtype's minimum (probability 0).

    ``from_config`` gives it frames of its own: an audio embedder (convolutions with a ~150 ms
    view) without positions. Why its own: sharing the model's audio embedder, whose other
    users (fusion, towers) pull on it far harder, it never told colour words apart (heard at
    the prior, 0.15, present or not, after 3,200 fine-tuning steps); alone it did in about
    500. Why local frames without positions: a spotter reading the speech tower (global
    attention) or timed frames memorised ShapesWorld's 464 question recordings and stayed near
    chance on new ones (benchmarks/word_spotting_probe.py).
    """

    def __init__(self, width: int, vocab_size: int, frames: nn.Module | None = None):
        super().__init__()
        self.frames = frames
        self.score = nn.Linear(width, vocab_size)

    @classmethod
    def from_config(cls, cfg) -> "WordSpotter":
        own = copy.deepcopy(cfg)
        own.audio.positions = "none"
        return cls(cfg.width, cfg.vocab_size, AudioEmbedder(own))

    def forward(self, frames: Tensor, mask: Tensor) -> Tensor:
        """Frames (B, N, width) with mask (B, N) -> (B, vocab) logits."""
        scores = self.score(frames)
        lowest = torch.finfo(scores.dtype).min  # under autocast, scores are bf16 while frames are not
        scores = scores.masked_fill(~mask[..., None], lowest)
        frames_per_row = mask.sum(1, keepdim=True)
        pooled = torch.logsumexp(scores, 1) - frames_per_row.clamp(min=1).to(scores.dtype).log()
        return pooled.masked_fill(frames_per_row == 0, lowest)

    def hear(self, batch: dict[str, Tensor]) -> Tensor:
        """The batch's audio -> (B, vocab) logits, through the spotter's own frames."""
        if self.frames is None:
            raise ValueError("this WordSpotter has no frames of its own: call it on frames, or build it with from_config")
        return self(*self.frames(batch))
