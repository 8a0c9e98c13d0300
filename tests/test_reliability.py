"No silent garbage: a diverging run stops, settings are checked before any work, checkpoints are validated, paths survive a change of directory, no debris (issue 14)."
import json, os, shutil, signal, subprocess, sys, time
from pathlib import Path
import pytest
import torch
from glrp.synthetic import write_phantom
from glrp.partition import make_manifest, write_manifest
from glrp.train import (PretrainConfig, FinetuneConfig, DivergenceError, pretrain, finetune, load_checkpoint,
                        save_checkpoint)
from glrp.inference import predict
import glrp.train as gtrain
from glrp.cli import main

TINY = dict(spacing=2.5, size=(64, 64), workers=1, progress=False, fast=False)

@pytest.fixture(scope='module')
def phantom(tmp_path_factory):
    root = tmp_path_factory.mktemp('rel')
    write_phantom(root/'data', n_patients=8, seed=5)
    write_manifest(make_manifest(root/'data', folds=4, labeled=2, val=1, seed=3), root/'manifest.json')
    return root

def pre_cfg(root, out, **kw):
    return PretrainConfig(**(dict(manifest=str(root/'manifest.json'), out=str(root/out), f=4, proj_dim=8, batch=8, epochs=2,
                                  stage='global', max_steps=2, **TINY) | kw))

def ft_cfg(root, out, **kw):
    return FinetuneConfig(**(dict(manifest=str(root/'manifest.json'), out=str(root/out), f=4, batch=4, epochs=2, max_steps=2, **TINY) | kw))

def nan_at(fn, epoch, monkeypatch, name):
    "Patch `glrp.train.<name>` so that its value becomes NaN from the first step of 0-based `epoch` on (steps counted per call)."
    calls = {'n': 0}
    def wrapped(*a, **kw):
        out = fn(*a, **kw)
        calls['n'] += 1
        return out * float('nan') if calls['n'] > epoch * 2 else out  # 2 steps per epoch (max_steps=2)
    monkeypatch.setattr(gtrain, name, wrapped)

# ---------- 1. divergence ----------
def test_pretrain_divergence_stops_and_keeps_last_good_checkpoint(phantom, monkeypatch):
    nan_at(gtrain.pretrain_loss, 1, monkeypatch, 'pretrain_loss')
    with pytest.raises(DivergenceError, match=r'pretrain \(global stage\) diverged at epoch 2, step 1: loss nan'):
        pretrain(pre_cfg(phantom, 'div_pre'))
    ck = load_checkpoint(phantom/'div_pre'/'last.pt')  # finite, so it loads
    assert ck['epoch'] == 1
    assert 'diverged at epoch 2' in json.loads((phantom/'div_pre'/'run.json').read_text())['failed']

def test_finetune_divergence_writes_no_best_from_a_nan_epoch(phantom, monkeypatch):
    nan_at(gtrain.seg_loss, 0, monkeypatch, 'seg_loss')
    with pytest.raises(DivergenceError, match='finetune diverged at epoch 1, step 1: loss nan.*no checkpoint was written'):
        finetune(ft_cfg(phantom, 'div_ft'))
    assert not (phantom/'div_ft'/'best.pt').exists() and not (phantom/'div_ft'/'last.pt').exists()

def test_nonfinite_checkpoint_refused_and_cli_exit_codes(phantom, tmp_path, capsys):
    pretrain(pre_cfg(phantom, 'ok_pre', epochs=1))
    ck = torch.load(phantom/'ok_pre'/'last.pt', weights_only=True)
    k = next(k for k, v in ck['model'].items() if v.is_floating_point())
    ck['model'][k] = ck['model'][k] * float('nan')
    save_checkpoint(ck, tmp_path/'nan.pt')
    code = main(['finetune', str(phantom/'manifest.json'), '--out', str(tmp_path/'ft'), '--pretrained', str(tmp_path/'nan.pt'),
                 '--spacing', '2.5', '--size', '64', '64', '--no-progress'])
    err = capsys.readouterr().err
    assert code == 2 and 'nan.pt' in err and 'hold NaN or Inf' in err and 'diverged' in err
    assert not (tmp_path/'ft').exists()  # refused before anything ran
    # a run diverging from the command line: exit 1, one line naming epoch and step, no traceback
    code = main(['pretrain', str(phantom/'manifest.json'), '--out', str(tmp_path/'pre'), '--T', '1e-30', '--f', '4', '--proj-dim', '8',
                 '--batch', '8', '--epochs', '1', '--stage', 'global', '--max-steps', '1', '--spacing', '2.5', '--size', '64', '64',
                 '--workers', '1', '--no-progress', '--no-fast'])
    err = capsys.readouterr().err
    assert code == 1 and 'diverged at epoch 1, step 1' in err and 'Traceback' not in err

