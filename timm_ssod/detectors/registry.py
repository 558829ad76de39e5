"""Detectors by name."""
from typing import Dict, Type

from .ash import ASHB, ASHS
from .base import Detector
from .dice import DICE
from .energy import Energy
from .energy_ssod import EnergySSOD
from .fdbd import FDBD
from .gen import GEN
from .klm import KLMatching
from .knn import KNN
from .mahalanobis import Mahalanobis
from .maxlogit import MaxLogit
from .msp import MSP
from .nnguide import NNGuide
from .odin import ODIN
from .react import ReAct
from .rmds import RMDS
from .scale import SCALE
from .she import SHE
from .ssod import SSOD
from .ssod_energy_rank import SSODEnergyRank
from .ssod_msp import SSODMSP
from .ssod_patch_max import SSODPatchMax
from .vim import ViM

# Every detector the harness and `timm-ssod eval --detectors` know by name. The harness's
# default set is a separate, explicit list (timm_ssod.evaluate.DEFAULT_DETECTORS): the post-hoc
# baselines of issue 12 (rmds ... dice) are here, to be asked for by name, not in that list.
DETECTORS: Dict[str, Type[Detector]] = {
    cls.name: cls for cls in (MSP, MaxLogit, Energy, ODIN, KLMatching, Mahalanobis, KNN, ReAct, ViM,
                              SSOD, SSODMSP,
                              RMDS, GEN, FDBD, SCALE, ASHS, ASHB, NNGuide, SHE, DICE)
}

# Scores studied by benchmarks/quality.py (SSOD combined with a baseline, other poolings):
# created by name like the others, but not in DETECTORS (nor in the harness's default set).
# All need an SSOD model.
EXPERIMENTAL_DETECTORS: Dict[str, Type[Detector]] = {
    cls.name: cls for cls in (EnergySSOD, SSODPatchMax, SSODEnergyRank)
}

# SSOD fused with other scores through their ID p-values (needs an SSOD model and a fit)
from .ssod_fused import SSODFused  # noqa: E402  (imports create_detector lazily)
DETECTORS[SSODFused.name] = SSODFused


def detector_class(name: str) -> Type[Detector]:
    """The class of a detector name (``DETECTORS`` or ``EXPERIMENTAL_DETECTORS``); ValueError if unknown."""
    cls = DETECTORS.get(name.lower()) or EXPERIMENTAL_DETECTORS.get(name.lower())
    if cls is None:
        raise ValueError(f'unknown detector {name!r}; available: {", ".join(DETECTORS)} (experimental: '
                         f'{", ".join(EXPERIMENTAL_DETECTORS)})')
    return cls


def create_detector(name: str, **kwargs) -> Detector:
    """``create_detector('knn', k=50)``: a new detector; kwargs go to its constructor."""
    return detector_class(name)(**kwargs)
