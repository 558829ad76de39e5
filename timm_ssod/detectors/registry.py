"""Detectors by name."""
from typing import Dict, Type

from .base import Detector
from .energy import Energy
from .klm import KLMatching
from .knn import KNN
from .mahalanobis import Mahalanobis
from .maxlogit import MaxLogit
from .msp import MSP
from .odin import ODIN
from .react import ReAct
from .ssod import SSOD
from .ssod_msp import SSODMSP
from .vim import ViM

DETECTORS: Dict[str, Type[Detector]] = {
    cls.name: cls for cls in (MSP, MaxLogit, Energy, ODIN, KLMatching, Mahalanobis, KNN, ReAct, ViM,
                              SSOD, SSODMSP)
}


def create_detector(name: str, **kwargs) -> Detector:
    """``create_detector('knn', k=50)``: a new detector; kwargs go to its constructor."""
    try:
        cls = DETECTORS[name.lower()]
    except KeyError:
        raise ValueError(f'unknown detector {name!r}; available: {", ".join(DETECTORS)}') from None
    return cls(**kwargs)
