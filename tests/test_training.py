"""Lesson 04 against torch: log-softmax/logsumexp (infinities and empty rows included), nll/accuracy/collate edge cases,
the optimiser with missing gradients, `fit` at its edges, and the data loader: every index once, seeded workers that
repeat (and match torch's), dead or failing workers that raise instead of hanging."""
import faulthandler, math, os, random, signal, time
import numpy as np
import pytest, torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader as TorchDataLoader, default_collate
from hypothesis import given, settings, strategies as st
from miniai.training import (BatchSampler, DataLoader, Dataset, Optimizer, Sampler, accuracy, collate, fit, log_softmax,
                             logsumexp, nll, seed_worker)
from strategies import logit_rows

needs_fork = pytest.mark.skipif(not hasattr(os, 'fork'), reason='workers are tested with fork')

@given(logit_rows(50))
def test_logsumexp_and_log_softmax_equal_torch(x):
    torch.testing.assert_close(logsumexp(x), torch.logsumexp(x, -1))
    torch.testing.assert_close(log_softmax(x), F.log_softmax(x, -1))

@given(logit_rows(1e300))
def test_stable_for_huge_inputs(x):
    "exp overflows float64 past ~709; ours must stay finite and still match torch."
    assert torch.isfinite(logsumexp(x)).all() and torch.isfinite(log_softmax(x)).all()
    torch.testing.assert_close(log_softmax(x), F.log_softmax(x, -1))

@given(logit_rows(1e3, infinities=True, min_cols=0))
def test_infinities_and_empty_rows_as_torch(x):
    "Rows of all -inf, rows with +inf, and rows with no columns: -inf / inf / empty (and nan from log_softmax) as torch."
    torch.testing.assert_close(logsumexp(x), torch.logsumexp(x, -1), equal_nan=True)
    torch.testing.assert_close(log_softmax(x), F.log_softmax(x, -1), equal_nan=True)

def test_infinite_rows_by_hand():
    inf = math.inf
    x = torch.tensor([[-inf, -inf], [inf, 1.], [inf, -inf]])
    assert logsumexp(x).tolist() == [-inf, inf, inf]
    assert logsumexp(torch.zeros(3, 0)).tolist() == [-inf] * 3 and log_softmax(torch.zeros(3, 0)).shape == (3, 0)

@given(logit_rows(30), st.data())
def test_nll_of_log_softmax_is_cross_entropy(x, data):
    target = torch.tensor(data.draw(st.lists(st.integers(0, x.shape[1] - 1), min_size=len(x), max_size=len(x))))
    torch.testing.assert_close(nll(log_softmax(x), target), F.cross_entropy(x, target))
    torch.testing.assert_close(accuracy(x, target), (x.argmax(1) == target).double().mean().float())

@pytest.mark.parametrize('target,err,msg', [
    ([0, 1, -1], IndexError, 'target -1 is out of bounds for 4 classes'),
    ([0, 1, 4], IndexError, 'target 4 is out of bounds'),
    ([0, 1], ValueError, '3 rows of predictions but 2 targets'),
    ([[0], [1], [2]], ValueError, 'targets of shape [n]'),
    ([0., 1., 2.], TypeError, 'integer class targets')])
def test_nll_rejects_bad_targets_as_torch_does(target, err, msg):
    x, target = torch.randn(3, 4).log_softmax(-1), torch.tensor(target)
    with pytest.raises(Exception): F.nll_loss(x, target)    # torch refuses each of these too
    with pytest.raises(err, match=msg.replace('[', r'\[').replace(']', r'\]')): nll(x, target)

def test_accuracy_rejects_a_column_of_targets():
    with pytest.raises(ValueError, match=r'targets of shape \[n\]'): accuracy(torch.randn(4, 3), torch.tensor([[0], [1], [2], [0]]))
    with pytest.raises(ValueError, match='4 rows of predictions but 3 targets'): accuracy(torch.randn(4, 3), torch.tensor([0, 1, 2]))

