"log-softmax and logsumexp against torch (large inputs included); the data pipeline visits every index once per epoch."
import os
import pytest, torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays
from miniai.training import BatchSampler, DataLoader, Dataset, Sampler, accuracy, collate, log_softmax, logsumexp, nll

def rows(scale):
    "Matrices of float64 logits in [-scale, scale], 1-6 rows by 1-12 columns."
    shapes = st.tuples(st.integers(1, 6), st.integers(1, 12))
    return shapes.flatmap(lambda s: arrays('float64', s, elements=st.floats(-scale, scale, allow_nan=False))).map(torch.from_numpy)

@given(rows(50))
def test_logsumexp_and_log_softmax_equal_torch(x):
    torch.testing.assert_close(logsumexp(x), torch.logsumexp(x, -1))
    torch.testing.assert_close(log_softmax(x), F.log_softmax(x, -1))

@given(rows(1e300))
def test_stable_for_huge_inputs(x):
    "exp overflows float64 past ~709; ours must stay finite and still match torch."
    assert torch.isfinite(logsumexp(x)).all() and torch.isfinite(log_softmax(x)).all()
    torch.testing.assert_close(log_softmax(x), F.log_softmax(x, -1))

@given(rows(30), st.data())
def test_nll_of_log_softmax_is_cross_entropy(x, data):
    target = torch.tensor(data.draw(st.lists(st.integers(0, x.shape[1] - 1), min_size=len(x), max_size=len(x))))
    torch.testing.assert_close(nll(log_softmax(x), target), F.cross_entropy(x, target))
    assert 0 <= accuracy(x, target) <= 1

@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 60), bs=st.integers(1, 17), seed=st.integers(0, 2**32), drop_last=st.booleans())
def test_each_index_once_per_epoch(n, bs, seed, drop_last):
    ds = Dataset(torch.arange(n), torch.arange(n) * 2)
    batches = BatchSampler(Sampler(ds, shuffle=True, seed=seed), bs, drop_last=drop_last)
    for _ in range(2):   # two epochs
        seen = [i for b in batches for i in b]
        if drop_last: assert len(seen) == n // bs * bs and len(set(seen)) == len(seen)
        else: assert sorted(seen) == list(range(n))
        assert len(batches) == len(list(batches))

@given(n=st.integers(2, 40), seed=st.integers(0, 2**32))
def test_shuffling_is_seeded(n, seed):
    ds = Dataset(torch.arange(n), torch.arange(n))
    a, b = Sampler(ds, shuffle=True, seed=seed), Sampler(ds, shuffle=True, seed=seed)
    assert [list(a) for _ in range(3)] == [list(b) for _ in range(3)]
    assert list(Sampler(ds)) == list(range(n))

@pytest.mark.parametrize('n_workers', [0, 2])
def test_data_loader_gives_every_item_once(n_workers):
    if n_workers and not hasattr(os, 'fork'): pytest.skip('workers are tested with fork')
    x, y = torch.randn(103, 5), torch.arange(103)
    ds = Dataset(x, y)
    x @ torch.randn(5, 400)   # the parent has used torch's thread pool before forking
    batches = list(DataLoader(ds, BatchSampler(Sampler(ds, shuffle=True, seed=3), 10), n_workers=n_workers))
    ys = torch.cat([yb for _, yb in batches])
    assert sorted(ys.tolist()) == list(range(103)) and len(batches) == 11
    for xb, yb in batches: torch.testing.assert_close(xb, x[yb])

def test_errors():
    with pytest.raises(ValueError, match='same length; got 3 and 2'): Dataset(torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match='batch size must be at least 1, got 0'): BatchSampler(Sampler(Dataset(torch.zeros(3), torch.zeros(3))), 0)
    assert collate([(torch.tensor(1.), torch.tensor(2))])[0].shape == (1,)
