"""A lean, conventional install: glrp's wheel, installed without `-e` and without extras into a fresh virtual environment.

The core install gives the `glrp` command for data, training and prediction (torch, numpy, scipy, nibabel, tqdm,
pydensecrf2 and nothing of the reproduction); `glrp reproduce` says which extra it needs; the experiment notebooks
are package data where `notebooks_folder()` finds them. With a warm pip cache (torch==2.13.0 from this machine's disk,
pydensecrf2 from pip's wheel cache) building and installing took about 80-90 s (wheel 7 s, venv 8 s, torch 45-51 s, the
wheel with its core requirements 18-22 s) and the whole module about 2 minutes on 2 cores; a cold cache adds pydensecrf2's
build (about 45 s) and the downloads.

The test needs pip to reach a package index (build requirements, numpy, scipy, ...). Where it cannot, the test skips,
naming the network error; any other failure fails. `pytest --ignore tests/test_install.py` leaves it out on purpose.
"""
import json, os, re, shutil, subprocess, sys, time
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
TORCH = os.environ.get('GLRP_TEST_TORCH', 'torch==2.13.0')  # the Makefile's pin (a CPU wheel here; unpinned pulls CUDA)
REPRO_ONLY = ('papermill', 'ipykernel', 'IPython', 'matplotlib', 'nbformat', 'jupyterlab', 'nbdev')  # must not come with the core
NETWORK = re.compile(r'NewConnectionError|Temporary failure in name resolution|Name or service not known|Network is unreachable|'
                     r'Max retries exceeded|ConnectTimeoutError|ReadTimeoutError|No route to host')

pytestmark = pytest.mark.timeout(1500)


def run(cmd, cwd, timeout=900):
    "Run `cmd` outside the checkout: no PYTHONPATH, so only what the virtual environment holds can be imported."
    env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'PYTHONHOME', 'VIRTUAL_ENV')}
    env.update(OMP_NUM_THREADS='1', PYTHONNOUSERSITE='1')
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def pip(python, *args, cwd, what):
    "pip with its default cache; skip when the index cannot be reached, fail on anything else."
    r = run([python, '-m', 'pip', '--disable-pip-version-check', *args], cwd=cwd)
    if r.returncode != 0:
        out = r.stdout + r.stderr
        if NETWORK.search(out): pytest.skip(f"{what}: no package index reachable ({NETWORK.search(out).group(0)})")
        pytest.fail(f"{what} failed (exit {r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


@pytest.fixture(scope='module')
def env(tmp_path_factory):
    "A fresh virtual environment with torch and glrp's wheel (core requirements only); the times of each step."
    tmp = tmp_path_factory.mktemp('install')
    times = {}
    # the source as a build sees it (the files MANIFEST.in names): no build/ or egg-info left over from other builds
    src = tmp/'src'
    shutil.copytree(ROOT/'glrp', src/'glrp', ignore=shutil.ignore_patterns('__pycache__', '*.pyc', '.ipynb_checkpoints'))
    for f in ('setup.py', 'settings.ini', 'README.md', 'LICENSE', 'MANIFEST.in'): shutil.copy2(ROOT/f, src/f)
    t = time.time()
    # PEP 517 in an isolated build environment, as `pip install .` builds (and as every pip does from 25.3 on)
    pip(sys.executable, 'wheel', '--use-pep517', src, '--no-deps', '-w', tmp/'dist', cwd=tmp, what='building the wheel')
    times['wheel build'] = time.time() - t
    wheels = list((tmp/'dist').glob('glrp-*.whl'))
    assert len(wheels) == 1, wheels
    t = time.time()
    r = run([sys.executable, '-m', 'venv', tmp/'venv'], cwd=tmp)
    assert r.returncode == 0, r.stderr
    py, bin_ = tmp/'venv'/'bin'/'python', tmp/'venv'/'bin'
    times['venv'] = time.time() - t
    t = time.time()
    pip(py, 'install', TORCH, cwd=tmp, what=f'installing {TORCH}')
    times['torch install'] = time.time() - t
    t = time.time()
    pip(py, 'install', wheels[0], cwd=tmp, what='installing the wheel (no extras)')
    times['wheel install'] = time.time() - t
    print('install times (s): ' + ', '.join(f'{k} {v:.1f}' for k, v in times.items()))
    yield dict(tmp=tmp, py=py, glrp=bin_/'glrp', wheel=wheels[0], times=times)
    shutil.rmtree(tmp/'venv', ignore_errors=True)  # about 1 GB with torch: not left in pytest's kept temporary folders


def test_wheel_is_lean_and_ships_the_notebooks(env):
    "Every module imports without the reproduction's packages, none of which the core install brought; the notebooks are package data."
    code = """
import importlib, importlib.util, json, pkgutil, sys
import glrp
mods = [m.name for m in pkgutil.iter_modules(glrp.__path__, 'glrp.')]
for m in mods: importlib.import_module(m)
from glrp.reproduce import notebooks_folder
nbs = notebooks_folder()
print(json.dumps(dict(file=glrp.__file__, version=glrp.__version__, mods=mods, nbs=str(nbs),
                      notebooks=sorted(p.name for p in nbs.glob('*.ipynb')),
                      present=[m for m in sys.argv[1:] if importlib.util.find_spec(m)], loaded=[m for m in sys.argv[1:] if m in sys.modules])))
"""
    r = run([env['py'], '-c', code, *REPRO_ONLY], cwd=env['tmp'])
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    site = (env['tmp']/'venv').resolve()
    assert Path(got['file']).resolve().is_relative_to(site), f"glrp imported from {got['file']}, not from the wheel's install"
    assert {'glrp.cli', 'glrp.train', 'glrp.crf', 'glrp.metrics', 'glrp.reproduce'} <= set(got['mods'])
    assert got['present'] == [] and got['loaded'] == [], f"the core install has {got['present']} (extras only)"
    assert Path(got['nbs']).resolve() == Path(got['file']).resolve().parent/'repro'
    assert got['notebooks'] == ['ablation.ipynb', 'figures.ipynb', 'main_table.ipynb']
    import zipfile
    names = zipfile.ZipFile(env['wheel']).namelist()
    assert 'glrp/repro/main_table.ipynb' in names and any(n.endswith('.dist-info/licenses/LICENSE') or n.endswith('.dist-info/LICENSE') for n in names), names
    meta = next(zipfile.ZipFile(env['wheel']).read(n).decode() for n in names if n.endswith('.dist-info/METADATA'))
    assert 'example.org' not in meta
    extras = {l.split(':', 1)[1].strip() for l in meta.splitlines() if l.startswith('Provides-Extra:')}
    assert extras == {'repro', 'dev', 'docs'}, extras  # docs: what `make docs` installs to build the site


@pytest.fixture(scope='module')
def cli_run(env):
    "The installed `glrp` command: --version, a phantom, a partition and a one-step fine-tuning; their results."
    tmp, glrp = env['tmp'], env['glrp']
    res = dict(version=run([glrp, '--version'], cwd=tmp),
               synth=run([glrp, 'synth', tmp/'data', '--patients', 6], cwd=tmp))
    res['partition'] = run([glrp, 'partition', tmp/'data', '--out', tmp/'work'/'manifest.json', '--folds', 3, '--labeled', 2, '--val', 1], cwd=tmp)
    res['finetune'] = run([glrp, 'finetune', tmp/'work'/'manifest.json', '--out', tmp/'work'/'ft', '--f', 4, '--size', 64, 64, '--spacing', 2.5,
                           '--epochs', 1, '--max-steps', 1, '--no-fast', '--device', 'cpu', '--workers', 1, '--batch', 4, '--no-progress'], cwd=tmp)
    return res


def test_core_commands_from_the_wheel(env, cli_run):
    "--version prints settings.ini's version; synth, partition and finetune run from the wheel's install."
    tmp, r = env['tmp'], cli_run
    version = re.search(r'^version\s*=\s*(\S+)', (ROOT/'settings.ini').read_text(), re.M).group(1)
    assert r['version'].returncode == 0 and r['version'].stdout.strip() == f'glrp {version}', (r['version'].stdout, r['version'].stderr)
    assert r['synth'].returncode == 0 and len(list((tmp/'data'/'training').glob('patient*'))) == 6, r['synth'].stderr[-3000:]
    assert r['partition'].returncode == 0 and (tmp/'work'/'manifest.json').is_file(), r['partition'].stderr[-3000:]
    ft = r['finetune']
    assert ft.returncode == 0, ft.stdout[-2000:] + ft.stderr[-3000:]
    assert (tmp/'work'/'ft'/'best.pt').is_file() and 'finetune: best epoch 1' in ft.stdout, ft.stdout


def test_reproduce_names_the_extra(env):
    "`glrp reproduce` without papermill: exit 2 and one line naming `glrp[repro]`, no traceback, nothing run."
    tmp = env['tmp']
    r = run([env['glrp'], 'reproduce', '--profile', 'smoke', '--out', tmp/'repro'], cwd=tmp)
    assert r.returncode == 2, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    assert 'glrp[repro]' in r.stderr and 'papermill' in r.stderr and 'Traceback' not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp/'repro').exists() or not any((tmp/'repro').iterdir())


