"""From a training run to the Hub: rebuild the SSOD model from a training checkpoint and push it.

A training checkpoint (``model_best.pth.tar`` / ``last.pth.tar``, written by timm's
``CheckpointSaver`` or ``timm_ssod.checkpoints.AtomicCheckpointSaver``) is a dict with
``state_dict`` (and ``state_dict_ema``), ``arch``, ``args`` (a plain dict, or timm's
``argparse.Namespace``) and, from ``timm-ssod train``, ``ssod_cfg`` and ``label_names`` (the
class names of the training data). It is read with ``torch.load(weights_only=True)``;
``argparse.Namespace`` is the one extra class allowed (``torch.serialization.safe_globals``), as
timm's own loader does. The model is rebuilt from ``args`` the way ``timm-ssod train`` built it
(``--model``, ``--gp``, ``--bn-*``, ``--in-chans``, ``--model-kwargs``; the class count is read
from the classifier weights), loaded strictly, and given the class names
(``pretrained_cfg['label_names']``, which ``save_pretrained`` writes to config.json):
``rebuild_model``, which ``timm-ssod eval`` uses too.
"""
import argparse
import logging
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import timm
import torch
import torch.nn as nn
from timm.data import resolve_data_config
from timm.models import clean_state_dict

from ..checkpoints import CheckpointError, classifier_classes, torch_load
from .._util import first_line
from ..core import set_label_names
from ._factory import create_model
from ._hub import push_to_hub, save_pretrained

_logger = logging.getLogger(__name__)

BEST, LAST = 'model_best.pth.tar', 'last.pth.tar'
_DATA_ARGS = ('input_size', 'img_size', 'mean', 'std', 'crop_pct', 'interpolation')


def load_training_checkpoint(path) -> Dict[str, Any]:
    """The checkpoint dict, read with ``torch.load(weights_only=True)`` (plus argparse.Namespace)."""
    try:
        ckpt = torch_load(path)
    except FileNotFoundError:
        raise
    except Exception as e:
        raise CheckpointError(f'{path} could not be read with torch.load(weights_only=True) (only tensors, plain '
                              f'containers and argparse.Namespace are allowed): {type(e).__name__}: {e}') from e
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get('state_dict'), dict):
        raise CheckpointError(f'{path} is not a training checkpoint (a dict with a state_dict)')
    return ckpt


def recorded_model_kwargs(train_args: Dict[str, Any]) -> Dict[str, Any]:
    """The ``create_model`` arguments a training run recorded in its ``args`` (``timm-ssod train``
    or timm's train.py): ``--gp``, ``--bn-momentum``, ``--bn-eps``, ``--in-chans`` /
    ``--input-size`` channels and ``--model-kwargs``. Unset ones are left out (timm does too)."""
    input_size = train_args.get('input_size')
    kwargs = dict(global_pool=train_args.get('gp'), bn_momentum=train_args.get('bn_momentum'),
                  bn_eps=train_args.get('bn_eps'),
                  in_chans=train_args.get('in_chans') or (input_size[0] if input_size else None))
    kwargs.update(train_args.get('model_kwargs') or {})
    return {k: v for k, v in kwargs.items() if v is not None}


def apply_run_data_config(model: nn.Module, train_args: Dict[str, Any], keep=()) -> None:
    """Put the run's preprocessing into ``model.pretrained_cfg``, resolved as ``timm-ssod train``
    resolved it (``resolve_data_config(args, model=model)``: ``--img-size`` / ``--input-size``,
    ``--mean``, ``--std``, ``--crop-pct``, ``--interpolation`` over the model's defaults), so
    ``resolve_model_data_config(model)`` gives what the run trained and validated with. The
    test-time recommendations of timm's weights are dropped where the run set its own, as timm's
    ``save_config_for_hf`` does. ``keep``: keys the caller set, left alone. No-op without args."""
    if not train_args or not isinstance(getattr(model, 'pretrained_cfg', None), dict):
        return
    cfg = model.pretrained_cfg
    old_size = tuple(cfg.get('input_size') or ())
    resolved = resolve_data_config({k: train_args.get(k) for k in _DATA_ARGS + ('in_chans', 'crop_mode')},
                                   model=model)
    for key, value in resolved.items():
        if key not in keep:
            cfg[key] = tuple(value) if isinstance(value, list) else value
    if 'input_size' not in keep and (train_args.get('img_size') or train_args.get('input_size')):
        cfg.pop('test_input_size', None)
        cfg.pop('test_pool_size', None)
        if tuple(cfg['input_size'][1:]) != old_size[1:]:
            cfg['pool_size'] = None  # timm's, for another input size
    if 'crop_pct' not in keep and train_args.get('crop_pct'):
        cfg.pop('test_crop_pct', None)


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


