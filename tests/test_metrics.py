"Tests of glrp.metrics: hand-computed cases, independent references (brute force, medpy), the penalty for missed structures, folder evaluation on a tiny ACDC-layout dataset, and real ACDC (skipped when absent)."
import math, json, os, warnings
from pathlib import Path
import numpy as np
import nibabel as nib
import pytest
from scipy import ndimage as ndi
from scipy.spatial import cKDTree
from glrp.data import ShapeError, LabelError, MissingFileError, LayoutError, index_acdc
from glrp.metrics import (class_counts, dice_from_counts, pooled_dice, pooled_dice_from_counts, surface, surface_distances, binary_metrics, volume_metrics,
                          acdc_summary, pcl_summary, summarize, evaluate_folder, find_predictions, empty_counts,
                          fov_diagonal, empty_penalty, records_csv, summary_markdown, CSV_COLUMNS, METRICS)

def cube(lo, hi, shape=(8, 8, 10)):
    m = np.zeros(shape, bool); m[tuple(slice(l, h) for l, h in zip(lo, hi))] = True; return m

# ---------------------------------------------------------------- hand-computed cases
def test_cubes_shifted_along_z_anisotropic():
    # 4x4x4 cubes, one voxel apart along z, spacing (1,1,10): per cube 56 surface voxels,
    # 16 at 10 mm (the protruding face), 4 at 1 mm (inner voxels of the opposite face), 36 at 0.
    a, b = cube((2, 2, 2), (6, 6, 6)), cube((2, 2, 3), (6, 6, 7))
    m = binary_metrics(a, b, (1, 1, 10))
    assert m['dice'] == pytest.approx(0.75)
    assert m['hd95'] == pytest.approx(10)
    assert m['assd'] == pytest.approx((16*10 + 4*1)/56)
    assert m['hd'] == pytest.approx(10)
    assert (m['tp'], m['n_pred'], m['n_gt']) == (48, 64, 64)
    # the same shift on a 1 mm isotropic grid: every distance is at most 1 mm
    iso = binary_metrics(a, b, (1, 1, 1))
    assert iso['hd95'] == pytest.approx(1) and iso['assd'] == pytest.approx((16 + 4)/56)

def test_in_plane_anisotropy():
    a, b = cube((2, 2, 2), (6, 6, 6)), cube((3, 2, 2), (7, 6, 6))  # shifted one voxel along x
    assert binary_metrics(a, b, (2, 1, 1))['hd95'] == pytest.approx(2)
    assert binary_metrics(a, b, (0.5, 1, 1))['hd95'] == pytest.approx(0.5)

def test_single_voxel():
    v1, v2 = cube((4, 4, 4), (5, 5, 5)), cube((5, 5, 4), (6, 6, 5))
    m = binary_metrics(v1, v2, (1.5, 2, 10))
    assert m['dice'] == 0 and m['hd95'] == pytest.approx(2.5) and m['assd'] == pytest.approx(2.5)
    same = binary_metrics(v1, v1, (1.5, 2, 10))
    assert same['dice'] == 1 and same['hd95'] == 0 and same['assd'] == 0
    # a voxel at the centre of a 3x3x3 cube: 1 mm one way; faces/edges/corners of the cube the other way
    c = binary_metrics(cube((4, 4, 4), (5, 5, 5)), cube((3, 3, 3), (6, 6, 6)), (1, 1, 1))
    assert c['hd'] == pytest.approx(math.sqrt(3))
    assert c['assd'] == pytest.approx((1 + (6 + 12*math.sqrt(2) + 8*math.sqrt(3))/26)/2)

DISTANCES = ('hd95', 'assd', 'assd_pooled', 'hd')

