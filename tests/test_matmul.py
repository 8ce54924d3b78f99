"Every matmul rung equals torch.matmul, on random shapes and layouts."
import numpy as np, pytest, torch
from hypothesis import given, settings, strategies as st
from strategies import matmul_pairs, cuda_blocks
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
@settings(max_examples=40)
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
@settings(max_examples=20)
@given(m=st.integers(1, 5), k=st.integers(1, 5), n=st.integers(1, 5), extra=st.integers(1, 3))
def test_mismatch_names_both_shapes(rung, m, k, n, extra):
    a, b = torch.randn(m, k), torch.randn(k + extra, n)
    with pytest.raises(ValueError, match=rf"can't multiply \({m}, {k}\) by \({k + extra}, {n}\)"): rung(a, b)

@pytest.mark.parametrize('rung', RUNGS, ids=lambda f: f.__name__)
def test_not_matrices(rung):
    with pytest.raises(ValueError, match=r'two matrices \(2-D\); got shapes \(3,\) and \(3, 2\)'): rung(torch.randn(3), torch.randn(3, 2))

@pytest.mark.parametrize('rung', RUNGS, ids=lambda f: f.__name__)
@pytest.mark.parametrize('dtype', [torch.bool, torch.complex64, torch.complex128])
def test_bool_and_complex_are_refused(rung, dtype):
    "torch.matmul refuses bool; compiled rungs would drop an imaginary part silently, so both are clear errors."
    a, b = torch.ones(2, 3, dtype=dtype), torch.ones(3, 2)
    with pytest.raises(TypeError, match=f'real numbers; got {dtype}'): rung(a, b)
    with pytest.raises(TypeError, match=f'real numbers; got {dtype}'): rung(b.T, a.T)

@pytest.mark.parametrize('block', [(16, 16), (8, 4), (1, 1), (32, 32), 64, (64,), (1024, 1), np.int64(7), (np.int32(3), 5)], ids=str)
def test_cuda_block_shapes(block):
    "Any block shape a GPU accepts gives the right product, 1-D ones included (a column of threads)."
    a, b = torch.randn(37, 5), torch.randn(5, 19)
    assert_matmul(mm.matmul_cuda(a, b, threads_per_block=block), a, b)

@settings(max_examples=25)
@given(pair=matmul_pairs(), block=cuda_blocks)
def test_cuda_any_block_shape_equals_torch(pair, block):
    "Blocks that overhang the matrix, or don't cover it in one block, still give exactly one thread per element."
    a, b = pair
    assert_matmul(mm.matmul_cuda(a, b, threads_per_block=block), a, b)

@pytest.mark.parametrize('block,msg', [((0, 0), 'positive integers, got \\(0, 0\\)'), ((16, 0), 'positive integers'), (0, 'positive integers, got 0'),
                                       ((4, 4, 4), 'one or two'), ((), 'one or two'), ((2.0, 2), 'positive integers'), ((True, 4), 'positive integers'),
                                       ('16', 'positive integers'), ((64, 32), '2048 threads is more than the 1024'), (1025, '1025 x 1 = 1025 threads')])
def test_cuda_bad_block_shapes(block, msg):
    with pytest.raises(ValueError, match=msg): mm.matmul_cuda(torch.randn(3, 4), torch.randn(4, 2), threads_per_block=block)

@pytest.mark.skipif(mm.cuda.is_available(), reason='a GPU is present')
def test_cuda_without_a_gpu():
    "Without a GPU the simulator runs the kernel, and asking for the GPU says there is none."
    a, b = torch.randn(3, 4), torch.randn(4, 2)
    assert_matmul(mm.matmul_cuda(a, b, simulate=True), a, b)
    with pytest.raises(RuntimeError, match='no CUDA GPU'): mm.matmul_cuda(a, b, simulate=False)

def test_importing_matmul_switches_nothing_process_wide():
    "No environment variable is set on import: numba's CUDA simulator stays an explicit choice."
    import subprocess, sys
    code = "import os, miniai.matmul, miniai.fastmatmul; print(os.environ.get('NUMBA_ENABLE_CUDASIM'))"
    env = {k: v for k, v in __import__('os').environ.items() if k != 'NUMBA_ENABLE_CUDASIM'}
    assert subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env, check=True).stdout.strip() == 'None'

MINIAI_RUNGS = RUNGS[:8]

@pytest.mark.parametrize('rung', MINIAI_RUNGS, ids=lambda f: f.__name__)
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16, torch.int32, torch.int64, torch.float64])
def test_other_dtypes_match_torch(rung, dtype):
    "Half-precision, integer and double inputs give torch's result type and, for small integers, exactly torch's values."
    a, b = torch.randint(-3, 4, (3, 4)).to(dtype), torch.randint(-3, 4, (4, 2)).to(dtype)
    result = rung(a, b)
    assert result.dtype == dtype and torch.equal(result, a @ b)

@pytest.mark.parametrize('rung', MINIAI_RUNGS, ids=lambda f: f.__name__)
@pytest.mark.parametrize('shapes', [((0, 3), (3, 2)), ((2, 0), (0, 3)), ((2, 3), (3, 0))], ids=str)
def test_empty_matrices(rung, shapes):
    a, b = torch.randn(*shapes[0]), torch.randn(*shapes[1])
    assert torch.equal(rung(a, b), a @ b)

def test_launch_kernel_visits_every_position_once():
    seen = []
    mm.launch_kernel(lambda grid, out: out.append(grid), 3, 2, seen)
    assert seen == [(i, j) for i in range(3) for j in range(2)]

@pytest.mark.parametrize('rung', BLOCKED, ids=lambda f: f.__name__)
@settings(max_examples=10)
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
