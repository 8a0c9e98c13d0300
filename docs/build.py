"""Build the documentation site into _docs/ from the committed notebooks in nbs/, without executing them (`make docs`).

1. Stage the sources in _proc/docs/ (git-ignored): a copy of each notebook with nbdev's cell directives turned into
   myst-nb cell tags (`#| hide` and `#| default_exp` cells removed, `#| export` code folded behind a toggle), one API
   page per module of glrp/ (sphinx autodoc), and a hidden table of contents appended to the home page (nbs/index.ipynb).
   The home page's images are linked from the repository root, as README.md needs them (nbs/images/...): nbs/images/
   is staged as _proc/docs/nbs/images/, so the same paths resolve beside the staged home page.
   Files whose content did not change are not rewritten, so Sphinx rebuilds only what changed; when a notebook or module
   is gone, _docs/ is built afresh (Sphinx would keep its old page).
2. Run Sphinx with the configuration in docs/conf.py; any Sphinx warning fails the build.
"""
import json, re, shutil, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NBS, LIB = ROOT/'nbs', ROOT/'glrp'
SRC, OUT, DOCTREES = ROOT/'_proc'/'docs', ROOT/'_docs', ROOT/'_proc'/'doctrees'
DIRECTIVE = re.compile(r'^\s*#\|\s*(\S+)')


def notebooks():
    "The numbered notebooks of nbs/, ordered by file name (000_tour, when present, sorts first)."
    return sorted(NBS.glob('[0-9]*.ipynb'))


def modules():
    "glrp's Python modules, the name each has in `import glrp.NAME`, without nbdev's index _modidx."
    return sorted(p.stem for p in LIB.glob('*.py') if not p.stem.startswith('_'))


def convert_cell(cell):
    "nbdev's directives (`#| hide`, `#| export`, ...) as myst-nb tags; the directive lines themselves removed from the source."
    if cell['cell_type'] != 'code': return cell
    lines = ''.join(cell['source']).splitlines(keepends=True)
    flags = [m.group(1) for l in lines if (m := DIRECTIVE.match(l))]
    tags = set(cell.get('metadata', {}).get('tags', []))
    body = ''.join(l for l in lines if not DIRECTIVE.match(l))
    if 'hide' in flags or (flags and not body.strip()):  # hidden, or only directives (`#| default_exp data`)
        tags.add('remove-cell')
    elif any(f in ('export', 'exports', 'exporti') for f in flags):
        tags.add('hide-input')  # the exported code folded, its signature and docstring on the module's API page
    cell['source'] = body.lstrip('\n')
    if tags: cell.setdefault('metadata', {})['tags'] = sorted(tags)
    return cell


def write(path, text, written):
    "Write `text` (str, or bytes for a binary file) to `path` only when it differs (keeps Sphinx's incremental build); note it as written."
    written.add(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        if not path.exists() or path.read_bytes() != text: path.write_bytes(text)
    elif not path.exists() or path.read_text(encoding='utf-8') != text: path.write_text(text, encoding='utf-8')


def stage():
    written = set()
    module_nb = {}  # glrp.MODULE -> the notebook that exports it (its `#| default_exp`)
    for nb_path in notebooks():
        nb = json.loads(nb_path.read_text(encoding='utf-8'))
        for c in nb['cells']:
            for l in ''.join(c['source']).splitlines() if c['cell_type'] == 'code' else []:
                if (m := re.match(r'^\s*#\|\s*default_exp\s+(\S+)', l)): module_nb[m.group(1)] = nb_path.stem
        nb['cells'] = [convert_cell(c) for c in nb['cells']]
        write(SRC/nb_path.name, json.dumps(nb, indent=1, ensure_ascii=False) + '\n', written)
    for m in modules():
        nb = module_nb.get(m)
        src = f'Written in the notebook {{doc}}`../{nb}`.\n\n' if nb else ''
        write(SRC/'api'/f'{m}.md', f'# glrp.{m}\n\n{src}```{{eval-rst}}\n.. automodule:: glrp.{m}\n   :members:\n   :show-inheritance:\n```\n', written)
    write(SRC/'api'/'index.md', '# API reference\n\nOne page per module of the package `glrp`; the docstrings come from the notebooks.\n\n'
          '```{toctree}\n:maxdepth: 1\n\n' + ''.join(f'{m}\n' for m in modules()) + '```\n', written)
    index = json.loads((NBS/'index.ipynb').read_text(encoding='utf-8'))
    toc = ('```{toctree}\n:hidden:\n:caption: Notebooks\n\n' + ''.join(f'{p.stem}\n' for p in notebooks()) + '```\n\n'
           '```{toctree}\n:hidden:\n:caption: Reference\n\napi/index\n```\n')
    index['cells'] = [convert_cell(c) for c in index['cells']] + [dict(cell_type='markdown', metadata={}, source=toc)]
    write(SRC/'index.ipynb', json.dumps(index, indent=1, ensure_ascii=False) + '\n', written)
    for img in sorted((NBS/'images').rglob('*')) if (NBS/'images').is_dir() else []:  # README.md's figures, same paths
        if img.is_file(): write(SRC/img.relative_to(ROOT), img.read_bytes(), written)
    removed = [p for p in SRC.rglob('*') if p.is_file() and p not in written]
    for p in removed: p.unlink()  # a notebook or module removed since the last build: its staged copy goes too
    return removed


def main():
    if stage():  # Sphinx leaves the pages of removed sources in place: a page removed means a clean build
        shutil.rmtree(OUT, ignore_errors=True)
    cmd = [sys.executable, '-m', 'sphinx', '-b', 'html', '-q', '-W', '--keep-going', '-c', str(ROOT/'docs'), '-d', str(DOCTREES), str(SRC), str(OUT)]
    sys.exit(subprocess.run(cmd, cwd=ROOT).returncode)


if __name__ == '__main__': main()
