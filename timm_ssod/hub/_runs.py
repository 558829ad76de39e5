"""From a training run to the Hub: the SSOD model of a training checkpoint (``load_model``),
saved to a folder (``save_training_run``) or pushed (``push_training_run``), with the run's
preprocessing in config.json and its training data named in the model card."""
import logging
from typing import Any, Dict, Optional, Tuple

import torch.nn as nn

from ..checkpoints import CheckpointError, resolve_checkpoint
from ._hub import push_to_hub, save_pretrained
from ._load import load_model
from ._run_args import run_save_kwargs

_logger = logging.getLogger(__name__)


def model_from_checkpoint(path, use_ema: bool = True, model_kwargs: Optional[Dict] = None
                          ) -> Tuple[nn.Module, Dict[str, Any]]:
    """Rebuild the SSOD model of a training checkpoint (``load_model``). Returns ``(model, args)``,
    ``args`` the run's arguments as a dict. ``use_ema``: the EMA weights when the run kept them.
    ``model_kwargs`` override the rebuilt ``create_model`` arguments."""
    model, info = load_model(checkpoint=str(path), use_ema=use_ema, model_kwargs=model_kwargs)
    if not info['ssod']:
        why = 'was trained with --no-ssod' if info['train_args'].get('ssod') is False else 'has no OOD head'
        raise CheckpointError(f"{path} {why} (no OOD head): push it with timm's timm.models.push_to_hf_hub instead")
    return model, info['train_args']


def _prepare_run(run, use_ema, model_kwargs, model_card, eval_json):
    checkpoint = resolve_checkpoint(run)
    model, args = model_from_checkpoint(checkpoint, use_ema=use_ema, model_kwargs=model_kwargs)
    save_kwargs = run_save_kwargs(args)
    save_kwargs.update(eval_results=eval_json, model_card=dict(save_kwargs['model_card'], **(model_card or {})))
    return checkpoint, model, save_kwargs


def save_training_run(output_dir, save_directory, *, repo_id: Optional[str] = None, eval_json=None,
                      use_ema: bool = True, model_kwargs: Optional[Dict] = None, model_card: Optional[Dict] = None,
                      onnx: bool = False):
    """``push_training_run`` into a local folder (no upload). Returns the folder."""
    _, model, save_kwargs = _prepare_run(output_dir, use_ema, model_kwargs, model_card, eval_json)
    return save_pretrained(model, save_directory, repo_id=repo_id, onnx=onnx, **save_kwargs)


def push_training_run(output_dir, repo_id: str, *, eval_json=None, use_ema: bool = True,
                      model_kwargs: Optional[Dict] = None, model_card: Optional[Dict] = None,
                      private: Optional[bool] = None, revision: Optional[str] = None, token: Optional[str] = None,
                      commit_message: Optional[str] = None, onnx: bool = False):
    """Push a finished training run (its folder, or one checkpoint file) to the Hub repo
    ``repo_id``: model.safetensors, config.json with the run's preprocessing and SSOD
    settings, and the model card (with the evaluation table of ``eval_json``, if given).
    What ``timm-ssod train --push-to-hub`` and ``timm-ssod push`` call. Returns the
    ``CommitInfo``. ``onnx``: include ``model.onnx`` (``save_pretrained``)."""
    checkpoint, model, save_kwargs = _prepare_run(output_dir, use_ema, model_kwargs, model_card, eval_json)
    _logger.info(f'Pushing {checkpoint} to the Hub repo {repo_id}')
    return push_to_hub(model, repo_id, token=token, private=private, revision=revision,
                       commit_message=commit_message or f'Add SSOD model from {checkpoint.name}', onnx=onnx,
                       **save_kwargs)
