"The vectorised Wichmann-Hill streams: exactly the scalar generator on raw seeds, unrelated streams by default, and dieharder's verdict."
import shutil, warnings
import numpy as np
import pytest, torch
from hypothesis import given, settings, strategies as st
from miniai.rng import WichmannHill
from miniai.fastrng import BELOW_ONE, WichmannHillStreams, dieharder, float_bits, rand_wh, stream_seeds

def scalar_float32(seed, steps):
    gen = WichmannHill(seed)
    return np.minimum(np.array([gen.rand() for _ in range(steps)], dtype=np.float32), BELOW_ONE)

def raw_streams(seeds):
    "Streams on raw seeds, without the warning about related seeds (hypothesis draws nearby seeds on purpose)."
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return WichmannHillStreams(seeds, raw_seeds=True)

@settings(max_examples=30)
@given(seeds=st.lists(st.integers(0, 2**80), min_size=1, max_size=37), steps=st.integers(1, 60))
def test_each_raw_stream_is_the_scalar_generator(seeds, steps):
    block = raw_streams(seeds).rand(steps)
    assert block.shape == (steps, len(seeds)) and block.dtype == np.float32
    for i, seed in enumerate(seeds): np.testing.assert_array_equal(block[:, i], scalar_float32(seed, steps))

@settings(max_examples=20)
@given(seeds=st.lists(st.integers(0, 2**70), min_size=1, max_size=9), steps=st.integers(1, 20))
def test_default_spreads_each_seed_through_stream_seeds(seeds, steps):
    block = WichmannHillStreams(seeds).rand(steps)
    for i, seed in enumerate(seeds): np.testing.assert_array_equal(block[:, i], scalar_float32(stream_seeds(seed, 1)[0], steps))

def differences_are_whole(u1, u2):
    d = (u1.astype(np.float64) - u2.astype(np.float64)) % 1 * 30269
    return np.abs(d - np.round(d)) < 1e-2

def test_consecutive_seeds_give_unrelated_streams_by_default():
    "Consecutive raw seeds share two of three states: their difference is a generator of modulus 30269. The default path must not."
    block = WichmannHillStreams(range(64)).rand(2000)
    assert differences_are_whole(block[:, 0], block[:, 1]).mean() < 0.05
    raw = raw_streams(range(64)).rand(2000)
    assert differences_are_whole(raw[:, 0], raw[:, 1]).all()

def test_related_raw_seeds_warn_and_others_do_not():
    with pytest.warns(UserWarning, match='raw seeds 0 and 1 .* share two of their three numbers'): WichmannHillStreams(range(10), raw_seeds=True)
    with pytest.warns(UserWarning, match='share two'): WichmannHillStreams([5, 5 + 30268], raw_seeds=True)   # same x and z
    with pytest.warns(UserWarning, match='raw seeds 42 and 7'): WichmannHillStreams([42, 7], raw_seeds=True)   # both below 30268: same y and z
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        WichmannHillStreams(range(4096))
        WichmannHillStreams([457428938475, 42, 10**9 + 7], raw_seeds=True)
        WichmannHillStreams.from_seed(0, streams=10_000)

def test_state_carries_over_between_calls():
    streams = WichmannHillStreams([1, 2, 3])
    both = np.concatenate([streams.rand(4), streams.rand(5)])
    np.testing.assert_array_equal(both, WichmannHillStreams([1, 2, 3]).rand(9))

def test_many_streams_across_threads_long_run():
    seeds = stream_seeds(7, 5000)   # more streams than any thread block, odd split
    block = WichmannHillStreams(seeds, raw_seeds=True).rand(3)
    for i in (0, 2499, 2500, 4999): np.testing.assert_array_equal(block[:, i], scalar_float32(seeds[i], 3))
    np.testing.assert_array_equal(WichmannHillStreams.from_seed(7, 5000).rand(3), block)

def test_rand_flat_order_and_range():
    streams = WichmannHillStreams.from_seed(3, streams=8)
    flat = WichmannHillStreams.from_seed(3, streams=8).rand_flat(20)
    assert flat.dtype == torch.float32 and flat.shape == (20,)
    np.testing.assert_array_equal(flat.numpy(), streams.rand(3).reshape(-1)[:20])
    xs = rand_wh(200_000, seed=11)
    assert 0 <= xs.min() and xs.max() < 1
    counts = torch.histc(xs, bins=20, min=0, max=1)
    assert ((counts - 10_000) ** 2 / 10_000).sum() < 50   # loose chi-square, 19 degrees of freedom

def test_empty_requests_like_torch():
    assert rand_wh(0, seed=1).shape == torch.rand(0).shape
    assert WichmannHillStreams([1]).rand_flat(0).shape == (0,)
    assert WichmannHillStreams([1, 2]).rand(0).shape == (0, 2)

def test_same_seed_same_numbers_fresh_seed_new_numbers():
    assert torch.equal(rand_wh(1000, seed=5), rand_wh(1000, seed=5))
    assert not torch.equal(rand_wh(1000), rand_wh(1000))

def test_bad_input():
    with pytest.raises(ValueError, match='at least one seed'): WichmannHillStreams([])
    with pytest.raises(ValueError, match='non-negative integer'): stream_seeds(-2, 3)
    with pytest.raises(ValueError, match='non-negative integer'): stream_seeds(True, 3)
    with pytest.raises(ValueError, match='non-negative integer'): WichmannHillStreams([1.5])
    with pytest.raises(ValueError, match='count must be'): stream_seeds(1, -1)
    with pytest.raises(ValueError, match='steps must be'): WichmannHillStreams([1]).rand(-1)
    with pytest.raises(ValueError, match='n must be'): WichmannHillStreams([1]).rand_flat(2.5)
    with pytest.raises(ValueError, match='streams must be'): WichmannHillStreams.from_seed(1, streams=0)
    assert stream_seeds(np.int64(4), 2) == stream_seeds(4, 2)

def test_float_bits_keeps_the_top_bits():
    u = np.array([0.5, 0.25, BELOW_ONE, 0.0], dtype=np.float32)
    assert float_bits(u) == bytes([0x80, 0, 0, 0x40, 0, 0, 0xff, 0xff, 0xff, 0, 0, 0])
    assert float_bits(u, bits=16) == bytes([0x80, 0, 0x40, 0, 0xff, 0xff, 0, 0])
    with pytest.raises(ValueError, match='bits must be'): float_bits(u, bits=32)

@pytest.mark.slow
@pytest.mark.skipif(shutil.which('dieharder') is None, reason='the dieharder program is not installed (apt-get install dieharder)')
def test_dieharder_fails_consecutive_seeds_and_passes_spread_ones():
    "Birthdays (0) and runs (15): consecutive raw seeds fail with p = 0; the default spread seeds don't fail."
    for test in (0, 15):
        consecutive = dieharder(raw_streams(range(4096)), test)
        spread = dieharder(WichmannHillStreams(range(4096)), test)
        assert consecutive and all(verdict == 'FAILED' for _, verdict in consecutive), consecutive
        assert spread and all(verdict != 'FAILED' for _, verdict in spread), spread

def test_dieharder_missing_is_explained(monkeypatch):
    monkeypatch.setattr(shutil, 'which', lambda name: None)
    with pytest.raises(FileNotFoundError, match='apt-get install dieharder'): dieharder(WichmannHillStreams([1]), 0)
