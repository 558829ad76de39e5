"""What SSOD buys: vanilla vs SSOD fine-tuning of the Table-6 families on the built-in benchmark,
every detector of the harness on every built-in OOD set, several seeds (mean ± std).

Per backbone: one vanilla stage 1 from scratch (seed 0; it stands in for the fixed pretrained
weights of the paper), then for each seed ``lib.run_protocol``: a vanilla and
an SSOD fine-tune with the same budget and seed, evaluated on the test splits.

Beyond the paper, scores that try to keep SSOD's gain on far OOD without its loss on near
OOD (``timm_ssod.detectors.registry.EXPERIMENTAL_DETECTORS``), on the SSOD model:

* ``ssod_msp`` (Eq. 7's posterior, already in the harness),
* ``energy_ssod``: energy + w * log-odds of P(ID); **w is chosen on the validation split**
  (ID ``val`` and the OOD sets' ``val`` splits: lowest mean FPR95) from ``WEIGHTS``, then
  scored once on the test splits; the test metrics of every w are recorded too
  (``weight_grid``), so the cost of choosing on validation is visible,
* ``ssod_patch_max``: max over locations of P(ID) instead of the pooled head,
* ``ssod_energy_rank``: min of the ID quantiles of SSOD and Energy (no weight).

    python benchmarks/quality.py                   # 4 backbones x 2 seeds (7 core-hours: about 3.5 h on 2 cores, as below)
    python benchmarks/quality.py --backbones resnet18 --seeds 0 1
    python benchmarks/quality.py --quick           # tiny model and data (tests)
    python benchmarks/quality.py --from-standins --out benchmarks/quality_converged.json   # from weights/, 7x7

``--from-standins`` is the paper's protocol (issue 21): no stage 1; every fine-tune starts from the
shipped stand-in for pretrained weights (``weights/<backbone>.safetensors``, the backbones that have
one) at the size and ``model_kwargs`` it was trained at (read from the JSON beside it: a 7x7 map from
64-px renders), at the paper's fine-tune lr 1e-4 (the from-scratch stage 1's 5e-4 was sized for a weak
start). Everything else (sizes, seeds, detectors, decisions) is the from-scratch run's.
``--keep-checkpoints`` keeps each fine-tune's kept epoch (``benchmarks/evidence.py`` scores them).

On a 2-core machine, one single-thread process per core finishes about twice as fast; merge
their JSON afterwards (nothing is retrained):

    OMP_NUM_THREADS=1 python benchmarks/quality.py --backbones densenet121 mobilenetv3_large_100 --out a.json &
    OMP_NUM_THREADS=1 python benchmarks/quality.py --backbones resnet18 regnety_008 --out b.json; wait
    python benchmarks/quality.py --merge a.json b.json
    # or one seed per core: --seeds 0 --out s0.json & --seeds 1 --out s1.json, then --merge s0.json s1.json

Per SSOD run it also measures calibrated decisions (``lib.decisions_checkpoint``):
``ssod_fused`` and its components calibrated on the ID validation split, the share of ID *test*
images rejected at each alpha against its expected value, and the share of each OOD set caught.

Writes benchmarks/quality.json (or --out) atomically after every run; a rerun with the same
settings skips the runs already there (and reuses each backbone's stage 1), so an interrupted
run resumes. ``make_tables.py --docs`` turns it into the tables of docs/study/quality.md. Prints one line
per step.
"""
import argparse
import json
import os
import platform
import sys
import time
from collections import OrderedDict

import numpy as np
import timm
import torch

from timm_ssod._util import atomic_write_text
from timm_ssod.conformal import min_calibration_size
from timm_ssod.data import BACKGROUNDS, DEFAULT_BACKGROUND, OOD_SETS
from lib import EnergySSOD, log_odds
from timm_ssod.evaluate import AVERAGE, DEFAULT_DETECTORS
from timm_ssod.metrics import ood_metrics
from lib import (command_line, decisions_checkpoint, evaluate_checkpoint, read_result,
                                   remove_checkpoints, results_text, run_protocol, train_stage, train_stage_once)
