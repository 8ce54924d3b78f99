"""Prepare the notebooks for Sphinx + myst-nb (run by `.ci/docs`; nothing is executed but what nbdev itself runs to
expand `show_doc`).

1. nbdev's own notebook processing (the processors `nbdev_proc_nbs` applies: `show_doc` expanded after each export,
   `#|` directives applied, hidden cells dropped) over every `nbs/*.ipynb`, in sorted order, into `_proc/nbdev/`.
   We call nbdev's processors directly because the `nbdev_proc_nbs` command first tries to install Quarto (and then
   runs `pip install -e .` with whichever pip is on PATH). Two changes: a cell that mixes imports with other code has
   only its imports run (nbdev would run it whole, without the earlier cells it depends on; see nbdev's FAQ), and
   a title cell that goes on after its `>` summary is split, so that the rest isn't dropped with the front matter.
2. Sphinx's source folder, `_proc/sphinx/`: one page per notebook, named as nbdev names it (`01b_iterators` ->
   `iterators.html`); the front matter becomes the page's title, lead and a line naming its notebook and module;
   Quarto's `#| echo: false` becomes myst-nb's `remove-input`; nbdev's doc links and links between notebooks become
   links between pages; the index gets the lesson list (a toctree, in file order) that the sidebar shows, then the
   reference: the API page (`api.md`) and Sphinx's general index.

The API cards. Each `show_doc(name)` cell is moved right after the export cell that defines `name`, where nbdev puts
the cards it adds itself (the notebooks gather theirs at the lesson's end, and keep them there). `show_doc` renders with
`apidoc.ApiDoc`, which stores a description of the object; step 2 writes it as a directive of Sphinx's Python domain
(`py:function`, `py:class` with its methods...): the docments as a Type / Default / Details table, public type names,
each card in the general index and in `objects.inv`, its [source] on a page per module (`_modules/`, each a
`py:module`). nbdev's links to a carded name become cross-references to the card.
"""
import ast, hashlib, json, os, re, shutil, subprocess, sys, warnings
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor
sys.path.insert(0, str(Path(__file__).parent))
import apidoc

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT/'_proc'          # nbdev's output in _proc/nbdev, Sphinx's source folder in _proc/sphinx
NBDEV, SRC = OUT/'nbdev', OUT/'sphinx'

def lessons(nbs):
    "Every notebook nbdev would process, sorted by name."
    return sorted(p for p in nbs.glob('*.ipynb') if not p.name.startswith(('_', '.')))

_re_fm_line = re.compile(r'^-\s+\S.*:.*\S\s*$')

def split_title_cell(cells):
    """nbdev reads the first markdown cell with an H1 as front matter (title, `>` summary, `- key: value` lines) and
    drops the cell; what else that cell says (the index: the whole README) would vanish, so it gets its own cell."""
    for i, c in enumerate(cells):
        src = ''.join(c['source'])
        if c['cell_type'] != 'markdown' or not re.search(r'^#\s+\S', src, re.M): continue
        blocks = re.split(r'\n\s*\n', src.strip())
        keep = 0
        while keep < len(blocks) and (re.match(r'#\s|>\s', blocks[keep]) or all(map(_re_fm_line.match, blocks[keep].splitlines()))): keep += 1
        if keep == len(blocks): return cells
        head, rest = '\n\n'.join(blocks[:keep]), '\n\n'.join(blocks[keep:])
        return cells[:i] + [{**c, 'source': head}, {**c, 'id': (c.get('id') or 'title') + 'b', 'source': rest}] + cells[i+1:]
    return cells

_re_export = re.compile(r'^#\s*\|\s*export(?:s|i)?\b[ \t]*(\S*)', re.M)

def _code(cell):
    "A code cell's Python, without its `#|` directives and shell or magic lines; None if it doesn't parse."
    lines = [l for l in ''.join(cell['source']).splitlines() if not l.lstrip().startswith(('#|', '%', '!'))]
    try: return ast.parse('\n'.join(lines))
    except SyntaxError: return None

