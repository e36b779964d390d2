"""The text decoder's KV cache and generate(): every strategy against a plain reference."""
import itertools

import pytest
import torch
import torch.nn.functional as F

from omniformer.model.decoder import TextDecoder
from omniformer.model.fusion import init_weights
from omniformer.model.generate import (GenerationConfig, GenerationError, banned_ngram_tokens, beam_candidates,
                                       generate, row_argmax, stream, top_p_filter)

V, W, PAD, BOS, EOS = 13, 32, 0, 1, 2


def make_decoder(seed=0, vocab=V, positions=40, norm="pre"):
    torch.manual_seed(seed)
    dec = TextDecoder(vocab, positions, depth=2, width=W, heads=4, mlp_hidden=64, norm=norm, pad_id=PAD)
    dec.apply(init_weights)
    with torch.no_grad():  # a peaked distribution, so that strategies differ and ties do not occur
        dec.token.weight.mul_(4.0)
        dec.positions.weight.mul_(4.0)
    return dec.eval()


def contexts(lengths, seed=1):
    g = torch.Generator().manual_seed(seed)
    S = max(lengths)
    ctx = torch.randn(len(lengths), S, W, generator=g)
    mask = torch.arange(S)[None, :] < torch.tensor(lengths)[:, None]
    return ctx, mask


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_cached_logits_equal_uncached_with_padded_batches(norm):
    dec = make_decoder(norm=norm)
    ctx, ctx_mask = contexts([5, 2, 7])
    g = torch.Generator().manual_seed(3)
    # left-padded prompts of 4, 1 and 6 tokens, then 5 more tokens each
    lengths, T = [4, 1, 6], 11
    ids = torch.randint(3, V, (3, T), generator=g)
    real = torch.ones(3, T, dtype=torch.bool)
    for i, n in enumerate(lengths):
        real[i, : 6 - n] = False
        ids[i, : 6 - n] = PAD
    positions = (real.long().cumsum(1) - 1).clamp(min=0)
    full = dec(ids, ctx, ctx_mask, mask=real, positions=positions)
    cache = dec.new_cache()
    steps = [dec(ids[:, :6], ctx, ctx_mask, mask=real[:, :6], positions=positions[:, :6], cache=cache)]
    for t in range(6, T):
        steps.append(dec(ids[:, t:t + 1], None, ctx_mask, mask=real[:, : t + 1], positions=positions[:, t:t + 1],
                         cache=cache))
    cached = torch.cat(steps, dim=1)
    assert (cached - full)[real].abs().max() <= 1e-5


def test_cached_logits_equal_uncached_without_padding():
    dec = make_decoder()
    ctx, _ = contexts([6, 6])
    ids = torch.randint(3, V, (2, 9), generator=torch.Generator().manual_seed(0))
    full = dec(ids, ctx)
    cache = dec.new_cache()
    cached = torch.cat([dec(ids[:, :3], ctx, cache=cache)] + [dec(ids[:, t:t + 1], None, cache=cache)
                                                              for t in range(3, 9)], dim=1)
    assert (cached - full).abs().max() <= 1e-5


def greedy_reference(dec, ctx, ctx_mask, prompt, max_new, stop=(EOS,)):
    """Greedy decoding of one row by re-running the whole sequence each step, no cache."""
    seq = [BOS] + list(prompt)
    out = []
    for _ in range(max_new):
        logits = dec(torch.tensor([seq]), ctx, ctx_mask)[0, -1].clone()
        logits[[PAD, BOS]] = float("-inf")
        t = int(logits.argmax())
        if t in stop:
            break
        out.append(t)
        seq.append(t)
    return out


def test_greedy_batch_of_different_lengths_equals_each_row_alone_without_cache():
    dec = make_decoder()
    ctx, ctx_mask = contexts([5, 2, 7, 3])
    prompts = [[4, 5], [], [6, 7, 8], [9]]
    got = generate(dec, ctx, ctx_mask, bos_id=BOS, stop_ids=[EOS], prompts=prompts, banned_ids=[PAD, BOS],
                   max_new_tokens=12)
    for i, p in enumerate(prompts):
        n = int(ctx_mask[i].sum())
        assert got[i].tokens == greedy_reference(dec, ctx[i:i + 1, :n], None, p, 12)
    assert any(len(g.tokens) > 3 for g in got)


