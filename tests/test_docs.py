"""The documentation site in a browser: docs/build.py builds _docs/ (incrementally, as `make docs` does), a local
http.server serves it, and headless Chromium opens the home page, every notebook page (the tour nbs/000_tour.ipynb
first when it exists) and the search page.

Each page is loaded with `chromium --dump-dom`; the server adds a small script to every HTML page it serves, which on
the page's load event writes what the browser saw into the DOM: the title, the first heading, each <img> whose
naturalWidth is 0 (missing or broken), and on the search page the number of results. A page fails when the server
answers 404, when a figure saved in the notebook is missing or broken, when its heading is not the notebook's title,
when it shows an error marker of docutils/Sphinx (system messages, problematic references) or of http.server, or
when Markdown is left raw outside code (a table's |---| row, a code fence).
A Python traceback is fine where the notebook has it saved; one that the notebook does not hold fails.
The API pages (one per module) are read over HTTP without the browser: each must document at least one object.
Every relative link or source of every page must lead to a file of the site.

Skipped, saying why, without /usr/bin/chromium (`apt-get install chromium`) or without the [docs] extra (`make docs`).
"""
import html, importlib.util, json, os, re, subprocess, sys, tempfile, threading, time, urllib.error, urllib.request
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT/'_docs'
CHROMIUM = Path('/usr/bin/chromium')
FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
         '--disable-sync', '--no-first-run', '--window-size=1280,1600', '--virtual-time-budget=10000']
DOCS_EXTRA = ('sphinx', 'myst_nb', 'furo')  # settings.ini's docs_requirements, as modules

missing = [m for m in DOCS_EXTRA if importlib.util.find_spec(m) is None]
pytestmark = [
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f'{CHROMIUM} absent (Debian: apt-get install -y chromium)'),
    pytest.mark.skipif(bool(missing), reason=f'the [docs] extra is not installed ({", ".join(missing)} missing): run make docs'),
    pytest.mark.timeout(120),  # per test, the build included: an incremental one takes seconds, a page a second or two
]

# docs/build.py, by path (PyPI's `build` may be importable as `build`): the notebooks in page order, the modules, and
# the cell conversion the pages were made with
_spec = importlib.util.spec_from_file_location('glrp_docs_build', ROOT/'docs'/'build.py')
build = importlib.util.module_from_spec(_spec); _spec.loader.exec_module(build)

# Added before </body> of each page served: the report of what the browser loaded, as JSON in <pre id="docs-check">.
CHECK = """<script>
for (const i of document.images) i.loading = 'eager';
window.addEventListener('load', () => {
  let tries = 0;
  const report = () => {
    const results = document.querySelectorAll('#search-results li').length;
    if (location.pathname.endsWith('search.html') && !results && tries++ < 50) return setTimeout(report, 100);
    const broken = [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute('src'));
    const pre = document.createElement('pre');
    pre.id = 'docs-check';
    pre.textContent = JSON.stringify({title: document.title, h1: (document.querySelector('h1') || {}).textContent || '',
                                      images: document.images.length, broken, results});
    document.body.appendChild(pre);
  };
  report();
});
</script>"""
ERRORS = re.compile(r'class="[^"]*\b(system-message|problematic)\b|<title>Error response</title>|Error code: 404|'
                    r'Page not found|autodoc: failed|class="[^"]*\badmonition error\b')
TRACEBACK = 'Traceback (most recent call last)'
# Markdown left raw outside code: a table's delimiter row (|---| or, after smart quotes, |—|), a code fence
RAW_MARKDOWN = re.compile(r'\|\s*:?(?:-{3,}|—+):?\s*\||^\s*```', re.M)