def exported_names(cells, default_module):
    """{name: (index of the cell defining it, module it is exported to)} for the notebook's export cells; a class's
    methods are named `Class.method`, as `show_doc` names them, and so are `@patch`ed functions."""
    from fastcore.basics import listify
    from nbdev.doclinks import patch_name
    found = {}
    for i, c in enumerate(cells):
        m = _re_export.search(''.join(c['source'])) if c['cell_type'] == 'code' else None
        if not m or not (tree := _code(c)): continue
        mod = m.group(1) or default_module
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                found[node.name] = (i, mod)
                found.update({f'{node.name}.{n.name}': (i, mod) for n in node.body
                              if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))})
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found.update({nm: (i, mod) for nm in listify(patch_name(node))})
    return found

def shown_name(cell):
    "The name a cell that is just `show_doc(name)` documents, or None."
    tree = _code(cell) if cell['cell_type'] == 'code' else None
    call = getattr(tree.body[0], 'value', None) if tree and len(tree.body) == 1 else None
    if not isinstance(call, ast.Call): return None
    if getattr(call.func, 'id', None) == 'show_doc' and call.args: return ast.unparse(call.args[0])

def cards_beside_exports(cells, exports):
    """Each `show_doc(name)` cell moved to just after the export cell that defines `name` (a method's card after its
    class's cell when it has no cell of its own), as nbdev places the cards it adds; the others stay where they are."""
    def home(name):
        while name and name not in exports: name = name.rpartition('.')[0]
        return exports[name][0] if name else None
    moved = {i: h for i, c in enumerate(cells)
             if (nm := shown_name(c)) and (h := home(nm)) is not None and h != i}
    out = []
    for i, c in enumerate(cells):
        if i not in moved: out.append(c)
        out += [cells[j] for j in sorted(moved) if moved[j] == i]
    return out

def process(src, dst):
    "Run nbdev's docs processors over the notebook `src` and write the result to `dst`."
    src, dst = Path(src).resolve(), Path(dst).resolve()
    os.chdir(src.parent)   # where the lesson runs (as in nbdev_test): relative paths land in nbs/
    os.environ['IN_TEST'] = '1'
    warnings.filterwarnings('ignore', message='Found cells containing imports')
    from execnb.nbio import dict2nb, write_nb
    from nbdev import processors as P

    class exec_show_docs(P.exec_show_docs):
        "nbdev's `exec_show_docs`, but a cell mixing imports with other code runs its imports only."
        def begin(self):
            super().begin()
            if hasattr(self, 'k'): apidoc.NS = self.k.user_ns   # the cards read annotations' names from the lesson
        def __call__(self, cell):
            trees = cell.parsed_() if cell.cell_type == 'code' and P.cell_lang(cell) == 'python' else None
            mixed = (trees and not (cell.directives_.keys() & {'export', 'exports', 'exporti', 'exec_doc'})
                     and not P._show_docs(trees) and P._ast_contains(trees, (ast.Import, ast.ImportFrom))
                     and any(not isinstance(t, (ast.Import, ast.ImportFrom)) for t in trees))
            if not mixed: return super().__call__(cell)
            if not self.nb.has_docs_ or not hasattr(self, 'k'): return
            imports = [t for t in trees if isinstance(t, (ast.Import, ast.ImportFrom))]
            self.k.run_cell(ast.unparse(ast.Module(body=imports, type_ignores=[])))
            if self.k.exc: raise Exception(f'{src.name}: imports of cell {cell.idx_} failed:\n{cell.source}') from self.k.exc

    class Filter(P.FilterDefaults):
        def base_procs(self): return [exec_show_docs if p is P.exec_show_docs else p for p in super().base_procs()]

    js = json.loads(Path(src).read_text(encoding='utf-8'))
    exports = exported_names(js['cells'], default_exp(js))
    apidoc.EXPORTS = {name: mod for name, (_, mod) in exports.items()}
    apidoc.SHOWN = {nm for c in js['cells'] if (nm := shown_name(c))}
    import nbdev.showdoc
    nbdev.showdoc.BasicMarkdownRenderer = apidoc.ApiDoc   # show_doc's renderer: the card's description, for Sphinx
    js['cells'] = split_title_cell(cards_beside_exports(js['cells'], exports))
    nb = dict2nb(js)
    nb['path_'] = str(src)
    Filter()(nb)
    write_nb(nb, dst)
    return dst


