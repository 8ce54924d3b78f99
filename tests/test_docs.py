"""Every lesson's module exists with a summary line, and every export carries a docstring and is shown in its
lesson with `show_doc`, so the docs site never shows a bare signature or leaves a name out. The site's API cards
(`.ci/sphinx/`): each moved beside its export, a class with its parameters and methods, public type names."""
import ast, importlib, inspect, json, re
from pathlib import Path
import pytest

NBS = Path(__file__).resolve().parent.parent/'nbs'

def notebook_sources(path):
    "The code cells of the notebook at `path`, as strings."
    return [''.join(c['source']) for c in json.loads(path.read_text(encoding='utf-8'))['cells'] if c['cell_type'] == 'code']

def default_exp(path):
    "The module named by the notebook's `#| default_exp` line, or None."
    for src in notebook_sources(path):
        if m := re.search(r'^#\s*\|\s*default_exp\s+(\S+)', src, re.M): return m.group(1)

LESSONS = {nb.stem: mod for nb in sorted(NBS.glob('*.ipynb')) if (mod := default_exp(nb))}

def test_lessons_are_found():
    assert len(LESSONS) >= 12, f'expected a module from each lesson, found {LESSONS}'
    assert len(set(LESSONS.values())) == len(LESSONS), f'two notebooks export to one module: {LESSONS}'

@pytest.mark.parametrize('nb,name', LESSONS.items())
def test_exports_have_docstrings(nb, name):
    module = importlib.import_module(f'miniai.{name}')
    assert module.__doc__, f'miniai.{name} has no module docstring (the `>` summary under {nb}\'s title)'
    missing = [n for n in module.__all__ if callable(obj := getattr(module, n)) and not (inspect.getdoc(obj) or '').strip()]
    assert not missing, f'miniai.{name}: exported without a docstring: {missing}'

def shown_names(srcs):
    "Names passed to `show_doc(...)` in the notebook's code cells."
    names = set()
    for src in srcs:
        code = '\n'.join(l for l in src.splitlines() if not l.lstrip().startswith(('%', '!')))
        try: tree = ast.parse(code)
        except SyntaxError: continue
        names |= {ast.unparse(n.args[0]) for n in ast.walk(tree) if isinstance(n, ast.Call)
                  and getattr(n.func, 'id', None) == 'show_doc' and n.args}
    return names

def defining_notebooks(name):
    "{exported name: the notebook whose cell defines it} for module `miniai.NAME`, read from the module's cell markers."
    module, found, nb = importlib.import_module(f'miniai.{name}'), {}, None
    for line in Path(module.__file__).read_text(encoding='utf-8').splitlines():
        if m := re.match(r'# %% \.\./nbs/(\S+)\.ipynb', line): nb = m.group(1)
        elif m := re.match(r'(?:async\s+)?(?:def|class)\s+(\w+)', line): found.setdefault(m.group(1), nb)
    return {n: found[n] for n in module.__all__ if n in found}

@pytest.mark.parametrize('nb,name', LESSONS.items())
def test_exports_are_shown_in_their_lesson(nb, name):
    "Each exported function and class appears in a `show_doc` call of the notebook that defines it (a module's room may be filled by several lessons)."
    module = importlib.import_module(f'miniai.{name}')
    missing = [f'{n} ({where})' for n, where in defining_notebooks(name).items()
               if (inspect.isfunction(obj := getattr(module, n)) or inspect.isclass(obj)) and getattr(obj, '__module__', None) == module.__name__
               and n not in shown_names(notebook_sources(NBS/f'{where}.ipynb'))]
    assert not missing, f'miniai.{name}: exports never shown with show_doc in the lesson that defines them: {missing}'

def test_every_export_is_found_in_a_lesson():
    "Every exported function and class of every module is defined in some notebook's cell (none written by hand)."
    for name in set(LESSONS.values()):
        module = importlib.import_module(f'miniai.{name}')
        defined = defining_notebooks(name)
        stray = [n for n in module.__all__ if (inspect.isfunction(obj := getattr(module, n)) or inspect.isclass(obj))
                 and getattr(obj, '__module__', None) == module.__name__ and n not in defined]
        assert not stray, f'miniai.{name}: {stray} have no notebook cell'

# ---- the docs site's API cards (.ci/sphinx/prepare.py and apidoc.py), checked without building the site ---

import sys, typing
sys.path.insert(0, str(NBS.parent/'.ci'/'sphinx'))
import apidoc, prepare  # noqa: E402

def _cell(src, kind='code'): return {'cell_type': kind, 'source': src, 'metadata': {}, 'outputs': []}

