"Augmentations keep shapes, dtypes and labels, are seeded, and do what they say; dropout (per activation and per channel), the callback, TTA, test-time dropout, ensembles and save/load."
import pytest, torch
from torch import nn
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from miniai.augment import (pad_crop, random_crop, random_flip, erase_mask, random_erase, random_copy, BatchAugment,
                            BatchTransformCB, Dropout, Dropout2d, dropout_train, get_preds, hflip, tta_preds,
                            tt_dropout_preds, ensemble_preds)
from miniai.store import load_model, save_model
from miniai.learner import Callback, TrainLearner, DeviceCB

def gen(seed): return torch.Generator().manual_seed(seed)
def images(n=8, c=1, h=28, w=28, seed=0): return torch.randn(n, c, h, w, generator=gen(seed))

AUGMENTS = {
    'crop': lambda x, g: random_crop(x, 2, generator=g),
    'flip': lambda x, g: random_flip(x, 0.5, generator=g),
    'erase': lambda x, g: random_erase(x, 0.5, generator=g),
    'copy': lambda x, g: random_copy(x, 0.5, generator=g),
    'all': lambda x, g: BatchAugment(pad=2, erase_p=0.5, copy_p=0.5, seed=g.initial_seed())(x),
}

@pytest.mark.parametrize('name', AUGMENTS)
def test_shape_dtype_seeded(name):
    f, x = AUGMENTS[name], images(64, c=3, h=12, w=10)
    for dtype in (torch.float32, torch.float64):
        xd = x.to(dtype)
        a, b, c = f(xd, gen(1)), f(xd, gen(1)), f(xd, gen(2))
        assert a.shape == xd.shape and a.dtype == dtype
        assert torch.equal(a, b), 'same seed, different output'
        assert not torch.equal(a, c), 'different seeds, same output'
        assert not torch.equal(a, xd), 'the batch was not changed at all'
    x0 = x.clone(); f(x, gen(1))
    assert torch.equal(x, x0), 'the input batch was modified in place'

@pytest.mark.parametrize('name', AUGMENTS)
def test_images_move_independently(name):
    "Per-image randomness: a batch of identical images does not come out identical."
    x = images(1).repeat(32, 1, 1, 1)
    out = AUGMENTS[name](x, gen(0))
    assert len({o.numpy().tobytes() for o in out}) > 1

def test_crop_and_flip_keep_integer_images():
    x = torch.randint(0, 256, (16, 1, 8, 8), generator=gen(0), dtype=torch.uint8)
    for out in (random_crop(x, 1, generator=gen(0)), random_flip(x, generator=gen(0))):
        assert out.dtype == torch.uint8 and out.shape == x.shape

@settings(max_examples=40)
@given(n=st.integers(1, 5), c=st.integers(1, 3), h=st.integers(1, 7), w=st.integers(1, 7), pad=st.integers(0, 3),
       fill=st.floats(-2, 2, allow_nan=False), seed=st.integers(0, 2**16))
def test_pad_crop_equals_pad_then_slice(n, c, h, w, pad, fill, seed):
    g = gen(seed)
    x = torch.randn(n, c, h, w, generator=g)
    top, left = torch.randint(0, 2 * pad + 1, (n,), generator=g), torch.randint(0, 2 * pad + 1, (n,), generator=g)
    padded = F.pad(x, (pad,) * 4, value=fill)
    ref = torch.stack([padded[i, :, t:t + h, l:l + w] for i, (t, l) in enumerate(zip(top.tolist(), left.tolist()))])
    assert torch.equal(pad_crop(x, top, left, pad, fill=fill), ref)
    assert torch.equal(pad_crop(x, torch.full((n,), pad), torch.full((n,), pad), pad), x)

def test_crop_identity_and_default_fill():
    x = images()
    assert torch.equal(random_crop(x, 0, generator=gen(0)), x)
    out = pad_crop(x, torch.zeros(8), torch.zeros(8), 1)          # shifted down-right: the first row is padding
    assert torch.equal(out[:, :, 0], x.amin((1, 2, 3))[:, None, None].expand(8, 1, 28))
    for pad in (1, 3):    # every offset 0..2*pad is used, and only those
        y = random_crop(torch.arange(25.).view(1, 1, 5, 5).repeat(400, 1, 1, 1) + 100, pad, fill=0., generator=gen(pad))
        assert ((y == 0).flatten(1).sum(1) <= 25 - (5 - pad) ** 2).all()

