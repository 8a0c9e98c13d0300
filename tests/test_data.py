"""Reading, preprocessing, restoring and caching volumes (glrp.data, glrp.preprocess, glrp.cache): on a small synthetic dataset and, when
present, on real ACDC (the 200-frame preprocess -> restore round trip)."""
import json, os, shutil, time
from pathlib import Path
import numpy as np
import nibabel as nib
import pytest
from glrp.data import (InputError, JSONRecord, atomic_path, write_json, DataError, MissingFileError, CorruptFileError, ShapeError, LabelError, IntensityError, LayoutError,
                       ACDC_LABELS, MNMS_LABELS, CLASSES, Source, index_acdc, read_patient,
                       load_nifti, load_image, load_label, load_volume, save_nifti_like, cine_volumes, cine_sources, nifti_header)
from glrp.preprocess import PrepParams, PrepMeta, preprocess, restore, resize_inplane, resize_labels, one_hot, argmax0, prep_geometry
from glrp.cache import Case, load_case, cache_path, preprocess_dataset, case_sources
from conftest import write_dataset, rewrite


def dice(a, b, c): return 2 * np.sum((a == c) & (b == c)) / max(1, np.sum(a == c) + np.sum(b == c))
def volume_dice(a, b): return float(np.mean([dice(a, b, c) for c in (1, 2, 3)]))  # one volume, mean over RV, MYO, LV (absent: 0)


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp('phantom'), n=3, cine=1)


@pytest.fixture(scope='module')
def pats(data): return index_acdc(data)


SMALL = PrepParams(spacing=1.25, size=(96, 96))


# ---------------------------------------------------------------- reading
@pytest.mark.parametrize('dtype', [np.int16, np.uint8, np.float32, np.float64])
def test_any_dtype_reads_as_float32_with_header_spacing(tmp_path, dtype):
    a = (np.arange(4 * 5 * 3).reshape(4, 5, 3) % 200).astype(dtype)
    img = nib.Nifti1Image(a, np.diag([-1., -1., 1., 1.]))  # ACDC: no scaling in the affine
    img.header.set_zooms((0.7, 1.3, 8.0))
    nib.save(img, str(tmp_path / 'a.nii.gz'))
    b, sp, _ = load_nifti(tmp_path / 'a.nii.gz')
    assert b.dtype == np.float32 and np.array_equal(b, a.astype(np.float32))
    assert sp == (0.7, 1.3, 8.0)  # from the header, not the affine's unit diagonal


def test_labels_canonical_and_errors(tmp_path):
    a = np.array([0, 1, 2, 3] * 6, np.uint8).reshape(2, 4, 3)
    for dt in (np.uint8, np.int16, np.float32):
        nib.save(nib.Nifti1Image(a.astype(dt), np.eye(4)), str(tmp_path / 'l.nii.gz'))
        assert np.array_equal(load_label(tmp_path / 'l.nii.gz')[0], a)
        assert np.array_equal(load_label(tmp_path / 'l.nii.gz', MNMS_LABELS)[0], np.array([0, 3, 2, 1])[a])
    nib.save(nib.Nifti1Image(np.where(a == 3, -2, a.astype(np.int16)), np.eye(4)), str(tmp_path / 'neg.nii.gz'))
    with pytest.raises(LabelError, match=r'neg.nii.gz: label values \[-2\] outside'): load_label(tmp_path / 'neg.nii.gz')
    nib.save(nib.Nifti1Image(np.where(a == 3, 300, a.astype(np.int16)), np.eye(4)), str(tmp_path / 'big.nii.gz'))
    with pytest.raises(LabelError, match=r'label values \[300\]'): load_label(tmp_path / 'big.nii.gz')


