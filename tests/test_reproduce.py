"`glrp reproduce` end to end on a tiny profile: outputs agree with each other; skip, resume, --force, failures, parameters cell."
import csv, json, os, re, shutil, subprocess, sys
from pathlib import Path
import nbformat
import pytest
from glrp.reproduce import PROFILES, CSV_FIELDS, check_parameters_cell, notebooks_folder, NotebookError, experiment_settings, load_profile, STATS_FIGURES, experiments
from glrp.synthetic import write_phantom

pytestmark = pytest.mark.timeout(900)

NOTEBOOKS = ('main_table', 'ablation', 'figures')

# A few synthetic patients, two methods, one GLRP ablation variant, one epoch each: the whole pipeline in about a minute.
TINY = dict(base='smoke', name='tiny', folds=4, Ms=[2], val=1, methods=['random', 'glrp'], net=dict(f=4, size=[32, 32], spacing=5.0),
            pretrain=dict(epochs=1, local_epochs=1, batch=16), finetune=dict(epochs=2, batch=8),
            crf_grid={'iterations': [1, 2]}, crf_iterations=[0, 2], ablation=[['hard', {'kernel': 'hard'}]])


def glrp_cli(*args, cwd):
    "Run the installed `glrp` command (as a user would) in a subprocess."
    env = dict(os.environ, OMP_NUM_THREADS='1')
    return subprocess.run([sys.executable, '-m', 'glrp.cli', *map(str, args)], cwd=cwd, capture_output=True, text=True, env=env)


def results(out):
    "{label: result record} of every experiment under `out`."
    return {f"{p.parent.parent.name}/{p.parent.name}": json.loads(p.read_text()) for p in Path(out).glob('*/*/result.json')}


def check_tables_agree(out, recs):
    "results.csv matches the result JSONs row for row, and RESULTS.md shows its main-table numbers; the rows."
    rows = list(csv.DictReader(open(Path(out)/'results.csv')))
    assert list(rows[0]) == CSV_FIELDS
    assert len(rows) == sum(len(r['evaluations']) for r in recs.values())
    for row in rows:
        rec = recs[f"{row['notebook']}/{row['experiment']}"]
        ev = [e for e in rec['evaluations'] if e['split'] == row['split'] and e['crf'] == row['crf']]
        assert len(ev) == 1
        pcl = ev[0]['summary']['pcl']['all']
        for c in ('RV', 'MYO', 'LV', 'mean'):
            assert abs(float(row[f'dice_{c}']) - pcl[c]) < 1e-4
        assert int(row['volumes']) == ev[0]['summary']['n_volumes']['all']
        runs = [r for r in rows if (r['notebook'], r['method'], r['M'], r['split'], r['crf']) == (row['notebook'], row['method'], row['M'], row['split'], row['crf'])]
        if row['notebook'] == 'main_table' and len(runs) == 1:  # one run (fold and seed): the table shows the value itself
            assert f"**{pcl['mean']:.3f}**" in (Path(out)/'RESULTS.md').read_text()
    return rows


def absolute_paths(obj, where='') -> list:
    "Every string in a JSON value that is an absolute path (a result must record paths relative to its folder)."
    if isinstance(obj, dict): return [a for k, v in obj.items() for a in absolute_paths(v, f'{where}/{k}')]
    if isinstance(obj, list): return [a for i, v in enumerate(obj) for a in absolute_paths(v, f'{where}/{i}')]
    return [(where, obj)] if isinstance(obj, str) and re.match(r'(/|[A-Za-z]:[\\/])', obj) else []


