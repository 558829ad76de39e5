"""The one model loader: a MODEL as the commands take it -> ``(model in eval mode, info)``.

``load_model(name, checkpoint)`` serves every command (``eval``, ``visualize``, ``calibrate``,
``predict``, ``push``) and ``timm_ssod.evaluate``:

* a training checkpoint (``.pth.tar``: ``timm-ssod train``'s or timm's ``train.py``'s), a run
  folder (its ``model_best.pth.tar``, else ``last.pth.tar``), a bare state dict or
  ``.safetensors``, read by ``checkpoints.read_checkpoint``; the model is rebuilt with the
  arguments its run recorded (``rebuild_model``), the run's SSOD settings in ``ssod_cfg``;
* a saved folder, ``local-dir:PATH`` / ``hf-hub:org/name`` (``create_model``);
* a timm name with ``pretrained=True``: timm's weights (a plain model).

Whether the model is an SSOD model follows from its weights, so an OOD head is never used with
random weights: a checkpoint without ``ood_head.*``, a plain timm folder and timm's pretrained
weights give a plain model (``info['notes']`` says so); ``ssod=False`` forces a plain model.
The class count is read from the checkpoint's classifier; a different ``num_classes`` is an
error naming both numbers.
"""
import logging
import os
from typing import Any, Callable, Dict, Optional, Tuple

import timm
import torch
import torch.nn as nn
from timm.models import parse_model_name, split_model_name_tag

from ..checkpoints import classifier_classes, read_checkpoint, resolve_checkpoint, ssod_cfg_from_args
from ..core import OODHead, is_ssod_model, set_label_names
from ._factory import create_model, unknown_model_message
from ._files import OOD_HEAD_PREFIX, Source, read_config
from ._hub import is_ssod_config
from ._run_args import _DATA_ARGS, apply_run_data_config, recorded_model_kwargs

__all__ = ['load_model', 'ModelLoadError', 'rebuild_model']

_logger = logging.getLogger(__name__)


class ModelLoadError(ValueError):
    """The model cannot be built or its weights do not fit it."""


def rebuild_model(arch: str, state_dict: Dict[str, torch.Tensor], train_args: Dict[str, Any], *, ssod: bool,
                  ood_hidden: int = 0, num_classes: Optional[int] = None, model_kwargs: Optional[Dict] = None,
                  label_names=None, mismatch: Callable[[RuntimeError, Dict], Exception]) -> nn.Module:
    """The one place a model is rebuilt from a training checkpoint (``model_from_checkpoint``
    here, the model of ``timm-ssod eval``): ``create_model`` with the arguments the run recorded
    (``recorded_model_kwargs``), then ``num_classes`` and ``model_kwargs`` over them; the weights
    loaded strictly; the run's class names (``label_names``) when they match the classifier; the
    run's preprocessing in ``pretrained_cfg`` (``apply_run_data_config``). A load that does not
    fit raises ``mismatch(error, create_model kwargs)``: each caller words it for its own users."""
    kwargs = recorded_model_kwargs(train_args)
    kwargs.update(model_kwargs or {})
    if num_classes:
        kwargs['num_classes'] = num_classes
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    model = create_model(arch, ssod=ssod, pretrained=False, ood_hidden=ood_hidden, **kwargs)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as e:
        raise mismatch(e, kwargs) from e
    if isinstance(label_names, (list, tuple)) and len(label_names) == model.num_classes:  # timm-ssod train's
        set_label_names(model, label_names)
    apply_run_data_config(model, train_args)
    return model


def _from_checkpoint(name, path, ssod, use_ema, num_classes, model_kwargs, info):
    path = str(resolve_checkpoint(path))
    state_dict, meta, key = read_checkpoint(path, use_ema, what='checkpoint')
    train_args = meta.get('args') or {}
    recorded = train_args.get('model') or meta.get('arch')
    if name and unknown_model_message(name):  # a typo in --model, not in the checkpoint
        also = f" The checkpoint records {recorded!r}: leave --model out to use it." if recorded else ''
        raise ModelLoadError(f'--model {name!r}: {unknown_model_message(name)}{also}')
    name = name or recorded
    if not name or not (timm.is_model(name) or parse_model_name(name)[0]):
        raise ModelLoadError(f'checkpoint {path!r} does not name a timm model (arch = {name!r}): give --model NAME')
    has_ood = any(k.startswith(OOD_HEAD_PREFIX) for k in state_dict)
    if ssod and not has_ood:
        info['notes'].append(f'checkpoint {path} has no OOD head (no {OOD_HEAD_PREFIX}* weights): evaluated as a '
                             'plain model')
    ssod = ssod and has_ood
    if not ssod:
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(OOD_HEAD_PREFIX)}
    ckpt_classes, classifier_key = classifier_classes(name, state_dict)
    if num_classes and ckpt_classes and num_classes != ckpt_classes:
        raise ModelLoadError(f'checkpoint {path!r} has {ckpt_classes} classes ({classifier_key} is '
                             f'{tuple(state_dict[classifier_key].shape)}) but --num-classes {num_classes} was given')

    def mismatch(e, kwargs):
        if recorded and split_model_name_tag(str(recorded))[0] != split_model_name_tag(name)[0]:
            return ModelLoadError(f'checkpoint {path!r} was trained as {recorded!r}, not {name!r}: its weights do not '
                                  f'fit {name}. Leave --model out (the checkpoint names its architecture) or give '
                                  f'--model {recorded}.')
        detail = ' '.join(str(e).split())[:600]
        return ModelLoadError(f'{key} of checkpoint {path!r} does not fit {name} ({kwargs}): {detail}. Check --model, '
                              '--num-classes and --model-kwargs.')

    model = rebuild_model(name, state_dict, train_args, ssod=ssod,
                          ood_hidden=OODHead.hidden_of(state_dict) if ssod else 0,
                          num_classes=num_classes or ckpt_classes or train_args.get('num_classes'),
                          model_kwargs=model_kwargs, label_names=meta.get('label_names'), mismatch=mismatch)
    if ssod:  # the run's SSOD settings (timm's plain CheckpointSaver keeps them in args only)
        ssod_cfg = meta.get('ssod_cfg') or ssod_cfg_from_args(train_args)
        model.ssod_cfg.update({k: v for k, v in ssod_cfg.items() if k not in ('backbone', 'num_features')})
    info.update(model=name, checkpoint=path, weights=key, train_args=train_args,
                data_args={k: train_args[k] for k in _DATA_ARGS if train_args.get(k) is not None})
    return model


