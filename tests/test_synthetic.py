"Tests of the synthetic ACDC phantom that the notebook (nbs/01_synthetic.ipynb) does not cover: files, cine, speed."
import time
from pathlib import Path
import numpy as np
import nibabel as nib
import pytest
from glrp.synthetic import write_phantom, make_patient, frame_phase, GROUPS

def _files(root:Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob('*')) if p.is_file()}

def _info(folder:Path) -> dict:
    return dict(l.split(': ', 1) for l in (folder/'Info.cfg').read_text().splitlines() if l)

@pytest.fixture(scope='module')
def small(tmp_path_factory):
    "Three patients, the first two with their 4D cine."
    return write_phantom(tmp_path_factory.mktemp('ph')/'a', n_patients=3, seed=5, cine=2)

def test_same_seed_byte_identical(small, tmp_path):
    again = write_phantom(tmp_path/'b', n_patients=3, seed=5, cine=2)
    a, b = _files(small), _files(again)
    assert sorted(a) == sorted(b) and len(a) == 3*6 - 1   # 5 files per patient + a 4D cine for two of them
    for k in a: assert a[k] == b[k], f'{k} differs between two writes with the same seed'
    assert not list(small.rglob('*.tmp')) and not list(small.rglob('.*'))   # no temporary files left

def test_other_seed_differs(small, tmp_path):
    other = _files(write_phantom(tmp_path/'c', n_patients=1, seed=6))
    mine = _files(small)
    assert any(other[k] != mine[k] for k in other if k in mine and k.endswith('.nii.gz'))

def test_cine_matches_frames(small):
    for k, folder in enumerate(sorted((small/'training').iterdir())):
        info = _info(folder)
        ed, es, n = int(info['ED']), int(info['ES']), int(info['NbFrame'])
        f4d = folder/f'{folder.name}_4d.nii.gz'
        if k >= 2:
            assert not f4d.exists(); continue
        cine = nib.load(f4d)
        frame = nib.load(folder/f'{folder.name}_frame{ed:02d}.nii.gz')
        movie = np.asarray(cine.dataobj)
        assert movie.shape == (*frame.shape, n)
        assert cine.get_data_dtype() == frame.get_data_dtype()
        np.testing.assert_allclose(cine.header.get_zooms(), (*frame.header.get_zooms(), 1.), rtol=1e-6)
        assert np.array_equal(cine.affine, frame.affine) and int(cine.header['sform_code']) == 2 and int(cine.header['qform_code']) == 0
        for t in (ed, es):
            ref = np.asarray(nib.load(folder/f'{folder.name}_frame{t:02d}.nii.gz').dataobj)
            assert np.array_equal(movie[..., t - 1], ref), f'{folder.name}: cine frame {t} differs from the frame file'
        assert not np.array_equal(movie[..., ed - 1], movie[..., es - 1])
        # the heart moves smoothly: consecutive frames differ less than ED from ES
        gt_ed = np.asarray(nib.load(folder/f'{folder.name}_frame{ed:02d}_gt.nii.gz').dataobj)
        heart = gt_ed > 0
        d = lambda a, b: np.abs(movie[..., a].astype(float) - movie[..., b].astype(float))[heart].mean()
        assert d(ed - 1, ed) < d(ed - 1, es - 1)

def test_frame_phase_is_periodic_and_smooth():
    for ed, es, n in [(1, 12, 30), (4, 11, 12), (1, 7, 13)]:
        ph = np.array([frame_phase(t, ed, es, n) for t in range(1, n + 1)])
        assert ph[ed - 1] == 0 and ph[es - 1] == 1 and ph.min() >= 0 and ph.max() <= 1
        assert np.abs(np.diff(np.r_[ph, ph[0]])).max() < 0.5   # no jumps, also across the wrap-around

def test_headers_like_real_acdc(small, acdc_root):
    "Every header field of a phantom file equals the real ACDC file's, except the array's own dims/dtype/spacing."
    real = nib.load(acdc_root/'training'/'patient001'/'patient001_frame01.nii.gz').header
    folder = sorted((small/'training').iterdir())[0]
    mine = nib.load(next(folder.glob('*_frame01.nii.gz'))).header
    own = {'dim', 'pixdim', 'datatype', 'bitpix', 'scl_slope', 'scl_inter', 'glmax', 'glmin', 'cal_max', 'cal_min'}
    for key in real.keys():
        if key in own: continue
        assert np.array_equal(np.asarray(real[key]), np.asarray(mine[key])), f'header field {key}: {real[key]} vs {mine[key]}'
    assert real['pixdim'][0] == mine['pixdim'][0]           # qfac
    assert (folder/'Info.cfg').read_text().count('\n') == (acdc_root/'training'/'patient001'/'Info.cfg').read_text().count('\n')

def test_twenty_patients_fast(tmp_path):
    t0, c0 = time.time(), time.process_time()
    root = write_phantom(tmp_path/'p', n_patients=20, seed=0)
    secs, cpu = time.time() - t0, time.process_time() - c0
    print(f'20 patients written in {secs:.1f} s ({cpu:.1f} s CPU)')
    assert len(list((root/'training').iterdir())) == 20
    assert sorted(_info(p)['Group'] for p in (root/'training').iterdir()) == sorted(list(GROUPS)*4)
    assert secs < 60