def test_beam_of_width_one_is_greedy():
    dec = make_decoder()
    ctx, ctx_mask = contexts([5, 2, 7])
    kw = dict(bos_id=BOS, stop_ids=[EOS], banned_ids=[PAD, BOS], max_new_tokens=15, repetition_penalty=1.3,
              no_repeat_ngram_size=2)
    greedy = generate(dec, ctx, ctx_mask, **kw)
    beam = generate(dec, ctx, ctx_mask, num_beams=1, **kw)
    assert [g.tokens for g in greedy] == [b.tokens for b in beam]


def sequence_logprob(dec, ctx, tokens):
    seq = torch.tensor([[BOS] + tokens])
    logp = F.log_softmax(dec(seq, ctx)[0, :-1].float(), dim=-1)
    return float(logp.gather(1, seq[0, 1:, None]).sum().detach())


def test_beam_as_wide_as_the_vocabulary_finds_the_best_two_tokens():
    """K = V keeps every first token, so after two steps beam search is exhaustive."""
    dec = make_decoder(vocab=6)
    ctx, _ = contexts([4])
    best = max(itertools.product(range(6), repeat=2), key=lambda p: sequence_logprob(dec, ctx, list(p)))
    got = generate(dec, ctx, bos_id=BOS, num_beams=6, max_new_tokens=2, length_penalty=0.0)
    assert tuple(got[0].tokens) == best
    assert got[0].score == pytest.approx(sequence_logprob(dec, ctx, list(best)), abs=1e-4)


def test_beam_scores_at_least_greedy_and_length_penalty_counts_new_tokens_only():
    dec = make_decoder()
    ctx, ctx_mask = contexts([5, 7])
    kw = dict(bos_id=BOS, stop_ids=[EOS], banned_ids=[PAD, BOS], max_new_tokens=10)
    for prompts in ([[], []], [[4, 5, 6, 7, 8], [9, 10, 11, 3, 4]]):
        beam = generate(dec, ctx, ctx_mask, prompts=prompts, num_beams=4, length_penalty=1.0, **kw)
        for i, b in enumerate(beam):
            n = len(b.tokens) + (1 if b.stopped else 0)  # the stop token counts
            seq = prompts[i] + b.tokens + ([EOS] if b.stopped else [])
            full = torch.tensor([[BOS] + seq])
            m = int(ctx_mask[i].sum())
            logits = dec(full, ctx[i:i + 1, :m])[0, :-1].clone()
            logits[:, [PAD, BOS]] = float("-inf")
            lp = F.log_softmax(logits, -1).gather(1, full[0, 1:, None]).squeeze(1)[len(prompts[i]):].sum()
            assert b.score == pytest.approx(float(lp.detach()) / n, abs=1e-4)


def test_seeded_sampling_is_reproducible_and_seeds_differ():
    dec = make_decoder()
    ctx, ctx_mask = contexts([5, 2])
    kw = dict(bos_id=BOS, stop_ids=[EOS], banned_ids=[PAD, BOS], max_new_tokens=20, do_sample=True,
              temperature=1.5, top_k=8, top_p=0.95)
    a = generate(dec, ctx, ctx_mask, seed=7, **kw)
    b = generate(dec, ctx, ctx_mask, seed=7, **kw)
    c = [generate(dec, ctx, ctx_mask, seed=s, **kw) for s in range(8, 12)]
    assert [g.tokens for g in a] == [g.tokens for g in b]
    assert any([g.tokens for g in x] != [g.tokens for g in a] for x in c)


def test_top_p_keeps_the_smallest_set_whose_mass_reaches_p():
    probs = torch.tensor([[0.5, 0.05, 0.3, 0.15]])
    logits = probs.log()
    kept = lambda p: set(torch.nonzero(top_p_filter(logits.clone(), p)[0] > float("-inf")).flatten().tolist())  # noqa: E731
    assert kept(0.5) == {0}
    assert kept(0.51) == {0, 2}
    assert kept(0.8) == {0, 2}
    assert kept(0.81) == {0, 2, 3}
    assert kept(0.01) == {0}
    assert kept(1.0) == {0, 1, 2, 3}


