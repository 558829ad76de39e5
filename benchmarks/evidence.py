"""Issue 22: does ID-only evidence (pseudo-OOD made from ID images) predict which components of the
fused score work on real OOD data, and does a rule built on it reach the oracle?

For every training checkpoint given (the files ``timm-ssod train`` writes; each is evaluated on the
built-in benchmark as it was trained), ``lib.evidence_checkpoint`` records the
pseudo-AUROC of every candidate of ``ssod_fused(select='evidence')`` (ssod, mahalanobis, energy,
knn, vim) on every source (Eq. 12's background locations, their crops, patch-shuffled, blurred and
pixel-permuted images, left-out classes), every single detector's real AUROC / FPR95 per OOD set,
and the fused score of every rule of the grid. ``summarize_evidence`` then gives the Spearman rank
correlation between pseudo-AUROC and real AUROC per source x OOD set, and picks the rule on the
``--design`` models only; the other models are the held-out report.

    python benchmarks/evidence.py RUN_A/model_best.pth.tar RUN_B/last.pth.tar ... \\
        --design RUN_A/model_best.pth.tar --out benchmarks/evidence.json
    python benchmarks/evidence.py --summary benchmarks/evidence.json --design LABEL ...   # re-split, no scoring
    python benchmarks/evidence.py --summary a.json b.json --design LABEL ... --out c.json  # one per core, merged
    python benchmarks/evidence.py --summary ... --design LABEL ... --trained-after LABEL ...  # + the adoption criterion
    python benchmarks/evidence.py --quick --out output/evidence_quick.json   # trains two tiny models (tests)
    python benchmarks/evidence.py --cost-only demo=RUN/model_best.pth.tar --out benchmarks/evidence_cost.json

A checkpoint may be given as ``LABEL=PATH``; the label (default: the path) names it in the JSON and
in ``--design``. The JSON is written atomically after every checkpoint, its paths relative to the
repository; a rerun with the same sizes skips the checkpoints already in it.

Cost per checkpoint at the default sizes (2000 fit, 500 calibration, 600 test and 600 x 4 OOD
images; the pseudo-OOD from 250 of the fit images, the default budget ``evidence_budget(2000)``):
about 6500 backbone passes for the record (3000 of them the fit images, their transforms and crops)
and 5000 more for the cost targets (today's fit and the option's, end to end), plus the rendering of
the synthetic images, the pool's cross-fitting (5 folds x 3 fitted components) and
leave-classes-out (5 groups x 4 components).
``--no-timing`` leaves the cost targets out. The timings are of the machine that runs it: measure
the targets on one quiet machine, not on cores shared with training.
"""
import argparse
import os
import platform
import sys
import time
from collections import OrderedDict

import timm
import torch

from timm_ssod._util import atomic_write_text
from timm_ssod.detectors.evidence import evidence_budget
from lib import (command_line, cost_checkpoint, evidence_checkpoint, read_result, results_text,
                                   summarize_evidence, train_stage)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)  # paths in the JSON are relative to the repository
# evidence_images: the default budget of 2000 fit images (one in 8), what `calibrate` would make them from
SIZES = dict(num_fit=2000, num_calib=500, num_test=600, num_ood=600, evidence_images=evidence_budget(2000),
             min_samples=20, batch_size=128)
QUICK_SIZES = dict(num_fit=40, num_calib=20, num_test=20, num_ood=20, evidence_images=20, min_samples=10,
                   batch_size=20)
