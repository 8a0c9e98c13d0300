"UNet: PCL preset parameter count, shapes of encode/decode/heads, weight transfer, PCL's weights, channels_last + bf16 autocast."
import argparse, re
from pathlib import Path
import pytest
import torch
from torch import nn
from glrp.unet import UNet, ConvBlock, GlobalHead, LocalHead, load_pretrained, n_params, block_table, WeightMismatchError
from glrp.unet import CenterBlock, pcl_names, is_pcl_state_dict, read_pcl, pcl_config, pcl_to_glrp, load_pcl

def count(m): return sum(p.numel() for p in m.parameters())

def test_pcl_preset_parameter_count():
    with torch.device('meta'): m = UNet(f=48, n_classes=4, in_ch=1)
    assert count(m) == 17_462_016
    assert n_params(m) == 17_462_016

def test_count_by_hand_formula():
    "The count from a closed formula of the architecture, for several widths/depths/classes."
    def conv(i, o, k=3, bias=True): return i*o*k*k + (o if bias else 0)
    def expected(f, depth, C, cin):
        n, prev = 0, cin
        for k in range(depth):
            w = f * 2**k
            n += conv(prev, w) + conv(w, w) + 2*2*w; prev = w  # 2 convs + 2 BN
        n += conv(prev, 2*prev) + conv(2*prev, 2*prev)  # centre, no norm
        for k in reversed(range(depth)):
            w = f * 2**k
            n += conv(2*w, w, 2) + conv(2*w, w) + conv(w, w) + 2*2*w  # up-conv, block with BN
        return n + conv(f, C, 1, bias=False)
    for f, depth, C, cin in [(48, 4, 4, 1), (8, 3, 2, 3), (16, 5, 4, 1), (12, 1, 3, 2)]:
        with torch.device('meta'): m = UNet(in_ch=cin, n_classes=C, f=f, depth=depth)
        assert count(m) == expected(f, depth, C, cin), (f, depth, C, cin)

@pytest.mark.parametrize('norm', ['batch', 'instance', 'group', 'none'])
def test_norms_forward(norm):
    m = UNet(f=8, norm=norm)
    y = m(torch.randn(2, 1, 32, 32))
    assert y.shape == (2, 4, 32, 32) and y.isfinite().all()

def test_unknown_norm():
    with pytest.raises(ValueError, match="unknown normalisation 'layer'"): UNet(f=8, norm='layer')

