"glrp predict MODEL -i INPUT -o OUTPUT: a tiny model trained on the phantom segments renamed scans, cines, off-centre hearts; bad files are named, not fatal."
import csv, json, shutil, time, contextlib, io
from dataclasses import replace
from pathlib import Path
import numpy as np
import nibabel as nib
import pytest
import torch
from glrp.cli import main
from glrp.data import load_label, ACDC_LABELS
from glrp.metrics import class_counts, dice_from_counts
from glrp.synthetic import write_phantom, make_patient, render_frame, file_values, nifti_bytes, write_bytes
from glrp.segment import segment, find_inputs, volume_grid, SpacingWarning

FT = ['--spacing', '2.5', '--size', '64', '64', '--f', '8', '--batch', '8', '--epochs', '10', '--lr', '3e-3', '--val-every', '10',
      '--workers', '1', '--no-progress', '--no-fast']

def run(*argv):
    "(exit code, stdout, stderr) of `glrp ARGV`."
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err): code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()

def dice(pred_path, gt):
    "Dice of RV, MYO, LV of a label file against canonical ground-truth labels."
    return dice_from_counts(*class_counts(np.asarray(nib.load(pred_path).dataobj), gt).T)

@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    "A tiny model (glrp partition + glrp finetune) copied away from its run, which is deleted with the manifest and cache."
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp('seg')
    t0 = time.time()
    write_phantom(root/'data', n_patients=8, seed=3)
    assert run('partition', root/'data', '--out', root/'work'/'manifest.json', '--folds', 5, '--labeled', 4, '--val', 1, '--seed', 7)[0] == 0
    assert run('finetune', root/'work'/'manifest.json', '--out', root/'work'/'run', *FT)[0] == 0
    test = json.loads((root/'work'/'manifest.json').read_text())['folds'][0]['test']
    # the reproduction's form on the same run, for the comparison with the model folder below
    assert run('predict', root/'work'/'run'/'best.pt', '--out', root/'ckpt_pred', '--role', 'test', '--workers', 1, '--no-progress', '--no-fast')[0] == 0
    shutil.copytree(root/'work'/'run'/'model', root/'elsewhere'/'my model')
    shutil.rmtree(root/'work')
    print(f"tiny model: {time.time() - t0:.1f} s")
    return root, root/'elsewhere'/'my model', test

@pytest.fixture(scope='module')
def renamed(trained):
    "A plain folder of the test patients' ED/ES frames under other names (one uncompressed), and their ground truth."
    root, model, test = trained
    scans, gts = root/'scans', {}
    scans.mkdir()
    names = iter(['scan7.nii.gz', 'Subject 12.nii.gz', 'x.nii', 'last-one.nii.gz'])
    for pid in test:
        for img in sorted((root/'data'/'training'/pid).glob(f'{pid}_frame??.nii.gz')):
            name = next(names)
            if name.endswith('.nii.gz'): shutil.copy(img, scans/name)
            else: nib.save(nib.load(img), scans/name)  # the same volume, uncompressed
            gts[name] = load_label(img.with_name(img.name.replace('.nii.gz', '_gt.nii.gz')))[0]
    return scans, gts

def test_renamed_scans_segmented_on_their_grid(trained, renamed):
    "The issue's test: a model folder alone segments a plain folder of renamed NIfTI files; labels well above chance, grid and header kept."
    root, model, _ = trained
    scans, gts = renamed
    t0 = time.time()
    code, out, err = run('predict', model, '-i', scans, '-o', root/'labels', '--no-progress')
    assert code == 0, err
    assert sorted(p.name for p in (root/'labels').iterdir()) == sorted([*gts, 'report.csv', 'report.json', 'report.md'])
    ds = []
    for name, gt in gts.items():
        ref, lab = nib.load(scans/name), nib.load(root/'labels'/name)
        assert lab.shape == ref.shape and lab.get_data_dtype() == np.uint8
        assert np.allclose(lab.affine, ref.affine) and np.allclose(lab.header.get_zooms(), ref.header.get_zooms())
        assert lab.header.get_sform(coded=True)[1] == ref.header.get_sform(coded=True)[1]
        assert lab.header.get_qform(coded=True)[1] == ref.header.get_qform(coded=True)[1]
        assert set(np.unique(np.asarray(lab.dataobj))) <= {0, 1, 2, 3}
        ds.append(dice(root/'labels'/name, gt))
    print(f"Dice per volume (RV, MYO, LV): {np.round(ds, 3).tolist()}; {time.time() - t0:.1f} s")
    # chance is ~0 (a label map placed at random covers a few percent of the heart); the tiny model reaches 0.75-0.93 here
    assert all(d.mean() > 0.6 for d in ds) and np.mean(ds) > 0.75
    assert (root/'labels'/'x.nii').read_bytes()[:4] != b'\x1f\x8b'  # the input's name and format: uncompressed .nii

