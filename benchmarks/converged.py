"""The study's decisive cell: SSOD fine-tuned from a *converged* classifier, at a 7x7 map, on natural backgrounds.

The regime study (``benchmarks/regime.py``) fine-tunes a briefly trained stage 1 (about 55-60% ID
accuracy); the paper fine-tunes converged classifiers. This study starts every fine-tune from a
stand-in for pretrained weights trained to convergence with the shipped recipe
(``weights/<backbone>.yaml``, ``lib.train_standin``), and answers two questions
with the seeds' spread and nothing chosen on the OOD test sets:

* **SSOD's score**: does the SSOD score (Eq. 15, on the SSOD model) beat (a) the best logit
  baseline and (b) the best feature-space baseline (both on the vanilla model), on the
  ``backgrounds`` set and on average over the OOD sets?
* **SSOD as a training method**: is every post-hoc detector better on the SSOD fine-tune than on
  the vanilla fine-tune of the same weights (a paired table: detector x OOD set, SSOD model minus
  vanilla model, per seed), and is the default decision (``ssod_fused`` on the SSOD model) better
  than the best detector on the vanilla model?

"Best" is always chosen on the *validation* splits: the vanilla model is scored on the ID and OOD
validation splits (``evaluate_checkpoint(split='val')``) and the detector with the lowest mean
validation FPR95 over the OOD sets is the one reported on every test set (one detector, as one
would deploy). The best-on-test choice (regime.py's, an oracle) is recorded beside it, labelled.

Cells: background x backbone x seed.

* **background**: ``natural`` (the decisive cell: fine-tunes from the shipped
  ``weights/<backbone>.safetensors``) and ``smooth`` (the paper's A.5 control: a stand-in trained
  on smooth backgrounds with the *same* recipe, only ``background=smooth``, exported into the runs
  folder, not shipped; trained once per backbone, resumably, and shared by the seeds);
* **backbone**: the two shipped ones, both at a 7x7 map from 64-px renders: ``resnet18`` at 112 px
  (output stride 16), ``mobilenetv3_small_075`` at 224 px (output stride 32);
* **seed**: 0, 1, 2 (the fine-tuning seed; ``--seeds``).

Each cell is ``lib.run_protocol(pretrained_path=...)`` with the demo's sizes
(``SIZES``): a vanilla and an SSOD fine-tune with the same budget and seed, each keeping the
epoch with the best validation FPR95 of its own score, every detector of the harness's default set
plus ``ssod_patch_max`` on the test splits (baselines on both models). Then, on the kept
checkpoints, the vanilla model's validation scores (for the choices above) and
``location_probe`` on the SSOD model (the OOD head's P(ID) location by location: what the
training did to the head), and the checkpoints are deleted (``--keep-checkpoints``: all but each
fine-tune's kept epoch, which ``benchmarks/evidence.py`` scores).

    python benchmarks/standin.py resnet18 mobilenetv3_small_075    # first: the shipped stand-ins (weights/)
    python benchmarks/converged.py --estimate                       # the plan and its cost, nothing run
    python benchmarks/converged.py                                  # the whole study, one process
    OMP_NUM_THREADS=1 python benchmarks/converged.py --shard 0/2 &
    OMP_NUM_THREADS=1 python benchmarks/converged.py --shard 1/2; wait   # the same, one process per core
    python benchmarks/converged.py --only natural/resnet18 --seeds 0  # one configuration, one seed
    python benchmarks/converged.py --quick --out output/quick.json --runs-dir output/quick   # tiny sizes (tests)
    python benchmarks/converged.py --only smooth/resnet18 --keep-checkpoints   # keep each fine-tune's kept epoch

Cost (``--estimate``, from ``STEP_MS``: one core's training step per image, resnet18 at 112 px 41 ms,
MobileNetV3-Small at 224 px 18 ms (measured at width 1.0; 0.75 is cheaper), forward only a third, ODIN a
step per scored image): a cell is about 7 min (resnet18) / 3 min (MobileNetV3); the smooth stand-ins
about 68 / 56 min; in all about 3.2 h of one core, 1 h 40 min as two shards (91 and 99 min). Rendering
the natural images adds about 1 min per natural cell (17 ms an image), not counted.

Every finished cell is added to ``--out`` at once (regime.py's file lock, written atomically); a
rerun skips the cells already there, so an interrupted study resumes where it stopped, and shards
share one file. ``--shard I/N`` deals the (background, backbone) configurations out by estimated
cost (the smooth stand-ins dominate). ``python benchmarks/make_tables.py`` renders the JSON
(``table``); ``summarize`` gives the two answers as data.
"""
import argparse
import math
import os
import platform
import sys
import time
from collections import OrderedDict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # regime.py, beside this script, however it is loaded
from regime import (FEATURE_BASELINES, LOGIT_BASELINES, add_entry, best_of, cell_record, exclusive,  # noqa: E402
                    summarize_eval)

