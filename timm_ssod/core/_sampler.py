"""Eq. 12: the self-supervised patch sampler.

A location whose confidence on the image's labelled class is at least gamma is an ID
sample (label 1); one below 1 - gamma is an OOD sample (label 0, mostly background);
everything between is ignored (label -1). The labels are targets: no gradient.
"""
import torch
import torch.nn.functional as F

from ._posterior import ID_INDEX, OOD_INDEX

IGNORED = -1
GAMMA = 0.95  # the paper's threshold (Sec. 4.1): the one default of every gamma in the package


def check_gamma(gamma: float) -> float:
    """gamma must lie in the open interval (0.5, 1): otherwise the ID and OOD bands overlap
    (gamma <= 0.5) or one of them is empty (gamma >= 1)."""
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0.5 < gamma < 1.0:
        raise ValueError(f'gamma must be in the open interval (0.5, 1), got {gamma!r}')
    return float(gamma)


def model_gamma(model) -> float:
    """The gamma an SSOD model was trained with (``model.ssod_cfg['gamma']``), else ``GAMMA``."""
    return float((getattr(model, 'ssod_cfg', None) or {}).get('gamma') or GAMMA)


def target_confidence(patch_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Softmax over the M classes at every location, kept on the labelled class.

    patch_logits (B, L, M), target (B,) int -> (B, L) float32, detached.
    """
    if target.ndim != 1 or target.dtype.is_floating_point:
        raise ValueError(
            'SSOD needs one integer class label per image (shape (B,)); got a target of shape '
            f'{tuple(target.shape)} and dtype {target.dtype}. Soft / mixup targets are not supported.')
    probs = F.softmax(patch_logits.detach().float(), dim=-1)
    index = target.view(-1, 1, 1).expand(-1, probs.shape[1], 1)
    return probs.gather(-1, index).squeeze(-1)


def sample_patches(confidence: torch.Tensor, gamma: float = GAMMA) -> torch.Tensor:
    """Eq. 12 on a confidence map of any shape: 1 (ID) where c >= gamma, 0 (OOD) where
    c < 1 - gamma, -1 (ignored) otherwise. Comparisons are made in the map's dtype."""
    return label_patches(confidence, check_gamma(gamma))


@torch.no_grad()
def label_patches(confidence: torch.Tensor, gamma: float) -> torch.Tensor:
    """``sample_patches`` for a gamma already checked (``SSODLoss`` checks it once, not per batch)."""
    labels = torch.full_like(confidence, IGNORED, dtype=torch.long)
    labels[confidence < 1.0 - gamma] = OOD_INDEX
    labels[confidence >= gamma] = ID_INDEX
    return labels
