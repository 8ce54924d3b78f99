"""Our samplers against Hugging Face diffusers' schedulers, step by step, on a toy model with no weights.

The data is a Gaussian, every pixel `N(MU, S^2)`, so the ideal noise predictor is linear in `x_t` and known in closed
form at any (fractional) timestep. Both sides drive the same model from the same starting noise and the same
generator; we record every input the model is given (the states the sampler passes through, and the timesteps) and
compare them call by call, then the final images. Where diffusers' conventions differ from ours, each test configures
diffusers to match and its docstring says what differs. A dev dependency: skipped when diffusers is not installed."""
import pytest, torch
from torch import nn

# diffusers' schedulers hand numpy arrays a copy keyword they warn about; nothing of ours
pytestmark = pytest.mark.filterwarnings('ignore::DeprecationWarning')
diffusers = pytest.importorskip('diffusers')
from miniai.ddpm import linear_betas, abar_from_betas, ddpm_sample
from miniai.samplers import ddim_timesteps, ddim_step, ddim_sample
from miniai.karras import VPDenoiser
from miniai.samplers import sample_euler_ancestral
from miniai.samplers import sample_heun
from miniai.samplers import sample_euler
from miniai.samplers import sigmas_karras
from miniai.samplers import sample_dpmpp_2m
from miniai.samplers import sample_lms

T = 1000
BETAS = linear_betas(T)   # lesson 17's schedule; diffusers gets the same betas (`trained_betas`)
ABAR = abar_from_betas(BETAS)
LOG_SIGMAS = ((1 - ABAR.double()) / ABAR.double()).sqrt().log()
MU, S = torch.linspace(-0.4, 0.4, 16).view(1, 1, 4, 4), 0.8   # wide enough that clipping x0 to [-1, 1] matters
SHAPE = (3, 1, 4, 4)

class GaussianEps(nn.Module):
    ("The ideal noise predictor when every pixel of the data is `N(MU, S^2)`: "
     "`E[eps | x_t] = sqrt(1-abar) (x_t - sqrt(abar) MU) / (abar S^2 + 1 - abar)`, at any timestep `t` in [0, T-1] "
     "(a fractional one reads `abar` off the schedule by interpolating `log sigma`). Records each call's inputs.")
    def __init__(self):
        super().__init__(); self.calls = []
        self.unused = nn.Parameter(torch.zeros(()))   # lesson 17's sampler finds the device from the parameters
    def forward(self, x, t):
        t = torch.as_tensor(t, dtype=torch.float64).expand(len(x))
        self.calls.append((x.clone(), t.clone()))
        i = t.floor().clamp(0, T - 2).long()
        log_sigma = torch.lerp(LOG_SIGMAS[i], LOG_SIGMAS[i + 1], t - i)
        a = (1 / (1 + (2 * log_sigma).exp())).view(-1, 1, 1, 1)
        return ((1 - a).sqrt() * (x - a.sqrt() * MU) / (a * S ** 2 + 1 - a)).to(x.dtype)

def gaussian_denoiser(x, sigma):
    "The ideal denoiser `D(x, sigma)` for the same data: `MU + S^2 (x - MU) / (S^2 + sigma^2)`."
    return MU + S ** 2 * (x - MU) / (S ** 2 + sigma ** 2)

def run_diffusers(sched, model, x, generator=None, **step_kwargs):
    "diffusers' sampling loop: scale the input, call the model, step; returns the final sample."
    if generator is not None: step_kwargs['generator'] = generator   # Heun's `step` takes none
    for t in sched.timesteps:
        x = sched.step(model(sched.scale_model_input(x, t), t), t, x, **step_kwargs).prev_sample
    return x

