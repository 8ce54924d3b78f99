"The timing helpers: medians after warm-up, interleaved rounds, thread settings restored, a machine description anywhere."
import subprocess, sys
import numba, pytest, torch
from miniai import timing
from miniai.timing import current_threads, gflops, machine_info, machine_summary, set_threads, time_interleaved, time_median, time_runs

class FakeClock:
    "A perf_counter whose successive readings are given, so timings are exact."
    def __init__(self, readings): self.readings = iter(readings)
    def __call__(self): return next(self.readings)

def test_warmup_calls_are_not_timed_and_median_is_the_median(monkeypatch):
    calls = []
    # three timed runs of 1, 5 and 2 seconds (start/stop readings); the warm-up call reads no clock
    monkeypatch.setattr(timing.time, 'perf_counter', FakeClock([0, 1, 10, 15, 20, 22]))
    assert time_median(lambda: calls.append(1), repeats=3, warmup=2) == 2
    assert len(calls) == 5

def test_number_divides_each_run():
    calls = []
    runs = time_runs(lambda: calls.append(1), repeats=2, warmup=0, number=10)
    assert len(runs) == 2 and len(calls) == 20

@pytest.mark.parametrize('kwargs', [dict(repeats=0), dict(number=0), dict(warmup=-1)])
def test_bad_counts_are_refused(kwargs):
    with pytest.raises(ValueError, match='need repeats >= 1'): time_runs(lambda: None, **kwargs)

def test_interleaved_order_and_medians(monkeypatch):
    calls = []
    monkeypatch.setattr(timing.time, 'perf_counter', FakeClock(range(0, 100, 1)))   # every call lasts 1 "second"
    medians = time_interleaved({'a': lambda: calls.append('a'), 'b': lambda: calls.append('b')}, repeats=3, warmup=1, shuffle=False)
    assert calls == ['a', 'b'] * 4 and medians == {'a': 1.0, 'b': 1.0}
    with pytest.raises(ValueError, match='repeats >= 1'): time_interleaved({'a': lambda: None}, repeats=0)

def test_gflops():
    assert gflops(1.0, 1000, 1000, 1000) == 2.0
    assert gflops(2e-3, 5, 784, 10) == pytest.approx(2 * 5 * 784 * 10 / 2e-3 / 1e9)

def test_set_threads_restores_every_pool():
    "BLAS's restore must not undo torch's restore (threadpoolctl restores every pool it saw, OpenMP included)."
    before = current_threads()
    with set_threads(1) as s:
        inside = current_threads()
        assert inside['torch'] == 1 and inside['numba'] == 1 and inside['blas'] in (1, None)
        assert s.previous == before
    assert current_threads() == before
    s = set_threads(1); s.restore()
    assert current_threads() == before

def test_set_threads_restores_on_error_and_nests():
    before = current_threads()
    with pytest.raises(KeyError):
        with set_threads(1):
            with set_threads(2): assert torch.get_num_threads() == 2
            assert torch.get_num_threads() == 1
            raise KeyError
    assert current_threads() == before

@pytest.mark.parametrize('n', [0, -1, 1.5, True, '2'])
def test_set_threads_bad_input(n):
    with pytest.raises(ValueError, match='whole number >= 1'): set_threads(n)
    assert torch.get_num_threads() >= 1

def test_numba_threads_capped_at_pool_size():
    with set_threads(numba.config.NUMBA_NUM_THREADS + 3): assert numba.get_num_threads() == numba.config.NUMBA_NUM_THREADS

def test_machine_info_here():
    info = machine_info()
    assert info['logical_cpus'] >= 1 and isinstance(info['features'], list)
    if info['arch'] in ('x86_64', 'amd64'): assert info['vector_bits'] in (128, 256, 512) and info['vector_registers'] in (16, 32)
    summary = machine_summary(info)
    assert summary.startswith('cpu: ') and 'torch' in summary and '/' not in summary.replace('GFLOP/s', '')

def test_machine_info_without_proc_or_sysfs(monkeypatch, tmp_path):
    "Where /proc/cpuinfo and sysfs don't exist (macOS, Windows), the unknown parts are None or empty, and nothing raises."
    monkeypatch.setattr(timing, '_CPUINFO', tmp_path/'missing')
    monkeypatch.setattr(timing, '_CACHES', tmp_path/'missing_dir')
    info = machine_info()
    assert info['caches'] == {} and info['mhz'] is None
    assert machine_summary(info).splitlines()[0].startswith('cpu: ')

def test_machine_info_reads_sysfs_layout(monkeypatch, tmp_path):
    for i, (level, kind, size) in enumerate([(1, 'Data', '48K'), (1, 'Instruction', '32K'), (2, 'Unified', '2048K'), (3, 'Unified', '32M')]):
        d = tmp_path/f'index{i}'; d.mkdir()
        (d/'level').write_text(f'{level}\n'); (d/'type').write_text(kind + '\n'); (d/'size').write_text(size + '\n')
    (tmp_path/'cpuinfo').write_text('processor\t: 0\nmodel name\t: Test CPU 9000\ncpu MHz\t\t: 3650.000\n')
    monkeypatch.setattr(timing, '_CACHES', tmp_path)
    monkeypatch.setattr(timing, '_CPUINFO', tmp_path/'cpuinfo')
    info = machine_info()
    assert info['caches'] == {'L1d': 48 * 1024, 'L1i': 32 * 1024, 'L2': 2 * 2**20, 'L3': 32 * 2**20}
    assert info['cpu'] == 'Test CPU 9000' and info['mhz'] == 3650.0
    assert 'L1d 48 KB' in machine_summary(info) and 'L2 2 MB' in machine_summary(info)

def test_import_is_light():
    "Importing miniai.timing compiles no kernel module and switches on no process-wide setting."
    code = ('import os, sys, miniai.timing; '
            'print(sorted(m for m in sys.modules if m.startswith("miniai."))); print(os.environ.get("NUMBA_ENABLE_CUDASIM"))')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300, check=True).stdout.split('\n')
    assert out[0] == "['miniai.timing']" and out[1] == 'None'

def test_interleaved_shuffles_each_timed_round():
    calls = []
    medians = time_interleaved({name: (lambda name=name: calls.append(name)) for name in 'abcde'}, repeats=6, warmup=1)
    rounds = [''.join(calls[i:i + 5]) for i in range(0, len(calls), 5)]
    assert rounds[0] == 'abcde' and all(sorted(r) == list('abcde') for r in rounds)
    assert len(set(rounds[1:])) > 1 and list(medians) == list('abcde')
