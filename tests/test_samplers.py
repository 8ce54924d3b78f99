"""DDIM (miniai.samplers) against closed forms: with a model that predicts the noise exactly it recovers the data, at eta=1
its noise is DDPM's posterior variance (strided too), at eta=0 it is deterministic, and bad arguments fail clearly."""
import pytest, torch
from torch import nn
from hypothesis import given, settings, strategies as st
from miniai.samplers import ddim_timesteps, ddim_sigma, ddim_step, ddim_sample, slerp

T = 1000
BETAS = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)  # the linear schedule of lesson 17 (DDPM's)
ABAR = torch.cumprod(1 - BETAS, 0)
ABAR32 = ABAR.float()

class OneImageOracle(nn.Module):
    "The ideal noise predictor when the data is one image `x0`: x_t = sqrt(abar) x0 + sqrt(1-abar) eps gives eps exactly."
    def __init__(self, x0, abar=ABAR32):
        super().__init__(); self.x0, self.abar, self.calls = x0, abar, []
    def forward(self, x, t):
        self.calls.append(t.clone())
        a = self.abar[t.long()][:, None, None, None]  # lesson 17 passes t as floats
        return (x - a.sqrt() * self.x0) / (1 - a).sqrt()

class GaussianOracle(nn.Module):
    "The ideal noise predictor when every pixel of the data is N(0, s^2): E[eps | x_t] = sqrt(1-abar) x_t / (abar s^2 + 1 - abar)."
    def __init__(self, s, abar=ABAR32):
        super().__init__(); self.s, self.abar = s, abar
        self.unused = nn.Parameter(torch.zeros(()))  # lesson 17's sampler finds the device from the parameters
    def forward(self, x, t):
        a = self.abar[t.long()][:, None, None, None]  # lesson 17 passes t as floats
        return (1 - a).sqrt() * x / (a * self.s ** 2 + 1 - a)

