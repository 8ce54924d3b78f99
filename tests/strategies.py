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

@st.composite
def batch_shapes(draw, min_batch=1, max_dims=4):
    "A tensor shape [batch, channels, *spatial] with 0-2 spatial dimensions, each size 1-6 (batch at least `min_batch`)."
    n_spatial = draw(st.integers(0, max_dims - 2))
    return (draw(st.integers(min_batch, 6)), draw(st.integers(1, 5)), *[draw(st.integers(1, 6)) for _ in range(n_spatial)])
