"""The SSOD model on every timm layout family: shapes, per-location head, Eq. 7/15, timm interop."""
import logging
import warnings

import pytest
import timm
import torch
import torch.nn as nn
from timm.data import resolve_data_config

import timm_ssod
from timm_ssod import UnsupportedBackboneError

from backbones import BACKBONES, POOL_LINEAR_HEADS

NUM_CLASSES = 5


def build(name, ssod=True, **extra):
    kwargs, size = BACKBONES[name]
    torch.manual_seed(0)
    model = timm_ssod.create_model(name, ssod=ssod, num_classes=NUM_CLASSES, **kwargs, **extra).eval()
    return model, torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize('name', BACKBONES)
def test_every_family_forward_ssod_and_predict(name):
    model, x = build(name)
    assert isinstance(model, type(timm.create_model(name, **BACKBONES[name][0])))  # still the timm class
    logits = model(x)
    out = model.forward_ssod(x)
    h, w = out.grid
    assert h * w >= 4
    assert logits.shape == out.logits.shape == (2, NUM_CLASSES)
    assert torch.allclose(logits, out.logits, atol=1e-5)
    assert out.patch_logits.shape == (2, h * w, NUM_CLASSES) and not out.patch_logits.requires_grad
    assert out.patch_ood_logits.shape == (2, h * w, 2) and out.patch_ood_logits.requires_grad
    assert out.ood_logits.shape == (2, 2)

    pred = model.predict(x)
    assert torch.allclose(pred.posterior.sum(1), torch.ones(2), atol=1e-6)
    assert torch.allclose(pred.class_probs.sum(1), torch.ones(2), atol=1e-6)
    assert torch.allclose(pred.posterior[:, :-1], pred.class_probs * pred.id_prob[:, None], atol=1e-6)
    assert torch.allclose(pred.posterior[:, -1], 1 - pred.id_prob, atol=1e-6)
    assert torch.allclose(pred.id_prob, torch.sigmoid(out.ood_logits[:, 1] - out.ood_logits[:, 0]), atol=1e-6)


def _location(model, feats, i, j):
    """The feature at grid cell (i, j), in the backbone's own layout, as a one-location input."""
    if feats.ndim == 3:
        w = int((feats.shape[1] - model.num_prefix_tokens) ** 0.5)
        token = feats[:, model.num_prefix_tokens + i * w + j]
        return token[:, None].expand(-1, model.num_prefix_tokens + 1, -1)
    if getattr(model, 'output_fmt', 'NCHW') == 'NHWC':
        return feats[:, i:i + 1, j:j + 1, :]
    return feats[:, :, i:i + 1, j:j + 1]


@pytest.mark.parametrize('name', BACKBONES)
def test_per_location_logits_are_the_head_on_that_location(name):
    model, x = build(name)
    with torch.no_grad():
        feats = model.forward_features(x)
        out = model.forward_ssod(x)
    h, w = out.grid
    for i, j in [(0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1)]:
        expected = model.forward_head(_location(model, feats, i, j))
        assert torch.allclose(out.patch_logits[:, i * w + j], expected, atol=1e-4), (i, j)


@pytest.mark.parametrize('name, kwargs', [
    ('mobilenetv3_small_050', dict(global_pool='max')),
    ('mobilenetv4_conv_small', dict()),          # MobileNetV3 class, norm_head variant
    ('lcnet_050', dict()),
    ('mobilenetv3_small_050', dict(global_pool='catavgmax')),  # not pointwise after the pool: generic path
])
def test_mobilenet_family_conv_head_on_the_whole_map_matches_each_location(name, kwargs):
    """The MobileNetV3-family fast path (conv_head over the map) gives each location's own head output."""
    model = timm_ssod.create_model(name, num_classes=NUM_CLASSES, **kwargs).eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        feats = model.forward_features(x)
        out = model.forward_ssod(x)
    h, w = out.grid
    assert (h, w) == (3, 3)
    for i in range(h):
        for j in range(w):
            expected = model.forward_head(feats[:, :, i:i + 1, j:j + 1])
            assert torch.allclose(out.patch_logits[:, i * w + j], expected, rtol=1e-5, atol=1e-4), (i, j)