import timm  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from timm_ssod._util import atomic_write_text, sha256_of  # noqa: E402
from timm_ssod.data import OOD_SETS  # noqa: E402
from timm_ssod.evaluate import AVERAGE, DEFAULT_DETECTORS  # noqa: E402
from lib import (evaluate_checkpoint, export_standin, location_probe, read_result,  # noqa: E402
                                   remove_checkpoints, run_protocol, standin_file, train_standin)
from lib import SHIPPED  # noqa: E402
from lib import SSOD_ONLY  # noqa: E402
from lib import WEIGHTS_DIR, recipe_path  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

BACKGROUNDS = ('natural', 'smooth')  # the decisive cell, then the A.5 control
# backbone -> (render size, input size, timm kwargs): a 7x7 map from 64-px renders, as the stand-in recipes train
BACKBONES = OrderedDict([('resnet18', (64, 112, {'output_stride': 16})),
                         ('mobilenetv3_small_075', (64, 224, {}))])
assert tuple(BACKBONES) == tuple(SHIPPED), 'one configuration per shipped stand-in'
SEEDS = (0, 1, 2)
# The demo's sizes (lib.DEMO): each fine-tune sees num_images ID training images for
# finetune_epochs epochs at the paper's lr 1e-4 (AdamW, batch_size) and keeps the epoch with the best FPR95 of
# its own score on num_val validation images of ID and of each OOD set; detectors that fit are fitted on
# num_fit ID training images; the test: num_test ID images and num_ood per OOD set. The vanilla model's
# validation scores (the choices) use num_val images of each validation split; the probe num_test per set.
SIZES = dict(num_images=1000, finetune_epochs=2, finetune_lr=1e-4, num_val=150, num_test=300, num_ood=300,
             num_fit=600, batch_size=32)
QUICK_BACKBONES = OrderedDict([('test_resnet', (16, 56, {'output_stride': 16}))])
QUICK_SIZES = dict(num_images=48, finetune_epochs=1, finetune_lr=5e-4, num_val=16, num_test=24, num_ood=24, num_fit=24,
                   batch_size=16)
QUICK_SEEDS = (0, 1)  # two, so that the summary's spread over seeds is exercised
# the quick mode's stand-in recipe (the shipped ones' keys, tiny sizes): trained in the quick run itself
QUICK_RECIPE = dict(dataset='synthetic/id', dataset_kwargs={'num_images': 32, 'img_size': 16, 'background': 'natural'},
                    val_split='val', val_dataset_kwargs={'num_images': 16}, num_classes=6, model='test_resnet',
                    model_kwargs={'output_stride': 16}, img_size=56, ssod=False, opt='adamw', lr=2e-3,
                    weight_decay=0.05, sched='cosine', epochs=1, warmup_epochs=0, batch_size=16, workers=0,
                    scale=[0.6, 1.0], hflip=0.5, smoothing=0.0, seed=0, eval_metric='top1', checkpoint_hist=1,
                    log_interval=1)

# The harness's default set, plus ssod_patch_max (the most-ID location instead of the pooled feature)
CELL_DETECTORS = tuple(DEFAULT_DETECTORS) + ('ssod_patch_max',)
BASELINES = tuple(d for d in CELL_DETECTORS if d not in SSOD_ONLY)  # scored on both models
# regime.py's groups (fixed there so that its cells stay comparable) and the default set's later additions
LOGIT = tuple(LOGIT_BASELINES) + tuple(d for d in ('gen',) if d not in LOGIT_BASELINES)
FEATURE = tuple(FEATURE_BASELINES) + tuple(d for d in ('rmds',) if d not in FEATURE_BASELINES)
assert set(LOGIT) | set(FEATURE) == set(BASELINES) and not set(LOGIT) & set(FEATURE), \
    f'every baseline of the default set is a logit or a feature-space one: {BASELINES}'
SCORE = 'ssod'            # SSOD's score (Eq. 15)
DEFAULT_DECISION = 'ssod_fused'  # the library's default decision (timm-ssod calibrate)
HEADLINE = ('backgrounds', AVERAGE)  # where question 1 is asked
CHOICE = ('one detector per cell and group, the lowest mean FPR95 over the OOD sets on the vanilla model\'s '
          'validation splits (ID and OOD validation images), reported on every test split')

# one core's cost of a training step per image, in ms (measured at the fine-tunes' input sizes); forward only: a third
STEP_MS = {'resnet18': 41.0, 'mobilenetv3_small_075': 18.0}


def config_key(background, backbone):
    return f'{background}/{backbone}'


def cell_key(background, backbone, seed):
    return f'{background}/{backbone}/seed{seed}'


