"Shared fixtures: the real ACDC folder (optional) and small synthetic datasets."
import os
from pathlib import Path
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