def model_from_checkpoint(path, use_ema: bool = True, model_kwargs: Optional[Dict] = None
                          ) -> Tuple[nn.Module, Dict[str, Any]]:
    """Rebuild the SSOD model of a training checkpoint. Returns ``(model, args)``, ``args``
    the run's arguments as a dict. ``use_ema``: the EMA weights when the run kept them.
    ``model_kwargs`` override the rebuilt ``create_model`` arguments."""
    ckpt = load_training_checkpoint(path)
    args = ckpt.get('args') or {}
    args = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    if args.get('ssod') is False:
        raise CheckpointError(f'{path} was trained with --no-ssod (no OOD head): push it with timm\'s '
                              'timm.models.push_to_hf_hub instead')
    arch = args.get('model') or ckpt.get('arch')
    if not arch or not timm.is_model(arch):
        raise CheckpointError(f'{path}: cannot tell the timm model name (args.model / arch = {arch!r})')
    key = 'state_dict_ema' if use_ema and ckpt.get('state_dict_ema') else 'state_dict'
    state_dict = clean_state_dict(ckpt[key])
    ssod_cfg = dict(ckpt.get('ssod_cfg') or {})
    if not ssod_cfg:  # timm's plain CheckpointSaver: the SSOD settings are in args
        ssod_cfg = {k: args[a] for k, a in (('gamma', 'gamma'), ('lam', 'ood_lambda'), ('balance', 'balance'),
                                            ('ood_weight', 'ood_weight')) if args.get(a) is not None}
    num_classes = classifier_classes(arch, state_dict)[0] or args.get('num_classes')
    ood_hidden = int(ssod_cfg.get('ood_hidden', args.get('ood_hidden') or 0))

    def mismatch(e, kwargs):
        return CheckpointError(f'{key} of {path} does not fit the rebuilt {arch} ({kwargs}); pass model_kwargs= '
                               f'to correct the arguments: {first_line(e)}')

    model = rebuild_model(arch, state_dict, args, ssod=True, ood_hidden=ood_hidden, num_classes=num_classes,
                          model_kwargs=model_kwargs, label_names=ckpt.get('label_names'), mismatch=mismatch)
    model.ssod_cfg.update({k: v for k, v in ssod_cfg.items() if k not in ('backbone', 'num_features')})
    return model.eval(), args


def _training_data(args: Dict[str, Any]) -> str:
    dataset = args.get('dataset') or 'an image folder'
    extra = args.get('dataset_kwargs') or {}
    return f'`{dataset}`' + (f" ({', '.join(f'{k}={v}' for k, v in extra.items())})" if extra else '')


def resolve_checkpoint(output_dir_or_checkpoint) -> Path:
    """``<dir>/model_best.pth.tar`` (else ``last.pth.tar``, with a warning), or the file given."""
    path = Path(output_dir_or_checkpoint)
    if not path.is_dir():
        if not path.is_file():
            raise FileNotFoundError(f'{path}: no such training output folder or checkpoint')
        return path
    if (path / BEST).is_file():
        return path / BEST
    if (path / LAST).is_file():
        _logger.warning(f'{path} has no {BEST} (no validation metric?): pushing {LAST}')
        return path / LAST
    raise FileNotFoundError(f'{path} holds neither {BEST} nor {LAST}: not a training output folder')


def _prepare_run(run, use_ema, model_kwargs, model_card, eval_json):
    checkpoint = resolve_checkpoint(run)
    model, args = model_from_checkpoint(checkpoint, use_ema=use_ema, model_kwargs=model_kwargs)
    save_kwargs = dict(eval_results=eval_json, model_card=dict({'training_data': _training_data(args)},
                                                                **(model_card or {})),
                       data_config={k: args[k] for k in _DATA_ARGS if args.get(k) not in (None, '', [])})
    return checkpoint, model, save_kwargs


def save_training_run(output_dir, save_directory, *, repo_id: Optional[str] = None, eval_json=None,
                      use_ema: bool = True, model_kwargs: Optional[Dict] = None, model_card: Optional[Dict] = None):
    """``push_training_run`` into a local folder (no upload). Returns the folder."""
    _, model, save_kwargs = _prepare_run(output_dir, use_ema, model_kwargs, model_card, eval_json)
    return save_pretrained(model, save_directory, repo_id=repo_id, **save_kwargs)


def push_training_run(output_dir, repo_id: str, *, eval_json=None, use_ema: bool = True,
                      model_kwargs: Optional[Dict] = None, model_card: Optional[Dict] = None,
                      private: Optional[bool] = None, revision: Optional[str] = None, token: Optional[str] = None,
                      commit_message: Optional[str] = None):
    """Push a finished training run (its folder, or one checkpoint file) to the Hub repo
    ``repo_id``: model.safetensors, config.json with the run's preprocessing and SSOD
    settings, and the model card (with the evaluation table of ``eval_json``, if given).
    What ``timm-ssod train --push-to-hub`` and ``timm-ssod push`` call. Returns the
    ``CommitInfo``."""
    checkpoint, model, save_kwargs = _prepare_run(output_dir, use_ema, model_kwargs, model_card, eval_json)
    _logger.info(f'Pushing {checkpoint} to the Hub repo {repo_id}')
    return push_to_hub(model, repo_id, token=token, private=private, revision=revision,
                       commit_message=commit_message or f'Add SSOD model from {checkpoint.name}', **save_kwargs)
