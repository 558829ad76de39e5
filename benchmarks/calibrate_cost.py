"""What the whole ``timm-ssod calibrate`` command costs with each decision, on this machine: the issue-22
target "calibrate at most 2x today's time", today being the earlier default (``--select all``:
Fisher over ssod, mahalanobis and energy).

    python benchmarks/calibrate_cost.py CHECKPOINT --out benchmarks/calibrate_cost.json
    python benchmarks/calibrate_cost.py CHECKPOINT --variants "--select all" "" "--evidence-images 250"

Each variant is the same command (``--dataset synthetic/id`` rendered as the checkpoint was trained
unless ``--data`` says otherwise, ``--fit-samples``, ``--calib-samples``) with the variant's flags
added, run as its own process (``python -m timm_ssod.cli calibrate``: imports, model load, rendering,
the fit, the calibration pass, the save), ``--repeats`` times in turn (variant after variant, so a
drift of the machine touches every variant alike); the median wall time, and its ratio to the first
variant. The JSON is written after every run. Measure on idle cores: the timings are of whatever
else the machine is doing.
"""
import argparse
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

import timm
import torch

from timm_ssod._util import atomic_write_text
from lib import command_line, results_text

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
VARIANTS = ('--select all', '', '--evidence-images 250')


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('checkpoint', help='a training checkpoint of an SSOD model')
    p.add_argument('--variants', nargs='+', default=list(VARIANTS), metavar='FLAGS',
                   help='calibrate flags per variant, the first the baseline ("" = the defaults)')
    p.add_argument('--data', default='--dataset synthetic/id --dataset-kwargs num_images=2000 img_size=64 '
                                      'background=natural',
                   help='the ID data flags of every variant')
    p.add_argument('--fit-samples', type=int, default=2000)
    p.add_argument('--calib-samples', type=int, default=500)
    p.add_argument('--repeats', type=int, default=1)
    p.add_argument('--out', default=os.path.join(HERE, 'calibrate_cost.json'))
    return p.parse_args(argv)


def command(args, variant, save_dir):
    return [sys.executable, '-m', 'timm_ssod.cli', 'calibrate', args.checkpoint, *shlex.split(args.data),
            '--fit-samples', str(args.fit_samples), '--calib-samples', str(args.calib_samples), '--quiet',
            *shlex.split(variant), '--save-dir', save_dir]


def main(argv=None):
    args = parse_args(argv)
    if args.repeats < 1:
        sys.exit(f'--repeats must be >= 1, got {args.repeats}')
    if not os.path.isfile(args.checkpoint):
        sys.exit(f'no checkpoint {args.checkpoint}')
    given = sys.argv[1:] if argv is None else argv  # quoted: a variant is several words, or none
    out = {'command': command_line('python benchmarks/calibrate_cost.py', [shlex.quote(a) for a in given], ROOT),
           'environment': {'python': platform.python_version(), 'torch': torch.__version__, 'timm': timm.__version__,
                           'cpu_count': os.cpu_count(), 'load_average_before': list(os.getloadavg())},
           'checkpoint': args.checkpoint, 'data': args.data, 'fit_samples': args.fit_samples,
           'calib_samples': args.calib_samples, 'variants': {v: {'seconds': []} for v in args.variants}}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for i, variant in enumerate(args.variants):
                cmd = command(args, variant, os.path.join(tmp, f'v{i}_r{r}'))
                start = time.perf_counter()
                done = subprocess.run(cmd, capture_output=True, text=True)
                seconds = time.perf_counter() - start
                if done.returncode:
                    sys.exit(f'calibrate {variant!r} failed ({done.returncode}):\n{done.stderr[-2000:]}')
                kept = [line for line in done.stdout.splitlines() if line.startswith('Components kept')]
                rec = out['variants'][variant]
                rec['seconds'].append(round(seconds, 2))
                rec['median_seconds'] = statistics.median(rec['seconds'])
                rec['kept'] = kept[0] if kept else None
                base = out['variants'][args.variants[0]].get('median_seconds')
                for v in out['variants'].values():
                    if 'median_seconds' in v and base:
                        v['ratio'] = round(v['median_seconds'] / base, 3)
                print(f'[calibrate cost] {variant or "(defaults)"!s}: {seconds:.1f}s'
                      + (f' ({rec["ratio"]:.2f}x the first)' if 'ratio' in rec else ''), flush=True)
                out['environment']['load_average_after'] = list(os.getloadavg())
                atomic_write_text(args.out, results_text(out, ROOT))
    return out


if __name__ == '__main__':
    main()