def test_optimizer_skips_missing_gradients_as_torch_does():
    def run(opt_cls):
        a, b = torch.ones(2, requires_grad=True), torch.ones(2, requires_grad=True)
        (a * torch.tensor([1., 2.])).sum().backward()
        opt = opt_cls([a, b], lr=0.1)
        opt.step(); opt.zero_grad()
        return a.detach(), b.detach(), b.grad
    ours, theirs = run(Optimizer), run(torch.optim.SGD)
    torch.testing.assert_close(ours[:2], theirs[:2])
    assert ours[2] is None
    with pytest.raises(ValueError, match='empty parameter list'): Optimizer([])

def test_fit_edges():
    model = nn.Linear(3, 2)
    opt, data = Optimizer(model.parameters(), 0.1), [(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))]
    assert all(math.isnan(v) for v in fit(0, model, F.cross_entropy, opt, data, data))
    assert all(math.isnan(v) for v in fit(1, model, F.cross_entropy, opt, data, []))
    history = []
    loss, acc = fit(2, model, F.cross_entropy, opt, data, data, history=history)
    assert len(history) == 2 and history[-1]['valid_loss'] == loss and 0 <= acc <= 1

@settings(max_examples=30)
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

COLLATE_CASES = {
    'tensors': [(torch.zeros(2), torch.tensor(1)), (torch.ones(2), torch.tensor(2))],
    'int labels': [(torch.zeros(2), 1), (torch.ones(2), 2)],
    'float labels': [(torch.zeros(2), 1.5), (torch.ones(2), 2.5)],
    'bools': [True, False],
    'numpy ints': [np.int64(1), np.int64(2)],
    'numpy float32': [np.float32(1), np.float32(2)],
    'arrays': [(np.zeros((2, 2), dtype=np.float32), 0), (np.ones((2, 2), dtype=np.float32), 1)],
    'triples': [(torch.zeros(1), 3, 0.5), (torch.ones(1), 4, 1.5)],
    'dicts': [{'image': torch.zeros(3), 'label': 3}, {'image': torch.ones(3), 'label': 7}],
    'nested': [{'pair': (1, 2.), 'x': np.arange(2)}, {'pair': (3, 4.), 'x': np.arange(2)}],
    'lists': [[1, 2], [3, 4]],
}
@pytest.mark.parametrize('name', COLLATE_CASES)
def test_collate_as_default_collate(name):
    items = COLLATE_CASES[name]
    ours, theirs = collate(items), default_collate(items)
    def plain(o):
        "The same structure with tuples as lists (default_collate returns a list for tuples; we keep the tuple)."
        if isinstance(o, dict): return {k: plain(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)): return [plain(v) for v in o]
        return o
    torch.testing.assert_close(plain(ours), plain(theirs), rtol=0, atol=0)
    def dtypes(o): return {k: dtypes(v) for k, v in o.items()} if isinstance(o, dict) else [dtypes(v) for v in o] if isinstance(o, (list, tuple)) else o.dtype
    assert dtypes(plain(ours)) == dtypes(plain(theirs))

@pytest.mark.parametrize('items', [['a', 'b'], [b'a', b'b'], [('a', 1), ('b', 2)], [['a', 1], ['b', 2]], [{'s': 'a'}, {'s': 'b'}]])
def test_collate_strings_as_default_collate(items):
    "Strings are not stacked: they come back in the same container (list or tuple) as from default_collate."
    def str_parts(o):
        if isinstance(o, dict): return {k: str_parts(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)) and o and isinstance(o[0], (str, bytes)): return type(o), list(o)
        if isinstance(o, (list, tuple)): return [str_parts(v) for v in o]
        return 'tensor'
    assert str_parts(collate(items)) == str_parts(default_collate(items))

