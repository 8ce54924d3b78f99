"Hypothesis strategies shared by the property tests."
import torch
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

small_floats = st.floats(-100, 100, allow_nan=False, allow_infinity=False, width=32)
dims = st.integers(1, 9)

@st.composite
def matmul_pairs(draw, transposed=st.booleans()):
    "Two float32 matrices that can be multiplied (1xn and nx1 included), each possibly non-contiguous."
    m, k, n = draw(dims), draw(dims), draw(dims)
    def matrix(rows, cols):
        if draw(transposed): return torch.from_numpy(draw(arrays('float32', (cols, rows), elements=small_floats))).T
        return torch.from_numpy(draw(arrays('float32', (rows, cols), elements=small_floats)))
    return matrix(m, k), matrix(k, n)
