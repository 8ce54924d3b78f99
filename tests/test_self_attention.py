"""Self-attention in the U-Net (lesson 23): `SelfAttention2d` equals a direct computation with
`F.scaled_dot_product_attention` per head, commutes with any shuffle of the pixels and starts as the identity;
`AttnUNet` starts equal to the `UNet` of the same seed at every number of attention levels, adds exactly its
attention layers' parameters, trains every parameter once the output projections are nonzero, and refuses
bad settings."""
import pytest, torch
from torch import nn
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from miniai.attention import SelfAttention2d, AttnUNet
from miniai.unet import UNet

def n_params(m): return sum(p.numel() for p in m.parameters())

def reference(sa, x):
    "LayerNorm over channels, softmax(QK^T/sqrt(d))V per head by torch's kernel, projection, residual."
    n, c, h, w = x.shape
    heads = sa.attn.n_heads
    pix = F.layer_norm(x.flatten(2).transpose(1, 2), (c,), sa.norm.weight, sa.norm.bias)
    def split(t): return t.reshape(n, h * w, heads, c // heads).transpose(1, 2)
    a = sa.attn
    read = F.scaled_dot_product_attention(split(a.q_proj(pix)), split(a.k_proj(pix)), split(a.v_proj(pix)))
    return x + a.out_proj(read.transpose(1, 2).reshape(n, h * w, c)).transpose(1, 2).reshape(n, c, h, w)

cases = dict(n=st.integers(1, 3), heads=st.integers(1, 3), head_chans=st.sampled_from([1, 2, 4, 8]),
             h=st.integers(1, 5), w=st.integers(1, 5), seed=st.integers(0, 2**16))

@settings(max_examples=40, deadline=None)
@given(**cases)
def test_self_attention_equals_torch_sdpa(n, heads, head_chans, h, w, seed):
    torch.manual_seed(seed)
    sa = SelfAttention2d(heads * head_chans, head_chans, zero_init=False)
    x = torch.randn(n, heads * head_chans, h, w)
    with torch.no_grad(): torch.testing.assert_close(sa(x), reference(sa, x), atol=1e-5, rtol=1e-5)

@settings(max_examples=40, deadline=None)
@given(**cases)
def test_self_attention_commutes_with_pixel_shuffles(n, heads, head_chans, h, w, seed):
    torch.manual_seed(seed)
    sa = SelfAttention2d(heads * head_chans, head_chans, zero_init=False)
    x, perm = torch.randn(n, heads * head_chans, h, w), torch.randperm(h * w)
    def shuffle(t): return t.flatten(2)[..., perm].view_as(t)
    with torch.no_grad(): torch.testing.assert_close(sa(shuffle(x)), shuffle(sa(x)), atol=1e-5, rtol=1e-5)

def test_self_attention_starts_as_identity():
    x = torch.randn(2, 16, 3, 3)
    with torch.no_grad(): assert torch.equal(SelfAttention2d(16)(x), x)

@pytest.mark.parametrize('attn_levels', [0, 1, 2, 3])
def test_attn_unet_starts_as_the_unet_of_the_same_seed(attn_levels):
    nfs = (8, 16, 16)
    torch.manual_seed(0); plain = UNet(nfs=nfs)
    torch.manual_seed(0); net = AttnUNet(nfs=nfs, attn_levels=attn_levels)
    x, t = torch.randn(2, 1, 8, 8), torch.rand(2)
    with torch.no_grad(): assert torch.equal(plain(x, t), net(x, t))
    layers = [m for m in net.modules() if isinstance(m, SelfAttention2d)]
    assert len(layers) == 1 + 3 * attn_levels   # the middle; one block per down level, two per up level
    assert n_params(net) - n_params(plain) == sum(n_params(m) for m in layers)

def test_attn_unet_trains_every_parameter():
    torch.manual_seed(0)
    net = AttnUNet(nfs=(8, 16, 16), attn_levels=2)
    for m in net.modules():
        if isinstance(m, SelfAttention2d): nn.init.normal_(m.attn.out_proj.weight, std=0.1)
    net(torch.randn(2, 1, 8, 8), torch.rand(2)).pow(2).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())

def test_errors():
    with pytest.raises(ValueError, match='must divide channels'): SelfAttention2d(12, 8)
    with pytest.raises(ValueError, match='must divide channels'): SelfAttention2d(8, 0)
    with pytest.raises(ValueError, match='feature map'): SelfAttention2d(8)(torch.randn(2, 8, 4))
    with pytest.raises(ValueError, match='attn_levels must be between 0 and 3'):
        AttnUNet(nfs=(8, 16, 16), attn_levels=4)