# --quick: two tiny SSOD models trained here (a 2x2 map at 32 px), the first one the design model
QUICK_MODELS = OrderedDict([('tiny_a', dict(seed=0)), ('tiny_b', dict(seed=1))])
QUICK_TRAIN = dict(backbone='test_resnet', model_kwargs={'output_stride': 16}, img_size=32, num_images=48, num_val=16,
                   num_classes=3, epochs=1, lr=2e-3, batch_size=16)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('checkpoints', nargs='*', metavar='[LABEL=]PATH', help='training checkpoints to measure')
    p.add_argument('--design', nargs='*', default=[], metavar='LABEL',
                   help='the models the rule is chosen on (labels or paths); the others are held out')
    p.add_argument('--trained-after', nargs='*', default=[], metavar='LABEL',
                   help='held-out models trained after the registered rule (REGISTERED_RULE) was registered: with '
                        'the design models they judge it against the design choice (the summary\'s adoption)')
    p.add_argument('--quick', action='store_true', help='train two tiny models and measure them (tests)')
    p.add_argument('--runs-dir', default='./output/benchmarks/evidence', help='--quick: where the tiny models train')
    p.add_argument('--out', default=os.path.join(HERE, 'evidence.json'))
    p.add_argument('--summary', metavar='JSON', nargs='+', default=None,
                   help='recompute the summary of finished JSON with this --design (no scoring): several files '
                        '(e.g. one per core) are merged, their models combined; writes --out')
    p.add_argument('--images-sensitivity', metavar='JSON', nargs='+', default=None,
                   help='compare finished JSON made with different --evidence-images (same models): the deployed '
                        "rule's FPR95 and kept components per model and size, and the rule each file's design "
                        'models choose; writes --out')
    p.add_argument('--seed', type=int, default=0, help='seed of the transforms and the class groups')
    p.add_argument('--cost-only', action='store_true',
                   help="measure only the cost targets (the option's fit against today's, predict against a forward) "
                        'of each checkpoint, on idle cores; writes --out')
    p.add_argument('--evidence-images', type=int, default=None, metavar='N',
                   help="make the pseudo-OOD from N of the fit images (default: calibrate's budget for "
                        f"{SIZES['num_fit']} fit images, {SIZES['evidence_images']}; --quick "
                        f"{QUICK_SIZES['evidence_images']}): the trade of calibrate's time against the evidence's noise")
    p.add_argument('--no-timing', dest='timing', action='store_false',
                   help="leave out the cost targets (the option's fit against today's, predict against a forward)")
    return p.parse_args(argv)


def environment():
    return {'python': platform.python_version(), 'torch': torch.__version__, 'timm': timm.__version__,
            'threads': torch.get_num_threads(), 'cpu_count': os.cpu_count()}


def labelled(items):
    """[(label, path)] from ``[LABEL=]PATH`` arguments; the label defaults to the path as typed."""
    out = OrderedDict()
    for item in items:
        label, _, path = item.partition('=') if '=' in item and not os.path.exists(item) else (item, '', item)
        if label in out:
            sys.exit(f'checkpoint label {label!r} given twice')
        out[label] = path
    return out


def quick_checkpoints(runs_dir):
    """Train the two tiny models of --quick (once: a rerun reuses their checkpoints)."""
    out = OrderedDict()
    for label, cfg in QUICK_MODELS.items():
        ckpt = os.path.join(runs_dir, label, 'last.pth.tar')
        if not os.path.exists(ckpt):
            # gamma 0.6: a one-epoch model is rarely 95% sure, and the background sources need OOD-labelled cells
            ckpt = train_stage(label, runs_dir, ssod=True, gamma=0.6, log_interval=1000, **QUICK_TRAIN,
                               **cfg)['checkpoint']
        out[label] = ckpt
    return out


def merged(paths):
    """One record from finished evidence JSON files (same sizes and seed; a model label in one file only)."""
    out = None
    for path in paths:
        part = read_result(path)
        if part is None:
            sys.exit(f'--summary: {path} does not exist')
        if out is None:
            out = dict(part, models=OrderedDict(part['models']), commands=[part['command']])
            continue
        for key in ('sizes', 'seed'):
            if part.get(key) != out.get(key):
                sys.exit(f'--summary: {path} has {key}={part.get(key)!r}, {paths[0]} has {out.get(key)!r}')
        twice = sorted(set(part['models']) & set(out['models']))
        if twice:
            sys.exit(f'--summary: {path} measures {twice} again; each model must be in one file')
        out['models'].update(part['models'])
        out['commands'].append(part['command'])
        out['seconds'] = out.get('seconds', 0) + part.get('seconds', 0)
    if len(paths) > 1:
        out['command'] = '; '.join(out['commands'])
    del out['commands']
    return out


