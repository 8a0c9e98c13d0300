"""Training throughput of the plain fp32 path and the fast path (channels_last + bf16 autocast), and their accuracy.

Usage: .venv/bin/python bench/train.py [--device cpu|cuda] [--compile] [--precision auto|bf16|fp32] [--f 16] [--size 128] [--batch 16] [--steps 6] [--rounds 3]
                                       [--warmup 3] [--finetune auto|engine|loop|none] [--ft-epochs 20] [--ft-seeds 2] [--semi | --no-semi] [--only-semi]

Speed: images per second of one pretraining step (two augmented views of each slice -> UNet encoder + global head
-> `contrastive_loss` with GLRP weights -> backward -> SGD step) and one fine-tuning step (augmented image + labels
-> UNet -> `seg_loss` -> backward -> Adam step), augmentation included, at a PCL-shaped configuration scaled for a
CPU (f=16, 128x128, batch 16 slices; pretraining pushes 2 x 16 views). Both paths train their own copy of the same
initial model on the same batch of phantom slices; after warm-up steps, rounds of `steps` steps alternate between the
paths (the machine may be shared: alternating spreads the other jobs' load over both), and the best round of each
path is reported with the median. On CUDA the device is synchronised before every clock reading. Peak RSS of the
process (and, on CUDA, peak allocated GPU memory per path) and the load average are printed.

Accuracy: a short fine-tune on phantom patients (written to a temporary folder, preprocessed by `glrp.preprocess` at 2 mm /
128 x 128) with the fast path off and on, and the pooled validation Dice (RV, MYO, LV) of both, taken as the mean over
the last `--ft-last` epochs. `--finetune engine` (the default when `glrp.train` imports) runs `glrp.train.finetune`
on a partition manifest of the phantom; `--finetune loop` runs a minimal loop written here (Adam, cosine schedule).
Semi-supervised steps (`--semi`, on by default): the engine's own steps (`glrp.train.Finetuning` and `SemiSupervised`,
the body of `fit`: loss, backward, Adam, the teacher's EMA) for plain fine-tuning, Mean Teacher and BCP (self-training),
on the fast path, with their images/s (labeled + unlabeled slices per second), the FLOPs of one step (convolutions and
matrix products, forward and backward, by `torch.utils.flop_counter`) and the achieved GFLOP/s against a 2048^3 matrix
product in the fast path's precision measured in the same run. A teacher that ran with gradients or off the fast path
would show as a semi-supervised step with fewer GFLOP/s than the fine-tuning step.
The fast path should cost no accuracy: Dice within 0.01 of the plain path. Both paths run with `--ft-seeds` seeds
(paired: the same seed gives both the same initial weights, batches and augmentations), and the mean difference is
printed with its standard error: bf16 rounding makes the two runs of one seed drift apart like two seeds do, so a
single pair of short runs cannot resolve 0.01 when seeds alone move the Dice by more.
"""
import argparse, os, resource, statistics, sys, tempfile, time
from contextlib import nullcontext
from copy import deepcopy
from pathlib import Path
import numpy as np
import torch
from glrp.augment import AugParams, two_views, augment_pair
from glrp.data import index_acdc
from glrp.preprocess import PrepParams
from glrp.cache import load_case
from glrp.losses import contrastive_loss, positive_weights, seg_loss, local_loss, region_boxes, region_features
from glrp.synthetic import write_phantom
from glrp.unet import UNet
from glrp.train import fast_settings, bf16_supported

def sync(device):
    if device.type == 'cuda': torch.cuda.synchronize(device)

def peak_rss_mib() -> float:
    "Peak resident set size of this process (MiB; Linux reports KiB)."
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 if sys.platform != 'darwin' else r / 2**20

def load_avg() -> str: return ', '.join(f'{x:.2f}' for x in os.getloadavg())

class Path_:
    "One training path: its model, optimiser, memory format, autocast and (compile) its forward functions compiled by inductor."
    def __init__(self, name, model, opt, device, fast, compile=False, precision='auto'):
        self.name, self.model, self.opt, self.device, self.fast = name, model, opt, device, fast
        self.amp = fast_settings(device, fast, precision)['amp'] is not None  # the engine's own rule (and its warning where bf16 is emulated)
        self.fmt = torch.channels_last if fast else torch.contiguous_format
        self.model.to(device=device, memory_format=self.fmt)
        c = torch.compile if compile else (lambda f: f)
        self.forward, self.global_proj, self.local_proj = c(model), c(model.global_proj), c(model.local_proj)
    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.amp else nullcontext()
    def input(self, x): return x.to(self.device, non_blocking=True).contiguous(memory_format=self.fmt)