def test_empty_structures():
    a, e = cube((2, 2, 2), (6, 6, 6)), np.zeros((8, 8, 10), bool)
    both = binary_metrics(e, e, (1, 1, 10))
    assert all(math.isnan(both[k]) for k in METRICS) and both['empty'] == ''
    diag = math.sqrt(8**2 + 8**2 + (10*10)**2)  # the (8, 8, 10) grid at (1, 1, 10) mm
    for p, g, case in ((a, e, 'hallucinated'), (e, a, 'missed')):
        m = binary_metrics(p, g, (1, 1, 10))
        assert m['dice'] == 0 and m['empty'] == case
        assert all(m[k] == pytest.approx(diag, abs=1e-9) for k in DISTANCES)
        old = binary_metrics(p, g, (1, 1, 10), empty_distance='nan')  # the convention before the penalty
        assert all(math.isnan(old[k]) for k in DISTANCES) and old['empty'] == case
        assert binary_metrics(p, g, (1, 1, 10), empty_distance=123.)['assd'] == 123.
        assert math.isnan(binary_metrics(p, g, (1, 1, 10), empty_distance=np.nan)['hd'])  # the old default value still works
    for opt in ('fov', 'nan', 123.): assert math.isnan(binary_metrics(e, e, (1, 1, 10), empty_distance=opt)['hd95'])
    assert math.isnan(dice_from_counts(0, 0, 0))
    for bad in ('max', 'FOV', -1, None, True, '5'):
        with pytest.raises(ValueError, match='empty_distance must be'): binary_metrics(a, e, (1, 1, 10), empty_distance=bad)

def test_symmetry_and_identity():
    rng = np.random.default_rng(1)
    for _ in range(10):
        x = ndi.binary_dilation(rng.random((20, 20, 6)) > 0.98, iterations=2)
        y = ndi.binary_dilation(rng.random((20, 20, 6)) > 0.98, iterations=2)
        if not (x.any() and y.any()): continue
        m1, m2 = binary_metrics(x, y, (1.2, 0.8, 7)), binary_metrics(y, x, (1.2, 0.8, 7))
        for k in ('dice', 'hd95', 'assd', 'hd'): assert m1[k] == pytest.approx(m2[k])
        same = binary_metrics(x, x, (1.2, 0.8, 7))
        assert same['dice'] == 1 and same['hd95'] == 0 and same['assd'] == 0 and same['hd'] == 0

def test_crop_matches_full_grid():
    rng = np.random.default_rng(2)
    for _ in range(20):
        x = ndi.binary_dilation(rng.random((16, 12, 5)) > 0.97, iterations=2)  # often touches the border
        y = ndi.binary_dilation(rng.random((16, 12, 5)) > 0.97, iterations=2)
        if not (x.any() and y.any()): continue
        for u, v in zip(surface_distances(x, y, (1.3, 0.7, 6)), surface_distances(x, y, (1.3, 0.7, 6), crop=False)):
            np.testing.assert_allclose(u, v)

def test_surface_counts_array_border_as_outside():
    m = np.ones((3, 3, 3), bool)
    assert surface(m).sum() == 26  # only the centre is interior

# ---------------------------------------------------------------- independent references
ACDC_SPACING = (1.3, 1.3, 8.0)

def random_pairs(n=10, shape=(30, 28, 8), seed=7):
    "Pairs of random non-empty blob masks of different sizes (several touch the array's border)."
    rng, out = np.random.default_rng(seed), []
    while len(out) < n:
        x, y = [ndi.binary_dilation(rng.random(shape) > q, iterations=int(rng.integers(1, 3))) for q in (0.995, 0.985)]
        if x.any() and y.any(): out.append((x, y))
    return out

def brute_surface(m):
    "Voxels of `m` with a face-neighbour outside it, by explicit shifts of the zero-padded mask (no morphology)."
    p, inner = np.pad(m, 1), np.ones_like(m)
    core = tuple(slice(1, -1) for _ in range(m.ndim))
    for ax in range(m.ndim):
        for step in (-1, 1): inner &= np.roll(p, step, axis=ax)[core]
    return m & ~inner

def brute_distances(a, b, spacing):
    "Nearest-neighbour distances in mm between the surface voxel coordinates, a->b and b->a (k-d tree)."
    pa, pb = np.argwhere(brute_surface(a))*np.asarray(spacing), np.argwhere(brute_surface(b))*np.asarray(spacing)
    return cKDTree(pb).query(pa)[0], cKDTree(pa).query(pb)[0]

def test_against_brute_force():
    gaps = []
    for x, y in random_pairs():
        m = binary_metrics(x, y, ACDC_SPACING)
        dxy, dyx = brute_distances(x, y, ACDC_SPACING)
        both = np.concatenate([dxy, dyx])
        assert m['dice'] == pytest.approx(2*np.sum(x & y)/(x.sum() + y.sum()), abs=1e-12)
        assert m['hd95'] == pytest.approx(np.percentile(both, 95), abs=1e-6)
        assert m['assd'] == pytest.approx((dxy.mean() + dyx.mean())/2, abs=1e-6)
        assert m['assd_pooled'] == pytest.approx(both.mean(), abs=1e-6)
        assert m['hd'] == pytest.approx(both.max(), abs=1e-6)
        gaps.append(abs(m['assd'] - m['assd_pooled']))
    assert max(gaps) > 0.05  # the surfaces differ in size, so the two ASSD forms are told apart

