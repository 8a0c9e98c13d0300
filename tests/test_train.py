"Training engine: resume equivalence, weights-only checkpoints, run records, best-epoch selection, prediction to NIfTI, CLI, fast path, torchrun."
import json, os, shutil, subprocess, sys
from pathlib import Path
import numpy as np
import nibabel as nib
import pytest, warnings
from conftest import run_process_group
import torch
from glrp.synthetic import write_phantom
from glrp.partition import make_manifest, write_manifest, fold_volumes
from glrp.metrics import evaluate_folder
from glrp.train import PretrainConfig, FinetuneConfig, pretrain, finetune, load_checkpoint, fast_settings
from glrp.inference import predict
from glrp.cli import main

TINY = dict(spacing=2.5, size=(64, 64), workers=1, progress=False)

@pytest.fixture(scope='module')
def phantom(tmp_path_factory):
    "A 10-patient phantom, its manifest (5 folds, M=2, 2 validation patients) and a warm cache."
    root = tmp_path_factory.mktemp('train')
    write_phantom(root/'data', n_patients=10, seed=3)
    m = make_manifest(root/'data', folds=5, labeled=2, val=2, seed=7)
    write_manifest(m, root/'manifest.json')
    return root, m

def pre_cfg(root, out, **kw):
    return PretrainConfig(**(dict(manifest=str(root/'manifest.json'), out=str(root/out), f=8, proj_dim=16, batch=8, epochs=1,
                                  local_epochs=1, max_steps=2, **TINY) | kw))

def ft_cfg(root, out, **kw):
    return FinetuneConfig(**(dict(manifest=str(root/'manifest.json'), out=str(root/out), f=8, batch=4, epochs=2, max_steps=2, **TINY) | kw))

def assert_same_weights(a, b, atol=1e-6):
    assert a.keys() == b.keys()
    for k in a: assert torch.allclose(a[k].double(), b[k].double(), atol=atol, rtol=0), k

@pytest.mark.parametrize('fast', [False, True])
def test_pretrain_resume_equivalence(phantom, fast):
    "global+local, 2 epochs straight == 1 epoch, interrupted, + 1 resumed epoch (the second in a new phase)."
    root, _ = phantom
    pretrain(pre_cfg(root, f'pre_straight_{fast}', fast=fast))
    c = pre_cfg(root, f'pre_resumed_{fast}', fast=fast)
    pretrain(c, stop_after=1)
    assert load_checkpoint(root/f'pre_resumed_{fast}'/'last.pt')['epoch'] == 1
    pretrain(c, resume=True)
    a, b = (load_checkpoint(root/f'pre_{s}_{fast}'/'last.pt') for s in ('straight', 'resumed'))
    assert_same_weights(a['model'], b['model'])
    assert [r['stage'] for r in b['log']] == ['global', 'local']
    assert np.allclose([r['loss'] for r in a['log']], [r['loss'] for r in b['log']], atol=1e-6)

def test_pretrain_resume_within_phase(phantom):
    "joint stage, 2 epochs: stopping after 1 restores optimiser momentum and scheduler mid-phase."
    root, _ = phantom
    pretrain(pre_cfg(root, 'j_straight', stage='joint', epochs=2, fast=False, method='gcl', max_steps=1))
    c = pre_cfg(root, 'j_resumed', stage='joint', epochs=2, fast=False, method='gcl', max_steps=1)
    pretrain(c, stop_after=1); pretrain(c, resume=True)
    a, b = (load_checkpoint(root/f'j_{s}'/'last.pt') for s in ('straight', 'resumed'))
    assert_same_weights(a['model'], b['model'])
    assert abs(a['scheduler']['last_epoch'] - b['scheduler']['last_epoch']) == 0

def test_resume_refuses_other_config(phantom):
    root, _ = phantom
    c = pre_cfg(root, 'refuse', fast=False)
    pretrain(c, stop_after=1)
    with pytest.raises(ValueError, match='lr'): pretrain(pre_cfg(root, 'refuse', fast=False, lr=0.5), resume=True)