def test_model_folder_with_centre_crop_matches_the_reproduction(trained, renamed):
    "fov='centre' is the training preprocessing: the model folder gives the checkpoint form's labels."
    root, model, test = trained
    files = sorted(p for pid in test for p in (root/'data'/'training'/pid).glob(f'{pid}_frame??.nii.gz'))
    assert run('predict', model, '-i', *files, '--output', root/'centre', '--fov', 'centre', '--no-fast', '--no-progress')[0] == 0
    for f in files:
        a, b = (np.asarray(nib.load(d/f.name).dataobj) for d in (root/'centre', root/'ckpt_pred'))
        assert (a == b).mean() > 0.999, f.name

def test_acdc_layout_names_and_evaluate(trained, tmp_path):
    "An ACDC-layout folder: patientXXX_frameYY.nii.gz outputs (not the _gt files), which glrp evaluate scores."
    root, model, test = trained
    (tmp_path/'acdc'/'testing').mkdir(parents=True)
    for pid in test: shutil.copytree(root/'data'/'training'/pid, tmp_path/'acdc'/'testing'/pid)
    code, out, err = run('predict', model, '-i', tmp_path/'acdc', '-o', tmp_path/'pred', '--no-progress')
    assert code == 0, err
    want = sorted(p.name for pid in test for p in (tmp_path/'acdc'/'testing'/pid).glob(f'{pid}_frame??.nii.gz'))
    assert sorted(p.name for p in (tmp_path/'pred').iterdir()) == sorted(want + ['report.csv', 'report.json', 'report.md']) and len(want) == 2 * len(test)
    code, out, err = run('evaluate', tmp_path/'pred', tmp_path/'acdc', '--out', tmp_path/'eval')
    assert code == 0 and 'LV EF' in out, err
    summary = json.loads((tmp_path/'eval'/'summary.json').read_text())
    assert summary['pcl']['all']['mean'] > 0.7 and summary['indices']['agreement']['LV_EF']['n'] == len(test)
    # predict's report (Info.cfg's ED/ES) and evaluate's indices.csv measure the same label files: the same EF, volumes and mass
    report = {r['subject']: r for r in json.loads((tmp_path/'pred'/'report.json').read_text())}
    rows = {r['patient']: r for r in csv.DictReader(io.StringIO((tmp_path/'eval'/'indices.csv').read_text()))}
    assert sorted(report) == sorted(rows) == sorted(test) and all(r['kind'] == 'acdc' for r in report.values())
    for pid in test:
        for k in ('LV_EDV', 'LV_ESV', 'LV_EF', 'RV_EF', 'MYO_mass'):
            assert report[pid]['indices'][k] == pytest.approx(float(rows[pid][k]), rel=1e-4), (pid, k)

def test_cine_gives_4d_labels_or_frames(trained, tmp_path):
    "A 4D cine in: a 4D label file on its grid; --split-frames: one 3D file per frame, the same labels; frame 1 (ED) as the 3D ED file's."
    root, model, _ = trained
    write_phantom(tmp_path/'c', n_patients=1, seed=3, cine=1)  # patient001 of the training phantom, with its cine
    pdir = tmp_path/'c'/'training'/'patient001'
    c4 = nib.load(pdir/'patient001_4d.nii.gz')
    write_bytes(tmp_path/'cine.nii.gz', nifti_bytes(np.asarray(c4.dataobj)[..., :3], c4.header.get_zooms()))
    ref = nib.load(tmp_path/'cine.nii.gz')
    assert run('predict', model, '-i', tmp_path/'cine.nii.gz', pdir/'patient001_frame01.nii.gz', '-o', tmp_path/'o4', '--no-fast', '--no-progress')[0] == 0
    lab4 = nib.load(tmp_path/'o4'/'cine.nii.gz')
    assert lab4.shape == ref.shape and np.allclose(lab4.affine, ref.affine) and lab4.header.get_zooms() == ref.header.get_zooms()
    a4 = np.asarray(lab4.dataobj)
    ed = np.asarray(nib.load(tmp_path/'o4'/'patient001_frame01.nii.gz').dataobj)
    assert (a4[..., 0] == ed).mean() > 0.999  # the cine's first frame is the ED volume
    assert dice(tmp_path/'o4'/'patient001_frame01.nii.gz', load_label(pdir/'patient001_frame01_gt.nii.gz')[0]).mean() > 0.6
    assert run('predict', model, '-i', tmp_path/'cine.nii.gz', '-o', tmp_path/'o3', '--split-frames', '--no-fast', '--no-progress')[0] == 0
    assert sorted(p.name for p in (tmp_path/'o3').iterdir()) == ['cine_t01.nii.gz', 'cine_t02.nii.gz', 'cine_t03.nii.gz', 'report.csv', 'report.json', 'report.md']
    for t in range(3):
        f = nib.load(tmp_path/'o3'/f'cine_t{t + 1:02d}.nii.gz')
        assert f.shape == ref.shape[:3] and np.allclose(f.affine, ref.affine) and f.header.get_zooms() == ref.header.get_zooms()[:3]
        assert np.array_equal(np.asarray(f.dataobj), a4[..., t])