def test_against_medpy():
    mb = pytest.importorskip('medpy.metric.binary', reason='medpy not installed (a dev requirement: the test oracle)')
    from importlib.metadata import version
    v = tuple(int(x) for x in __import__('re').findall(r'\d+', version('medpy'))[:3])
    # medpy's assd: mean of the two directed means up to 0.4.0, both sets pooled in 0.5.2 (0.5.0/0.5.1: only equal-size surfaces)
    medpy_assd = 'assd_pooled' if v >= (0, 5, 2) else 'assd' if v < (0, 5) else None
    kw = dict(voxelspacing=ACDC_SPACING, connectivity=1)
    for x, y in random_pairs(seed=11):
        m = binary_metrics(x, y, ACDC_SPACING)
        assert m['dice'] == pytest.approx(mb.dc(x, y), abs=1e-12)
        assert m['hd95'] == pytest.approx(mb.hd95(x, y, **kw), abs=1e-6)
        assert m['hd'] == pytest.approx(mb.hd(x, y, **kw), abs=1e-6)
        assert m['assd'] == pytest.approx((mb.asd(x, y, **kw) + mb.asd(y, x, **kw))/2, abs=1e-6)
        if medpy_assd: assert m[medpy_assd] == pytest.approx(mb.assd(x, y, **kw), abs=1e-6)

# ---------------------------------------------------------------- missed and hallucinated structures
SP3, SHAPE3 = (1.3, 1.3, 8.0), (40, 36, 9)

def labels3():
    "Ground truth with RV and LV; a prediction that misses the RV, hallucinates a MYO in a corner and has the LV right."
    g = np.zeros(SHAPE3, np.uint8); g[10:20, 10:20, 3:6] = 1; g[12:18, 22:26, 3:6] = 3
    p = np.zeros_like(g); p[12:18, 22:26, 3:6] = 3; p[30:33, 2:5, 7] = 2
    return p, g

def test_fov_penalty_is_the_whole_volumes_diagonal():
    p, g = labels3()
    diag = math.sqrt((40*1.3)**2 + (36*1.3)**2 + (9*8.0)**2)
    assert fov_diagonal(SHAPE3, SP3) == pytest.approx(diag) and empty_penalty('fov', SHAPE3, SP3) == pytest.approx(diag)
    rv, myo, lv = volume_metrics(p, g, SP3, name='v')  # measured inside a crop, penalised on the whole volume
    assert (rv['empty'], myo['empty'], lv['empty']) == ('missed', 'hallucinated', '')
    for r in (rv, myo):
        assert r['dice'] == 0 and all(r[k] == pytest.approx(diag, abs=1e-9) for k in DISTANCES)
    assert lv['dice'] == 1 and all(lv[k] == 0 for k in DISTANCES)
    # more than any distance in the volume: two voxels in opposite corners are less far apart
    c1, c2 = np.zeros(SHAPE3, bool), np.zeros(SHAPE3, bool); c1[0, 0, 0] = c2[-1, -1, -1] = True
    assert binary_metrics(c1, c2, SP3)['hd'] < diag
    old = volume_metrics(p, g, SP3, empty_distance='nan')
    assert [r['empty'] for r in old] == ['missed', 'hallucinated', ''] and all(math.isnan(old[i][k]) for i in (0, 1) for k in DISTANCES)
    assert volume_metrics(p, g, SP3, empty_distance=300)[0]['hd'] == 300
    with pytest.raises(ValueError, match='empty_distance'): volume_metrics(p, g, SP3, empty_distance='max')

