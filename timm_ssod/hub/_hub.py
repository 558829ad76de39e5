"""Save, push and load SSOD models in timm's Hugging Face Hub format.

Folder layout (what ``save_pretrained`` writes and ``push_to_hub`` uploads): a plain timm
model of the backbone, which stock timm loads without this package, plus one file and one
``config.json`` block that ``timm_ssod.create_model`` reads to attach the OOD head:

* ``model.safetensors``: the timm backbone's ``state_dict()`` only (timm's own keys), so
  ``timm.create_model('hf-hub:org/name', pretrained=True)`` loads the classifier strictly.
* ``ssod.safetensors``: the OOD head (``ood_head.*``) and, for a calibrated model, the
  calibration (``calibration.*``: the detector's fitted state and the ID reference scores).
* ``config.json``: written by timm's own ``save_config_for_hf``: ``"architecture"`` = the
  backbone's timm name, ``num_classes``, ``label_names``, ``pretrained_cfg`` with the
  preprocessing, ``model_args`` (the backbone's reconstruction arguments only), and an
  ``"ssod"`` block that stock timm ignores: the model's ``ssod_cfg`` (``backbone``,
  ``num_features``, ``ood_hidden``, and whatever training added: ``gamma``, ``lam``,
  ``balance`` ...), ``"weights": "ssod.safetensors"`` and, once calibrated, ``"calibration"``
  (detector, alpha, n, threshold, class count, input size; ``timm_ssod.calibration``).
* ``README.md``: the model card (``hub/_card.py``), generated, never hand-written.

Loading, ``timm_ssod.create_model('hf-hub:...' | 'local-dir:...')`` reads ``config.json`` first:

* a folder with an ``ssod`` block: timm builds the backbone from the folder as it would
  without us (``model_args``, ``pretrained_cfg``; weights through timm's ``load_pretrained``,
  handed over as a state dict we read from safetensors), then the OOD head is attached and
  loaded from ``ssod.safetensors``, and the calibration with it. A different ``num_classes``
  re-initialises the classifier (timm's behaviour, with a warning) and drops the calibration
  (made for the old classes; warned). ``ssod=False`` gives the plain timm model.
* a plain timm folder (no ``ssod`` block, e.g. ``hf-hub:timm/resnet50.a1_in1k``): the timm
  model with its weights, and with ``ssod=True`` a freshly initialised OOD head (logged).
* an *old* SSOD folder, written before the split (``"architecture": "ssod"``, one
  ``model.safetensors`` holding ``ood_head.*`` too): still loads, through the ``ssod``
  entrypoint that importing ``timm_ssod`` registers in timm's model registry: timm reads
  ``config.json``, finds ``architecture: ssod`` and calls that entrypoint with the
  ``pretrained_cfg`` and ``model_args`` it parsed; the entrypoint builds the backbone named in
  the ``ssod`` block with timm's ``load_pretrained`` and loads ``ood_head.*``. So
  ``timm.create_model`` also loads old folders once ``timm_ssod`` is imported (stock timm
  answers "Unknown model (ssod)" for them, which is why folders are no longer written so).
  ``timm.create_model('ssod', backbone='resnet50')`` makes a new SSOD model.
* ``architecture: ssod`` without the block, or an unknown backbone: ``CheckpointError``.

The weights reach timm as an in-memory state dict (``pretrained_cfg_overlay=dict(state_dict=...)``);
timm copies it once (``dataclasses.asdict``), so loading briefly holds the weights twice.

Safety: weights are read from safetensors only; a ``pytorch_model.bin``-only repo
is refused unless ``allow_pickle=True`` is passed (then ``torch.load(weights_only=True)``).
``allow_pickle`` found in a repo's ``config.json`` is ignored: only the caller can opt in
(``timm_ssod.create_model`` hands it to the entrypoint through a context variable that
config.json cannot reach; a direct ``timm.create_model(..., allow_pickle=True)`` is honoured
unless config.json's ``model_args`` also holds ``allow_pickle``). A saved calibration names
its detector, which is looked up in the detector registry; its state is numbers and tensors.
No code from a repo is imported or executed. See ``hub/_files.py`` for the errors.
"""
import json
import logging
import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Dict, Optional, Union

import timm
import torch.nn as nn
from timm.models import parse_model_name
from timm.models._hub import save_config_for_hf

from ..checkpoints import load_safetensors
from ._files import (CONFIG_NAME, OOD_HEAD_PREFIX, SSOD_WEIGHTS_NAME, WEIGHTS_NAME, CheckpointError, HubError, Source,
                     read_config, read_state_dict, split_ood_head)