def test_encode_decode_shapes():
    m = UNet(f=8, depth=4)
    x = torch.randn(3, 1, 64, 48)
    feats = m.encode(x)
    assert [tuple(t.shape[1:]) for t in feats] == [(8, 64, 48), (16, 32, 24), (32, 16, 12), (64, 8, 6), (128, 4, 3)]
    for k, (c, h) in enumerate([(64, 8), (32, 16), (16, 32), (8, 64)], start=1):
        assert m.decode(feats, upto=k).shape == (3, c, h, h*3//4)
        assert m.level_channels(k) == c
    assert torch.allclose(m.head(m.decode(feats)), m(x))

def test_eval_forward_deterministic():
    m = UNet(f=8).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad(): assert torch.equal(m(x), m(x))

def test_bad_input_size():
    with pytest.raises(ValueError, match='30x32 is not divisible by 2\\*\\*depth = 16'):
        UNet(f=8)(torch.randn(1, 1, 30, 32))

def test_heads():
    m = UNet(f=8, heads=True, proj_dim=24, local_level=3)
    x = torch.randn(2, 1, 64, 64)
    assert m.global_proj(x).shape == (2, 24)
    assert m.local_proj(x).shape == (2, 24, 32, 32)
    assert count(m.global_head) == (128*128 + 128) + (128*24 + 24)
    assert count(m.local_head) == (16*16 + 16) + (16*24 + 24)
    assert not hasattr(UNet(f=8), 'global_head')
    with pytest.raises(ValueError, match='local_level must be in 1..4'): UNet(heads=True, local_level=0)

def test_pcl_global_head_size():
    with torch.device('meta'): h = UNet(f=48, heads=True).global_head
    lin = [l for l in h if isinstance(l, torch.nn.Linear)]
    assert [(l.in_features, l.out_features) for l in lin] == [(768, 768), (768, 512)]

def test_block_table_pcl():
    with torch.device('meta'): m = UNet(f=48)
    tab = block_table(m)
    assert [r['block'] for r in tab] == ['enc1', 'enc2', 'enc3', 'enc4', 'centre', 'dec4', 'dec3', 'dec2', 'dec1', 'head']
    assert tab[4]['shape'] == (768, 22, 22) and tab[-1]['shape'] == (4, 352, 352)
    assert sum(r['params'] for r in tab) == 17_462_016

def test_load_pretrained_encoder_only():
    torch.manual_seed(0)
    pre, seg = UNet(f=8, heads=True, proj_dim=16), UNet(f=8)
    dec_before = {k: v.clone() for k, v in seg.state_dict().items() if not k.startswith('encoder.')}
    loaded = load_pretrained(seg, pre, parts=('encoder',))
    assert loaded and all(k.startswith('encoder.') for k in loaded)
    assert set(loaded) == {k for k in seg.state_dict() if k.startswith('encoder.')}
    for k in loaded: assert torch.equal(seg.state_dict()[k], pre.state_dict()[k])
    for k, v in dec_before.items(): assert torch.equal(seg.state_dict()[k], v), k

def test_load_pretrained_encoder_decoder_from_ddp_state_dict():
    pre, seg = UNet(f=8, heads=True, proj_dim=16), UNet(f=8, n_classes=2)
    sd = {'module.' + k: v for k, v in pre.state_dict().items()}
    loaded = load_pretrained(seg, sd, parts=('encoder', 'decoder'))
    assert {k.split('.')[0] for k in loaded} == {'encoder', 'decoder'}
    x = torch.randn(1, 1, 32, 32)
    pre.eval(); seg.eval()
    with torch.no_grad(): assert torch.allclose(seg.decode(seg.encode(x)), pre.decode(pre.encode(x)))

def test_load_pretrained_errors():
    pre = UNet(f=8)
    with pytest.raises(WeightMismatchError, match=r'encoder\.levels\.0\.0\.weight: pretrained shape \(8, 1, 3, 3\) != model shape \(16, 1, 3, 3\)'):
        load_pretrained(UNet(f=16), pre)
    with pytest.raises(WeightMismatchError, match=r'encoder\.levels\.0\.0\.weight: pretrained shape'):
        load_pretrained(UNet(f=8, in_ch=3), pre)
    with pytest.raises(WeightMismatchError, match='missing from the pretrained weights'):
        load_pretrained(UNet(f=8, depth=5), pre)
    with pytest.raises(ValueError, match="no part 'neck'"):
        load_pretrained(UNet(f=8), pre, parts=('neck',))

def test_channels_last_bf16_autocast():
    torch.manual_seed(0)
    m = UNet(f=8, heads=True, proj_dim=16).to(memory_format=torch.channels_last)
    x = torch.randn(2, 1, 64, 64).to(memory_format=torch.channels_last)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y, g, l = m(x), m.global_proj(x), m.local_proj(x)
    assert y.shape == (2, 4, 64, 64) and g.shape == (2, 16) and l.shape == (2, 16, 16, 16)
    assert all(t.isfinite().all() for t in (y, g, l))
    y.float().mean().backward()
    grads = [p.grad for p in m.parameters() if p.grad is not None]
    assert grads and all(gr.isfinite().all() for gr in grads)

def test_channels_last_matches_contiguous():
    torch.manual_seed(0)
    m = UNet(f=8).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        a = m(x)
        b = m.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    assert torch.allclose(a, b, atol=1e-5)


# ---------------------------------------------------------------- PCL's UNet2D
# PCL's published key list (names and shapes of UNet2D(classes=4) and UNet2D_classification(classes=512) at
# initial_filter_size=48, in_channels=1), beside the project; the tests that need it skip without it.
PCL_KEYS = Path(__file__).resolve().parent.parent.parent/'shared'/'pcl_unet2d_keys.txt'

@pytest.fixture(scope='module')
def pcl_keys():
    "{'UNet2D(classes=4)': {name: shape}, 'UNet2D_classification(classes=512)': {...}} parsed from the key list."
    if not PCL_KEYS.is_file(): pytest.skip(f'PCL key list absent ({PCL_KEYS}): it is not part of the repository')
    secs, cur = {}, None
    for line in PCL_KEYS.read_text().splitlines():
        if line.startswith('## '): cur = secs.setdefault(line[3:].strip(), {})
        elif line.strip() and not line.startswith('#'):
            name, shape = line.split(' ', 1)
            cur[name] = tuple(int(d) for d in re.findall(r'\d+', shape))
    assert set(secs) == {'UNet2D(classes=4)', 'UNet2D_classification(classes=512)'}, list(secs)
    return secs

def random_sd(shapes, seed=0):
    "Random tensors of the given names and shapes (integer `num_batches_tracked`, positive running variances)."
    g = torch.Generator().manual_seed(seed)
    def t(k, s):
        if k.endswith('num_batches_tracked'): return torch.tensor(7)
        if k.endswith('running_var'): return torch.rand(s, generator=g) + 0.5
        return torch.randn(s, generator=g)
    return {k: t(k, s) for k, s in shapes.items()}

# An independent transcription of PCL's UNet2D and UNet2D_classification, written the way its published code is
# (one attribute per layer, explicit forward). Decoder: torch.cat([upscale, skip], 1), the up-sampled map first,
# as in PCL's `expand` path (PCL centre-crops the skip to the up-sampled size: the identity here, left out).
def _contract(i, o): return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.LeakyReLU(inplace=True))
_expand = _contract

