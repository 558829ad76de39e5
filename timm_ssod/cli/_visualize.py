"""``timm-ssod visualize``: the paper's figures for your models.

* Fig. 2 (``sampler.png``): one row per image. First the image as the model sees it (after
  timm's eval transform); then, per model, the per-location confidence on the labelled class
  (the predicted class for unlabelled images) upsampled to the image, the sampler's labels
  (Eq. 12) as a grid: ID green, OOD red, ignored grey, and for SSOD models the per-location
  P(ID) of the OOD head (Eq. 15 at every location).
* Fig. 6 (``hist_<set>.png``, with ``--hist``): ID-vs-OOD score histograms, per model its SSOD
  score and its best of ``--hist-detectors`` (``timm_ssod.evaluate.plot_histograms``).

    # the first 4 validation images of the built-in benchmark, a vanilla and an SSOD run side by side
    timm-ssod visualize --checkpoint output/demo/finetune_vanilla/last.pth.tar \\
        --compare output/demo/finetune_ssod/last.pth.tar --hist --ood backgrounds=synthetic/backgrounds
    # your own images (files and/or folders) with a saved model
    timm-ssod visualize --model local-dir:saved/ssod-resnet18 --images cat.jpg more_photos/
    # an image folder (train/ + val/), labelled by its class folders, as timm-ssod eval reads it
    timm-ssod visualize --checkpoint output/train/RUN/model_best.pth.tar --data-dir my_photos

Images drawn: ``--images``; else ``--dataset`` / ``--data-dir`` (``--data-dir`` alone is an image
folder); else the data the checkpoint's training run recorded; else ``synthetic/id``. The
split defaults, as in every command, to the validation split (an image folder's ``val/``;
``--split test`` draws ``test/``); one that would read the training images (timm reads the
whole folder when the split's sub-folder is missing) is an error. Unreadable image files are
left out. Class names: the model's (its training folder's), else the dataset's.

Models load as in ``timm-ssod eval`` (``timm_ssod.evaluate``); ``--compare`` takes a checkpoint
file or a model name (``local-dir:PATH``, ``hf-hub:org/name``). gamma: ``--gamma``, else the
model's ``ssod_cfg``, else the training run's ``--gamma``, else 0.95. matplotlib is an optional
dependency: ``pip install "timm-ssod[plot]"``.
"""
import argparse
import os
from datetime import datetime
from typing import List, NamedTuple, Optional

import numpy as np
import torch
from timm.utils import ParseKwargs

from ..evaluate import add_model_arguments
from ..core import GAMMA, model_gamma
from ..figures import (DEFAULT_IMAGES, PlotDependencyError, location_maps, render_sampler_figure,
                       require_matplotlib, save_figure)
from ..data import HELD_OUT_SPLIT, TRAIN_SPLIT
from ._common import BAD_INPUT, add_command, parse_and_run, report_errors


