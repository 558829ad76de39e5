"""``timm-ssod demo``: SSOD vs vanilla fine-tuning on the built-in benchmark, on CPU, in minutes.

    timm-ssod demo                      # ResNet-18 from the shipped stand-in weights, 64 px resized to 112 (7x7 map)
    timm-ssod demo --quick              # tiny model and data, every step in seconds (the tests)
    timm-ssod demo --backbone mobilenetv3_small_075 --seed 1 --output output/demo-mnv3   # 224 px, as its weights

Runs ``timm_ssod.demo.run_protocol`` as the paper does: from a converged classifier (the
repository's stand-in for pretrained weights, ``weights/<backbone>.safetensors``, loaded with
``--pretrained-path``), a vanilla and an SSOD fine-tune with the same budget and seed, then the
evaluation harness on the ID test split and all built-in OOD sets (backgrounds, novel_objects,
noise, textures). Without the weights file (a pip install ships none) it says so and trains a
weak stand-in from scratch first (stage 1). Prints the paper-style table (FPR95 / AUROC per OOD
set and their average; SSOD scores on the SSOD model, the post-hoc baselines on both models) and
writes it with all results to ``--output``: ``table.md``, ``protocol.json``,
``eval/<model>/results.{json,csv,md}`` and the training runs.
"""
import argparse
import logging
import time
from typing import List, Optional

from timm.utils import ParseKwargs, setup_default_logging

from ..demo import DEMO, QUICK, estimate_seconds, run_protocol, settings
from ._common import add_command, parse_and_run, report_errors

_logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument('--quick', action='store_true', help='tiny model and data: checks every step in seconds')
    parser.add_argument('--backbone', '--model', dest='backbone', default=None, metavar='MODEL',
                        help=f"timm model name (default {DEMO['backbone']}; --quick: {QUICK['backbone']})")
    parser.add_argument('--model-kwargs', nargs='*', default=None, action=ParseKwargs, metavar='KEY=VALUE',
                        help="timm.create_model arguments (default: those the backbone's stand-in weights were "
                             "trained with, resnet18's output_stride=16; give the flag alone for none)")
    parser.add_argument('--seed', type=int, default=0, help='training seed of both fine-tunes (and of a stage 1)')
    parser.add_argument('--output', default='./output/demo', metavar='DIR', help='folder for runs and results')
    parser.add_argument('--workers', type=int, default=0, help='data loader processes (0: render in the main one)')
    return parser


def run(args: argparse.Namespace, prog: str = 'timm-ssod demo') -> int:
    """Run the demo of parsed arguments (errors are not caught: a failing step shows its traceback)."""
    return report_errors(_demo, args, prog, errors=())


def _demo(args: argparse.Namespace) -> int:
    if not logging.root.handlers:
        setup_default_logging()
    kwargs = settings(args)
    why_scratch = kwargs.pop('why_scratch', None)
    if why_scratch:
        print(f'{why_scratch}. Training a stand-in from scratch instead ({kwargs["stage1_epochs"]} epochs of '
              f'{kwargs["backbone"]}, stage 1): a weak classifier, so read the table as SSOD on a weak backbone.',
              flush=True)
    start = time.time()
    _logger.info(f"timm-ssod demo{' --quick' if args.quick else ''}: {kwargs['backbone']} "
                 f"{kwargs['model_kwargs'] or ''}, {kwargs.get('background', 'natural')} backgrounds rendered at "
                 f"{kwargs.get('render_size') or kwargs['img_size']} px, trained at {kwargs['img_size']} px, "
                 f"from {kwargs.get('pretrained_path') or 'a stage 1 trained here'}; "
                 f"output {args.output}")
    eta = estimate_seconds(kwargs)
    print(f'ETA: about {max(eta / 60, 0.1):.1f} min on this machine (from timed training steps at each input '
          f'size; plus a little for rendering the data and logging)', flush=True)
    record = run_protocol(**kwargs)
    wall = time.time() - start
    print('\n' + record['table_md'] + '\n')
    s = record['seconds']
    print(f"Wall time {wall:.0f}s (ETA was {eta:.0f}s; stage 1 {s['stage1']:.0f}s, fine-tunes "
          f"{s['finetune_ssod'] + s['finetune_vanilla']:.0f}s, evaluation {s['eval_ssod'] + s['eval_vanilla']:.0f}s). "
          f"Results: {args.output}/table.md, {args.output}/protocol.json, {args.output}/eval/")
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``demo`` on the ``timm-ssod`` subparsers (``timm_ssod.cli``)."""
    return add_command(subparsers, 'demo', 'SSOD vs vanilla fine-tuning on the built-in benchmark (CPU, minutes)',
                       __doc__.split('\n\n')[0], add_arguments, run)


def main(argv: Optional[List[str]] = None, prog: str = 'timm-ssod demo') -> int:
    return parse_and_run(argv, prog, __doc__.split('\n\n')[0], add_arguments, run)
