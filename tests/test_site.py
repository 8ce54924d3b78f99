"""The documentation site (`bash .ci/docs` builds it into _docs/), checked in a real headless Chromium over a server on
127.0.0.1: every lesson in the sidebar in order, no console errors, every image loaded, maths typeset, no internal link
that 404s, and a search that finds "matmul". Saves screenshots of the index and of one lesson page.
The API reference: each export a card beside its code (a class with its parameters table and methods, clean
signatures), in `objects.inv` for intersphinx, the general index and the API page; the repository button from
settings.ini.

Skips (with the reason) when the site isn't built, is older than a notebook, or Debian's chromium or the `playwright`
package (the docs extra) is missing; `.ci/run` sets MINIAI_REQUIRE_SITE=1 so that, there, a skip is a failure."""
import functools, http.server, os, re, shutil, tempfile, threading
from pathlib import Path
from urllib.parse import urljoin, urlsplit
import pytest

ROOT = Path(__file__).resolve().parent.parent
SITE, NBS = ROOT/'_docs', ROOT/'nbs'
SHOTS = Path(os.environ.get('MINIAI_SITE_SHOTS', ROOT/'_proc'/'screenshots'))
CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')
FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync']

def _why_not():
    "Why the site can't be checked here, or None."
    if not (SITE/'index.html').exists(): return f'the site is not built: run `bash .ci/docs` (it builds {SITE.name}/)'
    newest = max(NBS.glob('*.ipynb'), key=lambda p: p.stat().st_mtime)
    if newest.stat().st_mtime > (SITE/'index.html').stat().st_mtime: return f'the site is older than {newest.name}: rebuild it with `bash .ci/docs`'
    if not CHROMIUM: return 'no chromium on PATH: install Debian\'s (`apt-get install chromium`)'
    try: import playwright.sync_api  # noqa: F401
    except ImportError: return 'the `playwright` package is missing: `.venv/bin/pip install -e ".[docs]"`'

if (_reason := _why_not()):
    if os.environ.get('MINIAI_REQUIRE_SITE') == '1': raise RuntimeError(f'site test required but: {_reason}')
    pytest.skip(_reason, allow_module_level=True)

from playwright.sync_api import Error as PlaywrightError, sync_playwright

def lesson_pages():
    "The page each lesson notebook becomes, in sorted notebook order (nbdev's naming: `01b_iterators` -> `iterators.html`)."
    from nbdev.frontmatter import _nbpath2html
    return [_nbpath2html(p).name for p in sorted(NBS.glob('*.ipynb')) if not p.name.startswith(('_', '.')) and p.stem != 'index']

class _Handler(http.server.SimpleHTTPRequestHandler):
    statuses = {}  # path -> status code, of every request the site served
    def log_message(self, *args): pass
    def send_response(self, code, message=None):
        type(self).statuses[urlsplit(self.path).path] = code
        super().send_response(code, message)

@pytest.fixture(scope='module')
def server():
    srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(_Handler, directory=str(SITE)))
    t = threading.Thread(target=srv.serve_forever, daemon=True); t.start()
    yield f'http://127.0.0.1:{srv.server_address[1]}/'
    srv.shutdown(); srv.server_close()

@pytest.fixture(scope='module')
def browser():
    with tempfile.TemporaryDirectory(prefix='miniai-chromium-') as profile, sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True, args=FLAGS,
                                                   viewport={'width': 1366, 'height': 900}, offline=False)
        ctx.set_default_timeout(20_000)
        yield ctx
        ctx.close()

def visit(browser, url):
    "Open `url`; return the page and what went wrong while it loaded (console errors, failed requests)."
    page, problems = browser.new_page(), []
    page.on('console', lambda m: m.type == 'error' and problems.append(f'console error: {m.text} ({m.location.get("url")})'))
    page.on('pageerror', lambda e: problems.append(f'page error: {e}'))
    page.on('requestfailed', lambda r: problems.append(f'request failed: {r.url} ({r.failure})'))
    page.on('response', lambda r: r.status >= 400 and problems.append(f'HTTP {r.status}: {r.url}'))
    page.goto(url, wait_until='load')
    # images below the fold load lazily: ask for all of them, then wait until each has loaded or failed
    page.evaluate("""() => Promise.all(Array.from(document.images).map(img => {
        img.loading = 'eager';
        return img.complete ? null : new Promise(done => { img.onload = img.onerror = done; setTimeout(done, 10000); });
    }))""")
    return page, problems