# ---------- 2. configuration checked before any work ----------
@pytest.mark.parametrize('args, msg', [
    (['pretrain', '--batch', '1'], 'batch must be >= 2'), (['pretrain', '--batch', '0'], 'batch must be >= 2'),
    (['pretrain', '--epochs', '0'], 'epochs must be >= 1'), (['pretrain', '--epochs', '-3'], 'epochs must be >= 1'),
    (['pretrain', '--proj-dim', '0'], 'proj_dim must be >= 1'), (['pretrain', '--f', '0'], 'f must be >= 1'),
    (['pretrain', '--T', '0'], 'T must be a finite number > 0'), (['pretrain', '--lr', 'nan'], 'lr must be a finite number > 0'),
    (['pretrain', '--aug', '{"rotation": 10}'], 'unknown aug key(s) rotation'), (['finetune', '--batch', '0'], 'batch must be >= 1'),
    (['finetune', '--aug', '{"flip": 3}'], 'flip is a probability')])
def test_bad_settings_exit_2_before_data(tmp_path, capsys, args, msg):
    missing = tmp_path/'no-manifest.json'  # never read: the settings fail first
    code = main([args[0], str(missing), '--out', str(tmp_path/'run'), *args[1:]])
    err = capsys.readouterr().err.strip()
    assert code == 2 and msg in err and len(err.splitlines()) == 1, err
    assert not (tmp_path/'run').exists()

def test_bad_json_option_names_itself(tmp_path, capsys):
    with pytest.raises(SystemExit) as e: main(['pretrain', str(tmp_path/'m.json'), '--aug', '{bad'])
    assert e.value.code == 2 and '--aug' in capsys.readouterr().err

# ---------- 4. checkpoints validated before the data ----------
def test_checkpoint_problems_named_before_data(phantom, tmp_path):
    torch.save([1, 2, 3], tmp_path/'list.pt')
    torch.save(dict(format='glrp.train'), tmp_path/'nomodel.pt')
    class Evil:
        def __reduce__(self): return (os.system, ('echo pwned',))
    torch.save(dict(model={}, x=Evil()), tmp_path/'evil.pt')
    cases = [('list.pt', 'not a glrp checkpoint'), ('nomodel.pt', "not a glrp checkpoint: expected a dict with a 'model'"),
             ('evil.pt', 'not a glrp checkpoint: it holds Python objects')]
    for name, msg in cases:
        cfg = ft_cfg(phantom, 'never', pretrained=str(tmp_path/name), data=str(tmp_path/'absent-data'))  # the data would fail later
        with pytest.raises(Exception) as e: finetune(cfg)
        assert msg in str(e.value) and name in str(e.value), str(e.value)
        assert 'disable' not in str(e.value) and 'weights_only=False' not in str(e.value)
    # model arguments that disagree with the weights
    finetune(ft_cfg(phantom, 'ft_ok', epochs=1))
    ck = torch.load(phantom/'ft_ok'/'best.pt', weights_only=True)
    ck['model_args']['f'] = 8
    save_checkpoint(ck, tmp_path/'wrongargs.pt')
    with pytest.raises(Exception, match='wrongargs.pt: weights do not fit its model_args'):
        predict(tmp_path/'wrongargs.pt', tmp_path/'pred', manifest=tmp_path/'absent.json')

def test_crf_params_checked(phantom, tmp_path, capsys):
    finetune(ft_cfg(phantom, 'ft_crf', epochs=1))
    (tmp_path/'bad.json').write_text('{"iterations": 2, "bilat_sigma": 3}')
    (tmp_path/'notjson.json').write_text('{iterations: 2')
    for f, msg in (('bad.json', 'unknown CRF parameter(s) bilat_sigma'), ('notjson.json', 'not JSON'), ('missing.json', 'CRF parameter file not found')):
        code = main(['predict', str(phantom/'ft_crf'/'best.pt'), '--out', str(tmp_path/'p'), '--crf', '--crf-params', str(tmp_path/f)])
        err = capsys.readouterr().err
        assert code == 2 and msg in err and f in err, err
        assert not (tmp_path/'p').exists()

