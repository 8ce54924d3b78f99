"`miniai-bench` runs end to end (tiny sizes: timings are never asserted, only that every table is produced), and its checker can fail."
import argparse, subprocess, sys
from pathlib import Path
import pytest, torch
from miniai import bench
from miniai.bench import TABLES, check_close, main, run_table
from miniai.timing import current_threads

def test_console_script_quick_run(tmp_path):
    exe = Path(sys.executable).parent/'miniai-bench'
    if not exe.exists(): pytest.fail(f'{exe} is missing: install miniai (pip install -e .) to get the console script')
    out = subprocess.run([str(exe), '--quick', '--plot', str(tmp_path/'chart.png')], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith('cpu: ')
    for title in ('1. The matmul ladder', '2. Square float32 matmul', '3. Random numbers', '4. Learner overhead', '5. Data parallel', '6. ResNet training speed', '7. Sampling'):
        assert title in out.stdout
    for name in ('matmul_loops', 'matmul_cuda', 'matmul_parallel_numba', 'numpy', 'WichmannHillStreams', 'torch.rand', '2 processes x 1 thread', 'channels_last', 'Heun', 'DDIM (lesson 19)'): assert name in out.stdout
    assert (tmp_path/'chart.png').read_bytes()[:4] == b'\x89PNG'

@pytest.mark.parametrize('args,message', [(['--sizes', 'big'], 'comma-separated whole numbers'), (['--threads', '0'], 'at least 1'),
                                          (['--tables', 'ladder,nope'], 'unknown table(s) nope')])
def test_bad_arguments_are_explained(capsys, args, message):
    with pytest.raises(SystemExit): main(args)
    assert message in capsys.readouterr().err

def test_main_restores_threads_and_runs_only_the_tables_asked_for(capsys):
    before = current_threads()
    main(['--quick', '--tables', 'rng', '--threads', '1'])
    out = capsys.readouterr().out
    assert '3. Random numbers' in out and '1. The matmul ladder' not in out and '(threads: 1,' in out
    assert current_threads() == before

def test_later_lessons_can_add_a_table(monkeypatch, capsys):
    "A table is a function of the options, or a 'module:function' string imported only when it runs."
    monkeypatch.setitem(TABLES, 'extra', lambda opts: f'4. Extra (repeats={opts.repeats})')
    monkeypatch.setitem(TABLES, 'lazy', 'builtins:repr')
    main(['--quick', '--tables', 'extra,lazy'])
    out = capsys.readouterr().out
    assert '4. Extra (repeats=3)' in out and 'Namespace(' in out

def test_run_table_names_a_missing_module():
    with pytest.raises(ModuleNotFoundError, match='miniai.not_there'): run_table('miniai.not_there:table', argparse.Namespace())

nan, inf = float('nan'), float('inf')

@pytest.mark.parametrize('result,expected,message', [
    (torch.tensor([nan]), torch.tensor([1.0]), 'NaN in different places'),
    (torch.tensor([1.0]), torch.tensor([nan]), 'NaN in different places'),
    (torch.ones(1), torch.ones(5, 5), r'shape \(1,\), torch gives \(5, 5\)'),
    (torch.ones(5, 5), torch.ones(5), r'shape \(5, 5\), torch gives \(5,\)'),
    (torch.tensor([inf]), torch.tensor([-inf]), 'infinities differ'),
    (torch.tensor([inf]), torch.tensor([1.0]), 'infinities differ'),
    (torch.tensor([1.0, 2.0]), torch.tensor([1.0, 3.0]), 'differs from torch by 1'),
])
def test_check_close_fails_on_wrong_results(result, expected, message):
    with pytest.raises(AssertionError, match=message): check_close(result, expected, k=10)

def test_check_close_accepts_agreement():
    check_close(torch.ones(3, 3) + 1e-6, torch.ones(3, 3), k=10)
    check_close(torch.tensor([nan, inf, -inf, 2.0]), torch.tensor([nan, inf, -inf, 2.0]), k=1)
    check_close(torch.full((2,), nan), torch.full((2,), nan), k=1)   # nothing finite to compare
    check_close(torch.ones(0, 3), torch.ones(0, 3), k=1)

def test_format_table_refuses_ragged_rows():
    "A row with more or fewer cells than headers used to be cut short or crash with IndexError."
    assert bench.format_table('T', ['a', 'bb'], [['x', 1]]).splitlines()[-1] == 'x   1'
    with pytest.raises(ValueError, match='row 1 has 1 cells for 2 headers'): bench.format_table('T', ['a', 'bb'], [['x', 1], ['y']])
    with pytest.raises(ValueError, match='row 0 has 3 cells'): bench.format_table('T', ['a', 'bb'], [['x', 1, 2]])
