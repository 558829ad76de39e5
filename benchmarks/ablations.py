"""SSOD's hyper-parameters (the paper's Tables 4 and 5, plus the sampler threshold) on the demo's
backbone and the built-in benchmark: lambda, the balance scheme and gamma, one at a time
around the default (gamma 0.95, lambda 1.0, lwb).

One vanilla stage 1 (as ``timm-ssod demo``), then one SSOD fine-tune per setting from it with
the same budget and seed (``lib.run_protocol``); the default setting also gets
the vanilla fine-tune, whose best baselines are the reference. Reported per setting: FPR95 /
AUROC of the SSOD score (and of ``ssod_msp``) per OOD set and on average, ID accuracy, and the
sampler's share of ID / OOD / ignored locations in the last fine-tuning epoch.

    python benchmarks/ablations.py                 # 9 settings in the demo's regime (about 27 min on one core)
    python benchmarks/ablations.py --only lam      # one sweep
    python benchmarks/ablations.py --quick         # tiny model and data (tests)

Several seeds: one process per seed (each its own stage 1 and fine-tunes), then merge; make_tables
reports mean ± std over the seeds:

    OMP_NUM_THREADS=1 python benchmarks/ablations.py --seed 1 --out s1.json --runs-dir output/abl1 &
    OMP_NUM_THREADS=1 python benchmarks/ablations.py --seed 2 --out s2.json --runs-dir output/abl2; wait
    python benchmarks/ablations.py --merge benchmarks/ablations.json s1.json s2.json

Writes benchmarks/ablations.json (or --out) atomically after every setting; a rerun with the same
protocol and seed skips the settings already there and reuses the stage 1, so an interrupted run
resumes (another protocol or seed: an error, not an overwrite). Prints one line per step.
"""
import argparse
import csv
import json
import os
import sys
import time
from collections import OrderedDict

import timm
import torch

from timm_ssod._util import atomic_write_text
from lib import DEMO_SCRATCH, QUICK
from timm_ssod.evaluate import AVERAGE
from lib import (command_line, read_result, remove_checkpoints, results_text, run_protocol,
                                   train_stage, train_stage_once)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)  # paths in the JSON are relative to the repository
DEFAULT = dict(gamma=0.95, lam=1.0, balance='lwb')
SWEEPS = OrderedDict([('lam', (0.5, 0.7, 1.0, 1.2, 1.5)), ('balance', ('lw', 'dr', 'lwb')), ('gamma', (0.9, 0.95, 0.99))])
QUICK_SWEEPS = OrderedDict([('lam', (0.5, 1.0)), ('balance', ('lwb',)), ('gamma', (0.95,))])
SSOD_SCORES = ('ssod', 'ssod_msp')
REFERENCE = ('msp', 'energy', 'mahalanobis', 'knn', 'vim')  # baselines of the vanilla fine-tune, for reference


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--only', nargs='*', choices=list(SWEEPS), default=None, help='run these sweeps only')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--quick', action='store_true', help='tiny model and data (for tests)')
    p.add_argument('--runs-dir', default='./output/benchmarks/ablations', help='training runs')
    p.add_argument('--out', default=os.path.join(HERE, 'ablations.json'))
    p.add_argument('--merge', nargs='+', metavar='JSON', default=None,
                   help='combine single-seed results (or earlier merges) into --out (trains nothing)')
    return p.parse_args(argv)


def single_runs(d):
    """The single-seed results in a result file: itself, or the runs of a merge."""
    return d['runs'] if 'runs' in d else [d]


def merge(paths):
    """One multi-seed result from single-seed ones with the same protocol (seed aside) and settings."""
    runs = []
    for path in paths:
        try:
            with open(path) as f:
                runs += single_runs(json.load(f))
        except (OSError, ValueError) as e:
            sys.exit(f'--merge: cannot read {path}: {e}')
    ref = runs[0]
    same = lambda r: ({k: v for k, v in r['protocol'].items() if k != 'seed'}, list(r['settings']))  # noqa: E731
    for r in runs[1:]:
        if same(r) != same(ref):
            sys.exit(f'--merge: the seed-{r["protocol"]["seed"]} run has another protocol or other settings than '
                     f'the seed-{ref["protocol"]["seed"]} run; only reruns with another --seed can be merged')
    seeds = [r['protocol']['seed'] for r in runs]
    if len(set(seeds)) != len(seeds):
        sys.exit(f'--merge: seeds {seeds} repeat; each run must have its own --seed')
    return {'command': '; '.join(r['command'].strip() for r in runs), 'seeds': seeds,
            'seconds': max(r.get('seconds', 0) for r in runs), 'runs': runs}


def settings(sweeps):
    """Unique settings in sweep order, the default first: [(key, {gamma, lam, balance})]."""
    unique = OrderedDict([('default', dict(DEFAULT))])
    for name, values in sweeps.items():
        for v in values:
            s = dict(DEFAULT, **{name: v})
            if s != DEFAULT:
                unique[f'{name}={v}'] = s
    return unique


def sampler_shares(run_dir):
    """Share of ID / OOD / ignored locations in the last epoch, from the run's summary.csv."""
    with open(os.path.join(run_dir, 'summary.csv')) as f:
        last = list(csv.DictReader(f))[-1]
    return {k: float(last[f'train_{k}_frac']) for k in ('id', 'ood', 'ignored') if f'train_{k}_frac' in last}


def protocol_base(quick: bool) -> dict:
    """The protocol settings that every ablation shares: the demo's from-scratch regime (stage 1
    trained here; the ablations were run before the stand-in weights were shipped), or the quick one."""
    base = dict(QUICK if quick else DEMO_SCRATCH)
    base.pop('log_interval', None)
    base.pop('detectors', None)  # each setting scores SSOD_SCORES (+ REFERENCE for the default)
    return base


