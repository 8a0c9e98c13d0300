"Losses: the weighted contrastive core against loop references (formula, SupCon, NT-Xent), weights per method, local and segmentation losses, numerics."
import math
import pytest
import torch
import torch.nn.functional as F
from glrp.losses import (contrastive_loss, simclr_weights, gcl_weights, pcl_weights, glrp_weights, positive_weights,
                         region_boxes, region_features, local_loss, soft_dice, seg_loss, METHODS)

# ---------- loop references ----------
def formula_loop(feats, W, T):
    "L_a = -sum_k W_ak log softmax_{j != a}(s_aj / T)[k] / sum_k W_ak, mean over anchors with positives."
    N, V, _ = feats.shape
    z = [F.normalize(feats[i, v].double(), dim=0) for v in range(V) for i in range(N)]
    sl = [i for v in range(V) for i in range(N)]
    tot, cnt = 0., 0
    for a in range(V*N):
        ks = [k for k in range(V*N) if k != a]
        sims = {k: float(z[a] @ z[k]) / T for k in ks}
        lse = math.log(sum(math.exp(s) for s in sims.values()))
        wsum = sum(float(W[sl[a], sl[k]]) for k in ks)
        if wsum == 0: continue
        tot += -sum(float(W[sl[a], sl[k]]) * (sims[k] - lse) for k in ks) / wsum
        cnt += 1
    return tot / cnt

def supcon_loop(feats, labels_mask, T, base_T):
    "Khosla et al.'s SupConLoss (contrast_mode='all'), as PCL uses it, written with loops."
    N, V, _ = feats.shape
    z = F.normalize(feats.double(), dim=-1)
    out = []
    for v in range(V):
        for i in range(N):
            logits = {(u, j): float(z[i, v] @ z[j, u]) / T for u in range(V) for j in range(N) if (u, j) != (v, i)}
            mx = max(logits.values())
            log_den = math.log(sum(math.exp(l - mx) for l in logits.values()))
            pos = [k for k in logits if labels_mask[i, k[1]]]
            out.append(-(T / base_T) * sum(logits[k] - mx - log_den for k in pos) / len(pos))
    return sum(out) / len(out)

def ntxent_loop(feats, T):
    "SimCLR's NT-Xent: each view's positive is the other view of its slice."
    N = feats.shape[0]
    z = F.normalize(torch.cat([feats[:, 0], feats[:, 1]]).double(), dim=-1)
    tot = 0.
    for a in range(2*N):
        pos = (a + N) % (2*N)
        num = math.exp(float(z[a] @ z[pos]) / T)
        den = sum(math.exp(float(z[a] @ z[k]) / T) for k in range(2*N) if k != a)
        tot += -math.log(num / den)
    return tot / (2*N)

# ---------- core ----------
@pytest.mark.parametrize('T', [0.1, 0.5, 1.0])
def test_core_matches_formula_loop(T):
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(7, 2, 5, generator=g)
    W = torch.rand(7, 7, generator=g); W = (W + W.T) / 2; W.fill_diagonal_(1.)
    W[0, 3] = 0.  # asymmetric weights are allowed
    assert contrastive_loss(feats, W, T=T).item() == pytest.approx(formula_loop(feats, W, T), rel=1e-5, abs=1e-5)

@pytest.mark.parametrize('T', [0.07, 0.1, 0.5])
def test_core_equals_supcon_with_01_weights(T):
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(10, 2, 16, generator=g)
    p = torch.rand(10, generator=g)
    W = pcl_weights(p, 0.35)
    assert contrastive_loss(feats, W, T=T).item() == pytest.approx(supcon_loop(feats, W > 0, T, base_T=T), rel=1e-5, abs=1e-5)
    lab = torch.randint(0, 3, (10,), generator=g)  # class-label SupCon too
    Wl = (lab[:, None] == lab[None]).float()
    assert contrastive_loss(feats, Wl, T=T).item() == pytest.approx(supcon_loop(feats, Wl > 0, T, base_T=T), rel=1e-5, abs=1e-5)

