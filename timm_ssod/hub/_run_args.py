"""What a training run recorded in its checkpoint's ``args``, turned into what a rebuilt model
needs: its ``create_model`` arguments (``recorded_model_kwargs``), its preprocessing in
``pretrained_cfg`` (``apply_run_data_config``) and what ``save_pretrained`` writes of the run
(``run_save_kwargs``). ``args`` is a plain dict (``timm-ssod train``) or timm's
``argparse.Namespace`` turned into one."""
import os
from typing import Any, Dict

import torch.nn as nn
from timm.data import resolve_data_config

_DATA_ARGS = ('input_size', 'img_size', 'mean', 'std', 'crop_pct', 'interpolation')


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


def _training_data(args: Dict[str, Any]) -> str:
    """The model card's training data: the dataset name, or the image folder by its name (the last part
    of ``--data-dir``, never the machine's full path), with the dataset's options."""
    dataset = args.get('dataset')
    raw = args.get('data_dir')
    folder = os.path.basename(os.path.normpath(str(raw))) if raw and not dataset else ''
    what = f'`{dataset}`' if dataset else (f'the image folder `{folder}`' if folder else 'an image folder')
    extra = args.get('dataset_kwargs') or {}
    return what + (f" ({', '.join(f'{k}={v}' for k, v in extra.items())})" if extra else '')


def run_save_kwargs(args: Dict[str, Any]) -> Dict[str, Any]:
    """``save_pretrained`` / ``push_to_hub`` keyword arguments of a training run: the model card's
    training data and the run's preprocessing arguments (``data_config``)."""
    return dict(model_card={'training_data': _training_data(args)},
                data_config={k: args[k] for k in _DATA_ARGS if args.get(k) not in (None, '', [])})
