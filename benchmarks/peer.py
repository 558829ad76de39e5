"""The detectors timm_ssod shares with pytorch-ood 0.4.0, side by side on the same features: time
(fit + score) and the agreement of the two score vectors (Spearman).

Detectors: MSP, MaxLogit, Energy, GEN, Mahalanobis, RMDS, KNN (k = 50), ViM, fDBD, SHE. Both
libraries get the same float32 tensors, already in memory: penultimate features, logits, labels
and the last layer (W, b). What is timed, per library and detector: the fit on the fit features
(nothing for the logit scores) plus the scoring of the query features; the model's forward is
not (it is the same for both). timm_ssod fits with ``fit_outputs`` over batches of 4,096 rows
(its streaming fit) and scores with ``score_outputs``; pytorch-ood with ``fit_features`` and
``predict_features`` (or the logit scores' ``score``). The libraries alternate, A B A B ...,
so machine load hits both alike; each time is the median of the repeats (at least 7 for a
detector under 0.5 s, each timing averaging enough calls to last ~0.1 s), with min and max.
pytorch-ood's scores are higher for OOD: they are negated before the Spearman correlation.

Settings:
- ``real``: a real model's outputs at small N: the shipped stand-in ``weights/resnet18.safetensors``
  (plain ResNet-18, 6 classes, 112 px) on the built-in data: fit on ID training images, queries
  ID test images and the built-in OOD sets' test images.
- ``synthetic``: ImageNet-sized features: M = 100 class-clustered Gaussians (class means plus
  noise with a decaying spectrum, so that there is a principal space), N_fit 2,000 and 50,000,
  D 512 and 2,048; the last layer is the linear discriminant of the class means; queries half ID
  (the same Gaussians), half OOD (Gaussians about new means).

Definitional difference: GEN. The paper (and timm_ssod) sums p^gamma (1 - p)^gamma over the top
M classes; pytorch-ood 0.4.0 averages over all C classes (and clamps p to [1e-7, 1 - 1e-7]). Its
score is the paper's divided by C only when M >= C; with C = 100 classes and M = 100 both read all
classes, so the two rank the images alike up to the clamp.

    pip install -e .[bench]                          # pytorch-ood 0.4.0 + scipy (benchmark-only)
    python benchmarks/peer.py                        # full run, writes benchmarks/peer.json
    python benchmarks/peer.py --quick --out peer_quick.json   # tiny sizes, seconds
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

DETECTORS = ('msp', 'maxlogit', 'energy', 'gen', 'mahalanobis', 'rmds', 'knn', 'vim', 'fdbd', 'she')
SYNTHETIC = [(2000, 512), (2000, 2048), (50000, 512), (50000, 2048)]  # (N_fit, D)
QUICK = [(300, 32)]
FIT_BATCH = 4096


def _require_peer():
    try:
        import pytorch_ood  # noqa: F401
        import scipy  # noqa: F401
    except ImportError as e:
        sys.exit(f'benchmarks/peer.py: error: needs the benchmark extra (pip install -e .[bench]: pytorch-ood==0.4.0, '
                 f'scipy): {e}')


def synthetic_features(n_fit, dim, classes=100, queries=5000, seed=0):
    """Class-clustered Gaussians: fit (features, labels), queries (features, is_id), last layer (W, b)."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(classes, dim, generator=g) * 0.5
    spectrum = torch.linspace(1.0, 0.05, dim)  # decaying noise spectrum: a principal space exists
    basis = torch.linalg.qr(torch.randn(dim, dim, generator=g))[0]

    def draw(centres, n):
        y = torch.randint(len(centres), (n,), generator=g)
        return centres[y] + (torch.randn(n, dim, generator=g) * spectrum) @ basis.T, y

    fit, labels = draw(means, n_fit)
    labels[:classes] = torch.arange(classes)  # every class occurs (pytorch-ood requires it)
    fit[:classes] = means + (torch.randn(classes, dim, generator=g) * spectrum) @ basis.T
    q_id, _ = draw(means, queries // 2)
    q_ood, _ = draw(torch.randn(classes, dim, generator=g) * 0.5, queries - queries // 2)
    w, b = means, -0.5 * (means * means).sum(dim=1)  # the linear discriminant of the class means
    scale = 2.0 / (fit @ w.T + b).std(dim=1).mean()  # logits spread by a few units, as a trained ImageNet head
    w, b = w * scale, b * scale
    return dict(fit=fit.contiguous(), labels=labels, queries=torch.cat([q_id, q_ood]).contiguous(),
                is_id=torch.cat([torch.ones(len(q_id)), torch.zeros(len(q_ood))]).bool(), weight=w, bias=b)


def real_features(num_fit=1500, num_test=300, seed=0):
    """The stand-in ResNet-18 on the built-in data (see the module docstring)."""
    import timm
    from timm.data import create_loader, resolve_data_config

    import timm_ssod
    from timm_ssod.data import OOD_SETS, create_dataset
    from timm_ssod.detectors import collect_outputs
    from timm_ssod.detectors.base import ModelOutputs
    path = os.path.join(ROOT, 'weights', 'resnet18.safetensors')
    model = timm_ssod.create_model('resnet18', ssod=False, num_classes=6, output_stride=16, pretrained=True,
                                   pretrained_cfg_overlay=dict(file=path)).eval()
    cfg = resolve_data_config({'img_size': 112}, model=model)

    def outputs(name, split, n):
        ds = create_dataset(name, split=split, num_images=n, img_size=64, background='natural', seed=seed)
        loader = create_loader(ds, input_size=cfg['input_size'], batch_size=100, is_training=False, use_prefetcher=False,
                               interpolation=cfg['interpolation'], mean=cfg['mean'], std=cfg['std'],
                               crop_pct=cfg['crop_pct'], num_workers=0)
        outs, ys = zip(*collect_outputs(model, loader))
        return ModelOutputs.cat(outs), torch.cat(ys)

    fit, labels = outputs('synthetic/id', 'train', num_fit)
    q = [outputs('synthetic/id', 'test', num_test)[0]] + [outputs(f'synthetic/{s}', 'test', num_test)[0]
                                                          for s in OOD_SETS]
    head = model.get_classifier()
    return dict(fit=fit.features.contiguous(), labels=labels,
                queries=torch.cat([o.features for o in q]).contiguous(),
                is_id=torch.cat([torch.ones(num_test)] + [torch.zeros(num_test)] * len(OOD_SETS)).bool(),
                weight=head.weight.detach().clone(), bias=head.bias.detach().clone(),
                note=f'stand-in resnet18 (weights/resnet18.safetensors, 6 classes, 112 px): fit {num_fit} ID train '
                     f'images, queries {num_test} ID test + {num_test} per OOD set ({", ".join(OOD_SETS)})')


def _ours(name, data, head):
    from timm_ssod.detectors import create_detector
    from timm_ssod.detectors.base import ModelOutputs
    det = create_detector(name)

    def run():
        if det.needs_fit:
            fit, logits = data['fit'], data['fit_logits']
            batches = [(ModelOutputs(f, l, None, head), y) for f, l, y in
                       zip(fit.split(FIT_BATCH), logits.split(FIT_BATCH), data['labels'].split(FIT_BATCH))]
            det.fit_outputs(batches)
        return det.score_outputs(ModelOutputs(data['queries'], data['query_logits'], None, head))
    return run


def _peer(name, data, head):
    from pytorch_ood import detector as P
    logit_scores = {'msp': lambda z: P.MaxSoftmax.score(z), 'maxlogit': lambda z: P.MaxLogit.score(z),
                    'energy': lambda z: P.EnergyBased.score(z), 'gen': lambda z: P.GEN.score(z, gamma=0.1, M=100)}
    if name in logit_scores:
        return lambda: logit_scores[name](data['query_logits'])
    from timm_ssod.detectors.vim import principal_dim

    def make():
        if name == 'mahalanobis':
            return P.Mahalanobis(None)
        if name == 'rmds':
            return P.RMD(None)
        if name == 'knn':
            return P.KNN(None, k=50)
        if name == 'vim':
            return P.ViM(None, d=principal_dim(data['fit'].shape[1]), w=head.weight, b=head.bias)
        if name == 'fdbd':
            return P.fDBD(None, head)
        if name == 'she':
            return P.SHE(None, head)
        raise KeyError(name)

    def run():
        det = make()
        det.fit_features(data['fit'], data['labels'])
        return det.predict_features(data['queries'])
    return run


def _spearman(a, b):
    from scipy.stats import spearmanr
    return float(spearmanr(a.double().numpy(), b.double().numpy()).statistic)


def _auroc(scores, is_id):
    """AUROC of ID (positive, higher score) against OOD, ties counted half."""
    from scipy.stats import rankdata
    r = rankdata(scores.double().numpy())
    pos = is_id.numpy()
    n1, n0 = pos.sum(), (~pos).sum()
    return float((r[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def compare(data, repeats, detectors=DETECTORS):
    """{detector: times, ratio, Spearman, AUROCs} on one set of features."""
    head = torch.nn.Linear(data['weight'].shape[1], data['weight'].shape[0])
    with torch.no_grad():
        head.weight.copy_(data['weight'])
        head.bias.copy_(data['bias'])
        data['fit_logits'], data['query_logits'] = head(data['fit']), head(data['queries'])
    rows = {}
    for name in detectors:
        ours, peer = _ours(name, data, head), _peer(name, data, head)
        times = {'ours': [], 'peer': []}
        with torch.no_grad():  # a first call of each, not kept: warm-up, the scores compared, the calls per timing
            t0 = time.perf_counter()
            s_ours, s_peer = ours().float().cpu(), -torch.as_tensor(peer()).float().cpu()  # pytorch-ood: higher = OOD
            once = time.perf_counter() - t0
        # calls per timing: a cheap detector (a millisecond) is called enough times for ~0.1 s, so that a
        # timing is not one scheduler tick on a loaded machine; expensive ones once
        number = max(1, min(200, int(0.1 / max(once, 1e-6))))
        reps = max(repeats, 7) if once < 0.5 else repeats
        for rep in range(reps):
            for who, fn in (('ours', ours), ('peer', peer)) if rep % 2 == 0 else (('peer', peer), ('ours', ours)):
                t0 = time.perf_counter()
                with torch.no_grad():
                    for _ in range(number):
                        fn()
                times[who].append((time.perf_counter() - t0) / number)
        med = {k: statistics.median(v) for k, v in times.items()}
        rows[name] = dict(calls_per_timing=number, timings=reps, ours_s=med['ours'], peer_s=med['peer'], ratio=med['ours'] / med['peer'],
                          ours_range_s=[min(times['ours']), max(times['ours'])],
                          peer_range_s=[min(times['peer']), max(times['peer'])],
                          spearman=_spearman(s_ours, s_peer),
                          auroc_ours=_auroc(s_ours, data['is_id']), auroc_peer=_auroc(s_peer, data['is_id']))
        r = rows[name]
        print(f"  {name:12s} ours {r['ours_s']:8.3f}s  peer {r['peer_s']:8.3f}s  ratio {r['ratio']:5.2f}  "
              f"spearman {r['spearman']:.5f}", flush=True)
    return rows


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--quick', action='store_true', help='tiny synthetic features only, a few seconds')
    p.add_argument('--threads', type=int, default=2, help='torch (and BLAS) threads for both libraries')
    p.add_argument('--repeats', type=int, default=5, help='timed runs per library (alternating); the median is kept')
    p.add_argument('--large-repeats', type=int, default=None,
                   help='repeats for N_fit 50,000 (default: --repeats)')
    p.add_argument('--queries', type=int, default=5000, help='synthetic query features (half ID, half OOD)')
    p.add_argument('--classes', type=int, default=100)
    p.add_argument('--sizes', nargs='*', default=None, metavar='NxD',
                   help='synthetic sizes N_fit x D (default: 2000x512 2000x2048 50000x512 50000x2048)')
    p.add_argument('--no-real', action='store_true', help='skip the stand-in ResNet-18 outputs')
    p.add_argument('--num-fit', type=int, default=1500, help='real: ID training images to fit on')
    p.add_argument('--num-test', type=int, default=300, help='real: test images per set (ID and each OOD set)')
    p.add_argument('--real-cache', default=os.path.join(ROOT, 'output', 'peer_real.pt'),
                   help='the stand-in outputs are kept in this file and reused (the forward pass is not timed; '
                        "'' keeps none)")
    p.add_argument('--out', default=os.path.join(ROOT, 'benchmarks', 'peer.json'))
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    _require_peer()
    import pytorch_ood

    import timm_ssod
    from timm_ssod._util import atomic_write_text
    torch.set_num_threads(args.threads)
    try:  # sklearn's KNN (pytorch-ood) uses n_jobs=-1 and BLAS threads: hold them to the same count
        from threadpoolctl import threadpool_limits
        threadpool_limits(args.threads)
    except ImportError:
        pass
    torch.manual_seed(0)
    sizes = QUICK if args.quick else SYNTHETIC
    if args.sizes is not None:
        sizes = [tuple(int(v) for v in size.lower().split('x')) for size in args.sizes]
    queries, classes, repeats = (200, 10, 2) if args.quick else (args.queries, args.classes, args.repeats)
    def write(complete):  # after every setting, so an interrupted run keeps what it measured
        out = dict(
            command='python benchmarks/peer.py ' + ' '.join(argv if argv is not None else sys.argv[1:]),
            timed='fit (fit_outputs / fit_features) + scoring of the queries (score_outputs / predict_features), features '
                  'in memory; median over the repeats, the two libraries alternating',
            gen_note='GEN: timm_ssod sums p^g (1-p)^g over the top M = 100 classes (the paper); pytorch-ood 0.4.0 '
                     'averages over all C classes with p clamped to [1e-7, 1 - 1e-7]: same ranking when M >= C, up to '
                     'the clamp',
            environment=dict(threads=args.threads, cpu=platform.processor() or platform.machine(),
                             cpu_count=os.cpu_count(), python=platform.python_version(), torch=torch.__version__,
                             pytorch_ood=getattr(pytorch_ood, '__version__', '0.4.0'),
                             timm_ssod=getattr(timm_ssod, '__version__', None)),
            quick=bool(args.quick), complete=complete, results=results)
        atomic_write_text(args.out, json.dumps(out, indent=1) + '\n')
        return out

    results = []
    if not args.quick and not args.no_real:
        print('real: stand-in resnet18 outputs', flush=True)
        key = dict(num_fit=args.num_fit, num_test=args.num_test)
        cached = torch.load(args.real_cache) if args.real_cache and os.path.exists(args.real_cache) else None
        if cached is not None and cached.get('key') == key:
            data = cached['data']
        else:  # the model's forward over ~3,000 images: minutes on a loaded CPU
            data = real_features(args.num_fit, args.num_test)
            if args.real_cache:
                os.makedirs(os.path.dirname(os.path.abspath(args.real_cache)), exist_ok=True)
                torch.save({'key': key, 'data': data}, args.real_cache)
        data = dict(data)
        results.append(dict(setting='real', note=data.pop('note'), n_fit=len(data['fit']),
                            dim=data['fit'].shape[1], classes=data['weight'].shape[0], queries=len(data['queries']),
                            repeats=repeats, detectors=compare(data, repeats)))
        write(False)
    for n_fit, dim in sizes:
        reps = args.large_repeats if (args.large_repeats and n_fit >= 50000) else repeats
        print(f'synthetic: N_fit {n_fit}, D {dim}, M {classes}, {queries} queries, {reps} repeats', flush=True)
        data = synthetic_features(n_fit, dim, classes, queries)
        results.append(dict(setting='synthetic', n_fit=n_fit, dim=dim, classes=classes, queries=queries,
                            repeats=reps, detectors=compare(data, reps)))
        write(False)
    out = write(True)
    print(f'wrote {args.out}')
    return out


if __name__ == '__main__':
    main()