def test_collate_errors():
    assert collate([('a', 1), ('b', 2)])[0] == ('a', 'b')
    with pytest.raises(RuntimeError, match='same number of fields'): collate([(1, 2), (3,)])
    with pytest.raises(ValueError, match='at least one item'): collate([])
    with pytest.raises(TypeError, match='cannot batch items of type object'): collate([object()])

def test_errors():
    with pytest.raises(ValueError, match='same length; got 3 and 2'): Dataset(torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match='positive integer value, but got batch_size=0'): BatchSampler(Sampler(Dataset(torch.zeros(3), torch.zeros(3))), 0)
    with pytest.raises(ValueError, match='n_workers must be 0 or more'): DataLoader([], [], n_workers=-1)
    assert collate([(torch.tensor(1.), torch.tensor(2))])[0].shape == (1,)

@needs_fork
@pytest.mark.parametrize('n_workers', [0, 1, 3])
def test_data_loader_gives_every_item_once_in_order(n_workers):
    x, y = torch.randn(103, 5), torch.arange(103)
    ds = Dataset(x, y)
    x @ torch.randn(5, 400)   # the parent has used torch's thread pool before forking
    sampler = BatchSampler(Sampler(ds, shuffle=True, seed=3), 10)
    batches = list(DataLoader(ds, sampler, n_workers=n_workers))
    assert [yb.tolist() for _, yb in batches] == list(BatchSampler(Sampler(ds, shuffle=True, seed=3), 10))   # the sampler's order
    ys = torch.cat([yb for _, yb in batches])
    assert sorted(ys.tolist()) == list(range(103)) and len(batches) == 11
    for xb, yb in batches: torch.testing.assert_close(xb, x[yb])

class NoiseDataset:
    "Items of random noise from torch, NumPy and Python's random."
    def __len__(self): return 12
    def __getitem__(self, i): return torch.tensor([torch.rand(()).item(), np.random.rand(), random.random()], dtype=torch.float64)

def noise(seed, n_workers=2, epochs=1):
    dl = DataLoader(NoiseDataset(), BatchSampler(Sampler(range(12)), 3), n_workers=n_workers, seed=seed)
    return [torch.cat(list(dl)) for _ in range(epochs)]

@needs_fork
def test_seeded_workers_repeat_and_differ():
    (a1, a2), (b1, b2) = noise(7, epochs=2), noise(7, epochs=2)
    torch.testing.assert_close(a1, b1, rtol=0, atol=0)            # two seeded runs: the same batches
    torch.testing.assert_close(a2, b2, rtol=0, atol=0)
    assert (a1 != a2).all()                                       # a new epoch: new noise
    assert (a1[0] != a1[3]).all()                                 # worker 0 and worker 1 differ, in all three generators
    assert (noise(8)[0] != a1).all()                              # another seed, other noise

