"Test-wide settings: hypothesis without per-example deadlines (first calls compile with numba or warm up torch)."
import os
from hypothesis import settings

# the tests of test-size runs set these themselves; from the environment they would change what other tests load
for name in ('IN_TEST', 'MINIAI_FULL'): os.environ.pop(name, None)

settings.register_profile('miniai', deadline=None)
settings.load_profile('miniai')

def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: long checks (dieharder); run them with `-m slow`')