def test_finetune_resume_and_best_epoch(phantom):
    root, _ = phantom
    straight = finetune(ft_cfg(root, 'ft_straight', epochs=3, fast=False))
    c = ft_cfg(root, 'ft_resumed', epochs=3, fast=False)
    finetune(c, stop_after=2); res = finetune(c, resume=True)
    assert_same_weights(load_checkpoint(root/'ft_straight'/'last.pt')['model'], load_checkpoint(root/'ft_resumed'/'last.pt')['model'])
    dices = [r['val_dice'] for r in res['log']]
    assert len(dices) == 3 and all(0 <= d <= 1 for d in dices)
    assert res['best_epoch'] == int(np.argmax(dices)) + 1 == straight['best_epoch']
    best = load_checkpoint(root/'ft_resumed'/'best.pt')
    assert best['epoch'] == res['best_epoch'] and best['val_dice'] == pytest.approx(max(dices))
    rows = json.loads((root/'ft_resumed'/'log.json').read_text())
    assert [r['epoch'] for r in rows] == [1, 2, 3]
    assert (root/'ft_resumed'/'log.csv').read_text().splitlines()[0].startswith('epoch,loss,lr,seconds,images_per_s,val_dice')

def test_checkpoints_load_weights_only_and_run_json(phantom):
    root, m = phantom
    pretrain(pre_cfg(root, 'rec_pre', fast=False, seed=5))
    finetune(ft_cfg(root, 'rec_ft', pretrained=str(root/'rec_pre'/'last.pt'), epochs=1, seed=5))
    for p in (root/'rec_pre'/'last.pt', root/'rec_ft'/'last.pt', root/'rec_ft'/'best.pt'):
        ck = torch.load(p, map_location='cpu', weights_only=True)
        assert 'model' in ck and ck['config']['seed'] == 5
    for d, kind in (('rec_pre', 'pretrain'), ('rec_ft', 'finetune')):
        run = json.loads((root/d/'run.json').read_text())
        assert run['kind'] == kind and run['seed'] == 5 and run['data_hash'] == m['data_hash']
        assert (root/d/run['config']['manifest']).resolve() == (root/'manifest.json').resolve() and run['config']['out'] == '.'  # relative to the run folder
        assert not [k for k, v in run['config'].items() if isinstance(v, str) and v.startswith('/')], run['config']  # no machine's folders
        assert {'glrp', 'git_commit', 'torch'} <= set(run['provenance'])
        assert run['finished']
    run = json.loads((root/'rec_ft'/'run.json').read_text())
    assert run['loaded'] > 0  # encoder and decoder tensors copied from the pretrained checkpoint
    assert not any(p.name.startswith('.') for p in (root/'rec_ft').iterdir())  # no temporary files left

def test_predict_writes_nifti_per_test_frame(phantom):
    root, m = phantom
    finetune(ft_cfg(root, 'ft_pred', epochs=1))
    out = root/'pred'
    paths = predict(root/'ft_pred'/'best.pt', out, role='test', workers=1, progress=False, save_probs=True)
    test_vols = fold_volumes(m, 0, 'test')
    assert sorted(p.name for p in paths) == sorted(f"{v['name']}.nii.gz" for v in test_vols)
    for p in paths:
        pid = p.name[:10]
        ref = nib.load(root/'data'/'training'/pid/p.name)
        img = nib.load(p)
        assert img.shape == ref.shape and np.allclose(img.affine, ref.affine)
        assert np.allclose(img.header.get_zooms(), ref.header.get_zooms())
        a = np.asarray(img.dataobj)
        assert a.dtype == np.uint8 and set(np.unique(a)) <= {0, 1, 2, 3}
        pr = np.load(out/'probs'/p.name.replace('.nii.gz', '.npz'))['probs']
        assert pr.shape == (4, ref.shape[2], 64, 64)
    gt = root/'gt_test'; gt.mkdir()
    for pid in m['folds'][0]['test']: (gt/pid).symlink_to(root/'data'/'training'/pid)
    res = evaluate_folder(out, gt)
    assert res['missing'] == [] and len(res['records']) > 0
    # the same prediction refined by the dense CRF: same files and grid, probabilities still normalised, but changed
    crf_paths = predict(root/'ft_pred'/'best.pt', root/'pred_crf', role='test', workers=1, progress=False, save_probs=True,
                        crf=True, crf_params={'iterations': 3})
    assert sorted(p.name for p in crf_paths) == sorted(p.name for p in paths)
    changed = 0
    for p in crf_paths:
        assert nib.load(p).shape == nib.load(out/p.name).shape
        pc = np.load(root/'pred_crf'/'probs'/p.name.replace('.nii.gz', '.npz'))['probs']
        p0 = np.load(out/'probs'/p.name.replace('.nii.gz', '.npz'))['probs']
        assert np.allclose(pc.sum(0), 1, atol=1e-3)
        changed += not np.allclose(pc, p0, atol=1e-3)
    assert changed > 0
    assert evaluate_folder(root/'pred_crf', gt)['missing'] == []
    pre = root/'pre_for_predict'
    if not (pre/'last.pt').exists(): pretrain(pre_cfg(root, 'pre_for_predict', stage='global', epochs=1, fast=False))
    with pytest.raises(Exception, match='not a fine-tuned'): predict(pre/'last.pt', root/'bad', workers=1)

