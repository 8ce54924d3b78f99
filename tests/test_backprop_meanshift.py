"""Hand-written gradients equal autograd's; `mse` warns on broadcasting shapes as `F.mse_loss` does; batched mean shift
equals the point-by-point definition, refuses a bandwidth <= 0, and its labels recover well-separated clusters."""
import math, warnings
import pytest, torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from miniai.backprop import Lin, Model, Mse, Relu, autograd_grads, forward_and_backward, lin, mse, relu
from miniai.meanshift import cluster_labels, gaussian, meanshift, meanshift_step, pairwise_distances, triangular

def close(a, b): torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)

@settings(max_examples=40)
@given(n=st.integers(1, 12), m=st.integers(1, 10), nh=st.integers(1, 8), seed=st.integers(0, 2**31))
def test_hand_written_gradients_equal_autograd(n, m, nh, seed):
    gen = torch.Generator().manual_seed(seed)
    inp, targ = torch.randn(n, m, generator=gen, dtype=torch.float64), torch.randn(n, generator=gen, dtype=torch.float64)
    w1, b1 = torch.randn(m, nh, generator=gen, dtype=torch.float64), torch.randn(nh, generator=gen, dtype=torch.float64)
    w2, b2 = torch.randn(nh, 1, generator=gen, dtype=torch.float64), torch.randn(1, generator=gen, dtype=torch.float64)
    expected = autograd_grads(lambda i, a, b, c, d: mse(lin(relu(lin(i, a, b)), c, d), targ), inp, w1, b1, w2, b2)
    loss = forward_and_backward(inp, targ, w1, b1, w2, b2)
    close(loss, mse(lin(relu(lin(inp, w1, b1)), w2, b2), targ))
    for ours, theirs in zip((inp.g, w1.g, b1.g, w2.g, b2.g), expected): close(ours, theirs)
    for t in (inp, w1, b1, w2, b2): t.g = None
    model = Model([Lin(w1, b1), Relu(), Lin(w2, b2)], Mse())
    model(inp, targ); model.backward()
    for ours, theirs in zip((inp.g, w1.g, b1.g, w2.g, b2.g), expected): close(ours, theirs)

def test_autograd_grads_leaves_inputs_alone():
    x = torch.tensor([1., 2.])
    (g,) = autograd_grads(lambda t: (t ** 2).sum(), x)
    close(g, 2 * x)
    assert not x.requires_grad and x.grad is None

def reference_step(X, bw):
    "Mean shift by the definition, one point at a time."
    out = torch.empty_like(X)
    for i, x in enumerate(X):
        w = torch.tensor([gaussian(torch.tensor(math.dist(x.tolist(), y.tolist())), bw) for y in X], dtype=X.dtype)
        out[i] = (w[:, None] * X).sum(0) / w.sum()
    return out

@settings(max_examples=25)
@given(n=st.integers(1, 15), d=st.integers(1, 3), bs=st.integers(1, 20), bw=st.floats(0.5, 5), seed=st.integers(0, 2**31))
def test_batched_step_equals_definition(n, d, bs, bw, seed):
    X = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2
    close(meanshift_step(X, bw, batch_size=bs), reference_step(X, bw))

@given(a=st.integers(1, 6), b=st.integers(1, 6), d=st.integers(1, 4))
def test_pairwise_distances(a, b, d):
    x, y = torch.randn(a, d, dtype=torch.float64), torch.randn(b, d, dtype=torch.float64)
    close(pairwise_distances(x, y), torch.tensor([[math.dist(p, q) for q in y.tolist()] for p in x.tolist()], dtype=torch.float64))

def test_meanshift_finds_well_separated_clusters():
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0., 0.], [20., 0.], [0., 20.]])
    data = torch.cat([c + torch.randn(100, 2, generator=gen) for c in centres])
    moved = meanshift(data, bw=2.5, steps=10, batch_size=64)
    assert moved.device == data.device
    assert (moved - centres.repeat_interleave(100, 0)).norm(dim=1).max() < 0.6

def test_kernels_and_errors():
    close(triangular(torch.tensor([0., 1., 3.]), 2.), torch.tensor([1., 0.5, 0.]))
    assert gaussian(torch.tensor(10.), 1.) < gaussian(torch.tensor(1.), 1.)
    with pytest.raises(ValueError, match='batch_size must be at least 1'): meanshift_step(torch.zeros(3, 2), batch_size=0)
    with pytest.raises(ValueError, match=r'got \(3, 2\) and \(3, 1\)'): pairwise_distances(torch.zeros(3, 2), torch.zeros(3, 1))

@pytest.mark.parametrize('bw', [0, -1., float('nan')])
def test_bandwidth_must_be_positive(bw):
    X = torch.randn(5, 2)
    for f in (lambda: meanshift(X, bw=bw), lambda: meanshift_step(X, bw=bw), lambda: gaussian(X, bw), lambda: triangular(X, bw)):
        with pytest.raises(ValueError, match='bandwidth must be positive'): f()

def test_cluster_labels_recover_the_partition():
    gen = torch.Generator().manual_seed(1)
    centres = torch.tensor([[0., 0.], [20., 0.], [0., 20.], [-20., -5.]])
    truth = torch.arange(4).repeat_interleave(60)
    data = centres[truth] + torch.randn(240, 2, generator=gen)
    found, found_centres = cluster_labels(meanshift(data, bw=2.5, steps=10))
    assert len(found_centres) == 4 and found[0] == 0
    assert len(set(zip(truth.tolist(), found.tolist()))) == 4    # a one-to-one map between true and found labels
    torch.testing.assert_close(found_centres[found], centres[truth], atol=0.7, rtol=0)
    labels, empty = cluster_labels(torch.zeros(0, 2))
    assert labels.shape == (0,) and empty.shape == (0, 2)
    with pytest.raises(ValueError, match='tol must be positive'): cluster_labels(data, tol=0)

@given(n=st.integers(1, 8), seed=st.integers(0, 2**31))
def test_mse_equals_torch_and_warns_on_broadcast_as_torch(n, seed):
    gen = torch.Generator().manual_seed(seed)
    out, targ = torch.randn(n, 1, generator=gen, dtype=torch.float64), torch.randn(n, generator=gen, dtype=torch.float64)
    close(mse(out, targ), F.mse_loss(out[:, 0], targ))        # the lesson's column of predictions against [n] targets
    with warnings.catch_warnings(): warnings.simplefilter('error'); mse(out, targ)
    for a, b in ((out[:, 0], targ[:, None]), (out, targ[:1]) if n > 1 else (out[:, 0], targ[:, None])):
        with pytest.warns(UserWarning, match='broadcast'): ours = mse(a, b)
        with pytest.warns(UserWarning): theirs = F.mse_loss(a, b)
        close(ours, theirs)

def test_hand_written_backward_refuses_other_shapes():
    inp, w1, b1, w2, b2 = torch.randn(4, 3), torch.randn(3, 2), torch.zeros(2), torch.randn(2, 1), torch.zeros(1)
    with pytest.raises(ValueError, match=r'targets \[n\]; got \(4, 1\) and \(4, 1\)'): forward_and_backward(inp, torch.zeros(4, 1), w1, b1, w2, b2)
    with pytest.raises(ValueError, match=r'targets \[n\]'): Mse()(torch.zeros(4, 1), torch.zeros(4, 1))
