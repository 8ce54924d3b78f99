"im2col and the im2col convolution against PyTorch's unfold and conv2d for random shapes; output sizes, receptive fields, to_device."
import pytest, torch
import torch.nn.functional as F
from hypothesis import given, strategies as st
from miniai.conv import conv, conv2d_im2col, conv_out_size, im2col, receptive_field
from miniai.device import to_device
from strategies import conv_cases

@given(conv_cases())
def test_conv2d_im2col_equals_conv2d(case):
    x, weight, bias, stride, padding = case
    expected = F.conv2d(x, weight, bias, stride=stride, padding=padding)
    torch.testing.assert_close(conv2d_im2col(x, weight, bias, stride, padding), expected, rtol=1e-4, atol=1e-4)

@given(conv_cases())
def test_im2col_equals_unfold(case):
    x, weight, _, stride, padding = case
    ks = tuple(weight.shape[2:])
    torch.testing.assert_close(im2col(x, ks, stride, padding), F.unfold(x, ks, stride=stride, padding=padding), rtol=0, atol=0)

@given(st.integers(1, 40), st.integers(1, 7), st.integers(1, 4), st.integers(0, 3))
def test_conv_out_size_matches_torch(n, ks, stride, padding):
    if n + 2 * padding < ks:
        with pytest.raises(ValueError, match='does not fit'): conv_out_size(n, ks, stride, padding)
        return
    out = F.conv2d(torch.zeros(1, 1, n, 1), torch.zeros(1, 1, ks, 1), stride=(stride, 1), padding=(padding, 0))
    assert conv_out_size(n, ks, stride, padding) == out.shape[2]

def test_bad_shapes_say_what_is_wrong():
    with pytest.raises(ValueError, match='x has 2 channels but weight expects 3'): conv2d_im2col(torch.zeros(1, 2, 5, 5), torch.zeros(4, 3, 3, 3))
    with pytest.raises(ValueError, match='must be 4-D'): conv2d_im2col(torch.zeros(2, 5, 5), torch.zeros(4, 2, 3, 3))
    with pytest.raises(ValueError, match='does not fit'): conv2d_im2col(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 3, 3))

@given(st.lists(st.tuples(st.integers(1, 5), st.integers(1, 3)), min_size=1, max_size=4))
def test_receptive_field_is_where_the_gradient_reaches(layers):
    "The centre output's gradient on the input is nonzero on exactly `receptive_field` rows (positive weights: nothing cancels)."
    kss, strides = [k for k, _ in layers], [s for _, s in layers]
    rf = receptive_field(kss, strides)
    size = rf * 2 + 8
    x = torch.zeros(1, 1, size, size, requires_grad=True)
    out = x
    for ks, s in layers: out = F.conv2d(out, torch.ones(1, 1, ks, ks), stride=s)
    out[0, 0, out.shape[2] // 2, out.shape[3] // 2].backward()
    rows = (x.grad[0, 0] != 0).any(1).nonzero()
    assert int(rows.max() - rows.min() + 1) == rf

def test_conv_block_halves_and_to_device_keeps_structure():
    assert conv(3, 8)(torch.zeros(2, 3, 7, 7)).shape == (2, 8, 4, 4)
    assert isinstance(conv(3, 8, act=False), torch.nn.Conv2d)
    batch = to_device({'x': (torch.zeros(1), [torch.ones(1), 'a']), 'n': 3}, 'meta')
    assert batch['x'][0].device.type == 'meta' and batch['x'][1][0].device.type == 'meta'
    assert isinstance(batch['x'], tuple) and batch['x'][1][1] == 'a' and batch['n'] == 3