@pytest.mark.parametrize('base_T', [0.07, 0.1, 0.2])
def test_pcl_protocol_loss_equals_supcon_with_its_scale(base_T):
    "PCL's SupConLoss keeps base_temperature = 0.07 while T = 0.1: the core reproduces it, factor T / base_T included (fp64)."
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(12, 2, 16, generator=g, dtype=torch.float64)
    p = torch.tensor([(i % 7 + 1) / 7 for i in range(12)], dtype=torch.float64)  # PCL's positions of Z = 7
    W = pcl_weights(p, 0.35)
    got = contrastive_loss(feats, W, T=0.1, base_temperature=base_T).item()
    assert abs(got - supcon_loop(feats, W > 0, 0.1, base_T=base_T)) < 1e-10
    assert abs(got / contrastive_loss(feats, W, T=0.1).item() - 0.1 / base_T) < 1e-12

def test_identity_weights_is_ntxent():
    feats = torch.randn(6, 2, 8, generator=torch.Generator().manual_seed(2))
    for T in (0.1, 0.3):
        assert contrastive_loss(feats, torch.eye(6), T=T).item() == pytest.approx(ntxent_loop(feats, T), rel=1e-5)
    assert contrastive_loss(feats, simclr_weights(6)).item() == pytest.approx(ntxent_loop(feats, 0.1), rel=1e-5)

def test_ntxent_by_hand():
    hand = torch.tensor([[[1., 0.], [1., 0.]], [[0., 1.], [0., 1.]]])
    assert contrastive_loss(hand, torch.eye(2), T=1.).item() == pytest.approx(math.log(1 + 2/math.e), rel=1e-6)
    # T = 0.5: the other view at exp(2), two orthogonal candidates at exp(0)
    assert contrastive_loss(hand, torch.eye(2), T=.5).item() == pytest.approx(math.log(1 + 2*math.exp(-2)), rel=1e-6)

def test_orthogonal_identical_views_beat_random():
    ortho = torch.eye(8)[:, None].repeat(1, 2, 1)
    rnd = torch.randn(8, 2, 8, generator=torch.Generator().manual_seed(3))
    assert contrastive_loss(ortho, torch.eye(8)) < contrastive_loss(rnd, torch.eye(8))
    # closed form: every anchor sees its view at cosine 1 and 2(N-1) candidates at cosine 0
    N, T = 8, 0.1
    expected = -math.log(math.exp(1/T) / (math.exp(1/T) + 2*(N-1)))
    assert contrastive_loss(ortho, torch.eye(8), T=T).item() == pytest.approx(expected, abs=1e-6)

def test_invariances():
    g = torch.Generator().manual_seed(4)
    feats, p = torch.randn(6, 2, 8, generator=g), torch.rand(6, generator=g)
    W = glrp_weights(p)
    base = contrastive_loss(feats, W)
    assert torch.allclose(contrastive_loss(feats * 7.3, W), base, atol=1e-5)  # cosine: scale-free
    assert torch.allclose(contrastive_loss(feats, W * 4.), base, atol=1e-5)  # weights are normalised per anchor
    perm = torch.randperm(6, generator=g)
    assert torch.allclose(contrastive_loss(feats[perm], W[perm][:, perm]), base, atol=1e-5)
    assert torch.allclose(contrastive_loss(feats.flip(1), W), base, atol=1e-5)  # view order

def test_anchor_subsets_average_to_full_batch():
    g = torch.Generator().manual_seed(5)
    feats, p = torch.randn(8, 2, 8, generator=g), torch.rand(8, generator=g)
    W = glrp_weights(p)
    parts = [contrastive_loss(feats, W, anchors=torch.arange(4*r, 4*r+4)) for r in range(2)]
    assert torch.allclose(sum(parts) / 2, contrastive_loss(feats, W), atol=1e-6)