# -- command line ------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    g = p.add_argument_group('models (loaded as by timm-ssod eval)')
    add_model_arguments(g)
    g.add_argument('--compare', metavar='CKPT_OR_NAME', default=None,
                   help='a second model, drawn beside the first: a checkpoint file or local-dir:/hf-hub: name')
    g.add_argument('--compare-model', metavar='NAME', default=None, help='timm name for a --compare checkpoint that '
                                                                         'does not record it')
    g.add_argument('--labels', nargs=2, metavar=('A', 'B'), default=None,
                   help='column titles of the models (default: SSOD / vanilla)')
    g.add_argument('--img-size', type=int, default=None, metavar='N', help='input size (default: the model\'s)')
    g.add_argument('--gamma', type=float, default=None, help=f"sampler threshold (default: the model's, else {GAMMA})")
    g = p.add_argument_group('images')
    g.add_argument('--images', nargs='+', default=None, metavar='PATH', help='image files and/or folders '
                                                                             '(unlabelled: the predicted class)')
    g.add_argument('--dataset', default=None, metavar='NAME',
                   help="otherwise a dataset, as in timm-ssod eval: '' (an image folder, the default with --data-dir), "
                        'synthetic/id, synthetic/<OOD set>, torch/cifar10 ... (default: the data of the checkpoint\'s '
                        'training run, else synthetic/id)')
    g.add_argument('--data-dir', metavar='DIR', default=None,
                   help='image folder (train/ and val/ sub-folders), read like timm-ssod eval --data-dir')
    g.add_argument('--split', default=HELD_OUT_SPLIT,
                   help=f'dataset split (default: {HELD_OUT_SPLIT}, an image folder\'s val/; test: its test/)')
    g.add_argument('--dataset-kwargs', nargs='*', default={}, action=ParseKwargs, metavar='K=V',
                   help='dataset arguments (default for synthetic data: the training run\'s img_size / seed)')
    g.add_argument('-n', '--num-images', type=int, default=None,
                   help=f'N images of the dataset (default {DEFAULT_IMAGES}: the first ones; of an image folder, '
                        'spread evenly over its files, so that several classes show), or of --images (default all)')
    g = p.add_argument_group('histograms (Fig. 6)')
    g.add_argument('--hist', action='store_true', help='also draw ID-vs-OOD score histograms')
    g.add_argument('--ood', nargs='+', action='extend', default=[], metavar='NAME=SPEC',
                   help='OOD sets as in timm-ssod eval (default with synthetic data: all built-in sets); '
                        'implies --hist')
    g.add_argument('--hist-detectors', nargs='+', default=['msp', 'energy', 'ssod'], metavar='NAME',
                   help='scores to compute (detectors without fitting); plotted per model: ssod and the best other')
    g.add_argument('--hist-samples', type=int, default=300, metavar='N', help='images per set (default 300)')
    g = p.add_argument_group('run')
    g.add_argument('--output', metavar='DIR', default=None, help='default: output/visualize/<timestamp>')
    g.add_argument('--name', default='sampler.png', help='file name of the Fig. 2 PNG (default sampler.png)')
    g.add_argument('--device', default=None)
    g.add_argument('--batch-size', '-b', type=int, default=64)
    g.add_argument('--seed', type=int, default=0, help='seed of the histogram subsampling')
    g.add_argument('--quiet', action='store_true')
    return p


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``visualize`` on the ``timm-ssod`` subparsers (``timm_ssod.cli``)."""
    return add_command(subparsers, 'visualize', "the paper's figures: sampler maps (Fig. 2), score histograms (Fig. 6)",
                       __doc__, add_arguments, run)


class _Loaded(NamedTuple):
    model: torch.nn.Module
    info: dict
    transform: object
    data_config: dict
    gamma: float
    train_args: dict


def _load(name, checkpoint, args, device) -> _Loaded:
    from timm.data import create_transform, resolve_data_config
    from ..evaluate import load_model_of_args
    model, info = load_model_of_args(args, name, checkpoint)
    train_args = info['train_args']  # the dataset of the training run
    data_args = dict(info['data_args'])
    if args.img_size:
        data_args.pop('input_size', None)
        data_args['img_size'] = args.img_size
    data_config = resolve_data_config(data_args, model=model)
    gamma = args.gamma or model_gamma(model)  # the checkpoint's ssod_cfg (or its run's --gamma), else GAMMA
    return _Loaded(model.to(device), info, create_transform(**data_config, is_training=False), data_config,
                   float(gamma), train_args)


def _resolve_data(args, loaded: '_Loaded') -> Optional[str]:
    """Decide (in ``args``) which images are drawn when no --images are given, and check it:
    ``--data-dir`` alone means an image folder (as in eval); neither: the training run's data
    if the checkpoint recorded it, else synthetic/id. A split that would read the training
    images is an error (``check_held_out_split``). Returns a line saying what is drawn."""
    from ..data import is_synthetic
    from ..evaluate import EvalDataError
    from ..data import check_held_out_split, is_image_folder
    train_args = loaded.info.get('train_args') or loaded.train_args or {}
    if args.dataset is None:
        if args.data_dir:
            args.dataset = ''
        elif train_args.get('dataset') is not None or train_args.get('data_dir'):
            args.dataset, args.data_dir = train_args.get('dataset') or '', train_args.get('data_dir')
            if is_image_folder(args.dataset) and not (args.data_dir and os.path.exists(args.data_dir)):
                raise EvalDataError(f"the checkpoint's training run read the image folder {args.data_dir!r}, which is "
                                    'not there from here: give --data-dir DIR, --images FILES or --dataset NAME')
        else:
            args.dataset = 'synthetic/id'
    if is_synthetic(args.dataset):
        if args.data_dir and not args.images:
            raise EvalDataError(f'--data-dir {args.data_dir!r} is not read with --dataset {args.dataset} (generated '
                                "images); leave --dataset out (or give --dataset '') to draw the folder's images")
        return f'{args.dataset}, split {args.split}'
    split, _ = check_held_out_split(args.dataset, args.data_dir, args.split, TRAIN_SPLIT, train_args, EvalDataError)
    if split is None:
        return f'{args.dataset or args.data_dir}, split {args.split}'
    if split.training:
        loaded.info['notes'].append(f'--split {args.split!r} reads the training images ({split.training})')
    return f'the image folder {split.folder} (split {args.split!r})'


def _dataset_kwargs(args, train_args) -> dict:
    from ..data import is_synthetic
    kwargs = {}
    if is_synthetic(args.dataset) and is_synthetic(train_args.get('dataset') or ''):
        trained = train_args.get('dataset_kwargs') or {}
        kwargs = {k: trained[k] for k in ('img_size', 'seed') if k in trained}
    return dict(kwargs, **args.dataset_kwargs)


def _images(args, model, dataset_kwargs):
    """``(names, PIL images, labels, class names)``; class names: the model's, else the data's."""
    from ..data import expand_image_paths
    from ._predict import read_images
    from ..evaluate import EvalDataError, build_id_dataset
    from ..data import class_names, leave_out_unreadable, model_class_map
    from ..core import label_names
    num_classes, names = model.num_classes, label_names(model)
    if args.images:
        files = expand_image_paths(args.images, flag='--images')
        files, images, unreadable = read_images(files[:args.num_images] if args.num_images else files)
        if not files:
            raise EvalDataError(f'none of the {len(unreadable)} --images file(s) could be read as an image')
        return [os.path.basename(f) for f in files], images, [-1] * len(files), names
    ds = build_id_dataset(args.dataset, args.data_dir, args.split, num_classes, dataset_kwargs)
    cmap = model_class_map(names, class_names(ds), f'the data ({args.dataset or args.data_dir}, split {args.split})',
                           EvalDataError)
    if cmap:  # read with the model's class indices
        ds = build_id_dataset(args.dataset, args.data_dir, args.split, num_classes,
                              dict(dataset_kwargs, class_map=cmap))
    if not len(ds):
        raise EvalDataError(f'no images in {args.dataset or args.data_dir} (split {args.split})')
    n = min(len(ds), args.num_images or DEFAULT_IMAGES)
    ds.transform = None
    leave_out_unreadable(ds)  # an unreadable file is left out (warned), not replaced by its neighbour
    reader = getattr(ds, 'reader', None)
    if hasattr(reader, 'filename'):  # an image folder, sorted by class: images spread over it, titled by file
        indices = np.linspace(0, len(ds) - 1, n).round().astype(int).tolist()
        titles = [str(reader.filename(i)) for i in indices]
    else:
        indices = list(range(n))
        titles = [f'{args.dataset or "image"} {args.split} #{i}' for i in indices]
    read = [(title, item) for title, item in zip(titles, (ds[i] for i in indices)) if item is not None]
    if not read:
        raise EvalDataError(f'none of the {len(indices)} image file(s) of {args.dataset or args.data_dir} (split '
                            f'{args.split}) chosen to draw could be read')
    classes = names or class_names(ds) or getattr(ds, 'id_classes', None)
    return ([t for t, _ in read], [im.convert('RGB') for _, (im, _) in read], [int(y) for _, (_, y) in read],
            classes)


def _view(x: torch.Tensor, data_config) -> np.ndarray:
    """A preprocessed image (C, H, W) back to (H, W, 3) in [0, 1] for display."""
    mean = torch.tensor(data_config['mean']).view(-1, 1, 1)
    std = torch.tensor(data_config['std']).view(-1, 1, 1)
    return (x.cpu().float() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()


def _score(loaded: _Loaded, args, dataset_kwargs, device):
    """``evaluate(..., return_scores=True)`` of one model on --hist-samples images of each set."""
    from ..data import cut, is_synthetic, make_loader
    from ..evaluate import EvalDataError, build_id_dataset, build_ood_datasets, default_ood_specs
    from ..evaluate import evaluate
    num_classes = loaded.model.num_classes
    if not args.ood and not is_synthetic(args.dataset):
        raise EvalDataError('--hist needs OOD data: give --ood NAME=FOLDER ... (or NAME=synthetic/<set>)')
    synth = {k: v for k, v in dataset_kwargs.items() if k in ('img_size', 'seed')} if is_synthetic(args.dataset) else {}
    id_set = build_id_dataset(args.dataset, args.data_dir, args.split, num_classes, dataset_kwargs)
    ood_sets = build_ood_datasets(args.ood or default_ood_specs(), args.data_dir, args.split,
                                  dict(synth, num_classes=num_classes))

    def loader(ds):
        return make_loader(cut(ds, args.hist_samples, args.seed), loaded.transform, args.batch_size, 0, device)

    return evaluate(loaded.model, loader(id_set), {k: loader(v) for k, v in ood_sets.items()}, args.hist_detectors,
                    device=device, progress=not args.quiet, seed=args.seed,
                    detector_kwargs={'odin': {'std': loaded.data_config['std']}}, return_scores=True)


def _histograms(models: List[_Loaded], tags, args, dataset_kwargs, out_dir, device) -> List[str]:
    """Fig. 6 through ``plot_histograms``. One model: its SSOD score and best baseline. Two
    models: each one's SSOD score (if any) and best baseline, as detectors named 'det (tag)'."""
    from ..evaluate import EvalScores
    from ..evaluate import best_baseline, plot_histograms
    scored = [_score(m, args, dataset_kwargs, device) for m in models]
    for tag, (result, _) in zip(tags, scored):
        for det, why in result['skipped'].items():
            print(f'histograms of {tag}: {det} skipped ({why})')
    if len(scored) == 1:
        return plot_histograms(scored[0][1], scored[0][0], out_dir)
    merged = EvalScores({}, {name: {} for name in scored[0][1].ood_scores}, None, 0)
    results, shown = {}, []
    for tag, (result, scores) in zip(tags, scored):
        for det in scores.id_scores:
            key = f'{det} ({tag})'
            merged.id_scores[key] = scores.id_scores[det]
            for name in merged.ood_scores:
                merged.ood_scores[name][key] = scores.ood_scores[name][det]
            results[key] = result['results'][det]
        shown += [f'{det} ({tag})' for det in ('ssod', best_baseline(result)) if det in scores.id_scores]
    return plot_histograms(merged, {'results': results}, out_dir, detectors=shown)


