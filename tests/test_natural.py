"""The natural-statistics backgrounds (``timm_ssod.data.natural``) and the ``background``
choice of the built-in benchmark: determinism, ranges, object coverage, and the power-law
statistics the generators claim."""
import numpy as np
import pytest

from timm_ssod.data import BACKGROUNDS, DEFAULT_BACKGROUND, SyntheticDataset
from timm_ssod.data import natural
from timm_ssod.data.backgrounds import BACKGROUND_KINDS as SMOOTH_KINDS


def spectrum_slope(img):
    """Slope of log power vs log |f| of the grey image, averaged in log-spaced rings."""
    g = img.mean(-1) if img.ndim == 3 else img
    g = g - g.mean()
    power = np.abs(np.fft.fft2(g)) ** 2
    h, w = g.shape
    f = np.sqrt(np.fft.fftfreq(h)[:, None] ** 2 + np.fft.fftfreq(w)[None, :] ** 2)
    edges = np.logspace(np.log10(2 / h), np.log10(0.4), 12)
    ring = np.digitize(f, edges)
    pts = [(np.log(f[ring == i].mean()), np.log(power[ring == i].mean())) for i in range(1, len(edges))]
    x, y = np.array(pts).T
    return np.polyfit(x, y, 1)[0]


@pytest.mark.parametrize('kind', natural.NATURAL_KINDS, ids=lambda k: k.__name__)
def test_each_kind_is_deterministic_and_in_range(kind):
    a = kind(np.random.default_rng(3), (40, 56))
    b = kind(np.random.default_rng(3), (40, 56))
    assert a.shape == (40, 56, 3) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, kind(np.random.default_rng(4), (40, 56)))
    img = natural.random_natural_background(np.random.default_rng(3), (40, 56))
    assert np.isfinite(img).all() and img.min() >= 0 and img.max() <= 255


@pytest.mark.parametrize('beta', [1.6, 2.0, 2.4])
def test_spectral_field_has_the_power_law_it_claims(beta):
    rng = np.random.default_rng(0)
    fields = [natural.spectral_field(rng, (64, 64), beta) for _ in range(12)]
    assert all(abs(f.mean()) < 1e-5 and abs(f.std() - 1) < 1e-4 for f in fields)
    # ring averages of a finite image bias the fitted slope a little towards 0: measured 0.95 * beta
    assert np.mean([spectrum_slope(f) for f in fields]) == pytest.approx(-beta, abs=0.25)


def test_power_law_radii_tail():
    """p(r) ~ r^-3 on [1, 1000]: P(R > 2) = 1/4 and P(R > 4) = 1/16 (up to the upper cut)."""
    r = natural.power_law_radii(np.random.default_rng(0), 200_000, 1.0, 1000.0)
    assert r.min() >= 1.0 and r.max() <= 1000.0
    assert (r > 2).mean() == pytest.approx(0.25, abs=0.005)
    assert (r > 4).mean() == pytest.approx(1 / 16, abs=0.003)


def test_natural_backgrounds_have_photograph_spectra_and_smooth_ones_do_not():
    """Photographs have power ~ 1/f^2; the natural generator lands near it, the smooth one
    (the A.5 failure case) is far steeper: almost no fine structure."""
    rng = np.random.default_rng(1)
    nat = np.median([spectrum_slope(natural.random_natural_background(rng, (64, 64))) for _ in range(60)])
    smooth = np.median([spectrum_slope(k(rng, (64, 64))) for k in SMOOTH_KINDS[:-1] for _ in range(10)])  # not flat
    assert -2.4 < nat < -1.4
    assert smooth < -2.7


def test_dataset_background_choice():
    assert DEFAULT_BACKGROUND == 'natural' and set(BACKGROUNDS) == {'natural', 'smooth'}
    nat = SyntheticDataset('id', 'val', num_images=4, img_size=32)
    smooth = SyntheticDataset('id', 'val', num_images=4, img_size=32, background='smooth')
    assert nat.background == 'natural' and 'smooth' in repr(smooth)
    for i in range(4):
        a, b = nat.render(i), smooth.render(i)
        assert a.label == b.label and not np.array_equal(a.background, b.background)
        again = SyntheticDataset('id', 'val', num_images=4, img_size=32).render(i)
        np.testing.assert_array_equal(a.image, again.image)
    with pytest.raises(ValueError, match="unknown background 'photos'.*'natural', 'smooth'"):
        SyntheticDataset('id', background='photos')


def test_far_ood_backgrounds_follow_the_benchmark_background():
    for name in BACKGROUNDS:
        ds = SyntheticDataset('backgrounds', 'test', num_images=6, img_size=32, background=name)
        assert not any(ds.render(i).mask.any() for i in range(6))
    a = SyntheticDataset('backgrounds', 'test', num_images=1, img_size=64).render(0).image
    assert spectrum_slope(a.astype(np.float32)) > -2.7  # natural by default


def test_objects_cover_10_to_40_percent_on_natural_backgrounds():
    ds = SyntheticDataset('id', 'train', num_images=60, img_size=64)
    cover = np.array([ds.render(i).mask.mean() for i in range(60)])
    assert cover.min() >= 0.08 and cover.max() <= 0.42
    assert 0.2 <= cover.mean() <= 0.32


def test_render_cache_is_read_only_and_identical():
    ds = SyntheticDataset('id', 'val', num_images=3, img_size=32)
    first = ds.render(1)
    assert ds.render(1) is first and not first.image.flags.writeable
    with pytest.raises(ValueError):
        first.image[0, 0, 0] = 0
    np.testing.assert_array_equal(np.asarray(ds[1][0]), first.image)


def test_datasets_of_one_process_share_renders_within_the_budget(monkeypatch):
    from timm_ssod.data import synthetic
    monkeypatch.setattr(synthetic, '_SHARED', synthetic.OrderedDict())
    train = SyntheticDataset('id', 'train', num_images=4, img_size=32, seed=7)
    first = train.render(2)
    # a later stage's dataset of the same images (any num_images) reuses the render
    assert SyntheticDataset('id', 'train', num_images=10, img_size=32, seed=7).render(2) is first
    # any other parameter gives other images, rendered anew
    for other in (dict(split='val'), dict(seed=8), dict(img_size=33), dict(num_classes=5), dict(background='smooth')):
        kw = dict(dict(kind='id', split='train', num_images=4, img_size=32, seed=7), **other)
        assert SyntheticDataset(**kw).render(2) is not first
    # beyond CACHE_BYTES the oldest datasets' renders are dropped: the total reserved stays bounded
    per_image = 32 * 32 * 7
    monkeypatch.setattr(synthetic, 'CACHE_BYTES', 6 * per_image)
    a = SyntheticDataset('noise', 'test', num_images=4, img_size=32)
    SyntheticDataset('textures', 'test', num_images=4, img_size=32)
    assert sum(r for _, r in synthetic._SHARED.values()) <= 6 * per_image
    assert ('noise', a._generator) not in [k[:2] for k in synthetic._SHARED]
    assert a.render(0) is a.render(0)  # the dataset keeps its own renders
    # a dataset larger than the budget renders without a cache
    big = SyntheticDataset('noise', 'val', num_images=7, img_size=32)
    assert big.render(0) is not big.render(0)
    np.testing.assert_array_equal(big.render(0).image, big.render(0).image)