def test_anchor_without_positive_is_excluded():
    feats = torch.randn(4, 2, 8, generator=torch.Generator().manual_seed(6))
    W = torch.eye(4); W[2, 2] = 0.
    assert contrastive_loss(feats, W).item() == pytest.approx(formula_loop(feats, W, 0.1), rel=1e-5)
    zero = contrastive_loss(feats.requires_grad_(), torch.zeros(4, 4))
    assert zero.item() == 0. and zero.requires_grad

def test_core_input_errors():
    f = torch.randn(4, 2, 8)
    with pytest.raises(ValueError, match=r'W must be \[N, N\]'): contrastive_loss(f, torch.eye(3))
    with pytest.raises(ValueError, match=r'feats must be \[N, V, d\]'): contrastive_loss(f[0], torch.eye(4))
    with pytest.raises(ValueError, match='negative'): contrastive_loss(f, -torch.eye(4))

def test_gradients_finite():
    feats = torch.randn(8, 2, 16, requires_grad=True)
    p = torch.rand(8)
    for m in METHODS:
        feats.grad = None
        contrastive_loss(feats, positive_weights(m, p=p, part=(p*4).long())).backward()
        assert feats.grad.isfinite().all() and feats.grad.abs().sum() > 0, m

def test_stable_large_logits_and_small_T():
    feats = torch.randn(6, 2, 8) * 1e4
    for T in (0.01, 0.001):
        l = contrastive_loss(feats, torch.eye(6), T=T)
        assert l.isfinite()
    same = torch.ones(4, 2, 8)  # all identical: every similarity equal
    assert contrastive_loss(same, torch.eye(4)).item() == pytest.approx(math.log(7), rel=1e-5)

def test_bf16_autocast_close_to_fp32():
    torch.manual_seed(7)
    lin = torch.nn.Linear(12, 32)
    x = torch.randn(8, 2, 12)
    W = pcl_weights(torch.tensor([0.02, 0.98, 0.5, 0.52, 0.48, 0.55, 0.45, 0.6]))
    assert W[0].sum() == 1 and W[1].sum() == 1  # anchors whose only positive is the other view
    with torch.autocast('cpu', dtype=torch.bfloat16):
        e = lin(x)
        lb = contrastive_loss(e, W)
    assert e.dtype == torch.bfloat16 and lb.dtype == torch.float32
    lf = contrastive_loss(lin(x), W)
    assert lb.isfinite() and abs(lb.item() - lf.item()) < 0.05
    lb.backward()
    assert lin.weight.grad.isfinite().all()

# ---------- weights ----------
def test_weights_per_method():
    p = torch.tensor([0.05, 0.2, 0.3, 0.6, 0.9])
    part = (p * 4).floor().long()
    vol = torch.tensor([0, 0, 1, 1, 2])
    assert torch.equal(simclr_weights(5), torch.eye(5))
    G = gcl_weights(part)
    for i in range(5):
        for j in range(5):
            assert G[i, j] == float(part[i] == part[j])
    Gx = gcl_weights(part, vol=vol, same_volume=False)
    assert Gx[0, 1] == 0 and Gx[0, 0] == 1  # same partition, same volume: not a positive in the strict reading
    P = pcl_weights(p, threshold=0.35)
    for i in range(5):
        for j in range(5):
            assert P[i, j] == float(abs(p[i] - p[j]) < 0.35)
    T_ = glrp_weights(p, tau=0.35)
    for i in range(5):
        for j in range(5):
            want = 1. if i == j else max(0., 1 - abs(float(p[i] - p[j])) / 0.35)
            assert T_[i, j].item() == pytest.approx(want, abs=1e-6)
    Ga = glrp_weights(p, kernel='gaussian', sigma=0.1)
    assert Ga[0, 1].item() == pytest.approx(math.exp(-0.15**2 / (2*0.01)), rel=1e-5)
    assert glrp_weights(p, kernel='gaussian', tau=0.4)[0, 1].item() == pytest.approx(math.exp(-0.15**2 / (2*0.2**2)), rel=1e-5)
    for W in (G, Gx, P, T_, Ga): assert torch.equal(W.diagonal(), torch.ones(5))

