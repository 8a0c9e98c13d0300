"Property checks of the partitioner (glrp.partition) on in-memory patients and, when present, on real ACDC."
import json, math, os, random, shutil
from collections import Counter
from pathlib import Path
import numpy as np
import pytest
from glrp.data import Frame, Patient, LayoutError, DataError, MissingFileError, index_acdc
from glrp.partition import (PartitionError, ManifestError, FORMAT_VERSION, make_manifest, write_manifest, read_manifest, manifest_json,
                            manifest_summary, slice_positions, partition_index, slice_partitions, pcl_chunk, pcl_folds, glrp_folds,
                            pcl_labeled, fold_volumes, slice_table, validate_manifest, manifest_root)
from conftest import write_dataset

GROUPS = ('DCM', 'HCM', 'MINF', 'NOR', 'RV')


def patients(n=20, cine=(3,), nb_frames=10, unlabeled=()):
    "`n` in-memory patients (no files) cycling through the five groups; `cine` ids get a 4D cine, `unlabeled` ids no labels."
    out = []
    for i in range(1, n + 1):
        pid, z, ed, es = f'patient{i:03d}', 6 + (7 * i) % 12, 1, 4 + i % 5
        folder = Path('toy') / 'training' / pid
        frames = [Frame(pid, f, ph, folder / f'{pid}_frame{f:02d}.nii.gz',
                        None if i in unlabeled else folder / f'{pid}_frame{f:02d}_gt.nii.gz', (64, 64, z), (1.5, 1.5, 10.0))
                  for f, ph in ((ed, 'ED'), (es, 'ES'))]
        out.append(Patient(pid, 'training', folder, GROUPS[(i - 1) % 5], 170.0, 70.0, nb_frames, ed, es, frames,
                           folder / f'{pid}_4d.nii.gz' if i in cine else None,
                           (64, 64, z, nb_frames) if i in cine else None))
    return out


def mk(pats=None, **kw):
    return make_manifest(patients() if pats is None else pats, **{**dict(labeled=4, val=3, fingerprint='toy'), **kw})


CONFIGS = [dict(), dict(stratify=True), dict(protocol='pcl'), dict(pool_includes_test=True),
           dict(folds=4, val=0.25, labeled=2), dict(folds=3, val=0, labeled=0), dict(seed=7, label_seed=8, partitions=3)]


@pytest.mark.parametrize('kw', CONFIGS, ids=[json.dumps(c) for c in CONFIGS])
def test_invariants(kw):
    m = mk(**kw)
    ids = [p['id'] for p in m['patients']]
    vols = {v['name']: v for v in m['volumes']}
    assert sorted(i for f in m['folds'] for i in f['test']) == ids  # folds partition the patients: disjoint, union = all
    assert len(m['folds']) == m['params']['folds']
    for f in m['folds']:
        te, va, tr, la = map(set, (f['test'], f['val'], f['train'], f['labeled']))
        assert not (te & va) and not (te & tr) and not (va & tr)
        assert te | va | tr == set(ids)
        assert la <= tr and len(la) == m['params']['labeled']
        for role in ('test', 'val', 'train', 'labeled'): assert f[role] == sorted(f[role])
        pool_pats = {vols[n]['patient'] for n in f['pool']}
        if m['params']['pool_includes_test']: assert set(f['pool']) == set(vols)
        else: assert not pool_pats & te and pool_pats == va | tr
    for v in m['volumes']:
        assert len(v['positions']) == len(v['partitions']) == v['n_slices']
        assert m['params']['slice_rule'] == m['params']['protocol']
        assert v['positions'] == slice_positions(v['n_slices'], m['params']['slice_rule']).tolist()
        assert v['partitions'] == slice_partitions(v['n_slices'], m['params']['partitions'], m['params']['slice_rule']).tolist()