def test_crop_errors():
    x = images()
    with pytest.raises(ValueError, match='batch of images'): random_crop(x[0], 1)
    with pytest.raises(ValueError, match='offsets must lie'): pad_crop(x, torch.full((8,), 3), torch.zeros(8), 1)
    with pytest.raises(ValueError, match='one offset per image'): pad_crop(x, torch.zeros(7), torch.zeros(7), 1)
    with pytest.raises(ValueError, match='pad must be'): pad_crop(x, torch.zeros(8), torch.zeros(8), -1)

def test_flip():
    x = images(200)
    assert torch.equal(random_flip(random_flip(x, 1.), 1.), x)
    assert torch.equal(random_flip(x, 1.), hflip(x)) and torch.equal(hflip(hflip(x)), x)
    assert torch.equal(random_flip(x, 0.), x)
    assert torch.equal(random_flip(random_flip(x, generator=gen(4)), generator=gen(4)), x)
    out = random_flip(x, 0.5, generator=gen(0))
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    assert ((out == x).flatten(1).all(1) | flipped).all(), 'each image is either itself or its mirror image'
    assert 60 < flipped.sum() < 140

@settings(max_examples=30)
@given(h=st.integers(4, 30), w=st.integers(4, 30), lo=st.floats(0.05, 1), span=st.floats(0, 1), seed=st.integers(0, 2**16))
def test_erase_mask_is_one_rectangle_of_the_right_size(h, w, lo, span, seed):
    hi = min(1., lo + span)
    mask = erase_mask(50, h, w, p=1., size=(lo, hi), generator=gen(seed))
    assert mask.shape == (50, 1, h, w) and mask.dtype == torch.bool
    rows, cols = mask[:, 0].any(2).sum(1), mask[:, 0].any(1).sum(1)
    assert torch.equal(mask.flatten(1).sum(1), rows * cols), 'not a filled rectangle'
    for side, n in ((rows, h), (cols, w)):
        assert (side >= max(1, round(n * lo) - 1)).all() and (side <= min(n, round(n * hi) + 1)).all()

def test_erase_changes_only_the_rectangle():
    x = images(500)
    out, mask = random_erase(x, 0.5, generator=gen(7)), erase_mask(500, 28, 28, 0.5, generator=gen(7))
    changed = out != x
    assert not changed[~mask].any()
    assert changed[mask].float().mean() > 0.9        # noise almost never equals the pixel it replaces
    erased = mask.flatten(1).any(1)
    assert 200 < erased.sum() < 300
    assert out.min() >= x.min() and out.max() <= x.max()
    assert torch.equal(random_erase(x, 0., generator=gen(7)), x)
    with pytest.raises(TypeError, match='floating-point'): random_erase(x.to(torch.uint8))
    with pytest.raises(ValueError, match='size must be'): erase_mask(3, 5, 5, size=(0, 0.5))

@settings(max_examples=30)
@given(n=st.integers(1, 6), c=st.integers(1, 3), h=st.integers(1, 12), w=st.integers(1, 12), lo=st.floats(0.05, 1),
       span=st.floats(0, 1), seed=st.integers(0, 2**16))