def assert_same_calls(ours, theirs, atol=1e-5, t_atol=1e-3):

    "The two models were called equally often, with the same inputs and timesteps, call by call."
    assert len(ours.calls) == len(theirs.calls)
    for i, ((x1, t1), (x2, t2)) in enumerate(zip(ours.calls, theirs.calls)):
        torch.testing.assert_close(x1, x2, atol=atol, rtol=1e-4, msg=lambda m: f'call {i}: {m}')
        torch.testing.assert_close(t1, t2.double(), atol=t_atol, rtol=0, msg=lambda m: f'call {i}: {m}')

def scheduler(cls, **kwargs):
    "A diffusers scheduler on lesson 17's betas, predicting the noise."
    return cls(num_train_timesteps=T, trained_betas=BETAS.tolist(), prediction_type='epsilon', **kwargs)

def test_toy_model_is_the_ideal_denoiser():
    "Through `VPDenoiser` the toy noise predictor is the closed-form denoiser, at the schedule's levels and between them."
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0)) * 5
    for sigma in (0.02, 0.7, 3., 80.):
        torch.testing.assert_close(VPDenoiser(GaussianEps(), ABAR)(x, sigma), gaussian_denoiser(x, sigma),
                                   atol=1e-4, rtol=1e-4)

@pytest.mark.parametrize('steps', [1000, 50])
def test_ddpm_sample_equals_ddpm_scheduler(steps):
    """`ddpm_sample` against `DDPMScheduler` (`variance_type='fixed_small'`, clipping x0 to [-1, 1] as ours does).
    diffusers spaces fewer steps by `T // steps` from 0 (`timestep_spacing='leading'`); ours spreads them from T-1
    down to 0 (`ddim_timesteps`), so we hand diffusers our timesteps. Both draw the start and each step's noise from
    the generator in the same order."""
    ours, theirs = GaussianEps(), GaussianEps()
    x = ddpm_sample(ours, ABAR, SHAPE[0], steps=steps, size=4, generator=torch.Generator().manual_seed(0))
    sched = scheduler(diffusers.DDPMScheduler, clip_sample=True, variance_type='fixed_small')
    sched.set_timesteps(timesteps=ddim_timesteps(T, steps).tolist())
    g = torch.Generator().manual_seed(0)
    ref = run_diffusers(sched, theirs, torch.randn(SHAPE, generator=g), generator=g)
    assert_same_calls(ours, theirs, atol=2e-4)
    torch.testing.assert_close(x, ref.clamp(-1, 1), atol=2e-4, rtol=1e-4)

@pytest.mark.parametrize('eta', [0., 1.])
def test_ddim_sample_equals_ddim_scheduler_at_every_step(eta):
    """`ddim_sample` against `DDIMScheduler` visiting all 1,000 steps, where both visit 999, 998, ..., 0 and jump to
    the clean image last (`set_alpha_to_one=True`). Ours recomputes the noise from the clipped x0
    (`use_clipped_model_output=True` in diffusers). With fewer steps the grids differ: diffusers jumps by
    `T // steps` on its own grid, ours spreads the steps from T-1 to 0 (see the strided tests)."""
    ours, theirs = GaussianEps(), GaussianEps()
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    x = ddim_sample(ours, ABAR, SHAPE[0], T, eta=eta, size=4, x_T=x_T, generator=torch.Generator().manual_seed(2))
    sched = scheduler(diffusers.DDIMScheduler, clip_sample=True, set_alpha_to_one=True)
    sched.set_timesteps(T)
    ref = run_diffusers(sched, theirs, x_T, generator=torch.Generator().manual_seed(2), eta=eta,
                        use_clipped_model_output=True)
    assert_same_calls(ours, theirs, atol=2e-4)
    torch.testing.assert_close(x, ref.clamp(-1, 1), atol=2e-4, rtol=1e-4)

