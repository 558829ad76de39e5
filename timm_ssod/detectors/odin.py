"""ODIN: temperature scaling plus a small input perturbation.

    x~ = x - eps * sign(-grad_x log S_yhat(x; T)),   S(x; T) = softmax(logits(x) / T)
    score(x) = max_k S_k(x~; T)

with yhat the predicted class, T = 1000 and eps = 0.0014 (Liang et al.'s ImageNet/CIFAR
defaults). Liang, Li & Srikant, "Enhancing The Reliability of Out-of-distribution Image
Detection in Neural Networks", ICLR 2018.

The perturbation needs the images, so only ``score(model, x)`` is available. ``eps`` is in
the units of ``x``. The original code divides the gradient sign by the per-channel
normalisation std, so that eps is in [0, 1] pixel units when x is normalised: pass
``std=model.pretrained_cfg['std']`` (or the std of your transform) for that.
"""
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ..core import merge_heads
from .base import Detector, ModelOutputs


class ODIN(Detector):
    """ODIN (see the module docstring). No fit; input gradients only, the model's
    parameters get no ``.grad``. Works when called under ``torch.no_grad``."""
    name = 'odin'
    needs_inputs = True

    def __init__(self, temperature: float = 1000.0, eps: float = 0.0014,
                 std: Optional[Sequence[float]] = None):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f'temperature must be > 0, got {temperature}')
        self.temperature, self.eps = float(temperature), float(eps)
        self.std = None if std is None else tuple(float(s) for s in std)

    @staticmethod
    def _logits(model, x):
        return merge_heads(model.forward_head(model.forward_features(x)))

    def score(self, model, x: torch.Tensor) -> torch.Tensor:
        x = x.detach()
        if self.eps:
            with torch.enable_grad():
                x_req = x.clone().requires_grad_(True)
                logits = self._logits(model, x_req).float() / self.temperature
                # -log S_yhat summed over the batch: each image's gradient is its own
                loss = F.cross_entropy(logits, logits.argmax(dim=-1), reduction='sum')
                (grad,) = torch.autograd.grad(loss, x_req)
            step = grad.sign()
            if self.std is not None:
                std = torch.tensor(self.std, device=x.device, dtype=step.dtype)
                step = step / std.view(1, -1, *([1] * (x.ndim - 2)))
            x = x - self.eps * step.to(x.dtype)
        with torch.no_grad():
            logits = self._logits(model, x).float()
        return (logits / self.temperature).softmax(dim=-1).amax(dim=-1)

    def score_outputs(self, outputs: ModelOutputs) -> torch.Tensor:
        raise NotImplementedError('odin perturbs the input images: use score(model, x), '
                                  'it cannot score precomputed outputs')