def main_table_section(md:str) -> str:
    "The '## Main table' section of a RESULTS.md: its table lines."
    sec = md.split('## Main table', 1)[1].split('\n## ', 1)[0]
    return '\n'.join(l for l in sec.splitlines() if l.startswith('|'))


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    "One finished reproduction of the tiny profile on a phantom with training/ (8 patients) and labeled testing/ (2 patients)."
    tmp = tmp_path_factory.mktemp('repro')
    write_phantom(tmp/'data', n_patients=8, seed=3)
    write_phantom(tmp/'data', n_patients=2, seed=4, split='testing', start_id=101)
    (tmp/'tiny.json').write_text(json.dumps(TINY))
    r = glrp_cli('reproduce', '--profile', tmp/'tiny.json', '--data', tmp/'data', '--out', tmp/'out', '--device', 'cpu', cwd=tmp)
    return tmp, r


def test_repro_notebooks_are_clean_templates():
    "Each committed experiment notebook has a parameters cell, no outputs, and its parameters documented inline."
    for name in NOTEBOOKS:
        path = notebooks_folder()/f'{name}.ipynb'
        i = check_parameters_cell(path)
        nb = nbformat.read(path, as_version=4)
        assert not any(c.get('outputs') for c in nb.cells if c.cell_type == 'code'), f"{path}: commit it without outputs"
        assert 'result' in nb.cells[i].source and all('#' in l for l in nb.cells[i].source.splitlines() if '=' in l), path


def test_end_to_end(tiny):
    tmp, r = tiny
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = tmp/'out'
    recs = results(out)
    expected = {'main_table/random-M2-fold0', 'main_table/glrp-M2-fold0', 'ablation/hard', 'figures/figures'}
    assert set(recs) == expected
    for label in expected:  # every experiment kept its executed notebook next to its result
        nb = nbformat.read(out/label/f"{label.split('/')[0]}.ipynb", as_version=4)
        assert any(c.get('outputs') for c in nb.cells if c.cell_type == 'code')
        assert any('injected-parameters' in c.metadata.get('tags', []) for c in nb.cells), 'papermill did not inject the parameters'
    # the parameters reached the notebooks: the tiny network, not the notebook's default width
    ck = json.loads((out/'main_table/glrp-M2-fold0/finetune/run.json').read_text())
    assert ck['model_args']['f'] == 4 and ck['config']['size'] == [32, 32]
    rows = check_tables_agree(out, recs)
    # test fold and ACDC-style testing/ split, without and with CRF; the ablation's iteration sweep
    main = recs['main_table/glrp-M2-fold0']
    assert {(e['split'], e['crf']) for e in main['evaluations']} == {('test', 'none'), ('test', 'crf'), ('testing', 'none'), ('testing', 'crf')}
    assert [e['summary']['n_volumes']['all'] for e in main['evaluations'] if e['split'] == 'testing'] == [4, 4]
    assert {e['crf'] for e in recs['ablation/hard']['evaluations']} == {'none', 'crf', 'crf-it0', 'crf-it2'}
    # RESULTS.md has the testing/ table, the ablation, the figures and provenance
    md = (out/'RESULTS.md').read_text()
    assert '## ACDC testing/' in md and '## Ablation' in md and 'commit `' in md
    assert '## Validation curves (fine-tuning)' in md and '| 0 | 2 | glrp |' in md  # the runs' curves, from curves.csv
    # the paired statistics: per-volume records in the result JSONs, the glrp - random row over the fold's test patients
    n_test = len(recs['main_table/random-M2-fold0']['evaluations'][0]['summary']['volumes']) // 2
    assert main['numerics']['precision'] in ('fp32', 'bf16') and main['numerics']['cpu_capability']
    assert '## Paired differences' in md and f"| 2 | glrp − random | {n_test} (1) |" in md, md.split('## Paired differences')[-1][:1500]
    vols = [v for e in main['evaluations'] for v in e['summary']['volumes']]
    assert vols and all(v['voxel_ml'] > 0 for v in vols)  # the result JSON alone gives the clinical indices
    assert '## Clinical indices' in md and f"| 2 | glrp | {n_test} x 1 |" in md and '| 2 | glrp − random | LV EF |' in md, md.split('## Clinical')[-1][:1500]
    for f in recs['figures/figures']['figures']:
        assert (out/'figures/figures'/f).stat().st_size > 1000
        assert f"figures/figures/{f}" in md
    for f in STATS_FIGURES:  # the paired table's figures, next to the report (named, not shown: the data came from --data)
        assert (out/f).stat().st_size > 1000 and f"`{f}`" in md and f"]({f})" not in md
    meta = json.loads((out/'reproduce.json').read_text())
    assert meta['failed'] == [] and len(meta['ran']) == 4 and meta['data_hash'] == main['data_hash']
    # the CRF was tuned on validation only: its table has one score per grid point
    assert len(main['crf_table']) == 2
    # no absolute paths in results and parameters: each is relative to the experiment's folder and names what was used
    for p in list(out.glob('*/*/result.json')) + list(out.glob('*/*/parameters.json')) + [out/'reproduce.json']:
        assert not absolute_paths(json.loads(p.read_text())), (p, absolute_paths(json.loads(p.read_text())))
    d = out/'main_table/glrp-M2-fold0'
    assert main['parameters']['work'] == '../../work' and main['parameters']['data'] == '../../../data'
    assert (d/main['manifest']).resolve().parent == (out/'work'/'manifests').resolve()
    assert (d/main['pretrained']).is_file() and (d/main['evaluations'][0]['summary']['pred_dir']).is_dir()
    assert recs['figures/figures']['parameters']['results'] == '../..'


