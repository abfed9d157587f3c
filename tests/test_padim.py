"""PaDiM against an independent float64 numpy implementation of the paper's equations, and its numerics."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import scipy.ndimage
import torch
import torch.nn.functional as F

from anombench.api import Batch
from anombench.conformance import check_method
from anombench.errors import UserError
from anombench.plugins import registry
from anombench_plugins.components import anomaly_maps, gaussian_blur, gaussian_kernel
from anombench_plugins.padim import PaDiM
from anombench_plugins.padim_head import position_major_embedding
from anombench_plugins.padim_stats import (
    EmbeddingStore,
    LowerRowBlocks,
    MergedMoments,
    PatchGaussian,
    StreamingMoments,
    check_inverse,
    whitening_factor,
)

RNG = np.random.default_rng(0)


def make_batch(images: torch.Tensor) -> Batch:
    n, _, h, w = images.shape
    return Batch(images=images, masks=torch.zeros(n, h, w, dtype=torch.uint8),
                 labels=torch.zeros(n, dtype=torch.int64), ids=[f"img{i}" for i in range(n)])


def random_images(n: int, h: int = 64, w: int = 96, seed: int = 0) -> torch.Tensor:
    """Smooth-ish random images: a shared pattern plus noise, so training images resemble each other."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, h // 8, w // 8, generator=g)
    pattern = F.interpolate(base, size=(h, w), mode="bilinear", align_corners=False)
    return (pattern + 0.1 * torch.rand(n, 3, h, w, generator=g)).clamp(0, 1)


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------ the independent reference


