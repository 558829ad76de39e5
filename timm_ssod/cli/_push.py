"""``timm-ssod push``: upload a training run (or one checkpoint) to the Hugging Face Hub.

    timm-ssod push output/train/run-1 org/ssod-resnet50 --eval-json eval.json [--private] [--revision B] [--onnx]

The token comes from the usual places (``HF_TOKEN``, ``hf auth login``), never from the
command line. ``--save-dir DIR`` writes the same folder locally instead of uploading.
"""
import argparse
import json
from typing import List, Optional

from timm.utils import ParseKwargs

from ._common import add_command, parse_and_run, report_errors


class _ModelKwargs(ParseKwargs):
    """``K=V ...`` as every other command takes them (timm's ``ParseKwargs``: values read as
    Python literals, else strings); one JSON object, the old form, is still read."""

    def __call__(self, parser, namespace, values, option_string=None):
        if len(values) == 1 and values[0].lstrip().startswith('{'):
            try:
                kwargs = json.loads(values[0])
            except json.JSONDecodeError as e:
                parser.error(f'{option_string}: {values[0]!r} is not a JSON object ({e}); give K=V pairs')
            if not isinstance(kwargs, dict):
                parser.error(f'{option_string}: give K=V pairs')
            setattr(namespace, self.dest, kwargs)
            return
        bad = [v for v in values if v and '=' not in v]
        if bad:
            parser.error(f'{option_string}: {bad[0]!r} is not K=V (e.g. --model-kwargs output_stride=16)')
        super().__call__(parser, namespace, values, option_string)


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument('run', metavar='RUN', help='training output folder (its model_best.pth.tar, else '
                                             'last.pth.tar) or a checkpoint file')
    p.add_argument('repo_id', metavar='ORG/NAME', help='Hub repo id (created if missing)')
    p.add_argument('--eval-json', metavar='FILE', default=None,
                   help='evaluation results shown in the model card: {"id_accuracy": f, "results": '
                        '{detector: {ood_set: {"fpr95": f, "auroc": f}}}} (fractions)')
    p.add_argument('--private', action='store_true', default=None, help='create the repo as private')
    p.add_argument('--revision', metavar='BRANCH', default=None, help='branch to push to (created if missing)')
    p.add_argument('--no-ema', dest='use_ema', action='store_false',
                   help='push the raw weights even if the checkpoint holds EMA weights')
    p.add_argument('--model-kwargs', nargs='*', default={}, action=_ModelKwargs, metavar='K=V',
                   help='create_model arguments overriding those read from the checkpoint, e.g. output_stride=16')
    p.add_argument('--onnx', action='store_true',
                   help='also upload model.onnx and model.onnx.json (timm-ssod export: the model and its calibrated '
                        'OOD decision for ONNX Runtime); the model card shows how to run it')
    p.add_argument('--save-dir', metavar='DIR', default=None,
                   help='write the folder (model.safetensors, config.json, README.md) here instead of pushing')
    return p


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``push`` on the ``timm-ssod`` subparsers (``timm_ssod.cli``)."""
    return add_command(subparsers, 'push', 'push a training run to the Hugging Face Hub', __doc__, add_arguments, run)


def _push(args: argparse.Namespace) -> int:
    from ..hub import push_training_run, save_training_run
    if args.save_dir:
        folder = save_training_run(args.run, args.save_dir, repo_id=args.repo_id, eval_json=args.eval_json,
                                   use_ema=args.use_ema, model_kwargs=args.model_kwargs, onnx=args.onnx)
        print(f'Saved {args.run} to {folder}')
        return 0
    info = push_training_run(args.run, args.repo_id, eval_json=args.eval_json, use_ema=args.use_ema,
                             model_kwargs=args.model_kwargs, private=args.private, revision=args.revision,
                             onnx=args.onnx)
    print(f'Pushed to {getattr(info, "commit_url", None) or args.repo_id}')
    return 0


def run(args: argparse.Namespace, prog: str = 'timm-ssod push') -> int:
    """Push (or save) a training run; 0 on success, 1 with a message on bad input."""
    return report_errors(_push, args, prog, (OSError, ValueError))  # HubError is an OSError, CheckpointError a ValueError


def main(argv: Optional[List[str]] = None, prog: str = 'timm-ssod push') -> int:
    return parse_and_run(argv, prog, __doc__, add_arguments, run)
