"""The demo's settings: ``DEMO`` (the default run of ``timm-ssod demo``: fine-tunes of the shipped
stand-in weights, sized for under 5 min on 2 CPU cores), ``DEMO_SCRATCH`` (its fallback without
them), ``QUICK`` (tiny, for the tests), and the ETA measured before a run
(``estimate_seconds``). The command and what it runs: ``timm_ssod.cli._demo``.
"""
import argparse
import time
from typing import Dict

from ..data import OOD_SETS
from ..evaluate import DEFAULT_DETECTORS


# The default run: the paper's protocol, fine-tuning a converged classifier. resnet18 starts from the
# repository's stand-in for pretrained weights (weights/resnet18.safetensors: a plain classifier of
# this benchmark trained to convergence at this input size, loaded through timm's offline
# --pretrained-path), then a vanilla and an SSOD fine-tune with the same budget: natural
# backgrounds, 64-px renders resized up to 112 px, a 7x7 map at output stride 16 (each cell sees a
# part of the image: the paper's CIFAR recipe), AdamW at the paper's lr 1e-4 (A.4). Every default
# detector but ODIN, whose input perturbation costs a backward pass per scored image (about 2 more
# minutes; `timm-ssod eval` and the benchmarks run it). The demo prints an ETA measured on the
# machine it runs on.
DEMO_DETECTORS = tuple(d for d in DEFAULT_DETECTORS if d != 'odin')
DEMO = dict(backbone='resnet18', model_kwargs={'output_stride': 16}, img_size=112, render_size=64, background='natural',
            num_images=1000, finetune_epochs=2, num_val=150, num_test=300, num_ood=300, num_fit=600, batch_size=32,
            finetune_lr=1e-4, detectors=DEMO_DETECTORS)
# Without the shipped weights (a pip install of the package alone), or for a backbone that has none:
# the stand-in is trained here, briefly, from scratch (stage 1: 6 epochs on 1000 images at the 64-px
# render size), as the study did before weights were shipped. resnet10t learns far faster than
# resnet18 on CPU. Its classifier is weak (about 55% ID accuracy on natural backgrounds).
DEMO_SCRATCH = dict(DEMO, backbone='resnet10t', stage1_img_size=64, stage1_epochs=6, lr=2e-3, finetune_lr=5e-4)
# every step on tiny sizes (tests): test_resnet's 4x4 map at 64 px with output stride 16, stage 1 at 32 px
QUICK = dict(backbone='test_resnet', model_kwargs={'output_stride': 16}, img_size=64, stage1_img_size=32, num_images=96,
             stage1_epochs=1, finetune_epochs=1, num_val=32, num_test=48, num_ood=48, num_fit=64, batch_size=16, lr=2e-3,
             finetune_lr=5e-4, log_interval=2)


def settings(args: argparse.Namespace) -> Dict:
    """``run_protocol`` keyword arguments of these command-line arguments: ``DEMO`` from the shipped
    stand-in of the backbone (``weights/<backbone>.safetensors``) when it is there, else
    ``DEMO_SCRATCH`` with a stage 1 (``'why_scratch'`` then says why, for the demo to print)."""
    from ._weights import standin_file
    if args.quick:
        kwargs = dict(QUICK)
    else:
        backbone = args.backbone or DEMO['backbone']
        weights = standin_file(backbone)
        if weights:  # the fine-tunes run at the input size (and with the model kwargs) the weights were trained at
            kwargs = dict(DEMO, backbone=backbone, pretrained_path=_shown(weights), **_trained_at(weights))
        else:
            kwargs = dict(DEMO_SCRATCH, backbone=args.backbone or DEMO_SCRATCH['backbone'])
            kwargs['why_scratch'] = (f'no stand-in weights for {backbone} (weights/{backbone}.safetensors is not in '
                                     'the working folder: a pip install ships no weights; a repository checkout has '
                                     f'them for {", ".join(SHIPPED)}, found when run from its root)')
    if args.backbone and args.quick:
        kwargs['backbone'] = args.backbone
    if args.model_kwargs is not None:
        kwargs['model_kwargs'] = dict(args.model_kwargs)
    kwargs.update(seed=args.seed, out_dir=args.output, workers=args.workers)
    return kwargs


