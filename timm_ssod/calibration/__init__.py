"""ID calibration: any detector's score -> a conformal p-value and an OOD decision at a share
alpha of ID images rejected (``_calibration``; the statistics are ``timm_ssod.conformal``)."""
from ..conformal import CalibrationError, NotCalibratedError
from ._calibration import (DEFAULT_ALPHA, DEFAULT_DETECTOR, Calibration, calibrate, calibrate_scores, create_decision,
                           decide, id_rejection_rate)

__all__ = ['CalibrationError', 'NotCalibratedError', 'DEFAULT_ALPHA', 'DEFAULT_DETECTOR', 'Calibration', 'calibrate',
           'calibrate_scores', 'decide', 'id_rejection_rate']
