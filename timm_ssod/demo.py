"""``timm-ssod demo``: SSOD vs vanilla fine-tuning on the built-in benchmark, on CPU, in minutes.

    timm-ssod demo                      # ResNet-10-T, natural backgrounds, 64 px resized to 112 (7x7 map), ~8 min on 2 cores
    timm-ssod demo --quick              # tiny model and data, every step in seconds (the tests)
    timm-ssod demo --backbone resnet18 --seed 1 --output output/demo-r18

Runs ``timm_ssod.protocol.run_protocol``: a short vanilla stage from scratch (no pretrained
weights can be downloaded here), then a vanilla and an SSOD fine-tune with the same budget
and seed, then the evaluation harness on the ID test split and all built-in OOD sets
(backgrounds, novel_objects, noise, textures). Prints the paper-style table (FPR95 / AUROC
per OOD set and their average; SSOD scores on the SSOD model, the post-hoc baselines on
both models) and writes it with all results to ``--output``: ``table.md``,
``protocol.json``, ``eval/<model>/results.{json,csv,md}`` and the training runs.
"""
import argparse
import logging
import sys
import time
from typing import Dict, List, Optional

from timm.utils import ParseKwargs, setup_default_logging

from .protocol import run_protocol

_logger = logging.getLogger(__name__)

# the default run, in the regime benchmarks/regime.py found best for SSOD's premise (the sampler
# labels background cells OOD, not ID): natural backgrounds, 64-px images resized up to 112 px, a
# 7x7 map at output stride 16, each cell seeing a part of the image (the paper's CIFAR recipe).
# resnet10t (timm's ResNet-10 with a deep stem) learns far faster than resnet18 on CPU. Sized for
# about 8 minutes on 2 CPU cores (the demo prints an ETA measured on the machine it runs on).
DEMO = dict(backbone='resnet10t', model_kwargs={'output_stride': 16}, img_size=112, render_size=64, background='natural',
            num_images=1500, stage1_epochs=5, finetune_epochs=2, num_val=200, num_test=400, num_ood=400, num_fit=1000,
            batch_size=32, lr=2e-3, finetune_lr=5e-4)
# every step on tiny sizes (tests): test_resnet's 4x4 map at 64 px with output stride 16
QUICK = dict(backbone='test_resnet', model_kwargs={'output_stride': 16}, img_size=64, num_images=96, stage1_epochs=1,
             finetune_epochs=1, num_val=32, num_test=48, num_ood=48, num_fit=64, batch_size=16, lr=2e-3,
             finetune_lr=5e-4, log_interval=2)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument('--quick', action='store_true', help='tiny model and data: checks every step in seconds')
    parser.add_argument('--backbone', '--model', dest='backbone', default=None, metavar='MODEL',
                        help=f"timm model name (default {DEMO['backbone']}; --quick: {QUICK['backbone']})")
    parser.add_argument('--model-kwargs', nargs='*', default=None, action=ParseKwargs, metavar='KEY=VALUE',
                        help='timm.create_model arguments (default output_stride=16; give the flag alone for none)')
    parser.add_argument('--seed', type=int, default=0, help='training seed of both fine-tunes (and of stage 1)')
    parser.add_argument('--output', default='./output/demo', metavar='DIR', help='folder for runs and results')
    parser.add_argument('--workers', type=int, default=0, help='data loader processes (0: render in the main one)')
    return parser


def settings(args: argparse.Namespace) -> Dict:
    """``run_protocol`` keyword arguments of these command-line arguments."""
    kwargs = dict(QUICK if args.quick else DEMO)
    if args.backbone:
        kwargs['backbone'] = args.backbone
    if args.model_kwargs is not None:
        kwargs['model_kwargs'] = dict(args.model_kwargs)
    kwargs.update(seed=args.seed, out_dir=args.output, workers=args.workers)
    return kwargs


def estimate_seconds(kwargs: Dict, steps: int = 2) -> float:
    """Seconds the protocol of ``kwargs`` should take on this machine, from ``steps`` timed SSOD
    training steps (after one untimed): every training image of stage 1 and the two fine-tunes
    costs one step's share, every evaluated image (validation, OOD validation, test, fit) a third
    of it (forward only). CPUs differ 3-4x, so the demo measures rather than quotes a number."""
    import torch
    from . import SSODLoss, create_model
    model = create_model(kwargs['backbone'], ssod=True, num_classes=6, **(kwargs.get('model_kwargs') or {}))
    b, size = kwargs['batch_size'], kwargs['img_size']
    x, y = torch.randn(b, 3, size, size), torch.arange(b) % 6
    opt, loss_fn = torch.optim.SGD(model.parameters(), lr=0.0), SSODLoss()
    for i in range(steps + 1):
        if i == 1:
            start = time.perf_counter()
        loss, _ = loss_fn(model.forward_ssod(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    per_image = (time.perf_counter() - start) / (steps * b)
    n_sets = 4
    trained = kwargs['num_images'] * (kwargs['stage1_epochs'] + 2 * kwargs['finetune_epochs'])
    evaluated = (kwargs['stage1_epochs'] + 2 * kwargs['finetune_epochs']) * kwargs['num_val'] \
        + 2 * kwargs['finetune_epochs'] * n_sets * kwargs['num_val'] \
        + 2 * (kwargs['num_test'] + n_sets * kwargs['num_ood'] + kwargs['num_fit'])
    return per_image * (trained + evaluated / 3)


def run(args: argparse.Namespace) -> int:
    if not logging.root.handlers:
        setup_default_logging()
    kwargs = settings(args)
    start = time.time()
    _logger.info(f"timm-ssod demo{' --quick' if args.quick else ''}: {kwargs['backbone']} "
                 f"{kwargs['model_kwargs'] or ''}, {kwargs.get('background', 'natural')} backgrounds rendered at "
                 f"{kwargs.get('render_size') or kwargs['img_size']} px, trained at {kwargs['img_size']} px; "
                 f"output {args.output}")
    eta = estimate_seconds(kwargs)
    print(f'ETA: about {max(eta / 60, 0.1):.1f} min on this machine (from 2 timed training steps; '
          f'plus a little for data and logging)', flush=True)
    record = run_protocol(**kwargs)
    wall = time.time() - start
    print('\n' + record['table_md'] + '\n')
    s = record['seconds']
    print(f"Wall time {wall:.0f}s (ETA was {eta:.0f}s; stage 1 {s['stage1']:.0f}s, fine-tunes "
          f"{s['finetune_ssod'] + s['finetune_vanilla']:.0f}s, evaluation {s['eval_ssod'] + s['eval_vanilla']:.0f}s). "
          f"Results: {args.output}/table.md, {args.output}/protocol.json, {args.output}/eval/")
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``timm-ssod demo`` (``timm_ssod.cli``)."""
    parser = subparsers.add_parser('demo', help='SSOD vs vanilla fine-tuning on the built-in benchmark (CPU, minutes)',
                                   description=__doc__.split('\n\n')[0])
    add_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = add_arguments(argparse.ArgumentParser(prog='python -m timm_ssod.demo', description=__doc__.split('\n\n')[0]))
    return run(parser.parse_args(argv))


if __name__ == '__main__':
    sys.exit(main())
