"""SSOD in its own regime: which factor decides whether the SSOD score works?

A controlled grid on the built-in benchmark, every other setting fixed:

* **background**: ``smooth`` (gradients, blobs, flat colours: the paper's A.5 failure case) or
  ``natural`` (dead leaves, 1/f noise, terrain, clouds, oriented 1/f gratings);
* **scale**: ``native`` (64-px images, a 4x4 map: every cell sees nearly the whole image) or
  ``paper`` (the same 64-px renders resized *up* by timm's transforms to a 7x7 map, as the
  paper's Table 2 resizes CIFAR to 224: ResNet at output stride 16 gets 7x7 at 112 px,
  MobileNetV3, which has no output stride, at 224 px). Only the input scale changes, not the
  content: 32-px renders (CIFAR's size) learnt too slowly for this CPU budget (50% ID
  accuracy after 3 of 8 stage-1 epochs, against 97% at 64 px);
* **backbone**: ``resnet10t`` (the ResNet family; ResNet-18 costs 1.6x more per image on CPU)
  and ``mobilenetv3_small_100`` (the MobileNetV3 family; Large costs 4.6x more at 224 px);
* **seed**: 0 and 1 (fine-tuning seed).

One vanilla stage 1 per (background, backbone), trained from scratch at the native scale on
``stage1_images`` images, stands in for fixed pretrained weights (the paper fine-tunes
ImageNet weights) and is shared by both scales and both seeds, so the scale factor changes the
fine-tuning and test input only, not the starting classifier. (A first version trained stage 1
at each scale on 1500 images, 140 optimizer steps: 52-61% ID accuracy, too weak a classifier
for the sampler's gamma = 0.95 to mean anything.)

Each cell runs ``lib.run_protocol`` (a vanilla stage 1 from scratch, then a
vanilla and an SSOD fine-tune with the same budget, the best-validation-FPR95 epoch kept,
the harness on the test splits) and records the sampler's alignment (does Eq. 12 label the
pure-background cells OOD?), SSOD's FPR95 / AUROC per OOD set, the best logit baseline and
the best feature-space baseline (both on the vanilla model) and ID accuracy.

Then the paper's Table-2 protocol in the grid's best cell (lowest mean SSOD FPR95 over its
seeds): SSOD **from scratch for the whole run** against vanilla from scratch, the same
total epoch budget as stage 1 + fine-tune.

    python benchmarks/regime.py                      # the whole study (about 3 h of 2 CPU cores, 2 processes)
    python benchmarks/regime.py --shard 0/2 & python benchmarks/regime.py --shard 1/2; wait   # the same, in parallel
    python benchmarks/regime.py --quick --out output/regime_quick.json   # tiny sizes (tests)
    python benchmarks/make_tables.py --docs --regime-figure docs/figures/regime.png   # docs/study/regime.md, figure

Every finished cell is added to ``--out`` at once (under a file lock, written atomically);
a rerun skips the cells already there, so an interrupted study resumes where it stopped,
and shards (or ``--only`` runs started later) share one file: a configuration another live
process is running is skipped.
"""
import argparse
import contextlib
import fcntl
import os
import platform
import sys
import time
from collections import OrderedDict

import numpy as np
import timm
import torch

from timm_ssod._util import atomic_write_text
from timm_ssod.data import OOD_SETS
from timm_ssod.evaluate import AVERAGE
from lib import (command_line, evaluate_checkpoint, read_result, remove_checkpoints, results_text,
                                   run_protocol, sampler_alignment, train_stage, train_stage_once)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)  # paths in the JSON are relative to the repository

BACKGROUNDS = ('smooth', 'natural')
# scale -> backbone -> (render size, input size, timm kwargs); both scales give the grid named
SCALES = OrderedDict([
    ('native', {'resnet10t': (64, 64, {'output_stride': 16}),            # 4x4
                'mobilenetv3_small_100': (64, 128, {})}),                 # 4x4 (no output_stride in timm's class)
    ('paper', {'resnet10t': (64, 112, {'output_stride': 16}),            # 7x7
               'mobilenetv3_small_100': (64, 224, {})}),                  # 7x7
])
BACKBONES = ('resnet10t', 'mobilenetv3_small_100')
SEEDS = (0, 1)
# sized for about 2 h of 2 busy CPU cores (two shards, one thread each)
SIZES = dict(stage1_images=3000, num_images=1200, stage1_epochs=6, finetune_epochs=2, num_val=150, num_test=300,
             num_ood=300, num_fit=600, batch_size=32, lr=2e-3, finetune_lr=5e-4)