def test_random_copy_equals_slice_copy(n, c, h, w, lo, span, seed):
    "Each image's destination rectangle holds the source rectangle's pixels (read before any change); nothing else moves."
    x, size = torch.randn(n, c, h, w, generator=gen(seed)), (lo, min(1., lo + span))
    out, mask = random_copy(x, 1., size, generator=gen(seed + 1)), erase_mask(n, h, w, 1., size, generator=gen(seed + 1))
    assert torch.equal(out[~mask.expand_as(x)], x[~mask.expand_as(x)])
    for i in range(n):
        rows, cols = mask[i, 0].any(1).nonzero().flatten(), mask[i, 0].any(0).nonzero().flatten()
        patch = out[i][:, rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        hits = [(t, l) for t in range(h - len(rows) + 1) for l in range(w - len(cols) + 1)
                if torch.equal(x[i][:, t:t + len(rows), l:l + len(cols)], patch)]
        assert hits, 'the patch is not a rectangle of the original image'

def test_random_copy_keeps_values_and_p():
    x = images(300)
    out = random_copy(x, 0.5, generator=gen(2))
    changed = (out != x).flatten(1).any(1)
    assert 100 < changed.sum() < 200
    assert all(set(out[i].unique().tolist()) <= set(x[i].unique().tolist()) for i in range(300))
    assert torch.equal(random_copy(x, 0., generator=gen(2)), x)
    with pytest.raises(ValueError, match='size must be'): random_copy(x, size=(0.5, 0.1))
    with pytest.raises(ValueError, match='batch of images'): random_copy(x[0])

def test_batch_augment():
    x = images(32)
    assert torch.equal(BatchAugment(seed=3)(x), BatchAugment(seed=3)(x))
    aug = BatchAugment(seed=3)
    assert not torch.equal(aug(x), aug(x)), 'a new draw for every batch'
    assert torch.equal(BatchAugment(pad=0, flip_p=0, erase_p=0)(x), x)
    assert not torch.equal(BatchAugment(pad=0, flip_p=0, erase_p=0, copy_p=1.)(x), x)
    assert torch.equal(BatchAugment(copy_p=0, seed=3)(x), BatchAugment(seed=3)(x)), 'copy_p=0 draws nothing'
    assert BatchAugment().seed != BatchAugment().seed
    assert 'pad=1' in repr(BatchAugment())

def test_dropout():
    x = torch.randn(200_000, generator=gen(0)) + 3
    for p in (0.1, 0.5, 0.8):
        torch.manual_seed(0)
        d = Dropout(p)
        y = d(x)
        assert abs((y == 0).float().mean() - p) < 0.01
        torch.testing.assert_close(y[y != 0], x[y != 0] / (1 - p))
        assert abs(y.mean() - x.mean()) < 0.05
        d.eval()
        assert d(x) is x
    assert torch.equal(Dropout(1.)(x), torch.zeros_like(x)) and torch.equal(Dropout(0.)(x), x)
    for p in (-0.1, 1.1):
        with pytest.raises(ValueError, match='between 0 and 1'): Dropout(p)
    torch.manual_seed(1); a = Dropout(0.5)(x)
    torch.manual_seed(1); b = Dropout(0.5)(x)
    assert torch.equal(a, b)

def test_dropout2d_against_pytorch():
    x = torch.randn(2000, 32, 3, 3, generator=gen(0)) + 3
    for p in (0.1, 0.5):
        for d in (Dropout2d(p), nn.Dropout2d(p)):
            torch.manual_seed(0)
            y = d(x)
            zeroed = (y == 0).flatten(2).all(2)
            assert abs(zeroed.float().mean() - p) < 0.01
            torch.testing.assert_close(y[~zeroed], x[~zeroed] / (1 - p)), 'survivors scaled whole'
            assert abs(y.mean() - x.mean()) < 0.05
    assert torch.equal(Dropout2d(0.5).eval()(x), x) and torch.equal(Dropout2d(1.)(x), torch.zeros_like(x))
    with pytest.raises(ValueError, match='between 0 and 1'): Dropout2d(1.5)
    with pytest.raises(ValueError, match='batch of images'): Dropout2d(0.5)(torch.randn(4, 3))

class Recorder(Callback):
    order = BatchTransformCB.order + 1
    def before_fit(self, learn): self.seen = []
    def before_batch(self, learn): self.seen.append((learn.training, learn.batch[0].clone(), learn.batch[1].clone()))

class DLs:
    train = [(torch.ones(4, 1, 3, 3), torch.tensor([0, 1, 2, 3]))]
    valid = [(torch.ones(6, 1, 3, 3), torch.tensor([3, 2, 1, 0, 1, 2]))]

@pytest.mark.parametrize('on_train,on_valid', [(True, False), (False, True), (True, True), (False, False)])
def test_callback_acts_only_where_asked(on_train, on_valid):
    rec = Recorder()
    model = nn.Sequential(nn.Flatten(), nn.Linear(9, 4))
    TrainLearner(model, DLs, F.cross_entropy, cbs=[DeviceCB('cpu'), BatchTransformCB(lambda x: x * -2, on_train, on_valid), rec]).fit(2)
    assert [t for t, _, _ in rec.seen] == [True, False, True, False]
    for training, xb, yb in rec.seen:
        acts = on_train if training else on_valid
        assert torch.equal(xb, torch.full_like(xb, -2. if acts else 1.))
        assert torch.equal(yb, (DLs.train if training else DLs.valid)[0][1]), 'labels changed'

def test_callback_runs_after_device_cb():
    assert BatchTransformCB(hflip).order > DeviceCB.order

def small_model(width=4):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 3))

def test_get_preds_and_tta():
    model = small_model()
    dl = [(images(5, seed=i), torch.arange(5) % 3) for i in range(3)]
    preds, targets = get_preds(model, dl)
    assert preds.shape == (15, 3) and torch.equal(targets, torch.arange(5).repeat(3) % 3)
    assert not model.training
    with torch.no_grad(): torch.testing.assert_close(preds[:5], model(dl[0][0]))
    probs, _ = tta_preds(model, dl)
    flipped, _ = get_preds(model, dl, hflip)
    torch.testing.assert_close(probs, (preds.softmax(1) + flipped.softmax(1)) / 2)
    torch.testing.assert_close(tta_preds(model, dl, tfms=(None,))[0], preds.softmax(1))

