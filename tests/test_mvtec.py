"""MVTec AD and Rd-MVTec AD plugins against layouts built on disk from synthetic images."""

from __future__ import annotations

import logging
from collections import Counter
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from dataset_layouts import BACKGROUND_MAX, make_mvtec_category, save
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms as T

from anombench.api import Dataset, Sample, collate, known_categories
from anombench.errors import UserError
from anombench.params import validate
from anombench.plugins import collect, make_plugin_manager
from anombench_plugins.mvtec import CATEGORIES, MVTecAD, RandomRotateCrop, RdMVTecAD


@pytest.fixture
def bottle(tmp_path: Path) -> Path:
    make_mvtec_category(tmp_path, "bottle", size=(80, 80), n_train=3, n_good=2, defects={"broken_large": 2, "crack": 1})
    return tmp_path


def all_samples(split) -> list[Sample]:
    return [split[i] for i in range(len(split))]


def defect_iou(sample: Sample) -> float:
    """Overlap of the white defect square seen in the image with the mask (1.0 = perfectly aligned)."""
    white = (sample.image > (BACKGROUND_MAX + 255) / 2 / 255).all(dim=0)
    mask = sample.mask.bool()
    return float((white & mask).sum() / (white | mask).sum())


def test_registered_through_entry_points(monkeypatch):
    monkeypatch.setenv("ANOMBENCH_PLUGINS", "mvtec")
    registry = collect(*make_plugin_manager())
    assert registry.get("dataset", "mvtec").factory is MVTecAD
    assert registry.get("dataset", "rd_mvtec").factory is RdMVTecAD


def test_categories_present_in_official_order_and_groups(tmp_path):
    for category in ("zipper", "bottle", "wood", "grid"):
        make_mvtec_category(tmp_path, category, size=(16, 16), n_train=1, n_good=1, defects={})
    (tmp_path / "license.txt").write_text("CC BY-NC-SA")
    data = MVTecAD(root=str(tmp_path))
    assert isinstance(data, Dataset)
    assert data.categories() == ["grid", "wood", "bottle", "zipper"]
    assert [data.family(c) for c in data.categories()] == ["texture", "texture", "object", "object"]
    assert len(CATEGORIES) == 15
    assert known_categories(data) == list(CATEGORIES)  # what the paper's means are over, present or not
    assert Counter(data.family(c) for c in known_categories(data)) == {"texture": 5, "object": 10}


def test_train_split_samples(bottle):
    train = MVTecAD(root=str(bottle)).train("bottle", seed=0)
    samples = all_samples(train)
    assert [s.id for s in samples] == ["good/000", "good/001", "good/002"]
    for s in samples:
        assert s.image.shape == (3, 224, 224) and s.image.dtype == torch.float32
        assert 0.0 <= s.image.min() and s.image.max() <= 1.0
        assert s.mask.shape == (224, 224) and s.mask.dtype == torch.uint8 and s.mask.sum() == 0
        assert s.label == 0


def test_test_split_labels_masks_and_ids(bottle):
    samples = all_samples(MVTecAD(root=str(bottle)).test("bottle", seed=0))
    by_id = {s.id: s for s in samples}
    assert sorted(by_id) == ["broken_large/000", "broken_large/001", "crack/000", "good/000", "good/001"]
    assert all(by_id[i].label == 0 and by_id[i].mask.sum() == 0 for i in ("good/000", "good/001"))
    for s in samples:
        if s.label:
            assert set(s.mask.unique().tolist()) == {0, 1}
            assert defect_iou(s) > 0.9  # interpolated edges of the square may differ by a pixel


def test_preprocessing_matches_torchvision_reference(bottle):
    """Resize 256 bicubic + centre crop 224 (images), nearest (masks): the paper's reference transforms."""
    reference_image = T.Compose([T.Resize((256, 256), T.InterpolationMode.BICUBIC), T.CenterCrop(224), T.ToTensor()])
    reference_mask = T.Compose([T.Resize((256, 256), T.InterpolationMode.NEAREST), T.CenterCrop(224), T.PILToTensor()])
    sample = MVTecAD(root=str(bottle)).test("bottle", seed=0)[0]
    assert sample.id == "broken_large/000"
    expected_image = reference_image(Image.open(bottle / "bottle/test/broken_large/000.png").convert("RGB"))
    expected_mask = reference_mask(Image.open(bottle / "bottle/ground_truth/broken_large/000_mask.png"))[0] > 0
    torch.testing.assert_close(sample.image, expected_image, rtol=0, atol=1e-6)
    assert torch.equal(sample.mask.bool(), expected_mask)


