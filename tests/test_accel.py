"bfloat16 detection and its float32 fallback, channels-last giving the same outputs, the callbacks leaving the model as they found it, and training still learning with each."
import pytest, torch
from torch import nn
import torch.nn.functional as F
import miniai.accel as accel
from miniai.accel import cpu_flags, bf16_supported, MixedPrecisionCB, ChannelsLastCB, CompileCB, train_speed, train_speed_table
from miniai.learner import Callback, DeviceCB, TrainLearner
from miniai.datasets import DataLoaders
from miniai.resnet import ResNet

def small_model(): return ResNet((4, 8), n_out=3)

def fixed_dls(n=3, bs=16, size=12, seed=0):
    "`n` fixed batches of a learnable task: the class is which third of the image is brightest."
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n):
        y = torch.randint(0, 3, (bs,), generator=g)
        x = torch.randn(bs, 1, size, size, generator=g) * 0.5
        for i, c in enumerate(y): x[i, :, :, c * 4:(c + 1) * 4] += 2
        batches.append((x, y))
    return DataLoaders(batches, batches[:1])

class Record(Callback):
    "Training losses, the predictions' dtype and the first convolution's output dtype."
    def before_fit(self, learn):
        self.losses, self.conv_dtypes = [], set()
        conv = next(m for m in learn.model.modules() if isinstance(m, nn.Conv2d))
        self.h = conv.register_forward_hook(lambda m, i, o: self.conv_dtypes.add(o.dtype))
    def after_batch(self, learn):
        self.pred_dtype = learn.preds.dtype
        if learn.training: self.losses.append(learn.loss.item())
    def cleanup_fit(self, learn): self.h.remove()

def fit(cbs, epochs=1, model=None, dls=None, lr=1e-2):
    torch.manual_seed(0)
    model = model or small_model()
    rec = Record()
    learn = TrainLearner(model, dls or fixed_dls(), F.cross_entropy, lr=lr, cbs=[DeviceCB('cpu'), *cbs, rec], opt_func=torch.optim.AdamW)
    learn.fit(epochs)
    return learn, rec

def test_cpu_flags_reads_x86_and_arm(tmp_path):
    x86, arm = tmp_path/'x86', tmp_path/'arm'
    x86.write_text('processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16 fma\n\nprocessor\t: 1\nflags\t\t: fpu\n')
    arm.write_text('processor\t: 0\nFeatures\t: fp asimd bf16 sve\n')
    assert cpu_flags(x86) == {'fpu', 'avx2', 'avx512_bf16', 'fma'}
    assert cpu_flags(arm) == {'fp', 'asimd', 'bf16', 'sve'}
    assert cpu_flags(tmp_path/'missing') == set()

def test_bf16_supported_from_flags(monkeypatch):
    monkeypatch.setattr(torch.backends.cpu, 'get_cpu_capability', lambda: 'AVX2')
    assert bf16_supported('cpu', flags={'avx2', 'amx_bf16'})
    assert bf16_supported('cpu', flags={'avx512_bf16'})
    assert not bf16_supported('cpu', flags={'avx2', 'fma', 'avx512f'})
    monkeypatch.setattr(torch.backends.cpu, 'get_cpu_capability', lambda: 'AVX512_BF16')
    assert bf16_supported('cpu', flags=set())
    assert not bf16_supported('meta')

def test_mixed_precision_falls_back_when_unsupported(monkeypatch, capsys):
    monkeypatch.setattr(accel, 'bf16_supported', lambda device, flags=None: False)
    cb = MixedPrecisionCB()
    learn, rec = fit([cb])
    assert cb.enabled is False
    assert 'no native bfloat16' in capsys.readouterr().out
    assert rec.conv_dtypes == {torch.float32} and rec.pred_dtype == torch.float32
    assert 'forward' not in vars(learn.model)

def test_mixed_precision_uses_bf16_when_supported(monkeypatch):
    monkeypatch.setattr(accel, 'bf16_supported', lambda device, flags=None: True)
    cb = MixedPrecisionCB()
    learn, rec = fit([cb])
    assert cb.enabled is True
    assert rec.conv_dtypes == {torch.bfloat16}
    assert rec.pred_dtype == torch.float32, 'the Learner should get float32 predictions'
    assert 'forward' not in vars(learn.model), 'the model keeps its own forward after the fit'
    assert all(p.dtype == torch.float32 for p in learn.model.parameters())