def test_summaries_count_missed_and_hallucinated():
    p, g = labels3()
    diag = fov_diagonal(SHAPE3, SP3)
    def recs(opt='fov'):
        return (volume_metrics(p, g, SP3, name='a', phase='ED', empty_distance=opt)  # RV missed, MYO hallucinated
                + volume_metrics(g, g, SP3, name='b', phase='ES', empty_distance=opt)  # exact
                + volume_metrics(np.zeros_like(g), g, SP3, name='c', phase='ES', empty_distance=opt))  # RV and LV missed
    s = summarize(recs())
    want = dict(ED=dict(RV=(1, 0), MYO=(0, 1), LV=(0, 0), total=(1, 1)), ES=dict(RV=(1, 0), MYO=(0, 0), LV=(1, 0), total=(2, 0)),
                all=dict(RV=(2, 0), MYO=(0, 1), LV=(1, 0), total=(3, 1)))
    want = {ph: {c: dict(missed=m, hallucinated=h) for c, (m, h) in row.items()} for ph, row in want.items()}
    assert s['empty'] == want == empty_counts(recs())
    for ph, row in want.items():
        for c, cnt in row.items():
            for m in METRICS:  # every stats entry carries the counts; the 'mean' row the totals
                st = s['acdc'][ph]['mean' if c == 'total' else c][m]
                assert (st['missed'], st['hallucinated']) == (cnt['missed'], cnt['hallucinated'])
    assert s['acdc']['all']['RV']['hd95']['n'] == 3 and s['acdc']['all']['RV']['hd95']['mean'] == pytest.approx(2*diag/3)
    assert s['acdc']['all']['LV']['hd95']['n'] == 3 and s['acdc']['all']['LV']['hd95']['mean'] == pytest.approx(diag/3)
    assert s['empty_distance'] == 'fov' and 'field of view' in s['conventions']['distances']
    assert set(s['pcl']['all']) == {'RV', 'MYO', 'LV', 'mean'}  # the pooled Dice keys are unchanged
    # the old convention: the misses leave the distance means (a perfect LV HD95 over 2 volumes), still counted
    o = summarize(recs('nan'), empty_distance='nan')
    assert o['acdc']['all']['LV']['hd95']['n'] == 2 and o['acdc']['all']['LV']['hd95']['mean'] == 0
    assert o['acdc']['all']['RV']['hd95']['n'] == 1 and o['acdc']['all']['RV']['hd95']['mean'] == 0  # 2 of 3 RVs missed, mean 0 mm
    assert o['empty'] == want and o['acdc']['all']['LV']['hd95']['missed'] == 1 and 'left out' in o['conventions']['distances']
    with pytest.raises(ValueError, match="not computed with empty_distance='nan'"): summarize(recs(), empty_distance='nan')
    with pytest.raises(ValueError, match="not computed with empty_distance='fov'"): summarize(recs('nan'))
    csv = records_csv(recs()).splitlines()
    assert csv[0].split(',')[-3:] == ['missing', 'empty', 'voxel_ml'] and 'assd_pooled' in csv[0].split(',')
    assert [row.split(',')[-2] for row in csv[1:]] == ['missed', 'hallucinated', '', '', '', '', 'missed', '', 'missed']
    md = summary_markdown(s)
    assert '| missed / halluc. |' in md.splitlines()[0] and 'ASSD pooled (mm)' in md.splitlines()[0]
    assert '| ED | RV | 1 |' in md and md.split('| ED | MYO |')[1].splitlines()[0].endswith('| 0 / 1 |')
    assert md.split('| all | mean |')[1].splitlines()[0].endswith('| 3 / 1 |')
    assert "3 missed, 1 hallucinated" in md and "empty_distance='fov'" in md
    assert "NaN, left out of the means (empty_distance='nan')" in summary_markdown(o)

def test_volume_metrics_and_labels():
    g = np.zeros((8, 8, 10), np.uint8); g[cube((2, 2, 2), (6, 6, 6))] = 3
    recs = volume_metrics(g, g, (1, 1, 10), name='v')
    assert [r['class'] for r in recs] == ['RV', 'MYO', 'LV']
    assert recs[2]['dice'] == 1 and recs[2]['hd95'] == 0 and math.isnan(recs[0]['dice'])
    with pytest.raises(LabelError, match='label values \\[4\\]'): volume_metrics(g + (g > 0), g, (1, 1, 10))
    with pytest.raises(ShapeError, match='v.nii.gz'): volume_metrics(g[:, :, :5], g, (1, 1, 10), name='v.nii.gz')
    np.testing.assert_array_equal(class_counts(g, g), [[0, 0, 0], [0, 0, 0], [64, 64, 64]])

