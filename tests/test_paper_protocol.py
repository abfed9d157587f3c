"""The paper's protocol values (design.md section 1), pinned so that changing a default fails a test.

Each value is stated here as the paper gives it, never read from the code under test: eps 0.01; Gaussian filter
sigma 4 with scipy's truncation (truncate=4.0, 33 taps); bicubic upsampling; image score = max of the map; Rd
channels drawn with a seeded generator (100 for ResNet-18, 550 for Wide-ResNet-50-2); PRO integrated up to FPR 0.3
over 8-connected defect regions; SPADE with K = 50 on Wide-ResNet-50-2. The float64 reference runs PaDiM and the
layer ensemble built with their defaults, nothing passed: ResNet-18 "ImageNet" weights are served from a
temporary torch hub cache holding a seeded random init, as the real file would be (no network is needed).
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import scipy.ndimage
import torch
import torch.nn.functional as F

from anombench_plugins import backbones
from anombench_plugins.components import anomaly_maps, gaussian_blur, gaussian_kernel
from anombench_plugins.ensemble import PaDiMLayerEnsemble
from anombench_plugins.metrics import PRO, pro_score
from anombench_plugins.padim import PaDiM
from anombench_plugins.spade import SPADE

from test_padim import make_batch, np_cubic_matrix, np_padim_maps, random_images

PAPER_EPS = 0.01
PAPER_SIGMA = 4
PAPER_MAX_FPR = 0.3
SIZE = (32, 48)


@pytest.fixture
def imagenet_resnet18_in_hub_cache(tmp_path, monkeypatch):
    """A torch hub cache whose resnet18 checkpoint is a seeded random init: ``weights="imagenet"`` (the default)
    then loads without a network, exactly as it would load the real file."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(backbones, "_network_reachable", lambda host, timeout=3.0: False)
    target = backbones.hub_cache_file(backbones.backbone_spec("resnet18"))
    target.parent.mkdir(parents=True)
    torch.save(backbones.load_backbone("resnet18", "none", seed=11).state_dict(), target)


def fit_and_score(model) -> tuple[list, torch.Tensor, object]:
    train_images = random_images(30, *SIZE)
    batches = [make_batch(train_images[:13]), make_batch(train_images[13:])]
    model.fit(batches)
    test_images = torch.cat([random_images(2, *SIZE, seed=1), train_images[:1]])
    return batches, test_images, model.score_maps(make_batch(test_images))


def test_padim_with_its_defaults_equals_the_float64_reference_of_the_paper(imagenet_resnet18_in_hub_cache):
    model = PaDiM()  # resnet18, its ImageNet weights, Rd-100 seeded by seed 0, eps: nothing passed
    batches, test_images, scores = fit_and_score(model)
    index = model.head.index.numpy()
    assert len(index) == 100  # R18-Rd100
    expected = np_padim_maps([model.extract(b.images) for b in batches], model.extract(test_images),
                             ["layer1", "layer2", "layer3"], index, None, PAPER_EPS, SIZE)
    np.testing.assert_allclose(scores.maps, expected, rtol=1e-4)
    np.testing.assert_allclose(scores.image_scores, expected.reshape(3, -1).max(1), rtol=1e-4)  # max of the map


def test_layer_ensemble_with_its_defaults_is_the_sum_of_reference_single_layer_maps(imagenet_resnet18_in_hub_cache):
    model = PaDiMLayerEnsemble()  # resnet18, all channels of each layer, eps: nothing passed
    batches, test_images, scores = fit_and_score(model)
    train = [model.extract(b.images) for b in batches]
    test = model.extract(test_images)
    expected = sum(np_padim_maps(train, test, [layer], None, None, PAPER_EPS, SIZE)
                   for layer in ("layer1", "layer2", "layer3"))
    np.testing.assert_allclose(scores.maps, expected, rtol=1e-4)


