"Mean and Accuracy against direct computation; MetricsCB's records against the model's real loss and accuracy; ProgressCB outside a notebook."
import math
import pytest, torch
from torch import nn
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from miniai.learner import TrainLearner
from miniai.metrics import Accuracy, Mean, MetricsCB, ProgressCB

@given(st.lists(st.tuples(st.floats(-1e3, 1e3, allow_nan=False), st.integers(1, 100)), min_size=1, max_size=20))
def test_mean_is_the_weighted_mean(values):
    m = Mean()
    for v, w in values: m.update(torch.tensor(v), weight=w)
    expected = sum(v * w for v, w in values) / sum(w for _, w in values)
    assert math.isclose(float(m.compute()), expected, rel_tol=1e-4, abs_tol=1e-2)
    m.reset()
    assert math.isnan(float(m.compute()))

@settings(max_examples=50)
@given(st.lists(st.integers(1, 20), min_size=1, max_size=6), st.integers(2, 7), st.integers(0, 2**31 - 1))
def test_accuracy_over_batches_equals_accuracy_of_all(sizes, n_classes, seed):
    g = torch.Generator().manual_seed(seed)
    preds = [torch.randn(n, n_classes, generator=g) for n in sizes]
    targets = [torch.randint(0, n_classes, (n,), generator=g) for n in sizes]
    acc = Accuracy()
    for p, t in zip(preds, targets): acc.update(p, t)
    expected = (torch.cat(preds).argmax(1) == torch.cat(targets)).float().mean()
    torch.testing.assert_close(acc.compute(), expected)
    torch.testing.assert_close(Accuracy().update(torch.cat(preds).argmax(1), torch.cat(targets)).compute(), expected)

def test_accuracy_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match='do not match'): Accuracy().update(torch.zeros(3, 2), torch.zeros(4))

class DLs:
    def __init__(self, train, valid): self.train, self.valid = train, valid

def data(n, bs, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    return [(x[i:i + bs], y[i:i + bs]) for i in range(0, n, bs)]

def test_metrics_cb_matches_direct_computation(capsys):
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    dls = DLs(data(200, 32, 0), data(70, 32, 1))   # uneven last batches: the weighting matters
    metrics = MetricsCB(Accuracy(), mean_pred=MeanPred())
    TrainLearner(model, dls, F.cross_entropy, lr=0.3, cbs=[metrics, ProgressCB(bars=False)]).fit(2)
    assert [(r['epoch'], r['pass']) for r in metrics.history] == [(0, 'train'), (0, 'valid'), (1, 'train'), (1, 'valid')]
    x, y = torch.cat([b[0] for b in dls.valid]), torch.cat([b[1] for b in dls.valid])
    with torch.no_grad(): preds = model(x)
    last = metrics.history[-1]
    assert math.isclose(last['loss'], F.cross_entropy(preds, y).item(), rel_tol=1e-5)
    assert math.isclose(last['accuracy'], (preds.argmax(1) == y).float().mean().item(), rel_tol=1e-6)
    assert math.isclose(last['mean_pred'], preds.mean().item(), rel_tol=1e-4, abs_tol=1e-6)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and lines[-1].startswith('epoch 1 pass valid loss ')

class MeanPred:
    "A metric from outside miniai: only the update/compute/reset protocol."
    def reset(self): self.s, self.n = 0., 0
    def update(self, preds, targets): self.s += preds.sum().item(); self.n += preds.numel()
    def compute(self): return self.s / self.n

def test_empty_validation_gives_nan_not_an_error(capsys):
    metrics = MetricsCB(Accuracy())
    TrainLearner(nn.Linear(4, 2), DLs(data(10, 5, 0), []), F.cross_entropy, cbs=[metrics, ProgressCB(bars=False)]).fit(1)
    assert math.isnan(metrics.history[-1]['loss']) and math.isnan(metrics.history[-1]['accuracy'])

@pytest.mark.parametrize('preds,msg', [(torch.tensor([0.9, 0.2, 0.7]), 'predicted classes must be integers'),
                                       (torch.randn(3, 1), 'scores for 1 class'),
                                       (torch.tensor([[0.1, 0.9], [float('nan'), 0.], [0.3, 0.2]]), '1 of 3 predictions hold NaN')])
def test_accuracy_refuses_what_it_would_score_silently_wrong(preds, msg):
    "Probabilities [batch], one-column logits and NaN scores used to give 0.0, 0.25 or class 0 without an error."
    with pytest.raises(ValueError, match=msg): Accuracy().update(preds, torch.tensor([1, 0, 1]))

def test_metrics_cb_scores_against_the_last_item_of_the_batch(capsys):
    "With batches (x, k, y) and TrainCB(n_inp=2) the targets are y, not k."
    from miniai.learner import Learner, TrainCB
    class TwoInputs(nn.Module):
        def __init__(self): super().__init__(); self.lin = nn.Linear(4, 2)
        def forward(self, x, k): return self.lin(x)
    batches = [(x, torch.full_like(y, 7), y) for x, y in data(64, 32, 0)]
    metrics = MetricsCB(Accuracy())
    learn = Learner(TwoInputs(), DLs(batches, batches), F.cross_entropy, lr=0.1, cbs=[TrainCB(n_inp=2), metrics])
    learn.fit(1)
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[2] for b in batches])
    with torch.no_grad(): preds = learn.model(x, None)
    assert math.isclose(metrics.history[-1]['accuracy'], (preds.argmax(1) == y).float().mean().item(), rel_tol=1e-6)

def test_metrics_cb_names_a_dict_batch():
    metrics = MetricsCB(Accuracy())
    learn = type('L', (), dict(batch={'x': torch.zeros(2), 'y': torch.zeros(2)}, preds=torch.zeros(2, 2), loss=torch.tensor(0.)))()
    with pytest.raises(TypeError, match='a batch of inputs then targets'): metrics.after_batch(learn)