def fixed_image(size=8, seed=0):
    return torch.rand(1, 1, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1

def posterior(abar_t, abar_s, betas_between):
    "DDPM's posterior q(x_s | x_t, x0) for s < t from the betas themselves: coefficients of x0 and x_t, and its variance beta_tilde."
    alpha = torch.prod(1 - betas_between)  # what the interval keeps of the signal: abar_t / abar_s, computed from the betas
    beta = 1 - alpha
    return abar_s.sqrt() * beta / (1 - abar_t), alpha.sqrt() * (1 - abar_s) / (1 - abar_t), (1 - abar_s) / (1 - abar_t) * beta

def test_timesteps():
    assert ddim_timesteps(T, 5).tolist() == [999, 749, 500, 250, 0]
    assert ddim_timesteps(T, 1).tolist() == [999]
    assert ddim_timesteps(T, T).tolist() == list(range(T - 1, -1, -1))

@given(st.integers(1, 60), st.data())
def test_timesteps_distinct_descending(T_, data):
    steps = data.draw(st.integers(1, T_))
    ts = ddim_timesteps(T_, steps)
    assert len(ts) == steps and ts[0] == T_ - 1 and ts[-1] == (0 if steps > 1 else T_ - 1)
    assert (ts[1:] < ts[:-1]).all()

@given(st.integers(1, T - 1), st.integers(1, T - 1))
def test_sigma_eta1_is_ddpm_posterior_variance(t, gap):
    "At eta=1 DDIM's noise variance is beta_tilde of DDPM's posterior, one step (gap 1) or strided (any gap)."
    s = max(t - gap, 0)
    _, _, beta_tilde = posterior(ABAR[t], ABAR[s], BETAS[s + 1:t + 1])
    torch.testing.assert_close(ddim_sigma(ABAR[t], ABAR[s], 1.) ** 2, beta_tilde, rtol=1e-9, atol=1e-15)
    torch.testing.assert_close(ddim_sigma(ABAR[t], ABAR[s], 0.5) ** 2, beta_tilde / 4, rtol=1e-9, atol=1e-15)
    assert ddim_sigma(ABAR[t], ABAR[s], 0.) == 0

@given(st.integers(1, T - 1), st.integers(1, T - 1), st.booleans())
def test_step_eta1_mean_is_ddpm_posterior_mean(t, gap, clip):
    "With zero noise, the eta=1 step lands on DDPM's posterior mean for the (clipped) estimate of x0, for any x_t and eps."
    s = max(t - gap, 0)
    g = torch.Generator().manual_seed(t)
    x_t, eps = torch.randn(4, 1, 5, 5, generator=g, dtype=torch.float64), torch.randn(4, 1, 5, 5, generator=g, dtype=torch.float64)
    x_prev, x0 = ddim_step(x_t, eps, ABAR[t], ABAR[s], eta=1., noise=torch.zeros_like(x_t), clip=clip)
    if clip: assert x0.abs().max() <= 1
    c0, ct, _ = posterior(ABAR[t], ABAR[s], BETAS[s + 1:t + 1])
    torch.testing.assert_close(x_prev, c0 * x0 + ct * x_t, rtol=1e-9, atol=1e-9)

@pytest.mark.parametrize('t,s', [(999, 998), (500, 499), (1, 0), (999, 0), (999, 949), (600, 100), (40, 20)])
def test_step_eta1_variance_statistically(t, s):
    "Many noise draws at eta=1: the spread of x_prev around DDPM's posterior mean is beta_tilde (within 3%)."
    g = torch.Generator().manual_seed(t * 1000 + s)
    x_t, eps = torch.randn(1, 1, 4, 4, generator=g), torch.randn(1, 1, 4, 4, generator=g)
    noise = torch.randn(20_000, 1, 4, 4, generator=g)
    x_prev, _ = ddim_step(x_t.expand_as(noise), eps.expand_as(noise), ABAR32[t], ABAR32[s], eta=1., noise=noise)
    c0, ct, beta_tilde = posterior(ABAR[t], ABAR[s], BETAS[s + 1:t + 1])
    x0 = (x_t - (1 - ABAR32[t]).sqrt() * eps) / ABAR32[t].sqrt()
    torch.testing.assert_close(x_prev.mean(0, keepdim=True), (c0 * x0 + ct * x_t).float(), rtol=0, atol=4 * float(beta_tilde.sqrt()) / 20_000 ** 0.5 + 1e-5)
    ratio = x_prev.double().var(0) / beta_tilde
    assert (ratio - 1).abs().max() < 0.03 * 2.5, ratio

def test_step_eta0_keeps_the_noise_direction():
    "With the exact noise, a deterministic step puts the same x0 and eps back together at the earlier noise level."
    x0, eps = fixed_image(), torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    x_t = ABAR32[700].sqrt() * x0 + (1 - ABAR32[700]).sqrt() * eps
    x_prev, x0_hat = ddim_step(x_t, eps, ABAR32[700], ABAR32[200])
    torch.testing.assert_close(x0_hat, x0, rtol=0, atol=1e-5)
    torch.testing.assert_close(x_prev, ABAR32[200].sqrt() * x0 + (1 - ABAR32[200]).sqrt() * eps, rtol=0, atol=1e-5)

@settings(max_examples=25)
@given(st.integers(1, T), st.floats(0, 1), st.integers(0, 2**31 - 1))
def test_oracle_recovers_the_image(steps, eta, seed):
    "A model that knows the noise exactly: DDIM ends on the one training image from any noise, any number of steps, any eta."
    x0 = fixed_image(seed=seed % 7)
    model = OneImageOracle(x0)
    out = ddim_sample(model, ABAR32, 3, steps, eta=eta, size=8, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(out, x0.expand(3, -1, -1, -1), rtol=0, atol=1e-4)
    assert len(model.calls) == steps

@pytest.mark.parametrize('steps', [1, 2, T])
def test_edge_step_counts_visit_the_right_timesteps(steps):
    model = OneImageOracle(fixed_image())
    ddim_sample(model, ABAR32, 2, steps, size=8, generator=torch.Generator().manual_seed(0))
    visited = [int(t[0]) for t in model.calls]
    assert visited == ddim_timesteps(T, steps).tolist()
    assert visited[0] == T - 1 and (steps == 1 or visited[-1] == 0)
    assert all(t.dtype == torch.long and t.shape == (2,) for t in model.calls)

def test_eta0_is_deterministic_given_the_start_noise():
    model = GaussianOracle(0.5)
    x_T = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    a = ddim_sample(model, ABAR32, 4, 20, size=8, x_T=x_T, generator=torch.Generator().manual_seed(1))
    b = ddim_sample(model, ABAR32, 4, 20, size=8, x_T=x_T, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    c = ddim_sample(model, ABAR32, 4, 20, size=8, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, c)  # the same seed draws the same start noise
    d1, d2 = (ddim_sample(model, ABAR32, 4, 20, eta=1., size=8, x_T=x_T, generator=torch.Generator().manual_seed(k)) for k in (1, 2))
    assert not torch.equal(d1, d2)  # eta=1 adds fresh noise: the generator matters
    torch.testing.assert_close(ddim_sample(model, ABAR32, 4, 20, eta=1., size=8, x_T=x_T, generator=torch.Generator().manual_seed(1)), d1)

def test_model_mode_is_restored():
    "Sampling puts the model in eval mode and gives it back as it was; a plain function works as a model too."
    x0 = fixed_image()
    torch.testing.assert_close(ddim_sample(lambda x, t: OneImageOracle(x0)(x, t), ABAR32, 1, 3, size=8), x0, rtol=0, atol=1e-4)
    m = OneImageOracle(fixed_image()); m.train()
    ddim_sample(m, ABAR32, 1, 3, size=8)
    assert m.training
    m.eval(); ddim_sample(m, ABAR32, 1, 3, size=8)
    assert not m.training

def output_variance(sampler, n=4096, s=0.4, seed=0):
    return sampler(GaussianOracle(s), ABAR32, n, generator=torch.Generator().manual_seed(seed)).double().var()

@pytest.mark.parametrize('steps', [5, 10, 50])
def test_eta1_matches_lesson17_strided_ddpm_in_distribution(steps):
    "miniai.ddpm's strided DDPM and DDIM at eta=1, from different seeds, give samples of the same variance (Gaussian data, ideal model)."
    ddpm = pytest.importorskip('miniai.ddpm')
    v_ddim = output_variance(lambda m, a, n, generator: ddim_sample(m, a, n, steps, eta=1., size=8, generator=generator))
    v_ddpm = output_variance(lambda m, a, n, generator: ddpm.ddpm_sample(m, a, n, steps=steps, size=8, generator=generator), seed=1)
    # 4,096 images x 64 pixels, independent (the oracle acts pixel by pixel): each variance is within ~0.3% (one standard error)
    assert abs(v_ddim / v_ddpm - 1) < 0.02, (v_ddim, v_ddpm)
    # with few steps both fall short of the data's variance 0.16, and the deterministic sampler falls less short
    v_ddim0 = output_variance(lambda m, a, n, generator: ddim_sample(m, a, n, steps, eta=0., size=8, generator=generator))
    assert v_ddpm * 1.03 < v_ddim0 < 0.16, (v_ddim0, v_ddpm)

def test_eta1_reproduces_lesson17_sampler_image_for_image():
    "Same timesteps, same clipping, noise drawn in the same order: with one seed, DDIM at eta=1 is miniai.ddpm's sampler."
    ddpm = pytest.importorskip('miniai.ddpm')
    model = GaussianOracle(0.6)
    a = ddim_sample(model, ABAR32, 64, 17, eta=1., size=8, generator=torch.Generator().manual_seed(9))
    b = ddpm.ddpm_sample(model, ABAR32, 64, steps=17, size=8, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-4)

@pytest.mark.parametrize('kwargs,exc,msg', [
    (dict(steps=0), ValueError, 'steps must be between 1 and T=1000'),
    (dict(steps=T + 1), ValueError, 'steps must be between 1 and T=1000'),
    (dict(steps=2.5), TypeError, 'steps must be an int'),
    (dict(steps=True), TypeError, 'steps must be an int'),
    (dict(steps=5, eta=-0.1), ValueError, 'eta must be between 0'),
    (dict(steps=5, eta=1.5), ValueError, 'eta must be between 0'),
    (dict(steps=5, x_T=torch.zeros(2, 1, 8, 8)), ValueError, 'x_T has shape'),
])
def test_bad_arguments_fail_clearly(kwargs, exc, msg):
    with pytest.raises(exc, match=msg): ddim_sample(OneImageOracle(fixed_image()), ABAR32, 3, size=8, **kwargs)

def test_step_with_noise_missing_fails():
    with pytest.raises(ValueError, match='pass `noise`'): ddim_step(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), ABAR32[9], ABAR32[5], eta=0.5)
    x_prev, _ = ddim_step(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), ABAR32[0], torch.tensor(1.), eta=1.)  # to the clean image: no noise
    assert torch.equal(x_prev, torch.zeros(1, 1, 2, 2))

@given(st.floats(0, 1), st.integers(0, 2**31 - 1))
def test_slerp(w, seed):
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(3, 1, 16, 16, generator=g), torch.randn(3, 1, 16, 16, generator=g)
    torch.testing.assert_close(slerp(a, b, 0.), a); torch.testing.assert_close(slerp(a, b, 1.), b)
    na, nb, nw = (x.flatten(1).norm(dim=1) for x in (a, b, slerp(a, b, w)))
    assert ((nw >= torch.minimum(na, nb) * 0.999) & (nw <= torch.maximum(na, nb) * 1.001)).all()  # no shrinking in the middle
    torch.testing.assert_close(slerp(a, a, w), a)  # parallel: stays put

# Continuous time (the course's 22_cosine): abar(t) = cos(t pi/2)^2, DDIM at the times 1 - 1/k, ..., 0.
from miniai.ddpm import cosine_abar
from miniai.samplers import (continuous_abar, continuous_abar_inv, noisify_continuous, ContinuousDDPMCB,
                             continuous_timesteps, ddim_sample_continuous, T_SCALE)

@given(st.floats(0, 1))
def test_continuous_abar_inverse(t):
    t64 = torch.tensor(t, dtype=torch.float64)
    assert abs(continuous_abar_inv(continuous_abar(t64)).item() - t) < 1e-7
    assert 0 <= continuous_abar(t64).item() <= 1

@given(st.floats(0, 1), st.floats(0, 1))
def test_continuous_abar_decreases(a, b):
    lo, hi = sorted((a, b))
    lo, hi = torch.tensor(lo, dtype=torch.float64), torch.tensor(hi, dtype=torch.float64)
    assert continuous_abar(lo) >= continuous_abar(hi)

@given(st.integers(2, 2000), st.floats(0, 0.05))
def test_cosine_abar_is_the_shifted_continuous_one(T_, s):
    ("cosine_abar at step i is abar((i/T + s)/(1 + s)) / abar(s/(1 + s)) until beta's clipping acts; "
     "without the shift it is within pi/2 s/(1+s).")
    u = torch.arange(1, T_ + 1, dtype=torch.float64) / T_
    ref = continuous_abar((u + s) / (1 + s)) / continuous_abar(torch.tensor(s / (1 + s), dtype=torch.float64))
    betas = 1 - ref / torch.cat([torch.ones(1, dtype=torch.float64), ref[:-1]])
    keep = int((betas < 0.999).long().cumprod(0).sum())   # the steps before the first clipped beta
    got = cosine_abar(T_, s).double()
    assert (got[:keep] - ref[:keep]).abs().max() < 1e-6
    assert (got[:keep] - continuous_abar(u[:keep])).abs().max() <= torch.pi / 2 * s / (1 + s) + 1e-6

def test_noisify_continuous_times_and_formula():
    x0 = fixed_image()
    (xt, t), eps = noisify_continuous(x0.expand(5000, -1, -1, -1), torch.Generator().manual_seed(0))
    assert 0 <= t.min() and t.max() <= 0.999 and abs(t.mean().item() - 0.5) < 0.02
    ab = continuous_abar(t)[:, None, None, None]
    torch.testing.assert_close(xt, ab.sqrt() * x0 + (1 - ab).sqrt() * eps)

def test_continuous_cb_scales_the_time():
    class B: batch = (fixed_image().expand(3, -1, -1, -1), None)
    ContinuousDDPMCB(torch.Generator().manual_seed(1)).before_batch(B)
    (_, t), _ = noisify_continuous(B.batch[0], torch.Generator().manual_seed(1))
    torch.testing.assert_close(B.batch[1], T_SCALE * t)

class ContinuousOneImageOracle(nn.Module):
    "The ideal noise predictor for one image, told `T_SCALE * t`; records the times it is told."
    def __init__(self, x0): super().__init__(); self.x0, self.calls = x0, []
    def forward(self, x, t):
        self.calls.append(t.clone())
        a = continuous_abar(t / T_SCALE)[:, None, None, None]
        return (x - a.sqrt() * self.x0) / (1 - a).clamp_min(1e-12).sqrt()

@settings(deadline=None, max_examples=25)
@given(st.integers(2, 200), st.floats(0, 1), st.integers(0, 2**31 - 1))
def test_continuous_oracle_recovers_the_image(steps, eta, seed):
    x0 = fixed_image(seed=seed % 7)
    oracle = ContinuousOneImageOracle(x0)
    g = torch.Generator().manual_seed(seed)
    imgs = ddim_sample_continuous(oracle, 2, steps, eta=eta, size=8, generator=g)
    torch.testing.assert_close(imgs, x0.expand(2, -1, -1, -1), atol=1e-4, rtol=0)
    told = torch.stack([c[0] for c in oracle.calls]).double()
    torch.testing.assert_close(told, (continuous_timesteps(steps) * T_SCALE).float().double())

@pytest.mark.parametrize('steps', [2, 3, 10, 100])
def test_continuous_times(steps):
    ts = continuous_timesteps(steps)
    assert len(ts) == steps and ts[0] == 1 - 1 / steps and ts[-1] == 0
    torch.testing.assert_close(ts.diff(), torch.full((steps - 1,), -1 / steps, dtype=torch.float64))

@pytest.mark.parametrize('steps,exc,msg', [(1, ValueError, 'at least 2'), (2.5, TypeError, 'must be an int')])
def test_continuous_times_bad(steps, exc, msg):
    with pytest.raises(exc, match=msg): continuous_timesteps(steps)
