"""Sphinx configuration for miniai's site (`bash .ci/docs`): nbdev's processed notebooks, rendered by myst-nb from
their stored outputs (nothing is executed), in sphinx-book-theme, with MathJax served from the site itself."""
import ast
from configparser import ConfigParser
from functools import lru_cache
from pathlib import Path

_root = Path(__file__).resolve().parents[2]
_cfg = ConfigParser(delimiters=['=']); _cfg.read(_root/'settings.ini', encoding='utf-8'); _cfg = _cfg['DEFAULT']

project = _cfg['lib_name']
author = _cfg['author']
copyright = _cfg['copyright']
release = version = _cfg['version']

extensions = ['myst_nb', 'sphinx.ext.githubpages', 'sphinx.ext.linkcode', 'sphinx-mathjax-offline']
exclude_patterns = ['**.ipynb_checkpoints']

# myst-nb: render what the notebooks stored; GIF animations shown as images
nb_execution_mode = 'off'
nb_mime_priority_overrides = [('html', 'image/gif', 25)]
nb_merge_streams = True
myst_enable_extensions = ['dollarmath', 'amsmath', 'attrs_inline', 'attrs_block', 'colon_fence', 'html_image', 'smartquotes']
myst_heading_anchors = 3

# the book theme: lessons in the left sidebar, the page's sections on the right
html_theme = 'sphinx_book_theme'
html_title = f"{project}: deep learning from the foundations"
html_static_path = ['_static']
html_css_files = ['custom.css']
html_favicon = '_static/miniai.svg'
html_last_updated_fmt = None
html_copy_source = False
html_show_sourcelink = False
html_theme_options = {
    'repository_url': _cfg['git_url'],
    'repository_branch': _cfg['branch'],
    'path_to_docs': _cfg['nbs_path'],
    'use_repository_button': True,
    'logo': {'text': project, 'image_light': '_static/miniai.svg', 'image_dark': '_static/miniai.svg'},
    'home_page_in_toc': True,
    'show_toc_level': 2,
    'navigation_with_keys': False,
    'use_download_button': False,   # it would offer nbdev's processed copy, not the lesson's notebook
    'use_fullscreen_button': False,
}
html_context = {'default_mode': 'light'}

# the API cards (prepare.py writes show_doc's as Sphinx's Python domain directives): named as the lessons name
# them, long signatures one parameter a line, each card's [source] on the module's page of this site (`_modules/`)
add_module_names = False
python_use_unqualified_type_names = True
python_maximum_signature_line_length = 88
toc_object_entries_show_parents = 'hide'

_defs = (ast.FunctionDef, ast.AsyncFunctionDef)

@lru_cache(None)
def _definitions(py):
    "{name: line} of module `py`'s classes, functions, methods (`Class.method`, as show_doc names them) and data."
    from fastcore.basics import listify
    from nbdev.doclinks import patch_name
    found = {}
    for node in ast.parse(py.read_text(encoding='utf-8')).body:
        if isinstance(node, ast.ClassDef):
            found[node.name] = node.lineno
            found.update({f'{node.name}.{n.name}': n.lineno for n in node.body if isinstance(n, _defs)})
        elif isinstance(node, _defs): found.update({nm: node.lineno for nm in listify(patch_name(node))})
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):   # data, `a, b = ...` included
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            found.update({n.id: node.lineno for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)})
    return found

def linkcode_resolve(domain, info):
    "The line of the module's page (`_modules/`) where `info['fullname']` is defined."
    if domain != 'py' or not info.get('module', '').startswith(f"{project}."): return None
    mod = info['module'].split('.', 1)[1]
    py = _root/_cfg['lib_path']/f'{mod}.py'
    line = _definitions(py).get(info['fullname']) if py.exists() else None
    return f"_modules/{mod}.html" + (f"#L-{line}" if line else '')