@pytest.fixture(scope='module')
def pages(server, browser):
    "Visit the index, every lesson and the reference once: {page name: (links on it, problems, maths, maths typeset)}."
    SHOTS.mkdir(parents=True, exist_ok=True)
    names = ['index.html'] + [n for n in lesson_pages() if (SITE/n).exists()] + ['api.html', 'genindex.html']
    shot = next((n for n in names if 'matmul' in n), names[-1])
    seen = {}
    for name in names:
        page, problems = visit(browser, server + name)
        broken = page.evaluate("() => Array.from(document.images).filter(i => i.naturalWidth === 0).map(i => i.src)")
        problems += [f'image not loaded: {src}' for src in broken]
        n_math = page.evaluate("() => document.querySelectorAll('.math').length")
        typeset = 0
        if n_math:
            try:
                page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise", timeout=15_000)
                page.evaluate("() => MathJax.startup.promise")
            except PlaywrightError as e: problems.append(f'MathJax did not start: {str(e).splitlines()[0]}')
            typeset = page.evaluate("() => Array.from(document.querySelectorAll('.math')).filter(e => e.querySelector('mjx-container')).length")
        links = page.evaluate("() => Array.from(document.querySelectorAll('a[href]')).map(a => a.href)")
        if name in ('index.html', shot):
            page.screenshot(path=str(SHOTS/('index.png' if name == 'index.html' else 'lesson.png')))
        seen[name] = links, problems, n_math, typeset
        page.close()
    print(f'\nscreenshots of index.html and {shot}: {SHOTS}/index.png, {SHOTS}/lesson.png')
    return seen

def test_every_lesson_in_the_sidebar_in_order(server, browser):
    page, _ = visit(browser, server + 'index.html')
    hrefs = page.evaluate("() => Array.from(document.querySelectorAll('.bd-docs-nav a.reference.internal')).map(a => a.getAttribute('href'))")
    page.close()
    shown = [h.split('#')[0] for h in hrefs if h.split('#')[0] not in ('', '#', 'index.html')]
    expected = lesson_pages() + ['api.html', 'genindex.html']   # then the reference: the API page and the index
    assert shown == expected, f'sidebar entries {shown}\nexpected (nbs/*.ipynb, then the reference) {expected}'

def test_pages_load_cleanly(pages):
    bad = {name: problems for name, (_, problems, _, _) in pages.items() if problems}
    assert not bad, f'pages with console errors, failed requests or images not loaded: {bad}'

def test_maths_is_typeset(pages):
    with_maths = {name: (n, typeset) for name, (_, _, n, typeset) in pages.items() if n}
    assert with_maths, 'no page has any maths: expected some (e.g. the matmul and backprop lessons)'
    untypeset = {name: f'{n - typeset} of {n}' for name, (n, typeset) in with_maths.items() if typeset < n}
    assert not untypeset, f'maths left untypeset by MathJax: {untypeset}'

def test_internal_links_resolve(pages, server, browser):
    targets = {urljoin(link, urlsplit(link).path) for links, *_ in pages.values() for link in links if link.startswith(server)}
    assert len(targets) > len(pages), f'too few internal links found: {sorted(targets)}'
    missing = []
    for url in sorted(targets):
        r = browser.request.get(url)
        if r.status != 200: missing.append(f'{r.status} {url}')
    assert not missing, f'internal links that do not resolve: {missing}'

def test_search_finds_matmul(server, browser):
    page, problems = visit(browser, server + 'search.html?q=matmul')
    try: page.wait_for_selector('#search-results ul.search li', timeout=30_000)
    except PlaywrightError: pytest.fail(f'searching "matmul" showed no results in 30 s: {page.inner_text("#search-results")[:300]!r}')
    hits = page.evaluate("() => Array.from(document.querySelectorAll('#search-results ul.search li a')).map(a => a.getAttribute('href'))")
    page.close()
    assert not problems, problems
    assert any('matmul' in h for h in hits), f'searching "matmul" found {hits}'


# ---- the API reference -----------------------------------------------------------------------------------

def exported():
    "{full name: Sphinx object type} of every name each miniai module exports (its `__all__`), and the modules."
    import ast, importlib, inspect
    from nbdev.config import get_config
    out = {}
    for py in sorted(get_config().lib_path.glob('*.py')):
        if py.stem.startswith('_'): continue
        mod = importlib.import_module(f'miniai.{py.stem}')
        out[mod.__name__] = 'py:module'
        tree = ast.parse(py.read_text(encoding='utf-8'))
        defs = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        for n in mod.__all__:
            obj = getattr(mod, n)
            kind = ('py:exception' if inspect.isclass(obj) and issubclass(obj, BaseException) else
                    'py:class' if inspect.isclass(obj) else 'py:function' if n in defs else
                    'py:data')   # constants, and names for other things (rng's `seed`)
            out[f'{mod.__name__}.{n}'] = kind
    return out