from lib import SHIPPED
from lib import WEIGHTS_DIR

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)  # paths in the JSON are relative to the repository
# CPU-sized versions of the Table-6 families: 64-px images, a 4x4 map where the backbone allows
BACKBONES = OrderedDict([
    ('resnet18', dict(model_kwargs={'output_stride': 16}, img_size=64)),
    # timm's DenseNet has no output_stride: a 2x2 map at 64 px (3x3 needs 96 px, 2.3x the cost)
    ('densenet121', dict(model_kwargs={}, img_size=64)),
    ('regnety_008', dict(model_kwargs={'output_stride': 16}, img_size=64)),
    # timm's MobileNetV3 has no output_stride either: 4x4 at 128 px (the 64-px images upsampled)
    ('mobilenetv3_large_100', dict(model_kwargs={}, img_size=128)),
])
SIZES = dict(num_images=4000, stage1_epochs=8, finetune_epochs=3, num_val=200, num_test=400, num_ood=400, num_fit=800,
             batch_size=64, lr=2e-3, finetune_lr=5e-4)
# --from-standins: no stage 1, the paper's fine-tune lr (the model_kwargs and sizes are the stand-in's own)
STANDIN_SIZES = dict(SIZES, stage1_epochs=0, finetune_lr=1e-4)
QUICK_BACKBONES = OrderedDict([('test_resnet', dict(model_kwargs={'output_stride': 16}, img_size=64))])
QUICK_SIZES = dict(num_images=64, stage1_epochs=1, finetune_epochs=1, num_val=20, num_test=32, num_ood=32, num_fit=32,
                   batch_size=16, lr=2e-3, finetune_lr=5e-4)
WEIGHTS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
EXPERIMENTAL = ('energy_ssod', 'ssod_patch_max', 'ssod_energy_rank')
# calibrated decisions (ID rejection vs alpha, OOD caught): the fused score and its components
DECISION_DETECTORS = ('ssod', 'mahalanobis', 'energy', 'ssod_fused')
DECISION_ALPHAS = (0.01, 0.05, 0.1)  # those the ID validation split can reach are measured


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--backbones', nargs='*', default=None, help=f'subset of {", ".join(BACKBONES)}')
    p.add_argument('--seeds', nargs='*', type=int, default=[0, 1], help='fine-tuning seeds')
    p.add_argument('--quick', action='store_true', help='tiny model and data, one seed (for tests)')
    p.add_argument('--background', default=DEFAULT_BACKGROUND, choices=list(BACKGROUNDS),
                   help="the benchmark's backgrounds: natural (default) or smooth (the paper's A.5 failure case)")
    p.add_argument('--runs-dir', default='./output/benchmarks/quality', help='training runs and per-run results')
    p.add_argument('--out', default=os.path.join(HERE, 'quality.json'))
    p.add_argument('--from-standins', action='store_true',
                   help='fine-tune from the stand-ins for pretrained weights (<weights-dir>/<backbone>.safetensors) '
                        'at the size they were trained at, no stage 1 (default backbones: those shipped)')
    p.add_argument('--weights-dir', default=WEIGHTS_DIR, help='where --from-standins finds the stand-ins')
    p.add_argument('--keep-checkpoints', action='store_true',
                   help="keep each fine-tune's kept epoch under --runs-dir (benchmarks/evidence.py scores them)")
    p.add_argument('--merge', nargs='+', metavar='JSON', default=None,
                   help='combine the backbones of runs made in parallel into --out (trains nothing)')
    return p.parse_args(argv)


MUST_AGREE = ('sizes', 'seeds', 'ood_sets', 'weights', 'background', 'start')
# what a JSON written before a setting existed had: smooth backgrounds, a stage 1 from scratch
OLD_DEFAULTS = {'background': 'smooth', 'start': 'scratch'}


def merge(paths):
    """One result from the JSON of runs with the same settings on disjoint backbones, or on disjoint seeds of
    one backbone (one process per seed and core): every backbone must end with every seed of the files."""
    parts = []
    for path in paths:
        try:
            with open(path) as f:
                parts.append(json.load(f))
        except (OSError, ValueError) as e:
            sys.exit(f'--merge: cannot read {path}: {e}')
    first = parts[0]
    out = {k: first.get(k, OLD_DEFAULTS.get(k)) for k in MUST_AGREE}
    out.update(command='; '.join(p['command'] for p in parts), environment=[p['environment'] for p in parts],
               seconds=max(p['seconds'] for p in parts), merged_from=list(paths), backbones=OrderedDict())
    for path, part in zip(paths, parts):
        for key in MUST_AGREE:
            if key != 'seeds' and part.get(key, OLD_DEFAULTS.get(key)) != first.get(key, OLD_DEFAULTS.get(key)):
                sys.exit(f'--merge: {path} has {key}={part.get(key)!r}, {paths[0]} has {first.get(key)!r}; '
                         'only runs with the same settings can be merged')
        for name, entry in part['backbones'].items():
            have = out['backbones'].get(name)
            if have is None:
                out['backbones'][name] = entry
                continue
            twice = sorted({r['seed'] for r in have['runs']} & {r['seed'] for r in entry['runs']})
            if twice:
                sys.exit(f'--merge: backbone {name!r} seed(s) {twice} appear in more than one file ({path})')
            if (have['config'], have['stage1']) != (entry['config'], entry['stage1']):
                sys.exit(f'--merge: backbone {name!r} has another configuration or start in {path}')
            runs = sorted(have['runs'] + entry['runs'], key=lambda r: r['seed'])
            out['backbones'][name] = dict(have, runs=runs, summary=summarize(runs))
    out['seeds'] = sorted({seed for p in parts for seed in p['seeds']})
    for name, entry in out['backbones'].items():
        seeds = sorted(r['seed'] for r in entry['runs'])
        if seeds != out['seeds']:
            sys.exit(f'--merge: backbone {name!r} has seeds {seeds}, the merged files {out["seeds"]}: every backbone '
                     'needs every seed')
    return out


