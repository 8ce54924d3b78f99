"""Our metrics against torchmetrics, the library version: `Mean` and `Accuracy` (lesson 09b) batch by batch, and FID
and KID (lesson 18) on the same features (torchmetrics takes any feature extractor, so an identity hands it ours).
A dev dependency: skipped when torchmetrics is not installed."""
import pytest, torch
from torch import nn
from hypothesis import given, settings, strategies as st

torchmetrics = pytest.importorskip('torchmetrics')
from torchmetrics.aggregation import MeanMetric
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance
from miniai.metrics import Mean, Accuracy
from miniai.fid import fid, kid, mmd2_unbiased

def batches(seed, n_batches, classes):
    "Random `(scores, targets)` batches of random sizes, 1 to 9."
    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(1, 10, (n_batches,), generator=g).tolist()
    return [(torch.randn(n, classes, generator=g), torch.randint(0, classes, (n,), generator=g)) for n in sizes]

@settings(max_examples=30)
@given(seed=st.integers(0, 2**31 - 1), n_batches=st.integers(1, 6), classes=st.integers(2, 10),
       as_labels=st.booleans())
def test_accuracy_equals_multiclass_accuracy(seed, n_batches, classes, as_labels):
    """`Accuracy` is torchmetrics' `MulticlassAccuracy` with `average='micro'` (correct over all predictions; its
    default, 'macro', averages the classes' accuracies instead), fed scores or predicted classes, after every batch."""
    ours, theirs = Accuracy(), MulticlassAccuracy(num_classes=classes, average='micro')
    for scores, targets in batches(seed, n_batches, classes):
        preds = scores.argmax(1) if as_labels else scores
        ours.update(preds, targets); theirs.update(preds, targets)
        torch.testing.assert_close(ours.compute(), theirs.compute())
    ours.reset(); theirs.reset()
    scores, targets = batches(seed + 1, 1, classes)[0]
    torch.testing.assert_close(ours.update(scores, targets).compute(), theirs(scores, targets))

def test_mean_equals_mean_metric_with_weights():
    "`Mean` is torchmetrics' `MeanMetric`: a weight per value (a batch's mean loss weighted by its size), or none."
    ours, theirs = Mean(), MeanMetric()
    g = torch.Generator().manual_seed(0)
    for n in (5, 1, 8):
        loss = torch.rand((), generator=g)
        ours.update(loss, n); theirs.update(loss, n)
        torch.testing.assert_close(ours.compute(), theirs.compute())
    values = torch.randn(4, generator=g)
    ours.update(values); theirs.update(values)
    torch.testing.assert_close(ours.compute(), theirs.compute())

class Features(nn.Module):
    "An identity 'feature extractor': torchmetrics gets the features themselves; `num_features` saves it a probe."
    def __init__(self, d): super().__init__(); self.num_features = d
    def forward(self, x): return x

def feature_sets(d=8, n=40):
    "Two sets of features with different means and covariances, float64."
    g = torch.Generator().manual_seed(0)
    real = torch.randn(n, d, generator=g, dtype=torch.float64)
    fake = 0.5 + torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.randn(d, d, generator=g, dtype=torch.float64) / 3
    return real, fake

def test_fid_equals_torchmetrics_fid():
    """`fid` against torchmetrics' `FrechetInceptionDistance` on the same features. Ours takes the trace of the matrix
    square root by Newton-Schulz iterations on a symmetric product, theirs sums the square roots of the eigenvalues
    of `cov1 @ cov2`: different routes to the same number."""
    real, fake = feature_sets()
    theirs = FrechetInceptionDistance(feature=Features(real.shape[1]))
    theirs.update(real, real=True); theirs.update(fake, real=False)
    ref = theirs.compute().item()
    assert ref > 1
    assert fid(real, fake) == pytest.approx(ref, rel=1e-9)
    assert fid(real, real) == pytest.approx(0, abs=1e-9)

@pytest.mark.filterwarnings('ignore:Metric `Kernel Inception Distance` will save')   # our features are few
def test_kid_equals_torchmetrics_kid():
    """`kid` against torchmetrics' `KernelInceptionDistance` (cubic kernel, `gamma = 1/d`, `coef = 1`): with the whole
    sets as one subset the unbiased MMD is the same number, and with random subsets drawn from PyTorch's global
    generator both draw them in the same order (feats1's indices, then feats2's), so the same seed gives the same
    subsets and the same mean."""
    real, fake = feature_sets()
    n = len(real)
    theirs = KernelInceptionDistance(feature=Features(real.shape[1]), subsets=1, subset_size=n)
    theirs.update(real, real=True); theirs.update(fake, real=False)
    assert kid(real, fake, n_subsets=1, subset_size=n) == pytest.approx(theirs.compute()[0].item(), rel=1e-9)
    assert float(mmd2_unbiased(real, fake)) == pytest.approx(
        torchmetrics.image.kid.poly_mmd(real, fake).item(), rel=1e-9)
    theirs = KernelInceptionDistance(feature=Features(real.shape[1]), subsets=5, subset_size=10)
    theirs.update(real, real=True); theirs.update(fake, real=False)
    with torch.random.fork_rng():
        torch.manual_seed(3); ours = kid(real, fake, n_subsets=5, subset_size=10)
        torch.manual_seed(3); ref = theirs.compute()[0].item()
    assert ours == pytest.approx(ref, rel=1e-9)
