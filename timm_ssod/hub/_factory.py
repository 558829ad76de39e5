"""``create_model``: timm's ``create_model`` with an ``ssod`` switch."""
import difflib
import fnmatch
import logging
import re
from typing import Dict, Optional

import timm
import torch
import torch.nn as nn
from timm.models import parse_model_name, register_model, split_model_name_tag

from ..core import OODHead, attach_ssod, set_label_names
from ._hub import _CALLER_ALLOW_PICKLE, SSOD_ARCHITECTURE, _build, create_from_source  # hf-hub: / local-dir: names
from .._util import as_json, first_line
from ..checkpoints import CheckpointError, classifier_classes, read_checkpoint
from ._files import HubError, Source, read_config
from ._offline import offline_if_unreachable
from ._run_args import apply_run_data_config, recorded_model_kwargs
from ._weights_file import local_weights_overlay, weights_mismatch

__all__ = ['create_model', 'PretrainedWeightsError', 'unknown_model_message', 'ssod']

_logger = logging.getLogger(__name__)
OOD_HEAD_PREFIX = 'ood_head.'


class PretrainedWeightsError(OSError):
    """timm's pretrained weights could not be fetched (offline, Hub unreachable, not cached)."""

    def __init__(self, message: str, model_name: str, reason: str):
        super().__init__(message)
        self.model_name, self.reason = model_name, reason


def unknown_model_message(name: str) -> Optional[str]:
    """None when timm can create ``name`` (or it is an ``hf-hub:`` / ``local-dir:`` name);
    else timm's "Unknown model" with the closest timm names (difflib), and a
    ``timm.list_models`` pattern only when that pattern lists something."""
    if parse_model_name(name)[0] or timm.is_model(name):
        return None
    names = timm.list_models()
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
    hint = f'; did you mean {", ".join(close)}?' if close else '; no timm model has a similar name.'
    pattern = _family_pattern(name, names)
    more = (f" timm.list_models('{pattern}') lists that family (wildcards allowed)." if pattern else
            f' timm.list_models() lists all {len(names)} names (wildcards allowed).')
    return f'Unknown model ({name}){hint}{more}'


def _family_pattern(name: str, names) -> Optional[str]:
    """``*<stem>*`` for the leading letters of ``name`` (``vit`` of ``vit_tiny_patch16_225``), if
    it matches a timm name: never a pattern that lists nothing."""
    stem = re.match(r'[a-z]*', name.split('.')[0].split('_')[0].lower()).group(0)
    if len(stem) < 2:
        return None
    pattern = f'*{stem}*'
    return pattern if fnmatch.filter(names, pattern) else None


def create_model(model_name: str, ssod: bool = True, pretrained: bool = False,
                 ood_hidden: int = 0, allow_pickle: bool = False, **kwargs) -> nn.Module:
    """Create a timm model by name and, with ``ssod=True`` (default), add the SSOD OOD head.

    Every other keyword argument goes to ``timm.create_model`` unchanged (``num_classes``,
    ``img_size``, ``drop_rate``, ``pretrained_cfg_overlay`` ...). ``pretrained=True`` loads
    timm's weights for the backbone; the OOD head starts fresh. With ``ssod=False`` this is
    ``timm.create_model``.

    ``checkpoint_path`` loads weights after the OOD head is attached, as timm does after
    building its model: a ``timm-ssod train`` checkpoint (``model_best.pth.tar``; EMA weights
    when present, like timm; class names into ``pretrained_cfg['label_names']``), a plain timm
    checkpoint (only ``ood_head.*`` missing: a fresh OOD head, logged), or ``.safetensors``.
    ``ood_hidden`` is read from the checkpoint's OOD head when not given. With ``ssod=False`` an
    SSOD checkpoint's ``ood_head.*`` are ignored. A training checkpoint's recorded ``args``
    (``timm-ssod train``, or timm's train.py) complete the call: the model arguments the run
    used (``--model-kwargs`` such as ``output_stride``, ``--gp``, ``--bn-eps``, ``--in-chans``,
    the class count) fill in what the caller did not pass, and one passed with another value is
    a ``CheckpointError`` (a shape-neutral one would otherwise give another model silently);
    ``pretrained_cfg`` gets the run's preprocessing (``--img-size`` / ``--input-size``, mean,
    std, crop, interpolation), so ``resolve_model_data_config(model)`` is what the run used.

    ``hf-hub:org/name[@revision]`` and ``local-dir:/path`` load a folder written by
    ``save_pretrained`` (weights and OOD head) or a plain timm one (fresh OOD head); see
    ``timm_ssod.hub``. Their weights are read from ``model.safetensors`` only, unless
    ``allow_pickle=True`` allows ``pytorch_model.bin`` (read with ``weights_only=True``).

    An unknown name is timm's ``RuntimeError("Unknown model (...)")``, with the closest names.
    Offline (``HF_HUB_OFFLINE=1``, or the Hub refusing connections) pretrained weights come
    from the local cache or fail at once with ``PretrainedWeightsError`` (an ``OSError``)
    saying how to pass a local file, instead of huggingface_hub's ~50 s of retries.
    """
    if parse_model_name(model_name)[0]:  # a saved folder: timm_ssod.hub
        return create_from_source(model_name, ssod=ssod, pretrained=pretrained, ood_hidden=ood_hidden,
                                  allow_pickle=allow_pickle, **kwargs)
    message = unknown_model_message(model_name)
    if message:
        raise RuntimeError(message)
    checkpoint_path = kwargs.pop('checkpoint_path', None)
    state, meta = _read_checkpoint(checkpoint_path) if checkpoint_path else (None, {})
    train_args = meta.get('args') or {}
    if train_args:
        kwargs = _with_run_kwargs(model_name, kwargs, train_args, state, checkpoint_path)
    model = _create_timm(model_name, pretrained, kwargs)
    if ssod:
        if not ood_hidden and state is not None:
            ood_hidden = OODHead.hidden_of(state)
        attach_ssod(model, ood_hidden=ood_hidden, backbone=model_name)
    if state is not None:
        _load_checkpoint(model, state, checkpoint_path, ssod)
        if meta.get('label_names'):
            set_label_names(model, meta['label_names'])
    if train_args:
        apply_run_data_config(model, train_args, keep=tuple(kwargs.get('pretrained_cfg_overlay') or ()))
    return model


