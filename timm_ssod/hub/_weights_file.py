"""A local pretrained-weights file, as timm's offline path takes it
(``pretrained_cfg_overlay=dict(file=FILE)``, ``timm-ssod train --pretrained-path FILE``), checked
before timm loads it so that every fault is one line naming the file:

* missing, truncated or corrupted: ``WeightsFileError`` saying so;
* a JSON beside it (``<stem>.json``, as the repository's stand-ins ship) whose ``sha256`` differs
  from the file's: the file is not the one the JSON describes;
* weights of another architecture: the missing and unexpected keys (``weights_mismatch``).

It also keeps a classifier that fits: timm drops the file's classifier whenever ``num_classes``
differs from the pretrained config's (1000 for ImageNet names), even when the file's own head
has exactly the classes asked for; ``local_weights_overlay`` puts the file's class count in the
overlay so that a 6-class file loads whole into a 6-class model (and sets the default class count
when the caller gives none). Another ``num_classes`` still gets a fresh head, as timm does.
"""
import json
import os
from typing import Dict, Iterable, Optional

import timm
import torch

from ..checkpoints import CheckpointError
from .._util import first_line, sha256_of

__all__ = ['WeightsFileError', 'read_weights_file', 'local_weights_overlay', 'weights_mismatch', 'sidecar_json']


class WeightsFileError(CheckpointError):
    """A local pretrained-weights file that can't be what the caller asked for."""


def sidecar_json(path: str) -> Optional[str]:
    """``<stem>.json`` beside ``path`` when it exists."""
    side = os.path.splitext(path)[0] + '.json'
    return side if os.path.isfile(side) else None


def _check_sha256(path: str) -> None:
    side = sidecar_json(path)
    if side is None:
        return
    try:
        with open(side) as f:
            expected = json.load(f).get('sha256')
    except (OSError, ValueError, AttributeError):
        return  # a JSON of some other kind: nothing to check against
    if not expected:
        return
    actual = sha256_of(path)
    if actual != expected:
        raise WeightsFileError(f'{path}: sha256 {actual[:16]}... does not match {expected[:16]}... recorded in '
                               f'{side}; the file was changed or damaged since (restore it, or delete the JSON if the change is yours)')


def read_weights_file(path: str) -> Dict[str, torch.Tensor]:
    """The state dict of a weights file (timm's ``load_state_dict``: safetensors, or torch.load
    with ``weights_only=True``), its sha256 checked against a JSON beside it."""
    if not os.path.isfile(path):
        raise WeightsFileError(f'{path}: no such weights file')
    _check_sha256(path)
    try:
        state = timm.models.load_state_dict(path)
    except Exception as e:  # truncated or corrupt: safetensors' and torch's errors name neither the file nor why
        raise WeightsFileError(f'{path}: not a readable weights file (truncated or corrupted?): '
                               f'{first_line(e)}') from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsFileError(f'{path}: holds no state dict of tensors')
    return state


def _classifier_rows(model_name: str, state: Dict[str, torch.Tensor]) -> Optional[int]:
    try:
        cfg = timm.models.get_pretrained_cfg(model_name)
    except Exception:
        cfg = None
    names = getattr(cfg, 'classifier', None) if cfg is not None else None
    names = [names] if isinstance(names, str) else list(names or [])
    for name in names:
        w = state.get(f'{name}.weight')
        if w is not None and w.ndim >= 2:
            return int(w.shape[0])
    return None


def local_weights_overlay(model_name: str, kwargs: Dict) -> Dict:
    """``kwargs`` with the overlay's file checked and, unless given, the overlay's ``num_classes``
    set to the file's classifier rows (timm then keeps the file's classifier when the model has
    that many classes, and builds the model with that many when ``num_classes`` is not given)."""
    overlay = dict(kwargs.get('pretrained_cfg_overlay') or {})
    state = read_weights_file(overlay['file'])
    rows = _classifier_rows(model_name, state)
    if rows is not None and 'num_classes' not in overlay:
        overlay['num_classes'] = rows
    return dict(kwargs, pretrained_cfg_overlay=overlay)


def weights_mismatch(path: str, model: torch.nn.Module, e: BaseException) -> WeightsFileError:
    """One line for a file whose keys don't fit ``model`` (timm's strict load failed with ``e``)."""
    state = read_weights_file(path)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)

    def some(keys: Iterable[str]) -> str:
        keys = list(keys)
        return ', '.join(keys[:5]) + (f' (+{len(keys) - 5} more)' if len(keys) > 5 else '')

    own = model.state_dict()
    reshaped = [f'{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}' for k in sorted(expected & set(state))
                if state[k].shape != own[k].shape]
    parts = [f'{len(missing)} missing key(s): {some(missing)}' if missing else '',
             f'{len(unexpected)} unexpected key(s): {some(unexpected)}' if unexpected else '',
             f'{len(reshaped)} key(s) of another shape: {some(reshaped)}' if reshaped else '']
    why = '; '.join(p for p in parts if p) or first_line(e)
    arch = type(model).__name__
    return WeightsFileError(f'{path}: weights of another architecture than this {arch}: {why}')
