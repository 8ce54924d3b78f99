"The vectorised Wichmann-Hill streams equal the scalar generator, stream by stream."
import numpy as np
import pytest, torch
from hypothesis import given, settings, strategies as st
from miniai.rng import WichmannHill
from miniai.fastrng import BELOW_ONE, WichmannHillStreams, rand_wh, stream_seeds

def scalar_float32(seed, steps):
    gen = WichmannHill(seed)
    return np.minimum(np.array([gen.rand() for _ in range(steps)], dtype=np.float32), BELOW_ONE)

@settings(max_examples=30, deadline=None)
@given(seeds=st.lists(st.integers(0, 2**80), min_size=1, max_size=37), steps=st.integers(1, 60))
def test_each_stream_is_the_scalar_generator(seeds, steps):
    block = WichmannHillStreams(seeds).rand(steps)
    assert block.shape == (steps, len(seeds)) and block.dtype == np.float32
    for i, seed in enumerate(seeds): np.testing.assert_array_equal(block[:, i], scalar_float32(seed, steps))

def test_state_carries_over_between_calls():
    streams = WichmannHillStreams([1, 2, 3])
    both = np.concatenate([streams.rand(4), streams.rand(5)])
    np.testing.assert_array_equal(both, WichmannHillStreams([1, 2, 3]).rand(9))

def test_many_streams_across_threads_long_run():
    seeds = stream_seeds(7, 5000)   # more streams than any thread block, odd split
    block = WichmannHillStreams(seeds).rand(3)
    for i in (0, 2499, 2500, 4999): np.testing.assert_array_equal(block[:, i], scalar_float32(seeds[i], 3))

def test_rand_flat_order_and_range():
    streams = WichmannHillStreams.from_seed(3, streams=8)
    flat = WichmannHillStreams.from_seed(3, streams=8).rand_flat(20)
    assert flat.dtype == torch.float32 and flat.shape == (20,)
    np.testing.assert_array_equal(flat.numpy(), streams.rand(3).reshape(-1)[:20])
    xs = rand_wh(200_000, seed=11)
    assert 0 <= xs.min() and xs.max() < 1
    counts = torch.histc(xs, bins=20, min=0, max=1)
    assert ((counts - 10_000) ** 2 / 10_000).sum() < 50   # loose chi-square, 19 degrees of freedom

def test_same_seed_same_numbers_fresh_seed_new_numbers():
    assert torch.equal(rand_wh(1000, seed=5), rand_wh(1000, seed=5))
    assert not torch.equal(rand_wh(1000), rand_wh(1000))

def test_bad_input():
    with pytest.raises(ValueError, match='at least one seed'): WichmannHillStreams([])
    with pytest.raises(ValueError, match='non-negative integer'): stream_seeds(-2, 3)
