"One pytest item per notebook in nbs/: runs it with nbdev's test_nb (cells flagged with tst_flags skipped)."
from pathlib import Path
import pytest
from nbdev.config import get_config
from nbdev import test as nbdev_test  # not `import test_nb`: pytest would collect it

NBS = Path(__file__).resolve().parent.parent/'nbs'
NOTEBOOKS = sorted(NBS.glob('[0-9]*.ipynb'))

@pytest.mark.timeout(600)
@pytest.mark.parametrize('nb', NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook(nb):
    ok, secs = nbdev_test.test_nb(nb, skip_flags=get_config().tst_flags.split(), do_print=False)
    print(f'{nb.name}: {secs:.1f} s')
    assert ok, f'{nb.name} failed (traceback above)'