def test_moved_output_folder(tiny):
    "A reproduction's output folder moved elsewhere: its fine-tuned checkpoints still find their manifest and cache (paths recorded relative to the run)."
    from glrp.reproduce import _run_paths
    tmp, r = tiny
    moved = tmp/'moved'
    shutil.copytree(tmp/'out', moved)
    (tmp/'out').rename(tmp/'out.hidden')  # the old absolute paths now lead nowhere
    try:
        cfg, m, cache = _run_paths(moved/'main_table'/'glrp-M2-fold0'/'finetune'/'best.pt')
        assert Path(cache).resolve() == (moved/'work'/'cache').resolve() and m['folds'][0]['test']
        assert not Path(cfg.manifest).exists()  # the config itself still names the old place
    finally: (tmp/'out.hidden').rename(tmp/'out'); shutil.rmtree(moved)


def test_skip_and_resume(tiny):
    tmp, _ = tiny
    out = tmp/'out'
    before = {k: v['finished'] for k, v in results(out).items()}
    # from another working directory, with relative paths: the same parameters, so nothing runs
    r = glrp_cli('reproduce', '--profile', '../tiny.json', '--data', '../data', '--out', '.', '--device', 'cpu', '--only', 'main_table', cwd=out)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count('skip ') == 2 and 'run    ' not in r.stdout
    # an experiment whose result is gone runs again; its finished fine-tuning is reused, the other experiment is skipped
    (out/'main_table/random-M2-fold0/result.json').unlink()
    best = out/'main_table/random-M2-fold0/finetune/best.pt'
    t_best = best.stat().st_mtime_ns
    r = glrp_cli('reproduce', '--profile', tmp/'tiny.json', '--data', tmp/'data', '--out', out, '--device', 'cpu', '--only', 'main_table', cwd=tmp)
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'run    main_table/random-M2-fold0' in r.stdout and 'skip   main_table/glrp-M2-fold0' in r.stdout
    assert best.stat().st_mtime_ns == t_best
    after = results(out)
    assert after['main_table/glrp-M2-fold0']['finished'] == before['main_table/glrp-M2-fold0']
    # changed parameters are not "done": a different M is a new experiment
    prof = dict(TINY, Ms=[3]); (tmp/'tiny3.json').write_text(json.dumps(prof))
    from glrp.reproduce import load_profile, experiments, is_done
    exps = experiments(load_profile(str(tmp/'tiny3.json')), tmp/'data', out/'work')
    assert not any(is_done(e, out) for e in exps)