# run arguments that only steer training: the caller may change them without a conflict
_TRAINING_ONLY_KWARGS = ('bn_momentum',)


def _with_run_kwargs(model_name: str, kwargs: Dict, train_args: Dict, state, path: str) -> Dict:
    """``kwargs`` completed with what the training run of ``checkpoint_path`` recorded
    (``recorded_model_kwargs`` and its class count): a value the caller did
    not pass is filled in; one passed differently is a ``CheckpointError``, since shape-neutral
    arguments (``output_stride``, ``global_pool``, ``bn_eps`` ...) would load the weights into
    another model without any error."""
    recorded_arch = train_args.get('model')
    if (isinstance(recorded_arch, str) and not parse_model_name(recorded_arch)[0] and timm.is_model(recorded_arch)
            and split_model_name_tag(recorded_arch)[0] != split_model_name_tag(model_name)[0]):
        raise CheckpointError(f'checkpoint_path {path!r} was trained as {recorded_arch!r}, not {model_name!r}: '
                              f'create_model({split_model_name_tag(recorded_arch)[0]!r}, checkpoint_path=...)')
    recorded = recorded_model_kwargs(train_args)
    classes = classifier_classes(model_name, state)[0] if state is not None else None
    if classes or train_args.get('num_classes'):
        recorded['num_classes'] = classes or train_args['num_classes']
    given = {k: v for k, v in kwargs.items() if v is not None}
    conflicts = [f'{k}={given[k]!r} (the run: {v!r})' for k, v in recorded.items()
                 if k in given and k not in _TRAINING_ONLY_KWARGS and as_json(given[k]) != as_json(v)]
    if conflicts:
        raise CheckpointError(
            f'checkpoint_path {path!r}: {", ".join(conflicts)} differs from what its training run recorded (args: '
            '--model-kwargs, --gp, --bn-eps, --in-chans, the classifier); the weights were trained for the run\'s '
            'values, and a shape-neutral argument such as output_stride would load them into another model '
            'silently. Leave the argument out: the run\'s value is used.')
    return {**recorded, **given}  # None means 'not passed' (timm drops None arguments)


