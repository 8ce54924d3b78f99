"Property tests for lessons 01b-01e: chunks, Matrix, the Wichmann-Hill generator."
import os, re, signal
import numpy as np, pytest, torch
from hypothesis import given, settings, strategies as st
from miniai.iterators import chunks, ichunks
from miniai.matrix import Matrix
from miniai.rng import WichmannHill, run_in_child
import miniai.rng as rng

sizes = st.integers(1, 12)

@given(st.lists(st.integers()), sizes)
def test_chunks_join_back(xs, size):
    parts = list(chunks(xs, size))
    assert [x for part in parts for x in part] == xs
    assert all(len(p) == size for p in parts[:-1]) and all(0 < len(p) <= size for p in parts)

@given(st.text(), sizes)
def test_chunks_keep_the_sequence_type(s, size):
    assert ''.join(chunks(s, size)) == s

@given(st.lists(st.integers()), sizes)
def test_ichunks_match_chunks_on_any_iterable(xs, size):
    assert list(ichunks(iter(xs), size)) == list(chunks(xs, size))

@pytest.mark.parametrize('f', [chunks, ichunks])
@pytest.mark.parametrize('size', [0, -3, 2.5, True, '2', None, np.int64(0)])
def test_bad_chunk_size_fails_at_the_call(f, size):
    "The error comes from the call itself, not from the first `next` (or never, as `range` with a negative step would)."
    with pytest.raises(ValueError, match=re.escape(f'positive integer, got {size!r}')): f([1, 2, 3], size)

@pytest.mark.parametrize('f', [chunks, ichunks])
@given(xs=st.lists(st.integers()), size=st.sampled_from([np.int8, np.int32, np.int64, np.uint16, int]).flatmap(lambda t: sizes.map(t)))
def test_numpy_integer_sizes(f, xs, size):
    assert [list(c) for c in f(xs, size)] == [xs[i:i + int(size)] for i in range(0, len(xs), int(size))]

@given(st.integers(1, 6), st.integers(1, 6), st.data())
def test_matrix_indexes_like_a_tensor(rows, cols, data):
    xs = data.draw(st.lists(st.lists(st.integers(-9, 9), min_size=cols, max_size=cols), min_size=rows, max_size=rows))
    m, t = Matrix(xs), torch.tensor(xs)
    assert m.shape == tuple(t.shape)
    i, j = data.draw(st.integers(-rows, rows - 1)), data.draw(st.integers(-cols, cols - 1))
    assert m[i, j] == t[i, j].item()
    with pytest.raises(IndexError, match=re.escape(f'out of range for a Matrix of shape {m.shape}')): m[rows, 0]

@given(st.integers(1, 6), st.integers(1, 6), st.data())
def test_matrix_takes_any_integer_index(rows, cols, data):
    "NumPy integers and 0-d integer tensors index a Matrix as they index a tensor or a list."
    xs = data.draw(st.lists(st.lists(st.integers(-9, 9), min_size=cols, max_size=cols), min_size=rows, max_size=rows))
    m, t = Matrix(xs), torch.tensor(xs)
    kind = data.draw(st.sampled_from([np.int64, np.int32, np.uint8, torch.tensor]))
    i, j = data.draw(st.integers(0, rows - 1)), data.draw(st.integers(0, cols - 1))
    assert m[kind(i), kind(j)] == t[kind(i), kind(j)].item() == xs[i][j]

@pytest.mark.parametrize('idx', [(True, 0), (0, False), (1.0, 0), (0, slice(0, 1)), 0, (0, 0, 0), (np.float64(1), 0)])
def test_matrix_rejects_non_integer_indices(idx):
    with pytest.raises(TypeError, match=r'two integers, as m\[i, j\]'): Matrix([[1, 2], [3, 4]])[idx]

def test_matrix_rejects_ragged_rows():
    with pytest.raises(ValueError, match=r'same length; got lengths \[1, 2\]'): Matrix([[1, 2], [3]])

def test_rng_reference_values():
    gen = WichmannHill(457428938475)
    assert gen.state == (4976, 20238, 499)
    assert [gen.rand() for _ in range(3)] == [0.7645251082582081, 0.7920889799553945, 0.06912886811267205]

