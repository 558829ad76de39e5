"""Detectors: formulas on hand-made outputs, streaming fit == one-shot fit, and every
detector end to end on tiny timm models (pretrained=False, 32x32 inputs)."""
import math
import warnings

import numpy as np
import pytest
import timm
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

import timm_ssod
from timm_ssod.detectors import (DETECTORS, KNN, MSP, ODIN, SSOD, SSODMSP, Energy, KLMatching,
                                 Mahalanobis, MaxLogit, ModelOutputs, NotFittedError, ReAct, ViM,
                                 apply_classifier, compute_outputs, create_detector)



def _tiny(name, **kwargs):
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=3, **kwargs).eval()


def _outputs(n=60, d=16, m=4, seed=0, with_ood=False):
    """Random outputs with a fixed Linear classifier, plus labels."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, m, (n,), generator=g)
    centers = 3 * torch.randn(m, d, generator=g)
    features = centers[labels] + torch.randn(n, d, generator=g)
    torch.manual_seed(seed)
    fc = nn.Linear(d, m)
    with torch.no_grad():
        logits = fc(features)
    ood = torch.randn(n, 2, generator=g) if with_ood else None
    return ModelOutputs(features, logits, ood, fc), labels


def _split(outputs, labels, sizes):
    batches, start = [], 0
    for s in sizes:
        sl = slice(start, start + s)
        ood = None if outputs.ood_logits is None else outputs.ood_logits[sl]
        batches.append((ModelOutputs(outputs.features[sl], outputs.logits[sl], ood, outputs.classifier),
                        labels[sl]))
        start += s
    assert start == len(labels)
    return batches


# -- outputs --------------------------------------------------------------------------------

@pytest.mark.parametrize('name,kwargs', [
    ('resnet18', {}),
    ('vit_tiny_patch16_224', dict(img_size=32)),
    ('convnext_atto', {}),
    ('mobilenetv3_small_050', {}),
])
def test_outputs_match_timm(name, kwargs):
    model = _tiny(name, **kwargs)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = compute_outputs(model, x)
        f = model.forward_features(x)
        assert torch.allclose(out.logits, model.forward_head(f), atol=1e-5)
        assert torch.allclose(apply_classifier(model, out.features), model.forward_head(f), atol=1e-5)
        assert torch.allclose(out.classifier(out.features), out.logits, atol=1e-5)
        assert torch.allclose(out.logits, model(x), atol=1e-5)
    # pre-logits width: head_hidden_size where the head has its own layer (MobileNetV3)
    width = getattr(model, 'head_hidden_size', None) or model.num_features
    assert out.features.shape == (2, width)
    assert out.logits.shape == (2, 3) and out.ood_logits is None


def test_distilled_deit_outputs():
    model = _tiny('deit_tiny_distilled_patch16_224', img_size=32)
    assert isinstance(model.get_classifier(), tuple)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = compute_outputs(model, x)
        tokens = model.forward_features(x)
        # logits: what the model predicts at eval, the mean of the two token heads
        assert torch.allclose(out.logits, model(x), atol=1e-5)
        assert torch.allclose(out.logits, (model.head(tokens[:, 0]) + model.head_dist(tokens[:, 1])) / 2, atol=1e-5)
        # features: timm's pre_logits, the mean of the class and distillation tokens
        assert torch.allclose(out.features, tokens[:, :2].mean(dim=1), atol=1e-5)
        # the last layer on features: mean of both heads (affine stand-in used by ReAct/ViM)
        expected = (model.head(out.features) + model.head_dist(out.features)) / 2
        assert torch.allclose(apply_classifier(model, out.features), expected, atol=1e-5)
    assert out.features.shape == (2, model.num_features) and out.logits.shape == (2, 3)


# -- logit-based scores -----------------------------------------------------------------------

def test_msp_maxlogit_energy():
    out, _ = _outputs()
    assert torch.allclose(MSP().score_outputs(out), out.logits.softmax(-1).max(-1).values)
    assert torch.allclose(MaxLogit().score_outputs(out), out.logits.max(-1).values)
    assert torch.allclose(Energy().score_outputs(out), torch.logsumexp(out.logits, -1))
    t = 2.5
    assert torch.allclose(Energy(temperature=t).score_outputs(out), t * torch.logsumexp(out.logits / t, -1))


# -- KNN ----------------------------------------------------------------------------------------

def test_knn_training_point_at_distance_zero():
    out, labels = _outputs()
    det = KNN(k=1).fit_outputs([(out, labels)])
    assert torch.allclose(det.score_outputs(out), torch.zeros(len(labels)), atol=1e-3)
    far = ModelOutputs(-out.features[:3], out.logits[:3])
    assert (det.score_outputs(far) < -0.1).all()


def test_knn_chunked_equals_brute_force():
    out, labels = _outputs(n=50)
    query, _ = _outputs(n=11, seed=3)
    det = KNN(k=4, query_chunk=3, bank_chunk=7).fit_outputs(_split(out, labels, [20, 30]))
    bank = nn.functional.normalize(out.features, dim=-1)
    q = nn.functional.normalize(query.features, dim=-1)
    expected = torch.cdist(q.double(), bank.double()).sort(dim=1).values[:, 3]
    assert torch.allclose(det.score_outputs(query).double(), -expected, atol=1e-4)


def test_knn_small_bank_warns():
    out, labels = _outputs(n=5)
    with pytest.warns(UserWarning, match='fewer than k=50'):
        det = KNN().fit_outputs([(out, labels)])
    assert det.k_used == 5 and det.score_outputs(out).shape == (5,)


# -- Mahalanobis --------------------------------------------------------------------------------

def test_mahalanobis_class_mean_scores_zero():
    out, labels = _outputs()
    det = Mahalanobis().fit_outputs([(out, labels)])
    means = torch.stack([out.features[labels == c].mean(0) for c in range(4)])
    scores = det.score_outputs(ModelOutputs(means, out.logits[:4]))
    assert torch.allclose(scores, torch.zeros(4), atol=1e-6)
    assert (det.score_outputs(out) <= 1e-6).all()


def test_mahalanobis_matches_numpy():
    out, labels = _outputs()
    det = Mahalanobis().fit_outputs([(out, labels)])
    f, y = out.features.double().numpy(), labels.numpy()
    mu = np.stack([f[y == c].mean(0) for c in range(4)])
    centred = f - mu[y]
    prec = np.linalg.pinv(centred.T @ centred / len(f))
    diff = f[:, None, :] - mu[None]
    expected = -np.einsum('ncd,de,nce->nc', diff, prec, diff).min(1)
    assert np.allclose(det.score_outputs(out).numpy(), expected, rtol=1e-5, atol=1e-5)


# -- ReAct ----------------------------------------------------------------------------------------

def test_react_huge_threshold_is_energy():
    out, _ = _outputs()
    assert torch.allclose(ReAct(threshold=1e9).score_outputs(out), Energy().score_outputs(out))


def test_react_threshold_is_numpy_percentile():
    out, labels = _outputs()
    det = ReAct().fit_outputs(_split(out, labels, [25, 35]))
    assert det.threshold == pytest.approx(np.percentile(out.features.numpy(), 90), rel=1e-6)
    clipped = out.features.clamp(max=det.threshold)
    assert torch.allclose(det.score_outputs(out), torch.logsumexp(out.classifier(clipped), -1))


def test_react_reservoir_estimate():
    g = torch.Generator().manual_seed(1)
    values = torch.rand(40, 5000, generator=g)  # 200k values from U(0, 1): p90 = 0.9
    det = ReAct(reservoir_size=20000).fit_outputs(
        [ModelOutputs(v, torch.zeros(len(v), 2)) for v in values.split(8)])
    assert det.threshold == pytest.approx(0.9, abs=0.01)


# -- ViM ------------------------------------------------------------------------------------------

def test_vim_hand_checked():
    # W picks the first two dims, b = [1, -2]: u = -pinv(W) b = [-1, 2, 0, 0], and
    # logits(u + g) = W g. Around u the 4 ID features are g = 4e1, 3e2, 1e3, 2e4: the
    # scatter is diag(16, 9, 1, 4) / 4, the principal space (dim 2) is span(e1, e2), the
    # residuals are 0, 0, 1, 2 (sum 3), the max logits 4, 3, 0, 0 (sum 7): alpha = 7 / 3.
    # Query u + (1, 1, 3, 4): residual 5, logits (1, 1), score = log(2e) - 35 / 3.
    fc = nn.Linear(4, 2)
    with torch.no_grad():
        fc.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]))
        fc.bias.copy_(torch.tensor([1.0, -2.0]))
    u = torch.tensor([-1.0, 2.0, 0, 0])
    g = torch.tensor([[4.0, 0, 0, 0], [0, 3.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 2.0]])
    feats = u + g
    q = (u + torch.tensor([1.0, 1, 3, 4]))[None]
    with torch.no_grad():
        train = ModelOutputs(feats, fc(feats), None, fc)
        query = ModelOutputs(q, fc(q), None, fc)
    assert torch.allclose(query.logits, torch.tensor([[1.0, 1.0]]))
    det = ViM(dim=2).fit_outputs([train])
    assert torch.allclose(det.u.float(), u, atol=1e-6)
    assert det.alpha == pytest.approx(7 / 3)
    assert det.score_outputs(query).item() == pytest.approx(1 + math.log(2) - 35 / 3, abs=1e-5)


def test_vim_fitted_on_fewer_images_than_dimensions_warns_what_it_needs():
    """16 images of 64-dim features: the residual on ID data is ~0 and the scores explode
    (about -1e11 on a real model, issue 15); the fit says so and what it needs."""
    out, labels = _outputs(n=16, d=64)
    with pytest.warns(UserWarning, match=r'vim: fitted on 16 ID images, fewer than the 64 feature dimensions.*'
                                         r'Fit on at least 64 images'):
        ViM().fit_outputs([(out, labels)])
    enough, labels = _outputs(n=80, d=64)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        ViM().fit_outputs([(enough, labels)])


def test_vim_default_dim():
    from timm_ssod.detectors import principal_dim
    assert principal_dim(2048) == 1000 and principal_dim(768) == 512 and principal_dim(512) == 256


def test_vim_needs_reiterable():
    out, labels = _outputs()
    with pytest.raises(TypeError, match='re-iterable'):
        ViM().fit_outputs(iter([(out, labels)]))


# -- streaming fit == one-shot fit ------------------------------------------------------------------

@pytest.mark.parametrize('make', [Mahalanobis, lambda: ViM(dim=8), KLMatching, ReAct],
                         ids=['mahalanobis', 'vim', 'klm', 'react'])
def test_streaming_fit_equals_one_shot(make):
    out, labels = _outputs()
    query, _ = _outputs(n=25, seed=5)
    one = make().fit_outputs([(out, labels)])
    many = make().fit_outputs(_split(out, labels, [7, 13, 1, 20, 19]))
    assert torch.allclose(one.score_outputs(query), many.score_outputs(query), rtol=1e-5, atol=1e-5)


# -- ODIN -----------------------------------------------------------------------------------------

def test_odin_leaves_no_grads_and_works_under_no_grad():
    model = _tiny('resnet18')
    x = torch.randn(4, 3, 32, 32)
    det = ODIN()
    with torch.no_grad():
        scores = det.score(model, x)
    assert scores.shape == (4,) and torch.isfinite(scores).all()
    assert all(p.grad is None for p in model.parameters())
    # eps = 0 is temperature-scaled MSP; the perturbation moves the score up (ID direction)
    with torch.no_grad():
        plain = (model(x) / 1000).softmax(-1).max(-1).values
    assert torch.allclose(ODIN(eps=0).score(model, x), plain)
    assert (ODIN(eps=0.01).score(model, x) >= plain - 1e-7).all()
    with pytest.raises(NotImplementedError, match='score\\(model, x\\)'):
        det.score_outputs(compute_outputs(model, x))


# -- SSOD -----------------------------------------------------------------------------------------

def test_ssod_scores():
    out, _ = _outputs(with_ood=True)
    l0, l1 = out.ood_logits[:, 0], out.ood_logits[:, 1]
    p_id = torch.sigmoid(l1 - l0)
    assert torch.allclose(SSOD().score_outputs(out), p_id)
    assert torch.allclose(SSODMSP().score_outputs(out), out.logits.softmax(-1).max(-1).values * p_id)


def test_ssod_needs_ssod_model():
    model = _tiny('resnet18')
    x = torch.randn(2, 3, 32, 32)
    for det in (SSOD(), SSODMSP()):
        with pytest.raises(ValueError, match='needs an SSOD model'):
            det.score(model, x)


def test_ssod_with_real_ssod_model():
    torch.manual_seed(0)
    model = timm_ssod.create_model('resnet18', ssod=True, num_classes=3).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = compute_outputs(model, x)
        ood = model.forward_ood_head(model.forward_features(x))
    assert torch.allclose(out.ood_logits, ood)
    assert torch.allclose(SSOD().score(model, x), torch.sigmoid(ood[:, 1] - ood[:, 0]))


# -- end to end -----------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def tiny_setup():
    torch.manual_seed(0)
    model = timm_ssod.create_model('resnet18', num_classes=3).eval()
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(24, 3, 32, 32, generator=g), torch.arange(24) % 3)
    return model, DataLoader(data, batch_size=8), torch.randn(5, 3, 32, 32, generator=g)


@pytest.mark.parametrize('name', list(DETECTORS))
def test_every_detector_end_to_end(name, tiny_setup):
    model, loader, x = tiny_setup
    model.train()
    det = create_detector(name)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # knn: 24 ID features < k = 50
        assert det.fit(model, loader) is det
    assert model.training  # fit restores the mode
    model.eval()
    scores = det.score(model, x)
    assert scores.shape == (5,) and torch.isfinite(scores).all()
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize('name', [n for n, c in DETECTORS.items() if c.needs_fit])
def test_not_fitted_error(name):
    det = create_detector(name)
    out, _ = _outputs()
    with pytest.raises(NotFittedError, match=name):
        det.score_outputs(out)
    assert issubclass(NotFittedError, ValueError)


def test_outputs_cat():
    out, labels = _outputs(with_ood=True)
    parts = [o for o, _ in _split(out, labels, [10, 50])]
    joined = ModelOutputs.cat(parts)
    assert torch.equal(joined.features, out.features) and torch.equal(joined.ood_logits, out.ood_logits)
    assert joined.classifier is out.classifier


def test_registry():
    assert set(DETECTORS) == {'msp', 'maxlogit', 'energy', 'odin', 'klm', 'mahalanobis', 'knn',
                              'react', 'vim', 'ssod', 'ssod_msp'}
    assert create_detector('energy', temperature=2.0).temperature == 2.0
    with pytest.raises(ValueError, match='unknown detector'):
        create_detector('nope')


# -- experimental SSOD combinations (benchmarks/quality.py) ---------------------------------------

def _hand_outputs(class_logits, ood_logits):
    logits = torch.tensor(class_logits, dtype=torch.float32)
    return ModelOutputs(torch.zeros(len(class_logits), 1), logits, torch.tensor(ood_logits, dtype=torch.float32))


def test_experimental_detectors_are_created_by_name_outside_the_default_set():
    from timm_ssod.detectors.registry import EXPERIMENTAL_DETECTORS
    assert set(EXPERIMENTAL_DETECTORS) == {'energy_ssod', 'ssod_patch_max', 'ssod_energy_rank'}
    assert not set(EXPERIMENTAL_DETECTORS) & set(DETECTORS)
    assert create_detector('energy_ssod', weight=0.5).weight == 0.5


def test_energy_ssod_by_hand():
    # logits (0, 0): energy = log 2; OOD logits (0, log 3): P(ID) = 3/4, log-odds = log 3
    out = _hand_outputs([[0.0, 0.0], [1.0, 1.0]], [[0.0, math.log(3)], [0.0, 0.0]])
    score = create_detector('energy_ssod', weight=2.0).score_outputs(out)
    assert torch.allclose(score, torch.tensor([math.log(2) + 2 * math.log(3), 1 + math.log(2)]))
    assert torch.allclose(create_detector('energy_ssod', weight=0.0).score_outputs(out), Energy().score_outputs(out))
    # saturated P(ID) (0 or 1 in float32) stays finite, and the order is kept
    far = create_detector('energy_ssod').score_outputs(_hand_outputs([[0.0, 0.0]] * 2, [[0.0, 200.0], [200.0, 0.0]]))
    assert torch.isfinite(far).all() and far[0] > far[1]
    with pytest.raises(ValueError, match='needs an SSOD model'):
        create_detector('energy_ssod').score_outputs(ModelOutputs(torch.zeros(1, 1), torch.zeros(1, 2)))


def test_ssod_patch_max_by_hand_and_on_a_model():
    from timm_ssod.detectors.ssod_patch_max import patch_max_score
    # P(ID) per location: 1/2, 3/4, 1/4 -> 3/4
    patch = torch.tensor([[[0.0, 0.0], [0.0, math.log(3)], [math.log(3), 0.0]]])
    assert torch.allclose(patch_max_score(patch), torch.tensor([0.75]))
    torch.manual_seed(0)
    model = timm_ssod.create_model('resnet18', ssod=True, num_classes=3).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = model.forward_ssod(x)
    p = torch.sigmoid(out.patch_ood_logits[..., 1] - out.patch_ood_logits[..., 0])
    assert torch.allclose(create_detector('ssod_patch_max').score(model, x), p.max(dim=1).values)
    with pytest.raises(ValueError, match='needs an SSOD model'):
        create_detector('ssod_patch_max').score(_tiny('resnet18'), x)


def test_ssod_energy_rank_by_hand():
    def logit(p):
        return math.log(p / (1 - p))
    # fit: P(ID) = .2 .4 .6 .8 and energies log 2 + (0, 1, 2, 3) (class logits (c, c))
    fit = _hand_outputs([[c, c] for c in (0.0, 1.0, 2.0, 3.0)], [[0.0, logit(p)] for p in (0.2, 0.4, 0.6, 0.8)])
    det = create_detector('ssod_energy_rank')
    with pytest.raises(NotFittedError):
        det.score_outputs(fit)
    det.fit_outputs([(fit, None)])
    # P(ID) .5 -> F = 2/4, energy log 2 + .5 -> F = 1/4: min 1/4;  .9 / c=3 -> 1 and 1;  .1 / c=3 -> 0
    test = _hand_outputs([[0.5, 0.5], [3.0, 3.0], [3.0, 3.0]], [[0.0, logit(p)] for p in (0.5, 0.9, 0.1)])
    assert torch.allclose(det.score_outputs(test), torch.tensor([0.25, 1.0, 0.0]))