def test_aggregations_differ():
    # a large well-segmented LV (Dice 0.95) and a small badly segmented one (Dice 0.4)
    def line(n_gt, tp, n=2000):
        g = np.zeros(n, np.uint8); p = np.zeros(n, np.uint8); g[:n_gt] = 3; p[n_gt - tp: 2*n_gt - tp] = 3
        return p, g
    (p1, g1), (p2, g2) = line(1000, 950), line(50, 20)
    recs = volume_metrics(p1, g1, (1,), name='a', phase='ED') + volume_metrics(p2, g2, (1,), name='b', phase='ES')
    a, p = acdc_summary(recs), pcl_summary(recs)
    assert a['all']['LV']['dice']['mean'] == pytest.approx(0.675)
    assert a['all']['LV']['dice']['std'] == pytest.approx(0.275)
    assert p['all']['LV'] == pytest.approx(2*970/2100)
    assert a['ED']['LV']['dice']['mean'] == pytest.approx(0.95) and p['ES']['LV'] == pytest.approx(0.4)
    assert a['all']['mean']['dice']['mean'] == pytest.approx(0.675)  # RV/MYO absent: NaN, skipped
    assert summarize(recs)['n_volumes'] == dict(ED=1, ES=1, all=2)

def pooled_by_hand(preds, gts, n):
    "PCL's pooled Dice transcribed from its definition: per class 1..n, 2 ΣTP / Σ(|P|+|G|) over every voxel of every volume, 0/0 -> NaN; mean of the non-NaN classes, NaN if none."
    per = []
    for c in range(1, n + 1):
        tp = s = 0
        for p, g in zip(preds, gts):
            for a, b in zip(np.ravel(p).tolist(), np.ravel(g).tolist()):
                tp += a == c and b == c
                s += (a == c) + (b == c)
        per.append(2 * tp / s if s else math.nan)
    ok = [d for d in per if not math.isnan(d)]
    return (sum(ok) / len(ok) if ok else math.nan), per

def same(x, y): return all((math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-12) for a, b in zip(x, y, strict=True))

def test_pooled_dice_known_values():
    # (from the CRF's former mean_dice) two structures right and half right, the LV absent from both: (1 + 2/3)/2
    assert pooled_dice([np.array([1, 1, 2, 2])], [np.array([1, 1, 2, 0])])[0] == pytest.approx((1 + 2 / 3) / 2)
    # pooled: counts add up over volumes before the ratio, 2*1/(1 + 2 + 2) = 2/5, not (2/3 + 0)/2
    assert pooled_dice([np.array([1, 0]), np.array([1, 1])], [np.array([1, 1]), np.array([0, 0])], n_classes=1)[0] == pytest.approx(2 / 5)
    assert math.isnan(pooled_dice([np.zeros(3, int)], [np.zeros(3, int)])[0])

def test_pooled_dice_edge_cases():
    # a class absent from prediction and ground truth in every volume: NaN, and left out of the mean
    p, g = [np.array([[0, 2, 3], [3, 3, 0]]), np.array([2, 2, 0])], [np.array([[0, 2, 3], [3, 0, 0]]), np.array([2, 0, 0])]
    m, per = pooled_dice(p, g)
    assert math.isnan(per[0]) and per[1:] == pytest.approx([2*2/(3 + 2), 2*2/(3 + 2)]) and m == pytest.approx(0.8)
    assert same([m] + per, [pooled_by_hand(p, g, 3)[0]] + pooled_by_hand(p, g, 3)[1])
    # every volume background alone, and no volumes at all: every class NaN, the mean NaN
    for p, g in (([np.zeros((3, 4), int)] * 3, [np.zeros((3, 4), int)] * 3), ([], [])):
        m, per = pooled_dice(p, g)
        assert math.isnan(m) and len(per) == 3 and all(math.isnan(d) for d in per)
        assert same([m] + per, [pooled_by_hand(p, g, 3)[0]] + pooled_by_hand(p, g, 3)[1])
    # predicted in some volume but never true: defined (0) and it counts in the mean
    m, per = pooled_dice([np.array([1, 3])], [np.array([1, 0])])
    assert per[2] == 0 and math.isnan(per[1]) and m == pytest.approx(0.5)
    # the counts function on its own, and the records route agrees with the arrays route
    assert same([pooled_dice_from_counts([[0, 0, 0], [1, 1, 1], [0, 2, 0]])[0]], [0.5])
    recs = volume_metrics(np.array([1, 3, 0]), np.array([1, 0, 0]), (1,), name='v', phase='ED')
    assert same([pcl_summary(recs)['all'][k] for k in ('mean', 'RV', 'MYO', 'LV')], [m] + per)
    with pytest.raises(ShapeError, match='2 predicted and 1 ground-truth volumes'): pooled_dice([np.zeros(2, int)] * 2, [np.zeros(2, int)])
    with pytest.raises(ShapeError, match='shape'): pooled_dice([np.zeros(2, int)], [np.zeros(3, int)])
    with pytest.raises(LabelError, match=r'label values \[4\]'): pooled_dice([np.array([4])], [np.array([1])])

