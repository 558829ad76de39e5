"""timm_ssod: SSOD (Self-supervised Sampling for OOD Detection, ICLR 2024) for any timm backbone."""
from .conformal import CalibrationError, NotCalibratedError
from .factory import create_model
from .hub import CheckpointError, HubError, push_to_hub, push_training_run, save_pretrained
from .layout import UnsupportedBackboneError
from .loss import BALANCE_SCHEMES, SSODLoss, ood_warmup_scale
from .model import SSODOutput, SSODPrediction, attach_ssod, is_ssod_model
from .posterior import id_probability, unified_posterior
from .sampler import sample_patches, target_confidence

__version__ = "0.1.0"
