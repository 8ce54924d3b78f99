"The VAE's KL term equals torch.distributions', the reparameterised samples have the right mean and variance and carry gradients, the model's shapes and errors hold for several sizes, training reaches every parameter, and `trained_vae` saves, loads and refuses bad files clearly."
import json, math
import pytest, torch
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays
from torch.distributions import Normal, kl_divergence
from miniai.vae import reparameterize, kl_to_standard_normal, NormActResBlock, VAE, vae_loss, VAECB, train_vae, latent_scale, trained_vae

@st.composite
def gaussian_params(draw):
    "Means in [-10, 10] and log-variances in [-10, 10], float64, of one random shape (1-3 dimensions of size 1-5)."
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=3)))
    mean = draw(arrays('float64', shape, elements=st.floats(-10, 10, allow_nan=False)))
    logvar = draw(arrays('float64', shape, elements=st.floats(-10, 10, allow_nan=False)))
    return torch.from_numpy(mean), torch.from_numpy(logvar)

@settings(max_examples=200)
@given(gaussian_params())
def test_kl_matches_torch_distributions(params):
    mean, logvar = params
    ours = kl_to_standard_normal(mean, logvar)
    ref = kl_divergence(Normal(mean, (0.5 * logvar).exp()), Normal(torch.zeros_like(mean), torch.ones_like(mean)))
    assert ours.shape == mean.shape
    assert torch.allclose(ours, ref, rtol=1e-9, atol=1e-9)
    assert (ours >= -1e-12).all()

@settings(max_examples=100)
@given(gaussian_params())
def test_kl_is_zero_only_at_the_standard_normal(params):
    mean, logvar = params
    assert (kl_to_standard_normal(torch.zeros_like(mean), torch.zeros_like(logvar)) == 0).all()
    away = (mean.abs() > 1e-3) | (logvar.abs() > 1e-3)
    assert (kl_to_standard_normal(mean, logvar)[away] > 0).all()

def test_kl_known_value_and_shape_error():
    # mean 1, variance e: (1 + e - 1 - 1) / 2
    assert math.isclose(kl_to_standard_normal(torch.tensor(1.), torch.tensor(1.)).item(), (math.e - 1) / 2, rel_tol=1e-6)
    with pytest.raises(ValueError, match='same shape'): kl_to_standard_normal(torch.zeros(3), torch.zeros(2))

@pytest.mark.parametrize('mu,var', [(0., 1.), (2., 0.25), (-3., 4.), (0.5, 1e-4)])
def test_reparameterize_mean_and_variance(mu, var):
    "Statistical: 200,000 samples of N(mu, var) have that mean and variance (to well within 5 standard errors)."
    n = 200_000
    z = reparameterize(torch.full((n,), mu, dtype=torch.float64), torch.full((n,), math.log(var), dtype=torch.float64),
                       torch.Generator().manual_seed(0))
    assert abs(z.mean().item() - mu) < 5 * math.sqrt(var / n)
    assert abs(z.var().item() / var - 1) < 5 * math.sqrt(2 / n)

def test_reparameterize_equals_rsample_and_carries_gradients():
    mean = torch.tensor([0.5, -1., 3.], requires_grad=True)
    logvar = torch.tensor([0., 2., -4.], requires_grad=True)
    torch.manual_seed(3); ref = Normal(mean, (0.5 * logvar).exp()).rsample()
    torch.manual_seed(3); z = reparameterize(mean, logvar)
    assert torch.allclose(z, ref)
    z.sum().backward()
    assert torch.allclose(mean.grad, torch.ones(3))
    assert torch.allclose(logvar.grad, (z - mean).detach() / 2)
    with pytest.raises(ValueError, match='same shape'): reparameterize(mean, logvar[:2])