def np_cubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Interpolation matrix (n_out, n_in) of cubic convolution (Keys, a = -0.75), half-pixel centres,
    taps clamped to the border: what bicubic upsampling with align_corners=False means."""
    a = -0.75
    m = np.zeros((n_out, n_in))
    for o in range(n_out):
        x = (o + 0.5) * n_in / n_out - 0.5
        i = int(np.floor(x))
        t = x - i
        for tap in range(-1, 3):
            s = abs(t - tap)
            wgt = ((a + 2) * s - (a + 3)) * s * s + 1 if s <= 1 else ((a * s - 5 * a) * s + 8 * a) * s - 4 * a
            m[o, min(max(i + tap, 0), n_in - 1)] += wgt
    return m


def np_padim_maps(train_features: list[dict], test_features: dict, layers: list[str], index: np.ndarray | None,
                  pca_k: int | None, eps: float, size: tuple[int, int]) -> np.ndarray:
    """The paper in numpy float64: nearest-upsampled concat, channel choice, per-position mean and covariance
    + eps I, inverse, Mahalanobis distance, bicubic upsampling, Gaussian sigma 4 (scipy)."""

    def embed(features: dict) -> np.ndarray:
        maps = [features[name].double().numpy() for name in layers]
        h = max(m.shape[2] for m in maps)
        w = max(m.shape[3] for m in maps)
        up = [m.repeat(h // m.shape[2], axis=2).repeat(w // m.shape[3], axis=3) for m in maps]
        e = np.concatenate(up, axis=1)
        return e if index is None else e[:, index]

    train = np.concatenate([embed(f) for f in train_features])  # (N, C, H, W)
    test = embed(test_features)
    c, h, w = train.shape[1:]
    if pca_k is not None:
        pooled = train.transpose(0, 2, 3, 1).reshape(-1, c)
        values, vectors = np.linalg.eigh(np.cov(pooled, rowvar=False))
        v = vectors[:, np.argsort(values)[::-1][:pca_k]]
        train = np.einsum("nchw,ck->nkhw", train, v)
        test = np.einsum("nchw,ck->nkhw", test, v)
    dist = np.zeros((test.shape[0], h, w))
    for i in range(h):
        for j in range(w):
            x = train[:, :, i, j]
            mu = x.mean(0)
            cov = np.cov(x, rowvar=False) + eps * np.eye(x.shape[1])
            d = test[:, :, i, j] - mu
            dist[:, i, j] = np.sqrt(np.einsum("bi,ij,bj->b", d, np.linalg.inv(cov), d))
    mh, mw = np_cubic_matrix(h, size[0]), np_cubic_matrix(w, size[1])
    up = np.einsum("Hh,bhw,Ww->bHW", mh, dist, mw)
    return np.stack([scipy.ndimage.gaussian_filter(m, sigma=4) for m in up])


@pytest.mark.parametrize(
    "reduction,n_features,layers",
    [("random", 40, None), ("none", None, ["layer2", "layer3"]), ("pca", 24, ["layer1", "layer2"])],
)
def test_padim_equals_numpy_reference_of_the_paper(reduction, n_features, layers):
    model = PaDiM(backbone="resnet18", layers=layers, weights="none", reduction=reduction, n_features=n_features,
                  eps=0.01, seed=3)
    train_images = random_images(30, 32, 48)
    batches = [make_batch(train_images[:13]), make_batch(train_images[13:])]  # uneven batches on purpose
    model.fit(batches)
    test_images = torch.cat([random_images(2, 32, 48, seed=1), train_images[:1]])
    scores = model.score_maps(make_batch(test_images))

    index = model.head.index.numpy() if model.head.index is not None else None
    expected = np_padim_maps([model.extract(b.images) for b in batches], model.extract(test_images),
                             model.features.layers, index, n_features if reduction == "pca" else None, 0.01, (32, 48))
    assert scores.maps.shape == (3, 32, 48) and scores.maps.dtype == np.float32
    np.testing.assert_allclose(scores.maps, expected, rtol=1e-4)
    np.testing.assert_allclose(scores.image_scores, expected.reshape(3, -1).max(1), rtol=1e-4)


# ------------------------------------------------------------------------------ building blocks


def test_embedding_equals_the_reference_unfold_formulation():
    """The reference code places each coarse cell on its s x s block of the fine grid with unfold/fold."""

    def unfold_concat(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        b, c1, h1, w1 = x.shape
        h2, w2 = y.shape[-2:]
        s = h1 // h2
        x = F.unfold(x, kernel_size=s, stride=s).view(b, c1, -1, h2, w2)
        z = torch.cat([torch.cat([x[:, :, i], y], dim=1)[:, :, None] for i in range(x.size(2))], dim=2)
        z = z.view(b, -1, h2 * w2)
        return F.fold(z, kernel_size=s, output_size=(h1, w1), stride=s)

    g = torch.Generator().manual_seed(0)
    l1, l2, l3 = (torch.randn(2, c, s, s, generator=g) for c, s in ((5, 16), (7, 8), (3, 4)))
    reference = unfold_concat(unfold_concat(l1, l2), l3)  # (B, C, H, W)
    expected = reference.permute(2, 3, 0, 1).reshape(16 * 16, 2, 15)
    got = position_major_embedding([l1, l2, l3])
    assert got.is_contiguous() and torch.equal(got, expected)


def test_embedding_of_non_integer_strides_follows_nearest_interpolation():
    g = torch.Generator().manual_seed(1)
    fine, coarse = torch.randn(2, 3, 9, 10, generator=g), torch.randn(2, 4, 4, 3, generator=g)
    expected = torch.cat([fine, F.interpolate(coarse, size=(9, 10), mode="nearest")], dim=1)
    torch.testing.assert_close(position_major_embedding([fine, coarse]),
                               expected.permute(2, 3, 0, 1).reshape(90, 2, 7), rtol=0, atol=0)


def test_row_blocks_store_lower_triangles_and_compute_quadratic_forms():
    g = torch.Generator().manual_seed(0)
    dense = torch.randn(5, 37, 37, dtype=torch.float64, generator=g)
    blocks = LowerRowBlocks.zeros(5, 37, torch.float64, "cpu")
    blocks.set_dense(slice(0, 5), dense)
    assert torch.equal(blocks.dense(slice(0, 5)), dense.tril())
    d = torch.randn(5, 4, 37, dtype=torch.float64, generator=g)
    expected = ((dense.tril() @ d.transpose(1, 2)) ** 2).sum(1)
    torch.testing.assert_close(blocks.squared_norms(d), expected)
    assert blocks.nbytes == 8 * 5 * (24 * 24 + 13 * 37)  # rows x columns of the two row blocks


def test_streaming_moments_match_numpy_whatever_the_batching():
    """Features far from zero with small spread: the one-pass formula must not cancel."""
    x = 1e4 + RNG.normal(size=(50, 11, 6)) * RNG.uniform(0.01, 2, size=6)
    moments = StreamingMoments(positions=11, dim=6, device="cpu")
    for part in np.split(x, [1, 2, 20, 33]):  # a first batch of one image too
        moments.update(torch.from_numpy(part).permute(1, 0, 2))
    covariances = torch.cat([moments.covariance(group, chunk) for group, chunk in moments.chunks(6)]).numpy()
    assert len(moments.groups) == 11 and covariances.shape == (11, 6, 6)  # fewer positions than groups: one each
    for p in range(11):
        np.testing.assert_allclose(moments.mean()[p].numpy(), x[:, p].mean(0), rtol=1e-12)
        np.testing.assert_allclose(covariances[p], np.cov(x[:, p], rowvar=False), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(moments.pooled_covariance().numpy(), np.cov(x.reshape(-1, 6), rowvar=False),
                               rtol=1e-9, atol=1e-12)


def test_merged_moments_match_numpy_to_float32_precision_whatever_the_batching():
    """Float32 scatter merged batch by batch (Chan et al.): far from zero with small spread, one image first."""
    x = 1e4 + RNG.normal(size=(50, 11, 6)) * RNG.uniform(0.01, 2, size=6)
    moments = MergedMoments(positions=11, dim=6, device="cpu")
    for part in np.split(x.astype(np.float32), [1, 2, 20, 33]):
        moments.update(torch.from_numpy(part).permute(1, 0, 2))
    covariances = torch.cat([moments.covariance(group, chunk) for group, chunk in moments.chunks(6)]).numpy()
    exact = x.astype(np.float32).astype(np.float64)  # what the merge was given
    assert moments.count == 50 and moments.nbytes == MergedMoments.nbytes_for(11, 6)
    for p in range(11):
        np.testing.assert_allclose(moments.mean()[p].numpy(), exact[:, p].mean(0), rtol=1e-12)
        expected = np.cov(exact[:, p], rowvar=False)
        np.testing.assert_allclose(covariances[p], expected, rtol=0, atol=4e-7 * np.abs(expected).max())


def test_embedding_store_gives_the_streaming_statistics_and_folds_into_merged_ones():
    """The memory-lean storage (float32 embeddings) equals the float64 streaming moments, and, folded into float32
    merged moments, them to float32 precision; each position group is freed on release."""
    x = (3 + RNG.normal(size=(40, 11, 6)) * RNG.uniform(0.1, 2, size=6)).astype(np.float32)
    streaming, store = StreamingMoments(11, 6, "cpu"), EmbeddingStore(11, 6)
    for part in np.split(x, [7, 20]):
        batch = torch.from_numpy(part).permute(1, 0, 2).contiguous()
        streaming.update(batch)
        store.update(batch)
    assert store.nbytes == x.nbytes and store.full()  # 40 images of 6 dims outweigh 6 x 6 float32 statistics
    expected = torch.cat([streaming.covariance(g, c) for g, c in streaming.chunks(6)])
    torch.testing.assert_close(torch.cat([store.covariance(g, c) for g, c in store.chunks(6)]), expected)
    torch.testing.assert_close(store.mean(), streaming.mean())
    torch.testing.assert_close(store.pooled_covariance(), streaming.pooled_covariance())
    folded = store.folded("cpu")
    assert store.nbytes == 0 and folded.count == 40
    torch.testing.assert_close(torch.cat([folded.covariance(g, c) for g, c in folded.chunks(6)]), expected,
                               rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(folded.mean(), streaming.mean(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reduction,n_features", [("random", 40), ("pca", 12)])
def test_the_memory_lean_fit_gives_the_same_maps(monkeypatch, reduction, n_features):
    """Large float64 statistics (WR50-Rd550) are replaced by the stored embeddings, folded when they outgrow them:
    the maps are the streaming fit's either way."""
    import anombench_plugins.padim_head as head_module

    batches = [make_batch(random_images(4, 32, 32, seed=s)) for s in range(4)]
    test = make_batch(random_images(2, 32, 32, seed=9))

    def maps() -> np.ndarray:
        model = PaDiM(backbone="resnet18", weights="none", reduction=reduction, n_features=n_features, seed=1)
        model.fit(batches)
        return model.score_maps(test).maps

    streaming = maps()
    monkeypatch.setattr(head_module, "STREAMING_STATISTICS_BYTES", 0)
    np.testing.assert_allclose(maps(), streaming, rtol=1e-5)  # kept as embeddings to the end
    folds = []
    monkeypatch.setattr(EmbeddingStore, "full", lambda self: folds.append(self.count) or self.count >= 8)
    np.testing.assert_allclose(maps(), streaming, rtol=1e-5)  # folded into streaming moments after 8 images
    assert folds == [4, 8]


