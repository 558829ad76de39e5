"""The data of ``timm-ssod eval``: the ID evaluation split, the ID fit split and the OOD sets.

ID data: ``synthetic/id`` (the built-in benchmark, ``timm_ssod.data``) or any timm dataset
spec: ``''`` for an image folder (``--data-dir`` with ``train/`` and ``val/`` sub-folders, as
timm searches them), ``torch/cifar10``, ``hfds/...`` ...

``--ood NAME=SPEC`` (``timm_ssod.data``): ``synthetic/<set>``, drawn from the evaluation
split with the ID set's synthetic options (image size, seed); a folder (every image under it,
any layout); a timm dataset name (``torch/cifar100`` ...), read from ``--data-dir`` with the
evaluation split; optionally ``?KEY=VALUE&...`` options for the set.
"""
import os
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence

import torch.utils.data as tud

from ..data import create_dataset, list_ood_sets
from ._evaluate import AVERAGE
from ..data import create_id_dataset
from ..data import is_synthetic, open_ood_set, parse_ood_spec
from ..data import dataset_num_classes
from ..data import cut, make_loader, same_folder  # noqa: F401  (names of this module's __all__)

__all__ = ['EvalDataError', 'build_id_dataset', 'build_ood_datasets', 'cut', 'make_loader', 'same_folder',
           'dataset_num_classes']


class EvalDataError(ValueError):
    """A data option that cannot work (reported without a traceback)."""


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
    return create_id_dataset(name, root, split, error=EvalDataError, is_training=False,
                             download_hint='download it first (timm-ssod train --dataset-download, or torchvision)',
                             **kwargs)


def build_ood_datasets(specs: Sequence[str], root: Optional[str], split: str,
                       synthetic_kwargs: Optional[Dict[str, Any]] = None) -> 'OrderedDict[str, Any]':
    """``NAME=SPEC`` strings -> ``{name: dataset}`` (see the module docstring); an empty
    folder, a missing folder or a repeated name is an ``EvalDataError`` naming the set."""
    sets = OrderedDict()
    for spec in specs:
        ood = parse_ood_spec(spec, '--ood', EvalDataError)
        name = ood.name
        if name in sets or name == AVERAGE:
            raise EvalDataError(f'--ood {spec!r}: the name {name!r} is ' +
                                ('used twice' if name in sets else 'reserved for the mean over the sets'))
        try:
            sets[name] = open_ood_set(ood, '--ood', root, split, synthetic_kwargs, EvalDataError)
        except EvalDataError:
            raise
        except (ValueError, FileNotFoundError) as e:
            raise EvalDataError(f'OOD set {name!r} (--ood {spec!r}): {e}') from e
        if not isinstance(sets[name], tud.IterableDataset) and len(sets[name]) == 0:
            raise EvalDataError(f'OOD set {name!r} (--ood {spec!r}) is empty')
    return sets


def default_ood_specs() -> List[str]:
    """Every built-in synthetic OOD set, ``NAME=synthetic/NAME``."""
    return [f'{s}=synthetic/{s}' for s in list_ood_sets()]
