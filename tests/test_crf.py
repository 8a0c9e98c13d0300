"Dense CRF (glrp.crf): serial == parallel, island removal, valid outputs, parameter effects, bad input, tune_crf."
import math
import numpy as np
import pytest
from scipy import ndimage as ndi
from glrp.data import ShapeError, IntensityError
from glrp.crf import CRFParams, ProbabilityError, check_inputs, rescale_intensity, crf_slice, crf_refine, tune_crf
from glrp.metrics import pooled_dice  # tune_crf's default score (its own tests: tests/test_metrics.py)
from glrp.testing import simulate_prediction

def disk_slice(h=64, w=80, island_r=3., conf=4., seed=0):
    "(image, ground truth, probabilities, island mask): a bright disk (class 3) and a wrong island of class 3 in a homogeneous background."
    yy, xx = np.mgrid[:h, :w]
    gt = np.zeros((h, w), np.uint8); gt[np.hypot(yy - h / 2, xx - w * 0.35) < 14] = 3
    img = np.where(gt == 3, 200., 70.) + np.random.default_rng(seed).normal(0, 8, gt.shape)
    island = np.hypot(yy - h / 2, xx - w * 0.8) <= island_r
    pred = np.where(island, 3, gt)
    lg = conf * ndi.gaussian_filter(np.stack([pred == k for k in range(4)]).astype(np.float32), (0, 1, 1))
    e = np.exp(lg - lg.max(0))
    return img.astype(np.float32), gt, (e / e.sum(0)).astype(np.float32), island

@pytest.fixture(scope='module')
def volume():
    "A (4, 8, 64, 64) noisy prediction of rings and disks, with its image and ground truth."
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    gt = np.zeros((8, 64, 64), np.uint8)
    for z in range(8):
        r = np.hypot(yy - 32 - rng.normal(0, 2), xx - 36)
        gt[z][((yy - 32) / 10)**2 + ((xx - 16) / 12)**2 < 1] = 1
        gt[z][r < 14 - z * 0.5] = 2; gt[z][r < 9 - z * 0.5] = 3
    img = np.choose(gt, [0.3, 0.8, 0.33, 0.9]).astype(np.float32) + rng.normal(0, 0.04, gt.shape).astype(np.float32)
    return simulate_prediction(gt, seed=2), img, gt

def test_serial_equals_parallel(volume):
    p, img, _ = volume
    q1, l1 = crf_refine(p, img, workers=1)
    q2, l2 = crf_refine(p, img, workers=2)
    q3, l3 = crf_refine(p, img, workers=3)  # more processes than cores: same numbers
    assert np.array_equal(q1, q2) and np.array_equal(l1, l2)
    assert np.array_equal(q1, q3) and np.array_equal(l1, l3)
    assert l1.dtype == np.uint8 and np.array_equal(l1, q1.argmax(0))

def test_spawn_equals_fork(volume):
    p, img, _ = volume
    assert np.array_equal(crf_refine(p[:, :3], img[:3], workers=2, start_method='spawn')[0], crf_refine(p[:, :3], img[:3], workers=1)[0])

def test_batch_and_list(volume):
    p, img, _ = volume
    q1, l1 = crf_refine(p, img, workers=1)
    qb, lb = crf_refine(np.stack([p, p[:, ::-1]]), np.stack([img, img[::-1]]), workers=2)
    assert qb.shape == (2,) + p.shape and lb.shape == (2,) + img.shape
    assert np.array_equal(qb[0], q1) and np.array_equal(qb[1], q1[:, ::-1])
    ql, ll = crf_refine([p, p[:, :3, :40]], [img, img[:3, :40]], workers=2)
    assert [q.shape for q in ql] == [p.shape, (4, 3, 40, 64)]
    assert np.array_equal(ll[0], l1)

def test_island_removed_structure_kept():
    img, gt, p, island = disk_slice()
    q = crf_slice(p, rescale_intensity(img))
    lab = q.argmax(0)
    assert (p.argmax(0)[island] == 3).mean() > 0.7  # the island is there before (its rim blurred away)
    assert (lab[island] == 0).all()  # and background after
    disk = gt == 3
    assert (lab[disk] == 3).mean() > 0.99 and (lab == gt).mean() > 0.995

def test_outputs_are_distributions(volume):
    p, img, _ = volume
    q, lab = crf_refine(p, img, workers=2)
    assert q.dtype == np.float32 and q.shape == p.shape and lab.shape == img.shape
    assert np.isfinite(q).all() and (q >= 0).all()
    np.testing.assert_allclose(q.sum(0), 1, atol=1e-4)

def test_crf_helps_on_noisy_prediction(volume):
    p, img, gt = volume
    assert pooled_dice([crf_refine(p, img, workers=1)[1]], [gt])[0] > pooled_dice([p.argmax(0)], [gt])[0]

@pytest.mark.parametrize('change', [dict(iterations=1), dict(gauss_sxy=8.), dict(gauss_compat=0.), dict(bilat_sxy=20.),
                                    dict(bilat_schan=5.), dict(bilat_compat=15.), dict(min_prob=0.05), dict(pct=(10., 90.))])
def test_parameters_change_the_result(volume, change):
    p, img, _ = volume
    q0 = crf_refine(p, img, workers=1)[0]
    q1 = crf_refine(p, img, CRFParams(**change), workers=1)[0]
    assert np.abs(q1 - q0).max() > 1e-3

