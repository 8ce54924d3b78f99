"""Lesson 05a: the IDX reader against an independent writer, its errors for bad files, and every source of
Fashion-MNIST (data folder, system copy, download from a loopback server, bundled sample, verified cache), each
with tiny files made here. Nothing here reads the real system copy or touches the internet."""
import gzip, hashlib, struct, threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import numpy as np, pytest, torch
from hypothesis import given
import miniai.fashion as fm
from miniai.fashion import idx_header, load_fashion, fashion_paths, read_idx, read_idx_pair, read_idx_py, write_idx
from strategies import idx_arrays

STRUCT = {'uint8': (0x08, 'B'), 'int8': (0x09, 'b'), 'int16': (0x0B, 'h'), 'int32': (0x0C, 'i'), 'float32': (0x0D, 'f'), 'float64': (0x0E, 'd')}

def idx_bytes(a):
    "The IDX file of array `a`, written value by value with `struct` (independent of miniai's writer)."
    code, fmt = STRUCT[a.dtype.name]
    out = bytes([0, 0, code, a.ndim]) + b''.join(struct.pack('>I', d) for d in a.shape)
    return out + b''.join(struct.pack('>' + fmt, v) for v in a.flatten().tolist())

@given(idx_arrays())
def test_readers_round_trip(a):
    data = idx_bytes(a)
    x = read_idx(data)
    assert x.shape == a.shape and x.dtype == torch.from_numpy(a).dtype and np.array_equal(x.numpy(), a)
    dims, values = read_idx_py(data)
    assert dims == a.shape and list(values) == a.flatten().tolist()
    assert read_idx_py(data)[1] == tuple(x.flatten().tolist())   # the fast path equals the foundations path

@given(idx_arrays())
def test_write_idx_matches_the_independent_writer(tmp_path_factory, a):
    folder = tmp_path_factory.mktemp('idx')
    assert write_idx(folder/'a.idx', a).read_bytes() == idx_bytes(a)
    assert gzip.decompress(write_idx(folder/'a.idx.gz', torch.from_numpy(a)).read_bytes()) == idx_bytes(a)
    assert [p.name for p in folder.iterdir()] in (['a.idx', 'a.idx.gz'], ['a.idx.gz', 'a.idx'])

GOOD = idx_bytes(np.arange(12, dtype=np.uint8).reshape(3, 4))

@pytest.mark.parametrize('data,message', [
    (b'', 'not an IDX file.*with nothing'),
    (b'\x1f\x8b' + GOOD[2:], 'not an IDX file.*1f 8b 08 02'),
    (bytes([0, 0, 0x07, 1]) + GOOD[4:], 'unknown IDX type code 0x07'),
    (GOOD[:9], 'cut short: its header needs 12 bytes for 2 dimensions, it has 9'),
    (GOOD[:-1], 'cut short: a 3 x 4 array of type 0x08 takes 24 bytes with its header, the file has 23'),
    (GOOD + b'\0', 'has extra bytes'),
])
def test_bad_headers(data, message):
    with pytest.raises(ValueError, match=message): idx_header(data, 'f.idx')
    with pytest.raises(ValueError, match=message): read_idx(data)
    with pytest.raises(ValueError, match=message): read_idx_py(data)

def test_damaged_gzip_names_the_file(tmp_path):
    (tmp_path/'f.idx.gz').write_bytes(gzip.compress(GOOD)[:-6])
    with pytest.raises(ValueError, match='f.idx.gz is a damaged gzip file'): read_idx(tmp_path/'f.idx.gz')

def test_write_idx_refuses_what_idx_cannot_store(tmp_path):
    with pytest.raises(ValueError, match='IDX cannot store int64'): write_idx(tmp_path/'f.idx', torch.arange(3))
    assert list(tmp_path.iterdir()) == []

def test_pairs_must_agree(tmp_path):
    (tmp_path/'im').write_bytes(idx_bytes(np.zeros((3, 2, 2), np.uint8)))
    (tmp_path/'lb').write_bytes(idx_bytes(np.zeros(2, np.uint8)))
    (tmp_path/'fl').write_bytes(idx_bytes(np.zeros(3, np.float32)))
    with pytest.raises(ValueError, match='im has 3 images but lb has 2 labels'): read_idx_pair(tmp_path/'im', tmp_path/'lb')
    with pytest.raises(ValueError, match='fl: expected a list of label bytes, got 3 float32'): read_idx_pair(tmp_path/'im', tmp_path/'fl')
    with pytest.raises(ValueError, match='lb: expected n x rows x cols bytes, got 2 uint8'): read_idx_pair(tmp_path/'lb', tmp_path/'lb')

# --- the sources, with a tiny stand-in for Fashion-MNIST: 20 training and 10 validation images

