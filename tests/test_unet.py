"""The U-Net of lesson 16: output shape equals input shape over sizes, channels and depths; sizes the levels can't halve
are refused; the time embedding against its formula; GroupNorm groups; FiLM conditioning; batch independence; every
parameter gets a gradient; the default model's parameter names and shapes (saved weights must keep loading)."""
import hashlib, math
import pytest, torch
from torch import nn
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from miniai.unet import timestep_embedding, norm_act_conv, EmbResBlock, DownBlock, UpBlock, UNet

nfs_lists = st.lists(st.sampled_from([4, 8, 12, 16]), min_size=1, max_size=4).map(tuple)

@settings(max_examples=25)
@given(nfs=nfs_lists, in_ch=st.integers(1, 3), out_ch=st.integers(1, 3), n_layers=st.integers(1, 2),
       hm=st.integers(2, 3), wm=st.integers(2, 3), batch=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_output_shape_is_input_shape(nfs, in_ch, out_ch, n_layers, hm, wm, batch, seed):
    "The lowest level is at least 2x2: a training-mode GroupNorm needs more than one value per group."
    g = torch.Generator().manual_seed(seed)
    m = 2 ** (len(nfs) - 1)
    model = UNet(in_ch, out_ch, nfs=nfs, n_layers=n_layers)
    x, t = torch.randn(batch, in_ch, hm * m, wm * m, generator=g), torch.randint(0, 1000, (batch,), generator=g)
    with torch.no_grad(): y = model(x, t)
    assert y.shape == (batch, out_ch, hm * m, wm * m)
    assert torch.isfinite(y).all()

@settings(max_examples=20)
@given(levels=st.integers(2, 4), h=st.integers(1, 40), w=st.integers(1, 40))
def test_sizes_the_levels_cannot_halve_are_refused(levels, h, w):
    m = 2 ** (levels - 1)
    model = UNet(nfs=(16,) * levels)   # 2 channels per group: a 1x1 lowest level still has 2 values to normalise
    x = torch.randn(1, 1, h, w)
    if h % m or w % m:
        with pytest.raises(ValueError, match=f'multiples of {m}'): model(x, torch.zeros(1))
    else:
        with torch.no_grad(): assert model(x, torch.zeros(1)).shape == x.shape

@settings(max_examples=50)
@given(ts=st.lists(st.floats(0, 1000, allow_nan=False), min_size=1, max_size=5), half=st.integers(1, 32),
       max_period=st.floats(2, 1e5))
def test_timestep_embedding_formula(ts, half, max_period):
    emb = timestep_embedding(torch.tensor(ts), 2 * half, max_period)
    expected = torch.tensor([[math.cos(t * max_period ** (-j / half)) for j in range(half)] +
                             [math.sin(t * max_period ** (-j / half)) for j in range(half)] for t in ts], dtype=torch.float32)
    assert emb.shape == (len(ts), 2 * half)
    torch.testing.assert_close(emb, expected, atol=2e-3, rtol=0)   # float32 arguments up to ~1000: about 1e-4 off
    torch.testing.assert_close(emb.norm(dim=1), torch.full((len(ts),), math.sqrt(half)), atol=1e-4, rtol=0)

@pytest.mark.parametrize('dim', [1, 3, 15])
def test_timestep_embedding_odd_dim_refused(dim):
    with pytest.raises(ValueError, match='dim must be even'): timestep_embedding(torch.zeros(2), dim)

@given(ni=st.integers(1, 200), groups=st.integers(1, 32))
def test_groupnorm_groups_divide_channels(ni, groups):
    gn = norm_act_conv(ni, 4, groups=groups)[0]
    assert ni % gn.num_groups == 0 and 1 <= gn.num_groups <= min(groups, ni)
    assert not any(ni % g == 0 for g in range(gn.num_groups + 1, min(groups, ni) + 1))   # the largest such
    if ni % min(groups, ni) == 0: assert gn.num_groups == min(groups, ni)   # as the first version chose, where that worked

@settings(max_examples=15)
@given(ni=st.sampled_from([4, 8, 16]), nf=st.sampled_from([4, 8, 16]), seed=st.integers(0, 2**16))
def test_film_scale_and_shift(ni, nf, seed):
    "What reaches conv2 is conv1's output times (1 + scale) plus shift, per image and channel; a zero projection ignores the time."
    torch.manual_seed(seed)
    blk, x, emb = EmbResBlock(8, ni, nf), torch.randn(3, ni, 6, 6), torch.randn(3, 8)
    seen = {}
    h = blk.conv2[0].register_forward_hook(lambda m, inp, out: seen.update(x=inp[0]))
    with torch.no_grad():
        blk(x, emb)
        scale, shift = blk.emb_proj(emb)[:, :, None, None].chunk(2, dim=1)
        torch.testing.assert_close(seen['x'], blk.conv1(x) * (1 + scale) + shift)
        h.remove()
        blk.emb_proj.weight.zero_(); blk.emb_proj.bias.zero_()
        torch.testing.assert_close(blk(x, emb), blk(x, torch.randn(3, 8)))

def test_down_and_up_blocks_pair_their_saved_activations():
    "A lowest level: its up block takes the down block's outputs, then what the level above saved (its downsampling output)."
    emb, x = torch.randn(2, 16), torch.randn(2, 8, 8, 8)
    saved = [x]
    d, u = DownBlock(16, 8, 12, n_layers=2, down=False), UpBlock(16, ni=8, prev_nf=12, nf=12, n_layers=2)
    y = d(x, emb, saved)
    assert y.shape == (2, 12, 8, 8) and [s.shape[1:] for s in saved] == [(8, 8, 8), (12, 8, 8), (12, 8, 8)]
    assert [r.conv1[0].num_channels for r in u.resnets] == [24, 24, 20]
    assert u(y, emb, saved).shape == (2, 12, 16, 16) and saved == []
    down = DownBlock(16, 8, 12)
    saved = []
    assert down(x, emb, saved).shape == (2, 12, 4, 4) and [s.shape[1:] for s in saved] == [(12, 8, 8), (12, 4, 4)]

@settings(max_examples=10)
@given(batch=st.integers(2, 4), seed=st.integers(0, 2**16))
def test_each_image_independent_of_its_batch_and_mode(batch, seed):
    "GroupNorm, no BatchNorm: an image's prediction doesn't depend on the others, and train and eval mode agree."
    torch.manual_seed(seed)
    model = UNet(nfs=(8, 16, 16))
    x, t = torch.randn(batch, 1, 16, 16), torch.randint(0, 1000, (batch,))
    with torch.no_grad():
        together = model.train()(x, t)
        alone = torch.cat([model(x[i:i + 1], t[i:i + 1]) for i in range(batch)])
        evaluated = model.eval()(x, t)
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(together, evaluated)

def test_time_changes_the_output_and_a_single_t_is_broadcast():
    torch.manual_seed(0)
    model, x = UNet(nfs=(8, 16)), torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert not torch.allclose(model(x, torch.full((3,), 10)), model(x, torch.full((3,), 900)))
        ref = model(x, torch.full((3,), 250.))
        for t in (250, 250., torch.tensor(250), torch.tensor([250.])): torch.testing.assert_close(model(x, t), ref)
    with pytest.raises(ValueError, match='one number per image'): model(x, torch.zeros(2))

def test_gradient_reaches_every_parameter():
    torch.manual_seed(0)
    model = UNet(nfs=(8, 16, 16), n_layers=2)
    x = torch.randn(4, 1, 16, 16)
    F.mse_loss(model(x, torch.randint(0, 1000, (4,))), torch.randn_like(x)).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing

def test_default_model_names_and_shapes():
    "Weights saved from the default `UNet()` (lessons 17-20 load them) need these exact names and shapes."
    sd = UNet().state_dict()
    assert len(sd) == 172 and sum(v.numel() for v in sd.values()) == 979_073
    assert {'conv_in.weight', 'emb_mlp.0.weight', 'emb_mlp.2.bias', 'downs.0.resnets.0.emb_proj.weight', 'downs.2.down.weight',
            'mid.conv1.0.weight', 'ups.0.resnets.1.idconv.weight', 'ups.2.up.1.weight', 'conv_out.2.bias'} <= set(sd)
    fingerprint = hashlib.sha1(';'.join(f'{k}:{tuple(v.shape)}' for k, v in sd.items()).encode()).hexdigest()
    assert fingerprint == FINGERPRINT, fingerprint

FINGERPRINT = '6006976a04ab201ddf7c97fffb3e4ac7f19f1145'   # sha1 of the names and shapes of lesson 16's first cut
