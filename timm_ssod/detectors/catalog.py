"""Every detector class but ``ssod_fused``, by name.

``ssod_fused`` builds its components from these names, and ``registry`` adds ``ssod_fused`` to
them. Keeping them apart lets ``ssod_fused`` look its components up without importing the
module that imports it (``registry``), so the package has no import cycle, even at call time.
"""
from typing import Dict, Type

from .ash import ASHB, ASHS
from .base import Detector
from .dice import DICE
from .energy import Energy
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
from .ssod_msp import SSODMSP
from .vim import ViM

__all__ = ['SINGLE_DETECTORS', 'EXPERIMENTAL_DETECTORS', 'register_detector', 'single_detector_class']

# The detectors a user sees (``registry.DETECTORS`` adds ssod_fused): the harness's default set
# is a separate, explicit list (timm_ssod.evaluate.DEFAULT_DETECTORS); the post-hoc baselines of
# the later literature (rmds ... dice) are here, to be asked for by name, not in that list.
SINGLE_DETECTORS: Dict[str, Type[Detector]] = {
    cls.name: cls for cls in (MSP, MaxLogit, Energy, ODIN, KLMatching, Mahalanobis, KNN, ReAct, ViM,
                              SSOD, SSODMSP,
                              RMDS, GEN, FDBD, SCALE, ASHS, ASHB, NNGuide, SHE, DICE)
}

# Scores registered from outside the package (``register_detector``: a plugin's, or the study's
# in benchmarks/lib): created, saved and loaded by name like the others, but outside the user's
# surface (DETECTORS, `--help`, the README) and the harness's default set.
EXPERIMENTAL_DETECTORS: Dict[str, Type[Detector]] = {}


def register_detector(cls: Type[Detector]) -> Type[Detector]:
    """Make a ``Detector`` subclass known by its ``name`` (``create_detector``, ``eval --detectors``,
    a saved calibration) without listing it among ``DETECTORS``; returns ``cls`` (a decorator)."""
    name = cls.name.lower()
    if name in SINGLE_DETECTORS or name == 'ssod_fused':
        raise ValueError(f'detector name {name!r} is taken by a built-in detector')
    EXPERIMENTAL_DETECTORS[name] = cls
    return cls


def single_detector_class(name: str) -> Type[Detector]:
    """The class of a name of ``SINGLE_DETECTORS`` or ``EXPERIMENTAL_DETECTORS``; ValueError if unknown."""
    cls = SINGLE_DETECTORS.get(name.lower()) or EXPERIMENTAL_DETECTORS.get(name.lower())
    if cls is None:
        raise ValueError(f'unknown detector {name!r}; available: {", ".join(SINGLE_DETECTORS)}')
    return cls
