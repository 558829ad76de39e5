"""timm_ssod: SSOD (Self-supervised Sampling for OOD Detection, ICLR 2024) for any timm backbone.

The public names; the layers are listed in ``timm_ssod/_layers.py`` (``timm_ssod.core`` is the paper).
"""
from ._version import __version__
from .conformal import CalibrationError, NotCalibratedError
from .core import (BALANCE_SCHEMES, SSODLoss, SSODOutput, SSODPrediction, UnsupportedBackboneError, attach_ssod,
                   id_probability, is_ssod_model, ood_warmup_scale, sample_patches, target_confidence,
                   unified_posterior)
from .export import export_onnx
from .hub import CheckpointError, HubError, create_model, push_to_hub, push_training_run, save_pretrained
