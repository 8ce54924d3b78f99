"The conditioned U-Net: shapes for several sizes, padding tokens that change nothing, tokens that do change the output, the pooled vector's FiLM path, gradients reaching every parameter, caption dropout's rate, Karras targets equal to -v at sigma_data 1, guidance equal to the conditional prediction at scale 1 (and to the unconditional at 0), and load-or-train with clear errors."
import json
import pytest, torch
from torch import nn
from hypothesis import given, settings, strategies as st
from miniai.attention import CrossAttention2d
from miniai.clip import CLIPModel
from miniai.karras import noisify_karras, karras_scalings
from miniai.text import caption_tokenizer, FashionCaptions
from miniai.unet import UNet
from miniai.cond_unet import (CondUNet, text_condition, caption_dropout, CondDiffusionCB, latent_dls, train_cond_unet, CondKarrasDenoiser,
                              cfg_combine, GuidedDenoiser, generate, encode_latents, trained_cond_unet, EMACB,
                              min_snr_weight, diffusion_mse)
from miniai.vae import VAE

D = 16   # token width of the small test models

def small_unet(seed=0, **kw):
    torch.manual_seed(seed)
    return CondUNet(nfs=kw.pop('nfs', (8, 16)), d_context=D, d_pooled=D, n_heads=2, **kw)

def randomize_attention(model, std=0.3):
    "Give every cross-attention a non-zero output projection (at zero init the attention's output is 0 whatever it reads)."
    for m in model.modules():
        if isinstance(m, CrossAttention2d): nn.init.normal_(m.attn.out_proj.weight, std=std)
    return model

def cond(n, L, seed=0, n_real=None):
    g = torch.Generator().manual_seed(seed)
    context, pooled = torch.randn(n, L, D, generator=g), torch.randn(n, D, generator=g)
    mask = torch.ones(n, L, dtype=torch.bool) if n_real is None else torch.arange(L)[None] < torch.as_tensor(n_real)[:, None]
    return context, mask, pooled

def random_set(n, seed=0):
    "`n` random 28x28 images, labels cycling through the ten classes, and random latents [n, 4, 8, 8]."
    g = torch.Generator().manual_seed(seed)
    images, labels = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=g), torch.arange(n) % 10
    return images, labels, torch.randn(n, 4, 8, 8, generator=g)

@pytest.fixture(scope='module')
def clip_tok():
    tok = caption_tokenizer()
    torch.manual_seed(0)
    return CLIPModel(len(tok), tok.max_len, d_emb=D, nfs=(4, 8), d_model=D, n_heads=2, n_layers=1), tok

@settings(max_examples=15, deadline=None)
@given(st.integers(1, 3), st.sampled_from([((8, 16), 8), ((8, 16, 16), 8), ((8,), 4), ((8, 16), 4)]), st.integers(0, 3), st.integers(1, 6))
def test_shapes(n, arch, attn_from, L):
    nfs, size = arch
    m = small_unet(nfs=nfs, attn_from=min(attn_from, len(nfs)))
    x = torch.randn(n, 4, size, size)
    assert m(x, torch.zeros(n), *cond(n, L)).shape == x.shape
    levels = [i for i in range(len(nfs)) if i >= m.config['attn_from']]   # each: 1 down block, 2 up blocks; plus the middle if any
    assert sum(isinstance(q, CrossAttention2d) for q in m.modules()) == 3 * len(levels) + (1 if levels else 0)

def test_attention_count_and_params():
    m = CondUNet()   # the lesson's default: 8x8 latents, attention at 4x4 and in the middle
    assert sum(isinstance(q, CrossAttention2d) for q in m.modules()) == 4
    assert sum(isinstance(q, CrossAttention2d) for q in CondUNet(attn_from=2).modules()) == 0
    assert sum(isinstance(q, CrossAttention2d) for q in CondUNet(attn_from=0).modules()) == 1 + 1 + 1 + 2 + 2   # down at 8x8 and 4x4, middle, up at 4x4 and 8x8
    extra = sum(p.numel() for p in m.parameters()) - sum(p.numel() for p in UNet(4, 4, (64, 128), 1).parameters())
    assert extra == sum(p.numel() for q in m.modules() if isinstance(q, CrossAttention2d) for p in q.parameters()) + 128 * 256 + 256