def test_per_location_pass_in_training_leaves_head_batchnorm_statistics_to_the_pooled_pass():
    """MobileNetV4's head has a BatchNorm after the pool: training SSOD must update its running
    statistics exactly as plain training does (from the pooled features only), and hand every
    module its training flag back."""
    torch.manual_seed(0)
    ssod = timm_ssod.create_model('mobilenetv4_conv_small', num_classes=NUM_CLASSES).train()
    plain = timm.create_model('mobilenetv4_conv_small', num_classes=NUM_CLASSES).train()
    plain.load_state_dict({k: v for k, v in ssod.state_dict().items() if not k.startswith('ood_head.')})
    x = torch.randn(4, 3, 96, 96)
    out = ssod.forward_ssod(x)
    plain(x)
    assert out.patch_logits.shape == (4, 9, NUM_CLASSES)
    for k, v in plain.norm_head.state_dict().items():
        assert torch.equal(ssod.norm_head.state_dict()[k], v), k
    assert all(m.training for m in ssod.modules())


@pytest.mark.parametrize('name', ['resnet18', 'mobilenetv3_large_100', 'vit_tiny_patch16_224'])
def test_per_location_confidences_have_no_dropout_noise_in_training(name):
    """With head dropout (timm's drop_rate), the sampler's per-location logits are those of the
    model at inference, not a random draw."""
    model, x = build(name, drop_rate=0.9)
    with torch.no_grad():
        expected = model.forward_ssod(x).patch_logits
        model.train()
        first, second = model.forward_ssod(x).patch_logits, model.forward_ssod(x).patch_logits
    assert torch.allclose(first, second) and model.training
    if name.startswith('vit'):  # no BatchNorm: the backbone's train-mode features are its eval-mode ones
        assert torch.allclose(first, expected, atol=1e-5)


@pytest.mark.parametrize('name', POOL_LINEAR_HEADS)
def test_mean_of_per_location_logits_equals_pooled_logits(name):
    model, x = build(name)
    out = model.forward_ssod(x)
    assert torch.allclose(out.patch_logits.mean(1), out.logits, atol=1e-4)
    # the linear OOD head commutes with pooling too
    assert torch.allclose(out.patch_ood_logits.mean(1), out.ood_logits, atol=1e-5)


def test_non_square_input_grid_for_vit():
    model = timm_ssod.create_model('vit_tiny_patch16_224', num_classes=3, img_size=(32, 64), depth=1,
                                   dynamic_img_size=True).eval()
    out = model.forward_ssod(torch.randn(1, 3, 32, 64))
    assert out.grid == (2, 4)


def test_state_dict_round_trip_with_plain_timm_model():
    ssod, x = build('resnet18')
    plain = timm.create_model('resnet18', num_classes=NUM_CLASSES).eval()
    sd = ssod.state_dict()
    ood_keys = {k for k in sd if k.startswith('ood_head.')}
    assert ood_keys and set(sd) - ood_keys == set(plain.state_dict())
    plain.load_state_dict({k: v for k, v in sd.items() if k not in ood_keys})  # strict
    assert torch.allclose(plain(x), ssod(x))
    # and a plain timm checkpoint fine-tunes into SSOD: only the OOD head is missing
    fresh = timm_ssod.create_model('resnet18', num_classes=NUM_CLASSES).eval()
    result = fresh.load_state_dict(plain.state_dict(), strict=False)
    assert set(result.missing_keys) == ood_keys and not result.unexpected_keys
    assert torch.allclose(fresh(x), plain(x))


def test_ssod_false_is_plain_timm_and_data_config_is_the_backbones():
    plain = timm_ssod.create_model('resnet18', ssod=False, num_classes=3)
    assert type(plain) is type(timm.create_model('resnet18'))
    assert not timm_ssod.is_ssod_model(plain)
    ssod = timm_ssod.create_model('resnet18', num_classes=3)
    assert timm_ssod.is_ssod_model(ssod)
    assert ssod.pretrained_cfg == plain.pretrained_cfg
    assert resolve_data_config(model=ssod) == resolve_data_config(model=plain)
    assert ssod.ssod_cfg['backbone'] == 'resnet18'


