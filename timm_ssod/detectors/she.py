"""SHE: simplified Hopfield energy against one stored pattern per class.

    S_c = mean of the penultimate features f of the ID fit images of class c that the model
          classifies correctly (label c, prediction c)
    score(x) = f(x) . S_yhat,   yhat = argmax_k logits(x)_k

Zhang et al., "Out-of-Distribution Detection based on In-Distribution Data Patterns
Memorization with Modern Hopfield Energy", ICLR 2023. Checked against the authors' code
(zjs975584714/SHE_ood_detection: ``generate_stored_pattern.py`` averages the correctly
classified training features per class; ``Utils/score_calculation.py`` takes logsumexp of
f . S over the stored patterns of the predicted class, which with one pattern per class is
f . S_yhat), OpenOOD (``she_postprocessor.py``, metric ``inner_product``) and pytorch-ood
(which returns the negation, its scores being higher for OOD). Hyper-parameter free.
Published direction: the paper reports SHE above the state-of-the-art post-hoc scores it
compares with (its code runs MSP, Energy and ReAct beside it) over nine OOD sets (abstract).

Streaming fit: per-class running sums and counts (float64), of the correctly classified
images and of all labelled images. A class with no correctly classified fit image (possible
with a weak model or a small fit set) falls back to the mean of all its fit images, with a
warning; a class with no fit image at all has no pattern, and the fit refuses with a
ValueError naming it (an image predicted as that class could not be scored). Needs class
labels in the fit data.
"""

import torch

from .base import Detector, ModelOutputs, labelled_features
from .._util import warn


class SHE(Detector):
    """SHE (see the module docstring)."""
    name = 'she'
    needs_fit = True

    def _reset(self):
        self._sums = None

    def _update(self, outputs: ModelOutputs, targets, pass_index):
        f, y = labelled_features(self.name, outputs, targets)
        m = outputs.logits.shape[-1]
        if self._sums is None:
            self._sums = f.new_zeros(2, m, f.shape[1])  # [correct, all]
            self._counts = f.new_zeros(2, m)
        correct = outputs.logits.argmax(dim=-1).to(y.device) == y
        self._sums[0].index_add_(0, y[correct], f[correct])
        self._counts[0] += torch.bincount(y[correct], minlength=m).to(self._counts)
        self._sums[1].index_add_(0, y, f)
        self._counts[1] += torch.bincount(y, minlength=m).to(self._counts)

    def _finish(self, pass_index):
        counts, sums = self._counts, self._sums
        absent = (counts[1] == 0).nonzero().flatten().tolist()
        if absent:
            raise ValueError(f'she: no fit image of class(es) {absent[:10]}: SHE stores one pattern per class '
                             'and needs fit data of every class')
        fallback = (counts[0] == 0).nonzero().flatten().tolist()
        if fallback:
            warn(f'she: no correctly classified fit image of class(es) {fallback[:10]}; their pattern '
                 'is the mean of all their fit images')
        use_all = counts[0] == 0
        self.patterns = torch.where(use_all[:, None], sums[1] / counts[1, :, None],
                                    sums[0] / counts[0].clamp_min(1)[:, None]).float()
        del self._sums, self._counts

    def _score(self, outputs: ModelOutputs):
        pred = outputs.logits.argmax(dim=-1)
        patterns = self.patterns.to(outputs.features.device)
        return (outputs.features.float() * patterns[pred]).sum(dim=-1)
