"""``timm-ssod calibrate``: an OOD decision calibrated on held-out ID images, saved with the model.

    # a training run's checkpoint, the built-in benchmark's ID validation split
    timm-ssod calibrate output/train/RUN/model_best.pth.tar --dataset synthetic/id --save-dir out/ssod-r10
    # a saved model and an image folder (DIR/train fits Mahalanobis, DIR/val calibrates)
    timm-ssod calibrate local-dir:out/ssod-r10 --data-dir DIR --alpha 0.01 --save-dir out/ssod-r10-a01
    timm-ssod calibrate hf-hub:org/ssod-r50 --data-dir /data/imagenet --push-to-hub org/ssod-r50

MODEL is a training checkpoint (or run folder: its model_best.pth.tar), or a saved model
``local-dir:PATH`` / ``hf-hub:org/name``. The detector (default ``ssod_fused``: the components
below combined through their ID p-values) is fitted on ``--fit-split`` (ID training
images) and calibrated on ``--split`` (held-out ID images, default the validation split: an
image folder's ``val/``; a split whose sub-folder is missing is refused, as timm would read the
whole folder, training images included): its
sorted scores turn any image's score into a conformal p-value, and ``p <= alpha`` rejects at
most a share alpha of ID images in expectation. No OOD data is used. Needs n >= 1/alpha - 1
calibration images (19 for alpha = 0.05); a few hundred give a stable threshold.

By default ``ssod_fused`` keeps the components (of ssod, mahalanobis, energy, knn, vim) that ID-only
evidence supports (``--select evidence``): pseudo-OOD made from the fit images (Eq. 12's background
locations and their crops, patch-shuffled, blurred and pixel-permuted images, left-out classes; the
image sources from one in 8 fit images, 40 to 500, ``--evidence-images``).
The rule measured in ``benchmarks/evidence.json`` (docs/study/evidence.md) keeps the two with the
highest mean pseudo-AUROC, Fisher-weighted by it. It prints which components were kept and why,
and saves that record with the model. ``--select all``: the earlier default, Fisher over ssod,
mahalanobis and energy.

The model is written with the calibration (``config.json``'s ``ssod`` block, ``ssod.safetensors``,
the model card) to ``--save-dir`` (default with ``--push-to-hub``: ``output/calibrated/<name>``),
then pushed with ``--push-to-hub``: saved first, so a push that fails keeps the calibration.
``timm-ssod predict`` and ``model.predict`` then give p-values and decisions. Preprocessing is the model's data
config (what training recorded), the one ``predict`` will use.
"""
import argparse
import os
import sys
from typing import List, Optional

from timm.utils import ParseKwargs

from ..core import DEFAULT_ALPHA, DEFAULT_DETECTOR
from ..data import HELD_OUT_SPLIT, TRAIN_SPLIT
from ._common import add_command, load_ssod_model, parse_and_run, report_errors