def test_objects_inv_lists_every_export():
    "objects.inv (what intersphinx reads) has every exported name, as the right kind of Python object."
    import posixpath
    from sphinx.util.inventory import InventoryFile
    with open(SITE/'objects.inv', 'rb') as f: inv = InventoryFile.load(f, '', posixpath.join)
    assert inv['py:function']['miniai.store.save_model'].uri == 'augment.html#miniai.store.save_model'
    missing = [f'{name} ({kind})' for name, kind in exported().items() if name not in inv.get(kind, {})]
    assert not missing, f'exports missing from objects.inv: {missing}'

_CARD_JS = """name => {
    const dt = document.getElementById(name); if (!dt) return null;
    const dd = dt.parentElement.querySelector(':scope > dd');
    const table = dd.querySelector(':scope > table, :scope > div > table');
    const texts = sel => table ? Array.from(table.querySelectorAll(sel)).map(t => t.innerText.trim()) : [];
    return {sig: dt.innerText, head: texts('thead th'), rows: texts('tbody tr td:first-child'),
            methods: Array.from(dd.querySelectorAll(':scope > dl.py > dt')).map(d => d.id)}; }"""

def _card(browser, server, page_name, name):
    "The card of `name` on `page_name`: its signature's text, its table's header and first column, its methods."
    page, problems = visit(browser, server + page_name)
    card = page.evaluate(_CARD_JS, name)
    page.close()
    assert not problems, problems
    assert card, f'{page_name} has no card for {name}'
    return card

def test_a_class_card_shows_its_parameters_and_methods(server, browser):
    card = _card(browser, server, 'learner.html', 'miniai.learner.Learner')
    assert card['sig'].startswith('class Learner(') and 'model: torch.nn.Module' in card['sig'], card['sig']
    assert card['head'] == ['', 'Type', 'Default', 'Details'], card
    assert card['rows'][:3] == ['model', 'dls', 'loss_func'], card
    cb = _card(browser, server, 'learner.html', 'miniai.learner.TrainCB')
    assert 'miniai.learner.TrainCB.predict' in cb['methods'], cb
    exc = _card(browser, server, 'learner.html', 'miniai.learner.CancelFitException')
    assert exc['sig'].strip().startswith('exception CancelFitException') and '*args' not in exc['sig'], exc

def test_signatures_are_clean():
    "No signature names a private module (`torch._C.Generator`) or shows a class as `def X(*args, **kwargs)`."
    def text(html): return ' '.join(re.sub('<[^>]+>', ' ', html).split())
    dt = re.compile(r'<dt class="sig[^"]*"[^>]*>(.*?)</dt>', re.S)
    sigs = {p.name: [text(s) for s in dt.findall(p.read_text(encoding='utf-8'))] for p in SITE.glob('*.html')}
    dirty = {name: [s[:80] for s in ss if re.search(r'torch\._C|\bdef\b', s)] for name, ss in sigs.items()}
    dirty = {k: v for k, v in dirty.items() if v}
    dirty.update({p.name: ['torch._C on the page'] for p in SITE.glob('*.html') if 'torch._C' in p.read_text('utf-8')})
    assert not dirty, f'signatures naming private modules or shown as functions: {dirty}'
    assert any('torch.Generator' in s for s in sigs['augment.html']), 'augment.html: should read torch.Generator'

def test_cards_sit_beside_their_exports():
    "A card follows the cell defining its name, not the lesson's end: chunks before the section after its export."
    html = (SITE/'iterators.html').read_text(encoding='utf-8')
    card, next_section = html.find('id="miniai.iterators.chunks"'), html.find('<section id="what-an-iterator-is"')
    assert 0 < card < next_section, 'the card of chunks should come before the section "What an iterator is"'

def test_api_page_and_indexes():
    "The API page names every module and links each export to its card; the general and module indexes list them."
    api, index, modindex = ((SITE/f'{n}.html').read_text('utf-8') for n in ('api', 'genindex', 'py-modindex'))
    modules = [n for n, kind in exported().items() if kind == 'py:module']
    assert not [m for m in modules if f'{m}</span></code>' not in api], 'the API page misses modules'
    link = 'href="augment.html#miniai.store.save_model"'
    assert link in api and link in index, 'save_model should be linked from the API page and the general index'
    assert not [m for m in modules if f'>{m}<' not in modindex], 'the module index misses modules'

def test_repository_button_is_settings_git_url():
    from nbdev.config import get_config
    url = get_config().git_url
    html = (SITE/'index.html').read_text(encoding='utf-8')
    button = re.search(r'<a href="([^"]*)"[^>]*\s*class="btn btn-sm btn-source-repository-button"', html)
    assert button and button.group(1) == url, f'the repository button should point at git_url {url} (settings.ini)'
