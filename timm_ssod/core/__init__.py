"""The paper's core: SSOD (Self-supervised Sampling for OOD Detection, ICLR 2024) on a timm model.

An index of the paper. Imports torch, timm and ``timm_ssod._util`` only (the layer below).

==========================  ==============  ================================================
Equation / table            module          names
==========================  ==============  ================================================
Eq. 11  classifier logits   ``_layout``     ``merge_heads`` (distilled models: mean of heads)
feature map -> locations    ``_layout``     ``to_locations``, ``pool_locations``,
                                            ``head_per_location``
Eq. 12  patch sampler       ``_sampler``    ``target_confidence``, ``sample_patches``, ``IGNORED``,
                                            ``GAMMA`` (0.95), ``model_gamma``
Eq. 13  OOD head f_ood      ``_head``       ``OODHead``
Eq. 14  SSOD objective      ``_loss``       ``SSODLoss``, ``ood_term``, ``BALANCE_SCHEMES``,
                                            ``LAMBDA``, ``BALANCE``, ``OOD_WEIGHT``
Table 5 balance schemes     ``_loss``       ``'lwb'``, ``'lw'``, ``'dr'``; ``ood_warmup_scale``
Eq. 15  P(ID | x)           ``_posterior``  ``id_probability`` (``ID_INDEX``, ``OOD_INDEX``)
Eq. 7   (M+1)-way posterior ``_posterior``  ``unified_posterior``
the model                   ``_model``      ``attach_ssod``, ``SSODMixin`` (``forward_ssod``,
                                            ``forward_ood_head``, ``predict``), ``SSODOutput``,
                                            ``SSODPrediction``, ``is_ssod_model``
==========================  ==============  ================================================
"""
from ._head import OODHead
from ._layout import UnsupportedBackboneError, head_per_location, merge_heads, pool_locations, to_locations
from ._loss import BALANCE, BALANCE_SCHEMES, LAMBDA, OOD_WEIGHT, SSODLoss, ood_term, ood_warmup_scale
from ._model import (DEFAULT_ALPHA, DEFAULT_DETECTOR, SSODMixin, SSODOutput, SSODPrediction, attach_ssod, is_ssod_model,
                     label_names, set_label_names)
from ._posterior import ID_INDEX, OOD_INDEX, id_probability, unified_posterior
from ._sampler import GAMMA, IGNORED, check_gamma, model_gamma, sample_patches, target_confidence

__all__ = ['OODHead', 'UnsupportedBackboneError', 'head_per_location', 'merge_heads', 'pool_locations', 'to_locations',
           'BALANCE_SCHEMES', 'SSODLoss', 'ood_term', 'ood_warmup_scale', 'SSODMixin', 'SSODOutput', 'SSODPrediction',
           'attach_ssod', 'is_ssod_model', 'label_names', 'set_label_names', 'ID_INDEX', 'OOD_INDEX', 'id_probability',
           'unified_posterior', 'IGNORED', 'check_gamma', 'sample_patches', 'target_confidence', 'GAMMA', 'LAMBDA',
           'BALANCE', 'OOD_WEIGHT', 'model_gamma', 'DEFAULT_ALPHA', 'DEFAULT_DETECTOR']
