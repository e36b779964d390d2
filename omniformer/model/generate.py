"""``generate()``: text from a ``TextDecoder`` and a context, by every common decoding strategy.

Greedy, beam search (a length penalty over generated tokens only), and sampling with
temperature, top-k and top-p; a repetition penalty, no-repeat n-grams, minimum and maximum new
tokens, stop tokens; batches whose sources and prompts differ in length; a KV cache; and
``stream()``, which yields each step's tokens as they are made (batches too). The options and
their meaning follow Hugging Face ``generate``, which users already know.

Logit processors act on the raw logits in every strategy (beam search takes the log-softmax
after them), so a beam of width 1 is greedy decoding exactly.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .decoder import TextDecoder


class GenerationError(ValueError):
    """A decoding option out of range, or inputs generation cannot take; names the option."""


@dataclass
class GenerationConfig:
    """How to decode; the defaults are greedy decoding of at most 64 tokens."""
    max_new_tokens: int = 64
    min_new_tokens: int = 0          # stop tokens are barred until this many are made
    num_beams: int = 1               # > 1: beam search
    length_penalty: float = 1.0      # beam score = log-prob sum / new_tokens ** length_penalty
                                     # (new tokens only, the stop token included)
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0                   # 0 = no top-k filter
    top_p: float = 1.0               # 1 = no nucleus filter
    repetition_penalty: float = 1.0  # > 1 discourages tokens already in the sequence (CTRL's rule)
    no_repeat_ngram_size: int = 0    # 0 = off; n: no n-gram appears twice in the decoded sequence
    seed: int | None = None          # sampling: a fixed seed makes the draw reproducible

    def check(self, vocab_size: int | None = None) -> "GenerationConfig":
        """Raise a GenerationError naming the first option out of range."""
        def bad(name: str, expected: str) -> GenerationError:
            return GenerationError(f"{name}={getattr(self, name)!r}: expected {expected}")
        ints = ("max_new_tokens", "min_new_tokens", "num_beams", "top_k", "no_repeat_ngram_size")
        for name in ints:
            if isinstance(getattr(self, name), bool) or not isinstance(getattr(self, name), int):
                raise bad(name, "a whole number")
        floats = ("length_penalty", "temperature", "top_p", "repetition_penalty")
        for name in floats:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise bad(name, "a finite number")
        if self.max_new_tokens < 1:
            raise bad("max_new_tokens", "at least 1")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise bad("min_new_tokens", f"between 0 and max_new_tokens ({self.max_new_tokens})")
        if self.num_beams < 1:
            raise bad("num_beams", "at least 1")
        if vocab_size is not None and self.num_beams > vocab_size:
            raise bad("num_beams", f"at most the vocabulary's {vocab_size} tokens")
        if self.num_beams > 1 and self.do_sample:
            raise GenerationError("num_beams > 1 with do_sample: choose beam search or sampling, not both")
        if self.temperature <= 0:
            raise bad("temperature", "greater than 0 (use do_sample=False for greedy decoding)")
        if self.top_k < 0:
            raise bad("top_k", "0 (off) or more")
        if not 0 < self.top_p <= 1:
            raise bad("top_p", "in (0, 1]")
        if self.repetition_penalty <= 0:
            raise bad("repetition_penalty", "greater than 0 (1 = off)")
        if self.no_repeat_ngram_size < 0:
            raise bad("no_repeat_ngram_size", "0 (off) or more")
        return self

    def replace(self, **changes) -> "GenerationConfig":
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            known = ", ".join(f.name for f in dataclasses.fields(self))
            raise GenerationError(f"unknown generation option {unknown[0]!r}; known: {known}")
        return dataclasses.replace(self, **changes)


@dataclass
class Generated:
    """One generated sequence: its new tokens (the stop token left out), their summed log-prob
    under the processed distribution (beam search: the length-penalised score), and whether a
    stop token ended it (False: it ran to max_new_tokens)."""
    tokens: list[int]
    score: float
    stopped: bool


# -- logits processors -------------------------------------------------------------------------

def top_p_filter(logits: Tensor, top_p: float) -> Tensor:
    """Keep the smallest set of tokens whose probability reaches ``top_p`` (at least one); the
    rest get -inf."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    drop_sorted = mass_before >= top_p
    drop_sorted[..., 0] = False
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def top_k_filter(logits: Tensor, top_k: int) -> Tensor:
    if top_k <= 0 or top_k >= logits.size(-1):
        return logits
    kth = logits.topk(top_k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def banned_ngram_tokens(sequence: list[int], n: int) -> list[int]:
    """Tokens that would complete an n-gram already in ``sequence``."""
    if n <= 0 or len(sequence) < n:
        return []
    prefix = tuple(sequence[len(sequence) - n + 1:])
    return [sequence[i + n - 1] for i in range(len(sequence) - n + 1) if tuple(sequence[i:i + n - 1]) == prefix]


class LogitsProcessor:
    """Everything but the choice itself: banned ids, repetition penalty, no-repeat n-grams, the
    minimum length; then, when sampling, temperature, top-k and top-p.

    Only the options that are on cost anything: the banned ids (and, below ``min_new_tokens``,
    the stop ids with them) are one ``index_fill_`` of an index built once, and the decoded
    sequences are read only by the repetition penalty and no-repeat n-grams
    (``needs_history``: without them the decoding loops don't keep the sequences at all).
    """

    def __init__(self, cfg: GenerationConfig, stop_ids: Sequence[int], banned_ids: Sequence[int]):
        self.cfg, self.stop_ids, self.banned_ids = cfg, list(stop_ids), list(banned_ids)
        self.needs_history = cfg.repetition_penalty != 1.0 or cfg.no_repeat_ngram_size > 0
        self._index: dict[bool, Tensor | None] = {}  # below min_new_tokens? -> the ids to bar, on the logits' device

    def _barred(self, early: bool, device: torch.device) -> Tensor | None:
        if early not in self._index:
            ids = self.banned_ids + (self.stop_ids if early else [])
            self._index[early] = torch.tensor(ids, dtype=torch.long, device=device) if ids else None
        return self._index[early]

    def __call__(self, logits: Tensor, sequences: Tensor | None, real: Tensor | None, made: int) -> Tensor:
        """logits (N, V) float, changed in place; sequences (N, T) so far with ``real`` (N, T)
        marking non-padding (read only when ``needs_history``; else they may be None); ``made``
        new tokens generated before this step."""
        cfg = self.cfg
        barred = self._barred(made < cfg.min_new_tokens, logits.device)
        if barred is not None:
            logits.index_fill_(1, barred, float("-inf"))
        if cfg.repetition_penalty != 1.0:
            counts = torch.zeros_like(logits, dtype=torch.long).scatter_add_(1, sequences, real.long())
            penalised = torch.where(logits > 0, logits / cfg.repetition_penalty, logits * cfg.repetition_penalty)
            logits = torch.where(counts > 0, penalised, logits)
        if cfg.no_repeat_ngram_size > 0:
            for row, (seq, keep) in enumerate(zip(sequences.tolist(), real.tolist())):
                banned = banned_ngram_tokens([t for t, k in zip(seq, keep) if k], cfg.no_repeat_ngram_size)
                if banned:
                    logits[row, banned] = float("-inf")
        if cfg.do_sample:
            logits = top_p_filter(top_k_filter(logits / cfg.temperature, cfg.top_k), cfg.top_p)
        return logits


# -- inputs ------------------------------------------------------------------------------------

def left_padded(prompts: Sequence[Sequence[int]], bos_id: int | None, pad_id: int,
                device: torch.device) -> tuple[Tensor, Tensor]:
    """``[bos] + prompt`` per row, left-padded to one length: (ids (B, T), real (B, T))."""
    rows = [([bos_id] if bos_id is not None else []) + list(p) for p in prompts]
    if any(not r for r in rows):
        raise GenerationError("a prompt is empty and there is no bos_id to start from")
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    real = torch.zeros(len(rows), T, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, T - len(r):] = torch.tensor(r, dtype=torch.long)
        real[i, T - len(r):] = True
    return ids.to(device), real.to(device)


@dataclass
class _Start:
    context: Tensor | None
    context_mask: Tensor | None
    ids: Tensor
    real: Tensor


def _prepare(decoder: TextDecoder, context: Tensor | None, context_mask: Tensor | None, batch: int | None,
             prompts: Sequence[Sequence[int]] | None, bos_id: int | None, cfg: GenerationConfig) -> _Start:
    if context is not None and context.dim() != 3:
        raise GenerationError(f"context must be (batch, tokens, width), got shape {tuple(context.shape)}")
    B = context.size(0) if context is not None else (len(prompts) if prompts is not None else batch)
    if not B:
        raise GenerationError("nothing to generate from: give a context, prompts or a batch size")
    if prompts is None:
        prompts = [[] for _ in range(B)]
    if len(prompts) != B:
        raise GenerationError(f"{len(prompts)} prompts for a batch of {B} contexts")
    for p in prompts:
        for t in p:
            if not 0 <= int(t) < decoder.vocab_size:
                raise GenerationError(f"prompt token id {t} is outside the vocabulary (0..{decoder.vocab_size - 1})")
    device = decoder.token.weight.device
    ids, real = left_padded(prompts, bos_id, decoder.pad_id, device)
    if ids.size(1) + cfg.max_new_tokens > decoder.max_positions:
        raise GenerationError(f"max_new_tokens={cfg.max_new_tokens}: a prompt of {ids.size(1)} tokens plus "
                              f"{cfg.max_new_tokens} new ones is past the decoder's {decoder.max_positions} positions")
    if context_mask is not None and context is not None and tuple(context_mask.shape) != tuple(context.shape[:2]):
        raise GenerationError(f"context_mask {tuple(context_mask.shape)} does not match context {tuple(context.shape[:2])}")
    return _Start(context, None if context_mask is None else context_mask.bool(), ids, real)


def _positions(real: Tensor) -> Tensor:
    return (real.long().cumsum(1) - 1).clamp(min=0)


# -- decoding ----------------------------------------------------------------------------------

def row_argmax(x: Tensor, block: int = 64) -> Tensor:
    """``x.argmax(-1)`` of a 2-D tensor (the first maximum of each row), by way of each block's
    ``amax``, because on a CPU torch's argmax over a vocabulary-wide row is not vectorised
    (benchmarks/README.md, "Decoding speed")."""
    rows, width = x.shape
    if width <= block:
        return x.argmax(-1)
    pad = -width % block
    blocks = (F.pad(x, (0, pad), value=float("-inf")) if pad else x).view(rows, (width + pad) // block, block)
    first = blocks.amax(-1).argmax(-1)  # the first block holding each row's maximum
    within = blocks[torch.arange(rows, device=x.device), first].argmax(-1)
    return first * block + within


@dataclass
class _Step:
    token: Tensor      # (B,) the step's token per row (padding for rows already stopped)
    emitted: Tensor    # (B,) True where the token is new text (not a stop token, row not stopped)
    logprob: Tensor    # (B,) its log-probability under the processed distribution


def _steps(decoder: TextDecoder, start: _Start, cfg: GenerationConfig, stop_ids: Sequence[int],
           banned_ids: Sequence[int]) -> Iterator[_Step]:
    """Greedy or sampled decoding with the cache, one step per iteration, until every row has
    stopped or max_new_tokens.

    A step is the decoder on one token per row and a handful of ops around it: the sequences
    are kept only when a processor reads them, the self-attention mask only when a prompt is
    padded, and a greedy step is one fused log-softmax and ``row_argmax``, cheaper on a CPU than
    ``max`` with indices and ``logsumexp`` (benchmarks/README.md, "Decoding speed").
    """
    generator = None
    if cfg.do_sample and cfg.seed is not None:
        generator = torch.Generator(device=start.ids.device).manual_seed(cfg.seed)
    process = LogitsProcessor(cfg, stop_ids, banned_ids)
    history = process.needs_history
    stops = torch.tensor(list(stop_ids), dtype=torch.long, device=start.ids.device)
    cache = decoder.new_cache()
    ids, real = start.ids, start.real
    mask = None if bool(real.all()) else real
    positions = _positions(real)
    logits = decoder(ids, start.context, start.context_mask, mask=mask, positions=positions, cache=cache)[:, -1]
    next_position = positions[:, -1:] + 1  # (B, 1)
    alive = torch.ones(ids.size(0), dtype=torch.bool, device=ids.device)
    all_alive = True  # no row has stopped yet: nothing to mask
    for made in range(cfg.max_new_tokens):
        scores = process(logits.float(), ids if history else None, real if history else None, made)
        if cfg.do_sample:
            token = torch.multinomial(scores.softmax(-1), 1, generator=generator).squeeze(1)
            logprob = scores.gather(1, token[:, None]).squeeze(1) - scores.logsumexp(-1)
        else:
            logp = scores.log_softmax(-1)
            token = row_argmax(logp)
            logprob = logp.gather(1, token[:, None]).squeeze(1)
        if not all_alive:
            token = token.masked_fill(~alive, decoder.pad_id)
        stopped = torch.isin(token, stops) & alive
        yield _Step(token, alive & ~stopped, logprob)
        if history:
            real = torch.cat([real, alive[:, None]], dim=1)
        alive = alive & ~stopped
        if made + 1 == cfg.max_new_tokens:
            return
        if stop_ids:
            all_alive = bool(alive.all())
            if not all_alive and not bool(alive.any()):
                return
        if history:
            ids = torch.cat([ids, token[:, None]], dim=1)
        if mask is not None:
            mask = torch.cat([mask, torch.ones_like(alive)[:, None]], dim=1)
        logits = decoder(token[:, None], None, start.context_mask, mask=mask, positions=next_position,
                         cache=cache)[:, -1]
        next_position = next_position + 1


@torch.no_grad()
def stream(decoder: TextDecoder, context: Tensor | None = None, context_mask: Tensor | None = None, *,
           bos_id: int | None, stop_ids: Sequence[int] = (), prompts: Sequence[Sequence[int]] | None = None,
           config: GenerationConfig | None = None, banned_ids: Sequence[int] = (), batch: int | None = None,
           **options) -> Iterator[list[int | None]]:
    """Greedy or sampled decoding, one step at a time: yields, per step, each row's new token,
    or None for a row that has stopped (a stop token is never yielded).

    context (B, S, W) with context_mask (B, S) True = real (None: a decoder without a source,
    then give ``batch`` or ``prompts``); ``prompts`` the decoder's own start per row (after
    ``bos_id``), any lengths; ``options`` override ``config``'s fields.
    """
    cfg = (config or GenerationConfig()).replace(**options).check(decoder.vocab_size)
    if cfg.num_beams > 1:
        raise GenerationError("num_beams > 1: beam search cannot stream (its best sequence is known only at the "
                              "end); stream with num_beams=1")
    start = _prepare(decoder, context, context_mask, batch, prompts, bos_id, cfg)
    for step in _steps(decoder, start, cfg, stop_ids, banned_ids):
        yield [int(t) if e else None for t, e in zip(step.token.tolist(), step.emitted.tolist())]


@torch.no_grad()
def generate(decoder: TextDecoder, context: Tensor | None = None, context_mask: Tensor | None = None, *,
             bos_id: int | None, stop_ids: Sequence[int] = (), prompts: Sequence[Sequence[int]] | None = None,
             config: GenerationConfig | None = None, banned_ids: Sequence[int] = (), batch: int | None = None,
             **options) -> list[Generated]:
    """One ``Generated`` per row: greedy, sampled (``do_sample``) or beam search (``num_beams``).

    Arguments as for ``stream()``; ``options`` override ``config``'s fields (``num_beams=4``).
    """
    cfg = (config or GenerationConfig()).replace(**options).check(decoder.vocab_size)
    start = _prepare(decoder, context, context_mask, batch, prompts, bos_id, cfg)
    if cfg.num_beams > 1:
        return _beam_search(decoder, start, cfg, stop_ids, banned_ids)
    steps = list(_steps(decoder, start, cfg, stop_ids, banned_ids))
    emitted = torch.stack([step.emitted for step in steps], dim=1)           # (B, T)
    kept = emitted.long().cumprod(dim=1).bool()  # the tokens before a row's first stop
    counted = torch.cat([torch.ones_like(kept[:, :1]), kept[:, :-1]], dim=1)  # ... and that stop
    logprob = torch.stack([step.logprob for step in steps], dim=1).double()
    scores = torch.where(counted, logprob, torch.zeros_like(logprob)).sum(dim=1)  # the stop token's included
    tokens = torch.stack([step.token for step in steps], dim=1)
    return [Generated([t for t, k in zip(row, keep) if k], score, not all(keep))
            for row, keep, score in zip(tokens.tolist(), kept.tolist(), scores.tolist())]


def beam_candidates(scores: Tensor, beam_scores: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Each row's best 2K continuations (score, beam, token), best first: ``scores`` (B*K, V) the
    step's processed logits, ``beam_scores`` (B, K) the beams' log-probabilities so far.

    A beam's score is the same for all its tokens, so each beam's best 2K tokens hold every
    continuation of it that its row's best 2K can take: the row chooses among K * 2K, not
    K * V, and the log-softmax is needed only as its normaliser (benchmarks/README.md, "The
    beam's candidates").
    """
    B, K = beam_scores.shape
    per_beam = min(2 * K, scores.size(1))
    best, best_tokens = scores.topk(per_beam, dim=1)                                   # (B*K, 2K)
    candidates = (best - scores.logsumexp(-1, keepdim=True) + beam_scores.reshape(-1, 1)).view(B, K * per_beam)
    top, index = candidates.topk(min(2 * K, K * per_beam), dim=1)
    return top, index // per_beam, best_tokens.view(B, K * per_beam).gather(1, index)


def _beam_search(decoder: TextDecoder, start: _Start, cfg: GenerationConfig, stop_ids: Sequence[int],
                 banned_ids: Sequence[int]) -> list[Generated]:
    """Beam search as Hugging Face does it: 2K candidates a step, stop-token candidates ranked in
    the first K become finished hypotheses, a row is done when K are finished and no running beam
    can beat the worst of them.

    The bookkeeping stays in tensors: a row whose first K candidates hold no stop token, that has
    fewer than K finished hypotheses and is not done simply keeps its K best candidates; only the
    other rows go through the rules above in Python. The beams' tokens are the rows of ``ids``
    (reordered with the cache), read out for a hypothesis when it finishes and at the end. The
    K beams of a row share its context: cross-attention reads it once for all of them.
    """
    K, B = cfg.num_beams, start.ids.size(0)
    expand = lambda t: None if t is None else t.repeat_interleave(K, dim=0)  # noqa: E731
    ids, real = expand(start.ids), expand(start.real)
    ctx, ctx_mask = start.context, start.context_mask  # (B, ...): see TextDecoder.forward
    device = ids.device
    process = LogitsProcessor(cfg, stop_ids, banned_ids)
    keep_real = process.needs_history
    stops = set(int(s) for s in stop_ids)
    stop_index = torch.tensor(sorted(stops), dtype=torch.long, device=device)
    T0 = ids.size(1)
    cache = decoder.new_cache()
    mask = None if bool(real.all()) else real
    keep_real = keep_real or mask is not None
    positions = _positions(real)
    logits = decoder(ids, ctx, ctx_mask, mask=mask, positions=positions, cache=cache)[:, -1]
    next_position = positions[:, -1:] + 1
    beam_scores = torch.zeros(B, K, device=device)
    beam_scores[:, 1:] = float("-inf")  # every beam starts as the same sequence: count it once
    offsets = torch.arange(B, device=device)[:, None] * K
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]
    done = [False] * B
    penalty = lambda n: n ** cfg.length_penalty  # noqa: E731
    for made in range(cfg.max_new_tokens):
        top, beam, tok = beam_candidates(process(logits.float(), ids, real, made), beam_scores)
        length = made + 1
        new_scores, new_beams, new_tokens = top[:, :K].contiguous(), beam[:, :K].contiguous(), tok[:, :K].contiguous()
        slow = {b for b in range(B) if done[b] or len(finished[b]) == K}
        if stops:
            slow.update(torch.isin(tok[:, :K], stop_index).any(dim=1).nonzero().flatten().tolist())
        for b in sorted(slow):
            chosen: list[tuple[float, int, int]] = []
            if not done[b]:
                for rank, (score, bm, t) in enumerate(zip(top[b].tolist(), beam[b].tolist(), tok[b].tolist())):
                    if t in stops:
                        if rank < K and score > float("-inf"):
                            finished[b].append((score / penalty(length), ids[b * K + bm, T0:].tolist()))
                    else:
                        chosen.append((score, bm, t))
                    if len(chosen) == K:
                        break
                finished[b] = sorted(finished[b], key=lambda h: -h[0])[:K]
                best_running = max((c[0] for c in chosen), default=float("-inf"))
                if len(finished[b]) == K and finished[b][-1][0] >= best_running / penalty(length):
                    done[b] = True
            while len(chosen) < K:  # a done row (or too few candidates): pad with dead beams
                chosen.append((float("-inf"), 0, decoder.pad_id))
            new_scores[b] = torch.tensor([c[0] for c in chosen], dtype=new_scores.dtype)
            new_beams[b] = torch.tensor([c[1] for c in chosen])
            new_tokens[b] = torch.tensor([c[2] for c in chosen])
        order = (new_beams + offsets).view(-1)
        token = new_tokens.view(-1)
        beam_scores = new_scores
        ids = torch.cat([ids.index_select(0, order), token[:, None]], dim=1)
        if all(done) or made + 1 == cfg.max_new_tokens:
            break
        if keep_real:
            real = torch.cat([real.index_select(0, order), torch.ones_like(token, dtype=torch.bool)[:, None]], dim=1)
        if mask is not None:
            mask = real
        for own, _cross in cache:  # beams of one row share a context: the cross caches need no reorder
            own.reorder(order)
        logits = decoder(token[:, None], None, ctx_mask, mask=mask, positions=next_position, cache=cache)[:, -1]
        next_position = next_position + 1
    running, running_scores = ids[:, T0:].tolist(), beam_scores.tolist()
    out = []
    for b in range(B):
        hyps = [(s, t, True) for s, t in finished[b]]
        if not done[b]:  # ran out of tokens: the running beams compete as they are
            hyps += [(s / penalty(cfg.max_new_tokens), t, False)
                     for s, t in zip(running_scores[b], running[b * K:(b + 1) * K]) if s > float("-inf")]
        score, tokens, stopped = max(hyps, key=lambda h: h[0])
        out.append(Generated(list(tokens), score, stopped))
    return out