@settings(max_examples=20, deadline=None)
@given(st.integers(1, 4), st.integers(1, 5), st.integers(1, 5), st.integers(0, 1000))
def test_masked_tokens_have_no_effect(n, L, extra, seed):
    m = randomize_attention(small_unet(seed % 7)).eval()
    x = torch.randn(n, 4, 8, 8, generator=torch.Generator().manual_seed(seed))
    n_real = torch.randint(1, L + 1, (n,), generator=torch.Generator().manual_seed(seed))
    context, mask, pooled = cond(n, L + extra, seed, n_real)
    g = torch.Generator().manual_seed(seed + 1)
    garbage = torch.where(mask[..., None], context, 100 * torch.randn(context.shape, generator=g))
    with torch.no_grad():
        a = m(x, torch.zeros(n), context, mask, pooled)
        b = m(x, torch.zeros(n), garbage, mask, pooled)
        c = m(x, torch.zeros(n), context[:, :L], mask[:, :L], pooled)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-5)

def test_tokens_and_pooled_both_change_the_output():
    m = randomize_attention(small_unet()).eval()
    x = torch.randn(2, 4, 8, 8)
    context, mask, pooled = cond(2, 5)
    with torch.no_grad():
        base = m(x, torch.zeros(2), context, mask, pooled)
        other_tokens = m(x, torch.zeros(2), context.flip(0), mask, pooled)
        other_pooled = m(x, torch.zeros(2), context, mask, pooled.flip(0))
    assert (base - other_tokens).abs().max() > 1e-3
    assert (base - other_pooled).abs().max() > 1e-3
    # images in a batch do not mix: each output depends only on its own input and condition
    with torch.no_grad(): one = m(x[:1], torch.zeros(1), context[:1], mask[:1], pooled[:1])
    torch.testing.assert_close(one, base[:1], atol=1e-5, rtol=1e-5)

def test_gradients_reach_all_params():
    "After one step (the zero-initialised output projections block the attention's other gradients at first) every parameter gets a gradient."
    m = small_unet()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    x, context, mask, pooled = torch.randn(4, 4, 8, 8), *cond(4, 5, n_real=[5, 3, 2, 1])
    for _ in range(2):
        opt.zero_grad()
        m(x, torch.randn(4), context, mask, pooled).pow(2).mean().backward()
        opt.step()
    dead = [n for n, p in m.named_parameters() if p.grad is None or p.grad.abs().max() == 0]
    assert not dead

def test_bad_inputs():
    m = small_unet()
    x = torch.randn(2, 4, 8, 8)
    context, mask, pooled = cond(2, 3)
    with pytest.raises(ValueError, match='pooled must be'): m(x, torch.zeros(2), context, mask, pooled[:, :3])
    with pytest.raises(ValueError, match='context must be'): m(x, torch.zeros(2), context[:1], mask[:1], pooled)
    with pytest.raises(ValueError, match='multiples of 2'): m(torch.randn(2, 4, 7, 7), torch.zeros(2), context, mask, pooled)
    with pytest.raises(ValueError, match='attn_from'): CondUNet(attn_from=5)

@pytest.mark.parametrize('p', [0., 0.15, 0.5, 1.])
def test_caption_dropout_rate(p):
    n = 20_000
    out = caption_dropout(['a bag'] * n, p, torch.Generator().manual_seed(1))
    rate = out.count('') / n
    assert abs(rate - p) <= 4 * (p * (1 - p) / n) ** 0.5 + 1e-12
    assert set(out) <= {'', 'a bag'}
    with pytest.raises(ValueError, match='probability'): caption_dropout(['a'], -0.1)