def test_configurable_size_and_any_resolution_and_grey(tmp_path):
    make_mvtec_category(tmp_path, "screw", size=(90, 60), n_train=1, n_good=1, defects={"scratch": 1}, grey=True)
    data = MVTecAD(root=str(tmp_path), image_size=64, crop_size=48)
    sample = data.test("screw", seed=0)[1]
    assert sample.image.shape == (3, 48, 48) and sample.mask.shape == (48, 48)
    assert torch.equal(sample.image[0], sample.image[1]) and torch.equal(sample.image[1], sample.image[2])
    assert sample.label == 1 and sample.mask.sum() > 0
    assert data.train("screw", seed=0)[0].image.shape == (3, 48, 48)


def test_split_pickles_paths_not_pixels_and_loads_in_workers(bottle):
    test = MVTecAD(root=str(bottle)).test("bottle", seed=0)
    assert len(pickle.dumps(test)) < 4096  # five 80x80 images would be ~100 kB
    serial = list(DataLoader(test, batch_size=2, collate_fn=collate))
    parallel = list(DataLoader(test, batch_size=2, collate_fn=collate, num_workers=2))
    assert [b.ids for b in serial] == [b.ids for b in parallel]
    for a, b in zip(serial, parallel, strict=True):
        assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks) and torch.equal(a.labels, b.labels)


# ---- Rd-MVTec AD ---------------------------------------------------------------------------------------------


def test_rd_is_deterministic_per_seed_and_image(bottle):
    first = all_samples(RdMVTecAD(root=str(bottle)).test("bottle", seed=3))
    torch.manual_seed(123)
    np.random.seed(123)  # global RNG state must not matter
    split = RdMVTecAD(root=str(bottle)).test("bottle", seed=3)
    again = [split[i] for i in reversed(range(len(split)))][::-1]  # nor the order of loading
    other_seed = all_samples(RdMVTecAD(root=str(bottle)).test("bottle", seed=4))
    for a, b, c in zip(first, again, other_seed, strict=True):
        assert a.id == b.id == c.id
        assert torch.equal(a.image, b.image) and torch.equal(a.mask, b.mask)
        assert not torch.equal(a.image, c.image)


def test_rd_differs_from_centre_crop_and_keeps_image_and_mask_aligned(bottle):
    plain = all_samples(MVTecAD(root=str(bottle)).test("bottle", seed=0))
    rotated = all_samples(RdMVTecAD(root=str(bottle)).test("bottle", seed=0))
    for p, r in zip(plain, rotated, strict=True):
        assert r.image.shape == (3, 224, 224) and r.mask.shape == (224, 224)
        assert not torch.equal(p.image, r.image)
        if r.label:
            assert defect_iou(r) > 0.9


def test_rd_draws_stay_in_range_and_vary():
    transform = RandomRotateCrop(image_size=256, crop_size=224, seed=0, category="bottle", split="test")
    draws = [transform.draw(f"crack/{i:03d}") for i in range(200)]
    angles = np.array([d[0] for d in draws])
    offsets = np.array([d[1:] for d in draws])
    assert (np.abs(angles) < 10).all() and angles.std() > 4  # uniform on (-10, 10) has std 5.8
    assert offsets.min() >= 0 and offsets.max() <= 32 and len({tuple(o) for o in offsets}) > 100
    train = RandomRotateCrop(image_size=256, crop_size=224, seed=0, category="bottle", split="train")
    assert train.draw("good/000") != transform.draw("good/000")


def test_rd_fills_rotated_corners_with_black():
    transform = RandomRotateCrop(image_size=64, crop_size=64, seed=0, category="bottle", split="test")
    sample_id = next(f"x/{i}" for i in range(100) if abs(transform.draw(f"x/{i}")[0]) > 5)
    white = Image.new("RGB", (64, 64), (255, 255, 255))
    image, mask = transform(white, Image.new("L", (64, 64), 255), sample_id)
    assert image.getpixel((0, 0)) == (0, 0, 0) and mask.getpixel((0, 0)) == 0
    assert image.getpixel((32, 32)) == (255, 255, 255) and mask.getpixel((32, 32)) == 255


# ---- bad data ------------------------------------------------------------------------------------------------


def test_missing_root_says_how_to_download(tmp_path, monkeypatch):
    monkeypatch.delenv("ANOMBENCH_DATA_MVTEC", raising=False)
    with pytest.raises(UserError, match="anombench data download mvtec --root .*nowhere"):
        MVTecAD(root=str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match="ANOMBENCH_DATA_MVTEC is not set"):
        MVTecAD()


def test_root_from_environment(bottle, monkeypatch):
    monkeypatch.setenv("ANOMBENCH_DATA_MVTEC", str(bottle))
    assert MVTecAD().categories() == ["bottle"]


def test_root_without_categories(tmp_path):
    (tmp_path / "mvtec_anomaly_detection").mkdir()
    with pytest.raises(UserError, match="no MVTec AD category folder"):
        MVTecAD(root=str(tmp_path))