def print_summary(summary):
    rule = summary.get('chosen_rule')
    print(f"rule chosen on the design models {summary['design']}: {rule} "
          f"(mean FPR95 gap to the oracle {summary['chosen_rule_design_mean_gap']})" if rule else
          'no --design models: no rule chosen')
    for g, by_source in summary['correlations'].items():
        line = ', '.join(f"{s} {v['average']['pooled']:+.2f}" if v['average']['pooled'] is not None else f'{s} –'
                         for s, v in by_source.items())
        print(f'Spearman (pseudo-AUROC vs mean real AUROC, pooled) on {g} models: {line}')
    if summary.get('adoption'):
        a = summary['adoption']
        for key, groups in a['rules'].items():
            print(f"{key}: largest FPR95 gap to the oracle {100 * groups['judged']['max_gap']:+.1f} over the "
                  f"{groups['judged']['models']} judged models (design and trained after)")
        print(f"adopted by the criterion: {a['adopted']}")
    for label, row in summary['held_out_report'].get('chosen_rule', {}).items():
        if row['rule_fpr95'] is not None:
            print(f"held out {label}: rule FPR95 {100 * row['rule_fpr95']:.1f} (kept {', '.join(row['rule_kept'])}), "
                  f"Fisher-3 {100 * row['fisher3_fpr95']:.1f}, oracle {row['oracle']} {100 * row['oracle_fpr95']:.1f}")


def images_sensitivity(paths):
    """``--images-sensitivity``: the deployed rule (``EVIDENCE_RULE``) on every model of finished evidence
    JSON files made with different ``evidence_images`` (the models in all of them; the others are listed as
    ``left_out``), and the rule each file's design models choose."""
    from timm_ssod.detectors.evidence import rule_key
    from timm_ssod.detectors.ssod_fused import EVIDENCE_RULE
    key = rule_key(EVIDENCE_RULE)
    out = {'rule': key, 'files': {}, 'chosen_on_design': {}, 'design': None, 'models': OrderedDict()}
    for path in paths:
        part = read_result(path)
        if part is None:
            sys.exit(f'--images-sensitivity: {path} does not exist')
        images = str(part['sizes']['evidence_images'])
        if images in out['files']:
            sys.exit(f'--images-sensitivity: {path} and {out["files"][images]} both use {images} evidence images')
        out['files'][images] = os.path.relpath(os.path.abspath(path), ROOT)
        out['chosen_on_design'][images] = part['summary'].get('chosen_rule')
        design = sorted(part['summary']['design'])
        if out['design'] is not None and design != out['design']:
            sys.exit(f'--images-sensitivity: {path} has design models {design}, the first file {out["design"]}')
        out['design'] = design
        for label, rec in part['models'].items():
            row = out['models'].setdefault(label, {'oracle': {'detector': rec['oracle']['detector'],
                                                              'fpr95': rec['oracle']['fpr95']},
                                                   'fisher3_fpr95': rec['fisher3']['average']['fpr95'],
                                                   'by_images': OrderedDict()})
            rule = rec['rules'][key]
            row['by_images'][images] = {'fpr95': rule['average']['fpr95'], 'kept': rule['kept'],
                                        'id_rejection_within': rule['id_rejection_within']}
    # only the models measured at every size are compared
    out['left_out'] = [label for label, row in out['models'].items() if len(row['by_images']) < len(out['files'])]
    out['models'] = OrderedDict((k, v) for k, v in out['models'].items() if k not in out['left_out'])
    return out