def test_zero_iterations_return_the_input(volume):
    p, img, _ = volume
    q, lab = crf_refine(p, img, CRFParams(iterations=0), workers=1)
    np.testing.assert_allclose(q, p, atol=1e-4)
    assert np.array_equal(lab, p.argmax(0))

def test_bad_input(volume):
    p, img, _ = volume
    with pytest.raises(ShapeError, match=r'\(4, 8, 64, 64\) \(C, Z, H, W\) and image \(8, 64, 60\)'): crf_refine(p, img[..., :60])
    with pytest.raises(ShapeError, match='expected probabilities'): crf_refine(p[:, 0], img[0])
    with pytest.raises(ShapeError, match='volume 1'): crf_refine([p, p], [img, img[:3]])
    with pytest.raises(ShapeError, match='lists of equal length'): crf_refine([p, p], [img])
    with pytest.raises(ShapeError, match='differ in B'): crf_refine(np.stack([p, p]), img[None])
    bad = p.copy(); bad[1, 2, 3, 4] = np.nan
    with pytest.raises(ProbabilityError, match='1 NaN/Inf'): crf_refine(bad, img)
    with pytest.raises(ProbabilityError, match=r'do not sum to 1.*\(z, y, x\)'): crf_refine(p * 1.01, img)
    with pytest.raises(ProbabilityError, match='negative.*not logits'): crf_refine(np.log(p + 1e-6), img)  # logits, not probabilities
    with pytest.raises(ProbabilityError, match='do not sum to 1.*not logits'): crf_refine(np.exp(p), img)
    crf_refine(p * 1.0005, img, workers=1)  # within the tolerance
    bad_img = img.copy(); bad_img[0, 0, 0] = np.inf
    with pytest.raises(IntensityError, match='1 NaN/Inf'): crf_refine(p, bad_img)
    with pytest.raises(ValueError, match='workers must be at least 1'): crf_refine(p, img, workers=0)
    assert issubclass(ProbabilityError, ValueError)

def test_negative_probabilities():
    p = np.full((2, 1, 4, 4), 0.5, np.float32); p[0, 0, 0, 0], p[1, 0, 0, 0] = -0.2, 1.2
    with pytest.raises(ProbabilityError, match=r'1 negative values \(min -0.2\)'): check_inputs(p, np.zeros((1, 4, 4)))

def test_bad_params():
    for kw, msg in [(dict(gauss_sxy=0), 'gauss_sxy'), (dict(bilat_schan=-1), 'bilat_schan'), (dict(iterations=-1), 'iterations'),
                    (dict(min_prob=0), 'min_prob'), (dict(pct=(50, 50)), 'pct'), (dict(bilat_compat=-1), 'bilat_compat')]:
        with pytest.raises(ValueError, match=msg): CRFParams(**kw)

def test_tune_crf_best_is_max_of_table(volume):
    p, img, gt = volume
    vp, vi, vg = [p[:, :4], p[:, 4:]], [img[:4], img[4:]], [gt[:4], gt[4:]]
    grid = dict(bilat_sxy=(3., 30.), bilat_compat=(0., 10.), iterations=(1, 5))
    best, table = tune_crf(vp, vi, vg, grid=grid, workers=2)
    assert len(table) == 8 and set(table[0]) == {'bilat_sxy', 'bilat_compat', 'iterations', 'score', 'gain'}
    top = max(table, key=lambda r: r['score'])
    assert (best.bilat_sxy, best.bilat_compat, best.iterations) == (top['bilat_sxy'], top['bilat_compat'], top['iterations'])
    assert best.bilat_schan == CRFParams().bilat_schan  # fields outside the grid keep the base values
    assert len({round(r['score'], 9) for r in table}) > 1  # the grid points differ
    # each score is the metric of that setting, recomputed independently
    for r in table[:3]:
        prm = CRFParams(bilat_sxy=r['bilat_sxy'], bilat_compat=r['bilat_compat'], iterations=r['iterations'])
        assert pooled_dice(crf_refine(vp, vi, prm, workers=1)[1], vg)[0] == r['score']
    raw = pooled_dice([x.argmax(0) for x in vp], vg)[0]
    assert all(math.isclose(r['gain'], r['score'] - raw) for r in table)

def test_tune_crf_metric_and_errors(volume):
    p, img, gt = volume
    # a metric that prefers fewer iterations picks the smallest
    best, table = tune_crf([p[:, :2]], [img[:2]], [gt[:2]], grid=dict(iterations=(3, 1, 2)), metric=lambda preds, gts: 0.0, workers=1)
    assert best.iterations == 3  # ties: the first grid point
    # the default score is the pooled Dice over the probabilities' structures (here 1..3)
    _, table = tune_crf([p[:, :2]], [img[:2]], [gt[:2]], grid=dict(iterations=(1,)), workers=1)
    assert table[0]['score'] == pooled_dice(crf_refine(p[:, :2], img[:2], CRFParams(iterations=1), workers=1)[1], gt[:2])[0]
    with pytest.raises(ValueError, match="unknown CRFParams fields"): tune_crf([p], [img], [gt], grid=dict(sxy=(1,)))
    with pytest.raises(ShapeError, match='labels'): tune_crf([p], [img], [gt[:, :10]], grid=dict(iterations=(1,)))
    with pytest.raises(ShapeError, match='equal, non-zero'): tune_crf([p], [img], [], grid=dict(iterations=(1,)))