def tiny_splits(seed=0):
    g = np.random.default_rng(seed)
    return {split: (g.integers(0, 256, (n, 28, 28), dtype=np.uint8), g.permutation(np.arange(n, dtype=np.uint8) % 10))
            for split, n in (('train', 20), ('valid', 10))}

@pytest.fixture
def tiny(monkeypatch, tmp_path):
    "Tiny gzipped files standing in for the real four (FASHION_FILES patched to their sizes and MD5s), and an empty system folder."
    raw = {}
    for split, (x, y) in tiny_splits().items(): raw[f'{split}-images'], raw[f'{split}-labels'] = idx_bytes(x), idx_bytes(y)
    gz = {name: gzip.compress(data, mtime=0) for name, data in raw.items()}
    files = {name: (f'{name}.gz', len(gz[name]), hashlib.md5(gz[name]).hexdigest(), hashlib.md5(raw[name]).hexdigest()) for name in raw}
    monkeypatch.setattr(fm, 'FASHION_FILES', files)
    monkeypatch.delenv('MINIAI_OFFLINE', raising=False)
    (tmp_path/'system').mkdir()
    return dict(raw=raw, gz=gz, files=files, data=tmp_path/'data', system=tmp_path/'system')

def put(folder, tiny, compresslevel=None):
    "Write the tiny files into `folder`, re-compressed at `compresslevel` if given (like Debian's copy)."
    folder.mkdir(parents=True, exist_ok=True)
    for name, (fname, *_) in tiny['files'].items():
        data = tiny['gz'][name] if compresslevel is None else gzip.compress(tiny['raw'][name], compresslevel=compresslevel, mtime=1)
        (folder/fname).write_bytes(data)

def source(capsys):
    return capsys.readouterr().out.strip()

def check_tiny(splits):
    for (x, y), (ex, ey) in zip(splits, tiny_splits().values()):
        assert x.dtype == torch.uint8 and y.dtype == torch.int64
        assert np.array_equal(x.numpy(), ex) and np.array_equal(y.numpy(), ey)

def test_data_folder_comes_first(tiny, capsys):
    put(tiny['data'], tiny); put(tiny['system'], tiny)
    paths = fashion_paths(tiny['data'], tiny['system'], urls=['http://127.0.0.1:9/'])
    assert source(capsys) == 'Fashion-MNIST files: the data folder' and paths['valid-labels'] == tiny['data']/'valid-labels.gz'

def test_system_copy_is_verified_by_its_decompressed_bytes(tiny, capsys, monkeypatch):
    monkeypatch.setenv('MINIAI_OFFLINE', '1')
    put(tiny['system'], tiny, compresslevel=1)
    assert all(hashlib.md5((tiny["system"]/f[0]).read_bytes()).hexdigest() != f[2] for f in tiny['files'].values())   # re-compressed: other gzip MD5s
    check_tiny(load_fashion(tiny['data'], tiny['system']))
    assert source(capsys).endswith('from the system copy (package dataset-fashion-mnist)')

def test_altered_system_copy_is_not_used(tiny, capsys, monkeypatch):
    monkeypatch.setenv('MINIAI_OFFLINE', '1')
    put(tiny['system'], tiny)
    path = tiny['system']/'train-labels.gz'
    raw = bytearray(tiny['raw']['train-labels']); raw[-1] ^= 1
    path.write_bytes(gzip.compress(bytes(raw)))
    (x, y), _ = load_fashion(tiny['data'], tiny['system'])
    assert 'the sample bundled with miniai' in source(capsys) and len(x) == 3000

class Handler(BaseHTTPRequestHandler):
    "Serves the tiny files under /good/, nothing under /gone/."
    def do_GET(self):
        self.server.hits[self.path] += 1
        name = self.path.removeprefix('/good/')
        if not self.path.startswith('/good/') or name not in self.server.files: return self.send_error(404, 'Not Found')
        self.send_response(200)
        self.send_header('Content-Length', str(len(self.server.files[name])))
        self.end_headers()
        self.wfile.write(self.server.files[name])
    def log_message(self, *args): pass

@pytest.fixture
def server(tiny):
    srv = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    srv.hits, srv.files = Counter(), {f[0]: tiny['gz'][name] for name, f in tiny['files'].items()}
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    srv.url = f'http://127.0.0.1:{srv.server_address[1]}'
    yield srv
    srv.shutdown(); srv.server_close()

def test_download_falls_back_to_the_mirror(tiny, server, capsys):
    splits = load_fashion(tiny['data'], tiny['system'], urls=[f'{server.url}/gone/', f'{server.url}/good/'])
    check_tiny(splits)
    assert source(capsys).endswith('from a download into the data folder')
    assert sorted(p.name for p in tiny['data'].iterdir()) == ['fashion-mnist.npz'] + sorted(f[0] for f in tiny['files'].values())
    assert sum(server.hits.values()) == 8 and all(n == 1 for n in server.hits.values())
    fashion_paths(tiny['data'], tiny['system'], urls=[f'{server.url}/good/'])
    assert source(capsys) == 'Fashion-MNIST files: the data folder' and sum(server.hits.values()) == 8