from ..core import attach_ssod, is_ssod_model
from ..core import label_names as model_label_names
from .._util import fsync_path, warn
from ._card import load_eval_results, render_model_card

__all__ = ['save_pretrained', 'push_to_hub', 'check_push_access', 'create_from_source', 'is_ssod_config',
           'is_legacy_ssod_config', 'HubError', 'CheckpointError', 'SSOD_ARCHITECTURE']

_logger = logging.getLogger(__name__)

SSOD_ARCHITECTURE = 'ssod'  # config.json "architecture" of old SSOD folders = the timm entrypoint below
README_NAME = 'README.md'
ONNX_NAME = 'model.onnx'  # save_pretrained(onnx=True) / timm-ssod push --onnx, with its JSON beside it
ONNX_FILES = (ONNX_NAME, ONNX_NAME + '.json')
FOLDER_FILES = (WEIGHTS_NAME, SSOD_WEIGHTS_NAME, README_NAME, CONFIG_NAME)  # written in this order, config.json last
_BLOCK_FILE_KEYS = ('weights', 'calibration')  # entries of the ssod block that are not model settings
# create-time options, never reconstruction arguments of the model
_OPTION_KWARGS = ('ssod', 'allow_pickle')
_SSOD_KWARGS = ('backbone', 'ood_hidden')
# allow_pickle of a timm_ssod.create_model call, out of reach of config.json's model_args
_CALLER_ALLOW_PICKLE: ContextVar[Optional[bool]] = ContextVar('timm_ssod_allow_pickle', default=None)


# ----------------------------------------------------------------------------------------- save
def save_pretrained(model: nn.Module, save_directory: Union[str, Path], *, eval_results=None,
                    model_card: Optional[Dict] = None, label_names=None, repo_id: Optional[str] = None,
                    model_args: Optional[Dict] = None, data_config: Optional[Dict] = None,
                    onnx: bool = False) -> Path:
    """Write ``model.safetensors``, ``config.json`` and ``README.md`` into ``save_directory``.

    Args:
        eval_results: evaluation JSON (path or dict), ``{"id_accuracy": f, "results":
            {detector: {ood_set: {"fpr95": f, "auroc": f, ...}}}}`` with fractions; rendered
            in percent in the model card.
        model_card: extra card fields: ``training_data`` (text), ``datasets`` (Hub dataset
            ids), ``license``, ``description``, ``base_model``.
        label_names: class names, stored in config.json (default: the model's, if any).
        repo_id: the Hub id the folder is meant for (used in the card's usage snippet).
        model_args / data_config: passed to timm's ``save_config_for_hf`` (explicit
            reconstruction arguments; the preprocessing used in training).
        onnx: also write ``model.onnx`` and ``model.onnx.json`` (``timm_ssod.export.export_onnx``: the
            model and its calibrated decision for ONNX Runtime); the card says how to run it. Without
            it, an ``model.onnx`` left in an existing folder by an earlier save is removed (it would
            no longer match the weights).

    The folder is written atomically: into a temporary folder next to it, then renamed
    into place; into an existing folder, each file is replaced only once all new files
    are complete (``config.json`` last). Returns the folder path.
    """
    if not is_ssod_model(model):
        raise TypeError('save_pretrained needs an SSOD model (timm_ssod.create_model(..., ssod=True)); '
                        'save a plain timm model with timm.models.save_for_hf')
    target = Path(save_directory)
    if target.exists() and not target.is_dir():
        raise FileExistsError(f'{target} exists and is not a folder')
    evals = load_eval_results(eval_results) if eval_results is not None else None  # fail before writing
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f'.{target.name}.{uuid.uuid4().hex[:8]}.partial'
    tmp.mkdir()  # mode 0o777 minus the umask, like any new folder
    try:
        _write_folder(model, tmp, evals, model_card, label_names, repo_id or f'your-org/{target.name}',
                      model_args, data_config, onnx)
        _move_into_place(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _write_folder(model, folder: Path, evals, model_card, label_names, repo_id, model_args, data_config, onnx=False):
    from safetensors.torch import save_file
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    backbone, ood_head = split_ood_head(state)
    save_file(backbone, str(folder / WEIGHTS_NAME), metadata={'format': 'pt'})
    extras = {OOD_HEAD_PREFIX + k: v for k, v in ood_head.items()}
    block = dict(_ssod_block_for(model), weights=SSOD_WEIGHTS_NAME)
    if model.ssod_calibration is not None:
        model.ssod_calibration.check_model(model)
        block['calibration'], tensors = model.ssod_calibration.to_saved()
        extras.update(tensors)
    save_file(extras, str(folder / SSOD_WEIGHTS_NAME), metadata={'format': 'pt'})

    model_config = {'ssod': block}
    if label_names is None:  # the model's own (timm's pretrained_cfg['label_names'], e.g. from training)
        label_names = model_label_names(model)
    if label_names:
        if len(label_names) != model.num_classes:
            raise ValueError(f'{len(label_names)} label_names for a model with {model.num_classes} classes')
        model_config['label_names'] = dict(label_names) if isinstance(label_names, dict) else list(label_names)
    with _export_model_args(model):
        save_config_for_hf(model, str(folder / CONFIG_NAME), model_config=model_config, model_args=model_args,
                           data_config=data_config)
    with open(folder / CONFIG_NAME, encoding='utf-8') as f:
        config = json.load(f)
    if config['architecture'] != block['backbone']:
        raise ValueError(f"pretrained_cfg names architecture {config['architecture']!r} but the backbone is "
                         f"{block['backbone']!r}")
    onnx_info = None
    if onnx:
        from ..export import export_onnx
        onnx_info = export_onnx(model, folder / ONNX_NAME, data_config=data_config)
    card = render_model_card(config, repo_id=repo_id, eval_results=evals, card=model_card, onnx=onnx_info)
    (folder / README_NAME).write_text(card, encoding='utf-8')
    for name in FOLDER_FILES:
        fsync_path(folder / name)


def _ssod_block_for(model) -> Dict:
    block = dict(model.ssod_cfg)
    block['backbone'] = model.pretrained_cfg.get('architecture') or block.get('backbone')
    if not block['backbone'] or not timm.is_model(block['backbone']):
        raise ValueError(f"cannot tell the timm name of this model's backbone ({block['backbone']!r})")
    for key, value in block.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError) as e:
            raise ValueError(f'model.ssod_cfg[{key!r}] = {value!r} cannot be stored in config.json') from e
    return block