@pytest.mark.parametrize('spacing', ['leading', 'trailing'])
def test_ddim_step_on_diffusers_grid(spacing):
    """Strided DDIM: our `ddim_step` walked over diffusers' own grid of 10 steps (`leading`: 900, 800, ..., 0;
    `trailing`: 999, 899, ..., 99; each jumps by `T // steps`, the last to the clean image) lands where
    `DDIMScheduler` does, at every step."""
    sched = scheduler(diffusers.DDIMScheduler, clip_sample=True, set_alpha_to_one=True, timestep_spacing=spacing)
    sched.set_timesteps(10)
    model, x = GaussianEps(), torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    ref = x
    for t in sched.timesteps.tolist():
        prev = t - T // 10
        ours, _ = ddim_step(x, model(x, torch.full((len(x),), t)), ABAR[t], ABAR[prev] if prev >= 0 else 1., clip=True)
        ref = sched.step(model(ref, torch.tensor(t)), t, ref, use_clipped_model_output=True).prev_sample
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4, msg=lambda m: f't={t}: {m}')
        x = ours

def test_strided_ddim_at_eta_1_is_ddpm_scheduler():
    """`ddim_sample(eta=1)` with 50 steps is lesson 17's strided DDPM: `DDPMScheduler` on our timesteps, same noise."""
    ours, theirs = GaussianEps(), GaussianEps()
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(4))
    x = ddim_sample(ours, ABAR, SHAPE[0], 50, eta=1., size=4, x_T=x_T, generator=torch.Generator().manual_seed(5))
    sched = scheduler(diffusers.DDPMScheduler, clip_sample=True, variance_type='fixed_small')
    sched.set_timesteps(timesteps=ddim_timesteps(T, 50).tolist())
    ref = run_diffusers(sched, theirs, x_T, generator=torch.Generator().manual_seed(5))
    assert_same_calls(ours, theirs)
    torch.testing.assert_close(x, ref.clamp(-1, 1), atol=1e-5, rtol=1e-4)

def karras_grid(sched, steps):
    "diffusers' Karras noise levels for `steps` steps, checked equal to our `sigmas_karras` over the schedule's range."
    sched.set_timesteps(steps)
    sigma_min, sigma_max = LOG_SIGMAS.exp()[[0, -1]].tolist()
    ours = sigmas_karras(steps, sigma_min, sigma_max, rho=7.)
    torch.testing.assert_close(sched.sigmas.unique_consecutive(), ours, atol=0, rtol=1e-5)
    return ours

@pytest.mark.parametrize('cls,sampler', [('EulerDiscreteScheduler', sample_euler),
                                         ('HeunDiscreteScheduler', sample_heun)])
def test_euler_and_heun_equal_diffusers_with_karras_sigmas(cls, sampler):
    """`sample_euler` and `sample_heun` through `VPDenoiser` against `EulerDiscreteScheduler` and
    `HeunDiscreteScheduler` with `use_karras_sigmas=True`: the same noise levels (`sigmas_karras` from the schedule's
    smallest to its largest sigma, rho 7, then 0), the same fractional timesteps (both interpolate `log sigma`), the
    same inputs (`x / sqrt(1 + sigma^2)`) at every call; Heun's last step, to 0, is plain Euler in both (19 calls for
    10 steps). `timestep_spacing='linspace'` makes diffusers start from `sigma_max` times the noise, as we do."""
    sched = scheduler(getattr(diffusers, cls), use_karras_sigmas=True, timestep_spacing='linspace')
    sigmas = karras_grid(sched, 10)
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(6))
    ours, theirs = GaussianEps(), GaussianEps()
    x = sampler(VPDenoiser(ours, ABAR), sigmas[0] * noise, sigmas)
    ref = run_diffusers(sched, theirs, sched.init_noise_sigma * noise)
    assert len(ours.calls) == (19 if sampler is sample_heun else 10)
    assert_same_calls(ours, theirs)
    torch.testing.assert_close(x, ref, atol=1e-5, rtol=1e-4)