def test_missing_and_unknown_category(bottle):
    data = MVTecAD(root=str(bottle))
    with pytest.raises(UserError, match=r"category 'carpet' not found .*present: bottle"):
        data.train("carpet", seed=0)
    with pytest.raises(UserError, match="unknown MVTec AD category 'botle'"):
        data.test("botle", seed=0)


def test_defect_image_without_mask(bottle):
    (bottle / "bottle/ground_truth/crack/000_mask.png").unlink()
    with pytest.raises(UserError, match=r"1 defect image\(s\) .*crack/000.png \(expected .*000_mask.png\)"):
        MVTecAD(root=str(bottle)).test("bottle", seed=0)


def test_mask_of_another_size(bottle):
    save(bottle / "bottle/ground_truth/crack/000_mask.png", np.zeros((40, 80), dtype=np.uint8))
    with pytest.raises(UserError, match=r"mask .*000_mask.png is 80x40 but its image .*000.png is 80x80"):
        MVTecAD(root=str(bottle)).test("bottle", seed=0)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_unreadable_image_is_named_when_loaded(bottle, damage):
    path = bottle / "bottle/train/good/001.png"
    content = path.read_bytes()
    path.write_bytes({"garbage": b"not a png at all", "truncated": content[: len(content) // 2], "empty": b""}[damage])
    train = MVTecAD(root=str(bottle)).train("bottle", seed=0)
    assert train[0].id == "good/000"
    with pytest.raises(UserError, match=r"cannot read image .*train/good/001.png"):
        train[1]


def test_empty_train_folder(bottle):
    for path in (bottle / "bottle/train/good").iterdir():
        path.unlink()
    (bottle / "bottle/train/good/.DS_Store").write_bytes(b"\0")
    with pytest.raises(UserError, match=r"no training images in .*bottle/train/good"):
        MVTecAD(root=str(bottle)).train("bottle", seed=0)


def test_stray_files_are_skipped_with_a_log_line(bottle, caplog):
    good = bottle / "bottle/train/good"
    (good / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (good / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (good / "._000.png").write_bytes(b"\0\5\26\7")  # macOS resource fork: a .png name, not a PNG
    (good / "notes.txt").write_text("taken on day 2")
    (bottle / "bottle/test/.ipynb_checkpoints").mkdir()
    (bottle / "bottle/test/.ipynb_checkpoints/000.png").write_bytes(b"junk")
    data = MVTecAD(root=str(bottle))
    with caplog.at_level(logging.DEBUG, logger="anombench.data"):
        train = data.train("bottle", seed=0)
    assert len(train) == 3 and len(all_samples(train)) == 3
    assert len(data.test("bottle", seed=0)) == 5
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "notes.txt" in warnings[0] and "Thumbs.db" not in warnings[0]


def test_bad_sizes_are_user_errors(bottle):
    with pytest.raises(UserError, match="crop_size must be between 1 and image_size"):
        MVTecAD(root=str(bottle), image_size=64, crop_size=128)
    with pytest.raises(UserError, match=r"^rd_mvtec parameter max_degrees: must be in \[0, 180\], got -1$"):
        RdMVTecAD(root=str(bottle), max_degrees=-1)
    with pytest.raises(UserError, match=r"^rd_mvtec parameter max_degrees: must be in \[0, 180\], got 181$"):
        RdMVTecAD(root=str(bottle), max_degrees=181)


# ---- check ---------------------------------------------------------------------------------------------------


def test_check_reports_counts_per_category(bottle):
    (bottle / "bottle/ground_truth/crack/000_mask.png").unlink()
    report = MVTecAD.check(str(bottle))
    rows = {line.split()[0]: line for line in report.splitlines()[2:]}
    assert rows["bottle"].split()[:6] == ["bottle", "object", "3", "2", "3", "2"]
    assert "1 masks missing" in rows["bottle"] and "official release has 209/20/63" in rows["bottle"]
    assert rows["carpet"].split()[-1] == "missing" and len(rows) == 16  # 15 categories and the total


@pytest.mark.parametrize("dataset,params,message", [
    ("mvtec", {"image_size": 0}, "mvtec parameter image_size: must be >= 1, got 0"),
    ("mvtec", {"crop_size": 0}, "mvtec parameter crop_size: must be >= 1, got 0"),
    ("rd_mvtec", {"image_size": -3}, "rd_mvtec parameter image_size: must be >= 1, got -3"),
])
def test_image_sizes_are_signature_markers(bottle, dataset, params, message):
    """A size below one pixel is refused by the signature's marker, both built directly and from a suite."""
    factory = MVTecAD if dataset == "mvtec" else RdMVTecAD
    with pytest.raises(UserError, match=f"^{re.escape(message)}$"):
        factory(root=str(bottle), **params)
    key = next(iter(params))
    with pytest.raises(UserError, match=f"datasets.{dataset}.params.{key}: must be >= 1"):
        validate(f"datasets.{dataset}.params", factory, {"root": str(bottle), **params})