SCRATCH_EPOCHS = 8  # stage 1 + fine-tune
QUICK_SCALES = OrderedDict([('native', {'test_resnet': (32, 32, {'output_stride': 16})}),
                            ('paper', {'test_resnet': (16, 56, {'output_stride': 16})})])
QUICK_SIZES = dict(stage1_images=48, num_images=48, stage1_epochs=1, finetune_epochs=1, num_val=16, num_test=24, num_ood=24, num_fit=24,
                   batch_size=16, lr=2e-3, finetune_lr=5e-4)

# the harness's baselines, by the evidence they use (all run on the vanilla model)
LOGIT_BASELINES = ('msp', 'maxlogit', 'energy', 'odin', 'klm')
FEATURE_BASELINES = ('mahalanobis', 'knn', 'react', 'vim')
# every cell scores the same detectors (the harness's default set when the study started, fixed
# here so cells stay comparable), plus ssod_patch_max: P(ID) of the best location instead of the
# OOD head on the pooled feature (Eq. 15), to tell a head that fails from a pooling that fails
CELL_DETECTORS = LOGIT_BASELINES + FEATURE_BASELINES + ('ssod', 'ssod_msp', 'ssod_patch_max')
def cell_key(background, scale, backbone, seed):
    return f'{background}/{scale}/{backbone}/seed{seed}'


def configs(scales, backbones):
    """Every (background, scale, backbone) of the grid: backbone by backbone, native scale first."""
    return [(b, s, m) for m in backbones for s in scales for b in BACKGROUNDS if m in scales[s]]


def shard(items, index, count):
    """Shard ``index`` of ``count``: the backgrounds are dealt out (each shard trains its own stage 1s)."""
    return [c for c in items if BACKGROUNDS.index(c[0]) % count == index % count] if count <= len(BACKGROUNDS) \
        else [c for i, c in enumerate(items) if i % count == index]


