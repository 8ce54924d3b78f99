"Our one-cycle and cosine schedules equal PyTorch's value by value over whole runs, and the scheduler callbacks step once per training batch (or epoch) through a Learner fit."
import math
from functools import partial
from types import SimpleNamespace
import pytest, torch
from torch import nn
import torch.nn.functional as F
from torch.optim import lr_scheduler
from hypothesis import assume, given, settings, strategies as st
from miniai.learner import TrainLearner
from miniai.sched import (get_hyper, set_hyper, RecorderCB, BatchSchedCB, EpochSchedCB, ParamSchedCB, OneCycleCB,
                          one_cycle, sched_cos, sched_lin)

def torch_values(opt_func, make_sched, n, lr=0.1):
    "The (lr, momentum) a PyTorch scheduler gives at each of `n` steps."
    opt = opt_func([nn.Parameter(torch.zeros(1))], lr)
    sched, lrs, moms = make_sched(opt), [], []
    for i in range(n):
        g = opt.param_groups[0]
        lrs.append(g['lr']); moms.append(get_hyper(g, 'mom') if ('betas' in g or 'momentum' in g) else None)
        opt.step()
        if i < n - 1: sched.step()   # not past the last step: OneCycleLR with pct_start=1 would divide by zero there
    return lrs, moms

def close(ours, theirs, tol=1e-12):
    assert len(ours) == len(theirs)
    for i, (a, b) in enumerate(zip(ours, theirs)): assert math.isclose(a, b, rel_tol=tol, abs_tol=tol * 1e-3), (i, a, b)

sgd = partial(torch.optim.SGD, momentum=0.9)
OPTS = [sgd, torch.optim.AdamW, torch.optim.Adam]

# pct_start * total_steps >= 2 keeps PyTorch away from its 0/0 when the warm-up ends at step 0
one_cycle_cases = st.integers(2, 400).flatmap(lambda n: st.tuples(
    st.just(n), st.floats(2 / n, 1.0), st.floats(1e-4, 10.), st.floats(1.5, 100.), st.floats(1., 1e5),
    st.floats(0.5, 0.9), st.floats(0.9, 0.99), st.sampled_from(['cos', 'linear']), st.sampled_from(range(len(OPTS)))))

@settings(max_examples=100)
@given(one_cycle_cases)
def test_one_cycle_equals_torch_value_by_value(case):
    n, pct, max_lr, div, final_div, base_mom, max_mom, strategy, opt_i = case
    anneal = sched_cos if strategy == 'cos' else sched_lin
    theirs = torch_values(OPTS[opt_i], partial(lr_scheduler.OneCycleLR, max_lr=max_lr, total_steps=n, pct_start=pct, div_factor=div,
                                               final_div_factor=final_div, base_momentum=base_mom, max_momentum=max_mom,
                                               anneal_strategy=strategy, three_phase=False), n)
    lr0 = max_lr / div
    close([one_cycle(i, n, lr0, max_lr, lr0 / final_div, pct, anneal) for i in range(n)], theirs[0])
    close([one_cycle(i, n, max_mom, base_mom, max_mom, pct, anneal) for i in range(n)], theirs[1])

@settings(max_examples=60)
@given(n=st.integers(1, 300), base=st.floats(1e-4, 10.), frac=st.floats(0., 0.5))
def test_cosine_equals_cosine_annealing_lr(n, base, frac):
    eta_min = base * frac
    theirs, _ = torch_values(sgd, partial(lr_scheduler.CosineAnnealingLR, T_max=n, eta_min=eta_min), n + 1, lr=base)
    close([sched_cos(base, eta_min, i / n) for i in range(n + 1)], theirs, tol=1e-9)   # PyTorch's recursion rounds a little

def toy_learner(opt_func, cbs, n_train=7, lr=0.1):
    x, y = torch.randn(n_train + 2, 4, 3), torch.randn(n_train + 2, 4, 1)
    dls = SimpleNamespace(train=list(zip(x[:n_train], y[:n_train])), valid=list(zip(x[n_train:], y[n_train:])))
    return TrainLearner(nn.Linear(3, 1), dls, F.mse_loss, lr=lr, cbs=cbs, opt_func=opt_func)