def test_pcl_is_glrp_hard_kernel():
    p = torch.rand(32, generator=torch.Generator().manual_seed(8))
    for thr in (0.1, 0.35, 0.6):
        assert torch.equal(pcl_weights(p, thr), glrp_weights(p, tau=thr, kernel='hard'))
        assert torch.equal(positive_weights('pcl', p=p, threshold=thr), positive_weights('glrp', p=p, tau=thr, kernel='hard'))

def test_tent_between_simclr_and_pcl():
    p = torch.rand(16, generator=torch.Generator().manual_seed(9))
    T_, P = glrp_weights(p), pcl_weights(p)
    assert (T_ <= P).all() and (T_ >= torch.eye(16)).all()

def test_positive_weights_errors():
    with pytest.raises(ValueError, match="unknown method 'byol'"): positive_weights('byol', p=torch.rand(3))
    with pytest.raises(ValueError, match="'gcl' needs `part`"): positive_weights('gcl', p=torch.rand(3))
    with pytest.raises(ValueError, match="'simclr' needs one of"): positive_weights('simclr')
    with pytest.raises(ValueError, match="unknown kernel"): glrp_weights(torch.rand(3), kernel='box')
    with pytest.raises(ValueError, match='needs the volume ids'): pcl_weights(torch.rand(3), same_volume=False)
    assert torch.equal(positive_weights('simclr', p=torch.rand(3)), torch.eye(3))