DEFAULT_FIT_SAMPLES = 5000


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument('model', metavar='MODEL', help='training checkpoint or run folder, or local-dir:PATH / hf-hub:org/name')
    p.add_argument('--no-ema', dest='use_ema', action='store_false', help="a checkpoint's raw weights, not its EMA")
    p.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs, metavar='K=V',
                   help='create_model arguments overriding those read from the checkpoint')
    g = p.add_argument_group('ID data (never OOD data)')
    g.add_argument('--dataset', default='', metavar='NAME',
                   help="ID dataset: '' (image folder in --data-dir), synthetic/id, torch/cifar10, ...")
    g.add_argument('--data-dir', metavar='DIR', default=None, help='root of the ID dataset')
    g.add_argument('--split', default=HELD_OUT_SPLIT,
                   help=f'held-out ID split to calibrate on (default: {HELD_OUT_SPLIT}, an image folder\'s val/)')
    g.add_argument('--fit-split', default=TRAIN_SPLIT,
                   help=f'ID training split, to fit the detector (default: {TRAIN_SPLIT})')
    g.add_argument('--fit-samples', type=int, default=DEFAULT_FIT_SAMPLES, metavar='N',
                   help=f'fit on at most N random training images (default {DEFAULT_FIT_SAMPLES}; 0: all)')
    g.add_argument('--calib-samples', type=int, default=0, metavar='N',
                   help='calibrate on at most N random images of --split (default 0: all)')
    g.add_argument('--dataset-kwargs', nargs='*', default={}, action=ParseKwargs, metavar='K=V',
                   help='ID dataset arguments (synthetic: num_images=, img_size=, seed=)')
    g = p.add_argument_group('decision')
    g.add_argument('--detector', default=DEFAULT_DETECTOR, help=f'the score to calibrate (default {DEFAULT_DETECTOR}; ssod, '
                                                           'energy, mahalanobis ... any single-pass detector)')
    g.add_argument('--components', default=None, metavar='A,B,...',
                   help='ssod_fused components (default: the pool ssod,mahalanobis,energy,knn,vim with --select '
                        'evidence, ssod,mahalanobis,energy with --select all)')
    g.add_argument('--combine', choices=('fisher', 'stouffer'), default=None, help='ssod_fused combination '
                                                                                  '(default fisher)')
    g.add_argument('--select', choices=('all', 'evidence'), default=None,
                   help="ssod_fused: the components the ID-only evidence supports ('evidence', the default: pseudo-OOD "
                        "made from the fit images; pool ssod,mahalanobis,energy,knn,vim) or 'all' of them (the "
                        'earlier default: Fisher over ssod,mahalanobis,energy)')
    g.add_argument('--evidence-threshold', type=float, default=None, metavar='AUROC',
                   help='--select evidence: the mean pseudo-AUROC a component needs to be kept (default: the '
                        'measured rule, timm_ssod.detectors.ssod_fused.EVIDENCE_RULE)')
    g.add_argument('--evidence-top', type=int, default=None, metavar='K',
                   help="--select evidence: keep at most the K components with the highest pseudo-AUROC (default: "
                        "the measured rule's)")
    g.add_argument('--evidence-sources', default=None, metavar='A,B,...',
                   help='--select evidence: the pseudo-OOD sources averaged, of background, background_local, '
                        'background_crop, patch_shuffle, blur, pixel_permutation, leave_classes_out (default: the '
                        "measured rule's)")
    g.add_argument('--evidence-images', type=int, default=None, metavar='N',
                   help='--select evidence: make the pseudo-OOD from N of the fit images (default: one in 8 of '
                        'them, 40 to 500; timm_ssod.detectors.evidence.evidence_budget): fewer is faster, and noisier')
    g.add_argument('--alpha', type=float, default=DEFAULT_ALPHA, help=f'target share of ID images rejected (default {DEFAULT_ALPHA})')
    g = p.add_argument_group('run')
    g.add_argument('--save-dir', metavar='DIR', default=None,
                   help='write the calibrated model folder here (default with --push-to-hub: output/calibrated/<name>)')
    g.add_argument('--push-to-hub', metavar='ORG/NAME', default=None, help='push the calibrated model to the Hub')
    g.add_argument('--seed', type=int, default=0, help='seed of the subsampling (default 0)')
    g.add_argument('--batch-size', '-b', type=int, default=64)
    g.add_argument('--workers', '-j', type=int, default=0)
    g.add_argument('--device', default=None, help='default: cuda if available, else cpu')
    g.add_argument('--quiet', action='store_true', help='no progress lines')
    return p


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``calibrate`` on the ``timm-ssod`` subparsers (``timm_ssod.cli``)."""
    return add_command(subparsers, 'calibrate', 'calibrate an OOD decision on held-out ID images (conformal p-values)',
                       __doc__, add_arguments, run)


# the --evidence-* flags (argparse dest) and the SSODFused argument each sets; options of --select evidence
EVIDENCE_FLAGS = (('evidence_threshold', 'threshold'), ('evidence_top', 'top'),
                  ('evidence_sources', 'evidence_sources'), ('evidence_images', 'evidence_images'))


def _detector(args):
    """The detector of the arguments; ``ssod_fused`` is the default decision (``calibration.create_decision``)."""
    from ..calibration import create_decision
    kwargs = {}
    if args.components is not None:
        kwargs['components'] = args.components
    if args.combine is not None:
        kwargs['method'] = args.combine
    for flag, key in (('select', 'select'), *EVIDENCE_FLAGS):
        if getattr(args, flag) is not None:
            kwargs[key] = getattr(args, flag)
    if kwargs and args.detector != DEFAULT_DETECTOR:
        raise ValueError(f'--components / --combine / --select / --evidence-* are options of --detector {DEFAULT_DETECTOR}')
    detector = create_decision(args.detector, **kwargs)
    if any(getattr(args, flag) is not None for flag, _ in EVIDENCE_FLAGS) and detector.select != 'evidence':
        raise ValueError(' / '.join('--' + flag.replace('_', '-') for flag, _ in EVIDENCE_FLAGS)
                         + ' are options of --select evidence')
    return detector


def _calibrate(args) -> int:
    import torch
    from timm.data import create_transform, resolve_data_config

    from ..conformal import check_calibration_size
    from ..data import check_held_out_split, folder_summary
    from ..evaluate import with_progress
    from ..data import cut, dataset_num_classes, make_loader, same_folder
    from ..evaluate import EvalDataError, build_id_dataset

    if not args.save_dir and not args.push_to_hub:
        raise ValueError('give --save-dir DIR and/or --push-to-hub ORG/NAME: where the calibrated model goes')
    detector = _detector(args)
    device = torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    model, info, save_kwargs = load_ssod_model(args.model, args.use_ema, args.model_kwargs)
    model.to(device)
    data_config = resolve_data_config(dict(save_kwargs.get('data_config') or {}), model=model)
    transform = create_transform(**data_config, is_training=False)
    # what save_pretrained will record as the model's preprocessing, and predict will use
    model.pretrained_cfg = dict(model.pretrained_cfg, **{k: data_config[k] for k in (
        'input_size', 'interpolation', 'mean', 'std', 'crop_pct', 'crop_mode') if k in data_config})
    classes = model.num_classes
    # the one rule of held-out splits (timm_ssod.data): never the training images by fallback
    split_cal, split_fit = check_held_out_split(args.dataset, args.data_dir, args.split, args.fit_split,
                                                info['train_args'], EvalDataError)
    if split_cal is not None and split_cal.training:
        raise EvalDataError(f'--split {args.split!r} reads the training images ({split_cal.training}): a calibration '
                            'on them does not hold for new images. Calibrate on held-out images (e.g. DIR/val).')

    def id_set(split, folder, role):
        what = f'the ID data ({args.dataset or args.data_dir}, split {split})'
        ds = build_id_dataset(args.dataset, args.data_dir, split, classes, args.dataset_kwargs)
        declared = dataset_num_classes(ds)
        if declared and declared != classes:
            raise EvalDataError(f'{what} has {declared} classes but the model has {classes}')
        if folder is not None:
            print(f'{role} data: {folder_summary(ds, folder)}')
        return ds

    calib_set = id_set(args.split, split_cal, 'Calibration')
    if args.calib_samples > 0:
        calib_set = cut(calib_set, args.calib_samples, args.seed)
    if hasattr(calib_set, '__len__'):
        check_calibration_size(len(calib_set), args.alpha, f'ID calibration images (--split {args.split})')
    fit_loader = None
    if detector.needs_fit:
        fit_set = id_set(args.fit_split, split_fit, 'Fit')
        if same_folder(fit_set, calib_set):
            raise EvalDataError(f'--fit-split {args.fit_split!r} and --split {args.split!r} read the same folder '
                                f'({args.data_dir}): calibration images must be held out. Put the ID images in '
                                'DIR/train and DIR/val, or use --detector ssod (no fit).')
        if args.fit_samples > 0:
            fit_set = cut(fit_set, args.fit_samples, args.seed)
        fit_loader = with_progress(make_loader(fit_set, transform, args.batch_size, args.workers, device),
                                   'fit data (ID training)', not args.quiet)
    data = f"{args.dataset or args.data_dir}, split {args.split}"
    calib_loader = with_progress(make_loader(calib_set, transform, args.batch_size, args.workers, device),
                                 'ID calibration data', not args.quiet)
    cal = model.calibrate(calib_loader, detector=detector,
                          alpha=args.alpha, fit_loader=fit_loader, device=device,
                          info={'data': data, 'fit': f'split {args.fit_split}' if fit_loader else None})
    print(f'Calibrated {args.model}: {cal.summary()}')
    describe = getattr(cal.detector, 'describe_choices', None)
    if callable(describe) and describe():
        print(describe())  # which components were kept, and why (--select evidence)
    model.cpu()
    from .. import hub
    # saved first, always: a push that fails (offline, no token) must not throw the calibration away
    save_dir = args.save_dir or _default_save_dir(args.push_to_hub)
    folder = hub.save_pretrained(model, save_dir, repo_id=args.push_to_hub, **save_kwargs)
    print(f'Saved to {folder}')
    if args.push_to_hub:
        try:
            info = hub.push_to_hub(model, args.push_to_hub, commit_message='Add ID calibration (timm_ssod)',
                                   **save_kwargs)
        except hub.HubError as e:
            text = str(e).rstrip('.').split('. Check the network')[0]
            raise hub.HubError(f'{text}. The calibrated model is saved in {save_dir} (calibrate --save-dir); upload '
                               f'that folder once the Hub can be reached: hf upload {args.push_to_hub} {save_dir}') \
                from e
        print(f'Pushed to {getattr(info, "commit_url", None) or args.push_to_hub}')
    return 0


def _default_save_dir(repo_id: str) -> str:
    """``output/calibrated/<name>`` for ``--push-to-hub org/name`` without ``--save-dir``; a
    new folder (``-1``, ``-2`` ... as timm's ``get_outdir``) when that one holds something."""
    base = os.path.join('output', 'calibrated', repo_id.split('/')[-1])
    folder, count = base, 0
    while os.path.exists(folder) and os.listdir(folder):
        count += 1
        folder = f'{base}-{count}'
    return folder


def run(args: argparse.Namespace, prog: str = 'timm-ssod calibrate') -> int:
    """Run the calibration of parsed arguments; 0 on success, 1 with a message on bad input."""
    return report_errors(_calibrate, args, prog)


def main(argv: Optional[List[str]] = None, prog: str = 'timm-ssod calibrate') -> int:
    return parse_and_run(argv, prog, __doc__, add_arguments, run)


if __name__ == '__main__':
    sys.exit(main())
