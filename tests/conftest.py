"Test-wide settings: hypothesis without per-example deadlines (first calls compile with numba or warm up torch)."
from hypothesis import settings

settings.register_profile('miniai', deadline=None)
settings.load_profile('miniai')

def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: long checks (dieharder); run them with `-m slow`')