SHIPPED = ('resnet18', 'mobilenetv3_small_075')


def _trained_at(weights: str) -> Dict:
    """``img_size``, ``render_size`` and ``model_kwargs`` of a stand-in, from the JSON beside it."""
    import json
    import os
    with open(os.path.splitext(weights)[0] + '.json') as f:
        info = json.load(f)
    return dict(img_size=info['input_size'], render_size=info['render_size'], model_kwargs=info['model_kwargs'])


def _shown(path: str) -> str:
    """``path`` relative to the working folder when it is inside it (what the results record)."""
    import os
    rel = os.path.relpath(path)
    return path if rel.startswith('..') else rel


def _seconds_per_image(backbone: str, model_kwargs: Dict, size: int, batch_size: int, ssod: bool, steps: int) -> float:
    """Seconds of one training step per image (after one untimed step), SSOD or cross-entropy."""
    import torch
    import torch.nn.functional as F
    from ..core import SSODLoss
    from ..hub import create_model
    model = create_model(backbone, ssod=ssod, num_classes=6, **(model_kwargs or {}))
    x, y = torch.randn(batch_size, 3, size, size), torch.arange(batch_size) % 6
    opt, loss_fn = torch.optim.SGD(model.parameters(), lr=0.0), SSODLoss()
    for i in range(steps + 1):
        if i == 1:
            start = time.perf_counter()
        loss = loss_fn(model.forward_ssod(x), y)[0] if ssod else F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (time.perf_counter() - start) / (steps * batch_size)


def estimate_seconds(kwargs: Dict, steps: int = 2) -> float:
    """Seconds the protocol of ``kwargs`` should take on this machine, from ``steps`` timed
    training steps at each input size (after one untimed) and a few timed renders: every
    training image costs one step's share, every evaluated image (validation, OOD validation,
    test, fit) a third of it (forward only), ODIN's input perturbation one more step per scored
    image, and every distinct image one render. CPUs differ 3-4x, so the demo measures rather
    than quotes a number."""
    backbone, model_kwargs, b = kwargs['backbone'], kwargs.get('model_kwargs') or {}, kwargs['batch_size']
    size = kwargs['img_size']
    stage1_size = kwargs.get('stage1_img_size') or size
    per_image = _seconds_per_image(backbone, model_kwargs, size, b, True, steps)
    n_sets, n_val, ft_epochs = len(kwargs.get('ood_sets', OOD_SETS)), kwargs['num_val'], kwargs['finetune_epochs']
    stage1, stage1_per_image = 0.0, 0.0
    if not kwargs.get('pretrained_path') and not kwargs.get('stage1_checkpoint'):
        stage1_per_image = per_image if stage1_size == size else \
            _seconds_per_image(backbone, model_kwargs, stage1_size, b, False, steps)
        stage1 = kwargs['stage1_epochs'] * (kwargs['num_images'] + n_val / 3)
    finetunes = 2 * ft_epochs * (kwargs['num_images'] + (1 + n_sets) * n_val / 3)
    scored = kwargs['num_test'] + n_sets * kwargs['num_ood']
    odin = 'odin' in kwargs.get('detectors', DEFAULT_DETECTORS)
    evaluation = 2 * ((scored + kwargs['num_fit']) / 3 + odin * scored)
    # every image is rendered once per process (the stages share renders; fit images are training ones)
    rendered = kwargs['num_images'] + (1 + n_sets) * n_val + scored
    return stage1_per_image * stage1 + per_image * (finetunes + evaluation) + rendered * _seconds_per_render(kwargs)


def _seconds_per_render(kwargs: Dict, n: int = 8) -> float:
    """Seconds to generate one ID image of the run's benchmark (a fresh dataset, so nothing is cached)."""
    from ..data import SyntheticDataset
    ds = SyntheticDataset('id', 'train', num_images=n, img_size=kwargs.get('render_size') or kwargs['img_size'],
                          seed=987654, background=kwargs.get('background', 'natural'))
    start = time.perf_counter()
    for i in range(n):
        ds.render(i)
    return (time.perf_counter() - start) / n