def test_pooled_dice_against_transcription():
    rng = np.random.default_rng(7)
    for trial in range(40):
        shapes = [tuple(int(x) for x in rng.integers(1, 7, rng.integers(1, 4))) for _ in range(rng.integers(0, 5))]
        absent = {trial % 4}  # 0: none absent; 1..3: that class never drawn, in any volume
        vals = [c for c in range(4) if c not in absent or c == 0]
        draw = lambda s: rng.choice(vals, size=s)
        preds = [draw(s) for s in shapes]; gts = [draw(s) for s in shapes]
        m, per = pooled_dice(preds, gts)
        rm, rper = pooled_by_hand(preds, gts, 3)
        assert same([m] + per, [rm] + rper), (trial, m, per, rm, rper)
        if shapes and absent != {0}: assert math.isnan(per[trial % 4 - 1])
        counts = [[sum(int(np.sum((p == c) & (g == c))) for p, g in zip(preds, gts)), sum(int(np.sum(p == c)) for p in preds),
                   sum(int(np.sum(g == c)) for g in gts)] for c in (1, 2, 3)]
        assert same([pooled_dice_from_counts(counts)[0]] + pooled_dice_from_counts(counts)[1], [rm] + rper)

def test_grid_difference_accepts_itk_style_affine():
    from glrp.data import grid_difference
    acdc = np.diag([-1., -1, 1, 1]); itk = np.diag([-1.5, -1.5, 10, 1])
    assert grid_difference((4, 4, 2), (1.5, 1.5, 10), (4, 4, 2), (1.5, 1.5, 10), itk, acdc) is None
    assert 'directions' in grid_difference((4, 4, 2), (1.5, 1.5, 10), (4, 4, 2), (1.5, 1.5, 10), np.eye(4), acdc)

# ---------------------------------------------------------------- a tiny ACDC-layout dataset
SHAPE, SPACING, AFFINE = (24, 20, 4), (1.5, 1.5, 10.), np.diag([-1., -1, 1, 1])

def heart(shift=0):
    "Labels of a toy heart: LV disc, MYO ring around it, RV blob beside it (slices 0-2)."
    x, y = np.mgrid[:SHAPE[0], :SHAPE[1]]
    r = np.hypot(x - 12 - shift, y - 10)
    g = np.zeros(SHAPE, np.uint8)
    for z in range(3):
        g[..., z][r < 6] = 2; g[..., z][r < 4] = 3
        g[..., z][(np.hypot(x - 3 - shift, y - 10) < 3)] = 1
    return g

def save(arr, path, affine=AFFINE, spacing=SPACING, dtype=np.uint8):
    img = nib.Nifti1Image(arr.astype(dtype), affine); img.header.set_zooms(spacing); img.header.set_sform(affine, 2)
    nib.save(img, str(path))

@pytest.fixture
def toy(tmp_path):
    "Two patients in ACDC layout (ED frame 1, ES frame 3) under tmp_path/gt/training."
    for i in (1, 2):
        d = tmp_path/'gt'/'training'/f'patient{i:03d}'; d.mkdir(parents=True)
        (d/'Info.cfg').write_text("ED: 1\nES: 3\nGroup: NOR\nHeight: 170\nNbFrame: 10\nWeight: 70\n")
        for fr in (1, 3):
            save(np.zeros(SHAPE), d/f'patient{i:03d}_frame{fr:02d}.nii.gz', dtype=np.int16)
            save(heart(), d/f'patient{i:03d}_frame{fr:02d}_gt.nii.gz')
    return tmp_path

NAMES = ['patient001_frame01', 'patient001_frame03', 'patient002_frame01', 'patient002_frame03']

def write_preds(pred, arr_for=lambda n: heart(), nested=False, names=NAMES, **kw):
    for n in names:
        d = pred/n[:10] if nested else pred
        d.mkdir(parents=True, exist_ok=True)
        save(arr_for(n), d/f'{n}.nii.gz', **kw)