def shown(path, runs_dir=None):
    """``path`` as the JSON records it: relative to the repository when inside it, else to ``--runs-dir``
    (``<runs-dir>/...``); never an absolute path of this machine."""
    path = os.path.abspath(path)
    rel = os.path.relpath(path, ROOT)
    if not rel.startswith('..'):
        return rel
    if runs_dir is not None:
        rel = os.path.relpath(path, os.path.abspath(runs_dir))
        if not rel.startswith('..'):
            return '<runs-dir>' if rel == '.' else os.path.join('<runs-dir>', rel)
    return os.path.basename(path)


def shown_command(argv, runs_dir=None):
    return ' '.join(['python benchmarks/converged.py',
                     *[shown(a, runs_dir) if os.path.isabs(a) else a for a in argv]])


# ----------------------------------------------------------------------------------------- starting weights

def read_recipe(backbone, weights_dir):
    with open(recipe_path(backbone, weights_dir)) as f:
        return yaml.safe_load(f)


def smooth_args(recipe):
    """The recipe's own arguments with ``background=smooth``: timm's ParseKwargs *replaces* the recipe's
    ``dataset_kwargs`` dict, so every key of it is given again."""
    kwargs = dict(recipe['dataset_kwargs'], background='smooth')
    return ['--dataset-kwargs', *[f'{k}={v}' for k, v in kwargs.items()]]


def weights_info(file, runs_dir):
    """What the cells record of a starting weights file (from the JSON ``export_standin`` wrote beside it)."""
    info = read_result(os.path.splitext(file)[0] + '.json') or {}
    keep = ('sha256', 'model', 'model_kwargs', 'input_size', 'render_size', 'background', 'images', 'epochs',
            'epochs_done', 'best_epoch', 'id_test_accuracy', 'num_test', 'wall_seconds', 'command', 'commits',
            'recipe')
    out = {'file': shown(file, runs_dir), **{k: info.get(k) for k in keep}}
    if out['command']:  # train_standin records --output as given: an absolute --runs-dir would show
        out['command'] = ' '.join(shown(a, runs_dir) if os.path.isabs(a) else a for a in out['command'].split())
        words = out['command'].split()
        if '-c' in words:  # export_standin names weights/<backbone>.yaml; the recipe run is the command's
            out['recipe'] = words[words.index('-c') + 1]
    if out['sha256'] and out['sha256'] != sha256_of(file):
        sys.exit(f'{shown(file, runs_dir)}: its sha256 differs from the JSON beside it; re-export it')
    return out


def check_weights(file, info, backbone, background, backbones):
    render, size, kwargs = backbones[backbone]
    expect = dict(model=backbone, input_size=size, render_size=render, background=background)
    wrong = {k: (info.get(k), v) for k, v in expect.items() if info.get(k) is not None and info.get(k) != v}
    if wrong:
        sys.exit(f'{file}: trained for {", ".join(f"{k}={a}" for k, (a, _) in wrong.items())}, this study fine-tunes '
                 f'at {", ".join(f"{k}={b}" for k, (_, b) in wrong.items())}')


def quick_recipes(args):
    """The quick mode's recipe folder (``QUICK_RECIPE`` for the quick backbone), written into --runs-dir."""
    folder = os.path.join(args.runs_dir, 'quick_recipes')
    os.makedirs(folder, exist_ok=True)
    for backbone in args.backbones:
        path = recipe_path(backbone, folder)
        if not os.path.exists(path):
            atomic_write_text(path, yaml.safe_dump(dict(QUICK_RECIPE, model=backbone)))
    return folder


def trained_standin(args, backbone, background):
    """Train (resuming) and export a stand-in of ``backbone`` on ``background`` into --runs-dir; reused when
    its export is there. The smooth control (and, in quick mode, the natural one too)."""
    weights_dir = quick_recipes(args) if args.quick else WEIGHTS_DIR
    root = os.path.join(args.runs_dir, f'{background}_standin')
    out_dir = os.path.join(root, 'weights')
    file = os.path.join(out_dir, f'{backbone}.safetensors')
    if os.path.exists(file) and os.path.exists(os.path.splitext(file)[0] + '.json'):
        return file
    recipe = read_recipe(backbone, weights_dir)
    extra = [] if background == recipe['dataset_kwargs'].get('background', 'natural') else smooth_args(recipe)
    shown_recipe = shown(recipe_path(backbone, weights_dir), args.runs_dir)
    print(f'[converged] {background}/{backbone}: stand-in, recipe {shown_recipe} {" ".join(extra)} '
          f'({recipe["epochs"]} epochs on {recipe["dataset_kwargs"]["num_images"]} images)', flush=True)
    run = train_standin(backbone, output=os.path.join(root, 'runs'), extra_args=extra, weights_dir=weights_dir)
    if not run['finished']:
        sys.exit(f'{run["run_dir"]}: the stand-in has {run["epochs_done"]} of {run["epochs"]} epochs; rerun to go on')
    export_standin(run['run_dir'], out_dir, num_test=args.sizes['num_test'] if args.quick else 600)  # 600: as shipped
    return file