def test_truncated_gzip_is_corrupt_not_eof(pats, tmp_path):
    f = tmp_path / 'x.nii.gz'
    raw = pats[0].frames[0].image.read_bytes()
    for n in (len(raw) - 1, len(raw) - 10, len(raw) // 3, 200, 10):
        f.write_bytes(raw[:n])
        with pytest.raises(CorruptFileError, match='x.nii.gz'): load_image(f)


def test_uncompressed_nifti_shorter_than_its_header(pats, tmp_path):
    "A .nii holding fewer voxel bytes than its header claims is refused before decoding, naming the file."
    import gzip
    raw = gzip.decompress(pats[0].frames[0].image.read_bytes())
    (tmp_path / 'ok.nii').write_bytes(raw)
    assert np.array_equal(load_image(tmp_path / 'ok.nii')[0], load_image(pats[0].frames[0].image)[0])
    (tmp_path / 'short.nii').write_bytes(raw[:-100])
    with pytest.raises(CorruptFileError, match=r'short.nii: header claims .* the file holds'): load_image(tmp_path / 'short.nii')


def _old_spacing(path):
    "The spacing as glrp read it before it took the header as stored: nibabel's get_zooms(), rounded."
    return tuple(round(float(z), 6) for z in nib.load(str(path)).header.get_zooms()[:3])


def test_clean_spacing_and_shape_unchanged(data):
    "On clean files the header as stored gives exactly what nibabel's (fixed-up) header gave."
    for f in sorted(data.rglob('*.nii.gz')):
        shape, zooms = nifti_header(f)
        assert shape == nib.load(str(f)).shape and zooms[:3] == _old_spacing(f)
        assert load_nifti(f, len(shape))[1] == _old_spacing(f)


def test_clean_spacing_and_shape_unchanged_on_acdc(acdc_root):
    files = sorted((acdc_root / 'training').rglob('*.nii.gz'))
    assert len(files) == 401
    for f in files:
        shape, zooms = nifti_header(f)
        assert shape == nib.load(str(f)).shape and zooms[:3] == _old_spacing(f), f


def test_index_and_loaders_raise_typed_errors(data, tmp_path):
    with pytest.raises(LayoutError): index_acdc(tmp_path / 'none')
    (tmp_path / 'e').mkdir()
    with pytest.raises(LayoutError, match='no patientXXX'): index_acdc(tmp_path / 'e')
    d = Path(shutil.copytree(data, tmp_path / 'd'))
    (d / 'training' / 'patient003' / 'Info.cfg').unlink()
    with pytest.raises(MissingFileError, match='patient003/Info.cfg'): index_acdc(d)  # never skipped silently
    with pytest.raises(MissingFileError): load_case(d / 'training' / 'nope.nii.gz')


def test_data_errors_pickle():
    import pickle
    e = pickle.loads(pickle.dumps(ShapeError('/x/y.nii.gz', 'bad')))
    assert type(e) is ShapeError and e.path == Path('/x/y.nii.gz') and str(e) == '/x/y.nii.gz: bad'


# ---------------------------------------------------------------- preprocessing and its inverse
def test_preprocess_layout_and_meta(pats):
    fr = pats[0].frames[0]
    img, lab, sp = load_volume(fr)
    x, y, m = preprocess(img, sp, SMALL, lab)
    Z = img.shape[2]
    assert x.shape == y.shape == (Z, 96, 96) and x.dtype == np.float32 and y.dtype == np.uint8
    assert set(np.unique(y)) <= {0, 1, 2, 3}
    assert m.shape == img.shape and m.spacing == sp and m.size == (96, 96)
    assert m.resampled == tuple(round(n * s / 1.25) for n, s in zip(img.shape[:2], sp[:2]))
    assert np.allclose(m.out_spacing[:2], 1.25, rtol=0.01) and m.out_spacing[2] == sp[2]
    m2 = PrepMeta.from_dict(json.loads(json.dumps(m.to_dict())))
    assert m2 == m
    # z-score over the native volume: the resampled, uncropped volume has mean ~0 and std ~1
    full, _, _ = preprocess(img, sp, PrepParams(spacing=None, size=None))
    assert abs(full.mean()) < 1e-4 and abs(full.std() - 1) < 1e-3


def test_json_records():
    "`PrepParams` and `PrepMeta` share `JSONRecord`: JSON-ready dicts, round trips, unknown keys named."
    p = PrepParams(spacing=1.367, size=(192, 192), norm='minmax', clip=(1, 99))
    d = p.to_dict()
    assert d == json.loads(json.dumps(d)) and d['size'] == [192, 192] and d['label_map'] == {'1': 'RV', '2': 'MYO', '3': 'LV'}
    assert PrepParams.from_dict(d) == p and isinstance(p, JSONRecord)
    # the cache keys written before the mixin stay valid (update these only with CACHE_VERSION)
    assert [PrepParams().key(), p.key(), PrepParams(size=None, spacing=None).key()] == ['a96c69daa256', '661298d32f6e', '11e36d22b605']
    with pytest.raises(InputError, match='unknown PrepParams keys: sise, spcing; expected some of clip, label_map'):
        PrepParams.from_dict(dict(sise=1, spcing=2))
    m = prep_geometry((216, 256, 10), (1.5625, 1.5625, 10.), p)
    assert PrepMeta.from_dict(m.to_dict()) == m and m.params == d and m.to_dict()['offset'] == list(m.offset)
    with pytest.raises(InputError, match='unknown PrepMeta keys: zoom2'): PrepMeta.from_dict({**m.to_dict(), 'zoom2': 1})


def test_atomic_writes(tmp_path):
    f = write_json(dict(a=(1, 2), p=Path('x')), tmp_path / 'new' / 'r.json')  # the folder is created
    assert json.loads(f.read_text()) == dict(a=[1, 2], p='x') and f.read_text().endswith('}\n')
    with pytest.raises(OSError, match='disk full'):
        with atomic_path(f) as t:
            t.write_text('half'); raise OSError('disk full')
    assert json.loads(f.read_text()) == dict(a=[1, 2], p='x') and os.listdir(f.parent) == ['r.json']  # old file kept, no temporary


def test_clip_and_minmax(pats):
    img, _, sp = load_volume(pats[0].frames[0])
    x, _, m = preprocess(img, sp, PrepParams(spacing=None, size=None, norm='minmax', clip=(1, 99)))
    lo, hi = np.percentile(img, (1, 99))
    assert np.allclose(m.clip_range, (lo, hi)) and x.min() == 0 and np.isclose(x.max(), 1)
    assert np.allclose(x, (np.clip(np.moveaxis(img, 2, 0), lo, hi) - lo) / (hi - lo), atol=1e-6)


def test_cubic_and_linear_agree_on_smooth_images():
    xx, yy = np.meshgrid(np.linspace(0, 3, 60), np.linspace(0, 2, 50), indexing='ij')
    vol = np.stack([np.sin(xx + z) * np.cos(yy) + 2 for z in range(3)], -1).astype(np.float32)
    a, _, _ = preprocess(vol, (1.0, 1.0, 5.0), PrepParams(spacing=0.5, size=None, order=1, norm='none'))
    b, _, _ = preprocess(vol, (1.0, 1.0, 5.0), PrepParams(spacing=0.5, size=None, order=3, norm='none'))
    assert a.shape == b.shape == (3, 120, 100) and np.abs(a - b).max() < 0.01


def test_label_resampling_invents_no_values():
    rng = np.random.default_rng(0)
    lab = rng.choice(np.array([0, 1, 3], np.uint8), size=(3, 40, 30))  # no 2 anywhere
    for shape in [(57, 61), (23, 11)]:
        for mode in ('onehot', 'nearest'):
            assert set(np.unique(resize_labels(lab, shape, mode))) <= {0, 1, 3}
        # the four-neighbour vote equals the argmax of the resampled one-hot encoding
        assert np.array_equal(resize_labels(lab, shape), argmax0(resize_inplane(one_hot(lab), shape)))


@pytest.mark.parametrize('size', [(96, 96), (40, 36), None])
def test_restore_round_trip_phantom(pats, size):
    "Preprocess -> restore of labels (and of probabilities) on the phantom; cropping loses only what was cropped."
    p = PrepParams(spacing=1.25, size=size)
    for pt in pats:
        for fr in pt.frames:
            img, lab, sp = load_volume(fr)
            _, y, m = preprocess(img, sp, p, lab)
            back = restore(y, m)
            assert back.shape == lab.shape and back.dtype == np.uint8
            assert np.array_equal(restore(one_hot(y), m), back)
            pr = restore(one_hot(y), m, probs=True)
            assert pr.shape == (4, *lab.shape) and np.allclose(pr.sum(0), 1, atol=1e-5)
            if size != (40, 36): assert volume_dice(back, lab) > 0.95
            else:  # a tight crop: what lies outside it comes back as background
                assert back.max() <= 3 and (back > 0).sum() <= (lab > 0).sum()


def test_restore_inverts_crop_and_pad_exactly_without_resampling():
    lab = np.random.default_rng(1).integers(0, 4, (30, 20, 4)).astype(np.uint8)
    for size in [(40, 40), (30, 20), (16, 50)]:
        _, y, m = preprocess(lab.astype(np.float32), (1.25, 1.25, 8.0), PrepParams(size=size), lab)
        back = restore(y, m)
        o = m.offset
        inside = np.zeros(lab.shape[:2], bool)
        inside[max(0, -o[0]):max(0, -o[0]) + size[0], max(0, -o[1]):max(0, -o[1]) + size[1]] = True
        assert np.array_equal(back[inside], lab[inside]) and (back[~inside] == 0).all()


def test_restore_rejects_wrong_shape(pats):
    img, lab, sp = load_volume(pats[0].frames[0])
    _, y, m = preprocess(img, sp, SMALL, lab)
    with pytest.raises(ValueError, match='is not'): restore(y[:, 1:], m)


def test_save_nifti_like_keeps_the_header(pats, tmp_path):
    fr = pats[0].frames[0]
    img, lab, sp = load_volume(fr)
    _, y, m = preprocess(img, sp, SMALL, lab)
    out = save_nifti_like(restore(y, m), fr.label, tmp_path / 'pred' / 'p.nii.gz')
    ref, new = nib.load(str(fr.label)), nib.load(str(out))
    assert new.get_data_dtype() == np.uint8 and np.allclose(new.affine, ref.affine)
    for k in ('dim', 'pixdim', 'qform_code', 'sform_code', 'srow_x', 'srow_y', 'srow_z', 'quatern_b', 'quatern_c',
              'quatern_d', 'qoffset_x', 'qoffset_y', 'qoffset_z', 'xyzt_units'):
        assert np.array_equal(new.header[k], ref.header[k]), k
    assert [p.name for p in out.parent.iterdir()] == ['p.nii.gz']
    f = save_nifti_like(img * 0.5, fr.image, tmp_path / 'f.nii')
    assert nib.load(str(f)).get_data_dtype() == np.float32
    with pytest.raises(ShapeError, match="reference's shape"): save_nifti_like(lab[:-1], fr.label, tmp_path / 'x.nii.gz')


def test_save_nifti_like_on_acdc(acdc_root, tmp_path):
    ref = acdc_root / 'training' / 'patient001' / 'patient001_frame01_gt.nii.gz'
    lab, _, rimg = load_label(ref)
    out = save_nifti_like(lab, ref, tmp_path / 'a.nii.gz')
    new = nib.load(str(out))
    assert np.array_equal(np.asanyarray(new.dataobj), lab)
    assert np.array_equal(new.header['pixdim'], rimg.header['pixdim']) and np.array_equal(new.affine, rimg.affine)
    assert new.header['sform_code'] == rimg.header['sform_code'] and new.header['qform_code'] == rimg.header['qform_code']


def test_round_trip_dice_on_all_acdc_frames(acdc_root):
    "Original label vs preprocess (1.25 mm, 352 x 352) -> restore: mean Dice (RV, MYO, LV) >= 0.97 on every frame."
    pats = index_acdc(acdc_root / 'training')
    scores = {}
    for p in pats:
        for fr in p.frames:
            img, lab, sp = load_volume(fr)
            _, y, m = preprocess(img, sp, PrepParams(), lab)
            scores[fr.name] = volume_dice(restore(y, m), lab)
    assert len(scores) == 200
    worst = min(scores, key=scores.get)
    print(f"round-trip mean Dice: min {scores[worst]:.4f} ({worst}), mean {np.mean(list(scores.values())):.4f}")
    assert scores[worst] >= 0.97, (worst, scores[worst])


# ---------------------------------------------------------------- label maps
def test_mnms_relabelled_copy_loads_like_the_original(data, tmp_path):
    d = Path(shutil.copytree(data, tmp_path / 'mnms'))
    for f in d.rglob('*_gt.nii.gz'): rewrite(f, lambda a: np.array([0, 3, 2, 1], np.uint8)[a])
    orig, mnms = index_acdc(data), index_acdc(d)
    pm = PrepParams(spacing=1.25, size=(96, 96), label_map=MNMS_LABELS)
    for po, pn in zip(orig, mnms):
        for fo, fn in zip(po.frames, pn.frames):
            assert np.array_equal(load_volume(fn, MNMS_LABELS)[1], load_volume(fo)[1])
            assert np.array_equal(load_case(fn, pm).label, load_case(fo, SMALL).label)
    assert pm.key() != SMALL.key()  # the label map is part of the cache key


# ---------------------------------------------------------------- cine
def test_cine_volumes_and_sources(pats):
    p = next(p for p in pats if p.cine)
    vols = list(cine_volumes(p))
    T = p.cine_shape[3]
    assert [t for t, _ in vols] == list(range(1, T + 1)) and T == p.nb_frames
    assert all(v.shape == p.frames[0].shape and v.dtype == np.float32 for _, v in vols)
    srcs = cine_sources(p)
    assert [s.t for s in srcs] == list(range(1, T + 1)) and all(s.label is None for s in srcs)
    c = load_case(srcs[-1], SMALL)
    assert c.label is None and c.image.shape == (p.frames[0].shape[2], 96, 96) and c.name.endswith(f'_4d_frame{T:02d}')
    x, _, _ = preprocess(vols[-1][1], p.frames[0].spacing, SMALL)
    assert np.array_equal(c.image, x)
    assert list(cine_volumes(next(p for p in pats if not p.cine))) == []


def test_cine_on_acdc_patient090(acdc_root):
    p = read_patient(acdc_root / 'training' / 'patient090')
    vols = dict(cine_volumes(p))
    assert len(vols) == p.nb_frames
    for fr in p.frames: assert np.array_equal(vols[fr.frame], load_image(fr.image)[0])
    c = load_case(cine_sources(p)[p.es - 1])
    assert c.image.shape == (p.frames[0].shape[2], 352, 352)


# ---------------------------------------------------------------- the disk cache
def test_cache_hit_equals_fresh(pats, tmp_path):
    fr = pats[1].frames[1]
    a = load_case(fr, SMALL, tmp_path)
    b = load_case(fr, SMALL, tmp_path)
    c = load_case(fr, SMALL)
    assert (a.cached, b.cached, c.cached) == (False, True, False)
    for x in (b, c):
        assert np.array_equal(x.image, a.image) and np.array_equal(x.label, a.label) and x.meta == a.meta
    assert cache_path(fr, SMALL, tmp_path).suffix == '.npz'
    with np.load(cache_path(fr, SMALL, tmp_path)) as z: assert not z.zip.infolist()[0].compress_type  # stored


def test_cache_invalidated_by_touch_rewrite_and_params(pats, tmp_path):
    fr = pats[0].frames[0]
    assert not load_case(fr, SMALL, tmp_path).cached
    assert load_case(fr, SMALL, tmp_path).cached
    # touching the image: recomputed (in place: same entry)
    t = time.time_ns() + 10**9
    os.utime(fr.image, ns=(t, t))
    assert not load_case(fr, SMALL, tmp_path).cached and load_case(fr, SMALL, tmp_path).cached
    # rewriting the label (same size, new contents): recomputed, and the new contents show
    raw = fr.label.read_bytes()
    try:
        rewrite(fr.label, lambda a: np.where(a == 1, 0, a).astype(np.uint8))
        c = load_case(fr, SMALL, tmp_path)
        assert not c.cached and 1 not in np.unique(c.label)
    finally:
        fr.label.write_bytes(raw)
    assert not load_case(fr, SMALL, tmp_path).cached
    assert len(list(tmp_path.glob('*.npz'))) == 1
    # a changed parameter: a new entry beside the old one
    s2 = PrepParams(spacing=1.5, size=(96, 96))
    c2 = load_case(fr, s2, tmp_path)
    assert not c2.cached and load_case(fr, s2, tmp_path).cached and len(list(tmp_path.glob('*.npz'))) == 2
    assert c2.meta.out_spacing[0] == pytest.approx(1.5, rel=0.02)
    assert load_case(fr, SMALL, tmp_path).cached  # the old entry is still valid


def test_broken_cache_entry_is_a_miss(pats, tmp_path):
    fr = pats[0].frames[1]
    load_case(fr, SMALL, tmp_path)
    p = cache_path(fr, SMALL, tmp_path)
    p.write_bytes(p.read_bytes()[:1000])
    c = load_case(fr, SMALL, tmp_path)
    assert not c.cached and load_case(fr, SMALL, tmp_path).cached
    assert not any(f.name.startswith('.') for f in tmp_path.iterdir())  # no temporaries left


def test_preprocess_dataset_parallel(pats, tmp_path):
    paths = preprocess_dataset(pats, SMALL, tmp_path / 'c', workers=2, cine=True)
    srcs = case_sources(pats, cine=True)
    assert len(paths) == len(srcs) == 2 * len(pats) + sum(p.cine_shape[3] for p in pats if p.cine)
    assert all(p.is_file() for p in paths)
    for s in srcs:
        c = load_case(s, SMALL, tmp_path / 'c')
        assert c.cached
        if s.t is None or s.t in (1, 3): assert np.array_equal(c.image, load_case(s, SMALL).image)  # as computed alone
    mtimes = [p.stat().st_mtime_ns for p in paths]
    preprocess_dataset(pats, SMALL, tmp_path / 'c', workers=1, cine=True)  # all hits: nothing rewritten
    assert [p.stat().st_mtime_ns for p in paths] == mtimes


def test_preprocess_dataset_raises_the_typed_error(data, tmp_path):
    d = Path(shutil.copytree(data, tmp_path / 'd'))
    pats = index_acdc(d)
    lbl = pats[1].frames[0].label
    rewrite(lbl, lambda a: np.where(a == 2, 7, a).astype(np.uint8))
    with pytest.raises(LabelError, match=str(lbl)): preprocess_dataset(pats, SMALL, tmp_path / 'c', workers=2)
