"""Score anomaly maps made elsewhere with this harness's metrics: the "saved_maps" method plugin.

One map per test image at ``<root>/<category>/<sample id>.<ext>``, the sample id as the dataset names it
(MVTec AD: ``<root>/bottle/crack/000.npy``), ext one of npy, tiff, tif, png (the first found, in that order):
- ``.npy``: a 2-D array of any real dtype; float TIFF: its raw values; 8/16-bit PNG: its integer values.
  Scores are compared only with each other, so any monotone scale works; the values are not clipped.
- size: the dataset's output resolution (the batch's H x W), used as is; or, with ``image_size`` (and
  ``crop_size``) set to the dataset's, the image's original resolution, put through the dataset's own
  geometric transform for masks (nearest resize, centre crop), so map and mask stay aligned. The original
  size is checked against the test image itself when ``dataset`` (a dataset plugin name) and
  ``dataset_params`` (its params, with ``root``) say where the images are; ``anombench evaluate`` sets them.
- image scores: ``<root>/<category>/image_scores.csv`` (columns id, score) when present, else the map's maximum.

A missing or mis-sized map is a one-line error naming the file and the expected size. ``fit`` reads nothing:
there is nothing to learn, and skipping it spares decoding the training images.

The category: the ``category`` parameter, else the maps root's only sub-folder (``anombench evaluate`` sets it).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image

from anombench import hookimpl
from anombench.api import Batch, Scores
from anombench.errors import UserError
from anombench.params import PositiveInt
from anombench.hookspecs import Register
from anombench_plugins.imagefiles import ResizeCrop, check_sizes, image_size, list_subfolders, size_text

MAP_SUFFIXES = (".npy", ".tiff", ".tif", ".png")
SCORE_FILE = "image_scores.csv"


def read_map(path: Path) -> np.ndarray:
    """A saved map as float32 (H, W), values as stored."""
    try:
        if path.suffix == ".npy":
            values = np.load(path)
        elif path.suffix in (".tif", ".tiff"):
            import tifffile

            values = tifffile.imread(path)
        else:
            with Image.open(path) as image:
                values = np.asarray(image)
    except Exception as exc:  # numpy, tifffile and Pillow each raise their own errors for a damaged file
        raise UserError(f"cannot read saved map {path}: {exc}") from None
    values = np.squeeze(np.asarray(values))
    if values.ndim != 2 or not np.issubdtype(values.dtype, np.number):
        raise UserError(f"saved map {path} has shape {values.shape} ({values.dtype}): expected one 2-D array of scores")
    return values.astype(np.float32)


def read_image_scores(path: Path) -> dict[str, float]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if not {"id", "score"} <= set(reader.fieldnames or []):
            raise UserError(f"{path}: expected the columns id, score")
        return {row["id"]: float(row["score"]) for row in reader}


class SavedMaps:
    """A method that looks its anomaly maps up on disk instead of computing them."""

    def __init__(
        self,
        root: str,
        category: str | None = None,
        image_size: PositiveInt | None = None,
        crop_size: PositiveInt | None = None,
        dataset: str | None = None,
        dataset_params: dict[str, object] | None = None,
        device: str = "cpu",
        seed: int = 0,
    ) -> None:
        check_sizes(SavedMaps, "saved_maps", image_size, crop_size)
        self.root = Path(root).expanduser()
        self.transform = ResizeCrop(image_size, crop_size)
        self.category = category
        self.dataset, self.dataset_params = dataset, dict(dataset_params or {})
        self.image_sizes: dict[str, tuple[int, int]] = {}
        self.folder: Path | None = None
        self.scores: dict[str, float] | None = None

    def preflight(self) -> None:
        if not self.root.is_dir():
            raise UserError(f"saved_maps: maps root {self.root} does not exist")

    def fit(self, train: Iterable[Batch]) -> None:
        self.preflight()
        self.folder = self.root / self._category()
        if not self.folder.is_dir():
            raise UserError(f"saved_maps: no maps folder {self.folder}")
        score_file = self.folder / SCORE_FILE
        self.scores = read_image_scores(score_file) if score_file.is_file() else None
        self.image_sizes = self._original_sizes()

    def _original_sizes(self) -> dict[str, tuple[int, int]]:
        """(height, width) of each test image by id, from file headers, when the dataset is known."""
        if self.dataset is None or self.transform.image_size is None:
            return {}
        from anombench.plugins import registry

        test = registry().get("dataset", self.dataset).factory(**self.dataset_params).test(self._category(), 0)
        return {r.id: image_size(Path(r.image))[::-1] for r in getattr(test, "records", [])}

    def _category(self) -> str:
        if self.category:
            return self.category
        folders = list_subfolders(self.root)
        if len(folders) != 1:
            raise UserError(f"saved_maps: set params.category: {self.root} holds {len(folders)} category folders "
                            f"({', '.join(f.name for f in folders[:5])})")
        return folders[0].name

    def _map_path(self, sample_id: str) -> Path:
        assert self.folder is not None, "fit first"
        for suffix in MAP_SUFFIXES:
            path = self.folder / f"{sample_id}{suffix}"
            if path.is_file():
                return path
        raise UserError(f"saved_maps: no map {self.folder / sample_id}.npy (nor .tiff, .tif, .png) for test image "
                        f"'{sample_id}'")

    def _fitted(self, path: Path, size: tuple[int, int]) -> np.ndarray:
        """The map at the batch's (H, W): as stored, or through the dataset's transform from original size."""
        values = read_map(path)
        stored = (values.shape[1], values.shape[0])
        if values.shape == size:
            return values
        original = self.image_sizes.get(path.relative_to(self.folder).with_suffix("").as_posix())
        if self.transform.image_size is not None and original in (None, values.shape):
            as_image = Image.fromarray(values)  # mode F
            _, resized = self.transform(Image.new("L", as_image.size), as_image, path.stem)
            values = np.asarray(resized, dtype=np.float32)
            if values.shape == size:
                return values
        expected = size_text((size[1], size[0]))
        if original is not None:
            expected += f" (the dataset's output) or {size_text((original[1], original[0]))} (the image's)"
        elif self.transform.image_size is None:
            expected += " (the dataset's output) or the image's size with image_size/crop_size set"
        raise UserError(f"saved map {path} is {size_text(stored)}: expected {expected}")

    def score_maps(self, batch: Batch) -> Scores:
        size = (int(batch.images.shape[-2]), int(batch.images.shape[-1]))
        maps = np.stack([self._fitted(self._map_path(i), size) for i in batch.ids])
        if self.scores is None:
            image_scores = maps.reshape(len(maps), -1).max(axis=1)
        else:
            absent = [i for i in batch.ids if i not in self.scores]
            if absent:
                raise UserError(f"{self.folder / SCORE_FILE} has no score for '{absent[0]}'")
            image_scores = np.array([self.scores[i] for i in batch.ids], dtype=np.float32)
        return Scores(maps=maps.astype(np.float32), image_scores=image_scores.astype(np.float32))


@hookimpl
def anombench_register_methods(register: Register) -> None:
    register("saved_maps", SavedMaps)