def test_volumes_and_cine():
    m = mk()
    assert len(m['volumes']) == 2 * 20 + 8  # ED + ES each, patient003's 10 cine frames minus ED and ES
    assert sum(v['labeled'] for v in m['volumes']) == 40
    cine = [v for v in m['volumes'] if v['phase'] == 'cine']
    assert {v['patient'] for v in cine} == {'patient003'} and not any(v['labeled'] for v in cine)
    for f in m['folds']:
        assert any(n.startswith('patient003_4d') for n in f['pool']) == ('patient003' not in f['test'])


def test_byte_identical_and_seed(tmp_path):
    a, b = write_manifest(mk(), tmp_path / 'a.json'), write_manifest(mk(patients()[::-1]), tmp_path / 'b.json')
    assert a.read_bytes() == b.read_bytes()
    assert read_manifest(a) == mk()
    assert json.loads(manifest_json(mk())) == mk()
    for protocol in ('glrp', 'pcl'):
        f1 = [f['test'] for f in mk(protocol=protocol)['folds']]
        assert f1 == [f['test'] for f in mk(protocol=protocol)['folds']]
        assert f1 != [f['test'] for f in mk(protocol=protocol, seed=1)['folds']]
    assert [f['labeled'] for f in mk()['folds']] != [f['labeled'] for f in mk(label_seed=1)['folds']]
    assert sorted(p.name for p in tmp_path.iterdir()) == ['a.json', 'b.json']  # no temporaries left


def test_interrupted_write_keeps_the_old_manifest(tmp_path, monkeypatch):
    p = write_manifest(mk(), tmp_path / 'm.json'); old = p.read_bytes()
    def boom(self, data): Path.write_text(self, 'half'); raise OSError('disk full')
    monkeypatch.setattr(Path, 'write_bytes', boom)
    with pytest.raises(OSError, match='disk full'): write_manifest(mk(patients()[:-1]), p)
    monkeypatch.undo()
    assert p.read_bytes() == old and sorted(q.name for q in tmp_path.iterdir()) == ['m.json']

def test_no_machine_paths(tmp_path):
    text = write_manifest(mk(root=tmp_path / 'data' / 'acdc'), tmp_path / 'runs' / 'm.json').read_text()
    assert '"root": "../data/acdc"' in text and 'toy/training' not in text and str(tmp_path) not in text
    assert mk(root='data/acdc')['root'] == os.path.join(os.getcwd(), 'data', 'acdc')  # absolute in memory


def test_stratified_balance():
    pats = patients(100, cine=())
    m = mk(pats, stratify=True, labeled=10, val=10)
    grp = {p.id: p.group for p in pats}
    for f in m['folds']:
        assert sorted(Counter(grp[i] for i in f['test']).values()) == [4] * 5  # 5 groups x 20 -> 4 per group per fold
        assert sorted(Counter(grp[i] for i in f['val']).values()) == [2] * 5
        assert sorted(Counter(grp[i] for i in f['labeled']).values()) == [2] * 5
    g = [GROUPS[i % 5] for i in range(37)] + ['NOR'] * 6  # unequal groups
    tests = glrp_folds(g, 5, seed=3, stratify=True)
    for name in set(g):
        c = [sum(g[i] == name for i in t) for t in tests]
        assert max(c) - min(c) <= 1


def test_pcl_protocol():
    f = pcl_folds(100)
    assert [len(t) for t in f] == [20] * 5 and sorted(np.concatenate(f).tolist()) == list(range(100))
    assert [t.tolist() for t in f] == [t.tolist() for t in pcl_folds(100)]
    assert [len(t) for t in pcl_folds(23, 5)] == [5, 5, 5, 4, 4]
    m = mk(patients(100, cine=()), protocol='pcl', labeled=10, val=10)
    for fd, t in zip(m['folds'], f):
        assert fd['test'] == [f'patient{i + 1:03d}' for i in t]
        nontest = sorted(set(p['id'] for p in m['patients']) - set(fd['test']))
        random.seed(1234)
        assert fd['labeled'] == sorted(random.sample(nontest, 10))  # PCL's draw, from all non-test patients
        assert not set(fd['val']) & set(fd['labeled'])


