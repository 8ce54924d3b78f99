"""miniai's API cards, as nbdev's site shows them: a signature, the docstring, and the docments as a
Type / Default / Details table; a class with its `__init__`'s parameters and its methods.

Two halves, run at two times by `prepare.py`:
- `describe` (while nbdev processes a lesson: `show_doc` renders with `ApiDoc`): a JSON description of the
  object, stored as the show_doc cell's output under `MIME`. Annotations are written with their public names
  (`torch._C.Generator` -> `torch.Generator`); a name the lesson exports gets the module it is exported to.
- `directive` (while Sphinx's source is written): that description as a MyST directive of Sphinx's Python
  domain (`py:function`, `py:class` with its `py:method`s...), so every card is a target in the general index
  and in `objects.inv`, which other Sphinx sites can link to with intersphinx."""
import importlib, inspect, re
from functools import partial

MIME = 'application/vnd.miniai.apidoc+json'
LIB = 'miniai'
NS = {}        # the lesson's namespace (the kernel nbdev runs its cells in)
EXPORTS = {}   # name ('chunks', 'Learner.fit') -> module the lesson exports it to ('iterators')
SHOWN = set()  # names the lesson shows with a show_doc of their own (a class's card leaves those methods out)

# ---- describing an object (in the kernel that runs the lesson's show_doc cells) -------------------------

def _resolve(path):
    "The object named by the dotted `path` (`torch._C.Generator`), or None."
    parts = path.split('.')
    if parts[0] == '__main__': obj, parts = NS.get(parts[1]), parts[2:]
    else:
        for i in range(len(parts), 0, -1):
            try: obj = importlib.import_module('.'.join(parts[:i])); parts = parts[i:]; break
            except ImportError: continue
        else: return None
    for p in parts: obj = getattr(obj, p, None)
    return obj

def public_name(obj):
    "The name a reader would write for `obj`: `torch.Generator`, `torch.nn.Module`, `int`."
    mod = getattr(obj, '__module__', None) or ''
    qual = getattr(obj, '__qualname__', None) or getattr(obj, '__name__', repr(obj))
    if mod == 'builtins': return qual
    if mod == '__main__' or mod.startswith(f'{LIB}.'):
        home = EXPORTS.get(qual) if mod == '__main__' else mod.split('.', 1)[1]
        return f'{LIB}.{home}.{qual}' if home else qual
    parts = mod.split('.')
    for i in range(1, len(parts) + 1):   # the shortest public module it can be reached from
        prefix = '.'.join(parts[:i])
        if any(p.startswith('_') for p in parts[:i]): break
        try: found = _resolve(f'{prefix}.{qual}')
        except Exception: found = None
        if found is obj: return f'{prefix}.{qual}'
    return f'{mod}.{qual}'

_re_dotted = re.compile(r'[A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)+')

def _public_token(m):
    "A dotted name in an annotation's text, with private modules (`torch._C`) and `__main__` replaced."
    tok = m.group(0)
    parts = tok.split('.')
    if parts[0] != '__main__' and not any(p.startswith('_') for p in parts[:-1]): return tok
    try: obj = _resolve(tok)
    except Exception: obj = None
    return public_name(obj) if obj is not None else tok

def fmt_anno(anno):
    "Annotation `anno` as text with public names (`torch.Generator | None`); '' if there is none."
    if anno is inspect.Parameter.empty: return ''
    if isinstance(anno, str): return anno
    if isinstance(anno, type): return public_name(anno)
    return _re_dotted.sub(_public_token, inspect.formatannotation(anno))

def fmt_default(value):
    "Default `value` as Python source: a function or class by its name, `...` for what has no short repr."
    if value is inspect.Parameter.empty: return ''
    if isinstance(value, partial): return f'partial({fmt_default(value.func)}, ...)'
    if inspect.isclass(value): return value.__qualname__
    if inspect.isroutine(value): return value.__name__
    text = repr(value)
    return '...' if len(text) > 80 or ' at 0x' in text or text.startswith('<') else text

def _docments(obj):
    "{parameter or 'return': its docment comment} (fastcore's docments), {} where they can't be read."
    from fastcore.docments import docments
    try: return {k: v for k, v in docments(obj).items() if v}
    except Exception: return {}

def _link(text):
    "Backticked names in `text` linked as nbdev links them (prepare.py makes them cross-references)."
    if not text: return ''
    from nbdev.doclinks import NbdevLookup
    return NbdevLookup().linkify(text)

def _signature(obj):
    "`obj`'s signature, string annotations evaluated where they can be; None if it has none."
    try: return inspect.signature(obj, eval_str=True)
    except Exception:
        try: return inspect.signature(obj)
        except (TypeError, ValueError): return None