def test_labels_mnms_swap_rv_and_lv(trained, renamed, tmp_path):
    "--labels mnms: the same segmentation, values 1 and 3 swapped; --save-probs: native-grid probabilities whose argmax is the label file."
    root, model, _ = trained
    scans, _ = renamed
    one = scans/'scan7.nii.gz'
    for lm in ('acdc', 'mnms'):
        assert run('predict', model, '-i', one, '-o', tmp_path/lm, '--labels', lm, '--save-probs', '--no-fast', '--no-progress')[0] == 0
    a, m = (np.asarray(nib.load(tmp_path/lm/'scan7.nii.gz').dataobj) for lm in ('acdc', 'mnms'))
    assert {1, 2, 3} <= set(np.unique(a))
    assert np.array_equal(m, np.choose(a, [0, 3, 2, 1]).astype(np.uint8))
    for lm, names in (('acdc', ['background', 'RV', 'MYO', 'LV']), ('mnms', ['background', 'LV', 'MYO', 'RV'])):
        z = np.load(tmp_path/lm/'probs'/'scan7.npz')
        assert list(z['labels']) == names and z['probs'].shape == (4, *a.shape) and z['probs'].dtype == np.float16
        lab = np.asarray(nib.load(tmp_path/lm/'scan7.nii.gz').dataobj)
        assert (z['probs'].astype(np.float32).argmax(0) == lab).mean() > 0.999

def test_bad_files_among_good_ones(trained, renamed, tmp_path):
    "NaN, zero spacing, 2D, unreadable, truncated, constant: each named with its reason; the good scans are still written; exit 2."
    root, model, _ = trained
    scans, _ = renamed
    d = tmp_path/'mixed'; shutil.copytree(scans, d)
    ref = nib.load(scans/'scan7.nii.gz'); a = np.asarray(ref.dataobj).astype(np.float32); z = ref.header.get_zooms()
    def put(name, arr, zooms):
        img = nib.Nifti1Image(arr, ref.affine); img.header.set_zooms(zooms); nib.save(img, str(d/name))
    put('nan.nii.gz', np.where(np.indices(a.shape)[0] == 3, np.nan, a).astype(np.float32), z)
    put('inf.nii', np.where(np.indices(a.shape)[0] == 3, np.inf, a).astype(np.float32), z)
    put('zero_spacing.nii.gz', a, (z[0], 0.0, z[2]))
    put('flat.nii.gz', a[..., 0], z[:2])
    put('constant.nii.gz', np.full_like(a, 7.0), z)
    (d/'garbage.nii.gz').write_bytes(b'\x00' * 100)
    (d/'truncated.nii.gz').write_bytes((scans/'scan7.nii.gz').read_bytes()[:2000])
    code, out, err = run('predict', model, '-i', d, '-o', tmp_path/'out', '--no-progress')
    print(err)
    assert code == 2
    bad = {'nan.nii.gz': 'NaN/Inf', 'inf.nii': 'NaN/Inf', 'zero_spacing.nii.gz': 'not positive and finite', 'flat.nii.gz': 'expected a 3D',
           'constant.nii.gz': 'constant', 'garbage.nii.gz': 'unreadable NIfTI', 'truncated.nii.gz': 'truncated or damaged gzip'}
    lines = [l for l in err.splitlines() if l.startswith('glrp predict: error:')]
    assert len(lines) == len(bad)
    for name, why in bad.items(): assert any(str(d/name) in l and why in l for l in lines), (name, why)
    assert '7 input(s) failed' in err
    assert sorted(p.name for p in (tmp_path/'out').iterdir()) == sorted([p.name for p in scans.iterdir()] + ['report.csv', 'report.json', 'report.md'])  # good ones only, no temporaries