def test_rd_is_a_seeded_draw_of_the_papers_sizes():
    """Rd-100 (ResNet-18, 448 channels) and Rd-550 (WR50, 1792): one torch.Generator seeded with ``seed``, a
    randperm of all channels, the first k, sorted; never the global RNG."""
    for backbone, channels, k in (("resnet18", 448, 100), ("wide_resnet50_2", 1792, 550)):
        for seed in (0, 5):
            model = PaDiM(backbone=backbone, weights="none", seed=seed)
            assert model.head_shapes() == [(["layer1", "layer2", "layer3"], channels, k)]
    model = PaDiM(weights="none", seed=5)
    before = torch.random.get_rng_state()
    model.fit_begin()
    assert torch.equal(torch.random.get_rng_state(), before)
    expected = torch.randperm(448, generator=torch.Generator().manual_seed(5))[:100].sort().values
    assert torch.equal(model.head.index, expected)


def test_defaults_are_the_papers():
    padim, ensemble = inspect.signature(PaDiM).parameters, inspect.signature(PaDiMLayerEnsemble).parameters
    assert padim["eps"].default == PAPER_EPS and ensemble["eps"].default == PAPER_EPS
    assert padim["reduction"].default == "random" and padim["n_features"].default is None  # None: the paper's Rd
    spade = inspect.signature(SPADE).parameters
    assert (spade["backbone"].default, spade["k"].default, spade["sigma"].default) == ("wide_resnet50_2", 50,
                                                                                       PAPER_SIGMA)


def test_the_filter_is_scipys_gaussian_sigma_4_with_its_default_truncation():
    assert gaussian_kernel().numel() == 2 * int(4.0 * PAPER_SIGMA + 0.5) + 1 == 33
    maps = np.random.default_rng(0).random((2, 40, 37))
    expected = np.stack([scipy.ndimage.gaussian_filter(m, PAPER_SIGMA) for m in maps])  # scipy's defaults
    np.testing.assert_allclose(gaussian_blur(torch.from_numpy(maps)).numpy(), expected, rtol=1e-10, atol=1e-12)


def test_upsampling_is_bicubic_before_the_filter():
    """Keys' cubic convolution (a = -0.75) with half-pixel centres, then the filter: not bilinear, not nearest."""
    distances = np.random.default_rng(1).random((1, 7, 11))
    up = np.einsum("Hh,bhw,Ww->bHW", np_cubic_matrix(7, 28), distances, np_cubic_matrix(11, 44))
    expected = np.stack([scipy.ndimage.gaussian_filter(m, PAPER_SIGMA) for m in up])
    got = anomaly_maps(torch.from_numpy(distances), (28, 44)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)
    bilinear = F.interpolate(torch.from_numpy(distances)[:, None], size=(28, 44), mode="bilinear")[:, 0].numpy()
    assert not np.allclose(got, np.stack([scipy.ndimage.gaussian_filter(m, PAPER_SIGMA) for m in bilinear]))


def test_pro_stops_at_fpr_03_by_default():
    assert inspect.signature(pro_score).parameters["max_fpr"].default == PAPER_MAX_FPR
    assert inspect.signature(PRO).parameters["max_fpr"].default == PAPER_MAX_FPR
    # one defect pixel above exactly 4 of 10 normal pixels: found only past FPR 0.4, so PRO(0.3) = 0
    maps = np.array([[[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 6.5]]], dtype=np.float64)
    masks = np.array([[[0] * 10 + [1]]], dtype=np.uint8)
    assert pro_score(maps, masks) == 0.0
    assert pro_score(maps, masks, max_fpr=0.5) > 0.0


def test_pro_regions_are_8_connected():
    """A pixel touching a 2-pixel block only by a corner is one 3-pixel region (8-connected), so finding that
    pixel alone first gives PRO 1/3; as two 4-connected regions it would give 1/2."""
    masks = np.zeros((1, 4, 4), dtype=np.uint8)
    masks[0, 0, 0] = 1  # alone, diagonal to the block below
    masks[0, 1, 1] = masks[0, 2, 1] = 1
    maps = np.arange(16, dtype=np.float64).reshape(1, 4, 4) + 1  # normal pixels: distinct scores 1..16
    maps[0, 0, 0] = 100  # above every normal pixel
    maps[0, 1, 1] = maps[0, 2, 1] = -1  # below every normal pixel
    assert pro_score(maps, masks) == pytest.approx(1 / 3, abs=1e-12)
