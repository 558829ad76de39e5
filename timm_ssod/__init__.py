"""timm_ssod: SSOD (Self-supervised Sampling for OOD Detection, ICLR 2024) for any timm backbone."""
__version__ = "0.1.0"