def pretrain_step(P:Path_, x, pos, aug, gen):
    "Two views -> encoder + global head -> GLRP contrastive loss -> backward -> SGD step."
    v1, v2 = two_views(x, aug, gen)
    with P.autocast(): z = P.global_proj(P.input(torch.cat([v1, v2])))
    n = len(x)
    loss = contrastive_loss(torch.stack([z[:n], z[n:]], 1), positive_weights('glrp', p=pos).to(P.device), T=0.1)
    P.opt.zero_grad(set_to_none=True); loss.backward(); P.opt.step()
    return loss

def slice_regions(maps, k=3):
    "The region means as the previous commit took them: one slice per region (a full-size zero gradient per slice in backward)."
    m = maps.float()
    return torch.stack([m[..., y:y+s, x:x+s].mean((-2, -1)) for y, x, s in region_boxes(*maps.shape[-2:], k)], 1)

def local_step(P:Path_, x, aug, gen):
    "Local stage: two views with shared geometry -> frozen encoder + decoder + local head -> region means -> local loss -> backward -> SGD."
    v1, v2 = two_views(x, aug, gen, shared_geometry=True)
    with P.autocast(): z = P.local_proj(P.input(torch.cat([v1, v2])))
    n = len(x)
    r = (slice_regions(z) if P.name == 'fast' else region_features(z)).view(2, n, 3, 3, -1).permute(1, 0, 4, 2, 3)
    loss = local_loss(r.contiguous(), None, n_regions=3, size=1, T=0.1)
    P.opt.zero_grad(set_to_none=True); loss.backward(); P.opt.step()
    return loss

def finetune_step(P:Path_, x, y, aug, gen):
    "Augmented image + labels -> UNet -> CE + Dice -> backward -> Adam step."
    xa, ya = augment_pair(x, y, aug, gen)
    with P.autocast(): logits = P.forward(P.input(xa))
    loss = seg_loss(logits, ya.to(P.device))
    P.opt.zero_grad(set_to_none=True); loss.backward(); P.opt.step()
    return loss

def phantom_slices(root:Path, n_patients:int, size:int, spacing:float=2.0):
    "Images [N, 1, S, S] (z-scored), labels [N, S, S] and relative positions [N] of every labeled phantom slice."
    pats = index_acdc(write_phantom(root, n_patients=n_patients, seed=0))
    cases = [load_case(f, PrepParams(spacing=spacing, size=(size, size))) for p in pats for f in p.frames]
    img = torch.from_numpy(np.concatenate([c.image for c in cases]))[:, None]
    lab = torch.from_numpy(np.concatenate([c.label for c in cases])).long()
    pos = torch.tensor([(z + 0.5) / len(c.image) for c in cases for z in range(len(c.image))])
    return img, lab, pos

def bench_speed(kind, make_paths, step, args, device):
    "Warm up both paths, then alternate timed rounds; {path name: [seconds per step of each round]}."
    paths = make_paths()
    times = {P.name: [] for P in paths}
    mem = {}
    for P in paths:
        if device.type == 'cuda': torch.cuda.reset_peak_memory_stats(device)
        for _ in range(args.warmup): step(P)
        sync(device)
        if device.type == 'cuda': mem[P.name] = torch.cuda.max_memory_allocated(device) / 2**20
        print(f'  {kind} {P.name}: warmed up, peak RSS so far {peak_rss_mib():.0f} MiB'
              + (f', peak GPU memory {mem[P.name]:.0f} MiB' if P.name in mem else ''), flush=True)
    for r in range(args.rounds):
        for P in (paths if r % 2 == 0 else paths[::-1]):
            sync(device); t = time.perf_counter()
            for _ in range(args.steps): loss = step(P)
            float(loss.detach()); sync(device)
            times[P.name].append((time.perf_counter() - t) / args.steps)
    return times