@contextmanager
def _export_model_args(model):
    """Hide create-time options (allow_pickle, ssod, ...) from timm's export of model_args."""
    saved = getattr(model, '_model_args', None)
    model._model_args = {k: v for k, v in (saved or {}).items() if k not in _OPTION_KWARGS + _SSOD_KWARGS}
    try:
        yield
    finally:
        if saved is None:
            del model._model_args
        else:
            model._model_args = saved


def _move_into_place(tmp: Path, target: Path):
    try:
        os.rename(tmp, target)  # atomic; succeeds when target is absent (or an empty folder)
        return
    except OSError:
        if not target.is_dir():
            raise
    for name in ONNX_FILES:  # present in both or neither: an old model.onnx would not match the new weights
        if (tmp / name).exists():
            os.replace(tmp / name, target / name)
        elif (target / name).exists():
            os.remove(target / name)
    for name in FOLDER_FILES:  # config.json last: it marks a model folder
        os.replace(tmp / name, target / name)


# ----------------------------------------------------------------------------------------- push
def push_to_hub(model: nn.Module, repo_id: str, *, token: Optional[str] = None, private: Optional[bool] = None,
                revision: Optional[str] = None, create_pr: bool = False,
                commit_message: str = 'Add SSOD model (timm_ssod)', **save_kwargs):
    """``save_pretrained`` into a temporary folder and upload it to the Hub repo ``repo_id``
    (created if missing; ``revision``: a branch, created if missing). The token comes from
    ``token`` or the usual places (``HF_TOKEN``, ``hf auth login``). ``save_kwargs`` go to
    ``save_pretrained`` (``eval_results``, ``model_card``, ``label_names`` ...). The README
    is always the generated card, replacing the repo's. Returns the ``CommitInfo``."""
    from huggingface_hub import HfApi
    from .._version import __version__
    with tempfile.TemporaryDirectory() as tmp:  # written first: a bad model fails before any upload
        folder = save_pretrained(model, Path(tmp) / repo_id.split('/')[-1], repo_id=repo_id, **save_kwargs)
        with _push_errors(repo_id):
            api = HfApi(token=token, library_name='timm_ssod', library_version=__version__)
            repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
            if revision:
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            return api.upload_folder(repo_id=repo_id, folder_path=str(folder), revision=revision,
                                     create_pr=create_pr, commit_message=commit_message)