def test_force_reruns_with_the_same_numbers(tiny):
    "--force retrains from an empty experiment folder; the same seed gives the same numbers on the same machine."
    tmp, _ = tiny
    out = tmp/'out'
    prof = dict(TINY, methods=['random'], ablation=[]); (tmp/'random.json').write_text(json.dumps(prof))
    old = results(out)['main_table/random-M2-fold0']
    best = out/'main_table/random-M2-fold0/finetune/best.pt'
    t_best = best.stat().st_mtime_ns
    r = glrp_cli('reproduce', '--profile', tmp/'random.json', '--data', tmp/'data', '--out', out, '--device', 'cpu', '--only', 'main_table',
                 '--force', cwd=tmp)
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'run    main_table/random-M2-fold0' in r.stdout
    assert best.stat().st_mtime_ns != t_best  # retrained, not reused
    new = results(out)['main_table/random-M2-fold0']
    assert new['finished'] >= old['finished']
    assert [e['summary']['pcl'] for e in new['evaluations']] == [e['summary']['pcl'] for e in old['evaluations']]


def test_failing_notebook_does_not_stop_the_others(tiny):
    tmp, _ = tiny
    out = tmp/'out'
    prof = dict(TINY, methods=['nosuch', 'random'], ablation=[], figures=False); (tmp/'bad.json').write_text(json.dumps(prof))
    r = glrp_cli('reproduce', '--profile', tmp/'bad.json', '--data', tmp/'data', '--out', out, '--device', 'cpu', cwd=tmp)
    assert r.returncode == 1
    assert 'main_table/nosuch-M2-fold0' in r.stderr and 'failed' in r.stderr
    assert 'skip   main_table/random-M2-fold0' in r.stdout  # the others went on (here: were already done)
    nb = out/'main_table/nosuch-M2-fold0/main_table.ipynb'
    assert "unknown method 'nosuch'" in nb.read_text()  # the executed notebook keeps the error
    assert not (out/'main_table/nosuch-M2-fold0/result.json').exists()
    assert (out/'results.csv').is_file()  # the tables are still assembled from what finished


def test_paired_table_refuses_mixed_precision(tiny, tmp_path):
    "A table over results trained in bf16 and in fp32 is refused, naming the key."
    from glrp.reproduce import paired_markdown
    src, out = tiny[0]/'out', tmp_path/'out'
    for label in ('main_table/random-M2-fold0', 'main_table/glrp-M2-fold0'):
        (out/label).mkdir(parents=True)
        shutil.copy(src/label/'result.json', out/label/'result.json')
    assert '| glrp − random |' in paired_markdown(out, n_boot=200)
    p = out/'main_table/glrp-M2-fold0/result.json'
    r = json.loads(p.read_text()); r['numerics']['precision'] = 'bf16' if r['numerics']['precision'] == 'fp32' else 'fp32'
    p.write_text(json.dumps(r))
    with pytest.raises(ValueError, match='precision'): paired_markdown(out, n_boot=200)


def test_run_refuses_a_folder_of_other_numerics(tiny, tmp_path):
    "A reproduction into a folder whose results were trained with other numerics stops before anything runs (exit 2, naming them)."
    src, out = tiny[0]/'out', tmp_path/'out'
    label = 'main_table/random-M2-fold0'
    (out/label).mkdir(parents=True)
    r = json.loads((src/label/'result.json').read_text()); r['numerics']['precision'] = 'bf16' if r['numerics']['precision'] == 'fp32' else 'fp32'
    (out/label/'result.json').write_text(json.dumps(r))
    (tmp_path/'tiny.json').write_text(json.dumps(TINY))
    p = glrp_cli('reproduce', '--profile', 'tiny.json', '--data', tiny[0]/'data', '--out', 'out', '--device', 'cpu', cwd=tmp_path)
    assert p.returncode == 2, p.stdout + p.stderr
    assert f"precision {r['numerics']['precision']}) than this machine" in p.stderr, p.stderr
    assert sorted(x.name for x in out.iterdir()) == ['main_table'] and not list(out.glob('main_table/*/*.ipynb'))  # nothing ran, nothing written