def combine(energy, ssod, w):
    """energy_ssod's score from raw Energy and SSOD scores (the detector's formula)."""
    return energy + w * log_odds(torch.from_numpy(ssod)).numpy()


def weight_metrics(scores, w):
    """{ood_set: metrics} of energy_ssod with weight w, from raw scores (EvalScores)."""
    id_s = combine(scores.id_scores['energy'], scores.id_scores['ssod'], w)
    return {s: ood_metrics(id_s, combine(o['energy'], o['ssod'], w)) for s, o in scores.ood_scores.items()}


def _mean(by_set, key):
    return float(np.mean([m[key] for m in by_set.values()]))


def choose_weight(val_scores):
    """The w of ``WEIGHTS`` with the lowest mean validation FPR95 (ties: higher AUROC, then smaller w)."""
    grid = {w: weight_metrics(val_scores, w) for w in WEIGHTS}
    best = min(WEIGHTS, key=lambda w: (_mean(grid[w], 'fpr95'), -_mean(grid[w], 'auroc'), w))
    return best, {str(w): {'fpr95': _mean(m, 'fpr95'), 'auroc': _mean(m, 'auroc')} for w, m in grid.items()}


def experimental_rows(ckpt, cfg, sizes, background=DEFAULT_BACKGROUND):
    """Choose energy_ssod's w on the val splits, then score the experimental detectors on the test splits."""
    common = dict(img_size=cfg['img_size'], num_classes=6, num_test=sizes['num_test'], num_ood=sizes['num_ood'],
                  progress=False, return_scores=True, background=background, render_size=cfg.get('render_size'))
    _, val_scores = evaluate_checkpoint(ckpt, ['energy', 'ssod'], split='val', num_fit=0, **common)
    w, val_grid = choose_weight(val_scores)
    dets = ['energy', 'ssod', EnergySSOD(weight=w), 'ssod_patch_max', 'ssod_energy_rank']
    result, test_scores = evaluate_checkpoint(ckpt, dets, split='test', num_fit=sizes['num_fit'], **common)
    test_grid = {str(v): {'fpr95': _mean(m, 'fpr95'), 'auroc': _mean(m, 'auroc')}
                 for v, m in ((v, weight_metrics(test_scores, v)) for v in WEIGHTS)}
    rows = {f'{d} (SSOD model)': {'results': result['results'][d], 'average': result[AVERAGE][d]} for d in EXPERIMENTAL}
    return rows, {'chosen_weight': w, 'val_mean_by_weight': val_grid, 'test_mean_by_weight': test_grid}


def run_rows(record, extra):
    """{row label: {ood_set or 'average': {fpr95, auroc}}} of one run, experimental rows included."""
    table = record['table']
    rows = {label: dict(by_set, average=table[AVERAGE][label]) for label, by_set in table['results'].items()}
    rows.update({label: dict(r['results'], average=r['average']) for label, r in extra.items()})
    return {label: {s: {k: m[k] for k in ('fpr95', 'auroc')} for s, m in by_set.items()} for label, by_set in rows.items()}


def mean_std(values):
    return {'mean': float(np.mean(values)), 'std': float(np.std(values)), 'n': len(values)}


def summarize(runs):
    """Mean ± std over seeds of ID accuracy and every (row, set, metric)."""
    first = runs[0]['rows']
    rows = {label: {s: {k: mean_std([r['rows'][label][s][k] for r in runs]) for k in m}
                    for s, m in by_set.items()} for label, by_set in first.items()}
    acc = {kind: mean_std([r['id_accuracy'][kind] for r in runs]) for kind in runs[0]['id_accuracy']}
    return {'id_accuracy': acc, 'rows': rows, 'chosen_weights': [r['energy_ssod']['chosen_weight'] for r in runs]}