def test_timm_kwargs_pass_through():
    model = timm_ssod.create_model('resnet18', num_classes=7, drop_rate=0.3, output_stride=16, in_chans=1)
    assert model.num_classes == 7 and model.drop_rate == 0.3
    out = model.eval().forward_ssod(torch.randn(1, 1, 64, 64))
    assert out.grid == (4, 4)  # stride 16 instead of 32


def test_ood_hidden_layer_option():
    model = timm_ssod.create_model('resnet18', num_classes=3, ood_hidden=16).eval()
    assert model.ood_head.net[0].out_features == 16
    assert model.predict(torch.randn(1, 3, 64, 64)).id_prob.shape == (1,)


def test_one_by_one_feature_map_works_with_a_warning():
    model = timm_ssod.create_model('resnet18', num_classes=3).eval()
    with pytest.warns(UserWarning, match='1x1'):
        out = model.forward_ssod(torch.randn(2, 3, 32, 32))
    assert out.grid == (1, 1)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        model.predict(torch.randn(2, 3, 32, 32))  # warned once per model


def test_backbone_without_spatial_features_is_refused_by_name():
    class Pooled(nn.Module):
        num_features = 4
        pretrained_cfg = {}

        def forward_features(self, x):
            return x.mean((2, 3)).repeat(1, 2)[:, :4]

        def forward_head(self, x, pre_logits=False):
            return x

    model = timm_ssod.attach_ssod(Pooled())
    with pytest.raises(UnsupportedBackboneError, match='Pooled.*spatial feature map'):
        model.forward_ssod(torch.randn(1, 3, 8, 8))


def test_wrong_input_channels_names_the_problem():
    model, _ = build('resnet18')
    with pytest.raises(RuntimeError, match='channels'):
        model.forward_ssod(torch.randn(1, 1, 64, 64))


def test_attach_twice_is_refused():
    model, _ = build('resnet18')
    with pytest.raises(ValueError, match='already'):
        timm_ssod.attach_ssod(model)


def test_pretrained_offline_says_how_to_pass_a_local_file(monkeypatch):
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
    with pytest.raises(OSError, match='pretrained_cfg_overlay=dict\\(file='):
        timm_ssod.create_model('resnet18', pretrained=True)


def test_checkpoint_path_loads_a_training_checkpoint_into_the_ssod_model(tmp_path, caplog):
    """timm loads checkpoint_path before the OOD head exists: "Unexpected key(s) ood_head.net.weight"
    (issue 15). The head is attached first, its width read from the file; class names come along."""
    torch.manual_seed(0)
    model = timm_ssod.create_model('test_resnet', num_classes=3, ood_hidden=8)
    torch.save({'state_dict': model.state_dict(), 'arch': 'test_resnet', 'args': {'model': 'test_resnet'},
                'label_names': ['cat', 'dog', 'fox']}, tmp_path / 'model_best.pth.tar')
    loaded = timm_ssod.create_model('test_resnet', num_classes=3, checkpoint_path=str(tmp_path / 'model_best.pth.tar'))
    assert loaded.ssod_cfg['ood_hidden'] == 8
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())
    assert loaded.pretrained_cfg['label_names'] == ['cat', 'dog', 'fox']
    a, b, c, d, p_value, is_ood = pred = loaded.eval().predict(torch.randn(2, 3, 64, 64))
    assert p_value is None and is_ood is None  # no calibration: no decision
    assert pred.label_names == ('cat', 'dog', 'fox') and pred.labels == [['cat', 'dog', 'fox'][i] for i in
                                                                           b.argmax(-1).tolist()]

    plain = timm.create_model('test_resnet', num_classes=3)
    torch.save(plain.state_dict(), tmp_path / 'plain.pth')
    with caplog.at_level(logging.WARNING):
        fresh = timm_ssod.create_model('test_resnet', num_classes=3, checkpoint_path=str(tmp_path / 'plain.pth'))
    assert torch.equal(fresh.fc.weight, plain.fc.weight) and 'holds no OOD head' in caplog.text
    assert timm_ssod.create_model('test_resnet', num_classes=3, checkpoint_path=str(tmp_path / 'plain.pth')
                                  ).predict(torch.randn(1, 3, 64, 64)).labels in (['0'], ['1'], ['2'])
    with pytest.raises(RuntimeError, match='size mismatch for fc.weight'):
        timm_ssod.create_model('test_resnet', num_classes=5, checkpoint_path=str(tmp_path / 'plain.pth'))
    with pytest.raises(FileNotFoundError, match="checkpoint_path '.*nope.pth': no such file"):
        timm_ssod.create_model('test_resnet', checkpoint_path=str(tmp_path / 'nope.pth'))


