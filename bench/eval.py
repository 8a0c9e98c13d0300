"""Bench of the evaluation: seconds to compute Dice + HD95 + ASSD (+ HD) for RV, MYO, LV on 100 ACDC-sized volumes.

Uses the real ACDC ground truth (first 100 labeled frames) against a copy shifted by 2 voxels in-plane, held in
memory, when the data is present (`$GLRP_ACDC` or ../shared/acdc); otherwise 100 synthetic 256x256x10 label
volumes (a toy heart whose size and position vary) against shifted copies. Only the metric computation is timed,
not the reading of files. Usage: .venv/bin/python bench/eval.py [--n 100] [--repeat 1]
"""
import argparse, os, sys, time
from pathlib import Path
import numpy as np
from glrp.data import find_acdc, index_acdc, load_label
from glrp.metrics import volume_metrics

def acdc_volumes(root, n):
    frames = [f for p in index_acdc(root) for f in p.frames][:n]
    return [load_label(f.label)[:2] for f in frames]

def synthetic_volumes(n, shape=(256, 256, 10), spacing=(1.5, 1.5, 10.), seed=0):
    rng = np.random.default_rng(seed)
    x, y = np.mgrid[:shape[0], :shape[1]]
    vols = []
    for _ in range(n):
        cx, cy, r = rng.uniform(100, 156), rng.uniform(100, 156), rng.uniform(15, 25)
        g = np.zeros(shape, np.uint8)
        for z in range(1, shape[2] - 1):
            rz = r*(1 - 0.6*z/shape[2])
            d = np.hypot(x - cx, y - cy)
            g[..., z][np.hypot(x - cx + 1.6*r, y - cy) < 1.1*rz] = 1
            g[..., z][d < 1.3*rz] = 2; g[..., z][d < rz] = 3
        vols.append((g, spacing))
    return vols

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--n', type=int, default=100); ap.add_argument('--repeat', type=int, default=1)
    args = ap.parse_args(argv)
    root = find_acdc(os.environ.get('GLRP_ACDC') or Path(__file__).resolve().parents[2]/'shared'/'acdc')
    if root is not None and (root/'training').is_dir():
        vols, src = acdc_volumes(root/'training', args.n), f'ACDC ground truth ({root}) vs a 2-voxel in-plane shift'
    else:
        vols, src = synthetic_volumes(args.n), 'synthetic 256x256x10 volumes vs a 2-voxel in-plane shift'
    preds = [np.roll(g, 2, axis=0) for g, _ in vols]
    times = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        recs = [r for (g, sp), p in zip(vols, preds) for r in volume_metrics(p, g, sp)]
        times.append(time.perf_counter() - t)
    lv = np.mean([r['dice'] for r in recs if r['class'] == 'LV'])
    print(f"{len(vols)} volumes ({src}); mean shape {tuple(int(v) for v in np.mean([g.shape for g, _ in vols], 0).round())}")
    print(f"Dice+HD95+ASSD+HD for 3 classes: {min(times):.2f} s (best of {args.repeat}; all: {', '.join(f'{t:.2f}' for t in times)})"
          f"  = {1000*min(times)/len(vols):.1f} ms/volume; LV Dice {lv:.3f}")

if __name__ == '__main__': main()