def report(kind, times, imgs_per_step, unit):
    "Print images/s of each path and the ratios new / plain, new / fast, fast / plain; the ratio new / fast (or fast / plain without a new path)."
    best = {k: min(v) for k, v in times.items()}
    for k, v in times.items():
        print(f'  {kind} {k:5s}: {imgs_per_step / best[k]:7.1f} {unit}/s (best round; median {imgs_per_step / statistics.median(v):.1f}), '
              f'{best[k]*1000:.0f} ms/step')
    pairs = [(a, b) for a, b in (('fast', 'plain'), ('new', 'plain'), ('new', 'fast')) if a in best and b in best]
    print(f'  {kind} ' + ', '.join(f'{a} / {b}: {best[b] / best[a]:.2f}x' for a, b in pairs))
    return best['fast'] / best['new'] if 'new' in best else best['plain'] / best['fast']

# ---------- semi-supervised steps ----------
def matmul_gflops(device, dtype, n:int=2048, reps:int=10) -> float:
    "GFLOP/s of an n x n x n matrix product in `dtype` (best of three rounds of `reps`)."
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2): a @ b
    best = float('inf')
    for _ in range(3):
        sync(device); t = time.perf_counter()
        for _ in range(reps): a @ b
        sync(device); best = min(best, (time.perf_counter() - t) / reps)
    return 2 * n**3 / best / 1e9

def engine_stage(semi, root:Path, work:Path, args):
    "A `Finetuning` (semi None) or `SemiSupervised` stage of `glrp.train` on the phantom, set up for its first epoch (BCP past its labeled phase)."
    from glrp.partition import make_manifest, write_manifest
    from glrp.train import FinetuneConfig, Finetuning, SemiSupervised
    from glrp import distributed as gdist
    man = work/'semi_manifest.json'
    if not man.exists(): write_manifest(make_manifest(root, folds=4, labeled=6, val=2), man)
    cfg = FinetuneConfig(manifest=str(man), out=str(work/f'semi_{semi}'), cache=str(work/'cache'), spacing=2.0, size=(args.size, args.size), f=args.f,
                         batch=args.batch, steps=10_000, semi=semi, labeled_phase=0.0, device=str(args.device), precision=args.precision, workers=1, progress=False)
    st = (SemiSupervised if semi else Finetuning)(cfg, gdist.init_distributed(torch.device(args.device)))
    st.begin_epoch(0)
    return st

def engine_step(st, idx):
    "One step as `glrp.train.fit` takes it."
    loss = st.loss(idx); st.opt.zero_grad(set_to_none=True); loss.backward(); st.opt.step(); st.sched.step(); st.after_step()
    return loss

def bench_semi(args, device, tmp:Path):
    "Images/s, FLOPs per step and GFLOP/s of the engine's fine-tuning, Mean Teacher and BCP steps, against a matrix product."
    from torch.utils.flop_counter import FlopCounterMode
    root = write_phantom(tmp/'semi_phantom', n_patients=16, seed=0)
    amp = fast_settings(device, True, args.precision)['amp']
    ref = matmul_gflops(device, amp or torch.float32)
    print(f'semi-supervised steps (the engine: glrp.train.Finetuning / SemiSupervised, fast path; f={args.f}, {args.size}x{args.size}, '
          f'batch {args.batch} labeled + {args.batch} unlabeled slices):', flush=True)
    print(f'  reference: 2048^3 matrix product in {str(amp or torch.float32).replace("torch.", "")}: {ref:.0f} GFLOP/s', flush=True)
    out = {}
    for semi in (None, 'mean-teacher', 'bcp'):
        st = engine_stage(semi, root, tmp, args)
        bs = st.batches(0)
        with FlopCounterMode(display=False) as fc: engine_step(st, bs[0])
        flops = fc.get_total_flops()
        for i in range(args.warmup): engine_step(st, bs[(i + 1) % len(bs)])
        rounds = []
        for r in range(args.rounds):
            sync(device); t = time.perf_counter()
            for i in range(args.steps): loss = engine_step(st, bs[i % len(bs)])
            float(loss.detach()); sync(device)
            rounds.append((time.perf_counter() - t) / args.steps)
        sec = min(rounds)
        slices = args.batch * (1 if semi is None else 2)
        name = semi or 'finetune'
        out[name] = (sec, flops)
        print(f'  {name:12s}: {slices / sec:6.1f} images/s ({args.batch} labeled' + ('' if semi is None else f' + {args.batch} unlabeled') +
              f' slices per step; best round, median {slices / statistics.median(rounds):.1f}), {sec * 1000:.0f} ms/step, '
              f'{flops / 1e9:.1f} GFLOP per step, {flops / sec / 1e9:.0f} GFLOP/s = {flops / sec / 1e9 / ref:.0%} of the matrix product', flush=True)
    base = out['finetune']
    for k in ('mean-teacher', 'bcp'):
        print(f'  {k}: {out[k][0] / base[0]:.2f}x the time and {out[k][1] / base[1]:.2f}x the FLOPs of a fine-tuning step')
    return out