def page_name(nb):
    "nbdev's page name for notebook `nb` (`01b_iterators.ipynb` -> `iterators`), so URLs match an nbdev site."
    from nbdev.frontmatter import _nbpath2html
    return _nbpath2html(Path(nb)).stem

def md_cell(source): return {'cell_type': 'markdown', 'id': hashlib.sha1(source.encode()).hexdigest()[:8], 'metadata': {}, 'source': source}

def front_matter(cell):
    "The YAML front matter nbdev put in a raw cell, as a dict (empty if `cell` isn't front matter)."
    import yaml
    src = ''.join(cell['source']).strip()
    if cell['cell_type'] != 'raw' or not src.startswith('---'): return {}
    return yaml.safe_load(src.strip('-\n')) or {}

class Api:
    """The site's API: the cards' names (with nbdev's module index, `_modidx.py`, to turn nbdev's links into
    cross-references to them) and those already indexed (a name carded twice is indexed once)."""
    def __init__(self, by_link, targets):
        self.by_link, self.targets, self.indexed, self.cards = by_link, set(targets), set(), {}

    @staticmethod
    def card(cell):
        "The description a show_doc cell's output holds (see apidoc.py), or None."
        outs = [o['data'][apidoc.MIME] for o in cell.get('outputs', []) if apidoc.MIME in o.get('data', {})]
        return outs[0] if outs else None

    @classmethod
    def read(cls, cfg, notebooks, constants=()):
        "The API of processed `notebooks`, plus the `constants` the API page describes (full names)."
        import runpy
        modidx = runpy.run_path(str(cfg.lib_path/'_modidx.py'))['d']['syms']
        by_link = {tuple(v[0].replace('.html', '').split('#', 1)): k for d in modidx.values() for k, v in d.items()}
        def names(d): return [apidoc.fullname(d)] + [n for m in d.get('members', []) for n in names(m)]
        cards = [d for nb in notebooks for c in nb['cells'] if (d := cls.card(c))]
        api = cls(by_link, [n for d in cards for n in names(d)] + list(constants))
        api.cards = {apidoc.fullname(d): d for d in cards}
        return api

    def target(self, page, frag):
        "The full name nbdev's link to `page.html#frag` is about, if the site has a card for it."
        t = self.by_link.get((page, frag))
        return t if t in self.targets else None

def make_links(pages, modules, cfg, api):
    "A function rewriting the links of a page's Markdown for the site (nbdev's links to its own site among them)."
    site = f"{cfg.doc_host}{cfg.doc_baseurl}".rstrip('/') + '/'
    def prose_links(text):
        # nbdev's doc links (`name` -> site/page.html#name): a cross-reference to the name's card, else a link to our
        # page, or plain code if no page has it
        def doc(m):
            label, page, frag = m.group(1), m.group(2), (m.group(3) or '').lstrip('#')
            if (target := api.target(page, frag)): return f'{{py:obj}}`{label[1:-1]} <{target}>`'
            return f'<a class="reference internal" href="{page}.html">{label}</a>' if page in pages.values() else label
        text = re.sub(r'\[(`[^`\]]+`)\]\(' + re.escape(site) + r'([\w.-]+)\.html(#[\w.-]*)?\)', doc, text)
        # links between notebooks: nb.ipynb -> its page
        text = re.sub(r'\]\((?:\./)?([\w-]+)\.(?:ipynb|html)(#[^)]*)?\)',
                      lambda m: f']({pages[m.group(1)]}.ipynb)' if m.group(1) in pages else m.group(0), text)
        # a module named in backticks (`miniai.mnist`) links to its source page
        text = re.sub(r'(?<!\[)`' + re.escape(cfg.lib_name) + r'\.(\w+)`(?!\])',
                      lambda m: f'[`{m.group(0)[1:-1]}`](_modules/{m.group(1)}.md)' if m.group(1) in modules else m.group(0), text)
        # a notebook named in backticks (the index's lesson table) links to its page
        return re.sub(r'(?<!\[)`(' + '|'.join(map(re.escape, pages)) + r')`(?!\])',
                      lambda m: f'[`{m.group(1)}`]({pages[m.group(1)]}.ipynb)', text) if pages else text
    doc_link = re.compile(r'\[(`[^`\]]+`)\]\(' + re.escape(site) + r'[^)]*\)')
    def links(text):
        "Links in prose; in code blocks (show_doc's signatures) and headings (the page's contents) nbdev's doc links go."
        parts = re.split(r'(^```.*?^```[ \t]*$|^#{1,6} .*$)', text, flags=re.M | re.S)
        return ''.join(doc_link.sub(lambda m: m.group(1)[1:-1] if p.startswith('```') else m.group(1), p) if i % 2
                       else prose_links(p) for i, p in enumerate(parts))
    return links

