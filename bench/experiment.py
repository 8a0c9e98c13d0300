"""One experiment end to end, part by part, at one or more commits side by side.

Usage: .venv/bin/python bench/experiment.py [--data ACDC/training] [--profile cpu] [--method glrp] [--commits 04087a2 HEAD]
                                            [--rounds 1] [--keep DIR]

Runs `glrp reproduce --profile PROFILE --only main_table` on a profile cut to one method, one fold and one seed (figures off)
in a fresh output folder: the cache, the pretraining that method needs, the fine-tuning, CRF tuning and evaluation, as a user
would run them. Each commit runs from a temporary `git worktree` of this repository, imported through PYTHONPATH with this
environment's packages, so only glrp's code differs between the runs; with `--rounds` > 1 the commits alternate (a shared or
drifting machine then spreads over all of them). Prints the wall time and its parts, read from the runs' own logs: global and
local pretraining epochs, fine-tuning epochs, and the rest (cache, validation passes, checkpoints, CRF tuning, evaluation),
with each commit's speed-up over the first (its time / theirs). Nothing else should run meanwhile: the load average and the CPU capability are printed.

Without `--data` the profile must allow the synthetic phantom (e.g. `--profile smoke`); `cpu` and `study` need ACDC.
"""
import argparse, json, os, shutil, subprocess, sys, tempfile, time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

def git(*args) -> str: return subprocess.run(['git', '-C', str(REPO), *args], capture_output=True, text=True, check=True).stdout.strip()

def read_log(path) -> list:
    "A run's log.json: a list of epoch rows (older commits) or {'log': [...]}."
    d = json.loads(Path(path).read_text())
    return d['log'] if isinstance(d, dict) else d

def parts(out:Path) -> dict:
    "Seconds per part of the one experiment under `out`, from its result JSON and its runs' logs."
    res = next(out.glob('main_table/*/result.json'))
    r = json.loads(res.read_text())
    p = {'experiment (result.json)': r['seconds']}
    for log in out.glob('work/pretrain/*/log.json'):
        for row in read_log(log): p[f"pretraining, {row.get('stage', row.get('phase', 'global'))} epochs"] = p.get(f"pretraining, {row.get('stage', row.get('phase', 'global'))} epochs", 0.) + row['seconds']
    ft = res.parent/'finetune'/'log.json'
    if ft.is_file(): p['fine-tuning epochs'] = sum(row['seconds'] for row in read_log(ft))
    p['the rest (cache, validation, checkpoints, CRF, evaluation)'] = r['seconds'] - sum(v for k, v in p.items() if k.endswith('epochs'))
    p['test pooled Dice (no CRF)'] = next(e['summary']['pcl']['all']['mean'] for e in r['evaluations'] if e['split'] == 'test' and e['crf'] == 'none')
    return p

def run(commit:str, tree:Path, profile:Path, data, out:Path) -> float:
    cmd = [sys.executable, '-m', 'glrp.cli', 'reproduce', '--profile', str(profile), '--out', str(out), '--only', 'main_table']
    if data: cmd += ['--data', str(Path(data).absolute())]
    env = dict(os.environ, PYTHONPATH=str(tree))
    t = time.perf_counter()
    p = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    if p.returncode: raise SystemExit(f"{commit}: glrp reproduce failed (exit {p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    return time.perf_counter() - t

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--data', default=None, help='ACDC folder (root or training/); none: the synthetic phantom')
    ap.add_argument('--profile', default='cpu', help='base profile (cpu, study, smoke, ...)')
    ap.add_argument('--method', default='glrp', help='the one method to run')
    ap.add_argument('--commits', nargs='+', default=['HEAD'], help='commits to compare; the first is the reference')
    ap.add_argument('--rounds', type=int, default=1, help='runs per commit, alternating')
    ap.add_argument('--keep', default=None, help='keep the output folders here (default: a temporary folder, removed)')
    a = ap.parse_args()
    import torch
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
          f"{os.cpu_count()} CPUs; load average at start {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    base = Path(a.keep or tempfile.mkdtemp(prefix='glrp-e2e-')); base.mkdir(parents=True, exist_ok=True)
    prof = dict(base=a.profile, methods=[a.method], figures=False, ablation=[], run_folds=[0], seeds=[0])
    commits = {c: git('rev-parse', '--short', c) for c in a.commits}
    trees, results = {}, {c: [] for c in commits}
    try:
        for c, h in commits.items():
            trees[c] = base/f'tree-{h}'
            if not trees[c].exists(): git('worktree', 'add', '--detach', str(trees[c]), h)
        for k in range(a.rounds):
            for c, h in commits.items():
                keys = set(json.loads(subprocess.run([sys.executable, '-c', f"import json; from glrp.reproduce import PROFILES; print(json.dumps(list(PROFILES[{a.profile!r}])))"],
                                                     cwd=trees[c], env=dict(os.environ, PYTHONPATH=str(trees[c])), capture_output=True, text=True, check=True).stdout))
                (base/f'profile-{h}.json').write_text(json.dumps({k_: v for k_, v in prof.items() if k_ == 'base' or k_ in keys}))
                out = base/f'out-{h}-{k}'
                shutil.rmtree(out, ignore_errors=True)
                print(f"round {k + 1}: {c} ({h}) ...", flush=True)
                wall = run(c, trees[c], base/f'profile-{h}.json', a.data, out)
                results[c].append(dict(wall=wall, **parts(out)))
                print(f"  {wall:.0f} s; load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    finally:
        for t in trees.values(): subprocess.run(['git', '-C', str(REPO), 'worktree', 'remove', '--force', str(t)], capture_output=True)
        if not a.keep: shutil.rmtree(base, ignore_errors=True)
    ref = list(commits)[0]
    rows = ['wall (glrp reproduce)'] + [k for k in results[ref][0] if k != 'wall']
    mean = lambda c, k: sum(r.get(k, 0.) for r in results[c]) / len(results[c])
    print(f"\nprofile {a.profile}, method {a.method}, fold 0; seconds (mean of {a.rounds} run(s) per commit; each run: " +
          '; '.join(f"{c} " + ', '.join(f"{r['wall']:.0f}" for r in results[c]) for c in commits) + ")")
    print('| part | ' + ' | '.join(f'{c} ({commits[c]})' for c in commits) + ' | ' + ' | '.join(f'speed-up of {c}' for c in list(commits)[1:]) + ' |')
    print('|---|' + '---|' * (2 * len(commits) - 1))
    for k in rows:
        key = 'wall' if k.startswith('wall') else k
        vals = [mean(c, key) for c in commits]
        fmt = (lambda v: f'{v:.3f}') if 'Dice' in k else (lambda v: f'{v:.1f}')
        ratios = ['' if 'Dice' in k or not v else f'{vals[0] / v:.2f}x' for v in vals[1:]]
        print(f'| {k} | ' + ' | '.join(fmt(v) for v in vals) + ' | ' + ' | '.join(ratios) + ' |')

if __name__ == '__main__': main()
