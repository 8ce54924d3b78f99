"The Learner's events in order, cancelling at each level, fit-only callbacks, edge cases, MomentumLearner and the LR finder."
import math
import pytest, torch
from torch import nn
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from miniai.learner import (Callback, CancelBatchException, CancelEpochException, CancelFitException, DeviceCB, LRFinderCB,
                            Learner, MomentumLearner, SingleBatchCB, TrainCB, TrainLearner, run_cbs, with_cbs, lr_find)

class DLs:
    def __init__(self, train, valid): self.train, self.valid = train, valid

def batches(n, bs=4, seed=0):
    "`n` batches of a linearly separable 2-class problem with 3 features."
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(bs, 3, generator=g)
        out.append((x, (x.sum(1) > 0).long()))
    return out

class Recorder(Callback):
    "Records every event it is sent (its `__getattr__` answers any before_/after_/cleanup_ name)."
    def __init__(self): self.events = []
    def __getattr__(self, nm):
        if nm.startswith(('before_', 'after_', 'cleanup_')): return lambda learn: self.events.append(nm)
        raise AttributeError(nm)

def expected(n_epochs, n_train, n_valid):
    batch = ['before_batch', 'after_batch', 'cleanup_batch']
    def epoch(n): return ['before_epoch', *batch * n, 'after_epoch', 'cleanup_epoch']
    return ['before_fit', *[e for _ in range(n_epochs) for e in epoch(n_train) + epoch(n_valid)], 'after_fit', 'cleanup_fit']

@settings(max_examples=25)
@given(st.integers(0, 3), st.integers(0, 3), st.integers(0, 3))
def test_event_order(n_epochs, n_train, n_valid):
    rec = Recorder()
    Learner(nn.Linear(3, 2), DLs(batches(n_train), batches(n_valid, seed=1)), cbs=[TrainCB(), rec]).fit(n_epochs)
    assert rec.events == expected(n_epochs, n_train, n_valid)

class Raise(Callback):
    "Raises `exc` at event `at` the `nth` time it happens."
    def __init__(self, exc, at, nth=1): self.exc, self.at, self.nth, self.seen = exc, at, nth, 0
    def __getattr__(self, nm):
        if nm != self.at: raise AttributeError(nm)
        def f(learn):
            self.seen += 1
            if self.seen == self.nth: raise self.exc()
        return f

def run(*cbs, n_epochs=2, n_train=2, n_valid=1):
    rec = Recorder()
    Learner(nn.Linear(3, 2), DLs(batches(n_train), batches(n_valid, seed=1)), cbs=[TrainCB(), rec, *cbs]).fit(n_epochs)
    return rec.events

def test_cancel_batch_skips_after_batch_only():
    events = run(Raise(CancelBatchException, 'before_batch'), n_epochs=1, n_train=2, n_valid=0)
    assert events == ['before_fit', 'before_epoch', 'before_batch', 'cleanup_batch', 'before_batch', 'after_batch', 'cleanup_batch',
                      'after_epoch', 'cleanup_epoch', 'before_epoch', 'after_epoch', 'cleanup_epoch', 'after_fit', 'cleanup_fit']

def test_cancel_epoch_skips_rest_of_that_pass():
    events = run(Raise(CancelEpochException, 'after_batch'), n_epochs=1, n_train=3, n_valid=1)
    assert events == ['before_fit', 'before_epoch', 'before_batch', 'after_batch', 'cleanup_batch', 'cleanup_epoch',
                      'before_epoch', 'before_batch', 'after_batch', 'cleanup_batch', 'after_epoch', 'cleanup_epoch', 'after_fit', 'cleanup_fit']

def test_cancel_fit_runs_cleanups_only():
    events = run(Raise(CancelFitException, 'after_batch', nth=2), n_epochs=3)
    assert events == ['before_fit', 'before_epoch', 'before_batch', 'after_batch', 'cleanup_batch', 'before_batch', 'after_batch',
                      'cleanup_batch', 'cleanup_epoch', 'cleanup_fit']
    assert run(SingleBatchCB(), n_epochs=3) == ['before_fit', 'before_epoch', 'before_batch', 'after_batch', 'cleanup_batch',
                                                 'cleanup_epoch', 'cleanup_fit']

