"Augmentation: geometry against exact references, intensity statistics, the three modes, seeding, label safety, batching and speed."
import math, os, time
from dataclasses import replace
import pytest
import torch
import torch.nn.functional as F
import glrp.augment as A
from glrp.augment import (AugParams, random_affine, identity_affine, random_displacement, apply_geometry,
                          apply_intensity, augment, two_views, augment_pair)

STILL = AugParams(flip=0., rot=0., scale=(1, 1), translate=0.)  # identity geometry, default intensity
PRESETS = {'default': AugParams(), 'contrastive': AugParams.contrastive(), 'finetune': AugParams.finetune(),
           'crop+elastic': AugParams(crop=(48, 40), elastic=3.)}

def gen(seed=0): return torch.Generator().manual_seed(seed)

def blobs(b=6, h=64, w=64, seed=0):
    "Images and labels: per sample a disk (3), a ring (2) and an ellipse (1) at random places, on noise."
    g = gen(seed)
    yy, xx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing='ij')
    c = torch.rand(b, 2, generator=g) * 20 + torch.tensor([h/2 - 10, w/2 - 10])
    r = ((yy - c[:, 0, None, None])**2 + (xx - c[:, 1, None, None])**2).sqrt()
    lab = torch.zeros(b, h, w, dtype=torch.long)
    lab[((yy - c[:, 0, None, None])/8)**2 + ((xx - c[:, 1, None, None] + 16)/12)**2 < 1] = 1
    lab[r < 12] = 2; lab[r < 8] = 3
    img = torch.tensor([0., 1.5, 0.3, 2.])[lab] + 0.1*torch.randn(b, h, w, generator=g)
    return ((img - img.mean()) / img.std())[:, None], lab

# ---------- parameters ----------
def test_params_validation_and_presets():
    assert AugParams(crop=32).crop == (32, 32)
    assert AugParams.finetune().flip == 0. and AugParams.contrastive().rot > AugParams.finetune().rot
    assert AugParams.contrastive(noise=0.).noise == 0.
    g = AugParams.contrastive().geometry_only()
    assert (g.brightness, g.contrast, g.gamma, g.noise) == ((0., 0.), (1., 1.), (1., 1.), 0.) and g.rot == 30.
    i = AugParams.contrastive().intensity_only()
    assert (i.flip, i.rot, i.scale, i.translate, i.elastic, i.crop) == (0., 0., (1., 1.), 0., 0., None)
    for bad, msg in [(dict(scale=(1.2, 0.8)), 'scale must be'), (dict(flip=1.5), 'probability'), (dict(gamma=(0., 1.)), 'positive'),
                     (dict(rot=-1), '>= 0'), (dict(elastic_sigma=0), 'elastic_sigma'), (dict(crop=(0, 4)), 'crop must be')]:
        with pytest.raises(ValueError, match=msg): AugParams(**bad)

# ---------- geometry ----------
def test_identity_crop_flip_rot90_are_exact():
    g = gen()
    x = torch.randn(5, 2, 12, 16, generator=g)
    assert torch.allclose(apply_geometry(x, identity_affine(5)), x, atol=1e-5)
    th = random_affine(5, replace(STILL, crop=(7, 9)), g, size=(12, 16))
    y = apply_geometry(x, th, size=(7, 9))
    for i in range(5):
        oy, ox = float(th[i, 1, 2]) * 6 + (12 - 7) / 2, float(th[i, 0, 2]) * 8 + (16 - 9) / 2
        assert abs(oy - round(oy)) < 1e-4 and abs(ox - round(ox)) < 1e-4  # whole-pixel offsets
        assert torch.allclose(y[i], x[i, :, round(oy):round(oy)+7, round(ox):round(ox)+9], atol=1e-5)
    assert torch.allclose(apply_geometry(x, random_affine(5, replace(STILL, flip=1.), g, size=(12, 16))), x.flip(-1, -2), atol=1e-5)
    sq = torch.randn(3, 1, 10, 10, generator=g)
    assert torch.allclose(apply_geometry(sq, torch.tensor([[[0., -1, 0], [1, 0, 0]]]).expand(3, 2, 3)), sq.rot90(1, (-2, -1)), atol=1e-5)

