"""``timm-ssod push``: upload a training run (or one checkpoint) to the Hugging Face Hub.

    timm-ssod push output/train/run-1 org/ssod-resnet50 --eval-json eval.json [--private] [--revision B]

The token comes from the usual places (``HF_TOKEN``, ``hf auth login``), never from the
command line. ``--save-dir DIR`` writes the same folder locally instead of uploading.
"""
import argparse
import json
import sys


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``push`` subcommand on an ``argparse`` subparsers object."""
    p = subparsers.add_parser('push', help='push a training run to the Hugging Face Hub',
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    p.add_argument('--model-kwargs', metavar='JSON', type=json.loads, default=None,
                   help='create_model arguments overriding those read from the checkpoint, as JSON')
    p.add_argument('--save-dir', metavar='DIR', default=None,
                   help='write the folder (model.safetensors, config.json, README.md) here instead of pushing')
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from .hub_push import push_training_run, save_training_run
    try:
        if args.save_dir:
            folder = save_training_run(args.run, args.save_dir, repo_id=args.repo_id, eval_json=args.eval_json,
                                       use_ema=args.use_ema, model_kwargs=args.model_kwargs)
            print(f'Saved {args.run} to {folder}')
            return 0
        info = push_training_run(args.run, args.repo_id, eval_json=args.eval_json, use_ema=args.use_ema,
                                 model_kwargs=args.model_kwargs, private=args.private, revision=args.revision)
    except (OSError, ValueError) as e:  # HubError is an OSError, CheckpointError a ValueError
        print(f'timm-ssod push: error: {e}', file=sys.stderr)
        return 1
    print(f'Pushed to {getattr(info, "commit_url", None) or args.repo_id}')
    return 0
