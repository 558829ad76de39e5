"""``timm-ssod train``: timm's ``train.py`` with the SSOD objective.

* ``_main``: ``main(argv) -> results`` and ``run(argv, prog) -> exit code`` (the command)
* ``_args``: the arguments (timm's flags, the SSOD flags, ``--config`` YAML)
* ``_data``: the ID datasets and the ``--ood-val`` sets
* ``_task``: the training forward as timm tasks: ``SSODTask`` (SSOD pass + ``SSODLoss``) and
  ``ClassifierTask`` (``--no-ssod``: timm's ``ClassificationTask``)
* ``_loop``: ``train_one_epoch`` (of a task) and ``validate`` (with OOD validation)
"""
from ._args import build_parser, parse_args
from ._data import TrainConfigError, build_datasets, build_ood_sets
from ._loop import NonFiniteLossError, train_one_epoch, validate
from ._task import ClassifierTask, SSODTask, SSODTrainForward
from ._main import USER_ERRORS, main, run

__all__ = ['build_parser', 'parse_args', 'TrainConfigError', 'build_datasets', 'build_ood_sets', 'NonFiniteLossError',
           'SSODTrainForward', 'SSODTask', 'ClassifierTask', 'train_one_epoch', 'validate', 'USER_ERRORS', 'main',
           'run']