def resumable(path, header):
    """The backbones already in ``path`` when it was made with the same settings (a rerun skips
    their finished seeds); {} when there is no such file. Other settings: an error, not an overwrite."""
    old = read_result(path)
    if old is None:
        return {}
    differs = [k for k in MUST_AGREE if old.get(k, OLD_DEFAULTS.get(k)) != header[k]]
    if differs:
        sys.exit(f'{path} was made with other settings ({", ".join(differs)}); move it away or use another --out')
    return old.get('backbones', {})


def shared_stage1(root, name, cfg, sizes, background):
    """The vanilla stage 1 of ``name``, trained once: a rerun reads it back (``train_stage_once``)."""
    return train_stage_once(root, lambda: train_stage(
        'stage1_vanilla', root, backbone=name, ssod=False, seed=0, epochs=sizes['stage1_epochs'], lr=sizes['lr'],
        num_images=sizes['num_images'], num_val=sizes['num_val'], num_classes=6, batch_size=sizes['batch_size'],
        background=background, **cfg))


def standin_config(name, weights_dir, background):
    """(config, starting weights record) of ``<weights_dir>/<name>.safetensors``: the fine-tunes use the
    input size, render size and model_kwargs the stand-in was trained at (the JSON beside it)."""
    file = os.path.join(weights_dir, f'{name}.safetensors')
    info = read_result(os.path.splitext(file)[0] + '.json')
    if not os.path.isfile(file) or info is None:
        sys.exit(f'--from-standins: no {file} with its JSON beside it; train it with benchmarks/standin.py {name}')
    if info.get('background', background) != background:
        sys.exit(f'--from-standins: {file} was trained on {info["background"]} backgrounds, this run uses '
                 f'{background} (--background)')
    cfg = dict(model_kwargs=dict(info.get('model_kwargs') or {}), img_size=info['input_size'],
               render_size=info['render_size'])
    start = {'file': os.path.relpath(file, ROOT) if not os.path.relpath(file, ROOT).startswith('..')
             else os.path.basename(file),
             **{k: info.get(k) for k in ('sha256', 'images', 'epochs', 'best_epoch', 'id_test_accuracy', 'commits')}}
    return cfg, start


def environment():
    return {'python': platform.python_version(), 'torch': torch.__version__, 'timm': timm.__version__,
            'threads': torch.get_num_threads(), 'cpu_count': os.cpu_count(), 'load_average': os.getloadavg()}