@given(st.integers(0, 2**64))
@settings(max_examples=50)
def test_same_seed_same_sequence_in_unit_interval(a):
    g1, g2 = WichmannHill(a), WichmannHill(a)
    xs = [g1.rand() for _ in range(20)]
    assert xs == [g2.rand() for _ in range(20)] and all(0 <= x < 1 for x in xs)

def test_module_functions_reproduce():
    rng.seed(7); xs = [rng.rand() for _ in range(5)]
    rng.seed(7); assert [rng.rand() for _ in range(5)] == xs

def test_roughly_uniform():
    "Loose chi-square over 20 bins of 20,000 draws: 19 degrees of freedom, 99.99th percentile is about 50."
    gen, n, bins = WichmannHill(12345), 20_000, 20
    counts = [0] * bins
    for _ in range(n): counts[int(gen.rand() * bins)] += 1
    expected = n / bins
    assert sum((c - expected) ** 2 / expected for c in counts) < 50

def test_chi_square_catches_a_skewed_generator():
    "The uniformity check above can fail: squaring uniform numbers skews them towards 0."
    gen, n, bins = WichmannHill(12345), 20_000, 20
    counts = [0] * bins
    for _ in range(n): counts[int(gen.rand() ** 2 * bins)] += 1
    assert sum((c - n / bins) ** 2 / (n / bins) for c in counts) > 50

@pytest.mark.skipif(not hasattr(os, 'fork'), reason='needs os.fork')
def test_default_generator_diverges_after_fork():
    rng.seed(42)
    child = run_in_child(lambda: [rng.rand() for _ in range(5)])
    assert child != [rng.rand() for _ in range(5)]

@pytest.mark.skipif(not hasattr(os, 'fork'), reason='needs os.fork')
def test_explicit_generator_is_copied_by_fork():
    gen = WichmannHill(42)
    assert run_in_child(gen.rand) == gen.rand()

@pytest.mark.skipif(not hasattr(os, 'fork'), reason='needs os.fork')
def test_run_in_child_reports_failures():
    with pytest.raises(RuntimeError, match='ZeroDivisionError'): run_in_child(lambda: 1 / 0)

def no_children_left():
    "True if this process has no child processes, finished (zombie) or running."
    try: os.waitpid(-1, os.WNOHANG)
    except ChildProcessError: return True
    return False

def exits_3(): os._exit(3)
def killed(): os.kill(os.getpid(), signal.SIGKILL)

@pytest.mark.skipif(not hasattr(os, 'fork'), reason='needs os.fork')
@pytest.mark.parametrize('f,msg', [(lambda: 1 / 0, r'f\(\) failed in the child process: ZeroDivisionError: division by zero'),
                                   (lambda: (lambda: 0), "returned a function that can't be pickled"),
                                   (lambda: __import__('sys').exit(5), 'SystemExit: 5'),
                                   (exits_3, 'exited with code 3 without sending a result'),
                                   (killed, r'killed by signal 9 \(SIGKILL\) without sending a result')])
def test_run_in_child_reports_the_failure_and_reaps_the_child(f, msg):
    assert no_children_left()
    with pytest.raises(RuntimeError, match=msg): run_in_child(f)
    assert no_children_left()

@pytest.mark.skipif(not hasattr(os, 'fork'), reason='needs os.fork')
def test_run_in_child_returns_large_results():
    "A result bigger than a pipe's buffer (64 KiB on Linux) arrives whole, with no deadlock."
    assert run_in_child(lambda: bytes(range(256)) * 4096) == bytes(range(256)) * 4096
    assert no_children_left()

@pytest.mark.parametrize('bad', [-1, 1.5, '3', True, np.float64(2), np.int64(-1)])
def test_bad_seed(bad):
    with pytest.raises(ValueError, match='non-negative integer'): WichmannHill(bad)

@given(st.integers(0, 2**63 - 1))
@settings(max_examples=30)
def test_numpy_integer_seeds_equal_python_ones(a):
    assert WichmannHill(np.int64(a)).state == WichmannHill(a).state
