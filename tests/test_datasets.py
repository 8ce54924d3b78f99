"""Lesson 05b: rows and batches of `DictDataset` agree, transforms run lazily and once per batch, `collate_batch`
matches PyTorch's `default_collate` on random rows, and `DataLoaders.from_dd` covers every row."""
import numpy as np, pytest, torch
from hypothesis import given, strategies as st
from hypothesis.extra.numpy import arrays
from torch.utils.data import default_collate
from miniai.datasets import DataLoaders, DatasetDict, DictDataset, collate_batch, collate_dict, fashion_dd, inplace
from strategies import collatable_rows, small_floats

def same(a, b):
    "Equal structure, types and values, counting a tuple and a list as the same (PyTorch collates tuples into lists)."
    if isinstance(a, torch.Tensor): return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict): return isinstance(b, dict) and list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)): return isinstance(b, (tuple, list)) and len(a) == len(b) and all(map(same, a, b))
    return a == b

@given(collatable_rows())
def test_collate_batch_matches_default_collate(rows):
    assert same(collate_batch(rows), default_collate(rows))

@given(collatable_rows())
def test_collate_batch_keeps_tuples(rows):
    if isinstance(rows[0], (dict, tuple)): assert type(collate_batch(rows)) is type(rows[0])

def test_collate_errors():
    with pytest.raises(ValueError, match='empty'): collate_batch([])
    with pytest.raises(ValueError, match=r'different lengths cannot be collated: \[1, 2\]'): collate_batch([(1, 2), (3,)])
    with pytest.raises(TypeError, match='cannot collate rows of type object'): collate_batch([object()])

@st.composite
def datasets(draw):
    "A DictDataset of 1-30 rows with a float tensor column, an int array column and a list column, and some row indices."
    n = draw(st.integers(1, 30))
    x = torch.from_numpy(draw(arrays('float32', (n, draw(st.integers(1, 4))), elements=small_floats)))
    ds = DictDataset({'x': x, 'y': np.arange(n) * 3, 'name': [f'row{i}' for i in range(n)]})
    return ds, draw(st.lists(st.integers(-n, n - 1), max_size=8))

@given(datasets())
def test_batches_are_rows_stacked(case):
    ds, idxs = case
    batch, rows = ds[idxs], [ds[i] for i in idxs]
    assert same(list(ds.__getitems__(idxs)), rows) and len(ds.__getitems__(idxs)) == len(idxs)
    assert batch['name'] == [r['name'] for r in rows] and list(batch['y']) == [r['y'] for r in rows]
    if idxs: assert torch.equal(batch['x'], torch.stack([r['x'] for r in rows]))
    assert ds[:]['name'] == ds.columns['name'] and len(ds[::2]['name']) == len(range(len(ds))[::2])

@given(datasets())
def test_transform_runs_lazily_once_per_read(case):
    ds, idxs = case
    calls = []
    @inplace
    def double(b):
        calls.append(len(b['name']))
        b['x'] = b['x'] * 2
    tds = ds.with_transform(double)
    assert calls == [] and tds.columns['x'] is ds.columns['x'] and ds.transform is None
    rows = tds.__getitems__(idxs)
    assert calls == [len(idxs)]
    assert all(torch.equal(r['x'], ds[i]['x'] * 2) for r, i in zip(rows, idxs))
    if len(ds): tds[0]; assert calls[-1] == 1

@given(datasets(), st.booleans())
def test_collating_a_whole_batch_equals_collating_its_rows(case, listify):
    "`collate_batch` takes a `BatchRows` batch as it is; that must equal stacking its rows one by one, and PyTorch's way."
    ds, idxs = case
    if not idxs: return
    @inplace
    def tfm(b):
        b['x'] = [x + 1 for x in b['x']] if listify else b['x'] + 1   # a list of tensors, or one tensor
    rows = ds.with_transform(tfm).__getitems__(idxs)
    fast, slow = collate_batch(rows), collate_batch(list(rows))
    assert same(fast, slow) and same(fast, default_collate(rows)) and same(fast, default_collate(list(rows)))

def test_inplace_returns_the_same_object():
    b = {'a': 1}
    def bump(b): b['a'] += 1
    assert inplace(bump)(b) is b and b == {'a': 2} and inplace(bump).__name__ == 'bump'

def test_dataset_errors():
    ds = DictDataset({'a': torch.arange(3)})
    with pytest.raises(IndexError, match='row 3 is out of range for a dataset of 3 rows'): ds[3]
    with pytest.raises(TypeError): ds['a']
    with pytest.raises(ValueError, match="same length; got {'a': 3, 'b': 2}"): DictDataset({'a': [1, 2, 3], 'b': [1, 2]})
    assert ds[np.int64(1)]['a'] == 1 and ds[torch.tensor(2)]['a'] == 2 and ds[torch.tensor([2, 0])]['a'].tolist() == [2, 0]
    assert repr(ds) == "DictDataset(column_names=['a'], num_rows=3)"