def main(argv=None):
    args = parse_args(argv)
    if args.merge:
        out = merge(args.merge)
        atomic_write_text(args.out, results_text(out, ROOT))
        print(f'merged {len(out["backbones"])} backbones from {len(args.merge)} files into {args.out}')
        return out
    backbones, sizes = (QUICK_BACKBONES, QUICK_SIZES) if args.quick else (BACKBONES, SIZES)
    seeds = args.seeds[:1] if args.quick else args.seeds
    starts = {}
    if args.from_standins:
        sizes = dict(sizes, stage1_epochs=0, finetune_lr=STANDIN_SIZES['finetune_lr'])
        names = args.backbones or (list(QUICK_BACKBONES) if args.quick else list(SHIPPED))
        backbones = OrderedDict()
        for name in names:
            backbones[name], starts[name] = standin_config(name, args.weights_dir, args.background)
    elif args.backbones:
        unknown = set(args.backbones) - set(BACKBONES) - set(QUICK_BACKBONES)
        if unknown:
            sys.exit(f'unknown backbone(s) {sorted(unknown)}; choose from {", ".join(BACKBONES)}')
        backbones = OrderedDict((b, {**BACKBONES, **QUICK_BACKBONES}[b]) for b in args.backbones)
    start = time.time()
    out = {'command': command_line('python benchmarks/quality.py', sys.argv[1:] if argv is None else argv, ROOT),
           'environment': environment(), 'sizes': sizes, 'seeds': seeds, 'ood_sets': list(OOD_SETS),
           'weights': list(WEIGHTS), 'background': args.background,
           'start': 'standins' if args.from_standins else 'scratch', 'backbones': OrderedDict()}
    previous = resumable(args.out, out)
    steps, step = len(backbones) * (1 + len(seeds)), 0
    for name, cfg in backbones.items():
        root = os.path.abspath(os.path.join(args.runs_dir, name))
        step += 1
        done = {r['seed']: r for r in previous.get(name, {}).get('runs', [])}
        if all(s in done for s in seeds):
            print(f'[quality {step}/{steps}] {name}: all seeds in {args.out}, skipped', flush=True)
            out['backbones'][name] = previous[name]
            step += len(seeds)
            continue
        if args.from_standins:
            print(f'[quality {step}/{steps}] {name}: starts from {starts[name]["file"]} (no stage 1)', flush=True)
            stage1 = starts[name]
        else:
            print(f'[quality {step}/{steps}] {name}: stage 1 (vanilla from scratch, {sizes["stage1_epochs"]} epochs)',
                  flush=True)
            stage1 = shared_stage1(root, name, cfg, sizes, args.background)
        entry = out['backbones'][name] = {'config': cfg, 'stage1': stage1, 'runs': []}
        for seed in seeds:
            step += 1
            if seed in done:
                print(f'[quality {step}/{steps}] {name} seed {seed}: in {args.out}, skipped', flush=True)
                entry['runs'].append(done[seed])
                continue
            t = time.time()
            print(f'[quality {step}/{steps}] {name} seed {seed}: vanilla vs SSOD fine-tune, evaluation', flush=True)
            start_from = (dict(pretrained_path=os.path.abspath(os.path.join(args.weights_dir, f'{name}.safetensors')))
                          if args.from_standins else dict(stage1_checkpoint=stage1['checkpoint']))
            record = run_protocol(name, cfg['model_kwargs'], cfg['img_size'], sizes['num_images'],
                                  sizes['stage1_epochs'], sizes['finetune_epochs'], seed, detectors=DEFAULT_DETECTORS,
                                  out_dir=os.path.join(root, f'seed{seed}'), progress=False,
                                  background=args.background, render_size=cfg.get('render_size'), **start_from,
                                  **{k: sizes[k] for k in ('num_val', 'num_test', 'num_ood', 'num_fit', 'batch_size',
                                                           'lr', 'finetune_lr')})
            ssod_ckpt = record['finetune']['ssod']['checkpoint']
            extra, weights = experimental_rows(ssod_ckpt, cfg, sizes, args.background)
            decisions = decisions_checkpoint(ssod_ckpt, DECISION_DETECTORS, img_size=cfg['img_size'], num_classes=6,
                                             num_fit=sizes['num_fit'], num_calib=sizes['num_val'],
                                             num_test=sizes['num_test'], num_ood=sizes['num_ood'],
                                             background=args.background, render_size=cfg.get('render_size'), alphas=[
                                                 a for a in DECISION_ALPHAS if min_calibration_size(a) <= sizes['num_val']])
            for kind in record['finetune']:
                kept = record['finetune'][kind]['checkpoint']
                remove_checkpoints(os.path.dirname(kept), keep=kept if args.keep_checkpoints else None)
            run = {'seed': seed, 'id_accuracy': record['table']['id_accuracy'], 'rows': run_rows(record, extra),
                   'epochs_kept': {k: v['best_epoch'] for k, v in record['finetune'].items()},
                   'sampler_alignment': record['sampler_alignment'],
                   'energy_ssod': weights, 'decisions': decisions, 'seconds': round(time.time() - t, 1)}
            entry['runs'].append(run)
            entry['summary'] = summarize(entry['runs'])
            out['seconds'] = round(time.time() - start, 1)
            atomic_write_text(args.out, results_text(out, ROOT))
            acc = ', '.join(f'{k} {100 * v:.1f}%' for k, v in run['id_accuracy'].items())
            avg = {label: 100 * r['average']['fpr95'] for label, r in run['rows'].items()}
            best = min((v, k) for k, v in avg.items() if 'vanilla' in k)
            reject = decisions['detectors']['ssod_fused']['id_rejection']['0.05']['rate']
            print(f'[quality {step}/{steps}] {name} seed {seed}: ID acc {acc}; mean FPR95 ssod '
                  f'{avg["ssod (SSOD model)"]:.1f}, ssod_fused {avg["ssod_fused (SSOD model)"]:.1f}, best vanilla '
                  f'baseline {best[1]} {best[0]:.1f}, energy_ssod (w={weights["chosen_weight"]}) '
                  f'{avg["energy_ssod (SSOD model)"]:.1f}; ssod_fused rejects {100 * reject:.1f}% of ID test images '
                  f'at alpha 5% ({run["seconds"]:.0f}s)', flush=True)
    print(f'wrote {args.out} ({time.time() - start:.0f}s)')
    return out


if __name__ == '__main__':
    main()