# ---------- accuracy ----------
def finetune_engine(root:Path, work:Path, args, fast:bool, seed:int) -> tuple:
    "(validation Dice of every epoch, training seconds) of `glrp.train.finetune` on the phantom."
    from glrp.partition import make_manifest, write_manifest
    from glrp.train import FinetuneConfig, finetune
    man = work/'manifest.json'
    if not man.exists():
        write_manifest(make_manifest(root, folds=args.ft_folds, labeled=args.ft_labeled, val=args.ft_val), man)
    cfg = FinetuneConfig(manifest=str(man), out=str(work/f'ft_{"fast" if fast else "plain"}_{seed}'), cache=str(work/'cache'),
                         spacing=2.0, size=(args.size, args.size), f=args.f, epochs=args.ft_epochs, batch=args.batch,
                         lr=args.ft_lr, seed=seed, device=str(args.device), fast=fast, precision=args.precision, workers=1, progress=False)
    r = finetune(cfg)
    curve = [row['val_dice'] for row in r['log'] if row['val_dice'] is not None]
    return curve, sum(row['seconds'] for row in r['log'])

def finetune_loop(root:Path, work:Path, args, fast:bool, seed:int) -> tuple:
    "(validation Dice of every epoch, training seconds) of a minimal fine-tune loop: the first patients train, the last `ft_val` validate."
    device = torch.device(args.device)
    pats = index_acdc(root)
    prep = PrepParams(spacing=2.0, size=(args.size, args.size))
    def slices(ps):
        cs = [load_case(f, prep) for p in ps for f in p.frames]
        return torch.from_numpy(np.concatenate([c.image for c in cs]))[:, None], torch.from_numpy(np.concatenate([c.label for c in cs])).long()
    xtr, ytr = slices(pats[:args.ft_labeled]); xva, yva = slices(pats[-args.ft_val:])
    torch.manual_seed(seed)
    P = Path_('fast' if fast else 'plain', UNet(f=args.f), None, device, fast, precision=args.precision)
    P.opt = torch.optim.Adam(P.model.parameters(), lr=args.ft_lr)
    gen, aug = torch.Generator().manual_seed(seed), AugParams.finetune()
    steps = args.ft_epochs * (len(xtr) // args.batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(P.opt, T_max=max(1, steps))
    curve, secs = [], 0.
    for ep in range(args.ft_epochs):
        t0 = time.perf_counter()
        P.model.train()
        perm = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(seed * 1000 + ep))
        for i in range(0, len(perm) - args.batch + 1, args.batch):
            finetune_step(P, xtr[perm[i:i + args.batch]], ytr[perm[i:i + args.batch]], aug, gen); sched.step()
        secs += time.perf_counter() - t0
        P.model.eval()
        with torch.no_grad(), P.autocast():
            pred = torch.cat([P.model(P.input(xva[i:i + 32])).float().argmax(1).cpu() for i in range(0, len(xva), 32)])
        d = [2 * ((pred == c) & (yva == c)).sum().item() / max(1, (pred == c).sum().item() + (yva == c).sum().item()) for c in (1, 2, 3)]
        curve.append(float(np.mean(d)))
    return curve, secs

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--device', default='cpu', help="cpu or cuda")
    ap.add_argument('--f', type=int, default=16, help='UNet base width (PCL: 48)')
    ap.add_argument('--size', type=int, default=128, help='slice size (PCL: 352)')
    ap.add_argument('--batch', type=int, default=16, help='slices per step (pretraining: two views each)')
    ap.add_argument('--warmup', type=int, default=3, help='untimed steps per path and kind')
    ap.add_argument('--steps', type=int, default=6, help='steps per timed round')
    ap.add_argument('--rounds', type=int, default=3, help='timed rounds per path (alternating)')
    ap.add_argument('--compile', action='store_true', help="add the path 'new': the fast path with torch.compile'd forward functions")
    ap.add_argument('--precision', choices=('auto', 'bf16', 'fp32'), default='auto',
                    help="the fast path's autocast, as the configs' `precision`: auto = bf16 where the CPU runs it natively; bf16 = always (what the study profile pins: emulated, and slow, without AVX512-BF16)")
    ap.add_argument('--threads', type=int, default=None, help='torch threads (default: os.cpu_count())')
    ap.add_argument('--finetune', choices=('auto', 'engine', 'loop', 'none'), default='auto',
                    help='accuracy check: glrp.train.finetune (engine), a minimal loop, or none; auto: engine when importable')
    ap.add_argument('--ft-patients', type=int, default=16, help='phantom patients of the accuracy check')
    ap.add_argument('--ft-folds', type=int, default=4, help='engine: folds of the manifest (fold 0 is used)')
    ap.add_argument('--ft-labeled', type=int, default=6, help='labeled (training) patients')
    ap.add_argument('--ft-val', type=int, default=6, help='validation patients')
    ap.add_argument('--ft-epochs', type=int, default=20)
    ap.add_argument('--ft-last', type=int, default=3, help='the Dice of a run is the mean validation Dice of its last epochs')
    ap.add_argument('--ft-lr', type=float, default=3e-3)
    ap.add_argument('--ft-seeds', type=int, default=2, help='seeds per path (paired: seed s of the plain path vs seed s of the fast path)')
    ap.add_argument('--semi', action=argparse.BooleanOptionalAction, default=True, help='time the engine\'s fine-tuning, Mean Teacher and BCP steps against a matrix product')
    ap.add_argument('--only-semi', action='store_true', help='only the semi-supervised steps (no plain/fast comparison, no accuracy check)')
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available(): sys.exit('--device cuda: CUDA is not available')
    torch.set_num_threads(args.threads or os.cpu_count())
    if device.type == 'cuda': torch.backends.cudnn.benchmark = True
    print(f'torch {torch.__version__}, device {device}' + (f' ({torch.cuda.get_device_name(device)})' if device.type == 'cuda' else '')
          + f', {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, CPU capability {torch.backends.cpu.get_cpu_capability()}, bf16 native: {bf16_supported(device)}')
    print(f'load average (1, 5, 15 min) at start: {load_avg()}  (the machine may be shared: other jobs slow both paths)')
    print(f'config: UNet f={args.f}, {args.size}x{args.size}, batch {args.batch} slices; fast = channels_last'
          + (' + bf16 autocast' + ('' if bf16_supported(device) else ' (emulated: no native bf16 here)') if fast_settings(device, True, args.precision)['amp']
             else ' only' + (' (--precision fp32)' if args.precision == 'fp32' else ' (no native bf16 here)')))
    tmp = Path(tempfile.mkdtemp(prefix='glrp_bench_train_'))
    if args.only_semi:
        bench_semi(args, device, tmp)
        print(f'peak RSS {peak_rss_mib():.0f} MiB; load average at the end: {load_avg()}'); return
    img, lab, pos = phantom_slices(tmp/'speed', 4, args.size)
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(img), generator=g)[:args.batch]
    idx = idx.repeat(-(-args.batch // len(idx)))[:args.batch]
    x, y, p = img[idx].to(device), lab[idx].to(device), pos[idx].to(device)  # augmentation runs on the device, as in training

    paths = [('plain', False, False), ('fast', True, False)] + ([('new', True, True)] if args.compile else [])
    if args.compile: print('new = fast + torch.compile (inductor) of the forward functions; warm-up includes compilation')
    torch.manual_seed(0)
    pre0 = UNet(f=args.f, heads=True)
    def pre_paths():
        out = []
        for name, fast, comp in paths:
            m = deepcopy(pre0)
            out.append(Path_(name, m, torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-5), device, fast, comp, args.precision))
        return out
    gens = {}
    def pstep(P): return pretrain_step(P, x, p, AugParams.contrastive(), gens.setdefault(('pre', P.name), torch.Generator(device).manual_seed(1)))
    print('pretraining step (two views -> encoder + global head -> GLRP contrastive loss -> backward -> SGD):', flush=True)
    t_pre = bench_speed('pretrain', pre_paths, pstep, args, device)
    r_pre = report('pretrain', t_pre, 2 * args.batch, 'view-images')
    print(f'  (slices/s = view-images/s / 2: plain {args.batch / min(t_pre["plain"]):.1f}, fast {args.batch / min(t_pre["fast"]):.1f})')

    def local_paths():  # the previous commit's region pooling ('fast') against today's ('new'), both on the fast path
        out = []
        for name in ('fast', 'new'):
            m = deepcopy(pre0)
            for q in m.encoder.parameters(): q.requires_grad_(False)
            m.train(); m.encoder.eval()
            out.append(Path_(name, m, torch.optim.SGD([q for q in m.parameters() if q.requires_grad], lr=0.1, momentum=0.9), device, True, precision=args.precision))
        return out
    def lstep(P): return local_step(P, x, AugParams.contrastive(), gens.setdefault(('loc', P.name), torch.Generator(device).manual_seed(3)))
    print('local pretraining step (shared-geometry views -> frozen encoder, decoder + local head -> 3 x 3 region means -> local loss -> backward -> SGD);'
          ' fast: region means by slicing (before), new: one product with the region masks:', flush=True)
    t_loc = bench_speed('local', local_paths, lstep, args, device)
    r_loc = report('local', t_loc, 2 * args.batch, 'view-images')

    torch.manual_seed(0)
    seg0 = UNet(f=args.f)
    def seg_paths():
        out = []
        for name, fast, comp in paths:
            m = deepcopy(seg0)
            out.append(Path_(name, m, torch.optim.Adam(m.parameters(), lr=1e-3), device, fast, comp, args.precision))
        return out
    def fstep(P): return finetune_step(P, x, y, AugParams.finetune(), gens.setdefault(('ft', P.name), torch.Generator(device).manual_seed(2)))
    print('fine-tuning step (image + labels -> UNet -> CE + Dice -> backward -> Adam):', flush=True)
    t_ft = bench_speed('finetune', seg_paths, fstep, args, device)
    r_ft = report('finetune', t_ft, args.batch, 'images')
    print(f'peak RSS after the speed runs: {peak_rss_mib():.0f} MiB; load average now: {load_avg()}', flush=True)
    if args.semi: bench_semi(args, device, tmp)

    mode = args.finetune
    if mode == 'auto':
        try:
            import glrp.train  # noqa: F401
            mode = 'engine'
        except ImportError: mode = 'loop'
    res = {}
    if mode != 'none':
        root = write_phantom(tmp/'phantom', n_patients=args.ft_patients, seed=0)
        run = finetune_engine if mode == 'engine' else finetune_loop
        print(f'accuracy: {args.ft_epochs}-epoch fine-tune on phantom patients ({"glrp.train.finetune" if mode == "engine" else "minimal loop"}; '
              f'{args.ft_labeled} labeled, {args.ft_val} validation patients, 2 mm, {args.size}x{args.size}, f={args.f}, batch {args.batch}):', flush=True)
        k = min(args.ft_last, args.ft_epochs)
        for seed in range(args.ft_seeds):
            for name, fast in (('plain', False), ('fast', True)):
                curve, secs = run(root, tmp, args, fast, seed)
                res.setdefault(name, []).append(float(np.mean(curve[-k:])))
                print(f'  seed {seed} {name:5s}: Dice {res[name][-1]:.4f} (mean of the last {k} epochs), {secs:.0f} s of training; '
                      f'per epoch: ' + ' '.join(f'{d:.3f}' for d in curve), flush=True)
        dif = np.array(res['fast']) - np.array(res['plain'])
        n = len(dif)
        print(f'  plain: {np.mean(res["plain"]):.4f}' + (f' +- {np.std(res["plain"], ddof=1):.4f} (sd over seeds)' if n > 1 else '')
              + f'; fast: {np.mean(res["fast"]):.4f}' + (f' +- {np.std(res["fast"], ddof=1):.4f}' if n > 1 else ''))
        d = dif.mean()
        verdict = ('within 0.01' if abs(d) < 0.01 else 'fast path BETTER by more than 0.01' if d > 0 else 'fast path WORSE by more than 0.01')
        print(f'  Dice fast - Dice plain: {d:+.4f} (paired over {n} seed(s): ' + ' '.join(f'{v:+.4f}' for v in dif) + f'): {verdict}')
        if n > 1:
            sd = float(np.std(res['plain'], ddof=1))
            print(f'  seed-to-seed sd of the plain path: {sd:.4f}' + (' (larger than the 0.01 window: at this scale the window is below the seed noise; '
                  'more seeds or a longer fine-tune narrow it)' if sd >= 0.01 else ''))
        else: print('  one seed only: run --ft-seeds 3 or more to see the seed-to-seed noise')
    print(f'summary ({"new / fast" if args.compile else "fast / plain"}): pretrain {r_pre:.2f}x, finetune {r_ft:.2f}x; local stage new / fast {r_loc:.2f}x; '
          f'peak RSS {peak_rss_mib():.0f} MiB; load average at the end: {load_avg()}')

if __name__ == '__main__': main()