def test_collate_dict_orders_columns():
    ds = DictDataset({'y': torch.tensor([1, 2]), 'x': torch.tensor([[1.], [2.]])})
    yb, xb = collate_dict(ds)(ds.__getitems__([1, 0]))
    assert yb.tolist() == [2, 1] and xb.tolist() == [[2.], [1.]]

def test_from_dd_covers_every_row():
    n = 70
    dd = DatasetDict(train=DictDataset({'x': torch.arange(n).float()[:, None], 'y': torch.arange(n)}),
                     valid=DictDataset({'x': torch.zeros(9, 1), 'y': torch.arange(9)}))
    tdd = dd.with_transform(inplace(lambda b: b.update(x=b['x'] + 1)))
    assert isinstance(tdd, DatasetDict) and 'train:' in repr(tdd)
    dls = DataLoaders.from_dd(tdd, batch_size=16)
    batches = list(dls.train)
    assert [len(yb) for _, yb in batches] == [16] * 4 + [6]
    ys = torch.cat([yb for _, yb in batches])
    assert sorted(ys.tolist()) == list(range(n)) and ys.tolist() != list(range(n))   # all rows, shuffled
    assert all(torch.equal(xb[:, 0], yb.float() + 1) for xb, yb in batches)
    assert [len(yb) for _, yb in dls.valid] == [9]
    as_dicts = DataLoaders.from_dd(dd, batch_size=8, as_tuple=False)
    assert set(next(iter(as_dicts.valid))) == {'x', 'y'}
    with pytest.raises(KeyError, match=r"\['valid'\] missing"): DataLoaders.from_dd(DatasetDict(train=dd['train']), 8)

def test_fashion_dd_offline(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv('MINIAI_OFFLINE', '1')
    dd = fashion_dd(tmp_path/'data', system_dir=tmp_path/'no-system-copy')
    assert 'sample bundled with miniai' in capsys.readouterr().out
    assert list(dd) == ['train', 'valid'] and (len(dd['train']), len(dd['valid'])) == (3000, 1000)
    row = dd['train'][0]
    assert row['image'].shape == (28, 28) and row['image'].dtype == torch.uint8 and row['label'].dtype == torch.int64

@pytest.mark.parametrize('mask', [[True, False, True], torch.tensor([True, False, True]), np.array([True, False, True])])
def test_boolean_mask_picks_the_same_rows_in_every_column(mask):
    "A mask picks rows, as in PyTorch and NumPy: list columns used to read True/False as rows 1 and 0."
    ds = DictDataset({'x': torch.arange(3), 'name': ['a', 'b', 'c'], 'y': np.arange(3) * 10})
    rows = ds[mask]
    assert rows['x'].tolist() == [0, 2] and rows['name'] == ['a', 'c'] and rows['y'].tolist() == [0, 20]

def test_boolean_mask_of_the_wrong_length_is_refused():
    ds = DictDataset({'x': torch.arange(3), 'name': ['a', 'b', 'c']})
    with pytest.raises(IndexError, match='mask of 2 values for a dataset of 3 rows'): ds[[True, False]]

@pytest.mark.parametrize('rows', [[1, 2.5], [2.5, 1], [True, 2]])
def test_collate_refuses_rows_of_mixed_number_types(rows):
    "Its dtype would depend on which row came first (float32 for [1, 2.5], float64 for [2.5, 1], as default_collate does)."
    with pytest.raises(TypeError, match='rows mix'): collate_batch(rows)

def test_collate_refuses_dict_rows_with_other_keys():
    "default_collate keeps the first row's keys: a key that only later rows have was dropped without a word."
    with pytest.raises(ValueError, match=r"rows have different keys: \['a'\] in row 0, \['a', 'b'\] in row 1"):
        collate_batch([{'a': 1}, {'a': 2, 'b': 3}])

def test_head_takes_the_first_rows_and_refuses_what_slicing_would_misread():
    ds = DictDataset({'x': torch.arange(5), 'name': list('abcde')}, transform=lambda b: b)
    h = ds.head(2)
    assert h[[0, 1]]['x'].tolist() == [0, 1] and len(h) == 2 and h.columns['name'] == ['a', 'b'] and h.transform is ds.transform
    assert len(ds.head(9)) == 5   # all of them, as slicing gives
    for n in (-5, 0, 2.5, True):   # [:-5] would keep all but 5 rows; [:0] none
        with pytest.raises(ValueError, match=f'a whole number of at least 1, got {n!r}'): ds.head(n)

def test_fashion_loaders_refuse_a_negative_n_train(monkeypatch, tmp_path):
    "trained_vae(n_train=-5) used to train on 59,995 images (a [:-5] slice) and name its file _n-5."
    from miniai.datasets import fashion_dls, fashion32_dls
    monkeypatch.setenv('MINIAI_DATA', str(tmp_path)); monkeypatch.setenv('IN_TEST', '1')
    for loader in (fashion_dls, fashion32_dls):
        with pytest.raises(ValueError, match='at least 1, got -5'): loader(n_train=-5, verbose=False)
