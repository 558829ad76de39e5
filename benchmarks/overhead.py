"""What SSOD costs: training-step time, inference time and memory of the SSOD model relative to
the plain timm model, same backbone, weights, batch and input, in one process.

Each repetition times one plain step and one SSOD step back to back (the order alternates),
so machine load hits both alike; the reported ratio is the median of the per-repetition
ratios. Training step = forward, loss, backward and an SGD step (plain: cross-entropy;
SSOD: ``forward_ssod`` + ``SSODLoss``). Inference = plain ``model(x).softmax(-1)`` (the class
probabilities, which ``predict`` also returns) vs ``model.predict(x)``, both in eval mode.

Memory: on CUDA, peak allocated memory (``torch.cuda.max_memory_allocated``); on CPU, where
PyTorch keeps no allocator statistics, the bytes of tensors saved for backward in one
training step (the activation memory that dominates training), counted with
``torch.autograd.graph.saved_tensors_hooks``.

    python benchmarks/overhead.py                 # CPU, all backbones, reduced inputs
    python benchmarks/overhead.py --quick         # one tiny backbone, few repetitions
    python benchmarks/overhead.py --device cuda --amp bfloat16 --channels-last --batch-size 128 --img-size 224

Writes benchmarks/overhead.json (or --out) and prints one line per step.
"""
import argparse
import contextlib
import copy
import json
import os
import platform
import statistics
import sys
import time

import timm
import torch
import torch.nn.functional as F

import timm_ssod
from lib import command_line

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the command's paths: relative to it

# name -> timm kwargs for reduced CPU inputs (the GPU run uses each model's own defaults)
BACKBONES = {
    'resnet18': {},
    'resnet50': {},
    'densenet121': {},
    'regnety_008': {},
    'mobilenetv3_large_100': {},
    'convnext_atto': {},
    'vit_tiny_patch16_224': {'img_size': None},
    'swin_tiny_patch4_window7_224': {'img_size': None},
}
QUICK = {'resnet18': {}}
TARGETS = {'train_time': 1.05, 'inference_time': 1.02}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--models', nargs='*', default=None, help='subset of backbones (default: all)')
    p.add_argument('--device', default='cpu')
    p.add_argument('--batch-size', type=int, default=16)
    p.add_argument('--img-size', type=int, default=128, help='input size (CPU default reduced from 224)')
    p.add_argument('--num-classes', type=int, default=100)
    p.add_argument('--reps', type=int, default=7, help='timed A/B repetitions per measurement')
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--amp', default=None, choices=[None, 'bfloat16', 'float16'])
    p.add_argument('--channels-last', action='store_true')
    p.add_argument('--quick', action='store_true', help='one tiny model, few repetitions (for tests)')
    p.add_argument('--out', default=os.path.join(os.path.dirname(os.path.abspath(__file__)), 'overhead.json'))
    return p.parse_args(argv)


def build_pair(name, kwargs, args):
    kwargs = dict(kwargs)
    if 'img_size' in kwargs:
        kwargs['img_size'] = args.img_size
    if name.startswith('swin') and args.img_size % 32 == 0 and args.img_size < 224:
        kwargs['window_size'] = args.img_size // 32
    torch.manual_seed(0)
    plain = timm.create_model(name, num_classes=args.num_classes, **kwargs)
    ssod = timm_ssod.attach_ssod(copy.deepcopy(plain), backbone=name)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    return [m.to(args.device, memory_format=memory_format) for m in (plain, ssod)]


def _sync(device):
    if torch.device(device).type == 'cuda':
        torch.cuda.synchronize()


def _autocast(args):
    if args.amp is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(args.device).type, dtype=getattr(torch, args.amp))


def make_steps(plain, ssod, x, y, args):
    """Closures for one training step and one inference call of each model."""
    criterion = timm_ssod.SSODLoss()
    opts = {id(m): torch.optim.SGD(m.parameters(), lr=1e-4) for m in (plain, ssod)}

    def train_plain():
        with _autocast(args):
            loss = F.cross_entropy(plain(x), y)
        loss.backward()
        opts[id(plain)].step()
        opts[id(plain)].zero_grad(set_to_none=True)

    def train_ssod():
        with _autocast(args):
            loss, _ = criterion(ssod.forward_ssod(x), y)
        loss.backward()
        opts[id(ssod)].step()
        opts[id(ssod)].zero_grad(set_to_none=True)

    @torch.no_grad()
    def infer_plain():  # what a timm user runs for class probabilities; predict gives them too (and more)
        with _autocast(args):
            return plain(x).softmax(-1)

    @torch.no_grad()
    def infer_ssod():
        with _autocast(args):
            return ssod.predict(x)

    return (train_plain, train_ssod), (infer_plain, infer_ssod)