def test_notebook_without_parameters_cell(tmp_path):
    "A notebook whose parameters tag was stripped is refused before anything runs."
    nbs = tmp_path/'nbs'; shutil.copytree(notebooks_folder(), nbs)
    nb = nbformat.read(nbs/'main_table.ipynb', as_version=4)
    for c in nb.cells: c.metadata.pop('tags', None)
    nbformat.write(nb, nbs/'main_table.ipynb')
    with pytest.raises(NotebookError, match="main_table.ipynb: no cell tagged 'parameters'"): check_parameters_cell(nbs/'main_table.ipynb')
    r = glrp_cli('reproduce', '--notebooks', nbs, '--out', tmp_path/'out', cwd=tmp_path)
    assert r.returncode == 2 and "no cell tagged 'parameters'" in r.stderr
    assert not list((tmp_path/'out').glob('*/*/'))  # nothing ran


def test_profiles():
    "The four built-in profiles: smoke needs no data; cpu, study and paper do; paper is the full protocol; study pins its precision."
    assert PROFILES['smoke']['data'] is None and PROFILES['cpu']['data'] == PROFILES['study']['data'] == PROFILES['paper']['data'] == 'required'
    s = PROFILES['study']
    assert (len(s['run_folds']), s['Ms'], len(s['seeds']), s['net']['precision']) == (5, [2, 6, 10], 2, 'bf16')
    assert {'random', 'pcl', 'glrp-global', 'glrp'} <= set(s['methods'])
    p = experiment_settings(PROFILES['paper'])
    assert (p['net']['f'], p['net']['spacing'], tuple(p['net']['size']), len(PROFILES['paper']['run_folds']), PROFILES['paper']['Ms']) == (48, 1.25, (352, 352), 5, [2, 6, 10])
    c = PROFILES['cpu']
    assert c['run_folds'] == [0] and c['Ms'] == [10] and len(c['methods']) == 6


def test_committed_cpu_results():
    "results/cpu (the cpu profile on real ACDC): CSV and report agree with the result JSONs; results/cpu/README.md shows the same table; numbers only."
    res = Path(__file__).resolve().parent.parent/'results'/'cpu'
    recs = results(res)
    assert {r['method'] for r in recs.values()} == {'random', 'simclr', 'gcl', 'pcl', 'glrp-global', 'glrp'}
    check_tables_agree(res, recs)
    readme = (res/'README.md').read_text()  # the archived page of the cpu profile
    assert main_table_section((res/'RESULTS.md').read_text()) in readme
    files = [p for p in res.rglob('*') if p.is_file()]
    assert all(p.suffix in ('.json', '.csv', '.md') for p in files), files  # no images, no NIfTI, no figures
    for p in res.parent.glob('cpu*/**/*.json'):  # paths relative to each experiment's folder, no machine's folders
        assert not absolute_paths(json.loads(p.read_text())), (p, absolute_paths(json.loads(p.read_text())))