def class_init(cls):
    "What documents `cls`'s parameters: its or a parent's `__init__` or `__new__`; None if a builtin's."
    for c in cls.__mro__:
        if c.__module__ == 'builtins': return None
        for nm in ('__init__', '__new__'):
            if nm in c.__dict__: return getattr(cls, nm)

def params(obj, drop_first=False):
    "Parameters of callable `obj` ([{name, anno, default, doc...}]) and its return ({anno, doc})."
    sig = _signature(obj)
    if sig is None: return None, {}
    docs = _docments(obj)
    ps = list(sig.parameters.values())[1 if drop_first else 0:]
    star = {inspect.Parameter.VAR_POSITIONAL: '*', inspect.Parameter.VAR_KEYWORD: '**'}
    rows = [dict(name=p.name, star=star.get(p.kind, ''), anno=fmt_anno(p.annotation),
                 default=fmt_default(p.default), doc=_link(docs.get(p.name, '')),
                 kwonly=p.kind == p.KEYWORD_ONLY, posonly=p.kind == p.POSITIONAL_ONLY)
            for p in ps]
    ret = dict(anno=fmt_anno(sig.return_annotation), doc=_link(docs.get('return', '')))
    return rows, ret

def _member_kind(owner, name):
    "How `owner.name` is defined: 'property', 'classmethod', 'staticmethod' or 'method' (None: not a routine)."
    try: raw = inspect.getattr_static(owner, name)
    except AttributeError: return None
    if isinstance(raw, property): return 'property'
    if isinstance(raw, classmethod): return 'classmethod'
    if isinstance(raw, staticmethod): return 'staticmethod'
    if inspect.isroutine(raw) or callable(raw): return 'method'

def _owner(name):
    "The class named by the part of `name` before its last dot, from the lesson's namespace."
    head = name.rsplit('.', 1)[0]
    obj = NS.get(head.split('.')[0])
    for p in head.split('.')[1:]: obj = getattr(obj, p, None)
    return obj if inspect.isclass(obj) else None

def _module_of(obj, name):
    "The miniai module `name` lives in, without the library's prefix ('learner'), or None if it isn't miniai's."
    top = name.split('.')[0]
    if top in EXPORTS: return EXPORTS[top]
    mod = getattr(obj, '__module__', '') or ''
    return mod.split('.', 1)[1] if mod.startswith(f'{LIB}.') else None

def describe(sym, name=None, owner=None):
    "A JSON-able description of `sym` for its card: name, kind, module, signature parts, docstring, methods."
    from fastcore.docments import qual_name
    obj = getattr(sym, 'fget', None) or sym
    obj = getattr(obj, '__func__', obj)
    name = name or qual_name(obj)
    owner = owner or (_owner(name) if '.' in name else None)
    kind = _member_kind(owner, name.rsplit('.', 1)[1]) if owner else None
    qual = getattr(obj, '__qualname__', '')
    if kind is None and inspect.isfunction(obj) and '.' in qual and '<locals>' not in qual:
        kind = 'method'   # a class's function, whose class isn't in the lesson's namespace
    d = dict(name=name, module=_module_of(owner or obj, name), doc=_link(inspect.getdoc(obj) or ''))
    if inspect.isclass(obj):
        d['kind'] = 'exception' if issubclass(obj, BaseException) else 'class'
        d['params'] = params(obj)[0] if class_init(obj) else None   # inspect.signature(cls): __init__ less self
        d['returns'] = {}
        d['bases'] = [public_name(b) for b in obj.__bases__ if b is not object]
        d['members'] = [describe(getattr(obj, m), f'{name}.{m}', obj) for m in _public_members(obj, name)]
    else:
        d['kind'] = kind or 'function'
        drop = d['kind'] in ('method', 'property', 'classmethod')   # `obj` is the function: `self` or `cls` first
        d['params'], d['returns'] = params(obj, drop_first=drop)
    return d

def _public_members(cls, name):
    "Methods and properties `cls` defines itself (public, or `__call__`), less those carded alone."
    out = []
    for m, raw in vars(cls).items():
        if (m.startswith('_') and m != '__call__') or f'{name}.{m}' in SHOWN: continue
        if isinstance(raw, (property, classmethod, staticmethod)) or inspect.isfunction(raw): out.append(m)
    return out

class ApiDoc:
    "nbdev's `show_doc` renderer while prepare.py processes a lesson: the card's description, as `MIME` output."
    def __init__(self, sym, name=None, title_level=3): self.data = describe(sym, name)
    def _repr_mimebundle_(self, include=None, exclude=None):
        return {MIME: self.data, 'text/plain': self.data['name']}