def test_crop_offsets_cover_the_whole_range():
    th = random_affine(4000, replace(STILL, crop=(4, 6)), gen(), size=(8, 8))
    oy, ox = (th[:, 1, 2] * 4 + 2).round(), (th[:, 0, 2] * 4 + 1).round()
    assert set(oy.tolist()) == {0., 1., 2., 3., 4.} and set(ox.tolist()) == {0., 1., 2.}

@pytest.mark.parametrize('size', [(64, 64), (48, 128)])
def test_affine_is_rigid_in_pixels_and_within_ranges(size):
    H, W = size
    p = AugParams(flip=0.5, rot=25., scale=(0.8, 1.25), translate=0.1)
    th = random_affine(2000, p, gen(), size=size)
    D = torch.diag(torch.tensor([W/2, H/2]))
    M = D @ th[:, :, :2] @ torch.linalg.inv(D)  # output pixel -> input pixel, linear part = R F / s
    s = 1 / M[:, 0].norm(dim=1)
    assert torch.allclose(M[:, 1].norm(dim=1), 1 / s, atol=1e-5)  # same scale on both axes
    assert torch.allclose((M[:, 0] * M[:, 1]).sum(1), torch.zeros(2000), atol=1e-5)  # orthogonal: rigid on non-square images
    assert s.min() >= 0.8 - 1e-5 and s.max() <= 1.25 + 1e-5 and s.max() - s.min() > 0.3
    det = torch.linalg.det(M)
    assert 0.35 < (det < 0).float().mean() < 0.65  # one flip (det < 0) half of the time: p(x xor y flip) = 0.5
    shift = th[:, :, 2] * torch.tensor([W/2, H/2])
    assert shift[:, 0].abs().max() <= 0.1 * W + 1e-3 and shift[:, 1].abs().max() <= 0.1 * H + 1e-3
    rot_only = random_affine(2000, replace(STILL, rot=25.), gen(1), size=size)
    a = torch.rad2deg(torch.atan2((D @ rot_only[:, :, :2] @ torch.linalg.inv(D))[:, 1, 0], (D @ rot_only[:, :, :2] @ torch.linalg.inv(D))[:, 0, 0]))
    assert a.abs().max() <= 25 + 1e-3 and a.max() > 20 and a.min() < -20

def test_elastic_field_strength_and_no_weak_border():
    d = random_displacement(64, (128, 96), AugParams(elastic=3., elastic_sigma=10.), gen())
    assert d.shape == (64, 128, 96, 2)
    px = d * torch.tensor([96/2, 128/2])  # normalised -> pixels
    assert 2.5 < px.std() < 3.3
    assert 0.85 < px[:, :16].std() / px[:, 56:72].std() < 1.15
    nb = px[:, 1:] - px[:, :-1]  # smooth: neighbouring displacements differ far less than the field itself
    assert nb.std() < 0.2 * px.std()
    assert random_displacement(4, (8, 8), AugParams()) is None

def test_elastic_moves_pixels_but_keeps_the_picture():
    "A 2-pixel elastic field moves boundaries by a pixel or two: most labels stay, some move."
    _, lab = blobs(4)
    y = apply_geometry(lab[:, None].float(), identity_affine(4), 'nearest', disp=random_displacement(4, (64, 64), AugParams(elastic=2.), gen()),
                       padding='border')[:, 0]
    same = (y == lab).float().mean().item()
    assert 0.85 < same < 0.995

