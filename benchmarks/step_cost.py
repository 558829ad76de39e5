"""What one training step costs per image, per backbone and input size, on this machine's CPU: the
figure that sizes a stand-in's training (``weights/<backbone>.yaml``) and a study's fine-tunes
before they are started.

    python benchmarks/step_cost.py                         # the Table-6 families at a 7x7 map
    python benchmarks/step_cost.py --models resnet18:112:16 densenet121:224 --threads 1 --out cost.json

A model is ``NAME:SIZE[:OUTPUT_STRIDE]``. Per model and thread count: the median over ``--steps``
timed steps (after ``--warmup``) of one SSOD training step (forward of the backbone and the OOD
head, Eq. 14's loss, backward, AdamW) on a batch of ``--batch-size`` random images, divided by
the batch size; and the feature map it gives. ``estimate`` then turns it into the cost of a
stand-in recipe (``epochs x images`` steps, validation a third of a step per image) and of one
quality-run seed (two arms x ``finetune_epochs x num_images``), in minutes of one core. Measure
on idle cores: the timings are of whatever else the machine is doing.
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time

import timm
import torch

import timm_ssod
from timm_ssod._util import atomic_write_text
from timm_ssod.core import SSODLoss

HERE = os.path.dirname(os.path.abspath(__file__))
# the four Table-6 families of the quality run, each at the input size that gives a 7x7 map from 64-px renders
MODELS = ('resnet18:112:16', 'mobilenetv3_small_075:224', 'densenet121:224', 'regnety_008:112:16')
STANDIN = dict(epochs=16, images=6000, val_images=600)  # weights/resnet18.yaml's sizes
QUALITY = dict(finetune_epochs=3, num_images=4000)       # benchmarks/quality.py's fine-tunes, per arm


def parse_model(text):
    parts = text.split(':')
    if len(parts) not in (2, 3) or not all(p.isdigit() for p in parts[1:]):
        raise argparse.ArgumentTypeError(f'a model is NAME:SIZE[:OUTPUT_STRIDE], got {text!r}')
    return parts[0], int(parts[1]), int(parts[2]) if len(parts) == 3 else None


def step_ms(name, size, stride, threads, batch_size, steps, warmup):
    """Median ms per image of one SSOD training step, and the feature map's grid."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    kwargs = {'output_stride': stride} if stride else {}
    model = timm_ssod.create_model(name, ssod=True, num_classes=6, pretrained=False, **kwargs).train()
    loss_fn = SSODLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, y = torch.randn(batch_size, 3, size, size), torch.randint(0, 6, (batch_size,))
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        loss, _ = loss_fn(model.forward_ssod(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    with torch.no_grad():
        grid = list(model.eval().forward_features(x[:1]).shape[-2:])
    return 1000 * statistics.median(times) / batch_size, grid


def estimate(ms):
    """Minutes of one core: the stand-in recipe and one quality-run seed (both arms)."""
    standin = STANDIN['epochs'] * (STANDIN['images'] + STANDIN['val_images'] / 3) * ms / 60000
    seed = 2 * QUALITY['finetune_epochs'] * QUALITY['num_images'] * ms / 60000
    return {'standin_min': round(standin, 1), 'quality_seed_finetunes_min': round(seed, 1)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--models', nargs='+', type=parse_model, default=[parse_model(m) for m in MODELS],
                   metavar='NAME:SIZE[:STRIDE]')
    p.add_argument('--threads', nargs='+', type=int, default=[1])
    p.add_argument('--batch-size', type=int, default=32)
    p.add_argument('--steps', type=int, default=5)
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--out', default=os.path.join(HERE, 'step_cost.json'))
    args = p.parse_args(argv)
    rows, before = {}, torch.get_num_threads()
    for name, size, stride in args.models:
        for threads in args.threads:
            try:
                ms, grid = step_ms(name, size, stride, threads, args.batch_size, args.steps, args.warmup)
            finally:
                torch.set_num_threads(before)
            key = f'{name}@{size}' + (f'/os{stride}' if stride else '') + f'/{threads}t'
            rows[key] = {'model': name, 'input_size': size, 'output_stride': stride, 'threads': threads,
                         'grid': grid, 'ms_per_image': round(ms, 2), **estimate(ms)}
            print(f"{key}: {ms:.1f} ms per image, map {grid[0]}x{grid[1]}; stand-in recipe "
                  f"{rows[key]['standin_min']} min, a quality seed's fine-tunes {rows[key]['quality_seed_finetunes_min']} "
                  'min of one core', flush=True)
    out = {'command': 'python benchmarks/step_cost.py ' + ' '.join(sys.argv[1:] if argv is None else argv),
           'environment': {'python': platform.python_version(), 'torch': torch.__version__,
                           'timm': timm.__version__, 'cpu_count': os.cpu_count(), 'load_average': os.getloadavg()},
           'batch_size': args.batch_size, 'steps': args.steps, 'standin': STANDIN, 'quality': QUALITY,
           'models': rows}
    atomic_write_text(args.out, json.dumps(out, indent=1) + '\n')
    return out


if __name__ == '__main__':
    main()