# ---------- 5. paths survive a change of directory ----------
def test_run_from_another_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_phantom('phantom', n_patients=6, seed=1)
    assert main(['partition', 'phantom', '--out', 'work/manifest.json', '--folds', '3', '--labeled', '1', '--val', '1']) == 0
    assert main(['finetune', 'work/manifest.json', '--out', 'work/ft', '--f', '4', '--batch', '4', '--epochs', '1', '--max-steps', '1',
                 '--spacing', '2.5', '--size', '64', '64', '--workers', '1', '--no-progress', '--no-fast']) == 0
    run = json.loads((tmp_path/'work'/'ft'/'run.json').read_text())
    assert run['paths']['manifest'] == os.path.join('..', 'manifest.json')
    assert str(tmp_path) not in json.dumps(run['paths'])
    elsewhere = tmp_path/'elsewhere'; elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(['predict', '../work/ft/best.pt', '--out', 'pred', '--workers', '1', '--no-progress']) == 0
    assert len(list((elsewhere/'pred').glob('*.nii.gz'))) == 4  # the 2 test patients' ED and ES

# ---------- 6. no debris ----------
def test_stale_temporary_removed_on_resume(phantom):
    c = pre_cfg(phantom, 'debris', epochs=2)
    pretrain(c, stop_after=1)
    stale = phantom/'debris'/'.last.pt.999999999.deadbeef.tmp'
    stale.write_bytes(b'x' * 1000)  # as a SIGKILL during torch.save leaves it
    pretrain(c, resume=True)
    assert not stale.exists() and load_checkpoint(phantom/'debris'/'last.pt')['epoch'] == 2

# ---------- PCL's released weights through `glrp finetune --pretrained` (issue 9 §2) ----------
def test_finetune_from_pcl_pretraining_file(phantom, tmp_path):
    "A file in PCL's layout (UNet2D_classification: encoder + projection head, wrapped with its argparse options) fine-tunes."
    import argparse
    from glrp.unet import UNet, pcl_names
    src = UNet(f=4, heads=True, proj_dim=16)
    names = pcl_names(4)
    sd = {}
    for k, v in src.state_dict().items():
        mod, leaf = k.rsplit('.', 1)
        if mod in names and (k.startswith('encoder.') or k.startswith('global_head.')): sd[f"module.{names[mod]}.{leaf}"] = v.clone()
    torch.save(dict(state_dict=sd, opt=argparse.Namespace(lr=0.1, temp=0.1), epoch=300), tmp_path/'pcl_pretrained.pth')
    assert main(['finetune', str(phantom/'manifest.json'), '--out', str(tmp_path/'ft'), '--pretrained', str(tmp_path/'pcl_pretrained.pth'),
                 '--parts', 'encoder', '--batch', '4', '--epochs', '1', '--max-steps', '1', '--spacing', '2.5', '--size', '64', '64',
                 '--workers', '1', '--no-progress', '--no-fast']) == 0
    run = json.loads((tmp_path/'ft'/'run.json').read_text())
    n_enc = sum(1 for k in src.state_dict() if k.startswith('encoder.'))
    assert run['loaded'] == n_enc and run['model_args']['f'] == 4
    # the loaded encoder is PCL's, tensor for tensor, before training moved it: check through the loader itself
    from glrp.train import _seg_model
    model, _, loaded = _seg_model(ft_cfg(phantom, 'x', pretrained=str(tmp_path/'pcl_pretrained.pth'), parts=('encoder',)))
    for k in loaded: assert torch.equal(model.state_dict()[k], src.state_dict()[k]), k
    # asking for the decoder too: the file has none; the encoder is loaded and the run says so
    with pytest.warns(UserWarning, match=r"PCL weights hold \['encoder', 'global_head'\]; loading \('encoder',\)"):
        _seg_model(ft_cfg(phantom, 'x', pretrained=str(tmp_path/'pcl_pretrained.pth')))

def test_evaluate_skip_with_nothing_matched_fails(phantom, tmp_path, capsys):
    (tmp_path/'empty').mkdir()
    (tmp_path/'misnamed').mkdir()
    src = next((phantom/'data'/'training'/'patient001').glob('*_frame01_gt.nii.gz'))
    shutil.copy(src, tmp_path/'misnamed'/'prediction_001.nii.gz')
    for d in ('empty', 'misnamed'):
        code = main(['evaluate', str(tmp_path/d), str(phantom/'data'), '--missing', 'skip'])
        err = capsys.readouterr().err
        assert code == 2 and 'no predictions matched' in err and d in err, err
