"`miniai.mnist`: the full set, the bundled sample, and damaged files, against a loopback server (no internet)."
import gzip, pickle, re, shutil, warnings
import numpy as np
import pytest
import miniai.mnist as mn
from miniai.mnist import MNIST_SAMPLE, load_mnist, mnist_path
from test_download import MD5, PAYLOAD, names, server   # noqa: F401 (server is a fixture)

@pytest.fixture(autouse=True)
def data_folder(tmp_path, monkeypatch):
    "Every test gets an empty data folder, and no test may reach the real MNIST URL."
    monkeypatch.setenv('MINIAI_DATA', str(tmp_path))
    monkeypatch.setattr(mn, 'MNIST_URL', 'http://127.0.0.1:9/never-asked')
    return tmp_path

def one_plain_line(capsys, pattern, folder):
    "What was printed is one line matching `pattern`, naming no path of this machine."
    out = capsys.readouterr().out
    assert out.count('\n') == 1 and re.search(pattern, out), out
    assert str(folder) not in out and '.py:' not in out and str(MNIST_SAMPLE.parent) not in out, out

def check_sample(path):
    (xt, yt), (xv, yv), (xs, ys) = load_mnist(path)
    assert [len(x) for x in (xt, xv, xs)] == [4000, 500, 500] and [len(y) for y in (yt, yv, ys)] == [4000, 500, 500]
    for x, y in ((xt, yt), (xv, yv), (xs, ys)):
        assert x.dtype == np.float32 and y.dtype == np.int64 and x.shape[1] == 784
        assert x.min() == 0 and x.max() < 1 and np.all((x * 256) == np.round(x * 256))   # byte values over 256
    assert np.bincount(np.concatenate([yt, yv, ys])).tolist() == [500] * 10
    assert not (np.diff(yt) >= 0).all()   # shuffled, not sorted by label