# ---------- intensity ----------
def test_intensity_statistics():
    g = gen()
    x = torch.randn(16, 1, 32, 32, generator=g) * 1.3 - 0.4
    assert torch.equal(apply_intensity(x, AugParams().geometry_only(), g), x)  # all off: bit for bit
    off = dict(brightness=(0., 0.), contrast=(1., 1.), gamma=(1., 1.), noise=0.)
    gam = apply_intensity(x, AugParams(**{**off, 'gamma': (0.5, 2.)}), g)
    assert torch.isfinite(gam).all() and not torch.allclose(gam, x)
    assert torch.allclose(gam.amin((1, 2, 3)), x.amin((1, 2, 3)), atol=1e-5) and torch.allclose(gam.amax((1, 2, 3)), x.amax((1, 2, 3)), atol=1e-5)
    # gamma is monotone per sample: ranks kept
    assert all(torch.equal(gam[i].flatten().argsort(stable=True), x[i].flatten().argsort(stable=True)) for i in range(16))
    con = apply_intensity(x, AugParams(**{**off, 'contrast': (0.5, 2.)}), g)
    ratio = con.std((1, 2, 3)) / x.std((1, 2, 3))
    assert torch.allclose(con.mean((1, 2, 3)), x.mean((1, 2, 3)), atol=1e-5)
    assert ratio.min() >= 0.5 - 1e-4 and ratio.max() <= 2 + 1e-4 and ratio.std() > 0.1
    bri = apply_intensity(x, AugParams(**{**off, 'brightness': (-0.3, 0.3)}), g) - x
    assert torch.allclose(bri, bri.mean((1, 2, 3), keepdim=True).expand_as(bri), atol=1e-5)  # one constant per sample
    assert bri.abs().max() <= 0.3 + 1e-5 and bri.mean((1, 2, 3)).std() > 0.05
    noi = apply_intensity(x, AugParams(**{**off, 'noise': 0.2}), g) - x
    sd = noi.std((1, 2, 3))
    assert sd.max() <= 0.2 * 1.1 and sd.min() >= 0 and sd.std() > 0.02  # each sample its own std in [0, 0.2]

def test_intensity_is_per_sample_and_independent_of_batch_neighbours():
    x, _ = blobs(8)
    y = apply_intensity(x, AugParams.contrastive(noise=0.), gen(3))
    y2 = apply_intensity(torch.cat([x[:4], torch.zeros_like(x[4:])]), AugParams.contrastive(noise=0.), gen(3))
    assert torch.allclose(y[:4], y2[:4], atol=1e-5)  # a sample's result does not depend on the others in the batch

# ---------- the three modes ----------
@pytest.mark.parametrize('name', list(PRESETS))
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64, torch.bfloat16])
def test_shapes_dtypes_devices_preserved(name, dtype):
    p = PRESETS[name]
    x, lab = blobs(5)
    x = x.to(dtype)
    out = p.crop or (64, 64)
    for v in (*two_views(x, p, gen()), *two_views(x, p, gen(), shared_geometry=True), augment(x, p, gen())):
        assert v.shape == (5, 1, *out) and v.dtype == dtype and v.device == x.device and torch.isfinite(v.float()).all()
    for ld in (torch.long, torch.uint8, torch.int32):
        for mode in ('nearest', 'onehot'):
            im, lb = augment_pair(x, lab.to(ld), p, gen(), label_mode=mode)
            assert im.shape == (5, 1, *out) and im.dtype == dtype
            assert lb.shape == (5, *out) and lb.dtype == ld and lb.device == lab.device

@pytest.mark.parametrize('name', list(PRESETS))
def test_deterministic_under_seed(name):
    p = PRESETS[name]
    x, lab = blobs(6)
    for fn in (lambda g: two_views(x, p, g), lambda g: two_views(x, p, g, shared_geometry=True),
               lambda g: augment_pair(x, lab, p, g), lambda g: augment_pair(x, lab, p, g, label_mode='onehot')):
        a, b, c = fn(gen(11)), fn(gen(11)), fn(gen(12))
        assert all(torch.equal(u, v) for u, v in zip(a, b))
        assert not torch.equal(a[0], c[0])
    torch.manual_seed(5); a = augment(x, p)
    torch.manual_seed(5); b = augment(x, p)
    assert torch.equal(a, b)  # generator=None: torch's global generator, seeded by torch.manual_seed

def coords(b=4, h=56, w=64):
    "Images whose value is the pixel's index: a geometry probe."
    return (torch.arange(h * w, dtype=torch.float32).view(1, 1, h, w) / (h * w)).expand(b, 1, h, w).clone()

