"The fast kernels of lesson 01h at the edges torch handles: empty matrices, NaN and infinity, odd dtypes; and what the module exports."
import numpy as np
import pytest, torch
from hypothesis import given, settings, strategies as st
from miniai import fastmatmul as fm

KERNELS = [fm.matmul_ijk_numba, fm.matmul_ikj_numba, fm.matmul_blocked_numba, fm.matmul_packed_numba, fm.matmul_tiled_numba, fm.matmul_parallel_numba]
ids = lambda f: f.__name__

@pytest.mark.parametrize('kernel', KERNELS, ids=ids)
@pytest.mark.parametrize('m,k,n', [(0, 3, 4), (3, 0, 4), (3, 4, 0), (0, 0, 0), (0, 5, 0)])
def test_empty_like_torch(kernel, m, k, n):
    a, b = torch.rand(m, k), torch.rand(k, n)
    result = kernel(a, b)
    assert result.shape == (m, n) and result.dtype == torch.float32 and torch.equal(result, a @ b)

def test_parallel_kernel_itself_survives_zero_rows():
    "The compiled kernel, not only its wrapper, must not divide by zero on an empty matrix."
    a, b, c = (np.zeros(s, np.float32) for s in ((0, 3), (3, 4), (0, 4)))
    fm.parallel_kernel(a, b, c)

@pytest.mark.parametrize('kernel', KERNELS, ids=ids)
def test_nan_and_inf_propagate_like_torch(kernel):
    a = torch.tensor([[float('nan'), 1., 2.], [1., 1., 1.], [-float('inf'), 0., 1.]])
    b = torch.tensor([[1., 0.], [0., float('inf')], [2., 3.]])
    expected, result = a @ b, kernel(a, b)
    assert torch.equal(result.isnan(), expected.isnan()) and torch.equal(result.isinf(), expected.isinf())
    finite = expected.isfinite()
    assert torch.allclose(result[finite], expected[finite])

def test_fastmath_assumes_nothing_about_nan():
    "nnan/ninf would let LLVM assume no NaN or infinity: only fusing multiply-adds is allowed."
    assert fm.FASTMATH == {'contract'}

@pytest.mark.parametrize('kernel', KERNELS, ids=ids)
@pytest.mark.parametrize('dtype', [torch.complex64, torch.complex128, torch.bool])
def test_complex_and_bool_refused(kernel, dtype):
    a = torch.ones(2, 2, dtype=dtype)
    with pytest.raises(TypeError, match=str(dtype)): kernel(a, torch.ones(2, 2))
    with pytest.raises(TypeError, match=str(dtype)): kernel(torch.ones(2, 2), a)

@pytest.mark.parametrize('kernel', KERNELS, ids=ids)
@settings(max_examples=10)
@given(dtype=st.sampled_from([torch.int32, torch.int64, torch.float16, torch.float64]), m=st.integers(1, 6), k=st.integers(1, 6), n=st.integers(1, 6))
def test_real_dtypes_become_float32(kernel, dtype, m, k, n):
    a, b = torch.randint(-5, 6, (m, k)).to(dtype), torch.randint(-5, 6, (k, n)).to(dtype)
    result = kernel(a, b)
    assert result.dtype == torch.float32 and torch.equal(result, a.double() @ b.double())   # small integers: exact

def test_all_lists_what_a_learner_calls():
    assert set(fm.__all__) == {'matmul_ijk_numba', 'matmul_ikj_numba', 'matmul_blocked_numba', 'matmul_packed_numba', 'matmul_tiled_numba',
                               'matmul_parallel_numba', 'micro_kernel_source', 'kernel_asm', 'count_instructions'}

def test_count_instructions_defaults_to_fmas():
    counts = fm.count_instructions(fm.ikj_kernel)
    assert set(counts) == {'vector_fma', 'scalar_fma'} and counts['vector_fma'] > 0
    assert fm.count_instructions(fm.ijk_kernel)['vector_fma'] == 0
    assert fm.count_instructions(fm.ikj_kernel, ret=r'ret\w*')['ret'] >= 1

def test_kernel_asm_needs_a_compiled_kernel():
    from numba import njit
    with pytest.raises(ValueError, match='not been compiled'): fm.kernel_asm(njit(lambda x: x))
