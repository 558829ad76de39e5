"""The model of ``timm-ssod eval``: a timm name with a checkpoint, a saved folder
(``local-dir:PATH`` / ``hf-hub:org/name``) or timm's pretrained weights.

Checkpoints: a training checkpoint (``.pth.tar``: a dict with ``state_dict`` and maybe
``state_dict_ema``, ``arch``, ``args``) or a bare state dict are read with
``torch.load(weights_only=True)`` (``argparse.Namespace`` allowed, as timm's own loader does);
``.safetensors`` with safetensors. Nothing else is unpickled.

Whether the model is evaluated as an SSOD model follows from its weights, so an OOD head is
never scored with random weights: a checkpoint without ``ood_head.*``, a plain timm folder
and timm's pretrained weights give a plain model (SSOD detectors skipped); ``ssod=False``
(``--no-ssod``) forces a plain model. The class count is read from the checkpoint's
classifier; a different ``num_classes`` is an error naming both numbers.
"""
import argparse
import logging
from typing import Any, Dict, Optional, Tuple

import timm
import torch
import torch.nn as nn
from timm.models import clean_state_dict, parse_model_name
from timm.utils import ParseKwargs

from .._util import first_line
from ..checkpoints import classifier_classes, torch_load
from ..hub import create_model, rebuild_model, unknown_model_message
from ..hub._files import OOD_HEAD_PREFIX, CheckpointError, load_safetensors

__all__ = ['load_eval_model', 'read_checkpoint', 'EvalModelError', 'add_model_arguments', 'load_model_of_args']

_logger = logging.getLogger(__name__)
_DATA_ARGS = ('input_size', 'img_size', 'crop_pct', 'mean', 'std', 'interpolation')


class EvalModelError(ValueError):
    """The model cannot be built or its weights do not fit it."""


def read_checkpoint(path: str, use_ema: bool = True) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any], str]:
    """``(state_dict, checkpoint meta, which weights)``; meta holds ``arch`` and ``args`` (a
    dict) when the checkpoint has them. ``use_ema``: ``state_dict_ema`` when present."""
    if str(path).endswith('.safetensors'):
        return load_safetensors(path), {}, 'safetensors'
    try:
        ckpt = torch_load(path)
    except FileNotFoundError:
        raise FileNotFoundError(f'--checkpoint {path!r}: no such file') from None
    except Exception as e:  # UnpicklingError (forbidden globals), RuntimeError / EOFError (broken file)
        raise CheckpointError(f'checkpoint {path!r} could not be read with torch.load(weights_only=True): '
                              f'{first_line(e)}') from e
    if isinstance(ckpt, dict) and isinstance(ckpt.get('state_dict'), dict):
        key = 'state_dict_ema' if use_ema and isinstance(ckpt.get('state_dict_ema'), dict) else 'state_dict'
        args = ckpt.get('args') or {}
        meta = dict(arch=ckpt.get('arch'), args=vars(args) if isinstance(args, argparse.Namespace) else dict(args),
                    label_names=ckpt.get('label_names'))
        return clean_state_dict(ckpt[key]), meta, key
    if isinstance(ckpt, dict) and ckpt and all(torch.is_tensor(v) for v in ckpt.values()):
        return clean_state_dict(ckpt), {}, 'state_dict'
    raise CheckpointError(f'checkpoint {path!r} holds neither a state dict nor a dict with "state_dict"')


def _ood_hidden(state_dict) -> int:
    w = state_dict.get(OOD_HEAD_PREFIX + 'net.0.weight')  # OODHead with a hidden layer
    return int(w.shape[0]) if w is not None else 0


def _from_checkpoint(name, path, ssod, use_ema, num_classes, model_kwargs, info):
    state_dict, meta, key = read_checkpoint(path, use_ema)
    train_args = meta.get('args') or {}
    recorded = train_args.get('model') or meta.get('arch')
    if name and unknown_model_message(name):  # a typo in --model, not in the checkpoint
        also = f" The checkpoint records {recorded!r}: leave --model out to use it." if recorded else ''
        raise EvalModelError(f'--model {name!r}: {unknown_model_message(name)}{also}')
    name = name or recorded
    if not name or not (timm.is_model(name) or parse_model_name(name)[0]):
        raise EvalModelError(f'checkpoint {path!r} does not name a timm model (arch = {name!r}): give --model NAME')
    has_ood = any(k.startswith(OOD_HEAD_PREFIX) for k in state_dict)
    if ssod and not has_ood:
        info['notes'].append(f'checkpoint {path} has no OOD head (no {OOD_HEAD_PREFIX}* weights): evaluated as a '
                             'plain model')
    ssod = ssod and has_ood
    if not ssod:
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(OOD_HEAD_PREFIX)}
    ckpt_classes, classifier_key = classifier_classes(name, state_dict)
    if num_classes and ckpt_classes and num_classes != ckpt_classes:
        raise EvalModelError(f'checkpoint {path!r} has {ckpt_classes} classes ({classifier_key} is '
                             f'{tuple(state_dict[classifier_key].shape)}) but --num-classes {num_classes} was given')
    def mismatch(e, kwargs):
        detail = ' '.join(str(e).split())[:600]
        return EvalModelError(f'{key} of checkpoint {path!r} does not fit {name} ({kwargs}): {detail}. Check --model, '
                              '--num-classes and --model-kwargs.')

    model = rebuild_model(name, state_dict, train_args, ssod=ssod, ood_hidden=_ood_hidden(state_dict) if ssod else 0,
                          num_classes=num_classes or ckpt_classes, model_kwargs=model_kwargs,
                          label_names=meta.get('label_names'), mismatch=mismatch)
    info.update(model=name, checkpoint=str(path), weights=key, train_args=train_args,
                data_args={k: train_args[k] for k in _DATA_ARGS if train_args.get(k) is not None})
    return model