# ---------- local ----------
def local_loop(proj, W, k, size, T):
    N, V, d, h, w = proj.shape
    side = size or min(h, w) // k
    ys = [round((h - side) * i / (k - 1)) if k > 1 else 0 for i in range(k)]
    xs = [round((w - side) * i / (k - 1)) if k > 1 else 0 for i in range(k)]
    boxes = [(y, x) for y in ys for x in xs]
    R = len(boxes)
    rows = torch.zeros(N*R, V, d)
    for i in range(N):
        for q, (y, x) in enumerate(boxes):
            for v in range(V):
                acc = torch.zeros(d)
                for yy in range(y, y + side):
                    for xx in range(x, x + side): acc += proj[i, v, :, yy, xx]
                rows[i*R + q, v] = acc / side**2
    Wr = torch.zeros(N*R, N*R)
    for a in range(N*R):
        for b in range(N*R):
            if a % R == b % R: Wr[a, b] = W[a // R, b // R]
    return formula_loop(rows, Wr, T)

@pytest.mark.parametrize('k,size', [(2, 3), (3, None), (2, 8)])
def test_local_matches_loop(k, size):
    g = torch.Generator().manual_seed(10)
    proj = torch.randn(3, 2, 4, 8, 8, generator=g)
    W = glrp_weights(torch.tensor([0.1, 0.2, 0.7]))
    assert local_loss(proj, W, n_regions=k, size=size).item() == pytest.approx(local_loop(proj, W, k, size, 0.1), rel=1e-4)
    assert local_loss(proj, None, n_regions=k, size=size).item() == pytest.approx(local_loop(proj, torch.eye(3), k, size, 0.1), rel=1e-4)

def test_region_boxes_and_features():
    assert region_boxes(12, 12, 3) == [(y, x, 4) for y in (0, 4, 8) for x in (0, 4, 8)]  # exact tiling
    assert region_boxes(10, 20, 2, 5) == [(0, 0, 5), (0, 15, 5), (5, 0, 5), (5, 15, 5)]
    m = torch.arange(2*12*12, dtype=torch.float32).view(1, 2, 12, 12)
    r = region_features(m, 3)
    assert r.shape == (1, 9, 2)
    assert r[0, 4, 0].item() == pytest.approx(m[0, 0, 4:8, 4:8].mean().item())
    with pytest.raises(ValueError, match='region size 13 does not fit a 12x12 map'): region_boxes(12, 12, 2, 13)

def test_local_behaviour_and_grads():
    torch.manual_seed(11)
    # views that agree region by region beat independent views
    base = torch.randn(4, 1, 8, 12, 12)
    agree = base.repeat(1, 2, 1, 1, 1)
    indep = torch.randn(4, 2, 8, 12, 12)
    assert local_loss(agree, n_regions=3) < local_loss(indep, n_regions=3)
    conv = torch.nn.Conv2d(3, 8, 1)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        pm = conv(torch.randn(8, 3, 12, 12)).view(4, 2, 8, 12, 12)
        l = local_loss(pm, glrp_weights(torch.rand(4)))
    assert l.dtype == torch.float32 and l.isfinite()
    l.backward()
    assert conv.weight.grad.isfinite().all() and conv.weight.grad.abs().sum() > 0

def test_local_anchor_hook():
    proj = torch.randn(4, 2, 4, 8, 8)
    W = glrp_weights(torch.rand(4))
    halves = [local_loss(proj, W, 2, anchors=torch.arange(2*r, 2*r+2)) for r in range(2)]
    assert torch.allclose(sum(halves) / 2, local_loss(proj, W, 2), atol=1e-6)

# ---------- segmentation ----------
def dice_loop(logits, target, smooth):
    prob = logits.double().softmax(1)
    B, C, H, W = prob.shape
    out = []
    for c in range(1, C):
        inter = ps = gs = 0.
        for b in range(B):
            for y in range(H):
                for x in range(W):
                    g = float(target[b, y, x] == c); pv = float(prob[b, c, y, x])
                    inter += pv * g; ps += pv; gs += g
        out.append((2*inter + smooth) / (ps + gs + smooth))
    return out

def test_soft_dice_and_seg_loss_match_loops():
    g = torch.Generator().manual_seed(12)
    lg = torch.randn(2, 4, 6, 6, generator=g)
    tgt = torch.randint(0, 4, (2, 6, 6), generator=g)
    for smooth in (1e-5, 1.):
        ref = dice_loop(lg, tgt, smooth)
        assert soft_dice(lg, tgt, smooth=smooth).tolist() == pytest.approx(ref, rel=1e-5)
    ce = sum(-float(lg[b, :, y, x].log_softmax(0)[tgt[b, y, x]]) for b in range(2) for y in range(6) for x in range(6)) / 72
    ref = dice_loop(lg, tgt, 1e-5)
    want = 0.7*ce + 1.5*(1 - sum(ref) / 3)
    assert seg_loss(lg, tgt, ce_weight=0.7, dice_weight=1.5).item() == pytest.approx(want, rel=1e-5)
    per_image = soft_dice(lg, tgt, batch_dice=False)
    refs = [dice_loop(lg[b:b+1], tgt[b:b+1], 1e-5) for b in range(2)]
    assert per_image.tolist() == pytest.approx([(a + b) / 2 for a, b in zip(*refs)], rel=1e-5)
    assert soft_dice(lg, tgt, include_background=True).shape == (4,)

def test_seg_loss_behaviour():
    tgt = torch.zeros(2, 8, 8, dtype=torch.long); tgt[:, 2:6, 2:6] = 1; tgt[0, 3:5, 3:5] = 2
    perfect = F.one_hot(tgt, 4).permute(0, 3, 1, 2).float() * 30
    assert seg_loss(perfect, tgt).item() == pytest.approx(0., abs=1e-4)  # absent class 3: Dice 1 via smooth
    lg = torch.randn(2, 4, 8, 8, requires_grad=True)
    l = seg_loss(lg, tgt)
    assert l > seg_loss(perfect, tgt)
    l.backward()
    assert lg.grad.isfinite().all()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        lb = seg_loss(lg.bfloat16(), tgt)
    assert lb.dtype == torch.float32 and lb.isfinite()
    with pytest.raises(ValueError, match='do not match'): seg_loss(lg, tgt[0])