@pytest.mark.parametrize('order', [1, 2, 4])
def test_lms_equals_diffusers_with_karras_sigmas(order):
    """`sample_lms` against `LMSDiscreteScheduler` (`use_karras_sigmas=True`, `timestep_spacing='linspace'`), at
    orders 1 (Euler), 2 and 4 (the default of both): the same noise levels, the same inputs at every call, one call
    per step. diffusers integrates the Lagrange polynomials numerically (scipy's `quad`), ours exactly."""
    sched = scheduler(diffusers.LMSDiscreteScheduler, use_karras_sigmas=True, timestep_spacing='linspace')
    sigmas = karras_grid(sched, 12)
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(10))
    ours, theirs = GaussianEps(), GaussianEps()
    x = sample_lms(VPDenoiser(ours, ABAR), sigmas[0] * noise, sigmas, order=order)
    ref = run_diffusers(sched, theirs, sched.init_noise_sigma * noise, order=order)
    assert len(ours.calls) == 12
    assert_same_calls(ours, theirs)
    torch.testing.assert_close(x, ref, atol=1e-5, rtol=1e-4)

def test_euler_ancestral_equals_diffusers():
    """`sample_euler_ancestral` against `EulerAncestralDiscreteScheduler`, which has no Karras option: ours takes any
    decreasing noise levels, so it walks diffusers' own (`timestep_spacing='linspace'`: the schedule's sigmas at
    999, 888, ..., 0, then 0). Ten steps put those on whole timesteps, so `VPDenoiser` asks the model for the same
    ones. Both split each step into `sigma_down` and `sigma_up` alike and draw the fresh noise from the generator in
    the same order (diffusers also draws on the last step, where `sigma_up` is 0 and the draw is unused)."""
    sched = scheduler(diffusers.EulerAncestralDiscreteScheduler, timestep_spacing='linspace')
    sched.set_timesteps(10)
    sigmas = sched.sigmas
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(7))
    ours, theirs = GaussianEps(), GaussianEps()
    x = sample_euler_ancestral(VPDenoiser(ours, ABAR), sigmas[0] * noise, sigmas, torch.Generator().manual_seed(8))
    ref = run_diffusers(sched, theirs, sched.init_noise_sigma * noise, generator=torch.Generator().manual_seed(8))
    assert_same_calls(ours, theirs)
    torch.testing.assert_close(x, ref, atol=1e-5, rtol=1e-4)

class RoundedVP(VPDenoiser):
    "`VPDenoiser` asking the model for the nearest whole timestep, as diffusers' DPM-Solver does with Karras sigmas."
    def t_of_sigma(self, sigma): return super().t_of_sigma(sigma).round()

@pytest.mark.parametrize('steps', [10, 25])
def test_dpmpp_2m_equals_dpm_solver_multistep_with_karras_sigmas(steps):
    """`sample_dpmpp_2m` against `DPMSolverMultistepScheduler` (`algorithm_type='dpmsolver++'`, `solver_order=2`,
    `use_karras_sigmas=True`, `final_sigmas_type='zero'`: the last step lands on the denoised estimate, as ours does).
    Two conventions differ: diffusers rounds the timestep it gives the model (`RoundedVP` does the same here), and it
    keeps the sample in variance-preserving form, `x / sqrt(1 + sigma^2)`, where ours keeps `x = x0 + sigma * noise`:
    diffusers starts from the plain noise (`init_noise_sigma` 1), so ours starts from `sqrt(1 + sigma_max^2)` times
    it, and the model sees the same input at every call."""
    sched = scheduler(diffusers.DPMSolverMultistepScheduler, algorithm_type='dpmsolver++', solver_order=2,
                      use_karras_sigmas=True, final_sigmas_type='zero')
    sigmas = karras_grid(sched, steps)
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(9))
    ours, theirs = GaussianEps(), GaussianEps()
    x = sample_dpmpp_2m(RoundedVP(ours, ABAR), (1 + sigmas[0] ** 2).sqrt() * noise, sigmas)
    ref = run_diffusers(sched, theirs, noise * sched.init_noise_sigma)
    assert_same_calls(ours, theirs)
    torch.testing.assert_close(x, ref, atol=1e-5, rtol=1e-4)
