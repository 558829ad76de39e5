"""``timm-ssod visualize``: the sampler overlay's colours, Fig. 2 and Fig. 6 PNGs from tiny untrained
resnet18 checkpoints (vanilla and SSOD), and the error without matplotlib."""
import sys

import numpy as np
import pytest
import torch

pytest.importorskip('matplotlib')
from PIL import Image  # noqa: E402

import timm_ssod  # noqa: E402
from timm_ssod import cli  # noqa: E402
from timm_ssod import figures as visualize  # noqa: E402
from timm_ssod.cli._visualize import main as visualize_main  # noqa: E402
from timm_ssod.data import SyntheticDataset, write_image_folder  # noqa: E402
from timm_ssod.core import sample_patches  # noqa: E402

IMG = 96  # resnet18 -> a 3x3 map
PANEL_PX, LEGEND_PX = round(visualize.PANEL_INCHES * visualize.DPI), round(visualize.LEGEND_INCHES * visualize.DPI)


@pytest.fixture(scope='module')
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp('viz')
    torch.manual_seed(0)
    model = timm_ssod.create_model('resnet18', num_classes=6)
    args = dict(model='resnet18', gamma=0.9, dataset='synthetic/id', dataset_kwargs=dict(img_size=48),
                input_size=[3, IMG, IMG])
    torch.save({'state_dict': model.state_dict(), 'arch': 'resnet18', 'args': args}, root / 'ssod.pth.tar')
    plain = {k: v for k, v in model.state_dict().items() if not k.startswith('ood_head.')}
    torch.save({'state_dict': plain, 'arch': 'resnet18'}, root / 'vanilla.pth.tar')
    write_image_folder(SyntheticDataset('backgrounds', 'test', num_images=2, img_size=40), str(root / 'photos'))
    return root


def _png_size(path):
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        return im.format, im.size


def test_overlay_colours_follow_the_sampler_labels():
    confidence = torch.tensor([[0.99, 0.50, 0.04], [0.95, 0.0499, 0.051]])
    labels = sample_patches(confidence, gamma=0.95).numpy()
    assert labels.tolist() == [[1, -1, 0], [1, 0, -1]]
    rgba = visualize.label_overlay(labels, alpha=0.4)
    assert rgba.shape == (2, 3, 4)
    expected = {1: (0.0, 0.8, 0.0), 0: (0.9, 0.0, 0.0), -1: (0.55, 0.55, 0.55)}  # green / red / grey
    for (i, j), value in np.ndenumerate(labels):
        np.testing.assert_allclose(rgba[i, j], (*expected[value], 0.4), rtol=1e-6)
    with pytest.raises(ValueError, match='1, 0 or -1'):
        visualize.label_overlay(np.array([[2]]))


def test_location_maps_match_forward_ssod():
    torch.manual_seed(1)
    model = timm_ssod.create_model('resnet18', num_classes=4).eval()
    x = torch.randn(2, 3, 64, 64)
    maps = visualize.location_maps(model, x, targets=[3, -1], gamma=0.6)
    out = model.forward_ssod(x)
    probs = out.patch_logits.softmax(-1)
    assert maps[0].cls == 3 and maps[0].labelled and not maps[1].labelled
    assert maps[1].cls == maps[1].predicted == int(out.logits[1].argmax())
    np.testing.assert_allclose(maps[0].confidence.ravel(), probs[0, :, 3].numpy(), rtol=1e-5)
    assert maps[0].confidence.shape == maps[0].p_id.shape == out.grid == (2, 2)
    np.testing.assert_array_equal(maps[0].labels, sample_patches(torch.from_numpy(maps[0].confidence), 0.6).numpy())


def test_vanilla_vs_ssod_figure_and_histograms(ckpts, capsys):
    out = ckpts / 'out'
    rc = cli.main(['visualize', '--checkpoint', str(ckpts / 'vanilla.pth.tar'), '--compare',
                   str(ckpts / 'ssod.pth.tar'), '--img-size', str(IMG), '-n', '2', '--output', str(out),
                   '--hist', '--ood', 'bg=synthetic/backgrounds', '--hist-samples', '6', '--quiet'])
    assert rc == 0, capsys.readouterr().err
    cols = 1 + 2 + 3  # image | vanilla: confidence, sampler | SSOD: confidence, sampler, P(ID)
    assert _png_size(out / 'sampler.png') == ('PNG', (cols * PANEL_PX, 2 * PANEL_PX + LEGEND_PX))
    fmt, (w, h) = _png_size(out / 'hist_bg.png')  # panels: best of vanilla, ssod and best of SSOD
    assert fmt == 'PNG' and abs(w - 3 * 4.2 * 110) <= 1 and abs(h - 3.4 * 110) <= 1
    assert 'ssod skipped' in capsys.readouterr().out  # the vanilla model has no SSOD score
    assert not list(out.glob('*.partial'))


def test_single_vanilla_model_on_an_image_folder(ckpts):
    out = ckpts / 'out_folder'
    rc = visualize_main(['--checkpoint', str(ckpts / 'vanilla.pth.tar'), '--images', str(ckpts / 'photos'),
                         '--img-size', '64', '--output', str(out), '--name', 'fig.png'])
    assert rc == 0
    assert _png_size(out / 'fig.png') == ('PNG', (3 * PANEL_PX, 2 * PANEL_PX + LEGEND_PX))


def test_clear_error_without_matplotlib(ckpts, monkeypatch, capsys):
    for name in [m for m in sys.modules if m == 'matplotlib' or m.startswith('matplotlib.')]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, 'matplotlib', None)  # import matplotlib -> ImportError
    rc = visualize_main(['--checkpoint', str(ckpts / 'vanilla.pth.tar'), '--output', str(ckpts / 'none')])
    assert rc == 1
    assert 'pip install "timm-ssod[plot]"' in capsys.readouterr().err
    assert not (ckpts / 'none').exists()  # failed before loading anything or writing
