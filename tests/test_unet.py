"UNet: PCL preset parameter count, shapes of encode/decode/heads, weight transfer, channels_last + bf16 autocast."
import pytest
import torch
from glrp.unet import UNet, ConvBlock, GlobalHead, LocalHead, load_pretrained, n_params, block_table, WeightMismatchError

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
