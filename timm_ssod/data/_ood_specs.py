"""OOD-set specs ``NAME=SPEC``, as ``timm-ssod train --ood-val`` and ``timm-ssod eval --ood`` read them.

SPEC is one of:

* ``synthetic/<set>`` (``backgrounds``, ``novel_objects``, ``noise``, ``textures`` ...);
* an existing folder: every image under it, recursively, any layout (``ImageFolderOOD``);
* a timm dataset name (``torch/cifar100``, ``hfds/...`` ...), read from the data folder.

Options may follow as ``?KEY=VALUE&...`` (``synthetic/noise?num_images=200&seed=1``): values
are Python literals where they parse as one, else strings; they go to the dataset. Without
``NAME=`` the name is the folder's or set's base name.
"""
import ast
import os
from typing import Any, Dict, NamedTuple, Optional, Type

from .._util import first_line
from .factory import create_dataset, parse_synthetic_name
from .folders import ImageFolderOOD

__all__ = ['OODSpec', 'TIMM_PREFIXES', 'TORCH_DATASETS', 'is_synthetic', 'parse_ood_spec', 'open_ood_set',
           'unknown_torch_dataset']

TIMM_PREFIXES = ('torch', 'hfds', 'hfids', 'tfds', 'wds')
# what timm.data.create_dataset accepts after 'torch/' (anything else is an AssertionError there)
TORCH_DATASETS = ('cifar10', 'cifar100', 'mnist', 'kmnist', 'fashion_mnist', 'qmnist', 'inaturalist', 'inat',
                  'places365', 'imagenet', 'image_folder', 'folder')


def unknown_torch_dataset(name: str) -> Optional[str]:
    """For ``torch/<x>`` names timm does not have: an error message listing those it has."""
    prefix, sep, rest = name.partition('/')
    if not sep or prefix.lower() != 'torch' or rest.split('/')[-1].lower() in TORCH_DATASETS:
        return None
    return (f'unknown torchvision dataset {name!r}: timm knows ' + ', '.join(f'torch/{n}' for n in TORCH_DATASETS) +
            '; give any other image set as a folder')


def is_synthetic(name: str) -> bool:
    return bool(name) and parse_synthetic_name(name) is not None


class OODSpec(NamedTuple):
    """One parsed ``NAME=SPEC``; ``spec`` is the text as given, for error messages."""
    spec: str
    name: str
    target: str
    options: Dict[str, Any]


def parse_ood_spec(spec: str, flag: str, error: Type[Exception] = ValueError) -> OODSpec:
    """``NAME=TARGET?K=V&...`` -> ``OODSpec``; an option that is not ``K=V`` is an ``error``
    naming ``flag`` and the spec."""
    name, sep, target = spec.partition('=')
    if not sep:
        name, target = '', spec
    target, _, query = target.partition('?')
    options = {}
    for item in filter(None, query.split('&')):
        key, sep, value = item.partition('=')
        if not sep or not key:
            raise error(f'{flag} {spec!r}: option {item!r} is not KEY=VALUE')
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[key] = value
    name = name or os.path.basename(os.path.normpath(target)) or target
    return OODSpec(spec, name, target, options)


def open_ood_set(ood: OODSpec, flag: str, root: Optional[str], split: str,
                 synthetic_kwargs: Optional[Dict[str, Any]] = None, error: Type[Exception] = ValueError,
                 **timm_kwargs):
    """The dataset of a parsed spec: synthetic sets get ``synthetic_kwargs`` (the spec's options
    win), timm datasets ``root``, ``split`` and ``timm_kwargs``. A target that is none of the
    three is an ``error`` naming ``flag`` and the spec; the datasets raise their own errors."""
    if is_synthetic(ood.target):
        return create_dataset(ood.target, split=split, **{**(synthetic_kwargs or {}), **ood.options})
    if os.path.isdir(ood.target):
        return ImageFolderOOD(ood.target, **ood.options)
    if '/' in ood.target and ood.target.split('/')[0] in TIMM_PREFIXES:
        if unknown_torch_dataset(ood.target):
            raise error(f'{flag} {ood.spec!r}: {unknown_torch_dataset(ood.target)}')
        try:
            return create_dataset(ood.target, root=root, split=split, is_training=False, **timm_kwargs,
                                  **ood.options)
        except (RuntimeError, OSError) as e:  # torchvision: not downloaded, or the download failed
            download = timm_kwargs.get('download')
            if isinstance(e, RuntimeError) and 'download' not in str(e):
                raise
            if isinstance(e, OSError) and not download:
                raise
            raise error(f'{flag} {ood.spec!r}: {ood.target} ' + (
                f'could not be downloaded into {root!r}' if download else f'was not found in {root!r}') +
                f' ({first_line(e)}). Download '
                'it first (timm-ssod train --dataset-download needs internet), or give the images as a folder') from e
    raise error(f'{flag} {ood.spec!r}: {ood.target!r} is not an existing folder, synthetic/<set> or a timm dataset '
                f'name ({", ".join(p + "/..." for p in TIMM_PREFIXES)})')