def test_whitening_factor_inverts_550_dim_covariances_at_two_threads(two_threads):
    a = RNG.normal(size=(3, 550, 600))
    cov = a @ a.transpose(0, 2, 1) / 600 + 0.01 * np.eye(550)
    w = whitening_factor(torch.from_numpy(cov)).numpy()
    for c, f in zip(cov, w):
        expected = np.linalg.inv(c)
        assert np.linalg.norm(f.T @ f - expected) / np.linalg.norm(expected) < 1e-10
        assert np.allclose(f, np.tril(f))
    check_inverse(cov, w, [0, 1, 2])  # silent when right


def test_inverse_self_check_fails_loudly():
    cov = np.eye(4)[None] * 2.0
    wrong = np.eye(4)[None]  # W^T W = I, not cov^-1 = I / 2
    with pytest.raises(RuntimeError, match="position 7 is off"):
        check_inverse(cov, wrong, [7])


def test_pca_gaussians_equal_a_second_pass_on_projected_features():
    x = torch.from_numpy(RNG.normal(size=(4, 40, 12)) * RNG.uniform(0.1, 3, size=12))
    moments = StreamingMoments(4, 12, "cpu")
    moments.update(x)
    v = torch.linalg.qr(torch.from_numpy(RNG.normal(size=(12, 5))))[0]
    projected = PatchGaussian.from_moments(moments, eps=0.01, projection=v)
    second = StreamingMoments(4, 5, "cpu")
    second.update(x @ v)
    direct = PatchGaussian.from_moments(second, eps=0.01)
    torch.testing.assert_close(projected.mean, direct.mean)
    probe = torch.randn(4, 3, 5, dtype=torch.float32)
    torch.testing.assert_close(projected.mahalanobis(probe), direct.mahalanobis(probe))


