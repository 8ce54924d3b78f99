("ResBlock and ResNet shapes over sizes, strides and channel changes; the identity path is the identity; "
 "summary's counts against closed forms; PlainLogits around a stand-in and around transformers' ResNet-18.")
import math
import pytest, torch
from torch import nn
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from types import SimpleNamespace
from miniai.resnet import ResBlock, ResNet, layer_flops, summary, ModelSummary, PlainLogits

def out_size(n, stride): return (n - 1) // stride + 1   # a 3x3 convolution with padding 1, as the block computes it

@settings(max_examples=20)
@given(ni=st.integers(1, 6), nf=st.integers(1, 6), stride=st.integers(1, 3), h=st.integers(1, 11), w=st.integers(1, 11),
       ks=st.sampled_from([1, 3, 5]), shortcut=st.booleans())
def test_resblock_shapes(ni, nf, stride, h, w, ks, shortcut):
    blk = ResBlock(ni, nf, stride=stride, ks=ks, shortcut=shortcut).eval()
    with torch.no_grad(): y = blk(torch.randn(2, ni, h, w))
    assert y.shape == (2, nf, out_size(h, stride), out_size(w, stride))
    if shortcut:
        assert isinstance(blk.idconv, nn.Identity) == (ni == nf)
        assert isinstance(blk.pool, nn.Identity) == (stride == 1)
    else: assert not hasattr(blk, 'idconv')

def silence_main_path(blk):
    "Zero the last batch norm's scale and shift: the main path then outputs 0."
    with torch.no_grad(): blk.convs[1][1].weight.zero_(); blk.convs[1][1].bias.zero_()

@pytest.mark.parametrize('c,h', [(1, 1), (4, 7), (16, 28)])
def test_identity_path_is_identity(c, h):
    x = torch.randn(3, c, h, h)
    blk = ResBlock(c, c, act=nn.Identity).eval()
    silence_main_path(blk)
    with torch.no_grad(): assert torch.equal(blk(x), x)
    blk_relu = ResBlock(c, c).eval()
    silence_main_path(blk_relu)
    with torch.no_grad(): assert torch.equal(blk_relu(x), x.relu())

def test_strided_identity_path_averages():
    "With stride 2 and equal channels, the identity path is a 2x2 average (partial windows at odd edges averaged over what is there)."
    x = torch.arange(2 * 5 * 5.).view(1, 2, 5, 5)
    blk = ResBlock(2, 2, stride=2, act=nn.Identity).eval()
    silence_main_path(blk)
    with torch.no_grad(): y = blk(x)
    assert y.shape == (1, 2, 3, 3)
    torch.testing.assert_close(y[0, 0, 0, 0], x[0, 0, :2, :2].mean())
    torch.testing.assert_close(y[0, 0, 2, 2], x[0, 0, 4, 4])   # the corner window holds one pixel

def test_shortcut_off_is_plain():
    torch.manual_seed(0)
    blk = ResBlock(4, 4, shortcut=False).eval()
    x = torch.randn(2, 4, 6, 6)
    with torch.no_grad(): torch.testing.assert_close(blk(x), blk.act(blk.convs(x)))

def test_resblock_rejects_even_kernel():
    with pytest.raises(ValueError, match='odd kernel size'): ResBlock(3, 3, ks=2)

@pytest.mark.parametrize('nfs,n_blocks,n_in,n_out,size', [((16, 32, 64, 128), 1, 1, 10, 28), ((8,), 1, 3, 4, 5),
                                                          ((8, 16), 3, 3, 5, 32), ((4, 8, 16), 2, 1, 10, 64)])
def test_resnet_shapes(nfs, n_blocks, n_in, n_out, size):
    model = ResNet(nfs, n_blocks=n_blocks, n_in=n_in, n_out=n_out)
    assert model(torch.randn(2, n_in, size, size)).shape == (2, n_out)
    assert sum(isinstance(m, ResBlock) for m in model) == 1 + (len(nfs) - 1) * n_blocks

def test_resnet_plain_has_no_shortcuts():
    plain = ResNet(shortcut=False)
    assert all(not b.shortcut for b in plain if isinstance(b, ResBlock))
    assert sum(p.numel() for p in plain.parameters()) < sum(p.numel() for p in ResNet().parameters())

def test_resnet_rejects_bad_config():
    with pytest.raises(ValueError, match='n_blocks'): ResNet(n_blocks=0)

@settings(max_examples=20)
@given(ni=st.integers(1, 8), nf=st.integers(1, 8), ks=st.sampled_from([1, 3, 5]), stride=st.integers(1, 3),
       groups=st.sampled_from([1, 2]), h=st.integers(5, 12))