def test_caption_dropout_is_seeded_and_keeps_order():
    caps = [f'a photo of bag {i}' for i in range(50)]
    a = caption_dropout(caps, 0.3, torch.Generator().manual_seed(5))
    assert a == caption_dropout(caps, 0.3, torch.Generator().manual_seed(5))
    assert all(o in ('', c) for o, c in zip(a, caps))

def test_text_condition(clip_tok):
    clip, tok = clip_tok
    context, mask, pooled = text_condition(clip, tok, ['a photo of a dark dress', ''])
    assert context.shape == (2, 8, D) and mask.tolist()[1] == [True, True] + [False] * 6
    torch.testing.assert_close(pooled.norm(dim=1), torch.ones(2))
    c1, _, p1 = text_condition(clip, tok, ['a photo of a dark dress'])
    torch.testing.assert_close(c1[0], context[0], atol=1e-5, rtol=1e-5); torch.testing.assert_close(p1[0], pooled[0], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match='list of texts'): text_condition(clip, tok, 'a bag')
    with pytest.raises(ValueError, match='list of texts'): text_condition(clip, tok, [])

def test_karras_target_is_minus_v():
    x0 = torch.randn(32, 4, 8, 8)
    (x_in, _), target = noisify_karras(x0, sigma_data=1., p_mean=-0.5, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    sigma = (-0.5 + 1.2 * torch.randn(32, generator=g)).exp()[:, None, None, None]
    eps = torch.randn(x0.shape, generator=g)
    a, s = (1 + sigma ** 2).rsqrt(), sigma * (1 + sigma ** 2).rsqrt()
    torch.testing.assert_close(target, -(a * eps - s * x0), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(x_in, a * x0 + s * eps, atol=1e-5, rtol=1e-5)

@settings(max_examples=50, deadline=None)
@given(st.floats(-5, 10), st.integers(0, 1000))
def test_cfg_combine(scale, seed):
    g = torch.Generator().manual_seed(seed)
    u, c = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    torch.testing.assert_close(cfg_combine(u, c, scale), (1 - scale) * u + scale * c, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(cfg_combine(u, c, 1.), c); torch.testing.assert_close(cfg_combine(u, c, 0.), u)

def test_guidance_at_scale_1_equals_conditional(clip_tok):
    clip, tok = clip_tok
    den = CondKarrasDenoiser(randomize_attention(small_unet()).eval(), 1.)
    c, u = text_condition(clip, tok, ['a photo of a large dark coat']), text_condition(clip, tok, [''])
    x = 3 * torch.randn(5, 4, 8, 8)
    ex = lambda t: t.expand(5, *t.shape[1:])
    with torch.no_grad():
        d_c, d_u = den(x, 3., *map(ex, c)), den(x, 3., *map(ex, u))
        for s, want in ((1., d_c), (0., d_u), (3., d_u + 3 * (d_c - d_u))):
            torch.testing.assert_close(GuidedDenoiser(den, c, u, s)(x, 3.), want, atol=1e-5, rtol=1e-5)
    assert (d_c - d_u).abs().max() > 1e-4   # the condition matters, so the test could fail
    per_image = text_condition(clip, tok, ['a bag', 'a coat', 'a dress', 'a shirt', ''])
    with torch.no_grad(): torch.testing.assert_close(GuidedDenoiser(den, per_image, u, 1.)(x, 3.), den(x, 3., *per_image), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match='one per image'): GuidedDenoiser(den, text_condition(clip, tok, ['a', 'b']), u)(x, 3.)

@settings(max_examples=15, deadline=None)
@given(st.floats(0.01, 100.), st.floats(0., 50.), st.floats(0., 50.), st.sampled_from([0., 1., 2.5]))
def test_guidance_interval_guides_inside_only(clip_tok, sigma, a, b, scale):
    "Inside the interval (ends included) the guided prediction; outside, the conditional one; one pass there."
    clip, tok = clip_tok
    den = CondKarrasDenoiser(randomize_attention(small_unet()).eval(), 1.)
    c, u = text_condition(clip, tok, ['a photo of a small bag']), text_condition(clip, tok, [''])
    x = 3 * torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    low, high = min(a, b), max(a, b)
    sigma = torch.tensor(sigma)   # float32, as the samplers' noise levels are
    inside = low <= sigma.item() <= high
    calls = []
    hook = den.model.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    with torch.no_grad():
        got = GuidedDenoiser(den, c, u, scale, interval=(low, high))(x, sigma)
        hook.remove()
        want = GuidedDenoiser(den, c, u, scale if inside else 1.)(x, sigma)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert calls == [6 if inside and scale != 1 else 3]   # both predictions in one batch, or the conditional alone

@pytest.mark.parametrize('interval', [(2., 1.), (-1., 1.), (0., float('nan')), (1.,), 'ab', None])
def test_guidance_interval_refuses_bad_intervals(clip_tok, interval):
    clip, tok = clip_tok
    den = CondKarrasDenoiser(small_unet().eval(), 1.)
    c = text_condition(clip, tok, ['a bag'])
    with pytest.raises(ValueError, match='0 <= low <= high'): GuidedDenoiser(den, c, c, 2., interval=interval)

def test_callback_batch_and_training(clip_tok, tmp_path):
    clip, tok = clip_tok
    g = torch.Generator().manual_seed(0)
    images, labels = torch.randint(0, 256, (40, 28, 28), dtype=torch.uint8, generator=g), torch.arange(40) % 10
    vae = VAE(nfs=(4, 8, 8))
    lat = encode_latents(vae, images, 2.)
    assert lat.shape == (40, 4, 8, 8)
    caps = FashionCaptions(images, labels)
    cb = CondDiffusionCB(clip, tok, caps, p_uncond=1., generator=torch.Generator().manual_seed(0))
    learn = type('L', (), {})(); learn.batch = (lat[:6], torch.arange(6))
    cb.before_batch(learn)
    x, c_noise, context, mask, pooled, target = learn.batch
    assert x.shape == target.shape == (6, 4, 8, 8) and c_noise.shape == (6,) and mask.shape == (6, 2)   # all dropped: <bos> <eos>
    m = small_unet()
    learn = train_cond_unet(m, latent_dls(lat, 16), clip, tok, caps, epochs=1, generator=torch.Generator().manual_seed(0))
    assert len(learn.log.losses) == 2 and all(map(lambda v: v == v, learn.log.losses))
    with pytest.raises(ValueError, match='same images'): train_cond_unet(m, latent_dls(lat[:20], 16), clip, tok, caps)
    imgs = generate(CondKarrasDenoiser(m, 1.), clip, tok, vae, 2., ['a bag', ''], steps=2, generator=torch.Generator().manual_seed(0))
    assert imgs.shape == (2, 1, 32, 32) and imgs.abs().max() <= 1
    again = generate(CondKarrasDenoiser(m, 1.), clip, tok, vae, 2., ['a bag', ''], steps=2, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(imgs, again)
    with pytest.raises(ValueError, match="never trained on 'zebra'.*use the words of its captions"):   # it used to draw <unk>
        generate(CondKarrasDenoiser(m, 1.), clip, tok, vae, 2., ['a zebra'], steps=2)

def test_trained_cond_unet_saves_loads_and_refuses(clip_tok, tmp_path):
    clip, tok = clip_tok
    g = torch.Generator().manual_seed(0)
    images, labels = torch.randint(0, 256, (32, 28, 28), dtype=torch.uint8, generator=g), torch.arange(32) % 10
    lat = torch.randn(32, 4, 8, 8, generator=g)
    folder = tmp_path/'m'
    den, rec = trained_cond_unet(lat, FashionCaptions(images, labels), clip, tok, 1.5, epochs=1, batch_size=32, folder=folder, verbose=False)
    assert rec['steps'] == 1 and rec['latent_scale'] == 1.5 and den.model.config['d_context'] == D
    den2, rec2 = trained_cond_unet(lat, None, clip, tok, 1.5, epochs=1, batch_size=32, folder=folder, verbose=False)
    assert rec2 == rec
    for a, b in zip(den.model.state_dict().values(), den2.model.state_dict().values()): assert torch.equal(a, b)
    with pytest.raises(ValueError, match='latent_scale is 1.5 there, not 1.6'):
        trained_cond_unet(lat, None, clip, tok, 1.6, folder=folder, verbose=False)
    torch.manual_seed(5)
    other_clip = type(clip)(**clip.config)   # same width, other weights: a U-Net used to load beside it silently
    with pytest.raises(ValueError, match='clip_digest is'):
        trained_cond_unet(lat, None, other_clip, tok, 1.5, folder=folder, verbose=False)
    (folder/'model.safetensors').write_bytes(b'junk')
    with pytest.raises(ValueError, match='delete'): trained_cond_unet(lat, None, clip, tok, 1.5, folder=folder, verbose=False)
    (folder/'config.json').write_text('{not json')
    with pytest.raises(ValueError, match='delete'): trained_cond_unet(lat, None, clip, tok, 1.5, folder=folder, verbose=False)
    with pytest.raises(ValueError, match='captions are needed'): trained_cond_unet(lat, None, clip, tok, 1.5, verbose=False)
    with pytest.raises(ValueError, match='no captions to train'):
        trained_cond_unet(lat, None, clip, tok, 1.5, folder=tmp_path/'new', verbose=False)

def test_trained_cond_unet_default_file_names_the_caption_policy(clip_tok, tmp_path, monkeypatch):
    "The default file name records p_omit, so a model trained on other captions is not loaded by mistake."
    monkeypatch.setenv('MINIAI_DATA', str(tmp_path))
    clip, tok = clip_tok
    images, labels, lat = random_set(32)
    _, rec = trained_cond_unet(lat, FashionCaptions(images, labels, p_omit=0.5), clip, tok, 1.5, epochs=1, batch_size=32, verbose=False)
    assert rec['p_omit'] == 0.5 and (tmp_path/'models'/'cond_unet_e1_b32_lr0.002_omit0.5_n32'/'model.safetensors').is_file()
    _, rec = trained_cond_unet(lat, FashionCaptions(images, labels, p_omit=0.5), clip, tok, 1.5, epochs=1, batch_size=32,
                               ema=0.99, verbose=False)
    assert rec['ema'] == 0.99 and (tmp_path/'models'/'cond_unet_e1_b32_lr0.002_omit0.5_n32_ema0.99'/'model.safetensors').is_file()

def test_trained_cond_unet_seed_names_trains_and_guards(clip_tok, tmp_path, monkeypatch):
    "A `seed` other than 1 goes in the default folder's name and the record; the same seed trains the same weights."
    monkeypatch.setenv('MINIAI_DATA', str(tmp_path))
    clip, tok = clip_tok
    images, labels, lat = random_set(32)
    fit = lambda **kw: trained_cond_unet(lat, FashionCaptions(images, labels, p_omit=0.5), clip, tok, 1.5, epochs=1,
                                         batch_size=16, verbose=False, **kw)
    one, rec1 = fit()
    two, rec2 = fit(seed=2)
    again, _ = fit(seed=2, folder=tmp_path/'again')
    assert (rec1['seed'], rec2['seed']) == (1, 2)
    models = tmp_path/'models'
    assert (models/'cond_unet_e1_b16_lr0.002_omit0.5_n32'/'model.safetensors').is_file()
    assert (models/'cond_unet_e1_b16_lr0.002_omit0.5_n32_seed2'/'model.safetensors').is_file()
    for a, b in zip(two.model.state_dict().values(), again.model.state_dict().values()): assert torch.equal(a, b)
    assert not all(torch.equal(a, b) for a, b in zip(one.model.state_dict().values(), two.model.state_dict().values()))
    with pytest.raises(ValueError, match='seed is 1 there, not 2'):
        trained_cond_unet(lat, None, clip, tok, 1.5, seed=2, folder=models/'cond_unet_e1_b16_lr0.002_omit0.5_n32', verbose=False)
    record = json.loads((tmp_path/'again'/'config.json').read_text())
    del record['record']['seed']   # a record saved before seeds were recorded: trained from seed 1
    (tmp_path/'again'/'config.json').write_text(json.dumps(record))
    with pytest.raises(ValueError, match='seed is 1 there, not 2'):
        trained_cond_unet(lat, None, clip, tok, 1.5, seed=2, folder=tmp_path/'again', verbose=False)
    assert trained_cond_unet(lat, None, clip, tok, 1.5, folder=tmp_path/'again', verbose=False)[1].get('seed', 1) == 1

def walk_with_ema(decay, steps, seed, net, also=None):
    "Move `net`'s parameters `steps` random steps, updating an `EMACB` (and `also(net)`) after each; return the callback."
    from types import SimpleNamespace
    g = torch.Generator().manual_seed(seed)
    cb, learn = EMACB(decay), SimpleNamespace(model=net, training=True)
    cb.before_fit(learn)
    for _ in range(steps):
        with torch.no_grad():
            for p in net.parameters(): p.add_(torch.randn(p.shape, generator=g))
        cb.after_batch(learn)
        if also: also(net)
        learn.training = False; cb.after_batch(learn); learn.training = True   # validation batches leave it alone
    return cb

@settings(max_examples=25, deadline=None)
@given(st.floats(0., 0.99), st.integers(1, 150), st.integers(0, 2**31 - 1))
def test_ema_matches_pytorchs_averaged_model(decay, steps, seed):
    "EMACB's average equals torch.optim.swa_utils.AveragedModel given the new weights' share max(1 - decay, 1/(n+1))."
    from torch.optim.swa_utils import AveragedModel
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ref = AveragedModel(net, avg_fn=lambda a, p, n: a + (p - a) * max(1 - decay, 1 / (n + 1)))
    cb = walk_with_ema(decay, steps, seed, net, also=ref.update_parameters)
    buffers = [b.clone() for b in net.buffers()]
    cb.after_fit(type('L', (), {})())
    for p, q in zip(net.parameters(), ref.module.parameters()): torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-5)
    for b, c in zip(net.buffers(), buffers): assert torch.equal(b, c)   # buffers stay as trained
    assert cb.n == steps

@settings(max_examples=25, deadline=None)
@given(st.floats(0.5, 0.999), st.integers(0, 2**31 - 1))
def test_ema_is_the_plain_mean_until_the_window_fills(decay, seed):
    "Until 1/(1-decay) steps the average is the mean of the weights after each step (the initial weights left out)."
    steps = max(1, int(1 / (1 - decay)) - 1)
    net, seen = nn.Linear(2, 3), []
    cb = walk_with_ema(decay, steps, seed, net, also=lambda m: seen.append([p.detach().clone() for p in m.parameters()]))
    for a, *ps in zip(cb.average, *seen): torch.testing.assert_close(a, torch.stack(ps).mean(0), rtol=1e-4, atol=1e-4)

@pytest.mark.parametrize('decay', [1., -0.1, 1.5])
def test_ema_refuses_a_decay_outside_0_1(decay):
    with pytest.raises(ValueError, match=r'decay must be in \[0, 1\)'): EMACB(decay)

def test_ema_in_training_saves_the_average(clip_tok, tmp_path):
    "Trained with ema, the saved U-Net is the average of its weights (differs from the same run without), and loads only with it."
    clip, tok = clip_tok
    g = torch.Generator().manual_seed(0)
    images, labels = torch.randint(0, 256, (64, 28, 28), dtype=torch.uint8, generator=g), torch.arange(64) % 10
    lat, caps = torch.randn(64, 4, 8, 8, generator=g), FashionCaptions(images, labels)
    kw = dict(epochs=2, batch_size=16, nfs=(8, 16), verbose=False)
    last, _ = trained_cond_unet(lat, caps, clip, tok, 1.5, folder=tmp_path/'last', **kw)
    avg, rec = trained_cond_unet(lat, caps, clip, tok, 1.5, ema=0.5, folder=tmp_path/'avg', **kw)
    assert rec['ema'] == 0.5 and rec['steps'] == 8
    assert any(not torch.equal(p, q) for p, q in zip(last.model.parameters(), avg.model.parameters()))
    with pytest.raises(ValueError, match='ema is 0.5 there, not None'):
        trained_cond_unet(lat, None, clip, tok, 1.5, folder=tmp_path/'avg', **kw)

@settings(max_examples=40, deadline=None)
@given(st.floats(0.3, 3.), st.floats(0.5, 20.), st.floats(-2., 1.), st.integers(0, 2**31 - 1))
def test_min_snr_weight_is_the_papers_weight_on_the_denoised_latents(sigma_data, gamma, p_mean, seed):
    "Weighted by min_snr_weight, F's loss per image is min(SNR, gamma) |D - x0|^2 / sigma_data^2 (Hang et al.), SNR = sigma_data^2/sigma^2."
    g = torch.Generator().manual_seed(seed)
    x0 = sigma_data * torch.randn(16, 4, 8, 8, generator=g)
    (x_in, c_noise), target = noisify_karras(x0, sigma_data, p_mean, 1.2, g)
    sigma = (4 * c_noise).exp()
    f = torch.randn(x0.shape, generator=g)
    c_skip, c_out, c_in, _ = (c[:, None, None, None] for c in karras_scalings(sigma, sigma_data))
    d = c_skip * (x_in / c_in) + c_out * f   # the denoiser's output for the network output f
    snr = sigma_data ** 2 / sigma ** 2
    w = min_snr_weight(sigma, sigma_data, gamma)
    for i in range(len(x0)):
        on_f = diffusion_mse(f[i:i + 1], target[i:i + 1], w[i:i + 1])
        on_d = torch.minimum(snr[i], torch.tensor(gamma)) * (d[i] - x0[i]).pow(2).mean() / sigma_data ** 2
        torch.testing.assert_close(on_f, on_d, rtol=1e-3, atol=1e-6)
    assert (w > 0).all() and (w < 1).all() and w.shape == (16,)

def test_diffusion_mse_and_min_snr_weight_edges():
    g = torch.Generator().manual_seed(0)
    p, t = torch.randn(5, 3, 2, generator=g), torch.randn(5, 3, 2, generator=g)
    assert torch.equal(diffusion_mse(p, t), torch.nn.functional.mse_loss(p, t))
    torch.testing.assert_close(diffusion_mse(p, t, torch.ones(5)), torch.nn.functional.mse_loss(p, t))
    torch.testing.assert_close(diffusion_mse(p, t, torch.tensor([1., 0, 0, 0, 0])), (p[0] - t[0]).pow(2).mean() / 5)
    for bad in (torch.ones(4), torch.ones(5, 1), torch.ones(())):
        with pytest.raises(ValueError, match='one weight per image'): diffusion_mse(p, t, bad)
    for gamma in (0., -1.):
        with pytest.raises(ValueError, match='gamma must be positive'): min_snr_weight(torch.ones(3), 1., gamma)
    with pytest.raises(ValueError, match='noise levels must be positive'): min_snr_weight(torch.tensor([1., 0.]), 1., 5.)
    torch.testing.assert_close(min_snr_weight(torch.tensor([1.]), 2., 5.), torch.tensor([4 / 5]))   # SNR 4 under the cap
    torch.testing.assert_close(min_snr_weight(torch.tensor([0.5]), 2., 5.), torch.tensor([5 / 17]))   # SNR 16, capped at 5

def test_callback_appends_min_snr_weights(clip_tok):
    "With min_snr the batch gains a seventh item, each image's weight at its noise level; the first six are as without."
    clip, tok = clip_tok
    images, labels, lat = random_set(30)
    caps = FashionCaptions(images, labels)
    batches = []
    for min_snr in (None, 5.):
        learn = type('L', (), {})(); learn.batch = (lat[:8], torch.arange(8))
        CondDiffusionCB(clip, tok, caps, sigma_data=1.3, min_snr=min_snr, generator=torch.Generator().manual_seed(2)).before_batch(learn)
        batches.append(learn.batch)
    plain, weighted = batches
    assert len(plain) == 6 and len(weighted) == 7
    for a, b in zip(plain, weighted): assert torch.equal(a, b)
    torch.testing.assert_close(weighted[6], min_snr_weight((4 * plain[1]).exp(), 1.3, 5.))

def test_p_mean_and_min_snr_train_other_models_and_are_kept(clip_tok, tmp_path, monkeypatch):
    "p_mean and min_snr change training, name the default folder, are kept in the record, and a U-Net loads only with its own."
    monkeypatch.setenv('MINIAI_DATA', str(tmp_path))
    clip, tok = clip_tok
    images, labels, lat = random_set(32)
    caps = FashionCaptions(images, labels, p_omit=0.5)
    kw = dict(epochs=1, batch_size=16, nfs=(8, 16), verbose=False)
    _, plain = trained_cond_unet(lat, caps, clip, tok, 1.5, **kw)
    _, shifted = trained_cond_unet(lat, caps, clip, tok, 1.5, p_mean=0., **kw)
    _, weighted = trained_cond_unet(lat, caps, clip, tok, 1.5, min_snr=5., **kw)
    assert plain['p_mean'] == -0.5 and plain['min_snr'] is None
    assert shifted['p_mean'] == 0. and weighted['min_snr'] == 5.
    assert plain['losses'] != shifted['losses'] and plain['losses'] != weighted['losses']
    models = tmp_path/'models'
    for name in ('', '_pmean0', '_minsnr5'): assert (models/f'cond_unet_e1_b16_lr0.002_omit0.5_n32_nfs8-16{name}'/'model.safetensors').is_file()
    with pytest.raises(ValueError, match='p_mean is 0.0 there, not -0.5'):
        trained_cond_unet(lat, None, clip, tok, 1.5, folder=models/'cond_unet_e1_b16_lr0.002_omit0.5_n32_nfs8-16_pmean0', **kw)
    with pytest.raises(ValueError, match='min_snr is 5.0 there, not None'):
        trained_cond_unet(lat, None, clip, tok, 1.5, folder=models/'cond_unet_e1_b16_lr0.002_omit0.5_n32_nfs8-16_minsnr5', **kw)
    with pytest.raises(ValueError, match='p_mean is -0.5 there, not 0.0'):
        trained_cond_unet(lat, None, clip, tok, 1.5, p_mean=0., folder=models/'cond_unet_e1_b16_lr0.002_omit0.5_n32_nfs8-16', **kw)

@pytest.mark.parametrize('bs', [0, 2.5, '4'])
def test_latent_dls_refuses_a_bad_batch_size(bs):
    with pytest.raises(ValueError, match=f'positive integer value, but got batch_size={bs!r}'): latent_dls(torch.zeros(8, 4, 8, 8), bs)