@pytest.mark.parametrize("shape", [(224, 224), (30, 17), (9, 5)])
def test_gaussian_blur_is_scipy_gaussian_filter_sigma4_reflect_truncate4(shape):
    """Sizes below the 16-pixel radius exercise the repeated reflection at the borders."""
    maps = RNG.random((2, *shape))
    ours = gaussian_blur(torch.from_numpy(maps).float()).numpy()
    expected = np.stack([scipy.ndimage.gaussian_filter(m, sigma=4, mode="reflect", truncate=4.0) for m in maps])
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)


def test_gaussian_kernel_has_33_taps_and_the_border_mode_is_half_sample_symmetric():
    kernel = gaussian_kernel()
    assert kernel.numel() == 33 and abs(float(kernel.sum()) - 1) < 1e-12
    ramp = torch.arange(40.0).repeat(40, 1)[None]  # value = column index
    blurred = gaussian_blur(ramp)[0, 0]
    # half-sample reflection mirrors the ramp about x = -0.5: the left edge sees 15..0 then 0..16
    expected_left = float((kernel * torch.cat([torch.arange(16, 0, -1) - 1, torch.arange(0, 17)])).sum())
    assert abs(float(blurred[0]) - expected_left) < 1e-4


def test_upsampling_is_torch_bicubic_then_the_blur():
    distances = torch.from_numpy(RNG.random((2, 7, 11)))
    expected = gaussian_blur(F.interpolate(distances[:, None], size=(28, 33), mode="bicubic",
                                           align_corners=False)[:, 0])
    torch.testing.assert_close(anomaly_maps(distances, (28, 33)), expected)