def main(argv=None):
    args = parse_args(argv)
    argv_list = sys.argv[1:] if argv is None else argv
    if args.images_sensitivity:
        out = dict(command=command_line('python benchmarks/evidence.py', argv_list, ROOT),
                   **images_sensitivity(args.images_sensitivity))
        atomic_write_text(args.out, results_text(out, ROOT))
        for label, row in out['models'].items():
            print(f"{label}: oracle {100 * row['oracle']['fpr95']:.1f}; rule " + ', '.join(
                f"{n} images {100 * v['fpr95']:.1f} ({', '.join(v['kept'])})" for n, v in row['by_images'].items()))
        print('chosen on the design models: ' + ', '.join(f'{n}: {k}' for n, k in out['chosen_on_design'].items()))
        return out
    if args.summary:
        old = merged(args.summary)
        design = [d for d in args.design]
        try:
            old['summary'] = summarize_evidence(old['models'], design, args.trained_after)
        except ValueError as e:
            sys.exit(f'--summary: {e}')
        old['summary_command'] = command_line('python benchmarks/evidence.py', argv_list, ROOT)
        atomic_write_text(args.out, results_text(old, ROOT))
        print_summary(old['summary'])
        return old
    sizes = dict(QUICK_SIZES if args.quick else SIZES)
    if args.evidence_images is not None:
        if args.evidence_images < 1:
            sys.exit(f'--evidence-images must be >= 1, got {args.evidence_images}')
        sizes['evidence_images'] = args.evidence_images
    if args.cost_only:
        if not args.checkpoints:
            sys.exit('give the training checkpoints to measure')
        keep = ('num_fit', 'num_test', 'evidence_images', 'min_samples', 'batch_size')
        out = {'command': command_line('python benchmarks/evidence.py', argv_list, ROOT), 'environment': environment(),
               'sizes': {k: sizes[k] for k in keep}, 'models': OrderedDict()}
        for label, path in labelled(args.checkpoints).items():
            cost = cost_checkpoint(os.path.abspath(path), seed=args.seed, **{k: sizes[k] for k in keep})
            out['models'][label] = cost
            print(f"[evidence cost] {label}: fit select='evidence' / Fisher-3 {cost['fit_seconds']['ratio']:.2f}x "
                  f"({cost['fit_seconds']['evidence']:.1f}s / {cost['fit_seconds']['fisher3']:.1f}s); predict / plain "
                  f"forward: Fisher-3 {cost['predict_ratio']['fisher3']:.3f}x, evidence "
                  f"{cost['predict_ratio']['evidence']:.3f}x (kept {', '.join(cost['option_kept'])})", flush=True)
        atomic_write_text(args.out, results_text(out, ROOT))
        return out
    if args.quick:
        checkpoints = quick_checkpoints(os.path.abspath(args.runs_dir))
        design = args.design or [next(iter(checkpoints))]
    else:
        if not args.checkpoints:
            sys.exit('give the training checkpoints to measure (or --quick)')
        checkpoints = labelled(args.checkpoints)
        by_path = {p: k for k, p in checkpoints.items()}
        design = [by_path.get(d, d) for d in args.design]
    unknown = [d for d in design + args.trained_after if d not in checkpoints]
    if unknown:
        sys.exit(f'--design / --trained-after name {unknown}, which are not among the checkpoints {list(checkpoints)}')
    if set(design) & set(args.trained_after):
        sys.exit(f'{sorted(set(design) & set(args.trained_after))} given both to --design and to --trained-after')
    previous = read_result(args.out) or {}
    if previous and previous.get('sizes') != sizes:
        sys.exit(f'{args.out} was made with other sizes; move it away or use another --out')
    done = previous.get('models', {})
    out = {'command': command_line('python benchmarks/evidence.py', argv_list, ROOT), 'environment': environment(),
           'sizes': sizes, 'seed': args.seed, 'models': OrderedDict()}
    start = time.time()
    for i, (label, path) in enumerate(checkpoints.items(), 1):
        if label in done:
            print(f'[evidence {i}/{len(checkpoints)}] {label}: in {args.out}, skipped', flush=True)
            out['models'][label] = done[label]
            continue
        t = time.time()
        print(f'[evidence {i}/{len(checkpoints)}] {label}: {path}', flush=True)
        record = evidence_checkpoint(os.path.abspath(path), seed=args.seed, timing=args.timing, **sizes)
        record['seconds']['total'] = round(time.time() - t, 1)
        out['models'][label] = record
        out['summary'] = summarize_evidence(out['models'], [d for d in design if d in out['models']],
                                            [t for t in args.trained_after if t in out['models']])
        out['seconds'] = round(time.time() - start, 1)
        atomic_write_text(args.out, results_text(out, ROOT))
        print(f"[evidence {i}/{len(checkpoints)}] {label}: oracle {record['oracle']['detector']} "
              f"{100 * record['oracle']['fpr95']:.1f}, Fisher-3 {100 * record['fisher3']['average']['fpr95']:.1f}, "
              f"default rule kept {', '.join(record['default_rule']['kept'])} "
              f"({record['seconds']['total']:.0f}s)", flush=True)
    out['summary'] = summarize_evidence(out['models'], design, args.trained_after)
    out['seconds'] = round(time.time() - start, 1)
    atomic_write_text(args.out, results_text(out, ROOT))
    print_summary(out['summary'])
    print(f'wrote {args.out} ({time.time() - start:.0f}s)')
    return out


if __name__ == '__main__':
    main()
