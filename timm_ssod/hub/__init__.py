"""Models by name and on the Hugging Face Hub, in timm's Hub format.

* ``_factory``: ``create_model`` (timm's, with the ``ssod`` switch; ``hf-hub:`` / ``local-dir:``
  names) and the ``ssod`` timm entrypoint of old folders
* ``_hub``: ``save_pretrained``, ``push_to_hub``, loading a saved folder (``create_from_source``)
* ``_files``: the folder's files and their reading (``Source``, safetensors, config.json)
* ``_load``: ``load_model``, the one model loader of every command (a checkpoint, a run folder, a
  saved folder); ``rebuild_model``, the one rebuild of a model from a training checkpoint
* ``_run_args``: what a run's recorded arguments give a rebuilt model (model kwargs, preprocessing)
* ``_runs``: a training run -> a saved / pushed model (``model_from_checkpoint``)
* ``_card``: the model card; ``_offline``: fail fast when the Hub cannot be reached
"""
from ..checkpoints import CheckpointError, resolve_checkpoint
from ._files import CONFIG_NAME, OOD_HEAD_PREFIX, SSOD_WEIGHTS_NAME, WEIGHTS_NAME, HubError, Source, read_config
from ._card import load_eval_results, render_model_card
from ._offline import offline_if_unreachable
from ._hub import (SSOD_ARCHITECTURE, check_push_access, create_from_source, is_legacy_ssod_config, is_ssod_config,
                   push_to_hub, save_pretrained)
from ._factory import PretrainedWeightsError, create_model, ssod, unknown_model_message
from ._weights_file import WeightsFileError
from ._load import ModelLoadError, load_model, rebuild_model
from ._runs import model_from_checkpoint, push_training_run, save_training_run

__all__ = ['CheckpointError', 'CONFIG_NAME', 'OOD_HEAD_PREFIX', 'SSOD_WEIGHTS_NAME', 'WEIGHTS_NAME', 'HubError', 'Source',
           'read_config', 'load_eval_results', 'render_model_card', 'offline_if_unreachable', 'SSOD_ARCHITECTURE',
           'check_push_access', 'create_from_source', 'is_legacy_ssod_config', 'is_ssod_config', 'push_to_hub',
           'save_pretrained',
           'PretrainedWeightsError', 'create_model', 'ssod', 'unknown_model_message', 'model_from_checkpoint',
           'push_training_run', 'rebuild_model', 'resolve_checkpoint', 'save_training_run', 'WeightsFileError',
           'load_model', 'ModelLoadError']