def starting_weights(args, backbone, background):
    """The weights file the cells of (background, backbone) fine-tune from."""
    if background == 'natural' and not args.quick:
        file = standin_file(backbone)
        if file is None:
            sys.exit(f'no weights/{backbone}.safetensors: run `python benchmarks/standin.py {backbone}` first')
        return file
    return trained_standin(args, backbone, background)


# ----------------------------------------------------------------------------------------- one cell

def paired(ssod_rows, vanilla_rows, detectors, sets):
    """{detector: {set or average: {fpr95, auroc}}}: SSOD model minus vanilla model (FPR95 < 0, AUROC > 0:
    the detector is better on the SSOD fine-tune)."""
    return {d: {s: {m: ssod_rows[d][s][m] - vanilla_rows[d][s][m] for m in ('fpr95', 'auroc')} for s in sets}
            for d in detectors if d in ssod_rows and d in vanilla_rows}


def chosen_on_val(val_rows, test_rows, names, sets):
    """The detector among ``names`` with the lowest mean validation FPR95 over the OOD sets, and its test
    numbers per set and on average."""
    name = min(names, key=lambda d: val_rows[d][AVERAGE]['fpr95'])
    return {'detector': name, 'val_fpr95': val_rows[name][AVERAGE]['fpr95'],
            **{s: {m: test_rows[name][s][m] for m in ('fpr95', 'auroc')} for s in sets}}


def vs(a, b, sets):
    """Per set: {a, b, difference} of FPR95 and AUROC (difference a - b)."""
    return {s: {m: {'a': a[s][m], 'b': b[s][m], 'difference': a[s][m] - b[s][m]} for m in ('fpr95', 'auroc')}
            for s in sets}


def converged_cell(record, val_result, probe, background, backbone, seed, backbones, weights):
    render, size, kwargs = backbones[backbone]
    cell = cell_record(record, background, '7x7', backbone, seed, render, size, kwargs, OOD_SETS,
                       logit_baselines=LOGIT, feature_baselines=FEATURE)
    sets = list(OOD_SETS) + [AVERAGE]
    ssod_rows, vanilla_rows = cell['ssod_model'], cell['vanilla']
    val_rows = summarize_eval(val_result, OOD_SETS)
    chosen = {'logit': chosen_on_val(val_rows, vanilla_rows, LOGIT, sets),
              'feature': chosen_on_val(val_rows, vanilla_rows, FEATURE, sets),
              'any': chosen_on_val(val_rows, vanilla_rows, BASELINES, sets)}
    cell.update(
        starting_weights=weights,
        vanilla_val=val_rows,
        chosen_on_val=chosen,
        # question 1: SSOD's score on the SSOD model minus the validation-chosen baseline on the vanilla model
        score_vs_best={g: vs(ssod_rows[SCORE], chosen[g], sets) for g in ('logit', 'feature')},
        # question 2: every baseline, SSOD model minus vanilla model; the default decision vs the best vanilla detector
        paired=paired(ssod_rows, vanilla_rows, BASELINES, sets),
        default_vs_best_vanilla=dict(vs(ssod_rows[DEFAULT_DECISION], chosen['any'], sets),
                                     detector=chosen['any']['detector']),
        oracle_best_vanilla=best_of(vanilla_rows, BASELINES, OOD_SETS),  # picked on the test splits: an oracle
        probe=probe)
    cell['best_logit_oracle'], cell['best_feature_oracle'] = cell.pop('best_logit'), cell.pop('best_feature')
    return cell


