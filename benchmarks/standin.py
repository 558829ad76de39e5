"""Train the stand-ins for pretrained weights, resumably, one process per backbone (one core each),
then export them to ``weights/``.

    python benchmarks/standin.py resnet18 mobilenetv3_small_075     # both at once, one core each
    python benchmarks/standin.py resnet18 --export-only              # write weights/ from a finished run
    python benchmarks/standin.py regnety_008 --recipe-dir benchmarks/recipes --output output/regnety/runs \
        --export-dir output/regnety/weights                          # a study's stand-in, not shipped

Each backbone is one ``timm-ssod train -c weights/<backbone>.yaml --resume auto`` run in
``output/standin/<backbone>/``: rerun the same command after an interruption and it goes on from
the last finished epoch (the trainer's resume is exact). The run folder also holds
``standin_run.json``: the command, the commit the recipe was run at and the wall time summed over
every invocation. When a run has all its epochs, its best-validation checkpoint is exported to
``weights/<backbone>.safetensors`` (fp16) with ``weights/<backbone>.json`` beside it
(``lib.export_standin``: ID test accuracy, learning curve, sha256 ...).
"""
import argparse
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _run_one(backbone: str, output: str, extra: list, recipe_dir: str, export_dir: str) -> int:
    """One backbone in this process, on one core: train (resuming), then export."""
    import torch
    torch.set_num_threads(1)
    from lib import export_standin, train_standin
    run = train_standin(backbone, output=output, extra_args=extra, weights_dir=recipe_dir)
    if run['finished']:
        export_standin(run['run_dir'], export_dir)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('backbones', nargs='+', help='recipes in weights/<backbone>.yaml')
    parser.add_argument('--output', default='output/standin', help='where the training runs go')
    parser.add_argument('--export-only', action='store_true', help='export finished runs, train nothing')
    parser.add_argument('--recipe-dir', default=os.path.join(ROOT, 'weights'),
                        help='where <backbone>.yaml is (default weights/; benchmarks/recipes/ holds the unshipped ones)')
    parser.add_argument('--export-dir', default=os.path.join(ROOT, 'weights'),
                        help='where the finished stand-in is written (default weights/, the shipped ones)')
    parser.add_argument('--in-process', action='store_true', help=argparse.SUPPRESS)
    args, extra = parser.parse_known_args(argv)
    if args.export_only:
        from lib import export_standin
        for b in args.backbones:
            export_standin(os.path.join(args.output, b), args.export_dir)
        return 0
    if args.in_process or len(args.backbones) == 1:
        return max(_run_one(b, args.output, extra, args.recipe_dir, args.export_dir) for b in args.backbones)
    # one process per backbone, one thread each: two 1-thread processes do more work than one 2-thread one
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
    os.makedirs(os.path.join(ROOT, 'output'), exist_ok=True)
    procs = []
    for b in args.backbones:
        with open(os.path.join(ROOT, f'output/standin_{b}.log'), 'a') as log:  # the child keeps its own handle
            procs.append(subprocess.Popen([sys.executable, __file__, b, '--in-process', '--output', args.output,
                                           '--recipe-dir', args.recipe_dir, '--export-dir', args.export_dir, *extra],
                                          env=env, stdout=log, stderr=subprocess.STDOUT))
        time.sleep(1)
    return max(p.wait() for p in procs)


if __name__ == '__main__':
    sys.exit(main())
