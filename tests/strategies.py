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

@st.composite
def conv_cases(draw):
    "Images, kernels, bias, stride and padding of a 2-D convolution where the (padded) image fits the kernel."
    batch, c_in, c_out = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    kh, kw, stride, padding = draw(st.integers(1, 5)), draw(st.integers(1, 5)), draw(st.integers(1, 3)), draw(st.integers(0, 2))
    h = draw(st.integers(max(1, kh - 2 * padding), 12))
    w = draw(st.integers(max(1, kw - 2 * padding), 12))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    x, weight = torch.randn(batch, c_in, h, w, generator=g), torch.randn(c_out, c_in, kh, kw, generator=g)
    bias = torch.randn(c_out, generator=g) if draw(st.booleans()) else None
    return x, weight, bias, stride, padding

IDX_DTYPES = ('uint8', 'int8', 'int16', 'int32', 'float32', 'float64')

@st.composite
def idx_arrays(draw, max_dims=3):
    "A NumPy array of a type the IDX format stores, 0 to `max_dims` dimensions of size 0-5, no NaNs."
    dtype = draw(st.sampled_from(IDX_DTYPES))
    shape = tuple(draw(st.lists(st.integers(0, 5), max_size=max_dims)))
    elements = st.floats(allow_nan=False, width=32 if dtype == 'float32' else 64) if dtype.startswith('float') else None
    return draw(arrays(dtype, shape, elements=elements))

_leaf = st.sampled_from([('int',), ('float',)]) | st.tuples(st.just('tensor'), st.lists(st.integers(1, 4), max_size=3).map(tuple))
row_structures = st.recursive(_leaf, lambda kids: st.tuples(st.just('dict'), st.dictionaries(st.text('abcxyz', min_size=1, max_size=3), kids, min_size=1, max_size=3))
                                                  | st.tuples(st.just('tuple'), st.lists(kids, min_size=1, max_size=3)), max_leaves=6)

@st.composite
def collatable_rows(draw, min_rows=1, max_rows=5):
    "Rows that collate: `min_rows` to `max_rows` of one random structure of dicts and tuples of tensors, ints and floats."
    structure = draw(row_structures)
    def fill(s):
        if s[0] == 'int': return draw(st.integers(-1000, 1000))
        if s[0] == 'float': return draw(small_floats)
        if s[0] == 'tensor': return torch.from_numpy(draw(arrays('float32', s[1], elements=small_floats)))
        if s[0] == 'dict': return {k: fill(v) for k, v in s[1].items()}
        return tuple(fill(v) for v in s[1])
    return [fill(structure) for _ in range(draw(st.integers(min_rows, max_rows)))]

def logit_rows(scale, infinities=False, min_cols=1):
    "Matrices of float64 logits in [-scale, scale] (with `infinities`, some -inf/+inf too), 1-6 rows by `min_cols`-12 columns."
    shapes = st.tuples(st.integers(1, 6), st.integers(min_cols, 12))
    elements = st.floats(-scale, scale, allow_nan=False)
    if infinities: elements = st.one_of(elements, st.sampled_from([float('-inf'), float('inf')]))
    return shapes.flatmap(lambda s: arrays('float64', s, elements=elements)).map(torch.from_numpy)

# CUDA block shapes a GPU accepts (at most 1024 threads): one number (a column of threads) or (rows, cols)
cuda_blocks = st.one_of(st.integers(1, 64), st.tuples(st.integers(1, 32), st.integers(1, 32)))
