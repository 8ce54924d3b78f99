"Our optimisers equal torch.optim's step by step over random shapes, hyperparameters and missing gradients; decoupled weight decay equals shrinking the weights before an undecayed step; bad hyperparameters raise."
import copy, re
from functools import partial
import pytest, torch
from torch import nn
from hypothesis import given, settings, strategies as st
from miniai.optim import SGD, Momentum, RMSProp, Adam

shapes = st.lists(st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple), min_size=1, max_size=3)
lrs, wds = st.floats(1e-4, 1.), st.sampled_from([0., 1e-4, 1e-2, 0.1])
fracs = st.floats(0., 0.999)   # momentum, alpha, betas
epss = st.floats(1e-10, 1e-3)

def run_both(ours, theirs, shapes, steps, seed, pre_step=None):
    "Train copies of the same float64 parameters with `ours` and `theirs`, feeding the same gradients (some `None`) each step; check they stay equal."
    g = torch.Generator().manual_seed(seed)
    start = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    pa, pb = [nn.Parameter(t.clone()) for t in start], [nn.Parameter(t.clone()) for t in start]
    oa, ob = ours(pa), theirs(pb)
    for _ in range(steps):
        missing = torch.rand(len(shapes), generator=g) < 0.3
        for a, b, m in zip(pa, pb, missing):
            grad = torch.randn(a.shape, generator=g, dtype=torch.float64) * 3
            a.grad, b.grad = (None, None) if m else (grad.clone(), grad.clone())
        before = [a.detach().clone() for a in pa]
        oa.step()
        if pre_step: pre_step(pb)
        ob.step()
        for a, b, m, x in zip(pa, pb, missing, before):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)
            if m: assert torch.equal(a.detach(), x)   # no gradient: not moved, not even decayed
    return oa

common = dict(shapes=shapes, steps=st.integers(1, 8), seed=st.integers(0, 2**16), lr=lrs, wd=wds)

@settings(max_examples=40)
@given(**common, decouple=st.booleans())
def test_sgd_equals_torch(shapes, steps, seed, lr, wd, decouple):
    # for plain SGD, weight decay and L2 regularisation are the same update (up to rounding)
    run_both(partial(SGD, lr=lr, wd=wd, decouple_wd=decouple), partial(torch.optim.SGD, lr=lr, weight_decay=wd), shapes, steps, seed)

@settings(max_examples=40)
@given(**common, mom=fracs)
def test_momentum_equals_torch(shapes, steps, seed, lr, wd, mom):
    run_both(partial(Momentum, lr=lr, momentum=mom, wd=wd, decouple_wd=False),
             partial(torch.optim.SGD, lr=lr, momentum=mom, weight_decay=wd), shapes, steps, seed)

@settings(max_examples=40)
@given(**common, alpha=fracs, eps=epss)
def test_rmsprop_equals_torch(shapes, steps, seed, lr, wd, alpha, eps):
    run_both(partial(RMSProp, lr=lr, alpha=alpha, eps=eps, wd=wd, decouple_wd=False),
             partial(torch.optim.RMSprop, lr=lr, alpha=alpha, eps=eps, weight_decay=wd), shapes, steps, seed)

@settings(max_examples=40)
@given(**common, b1=fracs, b2=fracs, eps=epss, decouple=st.booleans())
def test_adam_equals_torch_adam_and_adamw(shapes, steps, seed, lr, wd, b1, b2, eps, decouple):
    theirs = torch.optim.AdamW if decouple else torch.optim.Adam
    run_both(partial(Adam, lr=lr, betas=(b1, b2), eps=eps, wd=wd, decouple_wd=decouple),
             partial(theirs, lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd), shapes, steps, seed)

@settings(max_examples=30)
@given(**common, mom=fracs, which=st.sampled_from(['momentum', 'rmsprop']))
def test_decoupled_wd_is_shrinking_then_an_undecayed_step(shapes, steps, seed, lr, wd, mom, which):
    "Decoupled weight decay = multiply each weight that has a gradient by (1 - lr * wd), then PyTorch's step without decay."
    def shrink(params):
        with torch.no_grad():
            for p in params:
                if p.grad is not None: p.mul_(1 - lr * wd)
    if which == 'momentum': ours, theirs = partial(Momentum, lr=lr, momentum=mom, wd=wd), partial(torch.optim.SGD, lr=lr, momentum=mom)
    else: ours, theirs = partial(RMSProp, lr=lr, alpha=mom, wd=wd), partial(torch.optim.RMSprop, lr=lr, alpha=mom)
    run_both(ours, theirs, shapes, steps, seed, pre_step=shrink)

def test_state_is_per_parameter_and_saved():
    p, q = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(3))
    opt = Adam([p, q], lr=0.1)
    p.grad = torch.ones(2)
    opt.step(); opt.step()
    assert opt.state[p]['step'] == 2 and len(opt.state[q]) == 0   # q never had a gradient: no state
    q.grad = torch.ones(3); opt.step()
    assert opt.state[q]['step'] == 1
    new = Adam([nn.Parameter(p.detach().clone()), nn.Parameter(q.detach().clone())], lr=0.1)
    new.load_state_dict(copy.deepcopy(opt.state_dict()))   # as torch.save would: the same tensors otherwise
    assert new.state[new.param_groups[0]['params'][0]]['step'] == 3
    for o in (opt, new):
        for t in o.param_groups[0]['params']: t.grad = torch.full_like(t, 0.5)
        o.step()
    for a, b in zip(opt.param_groups[0]['params'], new.param_groups[0]['params']): torch.testing.assert_close(a, b)

def test_works_with_torch_schedulers_and_param_groups():
    p, q = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2))
    opt = Adam([{'params': [p]}, {'params': [q], 'lr': 0.0}], lr=0.1)
    p.grad, q.grad = torch.ones(2), torch.ones(2)
    opt.step()
    assert (p < 1).all() and torch.equal(q.detach(), torch.ones(2))   # each group's own lr
    sched = torch.optim.lr_scheduler.OneCycleLR(Momentum([p], lr=0.1), max_lr=0.1, total_steps=10)   # needs 'momentum'
    assert sched.optimizer.param_groups[0]['momentum'] == 0.95

@pytest.mark.parametrize('make,msg', [
    (lambda p: SGD(p, lr=-1.), 'Invalid learning rate: -1.0 (must be >= 0)'),
    (lambda p: SGD(p, wd=-0.1), 'Invalid weight decay'),
    (lambda p: Momentum(p, momentum=-0.1), 'Invalid momentum'),
    (lambda p: Momentum(p, momentum=1.), 'Invalid momentum: 1.0 (must be in [0, 1))'),
    (lambda p: RMSProp(p, alpha=1.), 'Invalid alpha'),
    (lambda p: RMSProp(p, eps=0.), 'Invalid eps'),
    (lambda p: Adam(p, betas=(1., 0.999)), 'Invalid beta1'),
    (lambda p: Adam(p, betas=(0.9, -0.5)), 'Invalid beta2'),
    (lambda p: Adam(p, eps=-1.), 'Invalid eps'),
    (lambda p: Adam(p, lr=-1e-3), 'Invalid learning rate'),
    (lambda p: Adam([], lr=1e-3), 'empty parameter list'),
])
def test_bad_hyperparameters_raise(make, msg):
    with pytest.raises(ValueError, match=re.escape(msg)):
        make([nn.Parameter(torch.ones(1))] if 'empty' not in msg else [])
