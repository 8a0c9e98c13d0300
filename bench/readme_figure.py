"""The README's figure, nbs/images/glrp_weights.png: the positive-pair weights of SimCLR, PCL and GLRP over one batch.

    OMP_NUM_THREADS=1 .venv/bin/python bench/readme_figure.py   # rewrites nbs/images/glrp_weights.png

The batch holds every slice of three volumes of 8, 10 and 12 slices, sorted by relative position p (glrp's slice rule,
`glrp.partition.slice_positions`); the weights are glrp.losses' at their defaults (PCL's threshold and GLRP's tent
width 0.35). No image data are read: the figure depends on the slice positions only. A script rather than a hidden
cell of nbs/index.ipynb because `make readme` (nbconvert) would print every code cell of that notebook into README.md.
"""
import argparse
from pathlib import Path
import numpy as np
import torch
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
from glrp.partition import slice_positions
from glrp.losses import simclr_weights, pcl_weights, glrp_weights

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT/'nbs'/'images'/'glrp_weights.png'
SLICES = (8, 10, 12)  # slices of each volume in the batch
TAU = 0.35  # PCL's threshold and GLRP's tent half-width (the defaults)


def batch_positions(slices=SLICES):
    "Relative positions of all slices of volumes with `slices` slices each, sorted (base 0 to apex 1)."
    return torch.tensor(np.concatenate([slice_positions(z) for z in slices])).sort().values


def draw(out=OUT):
    p = batch_positions()
    n = len(p)
    W = {'SimCLR\nonly the other view': simclr_weights(n),
         f'PCL\n1 if |Δp| < {TAU}, else 0': pcl_weights(p, threshold=TAU),
         f'GLRP (our reading)\nmax(0, 1 − |Δp| / {TAU})': glrp_weights(p, tau=TAU)}
    for w in W.values(): assert w.shape == (n, n) and torch.equal(w, w.T) and (w.diagonal() == 1).all()
    fig, axs = plt.subplots(1, 4, figsize=(10, 3.0), dpi=100, layout='constrained', gridspec_kw=dict(width_ratios=[1, 1, 1, 1.1]))
    ticks = np.linspace(0, n - 1, 4).round().astype(int)
    for ax, (name, w) in zip(axs, W.items()):
        im = ax.imshow(w.numpy(), cmap='magma', vmin=0, vmax=1, interpolation='nearest')
        ax.set_title(name, fontsize=9)
        ax.set_xticks(ticks, [f'{p[i]:.2f}' for i in ticks], fontsize=7)
        ax.set_yticks(ticks, [f'{p[i]:.2f}' for i in ticks], fontsize=7)
        ax.set_xlabel('position p of slice j', fontsize=8)
    axs[0].set_ylabel(f'position p of slice i\n({n} slices of 3 volumes)', fontsize=8)
    cb = fig.colorbar(im, ax=axs[:3], shrink=0.8, pad=0.01)
    cb.set_label('positive weight W_ij', fontsize=8); cb.ax.tick_params(labelsize=7)
    d = np.linspace(0, 0.75, 751)
    a = axs[3]
    a.plot(d, np.where(d < TAU, 1., 0.), color='tab:blue', label='PCL')
    a.plot(d, np.clip(1 - d / TAU, 0, None), color='tab:orange', lw=2, label='GLRP')
    a.plot([0], [1], 'o', color='tab:green', ms=5, label='SimCLR (Δp = 0 only)')
    a.set_xlabel('distance Δp = |p_i − p_j|', fontsize=8); a.set_ylabel('weight', fontsize=8)
    a.set_title('weight against distance\n(base p = 0, apex p = 1)', fontsize=9)
    a.tick_params(labelsize=7); a.set_ylim(-0.05, 1.12); a.legend(fontsize=7, frameon=False, loc='center right', bbox_to_anchor=(1, 0.6))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100, metadata={'Software': None})
    plt.close(fig)
    return out


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--out', type=Path, default=OUT, help='where to write the PNG')
    out = draw(ap.parse_args().out)
    print(f'{out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}: {out.stat().st_size / 1024:.0f} KB')