def run_cell(args, background, backbone, seed, file, weights, header):
    render, size, kwargs = args.backbones[backbone]
    sizes = args.sizes
    t = time.time()
    out_dir = os.path.join(args.runs_dir, background, backbone, f'seed{seed}')
    print(f'[converged] {cell_key(background, backbone, seed)}: fine-tunes from {weights["file"]} and evaluation',
          flush=True)
    record = run_protocol(backbone, kwargs, size, sizes['num_images'], 0, sizes['finetune_epochs'], seed,
                          detectors=CELL_DETECTORS, out_dir=out_dir, pretrained_path=os.path.abspath(file),
                          progress=False, keep_checkpoints=True, render_size=render, background=background,
                          **{k: sizes[k] for k in ('num_val', 'num_test', 'num_ood', 'num_fit', 'batch_size',
                                                   'finetune_lr')})
    common = dict(img_size=size, num_classes=6, render_size=render, background=background)
    t_val = time.time()
    val_result = evaluate_checkpoint(record['finetune']['vanilla']['checkpoint'], BASELINES, split='val',
                                     num_test=sizes['num_val'], num_ood=sizes['num_val'], num_fit=sizes['num_fit'],
                                     progress=False, **common)
    t_probe = time.time()
    probe = location_probe(record['finetune']['ssod']['checkpoint'], num_images=sizes['num_test'], **common)
    for kind in record['finetune']:
        kept = record['finetune'][kind]['checkpoint']  # --keep-checkpoints: that one stays (evidence.py reads it)
        remove_checkpoints(os.path.dirname(kept), keep=kept if args.keep_checkpoints else None)
    cell = converged_cell(record, val_result, probe, background, backbone, seed, args.backbones, weights)
    cell['seconds'].update(eval_vanilla_val=round(t_probe - t_val, 1), probe=round(time.time() - t_probe, 1),
                           cell=round(time.time() - t, 1))
    cell['command'] = args.command
    add_entry(args.out, 'cells', cell_key(background, backbone, seed), cell, header,
              sections=('starting_weights', 'cells'))
    q1, q2 = cell['score_vs_best'], cell['default_vs_best_vanilla']
    print(f"[converged] {cell_key(background, backbone, seed)}: ID acc vanilla {100 * cell['id_accuracy']['vanilla']:.1f}"
          f"% / SSOD {100 * cell['id_accuracy']['ssod']:.1f}%; average FPR95 ssod minus best logit "
          f"{100 * q1['logit'][AVERAGE]['fpr95']['difference']:+.1f}, minus best feature "
          f"{100 * q1['feature'][AVERAGE]['fpr95']['difference']:+.1f}; {DEFAULT_DECISION} minus {q2['detector']} "
          f"(vanilla) {100 * q2[AVERAGE]['fpr95']['difference']:+.1f} ({time.time() - t:.0f}s)", flush=True)


def run_config(args, background, backbone, header):
    todo = [s for s in args.seeds if cell_key(background, backbone, s) not in
            (read_result(args.out) or {}).get('cells', {})]
    if not todo:
        print(f'[converged] {config_key(background, backbone)}: all seeds done, skipped', flush=True)
        return
    file = starting_weights(args, backbone, background)
    weights = weights_info(file, args.runs_dir)
    check_weights(weights['file'], weights, backbone, background, args.backbones)
    add_entry(args.out, 'starting_weights', config_key(background, backbone), weights, header,
              sections=('starting_weights', 'cells'))
    for seed in todo:
        run_cell(args, background, backbone, seed, file, weights, header)


# ----------------------------------------------------------------------------------------- plan and cost

def estimate_seconds(backbone, background, sizes, n_seeds, quick=False, standin_done=False):
    """One core's seconds for (background, backbone): the smooth stand-in (unless done) plus ``n_seeds``
    cells, from ``STEP_MS`` (a training step per image; forward only a third; ODIN a step per scored image).
    Image rendering is not counted."""
    ms = STEP_MS.get(backbone, 1.0) / 1000
    sets, v = len(OOD_SETS), sizes['num_val']
    finetunes = 2 * sizes['finetune_epochs'] * (sizes['num_images'] + (1 + sets) * v / 3)
    scored = sizes['num_test'] + sets * sizes['num_ood']
    odin = 'odin' in CELL_DETECTORS
    evaluation = 2 * ((scored + sizes['num_fit']) / 3 + odin * scored)
    val = ((1 + sets) * v + sizes['num_fit']) / 3 + odin * (1 + sets) * v
    probe = (1 + sets) * sizes['num_test'] / 3 + min(256, v) / 3
    cell = finetunes + evaluation + val + probe
    standin = 0.0
    if background == 'smooth' and not standin_done and not quick:
        r = read_recipe(backbone, WEIGHTS_DIR)
        standin = r['epochs'] * (r['dataset_kwargs']['num_images'] + r['val_dataset_kwargs']['num_images'] / 3)
    return ms * (standin + n_seeds * cell)


def shard(configs, costs, index, count):
    """Shard ``index`` of ``count``: the configurations dealt out by estimated cost, largest first, each to
    the shard with the least so far (every process computes the same plan)."""
    loads, plan = [0.0] * count, [[] for _ in range(count)]
    for c in sorted(configs, key=lambda c: -costs[c]):
        i = loads.index(min(loads))
        loads[i] += costs[c]
        plan[i].append(c)
    return [c for c in configs if c in plan[index]], loads


# ----------------------------------------------------------------------------------------- summary and table