# ---- writing a card (in prepare.py's Sphinx pass) -------------------------------------------------------

def fullname(d):
    "The name the card is indexed under: `miniai.learner.Learner.fit` (just the name if it isn't miniai's)."
    return f"{LIB}.{d['module']}.{d['name']}" if d.get('module') else d['name']

def signature(d, name):
    "The card's signature line, as Sphinx's Python domain parses it: `fit(n_epochs: int = 1, lr: float = 0.1)`."
    if d['params'] is None: return name
    args, ps = [], d['params']
    for i, p in enumerate(ps):
        if p['kwonly'] and not any(q['kwonly'] or q['star'] == '*' for q in ps[:i]): args.append('*')
        a = p['star'] + p['name'] + (f": {p['anno']}" if p['anno'] else '')
        if p['default']: a += f" = {p['default']}" if p['anno'] else f"={p['default']}"
        args.append(a)
        if p['posonly'] and not (i + 1 < len(ps) and ps[i + 1]['posonly']): args.append('/')
    ret = d.get('returns', {}).get('anno')
    return f"{name}({', '.join(args)})" + (f' -> {ret}' if ret else '')

def _cell(text):
    "`text` on one line, fit for a Markdown table's cell."
    return ' '.join(str(text).split()).replace('|', '\\|')

def _code(text, short=True):
    "`text` as inline code; `short`: miniai's names without their module (`Learner`)."
    if not text: return ''
    if short: text = re.sub(rf'\b{LIB}\.\w+\.', '', text)
    return '`' + text.replace('`', '').replace('|', '\\|') + '`'

def param_table(d):
    """The docments as a Markdown table (Type / Default / Details), nbdev-style: a column only where some parameter
    has a value for it; '' if there are no docments."""
    ps, ret = d.get('params') or [], d.get('returns') or {}
    if not any(p['doc'] for p in ps) and not ret.get('doc'): return ''
    rets = [dict(name='**Returns**', anno=ret.get('anno', ''), default='', doc=ret.get('doc', ''))] \
        if ret.get('anno') or ret.get('doc') else []
    rows = [dict(p, name=f"`{p['star']}{p['name']}`") for p in ps] + rets
    cols = [('Type', lambda r: _code(r['anno'])), ('Default', lambda r: _code(r['default'], False))]
    cols = [(h, f) for h, f in cols if any(f(r) for r in rows)] + [('Details', lambda r: _cell(r['doc']))]
    out = ['| | ' + ' | '.join(h for h, _ in cols) + ' |', '|---' * (len(cols) + 1) + '|']
    return '\n'.join(out + ['| ' + ' | '.join([r['name']] + [f(r) for _, f in cols]) + ' |' for r in rows])

DIRECTIVES = {'function': 'py:function', 'class': 'py:class', 'exception': 'py:exception', 'method': 'py:method',
              'classmethod': 'py:method', 'staticmethod': 'py:method', 'property': 'py:property'}

def directive(d, indexed, fix_text=lambda s: s, parent=None):
    """The MyST directive for description `d` (a card; `parent`: the full name of the class card it sits in).
    `indexed` is the set of names already carded on the site: a second card of one name is shown but not indexed
    again. `fix_text` rewrites the docstrings' links."""
    short = d['name'].rsplit('.', 1)[-1] if parent else d['name']
    name = f'{parent}.{short}' if parent else fullname(d)
    opts = [f":module: {LIB}.{d['module']}"] if d.get('module') and not parent else []
    if d['kind'] in ('classmethod', 'staticmethod'): opts.append(f":{d['kind']}:")
    if d['kind'] == 'property' and d.get('returns', {}).get('anno'): opts.append(f":type: {d['returns']['anno']}")
    if name in indexed or not (d.get('module') or parent): opts.append(':no-index:')
    indexed.add(name)
    body = [fix_text(d['doc'])] if d['doc'] else []
    if d.get('bases'): body.append('Bases: ' + ', '.join(f'{{py:class}}`~{b}`' for b in d['bases']))
    if d['kind'] != 'property' and (t := param_table(d)): body.append(fix_text(t))
    body += [directive(m, indexed, fix_text, name) for m in d.get('members', [])]
    fence = ':' * (3 + max([0] + [_nesting(m) for m in d.get('members', [])]))
    sig = short if d['kind'] == 'property' else signature(d, short)
    head = f"{fence}{{{DIRECTIVES[d['kind']]}}} {sig}\n" + ''.join(o + '\n' for o in opts)
    return head + '\n' + '\n\n'.join(body) + f'\n{fence}'

def _nesting(d):
    "How deep directive `d` nests (a class with methods: 2), for the colons of its fence."
    return 1 + max([0] + [_nesting(m) for m in d.get('members', [])])
