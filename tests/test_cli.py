"The `glrp` command's exit codes: 2 and one line for input the user can fix (`InputError`), a traceback and 1 for anything else (a bug)."
import os, subprocess, sys
import pytest
import glrp.cli as cli
from glrp.cli import main
from glrp.data import InputError, DataError
from glrp.synthetic import write_phantom

def test_user_input_errors_are_typed():
    "Every error a user's input raises derives from `InputError`; errors of the code itself do not."
    from glrp.partition import PartitionError, ManifestError
    from glrp.crf import ProbabilityError
    from glrp.distributed import LaunchError, RankMismatchError
    from glrp.reproduce import NotebookError
    from glrp.train import DivergenceError
    for e in (DataError, PartitionError, ManifestError, ProbabilityError, LaunchError, NotebookError): assert issubclass(e, InputError), e
    for e in (RankMismatchError, DivergenceError): assert not issubclass(e, InputError), e
    assert issubclass(InputError, ValueError)  # code that catches ValueError keeps working

def test_config_error_is_input_error():
    "Settings that cannot run (`glrp.train.ConfigError`) are the user's input: exit code 2 (tests/test_reliability.py runs them)."
    from glrp.train import ConfigError
    assert issubclass(ConfigError, InputError)

@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp('cli')
    write_phantom(root/'data', n_patients=3, seed=0)
    return root

@pytest.mark.parametrize('argv, msg', [
    (['synth', '{root}/x', '--patients', '2', '--cine', '3'], 'glrp synth: error: cine=3 must lie in 0..n_patients=2'),
    (['partition', '{root}/data', '--out', '{root}/m.json', '--folds', '5'], 'glrp partition: error: folds=5 is larger than the number of patients (3)'),
    (['partition', '{root}/absent', '--out', '{root}/m.json'], 'glrp partition: error: {root}/absent: dataset folder does not exist'),
    (['reproduce', '--profile', 'nosuch', '--out', '{root}/r'], "glrp reproduce: error: unknown profile 'nosuch'"),
    (['reproduce', '--profile', 'cpu', '--out', '{root}/r'], "glrp reproduce: error: profile 'cpu' needs real data"),
])
def test_input_errors_exit_2_with_one_line(tiny, capsys, argv, msg):
    code = main([a.format(root=tiny) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith(msg.format(root=tiny)) and len(err.splitlines()) == 1, (code, err)
    assert not (tiny/'x').exists() and not (tiny/'m.json').exists()

def test_a_bug_is_not_reported_as_bad_input(monkeypatch, capsys, tmp_path):
    "A plain ValueError inside a command (a bug) propagates: no exit code 2, no 'error:' line."
    def buggy(args): raise ValueError('index 3 is out of bounds for axis 0 with size 3')
    monkeypatch.setattr(cli, 'cmd_synth', buggy)
    with pytest.raises(ValueError, match='index 3 is out of bounds'): main(['synth', str(tmp_path/'x')])
    assert 'error' not in capsys.readouterr().err

@pytest.mark.timeout(180)
def test_a_bug_ends_with_traceback_and_exit_1(tmp_path):
    "From the shell, the same bug ends with its traceback and exit code 1."
    code = ("import sys, glrp.cli as c\n"
            "def buggy(args): raise ValueError('index 3 is out of bounds for axis 0 with size 3')\n"
            "c.cmd_synth = buggy\n"
            "sys.exit(c.main(['synth', 'x']))\n")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=tmp_path, timeout=170,
                       env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
    assert 'Traceback' in r.stderr and 'ValueError: index 3 is out of bounds' in r.stderr, r.stderr[-2000:]
    assert 'glrp synth: error' not in r.stderr