def _visualize(args) -> int:
    require_matplotlib()  # fail before any model is loaded
    if args.ood and not args.hist:  # OOD sets are only for the histograms: asking for them asks for those
        print('--ood given: drawing the score histograms too (--hist)')
        args.hist = True
    from ..checkpoints import check_output_dir
    device = torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    models = [_load(args.model, args.checkpoint, args, device)]
    if args.compare:
        spec = args.compare
        models.append(_load(args.compare_model, spec, args, device) if os.path.isfile(spec)
                      else _load(spec, None, args, device))
    tags = list(args.labels or ['SSOD' if m.info['ssod'] else 'vanilla' for m in models])
    if len(tags) == 2 and tags[0] == tags[1]:
        tags = [f'{t} ({ab})' for t, ab in zip(tags, 'AB')]
    if len({m.model.num_classes for m in models}) > 1:
        raise ValueError(f'the models have different class counts ({[m.model.num_classes for m in models]})')
    out_dir = args.output or os.path.join('output', 'visualize', datetime.now().strftime('%Y%m%d-%H%M%S'))
    check_output_dir(out_dir)

    source = _resolve_data(args, models[0]) if args.hist or not args.images else None  # --hist: its ID data
    dataset_kwargs = _dataset_kwargs(args, models[0].train_args)
    names, images, labels, classes = _images(args, models[0].model, dataset_kwargs)
    if not args.images:
        print(f'Drawing {len(images)} image(s) of {source}' + (f"; classes: {', '.join(classes)}" if classes else ''))
    views, maps = [], []
    for m in models:
        x = torch.stack([m.transform(im) for im in images])
        views.append([_view(xi, m.data_config) for xi in x])
        maps.append([mp for start in range(0, len(x), args.batch_size)
                     for mp in location_maps(m.model, x[start:start + args.batch_size].to(device),
                                             labels[start:start + args.batch_size], m.gamma)])
    paths = [save_figure(render_sampler_figure(views, maps, tags, names, classes), os.path.join(out_dir, args.name))]
    if args.hist:
        paths += _histograms(models, tags, args, dataset_kwargs, out_dir, device)
    for note in (n for m in models for n in m.info['notes']):
        print(f'note: {note}')
    print('\n'.join(f'wrote {p}' for p in paths))
    return 0


def run(args: argparse.Namespace, prog: str = 'timm-ssod visualize') -> int:
    """Draw the figures of parsed arguments; 0 on success, 1 with a message on bad input."""
    return report_errors(_visualize, args, prog, BAD_INPUT + (PlotDependencyError,))


def main(argv: Optional[List[str]] = None, prog: str = 'timm-ssod visualize') -> int:
    return parse_and_run(argv, prog, __doc__, add_arguments, run)