class CountSteps:
    "Wraps a scheduler, counting `step` calls."
    def __init__(self, sched): self.sched, self.steps = sched, 0
    def step(self): self.steps += 1; self.sched.step()

@pytest.mark.parametrize('epochs,n_train', [(1, 1), (2, 7), (3, 4)])
def test_callbacks_step_once_per_training_batch_or_epoch(epochs, n_train):
    made = []
    def make(opt): made.append(CountSteps(lr_scheduler.StepLR(opt, step_size=1, gamma=0.5))); return made[-1]
    rec = RecorderCB('lr')
    toy_learner(torch.optim.SGD, [BatchSchedCB(make), rec], n_train=n_train).fit(epochs)
    assert made[-1].steps == epochs * n_train   # validation batches don't step
    assert rec.recs['lr'] == [0.1 * 0.5**i for i in range(epochs * n_train)]
    rec = RecorderCB('lr')
    toy_learner(torch.optim.SGD, [EpochSchedCB(make), rec], n_train=n_train).fit(epochs)
    assert made[-1].steps == epochs
    assert rec.recs['lr'] == [0.1 * 0.5**e for e in range(epochs) for _ in range(n_train)]

@settings(max_examples=15)
@given(epochs=st.integers(1, 3), n_train=st.integers(2, 9), max_lr=st.floats(1e-3, 1.), pct=st.floats(0.3, 0.9), opt_i=st.sampled_from(range(len(OPTS))))
def test_one_cycle_cb_equals_torch_through_a_learner(epochs, n_train, max_lr, pct, opt_i):
    def run(cb):
        rec = RecorderCB('lr', 'mom')
        toy_learner(OPTS[opt_i], [cb, rec], n_train=n_train).fit(epochs)
        return rec.recs
    n = epochs * n_train
    assume(pct * n >= 2)   # PyTorch divides 0 by 0 when the warm-up ends at step 0
    ours = run(OneCycleCB(max_lr, pct_start=pct))
    theirs = run(BatchSchedCB(partial(lr_scheduler.OneCycleLR, max_lr=max_lr, total_steps=n, pct_start=pct)))
    assert len(ours['lr']) == n
    close(ours['lr'], theirs['lr']); close(ours['mom'], theirs['mom'])

def test_param_sched_sets_every_group_and_keeps_last_value_past_the_end():
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))
    opt_func = lambda params, lr: torch.optim.SGD([{'params': model[0].parameters()}, {'params': model[1].parameters()}], lr=lr, momentum=0.9)
    learn = toy_learner(opt_func, [ParamSchedCB(lr=lambda i, n: (i + 1) / n, mom=lambda i, n: 0.5)], n_train=3)
    learn.model = model
    seen = []
    class Spy:
        order = 2
        def before_batch(self, learn):
            if learn.training: seen.append([(g['lr'], g['momentum']) for g in learn.opt.param_groups])
    learn.fit(2, cbs=[Spy()])
    assert seen == [[((i + 1) / 6, 0.5)] * 2 for i in range(6)]
    cb = ParamSchedCB(lr=lambda i, n: i / n)
    learn = toy_learner(torch.optim.SGD, [cb], n_train=4)
    learn.fit(1)
    assert cb.steps_done == 4 and learn.opt.param_groups[0]['lr'] == 3 / 4
    cb.before_batch(learn)   # a batch past the planned end keeps the last step's values
    assert learn.opt.param_groups[0]['lr'] == 3 / 4

