"""SPADE: the plugin contract, equality with a brute-force float64 numpy computation, the memory that grows with
the training set, and the approximate indexes (restricted to the gallery, recall against the exact search)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from safetensors.torch import save_file
from scipy.spatial.distance import cdist

from anombench.conformance import check_method, tiny_batches
from anombench.errors import UserError
from anombench_plugins.modelfile import write_model_file
from anombench_plugins.spade import SPADE, ExactGallery, build_gallery

TINY = dict(backbone="resnet18", weights="none", k=3)  # random init: no weights file needed


@pytest.fixture(scope="module")
def train() -> list:
    return tiny_batches(2, 4, 64, seed=1, anomalous=False)


@pytest.fixture(scope="module")
def test_batch():
    return tiny_batches(1, 4, 64, seed=2, anomalous=True)[0]


def test_spade_conforms() -> None:
    check_method(SPADE, params=TINY)


def test_spade_is_registered(registry) -> None:
    assert registry.get("method", "spade").factory is SPADE


def brute_force(train_features: dict, test_features: dict, layers: list[str], pooled: str, k: int,
                size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """SPADE written out in float64 (all pairwise distances by scipy's cdist, argsort, min), scipy's Gaussian filter."""
    as64 = {name: f.double().numpy() for name, f in train_features.items()}
    tr_pooled = as64[pooled].mean(axis=(2, 3))
    maps, scores = [], []
    for i in range(test_features[pooled].shape[0]):
        q_pooled = test_features[pooled][i].double().numpy().mean(axis=(1, 2))
        image_distances = np.sqrt(((tr_pooled - q_pooled) ** 2).sum(1))
        neighbours = np.argsort(image_distances)[:k]
        scores.append(image_distances[neighbours].mean())
        upsampled = []
        for name in layers:
            gallery = as64[name][neighbours].transpose(0, 2, 3, 1).reshape(-1, as64[name].shape[1])
            query = test_features[name][i].double().numpy()
            c, h, w = query.shape
            query = query.reshape(c, h * w).T
            layer_map = torch.from_numpy(cdist(query, gallery).min(1).reshape(1, 1, h, w))
            upsampled.append(F.interpolate(layer_map, size=size, mode="bilinear", align_corners=False)[0, 0].numpy())
        maps.append(ndimage.gaussian_filter(np.mean(upsampled, axis=0), sigma=4, mode="reflect"))
    return np.stack(maps), np.array(scores)


@pytest.mark.parametrize("k", [3, 50])  # 50 > 8 training images: K is clipped to the training set
def test_spade_equals_brute_force(train, test_batch, k: int) -> None:
    method = SPADE(**(TINY | {"k": k}), device="cpu", seed=0)
    method.fit(iter(train))
    scores = method.score_maps(test_batch)

    train_features = [method.extract(b.images) for b in train]
    stacked = {name: torch.cat([f[name] for f in train_features]) for name in train_features[0]}
    maps, image_scores = brute_force(stacked, method.extract(test_batch.images), method.patch_taps,
                                     method.pooled_tap, min(k, 8), (64, 64))
    assert np.allclose(scores.image_scores, image_scores, rtol=1e-5)
    assert np.allclose(scores.maps, maps, rtol=1e-4, atol=1e-5 * np.abs(maps).max())
    assert scores.maps.shape == (4, 64, 64)


def test_model_bytes_grow_linearly_with_the_training_set(train) -> None:
    sizes = {}
    for n_batches in (1, 2):
        method = SPADE(**TINY, device="cpu", seed=0)
        method.fit(iter(train[:n_batches]))
        sizes[n_batches] = method.model_bytes()
    # per 64x64 image: 64x16x16 + 128x8x8 + 256x4x4 patch floats + 512 pooled floats (resnet18), float32
    per_image = 4 * (64 * 16 * 16 + 128 * 8 * 8 + 256 * 4 * 4 + 512)
    assert sizes == {1: 4 * per_image, 2: 8 * per_image}


def test_feature_key_is_shared_by_spades_on_one_backbone() -> None:
    """SPADEs that differ after extraction share one feature pass; a different random init does not."""
    a, b = SPADE(**TINY, device="cpu", seed=0), SPADE(**(TINY | {"k": 5}), device="cpu", seed=0)
    assert a.feature_key() == b.feature_key()
    assert a.feature_key() != SPADE(**TINY, device="cpu", seed=1).feature_key()  # random init depends on the seed


@pytest.mark.parametrize("params,message", [
    (dict(index="annoy"), "index: expected one of 'flat', 'ivf', 'hnsw', got 'annoy'"),
    (dict(k=0), "k: must be >= 1, got 0"),
    (dict(sigma=0.0), "sigma: must be > 0, got 0.0"),
    (dict(nlist=0), "nlist: must be >= 1, got 0"),
    (dict(nprobe=0), "nprobe: must be >= 1, got 0"),
    (dict(hnsw_m=0), "hnsw_m: must be >= 1, got 0"),
    (dict(ef_construction=0), "ef_construction: must be >= 1, got 0"),
    (dict(ef_search=0), "ef_search: must be >= 1, got 0"),
])
def test_bad_parameters_are_user_errors(params: dict, message: str) -> None:
    """The signature's markers hold for a SPADE built in Python: in preflight and when the fit begins."""
    method = SPADE(**(TINY | params), device="cpu", seed=0)  # stores, checks nothing
    with pytest.raises(UserError) as info:
        method.preflight()
    assert str(info.value) == f"SPADE parameter {message}"
    with pytest.raises(UserError) as info:
        method.fit_begin()
    assert str(info.value) == f"SPADE parameter {message}"


@pytest.mark.parametrize("index", ["ivf", "hnsw"])  # "flat" is the conformance check's
def test_saved_approximate_indexes_score_identically(train, test_batch, tmp_path, index: str) -> None:
    """The loaded model holds the same faiss structures (serialised, not rebuilt), so its scores are identical."""
    method = SPADE(**(TINY | {"index": index, "nlist": 4}), device="cpu", seed=0)
    method.fit(iter(train))
    method.save(tmp_path / "spade.safetensors")
    loaded = SPADE.load(tmp_path / "spade.safetensors")
    before, after = method.score_maps(test_batch), loaded.score_maps(test_batch)
    assert loaded.index == index and loaded.model_bytes() == method.model_bytes()
    assert np.array_equal(before.maps, after.maps) and np.array_equal(before.image_scores, after.image_scores)


def test_loading_another_models_file_is_a_user_error(tmp_path) -> None:
    from anombench_plugins.padim import PaDiM  # a PaDiM file is a valid model file of another kind

    padim = PaDiM(backbone="resnet18", weights="none", n_features=8, device="cpu", seed=0)
    padim.fit(iter(tiny_batches(1, 4, 64, seed=1, anomalous=False)))
    padim.save(tmp_path / "padim.safetensors")
    with pytest.raises(UserError, match="is not a saved spade model"):
        SPADE.load(tmp_path / "padim.safetensors")
    (tmp_path / "junk").write_bytes(b"not a model")
    with pytest.raises(UserError, match="is not a safetensors model file"):
        SPADE.load(tmp_path / "junk")
    tensors = {"pooled": torch.zeros(1, 2)}
    write_model_file(tmp_path / "newer", "anombench.spade", {"backbone": "resnet18", "k_neighbours": 3}, tensors)
    with pytest.raises(UserError, match="configuration does not fit this version of the model"):
        SPADE.load(tmp_path / "newer")
    save_file(tensors, str(tmp_path / "broken"), metadata={"anombench.spade": "{not json"})
    with pytest.raises(UserError, match="configuration is not valid JSON"):
        SPADE.load(tmp_path / "broken")


# ---------------------------------------------------------------------------------------------- approximate search


def gallery_data(n_images: int = 24, per_image: int = 64, dim: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training rows in clusters, queries near them, and the gallery (every third image)."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(8, dim))
    rows = (centres[rng.integers(0, 8, n_images * per_image)] + 0.5 * rng.normal(size=(n_images * per_image, dim)))
    queries = centres[rng.integers(0, 8, 300)] + 0.5 * rng.normal(size=(300, dim))
    return rows.astype(np.float32), queries.astype(np.float32), np.arange(0, n_images, 3)


APPROXIMATE = dict(nlist=None, nprobe=8, hnsw_m=16, ef_construction=40, ef_search=64)


@pytest.mark.parametrize("kind,params", [("ivf", dict(nlist=8, nprobe=8)), ("hnsw", dict(ef_search=64))])
def test_approximate_indexes_search_only_the_gallery(kind: str, params: dict) -> None:
    """Images outside the gallery hold exact copies of the queries: a search that ignored the gallery restriction
    would return distance 0."""
    rows, queries, gallery = gallery_data()
    outside = np.setdiff1d(np.arange(24), gallery)
    rows = rows.reshape(24, 64, 16)
    rows[outside[0], :64] = queries[:64]
    rows = np.ascontiguousarray(rows.reshape(-1, 16))
    exact = ExactGallery(rows, 64).nearest_squared(gallery, queries[:64])
    approx = build_gallery(rows, 64, kind, APPROXIMATE | params, seed=0).nearest_squared(gallery, queries[:64])
    assert exact.min() > 0.1
    assert np.all(approx >= exact * (1 - 1e-5))


def recall_at_1(kind: str, params: dict) -> float:
    rows, queries, gallery = gallery_data()
    exact = ExactGallery(rows, 64).nearest_squared(gallery, queries)
    approx = build_gallery(rows, 64, kind, APPROXIMATE | params, seed=0).nearest_squared(gallery, queries)
    return float(np.mean(np.isclose(approx, exact, rtol=1e-5)))


def test_ivf_probing_every_list_is_exact() -> None:
    assert recall_at_1("ivf", dict(nlist=8, nprobe=8)) == 1.0


def test_approximate_recall_against_exact() -> None:
    """Recall@1 within the gallery: IVF probing 1 of 8 lists misses some neighbours; HNSW finds nearly all."""
    assert 0.3 < recall_at_1("ivf", dict(nlist=8, nprobe=1)) < 1.0
    assert recall_at_1("hnsw", dict(ef_search=128)) >= 0.9


def test_ivf_answers_queries_whose_probed_lists_hold_no_gallery_patch() -> None:
    """Gallery = image 0, far from the other images; queries sit among the others, so the one probed list holds
    no gallery patch and faiss returns nothing: the search must fall back to every list, not report inf."""
    rng = np.random.default_rng(1)
    rows = rng.normal(size=(8, 64, 4)).astype(np.float32)
    rows[0] += 100.0
    rows = np.ascontiguousarray(rows.reshape(-1, 4))
    queries = rng.normal(size=(20, 4)).astype(np.float32)
    gallery = np.array([0])
    approx = build_gallery(rows, 64, "ivf", APPROXIMATE | dict(nlist=2, nprobe=1), seed=0)
    assert np.allclose(approx.nearest_squared(gallery, queries), ExactGallery(rows, 64).nearest_squared(gallery, queries),
                       rtol=1e-5)