def sphinx_page(nb, pages, modules, cfg, meta='', api=None):
    """Rewrite nbdev's processed notebook `nb` (a dict) for myst-nb, in place; return its title. `api` (an `Api`)
    turns show_doc's cards into Sphinx's Python domain directives and nbdev's links to them into cross-references."""
    api = api or Api({}, ())
    links, title, cells = make_links(pages, modules, cfg, api), None, []
    for c in nb['cells']:
        fm = front_matter(c)
        if fm:
            title = str(fm.get('title', '')).strip()
            lead = str(fm.get('description', '')).strip()
            c = md_cell(f'# {title}\n' + (f'\n{{.lead}}\n{lead}\n' if lead else '') + (f'\n{{.lesson-meta}}\n{meta}\n' if meta else ''))
        elif c['cell_type'] == 'markdown' and 'AUTOGENERATED! DO NOT EDIT' in ''.join(c['source']): continue
        elif c['cell_type'] == 'code' and quarto_options(c) is None: continue
        elif (card := api.card(c)): c = md_cell(apidoc.directive(card, api.indexed, links))
        if c['cell_type'] == 'markdown': c['source'] = links(''.join(c['source']))
        for o in c.get('outputs', []):
            if 'text/markdown' in (data := o.get('data', {})): data['text/markdown'] = links(''.join(data['text/markdown']))
        cells.append(c)
    nb['cells'] = cells
    return title

_re_opt = re.compile(r'^#\|\s*([\w-]+)\s*:\s*(.*?)\s*$')

def quarto_options(cell):
    """Apply the Quarto cell options nbdev leaves for the renderer (`#| echo: false` under `show_doc`, `#| output: false`)
    as myst-nb tags, and take the `#|` lines out of the code shown; None if the cell is left out (`#| include: false`)."""
    lines = ''.join(cell['source']).splitlines()
    opts = {m.group(1): m.group(2).lower() for l in lines if (m := _re_opt.match(l))}
    if opts.get('include') == 'false': return None
    tags = cell.setdefault('metadata', {}).setdefault('tags', [])
    if opts.get('echo') == 'false': tags.append('remove-input')
    if opts.get('output') == 'false': tags.append('remove-output')
    cell['source'] = '\n'.join(l for l in lines if not l.startswith('#|')).strip('\n')
    return opts

def source_page(py, cfg, nbs_by_module):
    "A page showing the module `py` (a `py:module` target), lines anchored `L-n` for the cards' [source] links."
    from pygments import highlight
    from pygments.lexers import PythonLexer
    from pygments.formatters import HtmlFormatter
    code = highlight(py.read_text(encoding='utf-8'), PythonLexer(),
                     HtmlFormatter(linenos='inline', lineanchors='L', anchorlinenos=True, wrapcode=True))
    rel = py.relative_to(ROOT).as_posix()
    nb = nbs_by_module.get(py.stem)
    made = f'Exported by nbdev from the lesson [{nb[0]}](../{nb[1]}.ipynb): edit the notebook, not this file.' if nb else ''
    return (f'---\norphan: true\n---\n# `{rel}`\n\n```{{py:module}} {cfg.lib_name}.{py.stem}\n```\n\n{made} '
            f'[On GitHub]({cfg.git_url}/blob/{cfg.branch}/{rel}).\n\n```{{raw}} html\n<div class="nbdev-module">{code}</div>\n```\n')

