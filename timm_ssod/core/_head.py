"""Eq. 13: f_ood, the OOD head: two logits [OOD, ID] per feature vector, applied to every
location of the feature map (and, for Eq. 15, to the pooled features)."""
import torch
import torch.nn as nn


class OODHead(nn.Module):
    """f_ood: two logits [OOD, ID] from one C-dim feature vector. A single linear layer by
    default (a 1x1 conv over the map); ``hidden > 0`` inserts one hidden layer with GELU."""

    def __init__(self, in_features: int, hidden: int = 0):
        super().__init__()
        if hidden:
            self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.GELU(), nn.Linear(hidden, 2))
        else:
            self.net = nn.Linear(in_features, 2)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @staticmethod
    def hidden_of(state_dict, prefix: str = 'ood_head.') -> int:
        """The ``hidden`` width of the head whose weights ``state_dict`` holds under ``prefix``
        (0: a single linear layer, or no head)."""
        w = state_dict.get(prefix + 'net.0.weight')  # the hidden layer's weight (a single layer is net.weight)
        return int(w.shape[0]) if w is not None and w.ndim == 2 else 0
