"""Deployment: the model and its calibrated OOD decision as one ONNX file (``_onnx``)."""
from ._onnx import (DECISION_OUTPUTS, DEFAULT_OPSET, EXPORTABLE_DETECTORS, INSTALL_HINT, OUTPUTS, ExportError,
                    ExportModule, export_onnx, large_banks, read_sidecar, sidecar_path)
from ._runtime import OnnxModel

__all__ = ['export_onnx', 'OnnxModel', 'ExportModule', 'ExportError', 'sidecar_path', 'read_sidecar', 'large_banks',
           'OUTPUTS', 'DECISION_OUTPUTS', 'EXPORTABLE_DETECTORS', 'DEFAULT_OPSET', 'INSTALL_HINT']