@pytest.mark.parametrize('name', list(PRESETS))
def test_shared_geometry_views_have_identical_geometry(name):
    p = PRESETS[name]
    x = coords()
    s1, s2 = two_views(x, p.geometry_only(), gen(), shared_geometry=True)
    assert torch.equal(s1, s2)
    # with intensity on (no noise) the second view is a monotone function of the first, sample by sample
    v1, v2 = two_views(x, replace(p, noise=0.), gen(), shared_geometry=True)
    assert not torch.allclose(v1, v2, atol=1e-3)
    for i in range(len(x)):
        o = v1[i].flatten().argsort()
        assert (v2[i].flatten()[o].diff() >= -1e-5).all()
    # independent views: different geometry
    i1, i2 = two_views(x, p.geometry_only(), gen())
    assert all(not torch.allclose(i1[i], i2[i], atol=1e-3) for i in range(len(x)))

def test_independent_views_differ():
    x, _ = blobs(8)
    v1, v2 = two_views(x, AugParams.contrastive(), gen())
    assert ((v1 - v2).flatten(1).abs().mean(1) > 0.05).all()

@pytest.mark.parametrize('mode', ['nearest', 'onehot'])
@pytest.mark.parametrize('name', list(PRESETS))
def test_labels_never_gain_values(mode, name):
    p = PRESETS[name]
    x, lab = blobs(8)
    for seed in range(3):
        im, lb = augment_pair(x, lab, p, gen(seed), label_mode=mode)
        assert set(lb.unique().tolist()) <= set(lab.unique().tolist())
    # labels without background and without class 2, border padding: strictly a subset, nothing from outside
    lab2 = torch.where(lab == 2, 3, lab).clamp_min(1)
    _, lb2 = augment_pair(x, lab2, p, gen(), label_mode=mode, padding='border')
    assert set(lb2.unique().tolist()) <= {1, 3}
    # random label noise (every pixel a boundary) in 5 classes
    rnd = torch.randint(0, 5, (4, 64, 64), generator=gen(9))
    rnd[rnd == 3] = 4
    _, lb3 = augment_pair(x[:4], rnd, p, gen(), label_mode=mode, padding='border')
    assert set(lb3.unique().tolist()) <= {0, 1, 2, 4}

def test_labels_follow_the_image():
    "The image's bright disk (class 3) lands where the labels say, in both label modes, and the two modes agree."
    x, lab = blobs(8)
    p = AugParams.finetune(rot=30., elastic=2.).geometry_only()
    im_n, lb_n = augment_pair(x, lab, p, gen(4), label_mode='nearest')
    im_o, lb_o = augment_pair(x, lab, p, gen(4), label_mode='onehot')
    assert torch.equal(im_n, im_o)
    assert (lb_n == lb_o).float().mean() > 0.97
    bright = im_n[:, 0] > (im_n[:, 0][lb_n == 3].mean() + im_n[:, 0][lb_n == 1].mean()) / 2
    inter = (bright & (lb_n == 3)).sum().item(); dice = 2 * inter / (bright.sum().item() + (lb_n == 3).sum().item())
    assert dice > 0.9

def test_bad_inputs():
    x, lab = blobs(2)
    with pytest.raises(ValueError, match='integers'): augment_pair(x, lab.float(), AugParams())
    with pytest.raises(ValueError, match=r'\[B, H, W\]'): augment_pair(x, lab[:, :10], AugParams())
    with pytest.raises(ValueError, match='label_mode'): augment_pair(x, lab, AugParams(), label_mode='linear')
    with pytest.raises(ValueError, match='theta'): apply_geometry(x, identity_affine(3))
    with pytest.raises(ValueError, match=r'\[B, C, H, W\]'): apply_geometry(x[0], identity_affine(1))
    with pytest.raises(ValueError, match='needs the input size'): random_affine(2, AugParams(crop=8))
    with pytest.raises(ValueError, match='larger than the input'): two_views(x, AugParams(crop=128), gen())

