"""``timm-ssod eval`` / ``python -m timm_ssod.evaluate``: SSOD and the post-hoc baselines on one
model, the same ID and OOD images, the paper's metrics.

    # a timm-ssod train run on the built-in synthetic benchmark (all its OOD sets by default)
    timm-ssod eval --checkpoint output/train/RUN/model_best.pth.tar --dataset synthetic/id
    # CIFAR-10 as an image folder (DIR/train, DIR/val), two OOD folders
    timm-ssod eval --model resnet18 --checkpoint ckpt.pth.tar --data-dir cifar10 \\
        --ood svhn=/data/svhn textures=/data/dtd/images cifar100=torch/cifar100
    # a saved model; a plain timm model gets the baselines only
    timm-ssod eval --model local-dir:saved/ssod-resnet18 --data-dir cifar10 --ood svhn=/data/svhn

Prints the table (rows = detectors, columns = OOD sets + average, FPR95 / AUROC in percent)
and writes ``results.json``, ``results.csv``, ``results.md`` and, with matplotlib, one
score histogram per OOD set (``hist_<set>.png``) to ``--output``. By default each OOD set
and the ID set are cut to the smaller count (paper A.4), deterministically with ``--seed``;
``--use-all`` keeps every image. ID accuracy is over the whole ID split.

A calibrated model (``timm-ssod calibrate --save-dir``) also gets the decision it deploys as its
own row, ``<detector> (deployed)``: its saved detector as calibrate fitted it, not refitted. The
other rows are fitted here on ``--fit-split``; ``ssod_fused`` among them is the detector's own
default (the fixed fusion of ssod, mahalanobis, energy), not calibrate's evidence-chosen decision.
"""
import argparse
import os
import sys
from datetime import datetime
from typing import List, Optional

from timm.utils import ParseKwargs

from ._common import add_command, parse_and_run, report_errors
from ..data import HELD_OUT_SPLIT, TRAIN_SPLIT
from ..evaluate import add_model_arguments, load_model_of_args

