"""An exported file run through ONNX Runtime with ``model.predict``'s interface, for
``timm-ssod predict model.onnx IMAGES...`` (the same table and files as the PyTorch path)."""
from types import SimpleNamespace
from typing import Dict, Optional

import torch

from ..conformal import NotCalibratedError, check_calibration_size, min_calibration_size
from ._onnx import INSTALL_HINT, ExportError, read_sidecar

PREPROCESS_KEYS = ('input_size', 'interpolation', 'mean', 'std', 'crop_pct', 'crop_mode')


class SavedDecision:
    """The decision recorded beside an exported file: ``alpha``, ``n``, ``detector.name`` and
    ``check_alpha`` as a ``Calibration`` has them (the p-values are the file's output)."""

    def __init__(self, block: Dict):
        self.alpha, self.n = float(block['alpha']), int(block['n'])
        self.detector = SimpleNamespace(name=block['detector'])

    def check_alpha(self, alpha: float) -> float:
        check_calibration_size(self.n, float(alpha))
        return float(alpha)


class OnnxModel:
    """``predict(x, alpha)`` of an exported file in ONNX Runtime (CPU unless ``providers``)."""

    def __init__(self, path: str, providers=None):
        try:
            import onnxruntime
        except ImportError as e:
            raise ExportError(f'running an ONNX file needs onnxruntime: {INSTALL_HINT}') from e
        self.info = read_sidecar(path)
        self.session = onnxruntime.InferenceSession(str(path), providers=providers or ['CPUExecutionProvider'])
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.num_classes = int(self.info.get('num_classes') or 0)
        self.pretrained_cfg = {'label_names': self.info.get('label_names'), 'num_classes': self.num_classes}
        decision = self.info.get('decision')
        self.ssod_calibration = SavedDecision(decision) if decision else None

    @property
    def data_config(self) -> Dict:
        """timm's ``create_transform`` arguments, from the JSON beside the file."""
        return {k: (tuple(self.info[k]) if isinstance(self.info[k], list) else self.info[k])
                for k in PREPROCESS_KEYS if k in self.info}

    def to(self, device):
        return self

    def predict(self, x: torch.Tensor, alpha: Optional[float] = None) -> SimpleNamespace:
        """The outputs of ``model.predict`` (torch tensors); ``alpha`` re-decides from ``p_value``."""
        cal = self.ssod_calibration
        if cal is None and alpha is not None:
            raise NotCalibratedError(
                f'an OOD decision at alpha={alpha:g} needs an ID calibration and this exported model has none '
                f'(at least {min_calibration_size(alpha)} held-out ID images for this alpha): calibrate the model '
                '(`timm-ssod calibrate`) and export it again.')
        out = dict(zip(self.output_names, self.session.run(None, {self.input_name: x.cpu().numpy()})))
        out = {k: torch.from_numpy(v) for k, v in out.items()}
        p_value, is_ood = out.get('p_value'), out.get('is_ood')
        if alpha is not None:
            is_ood = p_value <= cal.check_alpha(alpha)
        return SimpleNamespace(logits=out['logits'], class_probs=out['class_probs'], id_prob=out.get('id_prob'),
                               posterior=out.get('posterior'), score=out.get('score'), p_value=p_value, is_ood=is_ood)
