"""How the notebooks read: export-cell sizes, definitions per cell, prose lengths (issue targets in CONTRIBUTING.md).

    python bench/notebooks.py            # the figures for nbs/ and glrp/repro/
    python bench/notebooks.py --long 40  # and list every export cell over 40 lines
    python bench/notebooks.py --long 40 --prose nbs/06_train.ipynb   # one notebook, its long cells and sentences
"""
import argparse, ast, json, re, statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cells(path):
    "The cells of notebook `path`, each as (type, source text)."
    nb = json.loads(Path(path).read_text())
    return [(c['cell_type'], ''.join(c['source'])) for c in nb['cells']]


def is_export(src):
    "Whether a code cell is exported to the package (`#| export` or `#| exports`)."
    return bool(re.match(r'\s*#\s*\|\s*exports?\b', src))


def code_lines(src):
    "Lines of an export cell, its directive and blank lines not counted."
    return [l for l in src.splitlines() if l.strip() and not re.match(r'\s*#\s*\|', l)]


def definitions(src):
    "Top-level functions and classes a cell defines."
    try: tree = ast.parse(src)
    except SyntaxError: return 0
    return sum(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) for n in tree.body)


def words(text): return len(re.findall(r"[\w'’.-]+", text))


def sentences(text):
    "Sentences of markdown prose, code, tables, headings and links' targets left out."
    text = re.sub(r'```.*?```', ' ', text, flags=re.S)
    text = '\n'.join(l for l in text.splitlines() if not l.lstrip().startswith(('|', '#', '>')))
    text = re.sub(r'`[^`]*`', 'X', text)
    text = re.sub(r'\]\([^)]*\)', ']', text)
    return [s for s in re.split(r'(?<=[.!?])\s+(?=[A-Z(*`])', ' '.join(text.split())) if s.strip()]


def summary(src):
    "The `>` summary line of a title cell, if any."
    m = re.search(r'^>\s*(.+)$', src, flags=re.M)
    return m.group(1) if m else None


def main(notebooks=(), long=None, prose=False):
    nbs = [Path(n).resolve() for n in notebooks] or sorted((ROOT/'nbs').glob('*.ipynb')) + sorted((ROOT/'glrp'/'repro').glob('*.ipynb'))
    wordy = []
    sizes, defs, md_words, sums, sents, longest = [], [], [], [], [], []
    for nb in nbs:
        for i, (kind, src) in enumerate(cells(nb)):
            if kind == 'code' and is_export(src):
                n = len(code_lines(src)); sizes.append(n); defs.append(definitions(src))
                if long is not None and n > long: longest.append((n, nb.relative_to(ROOT), i))
            elif kind == 'markdown':
                md_words.append(words(src)); sents += [words(s) for s in sentences(src)]
                if prose: wordy += [(nb.relative_to(ROOT), i, f'{words(src)} words in the cell')]*(words(src) > 200)
                if prose: wordy += [(nb.relative_to(ROOT), i, f'{words(s)}-word sentence: {s[:70]}...') for s in sentences(src) if words(s) > 30]
                if (s := summary(src)) and src.lstrip().startswith('#'): sums.append(words(s))
    print(f"notebooks {len(nbs)}, export cells {len(sizes)}")
    sizes, defs, sums = sizes or [0], defs or [0], sums or [0]
    print(f"export cell lines: median {statistics.median(sizes):.0f}, mean {statistics.mean(sizes):.1f}, "
          f"over 40 {sum(n > 40 for n in sizes)} ({100*sum(n > 40 for n in sizes)/len(sizes):.1f}%), "
          f"over 60 {sum(n > 60 for n in sizes)}, longest {max(sizes)}")
    print(f"definitions per export cell: mean {statistics.mean(defs):.2f}, cells with more than one {sum(d > 1 for d in defs)}")
    print(f"markdown cells {len(md_words)}: mean {statistics.mean(md_words):.0f} words, over 200 words {sum(w > 200 for w in md_words)}")
    print(f"'>' summaries {len(sums)}: mean {statistics.mean(sums):.1f} words, longest {max(sums)}")
    print(f"prose sentences {len(sents)}: mean {statistics.mean(sents):.1f} words, over 30 {sum(s > 30 for s in sents)}, "
          f"over 40 {sum(s > 40 for s in sents)}, longest {max(sents)}")
    for n, nb, i in sorted(longest, reverse=True): print(f"  {n:4d} lines  {nb} cell {i}")
    for nb, i, what in wordy: print(f"  {nb} cell {i}: {what}")


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('notebooks', nargs='*', help='notebooks to measure (default: nbs/ and glrp/repro/)')
    p.add_argument('--prose', action='store_true', help='list markdown cells over 200 words and sentences over 30')
    p.add_argument('--long', type=int, default=None, help='list export cells longer than this many lines')
    main(**vars(p.parse_args()))