def test_committed_study_results():
    "results/study (the study profile on real ACDC): CSV and report agree with the result JSONs; results/study/README.md shows the same tables; one clean commit, one precision, the profile's settings; numbers only."
    res = Path(__file__).resolve().parent.parent/'results'/'study'
    recs = results(res)
    assert recs and {r['method'] for r in recs.values()} <= set(PROFILES['study']['methods'])
    check_tables_agree(res, recs)
    report, readme, front = (res/'RESULTS.md').read_text(), (res/'README.md').read_text(), (res.parent.parent/'README.md').read_text()
    assert main_table_section(report) in readme
    paired = report.split('## Paired differences', 1)[1].split('\n## ', 1)[0]
    tables = [b.strip() for b in paired.split('\n\n') if b.strip().startswith('|')]
    assert tables and all(t in readme for t in tables)  # the verdict tables, as assembled
    curves = report.split('## Validation curves (fine-tuning)', 1)[1].split('\n## ', 1)[0]
    assert curves.count('\n| ') > 60 and [b.strip() for b in curves.split('\n\n') if b.strip().startswith('|')][0] in readme  # every fold, M and method's curve
    grid = {f'{e.notebook}/{e.name}' for e in experiments(load_profile('study'), 'ACDC', res/'work', out=res)}
    assert len(grid) == 120 and set(recs) == grid, (len(recs), sorted(grid - set(recs))[:5])  # the whole study, nothing else
    num = lambda x: float(x.replace('−', '-'))
    rows = {tuple(num(x) for x in m) for m in re.findall(r'\| ([+-]\d\.\d{3}) \| \[([+-]\d\.\d{3}), ([+-]\d\.\d{3})\] \|', paired)}
    reading = readme.split('<!-- study:end -->', 1)[1].split('\n### ', 1)[0]
    verdict = [l for l in readme.splitlines() if l.startswith('**The verdict at CPU scale.**')]
    assert len(verdict) == 1, verdict
    quoted = [tuple(num(x) for x in m) for line in reading.splitlines() + verdict if line.startswith(('- **', '**The verdict'))
              for m in re.findall(r'([+−-]\d\.\d{3}) \[([+−-]\d\.\d{3}), ([+−-]\d\.\d{3})\]', line)]
    assert len(rows) == 12 and len(quoted) >= 10 and set(quoted) <= rows, set(quoted) - rows  # every interval README's verdict and reading quote is a row of the table
    gp = {int(M): d.lstrip('+') for M, d in re.findall(r'\| (\d+) \| glrp − pcl \| [^|]+ \| ([+-]\d\.\d{3}) \|', paired)}
    found = [l for l in front.splitlines() if l.startswith('What it found so far')]  # the front page's summary
    assert len(found) == 1 and f"GLRP leads PCL by {gp[6]} with 6 labeled patients and by {gp[10]}" in found[0], (gp, found)  # README's summary
    clinical = report.split('## Clinical indices (test patients, no CRF)', 1)[1].split('\n## ', 1)[0]
    agree, pairs = [b.strip() for b in clinical.split('\n\n') if b.strip().startswith('|')]
    assert agree in readme and agree.count('\n| ') == 12  # the agreement table, every method and M
    ef = {m: (float(r), float(lo), float(hi)) for m, r, lo, hi in re.findall(r'\| 10 \| ([\w-]+) \| [^|]+ \| (\d\.\d{3}) \| [+-]\d+\.\d \[([+-]\d+\.\d), ([+-]\d+\.\d)\]', agree)}
    bullet = next(l for l in reading.splitlines() if l.startswith('- **Dice differences do not show'))
    rs, half = [v[0] for v in ef.values()], [(v[2] - v[1]) / 2 for v in ef.values()]
    assert len(ef) == 4 and f"r {min(rs):.2f}-{max(rs):.2f}" in bullet and f"±{min(half):.0f} to ±{max(half):.0f} points" in bullet, (ef, bullet)
    prow = {tuple(num(x) for x in m) for m in re.findall(r'\| ([+-]\d+\.\d\d) \[([+-]\d+\.\d\d), ([+-]\d+\.\d\d)\] \|', pairs)}
    quoted = {tuple(num(x) for x in m) for m in re.findall(r'([+−-]\d+\.\d\d) points \[([+−-]\d+\.\d\d), ([+−-]\d+\.\d\d)\]', bullet)}
    holm = [float(l.split('|')[-2].strip().replace('< 0.001', '0')) for l in pairs.splitlines()[2:]]  # each row's last column
    assert quoted and quoted <= prow and len(holm) == 24 and f"smallest adjusted p {min(holm):.3f}" in bullet, (quoted, holm[:3])
    commits = {r['software']['git_commit'] for r in recs.values()}
    assert len(commits) == 1 and not next(iter(commits)).endswith('+dirty'), commits  # one pinned, clean commit
    assert {(r['numerics']['precision'], r['numerics']['cpu_capability']) for r in recs.values()} == {('bf16', 'AVX512')}
    settings = json.loads(json.dumps(experiment_settings(load_profile('study'))))
    from glrp.reproduce import with_default_settings
    for r in recs.values():  # the settings the profile defines today (those added since the study ran at their defaults, as `is_done` reads them)
        assert json.loads(json.dumps(with_default_settings(r['parameters']['settings']))) == settings, r['parameters']
    files = [p for p in res.rglob('*') if p.is_file()]
    assert all(p.suffix in ('.json', '.csv', '.md') for p in files), files  # no images, no NIfTI, no figures
    for p in res.rglob('*.json'): assert not absolute_paths(json.loads(p.read_text())), p
    if (res/'curves.csv').is_file():  # the fine-tuning runs' validation curves: each run's best is the model it kept
        best = {}
        for row in csv.DictReader((res/'curves.csv').open()): best[row['experiment']] = max(best.get(row['experiment'], 0.), float(row['val_dice']))
        by_name = {Path(k).name: r for k, r in recs.items()}
        assert best and set(best) <= set(by_name), set(best) - set(by_name)
        for e, d in best.items(): assert abs(d - by_name[e]['best_val_dice']) < 1e-4, (e, d, by_name[e]['best_val_dice'])


