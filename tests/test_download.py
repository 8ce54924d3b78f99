"`miniai.download` against a real HTTP server on 127.0.0.1 (no internet): bad servers, bad files, the offline switch."
import hashlib, os, threading, time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import pytest
from miniai.download import DownloadError, atomic_write, data_dir, download, file_mismatch, is_offline

PAYLOAD = bytes(range(256)) * 5000   # 1.28 MB: big enough for the progress bar
MD5 = hashlib.md5(PAYLOAD).hexdigest()

class Handler(BaseHTTPRequestHandler):
    """Serves PAYLOAD whole (/good), cut short (/truncated), altered (/corrupt), not at all (/missing), with a
    Content-Length that is not a number (/badlength) or none (/nolength), after a long silence (/stall), or one byte
    every 50 ms (/trickle)."""
    def do_GET(self):
        self.server.hits[self.path] += 1
        if self.path == '/missing': return self.send_error(404, 'Not Found')
        body = PAYLOAD if self.path != '/corrupt' else PAYLOAD[::-1]
        self.send_response(200)
        if self.path == '/badlength': self.send_header('Content-Length', 'abc')
        elif self.path != '/nolength': self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.close_connection = True
        if self.path == '/stall': time.sleep(3)
        if self.path == '/trickle':
            for i in range(200):   # at most 10 s, far longer than the tests' deadline
                try: self.wfile.write(body[i:i+1]); self.wfile.flush()
                except OSError: return
                time.sleep(0.05)
            return
        try: self.wfile.write(body if self.path != '/truncated' else body[:len(body)//3])
        except OSError: pass
    def log_message(self, *args): pass

@pytest.fixture
def server():
    srv = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    srv.daemon_threads = True
    srv.hits = Counter()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    srv.url = f'http://127.0.0.1:{srv.server_address[1]}'
    yield srv
    srv.shutdown(); srv.server_close()

def names(folder): return sorted(p.name for p in folder.iterdir())

@pytest.mark.parametrize('progress', [True, False, None])
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
def test_bad_body_keeps_earlier_file(server, tmp_path, capsys, path, message):
    old = tmp_path/'f.bin'
    old.write_bytes(b'an earlier, good version')
    with pytest.raises(DownloadError, match=message): download(f'{server.url}{path}', old, size=len(PAYLOAD), md5=MD5)
    assert 'f.bin is not the expected file' in capsys.readouterr().out
    assert old.read_bytes() == b'an earlier, good version' and names(tmp_path) == ['f.bin']

@pytest.mark.parametrize('path', ['/truncated', '/corrupt'])
def test_bad_body_leaves_no_file(server, tmp_path, path):
    with pytest.raises(DownloadError, match='run it again to retry'): download(f'{server.url}{path}', tmp_path/'f.bin', size=len(PAYLOAD), md5=MD5)
    assert names(tmp_path) == []

def test_corrupt_file_in_place_is_replaced(server, tmp_path, capsys):
    dest = tmp_path/'f.bin'
    dest.write_bytes(PAYLOAD[:-1] + b'!')
    download(f'{server.url}/good', dest, size=len(PAYLOAD), md5=MD5)
    out = capsys.readouterr().out
    assert out.count('\n') == 1 and f'expected MD5 {MD5}' in out and str(tmp_path) not in out, out   # one plain line, no path
    assert dest.read_bytes() == PAYLOAD and server.hits['/good'] == 1 and names(tmp_path) == ['f.bin']

def test_unreachable_server(tmp_path):
    with ThreadingHTTPServer(('127.0.0.1', 0), Handler) as srv: port = srv.server_address[1]   # a port nobody listens on now
    with pytest.raises(DownloadError, match='could not reach.*MINIAI_OFFLINE=1'): download(f'http://127.0.0.1:{port}/good', tmp_path/'f.bin', timeout=5)
    assert names(tmp_path) == []

def test_content_length_not_a_number(server, tmp_path):
    "http.client shrugs at `Content-Length: abc`; `int()` of it used to escape as a bare ValueError."
    with pytest.raises(DownloadError, match=r"Content-Length that is not a size \('abc'\)"): download(f'{server.url}/badlength', tmp_path/'f.bin')
    assert names(tmp_path) == []

@pytest.mark.parametrize('progress', [True, False, None])
def test_no_content_length(server, tmp_path, progress):
    "Without a Content-Length we read to the end; a progress bar shows bytes without a total instead of crashing."
    dest = download(f'{server.url}/nolength', tmp_path/'f.bin', size=len(PAYLOAD), md5=MD5, progress=progress)
    assert dest.read_bytes() == PAYLOAD and names(tmp_path) == ['f.bin']

def test_trickle_hits_the_deadline(server, tmp_path):
    "One byte every 50 ms never trips the 5 s timeout; the overall deadline stops it."
    start = time.monotonic()
    with pytest.raises(DownloadError, match=r'took over 0.5 s \(\d+ bytes so far\)'):
        download(f'{server.url}/trickle', tmp_path/'f.bin', timeout=5, deadline=0.5)
    assert time.monotonic() - start < 3 and names(tmp_path) == []

def test_stall_hits_the_timeout(server, tmp_path):
    with pytest.raises(DownloadError, match=r'sent nothing for 0.5 s after 0 bytes'):
        download(f'{server.url}/stall', tmp_path/'f.bin', timeout=0.5)
    assert names(tmp_path) == []

@pytest.mark.parametrize('kw', [dict(timeout=0), dict(deadline=0), dict(deadline=-1)])
def test_bad_limits(tmp_path, kw):
    with pytest.raises(ValueError, match='must be positive'): download('http://127.0.0.1:9/never-asked', tmp_path/'f.bin', **kw)

def test_atomic_write_keeps_nothing_on_error(tmp_path):
    with pytest.raises(ZeroDivisionError):
        with atomic_write(tmp_path/'f.bin') as f: f.write(b'half'); 1/0
    assert names(tmp_path) == []

def test_destination_must_be_a_file_in_a_folder(tmp_path):
    "Clear errors instead of a failure to open a hidden temporary name, or a rename onto a folder."
    with pytest.raises(FileNotFoundError, match=r'there is no folder .*nowhere to create f.bin in'):
        download('http://127.0.0.1:9/never-asked', tmp_path/'nowhere'/'f.bin')
    with pytest.raises(IsADirectoryError, match='is a folder'): download('http://127.0.0.1:9/never-asked', tmp_path)
    assert names(tmp_path) == []

def test_file_mismatch(tmp_path):
    (tmp_path/'f.bin').write_bytes(PAYLOAD)
    assert file_mismatch(tmp_path/'f.bin', len(PAYLOAD), MD5) is None
    assert file_mismatch(tmp_path/'f.bin', size=1) == f'expected 1 bytes, got {len(PAYLOAD):,}'
    assert file_mismatch(tmp_path/'nothing') == 'there is no such file'

@pytest.mark.parametrize('value,offline', [('', False), ('0', False), ('false', False), ('no', False), ('off', False), ('OFF', False),
                                           ('1', True), ('yes', True), ('True', True), (' on ', True)])
def test_is_offline(monkeypatch, value, offline):
    monkeypatch.setenv('MINIAI_OFFLINE', value)
    assert is_offline() == offline

def test_is_offline_unset(monkeypatch):
    monkeypatch.delenv('MINIAI_OFFLINE', raising=False)
    assert is_offline() is False

@pytest.mark.parametrize('value', ['2', 'flase', 'offline', 'y'])
def test_is_offline_rejects_nonsense(monkeypatch, value):
    monkeypatch.setenv('MINIAI_OFFLINE', value)
    with pytest.raises(ValueError, match=f"MINIAI_OFFLINE='{value}' is not understood: use 1, true, yes or on .* 0, false, no, off or nothing"): is_offline()

def test_data_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv('MINIAI_DATA', str(tmp_path/'elsewhere'))
    assert data_dir() == tmp_path/'elsewhere' and (tmp_path/'elsewhere').is_dir()

def test_data_dir_names_a_file_where_a_folder_should_be(tmp_path, monkeypatch):
    (tmp_path/'afile').write_text('not a folder')
    monkeypatch.setenv('MINIAI_DATA', str(tmp_path/'afile'))
    with pytest.raises(NotADirectoryError, match='MINIAI_DATA points at a file.*afile.*a folder'): data_dir()

def test_atomic_write_clears_what_a_killed_write_left(tmp_path):
    "A process killed while writing leaves its hidden .part file; the next write of that file removes it, not a live one's."
    import subprocess, sys as _sys
    dead = subprocess.run([_sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True).stdout.strip()
    stale, live = tmp_path/f'.model.pt.{dead}-0123abcd.part', tmp_path/f'.model.pt.{os.getppid()}-89abcdef.part'
    stale.write_bytes(b'x' * 100); live.write_bytes(b'y')
    with atomic_write(tmp_path/'model.pt') as f: f.write(b'new')
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(['model.pt', live.name])
