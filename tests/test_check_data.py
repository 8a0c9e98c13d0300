"""`glrp.check.check_dataset` reports every problem of a dataset, each with the right type and file, and the
loaders (`index_acdc`, `load_case`) raise the same typed errors. Each broken case starts from a clean synthetic
phantom (`write_dataset` in conftest.py) and breaks one thing."""
import shutil
from pathlib import Path
import numpy as np
import nibabel as nib
import pytest
from conftest import write_dataset, rewrite
import gzip
from glrp.data import (DataError, LayoutError, MissingFileError, InfoError, CorruptFileError, ShapeError, LabelError,
                       IntensityError, ACDC_LABELS, MNMS_LABELS, index_acdc, cine_volumes, read_info, load_volume, Source,
                       GRID_TOL, MAX_VOXELS)
from glrp.check import check_dataset, checked_index
from glrp.preprocess import PrepParams
from glrp.cache import load_case, case_sources


@pytest.fixture(scope='module')
def clean(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp('clean'), n=3, cine=1)


@pytest.fixture
def ds(clean, tmp_path):
    "A fresh copy of the clean dataset to break."
    return Path(shutil.copytree(clean, tmp_path / 'data'))


# ---------------------------------------------------------------- helpers to break it
def patient(root, i=2): return root / 'training' / f'patient{i:03d}'


def frame_files(root, i=2, phase='ED'):
    "(image, label) of patient i's ED or ES frame, named from its Info.cfg."
    d = patient(root, i)
    n = read_info(d / 'Info.cfg')[phase]
    img = d / f'{d.name}_frame{n:02d}.nii.gz'
    return img, img.with_name(img.name.replace('.nii.gz', '_gt.nii.gz'))


def set_info(path, drop=(), **kw):
    "Rewrite an Info.cfg without the keys in `drop` and with the values in `kw`."
    lines = {k.strip(): v.strip() for k, v in (l.split(':', 1) for l in path.read_text().splitlines() if ':' in l)}
    lines.update({k: str(v) for k, v in kw.items()})
    path.write_text(''.join(f'{k}: {v}\n' for k, v in lines.items() if k not in drop))


def patch_header(path, field, values):
    "Overwrite entries {index: value} of a header field of a .nii.gz as stored: nibabel's load-time fixes bypassed."
    raw = gzip.decompress(path.read_bytes())
    hdr = nib.Nifti1Header(raw[:348], check=False)
    for i, v in values.items(): hdr[field][i] = v
    path.write_bytes(gzip.compress(hdr.binaryblock + raw[348:]))


def reaffine(path, fn):
    "Rewrite a NIfTI file with affine `fn(affine)` (sform), keeping its voxels and voxel spacing."
    img = nib.load(str(path))
    aff = fn(img.affine.copy())
    out = nib.Nifti1Image(np.asanyarray(img.dataobj), aff, img.header.copy())
    out.header.set_sform(aff, code=2); out.header.set_qform(None, code=0)
    out.header.set_zooms(img.header.get_zooms())
    nib.save(out, str(path))
    back = nib.load(str(path))
    assert np.allclose(back.affine, aff) and back.header.get_zooms() == img.header.get_zooms()


def add_info_line(path, line):
    path.write_text(path.read_text() + line + '\n')


def found(problems, root):
    "{(type name, path relative to root)} of the problems."
    return {(type(p).__name__, p.path.relative_to(root).as_posix()) for p in problems}


def rel(root, p): return Path(p).relative_to(root).as_posix()


def loader_error(root, label_map=ACDC_LABELS):
    "The typed error the loaders raise on `root` (index, every labeled frame, every cine), or None."
    try:
        pats = index_acdc(root)
        for s in case_sources(pats): load_case(s, PrepParams(spacing=2.0, size=(64, 64), label_map=label_map))
        for p in pats: list(cine_volumes(p))
    except DataError as e: return e
    return None


# ---------------------------------------------------------------- the cases
def test_clean_dataset_has_no_problems(clean):
    assert check_dataset(clean) == []
    assert check_dataset(clean / 'training') == []  # a split folder works too
    assert loader_error(clean) is None


