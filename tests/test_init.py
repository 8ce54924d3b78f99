"Fans equal torch's; Kaiming keeps the scale through a deep ReLU stack (within a tolerance) where the default loses it; GeneralRelu equals its torch formula; LSUV reaches mean 0, std 1."
from functools import partial
import math, warnings, pytest, torch
from torch import nn
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from miniai.init import GeneralRelu, cnn_model, conv_block, fan_in_out, glorot_normal_, init_weights, kaiming_normal_, lsuv_init

@given(shape=st.lists(st.integers(1, 7), min_size=2, max_size=5))
def test_fans_equal_torch(shape):
    w = torch.empty(shape)
    assert fan_in_out(w) == nn.init._calculate_fan_in_and_fan_out(w)

def test_fan_needs_two_dims():
    with pytest.raises(ValueError, match='at least 2 dimensions'): fan_in_out(torch.empty(3))

@pytest.mark.parametrize('leak', [0., 0.1, 0.5])
@pytest.mark.parametrize('shape', [(256, 512), (128, 64, 3, 3), (64, 32, 5)])
def test_init_std_matches_formula_and_torch(shape, leak):
    torch.manual_seed(0)
    w = torch.empty(shape)
    fan_in, fan_out = fan_in_out(w)
    ours, theirs = kaiming_normal_(w.clone(), leak).std().item(), nn.init.kaiming_normal_(w.clone(), a=leak).std().item()
    expected = math.sqrt(2 / ((1 + leak**2) * fan_in))
    assert ours == pytest.approx(expected, rel=0.03) and theirs == pytest.approx(expected, rel=0.03)
    assert glorot_normal_(w.clone()).std().item() == pytest.approx(math.sqrt(2 / (fan_in + fan_out)), rel=0.03)

def deep_relu_stack(n_layers, n): return nn.Sequential(*[nn.Sequential(nn.Linear(n, n), nn.ReLU()) for _ in range(n_layers)])

@settings(max_examples=4)
@given(seed=st.integers(0, 2**16), n_layers=st.integers(10, 30))
def test_kaiming_keeps_the_scale_through_a_deep_relu_stack(seed, n_layers):
    "The mean square of a ReLU output, which Kaiming keeps at the input's (1): median over stacks within a factor of 3; the default loses the input."
    torch.manual_seed(seed)
    kaiming, default = [], []
    with torch.no_grad():
        for _ in range(7):
            x = torch.randn(300, 256)
            kaiming.append(deep_relu_stack(n_layers, 256).apply(init_weights)(x).pow(2).mean().item())
            out = deep_relu_stack(n_layers, 256)(x)   # PyTorch's default init: ~6x less variance per layer
            default.append((out.var(0).mean() / out.pow(2).mean()).item())   # share of the output that depends on the input
    assert 1 / 3 < torch.tensor(kaiming).median() < 3, kaiming
    assert max(default) < 1e-4, default

@given(x=st.lists(st.floats(-1e3, 1e3, width=32), min_size=1, max_size=20), leak=st.none() | st.floats(0, 1),
       sub=st.none() | st.floats(-1, 1), maxv=st.none() | st.floats(0, 10))
def test_general_relu_equals_torch_formula(x, leak, sub, maxv):
    x = torch.tensor(x)
    expected = F.leaky_relu(x, leak) if leak is not None else F.relu(x)
    if sub is not None: expected = expected - sub
    if maxv is not None: expected = expected.clamp_max(maxv)
    torch.testing.assert_close(GeneralRelu(leak, sub, maxv)(x), expected)

def test_init_weights_touches_only_conv_and_linear():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8, 2))
    model.apply(init_weights)
    assert (model[0].bias == 0).all() and (model[3].bias == 0).all()
    assert (model[1].weight == 1).all()   # BatchNorm keeps its own init

def test_conv_block_and_cnn_model():
    assert conv_block(1, 4)[0].bias is not None and conv_block(1, 4, norm=nn.BatchNorm2d)[0].bias is None
    assert [type(m) for m in conv_block(1, 4, norm=nn.BatchNorm2d)] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    model = cnn_model(partial(GeneralRelu, leak=0.1), nfs=(4, 8, 16, 16))
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)

@settings(max_examples=4)
@given(seed=st.integers(0, 2**16), leak=st.sampled_from([None, 0.1]), sub=st.just(0.4))
def test_lsuv_reaches_unit_std(seed, leak, sub):
    torch.manual_seed(seed)
    model = cnn_model(partial(GeneralRelu, leak=leak, sub=sub), nfs=(4, 8, 16, 16))
    xb = torch.randn(32, 1, 28, 28)
    acts = [m for m in model.modules() if isinstance(m, GeneralRelu)]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)][:len(acts)]
    with warnings.catch_warnings():
        warnings.simplefilter('error')   # not converging is a failure here
        results = lsuv_init(model, xb, convs, acts, max_iters=100)
    for act, (mean, std) in zip(acts, results): assert abs(mean) < 1e-3 and abs(std - 1) < 1e-3, results
    stats = []
    h = [a.register_forward_hook(lambda m, i, o: stats.append((o.mean().item(), o.std().item()))) for a in acts]
    with torch.no_grad(): model(xb)
    for handle in h: handle.remove()
    for mean, std in stats: assert abs(mean) < 1e-3 and abs(std - 1) < 1e-3, stats   # all layers at once, after the last adjustment
    assert all(len(a._forward_hooks) == 0 for a in acts)

def test_lsuv_without_bias_scales_only():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 30, bias=False), nn.ReLU(), nn.Linear(30, 5))
    (mean, std), = lsuv_init(model, torch.randn(256, 20), [model[0]], [model[0]])
    assert abs(std - 1) < 1e-3
    with pytest.raises(ValueError, match='one output module per layer'): lsuv_init(model, torch.randn(4, 20), [model[0]], [])

def test_lsuv_warns_when_it_cannot_converge():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 30), GeneralRelu(sub=0.2))
    with pytest.warns(UserWarning, match='not converged after 5 passes'): lsuv_init(model, torch.randn(64, 20), [model[0]], [model[1]], max_iters=5)

def test_lsuv_refuses_a_plain_relu_with_bias():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))
    with pytest.raises(ValueError, match='cannot reach mean 0'): lsuv_init(model, torch.randn(64, 20), [model[0]], [model[1]])