def test_cli_end_to_end(phantom, capsys):
    root, m = phantom
    small = ['--spacing', '2.5', '--size', '64', '64', '--f', '8', '--epochs', '1', '--max-steps', '2', '--workers', '1', '--no-progress']
    man = str(root/'manifest.json')
    assert main(['pretrain', man, '--out', str(root/'cli_pre'), '--method', 'pcl', '--batch', '8', '--proj-dim', '16',
                 '--stage', 'global', *small]) == 0
    assert main(['finetune', man, '--out', str(root/'cli_ft'), '--pretrained', str(root/'cli_pre'/'last.pt'), '--batch', '4',
                 '--aug', '{"rot": 5}', *small]) == 0
    assert json.loads((root/'cli_ft'/'run.json').read_text())['config']['aug'] == {'rot': 5}
    from glrp.train import _seg_model, FinetuneConfig
    pre = str(root/'cli_pre'/'last.pt')
    with pytest.warns(UserWarning, match=r'pretrained at 2.5 mm and size \[64, 64\], fine-tuning at 2.0 mm .* pass --spacing 2.5 --size 64 64'):
        _seg_model(FinetuneConfig(manifest=man, out=str(root/'x'), pretrained=pre, spacing=2.0, size=(64, 64)))  # another grid: said
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        _seg_model(FinetuneConfig(manifest=man, out=str(root/'x'), pretrained=pre, spacing=2.5, size=(64, 64)))  # its own grid: silent
    assert main(['predict', str(root/'cli_ft'/'best.pt'), '--out', str(root/'cli_pred'), '--role', 'val', '--workers', '1',
                 '--no-progress', '--no-fast']) == 0
    assert len(list((root/'cli_pred').glob('*.nii.gz'))) == 2 * len(m['folds'][0]['val'])
    assert main(['predict', str(root/'cli_ft'/'best.pt'), '--out', str(root/'cli_pred_crf'), '--role', 'val', '--workers', '1',
                 '--no-progress', '--crf']) == 2  # a checkpoint has no tuned CRF: refused, nothing written
    first = capsys.readouterr()
    assert not (root/'cli_pred_crf').exists() and '--crf-params' in first.err
    (root/'defaults.json').write_text('{}')
    assert main(['predict', str(root/'cli_ft'/'best.pt'), '--out', str(root/'cli_pred_crf'), '--role', 'val', '--workers', '1',
                 '--no-progress', '--crf', '--crf-params', str(root/'defaults.json')]) == 0
    assert len(list((root/'cli_pred_crf').glob('*.nii.gz'))) == 2 * len(m['folds'][0]['val'])
    assert main(['evaluate', str(root/'cli_pred_crf'), str(root/'data'), '--missing', 'skip']) == 0
    out = first.out + capsys.readouterr().out
    assert 'best epoch' in out and 'wrote' in out

def test_cli_help_lists_hyperparameters(capsys):
    with pytest.raises(SystemExit): main(['finetune', '--help'])
    h = capsys.readouterr().out
    for opt in ('--lr', '--epochs', '--batch', '--pretrained', '--parts', '--ce-weight', '--dice-weight', '--no-fast', '--resume'):
        assert opt in h, opt
    assert '(default: 0.001)' in ' '.join(h.split())