def stat(values):
    """{mean, std (sample, ddof 1; 0 for one value), n, values} of per-seed numbers."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {'mean': mean, 'std': std, 'n': n, 'values': values}


def verdict(diffs, lower_is_better=True):
    """'better' when every seed's difference favours the first arm, 'worse' when every seed's is against it,
    else 'mixed' (with 3 seeds, all three is the bar); with one seed, 'one seed'."""
    good = sum((d < 0) if lower_is_better else (d > 0) for d in diffs)
    bad = sum((d > 0) if lower_is_better else (d < 0) for d in diffs)
    if len(diffs) < 2:
        return 'one seed'
    return 'better' if good == len(diffs) else 'worse' if bad == len(diffs) else 'mixed'


def _compare(cells, get, sets):
    """Per set: FPR95 and AUROC stats of the first arm, the second and their difference, the seeds that
    favour the first arm (by FPR95) and the verdict."""
    out = {}
    for s in sets:
        e = {m: {k: stat([get(c)[s][m][k] for c in cells]) for k in ('a', 'b', 'difference')}
             for m in ('fpr95', 'auroc')}
        diffs = e['fpr95']['difference']['values']
        e['seeds_better'] = sum(d < 0 for d in diffs)
        e['verdict'] = verdict(diffs)
        out[s] = e
    return out


def summarize(d):
    """The two answers as data, per background and backbone (over the seeds in the JSON)::

        {background: {backbone: {
            'seeds', 'id_accuracy': {ssod, vanilla}, 'sampler': {background_cells_labelled_ood, p_id_object_cells,
            p_id_background_cells, p_id_gap},
            'score': {'logit'|'feature': {set: {fpr95|auroc: {a, b, difference}, seeds_better, verdict},
                                          'detectors': [chosen per seed]}},
            'paired': {detector: {set: {fpr95|auroc: stat, seeds_better, verdict}}},
            'every_detector_better': {set: bool}, 'not_better': {set: [detectors]},
            'default_decision': {set: {...as score...}, 'detectors': [...]}}}}

    ``a`` is always the SSOD side (SSOD's score / the SSOD model), ``b`` the vanilla side; a stat is
    {mean, std, n, values}; ``verdict`` is 'better' when every seed's FPR95 is lower on the SSOD side."""
    sets = list(d['ood_sets']) + [AVERAGE]
    groups = OrderedDict()
    for c in sorted(d['cells'].values(), key=lambda c: c['seed']):
        groups.setdefault(c['background'], OrderedDict()).setdefault(c['backbone'], []).append(c)
    out = OrderedDict()
    for background in [b for b in d.get('backgrounds', BACKGROUNDS) if b in groups] + \
            [b for b in groups if b not in d.get('backgrounds', BACKGROUNDS)]:
        out[background] = OrderedDict()
        for backbone, cells in groups[background].items():
            a = [c['sampler_alignment'] for c in cells]
            paired_ = {}
            for det in cells[0]['paired']:
                paired_[det] = {}
                for s in sets:
                    diffs = [c['paired'][det][s]['fpr95'] for c in cells]
                    paired_[det][s] = {'fpr95': stat(diffs), 'auroc': stat([c['paired'][det][s]['auroc'] for c in cells]),
                                       'seeds_better': sum(x < 0 for x in diffs), 'verdict': verdict(diffs)}
            not_better = {s: [det for det in paired_ if paired_[det][s]['verdict'] != 'better'] for s in sets}
            score = {g: dict(_compare(cells, lambda c, g=g: c['score_vs_best'][g], sets),
                             detectors=[c['chosen_on_val'][g]['detector'] for c in cells]) for g in ('logit', 'feature')}
            pid = {k: [x['p_id'][k] for x in a] for k in ('object_cells', 'background_cells')}
            gaps = [o - b for o, b in zip(pid['object_cells'], pid['background_cells']) if o is not None and b is not None]
            out[background][backbone] = {
                'seeds': [c['seed'] for c in cells], 'grid': cells[0]['grid'],
                'starting_weights': cells[0]['starting_weights'],
                'id_accuracy': {k: stat([c['id_accuracy'][k] for c in cells]) for k in ('vanilla', 'ssod')},
                'sampler': {'background_cells_labelled_ood': stat([x['background_cells']['labelled_ood'] or 0.0
                                                                    for x in a]),
                            'p_id_object_cells': stat([v for v in pid['object_cells'] if v is not None] or [math.nan]),
                            'p_id_background_cells': stat([v for v in pid['background_cells'] if v is not None]
                                                          or [math.nan]),
                            'p_id_gap': stat(gaps or [math.nan])},
                'score': score,
                'paired': paired_, 'every_detector_better': {s: not v for s, v in not_better.items()},
                'not_better': not_better,
                'default_decision': dict(_compare(cells, lambda c: c['default_vs_best_vanilla'], sets),
                                         detectors=[c['default_vs_best_vanilla']['detector'] for c in cells]),
            }
    return out


def _pct(x, digits=1, sign=False):
    return '–' if x is None or (isinstance(x, float) and math.isnan(x)) else f'{100 * x:{"+" if sign else ""}.{digits}f}'


def _pm(s, sign=False):
    return _pct(s['mean'], sign=sign) if s['n'] < 2 else f"{_pct(s['mean'], sign=sign)} ± {_pct(s['std'])}"


def _names(names):
    return '/'.join(sorted(set(names)))


def table(d):
    """The study's markdown (for ``benchmarks/make_tables.py``): per background and backbone, the two
    answers of ``summarize``. Percent; mean ± std over seeds (sample std); k/n: the seeds on the SSOD side."""
    sets = list(d['ood_sets']) + [AVERAGE]
    summary = summarize(d)
    s = d['sizes']
    seeds = sorted({c['seed'] for c in d['cells'].values()})
    # every invocation that added cells (shards, --only runs), in the order they first did
    commands = '; '.join(OrderedDict.fromkeys(c.get('command') or d.get('command', '') for c in d['cells'].values()))
    out = [f"### The decisive cell: SSOD from converged classifiers, 7x7 map (seeds {', '.join(map(str, seeds))};"
           f" mean ± std)\n\n"
           f"Command: `{commands}`. Per (background, backbone) the fine-tunes start from a stand-in "
           f"trained to convergence with the shipped recipe (natural: `weights/<backbone>.safetensors`; smooth, the A.5 "
           f"control: the same recipe on smooth backgrounds); per seed a vanilla and an SSOD fine-tune "
           f"({s['finetune_epochs']} epochs on {s['num_images']} images, lr {s['finetune_lr']:g}, best validation FPR95 "
           f"kept), tested on {s['num_test']} ID and {s['num_ood']} images per OOD set. In percent. Every \"best\" "
           f"is chosen on validation: {d.get('choice', CHOICE)}. k/n: the seeds whose FPR95 is lower on the SSOD side.\n"]
    for background, by_backbone in summary.items():
        for backbone, e in by_backbone.items():
            w = e['starting_weights']
            sm = e['sampler']
            out.append(f"#### {background} / {backbone} ({'x'.join(map(str, e['grid']))} map; from `{w['file']}`, "
                       f"ID test accuracy {_pct(w.get('id_test_accuracy'))}; seeds {', '.join(map(str, e['seeds']))})\n\n"
                       f"ID accuracy after the fine-tunes: vanilla {_pm(e['id_accuracy']['vanilla'])}, SSOD "
                       f"{_pm(e['id_accuracy']['ssod'])}. Sampler (Eq. 12, SSOD model, validation images): pure-background "
                       f"cells labelled OOD {_pm(sm['background_cells_labelled_ood'])}; the head's P(ID) on object cells "
                       f"{_pm(sm['p_id_object_cells'])}, on background cells {_pm(sm['p_id_background_cells'])} (gap "
                       f"{_pm(sm['p_id_gap'])}).\n")
            rows = []
            for g, label in (('logit', 'best logit baseline'), ('feature', 'best feature-space baseline')):
                sc = e['score'][g]
                rows.append([f"`{SCORE}` vs {label} ({_names(sc['detectors'])}, vanilla model)"]
                            + [f"{_pm(sc[x]['fpr95']['a'])} vs {_pm(sc[x]['fpr95']['b'])}: "
                               f"{_pm(sc[x]['fpr95']['difference'], sign=True)} ({sc[x]['seeds_better']}/"
                               f"{sc[x]['fpr95']['difference']['n']})" for x in HEADLINE])
            dd = e['default_decision']
            rows.append([f"`{DEFAULT_DECISION}` (SSOD model) vs best vanilla detector ({_names(dd['detectors'])})"]
                        + [f"{_pm(dd[x]['fpr95']['a'])} vs {_pm(dd[x]['fpr95']['b'])}: "
                           f"{_pm(dd[x]['fpr95']['difference'], sign=True)} ({dd[x]['seeds_better']}/"
                           f"{dd[x]['fpr95']['difference']['n']})" for x in HEADLINE])
            out.append('FPR95 ↓, SSOD side vs vanilla side: difference (k/n):\n\n'
                       + _md(['comparison'] + [f'{x} FPR95' for x in HEADLINE], rows) + '\n')
            rows = [[f'`{det}`'] + [f"{_pm(p[x]['fpr95'], sign=True)} ({p[x]['seeds_better']}/{p[x]['fpr95']['n']})"
                                    for x in sets] for det, p in e['paired'].items()]
            rows.append(['every detector better (all seeds)']
                        + ['yes' if e['every_detector_better'][x] else 'no' for x in sets])
            out.append('Paired: each detector\'s FPR95 on the SSOD model minus on the vanilla model (negative: better on '
                       'the SSOD fine-tune; k/n seeds lower):\n\n' + _md(['detector'] + sets, rows) + '\n')
    return '\n'.join(out).rstrip() + '\n'


def _md(header, rows):
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' + '---:|' * (len(header) - 1)]
    return '\n'.join(lines + ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows])


