"""Every lesson's module exists with a summary line, and every export carries a docstring and is shown in its
lesson with `show_doc`, so the docs site never shows a bare signature or leaves a name out."""
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