def test_save_load_round_trip(tmp_path):
    model = small_model()
    with torch.no_grad(): model[1].running_mean.add_(1.5)      # buffers are saved too
    path = save_model(model, tmp_path/'m.pt')
    assert [p.name for p in tmp_path.iterdir()] == ['m.pt']
    torch.manual_seed(5)
    other = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    assert load_model(other, path) is other
    for (k, a), (_, b) in zip(model.state_dict().items(), other.state_dict().items()): assert torch.equal(a, b), k
    x = images(6)
    model.eval(); other.eval()
    assert torch.equal(model(x), other(x))

def test_save_is_atomic(tmp_path):
    path = save_model(small_model(), tmp_path/'m.pt')
    old = path.read_bytes()
    class Bad(nn.Module):
        def state_dict(self, *a, **k): return {'w': torch.zeros(2), 'f': lambda: 0}
    with pytest.raises(Exception): save_model(Bad(), path)
    assert path.read_bytes() == old and [p.name for p in tmp_path.iterdir()] == ['m.pt']

def test_load_errors(tmp_path):
    path = save_model(small_model(), tmp_path/'m.pt')
    with pytest.raises(FileNotFoundError, match='no saved model at'): load_model(small_model(), tmp_path/'missing.pt')
    (tmp_path/'junk.pt').write_bytes(b'junk')
    with pytest.raises(ValueError, match='not a state_dict saved by save_model'): load_model(small_model(), tmp_path/'junk.pt')
    torch.save([torch.zeros(2)], tmp_path/'list.pt')
    with pytest.raises(ValueError, match='holds a list'): load_model(small_model(), tmp_path/'list.pt')
    with pytest.raises(ValueError, match=r"0.weight is \(4, 1, 3, 3\) in the file but \(6, 1, 3, 3\)"): load_model(small_model(6), path)
    with pytest.raises(ValueError, match='missing from the file'): load_model(nn.Sequential(*small_model(), nn.Linear(3, 3)), path)
    with pytest.raises(ValueError, match='not in the model'): load_model(nn.Sequential(*list(small_model())[:-1]), path)
    m = small_model(); before = [p.clone() for p in m.parameters()]
    with pytest.raises(ValueError): load_model(m, tmp_path/'junk.pt')
    assert all(torch.equal(a, b) for a, b in zip(before, m.parameters())), 'a failed load changed the model'

def drop_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), Dropout2d(0.3),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.5), nn.Linear(8, 3))

def test_test_time_dropout():
    model, dl = drop_model(), [(images(5, seed=i), torch.arange(5) % 3) for i in range(2)]
    model.eval()
    assert dropout_train(model) == 2 and model[3].training and model[6].training and not model[1].training
    torch.manual_seed(1); a = get_preds(model, dl, dropout=True)[0]
    torch.manual_seed(1); b = get_preds(model, dl, dropout=True)[0]
    assert torch.equal(a, b) and not torch.equal(a, get_preds(model, dl)[0])
    assert not any(m.training for m in model.modules()), 'left in evaluation mode'
    torch.manual_seed(2); probs, targets = tt_dropout_preds(model, dl, n=4)
    torch.manual_seed(2); passes = [get_preds(model, dl, dropout=True)[0].softmax(1) for _ in range(4)]
    torch.testing.assert_close(probs, torch.stack(passes).mean(0))
    assert torch.equal(targets, torch.arange(5).repeat(2) % 3)
    with pytest.raises(ValueError, match='no dropout layers'): tt_dropout_preds(small_model(), dl)

def test_ensemble_preds():
    dl = [(images(5, seed=i), torch.arange(5) % 3) for i in range(2)]
    m1, m2 = small_model(), small_model(6)
    p1, p2 = get_preds(m1, dl)[0].softmax(1), get_preds(m2, dl)[0].softmax(1)
    torch.testing.assert_close(ensemble_preds([m1], dl)[0], p1)
    probs, targets = ensemble_preds([m1, m2], dl)
    torch.testing.assert_close(probs, (p1 + p2) / 2)
    assert torch.equal(targets, torch.arange(5).repeat(2) % 3)
    with pytest.raises(ValueError, match='at least one model'): ensemble_preds([], dl)