def test_hyper_helpers_and_errors():
    g = torch.optim.Adam([nn.Parameter(torch.zeros(1))]).param_groups[0]
    set_hyper(g, 'mom', 0.7); assert g['betas'] == (0.7, 0.999) and get_hyper(g, 'mom') == 0.7
    g = torch.optim.Adagrad([nn.Parameter(torch.zeros(1))]).param_groups[0]
    with pytest.raises(KeyError, match='has no momentum'): get_hyper(g, 'mom')
    with pytest.raises(KeyError, match='has no momentum'): set_hyper(g, 'mom', 0.9)
    with pytest.raises(KeyError, match='has no momentum'): toy_learner(torch.optim.Adagrad, [OneCycleCB(0.1)]).fit(1)
    with pytest.raises(ValueError, match="'cos' or 'linear'"): OneCycleCB(0.1, anneal_strategy='cosine')
    with pytest.raises(ValueError, match='pct_start'): one_cycle(0, 10, 1., 2., 0., pct_start=-0.1)
    with pytest.raises(ValueError, match='total_steps'): one_cycle(0, 0, 1., 2., 0.)

def test_param_sched_beside_train_cb():
    "A plain `Learner` runs its training step through callbacks (`TrainCB`); a scheduler's counter must not shadow the `step` event."
    from miniai.learner import Learner, TrainCB
    x, y = torch.randn(5, 4, 3), torch.randn(5, 4, 1)
    dls = SimpleNamespace(train=list(zip(x[:3], y[:3])), valid=list(zip(x[3:], y[3:])))
    model = nn.Linear(3, 1)
    before = model.weight.detach().clone()
    cb = OneCycleCB(0.1)
    Learner(model, dls, F.mse_loss, cbs=[TrainCB(), cb], opt_func=partial(torch.optim.SGD, momentum=0.9)).fit(2)
    assert cb.steps_done == 6 and not torch.equal(model.weight, before)

def torch_last_lrs(make_sched, n, lr=0.1):
    "What a PyTorch scheduler reports through `get_last_lr()` before each of `n` optimiser steps."
    opt = sgd([nn.Parameter(torch.zeros(1))], lr)
    sched, lrs = make_sched(opt), []
    for i in range(n):
        lrs.append(sched.get_last_lr()[0]); opt.step()
        if i < n - 1: sched.step()
    return lrs

@settings(max_examples=15)
@given(epochs=st.integers(1, 3), n_train=st.integers(2, 9), max_lr=st.floats(1e-3, 1.), pct=st.floats(0.3, 0.9),
       eta_min=st.floats(0., 1e-3))
def test_our_callbacks_set_what_torch_reports_through_get_last_lr(epochs, n_train, max_lr, pct, eta_min):
    """The library's version beside ours: the rate `OneCycleCB` (and `ParamSchedCB` with `sched_cos`) sets for each
    training batch of a fit is what `OneCycleLR` (and `CosineAnnealingLR`) report through `get_last_lr()` at that step;
    and `BatchSchedCB`, which steps PyTorch's own scheduler once per batch, gives each batch the rate it reports."""
    n = epochs * n_train
    assume(pct * n >= 2)   # PyTorch divides 0 by 0 when the warm-up ends at step 0
    def recorded(cb):
        rec = RecorderCB('lr')
        toy_learner(sgd, [cb, rec], n_train=n_train).fit(epochs)
        return rec.recs['lr']
    close(recorded(OneCycleCB(max_lr, pct_start=pct)),
          torch_last_lrs(partial(lr_scheduler.OneCycleLR, max_lr=max_lr, total_steps=n, pct_start=pct), n))
    close(recorded(ParamSchedCB(lr=lambda i, total: sched_cos(0.1, eta_min, i / total))),
          torch_last_lrs(partial(lr_scheduler.CosineAnnealingLR, T_max=n, eta_min=eta_min), n), tol=1e-9)
    cb = BatchSchedCB(partial(lr_scheduler.CosineAnnealingLR, T_max=n, eta_min=eta_min))
    lrs = recorded(cb)
    assert cb.schedo.last_epoch == n and lrs == torch_last_lrs(partial(lr_scheduler.CosineAnnealingLR, T_max=n,
                                                                       eta_min=eta_min), n)
