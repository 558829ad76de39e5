"""What Eq. 12's sampler feeds the OOD head, on a checkpoint of the built-in benchmark, at
several gammas: ``lib.sampler_alignment`` on ID validation images, as the
checkpoint was trained (its run's ``--img-size`` and ``--dataset-kwargs img_size=...
background=...``).

    timm-ssod demo --output output/demo          # the SSOD checkpoint
    OMP_NUM_THREADS=1 python benchmarks/sampler.py output/demo/finetune_ssod/model_best.pth.tar \\
        benchmarks/sampler_demo.json 0.95 0.9

Prints, per gamma, the share of locations labelled ID / OOD, the object coverage of the OOD
ones, and the images with no ID location: the share of the OOD samples they hold and those
samples' object coverage. Balance ``dr`` (Table 5) trains on none of them, ``lwb`` on all;
``benchmarks/ablations.py`` measures what that changes. About 1 minute on one core. It needs
the built-in benchmark's object masks, so it measures checkpoints trained on it only.
"""
import os
import sys

from timm_ssod.core import check_gamma

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # paths in the JSON: relative to it


def pct(v):
    return 'none' if v is None else f'{100 * v:.1f}%'  # None: a mean over no location


def main(ckpt: str, out: str, gammas, num_images: int = 300):
    import torch
    from timm_ssod._util import atomic_write_text
    from timm_ssod.evaluate import load_eval_model
    from lib import command_line, results_text, sampler_alignment, trained_benchmark

    torch.set_num_threads(1)
    model, info = load_eval_model(checkpoint=ckpt)
    common = dict(trained_benchmark(info['train_args'], ckpt), num_classes=model.num_classes, num_images=num_images,
                  split='val')
    result = {'command': command_line('python benchmarks/sampler.py', sys.argv[1:], ROOT), 'checkpoint': ckpt,
              **common, 'by_gamma': {}}
    for g in gammas:
        r = sampler_alignment(ckpt, gamma=g, **common)
        result['by_gamma'][str(g)] = r
        w = r['images_without_id']
        print(f"gamma {g}: locations ID {pct(r['share']['id'])} / OOD {pct(r['share']['ood'])}, OOD object coverage "
              f"{pct(r['object_coverage']['ood'])}; images with no ID location {pct(w['share_of_images'])}, holding "
              f"{pct(w['share_of_ood_locations'])} of the OOD samples (object coverage "
              f"{pct(w['object_coverage_of_their_ood'])}, the others' {pct(w['object_coverage_of_other_ood'])})",
              flush=True)
    atomic_write_text(out, results_text(result, ROOT))
    print(f'wrote {out}')


if __name__ == '__main__':
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    try:
        gammas = [check_gamma(g) for g in sys.argv[3:]]
    except ValueError as e:
        sys.exit(f'benchmarks/sampler.py: GAMMA: {e}')
    try:
        main(sys.argv[1], sys.argv[2], gammas)
    except (OSError, ValueError) as e:  # no such checkpoint, no args.yaml beside it, another model ...
        sys.exit(f'benchmarks/sampler.py: {e}')