# ----------------------------------------------------------------------------------------- command line

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--out', default=os.path.join(HERE, 'converged.json'))
    p.add_argument('--runs-dir', default='output/converged', help='training runs and the smooth stand-ins')
    p.add_argument('--shard', default='0/1', metavar='I/N', help='run the I-th of N cost-balanced parts of the study')
    p.add_argument('--only', nargs='*', default=None, metavar='BACKGROUND/BACKBONE',
                   help='run only these configurations (e.g. natural/resnet18), whatever --shard says')
    p.add_argument('--seeds', nargs='*', type=int, default=None, help=f'fine-tuning seeds (default {list(SEEDS)})')
    p.add_argument('--keep-checkpoints', action='store_true',
                   help="keep each fine-tune's kept epoch (model_best.pth.tar, about 45 MB for resnet18) under --runs-dir "
                        '(benchmarks/evidence.py scores them); by default every checkpoint is deleted after its cell')
    p.add_argument('--quick', action='store_true', help='tiny model, stand-ins and data, trained here (tests)')
    p.add_argument('--estimate', action='store_true', help='print the plan and its estimated cost, run nothing')
    args = p.parse_args(argv)
    try:
        args.shard_index, args.shard_count = (int(v) for v in args.shard.split('/'))
        assert 0 <= args.shard_index < args.shard_count
    except (ValueError, AssertionError):
        p.error(f'--shard must be I/N with 0 <= I < N, got {args.shard!r}')
    args.backbones, args.sizes = (QUICK_BACKBONES, QUICK_SIZES) if args.quick else (BACKBONES, SIZES)
    args.seeds = list((QUICK_SEEDS if args.quick else SEEDS) if args.seeds is None else args.seeds)
    args.command = shown_command(sys.argv[1:] if argv is None else argv, args.runs_dir)
    configs = [(b, m) for m in args.backbones for b in BACKGROUNDS]
    known = {config_key(*c): c for c in configs}
    if args.only is not None:
        unknown = [o for o in args.only if o not in known]
        if unknown:
            p.error(f'--only: unknown configuration(s) {unknown}; valid: {", ".join(known)}')
        args.mine, args.loads = [known[o] for o in args.only], None
    else:
        costs = {c: estimate_seconds(c[1], c[0], args.sizes, len(args.seeds), args.quick) for c in configs}
        args.mine, args.loads = shard(configs, costs, args.shard_index, args.shard_count)
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.shard_count > 1:
        torch.set_num_threads(1)  # one process per core
    header = {'command': args.command,
              'environment': {'python': platform.python_version(), 'torch': torch.__version__,
                              'timm': timm.__version__, 'threads': torch.get_num_threads(),
                              'cpu_count': os.cpu_count()},
              'sizes': args.sizes, 'seeds': list(QUICK_SEEDS if args.quick else SEEDS), 'backgrounds': list(BACKGROUNDS),
              'backbones': {b: {'render_size': r, 'input_size': s, 'model_kwargs': k}
                            for b, (r, s, k) in args.backbones.items()},
              'ood_sets': list(OOD_SETS), 'detectors': list(CELL_DETECTORS), 'baselines': list(BASELINES),
              'logit_baselines': list(LOGIT), 'feature_baselines': list(FEATURE), 'score': SCORE,
              'default_decision': DEFAULT_DECISION, 'choice': CHOICE}
    if args.estimate:
        for c in args.mine:
            minutes = estimate_seconds(c[1], c[0], args.sizes, len(args.seeds), args.quick) / 60
            what = f'{len(args.seeds)} seeds' + (', the smooth stand-in' if c[0] == 'smooth' else '')
            print(f'[converged] {config_key(*c)}: about {minutes:.0f} min of one core ({what})')
        if args.loads:
            print('[converged] shards: ' + ', '.join(f'{i}/{len(args.loads)} {v / 60:.0f} min'
                                                     for i, v in enumerate(args.loads)))
        return None
    existing = read_result(args.out)
    if existing and (existing.get('sizes') != args.sizes or existing.get('backbones') != header['backbones']):
        sys.exit(f'{args.out} was made with other sizes or backbones; use another --out')
    if not args.quick:  # a missing shipped stand-in stops the run before anything is trained
        for background, backbone in args.mine:
            if background == 'natural' and standin_file(backbone) is None:
                sys.exit(f'no weights/{backbone}.safetensors: run `python benchmarks/standin.py {backbone}` first')
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    start = time.time()
    for background, backbone in args.mine:
        with exclusive(args.out, config_key(background, backbone)) as free:
            if not free:
                print(f'[converged] {config_key(background, backbone)}: another process runs it, skipped', flush=True)
                continue
            run_config(args, background, backbone, header)
    print(f'[converged] {args.out} ({time.time() - start:.0f}s)', flush=True)
    return read_result(args.out)


if __name__ == '__main__':
    main()
