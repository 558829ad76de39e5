"""Datasets of a training run: the ID train / validation splits and the ``--ood-val`` sets.

``--dataset synthetic/id`` is the built-in generated benchmark (``timm_ssod.data``); any
other name goes to timm's ``create_dataset`` with timm's arguments. ``--dataset-kwargs``
reach the dataset constructor (``num_images``, ``img_size``, ``seed`` for synthetic data),
``--val-dataset-kwargs`` override them for the validation split and synthetic OOD sets.

``--ood-val NAME=SPEC``: ``synthetic/<set>`` (with the validation split and its synthetic
options), a folder or a timm dataset name (``torch/cifar100``, read from ``--data-dir`` with
``--val-split``), optionally ``?KEY=VALUE&...`` options (``timm_ssod.data``).
"""
import logging
import os
from collections import OrderedDict
from typing import Dict, Optional, Tuple

from ..data import create_dataset
from ..data import (check_evaluation_split, class_names, create_id_dataset, folder_summary, is_image_folder,
                    model_class_map, resolve_split)
from ..data import is_synthetic, open_ood_set, parse_ood_spec

_logger = logging.getLogger('train')


class TrainConfigError(ValueError):
    """A command-line / config value that cannot work (reported without a traceback)."""


def _synthetic_kwargs(args, num_classes: Optional[int], val: bool) -> Dict:
    kw = dict(args.dataset_kwargs)
    if val:
        kw.update(args.val_dataset_kwargs)
    if num_classes:
        kw.setdefault('num_classes', num_classes)
    return kw


def input_img_mode(args) -> str:
    """``--input-img-mode``, else timm's train.py choice: ``'L'`` for one input channel, else ``'RGB'``."""
    if args.input_img_mode:
        return args.input_img_mode
    channels = args.in_chans or (args.input_size[0] if args.input_size else 3)
    return 'L' if channels == 1 else 'RGB'


def build_datasets(args) -> Tuple:
    """(train, validation) datasets, as timm's train.py creates them (``--train-num-samples`` /
    ``--val-num-samples`` and ``--input-img-mode`` reach timm's ``create_dataset``)."""
    if is_synthetic(args.dataset):
        train = create_dataset(args.dataset, split=args.train_split, **{
            'num_samples': args.train_num_samples, **_synthetic_kwargs(args, args.num_classes, val=False)})
        val = create_dataset(args.dataset, split=args.val_split, **{
            'num_samples': args.val_num_samples, **_synthetic_kwargs(args, args.num_classes, val=True)})
        return train, val
    data_dir = args.data_dir or args.data
    if not data_dir and not args.dataset:
        raise TrainConfigError('no training data: give --data-dir DIR (an ImageFolder) or --dataset NAME '
                               '(e.g. --dataset synthetic/id for the built-in benchmark)')
    args.data_dir = data_dir
    if is_image_folder(args.dataset) and not os.path.exists(data_dir):
        raise TrainConfigError(f'--data-dir {data_dir!r}: no such folder')
    folder = is_image_folder(args.dataset) and os.path.isdir(data_dir)  # (not a .tar of images)
    split_train = split_val = None
    if folder:
        split_train = resolve_split(data_dir, args.train_split)
        split_val = check_evaluation_split(data_dir, args.val_split, '--val-split', [split_train.folder],
                                           TrainConfigError)
        if not split_train.found and split_val.found:  # timm would train on DIR, its val/ included
            raise TrainConfigError(
                f'--train-split {args.train_split!r}: {data_dir} has no {args.train_split!r} sub-folder, so timm would '
                f'train on all of {data_dir}, which holds the validation images ({split_val.folder}). Put the training '
                f'images in {os.path.join(data_dir, "train")} (class sub-folders as in {split_val.folder}).')
    common = dict(class_map=args.class_map, download=args.dataset_download, batch_size=args.batch_size,
                  error=TrainConfigError, download_hint='pass --dataset-download')
    flags = dict(input_img_mode=input_img_mode(args))  # --dataset-kwargs may override these
    train = create_id_dataset(args.dataset, data_dir, args.train_split, is_training=True, repeats=args.epoch_repeats,
                              **common, **{**flags, 'seed': args.seed, 'num_samples': args.train_num_samples,
                                           **args.dataset_kwargs})
    val = create_id_dataset(args.dataset, data_dir, args.val_split, is_training=False, **common,
                            **{**flags, 'num_samples': args.val_num_samples, **args.dataset_kwargs,
                               **args.val_dataset_kwargs})
    _check_same_classes(train, val, f'the validation data (--val-split {args.val_split!r}' +
                        (f', {split_val.folder})' if split_val else ')'))
    if folder:
        _logger.info(f'Training data: {folder_summary(train, split_train)}')
        _logger.info(f'Validation data: {folder_summary(val, split_val)}')
        if split_val.training:
            _logger.warning(f'--val-split {args.val_split!r} reads the training images ({split_val.training}): '
                            'validation accuracy and model_best then measure memorisation, not generalisation')
    return train, val


def _check_same_classes(train, val, what: str) -> None:
    """Folder indices are labels: a validation split without one of the training classes, or
    with another one, would be labelled against shifted indices. Both are errors naming the
    classes (extra ones through ``model_class_map``, the check of eval and calibrate)."""
    train_names, val_names = class_names(train), class_names(val)
    if not train_names or not val_names or train_names == val_names:
        return
    model_class_map(train_names, val_names, what, TrainConfigError)  # classes the training data lacks
    missing = [n for n in train_names if n not in val_names]
    raise TrainConfigError(
        f'{what} has no images of the training classes {", ".join(missing[:10])}{", ..." if len(missing) > 10 else ""}'
        f' ({len(val_names)} of {len(train_names)} classes): its labels would index the wrong classes. Add a '
        'folder of images for each, or pass --class-map FILE (one class name per line, all of them) so that both '
        'splits read the same indices.')


def build_ood_sets(args, num_classes: Optional[int] = None) -> 'OrderedDict[str, object]':
    """The ``--ood-val`` sets by name (see the module docstring)."""
    sets = OrderedDict()
    for spec in args.ood_val:
        ood = parse_ood_spec(spec, '--ood-val', TrainConfigError)
        if ood.name in sets:
            raise TrainConfigError(f'--ood-val: the name {ood.name!r} is used twice')
        try:
            sets[ood.name] = open_ood_set(ood, '--ood-val', args.data_dir or args.data, args.val_split,
                                          _synthetic_kwargs(args, num_classes, val=True), TrainConfigError,
                                          download=args.dataset_download)
        except TrainConfigError:
            raise
        except ValueError as e:
            raise TrainConfigError(f'--ood-val {spec!r}: {e}') from e
    return sets