def test_empty_or_no_nifti_folder(trained, tmp_path):
    root, model, _ = trained
    (tmp_path/'empty').mkdir(); (tmp_path/'dicom').mkdir(); (tmp_path/'dicom'/'IM0001.dcm').write_bytes(b'DICM')
    for folder, msg in (('empty', 'empty folder'), ('dicom', 'no .nii or .nii.gz file to segment (it holds 1 other entry: IM0001.dcm)')):
        code, out, err = run('predict', model, '-i', tmp_path/folder, '-o', tmp_path/'out', '--no-progress')
        assert code == 2 and f"{tmp_path/folder}: {msg}" in err, err
    code, out, err = run('predict', model, '-i', tmp_path/'absent', '-o', tmp_path/'out')
    assert code == 2 and f"{tmp_path/'absent'}: input not found" in err, err
    assert not (tmp_path/'out').exists()

def off_centre_scan(path, pid=51, offset=(130., -70.), fov=(520, 480)):
    "A phantom ED frame with a `fov` mm field of view and the LV centre `offset` mm from the image centre; its labels."
    pat = make_patient(pid, seed=9)
    pat = replace(pat, scan=replace(pat.scan, shape=(int(fov[0] / pat.scan.spacing), int(fov[1] / pat.scan.spacing)), offset=offset))
    img, lab = render_frame(pat, pat.scan.ed)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    zooms = (pat.scan.spacing, pat.scan.spacing, pat.scan.thickness)
    write_bytes(path, nifti_bytes(file_values(img, pat.scan.dtype), zooms))
    return lab, zooms