def check_push_access(token: Optional[str] = None) -> str:
    """Before a long job that ends in a push: the Hub endpoint (``HF_ENDPOINT``) answers and
    accepts the token (``token``, else ``HF_TOKEN`` / ``hf auth login``), through
    huggingface_hub's ``whoami``. Returns the user name; a ``HubError`` saying what is missing."""
    from huggingface_hub import HfApi, constants, get_token
    from huggingface_hub.errors import HfHubHTTPError
    from ._offline import unreachable_reason
    reason = unreachable_reason()
    if reason:
        raise HubError(reason)
    token = token or get_token()
    if not token:
        raise HubError('no Hugging Face token: log in with `hf auth login` or set HF_TOKEN to a token with write '
                       'access')
    try:
        return HfApi(endpoint=constants.ENDPOINT).whoami(token=token).get('name', '?')
    except HfHubHTTPError as e:
        status = getattr(getattr(e, 'response', None), 'status_code', None)
        raise HubError(f'the Hub at {constants.ENDPOINT} does not accept the token (HTTP {status}): log in with '
                       '`hf auth login` or set HF_TOKEN to a valid token') from e
    except Exception as e:  # transport errors (httpx's are not OSErrors)
        raise HubError(f'the Hub at {constants.ENDPOINT} did not answer: {_one_line(e)}') from e


@contextmanager
def _push_errors(repo_id: str):
    """huggingface_hub's errors of an upload (HTTP errors, and httpx's transport errors, which
    are not OSErrors) as one-line ``HubError``s naming the endpoint and the way out."""
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError
    endpoint = constants.ENDPOINT
    local = 'or write the folder locally with save_pretrained (timm-ssod push --save-dir DIR)'
    try:
        yield
    except HfHubHTTPError as e:
        status = getattr(getattr(e, 'response', None), 'status_code', None)
        if status in (401, 403):
            raise HubError(f"the Hub at {endpoint} refused to write to '{repo_id}' (HTTP {status}): log in with "
                           '`hf auth login` or set HF_TOKEN to a token with write access to that user or org.') from e
        raise HubError(f"pushing to Hub repo '{repo_id}' at {endpoint} failed: {_one_line(e)}") from e
    except (ValueError, TypeError):  # invalid repo id or arguments: already clear
        raise
    except Exception as e:  # no token found, transport errors (httpx's are not OSErrors) ...
        raise HubError(f"pushing to Hub repo '{repo_id}' at {endpoint} failed: {_one_line(e)}. Check the network, "
                       f'HF_ENDPOINT and the token (`hf auth login` or HF_TOKEN), {local}.') from e


def _one_line(e: BaseException) -> str:
    text = ' '.join(str(e).split())
    return f'{type(e).__name__}: {text[:300]}'


# ----------------------------------------------------------------------------------------- load
def is_ssod_config(config: Dict) -> bool:
    """True for the config.json of a folder written by ``save_pretrained`` (now or before the split)."""
    return is_legacy_ssod_config(config) or isinstance(config.get('ssod'), dict)


def is_legacy_ssod_config(config: Dict) -> bool:
    """True for an old SSOD folder: ``"architecture": "ssod"``, the OOD head inside model.safetensors."""
    return config.get('architecture') == SSOD_ARCHITECTURE


def create_from_source(model_name: str, ssod: bool = True, pretrained: bool = False, ood_hidden: int = 0,
                       allow_pickle: bool = False, **kwargs) -> nn.Module:
    """``timm_ssod.create_model`` for ``hf-hub:`` / ``local-dir:`` names (see the module doc).

    ``pretrained=False`` keeps timm's meaning: the folder's architecture (config.json's
    ``model_args``, class count, preprocessing, the ``ssod`` block's OOD head) with random
    weights. Nothing that describes the saved weights is put on such a model: no class names
    (timm copies config.json's ``label_names`` even then), no calibration; and a ``UserWarning``
    says the weights were not loaded and that ``pretrained=True`` loads them."""
    model = _create_from_source(model_name, ssod, pretrained, ood_hidden, allow_pickle, **kwargs)
    if not pretrained and not kwargs.get('checkpoint_path'):
        _forget_saved_weights(model, model_name)
    return model


def _forget_saved_weights(model: nn.Module, model_name: str) -> None:
    cfg = getattr(model, 'pretrained_cfg', None)
    if isinstance(cfg, dict):
        for key in ('label_names', 'label_descriptions'):  # they name the saved classifier's outputs
            cfg.pop(key, None)
    warn(f'create_model({model_name!r}) with pretrained=False: the saved weights were NOT loaded (for '
         f'{parse_model_name(model_name)[0]}: names timm then builds the saved architecture with random weights), nor '
         'its class names, OOD head or calibration. Pass pretrained=True to load them.')