def test_unknown_model_name_suggests_the_closest_timm_names():
    with pytest.raises(RuntimeError, match=r"Unknown model \(resnet10\); did you mean resnet10t.*list_models"):
        timm_ssod.create_model('resnet10')


@pytest.mark.parametrize('name, close', [('resnt10t', 'resnet10t'), ('convnxt_tiny', 'convnext_tiny'),
                                         ('xyzzy', None), ('foo_bar', None)])
def test_unknown_model_hint_never_suggests_an_empty_wildcard(name, close):
    """Issue 24.11: 'resnt10t' was answered with timm.list_models('*resnt10t*'), which is empty."""
    import re
    with pytest.raises(RuntimeError) as e:
        timm_ssod.create_model(name)
    message = str(e.value)
    assert message.startswith(f'Unknown model ({name})') and '\n' not in message
    if close:
        assert f'did you mean {close}' in message
    for pattern in re.findall(r"list_models\('([^']*)'\)", message):
        assert timm.list_models(pattern), f'{pattern!r} lists no model: {message}'
    assert 'list_models(' in message


def test_warnings_name_the_users_line_not_a_library_line():
    """Issue 24.13: the 1x1 warning (raised deep in forward) pointed at a line of the library."""
    model = timm_ssod.create_model('resnet18', num_classes=3).eval()
    with pytest.warns(UserWarning, match='1x1') as caught:
        model.predict(torch.randn(1, 3, 32, 32))  # through predict, forward_ssod and timm's forward_features
    assert [w.filename for w in caught] == [__file__]


def test_cli_prints_a_warning_as_one_line_without_a_source_line():
    """Issue 24.13: under ``timm-ssod`` a warning showed a source line (the console script's
    ``sys.exit(main())``, or a line of the library); now one line naming the command."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    script = ('import warnings\n'
              'import timm_ssod.cli._push as push\n'
              'def fake(args):\n'
              '    warnings.warn("vim: fitted on too few images")\n'
              '    return 0\n'
              'push._push = fake\n'
              'from timm_ssod.cli import main\n'
              'raise SystemExit(main(["push", "run", "org/name"]))\n')
    proc = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1], env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == 'timm-ssod push: warning: vim: fitted on too few images\n'


def test_pretrained_local_file_loads_backbone_weights(tmp_path):
    from safetensors.torch import save_file
    plain = timm.create_model('resnet18', num_classes=4)
    save_file(plain.state_dict(), tmp_path / 'w.safetensors')
    model = timm_ssod.create_model('resnet18', pretrained=True, num_classes=4,
                                   pretrained_cfg_overlay=dict(file=str(tmp_path / 'w.safetensors'), num_classes=4))
    x = torch.randn(1, 3, 64, 64)
    assert torch.allclose(model.eval()(x), plain.eval()(x))


def test_deepcopy_keeps_ssod_class():
    import copy
    model, x = build('resnet18')
    twin = copy.deepcopy(model)
    assert type(twin) is type(model) and torch.allclose(twin.predict(x).id_prob, model.predict(x).id_prob)


def test_torch_compile_forward_path():
    torch._dynamo.reset()
    model = timm_ssod.create_model('test_resnet', num_classes=3).eval()  # timm's tiny test net
    x = torch.randn(2, 3, 64, 64)
    compiled = torch.compile(model, backend='inductor')
    with torch.no_grad():
        assert torch.allclose(compiled(x), model(x), atol=1e-4)
        out = torch.compile(model.forward_ssod, backend='inductor')(x)
        assert torch.allclose(out.ood_logits, model.forward_ssod(x).ood_logits, atol=1e-4)