@pytest.mark.parametrize("width", [1, 63, 64, 65, 8000, 8001])
def test_row_argmax_is_the_first_maximum_of_each_row(width):
    g = torch.Generator().manual_seed(width)
    x = torch.randint(-3, 4, (9, width), generator=g).float()  # many ties
    x[0] = float("-inf")  # a row with every token barred
    x[1, width // 2:] = float("inf") if width > 1 else x[1, 0]
    x[2] = torch.randn(width, generator=g)
    assert torch.equal(row_argmax(x), x.argmax(-1))
    assert row_argmax(x[:0]).shape == (0,)  # no rows (a batch whose targets are all padding)


def test_top_k_one_sampling_is_greedy():
    dec = make_decoder()
    ctx, ctx_mask = contexts([5, 3])
    kw = dict(bos_id=BOS, stop_ids=[EOS], banned_ids=[PAD, BOS], max_new_tokens=12)
    greedy = generate(dec, ctx, ctx_mask, **kw)
    sampled = generate(dec, ctx, ctx_mask, do_sample=True, top_k=1, seed=0, **kw)
    assert [g.tokens for g in greedy] == [s.tokens for s in sampled]


def test_no_repeat_ngrams_and_repetition_penalty():
    dec = make_decoder()
    ctx, _ = contexts([4, 4, 4])
    kw = dict(bos_id=BOS, banned_ids=[PAD, BOS], max_new_tokens=30)
    plain = generate(dec, ctx, **kw)

    def repeats(tokens, n):
        grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
        return len(grams) - len(set(grams))
    assert sum(repeats(g.tokens, 2) for g in plain) > 0  # the model loops, so the option has work to do
    for g in generate(dec, ctx, no_repeat_ngram_size=2, **kw):
        assert repeats(g.tokens, 2) == 0
    distinct = lambda gens: sum(len(set(g.tokens)) for g in gens)  # noqa: E731
    assert distinct(generate(dec, ctx, repetition_penalty=3.0, **kw)) > distinct(plain)
    assert banned_ngram_tokens([1, 2, 3, 1, 2], 3) == [3]
    assert banned_ngram_tokens([5, 5, 5], 1) == [5, 5, 5]


def test_min_and_max_new_tokens_and_stop_tokens():
    dec = make_decoder()
    ctx, _ = contexts([4, 4])
    # make every step prefer the stop token, so min_new_tokens has to hold it back
    with torch.no_grad():
        dec.bias[EOS] = 50.0
    kw = dict(bos_id=BOS, stop_ids=[EOS], banned_ids=[PAD, BOS])
    assert [g.tokens for g in generate(dec, ctx, max_new_tokens=9, **kw)] == [[], []]
    for strategy in ({}, {"num_beams": 3}, {"do_sample": True, "seed": 1}):
        got = generate(dec, ctx, max_new_tokens=9, min_new_tokens=4, **kw, **strategy)
        assert all(len(g.tokens) == 4 and g.stopped for g in got), strategy
    with torch.no_grad():
        dec.bias[EOS] = -50.0
    got = generate(dec, ctx, max_new_tokens=7, **kw)
    assert all(len(g.tokens) == 7 and not g.stopped for g in got)


def test_streaming_yields_the_same_tokens_as_generate_for_a_batch():
    dec = make_decoder()
    ctx, ctx_mask = contexts([5, 2, 7])
    kw = dict(bos_id=BOS, stop_ids=[EOS, 5], banned_ids=[PAD, BOS], max_new_tokens=15)
    whole = generate(dec, ctx, ctx_mask, **kw)
    rows = [[] for _ in range(3)]
    steps = 0
    for step in stream(dec, ctx, ctx_mask, **kw):
        steps += 1
        for i, t in enumerate(step):
            if t is not None:
                rows[i].append(t)
    assert rows == [g.tokens for g in whole]
    assert steps == max(len(g.tokens) + g.stopped for g in whole)


@pytest.mark.parametrize("options, name", [
    ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p"), ({"temperature": 0.0}, "temperature"),
    ({"temperature": -1.0}, "temperature"), ({"num_beams": V + 1}, "num_beams"), ({"num_beams": 0}, "num_beams"),
    ({"max_new_tokens": 0}, "max_new_tokens"), ({"min_new_tokens": 99}, "min_new_tokens"),
    ({"top_k": -1}, "top_k"), ({"repetition_penalty": 0.0}, "repetition_penalty"),
    ({"no_repeat_ngram_size": -2}, "no_repeat_ngram_size"), ({"max_new_tokens": 1.5}, "max_new_tokens"),
    ({"top_p": float("nan")}, "top_p"), ({"beams": 2}, "beams"), ({"max_new_tokens": 60}, "max_new_tokens"),
])
def test_bad_options_are_refused_by_name(options, name):
    dec = make_decoder()
    ctx, _ = contexts([3])
    with pytest.raises(GenerationError, match=name):
        generate(dec, ctx, bos_id=BOS, **options)


def test_beam_search_does_not_stream_and_prompt_ids_are_checked():
    dec = make_decoder()
    ctx, _ = contexts([3])
    with pytest.raises(GenerationError, match="num_beams"):
        next(stream(dec, ctx, bos_id=BOS, num_beams=2))
    with pytest.raises(GenerationError, match="outside the vocabulary"):
        generate(dec, ctx, bos_id=BOS, prompts=[[V + 3]])
    with pytest.raises(GenerationError, match="prompts"):
        generate(dec, ctx, bos_id=BOS, prompts=[[3], [4]])
    assert GenerationConfig().check(V).num_beams == 1


def test_decoder_learns_to_reverse_a_source_and_every_strategy_decodes_it():
    """Learning, end to end: an encoder over the source and the decoder trained with teacher forcing
    reverse unseen sequences; greedy, beam and low-temperature sampling all read it back."""
    from omniformer.model.transformer import Encoder
    torch.manual_seed(0)
    vocab, width = 12, 48
    embed = torch.nn.Embedding(vocab, width)
    pos = torch.nn.Parameter(torch.randn(8, width) * 0.3)
    enc = Encoder(2, width, 4, 96)
    dec = TextDecoder(vocab, 16, depth=2, width=width, heads=4, mlp_hidden=96, pad_id=PAD)
    params = [*embed.parameters(), pos, *enc.parameters(), *dec.parameters()]
    opt = torch.optim.AdamW(params, lr=3e-3)
    g = torch.Generator().manual_seed(0)

    def batch(n):
        lengths = torch.randint(3, 7, (n,), generator=g)
        src = torch.randint(3, vocab, (n, 6), generator=g)
        mask = torch.arange(6)[None] < lengths[:, None]
        src = src.masked_fill(~mask, PAD)
        tgt = torch.full((n, 8), PAD)
        for i, L in enumerate(lengths.tolist()):
            tgt[i, : L + 2] = torch.tensor([BOS] + src[i, :L].flip(0).tolist() + [EOS])
        return src, mask, tgt

    def encode(src, mask):
        return enc(embed(src) + pos[: src.size(1)], mask)

    for _ in range(400):
        src, mask, tgt = batch(64)
        logits = dec(tgt[:, :-1], encode(src, mask), mask, mask=tgt[:, :-1] != PAD)
        loss = F.cross_entropy(logits.reshape(-1, vocab), tgt[:, 1:].reshape(-1), ignore_index=PAD)
        opt.zero_grad()
        loss.backward()
        opt.step()
    dec.eval(), enc.eval()
    src, mask, tgt = batch(100)
    with torch.no_grad():
        ctx = encode(src, mask)
    want = [[t for t in row.tolist()[1:] if t not in (PAD, EOS)] for row in tgt]
    kw = dict(bos_id=BOS, stop_ids=[EOS], banned_ids=[PAD, BOS], max_new_tokens=8)
    for strategy in ({}, {"num_beams": 4}, {"do_sample": True, "temperature": 0.1, "seed": 0}):
        got = generate(dec, ctx, mask, **kw, **strategy)
        exact = sum(g.tokens == w and g.stopped for g, w in zip(got, want)) / len(want)
        assert exact >= 0.9, (strategy, exact)


@pytest.mark.parametrize("batch,beams,vocab", [(3, 4, 50), (2, 1, 7), (4, 3, 5), (1, 5, 8000)])
def test_beam_candidates_are_the_best_of_all_beams_times_all_tokens(batch, beams, vocab):
    g = torch.Generator().manual_seed(batch * beams)
    scores = torch.randn(batch * beams, vocab, generator=g) * 3
    scores[torch.rand(scores.shape, generator=g) < 0.2] = float("-inf")  # banned tokens
    scores[:, 0] = 0.0                                                  # every beam keeps one token
    beam_scores = -torch.rand(batch, beams, generator=g) * 5
    beam_scores[0, 1:] = float("-inf")                                  # the first step: one live beam
    top, beam, tok = beam_candidates(scores, beam_scores)
    flat = (beam_scores.reshape(-1, 1) + F.log_softmax(scores, dim=-1)).view(batch, beams * vocab)
    want, index = flat.topk(min(2 * beams, beams * vocab), dim=1)
    assert torch.allclose(top, want, atol=1e-5)
    live = want > float("-inf")
    assert torch.equal(beam[live], (index // vocab)[live]) and torch.equal(tok[live], (index % vocab)[live])
