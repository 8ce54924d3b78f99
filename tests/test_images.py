"Lesson 01d's display helpers: image shapes, grid sizes and the errors for bad arguments."
import matplotlib
matplotlib.use('Agg')
import math
import matplotlib.pyplot as plt
import numpy as np, pytest, torch
from hypothesis import given, strategies as st
from miniai.images import show_image, show_images, subplots, get_grid, _as_image, _grid_shape

@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close('all')

@pytest.mark.parametrize('shape,expected', [((784,), (28, 28)), ((28, 28), (28, 28)), ((3, 5, 7), (5, 7, 3)), ((5, 7, 3), (5, 7, 3)),
                                            ((1, 5, 7), (5, 7)), ((5, 7, 1), (5, 7)), ((4, 5, 7), (5, 7, 4))])
def test_as_image_shapes(shape, expected):
    assert tuple(_as_image(torch.rand(shape)).shape) == expected
    assert tuple(_as_image(np.random.rand(*shape)).shape) == expected

@pytest.mark.parametrize('shape', [(99,), (0,), (0, 5), (3, 0), (0, 4, 3), (5, 28, 28), (2, 3, 4, 5)])
def test_as_image_rejects_non_images(shape):
    with pytest.raises(ValueError, match=rf'got shape \({", ".join(map(str, shape))},?\)'): _as_image(torch.rand(shape))

def test_show_image_titles_and_axes():
    ax = show_image(torch.rand(4, 4, requires_grad=True), title=torch.tensor(7))
    assert ax.get_title() == '7' and not ax.axison

@given(n=st.integers(1, 200), nrows=st.none() | st.integers(1, 20), ncols=st.none() | st.integers(1, 20))
def test_grid_shape_is_the_smallest_that_holds_n(n, nrows, ncols):
    if nrows and ncols and nrows * ncols < n:
        with pytest.raises(ValueError, match=f'fewer than the {n} asked for'): _grid_shape(n, nrows, ncols)
        return
    rows, cols = _grid_shape(n, nrows, ncols)
    assert rows * cols >= n and rows == (nrows or rows) and cols == (ncols or cols)
    if ncols is None: assert rows * (cols - 1) < n  # no spare column
    if nrows is None: assert (rows - 1) * cols < n  # no spare row
    if nrows is None and ncols is None: assert rows == math.isqrt(n)

@pytest.mark.parametrize('n,nrows,ncols,shape', [(10, None, None, (3, 4)), (10, None, 4, (3, 4)), (10, 2, None, (2, 5)), (3, None, 1, (3,)), (3, 1, None, (3,))])
def test_get_grid_switches_off_spare_axes(n, nrows, ncols, shape):
    fig, axs = get_grid(n, nrows, ncols, title='grid')
    assert axs.shape == shape and [ax.axison for ax in axs.flat] == [True] * n + [False] * (axs.size - n)
    assert fig._suptitle.get_text() == 'grid'

def test_get_grid_default_is_about_square():
    assert [get_grid(n)[1].shape for n in (1, 4, 10, 16)] == [(1,), (2, 2), (3, 4), (4, 4)]

@pytest.mark.parametrize('kwargs,msg', [(dict(n=0), 'n must be a positive integer, got 0'), (dict(n=4, ncols=0), 'ncols must be a positive integer, got 0'),
                                        (dict(n=4, nrows=-1), 'nrows must be a positive integer, got -1'), (dict(n=4, ncols=True), 'got True'),
                                        (dict(n=4, ncols=2.0), 'got 2.0'), (dict(n=10, nrows=2, ncols=4), 'holds 8 axes')])
def test_get_grid_bad_arguments(kwargs, msg):
    with pytest.raises(ValueError, match=msg): get_grid(**kwargs)

def test_numpy_integers_are_sizes():
    fig, axs = get_grid(np.int64(6), ncols=np.int32(3))
    assert axs.shape == (2, 3)

def test_subplots_always_gives_an_array_sized_per_image():
    fig, axs = subplots(imsize=2, suptitle='t')
    assert isinstance(axs, np.ndarray) and axs.shape == (1,) and tuple(fig.get_size_inches()) == (2, 2)
    assert fig._suptitle.get_text() == 't'
    fig, axs = subplots(2, 3, imsize=1)
    assert axs.shape == (2, 3) and tuple(fig.get_size_inches()) == (3, 2)

def test_titles_get_room():
    "Constrained layout by default, so a suptitle never overlaps the images' titles; the caller can still choose."
    assert type(subplots(suptitle='t')[0].get_layout_engine()).__name__ == 'ConstrainedLayoutEngine'
    assert subplots(layout=None)[0].get_layout_engine() is None

def test_show_images_titles_and_grid():
    fig = show_images(torch.rand(5, 28, 28), ncols=3, titles=torch.arange(5), suptitle='five')
    assert len(fig.axes) == 6 and [ax.get_title() for ax in fig.axes[:5]] == list('01234')
    assert [ax.axison for ax in fig.axes] == [False] * 6
    assert tuple(fig.get_size_inches()) == pytest.approx((3 * 1.2, 2 * 1.2))

@pytest.mark.parametrize('kwargs,msg', [(dict(ncols=0), 'ncols must be a positive integer, got 0'), (dict(titles=['a', 'b']), '2 titles for 5 images'),
                                        (dict(titles=list('abcdef')), '6 titles for 5 images'), (dict(nrows=1, ncols=2), 'holds 2 axes')])
def test_show_images_bad_arguments(kwargs, msg):
    with pytest.raises(ValueError, match=msg): show_images(torch.rand(5, 28, 28), **kwargs)

def test_show_images_needs_images():
    with pytest.raises(ValueError, match='at least one image'): show_images([])