def test_other_exceptions_propagate_after_cleanups():
    rec = Recorder()
    learn = Learner(nn.Linear(3, 2), DLs(batches(2), []), cbs=[TrainCB(), rec, Raise(KeyError, 'after_batch')])
    with pytest.raises(KeyError): learn.fit(1)
    assert rec.events[-3:] == ['cleanup_batch', 'cleanup_epoch', 'cleanup_fit']

def test_order_sorts_callbacks():
    said = []
    class A(Callback):
        order = 2
        def before_fit(self, learn): said.append('A')
    class B(Callback):
        order = -1
        def before_fit(self, learn): said.append('B')
    run_cbs([A(), B(), object()], 'before_fit')
    assert said == ['B', 'A']
    with pytest.raises(ValueError, match='unknown stage'): with_cbs('step')

def test_fit_callbacks_are_removed_even_on_error():
    learn = Learner(nn.Linear(3, 2), DLs(batches(2), []), cbs=[TrainCB()])
    with pytest.raises(KeyError): learn.fit(1, cbs=[Raise(KeyError, 'before_batch')])
    assert len(learn.cbs) == 1
    with pytest.raises(ValueError, match='n_epochs must be >= 0'): learn.fit(-1)
    with pytest.raises(AttributeError, match='no attribute'): learn.nonexistent

def test_training_learns_and_valid_has_no_grad():
    class Check(Callback):
        def after_batch(self, learn):
            assert torch.is_grad_enabled() == learn.training and learn.model.training == learn.training
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    data = DLs(batches(50, bs=16), batches(5, bs=16, seed=1))
    before = F.cross_entropy(model(data.valid[0][0]), data.valid[0][1]).item()
    TrainLearner(model, data, F.cross_entropy, lr=0.5, cbs=[Check(), DeviceCB('cpu')]).fit(2)
    assert F.cross_entropy(model(data.valid[0][0]), data.valid[0][1]).item() < before / 2

def test_momentum_learner_keeps_a_fraction_and_skips_none_grads():
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(5, 5))   # the second layer is never used: its grads stay None
    learn = MomentumLearner(nn.Identity(), DLs([], []), mom=0.5)
    learn.model = model
    model[0].weight.grad = torch.ones_like(model[0].weight)
    learn.zero_grad()
    assert torch.equal(model[0].weight.grad, torch.full_like(model[0].weight, 0.5))
    assert model[1].weight.grad is None

def test_lr_finder_stops_on_divergence_and_restores_weights():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    learn = TrainLearner(model, DLs(batches(200, bs=8), batches(3, seed=1)), F.cross_entropy)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    finder = lr_find(learn, gamma=1.5, max_mult=3, start_lr=1e-4, plot=False)
    assert len(finder.lrs) < 200, 'the finder should stop long before the 200 batches are used'
    last = finder.losses[-1]
    assert not math.isfinite(last) or last > 3 * min(finder.losses)
    assert all(l <= 3 * m for l, m in zip(finder.losses[:-1], [min(finder.losses[:i + 1]) for i in range(len(finder.losses) - 1)]))
    torch.testing.assert_close(finder.lrs[1] / finder.lrs[0], 1.5)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert learn.lr_find is not None and len(learn.cbs) == 0

def test_lr_finder_skips_validation():
    rec = Recorder()
    learn = TrainLearner(nn.Linear(3, 2), DLs(batches(3), batches(2, seed=1)), F.cross_entropy, cbs=[rec])
    finder = learn.lr_find(max_epochs=1, plot=False)
    assert len(finder.lrs) == 3
    # the validation pass is cancelled after its first batch (of two): no after_epoch
    assert rec.events[-7:] == ['before_epoch', 'before_batch', 'after_batch', 'cleanup_batch', 'cleanup_epoch', 'after_fit', 'cleanup_fit']
