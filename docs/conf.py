# Sphinx configuration of glrp's documentation site (`make docs`; docs/build.py stages the sources in _proc/docs/).
#
# Why Sphinx with myst-nb (the Jupyter Book 1 stack) and not mkdocs-material with mkdocs-jupyter: myst-nb renders the
# saved outputs of a notebook without executing it (nb_execution_mode = 'off'), figures included; autodoc documents
# each module from the docstrings that nbdev exported from the notebooks; search is built in and works offline; and
# Sphinx, myst-nb and furo are actively maintained, whereas mkdocs 1.x and mkdocs-material are only kept alive.
import os, sys
from configparser import ConfigParser
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # glrp importable for autodoc even without the editable install
os.environ.setdefault('OMP_NUM_THREADS', '1')
cfg = ConfigParser(delimiters=['=']); cfg.read(ROOT/'settings.ini', encoding='utf-8'); cfg = cfg['DEFAULT']

project = cfg['title']
author = cfg['author']
copyright = cfg['copyright']
release = version = cfg['version']

extensions = ['myst_nb', 'sphinx.ext.autodoc', 'sphinx.ext.napoleon', 'sphinx.ext.viewcode']
root_doc = 'index'  # nbs/index.ipynb, the notebook README.md is made from
exclude_patterns = ['**/.ipynb_checkpoints']

# myst-nb: never run a notebook, show what was saved in it
nb_execution_mode = 'off'
nb_merge_streams = True
nb_output_stderr = 'show'
# text/markdown outputs (IPython's Markdown(...), e.g. 12_stats' tables) as MyST, with tables; myst-nb's default,
# CommonMark, has none and shows a table as a paragraph of pipes
nb_render_markdown_format = 'myst'
# myst-nb copies each notebook into <output folder's parent>/jupyter_execute, here the repository root: keep it in _proc/
# (an absolute path survives its Path.joinpath; .gitignore also names /jupyter_execute/ should a myst-nb change undo this)
import myst_nb.sphinx_ext
myst_nb.sphinx_ext.OUTPUT_FOLDER = str(ROOT/'_proc'/'jupyter_execute')
myst_enable_extensions = ['dollarmath', 'colon_fence', 'deflist']
myst_heading_anchors = 3

# autodoc: a module's public names are its nbdev `__all__`; signatures keep their annotations as written
autodoc_default_options = {'members': True, 'show-inheritance': True}
autodoc_typehints = 'signature'
autodoc_preserve_defaults = True
autodoc_member_order = 'bysource'

html_theme = 'furo'
html_title = f"{cfg['title']} {cfg['version']}"
html_show_sourcelink = False
html_static_path = []

# nbdev_clean strips cell ids (settings.ini clean_ids); nbformat warns about each notebook without them
import warnings
warnings.filterwarnings('ignore', message='Cell is missing an id field')

# The docstrings are Markdown (nbdev's convention: `code`, *emphasis*, |x| for sizes), autodoc reads reStructuredText:
# code spans become literals, and the characters that reStructuredText would take as markup are escaped elsewhere.
import re
_CODE = re.compile(r'`([^`\n]+)`')

def _rst_escape(text):
    text = text.replace('\\', '\\\\').replace('*', r'\*').replace('|', r'\|').replace('`', r'\`')
    return re.sub(r'(\w)_(?=\W|$)', r'\1\\_', text)

def _markdown_docstring(app, what, name, obj, options, lines):
    text, out, pos = '\n'.join(lines), [], 0
    for m in _CODE.finditer(text):
        before, after = text[m.start() - 1:m.start()], text[m.end():m.end() + 1]  # `Source`s: ``Source``\\ s in RST
        out += [_rst_escape(text[pos:m.start()]), '\\ ' * before.isalnum() + '``' + m.group(1) + '``' + '\\ ' * after.isalnum()]
        pos = m.end()
    out.append(_rst_escape(text[pos:]))
    lines[:] = ''.join(out).split('\n')

# Sphinx rereads every source when a config value marked 'env' changes, not when code here (the hook above) or in
# docs/build.py changes: their hash as such a value makes an edit of either rebuild the whole site.
import hashlib
docs_code_hash = hashlib.sha256(b''.join((ROOT/'docs'/f).read_bytes() for f in ('conf.py', 'build.py'))).hexdigest()

def setup(app):
    app.add_config_value('docs_code_hash', '', 'env')
    app.connect('autodoc-process-docstring', _markdown_docstring)