def test_offline_switch_uses_sample(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv('MINIAI_OFFLINE', '1')
    with warnings.catch_warnings(): warnings.simplefilter('error'); path = mnist_path(tmp_path)
    one_plain_line(capsys, r'MNIST sample bundled with miniai \(4,000/500/500 real digits.*because MINIAI_OFFLINE is set.*full set', tmp_path)
    assert path.name == 'mnist_sample.pkl.gz' and names(tmp_path) == []
    check_sample(path)

@pytest.mark.parametrize('path,reason', [('/missing', 'answered HTTP 404'), ('/badlength', 'Content-Length that is not a size'),
                                         ('/truncated', 'broke off after'), ('/corrupt', 'wrong file')])
def test_failed_download_falls_back_to_sample(server, tmp_path, monkeypatch, capsys, path, reason):
    monkeypatch.delenv('MINIAI_OFFLINE', raising=False)
    monkeypatch.setattr(mn, 'MNIST_URL', f'{server.url}{path}')
    monkeypatch.setattr(mn, 'MNIST_SIZE', len(PAYLOAD))
    monkeypatch.setattr(mn, 'MNIST_MD5', MD5)
    result = mnist_path(tmp_path)
    one_plain_line(capsys, f'because .*{reason}', tmp_path)
    assert server.hits[path] == 1 and names(tmp_path) == [] and result == MNIST_SAMPLE
    check_sample(result)

def use_server(monkeypatch, server):
    monkeypatch.delenv('MINIAI_OFFLINE', raising=False)
    for name, value in dict(MNIST_URL=f'{server.url}/good', MNIST_SIZE=len(PAYLOAD), MNIST_MD5=MD5).items(): monkeypatch.setattr(mn, name, value)

def test_full_set_downloaded_then_used_offline(server, tmp_path, monkeypatch, capsys):
    use_server(monkeypatch, server)
    assert mnist_path(tmp_path) == tmp_path/'mnist.pkl.gz'
    monkeypatch.setenv('MINIAI_OFFLINE', 'yes')
    assert mnist_path(tmp_path) == tmp_path/'mnist.pkl.gz'
    assert server.hits['/good'] == 1 and 'sample' not in capsys.readouterr().out

def test_damaged_full_set_is_downloaded_again(server, tmp_path, monkeypatch):
    use_server(monkeypatch, server)
    (tmp_path/'mnist.pkl.gz').write_bytes(PAYLOAD[:1000])   # a download cut short by an older tool
    assert mnist_path(tmp_path) == tmp_path/'mnist.pkl.gz' and (tmp_path/'mnist.pkl.gz').read_bytes() == PAYLOAD

def test_damaged_full_set_is_passed_over_offline(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv('MINIAI_OFFLINE', '1')
    (tmp_path/'mnist.pkl.gz').write_bytes(b'not MNIST')
    assert mnist_path(tmp_path) == MNIST_SAMPLE
    one_plain_line(capsys, r'because MINIAI_OFFLINE is set and the mnist.pkl.gz in the data folder is damaged \(expected 17,051,982 bytes, got 9\)', tmp_path)

def test_old_sample_cache_is_ignored(tmp_path, monkeypatch):
    "Earlier versions cached the sample in the data folder and trusted it; a broken one there must not matter."
    monkeypatch.setenv('MINIAI_OFFLINE', '1')
    (tmp_path/'mnist_sample.pkl.gz').write_bytes(b'\x1f\x8b broken')
    check_sample(mnist_path(tmp_path))
    assert len(load_mnist()[0][0]) == 4000

def test_damaged_bundled_sample_is_detected(tmp_path, monkeypatch):
    monkeypatch.setenv('MINIAI_OFFLINE', '1')
    bad = tmp_path/'sample'/'mnist_sample.pkl.gz'
    bad.parent.mkdir()
    bad.write_bytes(MNIST_SAMPLE.read_bytes()[:-10])
    monkeypatch.setattr(mn, 'MNIST_SAMPLE', bad)
    with pytest.raises(RuntimeError, match=r"bundled MNIST sample is damaged \(expected MD5 .*because MINIAI_OFFLINE is set.*Reinstall"): mnist_path(tmp_path)

def gzipped(obj): return gzip.compress(pickle.dumps(obj, protocol=2), mtime=0)
x, y = np.zeros((3, 784), np.float32), np.zeros(3, np.int64)

@pytest.mark.parametrize('content,message', [
    (b'plain bytes, not gzip', r'not a readable MNIST pickle \(BadGzipFile'),
    (None, r'not a readable MNIST pickle \(EOFError'),                      # the sample cut short
    (gzip.compress(b'not a pickle'), r'not a readable MNIST pickle \(UnpicklingError'),
    (gzipped({'not': 'MNIST'}), 'is not MNIST: it does not hold three'),
    (gzipped(((x, y), (x, y))), 'is not MNIST: it does not hold three'),
    (gzipped(((x, y), (x, y), (x[:, :10], y))), 'is not MNIST: its test split is not n images of 784'),
    (gzipped(((x, y[:2]), (x, y), (x, y))), 'is not MNIST: its train split'),
], ids=['not-gzip', 'cut-short', 'not-pickle', 'a-dict', 'two-pairs', 'narrow-images', 'fewer-labels'])
def test_load_mnist_names_a_damaged_file(tmp_path, content, message):
    path = tmp_path/'mnist.pkl.gz'
    path.write_bytes(MNIST_SAMPLE.read_bytes()[:300_000] if content is None else content)
    with pytest.raises(ValueError, match=message) as e: load_mnist(path)
    assert str(path) in str(e.value)

def test_load_mnist_accepts_the_layout(tmp_path):
    path = tmp_path/'tiny.pkl.gz'
    path.write_bytes(gzipped(((x, y), (x, y), (x, y))))
    assert [len(s[0]) for s in load_mnist(path)] == [3, 3, 3]
    with pytest.raises(FileNotFoundError): load_mnist(tmp_path/'nothing.pkl.gz')

def test_test_size_run_takes_the_sample_and_never_downloads(server, tmp_path, monkeypatch, capsys):
    "Under nbdev_test (IN_TEST=1) the sample is used though the full set could be downloaded; MINIAI_FULL=1 asks for the full set."
    use_server(monkeypatch, server)
    monkeypatch.setenv('IN_TEST', '1')
    assert mnist_path(tmp_path) == MNIST_SAMPLE and not (tmp_path/'mnist.pkl.gz').exists()
    one_plain_line(capsys, r'because this is a test-size run \(MINIAI_FULL=1 for the full set\)', tmp_path)
    monkeypatch.setenv('MINIAI_FULL', '1')
    assert mnist_path(tmp_path) == tmp_path/'mnist.pkl.gz'
