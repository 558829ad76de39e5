"""ssod_fused (Fisher vs Stouffer, with and without the p-value tail, several component sets)
against single detectors, and the ID rejection rate against alpha, on the built-in benchmark.

    timm-ssod demo --output output/demo          # the SSOD checkpoint
    OMP_NUM_THREADS=1 python examples/measure_ssod_fused.py output/demo/finetune_ssod/model_best.pth.tar \\
        docs/measurements/ssod_fused.json 0,1,2
    python examples/measure_ssod_fused.py --summary docs/measurements/ssod_fused.json

Per data seed (the synthetic images' seed; the checkpoint is the same): detectors fitted on
2000 ID training images, calibrated on 1000 ID validation images, tested on 600 ID test
images and 600 images of each OOD set (``lib.measure_decisions``,
the protocol's evaluation transforms), rendered and resized as the checkpoint was trained
(its run's ``--img-size`` and ``--dataset-kwargs img_size=... background=...``). It produced the numbers in
``timm_ssod/detectors/ssod_fused.py`` and docs/study/evidence.md; ``--summary`` prints them (mean ± std
over the seeds). About 4 minutes on 2 CPU cores for three seeds, after the demo.
"""
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the recorded checkpoint: relative to it


def measure(ckpt: str, out: str, seeds):
    import torch
    sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))  # the study's library, benchmarks/lib
    from timm_ssod._util import atomic_write_text
    from timm_ssod.data import create_dataset
    from lib import format_decisions, measure_decisions, relative_paths, trained_benchmark
    from timm_ssod.detectors import SSODFused
    from timm_ssod.evaluate import load_eval_model
    from timm_ssod.data import OOD_SETS
    from timm_ssod.demo._protocol import _loader

    torch.set_num_threads(1)
    model, info = load_eval_model(checkpoint=ckpt)
    try:
        trained = trained_benchmark(info['train_args'], ckpt)
    except ValueError as e:
        sys.exit(str(e))
    img, render, background = trained['img_size'], trained['render_size'], trained['background']
    classes = model.num_classes
    print(f'{ckpt}: images rendered at {render} px on {background} backgrounds, resized to {img} px', flush=True)

    def data(name, split, n, seed):
        ds = create_dataset(name, split=split, img_size=render, num_images=n, num_classes=classes, seed=seed,
                            background=background)
        return _loader(model, ds, img, 128, 0)

    def detectors():
        fused = []
        for comps in (('ssod', 'mahalanobis', 'energy'), ('ssod', 'mahalanobis'), ('ssod', 'vim', 'energy'),
                      ('ssod', 'knn', 'energy'), ('ssod', 'mahalanobis', 'klm'), ('ssod', 'mahalanobis', 'msp'),
                      ('mahalanobis', 'energy')):  # the last: the control without SSOD, what SSOD adds
            for method in ('fisher', 'stouffer'):
                for tail in (True, False):
                    fused.append(SSODFused(components=comps, method=method, tail=tail,
                                           name=f"fused[{'+'.join(comps)}]/{method}{'' if tail else '/notail'}"))
        return ['ssod', 'mahalanobis', 'vim', 'knn', 'energy', 'msp', 'klm'] + fused

    results = {}
    for seed in seeds:
        start = time.time()
        res = measure_decisions(model, data('synthetic/id', 'train', 2000, seed), data('synthetic/id', 'val', 1000, seed),
                                data('synthetic/id', 'test', 600, seed),
                                {s: data(f'synthetic/{s}', 'test', 600, seed) for s in OOD_SETS}, detectors(),
                                alphas=(0.01, 0.05, 0.1))
        res['seconds'] = time.time() - start
        results[str(seed)] = res
        print(f'seed {seed}: {res["seconds"]:.0f}s\n{format_decisions(res, 0.05)}', flush=True)
    record = {'checkpoint': ckpt, 'img_size': img, 'render_size': render, 'background': background,
              'seeds': list(seeds), 'results': results}
    atomic_write_text(out, json.dumps(relative_paths(record, ROOT)))  # no absolute path of this machine


def summary(path: str, alpha: str = '0.05'):
    with open(path) as f:
        d = json.load(f)
    runs = list(d['results'].values())
    sets = list(runs[0]['n_ood'])

    def ms(values):
        return f'{np.mean(values):.1f} ± {np.std(values, ddof=1) if len(values) > 1 else 0:.1f}'
    print('| detector | ' + ' | '.join(f'{s} FPR95' for s in sets) +
          f' | avg FPR95 | avg AUROC | OOD caught @{alpha} | ID rejected @{alpha} (per seed) |')
    print('|---|' + '---:|' * (len(sets) + 4))
    for name in runs[0]['detectors']:
        dets = [r['detectors'][name] for r in runs]
        cells = [ms([100 * x['ood'][s]['fpr95'] for x in dets]) for s in sets]
        cells += [ms([100 * x['average']['fpr95'] for x in dets]), ms([100 * x['average']['auroc'] for x in dets]),
                  ms([100 * x['average']['caught'][alpha] for x in dets]),
                  ' '.join(f"{100 * x['id_rejection'][alpha]['rate']:.1f}" for x in dets)]
        print(f'| {name} | ' + ' | '.join(cells) + ' |')
    checks = [c for r in runs for x in r['detectors'].values() for c in x['id_rejection'].values()]
    print(f"\n{sum(c['within'] for c in checks)} of {len(checks)} (detector, alpha, seed) ID rejection rates within "
          f"expected + 3 std; {sum(c['conservative'] for c in checks)} conservative; z mean "
          f"{np.mean([c['z'] for c in checks]):.2f}, std {np.std([c['z'] for c in checks]):.2f}")


if __name__ == '__main__':
    if sys.argv[1] == '--summary':
        summary(sys.argv[2])
    else:
        measure(sys.argv[1], sys.argv[2], [int(s) for s in (sys.argv[3] if len(sys.argv) > 3 else '0').split(',')])
