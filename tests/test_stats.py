"Stats: bootstrap coverage (stratified vs ordinary), agreement with scipy's bootstrap, and the path metrics.csv -> records -> table."
import csv, io, math
import numpy as np
from scipy import stats as sps
from glrp.data import CLASSES
from glrp.metrics import volume_metrics, records_csv, pcl_summary
from glrp.stats import bootstrap_ci, volume_records, compare, fold_pooled_dice, summary_table, stats_markdown, PAIRS


def test_coverage_stratified_vs_ordinary():
    """Folds with fixed, different mean differences, ACDC's layout (5 folds of 20 test patients): the stratified CI covers the true
    mean at about 95% (a little less: within a fold the bootstrap variance is (n_f - 1)/n_f of the unbiased one), the ordinary one far more."""
    rng, folds = np.random.default_rng(0), np.repeat(np.arange(5), 20)
    shift = np.array([-0.04, -0.02, 0., 0.02, 0.04])[folds]  # the folds' models: part of the design, fixed
    true = 0.01 + shift.mean()
    strat, plain = [], []
    for k in range(1000):
        d = 0.01 + shift + rng.normal(0, 0.02, len(folds))
        _, lo, hi = bootstrap_ci(d, folds, n_boot=1000, seed=k); strat.append(lo <= true <= hi)
        _, lo, hi = bootstrap_ci(d, None, n_boot=1000, seed=k); plain.append(lo <= true <= hi)
    assert 0.92 <= np.mean(strat) <= 0.97, np.mean(strat)
    assert np.mean(plain) > 0.98, np.mean(plain)


def test_one_stratum_agrees_with_scipy_bootstrap():
    "Without folds, the CI is scipy.stats.bootstrap's percentile interval, up to Monte-Carlo error (different random draws)."
    d = np.random.default_rng(1).gamma(2., 0.02, 30) - 0.03  # skewed, so the percentile interval is not symmetric
    _, lo, hi = bootstrap_ci(d, n_boot=20_000, seed=2)
    ref = sps.bootstrap((d,), np.mean, method='percentile', n_resamples=20_000, confidence_level=0.95, rng=np.random.default_rng(3))
    se = d.std() / math.sqrt(len(d))
    assert abs(lo - ref.confidence_interval.low) < 0.1*se and abs(hi - ref.confidence_interval.high) < 0.1*se


def test_from_metrics_csv_to_table():
    "Label volumes -> glrp.metrics records -> metrics.csv text -> volume_records -> summary_table, checked by independent sums."
    rng, shape = np.random.default_rng(4), (4, 24, 24)
    gt = {f'patient{i:03d}': {ph: rng.integers(0, 4, shape) for ph in ('ED', 'ES')} for i in range(1, 7)}
    fold = {p: i % 2 for i, p in enumerate(gt)}
    noise = dict(random=0.5, pcl=0.3, glrp=0.2)  # fraction of voxels relabelled at random
    records, structs = [], {}
    for m, q in noise.items():
        for seed in (0, 1):
            for p, vols in gt.items():
                rows = []
                for ph, g in vols.items():
                    flip = rng.random(shape) < q
                    pred = np.where(flip, rng.integers(0, 4, shape), g)
                    rows += volume_metrics(pred, g, (10., 1.5, 1.5), name=f'{p}_{ph}', patient=p, phase=ph)
                text = records_csv(rows)  # what the evaluation writes to metrics.csv
                recs = volume_records(csv.DictReader(io.StringIO(text)), method=m, M=2, fold=fold[p], seed=seed, precision='fp32')
                records += recs
                structs.setdefault((m, fold[p], seed), []).extend(rows)
    table = summary_table(records, n_boot=2000)
    test_pairs = [(r['a'], r['b']) for r in table['pairs']]
    assert test_pairs == [pr for pr in PAIRS if 'glrp-global' not in pr]
    # the mean difference, straight from the structure records
    per = {}
    for (m, f, seed), rows in structs.items():
        for r in rows: per.setdefault((m, r['patient']), {}).setdefault(seed, []).append(r['dice'])
    pat = {k: np.mean([np.mean(v) for v in seeds.values()]) for k, seeds in per.items()}
    row = next(r for r in table['pairs'] if (r['a'], r['b']) == ('glrp', 'random'))
    assert math.isclose(row['mean'], np.mean([pat[('glrp', p)] - pat[('random', p)] for p in gt]), abs_tol=1e-5)  # CSV keeps 6 digits
    assert (row['n'], row['n_folds']) == (6, 2) and row['lo'] < row['mean'] < row['hi'] and row['mean'] > 0
    # pooled Dice per fold: metrics.pcl_summary on the fold's structure records, averaged over seeds
    pooled = fold_pooled_dice(records)
    for f in (0, 1):
        ref = np.mean([pcl_summary(structs[('pcl', f, s)])['all']['mean'] for s in (0, 1)])
        assert math.isclose(pooled[('pcl', 2, f)], ref, rel_tol=1e-12)
    assert '| 2 | glrp − random | 6 (2) |' in stats_markdown(table)