def test_failed_download_falls_back_to_the_sample(tiny, server, capsys):
    (x, y), (xv, yv) = load_fashion(tiny['data'], tiny['system'], urls=[f'{server.url}/gone/'])
    out = source(capsys)
    assert 'from the sample bundled with miniai' in out and 'the download failed' in out and 'HTTP 404' in out
    assert (len(x), len(xv)) == (3000, 1000)
    assert not (tiny['data']/'fashion-mnist.npz').exists()   # only the full set is cached

def test_offline_uses_the_sample(tiny, server, capsys, monkeypatch):
    monkeypatch.setenv('MINIAI_OFFLINE', '1')
    (x, y), (xv, yv) = load_fashion(tiny['data'], tiny['system'], urls=[f'{server.url}/good/'])
    assert 'because MINIAI_OFFLINE is set' in source(capsys) and sum(server.hits.values()) == 0
    assert x.shape == (3000, 28, 28) and y.bincount().tolist() == [300] * 10 and yv.bincount().tolist() == [100] * 10
    assert x.dtype == torch.uint8 and y.dtype == torch.int64

def test_cache_is_used_then_rebuilt_when_altered(tiny, capsys, monkeypatch):
    monkeypatch.setenv('MINIAI_OFFLINE', '1')
    put(tiny['data'], tiny)
    check_tiny(load_fashion(tiny['data'], tiny['system']))
    assert source(capsys).endswith('from the data folder')
    cache = tiny['data']/'fashion-mnist.npz'
    check_tiny(load_fashion(tiny['data'], tiny['system']))
    assert source(capsys).endswith('from the data folder (decoded earlier, verified now)')
    with np.load(cache) as d: arrays = {k: d[k] for k in d.files}
    arrays['x_valid'][3, 4, 5] ^= 1
    np.savez(cache, **arrays)
    check_tiny(load_fashion(tiny['data'], tiny['system']))
    assert source(capsys).endswith('from the data folder')   # not the cache: rebuilt from the files
    cache.write_bytes(b'not a zip file')
    check_tiny(load_fashion(tiny['data'], tiny['system']))
    check_tiny(load_fashion(tiny['data'], tiny['system']))
    assert source(capsys).splitlines() == ['Fashion-MNIST: 20 train and 10 valid images from the data folder',
                                           'Fashion-MNIST: 20 train and 10 valid images from the data folder (decoded earlier, verified now)']

def test_counts_that_disagree_are_an_error(tiny, monkeypatch):
    monkeypatch.setenv('MINIAI_OFFLINE', '1')
    x, y = tiny_splits()['train']
    raw = dict(tiny['raw'], **{'train-labels': idx_bytes(y[:-1])})
    files = {name: (f[0], None, None, hashlib.md5(raw[name]).hexdigest()) for name, f in tiny['files'].items()}
    monkeypatch.setattr(fm, 'FASHION_FILES', files)
    tiny['data'].mkdir()
    for name, f in files.items(): (tiny['data']/f[0]).write_bytes(gzip.compress(raw[name]))
    with pytest.raises(ValueError, match='train-images.gz has 20 images but train-labels.gz has 19 labels'): load_fashion(tiny['data'], tiny['system'])

def test_bundled_sample_is_small_real_and_balanced():
    from importlib.resources import files
    path = files('miniai')/'data'/'fashion_sample.npz'
    assert path.stat().st_size < 2_000_000
    with np.load(path) as d:
        assert {k: d[k].shape for k in d.files} == {'x_train': (3000, 28, 28), 'y_train': (3000,), 'x_valid': (1000, 28, 28), 'y_valid': (1000,)}
        assert all(d[k].dtype == np.uint8 for k in d.files)
        assert np.bincount(d['y_train']).tolist() == [300] * 10 and np.bincount(d['y_valid']).tolist() == [100] * 10
        x = d['x_train']
        assert len({im.tobytes() for im in x}) == 3000 and 60 < x.mean() < 90   # distinct images, with Fashion-MNIST's mean brightness (72.9)

def test_test_size_run_takes_the_sample_over_a_full_copy_and_its_cache(tiny, capsys, monkeypatch):
    "Under nbdev_test (IN_TEST=1) lessons train on the bundled sample even where a verified copy and its cache are there."
    put(tiny['data'], tiny); put(tiny['system'], tiny)
    check_tiny(load_fashion(tiny['data'], tiny['system']))   # this writes the cache
    assert (tiny['data']/'fashion-mnist.npz').is_file()
    capsys.readouterr()
    monkeypatch.setenv('IN_TEST', '1')
    (x, y), (xv, yv) = load_fashion(tiny['data'], tiny['system'])
    assert (len(x), len(xv)) == (3000, 1000) and 'because this is a test-size run' in source(capsys)
    monkeypatch.setenv('MINIAI_FULL', '1')
    check_tiny(load_fashion(tiny['data'], tiny['system']))

