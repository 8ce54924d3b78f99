"Hooks are removed on exit (normal, exception, interrupted fit), never half-registered; ActivationStats records one entry per training batch."
import pytest, torch
from torch import nn
from hypothesis import given, settings, strategies as st
from miniai.hooks import ActivationStats, Hook, Hooks, HooksCallback, append_stats
from miniai.learner import Callback, TrainLearner

def n_hooks(model): return sum(len(m._forward_hooks) for m in model.modules())
def count(hook, mod, inp, out): hook.calls = getattr(hook, 'calls', 0) + 1

def mlp(n_layers):
    return nn.Sequential(*[nn.Sequential(nn.Linear(4, 4), nn.ReLU()) for _ in range(n_layers)], nn.Linear(4, 2))

class Loaders:
    def __init__(self, n_train=3, n_valid=2, bs=8):
        g = torch.Generator().manual_seed(0)
        batch = lambda: (torch.randn(bs, 4, generator=g), torch.randint(0, 2, (bs,), generator=g))
        self.train, self.valid = [batch() for _ in range(n_train)], [batch() for _ in range(n_valid)]

@settings(max_examples=20)
@given(n_layers=st.integers(1, 5), fail=st.sampled_from([None, RuntimeError, KeyboardInterrupt]))
def test_hooks_removed_on_exit(n_layers, fail):
    model = mlp(n_layers)
    try:
        with Hooks(model.modules(), count) as hooks:
            model(torch.randn(2, 4))
            assert n_hooks(model) == len(hooks) == len(list(model.modules()))
            if fail: raise fail('inside the with block')
    except (RuntimeError, KeyboardInterrupt): pass
    assert n_hooks(model) == 0
    assert all(h.calls == 1 for h in hooks)

def test_hook_context_and_double_remove():
    lin = nn.Linear(3, 3)
    with Hook(lin, count) as h:
        lin(torch.randn(1, 3)); lin(torch.randn(1, 3))
    assert h.calls == 2 and len(lin._forward_hooks) == 0
    h.remove()   # harmless a second time
    lin(torch.randn(1, 3))
    assert h.calls == 2

def test_hooks_del_and_bad_input():
    model = mlp(3)
    hooks = Hooks(model, count)
    del hooks[:2]
    assert n_hooks(model) == 2 and len(hooks) == 2
    hooks.remove()
    assert n_hooks(model) == 0
    with pytest.raises(TypeError, match='nn.Module objects'): Hooks([model[0], model[1], 42], count)
    assert n_hooks(model) == 0   # the two registered before the bad item were removed again

class Boom(Callback):
    def __init__(self, exc, at): self.exc, self.at, self.n = exc, at, 0
    def after_batch(self, learn):
        self.n += 1
        if self.n == self.at: raise self.exc('stop')

@settings(max_examples=20)
@given(n_layers=st.integers(1, 4), at=st.integers(1, 6), exc=st.sampled_from([RuntimeError, KeyboardInterrupt]))
def test_hooks_callback_removes_hooks_when_fit_fails(n_layers, at, exc):
    model = mlp(n_layers)
    cb = HooksCallback(count, mods=nn.Linear)
    try: TrainLearner(model, Loaders(), lr=0.1, cbs=[cb, Boom(exc, at)]).fit(2)
    except (RuntimeError, KeyboardInterrupt): pass
    assert n_hooks(model) == 0

@pytest.mark.parametrize('on_train,on_valid,expected', [(True, False, 6), (False, True, 4), (True, True, 10)])
def test_hooks_callback_counts_passes(on_train, on_valid, expected):
    model = mlp(2)
    cb = HooksCallback(count, mods=nn.Linear, on_train=on_train, on_valid=on_valid)
    TrainLearner(model, Loaders(), lr=0.1, cbs=[cb]).fit(2)   # 2 epochs x (3 train + 2 valid batches)
    assert [h.calls for h in cb] == [expected] * 3 and n_hooks(model) == 0

def test_hooks_callback_selection():
    model = mlp(2)
    cb = HooksCallback(count)
    TrainLearner(model, Loaders(), lr=0.1, cbs=[cb]).fit(1)
    assert [h.module for h in cb] == list(model.children())
    cb = HooksCallback(count, mods=lambda m: isinstance(m, nn.ReLU))
    TrainLearner(model, Loaders(), lr=0.1, cbs=[cb]).fit(1)
    assert len(cb) == 2
    with pytest.raises(ValueError, match='no module of the model matches'):
        TrainLearner(model, Loaders(), cbs=[HooksCallback(count, mods=nn.Conv2d)]).fit(1)
    assert n_hooks(model) == 0

def test_activation_stats_shapes_and_values():
    model = mlp(3)
    stats = ActivationStats(mods=nn.ReLU, bins=20, max_act=5.)
    TrainLearner(model, Loaders(n_train=4), lr=0.1, cbs=[stats]).fit(2)
    assert stats.stat('mean').shape == stats.stat('std').shape == (3, 8)
    hists = stats.hists()
    assert hists.shape == (3, 20, 8)
    assert (hists.sum(1) <= 8 * 4).all()   # batch of 8 x 4 features, values beyond max_act are not counted
    dead = stats.dead_fraction()
    assert ((dead >= 0) & (dead <= 1)).all()
    assert (stats.stat('mean') >= 0).all()   # after a ReLU
    assert n_hooks(model) == 0

def test_dead_fraction_of_a_dead_layer():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad(): model[0].weight.zero_(); model[0].bias.fill_(-1.)   # every ReLU output is exactly 0
    stats = ActivationStats(mods=[model[1]])
    TrainLearner(model, Loaders(), lr=0.1, cbs=[stats]).fit(1)
    torch.testing.assert_close(stats.dead_fraction(), torch.ones(1, 3))
    torch.testing.assert_close(stats.stat('std'), torch.zeros(1, 3))

@given(st.integers(-20, 20), st.floats(0.1, 0.9))
@settings(max_examples=30)
def test_near_zero_share_is_relative_to_the_std(log2_scale, p_zero):
    "The near-zero share ignores scale (a power of two, so scaling is exact) and counts a ReLU's zeros, plus under 1%."
    g = torch.Generator().manual_seed(0)
    acts = torch.randn(4096, generator=g).abs() * (torch.rand(4096, generator=g) > p_zero)
    class H: pass
    h = H()
    for a in (acts, acts * 2. ** log2_scale): append_stats(h, None, None, a)
    near, zeros = h.stats['near_zero'], (acts == 0).float().mean().item()
    assert near[0] == near[1]
    assert zeros <= near[0] < zeros + 0.01
