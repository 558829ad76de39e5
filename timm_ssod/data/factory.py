"""``create_dataset``: ``synthetic/<set>`` names, everything else through timm."""
from typing import Optional

import timm.data

from .synthetic import SYNTHETIC_PREFIX, SyntheticDataset

# timm.data.create_dataset arguments that mean nothing for generated data: ignored, so
# one call site can build either kind of dataset.
_TIMM_ONLY_KWARGS = ('search_split', 'class_map', 'load_bytes', 'is_training', 'download',
                     'batch_size', 'repeats', 'input_img_mode', 'trust_remote_code')


def parse_synthetic_name(name: str) -> Optional[str]:
    """The set of a synthetic dataset name (``synthetic`` -> ``id``, ``synthetic/noise`` ->
    ``noise``; prefix case-insensitive), or None if ``name`` is not synthetic."""
    prefix, sep, rest = name.partition('/')
    if prefix.lower() != SYNTHETIC_PREFIX:
        return None
    return rest if sep and rest else 'id'


def create_dataset(name: str, root: Optional[str] = None, split: str = 'train', **kwargs):
    """Create a dataset by name.

    ``synthetic``, ``synthetic/id`` or ``synthetic/<OOD set>`` build a ``SyntheticDataset``
    (``root`` and timm-only arguments are ignored, ``num_samples`` is read as
    ``num_images``; ValueError for unknown set names). Any other name goes to
    ``timm.data.create_dataset(name, root=root, split=split, **kwargs)``: image folders
    (``name=''``), ``torch/cifar10``, ``hfds/...`` and so on.
    """
    kind = parse_synthetic_name(name)
    if kind is None:
        return timm.data.create_dataset(name, root=root, split=split, **kwargs)
    for key in _TIMM_ONLY_KWARGS:
        kwargs.pop(key, None)
    num_samples = kwargs.pop('num_samples', None)
    if kwargs.get('num_images') is None and num_samples is not None:
        kwargs['num_images'] = num_samples
    return SyntheticDataset(kind, split=split, **kwargs)