def _create_from_source(model_name: str, ssod: bool, pretrained: bool, ood_hidden: int, allow_pickle: bool,
                        **kwargs) -> nn.Module:
    kind, name = parse_model_name(model_name)
    source = Source(kind, name, kwargs.get('cache_dir'))
    config = read_config(source)
    if is_legacy_ssod_config(config):
        if ood_hidden:
            kwargs['ood_hidden'] = ood_hidden
        token = _CALLER_ALLOW_PICKLE.set(bool(allow_pickle))
        try:
            model = timm.create_model(model_name, pretrained=pretrained, ssod=ssod, **kwargs)
        finally:
            _CALLER_ALLOW_PICKLE.reset(token)
        drop = _OPTION_KWARGS + (() if ssod else _SSOD_KWARGS)
        model._model_args = {k: v for k, v in model._model_args.items() if k not in drop}
        return model
    arch = config['architecture']
    if not timm.is_model(arch):
        raise CheckpointError(f"{CONFIG_NAME} of {source} names architecture '{arch}', which timm "
                              f"{timm.__version__} does not know" + ('.' if 'ssod' in config else
                                                                      ", and it has no 'ssod' block."))
    block = _ssod_block(config, source) if 'ssod' in config else None
    if block is not None and block['backbone'] != arch:
        raise CheckpointError(f"{CONFIG_NAME} of {source} names architecture '{arch}' but its 'ssod' block backbone "
                              f"'{block['backbone']}': the folder was edited by hand; re-save the model.")
    if block is not None and ood_hidden and ood_hidden != block['ood_hidden']:
        raise CheckpointError(f"{source}: ood_hidden={ood_hidden!r} was asked but the 'ssod' block says "
                              f"{block['ood_hidden']!r}; the saved weights need the latter.")
    state_dict = read_state_dict(source, allow_pickle) if pretrained else None
    model = _create_timm(model_name, state_dict, source, config.get('num_classes'), **kwargs)
    if not ssod:
        return model
    if block is None:
        _logger.info(f"{source} is a plain timm model (no 'ssod' block in {CONFIG_NAME}): "
                     f'the OOD head is freshly initialised.')
        return attach_ssod(model, ood_hidden=ood_hidden, backbone=arch)
    attach_ssod(model, ood_hidden=block['ood_hidden'], backbone=arch)
    _check_features(model, block, source)
    model.ssod_cfg.update({k: v for k, v in block.items() if k not in _BLOCK_FILE_KEYS})
    if pretrained:
        _load_ssod_file(model, block, source)
    return model


def _check_features(model, block: Dict, source: Source) -> None:
    if model.ssod_cfg['num_features'] != block['num_features']:
        raise CheckpointError(f"{source}: the rebuilt backbone has {model.ssod_cfg['num_features']} features, "
                              f"the 'ssod' block says {block['num_features']}; check the model arguments.")


def _load_ssod_file(model, block: Dict, source: Source) -> None:
    """The OOD head and the calibration, from ``ssod.safetensors`` (``block['weights']``)."""
    filename = block.get('weights', SSOD_WEIGHTS_NAME)
    if not isinstance(filename, str) or filename != Path(filename).name or not filename.endswith('.safetensors'):
        raise CheckpointError(f"the 'ssod' block of {CONFIG_NAME} of {source} names weights {filename!r}: expected a "
                              'file name ending in .safetensors, in the same folder')
    tensors = load_safetensors(source.fetch(filename), str(source))
    _load_ood_head(model, {k: v for k, v in tensors.items() if k.startswith(OOD_HEAD_PREFIX)}, source, filename)
    saved = block.get('calibration')
    if not saved:
        return
    from ..calibration import Calibration
    calibration = Calibration.from_saved(saved, tensors)
    if calibration.num_classes != model.num_classes:
        _logger.warning(f'{source}: the saved calibration was made for {calibration.num_classes} classes and the '
                        f'model now has {model.num_classes}: it is dropped (calibrate again for an OOD decision).')
        return
    model.set_calibration(calibration)


