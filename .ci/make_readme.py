"""Write README.md from nbs/index.ipynb (Quarto, which `nbdev_readme` needs, can't be installed offline).

The README is the notebook's markdown cells, in order. `--check` fails instead of writing when the
README is stale, and also checks that .ci/run runs the README's test command verbatim."""
import json, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEADER = '<!-- Made from nbs/index.ipynb by .ci/make_readme.py: edit the notebook, then run it. -->\n\n'

def readme_text(nb_path=ROOT/'nbs'/'index.ipynb'):
    "README.md's text: the header, then each markdown cell of the notebook."
    cells = json.loads(nb_path.read_text(encoding='utf-8'))['cells']
    return HEADER + '\n\n'.join(''.join(c['source']).strip() for c in cells if c['cell_type'] == 'markdown') + '\n'

def test_command(text):
    "The second shell block of the README: the test command."
    blocks = [b.split('\n', 1)[1].split('```', 1)[0] for b in text.split('```sh')[1:]]
    return blocks[1].strip()

def main(check=False):
    text, readme = readme_text(), ROOT/'README.md'
    if not check: readme.write_text(text, encoding='utf-8'); return 0
    if not readme.exists() or readme.read_text(encoding='utf-8') != text:
        print('README.md is stale: run `python .ci/make_readme.py` and commit it'); return 1
    if test_command(text) not in (ROOT/'.ci'/'run').read_text():
        print(f'.ci/run does not run the README test command: {test_command(text)}'); return 1
    print('README.md is current; test command:', test_command(text)); return 0

if __name__ == '__main__': sys.exit(main('--check' in sys.argv))