def test_predict_with_the_model_folder(env, cli_run):
    "`glrp predict MODEL -i INPUT -o OUTPUT` on the fine-tuned model folder (once `glrp predict` takes -i)."
    tmp, glrp = env['tmp'], env['glrp']
    assert cli_run['finetune'].returncode == 0, cli_run['finetune'].stderr[-3000:]
    h = run([glrp, 'predict', '--help'], cwd=tmp)
    if not re.search(r'(^|[\s\[,])-i[\s,]', h.stdout): pytest.skip('glrp predict takes no -i INPUT yet (model-folder prediction not in this build)')
    model = tmp/'work'/'ft'/'model'
    if not (model/'model.json').is_file(): pytest.fail(f"no model folder at {model}: glrp finetune should write one")
    image = sorted((tmp/'data'/'training'/'patient001').glob('patient001_frame??.nii.gz'))[0]
    r = run([glrp, 'predict', model, '-i', image, '-o', tmp/'pred'], cwd=tmp)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    written = sorted(p.relative_to(tmp/'pred') for p in (tmp/'pred').rglob('*') if p.is_file()) if (tmp/'pred').is_dir() else []
    assert Path(image.name) in written, written  # one label file per input, under its name
    code = "import sys, nibabel as nib, numpy as np; a, b = nib.load(sys.argv[1]), nib.load(sys.argv[2]); print(a.shape == b.shape, sorted(np.unique(np.asarray(b.dataobj)).tolist()))"
    r = run([env['py'], '-c', code, image, tmp/'pred'/image.name], cwd=tmp)
    assert r.returncode == 0 and r.stdout.split()[0] == 'True', r.stdout + r.stderr[-2000:]  # on the scan's own grid
