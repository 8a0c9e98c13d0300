"""Where the time of training goes: seconds and share per part of a pretraining epoch (global and local stage) and of a
fine-tuning epoch with its validation pass, run through the engine itself (`glrp.train.pretrain` / `finetune`), and the
top operators of a few steps (torch.profiler).

Usage: .venv/bin/python bench/profile_train.py [--data ACDC/training] [--f 16] [--size 128] [--spacing 2.0] [--pre-batch 32]
                                         [--ft-batch 16] [--steps 12] [--no-fast] [--precision auto|fp32|bf16] [--ops 12]

Defaults are the `cpu` profile's settings (f = 16, 128 x 128 at 2 mm, batch 32 / 16, channels_last + bf16 where the CPU
has it). Without `--data` a 20-patient phantom is written to a temporary folder (the tensors have the same shapes as
ACDC's at these settings; only the number of steps per epoch differs). Each epoch is capped at `--steps` steps.

Parts are timed by wrapping the engine's functions (augmentation, the network's forward pass, the losses, `backward`,
the divergence check, the optimiser step, validation); what is left of an epoch's wall time is "other" (batch
gathering, the scheduler, logging, the checkpoint). Run it on an idle machine: another heavy process makes OpenMP spin
and every figure several times larger. The CPU capability and the precision are printed with the figures.
"""
import argparse, os, tempfile, time
from collections import defaultdict
from pathlib import Path
import torch
import glrp.train as gtrain
from glrp.train import PretrainConfig, FinetuneConfig, ProjNet, pretrain, finetune, fast_settings, numerics
from glrp.unet import UNet

T, C = defaultdict(float), defaultdict(int)  # seconds and calls per part

def timed(name, fn, exclude=()):
    "`fn`, adding its wall time to T[name] (less what the parts in `exclude` spent inside it: no double counting)."
    def w(*a, **k):
        before = {e: T[e] for e in exclude}
        t = time.perf_counter()
        try: return fn(*a, **k)
        finally:
            T[name] += time.perf_counter() - t; C[name] += 1
            for e in exclude: d = T[e] - before[e]; T[e] -= d  # counted under `name` alone
    return w

def instrument():
    "Wrap the engine's parts (module attributes the loop looks up at call time)."
    for name, part in (('two_views', 'augment'), ('augment_pair', 'augment'), ('seg_loss', 'loss'), ('check_step', 'divergence check'),
                       ('pooled_dice', 'validation: Dice'), ('load_slices', 'data: cache load')):
        setattr(gtrain, name, timed(part, getattr(gtrain, name)))
    gtrain.predict_probs = timed('validation: forward', gtrain.predict_probs, exclude=('forward',))
    for name, part in (('contrastive_loss', 'loss'), ('local_loss', 'loss'), ('positive_weights', 'loss')):
        setattr(gtrain, name, timed(part, getattr(gtrain, name)))
    gtrain.gdist.pool_regions = timed('loss', gtrain.gdist.pool_regions)
    ProjNet.forward = timed('forward', ProjNet.forward)
    UNet.forward = timed('forward', UNet.forward)
    torch.Tensor.backward = timed('backward', torch.Tensor.backward)
    for opt in (torch.optim.SGD, torch.optim.Adam): opt.step = timed('optimiser step', opt.step)

def table(title, wall, views:int=1):
    "Seconds and share per part of `wall` seconds (steps counted as optimiser steps), then reset the timers."
    steps = C['optimiser step']
    parts = {k: v for k, v in T.items() if v > 0 and k != 'data: cache load'}; T.clear(); C.clear()
    parts['other'] = max(wall - sum(parts.values()), 0.)
    images = views * steps * BATCH[0]
    print(f"\n{title}: {steps} steps, {wall:.2f} s (cache load excluded), {images / wall:.1f} training images/s over the whole epoch")
    print(f"| part | s | s/step | share |\n|---|---|---|---|")
    for k, v in sorted(parts.items(), key=lambda kv: -kv[1]):
        print(f"| {k} | {v:.2f} | {v / max(steps, 1) * 1000:.0f} ms | {v / wall:.0%} |")