def test_sigterm_stops_the_runner_and_its_children(tmp_path):
    "SIGTERM to `glrp reproduce` (as a scheduler sends it): papermill and its kernel end too, the experiment has no result, exit 143 names it."
    import signal, time
    from glrp.reproduce import descendants
    write_phantom(tmp_path/'data', n_patients=6, seed=3)
    prof = dict(TINY, name='sig', methods=['glrp'], ablation=[], figures=False, net=dict(f=8, size=[64, 64], spacing=2.5),
                pretrain=dict(epochs=300, local_epochs=300))  # minutes: long enough to be killed in the middle
    (tmp_path/'sig.json').write_text(json.dumps(prof))
    env = dict(os.environ, OMP_NUM_THREADS='1')
    p = subprocess.Popen([sys.executable, '-m', 'glrp.cli', 'reproduce', '--profile', 'sig.json', '--data', 'data', '--out', 'out'],
                         cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    kids, t_end = [], time.time() + 240
    while time.time() < t_end:  # wait for papermill and its kernel to run the notebook
        kids = descendants(p.pid)
        if len(kids) >= 2 and list((tmp_path/'out'/'work').glob('pretrain*/*/run.json')): break  # pretraining runs
        time.sleep(0.5)
    assert len(kids) >= 2, f"papermill and its kernel never started: {kids}"
    time.sleep(2)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 128 + signal.SIGTERM, (p.returncode, err[-2000:])
    assert 'interrupted by SIGTERM' in err and 'main_table/glrp-M2-fold0' in err, err
    time.sleep(0.5)
    alive = [k for k in kids if os.path.exists(f'/proc/{k}') and 'zombie' not in open(f'/proc/{k}/status').read().lower()]
    assert not alive, f"children still running after SIGTERM: {alive}"
    assert not list((tmp_path/'out').glob('main_table/*/result.json'))


def test_committed_study_counts_as_done(acdc_root):
    "Settings added to glrp after the study ran (protocol, semi-supervised fine-tuning) count at their defaults: a rerun of the study skips all 120 experiments."
    from glrp.reproduce import to_run
    acdc = acdc_root
    res = Path(__file__).resolve().parent.parent/'results'/'study'
    exps = [e for e in experiments(load_profile('study'), acdc, res/'work', out=res) if e.notebook == 'main_table']
    assert len(exps) == 120 and to_run(exps, res, acdc) == []
    changed = experiments(load_profile(dict(base='study', finetune=dict(epoch_steps=50))), acdc, res/'work', out=res)
    assert len(to_run(changed[:3], res, acdc)) == 3  # a setting that differs from its default is not the study's


def test_ssl4mis_profile_end_to_end(tmp_path):
    "The ssl4mis profile on a 100-patient phantom (tiny network, a few steps): its one fixed fold, semi-supervised rows beside a supervised one, the profile's pairs in the report."
    data = write_phantom(tmp_path/'data', n_patients=100, seed=0)
    prof = dict(base='ssl4mis', name='tiny-ssl4mis', Ms=[3], seeds=[0], methods=['random', 'bcp', 'bcp+glrp', 'mean-teacher'],
                net=dict(f=4, size=[32, 32], spacing=5.0, precision='auto'),
                pretrain=dict(epochs=1, local_epochs=1, batch=16, max_steps=2), finetune=dict(steps=4, epoch_steps=2, batch=8))
    (tmp_path/'tiny.json').write_text(json.dumps(prof))
    r = glrp_cli('reproduce', '--profile', 'tiny.json', '--data', data, '--out', 'out', cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    out = tmp_path/'out'
    recs = results(out)
    assert set(recs) == {f'main_table/{m}-M3-fold0' for m in prof['methods']}
    man = json.loads(next((out/'work'/'manifests').glob('M3-*.json')).read_text())
    f0 = man['folds'][0]
    assert (man['params']['protocol'], len(f0['test']), len(f0['val']), len(f0['train']), f0['labeled']) == ('ssl4mis', 20, 10, 70, ['patient038', 'patient050', 'patient099'])
    for m in ('bcp', 'bcp+glrp', 'mean-teacher'):
        run = json.loads((out/'main_table'/f'{m}-M3-fold0'/'finetune'/'run.json').read_text())
        assert (run['semi'], run['unlabeled_patients']) == (m.split('+')[0], 67)  # the 70 train patients but the 3 labeled
        assert run['config']['semi'] == m.split('+')[0] and (run['config']['pretrained'] is None) == (m != 'bcp+glrp')
    for rec in recs.values():
        ev = rec['evaluations'][0]
        assert ev['split'] == 'test' and len(ev['summary']['volumes']) == 40  # the 20 test patients' ED and ES
    report = (out/'RESULTS.md').read_text()
    assert '| 3 | bcp − random |' in report and '| 3 | bcp+glrp − bcp |' in report and '| 3 | mean-teacher − random |' in report
    # compute per row: bcp+glrp is the only row on the GLRP pretraining, so it carries all of its logged minutes
    from glrp.reproduce import experiment_minutes
    mins = experiment_minutes(out)
    log = json.loads(next((out/'work'/'pretrain').glob('glrp-*/log.json')).read_text())
    assert abs(mins['bcp+glrp-M3-fold0'][1] - sum(e['seconds'] for e in log) / 60) < 1e-9  # its only user: all of it
    assert mins['random-M3-fold0'][1] == 0 and all(m[0] > 0 for m in mins.values())
    assert '## Compute per experiment' in report and '| 3 | bcp+glrp | 1 |' in report


def test_committed_ssl4mis_results(acdc_root):
    "results/ssl4mis (the ssl4mis profile on real ACDC, landing run by run): each result is one of the profile's experiments and counts as done; CSV and report agree with them; numbers only."
    from glrp.reproduce import to_run
    res = Path(__file__).resolve().parent.parent/'results'/'ssl4mis'
    recs = results(res)
    if not recs: pytest.skip('no ssl4mis result committed yet')
    exps = {f'{e.notebook}/{e.name}': e for e in experiments(load_profile('ssl4mis'), acdc_root, res/'work', out=res)}
    assert set(recs) <= set(exps), sorted(set(recs) - set(exps))
    assert to_run([exps[k] for k in recs], res, acdc_root) == []  # made with the profile's parameters, from these files
    check_tables_agree(res, recs)
    assert {r['numerics']['precision'] for r in recs.values()} == {'bf16'} and len({r['software']['git_commit'] for r in recs.values()}) == 1
    files = [p for p in res.rglob('*') if p.is_file()]
    assert all(p.suffix in ('.json', '.csv', '.md') for p in files), files
    for p in res.rglob('*.json'): assert not absolute_paths(json.loads(p.read_text())), p