def module_info(py):
    "A module's docstring, its `__all__`, and {name: (type, value)} of the exports that are data, read from its source."
    tree = ast.parse(py.read_text(encoding='utf-8'))
    names, data = [], {}
    for node in tree.body:
        targets = (node.targets if isinstance(node, ast.Assign) else
                   [node.target] if isinstance(node, ast.AnnAssign) else [])
        for t in targets:
            if getattr(t, 'id', None) == '__all__': names = ast.literal_eval(node.value)
            elif node.value is None: continue
            # `a, b = x.a, x.b` names two things
            both = isinstance(t, ast.Tuple) and isinstance(node.value, ast.Tuple)
            pairs = zip(t.elts, node.value.elts) if both else [(t, node.value)]
            for target, value in pairs:
                if not isinstance(target, ast.Name): continue
                kind = (ast.unparse(node.annotation) if isinstance(node, ast.AnnAssign) else
                        type(value.value).__name__ if isinstance(value, ast.Constant) else
                        {ast.Tuple: 'tuple', ast.List: 'list', ast.Dict: 'dict', ast.Set: 'set'}.get(type(value), ''))
                data[target.id] = (kind, ast.unparse(value))
    return ast.get_docstring(tree) or '', names, {n: data[n] for n in names if n in data}

def _first_sentence(doc):
    "The first line of a docstring, up to its first ': ' or '; ' (the summary a table has room for)."
    line = (doc or '').strip().split('\n')[0]
    return re.split(r'(?<=[^`]): |; ', line)[0].rstrip('.') + '.' if line else ''

def api_page(cfg, api, infos, lesson_of, links):
    """The API reference page: each module (in lesson order) with its summary, each export with the first words of its
    docstring, linked to its card; the exports that are data are described here (their only card)."""
    out = ['# API reference\n', '{.lead}\nEvery name miniai exports, module by module. Each links to its card, beside '
           'the code that defines it in its lesson. The {ref}`genindex` lists them all alphabetically, the '
           '{ref}`modindex` the modules, and `objects.inv` lets other Sphinx sites link here with intersphinx.\n']
    for mod, (doc, names, data) in infos.items():
        out.append(f'## `{cfg.lib_name}.{mod}`\n')
        taught = f" Taught in [{lesson_of[mod][1]}]({lesson_of[mod][0]}.ipynb);" if mod in lesson_of else ''
        out.append(f"{doc.strip()}{taught} [source](_modules/{mod}.md).\n")
        rows = []
        for n in names:
            full = f'{cfg.lib_name}.{mod}.{n}'
            if n in data: continue
            card = api.cards.get(full)
            rows.append(f"| {{py:obj}}`{n} <{full}>` | {_first_sentence(card['doc']) if card else ''} |")
        if rows: out.append('| name | what it is |\n|---|---|\n' + '\n'.join(rows) + '\n')
        for n, (kind, value) in data.items():
            opts = ([f':module: {cfg.lib_name}.{mod}'] + ([f':type: {kind}'] if kind else [])
                    + ([f':value: {json.dumps(value)}'] if len(value) <= 60 else []))   # quoted: options are YAML
            out.append(f':::{{py:data}} {n}\n' + '\n'.join(opts) + '\n:::\n')
    return links('\n'.join(out))

def default_exp(nb):
    for c in nb['cells']:
        if c['cell_type'] == 'code' and (m := re.search(r'^#\s*\|\s*default_exp\s+(\S+)', ''.join(c['source']), re.M)): return m.group(1)