def test_conv_flops_closed_form(ni, nf, ks, stride, groups, h):
    ni, nf = ni * groups, nf * groups
    conv = nn.Conv2d(ni, nf, ks, stride=stride, padding=ks // 2, groups=groups)
    out = conv(torch.randn(2, ni, h, h))
    ho = (h + 2 * (ks // 2) - ks) // stride + 1
    assert layer_flops(conv, out) == 2 * nf * ho * ho * (ni // groups) * ks * ks

def test_linear_and_other_flops():
    assert layer_flops(nn.Linear(7, 3), torch.zeros(5, 3)) == 2 * 7 * 3
    assert layer_flops(nn.Linear(7, 3), torch.zeros(5, 4, 3)) == 2 * 7 * 3 * 4
    assert layer_flops(nn.BatchNorm2d(3), torch.zeros(2, 3, 4, 4)) == 0

def test_summary_params_shapes_and_flops():
    torch.manual_seed(0)
    model = ResNet()
    model.train()
    before = [b.clone() for b in model.buffers()]
    s = summary(model, torch.randn(8, 1, 28, 28))
    assert isinstance(s, ModelSummary)
    assert s.params == sum(p.numel() for p in model.parameters())
    assert [r['params'] for r in s] == [sum(p.numel() for p in m.parameters()) for m in model.children()]
    assert [r['output'] for r in s] == [(8, 16, 28, 28), (8, 32, 14, 14), (8, 64, 7, 7), (8, 128, 4, 4), (8, 128, 1, 1), (8, 128), (8, 10)]
    assert [r['input'] for r in s][1:] == [r['output'] for r in s][:-1]
    # every convolution and the linear layer, each at its own output size
    expect = 0
    x = torch.randn(1, 1, 28, 28)
    def count(m, inp, out):
        nonlocal expect
        if isinstance(m, nn.Conv2d): expect += 2 * out.shape[1] * out.shape[2] * out.shape[3] * m.in_channels * math.prod(m.kernel_size)
        if isinstance(m, nn.Linear): expect += 2 * m.in_features * m.out_features
    handles = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    model.eval()
    with torch.no_grad(): model(x)
    for h in handles: h.remove()
    assert s.mflops == pytest.approx(expect / 1e6)
    model.train()
    assert all(torch.equal(a, b) for a, b in zip(before, model.buffers())), 'summary changed the batch-norm statistics'
    assert all(not m._forward_hooks for m in model.modules()), 'summary left hooks behind'
    text = str(s)
    assert 'ResBlock' in text and f'{s.params:,}' in text
    assert s._repr_markdown_().startswith('| module |')

def test_summary_shape_input_and_training_mode_restored():
    model = ResNet((8, 16))
    s = summary(model, (2, 1, 28, 28))
    assert s[0]['input'] == (2, 1, 28, 28)
    assert model.training
    with pytest.raises(ValueError, match='no layers'): summary(nn.Linear(2, 2), (1, 2))

class WithLogits(nn.Module):
    "A stand-in for a Hugging Face model: its output comes back inside an object, as `.logits`."
    def __init__(self, ni, no): super().__init__(); self.lin = nn.Linear(ni, no)
    def forward(self, x): return SimpleNamespace(logits=self.lin(x), hidden_states=None)

@settings(max_examples=10)
@given(n=st.integers(1, 5), ni=st.integers(1, 6), no=st.integers(1, 6))
def test_plain_logits_returns_the_tensor(n, ni, no):
    model = PlainLogits(WithLogits(ni, no))
    x = torch.randn(n, ni)
    with torch.no_grad(): torch.testing.assert_close(model(x), model.model.lin(x))
    assert sum(p.numel() for p in model.parameters()) == ni * no + no
    loss = F.cross_entropy(model(x), torch.zeros(n, dtype=torch.long))   # a tensor our Learner can use
    loss.backward()
    assert model.model.lin.weight.grad is not None

def test_plain_logits_around_transformers_resnet18():
    transformers = pytest.importorskip('transformers')
    cfg = transformers.ResNetConfig(num_channels=1, layer_type='basic', depths=[2, 2, 2, 2],
                                    hidden_sizes=[64, 128, 256, 512], num_labels=10)
    model = PlainLogits(transformers.ResNetForImageClassification(cfg)).eval()
    with torch.no_grad(): out = model(torch.randn(3, 1, 28, 28))
    assert isinstance(out, torch.Tensor) and out.shape == (3, 10)
    # torchvision's resnet18: 11,689,512 parameters for 3 channels and 1,000 classes;
    # this one has a 1-channel stem and 10 classes
    n = sum(p.numel() for p in model.parameters())
    assert n == 11_689_512 - 2 * 64 * 7 * 7 - (512 * 1000 + 1000) + (512 * 10 + 10) == 11_175_370