def _load_ood_head(model, tensors: Dict, source: Source, filename: str) -> None:
    _, ood_state = split_ood_head(tensors)
    if not ood_state:
        raise CheckpointError(f'{filename} of {source} has no {OOD_HEAD_PREFIX}* tensors although {CONFIG_NAME} '
                              "has an 'ssod' block.")
    try:
        model.ood_head.load_state_dict(ood_state)
    except RuntimeError as e:
        raise CheckpointError(f'the {OOD_HEAD_PREFIX}* weights of {source} do not fit the OOD head described by '
                              f'{CONFIG_NAME}: {e}') from e


def _create_timm(model_name: str, state_dict, source: Source, ckpt_classes=None, pretrained_cfg=None,
                 **kwargs) -> nn.Module:
    """``timm.create_model`` with weights we read ourselves (safetensors only), handed to
    timm's ``load_pretrained`` as an in-memory state dict."""
    if state_dict is None:
        return timm.create_model(model_name, pretrained=False, pretrained_cfg=pretrained_cfg, **kwargs)
    overlay = dict(kwargs.pop('pretrained_cfg_overlay', None) or {}, source='', state_dict=state_dict)
    model = timm.create_model(model_name, pretrained=True, pretrained_cfg=pretrained_cfg,
                              pretrained_cfg_overlay=overlay, **kwargs)
    model.pretrained_cfg.pop('state_dict', None)
    model.pretrained_cfg['source'] = source.kind
    if ckpt_classes is not None and model.num_classes != ckpt_classes:
        classifier = model.pretrained_cfg.get('classifier')
        _logger.warning(f'{source} has {ckpt_classes} classes and num_classes={model.num_classes} was asked: '
                        f'the classifier ({classifier}) is re-initialised, the other weights are loaded.')
    return model


def _ssod_block(config: Dict, source: Source) -> Dict:
    block = config.get('ssod')
    if block is not None and not isinstance(block, dict):
        raise CheckpointError(f"the 'ssod' entry of {CONFIG_NAME} of {source} is not a JSON object: {block!r}")
    if not isinstance(block, dict):
        raise CheckpointError(f"{CONFIG_NAME} of {source} names architecture '{SSOD_ARCHITECTURE}' but has no "
                              "'ssod' block: it cannot be rebuilt. Re-save the model with save_pretrained.")
    problems = [k for k, t in (('backbone', str), ('num_features', int), ('ood_hidden', int))
                if not isinstance(block.get(k), t)]
    if problems:
        raise CheckpointError(f"the 'ssod' block of {CONFIG_NAME} of {source} lacks a valid "
                              f"{', '.join(problems)}: {block}")
    if not timm.is_model(block['backbone']):
        raise CheckpointError(
            f"{CONFIG_NAME} of {source} names backbone '{block['backbone']}', which timm {timm.__version__} "
            'does not know: upgrade timm, or check the name (timm.list_models()).')
    return block


def _build(source: Source, config: Dict, pretrained_cfg: Dict, pretrained: bool, ssod: bool,
           allow_pickle: bool, kwargs: Dict) -> nn.Module:
    block = _ssod_block(config, source)
    for key in _SSOD_KWARGS:
        given = kwargs.pop(key, None)
        if given is not None and given != block[key]:
            raise CheckpointError(f"{source}: {key}={given!r} was asked (or is in {CONFIG_NAME}'s model_args) but "
                                  f"the 'ssod' block says {block[key]!r}; the saved weights need the latter.")
    if kwargs.get('pretrained_model_args'):
        kwargs['pretrained_model_args'] = {k: v for k, v in kwargs['pretrained_model_args'].items()
                                           if k not in _OPTION_KWARGS + _SSOD_KWARGS}
    backbone, ood_state = None, None
    if pretrained:
        backbone, ood_state = split_ood_head(read_state_dict(source, allow_pickle))
        if ssod and not ood_state:
            raise CheckpointError(f'the weights of {source} have no ood_head.* tensors although {CONFIG_NAME} '
                                  "has an 'ssod' block.")
    cfg = dict(pretrained_cfg or {}, architecture=block['backbone'])
    model = _create_timm(block['backbone'], backbone, source, config.get('num_classes'), pretrained_cfg=cfg,
                         **kwargs)
    if not ssod:
        return model
    attach_ssod(model, ood_hidden=block['ood_hidden'], backbone=block['backbone'])
    _check_features(model, block, source)
    model.ssod_cfg.update({k: v for k, v in block.items() if k not in _BLOCK_FILE_KEYS})
    if ood_state is not None:
        _load_ood_head(model, {OOD_HEAD_PREFIX + k: v for k, v in ood_state.items()}, source, WEIGHTS_NAME)
    return model
