"""What every lesson's saved notebook must be, outputs included: under 500 KB (a reader downloads it, and the docs site
embeds it), and free of the paths of the machine it ran on (a learner's folders are not ours)."""
import json, re
from pathlib import Path
import pytest

NBS = Path(__file__).resolve().parent.parent/'nbs'
NOTEBOOK_MAX_BYTES = 500_000
# absolute paths of a home, a workspace or a temporary folder: what a machine leaks into an output
MACHINE_PATH = re.compile(r'(?<![\w.])/(?:home|root|Users|work|tmp|private/var)/\S+')

def output_texts(nb:dict):
    "Each output's text of the notebook `nb`: streams, plain-text results and tracebacks, as `(cell index, text)`."
    for i, cell in enumerate(nb['cells']):
        for out in cell.get('outputs', []):
            text = ''.join(out.get('text', '')) + ''.join(out.get('data', {}).get('text/plain', ''))
            yield i, text + '\n'.join(out.get('traceback', []))

def machine_paths(nb:dict)->list:
    "`(cell index, path)` for every absolute path of a machine in the outputs of `nb`."
    return [(i, m.group()) for i, text in output_texts(nb) for m in MACHINE_PATH.finditer(text)]

NOTEBOOKS = sorted(NBS.glob('*.ipynb'))

@pytest.mark.parametrize('path', NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_under_size_limit(path):
    size = path.stat().st_size
    assert size < NOTEBOOK_MAX_BYTES, (f'{path.name} is {size:,} bytes, over {NOTEBOOK_MAX_BYTES:,}: make its outputs '
                                       'smaller (fewer or smaller plots, PNGs saved as palette images)')

@pytest.mark.parametrize('path', NOTEBOOKS, ids=lambda p: p.name)
def test_no_machine_paths_in_outputs(path):
    found = machine_paths(json.loads(path.read_text(encoding='utf-8')))
    assert not found, f'{path.name} shows paths of the machine it ran on (cell, path): {found[:5]}'

def fake_notebook(*texts):
    "A notebook of one code cell per text, each with that text as its stream output."
    return dict(cells=[dict(cell_type='code', source='', outputs=[dict(output_type='stream', name='stdout', text=t)])
                       for t in texts])

def test_machine_paths_found_and_not():
    nb = fake_notebook('saved in /home/ann/miniai/nbs/data/models\n', 'loaded from models/vae_e3\n',
                       'a ratio 3/4, https://example.com/tmp/x and ./tmp/y\n', 'cache /tmp/torchinductor_ann\n')
    assert machine_paths(nb) == [(0, '/home/ann/miniai/nbs/data/models'), (3, '/tmp/torchinductor_ann')]
    error = dict(cells=[dict(cell_type='code', source='', outputs=[
        dict(output_type='error', ename='E', evalue='', traceback=['File /work/main/nbs/x.py, line 3'])])])
    assert machine_paths(error) == [(0, '/work/main/nbs/x.py,')]
