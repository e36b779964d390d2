import torch
from torch import nn

from omniformer.model.attention import MultiHeadAttention, build_attention_mask


def _pair(width=16, heads=4, cross=False, dtype=torch.float64):
    torch.manual_seed(0)
    ours = MultiHeadAttention(width, heads, cross=cross).to(dtype).eval()
    ref = nn.MultiheadAttention(width, heads, batch_first=True).to(dtype).eval()
    with torch.no_grad():
        if cross:
            ours.q.weight.copy_(ref.in_proj_weight[:width]); ours.q.bias.copy_(ref.in_proj_bias[:width])
            ours.kv.weight.copy_(ref.in_proj_weight[width:]); ours.kv.bias.copy_(ref.in_proj_bias[width:])
        else:
            ours.qkv.weight.copy_(ref.in_proj_weight); ours.qkv.bias.copy_(ref.in_proj_bias)
        ours.proj.weight.copy_(ref.out_proj.weight); ours.proj.bias.copy_(ref.out_proj.bias)
    return ours, ref


def test_self_attention_matches_torch_without_mask():
    ours, ref = _pair()
    x = torch.randn(3, 7, 16, dtype=torch.float64)
    expected, _ = ref(x, x, x, need_weights=False)
    assert (ours(x) - expected).abs().max() <= 1e-6


def test_self_attention_matches_torch_with_padding():
    ours, ref = _pair()
    x = torch.randn(3, 7, 16, dtype=torch.float64)
    valid = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5], dtype=torch.bool)
    expected, _ = ref(x, x, x, key_padding_mask=~valid, need_weights=False)
    assert (ours(x, key_padding_mask=valid) - expected).abs().max() <= 1e-6


def test_self_attention_float32_close():
    ours, ref = _pair(dtype=torch.float32)
    x = torch.randn(2, 9, 16)
    valid = torch.ones(2, 9, dtype=torch.bool); valid[1, 5:] = False
    expected, _ = ref(x, x, x, key_padding_mask=~valid, need_weights=False)
    assert (ours(x, key_padding_mask=valid) - expected).abs().max() <= 1e-5


def test_cross_attention_matches_torch():
    ours, ref = _pair(cross=True)
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    ctx = torch.randn(2, 8, 16, dtype=torch.float64)
    valid = torch.ones(2, 8, dtype=torch.bool); valid[0, 6:] = False
    expected, _ = ref(x, ctx, ctx, key_padding_mask=~valid, need_weights=False)
    assert (ours(x, key_padding_mask=valid, context=ctx) - expected).abs().max() <= 1e-6
    expected, _ = ref(x, ctx, ctx, need_weights=False)
    assert (ours(x, context=ctx) - expected).abs().max() <= 1e-6


def test_causal_matches_torch_and_is_fast_path_without_padding():
    ours, ref = _pair()
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    causal = torch.ones(6, 6, dtype=torch.bool).triu(1)  # True = not allowed (torch's convention)
    expected, _ = ref(x, x, x, attn_mask=causal, need_weights=False)
    assert (ours(x, causal=True) - expected).abs().max() <= 1e-6
    assert build_attention_mask(None, True, 6, 6) is None  # is_causal=True path
    valid = torch.ones(2, 6, dtype=torch.bool); valid[1, 4:] = False
    expected, _ = ref(x, x, x, attn_mask=causal, key_padding_mask=~valid, need_weights=False)
    got = ours(x, key_padding_mask=valid, causal=True)
    assert (got - expected)[valid].abs().max() <= 1e-6


def test_fully_masked_rows_are_finite():
    ours, _ = _pair(dtype=torch.float32)
    x = torch.randn(2, 5, 16)
    valid = torch.zeros(2, 5, dtype=torch.bool); valid[0] = True
    assert torch.isfinite(ours(x, key_padding_mask=valid)).all()
    assert torch.isfinite(ours(x, key_padding_mask=valid, causal=True)).all()
    mask = build_attention_mask(valid, False, 5, 5)
    assert mask.shape == (2, 1, 1, 5) and mask[1].all()


def test_dropout_only_in_training():
    torch.manual_seed(0)
    attn = MultiHeadAttention(16, 4, dropout=0.5)
    x = torch.randn(2, 5, 16)
    attn.eval()
    assert torch.equal(attn(x), attn(x))
    attn.train()
    assert not torch.equal(attn(x), attn(x))


def test_cross_attention_groups_rows_that_share_a_context():
    """B contexts for B * K query rows (beam search): the same as each context repeated K times,
    with and without a cache, the context's mask built once into the cache."""
    from omniformer.model.attention import KVCache
    ours, _ = _pair(cross=True)
    B, K = 3, 4
    ctx = torch.randn(B, 5, 16, dtype=torch.float64)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False], [True] + [False] * 4])
    x = torch.randn(B * K, 2, 16, dtype=torch.float64)
    expected = ours(x, key_padding_mask=mask.repeat_interleave(K, 0), context=ctx.repeat_interleave(K, 0))
    assert (ours(x, key_padding_mask=mask, context=ctx) - expected).abs().max() <= 1e-12
    cache = KVCache()
    first = ours(x[:, :1], key_padding_mask=mask, context=ctx, cache=cache)
    assert cache.mask is not None and cache.k.size(0) == B
    later = ours(x[:, 1:], key_padding_mask=mask, cache=cache)
    assert (torch.cat([first, later], 1) - expected).abs().max() <= 1e-12
