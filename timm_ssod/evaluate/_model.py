"""The model options of ``timm-ssod eval`` and ``timm-ssod visualize``; the loading itself is
``timm_ssod.hub.load_model`` (``load_eval_model`` is its name here)."""
from typing import Any, Dict, Optional, Tuple

import torch.nn as nn
from timm.utils import ParseKwargs

from ..checkpoints import read_checkpoint
from ..hub import ModelLoadError as EvalModelError
from ..hub import load_model as load_eval_model

__all__ = ['load_eval_model', 'read_checkpoint', 'EvalModelError', 'add_model_arguments', 'load_model_of_args']


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
