"""The study's library, outside the installed package: the benchmarks' shared code.

``python benchmarks/<script>.py`` puts ``benchmarks/`` on ``sys.path``, so a script writes
``from lib import ...``; the tests add it the same way (``tests/conftest.py``). It holds what
the demo's protocol (``timm_ssod.demo``) does not: the stand-ins' training and export
(``standin``), the ID-only evidence measurement (``evidence``), the calibrated decisions'
measurement (``decisions``), the probes (``probes``), and the experimental scores the study
compares with SSOD's (``energy_ssod``, ``ssod_patch_max``, ``ssod_energy_rank``), registered by
name here (``timm_ssod.detectors.register_detector``) so that the harness runs them like the others.
"""
from timm_ssod.demo import *  # noqa: F401,F403  the protocol the benchmarks build on
from timm_ssod.demo import __all__ as _demo_names
from timm_ssod.demo import ssod_only
from timm_ssod.detectors.registry import DETECTORS, EXPERIMENTAL_DETECTORS, register_detector

from .decisions import format_decisions, measure_decisions
from .energy_ssod import EnergySSOD, log_odds
from .evidence import cost_checkpoint, evidence_checkpoint, summarize_evidence
from .probes import decisions_checkpoint, location_probe, read_result, train_stage_once
from .ssod_energy_rank import SSODEnergyRank
from .ssod_patch_max import SSODPatchMax
from .standin import (WEIGHTS_DIR, export_standin, learning_curve, recipe_path, sha256_of, standin_file,
                      train_standin)

for _cls in (EnergySSOD, SSODPatchMax, SSODEnergyRank):
    if _cls.name not in EXPERIMENTAL_DETECTORS:
        register_detector(_cls)
SSOD_ONLY = frozenset(n for n in (*DETECTORS, *EXPERIMENTAL_DETECTORS) if ssod_only(n))  # need the OOD head

__all__ = list(_demo_names) + [
    'format_decisions', 'measure_decisions', 'EnergySSOD', 'log_odds', 'cost_checkpoint', 'evidence_checkpoint',
    'summarize_evidence', 'decisions_checkpoint', 'location_probe', 'read_result', 'train_stage_once', 'SSODEnergyRank',
    'SSODPatchMax', 'WEIGHTS_DIR', 'export_standin', 'learning_curve', 'recipe_path', 'sha256_of', 'standin_file',
    'train_standin', 'SSOD_ONLY']