def test_forward_restored_after_failed_fit(monkeypatch):
    monkeypatch.setattr(accel, 'bf16_supported', lambda device, flags=None: True)
    class Boom(Callback):
        def after_batch(self, learn): raise RuntimeError('boom')
    model = small_model()
    with pytest.raises(RuntimeError, match='boom'): fit([MixedPrecisionCB(), Boom()], model=model)
    assert 'forward' not in vars(model)

def test_channels_last_same_outputs():
    torch.manual_seed(0)
    model = ResNet().eval()
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        ref = model(x)
        model.to(memory_format=torch.channels_last)
        out = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)

class Layout(Callback):
    order = ChannelsLastCB.order + 1
    def before_batch(self, learn):
        self.batch_cl = learn.batch[0].is_contiguous(memory_format=torch.channels_last)
        self.weight_cl = learn.model[0].convs[0][0].weight.is_contiguous(memory_format=torch.channels_last)

def test_channels_last_cb_converts_and_restores():
    lay = Layout()
    learn, rec = fit([ChannelsLastCB(), lay])
    assert lay.batch_cl and lay.weight_cl
    assert all(p.is_contiguous() for p in learn.model.parameters())

def test_channels_last_training_matches_float32():
    "Same seed, same batches: the two layouts train to nearly the same losses."
    _, rec32 = fit([], epochs=2)
    _, rec_cl = fit([ChannelsLastCB()], epochs=2)
    torch.testing.assert_close(torch.tensor(rec_cl.losses), torch.tensor(rec32.losses), atol=1e-3, rtol=1e-3)

@pytest.mark.parametrize('cbs', [[], [ChannelsLastCB()], [MixedPrecisionCB(force=True)], [CompileCB(backend='eager')]],
                         ids=['float32', 'channels_last', 'bf16', 'compile-eager'])
def test_training_still_learns(cbs):
    _, rec = fit(cbs, epochs=6)
    first, last = sum(rec.losses[:3]) / 3, sum(rec.losses[-3:]) / 3
    assert last < 0.7 * first, rec.losses

def test_compile_cb_restores_model():
    model = small_model()
    cb = CompileCB(backend='eager')
    learn, _ = fit([cb], model=model)
    assert learn.model is model
    assert type(cb.compiled).__name__ == 'OptimizedModule'
    assert not any(k.startswith('_orig_mod') for k in model.state_dict())

def test_train_speed_reports_each_variant_and_errors(monkeypatch):
    class Broken(Callback):
        def before_fit(self, learn): raise RuntimeError('no compiler')
    variants = accel._variants
    monkeypatch.setattr(accel, '_variants', lambda compile: {**variants(False), 'broken': [Broken()]})
    r = train_speed(batch_size=4, n_batches=1, repeats=1, model_fn=lambda: ResNet((4, 8)))
    assert set(r) == {'float32', 'channels_last', 'bfloat16 autocast (forced)', 'broken'}
    assert all(r[k]['images_per_s'] > 0 for k in r if k != 'broken')
    assert 'no compiler' in r['broken']['error']
    table = train_speed_table(4, 1, 1, results=r)
    assert 'broken' in table and 'no compiler' in table and 'vs float32' in table
    assert table.splitlines()[2].split()[-2] == '1.00'   # float32 against itself

class _Wrapper(nn.Module):
    "Like torch 2.4's compiled module: `train(mode)` sets the wrapped model's flag, its own stays as it was."
    def __init__(self, model): super().__init__(); self.inner = model
    def forward(self, x): return self.inner(x)
    def train(self, mode=True): self.inner.train(mode); return self

def test_compile_cb_validates_in_eval_mode_whatever_the_wrapper_does(monkeypatch):
    "With a compiled module whose own flag ignores eval(), the Learner must still see validation as not training."
    monkeypatch.setattr(torch, 'compile', lambda model, **kw: _Wrapper(model))
    learn, _ = fit([CompileCB()], epochs=1)   # validation would call backward under no_grad, and fail
    assert not learn.model.training

@pytest.mark.parametrize('isa, native', [('AVX2', False), ('avx2', False), ('AVX', False), ('AVX512_CORE_BF16', True), ('', True)])
def test_bf16_supported_respects_a_onednn_limit(monkeypatch, isa, native):
    "oneDNN told to stop at AVX2 (`ONEDNN_MAX_CPU_ISA`, how a CPU without AVX-512 is timed) runs no bfloat16 natively."
    monkeypatch.setenv('ONEDNN_MAX_CPU_ISA', isa)
    assert bf16_supported('cpu', flags={'avx2', 'avx512_bf16'}) is native