# ------------------------------------------------------------------------------ the plugin


def tiny_fitted(reduction: str = "random", n_features: int | None = 20, seed: int = 0) -> PaDiM:
    model = PaDiM(backbone="resnet18", weights="none", reduction=reduction, n_features=n_features, seed=seed)
    model.fit([make_batch(random_images(6, 32, 32)), make_batch(random_images(5, 32, 32, seed=2))])
    return model


def test_fit_and_score_are_the_shared_steps_composed():
    lone = tiny_fitted()
    shared = PaDiM(backbone="resnet18", weights="none", reduction="random", n_features=20, seed=0)
    assert shared.feature_key() == lone.feature_key()
    shared.fit_begin()
    for images in (random_images(6, 32, 32), random_images(5, 32, 32, seed=2)):
        shared.fit_step(lone.extract(images))
    shared.fit_end()
    batch = make_batch(random_images(3, 32, 32, seed=5))
    np.testing.assert_array_equal(shared.score_features(lone.extract(batch.images), batch).maps,
                                  lone.score_maps(batch).maps)


def test_feature_key_tracks_what_changes_features_and_nothing_else():
    def key(**kw) -> str:
        return PaDiM(**{"backbone": "resnet18", "weights": "none", **kw}).feature_key()

    base = key(seed=0)
    assert key(seed=0, reduction="pca", n_features=50) == base  # the head is not part of extraction
    assert key(seed=0, layers=["layer1"]) == base  # default taps are always extracted, so Table I shares them
    assert key(seed=0, layers=["layer4"]) != base
    assert key(seed=1) != base  # random init depends on the seed
    assert key(seed=0, backbone="efficientnet_lite0") != base


def test_channel_selection_is_seeded_made_in_fit_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    a, b, c = (PaDiM(backbone="resnet18", weights="none", seed=seed) for seed in (7, 7, 8))
    assert a.heads is None  # the constructor draws nothing
    for model in (a, b, c):
        model.fit_begin()
    assert torch.equal(torch.random.get_rng_state(), state)
    assert a.head.n_features == 100 and torch.equal(a.head.index, b.head.index)
    assert not torch.equal(a.head.index, c.head.index)
    # the same generator and seed as the draw has always used: randperm of the 448 channels, first 100, sorted
    expected = torch.randperm(448, generator=torch.Generator().manual_seed(7))[:100].sort().values
    assert torch.equal(a.head.index, expected)


def test_save_and_load_give_the_same_scores(tmp_path):
    model = tiny_fitted(reduction="pca", n_features=12, seed=4)
    path = tmp_path / "padim.safetensors"
    model.save(path)
    loaded = PaDiM.load(path, device="cpu")
    batch = make_batch(random_images(2, 32, 32, seed=9))
    np.testing.assert_array_equal(loaded.score_maps(batch).maps, model.score_maps(batch).maps)
    assert torch.equal(loaded.head.generator.get_state(), model.head.generator.get_state())
    assert loaded.model_bytes() == model.model_bytes()
    assert path.read_bytes()[8:9] == b"{"  # safetensors: an 8-byte length then a JSON header, no pickle
    with pytest.raises(UserError, match="does not exist"):
        PaDiM.load(tmp_path / "missing.safetensors")


def test_a_model_file_keeps_the_position_groups_it_was_written_with(tmp_path, monkeypatch):
    """A file written with other groups (8 before they became 32) loads as written and scores the same."""
    import anombench_plugins.padim_stats as stats_module

    monkeypatch.setattr(stats_module, "POSITION_GROUPS", 3)
    model = tiny_fitted()
    model.save(tmp_path / "padim.safetensors")
    monkeypatch.undo()
    loaded = PaDiM.load(tmp_path / "padim.safetensors")
    assert len(loaded.head.gaussian.whiteners) == 3
    batch = make_batch(random_images(2, 32, 32, seed=9))
    np.testing.assert_array_equal(loaded.score_maps(batch).maps, model.score_maps(batch).maps)