def test_fast_path_on_and_off(phantom):
    root, _ = phantom
    fs = fast_settings(torch.device('cpu'), True)
    assert fs['channels_last'] and fast_settings(torch.device('cpu'), False) == dict(channels_last=False, amp=None)
    for fast in (True, False):
        r = finetune(ft_cfg(root, f'fast_{fast}', epochs=1, fast=fast))
        assert np.isfinite(r['log'][0]['loss'])
        run = json.loads((root/f'fast_{fast}'/'run.json').read_text())
        assert run['fast']['channels_last'] == fast and (run['fast']['amp'] == 'None') == (not fast or fs['amp'] is None)

@pytest.mark.timeout(120)
def test_torchrun_two_processes(phantom):
    "torchrun --nproc_per_node=2 -m glrp.cli pretrain: one tiny epoch on CPU with gloo, gathered negatives; rank 0 writes."
    root, _ = phantom
    torchrun = Path(sys.executable).with_name('torchrun')
    env = dict(os.environ, OMP_NUM_THREADS='1', GLOO_SOCKET_IFNAME='lo')
    cmd = [str(torchrun), '--standalone', '--nproc_per_node=2', '-m', 'glrp.cli', 'pretrain', str(root/'manifest.json'),
           '--out', str(root/'ddp'), '--spacing', '2.5', '--size', '64', '64', '--f', '8', '--proj-dim', '16', '--batch', '8',
           '--epochs', '1', '--stage', 'joint', '--max-steps', '2', '--workers', '1', '--no-progress', '--device', 'cpu']
    r = run_process_group(cmd, timeout=100, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    run = json.loads((root/'ddp'/'run.json').read_text())
    assert run['world'] == 2
    ck = load_checkpoint(root/'ddp'/'last.pt')
    assert ck['epoch'] == 1 and len(ck['rng']) == 2 and np.isfinite(ck['log'][0]['loss'])

def test_pretrain_warmup_schedule(phantom):
    "The pretraining lr warms up linearly (a run at SGD lr 0.1 without it collapsed the projection), then follows the cosine."
    from glrp.train import warmup_cosine
    root, _ = phantom
    r = pretrain(pre_cfg(root, 'warm', stage='global', epochs=4, warmup_epochs=2, fast=False))
    lrs = [row['lr'] for row in r['log']]  # after each epoch of 2 steps: w = 4 steps, total 8
    assert lrs[0] == pytest.approx(0.1 * 3/4)  # still warming up (plain cosine would give 0.085)
    assert lrs == pytest.approx([0.1 * warmup_cosine(8, 4)(s) for s in (2, 4, 6, 8)])
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)
    f = warmup_cosine(10, 0)
    assert f(0) == 1.0 and f(5) == pytest.approx(0.5)  # warmup_epochs=0: the old plain cosine


def test_mean_teacher_beats_fine_tuning_alone_at_two_labels(tmp_path):
    "On the phantom with M = 2 labeled patients, Mean Teacher's test Dice (mean over three seeds) beats fine-tuning alone at the same 150 steps."
    write_phantom(tmp_path/'data', n_patients=20, seed=0)
    write_manifest(make_manifest(tmp_path/'data', folds=5, labeled=2, val=2), tmp_path/'m.json')
    m = json.loads((tmp_path/'m.json').read_text())
    gt = tmp_path/'gt'; gt.mkdir()
    for pid in m['folds'][0]['test']: (gt/pid).symlink_to(tmp_path/'data'/'training'/pid)
    base = dict(manifest=str(tmp_path/'m.json'), spacing=2.5, size=(64, 64), f=8, batch=8, lr=3e-3, workers=1, progress=False,
                steps=150, epoch_steps=15, val_every=1)
    dice = {}
    for semi in (None, 'mean-teacher'):
        for seed in (0, 1, 2):
            out = tmp_path/f'{semi}-{seed}'
            finetune(FinetuneConfig(out=str(out), semi=semi, seed=seed, **base))
            assert json.loads((out/'run.json').read_text()).get('semi') == semi  # absent for fine-tuning alone
            predict(out/'best.pt', out/'pred', role='test', workers=1, progress=False)
            dice.setdefault(semi, []).append(evaluate_folder(out/'pred', gt)['pcl']['all']['mean'])
    print(dice)
    assert np.mean(dice['mean-teacher']) > np.mean(dice[None]) + 0.02, dice