class PCLEncoder(nn.Module):
    def __init__(self, in_channels=1, f=48):
        super().__init__()
        self.contr_1_1, self.contr_1_2 = _contract(in_channels, f), _contract(f, f)
        self.contr_2_1, self.contr_2_2 = _contract(f, 2*f), _contract(2*f, 2*f)
        self.contr_3_1, self.contr_3_2 = _contract(2*f, 4*f), _contract(4*f, 4*f)
        self.contr_4_1, self.contr_4_2 = _contract(4*f, 8*f), _contract(8*f, 8*f)
        self.pool = nn.MaxPool2d(2, stride=2)
        self.center = nn.Sequential(nn.Conv2d(8*f, 16*f, 3, padding=1), nn.ReLU(inplace=True),
                                    nn.Conv2d(16*f, 16*f, 3, padding=1), nn.ReLU(inplace=True))

    def forward(self, x):
        contr_1 = self.contr_1_2(self.contr_1_1(x))
        contr_2 = self.contr_2_2(self.contr_2_1(self.pool(contr_1)))
        contr_3 = self.contr_3_2(self.contr_3_1(self.pool(contr_2)))
        contr_4 = self.contr_4_2(self.contr_4_1(self.pool(contr_3)))
        center = self.center(self.pool(contr_4))
        return contr_1, contr_2, contr_3, contr_4, center

class PCLDecoder(nn.Module):
    def __init__(self, f=48, classes=4):
        super().__init__()
        self.upscale5 = nn.ConvTranspose2d(16*f, 8*f, 2, stride=2)
        self.expand_4_1, self.expand_4_2 = _expand(16*f, 8*f), _expand(8*f, 8*f)
        self.upscale4 = nn.ConvTranspose2d(8*f, 4*f, 2, stride=2)
        self.expand_3_1, self.expand_3_2 = _expand(8*f, 4*f), _expand(4*f, 4*f)
        self.upscale3 = nn.ConvTranspose2d(4*f, 2*f, 2, stride=2)
        self.expand_2_1, self.expand_2_2 = _expand(4*f, 2*f), _expand(2*f, 2*f)
        self.upscale2 = nn.ConvTranspose2d(2*f, f, 2, stride=2)
        self.expand_1_1, self.expand_1_2 = _expand(2*f, f), _expand(f, f)
        self.head = nn.Sequential(nn.Conv2d(f, classes, 1, bias=False))

    def forward(self, x, contr_1, contr_2, contr_3, contr_4):
        x = self.expand_4_2(self.expand_4_1(torch.cat([self.upscale5(x), contr_4], 1)))
        x = self.expand_3_2(self.expand_3_1(torch.cat([self.upscale4(x), contr_3], 1)))
        x = self.expand_2_2(self.expand_2_1(torch.cat([self.upscale3(x), contr_2], 1)))
        x = self.expand_1_2(self.expand_1_1(torch.cat([self.upscale2(x), contr_1], 1)))
        return self.head(x)

