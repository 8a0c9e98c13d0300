"Property checks of the partitioner (glrp.partition) on in-memory patients and, when present, on real ACDC."
import json, random
from collections import Counter
from pathlib import Path
import numpy as np
import pytest
from glrp.data import Frame, Patient, LayoutError, DataError, index_acdc
from glrp.partition import (PartitionError, ManifestError, make_manifest, write_manifest, read_manifest, manifest_json,
                            manifest_summary, slice_positions, partition_index, slice_partitions, pcl_folds, glrp_folds,
                            pcl_labeled, fold_volumes, slice_table)

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
        assert v['partitions'] == slice_partitions(v['n_slices'], m['params']['partitions']).tolist()


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


def test_no_machine_paths():
    text = manifest_json(mk(root='data/acdc'))
    assert '"root": "data/acdc"' in text and 'toy/training' not in text and str(Path.cwd()) not in text


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
    (tmp_path / 'v9.json').write_text(p.read_text().replace('"format_version": 1', '"format_version": 9'))
    with pytest.raises(ManifestError, match='format version 9; this glrp reads version 1') as e: read_manifest(tmp_path / 'v9.json')
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
