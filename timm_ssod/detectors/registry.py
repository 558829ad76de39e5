"""Detectors by name: ``catalog``'s single detectors plus ``ssod_fused``, which combines them."""
from typing import Dict, Type

from .base import Detector
from .catalog import EXPERIMENTAL_DETECTORS, SINGLE_DETECTORS, register_detector, single_detector_class
from .ssod_fused import SSODFused

__all__ = ['DETECTORS', 'EXPERIMENTAL_DETECTORS', 'create_detector', 'detector_class', 'register_detector']

# Every detector the harness and `timm-ssod eval --detectors` know by name (the scores registered
# with register_detector, EXPERIMENTAL_DETECTORS, are created by name too, but not listed here).
DETECTORS: Dict[str, Type[Detector]] = {**SINGLE_DETECTORS, SSODFused.name: SSODFused}


def detector_class(name: str) -> Type[Detector]:
    """The class of a detector name (``DETECTORS`` or ``EXPERIMENTAL_DETECTORS``); ValueError if unknown."""
    if name.lower() == SSODFused.name:
        return SSODFused
    try:
        return single_detector_class(name)
    except ValueError:
        raise ValueError(f'unknown detector {name!r}; available: {", ".join(DETECTORS)}') from None


def create_detector(name: str, **kwargs) -> Detector:
    """``create_detector('knn', k=50)``: a new detector; kwargs go to its constructor."""
    return detector_class(name)(**kwargs)
