"""Datasets of a training run: the ID train / validation splits and the ``--ood-val`` sets.

``--dataset synthetic/id`` is the built-in generated benchmark (``timm_ssod.data``); any
other name goes to timm's ``create_dataset`` with timm's arguments. ``--dataset-kwargs``
reach the dataset constructor (``num_images``, ``img_size``, ``seed`` for synthetic data),
``--val-dataset-kwargs`` override them for the validation split and synthetic OOD sets.

``--ood-val NAME=SPEC``, SPEC one of:

* ``synthetic/<set>`` (``backgrounds``, ``novel_objects``, ``noise``, ``textures`` ...),
  optionally with options ``synthetic/noise?num_images=200&seed=1``;
* an existing folder: every image under it (``ImageFolderOOD``, any layout);
* another timm dataset name (``torch/svhn``), read from ``--data-dir`` with ``--val-split``.

Without ``NAME=`` the name is the folder's or set's base name.
"""
import ast
import os
from collections import OrderedDict
from typing import Dict, Optional, Tuple

from .data import ImageFolderOOD, create_dataset, parse_synthetic_name


class TrainConfigError(ValueError):
    """A command-line / config value that cannot work (reported without a traceback)."""


def _is_synthetic(name: str) -> bool:
    return bool(name) and parse_synthetic_name(name) is not None


def _synthetic_kwargs(args, num_classes: Optional[int], val: bool) -> Dict:
    kw = dict(args.dataset_kwargs)
    if val:
        kw.update(args.val_dataset_kwargs)
    if num_classes:
        kw.setdefault('num_classes', num_classes)
    return kw


def build_datasets(args) -> Tuple:
    """(train, validation) datasets, as timm's train.py creates them."""
    if _is_synthetic(args.dataset):
        train = create_dataset(args.dataset, split=args.train_split,
                               **_synthetic_kwargs(args, args.num_classes, val=False))
        val = create_dataset(args.dataset, split=args.val_split, **_synthetic_kwargs(args, args.num_classes, val=True))
        return train, val
    data_dir = args.data_dir or args.data
    if not data_dir and not args.dataset:
        raise TrainConfigError('no training data: give --data-dir DIR (an ImageFolder) or --dataset NAME '
                               '(e.g. --dataset synthetic/id for the built-in benchmark)')
    args.data_dir = data_dir
    common = dict(root=data_dir, class_map=args.class_map, download=args.dataset_download,
                  batch_size=args.batch_size)
    train = create_dataset(args.dataset, split=args.train_split, is_training=True, seed=args.seed,
                           repeats=args.epoch_repeats, **common, **args.dataset_kwargs)
    val = create_dataset(args.dataset, split=args.val_split, is_training=False, **common,
                         **{**args.dataset_kwargs, **args.val_dataset_kwargs})
    return train, val


def dataset_num_classes(dataset) -> Optional[int]:
    """Number of classes a dataset declares (``num_classes``, ``classes`` or its reader's
    ``class_to_idx``), or None."""
    n = getattr(dataset, 'num_classes', None)
    if isinstance(n, int) and n > 0:
        return n
    for owner in (dataset, getattr(dataset, 'reader', None), getattr(dataset, 'parser', None)):
        classes = getattr(owner, 'classes', None) or getattr(owner, 'class_to_idx', None)
        if classes:
            return len(classes)
    return None


def _parse_options(spec: str, query: str) -> Dict:
    options = {}
    for item in filter(None, query.split('&')):
        key, sep, value = item.partition('=')
        if not sep or not key:
            raise TrainConfigError(f'--ood-val {spec!r}: option {item!r} is not KEY=VALUE')
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[key] = value
    return options


def build_ood_sets(args, num_classes: Optional[int] = None) -> 'OrderedDict[str, object]':
    """The ``--ood-val`` sets by name (see the module docstring)."""
    sets = OrderedDict()
    for spec in args.ood_val:
        name, sep, target = spec.partition('=')
        if not sep:
            name, target = '', spec
        target, _, query = target.partition('?')
        name = name or os.path.basename(os.path.normpath(target)) or target
        if name in sets:
            raise TrainConfigError(f'--ood-val: the name {name!r} is used twice')
        options = _parse_options(spec, query)
        if _is_synthetic(target):
            kw = _synthetic_kwargs(args, num_classes, val=True)
            kw.update(options)
            try:
                sets[name] = create_dataset(target, split=args.val_split, **kw)
            except ValueError as e:
                raise TrainConfigError(f'--ood-val {spec!r}: {e}') from e
        elif os.path.isdir(target):
            try:
                sets[name] = ImageFolderOOD(target, **options)
            except ValueError as e:
                raise TrainConfigError(f'--ood-val {spec!r}: {e}') from e
        elif '/' in target and not os.path.isabs(target) and not target.startswith('.') and target.split('/')[0] in (
                'torch', 'hfds', 'hfids', 'tfds', 'wds'):
            sets[name] = create_dataset(target, root=args.data_dir or args.data, split=args.val_split,
                                        is_training=False, download=args.dataset_download, **options)
        else:
            raise TrainConfigError(f'--ood-val {spec!r}: {target!r} is not an existing folder, synthetic/<set> '
                                   'or a timm dataset name (torch/..., hfds/...)')
    return sets