def _from_folder(name, ssod, num_classes, model_kwargs, info):
    from ..hub import is_ssod_config
    from ..hub import Source, read_config
    kind, rest = parse_model_name(name)
    config = read_config(Source(kind, rest, (model_kwargs or {}).get('cache_dir')))
    if ssod and not is_ssod_config(config):
        info['notes'].append(f'{name} is a plain timm model (no "ssod" block in config.json): evaluated as a plain '
                             'model')
        ssod = False
    saved = config.get('num_classes')
    if num_classes and saved and num_classes != saved:
        raise EvalModelError(f'{name} has {saved} classes (config.json num_classes) but --num-classes '
                             f'{num_classes} was given')
    info.update(model=name, checkpoint=None, weights='model.safetensors')
    return create_model(name, ssod=ssod, pretrained=True, **(model_kwargs or {}))


def load_eval_model(name: Optional[str] = None, checkpoint: Optional[str] = None, *, ssod: bool = True,
                    pretrained: bool = False, use_ema: bool = True, num_classes: Optional[int] = None,
                    model_kwargs: Optional[Dict[str, Any]] = None) -> Tuple[nn.Module, Dict[str, Any]]:
    """``(model in eval mode, info)``; info: ``model`` (name), ``checkpoint``, ``weights``,
    ``ssod`` (bool), ``data_args`` (preprocessing recorded by training), ``train_args`` (the
    training run's arguments, when the checkpoint has them), ``notes``. A training
    checkpoint's class names go to ``pretrained_cfg['label_names']``."""
    info: Dict[str, Any] = dict(notes=[], data_args={}, train_args={})
    if name and not checkpoint and unknown_model_message(name):
        raise EvalModelError(f'--model {name!r}: {unknown_model_message(name)}')
    if checkpoint:
        model = _from_checkpoint(name, checkpoint, ssod, use_ema, num_classes, model_kwargs, info)
    elif name and parse_model_name(name)[0]:
        model = _from_folder(name, ssod, num_classes, model_kwargs, info)
    elif name and pretrained:
        saved = timm.models.get_pretrained_cfg_value(name, 'num_classes') if timm.is_model(name) else None
        if num_classes and saved and num_classes != saved:
            raise EvalModelError(f"timm's pretrained {name} has {saved} classes but --num-classes {num_classes} was "
                                 'given (timm would re-initialise the classifier)')
        model = create_model(name, ssod=False, pretrained=True, **(model_kwargs or {}))
        info.update(model=name, checkpoint=None, weights='timm pretrained')
        if ssod:
            info['notes'].append("timm's pretrained weights have no OOD head: evaluated as a plain model")
    elif name:
        raise EvalModelError(f'no weights for {name!r}: give --checkpoint PATH, --pretrained (timm weights), or a '
                             'saved model as local-dir:PATH / hf-hub:org/name. A randomly initialised model is never '
                             'evaluated.')
    else:
        raise EvalModelError('no model: give --model NAME and/or --checkpoint PATH')
    from ..core import is_ssod_model
    info['ssod'] = is_ssod_model(model)
    for note in info['notes']:
        _logger.info(note)
    return model.eval(), info


def add_model_arguments(group) -> None:
    """The options of ``load_model_of_args`` (``timm-ssod eval``, ``timm-ssod visualize``):
    ``--model``, ``--checkpoint``, ``--no-ssod``, ``--no-ema``, ``--num-classes``, ``--model-kwargs``."""
    group.add_argument('--model', metavar='NAME', default=None,
                       help='timm model name, or local-dir:PATH / hf-hub:org/name of a saved model '
                            '(default: the arch recorded in --checkpoint)')
    group.add_argument('--checkpoint', metavar='PATH', default=None,
                       help='weights: a (timm-ssod) training checkpoint .pth.tar, a state dict, or .safetensors')
    group.add_argument('--no-ssod', action='store_true', help='use the model(s) as plain timm models (ignore the '
                                                              'OOD head)')
    group.add_argument('--no-ema', action='store_true', help='use state_dict, not state_dict_ema, of a checkpoint')
    group.add_argument('--num-classes', type=int, default=None, help='number of classes (default: from the checkpoint)')
    group.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs, metavar='K=V',
                       help='more create_model arguments, e.g. img_size=64 for a ViT')


def load_model_of_args(args, name: Optional[str], checkpoint: Optional[str],
                       pretrained: bool = False) -> Tuple[nn.Module, Dict[str, Any]]:
    """``load_eval_model`` of ``name`` / ``checkpoint`` with the options of ``add_model_arguments``."""
    return load_eval_model(name, checkpoint, ssod=not args.no_ssod, pretrained=pretrained, use_ema=not args.no_ema,
                           num_classes=args.num_classes, model_kwargs=args.model_kwargs)
