"""Attention of lesson 23 against PyTorch: the hand-written scaled dot-product attention equals `F.scaled_dot_product_attention`
(values and gradients) over shapes, masks and the causal option; a query with every key masked gets zeros and finite gradients;
`MultiHeadAttention` equals `nn.MultiheadAttention` with copied weights (self and cross, key padding mask inverted);
`TransformerBlock` equals `nn.TransformerEncoderLayer(norm_first=True)`; the text encoder and the image cross-attention ignore
padding; every parameter gets a gradient; bad input fails with a clear message."""
import math
import pytest, torch
from torch import nn
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from miniai.attention import attention_weights, attention, MultiHeadAttention, TransformerBlock, masked_mean, TextEncoder, CrossAttention2d

def randn(g, *shape): return torch.randn(*shape, generator=g)

def real_mask(g, n, L, p=0.5):
    "A bool [n, L] mask, True = real token, with at least one real token per row."
    m = torch.rand(n, L, generator=g) < p
    m[torch.arange(n), torch.randint(0, L, (n,), generator=g)] = True
    return m

@st.composite
def sdpa_cases(draw):
    "q, k, v with 0-2 batch dimensions, a mask (None, key padding [..., 1, Lk] or full [..., Lq, Lk]) and a causal flag."
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    batch = tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
    lq, lk, d, dv = draw(st.integers(1, 7)), draw(st.integers(1, 7)), draw(st.integers(1, 12)), draw(st.integers(1, 6))
    q, k, v = randn(g, *batch, lq, d), randn(g, *batch, lk, d), randn(g, *batch, lk, dv)
    kind = draw(st.sampled_from(['none', 'keys', 'full']))
    mask = None if kind == 'none' else torch.rand(*batch, 1 if kind == 'keys' else lq, lk, generator=g) < draw(st.floats(0., 1.))
    return q, k, v, mask, draw(st.booleans())

def torch_keep(mask, causal, lq, lk):
    "The combined bool mask to hand `F.scaled_dot_product_attention` (it refuses a mask together with is_causal)."
    tri = torch.ones(lq, lk, dtype=torch.bool).tril() if causal else None
    if mask is None: return tri
    return mask if tri is None else mask & tri

@settings(max_examples=200)
@given(sdpa_cases())
def test_attention_equals_torch_sdpa(case):
    q, k, v, mask, causal = case
    lq, lk = q.shape[-2], k.shape[-2]
    keep = torch_keep(mask, causal, lq, lk)
    ours = attention(q, k, v, mask, causal)
    assert ours.shape == (*q.shape[:-1], v.shape[-1])
    if keep is None:
        ref = F.scaled_dot_product_attention(q, k, v)
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5); return
    has_key = keep.expand(*q.shape[:-1], lk).any(-1)   # [..., Lq]
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
    torch.testing.assert_close(ours[has_key], ref[has_key], atol=1e-5, rtol=1e-5)
    assert (ours[~has_key] == 0).all()

@settings(max_examples=100)
@given(sdpa_cases())
def test_attention_weights_rows_sum_to_one_or_zero_and_hide_masked_keys(case):
    q, k, _, mask, causal = case
    w = attention_weights(q, k, mask, causal)
    keep = torch_keep(mask, causal, q.shape[-2], k.shape[-2])
    keep = torch.ones_like(w, dtype=torch.bool) if keep is None else keep.expand_as(w)
    assert (w[~keep] == 0).all() and (w >= 0).all()
    torch.testing.assert_close(w.sum(-1), keep.any(-1).float(), atol=1e-5, rtol=0)
    if causal: assert (w.triu(1) == 0).all()

@settings(max_examples=60)
@given(sdpa_cases())
def test_attention_gradients_equal_torch_and_stay_finite(case):
    q, k, v, mask, causal = case
    keep = torch_keep(mask, causal, q.shape[-2], k.shape[-2])
    ins = [t.clone().requires_grad_() for t in (q, k, v)]
    attention(*ins, mask, causal).pow(2).sum().backward()
    grads = [t.grad for t in ins]
    assert all(g.isfinite().all() for g in grads)
    if keep is None or keep.expand(*q.shape[:-1], k.shape[-2]).any(-1).all():   # compare where PyTorch is well defined
        ref = [t.clone().requires_grad_() for t in (q, k, v)]
        F.scaled_dot_product_attention(*ref, attn_mask=keep).pow(2).sum().backward()
        for a, b in zip(grads, ref): torch.testing.assert_close(a, b.grad, atol=1e-4, rtol=1e-4)