def _create_timm(model_name: str, pretrained: bool, kwargs: Dict) -> nn.Module:
    local_file = (kwargs.get('pretrained_cfg_overlay') or {}).get('file')
    if pretrained and local_file:  # timm's offline path, each fault of the file one line naming it
        kwargs = local_weights_overlay(model_name, kwargs)
        try:
            return timm.create_model(model_name, pretrained=True, **kwargs)
        except RuntimeError as e:
            if 'state_dict' not in str(e):
                raise
            bare = {k: v for k, v in kwargs.items() if k != 'pretrained_cfg_overlay'}
            bare.setdefault('num_classes', kwargs['pretrained_cfg_overlay'].get('num_classes'))
            raise weights_mismatch(local_file, timm.create_model(model_name, pretrained=False, **bare), e) from e
    if not pretrained:
        return timm.create_model(model_name, pretrained=pretrained, **kwargs)
    with offline_if_unreachable() as reason:  # huggingface_hub would retry ~25 s per file
        try:
            return timm.create_model(model_name, pretrained=True, **kwargs)
        except (OSError, HubError) as e:  # huggingface_hub's LocalEntryNotFoundError is a FileNotFoundError
            why = reason or first_line(e)
            raise PretrainedWeightsError(
                f'could not fetch the pretrained weights of {model_name!r} ({why}), and they are not in the local '
                f'Hub cache. Offline, pass a local file instead: create_model({model_name!r}, pretrained=True, '
                f"pretrained_cfg_overlay=dict(file='/path/to/model.safetensors')), or pretrained=False with "
                "checkpoint_path='/path/to/checkpoint'.", model_name, why) from e


def _read_checkpoint(path: str):
    """``(state_dict, meta)`` of ``checkpoint_path`` (``read_checkpoint``: weights_only, EMA first)."""
    state, meta, _ = read_checkpoint(path, use_ema=True, what='checkpoint_path')
    return state, meta


def _load_checkpoint(model: nn.Module, state: Dict[str, torch.Tensor], path: str, ssod: bool) -> None:
    """Strict load, except that an SSOD model may lack ``ood_head.*`` in the file (a fresh OOD
    head) and a plain model ignores them; other differences raise as timm's strict load does."""
    if not ssod:
        state = {k: v for k, v in state.items() if not k.startswith(OOD_HEAD_PREFIX)}
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(OOD_HEAD_PREFIX)]
    if missing or result.unexpected_keys:
        model.load_state_dict(state, strict=True)  # raises torch's error, listing the keys
    if result.missing_keys:
        _logger.warning(f'checkpoint_path {path!r} holds no OOD head (ood_head.*): the OOD head is freshly '
                        'initialised, the other weights are loaded')
    else:
        _logger.info(f'Loaded checkpoint_path {path!r}')


# timm entrypoint of old SSOD folders: importing timm_ssod registers it in timm's model registry
@register_model
def ssod(pretrained: bool = False, backbone: Optional[str] = None, ood_hidden: Optional[int] = None,
         ssod: bool = True, allow_pickle: bool = False, pretrained_cfg=None, pretrained_cfg_overlay=None,
         cache_dir=None, pretrained_model_args: Optional[Dict] = None, **kwargs) -> nn.Module:
    """timm entrypoint of old SSOD folders (``architecture: ssod`` in config.json).

    ``timm.create_model('hf-hub:org/name' | 'local-dir:path', pretrained=True)`` rebuilds an
    SSOD model saved before the split layout (new folders are plain timm folders, see the
    module docstring); ``timm.create_model('ssod', backbone='resnet50', ...)`` makes a new
    one. ``ssod=False`` gives the plain backbone; ``allow_pickle=True`` allows a
    ``pytorch_model.bin``-only folder.
    """
    if _CALLER_ALLOW_PICKLE.get() is not None:  # called by timm_ssod.create_model
        allow_pickle = _CALLER_ALLOW_PICKLE.get()
    elif pretrained_model_args and 'allow_pickle' in pretrained_model_args:
        _logger.warning('ignoring allow_pickle found in config.json model_args: only the caller can allow pickle')
        allow_pickle = False
    if isinstance(pretrained_cfg, str):
        raise ValueError(f"'{SSOD_ARCHITECTURE}' has no pretrained tags; load a saved SSOD model with "
                         "'hf-hub:org/name' or 'local-dir:/path'")
    source = Source.from_pretrained_cfg(pretrained_cfg, cache_dir)
    if source is None:
        if backbone is None:
            raise ValueError(f"timm.create_model('{SSOD_ARCHITECTURE}') needs backbone=<timm model name>, or load "
                             "a saved SSOD model with 'hf-hub:org/name' / 'local-dir:/path'")
        return create_model(backbone, ssod=ssod, pretrained=pretrained, ood_hidden=ood_hidden or 0,
                            pretrained_cfg=pretrained_cfg, pretrained_cfg_overlay=pretrained_cfg_overlay,
                            cache_dir=cache_dir, **kwargs)
    kwargs.update(backbone=backbone, ood_hidden=ood_hidden, pretrained_cfg_overlay=pretrained_cfg_overlay,
                  cache_dir=cache_dir, pretrained_model_args=pretrained_model_args)
    return _build(source, read_config(source), pretrained_cfg, pretrained, ssod, allow_pickle, kwargs)