def test_pcl_matches_sklearn():
    KFold = pytest.importorskip('sklearn.model_selection').KFold
    for n, k, seed in [(100, 5, 12345), (23, 4, 0), (57, 5, 7)]:
        ref = [test for _, test in KFold(n_splits=k, shuffle=True, random_state=seed).split(np.arange(n))]
        assert [t.tolist() for t in pcl_folds(n, k, seed)] == [t.tolist() for t in ref]


def test_slice_positions_and_partitions():
    for z in range(1, 40):
        p = slice_positions(z)
        assert (p > 0).all() and (p < 1).all() and (np.diff(p) > 0).all()
        np.testing.assert_allclose(p + p[::-1], 1.0)
        for S in (1, 2, 3, 4, 5, 8):
            k = slice_partitions(z, S)
            assert k.min() >= 0 and k.max() <= S - 1 and (np.diff(k) >= 0).all()
            if z >= S:
                c = np.bincount(k, minlength=S)
                assert c.min() >= 1 and c.max() - c.min() <= 1
            if z % S == 0: assert (np.bincount(k, minlength=S) == z // S).all()
    assert partition_index(0.9999, 4) == 3 and partition_index(1.0, 4) == 3 and partition_index(0.0, 4) == 0
    assert partition_index(slice_positions(11), 22)[7] == 15  # boundary case that plain float arithmetic gets wrong


def test_fold_volumes_and_slices():
    m = mk()
    for f in m['folds']:
        lab = fold_volumes(m, f['fold'], 'labeled')
        assert len(lab) == 2 * len(f['labeled']) and all(v['labeled'] and v['phase'] in ('ED', 'ES') for v in lab)
        assert [v['name'] for v in fold_volumes(m, f['fold'], 'pool')] == f['pool']
        assert len(fold_volumes(m, f['fold'], 'test')) == 2 * len(f['test'])
    sl = slice_table(fold_volumes(m, 0, 'pool'))
    assert len(sl) == sum(v['n_slices'] for v in fold_volumes(m, 0, 'pool'))
    assert all(0 < s['position'] < 1 and s['partition'] == partition_index(s['position'], 4) for s in sl)


def test_summary():
    m = mk()
    lines = manifest_summary(m).splitlines()
    assert len(lines) == 4 + 5 and 'protocol glrp' in lines[0]
    for f in m['folds']:
        cols = lines[4 + f['fold']].split()
        assert [int(x) for x in cols[:5]] == [f['fold'], len(f['test']), len(f['val']), len(f['train']), len(f['pool'])]


@pytest.mark.parametrize('kw,msg', [
    (dict(labeled=14), 'labeled=14 is larger than the 13 training patients of fold 0 (16 non-test - 3 validation)'),
    (dict(labeled=1, val=16), 'val=16 (16 patients) leaves no training patients in fold 0'),
    (dict(val=0.0), 'fraction must be in (0, 1)'),
    (dict(val=-1), 'val must be an integer >= 0'),
    (dict(labeled=-1), 'labeled must be an integer >= 0'),
    (dict(folds=21, labeled=1, val=1), 'folds=21 is larger than the number of patients (20)'),
    (dict(folds=1), 'folds must be an integer >= 2, got 1'),
    (dict(folds=2.5), 'folds must be an integer >= 2, got 2.5'),
    (dict(partitions=0), 'partitions must be an integer >= 1'),
    (dict(protocol='sklearn'), "unknown protocol 'sklearn'; expected one of 'glrp', 'pcl'"),
    (dict(protocol='pcl', stratify=True), "use protocol='glrp' to stratify"),
    (dict(protocol='pcl', labeled=14), 'labeled=14 is larger than the 13 training patients of fold 0'),
])
def test_errors(kw, msg):
    with pytest.raises(PartitionError, match=None) as e: mk(**kw)
    assert msg in str(e.value) and isinstance(e.value, ValueError)


def test_errors_patients(tmp_path):
    with pytest.raises(PartitionError, match='no patients'): make_manifest([], fingerprint='x')
    with pytest.raises(PartitionError, match='duplicate patient ids: patient001'): mk(patients() + patients(1))
    with pytest.raises(PartitionError, match=r'labeled=4 is larger than the 0 training patients of fold 0 \(16 non-test - 3 validation, 13 without labels\)'):
        mk(patients(unlabeled=range(1, 21)))
    assert mk(patients(unlabeled=range(1, 21)), labeled=0)['folds'][0]['labeled'] == []  # unlabeled data: pretraining only
    with pytest.raises(LayoutError, match='no patientXXX folders found'): make_manifest(tmp_path)
    with pytest.raises(LayoutError, match='does not exist'): make_manifest(tmp_path / 'nope')


def test_read_manifest_errors(tmp_path):
    p = write_manifest(mk(), tmp_path / 'm.json')
    assert FORMAT_VERSION == 2 and '"format_version": 2' in p.read_text()
    (tmp_path / 'v1.json').write_text(p.read_text().replace('"format_version": 2', '"format_version": 1'))
    with pytest.raises(ManifestError, match='format version 1; this glrp reads version 2') as e: read_manifest(tmp_path / 'v1.json')
    assert e.value.path == tmp_path / 'v1.json' and isinstance(e.value, DataError)
    (tmp_path / 'v9.json').write_text(p.read_text().replace('"format_version": 2', '"format_version": 9'))
    with pytest.raises(ManifestError, match='format version 9; this glrp reads version 2') as e: read_manifest(tmp_path / 'v9.json')
    assert e.value.path == tmp_path / 'v9.json' and isinstance(e.value, DataError)
    (tmp_path / 'x.json').write_text('[1, 2')
    with pytest.raises(ManifestError, match='not a JSON file'): read_manifest(tmp_path / 'x.json')
    (tmp_path / 'y.json').write_text('{"format": "other"}')
    with pytest.raises(ManifestError, match='not a glrp partition manifest'): read_manifest(tmp_path / 'y.json')
    with pytest.raises(DataError, match='manifest file missing'): read_manifest(tmp_path / 'nope.json')


def test_real_acdc(acdc_root):
    pats = index_acdc(acdc_root / 'training')
    m = make_manifest(pats, root=str(acdc_root / 'training'))
    assert len(m['patients']) == 100 and [len(f['test']) for f in m['folds']] == [20] * 5
    assert sum(v['labeled'] for v in m['volumes']) == 200
    assert m['root'] == str(acdc_root / 'training') and len(m['data_hash']) == 64
    for f in m['folds']:
        assert len(f['val']) == 10 and len(f['train']) == 70 and len(fold_volumes(m, f['fold'], 'labeled')) == 20
        cine = [n for n in f['pool'] if n.startswith('patient090_4d')]
        assert len(cine) == (0 if 'patient090' in f['test'] else 10)
    mp = make_manifest(acdc_root / 'training', protocol='pcl', labeled=2)
    assert [len(f['test']) for f in mp['folds']] == [20] * 5 and mp['root'] == str(acdc_root / 'training')
    assert mp['data_hash'] == m['data_hash']


# --- slice rules: PCL's, transcribed independently of glrp.partition ---

def pcl_position(i, Z):
    "PCL's code: slice i of a Z-slice volume sits at float(i + 1) / Z."
    return float(i + 1) / Z


def pcl_partition(i, Z, S=4):
    "PCL's ACDC loader: chunks of Z/S slices rounded half up, the index clamped to the last partition (ZeroDivisionError for Z < S/2)."
    part = Z / S
    part = int(part + 1) if part - int(part) >= 0.5 else int(part)
    return max(0, min(int(i // part), S - 1))


def test_pcl_slice_rules():
    for Z in range(1, 22):
        assert slice_positions(Z, 'pcl').tolist() == [pcl_position(i, Z) for i in range(Z)]
        assert slice_positions(Z, 'glrp').tolist() == [(i + 0.5) / Z for i in range(Z)]
        for S in range(1, 9):
            if 2 * Z < S:  # PCL's code divides by zero; here each slice is its own partition
                with pytest.raises(ZeroDivisionError): pcl_partition(0, Z, S)
                assert pcl_chunk(Z, S) == 0 and slice_partitions(Z, S, 'pcl').tolist() == list(range(Z))
            else: assert slice_partitions(Z, S, 'pcl').tolist() == [pcl_partition(i, Z, S) for i in range(Z)], (Z, S)
    assert [pcl_chunk(Z) for Z in (6, 10)] == [2, 3] and [round(Z / 4) for Z in (6, 10)] == [2, 2]  # half up, not banker's
    assert slice_partitions(9, 4, 'pcl').tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 3]  # i // 2 would give a fifth partition
    assert slice_positions(7, 'pcl')[-1] == 1.0
    with pytest.raises(PartitionError, match="unknown slice rule 'PCL'"): slice_positions(4, 'PCL')
    with pytest.raises(PartitionError, match="unknown slice rule 'x'"): slice_partitions(4, 4, 'x')
    with pytest.raises(PartitionError, match='partitions must be'): slice_partitions(4, 0, 'pcl')
    with pytest.raises(PartitionError, match='n_slices >= 1'): slice_partitions(0, 4, 'pcl')


def test_manifest_slice_rule():
    g, p = mk(), mk(protocol='pcl')
    assert (g['params']['slice_rule'], p['params']['slice_rule']) == ('glrp', 'pcl')
    for v in p['volumes']:
        Z = v['n_slices']
        assert v['positions'] == [pcl_position(i, Z) for i in range(Z)]
        assert v['partitions'] == [pcl_partition(i, Z) for i in range(Z)]
    for v in g['volumes']:
        assert v['positions'] == [(i + 0.5) / v['n_slices'] for i in range(v['n_slices'])]
    x = mk(protocol='pcl', slice_rule='glrp')
    assert x['volumes'] == g['volumes'] and x['folds'] == p['folds'] and x['params']['slice_rule'] == 'glrp'
    assert mk(slice_rule='pcl')['volumes'] == p['volumes']
    with pytest.raises(PartitionError, match="unknown slice rule 'gcl'"): mk(slice_rule='gcl')


def test_pcl_slice_rules_real_acdc(acdc_root):
    pats = index_acdc(acdc_root / 'training')  # headers only
    mp = make_manifest(pats, protocol='pcl', fingerprint='x')
    mg = make_manifest(pats, fingerprint='x')
    lab = [v for v in mp['volumes'] if v['phase'] in ('ED', 'ES')]
    assert len(lab) == 200 and all(v['labeled'] for v in lab)
    for v in lab:  # every ED and ES volume of training/
        Z = v['n_slices']
        assert v['positions'] == [pcl_position(i, Z) for i in range(Z)], v['name']
        assert v['partitions'] == [pcl_partition(i, Z) for i in range(Z)], v['name']
    ours = {v['name']: v for v in mg['volumes']}
    n_all = sum(v['n_slices'] for v in lab)
    n_diff = sum(a != b for v in lab for a, b in zip(v['partitions'], ours[v['name']]['partitions']))
    assert (n_diff, n_all) == (412, 1902) and round(100 * n_diff / n_all, 1) == 21.7
    assert all(ours[v['name']]['partitions'] == slice_partitions(v['n_slices']).tolist() for v in lab)


# --- manifests checked when read back ---

@pytest.fixture(scope='module')
def phantom(tmp_path_factory):
    "A 3-patient phantom and its manifest (relative root) written beside it: (folder, manifest path, manifest)."
    d = tmp_path_factory.mktemp('phantom')
    write_dataset(d / 'data', n=3, cine=0)
    m = make_manifest(d / 'data', folds=3, labeled=1, val=0)
    return d, write_manifest(m, d / 'runs' / 'manifest.json'), m


def _corrupt(src, dst, fn):
    d = json.loads(src.read_text()); fn(d)
    dst.write_text(json.dumps(d))
    return dst


def _set(key, value): return lambda r: r.__setitem__(key, value)


CORRUPTIONS = {  # name -> (what to do to the JSON, the record and problem the message must name)
    'short positions': (lambda d: d['volumes'][0]['positions'].pop(), lambda m, z: f"volume {m['volumes'][0]['name']}: {z - 1} positions for {z} slices"),
    'long partitions': (lambda d: d['volumes'][1]['partitions'].append(0), lambda m, z: f"volume {m['volumes'][1]['name']}: {z + 1} partitions for {z} slices"),
    'no positions': (lambda d: d['volumes'][0].pop('positions'), lambda m, z: f"volume {m['volumes'][0]['name']} lacks positions"),
    'text position': (lambda d: d['volumes'][2]['positions'].__setitem__(1, '0.5'), lambda m, z: f"volume {m['volumes'][2]['name']}: position 1 is '0.5', not a number in (0, 1]"),
    'bool position': (lambda d: d['volumes'][2]['positions'].__setitem__(1, True), lambda m, z: f"volume {m['volumes'][2]['name']}: position 1 is True, not a number"),
    'nan position': (lambda d: d['volumes'][2]['positions'].__setitem__(0, math.nan), lambda m, z: f"volume {m['volumes'][2]['name']}: position 0 is nan, not a number"),
    'zero position': (lambda d: d['volumes'][2]['positions'].__setitem__(0, 0.0), lambda m, z: f"volume {m['volumes'][2]['name']}: position 0 is 0.0, not a number in (0, 1]"),
    'big partition': (lambda d: d['volumes'][0]['partitions'].__setitem__(0, 4), lambda m, z: f"volume {m['volumes'][0]['name']}: partition 0 is 4, not an integer in 0..3"),
    'float partition': (lambda d: d['volumes'][0]['partitions'].__setitem__(0, 1.0), lambda m, z: f"volume {m['volumes'][0]['name']}: partition 0 is 1.0, not an integer"),
    'n_slices text': (lambda d: d['volumes'][0].__setitem__('n_slices', '8'), lambda m, z: f"volume {m['volumes'][0]['name']}: n_slices is '8', not int"),
    'n_slices zero': (lambda d: d['volumes'][0].update(n_slices=0, positions=[], partitions=[]), lambda m, z: f"volume {m['volumes'][0]['name']}: n_slices is 0, not >= 1"),
    'volume no name': (lambda d: d['volumes'][1].pop('name'), lambda m, z: "volume #1 lacks name"),
    'volume not a record': (lambda d: d['volumes'].__setitem__(1, 'x'), lambda m, z: "volume #1 is not a record"),
    'duplicate volume': (lambda d: d['volumes'].append(d['volumes'][0]), lambda m, z: f"duplicate volume names: {m['volumes'][0]['name']}"),
    'orphan volume': (lambda d: d['volumes'][0].__setitem__('patient', 'patient999'), lambda m, z: f"volume {m['volumes'][0]['name']}: patient patient999 is not in patients"),
    'unknown pool volume': (lambda d: d['folds'][1]['pool'].append('patient999_frame01'), lambda m, z: "fold 1: pool names unknown volume(s) 'patient999_frame01'"),
    'unknown test patient': (lambda d: d['folds'][2]['test'].append('patient042'), lambda m, z: "fold 2: test names unknown patient(s) 'patient042'"),
    'unknown labeled patient': (lambda d: d['folds'][0]['labeled'].__setitem__(0, 'patient999'), lambda m, z: "fold 0: labeled names unknown patient(s) 'patient999'"),
    'unknown val patient': (lambda d: d['folds'][0]['val'].append(7), lambda m, z: "fold 0: val names unknown patient(s) 7"),
    'test and train': (lambda d: d['folds'][0]['train'].append(d['folds'][0]['test'][0]), lambda m, z: f"fold 0: {m['folds'][0]['test'][0]} in two of test, val and train"),
    'labeled not training': (lambda d: d['folds'][0]['labeled'].__setitem__(0, d['folds'][0]['test'][0]), lambda m, z: f"fold 0: labeled {m['folds'][0]['test'][0]} not among the training patients"),
    'fold without pool': (lambda d: d['folds'][1].pop('pool'), lambda m, z: "fold 1 lacks pool"),
    'fold renumbered': (lambda d: d['folds'][1].__setitem__('fold', 2), lambda m, z: "fold 1 is numbered 2"),
    'fold missing': (lambda d: d['folds'].pop(), lambda m, z: "2 fold records for params folds=3"),
    'patient without group': (lambda d: d['patients'][1].pop('group'), lambda m, z: "patient #1 lacks group"),
    'params without slice_rule': (lambda d: d['params'].pop('slice_rule'), lambda m, z: "params lacks slice_rule"),
    'unknown slice_rule': (lambda d: d['params'].__setitem__('slice_rule', 'gcl'), lambda m, z: "params: unknown slice_rule 'gcl'"),
    'no volumes': (lambda d: d.pop('volumes'), lambda m, z: "manifest lacks volumes"),
    'root not a path': (lambda d: d.__setitem__('root', 3), lambda m, z: "manifest: root is 3, not str or NoneType"),
}


@pytest.mark.parametrize('name', list(CORRUPTIONS))
def test_read_manifest_names_file_and_record(phantom, tmp_path, name):
    _, path, m = phantom
    fn, msg = CORRUPTIONS[name]
    bad = _corrupt(path, tmp_path / 'manifest.json', fn)
    z = m['volumes'][0]['n_slices']
    assert all(v['n_slices'] == z for v in m['volumes'][:3])
    with pytest.raises(ManifestError) as e: read_manifest(bad)
    assert e.value.path == bad and str(e.value) == f"{bad}: {e.value.msg}"
    assert str(e.value).startswith(f"{bad}: {msg(m, z)}"), str(e.value)


def test_read_manifest_never_crashes(phantom, tmp_path):
    "Remove any key of any kind of record, or give it a value of another JSON type: always a ManifestError, never a KeyError or TypeError."
    _, path, m = phantom
    d0 = json.loads(path.read_text())
    sites = [('manifest', lambda d: d), ('params', lambda d: d['params']), ('patient', lambda d: d['patients'][0]),
             ('volume', lambda d: d['volumes'][0]), ('fold', lambda d: d['folds'][0])]
    n = 0
    for site, get in sites:
        for key in get(d0):
            if site == 'manifest' and key == 'software': continue  # provenance: not checked
            for change in ('drop', None, 'x', 1.5, [], {}, -1, True):
                def fn(d):
                    if change == 'drop': get(d).pop(key)
                    else: get(d)[key] = change
                bad = _corrupt(path, tmp_path / 'm.json', fn)
                if json.loads(bad.read_text()) == d0: continue  # the change changed nothing
                try: r = read_manifest(bad)
                except ManifestError as e: assert str(bad) in str(e); n += 1
                else:  # a change that leaves a valid manifest (a seed of -1, a string root): usable as one
                    assert change != 'drop', (site, key)  # every key is required
                    manifest_summary(r); slice_table(fold_volumes(r, 0, 'pool'))
    assert n > 250


def test_validate_in_memory():
    m = mk()
    assert validate_manifest(m) is m
    broken = {**m, 'volumes': [{**m['volumes'][0], 'partitions': m['volumes'][0]['partitions'][:-1]}] + m['volumes'][1:]}
    with pytest.raises(ManifestError, match=r"^manifest: volume patient001_frame01: 12 partitions for 13 slices"): validate_manifest(broken)


# --- the data root survives a change of directory ---

def test_root_relative_to_manifest(phantom, tmp_path, monkeypatch):
    d, _, _ = phantom
    a, b = tmp_path / 'A', tmp_path / 'B'
    shutil.copytree(d / 'data', a / 'phantom'); b.mkdir()
    monkeypatch.chdir(a)
    m = make_manifest('phantom', folds=3, labeled=1, val=0, fingerprint='f')  # root relative to the current directory
    assert m['root'] == os.path.join(os.getcwd(), 'phantom')
    p = write_manifest(m, 'runs/manifest.json').absolute()  # a manifest path relative to the current directory
    assert json.loads(p.read_text())['root'] == '../phantom'
    monkeypatch.chdir(b)
    r = read_manifest(a / 'runs' / 'manifest.json')
    assert Path(r['root']).is_absolute() and Path(r['root']).samefile(a / 'phantom')
    assert manifest_root(r).samefile(a / 'phantom') and len(index_acdc(manifest_root(r))) == 3
    assert read_manifest(os.path.relpath(a / 'runs' / 'manifest.json')) == r  # a relative manifest path works too
    # the same manifest written from B, root given absolute: the same bytes
    q = write_manifest(make_manifest(a / 'phantom', folds=3, labeled=1, val=0, fingerprint='f'), a / 'runs' / 'again.json')
    assert q.read_bytes() == p.read_bytes() and str(tmp_path) not in p.read_text()
    # manifest and data moved together: the root follows
    shutil.move(str(a), str(tmp_path / 'C'))
    r2 = read_manifest(tmp_path / 'C' / 'runs' / 'manifest.json')
    assert Path(r2['root']).samefile(tmp_path / 'C' / 'phantom')


def test_moved_data(phantom, tmp_path):
    d, _, _ = phantom
    shutil.copytree(d / 'data', tmp_path / 'data')
    p = write_manifest(make_manifest(tmp_path / 'data', folds=3, labeled=1, val=0, fingerprint='f'), tmp_path / 'runs' / 'm.json')
    shutil.move(str(tmp_path / 'data'), str(tmp_path / 'elsewhere'))
    m = read_manifest(p)  # reading does not need the data
    assert m['root'] == str(tmp_path / 'data')
    with pytest.raises(MissingFileError) as e: manifest_root(m)
    assert e.value.path == tmp_path / 'data' and str(tmp_path / 'data') in str(e.value) and 'pass --data' in str(e.value)
    assert manifest_root(m, data=tmp_path / 'elsewhere') == tmp_path / 'elsewhere'
    with pytest.raises(DataError, match='records no dataset folder: pass --data'): manifest_root(mk())


def test_relative_and_resolve_path():
    "The pair a manifest records its root with (glrp.data): relative to the manifest's folder, back to the same absolute path."
    from glrp.data import relative_path, resolve_path
    assert relative_path('data/acdc', 'runs/m1') == '../../data/acdc' and relative_path(os.path.abspath('data'), 'data/../runs') == '../data'
    assert resolve_path('../../data/acdc', '/srv/runs/m1') == Path('/srv/data/acdc') and resolve_path('/srv/acdc', 'runs') == Path('/srv/acdc')
    assert relative_path(None, 'x') is None and resolve_path(None, 'x') is None
    for r in ('data/acdc', '../x', '/srv/a/b'):
        assert resolve_path(relative_path(r, 'runs/x'), 'runs/x') == Path(os.path.abspath(r))