def test_all_masked_query_gets_zeros_and_zero_gradient():
    g = torch.Generator().manual_seed(0)
    q, k, v = randn(g, 2, 3, 4).requires_grad_(), randn(g, 2, 5, 4), randn(g, 2, 5, 2)
    mask = torch.tensor([[True] * 5, [False] * 5])[:, None, :]
    out = attention(q, k, v, mask)
    out.sum().backward()
    assert (out[1] == 0).all() and (q.grad[1] == 0).all() and q.grad[0].abs().sum() > 0

def test_scaling_is_one_over_sqrt_d():
    "With one key per value, the weights are a softmax of q.k/sqrt(d): compare with the formula directly."
    g = torch.Generator().manual_seed(1)
    q, k = randn(g, 3, 9), randn(g, 5, 9)
    torch.testing.assert_close(attention_weights(q, k), (q @ k.T / 3).softmax(-1))

@pytest.mark.parametrize('call,exc,msg', [
    (lambda: attention(torch.randn(2, 3, 4), torch.randn(2, 5, 3), torch.randn(2, 5, 2)), ValueError, 'same last dimension'),
    (lambda: attention(torch.randn(2, 3, 4), torch.randn(2, 5, 4), torch.randn(2, 6, 2)), ValueError, 'come in pairs'),
    (lambda: attention(torch.randn(2, 3, 4), torch.randn(2, 5, 4), torch.randn(2, 5, 2), torch.ones(2, 5)), TypeError, 'must be a bool tensor'),
    (lambda: attention(torch.randn(2, 3, 4), torch.randn(2, 5, 4), torch.randn(2, 5, 2), torch.ones(4, 5, dtype=torch.bool)), ValueError, 'does not broadcast'),
    (lambda: attention(torch.randn(2, 3, 4), torch.randn(2, 5, 4), torch.randn(2, 5, 2), torch.ones(2, 2, 3, 5, dtype=torch.bool)), ValueError, 'does not broadcast'),
])
def test_attention_errors(call, exc, msg):
    with pytest.raises(exc, match=msg): call()

def torch_mha(ours):
    "An `nn.MultiheadAttention` (batch_first) holding `ours`'s weights."
    d, dc = ours.d_model, ours.d_context
    ref = nn.MultiheadAttention(d, ours.n_heads, batch_first=True, kdim=dc, vdim=dc)
    with torch.no_grad():
        if dc == d: ref.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight]))
        else: ref.q_proj_weight.copy_(ours.q_proj.weight); ref.k_proj_weight.copy_(ours.k_proj.weight); ref.v_proj_weight.copy_(ours.v_proj.weight)
        ref.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
        ref.out_proj.weight.copy_(ours.out_proj.weight); ref.out_proj.bias.copy_(ours.out_proj.bias)
    return ref

@settings(max_examples=60)
@given(n_heads=st.integers(1, 4), head_dim=st.integers(1, 6), d_context=st.one_of(st.none(), st.integers(1, 10)),
       n=st.integers(1, 3), lq=st.integers(1, 6), lk=st.integers(1, 6), masked=st.booleans(), seed=st.integers(0, 2**16))
def test_mha_equals_torch(n_heads, head_dim, d_context, n, lq, lk, masked, seed):
    torch.manual_seed(seed)
    d = n_heads * head_dim
    ours = MultiHeadAttention(d, n_heads, d_context)
    ref = torch_mha(ours)
    g = torch.Generator().manual_seed(seed)
    x = randn(g, n, lq, d)
    ctx = None if d_context is None else randn(g, n, lk, d_context)
    kv = x if ctx is None else ctx
    mask = real_mask(g, n, kv.shape[1]) if masked else None
    with torch.no_grad():
        out = ours(x, ctx, mask)
        ref_out, ref_w = ref(x, kv, kv, key_padding_mask=None if mask is None else ~mask)   # PyTorch: True = ignore
        w = ours.attention_weights(x, ctx, mask)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w.mean(1), ref_w, atol=1e-5, rtol=1e-5)
    assert w.shape == (n, n_heads, lq, kv.shape[1])