def _label_missing(r):
    img, lbl = frame_files(r); lbl.unlink(); return MissingFileError, lbl

def _image_missing(r):
    img, lbl = frame_files(r, phase='ES'); img.unlink(); return MissingFileError, img

def _truncated(r):
    img, lbl = frame_files(r)
    raw = img.read_bytes(); img.write_bytes(raw[:len(raw) // 2]); return CorruptFileError, img

def _truncated_header(r):
    img, lbl = frame_files(r)
    lbl.write_bytes(lbl.read_bytes()[:40]); return CorruptFileError, lbl

def _not_nifti(r):
    img, lbl = frame_files(r, phase='ES'); img.write_bytes(b'this is not a NIfTI file'); return CorruptFileError, img

def _nan(r):
    img, lbl = frame_files(r)
    def f(a): a = a.astype(np.float32); a[1, 2, 0] = np.nan; a[3, 3, 0] = np.inf; return a
    rewrite(img, f, np.float32); return IntensityError, img

def _four_d(r):
    img, lbl = frame_files(r); rewrite(img, lambda a: np.stack([a, a], -1)); return ShapeError, img

def _label_seven(r):
    img, lbl = frame_files(r); rewrite(lbl, lambda a: np.where(a == 3, 7, a).astype(np.uint8)); return LabelError, lbl

def _shape_mismatch(r):
    img, lbl = frame_files(r); rewrite(lbl, lambda a: a[:-3]); return ShapeError, lbl

def _spacing_mismatch(r):
    img, lbl = frame_files(r)
    z = nib.load(str(lbl)).header.get_zooms()
    rewrite(lbl, zooms=(z[0] * 1.1, z[1] * 1.1, z[2])); return ShapeError, lbl

def _constant(r):
    img, lbl = frame_files(r); rewrite(img, lambda a: np.full_like(a, 5)); return IntensityError, img

def _info_key(r):
    p = patient(r) / 'Info.cfg'; set_info(p, drop=('ES',)); return InfoError, p

def _info_missing(r):
    p = patient(r) / 'Info.cfg'; p.unlink(); return MissingFileError, p

def _info_bad_value(r):
    p = patient(r) / 'Info.cfg'; set_info(p, ED='first'); return InfoError, p

def _empty_patient(r):
    d = patient(r); shutil.rmtree(d); d.mkdir(); return LayoutError, d

def _zero_inplane_spacing(r):  # nibabel would read it as 1 mm and the frame would be resampled to the wrong size
    img, lbl = frame_files(r); patch_header(img, 'pixdim', {1: 0.0}); return ShapeError, img

def _zero_slice_spacing(r):
    img, lbl = frame_files(r); patch_header(lbl, 'pixdim', {3: 0.0}); return ShapeError, lbl

def _negative_spacing(r):  # nibabel would take its absolute value
    img, lbl = frame_files(r, phase='ES'); patch_header(img, 'pixdim', {2: -1.5}); return ShapeError, img

def _nan_spacing(r):
    img, lbl = frame_files(r); patch_header(lbl, 'pixdim', {1: np.nan}); return ShapeError, lbl

def _zero_cine_spacing(r):  # unlabeled: no label spacing to disagree with
    p = next(p for p in index_acdc(r) if p.cine); patch_header(p.cine, 'pixdim', {2: 0.0}); return ShapeError, p.cine

def _absurd_shape(r):
    img, lbl = frame_files(r); patch_header(img, 'dim', {1: 32767, 2: 32767, 3: 32767}); return ShapeError, img

def _more_voxels_than_the_file(r):
    img, lbl = frame_files(r)
    z = nib.load(str(img)).shape[2]
    patch_header(lbl, 'dim', {3: 10 * z}); return CorruptFileError, lbl

def _label_mirrored(r):
    img, lbl = frame_files(r); reaffine(lbl, lambda a: a @ np.diag([-1., 1., 1., 1.])); return ShapeError, lbl

def _label_shifted(r):
    img, lbl = frame_files(r, phase='ES')
    def f(a): a[:3, 3] += (0., 2.5, 0.); return a
    reaffine(lbl, f); return ShapeError, lbl

def _info_nan_height(r):
    p = patient(r) / 'Info.cfg'; set_info(p, Height='nan'); return InfoError, p

def _info_inf_weight(r):
    p = patient(r) / 'Info.cfg'; set_info(p, Weight='inf'); return InfoError, p

def _info_empty_group(r):
    p = patient(r) / 'Info.cfg'; set_info(p, Group=''); return InfoError, p

def _info_es_is_ed(r):
    p = patient(r) / 'Info.cfg'; set_info(p, ES=read_info(p)['ED']); return InfoError, p

def _info_duplicate_key(r):
    p = patient(r) / 'Info.cfg'; add_info_line(p, 'NbFrame: 30'); return InfoError, p

CASES = {'label missing': _label_missing, 'image missing': _image_missing, 'truncated gzip': _truncated,
         'truncated header': _truncated_header, 'not a nifti file': _not_nifti, 'nan and inf': _nan,
         '4D array as a frame': _four_d, 'label value 7': _label_seven, 'shape mismatch': _shape_mismatch,
         'spacing mismatch': _spacing_mismatch, 'constant image': _constant, 'Info.cfg key missing': _info_key,
         'Info.cfg missing': _info_missing, 'Info.cfg bad value': _info_bad_value, 'empty patient folder': _empty_patient,
         'zero in-plane spacing': _zero_inplane_spacing, 'zero slice spacing': _zero_slice_spacing,
         'negative spacing': _negative_spacing, 'NaN spacing': _nan_spacing, 'zero cine spacing': _zero_cine_spacing,
         'absurd header shape': _absurd_shape,
         'more voxels than the file holds': _more_voxels_than_the_file, 'label mirrored': _label_mirrored,
         'label shifted': _label_shifted, 'Info.cfg NaN height': _info_nan_height, 'Info.cfg inf weight': _info_inf_weight,
         'Info.cfg empty group': _info_empty_group, 'Info.cfg ES == ED': _info_es_is_ed,
         'Info.cfg duplicate key': _info_duplicate_key}

# what each message must say, beyond the file
SAYS = {'zero in-plane spacing': 'voxel spacing (0.0, ', 'zero slice spacing': 'voxel spacing (', 'negative spacing': '-1.5',
        'NaN spacing': 'voxel spacing (nan, ', 'zero cine spacing': 'voxel spacing (', 'absurd header shape': 'header claims shape (32767, 32767, 32767)',
        'more voxels than the file holds': 'the file holds', 'label mirrored': 'label axis directions',
        'label shifted': 'label origin', 'Info.cfg NaN height': "key 'Height' has non-finite value 'nan'",
        'Info.cfg inf weight': "key 'Weight' has non-finite value 'inf'", 'Info.cfg empty group': "key 'Group' is empty",
        'Info.cfg ES == ED': 'ED and ES are the same frame', 'Info.cfg duplicate key': "key 'NbFrame' appears more than once"}


@pytest.mark.parametrize('case', list(CASES))
def test_each_problem_is_reported_with_its_file_and_type(ds, case):
    err, path = CASES[case](ds)
    problems = check_dataset(ds)
    assert found(problems, ds) == {(err.__name__, rel(ds, path))}, [str(p) for p in problems]
    assert str(path) in str(problems[0])  # the message names the file
    e = loader_error(ds)  # the loaders raise the same error
    assert e is not None and (type(e), e.path) == (err, path), e
    if case in SAYS: assert SAYS[case] in problems[0].msg and SAYS[case] in e.msg, (problems[0].msg, e.msg)
    with pytest.raises(err, match=str(path)):  # and `glrp partition` refuses the dataset with it
        checked_index(ds)


def test_messages_say_what_is_wrong(ds):
    img, lbl = frame_files(ds)
    rewrite(lbl, lambda a: a[:-3])
    (p,) = check_dataset(ds)
    assert 'label shape' in p.msg and str(img) in p.msg  # names both files
    rewrite(lbl, lambda a: np.pad(a, ((0, 3), (0, 0), (0, 0))))
    rewrite(lbl, lambda a: np.where(a == 2, 7, a).astype(np.uint8))
    (p,) = check_dataset(ds)
    assert 'label values [7]' in p.msg
    set_info(patient(ds, 1) / 'Info.cfg', drop=('ES', 'Weight'))
    assert any("'ES', 'Weight' missing" in p.msg for p in check_dataset(ds))


def test_stray_folder_and_file(ds):
    (ds / 'training' / 'notes').mkdir()
    (ds / 'training' / 'patient1').mkdir()  # a typo: not patientXXX
    (ds / 'training' / 'scan.nii.gz').write_bytes(b'x')
    (ds / 'training' / 'MANDATORY_CITATION.md').write_text('cite us')  # allowed, as in ACDC
    (patient(ds) / 'MANDATORY_CITATION.md').write_text('cite us')  # allowed inside patients too
    (patient(ds) / 'segmentation').mkdir()
    (patient(ds) / 'patient003_frame01.nii.gz').write_bytes(b'x')  # another patient's file
    assert found(check_dataset(ds), ds) == {
        ('LayoutError', 'training/notes'), ('LayoutError', 'training/patient1'), ('LayoutError', 'training/scan.nii.gz'),
        ('LayoutError', 'training/patient002/segmentation'), ('LayoutError', 'training/patient002/patient003_frame01.nii.gz')}


def test_duplicate_id(ds):
    (ds / 'testing').mkdir()
    shutil.copytree(patient(ds), ds / 'testing' / 'patient002')
    problems = check_dataset(ds)
    assert found(problems, ds) == {('LayoutError', 'testing/patient002')}
    assert 'duplicate patient id patient002' in problems[0].msg and str(patient(ds)) in problems[0].msg
    with pytest.raises(LayoutError, match='duplicate patient folders: patient002'): index_acdc(ds)


def test_empty_folders(tmp_path, ds):
    assert found(check_dataset(tmp_path / 'nothing'), tmp_path) == {('LayoutError', 'nothing')}
    (tmp_path / 'empty').mkdir()
    assert found(check_dataset(tmp_path / 'empty'), tmp_path) == {('LayoutError', 'empty')}
    (ds / 'testing').mkdir()
    assert found(check_dataset(ds), ds) == {('LayoutError', 'testing')}
    (tmp_path / 'other').mkdir(); (tmp_path / 'other' / 'readme.txt').write_text('hi')
    p = check_dataset(tmp_path / 'other')
    assert found(p, tmp_path) == {('LayoutError', 'other')} and 'no patientXXX folders' in p[0].msg


def test_every_problem_not_just_the_first(ds):
    # three problems in patient002 (its ED label missing, NaNs in that same frame's image, Info.cfg without ES)
    expected = {(e.__name__, rel(ds, p)) for e, p in [_label_missing(ds), _nan(ds), _info_key(ds)]}
    # two in patient001, one stray folder
    img, lbl = frame_files(ds, 1, 'ES')
    rewrite(lbl, lambda a: np.where(a == 1, 9, a).astype(np.uint8))
    img1, _ = frame_files(ds, 1, 'ED')
    rewrite(img1, lambda a: np.zeros_like(a))
    (ds / 'training' / 'stray').mkdir()
    expected |= {('LabelError', rel(ds, lbl)), ('IntensityError', rel(ds, img1)), ('LayoutError', 'training/stray')}
    assert found(check_dataset(ds), ds) == expected


def test_cine_problems(ds):
    pats = index_acdc(ds)
    p = next(p for p in pats if p.cine)
    set_info(p.folder / 'Info.cfg', NbFrame=p.cine_shape[3] + 5)
    problems = check_dataset(ds)
    assert found(problems, ds) == {('ShapeError', rel(ds, p.cine))} and 'NbFrame' in problems[0].msg
    set_info(p.folder / 'Info.cfg', NbFrame=p.cine_shape[3])
    p.cine.write_bytes(p.cine.read_bytes()[:-2000])
    assert found(check_dataset(ds), ds) == {('CorruptFileError', rel(ds, p.cine))}


def test_label_map(ds, tmp_path):
    "An M&Ms-ordered copy is clean under MNMS_LABELS; a value outside that map is reported."
    for f in sorted(ds.rglob('*_gt.nii.gz')): rewrite(f, lambda a: np.array([0, 3, 2, 1], np.uint8)[a])
    assert check_dataset(ds, label_map=MNMS_LABELS) == []
    img, lbl = frame_files(ds)
    rewrite(lbl, lambda a: np.where(a == 2, 4, a).astype(np.uint8))
    assert found(check_dataset(ds, label_map=MNMS_LABELS), ds) == {('LabelError', rel(ds, lbl))}
    assert loader_error(ds, MNMS_LABELS).path == lbl


def test_real_acdc_is_clean(acdc_root):
    assert check_dataset(acdc_root / 'training') == []


@pytest.mark.parametrize('i,value', [(1, 0.0), (2, 0.0), (3, 0.0), (1, -1.5), (3, np.nan), (2, np.inf)])
def test_impossible_spacing_in_image_and_label(ds, i, value):
    "The same impossible spacing in a frame and its label (so they agree with each other) is refused in both, naming each file."
    img, lbl = frame_files(ds)
    for f in (img, lbl): patch_header(f, 'pixdim', {i: value})
    problems = check_dataset(ds)
    assert found(problems, ds) == {('ShapeError', rel(ds, img)), ('ShapeError', rel(ds, lbl))}, [str(p) for p in problems]
    assert all('voxel spacing' in p.msg and 'is not positive and finite' in p.msg for p in problems)
    e = loader_error(ds)
    assert (type(e), e.path) == (ShapeError, img), e
    with pytest.raises(ShapeError, match='voxel spacing'): load_volume(Source(img, lbl))
    with pytest.raises(ShapeError, match=str(img)): checked_index(ds)


def test_spacing_is_read_as_stored_not_as_nibabel_fixes_it(ds):
    "nibabel (this version) turns a zero pixdim into 1 mm and a negative one into its absolute value on load; the loader must not."
    img, lbl = frame_files(ds)
    z = nib.load(str(img)).header.get_zooms()
    patch_header(img, 'pixdim', {1: 0.0, 2: -z[1]})
    assert nib.load(str(img)).header.get_zooms()[:2] == (1.0, z[1])  # what a get_zooms() reader would have used
    with pytest.raises(ShapeError, match=r'voxel spacing \(0\.0, -'): load_volume(Source(img))


def test_affine_within_tolerance_is_clean(ds):
    "Image and label affines that differ by less than `GRID_TOL` (glrp.metrics' tolerance) are on the same grid."
    img, lbl = frame_files(ds)
    def f(a): a[:3, 3] += GRID_TOL / 4; a[:3, :3] *= 1.5; return a  # a tiny shift; the affine's scale is not the spacing
    reaffine(lbl, f)
    assert check_dataset(ds) == [] and loader_error(ds) is None


def test_header_limit_is_checked_before_decoding(ds):
    "A header claiming more than MAX_VOXELS voxels is refused from the header alone (index and loader), before any allocation."
    img, lbl = frame_files(ds)
    patch_header(img, 'dim', {1: 2 ** 10, 2: 2 ** 10, 3: 2 ** 8 + 1})  # MAX_VOXELS + 2**20 voxels
    with pytest.raises(ShapeError, match='more than MAX_VOXELS'): index_acdc(ds)
    (p,) = check_dataset(ds)
    assert (type(p), p.path) == (ShapeError, img) and f'{MAX_VOXELS:,}' in p.msg and '269,484,032 voxels' in p.msg


def test_checked_index(clean, ds):
    assert [p.id for p in checked_index(clean)] == [p.id for p in index_acdc(clean)]
    _label_seven(ds); _info_es_is_ed(ds)  # two problems
    problems = check_dataset(ds)
    with pytest.raises(DataError) as e: checked_index(ds)
    assert (type(e.value), e.value.path) == (type(problems[0]), problems[0].path)
    assert str(e.value).endswith('(and 1 more problem(s): check-data lists them all)')