@needs_fork
def test_seeded_workers_match_torch():
    "Our worker seeding is PyTorch's: the same seed gives the same noise, from torch, NumPy and random."
    dl = TorchDataLoader(NoiseDataset(), batch_size=3, num_workers=2, multiprocessing_context='fork', generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(noise(5)[0], torch.cat(list(dl)), rtol=0, atol=0)

def test_seed_worker_seeds_every_generator():
    seed_worker(10, 1); first = (random.random(), np.random.rand(), torch.rand(()).item())
    seed_worker(10, 1); assert (random.random(), np.random.rand(), torch.rand(()).item()) == first
    seed_worker(10, 2); assert all(a != b for a, b in zip((random.random(), np.random.rand(), torch.rand(()).item()), first))

class Fragile(Dataset):
    "Kills the process that fetches item 7 with `sig`."
    def __init__(self, sig): super().__init__(torch.arange(40), torch.arange(40)); self.sig = sig
    def __getitem__(self, i):
        if i == 7:
            faulthandler.disable()   # pytest's fault handler would print the dying worker's stack
            os.kill(os.getpid(), self.sig)
        return super().__getitem__(i)

@needs_fork
@pytest.mark.parametrize('sig', [signal.SIGKILL, signal.SIGSEGV])
def test_dead_worker_raises_quickly(sig):
    "multiprocessing.Pool would wait for ever; the loader must notice the dead worker and raise."
    old = signal.signal(signal.SIGALRM, lambda *a: pytest.fail('the DataLoader hung on a dead worker'))
    signal.alarm(30)
    try:
        start = time.monotonic()
        with pytest.raises(RuntimeError, match=f'worker 1 exited unexpectedly.*signal {int(sig)}'):
            list(DataLoader(Fragile(sig), BatchSampler(Sampler(range(40)), 4), n_workers=2))
        assert time.monotonic() - start < 10
    finally: signal.alarm(0); signal.signal(signal.SIGALRM, old)

class FragileBig(Dataset):
    "Large items (so a worker's earlier batch may still be on its way) and a SIGKILL at item 123."
    def __getitem__(self, i):
        if i == 123: os.kill(os.getpid(), signal.SIGKILL)
        return super().__getitem__(i)

@needs_fork
def test_worker_killed_mid_message_never_hangs():
    "A worker killed while an earlier batch is half-written to the loader (seen in CI): its pipe must read as closed."
    old = signal.signal(signal.SIGALRM, lambda *a: pytest.fail('the DataLoader hung on a half-written batch'))
    signal.alarm(120)
    try:
        ds = FragileBig(torch.randn(1000, 784), torch.arange(1000))
        for _ in range(30):
            with pytest.raises(RuntimeError, match='exited unexpectedly'):
                list(DataLoader(ds, BatchSampler(Sampler(range(1000)), 16), n_workers=2))
    finally: signal.alarm(0); signal.signal(signal.SIGALRM, old)

class Failing(Dataset):
    def __getitem__(self, i):
        if i == 5: raise KeyError(f'item {i} is unreadable')
        return super().__getitem__(i)

@needs_fork
def test_worker_exception_is_raised_in_the_loop():
    with pytest.raises(KeyError, match='item 5 is unreadable'):
        list(DataLoader(Failing(torch.arange(20), torch.arange(20)), BatchSampler(Sampler(range(20)), 4), n_workers=2))

@needs_fork
def test_abandoned_loop_stops_its_workers():
    import multiprocessing
    before = set(multiprocessing.active_children())
    for i, _ in enumerate(DataLoader(Dataset(torch.arange(100), torch.arange(100)), BatchSampler(Sampler(range(100)), 2), n_workers=2)):
        if i == 3: break
    time.sleep(0.1)
    import gc; gc.collect()
    assert set(multiprocessing.active_children()) <= before

@pytest.mark.parametrize('lr', [-1, -0.1])
def test_optimizer_refuses_a_negative_learning_rate(lr):
    "torch.optim.SGD refuses one (ValueError: Invalid learning rate); ours used to climb the loss instead."
    with pytest.raises(ValueError, match=f'Invalid learning rate: {lr}'): torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    with pytest.raises(ValueError, match=rf'Invalid learning rate: {lr}.*at least 0'): Optimizer([torch.zeros(1, requires_grad=True)], lr=lr)

@pytest.mark.parametrize('bs', [0, -1, 2.5, True, None, '4'])
def test_batch_sizes_are_refused_as_pytorch_refuses_them(bs):
    "BatchSampler took 2.5 or True, and a batch size of 0 gave each helper its own error: now PyTorch's, from all."
    import re
    from miniai.training import get_dls
    ds = Dataset(torch.zeros(3), torch.zeros(3))
    said = re.escape(f'batch_size should be a positive integer value, but got batch_size={bs!r}')
    with pytest.raises(ValueError, match=said): BatchSampler(Sampler(ds), bs)
    with pytest.raises(ValueError, match=said): get_dls(ds, ds, bs)
    assert len(BatchSampler(Sampler(ds), np.int64(2))) == 2   # any whole number type, as sizes from NumPy are