class PCLUNet2D(nn.Module):
    def __init__(self, in_channels=1, f=48, classes=4):
        super().__init__()
        self.encoder, self.decoder = PCLEncoder(in_channels, f), PCLDecoder(f, classes)

    def forward(self, x):
        contr_1, contr_2, contr_3, contr_4, center = self.encoder(x)
        return self.decoder(center, contr_1, contr_2, contr_3, contr_4)

class PCLUNet2DClassification(nn.Module):
    def __init__(self, in_channels=1, f=48, classes=512):
        super().__init__()
        self.encoder = PCLEncoder(in_channels, f)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16*f, 16*f), nn.ReLU(inplace=True),
                                  nn.Linear(16*f, classes))

    def forward(self, x): return self.head(self.encoder(x)[-1])

def randomized(m, size=32, seed=0):
    """`m` in eval mode with random weights that keep every layer relevant to the output: Kaiming-normal weights,
    BatchNorm statistics of a random batch of `size`x`size` images, random BN affine parameters. (With PyTorch's
    default init the signal decays so fast that the centre barely reaches the full-resolution output.)"""
    torch.manual_seed(seed)
    bns = [b for b in m.modules() if isinstance(b, nn.BatchNorm2d)]
    for l in m.modules():
        if isinstance(l, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.kaiming_normal_(l.weight, nonlinearity='relu')
            if l.bias is not None: nn.init.normal_(l.bias, 0, 0.1)
    for b in bns: b.momentum = None  # running statistics = the calibration batch's
    with torch.no_grad(): m.train()(torch.randn(8, 1, size, size))
    for b in bns: nn.init.normal_(b.weight, 1, 0.3); nn.init.normal_(b.bias, 0, 0.3); b.momentum = 0.1
    return m.eval()

def max_diff(a, b): return (a - b).abs().max().item()

def test_centre_block_is_pcls():
    c = CenterBlock(8, 16)
    assert [type(l) for l in c] == [nn.Conv2d, nn.ReLU, nn.Conv2d, nn.ReLU]
    assert list(c.state_dict()) == ['0.weight', '0.bias', '2.weight', '2.bias']
    assert [k for k in UNet(f=8).state_dict() if k.startswith('encoder.center.')] == \
        ['encoder.center.0.weight', 'encoder.center.0.bias', 'encoder.center.2.weight', 'encoder.center.2.bias']
    assert [type(l) for l in CenterBlock(8, 16, 'group')] == [nn.Conv2d, nn.GroupNorm, nn.ReLU] * 2
    assert ConvBlock(1, 8)[2].negative_slope == nn.LeakyReLU().negative_slope == 0.01  # PCL: PyTorch's default

def test_transcription_names_equal_pcl_key_list(pcl_keys):
    "The transcription used below has exactly PCL's names and shapes (so the forward test runs PCL's layout)."
    with torch.device('meta'):
        seg, cls = PCLUNet2D(f=48, classes=4), PCLUNet2DClassification(f=48, classes=512)
    assert {k: tuple(v.shape) for k, v in seg.state_dict().items()} == pcl_keys['UNet2D(classes=4)']
    assert {k: tuple(v.shape) for k, v in cls.state_dict().items()} == pcl_keys['UNet2D_classification(classes=512)']

def test_pcl_key_list_segmentation_loads_at_f48(pcl_keys):
    shapes = pcl_keys['UNet2D(classes=4)']
    sd = random_sd(shapes)
    assert is_pcl_state_dict(sd)
    c = pcl_config(sd)
    assert c == dict(in_ch=1, f=48, depth=4, norm='batch', n_classes=4, proj_dim=None, parts=['encoder', 'decoder', 'head'])
    m = UNet(in_ch=c['in_ch'], n_classes=c['n_classes'], f=c['f'], depth=c['depth'], norm=c['norm'])
    assert n_params(m) == 17_462_016 == sum(torch.Size(s).numel() for k, s in shapes.items() if 'running_' not in k and 'num_batches' not in k)
    loaded = load_pcl(m, sd, parts=('encoder', 'decoder', 'head'))
    assert len(loaded) == len(sd) and set(loaded) == set(m.state_dict())  # every key mapped, every tensor of ours filled
    names, own = pcl_names(), m.state_dict()
    for g in loaded:
        mod, _, t = g.rpartition('.')
        assert torch.equal(own[g], sd[f'{names[mod]}.{t}']), g

def test_pcl_key_list_classification_loads_at_f48(pcl_keys):
    sd = random_sd(pcl_keys['UNet2D_classification(classes=512)'], seed=1)
    c = pcl_config(sd)
    assert c == dict(in_ch=1, f=48, depth=4, norm='batch', n_classes=None, proj_dim=512, parts=['encoder', 'global_head'])
    mapped = pcl_to_glrp(sd)
    assert len(mapped) == len(sd)
    assert torch.equal(mapped['global_head.2.weight'], sd['head.2.weight']) and torch.equal(mapped['global_head.4.bias'], sd['head.4.bias'])
    assert torch.equal(mapped['encoder.center.2.weight'], sd['encoder.center.2.weight'])
    m = UNet(f=c['f'], heads=True, proj_dim=c['proj_dim'])
    loaded = load_pcl(m, sd, parts=('encoder', 'global_head'))
    assert set(loaded) == {k for k in m.state_dict() if k.split('.')[0] in ('encoder', 'global_head')}
    with pytest.raises(WeightMismatchError, match=r"decoder: not in the PCL weights, which hold \['encoder', 'global_head'\]"):
        load_pcl(UNet(f=48), sd, parts=('encoder', 'decoder'))

def test_pcl_key_list_errors_name_the_key(pcl_keys):
    sd = random_sd(pcl_keys['UNet2D(classes=4)'])
    bad = dict(sd, **{'decoder.expand_2_1.0.weight': torch.zeros(96, 191, 3, 3)})
    with pytest.raises(WeightMismatchError, match=r'decoder\.expand_2_1\.0\.weight: shape \(96, 191, 3, 3\) != \(96, 192, 3, 3\)'):
        load_pcl(UNet(f=48), bad, parts=('encoder', 'decoder'))
    for gone in ('encoder.contr_3_2.1.running_var', 'decoder.upscale5.bias', 'encoder.center.2.weight'):
        with pytest.raises(WeightMismatchError, match=re.escape(gone) + ': missing from the PCL weights'):
            pcl_to_glrp({k: v for k, v in sd.items() if k != gone})
    with pytest.raises(WeightMismatchError, match=r"encoder\.center\.3\.weight: not a tensor of PCL's UNet2D"):
        pcl_to_glrp(dict(sd, **{'encoder.center.3.weight': torch.zeros(1)}))
    with pytest.raises(WeightMismatchError, match=r'encoder\.levels\.0\.0\.weight: pretrained shape \(48, 1, 3, 3\) != model shape \(16, 1, 3, 3\)'):
        load_pcl(UNet(f=16), sd)
    with pytest.raises(WeightMismatchError, match='not a PCL UNet2D state dict'):
        load_pcl(UNet(f=48), UNet(f=8).state_dict())

@pytest.mark.parametrize('f', [8, 16])
def test_pcl_transcription_same_segmentation_output(f):
    torch.manual_seed(0)
    pcl = randomized(PCLUNet2D(f=f, classes=4))
    m = UNet(f=f, n_classes=4).eval()
    load_pcl(m, pcl.state_dict(), parts=('encoder', 'decoder', 'head'))
    x = torch.randn(2, 1, 48, 32)
    with torch.no_grad(): ref, out = pcl(x), m(x)
    assert ref.abs().max() > 0.1  # a non-trivial output
    assert max_diff(out, ref) < 1e-5

def test_pcl_transcription_same_global_projection():
    pcl = randomized(PCLUNet2DClassification(f=8, classes=32))
    m = UNet(f=8, heads=True, proj_dim=32).eval()
    load_pcl(m, pcl.state_dict(), parts=('encoder', 'global_head'))
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad(): ref, out = pcl(x), m.global_proj(x)
    assert ref.abs().max() > 0.01
    assert max_diff(out, ref) < 1e-5

def test_pcl_equality_test_is_sensitive():
    "The comparison above would catch the old LeakyReLU centre and a (skip, up-sampled) concatenation."
    pcl = randomized(PCLUNet2D(f=8))
    x = torch.randn(2, 1, 32, 32)
    leaky = UNet(f=8).eval()
    load_pcl(leaky, pcl.state_dict(), parts=('encoder', 'decoder', 'head'))
    leaky.encoder.center[1] = nn.LeakyReLU(0.01); leaky.encoder.center[3] = nn.LeakyReLU(0.01)
    swapped = UNet(f=8).eval()
    load_pcl(swapped, pcl.state_dict(), parts=('encoder', 'decoder', 'head'))
    def fwd(feats, upto=None):
        x, skips = feats[-1], feats[-2::-1]
        for up, blk, skip in list(zip(swapped.decoder.ups, swapped.decoder.blocks, skips))[:upto]: x = blk(torch.cat([skip, up(x)], 1))
        return x
    swapped.decoder.forward = fwd
    with torch.no_grad():
        ref = pcl(x)
        assert max_diff(leaky(x), ref) > 1e-4
        assert max_diff(swapped(x), ref) > 1e-2

def test_pcl_file_round_trip(tmp_path):
    pcl = randomized(PCLUNet2D(f=8))
    sd = pcl.state_dict()
    x = torch.randn(1, 1, 32, 32)
    for name, obj in [('plain.pth', sd), ('dp.pth', {'state_dict': {'module.' + k: v for k, v in sd.items()}, 'epoch': 3}),
                      ('model.pth', {'model': sd})]:
        torch.save(obj, tmp_path/name)
        c = pcl_config(tmp_path/name)
        assert (c['f'], c['depth'], c['n_classes']) == (8, 4, 4)
        assert is_pcl_state_dict(torch.load(tmp_path/name, weights_only=True))
        m = UNet(f=c['f'], n_classes=c['n_classes']).eval()
        assert len(load_pcl(m, str(tmp_path/name), parts=('encoder', 'decoder', 'head'))) == len(sd)
        with torch.no_grad(): assert max_diff(m(x), pcl(x)) < 1e-5, name
    # a checkpoint with the training options (argparse.Namespace), optimizer state and epoch beside the weights
    opt = torch.optim.SGD(pcl.parameters(), lr=0.1)
    torch.save({'opt': argparse.Namespace(lr=0.1, batch_size=32), 'model': sd, 'optimizer': opt.state_dict(), 'epoch': 100},
               tmp_path/'ckpt.pth')
    assert pcl_config(tmp_path/'ckpt.pth')['f'] == 8
    # files are read with weights_only=True: any other pickled object is refused
    torch.save({'state_dict': sd, 'args': NotAllowed()}, tmp_path/'unsafe.pth')
    with pytest.raises(Exception, match='[Ww]eights only load failed'): read_pcl(tmp_path/'unsafe.pth')

class NotAllowed:
    "An arbitrary class: a file holding one must not load with weights_only."

def test_is_pcl_state_dict():
    pcl, ours = PCLUNet2D(f=8).state_dict(), UNet(f=8, heads=True).state_dict()
    assert is_pcl_state_dict(pcl) and is_pcl_state_dict({'module.' + k: v for k, v in pcl.items()})
    assert is_pcl_state_dict({'state_dict': pcl}) and is_pcl_state_dict({'model': pcl})
    assert not is_pcl_state_dict(ours)
    assert not is_pcl_state_dict({'format': 'glrp.train', 'model': ours, 'model_args': dict(f=8, depth=4, norm='batch')})
    assert not is_pcl_state_dict(None) and not is_pcl_state_dict(torch.zeros(3))

def test_pcl_names_cover_our_unet():
    for depth in (4, 2):
        names = pcl_names(depth)
        assert len(set(names.values())) == len(names)
        own = {k.rpartition('.')[0] for k in UNet(f=8, depth=depth, heads=True, local_level=1).state_dict() if not k.startswith('local_head')}
        assert own == set(names)