def timed(fn, device):
    _sync(device)
    t = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t


def ab_ratio(pair, args):
    """Median over repetitions of t(ssod) / t(plain), plus the median times in ms."""
    for _ in range(args.warmup):
        pair[0](), pair[1]()
    ratios, times = [], ([], [])
    for rep in range(args.reps):
        order = (0, 1) if rep % 2 == 0 else (1, 0)
        t = {i: timed(pair[i], args.device) for i in order}
        ratios.append(t[1] / t[0])
        times[0].append(t[0]), times[1].append(t[1])
    return statistics.median(ratios), 1e3 * statistics.median(times[0]), 1e3 * statistics.median(times[1])


def saved_tensor_bytes(step):
    """Bytes of distinct tensors autograd saves for backward during ``step``."""
    seen = {}

    def pack(t):
        try:
            key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        except (RuntimeError, NotImplementedError):
            key = (id(t), t.numel() * t.element_size())
        seen[key] = key[1]
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(seen.values())


def peak_memory(step, device):
    if torch.device(device).type != 'cuda':
        return None
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    step()
    _sync(device)
    return torch.cuda.max_memory_allocated(device)


def measure(name, kwargs, args):
    plain, ssod = build_pair(name, kwargs, args)
    plain.train(), ssod.train()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, generator=g).to(args.device)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, args.num_classes, (args.batch_size,), generator=g).to(args.device)
    train, infer = make_steps(plain, ssod, x, y, args)
    with torch.no_grad():
        grid = ssod.forward_ssod(x[:1]).grid
    row = {'grid': list(grid)}
    row['train_time_ratio'], row['train_ms_plain'], row['train_ms_ssod'] = ab_ratio(train, args)
    if torch.device(args.device).type == 'cuda':
        mem = [peak_memory(s, args.device) for s in train]
        row['train_memory'] = 'cuda peak allocated bytes'
    else:
        mem = [saved_tensor_bytes(s) for s in train]
        row['train_memory'] = 'bytes saved for backward'
    row['train_mem_plain'], row['train_mem_ssod'] = mem
    row['train_mem_ratio'] = mem[1] / mem[0]
    plain.eval(), ssod.eval()
    row['inference_time_ratio'], row['inference_ms_plain'], row['inference_ms_ssod'] = ab_ratio(infer, args)
    if torch.device(args.device).type == 'cuda':
        mem = [peak_memory(s, args.device) for s in infer]
        row['inference_mem_ratio'] = mem[1] / mem[0]
    row['meets_targets'] = (row['train_time_ratio'] <= TARGETS['train_time']
                            and row['inference_time_ratio'] <= TARGETS['inference_time'])
    return row


def environment(args):
    env = {'python': platform.python_version(), 'torch': torch.__version__, 'timm': timm.__version__,
           'device': args.device, 'threads': torch.get_num_threads(), 'cpu_count': os.cpu_count(),
           'load_average_at_start': os.getloadavg()}  # timings need an idle machine: other jobs skew ratios
    if torch.device(args.device).type == 'cuda':
        env['gpu'] = torch.cuda.get_device_name(args.device)
    return env


def main(argv=None):
    args = parse_args(argv)
    if args.quick:
        args.reps, args.warmup, args.batch_size, args.img_size = 3, 1, 4, 64
    models = QUICK if args.quick else BACKBONES
    if args.models:
        unknown = set(args.models) - set(BACKBONES)
        if unknown:
            sys.exit(f'unknown backbone(s) {sorted(unknown)}; choose from {sorted(BACKBONES)}')
        models = {m: BACKBONES[m] for m in args.models}
    result = {'command': command_line('python benchmarks/overhead.py', sys.argv[1:] if argv is None else argv, ROOT),
              'environment': environment(args), 'targets': TARGETS,
              'settings': {k: getattr(args, k) for k in ('batch_size', 'img_size', 'num_classes', 'reps',
                                                         'amp', 'channels_last')},
              'models': {}}
    start = time.time()
    for i, (name, kwargs) in enumerate(models.items()):
        t = time.time()
        row = measure(name, kwargs, args)
        result['models'][name] = row
        print(f'[{i + 1}/{len(models)}] {name}: train x{row["train_time_ratio"]:.3f} '
              f'(mem x{row["train_mem_ratio"]:.3f}), inference x{row["inference_time_ratio"]:.3f} '
              f'grid {row["grid"]} ({time.time() - t:.0f}s)', flush=True)
    result['seconds'] = round(time.time() - start, 1)
    tmp = args.out + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(result, f, indent=2)
    os.replace(tmp, args.out)
    print(f'wrote {args.out}')
    return result


if __name__ == '__main__':
    main()
