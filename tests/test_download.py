"`download` and the MNIST loader against a real HTTP server on 127.0.0.1 (no internet)."
import hashlib, re, threading, warnings
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import numpy as np
import pytest
import miniai.mnist as mn
from miniai.mnist import DownloadError, atomic_write, download, load_mnist, mnist_path

PAYLOAD = bytes(range(256)) * 5000   # 1.28 MB: big enough for the progress bar
MD5 = hashlib.md5(PAYLOAD).hexdigest()

class Handler(BaseHTTPRequestHandler):
    "Serves PAYLOAD whole (/good), cut short (/truncated), altered (/corrupt), or not at all (/missing)."
    def do_GET(self):
        self.server.hits[self.path] += 1
        if self.path == '/missing': return self.send_error(404, 'Not Found')
        body = PAYLOAD if self.path != '/corrupt' else PAYLOAD[::-1]
        self.send_response(200)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body if self.path != '/truncated' else body[:len(body)//3])
        self.close_connection = True
    def log_message(self, *args): pass

@pytest.fixture
def server():
    srv = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    srv.hits = Counter()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    srv.url = f'http://127.0.0.1:{srv.server_address[1]}'
    yield srv
    srv.shutdown(); srv.server_close()

def names(folder): return sorted(p.name for p in folder.iterdir())

@pytest.mark.parametrize('progress', [True, False])
def test_first_download_verifies(server, tmp_path, progress):
    dest = download(f'{server.url}/good', tmp_path/'f.bin', size=len(PAYLOAD), md5=MD5, progress=progress)
    assert dest.read_bytes() == PAYLOAD and names(tmp_path) == ['f.bin']

def test_second_call_makes_no_request(server, tmp_path):
    download(f'{server.url}/good', tmp_path/'f.bin', size=len(PAYLOAD), md5=MD5)
    download(f'{server.url}/good', tmp_path/'f.bin', size=len(PAYLOAD), md5=MD5)
    assert server.hits['/good'] == 1

def test_404_is_clear_and_leaves_nothing(server, tmp_path):
    with pytest.raises(DownloadError, match=r'answered HTTP 404.*check the URL') as e: download(f'{server.url}/missing', tmp_path/'f.bin')
    assert f'{server.url}/missing' in str(e.value) and names(tmp_path) == []

@pytest.mark.parametrize('path,message', [('/truncated', r'broke off after 426,666 of 1,280,000 bytes'),
                                          ('/corrupt', r'wrong file: expected MD5 \w+, got \w+')])
def test_bad_body_keeps_earlier_file(server, tmp_path, path, message):
    old = tmp_path/'f.bin'
    old.write_bytes(b'an earlier, good version')
    with pytest.warns(UserWarning, match='not the expected file'), pytest.raises(DownloadError, match=message):
        download(f'{server.url}{path}', old, size=len(PAYLOAD), md5=MD5)
    assert old.read_bytes() == b'an earlier, good version' and names(tmp_path) == ['f.bin']

@pytest.mark.parametrize('path', ['/truncated', '/corrupt'])
def test_bad_body_leaves_no_file(server, tmp_path, path):
    with pytest.raises(DownloadError, match='run it again to retry'): download(f'{server.url}{path}', tmp_path/'f.bin', size=len(PAYLOAD), md5=MD5)
    assert names(tmp_path) == []

def test_corrupt_file_in_place_is_replaced(server, tmp_path):
    dest = tmp_path/'f.bin'
    dest.write_bytes(PAYLOAD[:-1] + b'!')
    with pytest.warns(UserWarning, match=f'expected MD5 {MD5}'): download(f'{server.url}/good', dest, size=len(PAYLOAD), md5=MD5)
    assert dest.read_bytes() == PAYLOAD and server.hits['/good'] == 1 and names(tmp_path) == ['f.bin']

def test_unreachable_server(tmp_path):
    with ThreadingHTTPServer(('127.0.0.1', 0), Handler) as srv: port = srv.server_address[1]   # a port nobody listens on now
    with pytest.raises(DownloadError, match='could not reach.*MINIAI_OFFLINE=1'): download(f'http://127.0.0.1:{port}/good', tmp_path/'f.bin', timeout=5)
    assert names(tmp_path) == []

def test_atomic_write_keeps_nothing_on_error(tmp_path):
    with pytest.raises(ZeroDivisionError):
        with atomic_write(tmp_path/'f.bin') as f: f.write(b'half'); 1/0
    assert names(tmp_path) == []

def check_sample(path):
    (xt, yt), (xv, yv), (xs, ys) = load_mnist(path)
    assert [len(x) for x in (xt, xv, xs)] == [4000, 500, 500] and [len(y) for y in (yt, yv, ys)] == [4000, 500, 500]
    for x, y in ((xt, yt), (xv, yv), (xs, ys)):
        assert x.dtype == np.float32 and y.dtype == np.int64 and x.shape[1] == 784
        assert x.min() == 0 and x.max() < 1 and np.all((x * 256) == np.round(x * 256))   # byte values over 256
    assert np.bincount(np.concatenate([yt, yv, ys])).tolist() == [500] * 10
    assert not (np.diff(yt) >= 0).all()   # shuffled, not sorted by label

def one_plain_line(capsys, pattern, folder):
    "What `mnist_path` printed is one line matching `pattern`, naming no path of this machine."
    out = capsys.readouterr().out
    assert out.count('\n') == 1 and re.search(pattern, out), out
    assert str(folder) not in out and '.py:' not in out, out

def test_offline_switch_uses_sample(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv('MINIAI_OFFLINE', '1')
    monkeypatch.setattr(mn, 'MNIST_URL', 'http://127.0.0.1:9/never-asked')
    with warnings.catch_warnings(): warnings.simplefilter('error'); path = mnist_path(tmp_path)
    one_plain_line(capsys, r'MNIST sample bundled with miniai \(4,000/500/500 real digits.*because MINIAI_OFFLINE is set.*full set', tmp_path)
    assert path.name == 'mnist_sample.pkl.gz' and names(tmp_path) == ['mnist_sample.pkl.gz']
    check_sample(path)

def test_failed_download_falls_back_to_sample(server, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv('MINIAI_OFFLINE', raising=False)
    monkeypatch.setattr(mn, 'MNIST_URL', f'{server.url}/missing')
    path = mnist_path(tmp_path)
    one_plain_line(capsys, 'because .*answered HTTP 404', tmp_path)
    assert server.hits['/missing'] == 1 and names(tmp_path) == ['mnist_sample.pkl.gz']
    check_sample(path)

def test_full_set_downloaded_then_used_offline(server, tmp_path, monkeypatch):
    monkeypatch.delenv('MINIAI_OFFLINE', raising=False)
    for name, value in dict(MNIST_URL=f'{server.url}/good', MNIST_SIZE=len(PAYLOAD), MNIST_MD5=MD5).items(): monkeypatch.setattr(mn, name, value)
    with warnings.catch_warnings(): warnings.simplefilter('error'); assert mnist_path(tmp_path) == tmp_path/'mnist.pkl.gz'
    monkeypatch.setenv('MINIAI_OFFLINE', 'yes')
    with warnings.catch_warnings(): warnings.simplefilter('error'); assert mnist_path(tmp_path) == tmp_path/'mnist.pkl.gz'
    assert server.hits['/good'] == 1

@pytest.mark.parametrize('value,offline', [('', False), ('0', False), ('false', False), ('1', True), ('yes', True)])
def test_is_offline(monkeypatch, value, offline):
    monkeypatch.setenv('MINIAI_OFFLINE', value)
    assert mn.is_offline() == offline

def test_data_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv('MINIAI_DATA', str(tmp_path/'elsewhere'))
    assert mn.data_dir() == tmp_path/'elsewhere' and (tmp_path/'elsewhere').is_dir()
