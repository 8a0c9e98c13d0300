"Distributed helpers: one-process fallbacks, launch errors, 2 gloo ranks x B against 1 process x 2B (loss and DDP gradients), a real torchrun launch."
import os, subprocess, sys, textwrap, time
import pytest
from conftest import run_process_group
import torch
from glrp.distributed import (DistInfo, LaunchError, init_distributed, is_main, is_distributed, gather_with_grad,
                              gather_nograd, gather_batch, global_anchors, seed_everything, shard,
                              reduce_mean)
from glrp.testing import check_ddp_equivalence, free_port, loopback_iface
from glrp.losses import contrastive_loss, local_loss, positive_weights, pool_regions

TORCH_ENV = ('WORLD_SIZE', 'RANK', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT')

@pytest.fixture
def no_torchrun(monkeypatch):
    for k in TORCH_ENV: monkeypatch.delenv(k, raising=False)
    return monkeypatch

def test_one_process_fallback(no_torchrun):
    info = init_distributed('cpu')
    assert info == DistInfo(0, 1, 0, torch.device('cpu'), None) and is_main(info) and not is_distributed()
    x = torch.randn(4, 2, 5, requires_grad=True)
    assert gather_with_grad(x) is x
    assert torch.equal(gather_nograd(torch.tensor([1, 2])), torch.tensor([1, 2]))
    feats, meta, anchors = gather_batch(x, {'p': torch.rand(4), 'vol': None}, info)
    assert feats is x and meta['vol'] is None and torch.equal(anchors, torch.arange(4))
    assert torch.equal(global_anchors(DistInfo(2, 4, 0, torch.device('cpu'), 'gloo'), 5), torch.arange(10, 15))
    assert reduce_mean(torch.tensor(3.)) == 3.

def test_launch_errors(no_torchrun):
    no_torchrun.setenv('WORLD_SIZE', '2')
    with pytest.raises(LaunchError, match='RANK, MASTER_ADDR, MASTER_PORT not set'): init_distributed('cpu')
    no_torchrun.setenv('RANK', '5'); no_torchrun.setenv('MASTER_ADDR', '127.0.0.1'); no_torchrun.setenv('MASTER_PORT', '29500')
    with pytest.raises(LaunchError, match=r'RANK=5 is outside 0\.\.1'): init_distributed('cpu')
    no_torchrun.setenv('RANK', '0')
    with pytest.raises(LaunchError, match="backend 'nccl' needs a CUDA device"): init_distributed('cpu', backend='nccl')
    no_torchrun.setenv('WORLD_SIZE', 'x')
    with pytest.raises(LaunchError, match="WORLD_SIZE='x' is not an integer"): init_distributed('cpu')

def test_pooled_regions_give_the_local_loss():
    maps, W = torch.randn(4, 2, 3, 12, 12), positive_weights('glrp', p=torch.tensor([.1, .2, .6, .65]))
    for k, size in ((3, None), (2, 5)):
        a = torch.tensor([2, 3])
        assert torch.allclose(local_loss(pool_regions(maps, k, size), W, n_regions=k, anchors=a),
                              local_loss(maps, W, n_regions=k, size=size, anchors=a), atol=1e-6)

def test_seed_and_shard():
    assert seed_everything(7, 2) == 9
    r = torch.rand(3); seed_everything(9); assert torch.equal(r, torch.rand(3))
    infos = [DistInfo(r, 2, r, torch.device('cpu'), 'gloo') for r in range(2)]
    parts = [shard(range(7), i) for i in infos]
    assert parts == [[0, 2, 4], [1, 3, 5]]
    assert sorted(sum((shard(range(7), i, drop_last=False) for i in infos), [])) == [0, 0, 1, 2, 3, 4, 5, 6]

@pytest.mark.timeout(180)
def test_two_gloo_ranks_equal_one_process():
    "2 ranks x 3 slices under DDP: loss and averaged gradients equal those of 1 process x 6 slices (global and local loss)."
    t = time.time()
    res = check_ddp_equivalence(world=2, b=3, method='glrp', timeout=150)
    print(f'2 gloo ranks: {time.time() - t:.1f} s')
    assert (res['world'], res['backend'], res['meta_equal']) == (2, 'gloo', True)
    for k in ('global', 'local', 'lin.weight', 'lin.bias', 'conv.weight', 'conv.bias'):
        full, dist_ = res['full'][k], res['dist'][k]
        assert full.abs().max() > 0, k
        assert (dist_ - full).abs().max() <= 1e-6*max(1., float(full.abs().max())), (k, dist_, full)
    assert 'ranks hold tensors of different shapes [(3, 2), (4, 2)]' in res['mismatch']

TORCHRUN_SCRIPT = '''
import torch, torch.distributed as dist
from glrp.distributed import (init_distributed, cleanup_distributed, gather_with_grad, gather_nograd, gather_batch,
                              reduce_mean, RankMismatchError)
from glrp.losses import contrastive_loss, positive_weights
info = init_distributed()
r = info.rank
assert (info.world, info.backend, info.local_rank, dist.get_world_size()) == (2, 'gloo', r, 2), info
x = torch.full((2, 3), float(r + 1), requires_grad=True)
y = gather_with_grad(x)
assert y.shape == (4, 3) and y[:2].eq(1).all() and y[2:].eq(2).all(), y
w = torch.arange(1., 5.)[:, None]
(y*w).sum().backward()  # each rank's loss uses all rows: the gradient of rows 2r, 2r+1 is summed over the 2 ranks
assert torch.equal(x.grad, 2*w[2*r:2*r + 2].expand(2, 3)), x.grad
assert torch.equal(gather_nograd(torch.tensor([r == 0, True])), torch.tensor([True, True, False, True]))
assert float(reduce_mean(torch.tensor(float(r)))) == 0.5
try: gather_nograd(torch.zeros(1 + r)); raise SystemExit('unequal sizes not refused')
except RankMismatchError: pass
# the distributed loss of 2 x 2 slices against the 4-slice loss
g = torch.Generator().manual_seed(0)
z, p = torch.randn(4, 2, 8, generator=g), torch.rand(4, generator=g)
feats, meta, anchors = gather_batch(z[2*r:2*r + 2], {'p': p[2*r:2*r + 2]}, info)
loss = contrastive_loss(feats, positive_weights('glrp', **meta), anchors=anchors)
full = contrastive_loss(z, positive_weights('glrp', p=p))
assert abs(float(reduce_mean(loss)) - float(full)) < 1e-6*max(1., float(full)), (loss, full)
print(f'OK rank={r} world={info.world} backend={info.backend}', flush=True)
cleanup_distributed()
'''

@pytest.mark.timeout(120)
def test_torchrun_two_processes(tmp_path):
    "A real `torchrun --nproc_per_node=2` launch on 127.0.0.1: init_distributed picks gloo, world 2; the gathers work."
    script = tmp_path/'ddp_script.py'
    script.write_text(TORCHRUN_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in TORCH_ENV}
    env.update(OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='')  # CPU ranks: gloo even on a GPU machine
    if loopback_iface(): env['GLOO_SOCKET_IFNAME'] = loopback_iface()  # loopback only
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nnodes=1', '--nproc_per_node=2',
           '--master_addr=127.0.0.1', f'--master_port={free_port()}', str(script)]
    t = time.time()
    out = run_process_group(cmd, timeout=100, env=env, cwd=tmp_path)
    print(f'torchrun: {time.time() - t:.1f} s')
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-3000:]
    assert 'OK rank=0 world=2 backend=gloo' in log and 'OK rank=1 world=2 backend=gloo' in log, log[-3000:]