class Handler(SimpleHTTPRequestHandler):
    "Serves _docs/, each HTML page with CHECK added."
    def log_message(self, *args): pass

    def do_GET(self):
        path = Path(self.translate_path(self.path))
        if path.is_dir(): path = path/'index.html'
        if path.suffix != '.html' or not path.is_file(): return super().do_GET()
        body = path.read_bytes().replace(b'</body>', CHECK.encode() + b'</body>', 1)
        self.send_response(200)
        self.send_header('Content-Type', 'text/html; charset=utf-8')
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope='module')
def site():
    "The base URL of _docs/, freshly built (incrementally) and served on localhost."
    t = time.time()
    r = subprocess.run([sys.executable, str(ROOT/'docs'/'build.py')], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert r.returncode == 0, f'docs/build.py failed (exit {r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}'
    print(f'docs build: {time.time() - t:.1f} s')
    server = ThreadingHTTPServer(('127.0.0.1', 0), partial(Handler, directory=str(DOCS)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f'http://127.0.0.1:{server.server_address[1]}'
    server.shutdown()
    server.server_close()


def fetch(url):
    "The page's HTML over HTTP; fails naming the page when the server does not have it."
    try:
        with urllib.request.urlopen(url, timeout=10) as r: return r.read().decode('utf-8')
    except urllib.error.HTTPError as e: pytest.fail(f'{url}: HTTP {e.code} (page missing)')


def browse(url):
    "The DOM of `url` after Chromium loaded it, and the report CHECK wrote into it."
    fetch(url)
    with tempfile.TemporaryDirectory() as profile:
        r = subprocess.run([str(CHROMIUM), *FLAGS, f'--user-data-dir={profile}', '--dump-dom', url],
                           capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f'{url}: chromium exited {r.returncode}\n{r.stderr[-2000:]}'
    m = re.search(r'<pre id="docs-check">(.*?)</pre>', r.stdout, re.S)
    assert m, f'{url}: the page check never ran (page not loaded?)\n{r.stderr[-2000:]}'
    return r.stdout[:m.start()], json.loads(html.unescape(m.group(1)))


def saved(nb_path):
    "What a notebook's page must show: its title, the number of figures in its shown cells, the tracebacks it holds."
    nb = json.loads(nb_path.read_text(encoding='utf-8'))
    cells = [build.convert_cell(c) for c in nb['cells']]
    shown = [c for c in cells if 'remove-cell' not in c.get('metadata', {}).get('tags', [])]
    figures = sum(any(k.startswith('image/') for k in o.get('data', {})) for c in shown for o in c.get('outputs', []))
    title = next((m.group(1).strip() for c in cells if c['cell_type'] == 'markdown'
                  for m in [re.match(r'#\s+(.+)', ''.join(c['source']))] if m), None)
    return title, figures, nb_path.read_text(encoding='utf-8').count(TRACEBACK)


def check_page(url, nb_path):
    dom, seen = browse(url)
    assert not seen['broken'], f'{url}: missing or broken images {seen["broken"]}'
    assert not (m := ERRORS.search(dom)), f'{url}: error marker {m.group(0)!r} in the page'
    text = re.sub(r'<(pre|code)\b.*?</\1>', '', dom, flags=re.S)
    assert not (m := RAW_MARKDOWN.search(text)), f'{url}: raw Markdown {text[max(m.start() - 80, 0):m.end() + 80]!r}'
    title, figures, tracebacks = saved(nb_path)
    assert seen['images'] >= figures, f'{url}: {seen["images"]} images for the {figures} figures saved in {nb_path.name}'
    assert dom.count(TRACEBACK) <= tracebacks, f'{url}: a traceback that {nb_path.name} does not hold'
    if title: assert re.sub(r'\W', '', title.replace('`', '')).lower() in re.sub(r'\W', '', seen['h1']).lower(), \
        f'{url}: heading {seen["h1"]!r}, not the notebook title {title!r}'
    return seen


def test_home_and_notebook_pages(site):
    "The home page (nbs/index.ipynb), the tour when there is one, then every numbered notebook, in page order."
    pages = [('index', build.NBS/'index.ipynb')] + [(p.stem, p) for p in build.notebooks()]
    assert len(pages) > 1, 'no numbered notebook in nbs/'
    if (build.NBS/'000_tour.ipynb').exists(): assert pages[1][0] == '000_tour', 'the tour is not the first page after home'
    t = time.time()
    for stem, nb_path in pages: check_page(f'{site}/{stem}.html', nb_path)
    print(f'{len(pages)} pages in the browser: {time.time() - t:.1f} s')
    home = fetch(f'{site}/index.html')
    for stem, _ in pages[1:]: assert f'href="{stem}.html"' in home, f'the home page does not link {stem}.html'


def test_search(site):
    "Sphinx's search, in the browser: a word every metrics page has finds pages."
    dom, seen = browse(f'{site}/search.html?q=dice')
    assert seen['results'] > 0, 'the search for "dice" found nothing (searchindex.js not loaded?)'


def test_api_pages(site):
    "One API page per module of glrp/, each documenting at least one object and showing no docutils error."
    index = fetch(f'{site}/api/index.html')
    for m in build.modules():
        assert f'href="{m}.html"' in index, f'api/index.html does not link {m}.html'
        page = fetch(f'{site}/api/{m}.html')
        assert 'class="py ' in page, f'api/{m}.html documents no object (autodoc could not import glrp.{m}?)'
        assert not (e := ERRORS.search(page)), f'api/{m}.html: error marker {e.group(0)!r}'


def test_internal_links(site):
    "Every relative link and source (pages, figures, scripts, styles) of every page leads to a file of the site."
    broken = set()
    for page in DOCS.rglob('*.html'):
        for ref in re.findall(r'(?:href|src)="([^"]+)"', page.read_text(encoding='utf-8')):
            path = html.unescape(ref).split('#')[0].split('?')[0]
            if path and not re.match(r'^[a-z][a-z0-9+.-]*:|^/', path) and not (page.parent/path).exists():
                broken.add(f'{page.relative_to(DOCS)} -> {ref}')
    assert not broken, f'{len(broken)} broken links: {sorted(broken)[:20]}'
