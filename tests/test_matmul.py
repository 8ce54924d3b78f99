"Every matmul rung equals torch.matmul, on random shapes and layouts."
import pytest, torch
from hypothesis import given, settings, strategies as st
from strategies import matmul_pairs
from miniai import matmul as mm, fastmatmul as fm

RUNGS = [mm.matmul_loops, mm.matmul_numba, mm.matmul_elementwise, mm.matmul_dot, mm.matmul_bcast, mm.matmul_einsum, mm.matmul_grid, mm.matmul_cuda,
         fm.matmul_ijk_numba, fm.matmul_ikj_numba, fm.matmul_blocked_numba, fm.matmul_packed_numba, fm.matmul_tiled_numba, fm.matmul_parallel_numba]
BLOCKED = [fm.matmul_blocked_numba, fm.matmul_packed_numba, fm.matmul_tiled_numba, fm.matmul_parallel_numba]

def assert_matmul(result, a, b):
    "`result` equals a @ b (computed in float64) within float32 rounding: k * 2^-24 * (|a| @ |b|), with a margin."
    expected = torch.matmul(a.double(), b.double())
    bound = 2 * a.shape[1] * 2.0**-24 * torch.matmul(a.double().abs(), b.double().abs()) + 1e-6
    assert ((result.double() - expected).abs() <= bound).all(), (result, expected)

@pytest.mark.parametrize('rung', RUNGS, ids=lambda f: f.__name__)
@settings(max_examples=40, deadline=None)
@given(pair=matmul_pairs())
def test_rung_equals_torch(rung, pair):
    a, b = pair
    result = rung(a, b)
    assert result.shape == (a.shape[0], b.shape[1]) and result.dtype == torch.float32
    assert_matmul(result, a, b)

def test_non_contiguous_inputs():
    a, b = torch.randn(4, 3).T, torch.randn(2, 4).T
    assert not a.is_contiguous() and not b.is_contiguous()
    for rung in RUNGS: assert_matmul(rung(a, b), a, b)

@pytest.mark.parametrize('rung', RUNGS, ids=lambda f: f.__name__)
@settings(max_examples=20, deadline=None)
@given(m=st.integers(1, 5), k=st.integers(1, 5), n=st.integers(1, 5), extra=st.integers(1, 3))
def test_mismatch_names_both_shapes(rung, m, k, n, extra):
    a, b = torch.randn(m, k), torch.randn(k + extra, n)
    with pytest.raises(ValueError, match=rf"can't multiply \({m}, {k}\) by \({k + extra}, {n}\)"): rung(a, b)

@pytest.mark.parametrize('rung', RUNGS, ids=lambda f: f.__name__)
def test_not_matrices(rung):
    with pytest.raises(ValueError, match=r'two matrices \(2-D\); got shapes \(3,\) and \(3, 2\)'): rung(torch.randn(3), torch.randn(3, 2))

def test_launch_kernel_visits_every_position_once():
    seen = []
    mm.launch_kernel(lambda grid, out: out.append(grid), 3, 2, seen)
    assert seen == [(i, j) for i in range(3) for j in range(2)]

@pytest.mark.parametrize('rung', BLOCKED, ids=lambda f: f.__name__)
@settings(max_examples=10, deadline=None)
@given(m=st.integers(1, 40), k=st.sampled_from([1, fm.KC - 1, fm.KC, fm.KC + 3]), n=st.sampled_from([1, fm.NR + 1, fm.NC + fm.NR + 1]))
def test_blocked_kernels_across_block_edges(rung, m, k, n):
    "Shapes that straddle the KC, NC, MR and NR block edges, where packing and tile edges go wrong first."
    a, b = torch.rand(m, k), torch.rand(k, n)
    assert_matmul(rung(a, b), a, b)

def test_micro_kernel_source_compiles_and_multiplies():
    import numpy as np
    kernel = fm._compile_micro_kernel(3, 5)
    ap, bp, tile = np.random.rand(7, 3).astype(np.float32), np.random.rand(7, 5).astype(np.float32), np.empty((3, 5), np.float32)
    kernel(ap, bp, tile, 7)
    np.testing.assert_allclose(tile, ap.T @ bp, rtol=1e-5)