def test_evaluate_folder_identical_flat_and_nested(toy):
    write_preds(toy/'flat'); write_preds(toy/'nested', nested=True)
    for pred in ('flat', 'nested'):
        res = evaluate_folder(toy/pred, toy/'gt', out_dir=toy/f'out_{pred}')
        for ph in ('ED', 'ES', 'all'):
            for c in ('RV', 'MYO', 'LV', 'mean'):
                assert res['acdc'][ph][c]['dice']['mean'] == 1 and res['acdc'][ph][c]['hd95']['mean'] == 0
            assert res['pcl'][ph]['mean'] == 1
        assert res['n_volumes'] == dict(ED=2, ES=2, all=4) and res['missing'] == [] and res['extra'] == []
        out = toy/f'out_{pred}'
        assert sorted(p.name for p in out.iterdir()) == ['indices.csv', 'metrics.csv', 'summary.json', 'summary.md']  # no temp files left
        rows = (out/'metrics.csv').read_text().splitlines()
        assert rows[0] == ','.join(CSV_COLUMNS) and len(rows) == 1 + 4*3
        assert rows[1].startswith('patient001,1,ED,NOR,RV,1,0,0,0,')
        js = json.loads((out/'summary.json').read_text())
        assert js['acdc']['ES']['LV']['dice']['mean'] == 1 and 'records' not in js
        md = (out/'summary.md').read_text()
        assert '| ED | LV | 2 | 1.000 ± 0.000 |' in md and '| all | mean | 4 |' in md

def test_evaluate_folder_shifted_and_itk_header(toy):
    # a prediction shifted by 2 voxels along x, written with an ITK-style affine (spacing in the affine)
    write_preds(toy/'pred', lambda n: heart(shift=2), affine=np.diag([-1.5, -1.5, 10, 1]))
    res = evaluate_folder(toy/'pred', toy/'gt')
    lv = [r for r in res['records'] if r['class'] == 'LV']
    assert all(r['dice'] < 1 and r['hd95'] == pytest.approx(3.0) for r in lv)  # 2 voxels x 1.5 mm
    assert res['acdc']['all']['LV']['hd95']['mean'] == pytest.approx(3.0)

def test_missing_predictions(toy):
    write_preds(toy/'pred', names=NAMES[1:3])
    with pytest.raises(MissingFileError, match='2 prediction\\(s\\) missing: patient001_frame01, patient002_frame03'):
        evaluate_folder(toy/'pred', toy/'gt')
    with pytest.warns(UserWarning, match='evaluated as empty'):
        res = evaluate_folder(toy/'pred', toy/'gt', missing='empty', out_dir=toy/'out')
    assert res['missing'] == ['patient001_frame01', 'patient002_frame03']
    flagged = [r for r in res['records'] if r['missing']]
    diag = fov_diagonal(SHAPE, SPACING)
    assert len(flagged) == 6 and all(r['dice'] == 0 and r['empty'] == 'missed' and r['hd95'] == pytest.approx(diag) for r in flagged)
    assert res['acdc']['all']['LV']['dice']['mean'] == pytest.approx(0.5)
    lv = res['acdc']['all']['LV']['hd95']
    assert lv['n'] == 4 and lv['missed'] == 2 and lv['mean'] == pytest.approx(diag/2)
    assert res['empty']['all']['total'] == dict(missed=6, hallucinated=0) and res['empty']['ED']['LV'] == dict(missed=1, hallucinated=0)
    md = (toy/'out'/'summary.md').read_text()
    assert 'patient001_frame01' in md and '6 missed, 0 hallucinated' in md
    js = json.loads((toy/'out'/'summary.json').read_text())
    assert js['empty_distance'] == 'fov' and js['acdc']['all']['LV']['hd95']['missed'] == 2
    # the old convention: NaN, left out of the distance means, still counted
    with pytest.warns(UserWarning, match='evaluated as empty'):
        old = evaluate_folder(toy/'pred', toy/'gt', missing='empty', empty_distance='nan')
    assert all(math.isnan(r['hd95']) for r in old['records'] if r['missing'])
    assert old['acdc']['all']['LV']['hd95']['n'] == 2 and old['acdc']['all']['LV']['hd95']['missed'] == 2

def test_extra_predictions(toy):
    write_preds(toy/'pred', names=NAMES + ['patient003_frame01'])
    with pytest.warns(UserWarning, match='without ground truth ignored: patient003_frame01'):
        res = evaluate_folder(toy/'pred', toy/'gt', out_dir=toy/'out')
    assert res['extra'] == ['patient003_frame01']
    assert 'patient003_frame01' in (toy/'out'/'summary.md').read_text()
    assert json.loads((toy/'out'/'summary.json').read_text())['extra'] == ['patient003_frame01']