DEFAULT_FIT_SAMPLES = 5000


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    g = p.add_argument_group('model')
    add_model_arguments(g)
    g.add_argument('--pretrained', action='store_true', help="timm's pretrained weights (a plain model)")
    g = p.add_argument_group('data')
    g.add_argument('--dataset', default='', metavar='NAME',
                   help="ID dataset: '' (image folder in --data-dir), synthetic/id, torch/cifar10, ...")
    g.add_argument('--data-dir', metavar='DIR', default=None, help='root of the ID (and timm OOD) datasets')
    g.add_argument('--split', default=HELD_OUT_SPLIT,
                   help=f'ID evaluation split (default: {HELD_OUT_SPLIT}, an image folder\'s val/)')
    g.add_argument('--fit-split', default=TRAIN_SPLIT,
                   help=f'ID training split, to fit the detectors (default: {TRAIN_SPLIT})')
    g.add_argument('--fit-samples', type=int, default=DEFAULT_FIT_SAMPLES, metavar='N',
                   help=f'fit on at most N random training images (default {DEFAULT_FIT_SAMPLES}; 0: all)')
    g.add_argument('--dataset-kwargs', nargs='*', default={}, action=ParseKwargs, metavar='K=V',
                   help='ID dataset arguments (synthetic: num_images=, img_size=, seed=)')
    g.add_argument('--ood', nargs='+', action='extend', default=[], metavar='NAME=SPEC',
                   help='OOD sets: NAME=FOLDER (all images under it), NAME=synthetic/<set> or a timm dataset, e.g. '
                        'NAME=torch/cifar100 (default with synthetic ID data: every built-in synthetic OOD set)')
    g.add_argument('--use-all', action='store_true',
                   help='use every ID and OOD image (default: each pair cut to the smaller count)')
    g.add_argument('--seed', type=int, default=0, help='seed of the subsampling (default 0)')
    g = p.add_argument_group('preprocessing (default: the model\'s, or what its training run recorded)')
    g.add_argument('--input-size', type=int, nargs=3, default=None, metavar=('C', 'H', 'W'))
    g.add_argument('--img-size', type=int, default=None, metavar='N', help='input image size')
    g.add_argument('--crop-pct', type=float, default=None)
    g.add_argument('--mean', type=float, nargs='+', default=None)
    g.add_argument('--std', type=float, nargs='+', default=None)
    g.add_argument('--interpolation', default=None)
    g = p.add_argument_group('run')
    g.add_argument('--detectors', nargs='+', default=None, metavar='NAME',
                   help='detectors (names or comma lists; default: timm_ssod.evaluate.DEFAULT_DETECTORS, '
                        'those of them that apply to the model; rmds, gen, fdbd, scale, ash_s, ash_b, '
                        'nnguide, she, dice run when named)')
    g.add_argument('--batch-size', '-b', type=int, default=64)
    g.add_argument('--workers', '-j', type=int, default=min(4, os.cpu_count() or 1))
    g.add_argument('--device', default=None, help='default: cuda if available, else cpu')
    g.add_argument('--output', metavar='DIR', default=None,
                   help='output folder (default: output/eval/<timestamp>-<model>)')
    g.add_argument('--results-file', metavar='FILE', default=None,
                   help="also write the results here (as timm's validate.py): JSON, or CSV for a .csv name")
    g.add_argument('--amp', action='store_true', help='mixed precision on CUDA (float32 on CPU)')
    g.add_argument('--channels-last', action='store_true', help='channels-last memory layout, as timm')
    g.add_argument('--no-plots', action='store_true', help='skip the score histograms')
    g.add_argument('--quiet', action='store_true', help='no progress lines')
    return p


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``eval`` on the ``timm-ssod`` subparsers (``timm_ssod.cli``)."""
    return add_command(subparsers, 'eval', 'evaluate SSOD and the post-hoc OOD baselines (FPR95, AUROC, ...)',
                       __doc__, add_arguments, run)


def _detector_names(values: Optional[List[str]]) -> Optional[List[str]]:
    if not values:
        return None
    names = [n.strip().lower() for v in values for n in v.split(',') if n.strip()]
    from ..detectors import DETECTORS
    unknown = [n for n in names if n not in DETECTORS]
    if unknown:
        raise ValueError(f'unknown detector(s) {", ".join(unknown)}; available: {", ".join(DETECTORS)}')
    return names


def _output_dir(args, model_name: str) -> str:
    if args.output:
        return args.output
    base = os.path.basename(os.path.normpath(model_name.split(':', 1)[-1])) or 'model'
    from timm.models import safe_model_name
    return os.path.join('output', 'eval', f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{safe_model_name(base)}")


def _evaluate(args) -> int:
    import torch
    from timm.data import create_transform, resolve_data_config

    from ..checkpoints import check_output_dir
    from ..detectors import DETECTORS
    from ..data import cut, dataset_num_classes, is_synthetic, make_loader, same_folder
    from ..evaluate import EvalDataError, build_id_dataset, build_ood_datasets, default_ood_specs
    from ..evaluate import DEFAULT_DETECTORS, DeployedDetector, evaluate
    from ..data import check_held_out_split, class_names, folder_summary, model_class_map
    from ..core import label_names
    from ..evaluate import format_table, plot_histograms, write_results

    names = _detector_names(args.detectors)
    device = torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    model, info = load_model_of_args(args, args.model, args.checkpoint, pretrained=args.pretrained)
    needs_head = [n for n in names or () if DETECTORS[n].needs_ood_head]
    if needs_head and not info['ssod']:
        why = '; '.join(info['notes']) or '--no-ssod'
        raise EvalDataError(f'--detectors {", ".join(needs_head)} need an SSOD model, '
                            f'and this one is plain ({why})')
    names = names or list(DEFAULT_DETECTORS)
    out_dir = _output_dir(args, info['model'])
    check_output_dir(out_dir)

    data_args = dict(info['data_args'])
    data_args.update({k: getattr(args, k) for k in ('input_size', 'img_size', 'crop_pct', 'mean', 'std',
                                                    'interpolation') if getattr(args, k) is not None})
    data_config = resolve_data_config(data_args, model=model)
    transform = create_transform(**data_config, is_training=False)

    num_classes = model.num_classes
    split_ev, split_fit = check_held_out_split(args.dataset, args.data_dir, args.split, args.fit_split,
                                              info.get('train_args'), EvalDataError)
    id_set = build_id_dataset(args.dataset, args.data_dir, args.split, num_classes, args.dataset_kwargs)
    cmap = model_class_map(label_names(model), class_names(id_set), f'the ID data ({args.dataset or args.data_dir}, '
                           f'split {args.split})', EvalDataError)
    dataset_kwargs = dict(args.dataset_kwargs, class_map=cmap) if cmap else args.dataset_kwargs
    if cmap:  # read with the model's class indices (e.g. a val folder lacking one class)
        id_set = build_id_dataset(args.dataset, args.data_dir, args.split, num_classes, dataset_kwargs)
    if split_ev is not None:
        print(f'ID data: {folder_summary(id_set, split_ev)}')
        if split_ev.training:
            info['notes'].append(f'--split {args.split!r} reads the training images ({split_ev.training}): the '
                                 'metrics say how the model scores images it was trained on, not new ones')
    declared = dataset_num_classes(id_set)
    if declared and declared != num_classes:
        raise EvalDataError(f'the ID dataset ({args.dataset or args.data_dir}, split {args.split}) has {declared} '
                            f'classes but the model has {num_classes}')
    synthetic = is_synthetic(args.dataset)
    if not args.ood and not synthetic:
        raise EvalDataError('no OOD data: give --ood NAME=FOLDER ... (or NAME=synthetic/<set>)')
    synth_kwargs = {k: v for k, v in args.dataset_kwargs.items() if k in ('img_size', 'seed', 'num_classes')} \
        if synthetic else {}
    if synthetic:
        synth_kwargs.setdefault('num_classes', num_classes)
    ood_sets = build_ood_datasets(args.ood or default_ood_specs(), args.data_dir, args.split, synth_kwargs)
    available = {k: len(v) for k, v in ood_sets.items() if hasattr(v, '__len__')}
    if not args.use_all and hasattr(id_set, '__len__'):  # no image is scored only to be dropped
        ood_sets = {k: cut(v, len(id_set), args.seed) for k, v in ood_sets.items()}

    fit_loader = None
    if any(DETECTORS[n].needs_fit for n in names if info['ssod'] or not DETECTORS[n].needs_ood_head):
        fit_set = build_id_dataset(args.dataset, args.data_dir, args.fit_split, num_classes, dataset_kwargs)
        if split_fit is not None:
            print(f'Fit data: {folder_summary(fit_set, split_fit)}')
        if same_folder(fit_set, id_set):
            raise EvalDataError(f'--fit-split {args.fit_split!r} and --split {args.split!r} read the same folder '
                                f'({args.data_dir}): the detectors would be fitted on the evaluation images. Put the '
                                'ID images in DIR/train and DIR/val, or choose detectors without fit ('
                                + ', '.join(n for n, c in DETECTORS.items() if not c.needs_fit) + ').')
        declared = dataset_num_classes(fit_set)
        if declared and declared != num_classes:
            raise EvalDataError(f'the ID fit data (split {args.fit_split}) has {declared} classes but the model has '
                                f'{num_classes}')
        if args.fit_samples > 0:
            fit_set = cut(fit_set, args.fit_samples, args.seed)
        fit_loader = make_loader(fit_set, transform, args.batch_size, args.workers, device)

    def loader(ds):
        return make_loader(ds, transform, args.batch_size, args.workers, device)

    cal = getattr(model, 'ssod_calibration', None)
    deployed = [] if cal is None or not info['ssod'] and cal.detector.needs_ood_head else [DeployedDetector(cal)]

    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    with torch.autocast(device.type, enabled=args.amp and device.type == 'cuda'):
        result, scores = evaluate(
            model, loader(id_set), {k: loader(v) for k, v in ood_sets.items()}, names + deployed,
            fit_loader=fit_loader, device=device, progress=not args.quiet, equal_counts=not args.use_all,
            seed=args.seed, detector_kwargs={'odin': {'std': data_config['std']}}, return_scores=True)
    result['model'] = info['model']
    if label_names(model):
        result['label_names'] = label_names(model)
    if deployed:
        result['deployed'] = deployed[0].name
        info['notes'].append(
            f'{deployed[0].name}: the decision this calibrated model makes (its saved detector, as fitted by '
            f'calibrate, not refitted; OOD when p-value <= alpha = {cal.alpha:g}); the other rows are fitted here on '
            f'--fit-split {args.fit_split!r}' + (' (ssod_fused: the fixed-component fusion, not the calibration\'s '
                                                 'choice)' if 'ssod_fused' in names else ''))
    counts = []  # what was cut and what could not be read: the counts of the table are of the images read
    if hasattr(id_set, '__len__') and result['num_id'] < len(id_set):
        counts.append(f"ID set: {len(id_set) - result['num_id']} of its {len(id_set)} files could not be read as an "
                      f"image: not counted ({result['num_id']} ID images)")
    for set_name, n_files in available.items():
        used = result['num_used'].get(set_name, {}).get('ood')
        if used is not None and used < n_files:
            counts.append(f"OOD set {set_name!r}: {used} of its {n_files} files used" + (
                f', a random subset as large as the ID set (seed {args.seed}; --use-all keeps every image)'
                if not args.use_all and n_files > result['num_id'] else ' (the others could not be read as images)'))
    result['notes'] = info['notes'] + counts + result['notes']
    result['config'] = dict(
        checkpoint=info['checkpoint'], weights=info['weights'], dataset=args.dataset, data_dir=args.data_dir,
        split=args.split, fit_split=args.fit_split if fit_loader else None,
        split_folder=split_ev.folder if split_ev else None,
        fit_folder=split_fit.folder if split_fit and fit_loader else None,
        fit_samples=len(fit_loader.dataset) if fit_loader else 0, ood=args.ood or default_ood_specs(),
        ood_available=available, data_config={k: list(v) if isinstance(v, tuple) else v
                                              for k, v in data_config.items()}, device=str(device))

    print(format_table(result))
    paths = write_results(result, out_dir)
    if args.results_file:
        from .._util import atomic_write
        with open(paths['csv'] if args.results_file.endswith('.csv') else paths['json'], 'rb') as f:
            data = f.read()
        atomic_write(args.results_file, lambda f: f.write(data))
        print(f'Results also written to {args.results_file}')
    if not args.no_plots:
        try:
            plot_histograms(scores, result, out_dir)
        except ImportError:
            print('matplotlib is not installed: score histograms skipped (pip install "timm-ssod[plot]")')
    print(f'\nResults written to {out_dir}')
    return 0


def run(args: argparse.Namespace, prog: str = 'timm-ssod eval') -> int:
    """Run the evaluation of parsed arguments; 0 on success, 1 with a message on bad input."""
    return report_errors(_evaluate, args, prog)


def main(argv: Optional[List[str]] = None, prog: str = 'timm-ssod eval') -> int:
    return parse_and_run(argv, prog, __doc__, add_arguments, run)


if __name__ == '__main__':
    sys.exit(main())
