"`miniai-bench` runs end to end (tiny sizes: timings are never asserted, only that every table is produced)."
import subprocess, sys
from pathlib import Path
import pytest
from miniai.bench import main

def test_console_script_quick_run(tmp_path):
    exe = Path(sys.executable).parent/'miniai-bench'
    if not exe.exists(): pytest.fail(f'{exe} is missing: install miniai (pip install -e .) to get the console script')
    out = subprocess.run([str(exe), '--quick', '--plot', str(tmp_path/'chart.png')], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    for title in ('1. The matmul ladder', '2. Square float32 matmul', '3. Random numbers'): assert title in out.stdout
    for name in ('matmul_loops', 'matmul_cuda', 'matmul_parallel_numba', 'numpy', 'WichmannHillStreams', 'torch.rand'): assert name in out.stdout
    assert (tmp_path/'chart.png').read_bytes()[:4] == b'\x89PNG'

@pytest.mark.parametrize('args,message', [(['--sizes', 'big'], 'comma-separated whole numbers'), (['--threads', '0'], 'at least 1')])
def test_bad_arguments_are_explained(capsys, args, message):
    with pytest.raises(SystemExit): main(args)
    assert message in capsys.readouterr().err
