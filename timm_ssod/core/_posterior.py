"""The OOD factor (Eq. 15) and the unified (M+1)-way posterior (Eq. 7).

The OOD head emits two logits per location or per image, ordered as the sampler's
labels (Eq. 12): index 0 = OOD, index 1 = ID. These two functions are the only
place where they are turned into probabilities.
"""
import torch
import torch.nn.functional as F

OOD_INDEX = 0
ID_INDEX = 1


def id_probability(ood_logits: torch.Tensor) -> torch.Tensor:
    """Eq. 15: P(x in ID | x) = sigmoid(l_id - l_ood), i.e. the softmax of the ID logit.

    ood_logits: (..., 2) -> (...,), computed in float32 whatever the input dtype.
    """
    ood_logits = ood_logits.float()
    return torch.sigmoid(ood_logits[..., ID_INDEX] - ood_logits[..., OOD_INDEX])


def unified_posterior(class_logits: torch.Tensor, ood_logits: torch.Tensor) -> torch.Tensor:
    """Eq. 7: P(w_i | x) = P(w_i | x in ID) * P(ID | x) for the M known classes, and
    1 - P(ID | x) for the (M+1)-th class, "unknown". Rows sum to 1.

    class_logits: (B, M), ood_logits: (B, 2) -> (B, M + 1), float32.
    """
    return posterior_of(F.softmax(class_logits.float(), dim=-1), id_probability(ood_logits))


def posterior_of(class_probs: torch.Tensor, id_prob: torch.Tensor) -> torch.Tensor:
    """Eq. 7 from the class softmax (B, M) and Eq. 15's P(ID | x) (B,) already computed (what
    ``unified_posterior`` does after computing them; ``predict`` has them)."""
    p_id = id_prob.unsqueeze(-1)
    return torch.cat([class_probs * p_id, 1.0 - p_id], dim=-1)
