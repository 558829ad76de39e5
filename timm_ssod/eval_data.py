"""The data of ``timm-ssod eval``: the ID evaluation split, the ID fit split and the OOD sets.

ID data: ``synthetic/id`` (the built-in benchmark, ``timm_ssod.data``) or any timm dataset
spec: ``''`` for an image folder (``--data-dir`` with ``train/`` and ``val/`` sub-folders, as
timm searches them), ``torch/cifar10``, ``hfds/...`` ...

``--ood NAME=SPEC``, SPEC one of:

* ``synthetic/<set>`` (``backgrounds``, ``novel_objects``, ``noise``, ``textures`` ...), drawn
  from the evaluation split with the ID set's synthetic options (image size, seed);
* a folder: every image under it, recursively, any layout (``ImageFolderOOD``);
* a timm dataset name (``torch/svhn`` ...), read from ``--data-dir`` with the evaluation split.

Without ``NAME=`` the name is the folder's or set's base name.
"""
import os
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.utils.data as tud

from .data import ImageFolderOOD, create_dataset, list_ood_sets, parse_synthetic_name
from .evaluate import AVERAGE, subsample_indices
from .train_data import dataset_num_classes

__all__ = ['EvalDataError', 'build_id_dataset', 'build_ood_datasets', 'cut', 'make_loader', 'same_folder',
           'dataset_num_classes']

_TIMM_PREFIXES = ('torch', 'hfds', 'hfids', 'tfds', 'wds')


class EvalDataError(ValueError):
    """A data option that cannot work (reported without a traceback)."""


def is_synthetic(name: str) -> bool:
    return bool(name) and parse_synthetic_name(name) is not None


def build_id_dataset(name: str, root: Optional[str], split: str, num_classes: Optional[int] = None,
                     dataset_kwargs: Optional[Dict[str, Any]] = None):
    """The ID dataset of ``split`` (see the module docstring)."""
    kwargs = dict(dataset_kwargs or {})
    if is_synthetic(name):
        if num_classes:
            kwargs.setdefault('num_classes', num_classes)
        return create_dataset(name, split=split, **kwargs)
    if not name and not root:
        raise EvalDataError('no ID data: give --data-dir DIR (an image folder with train/ and val/ sub-folders) or '
                            '--dataset NAME (e.g. synthetic/id, torch/cifar10)')
    if not name and not os.path.isdir(root):
        raise EvalDataError(f'--data-dir {root!r} is not a folder')
    return create_dataset(name, root=root, split=split, is_training=False, **kwargs)


def same_folder(a, b) -> bool:
    """True when two timm folder datasets read the same folder (no split sub-folders found)."""
    roots = [getattr(getattr(d, 'reader', None), 'root', None) for d in (a, b)]
    return roots[0] is not None and os.path.realpath(str(roots[0])) == os.path.realpath(str(roots[1] or ''))


def _ood_one(spec: str, name: str, target: str, root, split, synthetic_kwargs):
    if is_synthetic(target):
        return create_dataset(target, split=split, **synthetic_kwargs)
    if os.path.isdir(target):
        return ImageFolderOOD(target)
    head = target.split('/')[0]
    if '/' in target and head in _TIMM_PREFIXES:
        return create_dataset(target, root=root, split=split, is_training=False)
    raise EvalDataError(f'--ood {spec!r}: {target!r} is not an existing folder, synthetic/<set> or a timm dataset '
                        f'name ({", ".join(p + "/..." for p in _TIMM_PREFIXES)})')


def build_ood_datasets(specs: Sequence[str], root: Optional[str], split: str,
                       synthetic_kwargs: Optional[Dict[str, Any]] = None) -> 'OrderedDict[str, Any]':
    """``NAME=SPEC`` strings -> ``{name: dataset}`` (see the module docstring); an empty
    folder, a missing folder or a repeated name is an ``EvalDataError`` naming the set."""
    sets = OrderedDict()
    for spec in specs:
        name, sep, target = spec.partition('=')
        if not sep:
            name, target = '', spec
        name = name or os.path.basename(os.path.normpath(target)) or target
        if name in sets or name == AVERAGE:
            raise EvalDataError(f'--ood {spec!r}: the name {name!r} is ' +
                                ('used twice' if name in sets else 'reserved for the mean over the sets'))
        try:
            sets[name] = _ood_one(spec, name, target, root, split, dict(synthetic_kwargs or {}))
        except (ValueError, FileNotFoundError) as e:
            if isinstance(e, EvalDataError):
                raise
            raise EvalDataError(f'OOD set {name!r} (--ood {spec!r}): {e}') from e
        if not isinstance(sets[name], tud.IterableDataset) and len(sets[name]) == 0:
            raise EvalDataError(f'OOD set {name!r} (--ood {spec!r}) is empty')
    return sets


def default_ood_specs() -> List[str]:
    """Every built-in synthetic OOD set, ``NAME=synthetic/NAME``."""
    return [f'{s}=synthetic/{s}' for s in list_ood_sets()]


class _Take(tud.IterableDataset):
    """The first ``n`` items of an iterable dataset."""

    def __init__(self, dataset, n: int):
        self.dataset, self.n = dataset, n

    def __iter__(self):
        for i, item in enumerate(self.dataset):
            if i >= self.n:
                break
            yield item


def cut(dataset, n: int, seed: int):
    """At most ``n`` items: a deterministic random subset (``subsample_indices``) of a
    map-style dataset, the first ``n`` items of an iterable one."""
    if isinstance(dataset, tud.IterableDataset):
        return _Take(dataset, n)
    if n >= len(dataset):
        return dataset
    return tud.Subset(dataset, subsample_indices(len(dataset), n, seed).tolist())


def make_loader(dataset, transform, batch_size: int, workers: int, device: torch.device) -> tud.DataLoader:
    """An in-order DataLoader, ``transform`` set on the dataset (or the one a Subset wraps)."""
    base = dataset
    while isinstance(base, (tud.Subset, _Take)):
        base = base.dataset
    base.transform = transform
    return tud.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                          pin_memory=device.type == 'cuda', drop_last=False)