def for_sphinx(cfg, nbs):
    "Turn `_proc/nbdev/*.ipynb` (nbdev's output) into Sphinx's source folder: pages named as nbdev names them, module pages, the index's toctree."
    pages = {p.stem: ('index' if p.stem == Path(cfg.readme_nb).stem else page_name(p)) for p in nbs}
    assert len(set(pages.values())) == len(pages), f'two notebooks map to one page: {pages}'
    modules = {p.stem for p in (cfg.lib_path).glob('*.py') if not p.stem.startswith('_')}
    originals = {p.stem: json.loads(p.read_text(encoding='utf-8')) for p in nbs}
    nbs_by_module = {m: (stem, pages[stem]) for stem, nb in originals.items() if (m := default_exp(nb))}
    processed = {stem: json.loads((NBDEV/f'{stem}.ipynb').read_text(encoding='utf-8')) for stem in pages}
    in_lesson_order = sorted(modules, key=lambda m: (nbs_by_module.get(m, ('~',))[0], m))
    infos = {m: module_info(cfg.lib_path/f'{m}.py') for m in in_lesson_order}
    data = [f'{cfg.lib_name}.{m}.{n}' for m, (_, _, names) in infos.items() for n in names]
    api = Api.read(cfg, processed.values(), data)
    titles = {}
    if SRC.exists(): shutil.rmtree(SRC)
    SRC.mkdir(parents=True)
    for stem in sorted(pages, key=lambda s: pages[s] == 'index'):   # the index last: its toctree needs every title
        page, nb = pages[stem], processed[stem]
        mod = default_exp(originals[stem])
        meta = '' if page == 'index' else ' · '.join(
            [f'Notebook [`{cfg.nbs_path.name}/{stem}.ipynb`]({cfg.git_url}/blob/{cfg.branch}/{cfg.nbs_path.name}/{stem}.ipynb)']
            + ([f'module [`{cfg.lib_name}.{mod}`](_modules/{mod}.md)'] if mod in modules else []))
        titles[stem] = sphinx_page(nb, pages, modules, cfg, meta, api) or stem
        if page == 'index':
            entries = '\n'.join(f'{stem.split("_")[0]} · {titles.get(stem) or stem} <{pages[stem]}>' for stem in pages if pages[stem] != 'index')
            nb['cells'].append(md_cell(f'```{{toctree}}\n:hidden:\n:caption: Lessons\n:maxdepth: 1\n\n{entries}\n```'))
            reference = 'API reference <api>\nIndex <genindex>'
            nb['cells'].append(md_cell(f'```{{toctree}}\n:hidden:\n:caption: Reference\n\n{reference}\n```'))
        (SRC/f'{page}.ipynb').write_text(json.dumps(nb, indent=1, ensure_ascii=False), encoding='utf-8')
    lesson_of = {m: (pages[stem], titles[stem]) for m, (stem, _) in nbs_by_module.items()}
    links = make_links(pages, modules, cfg, api)
    (SRC/'api.md').write_text(api_page(cfg, api, infos, lesson_of, links), encoding='utf-8')
    (SRC/'_modules').mkdir()
    for m in sorted(modules): (SRC/'_modules'/f'{m}.md').write_text(source_page(cfg.lib_path/f'{m}.py', cfg, nbs_by_module), encoding='utf-8')
    print(f'{len(pages)} pages, {len(modules)} module pages in {SRC.relative_to(ROOT)}/')

def main():
    from nbdev.config import get_config
    cfg = get_config()
    nbs = lessons(cfg.nbs_path)
    if '--sphinx-only' in sys.argv: return for_sphinx(cfg, nbs)   # reuse _proc/nbdev (while working on the site's look)
    if OUT.exists(): shutil.rmtree(OUT)
    NBDEV.mkdir(parents=True)
    workers = max(1, min(len(nbs), int(os.environ.get('MINIAI_DOCS_WORKERS', os.cpu_count() or 1))))
    def run(src):
        "One fresh interpreter per notebook, as nbdev does (a lesson's cells may fork or start workers)."
        r = subprocess.run([sys.executable, __file__, '--one', str(src), str(NBDEV/src.name)], capture_output=True, text=True)
        if r.returncode: sys.exit(f'nbdev processing of {src.name} failed:\n{r.stdout}{r.stderr}')
        return src
    with ThreadPoolExecutor(workers) as ex:
        for src in ex.map(run, nbs): print('processed', src.name)
    for_sphinx(cfg, nbs)

if __name__ == '__main__':
    if sys.argv[1:2] == ['--one']: process(Path(sys.argv[2]), Path(sys.argv[3]))
    else: main()
