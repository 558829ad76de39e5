"""A fitted detector as JSON + tensors, to store it beside a model (``model.safetensors``'s
sibling ``ssod.safetensors`` and the ``ssod`` block of ``config.json``) and rebuild it.

What is stored is the detector's instance attributes: tensors go to the tensor dict (under
``prefix``), numbers, strings, booleans and None (and lists and string-keyed dicts of them, such
as ``ssod_fused``'s record of the components it kept and why) to the JSON dict; a
nested detector, or a list of them (``ssod_fused``'s components), is stored the same way
under its own prefix. Any other attribute (a generator, a callable ...) is refused with an
error naming it. Rebuilding looks the class up in the detector registry by name (nothing is
imported by name from a file), creates it without calling ``__init__`` and sets the stored
attributes back, so the rebuilt detector scores exactly as the saved one.
"""
from typing import Dict, Tuple

import torch

from .._util import as_json
from .base import Detector

__all__ = ['detector_state', 'load_detector']

_JSON_TYPES = (bool, int, float, str, type(None))
_SKIP = ('_fitted',)


def _is_json(value) -> bool:
    """A JSON scalar, or a list / tuple / str-keyed dict of such values, at any depth."""
    if isinstance(value, _JSON_TYPES):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_json(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_json(v) for k, v in value.items())
    return False


def _registry_class(kind: str):
    from .registry import DETECTORS, EXPERIMENTAL_DETECTORS
    cls = DETECTORS.get(kind) or EXPERIMENTAL_DETECTORS.get(kind)
    if cls is None:
        raise ValueError(f'unknown detector {kind!r} in a saved calibration; this timm_ssod knows '
                         f'{", ".join(DETECTORS)} (is the package older than the one that saved it?)')
    return cls


def detector_state(detector: Detector, prefix: str = 'detector.') -> Tuple[Dict, Dict[str, torch.Tensor]]:
    """``(config, tensors)`` of a fitted detector; ``load_detector`` reverses it."""
    if not detector.is_fitted:
        raise ValueError(f'{detector.name} is not fitted: nothing to store')
    attrs, own, tensors, children = {}, [], {}, {}
    for key, value in vars(detector).items():
        if key in _SKIP:
            continue
        if isinstance(value, torch.Tensor):
            own.append(key)
            tensors[prefix + key] = value.detach().cpu().contiguous()
        elif isinstance(value, Detector):
            children[key], sub = detector_state(value, f'{prefix}{key}.')
            tensors.update(sub)
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, Detector) for v in value):
            children[key] = []
            for i, v in enumerate(value):
                cfg, sub = detector_state(v, f'{prefix}{key}.{i}.')
                children[key].append(cfg)
                tensors.update(sub)
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, torch.Tensor) for v in value):
            children[key] = {'tensor_list': len(value)}
            tensors.update({f'{prefix}{key}.{i}': v.detach().cpu().contiguous() for i, v in enumerate(value)})
        elif _is_json(value):
            attrs[key] = as_json(value)
        else:
            raise ValueError(f'detector {detector.name}: attribute {key!r} ({type(value).__name__}) cannot be stored '
                             'with the model (only tensors, numbers, strings and nested detectors can)')
    config = {'detector': type(detector).name, 'attrs': attrs, 'tensors': own}
    if children:
        config['children'] = children
    return config, tensors


def load_detector(config: Dict, tensors: Dict[str, torch.Tensor], prefix: str = 'detector.') -> Detector:
    """The fitted detector ``detector_state`` stored (see the module docstring)."""
    cls = _registry_class(config['detector'])
    det = cls.__new__(cls)
    for key, value in config.get('attrs', {}).items():
        if not key.isidentifier() or key.startswith('__'):
            raise ValueError(f'saved detector {config["detector"]}: invalid attribute name {key!r}')
        setattr(det, key, value)
    for key in config.get('tensors', []):
        if prefix + key not in tensors:
            raise ValueError(f'saved detector {config["detector"]}: tensor {prefix + key!r} is missing')
        setattr(det, key, tensors[prefix + key])
    for key, child in config.get('children', {}).items():
        if isinstance(child, list):
            setattr(det, key, [load_detector(c, tensors, f'{prefix}{key}.{i}.') for i, c in enumerate(child)])
        elif 'tensor_list' in child:
            setattr(det, key, [tensors[f'{prefix}{key}.{i}'] for i in range(int(child['tensor_list']))])
        else:
            setattr(det, key, load_detector(child, tensors, f'{prefix}{key}.'))
    det._fitted = True
    return det
