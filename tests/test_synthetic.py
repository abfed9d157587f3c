"""The synthetic dataset: deterministic, MVTec-like, and its masks are exactly the pixels its defects changed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from anombench.api import collate
from anombench.errors import UserError
from anombench_plugins.synthetic import (APPLY_DEFECT, CATEGORIES, DRAW, OBJECTS, TEXTURES, TINT_SPREAD,
                                         SyntheticDataset, _rng, defects_for)
from anombench.suite import load_yaml

QUICKSTART = Path(__file__).parents[1] / "suites" / "quickstart.yaml"


def test_same_seed_same_images_other_seed_other_images():
    a, b = SyntheticDataset(image_size=64), SyntheticDataset(image_size=64)
    c = SyntheticDataset(image_size=64, data_seed=1)
    for category in CATEGORIES:
        first, again, other = a.test(category, 0)[12], b.test(category, 0)[12], c.test(category, 0)[12]
        assert torch.equal(first.image, again.image) and torch.equal(first.mask, again.mask)
        assert not torch.equal(first.image, other.image)


def test_layout_labels_ids_and_groups():
    data = SyntheticDataset(image_size=48, n_train=5, n_test_good=3, n_test_defective=10)
    assert data.categories() == list(CATEGORIES)
    assert [data.family(c) for c in CATEGORIES] == ["texture", "texture", "object", "object"]
    for category in CATEGORIES:
        train, test = data.train(category, 0), data.test(category, 0)
        assert len(train) == 5 and len(test) == 13
        assert all(train[i].label == 0 and train[i].mask.sum() == 0 for i in range(5))
        goods, defects = [test[i] for i in range(3)], [test[i] for i in range(3, 13)]
        assert all(s.label == 0 and s.mask.sum() == 0 and s.id.startswith("good/") for s in goods)
        assert all(s.label == 1 and s.mask.sum() >= 4 for s in defects)
        assert {s.id.split("/")[0] for s in defects} == set(defects_for(category))
        sample = test[5]
        assert sample.image.shape == (3, 48, 48) and sample.image.dtype == torch.float32
        assert 0.0 <= float(sample.image.min()) and float(sample.image.max()) <= 1.0
        assert sample.mask.dtype == torch.uint8 and set(sample.mask.unique().tolist()) <= {0, 1}


@pytest.mark.parametrize("category", CATEGORIES)
@pytest.mark.parametrize("defect", sorted(APPLY_DEFECT))
def test_mask_is_exactly_what_the_defect_changed(category, defect):
    if defect not in defects_for(category):
        assert category not in OBJECTS and defect == "missing"
        return
    for index in range(5):
        rng = _rng("mask-test", category, defect, index)
        clean, region = DRAW[category](rng, 96)
        damaged = clean.copy()
        mask = APPLY_DEFECT[defect](rng, damaged, region)
        changed = np.abs(damaged - clean).max(-1) > 1e-3
        assert not (changed & ~mask).any(), "a pixel changed outside the mask"
        assert changed[mask].mean() > 0.8, "most mask pixels must visibly change"


def test_unknown_category_and_tiny_size_are_one_line_errors():
    with pytest.raises(UserError, match="synthetic: unknown categories \\['bottle'\\]; available: stripes"):
        SyntheticDataset(categories=["bottle"])
    with pytest.raises(UserError, match=r"^synthetic parameter image_size: must be >= 32, got 16$"):
        SyntheticDataset(image_size=16)


def test_splits_load_through_worker_processes():
    split = SyntheticDataset(image_size=32, n_test_good=2, n_test_defective=2).test("plate", 0)
    batches = list(DataLoader(split, batch_size=3, num_workers=2, collate_fn=collate))
    assert [len(b) for b in batches] == [3, 1]
    assert torch.equal(batches[0].images[2], split[2].image)


@pytest.mark.parametrize("category", CATEGORIES)
def test_structure_only_defects_keep_their_pixels_inside_the_normal_range(category):
    """What makes a trivial per-pixel method worse than PaDiM: 'patch' and 'edge' (on textures) paste the image's
    own pixels; 'tint' scales colour by at most 2.5 times the normal tint spread; 'faint' stays between the clean
    image and the full-strength defect."""
    for index in range(4):
        rng = _rng("range-test", category, index)
        clean, region = DRAW[category](rng, 96)
        for defect in ("patch", "edge", "tint", "faint"):
            damaged = clean.copy()
            mask = APPLY_DEFECT[defect](rng, damaged, region)
            pasted = damaged[mask]
            if defect == "patch" or (defect == "edge" and category in TEXTURES):
                assert np.isin(pasted[:, 0], clean[~mask][:, 0]).all(), f"{defect}: pasted pixels come from the image"
            elif defect == "tint":
                ratio = pasted / clean[mask]
                assert np.allclose(ratio, ratio[0]) and (np.abs(ratio[0] - 1) <= 2.5 * TINT_SPREAD + 1e-12).all()
            elif defect == "faint":
                assert (np.abs(pasted - clean[mask]) < 0.6).all()


def test_quickstart_data_has_more_training_images_than_dimensions_and_fine_grained_image_auroc():
    """PaDiM-Lite0 embeds 176 channels: fewer training images would leave every covariance singular (eps would
    decide the scores). And one swapped (good, defective) image pair must move image AUROC well under the gate's
    default tolerance of 0.005: it moves it by 1 / (n_good * n_defective)."""
    from anombench_plugins.backbones import FeatureExtractor

    params = load_yaml(QUICKSTART)["datasets"]["synthetic"]["params"]
    channels = sum(FeatureExtractor("efficientnet_lite0").tap_channels.values())
    assert params["n_train"] > channels == 176
    assert 1 / (params["n_test_good"] * params["n_test_defective"]) <= 0.005 / 5


def test_defects_can_be_narrowed_to_chosen_kinds():
    data = SyntheticDataset(image_size=32, n_test_good=1, n_test_defective=4, defects=["spot", "missing"])
    assert [s.id.split("/")[0] for s in data.test("disc", 0)] == ["good", "spot", "missing", "spot", "missing"]
    with pytest.raises(UserError, match="none of the defects \\['missing'\\] applies to 'weave'"):
        SyntheticDataset(image_size=32, defects=["missing"]).test("weave", 0)
    with pytest.raises(UserError, match="synthetic: unknown defects \\['dent'\\]; available: scratch"):
        SyntheticDataset(defects=["dent"])