def resumable(path, protocol):
    """The finished part of ``path`` (its settings and vanilla reference) when it was made with
    ``protocol``; {} when there is no such file. Another protocol or seed: an error, not an overwrite."""
    old = read_result(path)
    if old is None:
        return {}
    if old.get('protocol') != json.loads(json.dumps(protocol)):  # as JSON stores it (tuples become lists)
        sys.exit(f'{path} was made with another protocol or seed; move it away or use another --out')
    return old


def main(argv=None):
    args = parse_args(argv)
    if args.merge:
        out = merge(args.merge)
        atomic_write_text(args.out, results_text(out, ROOT))
        print(f'merged seeds {out["seeds"]} into {args.out}')
        return out
    base = protocol_base(args.quick)
    sweeps = QUICK_SWEEPS if args.quick else SWEEPS
    if args.only:
        sweeps = OrderedDict((k, v) for k, v in sweeps.items() if k in args.only)
    todo = settings(sweeps)
    root = os.path.join(os.path.abspath(args.runs_dir), f'seed{args.seed}')  # seeds may share a --runs-dir
    start = time.time()
    out = {'command': command_line('python benchmarks/ablations.py', sys.argv[1:] if argv is None else argv, ROOT),
           'environment': {'torch': torch.__version__, 'timm': timm.__version__, 'threads': torch.get_num_threads(),
                           'cpu_count': os.cpu_count(), 'load_average_at_start': os.getloadavg()},
           'protocol': dict(base, seed=args.seed), 'default': DEFAULT, 'sweeps': {k: list(v) for k, v in sweeps.items()},
           'settings': OrderedDict()}
    old = resumable(args.out, out['protocol'])
    done = dict(old.get('settings', {}))
    if set(done) - set(todo):  # a rerun with --only would drop them
        sys.exit(f'{args.out} holds settings this run does not ({", ".join(sorted(set(done) - set(todo)))}); '
                 'use another --out')
    if 'vanilla_reference' in old and 'default' in done:
        out['vanilla_reference'] = old['vanilla_reference']
    out['settings'] = OrderedDict((k, done[k]) for k in todo if k in done)
    earlier = old.get('seconds', 0.0) if done else 0.0  # a resumed run reports the time of all its parts
    steps = 1 + len(todo)
    print(f'[ablations 1/{steps}] stage 1: vanilla {base["backbone"]} from scratch (reused if trained)', flush=True)
    train = {k: base[k] for k in ('backbone', 'model_kwargs', 'img_size', 'num_images', 'num_val', 'batch_size',
                                  'render_size', 'background') if k in base}
    train['img_size'] = base.get('stage1_img_size') or base['img_size']  # as the demo trains its stage 1
    stage1 = train_stage_once(root, lambda: train_stage(
        'stage1_vanilla', root, epochs=base['stage1_epochs'], lr=base['lr'], ssod=False, seed=args.seed,
        num_classes=6, **train))
    out['stage1'] = stage1
    for i, (key, s) in enumerate(todo.items(), 2):
        if key in done and (key != 'default' or 'vanilla_reference' in out):
            print(f'[ablations {i}/{steps}] {key}: done in {args.out}, skipped', flush=True)
            continue
        t = time.time()
        vanilla = key == 'default'
        print(f'[ablations {i}/{steps}] {key}: SSOD fine-tune (gamma {s["gamma"]}, lambda {s["lam"]}, '
              f'{s["balance"]}){" and the vanilla reference" if vanilla else ""}', flush=True)
        detectors = SSOD_SCORES + (REFERENCE if vanilla else ())
        record = run_protocol(**{k: v for k, v in base.items() if k != 'num_fit'}, seed=args.seed, **s,
                              detectors=detectors, out_dir=os.path.join(root, key), stage1_checkpoint=stage1['checkpoint'],
                              vanilla=vanilla, num_fit=base['num_fit'] if vanilla else 0, progress=False)
        ssod = record['eval']['ssod']
        entry = {'setting': s, 'id_accuracy': ssod['id_accuracy'], 'epoch': record['finetune']['ssod']['best_epoch'],
                 'sampler': sampler_shares(os.path.dirname(record['finetune']['ssod']['checkpoint'])),
                 'scores': {d: dict(ssod['results'][d], average=ssod[AVERAGE][d]) for d in SSOD_SCORES},
                 'seconds': round(time.time() - t, 1)}
        if vanilla:
            van = record['eval']['vanilla']
            out['vanilla_reference'] = {'id_accuracy': van['id_accuracy'],
                                        'scores': {d: dict(van['results'][d], average=van[AVERAGE][d]) for d in REFERENCE}}
        for kind in record['finetune']:
            remove_checkpoints(os.path.dirname(record['finetune'][kind]['checkpoint']))
        done[key] = entry
        out['settings'] = OrderedDict((k, done[k]) for k in todo if k in done)  # sweep order, default first
        out['seconds'] = round(earlier + time.time() - start, 1)
        atomic_write_text(args.out, results_text(out, ROOT))
        avg = entry['scores']['ssod']['average']
        print(f'[ablations {i}/{steps}] {key}: ID acc {100 * entry["id_accuracy"]:.1f}%, ssod mean FPR95 '
              f'{100 * avg["fpr95"]:.1f} AUROC {100 * avg["auroc"]:.1f}; backgrounds FPR95 '
              f'{100 * entry["scores"]["ssod"]["backgrounds"]["fpr95"]:.1f}, novel_objects '
              f'{100 * entry["scores"]["ssod"]["novel_objects"]["fpr95"]:.1f} ({entry["seconds"]:.0f}s)', flush=True)
    print(f'wrote {args.out} ({time.time() - start:.0f}s)')
    return out


if __name__ == '__main__':
    main()
