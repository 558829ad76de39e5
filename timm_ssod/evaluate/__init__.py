"""The evaluation harness: SSOD and the post-hoc baselines on the same model, images and metrics.

* ``_evaluate``: ``evaluate``, ``compute_scores``, ``summarize``, ``DEFAULT_DETECTORS``, ``AVERAGE`` ...
* ``_report``: ``format_table``, ``write_results``, ``plot_histograms`` (Fig. 6)
* ``_data``: the ID and OOD datasets and loaders of ``timm-ssod eval``
* ``_model``: the model of ``timm-ssod eval``: a name, a saved folder or a checkpoint
"""
from ._evaluate import (AVERAGE, DEFAULT_DETECTORS, SMALL_SET, SSOD_DETECTORS, DeployedDetector, EvalScores,
                        NonFiniteOutputError, compute_scores, evaluate, resolve_detectors, subsample_indices, summarize,
                        with_progress)
from ._report import (CSV_FIELDS, METRIC_KEYS, best_baseline, format_table, plot_histograms, result_rows,
                      write_results)
from ._data import (EvalDataError, build_id_dataset, build_ood_datasets, cut, default_ood_specs, make_loader,
                    same_folder)
from ._model import EvalModelError, add_model_arguments, load_eval_model, load_model_of_args, read_checkpoint

__all__ = ['AVERAGE', 'DEFAULT_DETECTORS', 'SMALL_SET', 'SSOD_DETECTORS', 'DeployedDetector', 'EvalScores',
           'NonFiniteOutputError', 'compute_scores', 'evaluate', 'resolve_detectors', 'subsample_indices', 'summarize',
           'CSV_FIELDS',
           'METRIC_KEYS', 'best_baseline', 'format_table', 'plot_histograms', 'result_rows', 'write_results',
           'EvalDataError', 'build_id_dataset', 'build_ood_datasets', 'cut', 'default_ood_specs', 'make_loader',
           'same_folder', 'EvalModelError', 'add_model_arguments', 'load_eval_model', 'load_model_of_args',
           'read_checkpoint', 'with_progress']
