"Our BatchNorm and LayerNorm equal PyTorch's in training and evaluation modes, over random shapes, scales and parameters."
import pytest, torch
from torch import nn
from hypothesis import given, settings, strategies as st
from miniai.norm import BatchNorm, LayerNorm
from strategies import batch_shapes

def same_params(ours, theirs, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p, q in [(ours.weight, theirs.weight), (ours.bias, theirs.bias)]:
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype)); q.copy_(p)

# Compared in float64: the test is about the algorithm, not float32 rounding, which a nearly constant sample or channel
# (a large shift, a small spread) amplifies differently in the two implementations.
def close(a, b): torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
close_grad = close

@settings(max_examples=60)
@given(shape=batch_shapes(), k=st.integers(1, 3), scale=st.floats(0.1, 100), shift=st.floats(-50, 50), seed=st.integers(0, 2**16))
def test_layer_norm_equals_torch(shape, k, scale, shift, seed):
    k = min(k, len(shape) - 1)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale + shift
    ours, theirs = LayerNorm(shape[-k:]).double(), nn.LayerNorm(shape[-k:]).double()
    same_params(ours, theirs, seed)
    for train in (True, False):
        ours.train(train); theirs.train(train)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = ours(xa), theirs(xb)
        close(ya, yb)
        g = torch.randn_like(ya)
        (ya * g).sum().backward(); (yb * g).sum().backward()
        close_grad(xa.grad, xb.grad)

@settings(max_examples=60)
@given(shape=batch_shapes(min_batch=2), steps=st.integers(1, 4), mom=st.sampled_from([0.1, 0.3, 1.0]),
       scale=st.floats(0.5, 20), seed=st.integers(0, 2**16))
def test_batch_norm_equals_torch_in_train_and_eval(shape, steps, mom, scale, seed):
    g = torch.Generator().manual_seed(seed)
    C = shape[1]
    ours = BatchNorm(C, mom=mom).double()
    theirs = (nn.BatchNorm1d if len(shape) <= 3 else nn.BatchNorm2d)(C, momentum=mom).double()
    same_params(ours, theirs, seed)
    for step in range(steps):   # training: batch statistics, running statistics updated
        x = torch.randn(shape, generator=g, dtype=torch.float64) * scale + step
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = ours(xa), theirs(xb)
        close(ya, yb)
        up = torch.randn(ya.shape, generator=g, dtype=torch.float64)
        (ya * up).sum().backward(); (yb * up).sum().backward()
        close_grad(xa.grad, xb.grad)
        close(ours.running_mean, theirs.running_mean); close(ours.running_var, theirs.running_var)
    close(ours.weight.grad, theirs.weight.grad); close(ours.bias.grad, theirs.bias.grad)
    ours.eval(); theirs.eval()   # evaluation: the running statistics, nothing updated
    before = ours.running_mean.clone()
    x = torch.randn(shape, generator=g, dtype=torch.float64) * scale
    close(ours(x), theirs(x))
    torch.testing.assert_close(ours.running_mean, before)

def test_batch_norm_state_and_errors():
    bn = BatchNorm(3)
    assert set(bn.state_dict()) == {'weight', 'bias', 'running_mean', 'running_var'}
    assert len(list(bn.parameters())) == 2
    with pytest.raises(ValueError, match=r'expects \[batch, 3'): bn(torch.randn(4, 2, 5, 5))
    with pytest.raises(ValueError, match='more than one value'): bn(torch.randn(1, 3))
    bn.eval(); assert bn(torch.randn(1, 3)).shape == (1, 3)   # one sample is fine in evaluation
    with pytest.raises(ValueError, match='last dimensions'): LayerNorm((4, 5))(torch.randn(2, 5, 4))

@settings(max_examples=20)
@given(shape=batch_shapes(min_batch=2), seed=st.integers(0, 2**16))
def test_float32_close_to_torch(shape, seed):
    "In float32, on well-conditioned inputs (mean 0, spread 1), ours and torch's agree to float32 precision."
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(BatchNorm(shape[1])(x), (nn.BatchNorm1d if len(shape) <= 3 else nn.BatchNorm2d)(shape[1])(x), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(LayerNorm(shape[1:])(x), nn.LayerNorm(shape[1:])(x), atol=1e-4, rtol=1e-4)