@contextlib.contextmanager
def locked(path):
    """An exclusive lock beside ``path`` (two shards add cells to one file)."""
    with open(path + '.lock', 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def add_entry(path, section, key, value, header, sections=('cells', 'from_scratch')):
    """Add ``value`` under ``[section][key]`` of the JSON at ``path`` (created with ``header`` and
    an empty mapping per name in ``sections``)."""
    with locked(path):
        data = read_result(path) or dict(header, **{s: OrderedDict() for s in sections})
        data[section][key] = value
        atomic_write_text(path, results_text(data, ROOT))


def best_of(rows, names, ood_sets):
    """Per OOD set and on average: the lowest FPR95 among detectors ``names`` (with its name)."""
    out = {}
    for s in list(ood_sets) + [AVERAGE]:
        name = min(names, key=lambda d: rows[d][s]['fpr95'])
        out[s] = {'detector': name, 'fpr95': rows[name][s]['fpr95'], 'auroc': rows[name][s]['auroc']}
    return out


def summarize_eval(result, ood_sets):
    """{detector: {set or 'average': {fpr95, auroc}}} of one harness result."""
    rows = {}
    for det, by_set in result['results'].items():
        rows[det] = {s: {k: by_set[s][k] for k in ('fpr95', 'auroc')} for s in ood_sets}
        rows[det][AVERAGE] = {k: result[AVERAGE][det][k] for k in ('fpr95', 'auroc')}
    return rows


def cell_record(record, background, scale, backbone, seed, render, size, kwargs, ood_sets,
                logit_baselines=LOGIT_BASELINES, feature_baselines=FEATURE_BASELINES):
    """One cell of a ``run_protocol`` record: its factors, ID accuracy of both arms, the sampler's
    alignment, the SSOD scores, every detector on both models and the best logit / feature-space
    baseline on the vanilla model (picked per OOD set on the test results: an oracle)."""
    ssod_rows = summarize_eval(record['eval']['ssod'], ood_sets)
    vanilla_rows = summarize_eval(record['eval']['vanilla'], ood_sets)
    return {
        'background': background, 'scale': scale, 'backbone': backbone, 'seed': seed, 'render_size': render,
        'input_size': size, 'model_kwargs': kwargs, 'grid': record['sampler_alignment']['grid'],
        'id_accuracy': record['table']['id_accuracy'], 'sampler_alignment': record['sampler_alignment'],
        'ssod': ssod_rows['ssod'], 'ssod_msp': ssod_rows['ssod_msp'],
        'ssod_patch_max': ssod_rows.get('ssod_patch_max'),
        'best_logit': best_of(vanilla_rows, logit_baselines, ood_sets),
        'best_feature': best_of(vanilla_rows, feature_baselines, ood_sets),
        'vanilla': vanilla_rows, 'ssod_model': ssod_rows,
        'epochs_kept': {k: v['best_epoch'] for k, v in record['finetune'].items()},
        'seconds': record['seconds'],
    }


def shared_stage1(args, background, backbone, sizes, scales):
    """The vanilla stage 1 of (background, backbone), at the native scale; trained once (another
    process training it is waited for), then read from its marker (``train_stage_once``)."""
    render, size, kwargs = scales['native'][backbone]
    root = os.path.abspath(os.path.join(args.runs_dir, background, 'stage1', backbone))

    def train():
        print(f'[regime] {background}/{backbone}: stage 1 ({sizes["stage1_epochs"]} epochs on '
              f'{sizes["stage1_images"]} images at {size} px)', flush=True)
        return train_stage('stage1_vanilla', root, backbone=backbone, model_kwargs=kwargs, img_size=size,
                           render_size=render, background=background, num_classes=6, ssod=False, seed=0,
                           epochs=sizes['stage1_epochs'], lr=sizes['lr'], num_images=sizes['stage1_images'],
                           num_val=sizes['num_val'], batch_size=sizes['batch_size'])
    return train_stage_once(root, train)


def run_config(args, background, scale, backbone, seeds, sizes, scales, header, done):
    render, size, kwargs = scales[scale][backbone]
    root = os.path.abspath(os.path.join(args.runs_dir, background, scale, backbone))
    todo = [s for s in seeds if cell_key(background, scale, backbone, s) not in done]
    if not todo:
        print(f'[regime] {background}/{scale}/{backbone}: all seeds done, skipped', flush=True)
        return
    stage1 = shared_stage1(args, background, backbone, sizes, scales)
    for seed in todo:
        t = time.time()
        print(f'[regime] {background}/{scale}/{backbone} seed {seed}: fine-tunes and evaluation', flush=True)
        record = run_protocol(backbone, kwargs, size, sizes['num_images'], sizes['stage1_epochs'],
                              sizes['finetune_epochs'], seed, detectors=CELL_DETECTORS,
                              out_dir=os.path.join(root, f'seed{seed}'), stage1_checkpoint=stage1['checkpoint'],
                              progress=False, keep_checkpoints=False, render_size=render, background=background,
                              **{k: sizes[k] for k in ('num_val', 'num_test', 'num_ood', 'num_fit', 'batch_size',
                                                       'lr', 'finetune_lr')})
        cell = cell_record(record, background, scale, backbone, seed, render, size, kwargs, OOD_SETS)
        cell['seconds']['cell'] = round(time.time() - t, 1)
        add_entry(args.out, 'cells', cell_key(background, scale, backbone, seed), cell, header)
        a = cell['sampler_alignment']['background_cells']
        print(f"[regime] {background}/{scale}/{backbone} seed {seed}: mean FPR95 ssod "
              f"{100 * cell['ssod'][AVERAGE]['fpr95']:.1f}, best logit {100 * cell['best_logit'][AVERAGE]['fpr95']:.1f}"
              f", best feature {100 * cell['best_feature'][AVERAGE]['fpr95']:.1f}; background cells labelled OOD "
              f"{100 * (a['labelled_ood'] or 0):.0f}% / ID {100 * (a['labelled_id'] or 0):.0f}% "
              f"({time.time() - t:.0f}s)", flush=True)


def best_cell(cells):
    """The (background, scale, backbone) with the lowest mean SSOD FPR95 over its seeds."""
    groups = {}
    for c in cells.values():
        groups.setdefault((c['background'], c['scale'], c['backbone']), []).append(c['ssod'][AVERAGE]['fpr95'])
    return min(groups, key=lambda k: float(np.mean(groups[k])))


def run_from_scratch(args, cell, kind, sizes, scales, epochs, seed, header):
    """Table 2: one from-scratch run (``kind`` 'ssod': SSOD for the whole run; 'vanilla') in ``cell``."""
    background, scale, backbone = cell
    render, size, kwargs = scales[scale][backbone]
    root = os.path.abspath(os.path.join(args.runs_dir, 'from_scratch', background, scale, backbone, f'seed{seed}'))
    print(f'[regime] from scratch ({kind}) in {background}/{scale}/{backbone} seed {seed}: {epochs} epochs', flush=True)
    # the OOD term ramps in over the first quarter (timm_ssod.loss: from scratch no patch is confident at first)
    extra = ['--ood-warmup-epochs', str(max(1, epochs // 4))] if kind == 'ssod' else []
    run = train_stage(f'scratch_{kind}', root, backbone=backbone, model_kwargs=kwargs, img_size=size,
                      render_size=render, background=background, num_images=sizes['stage1_images'],
                      num_val=sizes['num_val'], num_classes=6, batch_size=sizes['batch_size'], seed=seed,
                      epochs=epochs, lr=sizes['lr'], select_on=OOD_SETS, ssod=kind == 'ssod', extra_args=extra)
    dets = [d for d in CELL_DETECTORS if kind == 'ssod' or d not in ('ssod', 'ssod_msp', 'ssod_patch_max')]
    result = evaluate_checkpoint(run['checkpoint'], dets, img_size=size, num_classes=6, num_test=sizes['num_test'],
                                 num_ood=sizes['num_ood'], num_fit=sizes['num_fit'], progress=False,
                                 render_size=render, background=background)
    rows = summarize_eval(result, OOD_SETS)
    entry = {'background': background, 'scale': scale, 'backbone': backbone, 'seed': seed, 'kind': kind,
             'render_size': render, 'input_size': size, 'model_kwargs': kwargs, 'epochs': epochs,
             'id_accuracy': result['id_accuracy'], 'rows': rows, 'epoch_kept': run['best_epoch'],
             'seconds': run['seconds']}
    if kind == 'ssod':
        entry['sampler_alignment'] = sampler_alignment(run['checkpoint'], img_size=size, num_classes=6,
                                                       render_size=render, background=background,
                                                       num_images=min(256, sizes['num_val']))
    else:
        entry['best_logit'] = best_of(rows, LOGIT_BASELINES, OOD_SETS)
        entry['best_feature'] = best_of(rows, FEATURE_BASELINES, OOD_SETS)
    remove_checkpoints(os.path.dirname(run['checkpoint']))
    add_entry(args.out, 'from_scratch', f'{background}/{scale}/{backbone}/seed{seed}/{kind}', entry, header)
    print(f"[regime] from scratch ({kind}): ID acc {100 * result['id_accuracy']:.1f}%, mean FPR95 "
          + ', '.join(f"{d} {100 * rows[d][AVERAGE]['fpr95']:.1f}" for d in rows), flush=True)


@contextlib.contextmanager
def exclusive(path, key):
    """Yields True in the one process that holds the lock on ``key`` (a non-blocking flock beside
    ``path``), False elsewhere; the lock dies with its process, so an interrupted run can be rerun."""
    with open(f'{path}.{key.replace("/", "_")}.lock', 'w') as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def from_scratch_stage(args, scales, sizes, backbones, seeds, epochs, header):
    """Wait (bounded by --wait) until the grid is complete, then claim and run the from-scratch runs."""
    expected = len(configs(scales, backbones)) * len(seeds)
    deadline = time.time() + args.wait
    while args.scratch_cell is None:
        data = read_result(args.out) or {}
        cells = data.get('cells', {})
        if len(cells) >= expected:
            break
        if time.time() > deadline:
            print(f'[regime] grid has {len(cells)}/{expected} cells after --wait {args.wait:.0f}s: no from-scratch '
                  f'run (rerun this command when the other shards are done)', flush=True)
            return
        time.sleep(20)
    if args.scratch_cell:
        cell = tuple(args.scratch_cell.split('/'))
        if cell not in configs(scales, backbones):
            sys.exit(f'--scratch-cell: unknown configuration {args.scratch_cell!r}')
        data = read_result(args.out) or {}
    else:
        cell = best_cell(cells)
    for seed in args.scratch_seeds:
        for kind in ('ssod', 'vanilla'):
            key = f'{cell[0]}/{cell[1]}/{cell[2]}/seed{seed}/{kind}'
            with exclusive(args.out, key) as mine:
                if mine and key not in (read_result(args.out) or {}).get('from_scratch', {}):
                    run_from_scratch(args, cell, kind, sizes, scales, epochs, seed, header)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--out', default=os.path.join(HERE, 'regime.json'))
    p.add_argument('--runs-dir', default='./output/benchmarks/regime', help='training runs')
    p.add_argument('--shard', default='0/1', metavar='I/N', help='run the I-th of N cost-balanced parts of the grid')
    p.add_argument('--quick', action='store_true', help='tiny model and data (tests)')
    p.add_argument('--seeds', nargs='*', type=int, default=None,
                   help=f'fine-tuning seeds of the cells this process runs (default {list(SEEDS)})')
    p.add_argument('--no-grid', action='store_true', help='skip the grid (only the from-scratch cell)')
    p.add_argument('--only', nargs='*', default=None, metavar='BACKGROUND/SCALE/BACKBONE',
                   help='run only these configurations of the grid (e.g. natural/native/resnet10t), any shard')
    p.add_argument('--from-scratch', choices=('auto', 'skip'), default='auto',
                   help="auto: once the grid is complete, run Table 2's protocol in its best cell (shards share it)")
    p.add_argument('--scratch-seeds', nargs='*', type=int, default=[0])
    p.add_argument('--scratch-cell', default=None, metavar='BACKGROUND/SCALE/BACKBONE',
                   help='run the from-scratch protocol in this cell now instead of waiting for the grid\'s best')
    p.add_argument('--wait', type=float, default=4 * 3600.0,
                   help='seconds a shard that finished its part waits for the others before the from-scratch runs')
    args = p.parse_args(argv)
    try:
        index, count = (int(v) for v in args.shard.split('/'))
        assert 0 <= index < count
    except (ValueError, AssertionError):
        p.error(f'--shard must be I/N with 0 <= I < N, got {args.shard!r}')
    args.shard_index, args.shard_count = index, count
    return args


def main(argv=None):
    args = parse_args(argv)
    scales, sizes = (QUICK_SCALES, QUICK_SIZES) if args.quick else (SCALES, SIZES)
    backbones = tuple(next(iter(scales.values())))
    epochs = 2 if args.quick else SCRATCH_EPOCHS
    header = {'command': command_line('python benchmarks/regime.py', sys.argv[1:] if argv is None else argv, ROOT),
              'environment': {'python': platform.python_version(), 'torch': torch.__version__,
                              'timm': timm.__version__, 'threads': torch.get_num_threads(),
                              'cpu_count': os.cpu_count()},
              'sizes': sizes, 'seeds': list(SEEDS[:1] if args.quick else SEEDS), 'scales': scales,
              'ood_sets': list(OOD_SETS), 'logit_baselines': list(LOGIT_BASELINES),
              'feature_baselines': list(FEATURE_BASELINES), 'scratch_epochs': epochs}
    seeds = header['seeds'] if args.seeds is None else list(args.seeds)
    existing = read_result(args.out)
    if existing and existing.get('sizes') != sizes:
        sys.exit(f'{args.out} was made with other sizes ({existing.get("sizes")}); use another --out')
    start = time.time()
    if not args.no_grid:
        mine = shard(configs(scales, backbones), args.shard_index, args.shard_count)
        if args.only is not None:
            known = {'/'.join(c): c for c in configs(scales, backbones)}
            unknown = [o for o in args.only if o not in known]
            if unknown:
                sys.exit(f'--only: unknown configuration(s) {unknown}; valid: {", ".join(known)}')
            mine = [known[o] for o in args.only]
        for background, scale, backbone in mine:
            with exclusive(args.out, f'{background}/{scale}/{backbone}') as free:
                if not free:
                    print(f'[regime] {background}/{scale}/{backbone}: another process runs it, skipped', flush=True)
                    continue
                done = (read_result(args.out) or {}).get('cells', {})
                run_config(args, background, scale, backbone, seeds, sizes, scales, header, done)
    if args.from_scratch == 'auto':
        from_scratch_stage(args, scales, sizes, backbones, seeds, epochs, header)
    print(f'[regime] {args.out} ({time.time() - start:.0f}s)', flush=True)


if __name__ == '__main__':
    main()
