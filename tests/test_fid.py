"FID and KID: the Newton-Schulz square root against scipy, FID against closed forms, KID's unbiasedness, and the contract errors."
import numpy as np, pytest, scipy.linalg, torch
from hypothesis import given, settings, strategies as st
from miniai.fid import (fid_cnn, gaussian_stats, sqrtm_newton_schulz, frechet_distance, fid, poly_kernel, mmd2_unbiased, kid,
                        ImageEval)

def gen(seed): return torch.Generator().manual_seed(seed)

@st.composite
def spd_matrices(draw, max_n=24):
    "A symmetric positive definite float64 matrix Q diag(ev) Q^T, n = 1-`max_n`, eigenvalues spread over up to 6 decades, any overall scale."
    n, seed = draw(st.integers(1, max_n)), draw(st.integers(0, 2**31 - 1))
    decades, scale = draw(st.floats(0, 6)), draw(st.floats(-3, 3))
    g = gen(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=g))
    ev = 10 ** (scale - decades * torch.rand(n, dtype=torch.float64, generator=g))
    return (q * ev) @ q.T

def rel_err(x, ref): return float((x - ref).norm() / ref.norm())

@given(spd_matrices())
@settings(max_examples=60)
def test_sqrtm_matches_scipy_and_squares_back(a):
    root = sqrtm_newton_schulz(a)
    ref = torch.from_numpy(scipy.linalg.sqrtm(a.numpy()).real)
    assert rel_err(root, ref) < 1e-8
    assert rel_err(root @ root, a) < 1e-10
    assert rel_err(root, root.T) < 1e-10, 'the root of a symmetric matrix is symmetric'

@given(st.integers(1, 40), st.integers(2, 80), st.integers(0, 2**31 - 1))
@settings(max_examples=30)
def test_sqrtm_of_sample_covariances(d, n, seed):
    "Covariances of n samples in d dimensions: singular when n <= d, with eigenvalues that rounding makes slightly negative."
    a = gaussian_stats(torch.randn(n, d, dtype=torch.float64, generator=gen(seed)))[1]
    root = sqrtm_newton_schulz(a)
    assert torch.isfinite(root).all()
    assert rel_err(root @ root, a) < 1e-8
    # the trace is what FID uses: the sum of the square roots of the eigenvalues
    ev = torch.linalg.eigvalsh(a).clamp_min(0)
    assert abs(float(root.trace() - ev.sqrt().sum())) < 1e-5 * float(ev.sqrt().sum())

def test_sqrtm_float32_and_special_matrices():
    torch.testing.assert_close(sqrtm_newton_schulz(torch.diag(torch.tensor([4., 9., 0.25]))), torch.diag(torch.tensor([2., 3., 0.5])))
    assert sqrtm_newton_schulz(torch.tensor([[4.]])).item() == pytest.approx(2.)
    assert torch.equal(sqrtm_newton_schulz(torch.zeros(3, 3)), torch.zeros(3, 3))
    with pytest.raises(ValueError, match='square matrix'): sqrtm_newton_schulz(torch.ones(2, 3))
    with pytest.raises(ValueError, match='non-finite'): sqrtm_newton_schulz(torch.tensor([[float('inf')]]))

def test_fid_of_a_set_with_itself_is_zero():
    f = torch.randn(300, 20, generator=gen(0)) @ torch.randn(20, 20, generator=gen(1))
    assert abs(fid(f, f)) < 1e-8
    assert fid(f, f + 0.1) > 0

@given(st.integers(1, 30), st.floats(-3, 3), st.floats(0.1, 3), st.floats(0.1, 3), st.integers(0, 2**31 - 1))
@settings(max_examples=40)
def test_frechet_distance_closed_form_isotropic(d, shift, sd1, sd2, seed):
    "N(mu1, sd1^2 I) and N(mu2, sd2^2 I): |mu1 - mu2|^2 + d (sd1 - sd2)^2."
    mu1 = torch.randn(d, dtype=torch.float64, generator=gen(seed))
    mu2 = mu1 + shift
    expected = d * shift ** 2 + d * (sd1 - sd2) ** 2
    eye = torch.eye(d, dtype=torch.float64)
    got = frechet_distance(mu1, sd1 ** 2 * eye, mu2, sd2 ** 2 * eye)
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-9)

@given(spd_matrices(max_n=12), spd_matrices(max_n=12), st.integers(0, 2**31 - 1))
@settings(max_examples=40)
def test_frechet_distance_matches_scipy_formula(c1, c2, seed):
    "General covariances (same size): the formula with scipy's root of the (non-symmetric) product, as pytorch-fid computes it."
    n = min(len(c1), len(c2))
    c1, c2 = c1[:n, :n], c2[:n, :n]   # a leading block of an SPD matrix is SPD
    mu1, mu2 = torch.randn(n, dtype=torch.float64, generator=gen(seed)), torch.randn(n, dtype=torch.float64, generator=gen(seed + 1))
    ref = float((mu1 - mu2).pow(2).sum() + c1.trace() + c2.trace()) - 2 * np.trace(scipy.linalg.sqrtm(c1.numpy() @ c2.numpy())).real
    scale = float(c1.trace() + c2.trace() + (mu1 - mu2).pow(2).sum())
    assert frechet_distance(mu1, c1, mu2, c2) == pytest.approx(ref, abs=1e-7 * scale)

