"""``create_model``: timm's ``create_model`` with an ``ssod`` switch."""
import timm
import torch.nn as nn

from .model import attach_ssod
from .hub import create_from_source  # hf-hub: / local-dir: names (and registers timm's 'ssod' entrypoint)


def create_model(model_name: str, ssod: bool = True, pretrained: bool = False,
                 ood_hidden: int = 0, allow_pickle: bool = False, **kwargs) -> nn.Module:
    """Create a timm model by name and, with ``ssod=True`` (default), add the SSOD OOD head.

    Every other keyword argument goes to ``timm.create_model`` unchanged (``num_classes``,
    ``img_size``, ``drop_rate``, ``pretrained_cfg_overlay``, ``checkpoint_path`` ...).
    ``pretrained=True`` loads timm's weights for the backbone; the OOD head starts fresh.
    With ``ssod=False`` this is exactly ``timm.create_model``.

    ``hf-hub:org/name[@revision]`` and ``local-dir:/path`` load a folder written by
    ``save_pretrained`` (weights and OOD head) or a plain timm one (fresh OOD head); see
    ``timm_ssod.hub``. Their weights are read from ``model.safetensors`` only, unless
    ``allow_pickle=True`` allows ``pytorch_model.bin`` (read with ``weights_only=True``).
    """
    if timm.models.parse_model_name(model_name)[0]:  # a saved folder: timm_ssod.hub
        return create_from_source(model_name, ssod=ssod, pretrained=pretrained, ood_hidden=ood_hidden,
                                  allow_pickle=allow_pickle, **kwargs)
    try:
        model = timm.create_model(model_name, pretrained=pretrained, **kwargs)
    except OSError as e:  # huggingface_hub's LocalEntryNotFoundError is a FileNotFoundError
        if not pretrained:
            raise
        raise OSError(
            f'could not fetch the pretrained weights of {model_name!r} ({e.__class__.__name__}: '
            f'{str(e).splitlines()[0] if str(e) else ""}). Offline, pass a local file instead: '
            f"create_model({model_name!r}, pretrained=True, pretrained_cfg_overlay=dict(file='/path/to/"
            "model.safetensors')), or pretrained=False with checkpoint_path='/path/to/checkpoint'.") from e
    if not ssod:
        return model
    return attach_ssod(model, ood_hidden=ood_hidden, backbone=model_name)
