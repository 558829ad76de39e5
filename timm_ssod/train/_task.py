"""The training forward of ``timm-ssod train`` as timm training tasks (``timm.task``): one call
``task(input, target)`` runs the model and the loss and returns a dict, so the epoch loop has
no SSOD-specific branches.

* ``SSODTask``: the SSOD pass (``model.forward_ssod``) and ``SSODLoss`` (Eq. 12 + 14). Returns
  ``loss``, its terms ``cls_loss`` and ``ood_loss`` (detached), the sampler's location counts
  ``num_id``, ``num_ood``, ``num_ignored``, and ``output`` (the ``SSODOutput``).
* ``ClassifierTask`` (``--no-ssod``): timm's ``ClassificationTask`` (the plain model and its
  criterion). Returns ``loss`` and ``output`` only: the loop reports the terms a task returns,
  so a plain run's log and ``summary.csv`` have no CE / OOD / location columns.

Both take ``set_update(update, updates_per_epoch)`` before each forward: SSOD ramps lambda up
over ``--ood-warmup-epochs`` (``ood_warmup_scale``), the plain task has nothing to ramp.
"""
from typing import Dict, Optional

import torch
import torch.nn as nn
from timm.task import ClassificationTask, TrainingTask

from ..core import SSODLoss, ood_warmup_scale


class SSODTrainForward(nn.Module):
    """``forward(x) = model.forward_ssod(x)``, so DDP and ``torch.compile`` wrap the SSOD pass
    (DDP only syncs gradients of what runs through its ``forward``). The model is kept as
    ``.module`` so timm's ``unwrap_model`` and checkpoint key cleaning see through it."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.module = model

    def forward(self, x):
        return self.module.forward_ssod(x)


class SSODTask(TrainingTask):
    """SSOD training (Eq. 14): ``forward(input, target)`` -> ``{loss, cls_loss, ood_loss,
    num_id, num_ood, num_ignored, output}``.

    Args:
        model: an SSOD model (``timm_ssod.create_model(..., ssod=True)``).
        criterion: the ``SSODLoss``.
        ood_warmup_epochs: lambda ramps linearly from 0 over this many epochs (0: full lambda).
    """

    def __init__(self, model: nn.Module, criterion: SSODLoss, ood_warmup_epochs: float = 0.0,
                 device: Optional[torch.device] = None):
        super().__init__(device=device, verbose=False)
        self.trainable_module = SSODTrainForward(model)
        self.criterion = criterion
        self.ood_warmup_epochs = ood_warmup_epochs
        self.lam_scale = 1.0

    def set_update(self, update: int, updates_per_epoch: int) -> None:
        """The lambda of the coming forward: its warm-up factor after ``update`` optimizer updates."""
        self.lam_scale = ood_warmup_scale(update, round(self.ood_warmup_epochs * updates_per_epoch))

    def prepare_distributed(self, device_ids: Optional[list] = None, **ddp_kwargs) -> 'SSODTask':
        """DDP around the SSOD pass (so gradients of the OOD head are synchronised too)."""
        from torch.nn.parallel import DistributedDataParallel as DDP
        self.trainable_module = DDP(self.trainable_module, device_ids=device_ids, **ddp_kwargs)
        return self

    def compile(self, backend: str = 'inductor', mode: Optional[str] = None, **compile_kwargs) -> nn.Module:
        self.trainable_module = torch.compile(self.trainable_module, backend=backend, mode=mode, **compile_kwargs)
        return self.trainable_module

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> Dict[str, torch.Tensor]:
        output = self.trainable_module(input)
        loss, stats = self.criterion(output, target, self.lam_scale)
        return {'loss': loss, **stats, 'output': output}


class ClassifierTask(ClassificationTask):
    """``--no-ssod``: timm's ``ClassificationTask`` (``{loss, output}``), with the loop's
    ``set_update`` hook, a no-op: a plain classifier has no OOD term to warm up."""

    def __init__(self, model: nn.Module, criterion: nn.Module, device: Optional[torch.device] = None):
        super().__init__(model, criterion, device=device, verbose=False)

    def set_update(self, update: int, updates_per_epoch: int) -> None:
        pass