def _from_folder(name, ssod, num_classes, model_kwargs, info):
    kind, rest = parse_model_name(name)
    config = read_config(Source(kind, rest, (model_kwargs or {}).get('cache_dir')))
    if ssod and not is_ssod_config(config):
        info['notes'].append(f'{name} is a plain timm model (no "ssod" block in config.json): evaluated as a plain '
                             'model')
        ssod = False
    saved = config.get('num_classes')
    if num_classes and saved and num_classes != saved:
        raise ModelLoadError(f'{name} has {saved} classes (config.json num_classes) but --num-classes '
                             f'{num_classes} was given')
    info.update(model=name, checkpoint=None, weights='model.safetensors')
    return create_model(name, ssod=ssod, pretrained=True, **(model_kwargs or {}))


def load_model(name: Optional[str] = None, checkpoint: Optional[str] = None, *, ssod: bool = True,
               pretrained: bool = False, use_ema: bool = True, num_classes: Optional[int] = None,
               model_kwargs: Optional[Dict[str, Any]] = None) -> Tuple[nn.Module, Dict[str, Any]]:
    """``(model in eval mode, info)`` of a MODEL: ``name`` a timm name, ``local-dir:PATH`` /
    ``hf-hub:org/name``, or itself a checkpoint file or run folder; ``checkpoint`` the weights of
    ``name`` (see the module docstring). ``info``: ``model`` (name), ``checkpoint``, ``weights``,
    ``ssod`` (bool), ``data_args`` (preprocessing recorded by training), ``train_args`` (the
    training run's arguments, when the checkpoint has them), ``notes``. A training checkpoint's
    class names go to ``pretrained_cfg['label_names']``."""
    info: Dict[str, Any] = dict(notes=[], data_args={}, train_args={})
    if (name and not checkpoint and not name.startswith(('hf-hub:', 'local-dir:')) and os.path.exists(name)
            and (os.path.isfile(name) or not timm.is_model(name))):  # a timm name wins over a folder of that name
        name, checkpoint = None, name  # a checkpoint file or run folder given as the model
    if name and not checkpoint and unknown_model_message(name):
        raise ModelLoadError(f'--model {name!r}: {unknown_model_message(name)}')
    if checkpoint:
        model = _from_checkpoint(name, checkpoint, ssod, use_ema, num_classes, model_kwargs, info)
    elif name and parse_model_name(name)[0]:
        model = _from_folder(name, ssod, num_classes, model_kwargs, info)
    elif name and pretrained:
        saved = timm.models.get_pretrained_cfg_value(name, 'num_classes') if timm.is_model(name) else None
        if num_classes and saved and num_classes != saved:
            raise ModelLoadError(f"timm's pretrained {name} has {saved} classes but --num-classes {num_classes} was "
                                 'given (timm would re-initialise the classifier)')
        model = create_model(name, ssod=False, pretrained=True, **(model_kwargs or {}))
        info.update(model=name, checkpoint=None, weights='timm pretrained')
        if ssod:
            info['notes'].append("timm's pretrained weights have no OOD head: evaluated as a plain model")
    elif name:
        raise ModelLoadError(f'no weights for {name!r}: give --checkpoint PATH, --pretrained (timm weights), or a '
                             'saved model as local-dir:PATH / hf-hub:org/name. A randomly initialised model is never '
                             'evaluated.')
    else:
        raise ModelLoadError('no model: give --model NAME and/or --checkpoint PATH')
    info['ssod'] = is_ssod_model(model)
    for note in info['notes']:
        _logger.info(note)
    return model.eval(), info
