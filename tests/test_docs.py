"Every exported function and class carries a docstring, so the docs site never shows a bare signature."
import importlib, inspect, pkgutil
import pytest
import miniai

MODULES = [m.name for m in pkgutil.iter_modules(miniai.__path__) if not m.name.startswith('_')]

@pytest.mark.parametrize('name', MODULES)
def test_exports_have_docstrings(name):
    module = importlib.import_module(f'miniai.{name}')
    assert module.__doc__, f'miniai.{name} has no module docstring (the notebook summary line)'
    missing = [n for n in module.__all__ if callable(obj := getattr(module, n)) and not (inspect.getdoc(obj) or '').strip()]
    assert not missing, f'miniai.{name}: exported without a docstring: {missing}'

def test_every_lesson_module_is_listed():
    assert {'mnist', 'iterators', 'matrix', 'tensors', 'rng', 'matmul', 'fastmatmul', 'fastrng', 'bench', 'meanshift', 'backprop', 'training'} <= set(MODULES)