def test_duplicate_prediction(toy):
    write_preds(toy/'pred'); write_preds(toy/'pred', nested=True, names=NAMES[:1])
    with pytest.raises(LayoutError, match='duplicate prediction'): find_predictions(toy/'pred')

def test_shape_affine_and_label_errors(toy):
    bad = lambda n: heart()[:, :, :3] if n == 'patient002_frame01' else heart()
    write_preds(toy/'p1', bad)
    with pytest.raises(ShapeError, match='patient002_frame01.nii.gz: .*shape'): evaluate_folder(toy/'p1', toy/'gt')
    write_preds(toy/'p2', affine=np.eye(4))
    with pytest.raises(ShapeError, match='patient001_frame01.nii.gz: .*directions'): evaluate_folder(toy/'p2', toy/'gt')
    write_preds(toy/'p3', spacing=(1.5, 1.5, 5.))
    with pytest.raises(ShapeError, match='spacing'): evaluate_folder(toy/'p3', toy/'gt')
    write_preds(toy/'p4', lambda n: heart() + 4*(heart() == 3) if n == 'patient001_frame03' else heart())
    with pytest.raises(LabelError, match='patient001_frame03.nii.gz: label values \\[7\\]'): evaluate_folder(toy/'p4', toy/'gt')
    write_preds(toy/'p5', dtype=np.float32)  # float files with whole values are fine (other tools write them)
    assert evaluate_folder(toy/'p5', toy/'gt')['pcl']['all']['mean'] == 1

def test_label_map(toy):
    # predictions in M&Ms order (1 LV, 2 MYO, 3 RV) evaluated with pred_label_map
    swap = lambda n: np.array([0, 3, 2, 1], np.uint8)[heart()]
    write_preds(toy/'pred', swap)
    from glrp.data import MNMS_LABELS
    assert evaluate_folder(toy/'pred', toy/'gt', pred_label_map=MNMS_LABELS)['pcl']['all']['mean'] == 1
    assert evaluate_folder(toy/'pred', toy/'gt')['pcl']['all']['RV'] == 0

# ---------------------------------------------------------------- real ACDC (skipped when absent)
@pytest.mark.timeout(120)
def test_acdc_against_itself_and_shifted(acdc_root, tmp_path):
    frames = [f for p in index_acdc(acdc_root/'training') for f in p.frames]
    assert len(frames) == 200
    same, shifted = tmp_path/'same', tmp_path/'shifted'
    same.mkdir(); shifted.mkdir()
    spacing = {}
    for f in frames:
        os.symlink(f.label, same/f'{f.name}.nii.gz')
        img = nib.load(str(f.label))
        arr = np.roll(np.asanyarray(img.dataobj), 2, axis=0)  # 2 voxels in-plane along x
        nib.save(nib.Nifti1Image(arr, img.affine, img.header), str(shifted/f'{f.name}.nii.gz'))
        spacing[f.name] = float(img.header.get_zooms()[0])
    res = evaluate_folder(same, acdc_root/'training', out_dir=tmp_path/'out')
    for r in res['records']:
        assert r['dice'] == 1 and r['hd95'] == 0 and r['assd'] == 0 and r['hd'] == 0, r
    assert res['n_volumes'] == dict(ED=100, ES=100, all=200) and res['pcl']['all']['mean'] == 1
    res = evaluate_folder(shifted, acdc_root/'training')
    assert all(r['dice'] < 1 and r['hd95'] > 0 for r in res['records'])
    # Shifting by 2 voxels maps every surface voxel onto a surface voxel of the copy 2*dx mm away, so no
    # surface distance exceeds 2*dx: HD95 <= 2*dx exactly. Each slice's leading edge (along x) lies 2*dx from
    # the other surface; when these are more than 5% of the surface, HD95 is exactly 2*dx. Allow down to dx
    # for volumes where they are not, and ask the median over volumes to be exactly 2*dx.
    lv = np.array([r['hd95']/(2*spacing[r['volume']]) for r in res['records'] if r['class'] == 'LV'])
    assert (lv <= 1 + 1e-6).all() and (lv >= 0.5).all()
    assert np.median(lv) == pytest.approx(1)
    assert 0.5 < res['acdc']['all']['LV']['dice']['mean'] < 0.99
