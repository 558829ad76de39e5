"""The built-in synthetic benchmark and the OOD folder dataset (timm_ssod.data)."""
import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import timm.data
from timm_ssod.data import (
    OOD_SETS, SYNTHETIC_PREFIX, ImageFolderOOD, SyntheticDataset, create_dataset, list_ood_sets,
    register_ood_set, write_image_folder,
)
from timm_ssod.data import generators


def pixels(img):
    return np.asarray(img)


# ---------------------------------------------------------------- SyntheticDataset

@pytest.mark.parametrize('kind', ('id',) + OOD_SETS)
def test_deterministic_per_index(kind):
    a = SyntheticDataset(kind, num_images=20, seed=3)
    b = SyntheticDataset(kind, num_images=500, seed=3)  # the dataset length does not matter
    for i in (0, 7, 19):
        assert np.array_equal(pixels(a[i][0]), pixels(b[i][0]))
        assert np.array_equal(pixels(a[i][0]), pixels(a[i][0]))
    c = SyntheticDataset(kind, num_images=20, seed=4)
    assert not np.array_equal(pixels(a[0][0]), pixels(c[0][0]))


def test_splits_are_disjoint():
    def hashes(split):
        ds = SyntheticDataset('id', split=split, num_images=300)
        return {ds.render(i).image.tobytes() for i in range(len(ds))}
    train, test = hashes('train'), hashes('test')
    assert len(train) == 300 and len(test) == 300  # no duplicates within a split either
    assert not train & test


def test_split_synonyms_and_default_sizes():
    assert SyntheticDataset(split='validation').split == 'val'
    assert [len(SyntheticDataset(split=s)) for s in ('train', 'val', 'test')] == [3000, 600, 600]
    assert all(len(SyntheticDataset(k, split='test')) == 600 for k in OOD_SETS)
    with pytest.raises(ValueError, match='split'):
        SyntheticDataset(split='holdout')


def test_id_labels_balanced_and_classes():
    ds = SyntheticDataset('id', num_images=600, num_classes=6)
    assert ds.classes == sorted(ds.classes) and len(ds.classes) == 6
    counts = np.bincount([ds[i][1] for i in range(len(ds))], minlength=6)
    assert counts.tolist() == [100] * 6
    assert SyntheticDataset('id', num_classes=4).classes == sorted(['disc', 'square', 'triangle', 'cross'])
    with pytest.raises(ValueError, match='num_classes'):
        SyntheticDataset('id', num_classes=20)


@pytest.mark.parametrize('kind', ('id',) + OOD_SETS)
def test_image_type_mode_size(kind):
    ds = SyntheticDataset(kind, split='test', num_images=4, img_size=48)
    img, label = ds[1]
    assert isinstance(img, Image.Image) and img.mode == 'RGB' and img.size == (48, 48)
    assert isinstance(label, int)
    assert (label == -1) == (kind != 'id')
    r = ds.render(1)
    assert r.image.dtype == np.uint8 and r.image.shape == (48, 48, 3) and r.mask.dtype == bool
    assert ds.classes == ([] if kind != 'id' else ds.id_classes)


def test_non_square_size_and_index_errors():
    ds = SyntheticDataset('id', num_images=3, img_size=(40, 72))
    assert ds[0][0].size == (72, 40)
    assert np.array_equal(pixels(ds[-1][0]), pixels(ds[2][0]))
    with pytest.raises(IndexError):
        ds[3]
    assert len(list(iter(ds))) == 3


def test_id_object_is_localised():
    ds = SyntheticDataset('id', num_images=60)
    for i in range(len(ds)):
        r = ds.render(i)
        changed = np.any(r.image != r.background, axis=-1)
        assert 0.10 < r.mask.mean() < 0.60
        assert 0.05 < changed.mean() < 0.60
        # every changed pixel is on or next to the object (antialiased edge)
        near = np.zeros_like(r.mask)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                near |= np.roll(r.mask, (dy, dx), (0, 1))
        assert not np.any(changed & ~near)
        # the object is visible: mean colour difference on the mask
        diff = np.abs(r.image.astype(int) - r.background.astype(int))[r.mask].mean()
        assert diff > 20
    assert np.array_equal(ds.object_mask(5), ds.render(5).mask)


def test_ood_sets_have_no_or_novel_objects():
    for kind in OOD_SETS:
        ds = SyntheticDataset(kind, num_images=10)
        assert len(ds) == 10 and all(ds[i][1] == -1 for i in range(10))
        has_object = [ds.render(i).mask.any() for i in range(10)]
        assert all(has_object) if kind == 'novel_objects' else not any(has_object)


def test_backgrounds_match_id_backgrounds_in_statistics():
    # the far-OOD set uses the ID background generator: similar mean colour distribution
    bg = np.stack([SyntheticDataset('backgrounds', num_images=200).render(i).image.mean((0, 1)) for i in range(200)])
    idb = np.stack([SyntheticDataset('id', num_images=200).render(i).background.mean((0, 1)) for i in range(200)])
    assert np.abs(bg.mean(0) - idb.mean(0)).max() < 15


def test_transform_like_timm_image_dataset():
    ds = SyntheticDataset('id', num_images=4)
    ds.transform = lambda img: torch.as_tensor(np.array(img)).float()
    ds.target_transform = lambda t: t + 100
    x, y = ds[1]
    assert isinstance(x, torch.Tensor) and x.shape == (64, 64, 3) and y == 101