BATCH = [1]

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--data', default=None, help='ACDC training/ folder (default: a 20-patient phantom)')
    ap.add_argument('--f', type=int, default=16); ap.add_argument('--size', type=int, default=128); ap.add_argument('--spacing', type=float, default=2.0)
    ap.add_argument('--pre-batch', type=int, default=32); ap.add_argument('--ft-batch', type=int, default=16)
    ap.add_argument('--steps', type=int, default=12, help='steps per epoch (cap)')
    ap.add_argument('--no-fast', action='store_true'); ap.add_argument('--precision', default='auto')
    ap.add_argument('--ops', type=int, default=12, help='operators in the profiler table (0: none)')
    a = ap.parse_args()
    from glrp.synthetic import write_phantom
    from glrp.partition import make_manifest, write_manifest
    tmp = Path(tempfile.mkdtemp())
    data = a.data or write_phantom(tmp/'data', n_patients=20, seed=0)
    write_manifest(make_manifest(data, folds=5, labeled=4, val=2, seed=0), tmp/'manifest.json')
    common = dict(manifest=str(tmp/'manifest.json'), spacing=a.spacing, size=(a.size, a.size), f=a.f, workers=0, progress=False,
                  fast=not a.no_fast, precision=a.precision, max_steps=a.steps, device='cpu')
    fast_cfg = fast_settings(torch.device('cpu'), not a.no_fast, a.precision)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {numerics(torch.device('cpu'), fast_cfg)}, load {os.getloadavg()[0]:.2f}")
    # warm the cache (not timed as training) and the kernels
    pretrain(PretrainConfig(out=str(tmp/'warm'), stage='global', epochs=1, batch=a.pre_batch, **(common | dict(max_steps=2))))
    instrument()
    T.clear()
    for stage in ('global', 'local'):
        t = time.perf_counter()
        r = pretrain(PretrainConfig(out=str(tmp/f'pre_{stage}'), stage=stage, epochs=1, batch=a.pre_batch, warmup_epochs=0, **common))
        wall = time.perf_counter() - t - T.get('data: cache load', 0.)
        BATCH[0] = a.pre_batch
        table(f"pretraining, {stage} stage (f = {a.f}, {a.size} x {a.size}, batch {a.pre_batch} slices = {2 * a.pre_batch} views)", wall, views=2)
    t = time.perf_counter()
    r = finetune(FinetuneConfig(out=str(tmp/'ft'), epochs=1, batch=a.ft_batch, **common))
    wall = time.perf_counter() - t - T.get('data: cache load', 0.)
    BATCH[0] = a.ft_batch
    table(f"fine-tuning (batch {a.ft_batch}), one epoch and its validation pass", wall)
    if a.ops:
        from torch.profiler import profile, ProfilerActivity
        for stage in ('global', 'local'):
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                pretrain(PretrainConfig(out=str(tmp/f'prof_{stage}'), stage=stage, epochs=1, batch=a.pre_batch, **(common | dict(max_steps=3))))
            print(f"\ntop operators, pretraining {stage} stage, 3 steps (self CPU time):")
            print(prof.key_averages().table(sort_by='self_cpu_time_total', row_limit=a.ops, max_name_column_width=40))
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            finetune(FinetuneConfig(out=str(tmp/'prof_ft'), epochs=1, batch=a.ft_batch, **(common | dict(max_steps=3))))
        print("\ntop operators, fine-tuning, 3 steps and validation (self CPU time):")
        print(prof.key_averages().table(sort_by='self_cpu_time_total', row_limit=a.ops, max_name_column_width=40))
    print(f"\nload average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")

if __name__ == '__main__': main()