@pytest.mark.parametrize('damage', ['truncate', 'flip', 'empty'])
def test_damaged_cache_is_rebuilt(tiny, capsys, monkeypatch, damage):
    "A cache cut short or with a flipped byte is passed over and written again, on this call and every later one."
    monkeypatch.setenv('MINIAI_OFFLINE', '1')
    put(tiny['data'], tiny)
    check_tiny(load_fashion(tiny['data'], tiny['system']))
    cache = tiny['data']/'fashion-mnist.npz'
    good = cache.read_bytes()
    bad = {'truncate': good[:len(good) // 2], 'flip': good[:100] + bytes([good[100] ^ 0xFF]) + good[101:], 'empty': b''}[damage]
    cache.write_bytes(bad)
    check_tiny(load_fashion(tiny['data'], tiny['system']))
    check_tiny(load_fashion(tiny['data'], tiny['system']))
    assert 'decoded earlier' in source(capsys).splitlines()[-1]   # the cache was written again, and used

def test_sample_is_read_where_it_ships_when_the_data_folder_is_read_only(tiny, capsys, monkeypatch):
    "A read-only data folder: the sample fallback used to write the sample's files into it first, and fail."
    monkeypatch.setenv('MINIAI_OFFLINE', '1')
    def no_writes(*args, **kwargs): raise PermissionError(13, 'Permission denied (a read-only data folder)')
    monkeypatch.setattr(fm, 'write_idx', no_writes)
    monkeypatch.setattr(fm, 'atomic_write', no_writes)
    (x, y), (xv, yv) = load_fashion(tiny['data'], tiny['system'])
    assert (len(x), len(xv)) == (3000, 1000) and y.bincount().tolist() == [300] * 10
    assert 'the sample bundled with miniai' in source(capsys) and not tiny['data'].exists()

@pytest.mark.parametrize('fn', [load_fashion, fashion_paths])
def test_urls_must_be_a_list_not_a_string(tiny, fn):
    "A string used to be taken as a list of one-letter URLs."
    with pytest.raises(TypeError, match=r"urls must be a list of base URLs, got the string 'file:///x/': "
                                        r"write urls=\['file:///x/'\]"):
        fn(tiny['data'], tiny['system'], urls='file:///x/')

def _rewrite_cache_forever(data, system):
    "Child: invalidate the cache and let load_fashion write it again, for ever (until killed)."
    import os
    os.environ['MINIAI_OFFLINE'] = '1'
    torch.set_num_threads(1)
    cache, real_savez = data/'fashion-mnist.npz', np.savez
    def slow_savez(f, **arrays):   # a slow disk: the kill lands mid-write most times
        import io, time
        buf = io.BytesIO(); real_savez(buf, **arrays)
        for i in range(0, len(buf.getvalue()), 4096): f.write(buf.getvalue()[i:i + 4096]); time.sleep(0.002)
    np.savez = slow_savez
    while True:
        cache.unlink(missing_ok=True)   # so load_fashion builds it and writes it again
        load_fashion(data, system, verbose=False)

def test_kill_during_the_cache_write_never_leaves_a_bad_copy(tiny, capsys):
    "kill -9 while the cache is written, five times: the next load is always correct, and leaves no .part behind."
    import multiprocessing, os, random, signal, time
    put(tiny['data'], tiny)
    rng, mid_write = random.Random(0), 0
    for _ in range(5):
        p = multiprocessing.get_context('fork').Process(target=_rewrite_cache_forever, args=(tiny['data'], tiny['system']))
        p.start(); time.sleep(rng.uniform(0.2, 0.5)); os.kill(p.pid, signal.SIGKILL); p.join()
        assert p.exitcode == -signal.SIGKILL
        mid_write += any(f.name.endswith('.part') for f in tiny['data'].iterdir())
        cache = tiny['data']/'fashion-mnist.npz'
        if cache.exists(): assert fm._check_cache(cache) is not None   # never half a cache
        cache.unlink(missing_ok=True)   # so the next load saves again
        check_tiny(load_fashion(tiny['data'], tiny['system']))
        assert not [f.name for f in tiny['data'].iterdir() if f.name.endswith('.part')]
        check_tiny(load_fashion(tiny['data'], tiny['system']))
    assert 'decoded earlier' in source(capsys).splitlines()[-1]
    assert mid_write >= 3, mid_write   # most kills hit a write in progress
