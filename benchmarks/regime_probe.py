"""Why does the SSOD score fail where it fails? A probe of the OOD head, location by location.

The regime study (``benchmarks/regime.py``) scores every cell with the SSOD score (Eq. 15: the
OOD head on the pooled feature) and with ``ssod_patch_max`` (the most-ID location). This probe
goes one step further on chosen configurations of that grid: it repeats the cell's SSOD
fine-tune exactly (same shared stage 1, sizes, seed; ``run_protocol`` with the vanilla arm
skipped), keeps the checkpoint, and runs ``lib.location_probe``: the mean
per-location P(ID) of the head on ID object cells, ID background cells and on every cell of each
OOD set's images, and the AUROC of three aggregations (pooled head, mean of locations,
most-ID location). When all three aggregations fail on a set whose cells get as high a P(ID) as
ID object cells, the head itself misjudges those images: pooling is not the cause.

    python benchmarks/regime_probe.py natural/native/resnet10t smooth/native/resnet10t   # ~4 min each on 1 core
    python benchmarks/make_tables.py --docs                # the probe's table (docs/study/regime.md)

Needs the configuration's stage 1 from ``regime.py`` (its marker under --runs-dir). Writes
``benchmarks/regime_probe.json`` (or --out) after every configuration; a rerun skips the ones
already there. Runs made apart (other seeds, one process per core) are joined, with their
commands, by ``python benchmarks/regime_probe.py --merge A.json B.json --out OUT.json``.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # regime.py, beside this script, however it is loaded
from regime import BACKGROUNDS, QUICK_SCALES, QUICK_SIZES, SCALES, SIZES, add_entry, locked, shared_stage1  # noqa: E402

from timm_ssod._util import atomic_write_text
from timm_ssod.data import OOD_SETS
from lib import command_line, location_probe, read_result, results_text, run_protocol

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)  # paths in the JSON are relative to the repository


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('configs', nargs='*', metavar='BACKGROUND/SCALE/BACKBONE')
    p.add_argument('--seed', type=int, default=0, help="the cell's fine-tuning seed")
    p.add_argument('--num-images', type=int, default=300, help='ID test images and images per OOD set')
    p.add_argument('--out', default=os.path.join(HERE, 'regime_probe.json'))
    p.add_argument('--runs-dir', default='./output/benchmarks/regime', help="regime.py's training runs")
    p.add_argument('--quick', action='store_true', help="regime.py --quick's tiny model and sizes (tests)")
    p.add_argument('--merge', nargs='+', metavar='JSON', default=None,
                   help='combine the cells of probe runs (other seeds or configurations) into --out (trains nothing)')
    args = p.parse_args(argv)
    if not args.configs and not args.merge:
        p.error('name at least one configuration (or --merge JSON files)')
    args.scales, args.sizes = (QUICK_SCALES, QUICK_SIZES) if args.quick else (SCALES, SIZES)
    for c in args.configs:
        parts = c.split('/')
        if len(parts) != 3 or parts[0] not in BACKGROUNDS or parts[1] not in args.scales \
                or parts[2] not in args.scales[parts[1]]:
            p.error(f'unknown configuration {c!r}: BACKGROUND/SCALE/BACKBONE with background in {BACKGROUNDS}, '
                    f'scale in {list(args.scales)}, backbone in {list(args.scales["native"])}')
    return args


def add_command(path, command):
    """Record ``command`` in the JSON at ``path`` beside the earlier ones that added cells to it
    ("; "-joined), so that the file names every run behind its cells."""
    with locked(path):
        data = read_result(path)
        if command not in data['command'].split('; '):
            data['command'] += '; ' + command
            atomic_write_text(path, results_text(data, ROOT))


def merge(paths):
    """One probe result from runs with the same sizes and OOD sets; a cell in two files is refused."""
    parts = [(path, read_result(path)) for path in paths]
    missing = [path for path, d in parts if d is None]
    if missing:
        sys.exit(f'--merge: no such file: {", ".join(missing)}')
    first = parts[0][1]
    commands = [c for _, d in parts for c in d['command'].split('; ')]
    out = {'command': '; '.join(dict.fromkeys(commands)), 'sizes': first['sizes'],
           'ood_sets': first['ood_sets'], 'from_scratch': {}, 'cells': {}}
    for path, d in parts:
        if (d['sizes'], d['ood_sets']) != (first['sizes'], first['ood_sets']):
            sys.exit(f'--merge: {path} has other sizes or OOD sets than {paths[0]}')
        for key, cell in d['cells'].items():
            if key in out['cells']:
                sys.exit(f'--merge: cell {key} is in more than one file ({path})')
            out['cells'][key] = cell
    return out


def main(argv=None):
    args = parse_args(argv)
    if args.merge:
        out = merge(args.merge)
        atomic_write_text(args.out, results_text(out, ROOT))
        print(f'merged {len(out["cells"])} cells into {args.out}')
        return out
    scales, sizes = args.scales, args.sizes
    command = command_line('python benchmarks/regime_probe.py', sys.argv[1:] if argv is None else argv, ROOT)
    header = {'command': command,
              'sizes': sizes, 'ood_sets': list(OOD_SETS)}
    for config in args.configs:
        key = f'{config}/seed{args.seed}'
        if key in (read_result(args.out) or {}).get('cells', {}):
            print(f'[probe] {key}: in {args.out}, skipped', flush=True)
            continue
        background, scale, backbone = config.split('/')
        render, size, kwargs = scales[scale][backbone]
        t = time.time()
        stage1 = shared_stage1(args, background, backbone, sizes, scales)
        record = run_protocol(backbone, kwargs, size, sizes['num_images'], sizes['stage1_epochs'],
                              sizes['finetune_epochs'], args.seed, detectors=('ssod',), vanilla=False,
                              out_dir=os.path.join(os.path.abspath(args.runs_dir), 'probe', config, f'seed{args.seed}'),
                              stage1_checkpoint=stage1['checkpoint'], progress=False, render_size=render,
                              background=background, **{k: sizes[k] for k in ('num_val', 'num_test', 'num_ood',
                                                                              'num_fit', 'batch_size', 'lr',
                                                                              'finetune_lr')})
        probe = location_probe(record['finetune']['ssod']['checkpoint'], img_size=size, num_classes=6,
                               num_images=args.num_images, render_size=render, background=background)
        entry = {'background': background, 'scale': scale, 'backbone': backbone, 'seed': args.seed,
                 'render_size': render, 'input_size': size, 'grid': record['sampler_alignment']['grid'],
                 'id_accuracy': record['table']['id_accuracy'], 'probe': probe, 'seconds': round(time.time() - t, 1)}
        add_entry(args.out, 'cells', key, entry, dict(header, from_scratch={}))
        add_command(args.out, header['command'])
        pooled = {s: round(100 * v['auroc']['pooled head (Eq. 15)'], 1) for s, v in probe['ood'].items()}
        print(f'[probe] {key}: pooled-head AUROC {pooled} ({time.time() - t:.0f}s)', flush=True)


if __name__ == '__main__':
    main()