def test_model_bytes_counts_the_fitted_state_and_wr50_rd550_fits_in_2gb():
    model = tiny_fitted(n_features=20)
    positions = 8 * 8
    blocks = sum(r * c for r, c in LowerRowBlocks.shapes(20))
    assert model.model_bytes() == 4 * positions * (blocks + 20) + 8 * 20  # whitener + mean (f32) + index (i64)
    wr50 = 4 * 56 * 56 * (sum(r * c for r, c in LowerRowBlocks.shapes(550)) + 550) + 8 * 550
    assert wr50 <= 2.0e9
    assert 56 * 56 * 550 * 550 * 4 > 3.7e9  # what dense float32 inverses would take (paper's Table VIII)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"reduction": "lda"}, r"^PaDiM parameter reduction: expected one of 'random', 'pca', 'none', got 'lda'$"),
        ({"n_features": 449}, r"^PaDiM parameter n_features=449 must be at most 448 \(the channels of resnet18 "),
        ({"reduction": "none", "n_features": 10}, r"^PaDiM parameter n_features=10 needs reduction 'random' or 'pca'$"),
        ({"n_features": 0}, r"^PaDiM parameter n_features: must be >= 1, got 0$"),
        ({"eps": 0.0}, r"^PaDiM parameter eps: must be > 0, got 0.0$"),
        ({"backbone": "vgg16"}, "unknown backbone"),
        ({"layers": ["layer9"]}, "layer9"),
    ],
)
def test_bad_parameters_raise_one_user_error_in_preflight_and_fit_not_in_the_constructor(kwargs, message):
    """The signature's markers (check_config) and the rules tying n_features to the layers (head_dims) hold for a
    PaDiM built in Python, not only for one a suite builds."""
    model = PaDiM(**{"backbone": "resnet18", "weights": "none", **kwargs})  # stores, checks nothing
    with pytest.raises(UserError, match=message) as info:
        model.preflight()
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match=message):
        model.fit([make_batch(random_images(2, 32, 32))])


def test_a_bad_value_is_named_before_a_missing_weights_file(tmp_path):
    """preflight checks the values first: a user with both a bad eps and no weights learns about eps (found by a
    new-user trial, where the missing ResNet-18 weights hid it)."""
    model = PaDiM(backbone="resnet18", weights=str(tmp_path / "absent.pth"), eps=0.0)
    with pytest.raises(UserError, match=r"^PaDiM parameter eps: must be > 0, got 0.0$"):
        model.preflight()


def test_constructor_builds_nothing_and_keeps_its_arguments(monkeypatch):
    from anombench_plugins import backbones

    def no_build(*args, **kwargs):
        raise AssertionError("the backbone was built")

    monkeypatch.setattr(backbones, "load_backbone", no_build)
    params = dict(backbone="wide_resnet50_2", layers=[1, 2, 3], weights="/nowhere/wr50.pth", reduction="random",
                  n_features=550, eps=0.01, device="cpu", seed=3)
    model = PaDiM(**params)
    assert {name: getattr(model, name) for name in params} == params
    key = model.feature_key()  # from the backbone table: no weights, no forward pass
    assert key == "wide_resnet50_2|/nowhere/wr50.pth|layer1,layer2,layer3|cpu"
    assert model.features.channels == {"layer1": 256, "layer2": 512, "layer3": 1024}
    with pytest.raises(UserError, match="/nowhere/wr50.pth' does not exist") as info:
        model.preflight()  # the missing weights file, named in one line
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match=r"n_features=1793 must be at most 1792"):
        PaDiM(backbone="wide_resnet50_2", weights="none", n_features=1793).preflight()


def test_scoring_before_fit_is_one_clear_error():
    with pytest.raises(RuntimeError, match="call fit"):
        PaDiM(backbone="resnet18", weights="none").score_maps(make_batch(random_images(1, 32, 32)))


def test_registered_under_padim_with_an_annotated_signature():
    assert registry().get("method", "padim").factory is PaDiM
    for name, parameter in inspect.signature(PaDiM).parameters.items():
        assert parameter.annotation is not inspect.Parameter.empty, name
        assert parameter.default is not inspect.Parameter.empty, name


def test_padim_passes_the_method_conformance_checks():
    check_method(PaDiM, params={"backbone": "resnet18", "weights": "none", "n_features": 20})
