"""Dense CRF throughput: slices per second at 128x128 and 256x256 (4 classes, 5 iterations), one process vs all cores.

Usage: .venv/bin/python bench/crf.py [--slices128 N] [--slices256 N] [--repeats R] [--workers W]

The input is a synthetic volume (an LV disk, a myocardial ring and an RV ellipse on a noisy background) with a
simulated prediction from `glrp.testing.simulate_prediction`, so the lattice sees realistic image statistics. The
one-process and the parallel run are timed alternately, `repeats` times each, through `crf_refine` (input checks,
intensity rescaling and pool start-up included: that is what a caller pays), and the best time of each is
reported. On a machine shared with other jobs the parallel speed-up is capped by the CPU time the others leave,
so the script also prints the load average and the speed-up of a trivially parallel pure-Python loop measured in
the same way: the ceiling at that moment.
"""
import argparse, os, time
import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor
import numpy as np
from glrp.crf import CRFParams, crf_refine, available_cores
from glrp.testing import simulate_prediction

def phantom(z:int, size:int, seed:int=0):
    "(image (Z, H, W), labels (Z, H, W)): LV disk, myocardial ring, RV ellipse on a noisy background."
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] * (128 / size)
    img, lab = np.empty((z, size, size), np.float32), np.zeros((z, size, size), np.uint8)
    for i in range(z):
        cy, cx = 64 + rng.normal(0, 3), 70 + rng.normal(0, 3)
        r = np.hypot(yy - cy, xx - cx)
        l = lab[i]
        l[((yy - cy) / 18)**2 + ((xx - cx + 30) / 26)**2 < 1] = 1
        l[r < 21] = 2; l[r < 14] = 3
        img[i] = np.choose(l, [0.3, 0.8, 0.33, 0.9]) + rng.normal(0, 0.04, l.shape)
    return img, lab

def spin(n:int) -> int:
    "A CPU-bound loop (no memory traffic) for the ceiling probe."
    x = 0
    for i in range(n): x += i * i
    return x

def best_pair(run1, runn, repeats:int) -> tuple:
    "Best seconds of `run1()` and `runn()`, timed alternately."
    t1 = tn = np.inf
    for _ in range(repeats):
        t = time.perf_counter(); run1(); t1 = min(t1, time.perf_counter() - t)
        t = time.perf_counter(); runn(); tn = min(tn, time.perf_counter() - t)
    return t1, tn

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--slices128', type=int, default=240, help='slices at 128x128')
    ap.add_argument('--slices256', type=int, default=120, help='slices at 256x256')
    ap.add_argument('--repeats', type=int, default=5)
    ap.add_argument('--workers', type=int, default=None, help='processes for the parallel run (default: available cores)')
    a = ap.parse_args()
    cores = a.workers or available_cores()
    print(f'cores available: {available_cores()}, parallel runs with {cores} processes')
    print('load average (1, 5, 15 min) before: ' + ', '.join(f'{x:.2f}' for x in os.getloadavg()))
    n = 3_000_000
    with ProcessPoolExecutor(cores, mp_context=mp.get_context('fork' if 'fork' in mp.get_all_start_methods() else None)) as ex:
        list(ex.map(spin, [1] * cores))
        t1, tn = best_pair(lambda: [spin(n) for _ in range(cores)], lambda: list(ex.map(spin, [n] * cores)), a.repeats)
    print(f'ceiling now (pure-Python loop, {cores} processes vs 1): {t1 / tn:.2f}x')
    print(f"{'size':>9} {'slices':>6} {'1 process':>12} {f'{cores} processes':>14} {'speed-up':>8}")
    for size, z in ((128, a.slices128), (256, a.slices256)):
        img, lab = phantom(z, size)
        probs = simulate_prediction(lab, seed=1)
        prm = CRFParams(iterations=5)
        t1, tn = best_pair(lambda: crf_refine(probs, img, prm, workers=1), lambda: crf_refine(probs, img, prm, workers=cores), a.repeats)
        print(f'{size:>4}x{size:<4} {z:>6} {z / t1:>8.1f} sl/s {z / tn:>10.1f} sl/s {t1 / tn:>7.2f}x')
    print('load average after: ' + ', '.join(f'{x:.2f}' for x in os.getloadavg()))

if __name__ == '__main__': main()