def test_register_ood_set():
    def solid(rng, size, num_classes):
        img = np.full(size + (3,), 200.0, dtype=np.float32)
        return img, img, np.zeros(size, dtype=np.float32)
    register_ood_set('solid_test', solid)
    try:
        assert 'solid_test' in list_ood_sets() and 'solid_test' not in OOD_SETS
        img, label = SyntheticDataset('solid_test', num_images=2)[0]
        assert label == -1 and pixels(img).min() == 200
        with pytest.raises(ValueError, match='already'):
            register_ood_set('solid_test', solid)
    finally:
        generators._OOD_GENERATORS.pop('solid_test')


# ---------------------------------------------------------------- create_dataset

def test_create_dataset_synthetic_names():
    assert SYNTHETIC_PREFIX == 'synthetic'
    ds = create_dataset('synthetic', split='validation', num_samples=7, is_training=False, batch_size=4)
    assert isinstance(ds, SyntheticDataset) and ds.kind == 'id' and ds.split == 'val' and len(ds) == 7
    assert create_dataset('synthetic/id').kind == 'id'
    assert create_dataset('Synthetic/noise', split='test').kind == 'noise'
    with pytest.raises(ValueError, match='backgrounds'):
        create_dataset('synthetic/nope')


def test_write_image_folder_roundtrip_through_timm(tmp_path):
    ds = SyntheticDataset('id', split='test', num_images=12, img_size=32)
    ds.transform = lambda img: 'not an image'  # bypassed while writing, restored after
    root = write_image_folder(ds, str(tmp_path / 'id'))
    assert ds.transform(None) == 'not an image'
    assert sorted(os.listdir(root)) == ds.classes
    assert not [f for _, _, fs in os.walk(root) for f in fs if not f.endswith('.png')]  # no temp files
    folder = create_dataset('', root=root, split='test')
    assert isinstance(folder, timm.data.ImageDataset) and len(folder) == 12
    ds.transform = None
    by_pixels = {ds.render(i).image.tobytes(): ds[i][1] for i in range(12)}
    for img, label in folder:
        assert by_pixels[np.asarray(img).tobytes()] == label  # same pixels (PNG), same labels

    ood_root = write_image_folder(SyntheticDataset('noise', num_images=3, img_size=32), str(tmp_path / 'noise'))
    assert sorted(os.listdir(os.path.join(ood_root, 'ood'))) == ['00000.png', '00001.png', '00002.png']


def test_timm_create_loader_yields_batches():
    ds = SyntheticDataset('id', num_images=16)
    loader = timm.data.create_loader(ds, input_size=(3, 64, 64), batch_size=8, num_workers=0,
                                     use_prefetcher=False, device=torch.device('cpu'))
    x, y = next(iter(loader))
    assert x.shape == (8, 3, 64, 64) and x.dtype == torch.float32 and y.shape == (8,)
    assert ds.transform is not None


# ---------------------------------------------------------------- ImageFolderOOD

def _save(path, mode, size=(20, 16)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    colour = {'L': 128, 'RGBA': (10, 20, 30, 100), 'P': 3, 'RGB': (1, 2, 3)}[mode]
    Image.new(mode, size, colour).save(path)


def test_image_folder_ood_recursive_and_conversion(tmp_path):
    _save(str(tmp_path / 'a' / 'b' / 'c' / 'gray.png'), 'L')
    _save(str(tmp_path / 'rgba.png'), 'RGBA')
    _save(str(tmp_path / 'x' / 'pal.png'), 'P')
    _save(str(tmp_path / 'x' / 'rgb.JPG'), 'RGB')
    (tmp_path / 'x' / 'notes.txt').write_text('not an image')
    ds = ImageFolderOOD(str(tmp_path))
    assert len(ds) == 4 and ds.files == sorted(ds.files)
    for img, label in ds:
        assert label == -1 and img.mode == 'RGB' and img.size == (20, 16)
    ds.transform = lambda img: np.asarray(img)
    assert ds[ds.files.index(str(tmp_path / 'a' / 'b' / 'c' / 'gray.png'))][0][0, 0].tolist() == [128] * 3


def test_image_folder_ood_missing_and_empty(tmp_path):
    with pytest.raises(FileNotFoundError, match='missing'):
        ImageFolderOOD(str(tmp_path / 'missing'))
    (tmp_path / 'empty' / 'sub').mkdir(parents=True)
    with pytest.raises(ValueError, match='empty'):
        ImageFolderOOD(str(tmp_path / 'empty'))


def test_image_folder_ood_corrupt_file(tmp_path):
    _save(str(tmp_path / 'a.png'), 'RGB')
    (tmp_path / 'b.png').write_bytes(b'this is not a png')
    _save(str(tmp_path / 'c.png'), 'L')
    ds = ImageFolderOOD(str(tmp_path))
    assert len(ds) == 3
    with pytest.warns(UserWarning, match='b.png'):
        img, label = ds[1]
    assert label == -1 and np.asarray(img)[0, 0].tolist() == [128] * 3  # replaced by c.png
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # warned once per file
        ds[1]
    strict = ImageFolderOOD(str(tmp_path), skip_corrupt=False)
    with pytest.raises(OSError, match='b.png'):
        strict[1]