def test_off_centre_heart_in_a_large_field_of_view(trained, tmp_path):
    "The heart 150 mm off-centre in a 520 x 480 mm field of view: found (default fov) where the training's centre crop cuts it off."
    root, model, _ = trained
    gt, zooms = off_centre_scan(tmp_path/'in'/'big.nii.gz')
    centre = np.zeros(gt.shape, bool)  # the part of the scan that the centre crop (64 x 64 at 2.5 mm) keeps
    h = [int(80 / z) for z in zooms[:2]]
    centre[gt.shape[0] // 2 - h[0]:gt.shape[0] // 2 + h[0], gt.shape[1] // 2 - h[1]:gt.shape[1] // 2 + h[1]] = True
    assert (gt > 0)[centre].sum() < 0.1 * (gt > 0).sum()  # 5% of the heart lies inside the central 160 mm
    d = {}
    for fov in ('heart', 'centre'):
        assert run('predict', model, '-i', tmp_path/'in', '-o', tmp_path/fov, '--fov', fov, '--no-progress')[0] == 0
        d[fov] = dice(tmp_path/fov/'big.nii.gz', gt)
    print(d)
    assert d['heart'].mean() > 0.6 and d['heart'].min() > 0.4
    assert d['centre'].mean() < 0.3

def test_spacing_far_outside_training_warns(trained, renamed, tmp_path):
    "A scan with 0.3 mm pixels (the model saw 1.26-1.57 mm): segmented, with a warning naming it."
    root, model, _ = trained
    scans, _ = renamed
    img = nib.load(scans/'scan7.nii.gz')
    img.header.set_zooms((0.3, 0.3, 10.0)); (tmp_path/'in').mkdir(); nib.save(img, str(tmp_path/'in'/'tiny_pixels.nii.gz'))
    code, out, err = run('predict', model, '-i', tmp_path/'in', '-o', tmp_path/'out', '--no-progress')
    assert code == 0 and (tmp_path/'out'/'tiny_pixels.nii.gz').is_file()
    assert f"warning: {tmp_path/'in'/'tiny_pixels.nii.gz'}: in-plane spacing 0.3 mm is far outside" in err, err
    with pytest.warns(SpacingWarning, match='tiny_pixels.nii.gz'): res = segment(model, tmp_path/'in', tmp_path/'out2', progress=False)
    assert len(res.warnings) == 1 and res.failed == []

def test_crf_follows_the_model(trained, renamed, tmp_path):
    "No tuned CRF: off, and --crf alone refused (untuned parameters can erase structures); tuned CRF in model.json: on unless --no-crf."
    root, model, _ = trained
    scans, _ = renamed
    tuned = tmp_path/'tuned'; shutil.copytree(model, tuned)
    info = json.loads((tuned/'model.json').read_text()); info['crf'] = dict(iterations=3, bilat_compat=10.0)
    (tuned/'model.json').write_text(json.dumps(info))
    one = scans/'scan7.nii.gz'
    outs = {}
    code, _, err = run('predict', model, '-i', one, '-o', tmp_path/'refused', '--crf')  # no tuned CRF to force on
    assert code == 2 and 'holds no CRF parameters tuned' in err and '--crf-params' in err and not (tmp_path/'refused').exists()
    (tmp_path/'defaults.json').write_text('{}')
    for name, m, opts in (('plain', model, []), ('forced', model, ['--crf', '--crf-params', tmp_path/'defaults.json']), ('tuned', tuned, []), ('tuned_off', tuned, ['--no-crf'])):
        assert run('predict', m, '-i', one, '-o', tmp_path/name, '--no-fast', '--workers', 1, '--no-progress', *opts)[0] == 0
        outs[name] = np.asarray(nib.load(tmp_path/name/'scan7.nii.gz').dataobj)
    assert np.array_equal(outs['plain'], outs['tuned_off'])
    assert not np.array_equal(outs['plain'], outs['forced']) and not np.array_equal(outs['plain'], outs['tuned'])
    (tmp_path/'p.json').write_text('{"iterations": 2}')
    code, _, err = run('predict', model, '-i', one, '-o', tmp_path/'x', '--no-crf', '--crf-params', tmp_path/'p.json')
    assert code == 2 and 'switched off' in err

def test_forms_and_their_options_kept_apart(trained, renamed, tmp_path):
    "-i with a checkpoint file, a model folder without -i, options of the other form, a file as the output: clear errors, nothing written."
    root, model, _ = trained
    scans, _ = renamed
    (tmp_path/'run').mkdir(); shutil.copytree(model, tmp_path/'run'/'model'); shutil.copy(model/'weights.pt', tmp_path/'run'/'best.pt')
    cases = [(['predict', tmp_path/'run'/'best.pt', '-i', scans, '-o', tmp_path/'o'], f"-i needs a model folder", f"model folder is {tmp_path/'run'/'model'}"),
             (['predict', model, '-o', tmp_path/'o'], 'no -i was given', str(model)),
             (['predict', model, '-i', scans, '-o', tmp_path/'o', '--role', 'val', '--fold', '0'], '--role, --fold: only with a checkpoint file', ''),
             (['predict', tmp_path/'run'/'best.pt', '--out', tmp_path/'o', '--labels', 'mnms', '--split-frames'], '--labels, --split-frames: only with a model folder', ''),
             (['predict', tmp_path, '-o', tmp_path/'o'], 'neither a checkpoint file', ''),
             (['predict', tmp_path, '-i', scans, '-o', tmp_path/'o'], 'not a glrp model folder (no model.json)', '')]
    for argv, msg, also in cases:
        code, out, err = run(*argv)
        assert code == 2 and msg in err and also in err, (argv, err)
    (tmp_path/'afile').write_text('x')
    code, out, err = run('predict', model, '-i', scans, '-o', tmp_path/'afile')
    assert code == 2 and 'exists and is not a folder' in err
    assert not (tmp_path/'o').exists()

def test_never_overwrites_the_scans_or_another_output(trained, renamed, tmp_path):
    "-o the input folder: each scan refused, unchanged; two inputs of the same name: the second refused."
    root, model, _ = trained
    scans, _ = renamed
    d = tmp_path/'s'; shutil.copytree(scans, d)
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    code, out, err = run('predict', model, '-i', d, '-o', d, '--no-progress')
    assert code == 2 and err.count('would overwrite the scan itself') == len(before)
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before
    (tmp_path/'other').mkdir(); shutil.copy(scans/'Subject 12.nii.gz', tmp_path/'other'/'scan7.nii.gz')
    code, out, err = run('predict', model, '-i', scans/'scan7.nii.gz', '-i', tmp_path/'other'/'scan7.nii.gz', '-o', tmp_path/'o', '--no-progress')
    assert code == 2 and f"{tmp_path/'other'/'scan7.nii.gz'}: its output scan7.nii.gz is already written for another input" in err, err
    assert sorted(p.name for p in (tmp_path/'o').iterdir()) == ['report.csv', 'report.json', 'report.md', 'scan7.nii.gz']

def test_predict_help_lists_both_forms(capsys):
    with pytest.raises(SystemExit): main(['predict', '--help'])
    h = capsys.readouterr().out
    for opt in ('-i INPUT', '-o OUT', '--output', '--crf, --no-crf', '--labels {acdc,mnms}', '--save-probs', '--split-frames', '--fov {heart,window,centre}',
                '--device', '--batch', '--role', '--manifest'):
        assert opt in h, opt
