"""Post-hoc OOD detectors, one per file, behind one interface (``base.Detector``):
``fit(model, loader)`` / ``fit_outputs(batches)``, then ``score(model, x)`` /
``score_outputs(outputs)``; higher score = more in-distribution."""
from .ash import ASHB, ASHS, ash_b, ash_s
from .base import (Detector, ModelOutputs, NotApplicableError, NotFittedError, apply_classifier,
                   collect_outputs, compute_outputs)
from .dice import DICE
from .energy import Energy, energy_score
from .fdbd import FDBD
from .gen import GEN, generalized_entropy
from .klm import KLMatching
from .knn import KNN
from .mahalanobis import Mahalanobis
from .maxlogit import MaxLogit
from .msp import MSP
from .nnguide import NNGuide
from .odin import ODIN
from .react import ReAct
from .registry import DETECTORS, create_detector, detector_class
from .rmds import RMDS
from .scale import SCALE, scale_features
from .she import SHE
from .ssod import SSOD
from .ssod_msp import SSODMSP
from .ssod_fused import SSODFused
from .vim import ViM, principal_dim

__all__ = ['detector_class', 'Detector', 'ModelOutputs', 'NotFittedError', 'NotApplicableError', 'apply_classifier',
           'collect_outputs', 'compute_outputs', 'DETECTORS', 'create_detector', 'MSP', 'MaxLogit', 'Energy',
           'energy_score', 'ODIN', 'KLMatching', 'Mahalanobis', 'KNN', 'ReAct', 'ViM',
           'principal_dim', 'SSOD', 'SSODMSP', 'SSODFused', 'RMDS', 'GEN', 'generalized_entropy', 'FDBD',
           'SCALE', 'scale_features', 'ASHS', 'ASHB', 'ash_s', 'ash_b', 'NNGuide', 'SHE', 'DICE']
