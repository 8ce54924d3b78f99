"Karras et al.'s noise levels and preconditioning match their closed forms, the preconditioned target has unit variance, the samplers land on the data point of a one-image dataset and make the calls they should, and bad input fails clearly."
import math
from functools import partial
import pytest, torch
from torch import nn
from hypothesis import given, settings, strategies as st
from miniai.unet import UNet
from miniai.karras import (karras_scalings, noisify_karras, KarrasDenoiser, train_karras, CountCalls, karras_sample, VPDenoiser)
from miniai.samplers import sigmas_karras, sample_euler, sample_heun, ancestral_step, sample_euler_ancestral
from miniai.samplers import churn_level, lms_coeffs, sample_lms

pos_floats = st.floats(1e-3, 1e3, allow_nan=False, allow_infinity=False)

@st.composite
def karras_ranges(draw):
    "`(n, sigma_min, sigma_max, rho)` with `0 < sigma_min < sigma_max`."
    lo = draw(st.floats(1e-4, 1.))
    return draw(st.integers(1, 200)), lo, lo * draw(st.floats(1.5, 1e5)), draw(st.floats(0.5, 10.))

@settings(max_examples=200)
@given(karras_ranges())
def test_sigmas_karras_endpoints_monotone_and_formula(case):
    n, lo, hi, rho = case
    s = sigmas_karras(n, lo, hi, rho).double()
    assert s.shape == (n + 1,) and s[-1] == 0
    assert math.isclose(s[0], hi, rel_tol=1e-5)
    if n > 1: assert math.isclose(s[-2], lo, rel_tol=1e-4)
    assert (s[1:] < s[:-1]).all()
    if n > 2:   # uniform in sigma**(1/rho)
        r = s[:-1] ** (1 / rho)
        steps = r[1:] - r[:-1]
        assert torch.allclose(steps, steps.mean().expand_as(steps), rtol=1e-3, atol=1e-6 * float(r[0]))