def test_cards_move_beside_their_exports():
    "Each `show_doc(name)` cell lands right after the export cell defining `name`; other cells keep their order."
    cells = [_cell('#| default_exp things'), _cell('#| export\ndef f(x): return x'), _cell('prose', 'markdown'),
             _cell('#| export store\nclass C:\n    def m(self): pass'), _cell('## What we built', 'markdown'),
             _cell('show_doc(f)'), _cell('show_doc(C)'), _cell('show_doc(C.m)'), _cell('show_doc(g)')]
    exports = prepare.exported_names(cells, 'things')
    assert exports == {'f': (1, 'things'), 'C': (3, 'store'), 'C.m': (3, 'store')}
    order = [''.join(c['source']).splitlines()[-1] for c in prepare.cards_beside_exports(cells, exports)]
    assert order == ['#| default_exp things', 'def f(x): return x', 'show_doc(f)', 'prose',
                     '    def m(self): pass', 'show_doc(C)', 'show_doc(C.m)', '## What we built', 'show_doc(g)']

@pytest.mark.parametrize('nb', ['01b_iterators', '09_learner'])
def test_lesson_cards_follow_their_exports(nb):
    "In a real lesson, each card of a name the lesson exports follows its export cell (or other cards that do)."
    cells = json.loads((NBS/f'{nb}.ipynb').read_text(encoding='utf-8'))['cells']
    exports = prepare.exported_names(cells, default_exp(NBS/f'{nb}.ipynb'))
    moved = prepare.cards_beside_exports(cells, exports)
    assert len(moved) == len(cells)
    for i, c in enumerate(moved):
        if (name := prepare.shown_name(c)) in exports:
            j = i - 1
            while prepare.shown_name(moved[j]): j -= 1
            assert moved[j] is cells[exports[name][0]], f'{nb}: the card of {name} is not beside its export'

def test_annotations_use_public_names():
    import torch
    assert apidoc.fmt_anno(torch.Generator | None) == 'torch.Generator | None'
    assert apidoc.fmt_anno(typing.Optional[torch.Generator]) == 'Optional[torch.Generator]'
    assert apidoc.fmt_anno(torch.nn.Module) == 'torch.nn.Module'
    assert apidoc.fmt_anno(int) == 'int'
    assert apidoc.fmt_default(torch.sigmoid) == 'sigmoid' and apidoc.fmt_default(object()) == '...'

class _Demo:
    "A demo class."
    def __init__(self, n:int, # how many
                 generator:'torch.Generator|None'=None): pass # where the randomness comes from
    def run(self, steps:int=1)->int:
        "Run `steps` steps."
    @property
    def size(self)->int: "How big it is."
    @classmethod
    def make(cls, n:int): "A demo of `n`."

class _NoInit(Exception): "Nothing to pass."

def test_a_class_card_has_its_init_parameters_a_table_and_methods():
    d = apidoc.describe(_Demo, '_Demo')
    assert d['kind'] == 'class' and [p['name'] for p in d['params']] == ['n', 'generator']
    members = [(m['name'], m['kind']) for m in d['members']]
    assert members == [('_Demo.run', 'method'), ('_Demo.size', 'property'), ('_Demo.make', 'classmethod')]
    md = apidoc.directive({**d, 'module': 'demo'}, set())
    assert md.startswith('::::{py:class} _Demo(n: int, generator: torch.Generator|None = None)\n'
                         ':module: miniai.demo\n')
    assert '| | Type | Default | Details |' in md and '| `n` | `int` |  | how many |' in md
    assert ':::{py:method} run(steps: int = 1) -> int' in md and ':::{py:property} size\n:type: int' in md
    assert ':::{py:method} make(n: int)\n:classmethod:' in md
    assert apidoc.describe(_Demo.make, '_Demo.make', _Demo)['params'][0]['name'] == 'n'   # show_doc(_Demo.make)
    assert 'def ' not in md and 'self' not in md

def test_a_table_has_only_the_columns_its_parameters_fill():
    p = dict(star='', default='', kwonly=False, posonly=False)
    d = dict(params=[dict(p, name='seq', anno='', doc='a sequence'), dict(p, name='size', anno='int', doc='a | b')],
             returns=dict(anno='list', doc=''))
    assert apidoc.param_table(d).splitlines() == ['| | Type | Details |', '|---|---|---|', '| `seq` |  | a sequence |',
                                                  '| `size` | `int` | a \\| b |', '| **Returns** | `list` |  |']
    assert apidoc.param_table(dict(d, params=[dict(p, name='x', anno='', doc='')], returns={})) == ''

def test_a_class_without_init_has_no_parameters_and_a_second_card_is_not_indexed_again():
    d = {**apidoc.describe(_NoInit, '_NoInit'), 'module': 'demo'}
    assert d['kind'] == 'exception' and d['params'] is None and d['bases'] == ['Exception']
    seen = set()
    first, second = apidoc.directive(d, seen), apidoc.directive(d, seen)
    assert first.startswith(':::{py:exception} _NoInit\n') and ':no-index:' not in first
    assert ':no-index:' in second