def test_reparameterize_is_repeatable_with_a_generator():
    mean, logvar = torch.zeros(2, 4, 8, 8), torch.zeros(2, 4, 8, 8)
    a = reparameterize(mean, logvar, torch.Generator().manual_seed(5))
    b = reparameterize(mean, logvar, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and not torch.equal(a, reparameterize(mean, logvar, torch.Generator().manual_seed(6)))

@pytest.mark.parametrize('bs', [1, 3, 8])
@pytest.mark.parametrize('nfs,size,latent', [((16, 32, 64), 32, 8), ((4, 8), 16, 8), ((4, 8, 8, 8), 32, 4), ((6,), 5, 5)])
def test_shapes(bs, nfs, size, latent):
    vae = VAE(nfs=nfs)
    x = torch.randn(bs, 1, size, size)
    with torch.no_grad():
        mean, logvar = vae.encode(x)
        recon, mean2, logvar2 = vae(x)
    assert mean.shape == logvar.shape == (bs, 4, latent, latent)
    assert recon.shape == x.shape and torch.equal(mean, mean2) and torch.equal(logvar, logvar2)
    assert vae.decode(mean).shape == x.shape
    out = vae.reconstruct(x, batch_size=2)
    assert out.shape == x.shape and out.abs().max() <= 1

def test_round_trip_other_channels_and_latents():
    vae = VAE(in_ch=3, n_latent=2, nfs=(8, 16))
    x = torch.randn(2, 3, 12, 20)
    with torch.no_grad(): mean, _ = vae.encode(x)
    assert mean.shape == (2, 2, 6, 10)
    assert vae.decode(mean).shape == x.shape

def test_reconstruct_is_deterministic_and_decodes_the_mean():
    torch.manual_seed(0)
    vae = VAE(nfs=(4, 8))
    x = torch.randn(5, 1, 16, 16)
    with torch.no_grad(): expected = vae.decode(vae.encode(x)[0]).clamp(-1, 1)
    assert torch.allclose(vae.reconstruct(x), expected, atol=1e-6) and torch.equal(vae.reconstruct(x), vae.reconstruct(x))

def test_gradient_reaches_every_parameter():
    torch.manual_seed(0)
    vae = VAE()
    x = torch.rand(4, 1, 32, 32) * 2 - 1
    vae_loss(vae(x), x, beta=1e-2).backward()
    missing = [n for n, p in vae.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing

@pytest.mark.parametrize('bad,msg', [(torch.zeros(2, 1, 30, 32), 'multiples of 4'), (torch.zeros(2, 3, 32, 32), r'\[batch, 1, height, width\]'),
                                     (torch.zeros(2, 32, 32), r'\[batch, 1, height, width\]'), ([[0.]], 'list')])
def test_bad_images_raise(bad, msg):
    with pytest.raises(ValueError, match=msg): VAE().encode(bad)
    with pytest.raises(ValueError, match=msg): VAE()(bad)

def test_bad_latents_and_settings_raise():
    with pytest.raises(ValueError, match='4 channels'): VAE().decode(torch.zeros(2, 8, 8, 8))
    with pytest.raises(ValueError, match='4 channels'): VAE().decode(torch.zeros(8, 8, 8))
    with pytest.raises(ValueError, match='at least one level'): VAE(nfs=())

def test_norm_act_res_block():
    b = NormActResBlock(8, 16)
    assert b(torch.randn(2, 8, 5, 5)).shape == (2, 16, 5, 5)
    same = NormActResBlock(8, 8)
    for p in same.convs[-1][-1].parameters(): torch.nn.init.zeros_(p)   # the residual branch outputs 0: the block is the identity
    x = torch.randn(2, 8, 5, 5)
    assert torch.allclose(same(x), x)

def test_vae_loss_is_mse_plus_beta_kl():
    g = torch.Generator().manual_seed(1)
    recon, target = torch.randn(3, 1, 8, 8, generator=g), torch.randn(3, 1, 8, 8, generator=g)
    mean, logvar = torch.randn(3, 4, 2, 2, generator=g), torch.randn(3, 4, 2, 2, generator=g)
    mse = ((recon - target) ** 2).mean()
    kl = kl_divergence(Normal(mean, (0.5 * logvar).exp()), Normal(0., 1.)).mean()
    for beta in (0., 1e-4, 0.5):
        assert torch.allclose(vae_loss((recon, mean, logvar), target, beta), mse + beta * kl, rtol=1e-5)
    with pytest.raises(ValueError, match='but the target is'): vae_loss((recon, mean, logvar), target[:, :, :4])

def _random_dls(n_batches=3, bs=8, size=16, seed=0):
    "Stand-in `DataLoaders`: batches of flat grey images, one random level in [-1, 1] each."
    g = torch.Generator().manual_seed(seed)
    batches = [((torch.rand(bs, 1, 1, 1, generator=g) * 2 - 1).expand(bs, 1, size, size).contiguous(), torch.zeros(bs, dtype=torch.long))
               for _ in range(n_batches)]
    return type('DLs', (), {'train': batches, 'valid': batches})()

def test_train_vae_records_every_step_and_learns():
    torch.manual_seed(0)
    dls = _random_dls()
    learn = train_vae(VAE(nfs=(4, 8)), dls, epochs=4, lr=1e-2, beta=1e-3)
    log = learn.log
    assert len(log.losses) == len(log.mses) == len(log.kls) == 12 and log.seconds > 0
    for loss, mse, kl in zip(log.losses, log.mses, log.kls):   # the recorded parts add up to the loss (up to the sampled noise)
        assert math.isclose(loss, mse + 1e-3 * kl, rel_tol=1e-4)
    assert sum(log.mses[-3:]) < sum(log.mses[:3])
    with pytest.raises(ValueError, match='beta must be >= 0'): train_vae(VAE(nfs=(4, 8)), dls, beta=-1.)

def test_vaecb_makes_the_input_the_target():
    cb = VAECB()
    learn = type('L', (), {})()
    x = torch.randn(2, 1, 4, 4)
    learn.batch = (x, torch.tensor([3, 4]))
    cb.before_batch(learn)
    assert learn.batch[0] is x and learn.batch[1] is x

def test_latent_scale_gives_unit_std():
    torch.manual_seed(0)
    vae, dls = VAE(nfs=(4, 8)), _random_dls(4)
    scale = latent_scale(vae, dls)
    with torch.no_grad(): lat = torch.cat([vae.encode(b[0])[0] for b in dls.train])
    assert math.isclose((lat * scale).std().item(), 1., rel_tol=1e-4)
    assert math.isclose(latent_scale(vae, dls.train, max_batches=1), 1 / lat[:8].std().item(), rel_tol=1e-4)
    assert math.isclose(latent_scale(vae, dls.train), scale)   # a plain iterable of batches works too
    with pytest.raises(ValueError, match='no latents'): latent_scale(vae, [])

TINY = dict(epochs=1, nfs=(4, 8), n_train=64, verbose=False)

@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    "A fresh, empty data folder (Fashion-MNIST then comes from the system copy or the bundled sample), offline."
    monkeypatch.setenv('MINIAI_DATA', str(tmp_path))
    monkeypatch.setenv('MINIAI_OFFLINE', '1')
    return tmp_path

def test_trained_vae_saves_then_loads(data_dir):
    tmp_path = data_dir
    vae, record = trained_vae(**TINY)
    folder = tmp_path/'models'/'vae_e1_beta0.0001_lr0.003_nfs4-8_n64'
    assert sorted(p.name for p in (tmp_path/'models').iterdir()) == [folder.name]
    assert sorted(p.name for p in folder.iterdir()) == ['config.json', 'model.safetensors']
    assert record['steps'] == 1 and record['n_train'] == 64 and record['nfs'] == [4, 8] and len(record['losses']) == 1
    assert vae.config['nfs'] == [4, 8] and vae.config['latent_scale'] > 0   # the VAE keeps its latent scale
    again, record2 = trained_vae(**TINY, train=False)
    assert record2 == record and again.config == vae.config
    for (k, a), b in zip(vae.state_dict().items(), again.state_dict().values()): assert torch.equal(a, b), k
    assert not again.training

def test_trained_vae_refuses_missing_and_corrupt_files(data_dir, tmp_path):
    folder = tmp_path/'vae'
    with pytest.raises(FileNotFoundError, match='training was not allowed'): trained_vae(**TINY, folder=folder, train=False)
    trained_vae(**TINY, folder=folder)
    weights, config = folder/'model.safetensors', folder/'config.json'
    good = weights.read_bytes()
    weights.write_bytes(b'not a model')
    with pytest.raises(ValueError, match='delete the folder vae'): trained_vae(**TINY, folder=folder)
    weights.write_bytes(good)
    config.write_text('{not json')
    with pytest.raises(ValueError, match='not valid JSON.*delete the folder vae'): trained_vae(**TINY, folder=folder)
    config.write_text('[]')   # a list where a record should be
    with pytest.raises(ValueError, match='not written by save_trained'): trained_vae(**TINY, folder=folder)

def test_trained_vae_refuses_other_settings(data_dir, tmp_path):
    folder = tmp_path/'vae'
    trained_vae(**TINY, folder=folder)
    with pytest.raises(ValueError, match=r'nfs is \[4, 8\] there, not \[4, 16\]'): trained_vae(**{**TINY, 'nfs': (4, 16)}, folder=folder)
    with pytest.raises(ValueError, match='beta is 0.0001 there, not 0.001'): trained_vae(**{**TINY, 'beta': 1e-3}, folder=folder)