def test_sigmas_karras_known_values():
    assert torch.allclose(sigmas_karras(3, 1., 9., rho=1.), torch.tensor([9., 5., 1., 0.]))
    expected = [(80 ** (1 / 7) + i / 4 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7 for i in range(5)] + [0.]
    assert torch.allclose(sigmas_karras(5), torch.tensor(expected), rtol=1e-5)

@pytest.mark.parametrize('args,msg', [((0,), 'at least 1'), ((-3,), 'at least 1'), ((5, 1., 0.5), 'sigma_min < sigma_max'),
                                      ((5, 0., 1.), 'sigma_min < sigma_max'), ((5, 0.1, 1., 0.), 'rho must be positive')])
def test_sigmas_karras_errors(args, msg):
    with pytest.raises(ValueError, match=msg): sigmas_karras(*args)
    with pytest.raises(TypeError, match='must be an int'): sigmas_karras(2.5)

@settings(max_examples=200)
@given(pos_floats, st.floats(0.05, 5.))
def test_scalings_closed_forms(sigma, sd):
    c_skip, c_out, c_in, c_noise = (float(c) for c in karras_scalings(torch.tensor(sigma), sd))
    total = sigma ** 2 + sd ** 2
    assert math.isclose(c_skip, sd ** 2 / total, rel_tol=1e-5)
    assert math.isclose(c_out, sigma * sd / math.sqrt(total), rel_tol=1e-5)
    assert math.isclose(c_in, 1 / math.sqrt(total), rel_tol=1e-5)
    assert math.isclose(c_noise, math.log(sigma) / 4, rel_tol=1e-5, abs_tol=1e-6)
    # the target (x0 - c_skip*x)/c_out has variance ((1-c_skip)^2 sd^2 + c_skip^2 sigma^2)/c_out^2 = 1
    assert math.isclose(((1 - c_skip) ** 2 * sd ** 2 + c_skip ** 2 * sigma ** 2) / c_out ** 2, 1., rel_tol=1e-3)

@pytest.mark.parametrize('sigma', [0.01, 0.3, 1., 10., 80.])
@pytest.mark.parametrize('sd', [0.5, 1.3])
def test_input_and_target_have_unit_variance(sigma, sd):
    "Statistical: data of std `sd` (mean 0) noised at one `sigma` gives network input and target of variance 1."
    g = torch.Generator().manual_seed(0)
    x0 = sd * torch.randn(4000, 1, 8, 8, generator=g)
    (x_in, c_noise), target = noisify_karras(x0, sd, p_mean=math.log(sigma), p_std=0., generator=g)
    assert torch.allclose(c_noise, torch.full((4000,), math.log(sigma) / 4))
    assert abs(x_in.var().item() - 1) < 0.02 and abs(target.var().item() - 1) < 0.02

def test_noisify_draws_log_normal_sigmas_and_unit_variance():
    g = torch.Generator().manual_seed(1)
    x0 = 0.7 * torch.randn(20000, 1, 4, 4, generator=g)
    (x_in, c_noise), target = noisify_karras(x0, 0.7, generator=g)
    log_sigma = 4 * c_noise
    assert abs(log_sigma.mean().item() + 1.2) < 0.03 and abs(log_sigma.std().item() - 1.2) < 0.03
    assert abs(x_in.var().item() - 1) < 0.03 and abs(target.var().item() - 1) < 0.03

def test_scalings_errors():
    with pytest.raises(ValueError, match='must be positive'): karras_scalings(torch.tensor([1., 0.]))
    with pytest.raises(ValueError, match='must be positive'): karras_scalings(torch.tensor([-1.]))
    with pytest.raises(ValueError, match='sigma_data must be positive'): karras_scalings(torch.tensor([1.]), 0.)

def test_denoiser_of_the_target_returns_the_clean_image():
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(6, 1, 4, 4, generator=g)
    (x_in, c_noise), target = noisify_karras(x0, 1., generator=g)
    sigma = (4 * c_noise).exp()
    class Target(nn.Module):
        def forward(self, x, c): return target
    x = x_in * (sigma ** 2 + 1).sqrt().view(-1, 1, 1, 1)   # undo c_in
    assert torch.allclose(KarrasDenoiser(Target(), 1.)(x, sigma), x0, atol=1e-5)

point = torch.randn(1, 2, 3, 3, generator=torch.Generator().manual_seed(3))
def exact(x, sigma): return point.expand_as(x)   # the exact denoiser of a one-image dataset

@settings(max_examples=50)
@given(st.integers(1, 40), st.sampled_from(['euler', 'heun', 'ancestral', 'lms', 'churn']), st.integers(0, 2 ** 31 - 1))
def test_samplers_land_on_the_single_point(n, name, seed):
    g = torch.Generator().manual_seed(seed)
    x = 80. * torch.randn(4, 2, 3, 3, generator=g)
    sigmas = sigmas_karras(n, 0.01, 80.)
    out = {'euler': lambda: sample_euler(exact, x, sigmas), 'heun': lambda: sample_heun(exact, x, sigmas),
           'ancestral': lambda: sample_euler_ancestral(exact, x, sigmas, generator=g),
           'lms': lambda: sample_lms(exact, x, sigmas), 'churn': lambda: sample_heun(exact, x, sigmas, g, s_churn=5.)}[name]()
    assert torch.allclose(out, point.expand_as(out), atol=1e-4)

@pytest.mark.parametrize('n', [1, 2, 7, 25])
def test_model_calls(n):
    calls = {}
    churned = partial(sample_heun, s_churn=3.)
    for sampler in (sample_euler, sample_heun, sample_euler_ancestral, sample_lms, churned):
        counter = CountCalls(exact)
        sampler(counter, torch.randn(2, 2, 3, 3), sigmas_karras(n))
        calls[sampler] = counter.calls
        assert counter.images == 2 * counter.calls
    assert calls == {sample_euler: n, sample_heun: 2 * n - 1, sample_euler_ancestral: n, sample_lms: n, churned: 2 * n - 1}

def test_euler_is_first_order_and_heun_second_order():
    "Data N(0, 1): the exact denoiser is x/(1+sigma^2), and the ODE's solution from sigma_max to 0 is x/sqrt(1+sigma_max^2)."
    gauss = lambda x, sigma: x / (1 + sigma ** 2)
    x = torch.randn(1000, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * math.sqrt(1 + 80. ** 2)
    truth = x / math.sqrt(1 + 80. ** 2)
    err = {(sampler, n): (sampler(gauss, x, sigmas_karras(n, 0.01, 80.).double()) - truth).abs().max().item()
           for sampler in (sample_euler, sample_heun) for n in (25, 50, 100)}
    for n in (25, 50):   # doubling the steps halves Euler's error and quarters Heun's
        assert 1.7 < err[sample_euler, n] / err[sample_euler, 2 * n] < 2.3
        assert err[sample_heun, n] / err[sample_heun, 2 * n] > 3.5
        assert err[sample_heun, n] < err[sample_euler, n] / 4

@settings(max_examples=300)
@given(pos_floats, st.floats(0., 1.), st.floats(0., 3.))
def test_ancestral_step_variances(sigma_from, frac, eta):
    sigma_to = sigma_from * frac
    down, up = ancestral_step(sigma_from, sigma_to, eta)
    assert 0 <= up <= sigma_to + 1e-12 and 0 <= down <= sigma_to + 1e-12
    assert math.isclose(down ** 2 + up ** 2, sigma_to ** 2, rel_tol=1e-9, abs_tol=1e-12)
    if eta == 0: assert up == 0 and math.isclose(down, sigma_to, rel_tol=1e-9, abs_tol=1e-12)
    if eta == 1:   # DDPM's posterior variance in sigma form
        assert math.isclose(up ** 2, sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2, rel_tol=1e-9, abs_tol=1e-12)

def test_ancestral_step_errors():
    with pytest.raises(ValueError, match='sigma_to <= sigma_from'): ancestral_step(1., 2.)
    with pytest.raises(ValueError, match='sigma_to <= sigma_from'): ancestral_step(1., -0.5)
    with pytest.raises(ValueError, match='eta must be'): ancestral_step(2., 1., eta=-1.)

def test_cosine_and_linear_schedules():
    from miniai.ddpm import cosine_abar, abar_from_betas, linear_betas
    for abar in (cosine_abar(), cosine_abar(50), abar_from_betas(linear_betas())):
        assert (abar[1:] < abar[:-1]).all() and (abar > 0).all() and (abar <= 1).all()
    cos = cosine_abar(1000, s=0.008)
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2
    assert math.isclose(cos[0].item(), f(1) / f(0), rel_tol=1e-5) and math.isclose(cos[500].item(), f(501) / f(0), rel_tol=1e-4)
    assert cos[-1] < 1e-6 and cos[0] > 0.9999
    lin = abar_from_betas(linear_betas())
    assert math.isclose(lin[0].item(), 1 - 1e-4, rel_tol=1e-6) and lin[-1] < 1e-4
    # the lesson's point: the linear schedule leaves far more steps at a signal-to-noise ratio below 1/100
    low = lambda ab: ((ab / (1 - ab)) < 1e-2).float().mean().item()
    assert low(lin) > 3 * low(cos)

def test_vp_denoiser_inverts_the_schedule():
    from miniai.ddpm import abar_from_betas, linear_betas
    abar = abar_from_betas(linear_betas())
    sig = ((1 - abar) / abar).sqrt()
    class EpsOracle(nn.Module):
        "The exact noise of x_t for the one-image dataset `point`."
        def forward(self, x_t, t):
            assert torch.allclose(t, t.round(), atol=1e-3)
            ab = abar[t.round().long()].view(-1, 1, 1, 1)
            return (x_t - ab.sqrt() * point) / (1 - ab).sqrt()
    vp = VPDenoiser(EpsOracle(), abar)
    ts = torch.tensor([0, 1, 37, 500, 998, 999])
    assert torch.allclose(vp.t_of_sigma(sig[ts]), ts.float(), atol=1e-2)
    assert vp.t_of_sigma(torch.tensor(1e-5)) == 0 and vp.t_of_sigma(torch.tensor(1e5)) == 999
    for t in (3, 250, 900):
        x = point + sig[t] * torch.randn(5, 2, 3, 3)
        assert torch.allclose(vp(x, sig[t]), point.expand_as(x), atol=1e-4)

def test_train_and_sample_a_tiny_model():
    torch.manual_seed(0)
    class DLs:
        train = [(torch.randn(8, 1, 8, 8), torch.zeros(8)) for _ in range(3)]
        valid = train
    model = UNet(nfs=(8, 16))
    learn = train_karras(model, DLs(), epochs=1, lr=1e-3, sigma_data=1.)
    assert len(learn.log.losses) == 3 and all(math.isfinite(l) for l in learn.log.losses) and learn.log.seconds > 0
    den = KarrasDenoiser(model, 1.)
    a = karras_sample(den, 5, steps=3, size=8, generator=torch.Generator().manual_seed(0), batch_size=2)
    b = karras_sample(den, 5, steps=3, size=8, generator=torch.Generator().manual_seed(0), batch_size=2)
    assert a.shape == (5, 1, 8, 8) and a.abs().max() <= 1 and torch.equal(a, b)
    c = karras_sample(den, 5, steps=3, sampler=sample_euler_ancestral, size=8, generator=torch.Generator().manual_seed(0))
    assert c.shape == (5, 1, 8, 8)

def gauss_denoiser(x, sigma): return 0.3 + 0.64 * (x - 0.3) / (0.64 + sigma ** 2)   # data N(0.3, 0.8^2)

def heun_algorithm2(denoiser, x, sigmas, generator, s_churn=0., s_tmin=0., s_tmax=float('inf'), s_noise=1.):
    """Karras et al. (2022), Algorithm 2, line by line (t for sigma). Noise is drawn only where gamma > 0, in float32
    like all our samplers' noise (k-diffusion draws at every step and discards the unused draws)."""
    t, n = [float(s) for s in sigmas], len(sigmas) - 1
    for i in range(n):
        gamma = min(s_churn / n, math.sqrt(2) - 1) if s_tmin <= t[i] <= s_tmax else 0.
        t_hat = t[i] + gamma * t[i]
        x_hat = x
        if gamma > 0:
            eps = s_noise * torch.randn(x.shape, generator=generator).to(x)
            x_hat = x + math.sqrt(t_hat ** 2 - t[i] ** 2) * eps
        d = (x_hat - denoiser(x_hat, t_hat)) / t_hat
        x_next = x_hat + (t[i + 1] - t_hat) * d
        if t[i + 1] != 0:
            d_prime = (x_next - denoiser(x_next, t[i + 1])) / t[i + 1]
            x_next = x_hat + (t[i + 1] - t_hat) * (d / 2 + d_prime / 2)
        x = x_next
    return x

@settings(max_examples=60, deadline=None)
@given(st.integers(1, 30), st.floats(0., 20.), st.floats(0., 2.), st.floats(2., 100.), st.floats(0.9, 1.1),
       st.integers(0, 2 ** 31 - 1))
def test_heun_with_churn_is_algorithm_2(n, s_churn, s_tmin, s_tmax, s_noise, seed):
    sigmas = sigmas_karras(n, 0.01, 80.).double()
    x = 80. * torch.randn(3, 2, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    kw = dict(s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise)
    ours = sample_heun(gauss_denoiser, x, sigmas, torch.Generator().manual_seed(seed + 1), **kw)
    ref = heun_algorithm2(gauss_denoiser, x, sigmas, torch.Generator().manual_seed(seed + 1), **kw)
    torch.testing.assert_close(ours, ref, atol=1e-9, rtol=1e-9)

def heun_before_churn(denoiser, x, sigmas):
    "`sample_heun` as it was before it took churn keywords."
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        d = (x - denoiser(x, s)) / s
        x_euler = x + d * (s_next - s)
        if s_next == 0: x = x_euler; continue
        d_next = (x_euler - denoiser(x_euler, s_next)) / s_next
        x = x + (d + d_next) / 2 * (s_next - s)
    return x

def test_heun_without_churn_is_unchanged_and_draws_nothing():
    """No churn (the default, `s_churn=0`, or a window that holds no level) is the deterministic Heun of before, bit
    for bit, and Algorithm 2 without churn to rounding."""
    sigmas, x = sigmas_karras(13, 0.01, 80.), 80. * torch.randn(4, 1, 5, 5, generator=torch.Generator().manual_seed(0))
    plain = heun_before_churn(gauss_denoiser, x, sigmas)
    torch.testing.assert_close(heun_algorithm2(gauss_denoiser, x, sigmas, None), plain, atol=1e-5, rtol=1e-5)
    g = torch.Generator().manual_seed(1)
    state = g.get_state()
    for kw in ({}, dict(s_churn=0.), dict(s_churn=5., s_tmin=100.), dict(s_churn=5., s_tmax=1e-3)):
        assert torch.equal(sample_heun(gauss_denoiser, x, sigmas, g, **kw), plain)
    assert torch.equal(g.get_state(), state)   # no noise drawn

@settings(max_examples=300)
@given(pos_floats, st.integers(1, 1000), st.floats(0., 1e3), st.floats(0., 10.), st.floats(0., 10.))
def test_churn_level(sigma, n, s_churn, s_tmin, width):
    s_tmax = s_tmin + width
    hat = churn_level(sigma, n, s_churn, s_tmin, s_tmax)
    if not s_tmin <= sigma <= s_tmax or s_churn == 0: assert hat == sigma
    else:
        assert sigma <= hat <= math.sqrt(2) * sigma * (1 + 1e-12)   # the added variance is at most sigma^2
        assert math.isclose(hat, sigma * (1 + min(s_churn / n, math.sqrt(2) - 1)), rel_tol=1e-12)
        assert churn_level(sigma, n, s_churn / 2, s_tmin, s_tmax) <= hat   # more churn, higher level
    with pytest.raises(ValueError, match='s_churn must be >= 0'): churn_level(sigma, n, -1.)

@settings(max_examples=200)
@given(st.integers(2, 60), st.data())
def test_lms_coeffs_integrate_polynomials_exactly(n, data):
    "Through `order` levels the weights integrate every polynomial of degree below `order` exactly over the step."
    sigmas = sigmas_karras(n, 0.01, 80.).double()
    i = data.draw(st.integers(0, n - 1))
    order = data.draw(st.integers(1, min(i + 1, 4)))
    c = lms_coeffs(sigmas, i, order)
    assert len(c) == order
    a, b = sigmas[i].item(), sigmas[i + 1].item()
    for k in range(order):   # the slope sigma**k, integrated: (b**(k+1) - a**(k+1)) / (k+1)
        want = (b ** (k + 1) - a ** (k + 1)) / (k + 1)
        got = sum(cj * sigmas[i - j].item() ** k for j, cj in enumerate(c))
        assert math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9 * max(1., abs(a) ** (k + 1)))
    if order == 1: assert math.isclose(c[0], b - a, rel_tol=1e-12)

def test_lms_coeffs_errors():
    s = sigmas_karras(5)
    with pytest.raises(ValueError, match='order must be between 1 and i\\+1=2'): lms_coeffs(s, 1, 3)
    with pytest.raises(ValueError, match='order must be between'): lms_coeffs(s, 3, 0)

def test_lms_order_1_is_euler_and_lms_converges_faster_than_heun():
    "Order 1 is Euler exactly; on the N(0, 1) ODE doubling LMS's steps divides its error by more than Heun's 4."
    gauss = lambda x, sigma: x / (1 + sigma ** 2)
    x = torch.randn(1000, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * math.sqrt(1 + 80. ** 2)
    truth = x / math.sqrt(1 + 80. ** 2)
    sig = {n: sigmas_karras(n, 0.01, 80.).double() for n in (25, 50, 100)}
    assert torch.allclose(sample_lms(gauss, x, sig[25], order=1), sample_euler(gauss, x, sig[25]), rtol=1e-12, atol=1e-12)
    err = {n: (sample_lms(gauss, x, s) - truth).abs().max().item() for n, s in sig.items()}
    heun = {n: (sample_heun(gauss, x, s) - truth).abs().max().item() for n, s in sig.items()}
    for n in (25, 50): assert err[n] / err[2 * n] > 6
    assert err[25] < heun[25]   # 25 calls against Heun's 49

def test_zero_init_residuals():
    from miniai.unet import EmbResBlock
    from miniai.karras import zero_init_residuals
    unet = zero_init_residuals(UNet(nfs=(8, 16)))
    blocks = [m for m in unet.modules() if isinstance(m, EmbResBlock)]
    assert all((b.conv2[-1].weight == 0).all() and (b.conv2[-1].bias == 0).all() for b in blocks)
    x, emb = torch.randn(2, 8, 8, 8), torch.randn(2, 32)
    with torch.no_grad():
        assert torch.equal(unet(torch.randn(2, 1, 8, 8), torch.rand(2)), torch.zeros(2, 1, 8, 8))
        assert torch.equal(blocks[0](x, emb), blocks[0].idconv(x))

def test_trained_karras_with_init_is_its_own_model(tmp_path, monkeypatch):
    "`init` runs on the new U-Net before training, and the model is kept in its own folder with `init` in its record."
    import miniai.karras as karras, miniai.datasets as datasets
    class DLs:
        train = [(torch.randn(8, 1, 32, 32, generator=torch.Generator().manual_seed(i)), torch.zeros(8)) for i in range(2)]
        valid = train
    monkeypatch.setattr(karras, 'models_dir', lambda: tmp_path)
    monkeypatch.setattr(datasets, 'fashion32_dls', lambda *args, **kwargs: DLs())
    started = []
    def zero_init_residuals(model):   # the real one, recording the model's output as training starts
        karras.zero_init_residuals(model)
        with torch.no_grad(): started.append(model(torch.randn(2, 1, 32, 32), torch.rand(2)).abs().max().item())
    zero, zero_rec = karras.trained_karras(1, verbose=False, init=zero_init_residuals)
    plain, plain_rec = karras.trained_karras(1, verbose=False)
    assert started == [0.]
    assert zero_rec['init'] == 'zero_init_residuals' and 'init' not in plain_rec and zero_rec['steps'] == 2
    assert (tmp_path/'karras_fashion_e1_zero_init_residuals').is_dir() and (tmp_path/'karras_fashion_e1').is_dir()
    w = lambda d: d.model.conv_out[-1].weight
    assert not torch.equal(w(zero), w(plain))
    again, again_rec = karras.trained_karras(1, verbose=False, init=zero_init_residuals)   # loaded, not trained
    assert started == [0.] and torch.equal(w(again), w(zero)) and again_rec['losses'] == zero_rec['losses']