def test_frechet_distance_commuting_covariances():
    "Diagonal covariances commute: the distance is |mu1 - mu2|^2 + sum (sqrt(v1) - sqrt(v2))^2."
    v1, v2 = torch.tensor([1., 4., 9., 0.]), torch.tensor([4., 1., 9., 1.])
    mu1, mu2 = torch.zeros(4), torch.tensor([1., 0., 0., 2.])
    expected = 5. + float((v1.sqrt() - v2.sqrt()).pow(2).sum())
    assert frechet_distance(mu1, torch.diag(v1), mu2, torch.diag(v2)) == pytest.approx(expected, abs=1e-9)

def test_fid_of_gaussian_samples_approaches_closed_form():
    d, n = 8, 50_000
    a, b = torch.randn(n, d, generator=gen(0)), 0.5 + 2 * torch.randn(n, d, generator=gen(1))
    assert fid(a, b) == pytest.approx(d * 0.25 + d * 1.0, rel=0.02)

def test_fid_is_symmetric_and_float64():
    a, b = torch.randn(200, 10, generator=gen(0)), torch.randn(300, 10, generator=gen(1)) * 1.5
    assert fid(a, b) == pytest.approx(fid(b, a), rel=1e-8)
    assert fid(a.numpy(), b.numpy()) == pytest.approx(fid(a, b))
    mu, cov = gaussian_stats(a)
    assert mu.dtype == cov.dtype == torch.float64

def test_mmd2_unbiased_matches_loops():
    x, y = torch.randn(6, 4, dtype=torch.float64, generator=gen(0)), torch.randn(5, 4, dtype=torch.float64, generator=gen(1))
    k = lambda a, b: float((a @ b / 4 + 1) ** 3)
    xx = sum(k(x[i], x[j]) for i in range(6) for j in range(6) if i != j) / 30
    yy = sum(k(y[i], y[j]) for i in range(5) for j in range(5) if i != j) / 20
    xy = sum(k(x[i], y[j]) for i in range(6) for j in range(5)) / 30
    assert float(mmd2_unbiased(x, y)) == pytest.approx(xx + yy - 2 * xy, rel=1e-10)
    assert poly_kernel(x, y).shape == (6, 5)

def test_kid_is_unbiased_for_small_samples():
    "Same distribution: the mean over many small-sample estimates is ~0 (FID at the same size is clearly positive); different: positive."
    pool = torch.randn(20_000, 16, generator=gen(0))
    g = gen(1)
    kids = [kid(pool[torch.randperm(20_000, generator=g)[:50]], pool[torch.randperm(20_000, generator=g)[:50]], n_subsets=1) for _ in range(200)]
    kids = torch.tensor(kids)
    assert abs(kids.mean()) < 3 * kids.std() / 200 ** 0.5 + 1e-4
    assert (kids < 0).any(), 'an unbiased estimator of 0 must sometimes be negative'
    assert fid(pool[:50], pool[50:100]) > 1.0
    assert kid(pool[:2000], pool[2000:4000] + 0.3, n_subsets=10, generator=gen(2)) > 0.05

def test_kid_subsets_and_seeding():
    a, b = torch.randn(300, 8, generator=gen(0)), torch.randn(200, 8, generator=gen(1))
    assert kid(a, b, 3, 50, gen(5)) == kid(a, b, 3, 50, gen(5))
    assert kid(a, b, 3, 50, gen(5)) != kid(a, b, 3, 50, gen(6))
    # subsets as big as the smaller set: that whole set in every subset
    assert np.isfinite(kid(a, b, 2, 10_000, gen(0)))

@pytest.mark.parametrize('f', [fid, kid])
def test_bad_features_fail_clearly(f):
    good = torch.randn(10, 8)
    with pytest.raises(ValueError, match='feats1 has 1 sample'): f(torch.randn(1, 8), good)
    with pytest.raises(ValueError, match='feats2 has 0 sample'): f(good, torch.randn(0, 8))
    with pytest.raises(ValueError, match='feature sizes differ'): f(good, torch.randn(10, 9))
    with pytest.raises(ValueError, match='non-finite'): f(good, good.clone().index_fill_(0, torch.tensor([3]), float('nan')))
    with pytest.raises(ValueError, match='non-finite'): f(torch.full((10, 8), float('inf')), good)
    with pytest.raises(ValueError, match='must be a matrix'): f(torch.randn(10), good)

def test_gaussian_stats_and_frechet_shape_errors():
    with pytest.raises(ValueError, match='at least 2'): gaussian_stats(torch.randn(1, 3))
    with pytest.raises(ValueError, match='shapes do not match'): frechet_distance(torch.zeros(3), torch.eye(3), torch.zeros(3), torch.eye(4))

def test_image_eval():
    torch.manual_seed(0)
    clf = fid_cnn()
    real = torch.rand(64, 1, 32, 32, generator=gen(0)) * 2 - 1
    ev = ImageEval(clf, real, batch_size=16)
    feats = ev.features(real)
    assert feats.shape == (64, 128) and feats.dtype == torch.float64
    assert torch.equal(feats, ev.real_feats), 'features do not depend on batching or on being computed twice'
    assert abs(ev.fid(real)) < 1e-6
    assert ev.fid(real * 0.2) > ev.fid(real)
    assert np.isfinite(ev.kid(real[:20], n_subsets=3))
    assert not any(m.training for m in clf.modules() if isinstance(m, torch.nn.BatchNorm2d)), 'features are computed in evaluation mode'
    with pytest.raises(ValueError, match='expected images'): ev.features(real[0])
    with pytest.raises(ValueError, match='cannot be compared'): ev.kid(real[..., :28, :28])
