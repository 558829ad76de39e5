"""Training from scratch: SSOD must reach the ID accuracy of the vanilla model on the same data.

Early on no location is >= gamma confident, so the sampler's labels are few and noisy; without
the lambda warm-up of ``timm_ssod.core (_loss)`` this set-up lost about 11 points of ID accuracy (74%
vs 85% after 10 epochs). Each seed trains both arms with the same data, initial weights,
batch order and optimizer: the only difference is the SSOD objective (with its warm-up over
the run), so the per-seed difference isolates what SSOD costs.

Why several seeds and not one run per arm: float results of training differ between CPUs
(instruction sets, oneDNN kernels), so on another machine each run follows another trajectory,
as a new seed would. One run per arm judged on 300 images with a 3-point margin failed on a
fresh machine (70.7% vs 74.0%). Here the claim is tested on the mean of ``len(SEEDS)`` paired
differences on ``TEST`` images, against ``MARGIN``, which is several times the spread of that
mean measured over 8 seeds (see ``MARGIN``) and still far below the 11 points lost without
the warm-up.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import timm_ssod
from timm_ssod.data import SyntheticDataset

SIZE, TRAIN, TEST, EPOCHS, BATCH = 64, 800, 1200, 6, 32
SEEDS = (0, 1, 2)
# Measured with these sizes (``python tests/test_from_scratch.py 8``, 2-core x86, torch 2.14.1),
# seeds 0-7: vanilla 54.6-57.8%, SSOD 53.4-57.1%; paired differences SSOD - vanilla -2.0 to +0.1
# points, mean -1.15, std 0.70, so the mean of 3 seeds has a std of 0.41 points. The margin is
# ten times that (a machine whose kernels change every trajectory still lands far inside it)
# and well below the 11 points SSOD lost from scratch without the warm-up.
MARGIN = 0.04


def tensors(split, n):
    ds = SyntheticDataset('id', split=split, num_images=n, img_size=SIZE)
    x = torch.from_numpy(np.stack([np.asarray(ds[i][0]) for i in range(n)])).permute(0, 3, 1, 2)
    return x.float().div(255).sub(0.5).div(0.25), torch.tensor([ds[i][1] for i in range(n)])


def train_and_test(ssod, data, seed):
    (xtr, ytr), (xte, yte) = data
    torch.manual_seed(seed)
    model = timm_ssod.create_model('test_resnet', ssod=ssod, num_classes=6, output_stride=16)  # 4x4 map
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    updates = EPOCHS * (TRAIN // BATCH)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=updates, pct_start=0.15)
    criterion = timm_ssod.SSODLoss()
    counts = torch.zeros(3)
    for epoch in range(EPOCHS):
        model.train()
        order = torch.randperm(TRAIN, generator=torch.Generator().manual_seed(1000 * seed + epoch))
        for step in range(TRAIN // BATCH):
            idx = order[step * BATCH:(step + 1) * BATCH]
            if ssod:
                scale = timm_ssod.ood_warmup_scale(epoch * (TRAIN // BATCH) + step, updates)
                loss, stats = criterion(model.forward_ssod(xtr[idx]), ytr[idx], scale)
                counts += torch.stack([stats['num_id'], stats['num_ood'], stats['num_ignored']]).float()
            else:
                loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(xte).argmax(1) == yte).float().mean().item()
    return accuracy, counts


def paired_accuracies(seeds):
    data = tensors('train', TRAIN), tensors('test', TEST)
    rows = []
    for seed in seeds:
        vanilla, _ = train_and_test(False, data, seed)
        ssod, counts = train_and_test(True, data, seed)
        rows.append((vanilla, ssod, counts))
    return rows


@pytest.mark.slow
def test_ssod_from_scratch_matches_vanilla_accuracy():
    rows = paired_accuracies(SEEDS)
    diffs = [s - v for v, s, _ in rows]
    for seed, (v, s, c) in zip(SEEDS, rows):
        print(f'seed {seed}: vanilla {v:.3f}, SSOD {s:.3f}; sampled ID/OOD/ignored locations {c.tolist()}')
    print(f'mean paired difference {np.mean(diffs):+.3f} (margin -{MARGIN})')
    assert min(v for v, _, _ in rows) > 0.3  # the set-up learns (chance is 1/6; measured 55-58%)
    assert all(c[0] > 0 and c[1] > 0 for _, _, c in rows)  # the OOD term was active
    assert np.mean(diffs) >= -MARGIN


if __name__ == '__main__':  # measure the spread that MARGIN must exceed: python tests/test_from_scratch.py 8
    import sys
    torch.set_num_threads(1)
    rows = paired_accuracies(range(int(sys.argv[1]) if len(sys.argv) > 1 else 8))
    d = np.array([s - v for v, s, _ in rows])
    print('vanilla', [round(v, 3) for v, _, _ in rows], 'ssod', [round(s, 3) for _, s, _ in rows])
    print(f'paired differences {np.round(d, 3).tolist()}: mean {d.mean():+.4f}, std {d.std(ddof=1):.4f}, '
          f'std of a mean of {len(SEEDS)}: {d.std(ddof=1) / np.sqrt(len(SEEDS)):.4f}')
