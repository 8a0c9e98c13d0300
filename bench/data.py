"""Benchmark of the data layer (glrp.data, glrp.preprocess, glrp.cache): index + preprocess the labeled ACDC frames at 1.25 mm / 352 x 352 with an
empty cache (cold) and from the cache, and synthesize the phantom. A script that prints figures, not a test.

    .venv/bin/python bench/data.py [ACDC_DIR] [--workers 2] [--cache DIR]

"Cold" means an empty preprocessing cache; the NIfTI files themselves may sit in the OS page cache (run it twice
and the first run's cold figure includes disk reads). Targets: cached >= 10x faster than cold; cold < 60 s on 2 cores.
"""
import argparse, os, resource, shutil, sys, tempfile, time
from pathlib import Path
from glrp.data import find_acdc, index_acdc
from glrp.preprocess import PrepParams
from glrp.cache import preprocess_dataset, case_sources, load_case


def peak_rss_mib():
    "Peak resident set size (MiB) of this process and of its (waited-for) children."
    me, kids = (resource.getrusage(w).ru_maxrss / 1024 for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return me, kids


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('acdc', nargs='?', help='ACDC folder (default: find_acdc())')
    ap.add_argument('--workers', type=int, default=2, help='processes for the cold pass')
    ap.add_argument('--cache', help='cache folder (default: a fresh temporary folder, removed afterwards)')
    ap.add_argument('--phantom', type=int, default=20, help='patients to synthesize (0: skip)')
    a = ap.parse_args(argv)
    root = find_acdc(a.acdc) if a.acdc else find_acdc()
    params = PrepParams()  # 1.25 mm, 352 x 352, z-score
    print(f"cpus {os.cpu_count()}, workers {a.workers}, params spacing {params.spacing} size {params.size}")
    if root is None: print("ACDC not found (pass its folder or set GLRP_ACDC): skipping the ACDC figures")
    else:
        train = root / 'training' if (root / 'training').is_dir() else root
        cache = Path(a.cache) if a.cache else Path(tempfile.mkdtemp(prefix='glrp-cache-'))
        if a.cache and cache.exists(): shutil.rmtree(cache)
        try:
            t0 = time.perf_counter()
            pats = index_acdc(train)
            t_index = time.perf_counter() - t0
            paths = preprocess_dataset(pats, params, cache, workers=a.workers)
            t_cold = time.perf_counter() - t0
            n = len(paths)
            mb = sum(p.stat().st_size for p in paths) / 2**20
            # from the cache: index again and load every case's arrays into memory (what a training run does)
            t0 = time.perf_counter()
            pats = index_acdc(train)
            hits = vox = 0
            for s in case_sources(pats):
                c = load_case(s, params, cache)
                hits += c.cached; vox += c.image.size
            t_cached = time.perf_counter() - t0
            assert hits == n, f"only {hits} of {n} cases came from the cache"
            t0 = time.perf_counter()
            preprocess_dataset(index_acdc(train), params, cache, workers=a.workers)
            t_warm_fill = time.perf_counter() - t0
            print(f"ACDC {train}: {len(pats)} patients, {n} labeled frames; cache {mb:.0f} MiB in {cache}")
            print(f"  index only                     {t_index:7.2f} s")
            print(f"  cold: index + preprocess       {t_cold:7.2f} s   {n / t_cold:7.1f} frames/s  ({a.workers} workers)")
            print(f"  cached: index + load arrays    {t_cached:7.2f} s   {n / t_cached:7.1f} frames/s  (1 process)")
            print(f"  cold / cached                  {t_cold / t_cached:7.1f} x   (target >= 10 x)")
            print(f"  preprocess_dataset, all hits   {t_warm_fill:7.2f} s")
        finally:
            if not a.cache: shutil.rmtree(cache, ignore_errors=True)
    if a.phantom:
        try: from glrp.synthetic import write_phantom
        except ImportError: print("glrp.synthetic not available: skipping the phantom figure")
        else:
            out = Path(tempfile.mkdtemp(prefix='glrp-phantom-'))
            try:
                t0 = time.perf_counter()
                write_phantom(out / 'data', n_patients=a.phantom, seed=0, cine=0)
                print(f"phantom: write_phantom({a.phantom} patients)   {time.perf_counter() - t0:7.2f} s")
            finally: shutil.rmtree(out, ignore_errors=True)
    me, kids = peak_rss_mib()
    print(f"peak RSS: this process {me:.0f} MiB, children (largest) {kids:.0f} MiB")


if __name__ == '__main__': sys.exit(main())