# ---------- memory format, batching, speed ----------
def test_channels_last_input():
    x, lab = blobs(4)
    x3 = x.expand(4, 3, 64, 64).contiguous()
    xc = x3.contiguous(memory_format=torch.channels_last)
    th = random_affine(4, AugParams.contrastive(), gen(), size=(64, 64))
    a, b = apply_geometry(x3, th), apply_geometry(xc, th)
    assert b.is_contiguous(memory_format=torch.channels_last) and not b.is_contiguous()
    assert torch.allclose(a, b, atol=1e-5)
    for p in (AugParams.contrastive(), AugParams(crop=(32, 48))):
        r = augment(xc, p, gen(2))
        assert r.is_contiguous(memory_format=torch.channels_last) and torch.allclose(r, augment(x3, p, gen(2)), atol=1e-5)
    x1 = x.contiguous(memory_format=torch.channels_last)  # one channel: both layouts at once
    assert all(torch.equal(u, v) for u, v in zip(two_views(x1, AugParams.contrastive(), gen()), two_views(x, AugParams.contrastive(), gen())))
    im, lb = augment_pair(x1, lab, AugParams.finetune(), gen())
    assert im.shape == x.shape and lb.shape == lab.shape

def test_one_grid_sample_per_batch(monkeypatch):
    "No per-sample loop: a batch of 64 costs one grid_sample call per view (two for image + labels)."
    calls = []
    real = F.grid_sample
    monkeypatch.setattr(A.F, 'grid_sample', lambda inp, *a, **k: (calls.append(inp.shape[0]), real(inp, *a, **k))[1])
    x, lab = blobs(64, 32, 32)
    two_views(x, AugParams.contrastive(), gen()); assert calls == [64, 64]
    calls.clear(); two_views(x, AugParams.contrastive(), gen(), shared_geometry=True); assert calls == [64]
    calls.clear(); augment_pair(x, lab, AugParams.finetune(), gen(), label_mode='onehot'); assert calls == [64, 64]

def test_speed_64x128x128():
    "Prints the time of the three modes on a 64x1x128x128 batch (not asserted tightly: the machine is shared)."
    x, lab = blobs(64, 128, 128)
    g = gen()
    cases = [('two_views default', lambda: two_views(x, AugParams(), g)),
             ('two_views contrastive (elastic)', lambda: two_views(x, AugParams.contrastive(), g)),
             ('two_views shared geometry', lambda: two_views(x, AugParams.contrastive(), g, shared_geometry=True)),
             ('augment_pair finetune onehot', lambda: augment_pair(x, lab, AugParams.finetune(), g, label_mode='onehot'))]
    threads, worst = torch.get_num_threads(), 0.
    print(f'\n64x1x128x128 (load average {", ".join(f"{l:.2f}" for l in os.getloadavg())}):')
    try:
        for nt in sorted({1, threads}):
            torch.set_num_threads(nt)
            for name, fn in cases:
                fn()
                t = time.perf_counter()
                for _ in range(3): fn()
                dt = (time.perf_counter() - t) / 3
                worst = max(worst, dt)
                print(f'  {nt} thread(s), {name}: {dt*1000:.0f} ms')
    finally: torch.set_num_threads(threads)
    assert worst < 5.  # loose: a per-sample Python loop would not fail this, the grid_sample count test does

@pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device on this machine (the CUDA path is untested here)')
def test_cuda_matches_cpu():
    x, lab = blobs(8)
    p = AugParams.contrastive(noise=0., elastic=0.)
    th = random_affine(8, p, gen(), size=(64, 64))
    assert torch.allclose(apply_geometry(x.cuda(), th.cuda()).cpu(), apply_geometry(x, th), atol=1e-4)
    a = two_views(x.cuda(), p, gen())  # CPU generator, GPU batch: draws moved to the GPU
    b = two_views(x, p, gen())
    assert all(u.device.type == 'cuda' and torch.allclose(u.cpu(), v, atol=1e-3) for u, v in zip(a, b))
    gc = torch.Generator('cuda').manual_seed(0)
    v1, v2 = two_views(x.cuda(), AugParams.contrastive(), gc)
    im, lb = augment_pair(x.cuda(), lab.cuda(), AugParams.finetune(), gc, label_mode='onehot')
    assert v1.is_cuda and lb.is_cuda and set(lb.unique().tolist()) <= set(lab.unique().tolist())
