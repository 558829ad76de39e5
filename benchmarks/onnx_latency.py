"""What the exported decision costs in ONNX Runtime: the SSOD model exported with its calibrated
decision (``timm_ssod.export_onnx``: logits, class_probs, id_prob, posterior, score, p_value,
is_ood) against the plain timm model exported the same way (logits, class_probs), same backbone,
weights and input, CPU.

The SSOD model is calibrated with the default decision (``ssod_fused``, components chosen from
ID-only evidence) on generated images, and, as an upper bound, with every component of the
evidence pool (ssod, mahalanobis, energy, knn, vim: the largest graph the decision can be). The
weights are random (latency does not depend on them), so which components the default decision
keeps is recorded, not claimed typical. The KNN bank holds the fit images' features
(``--fit-images``); a real bank of N images adds N x D float32 to each query's matmul.

Each repetition runs every variant once on the same batch, in an order that rotates, so machine
load hits all alike; reported: the median time of each and the median of the per-repetition
ratios to the plain model.

    python benchmarks/onnx_latency.py                       # resnet18, 224 px, batch 1 and 16
    python benchmarks/onnx_latency.py --quick               # a tiny run (smoke test)

Writes benchmarks/onnx_latency.json (or --out).
"""
import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

import timm_ssod
from timm_ssod.data import SyntheticDataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = 1.05  # the decision may add at most 5 %


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--model', default='resnet18')
    p.add_argument('--img-size', type=int, default=224)
    p.add_argument('--num-classes', type=int, default=100)
    p.add_argument('--batch-sizes', type=int, nargs='+', default=[1, 16])
    p.add_argument('--fit-images', type=int, default=600, help='ID images the detectors are fitted on (KNN bank)')
    p.add_argument('--calib-images', type=int, default=200)
    p.add_argument('--repeats', type=int, default=15, help='repetitions per batch size (median)')
    p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--threads', type=int, default=1, help='ONNX Runtime intra-op threads')
    p.add_argument('--quick', action='store_true', help='resnet10t, 64 px, few images and repetitions')
    p.add_argument('--out', default=os.path.join(ROOT, 'benchmarks', 'onnx_latency.json'))
    args = p.parse_args(argv)
    if args.quick:  # its settings, where no flag gave another
        for key, value in dict(model='resnet10t', img_size=64, fit_images=64, calib_images=40, repeats=3).items():
            if getattr(args, key) == p.get_default(key):
                setattr(args, key, value)
    return args


def loader(kind, split, n, size, classes, batch=50):
    """Batches ``(x, y)`` of generated images (rendered at 64 px, resized to ``size``), normalised like timm's
    ImageNet default."""
    ds = SyntheticDataset(kind, split=split, num_images=n, img_size=64, num_classes=classes, seed=0)
    mean, std = torch.tensor([0.485, 0.456, 0.406])[:, None, None], torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    out = []
    for start in range(0, n, batch):
        items = [ds[i] for i in range(start, min(n, start + batch))]
        x = torch.stack([torch.from_numpy(np.asarray(im, dtype=np.float32) / 255).permute(2, 0, 1) for im, _ in items])
        x = torch.nn.functional.interpolate(x, size=(size, size), mode='bilinear', align_corners=False)
        out.append(((x - mean) / std, torch.as_tensor([y for _, y in items])))
    return out


def session(path, threads):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    s = ort.InferenceSession(path, opts, providers=['CPUExecutionProvider'])
    name = s.get_inputs()[0].name
    return lambda x: s.run(None, {name: x})


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    classes = min(args.num_classes, 6) if args.quick else args.num_classes
    size = args.img_size
    cfg = dict(input_size=(3, size, size))
    torch.manual_seed(0)
    model = timm_ssod.create_model(args.model, num_classes=classes, pretrained_cfg_overlay=cfg).eval()
    plain = timm_ssod.create_model(args.model, ssod=False, num_classes=classes, pretrained_cfg_overlay=cfg).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith('ood_head.')})
    data_classes = min(classes, 8)  # the generator's shapes; the classifier keeps num_classes outputs
    fit = loader('id', 'train', args.fit_images, size, data_classes)
    cal = loader('id', 'val', args.calib_images, size, data_classes)
    variants, info = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        info['plain'] = timm_ssod.export_onnx(plain, os.path.join(tmp, 'plain.onnx'))
        variants['plain'] = os.path.join(tmp, 'plain.onnx')
        for name, kwargs in (('ssod_default_decision', {}),
                             ('ssod_all_components', {'select': 'all', 'components': ['ssod', 'mahalanobis', 'energy',
                                                                                      'knn', 'vim']})):
            model.calibrate(cal, fit_loader=fit, detector_kwargs=kwargs)
            path = os.path.join(tmp, f'{name}.onnx')
            info[name] = model.export_onnx(path)
            variants[name] = path
        print(f'fitted, calibrated and exported in {time.time() - t0:.0f} s', file=sys.stderr)
        runs = {name: session(path, args.threads) for name, path in variants.items()}
        names = list(runs)
        results = {}
        for bs in args.batch_sizes:
            x = torch.randn(bs, 3, size, size, generator=torch.Generator().manual_seed(bs)).numpy()
            for _ in range(args.warmup):
                for name in names:
                    runs[name](x)
            times = {name: [] for name in names}
            for rep in range(args.repeats):
                order = names[rep % len(names):] + names[:rep % len(names)]  # rotate who runs first
                for name in order:
                    start = time.perf_counter()
                    runs[name](x)
                    times[name].append(time.perf_counter() - start)
            res = {}
            for name in names:
                ratios = [t / p for t, p in zip(times[name], times['plain'])]
                res[name] = {'median_ms': 1000 * statistics.median(times[name]),
                             'ratio': statistics.median(ratios), 'ms': [round(1000 * t, 3) for t in times[name]]}
                print(f"batch {bs:3d}  {name:24s} {res[name]['median_ms']:9.2f} ms  x{res[name]['ratio']:.3f}",
                      file=sys.stderr)
            results[str(bs)] = res
    out = {
        'command': ' '.join(['python', os.path.relpath(os.path.abspath(__file__), ROOT)] + list(argv or sys.argv[1:])),
        'settings': {k: v for k, v in vars(args).items() if k != 'out'},
        'target_ratio': TARGET,
        'decisions': {name: {'components': (i.get('decision') or {}).get('components'),
                             'size_mb': i['size_mb'], 'knn_bank_mb': i.get('knn_bank_mb')}
                      for name, i in info.items()},
        'results': results,
        'environment': {'onnxruntime': __import__('onnxruntime').__version__, 'torch': torch.__version__,
                        'cpu_count': os.cpu_count(), 'machine': platform.machine(), 'threads': args.threads},
    }
    tmp_out = args.out + '.partial'
    with open(tmp_out, 'w') as f:
        json.dump(out, f, indent=2)
        f.write('\n')
    os.replace(tmp_out, args.out)
    print(f'wrote {args.out}', file=sys.stderr)
    return 0


if __name__ == '__main__':
    sys.exit(main())