@settings(max_examples=30)
@given(n_heads=st.integers(1, 3), head_dim=st.integers(1, 5), L=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_mha_causal_equals_torch(n_heads, head_dim, L, seed):
    torch.manual_seed(seed)
    ours = MultiHeadAttention(n_heads * head_dim, n_heads)
    x = torch.randn(2, L, n_heads * head_dim)
    hide = ~torch.ones(L, L, dtype=torch.bool).tril()
    with torch.no_grad(): ref = torch_mha(ours)(x, x, x, attn_mask=hide, is_causal=True)[0]
    with torch.no_grad(): torch.testing.assert_close(ours(x, causal=True), ref, atol=1e-5, rtol=1e-5)

def test_mha_query_without_keys_gives_exact_zero_not_bias():
    torch.manual_seed(0)
    m = MultiHeadAttention(8, 2, d_context=5)
    nn.init.normal_(m.out_proj.bias)
    x, ctx = torch.randn(2, 3, 8), torch.randn(2, 4, 5)
    mask = torch.tensor([[True, False, True, False], [False] * 4])
    out = m(x, ctx, mask)
    assert (out[1] == 0).all() and (out[0] != 0).any()
    out.sum().backward()
    assert all(p.grad.isfinite().all() for p in m.parameters())

@pytest.mark.parametrize('call,exc,msg', [
    (lambda: MultiHeadAttention(10, 4), ValueError, 'must be a multiple of n_heads'),
    (lambda: MultiHeadAttention(8, 0), ValueError, 'must be a multiple of n_heads'),
    (lambda: MultiHeadAttention(8, 2)(torch.randn(2, 3, 6)), ValueError, 'x must be'),
    (lambda: MultiHeadAttention(8, 2)(torch.randn(3, 8)), ValueError, 'x must be'),
    (lambda: MultiHeadAttention(8, 2, 5)(torch.randn(2, 3, 8), torch.randn(2, 4, 8)), ValueError, 'd_context=5'),
    (lambda: MultiHeadAttention(8, 2, 5)(torch.randn(2, 3, 8), torch.randn(3, 4, 5)), ValueError, 'batch=2'),
    (lambda: MultiHeadAttention(8, 2)(torch.randn(2, 3, 8), mask=torch.ones(2, 4, dtype=torch.bool)), ValueError, 'mask must be'),
    (lambda: MultiHeadAttention(8, 2)(torch.randn(2, 3, 8), mask=torch.ones(2, 3, dtype=torch.long)), TypeError, 'bool'),
])
def test_mha_errors(call, exc, msg):
    with pytest.raises(exc, match=msg): call()

def torch_block(ours):
    "An `nn.TransformerEncoderLayer` (pre-norm, GELU, no dropout) holding `ours`'s weights."
    d = ours.norm1.normalized_shape[0]
    ref = nn.TransformerEncoderLayer(d, ours.attn.n_heads, ours.mlp[0].out_features, dropout=0., activation='gelu', batch_first=True, norm_first=True)
    ref.self_attn = torch_mha(ours.attn)
    for a, b in ((ref.norm1, ours.norm1), (ref.norm2, ours.norm2), (ref.linear1, ours.mlp[0]), (ref.linear2, ours.mlp[2])): a.load_state_dict(b.state_dict())
    return ref.train()   # training mode: PyTorch's plain path (its eval fast path zeroes padded positions)

@settings(max_examples=25)
@given(n_heads=st.integers(1, 3), head_dim=st.integers(1, 6), mlp_ratio=st.integers(1, 4), L=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_block_equals_torch_encoder_layer(n_heads, head_dim, mlp_ratio, L, seed):
    torch.manual_seed(seed)
    block = TransformerBlock(n_heads * head_dim, n_heads, mlp_ratio)
    g = torch.Generator().manual_seed(seed)
    x, mask = randn(g, 3, L, n_heads * head_dim), real_mask(g, 3, L)
    with torch.no_grad(): torch.testing.assert_close(block(x, mask), torch_block(block)(x, src_key_padding_mask=~mask), atol=1e-5, rtol=1e-5)

@settings(max_examples=40)
@given(lengths=st.lists(st.integers(0, 6), min_size=1, max_size=4), extra=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_text_encoder_ignores_padding(lengths, extra, seed):
    "Longer padding filled with random ids changes neither the real tokens' features nor the pooled vector."
    torch.manual_seed(seed)
    enc = TextEncoder(vocab_size=20, max_len=16, d_model=16, n_heads=2, n_layers=2).eval()
    g = torch.Generator().manual_seed(seed)
    L = max(max(lengths), 1)
    mask = torch.arange(L)[None] < torch.tensor(lengths)[:, None]
    ids = torch.randint(1, 20, (len(lengths), L), generator=g).masked_fill(~mask, 0)
    mask2 = torch.cat([mask, torch.zeros(len(lengths), extra, dtype=torch.bool)], 1)
    ids2 = torch.cat([ids, torch.randint(0, 20, (len(lengths), extra), generator=g)], 1)
    with torch.no_grad(): (f1, p1), (f2, p2) = enc(ids, mask), enc(ids2, mask2)
    assert f1.shape == (len(lengths), L, 16) and p1.shape == (len(lengths), 16)
    torch.testing.assert_close(f2[:, :L][mask], f1[mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(p2, p1, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(p1, masked_mean(f1, mask))
    empty = torch.tensor(lengths) == 0
    assert (p1[empty] == 0).all()

def test_text_encoder_uses_positions_and_mask():
    "Tests that can fail: swapping two words changes the pooled vector; junk padding without a mask changes it too."
    torch.manual_seed(0)
    enc = TextEncoder(vocab_size=10, max_len=8, d_model=16, n_heads=2, n_layers=1).eval()
    ids = torch.tensor([[1, 2, 3, 0, 0]]); mask = ids != 0
    with torch.no_grad():
        p = enc(ids, mask)[1]
        swapped = enc(torch.tensor([[2, 1, 3, 0, 0]]), mask)[1]
        unmasked = enc(torch.tensor([[1, 2, 3, 7, 9]]))[1]
    assert (p - swapped).abs().max() > 1e-3 and (p - unmasked).abs().max() > 1e-3

def test_text_encoder_parameter_count():
    "The lesson's encoder: 2 blocks of 4*(d*d+d) + (8*d*d+5*d) + 4*d, embeddings (vocab+max_len)*d, a final LayerNorm."
    d = 128
    enc = TextEncoder(12, 16, d, 4, 2)
    assert sum(p.numel() for p in enc.parameters()) == 2 * (4 * (d * d + d) + 8 * d * d + 5 * d + 4 * d) + 28 * d + 2 * d == 400_384

@pytest.mark.parametrize('call,exc,msg', [
    (lambda e: e(torch.zeros(2, 9, dtype=torch.long)), ValueError, 'longer than max_len=8'),
    (lambda e: e(torch.full((2, 3), 10)), ValueError, r'token ids must be in \[0, 10\)'),
    (lambda e: e(torch.full((2, 3), -1)), ValueError, r'token ids must be in \[0, 10\)'),
    (lambda e: e(torch.zeros(2, 3)), ValueError, 'integer token ids'),
    (lambda e: e(torch.zeros(3, dtype=torch.long)), ValueError, 'integer token ids'),
    (lambda e: e(torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.long)), TypeError, 'bool'),
    (lambda e: e(torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 4, dtype=torch.bool)), ValueError, 'mask must be'),
    (lambda e: TextEncoder(10, 8, d_model=10, n_heads=4), ValueError, 'must be a multiple of n_heads'),
])
def test_text_encoder_errors(call, exc, msg):
    with pytest.raises(exc, match=msg): call(TextEncoder(10, 8, d_model=8, n_heads=2, n_layers=1))

@settings(max_examples=30)
@given(n=st.integers(1, 3), c_heads=st.sampled_from([(4, 1), (8, 2), (12, 3)]), h=st.integers(1, 4), w=st.integers(1, 4),
       L=st.integers(1, 6), d_ctx=st.integers(1, 10), seed=st.integers(0, 2**16))
def test_cross_attention_ignores_masked_tokens(n, c_heads, h, w, L, d_ctx, seed):
    torch.manual_seed(seed)
    c, heads = c_heads
    m = CrossAttention2d(c, d_ctx, heads, zero_init=False)
    g = torch.Generator().manual_seed(seed)
    x, ctx, mask = randn(g, n, c, h, w), randn(g, n, L, d_ctx), real_mask(g, n, L)
    junk = ctx.masked_fill(~mask[..., None], 0) + randn(g, n, L, d_ctx).masked_fill(mask[..., None], 0) * 100
    with torch.no_grad(): y, y_junk = m(x, ctx, mask), m(x, junk, mask)
    assert y.shape == x.shape
    torch.testing.assert_close(y_junk, y, atol=1e-5, rtol=1e-5)
    # each image reads only its own tokens: the same image alone gives the same output
    with torch.no_grad(): torch.testing.assert_close(m(x[:1], ctx[:1], mask[:1]), y[:1], atol=1e-5, rtol=1e-5)

def test_cross_attention_identity_at_init_and_for_empty_captions():
    torch.manual_seed(0)
    x, ctx = torch.randn(2, 8, 3, 3), torch.randn(2, 5, 6)
    assert torch.equal(CrossAttention2d(8, 6, 2)(x, ctx), x)
    m = CrossAttention2d(8, 6, 2, zero_init=False)
    y = m(x, ctx, torch.tensor([[True] * 5, [False] * 5]))
    assert torch.equal(y[1], x[1]) and not torch.equal(y[0], x[0])

def test_cross_attention_matches_a_direct_computation():
    "Flatten the pixels, LayerNorm them, run the multi-head attention, reshape and add: the layer is that and nothing else."
    torch.manual_seed(1)
    m = CrossAttention2d(8, 6, 2, zero_init=False)
    x, ctx = torch.randn(2, 8, 3, 5), torch.randn(2, 4, 6)
    pixels = x.permute(0, 2, 3, 1).reshape(2, 15, 8)
    direct = x + torch_mha(m.attn)(F.layer_norm(pixels, (8,), m.norm.weight, m.norm.bias), ctx, ctx)[0].reshape(2, 3, 5, 8).permute(0, 3, 1, 2)
    with torch.no_grad(): torch.testing.assert_close(m(x, ctx), direct, atol=1e-5, rtol=1e-5)

def test_cross_attention_errors():
    m = CrossAttention2d(8, 6, 2)
    with pytest.raises(ValueError, match='must be a feature map'): m(torch.randn(8, 3, 3), torch.randn(1, 4, 6))
    with pytest.raises(ValueError, match='d_context=6'): m(torch.randn(1, 8, 3, 3), torch.randn(1, 4, 5))
    with pytest.raises(ValueError, match='must be a multiple of n_heads'): CrossAttention2d(10, 6, 4)

@pytest.mark.parametrize('make,call', [
    (lambda: MultiHeadAttention(8, 2, d_context=5), lambda m: m(torch.randn(2, 3, 8), torch.randn(2, 4, 5), torch.tensor([[True, True, False, True]] * 2))),
    (lambda: TransformerBlock(8, 2), lambda m: m(torch.randn(2, 3, 8), torch.tensor([[True, True, False]] * 2))),
    (lambda: TextEncoder(10, 6, 8, 2, 2), lambda m: m(torch.tensor([[1, 2, 3, 0], [4, 5, 0, 0]]), torch.tensor([[True] * 3 + [False], [True] * 2 + [False] * 2]))[1]),
    (lambda: CrossAttention2d(8, 6, 2, zero_init=False), lambda m: m(torch.randn(2, 8, 2, 2), torch.randn(2, 4, 6), torch.tensor([[True, True, False, True]] * 2))),
])
def test_every_parameter_gets_a_gradient(make, call):
    torch.manual_seed(0)
    m = make()
    call(m).pow(2).sum().backward()
    missing = [nm for nm, p in m.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, f'no gradient reached {missing}'
