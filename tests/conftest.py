"Shared fixtures: the real ACDC folder (optional) and small synthetic datasets."
import os
from pathlib import Path
import numpy as np
import nibabel as nib
import pytest

ROOT = Path(__file__).resolve().parent.parent

@pytest.fixture(scope='session')
def acdc_root():
    "Real ACDC (`$GLRP_ACDC` or ../shared/acdc beside the project); skips the test when absent."
    from glrp.data import find_acdc
    p = find_acdc(os.environ.get('GLRP_ACDC') or (ROOT.parent/'shared'/'acdc'))
    if p is None or not (p/'training').is_dir():
        pytest.skip('real ACDC data absent (set GLRP_ACDC or put it in ../shared/acdc)')
    return p


def write_dataset(root, n=3, cine=1, seed=0):
    "A clean ACDC-layout dataset under `root`: `n` synthetic patients, the first `cine` with a 4D cine."
    from glrp.synthetic import write_phantom
    write_phantom(root, n_patients=n, seed=seed, cine=cine)
    return Path(root)


def rewrite(path, fn=lambda a: a, dtype=None, zooms=None):
    "Rewrite a NIfTI file with `fn` applied to its voxels, keeping affine and header (but dtype/zooms if given)."
    img = nib.load(str(path))
    a = fn(np.asanyarray(img.dataobj))
    hdr = img.header.copy()
    hdr.set_data_dtype(dtype or a.dtype)
    out = nib.Nifti1Image(a.astype(dtype or a.dtype), img.affine, hdr)
    if zooms is not None: out.header.set_zooms(zooms)
    nib.save(out, str(path))


def run_process_group(cmd, timeout, **kw):
    "subprocess.run for launchers like torchrun: on timeout, kill the launcher *and* its workers (its own session), then fail."
    import os, signal, subprocess
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, **kw)
    try: out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        pytest.fail(f"{' '.join(map(str, cmd[:4]))} ... timed out after {timeout} s; killed its process group\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)
