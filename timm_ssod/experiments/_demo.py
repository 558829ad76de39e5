"""The demo's settings: ``DEMO`` (the default run of ``timm-ssod demo``, sized for about 8 min on
2 CPU cores), ``QUICK`` (tiny, for the tests), and the ETA measured before a run
(``estimate_seconds``). The command and what it runs: ``timm_ssod.cli._demo``.
"""
import argparse
import time
from typing import Dict


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
    from ..core import SSODLoss
    from ..hub import create_model
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
