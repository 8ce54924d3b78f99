"""The house's shape, measured from the code: imports point down. A module's floor is the first lesson that writes
into it (a room such as `store` is filled by later lessons than its `00_` page); no module imports one that a later
lesson starts, so no import goes up and no two modules import each other, lazily inside a function or not."""
import ast, re
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG, NBS = ROOT/'miniai', ROOT/'nbs'
LESSON_ORDER = {p.stem: i for i, p in enumerate(sorted(NBS.glob('[0-9]*.ipynb')))}
MODULES = sorted(p.stem for p in PKG.glob('*.py') if not p.stem.startswith('_'))

def lessons_writing(module):
    "The lessons whose cells are in `module`, read from its cell markers (a room's `00_` page is not a lesson)."
    text = (PKG/f'{module}.py').read_text(encoding='utf-8')
    return {m.group(1) for m in re.finditer(r'^# %% \.\./nbs/(\S+)\.ipynb', text, re.M) if not m.group(1).startswith('00_')}

def first_lesson(module): return min(LESSON_ORDER[nb] for nb in lessons_writing(module))

def imported(module):
    "The miniai modules `module` imports anywhere in its code, at the top or inside a function."
    found = set()
    for node in ast.walk(ast.parse((PKG/f'{module}.py').read_text(encoding='utf-8'))):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1: found |= {node.module.split('.')[0]} if node.module else {a.name for a in node.names}
            elif node.module == 'miniai': found |= {a.name for a in node.names}
            elif (node.module or '').startswith('miniai.'): found.add(node.module.split('.')[1])
        elif isinstance(node, ast.Import): found |= {a.name.split('.')[1] for a in node.names if a.name.startswith('miniai.')}
    return found & set(MODULES)

def test_every_module_is_written_by_a_lesson():
    assert not [m for m in MODULES if not lessons_writing(m)]

@pytest.mark.parametrize('module', MODULES)
def test_imports_point_down(module):
    up = sorted(m for m in imported(module) if first_lesson(m) > first_lesson(module))
    assert not up, f'miniai.{module} (lesson {first_lesson(module)}) imports modules of later lessons: {up}'

def test_no_circles():
    edges = {m: imported(m) for m in MODULES}
    def reaches(a, b, seen=()):
        return any(x == b or (x not in seen and reaches(x, b, seen + (x,))) for x in edges[a])
    assert not [(a, b) for a in MODULES for b in edges[a] if reaches(b, a)]
