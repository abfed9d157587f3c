"""MVTec AD and Rd-MVTec AD as dataset plugins ("mvtec", "rd_mvtec").

Supported layout: the official release (``mvtec_anomaly_detection.tar.xz``, MVTec Software GmbH, CC BY-NC-SA 4.0),
extracted so that the category folders sit directly in the root::

    <root>/<category>/train/good/000.png
    <root>/<category>/test/good/000.png                    normal test images (all-zero mask)
    <root>/<category>/test/<defect>/000.png                anomalous test images
    <root>/<category>/ground_truth/<defect>/000_mask.png   their masks (0/255; non-zero is anomalous)

Any image resolution is accepted (the release is 700-1024 px; pre-resized copies work too); grey-scale
categories (grid, screw, zipper) are read as three equal channels. Any other folder in this layout (one with
``train`` or ``test`` in it: your own part, say) is a category too, of family "other" unless the ``families``
parameter says ``{mypart: object}``. ``image_size: null, crop_size: null`` evaluates at the images' own
resolution, as the official evaluation does; all images of a category must then have one size (the runner
stacks batches, and a method fitted at one size cannot score another), else a one-line error names two.
Masks are found by stem whatever the case of the extension (``000_mask.PNG``); a missing one is named with the
near misses in its folder.

Preprocessing (the paper's): resize to ``image_size`` x ``image_size`` (bicubic; masks nearest), then a
centre crop of ``crop_size``. Rd-MVTec AD instead rotates by an angle drawn uniformly in (-10, +10) degrees
(bilinear; masks nearest) about the centre of the resized image, filling the uncovered corners with 0 (black;
mask 0 = normal), then crops ``crop_size`` at a random position. Both draws come from a hash of
(seed, category, split, image id), never from a global RNG, so seed s gives the same dataset in every run,
whatever the loader's worker count or order.

Bad data, decided per case: a missing root or category, an empty train folder, a defect image without its
mask and a mask whose size differs from its image are one-line errors when the split is built; an unreadable
or truncated image is a one-line error when it is loaded, naming the file; stray files (.DS_Store, Thumbs.db,
notes) are skipped with a log line.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import astuple, dataclass
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import numpy as np
from PIL import Image

from anombench import hookimpl
from anombench.api import Family
from anombench.errors import UserError
from anombench.hookspecs import Register
from anombench.params import PositiveInt, Range, check_arguments
from anombench_plugins.datafetch import fetch_archive
from anombench_plugins.datacheck import FilePreflight
from anombench_plugins.imagefiles import (
    AnyImage,
    FileSplit,
    MaskFile,
    PairTransform,
    Record,
    ResizeCrop,
    check_sizes,
    crop_pair,
    list_images,
    list_subfolders,
    MaskLookup,
    check_one_size,
    looks_like_category_folder,
    mask_size_mismatches,
    resize_pair,
    resolve_root,
)

log = logging.getLogger("anombench.data")

TEXTURES = ("carpet", "grid", "leather", "tile", "wood")
OBJECTS = ("bottle", "cable", "capsule", "hazelnut", "metal_nut", "pill", "screw", "toothbrush", "transistor", "zipper")
CATEGORIES = TEXTURES + OBJECTS  # the order of the paper's tables

# (train good, test good, test defective) per category in the official release; each defective image has a mask.
OFFICIAL_COUNTS: dict[str, tuple[int, int, int]] = {
    "carpet": (280, 28, 89), "grid": (264, 21, 57), "leather": (245, 32, 92), "tile": (230, 33, 84),
    "wood": (247, 19, 60), "bottle": (209, 20, 63), "cable": (224, 58, 92), "capsule": (219, 23, 109),
    "hazelnut": (391, 40, 70), "metal_nut": (220, 22, 93), "pill": (267, 26, 141), "screw": (320, 41, 119),
    "toothbrush": (60, 12, 30), "transistor": (213, 60, 40), "zipper": (240, 32, 119),
}  # fmt: skip

DEFAULT_URL = (
    "https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f282/download/420938113-1629952094/"
    "mvtec_anomaly_detection.tar.xz"
)
DEFAULT_SHA256 = "cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d"
ENV_ROOT = "ANOMBENCH_DATA_MVTEC"
GOOD = "good"
MISSING_HINT = (
    "get MVTec AD (https://www.mvtec.com/company/research/datasets/mvtec-ad) with "
    "`anombench data download mvtec --root {root}`, or pass --data mvtec=/path/to/mvtec_anomaly_detection "
    f"(or set {ENV_ROOT})"
)


def _mask_lookup(category_dir: Path, defect: str) -> MaskLookup:
    return MaskLookup(category_dir / "ground_truth" / defect, ("_mask",))


def _defect_records(category_dir: Path) -> tuple[list[Record], list[str]]:
    """The test images in ``test/<defect>/`` with their masks, and one problem line per defect image whose
    mask is missing (naming the near misses in its folder)."""
    records, missing = [], []
    for folder in list_subfolders(category_dir / "test"):
        lookup = None if folder.name == GOOD else _mask_lookup(category_dir, folder.name)
        for image in list_images(folder):
            mask = lookup.find(image.stem) if lookup is not None else None
            if lookup is not None and mask is None:
                missing.append(f"{image} (expected mask {lookup.expected(image.stem)})")
            records.append(Record(str(image), MaskFile(str(mask)) if mask else None, int(lookup is not None),
                                  f"{folder.name}/{image.stem}"))
    return records, missing


def _extra_masks(category_dir: Path) -> list[str]:
    """Mask files whose image does not exist (a renamed or deleted test image)."""
    extra = []
    for folder in list_subfolders(category_dir / "ground_truth"):
        images = category_dir / "test" / folder.name
        extra += _mask_lookup(category_dir, folder.name).extra({p.stem.lower() for p in list_images(images)}, str(images))
    return extra


def _family_of(category: str) -> Family:
    """The paper's grouping of the 15 official categories; any other category is "other"."""
    return "texture" if category in TEXTURES else "object" if category in OBJECTS else "other"


FAMILIES = ("texture", "object", "other")


def check_families(families: dict[str, str] | None) -> dict[str, Family]:
    """The ``families`` parameter: category -> texture | object | other."""
    bad = {c: f for c, f in (families or {}).items() if f not in FAMILIES}
    if bad:
        raise UserError(f"families: {bad} not allowed; each category's family is one of {', '.join(FAMILIES)}")
    return dict(families or {})  # type: ignore[arg-type]


def _row(category: str, family: str, counts: tuple[object, ...], status: str) -> str:
    """One line of the ``check`` table; the header is a row of column names."""
    train, test_good, test_defect, masks = counts
    return f"{category:<12} {family:<8} {train:>6} {test_good:>10} {test_defect:>12} {masks:>6}  {status}"


@dataclass(frozen=True)
class CategoryCounts:
    train: int
    test_good: int
    test_defect: int
    masks: int

    def status(self, category: str) -> str:
        if self == CategoryCounts(0, 0, 0, 0):
            return "missing"
        problems = []
        if self.masks < self.test_defect:
            problems.append(f"{self.test_defect - self.masks} masks missing")
        expected = OFFICIAL_COUNTS[category]
        if (self.train, self.test_good, self.test_defect) != expected:
            problems.append("official release has {}/{}/{}".format(*expected))
        return "; ".join(problems) or "ok"


def count_category(category_dir: Path) -> CategoryCounts:
    """What is on disk for one category, without raising: the raw material of ``check``."""
    train = len(list_images(category_dir / "train" / GOOD))
    test_good = len(list_images(category_dir / "test" / GOOD))
    defect_images = [
        (folder.name, image)
        for folder in list_subfolders(category_dir / "test")
        if folder.name != GOOD
        for image in list_images(folder)
    ]
    masks = sum(1 for defect, image in defect_images if _mask_lookup(category_dir, defect).find(image.stem))
    return CategoryCounts(train, test_good, len(defect_images), masks)


@dataclass(frozen=True)
class RandomRotateCrop:
    """Rd-MVTec AD's augmentation: resize, rotate in (-max_degrees, +max_degrees), crop at a random spot.

    The angle and the crop position are drawn from a generator seeded by a hash of (seed, category, split,
    image id): deterministic per image and seed, independent of global RNG state and of loading order.
    Uncovered corners are filled with 0 (black image, normal mask).
    """

    image_size: int
    crop_size: int
    seed: int
    category: str
    split: str
    max_degrees: float = 10.0

    def draw(self, sample_id: str) -> tuple[float, int, int]:
        """(angle in degrees, left, top) for one image."""
        key = f"{self.seed}/{self.category}/{self.split}/{sample_id}".encode()
        rng = np.random.default_rng(int.from_bytes(hashlib.blake2b(key, digest_size=16).digest(), "little"))
        angle = float(rng.uniform(-self.max_degrees, self.max_degrees))
        left, top = (int(v) for v in rng.integers(0, self.image_size - self.crop_size + 1, size=2))
        return angle, left, top

    def __call__(self, image: AnyImage, mask: Image.Image, sample_id: str) -> tuple[AnyImage, Image.Image]:
        image, mask = resize_pair(image, mask, self.image_size)
        angle, left, top = self.draw(sample_id)
        image = image.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=(0, 0, 0))
        mask = mask.rotate(angle, resample=Image.Resampling.NEAREST, fillcolor=0)
        return crop_pair(image, mask, left, top, self.crop_size)


class MVTecAD(FilePreflight):
    """The MVTec AD dataset: 15 categories, train = defect-free images, test = good and defective with masks."""

    name = "MVTec AD"

    def __init__(
        self,
        root: str | None = None,
        image_size: PositiveInt | None = 256,
        crop_size: PositiveInt | None = 224,
        families: dict[str, str] | None = None,
    ) -> None:
        check_sizes(MVTecAD, "mvtec", image_size, crop_size)
        self.root = resolve_root(root, ENV_ROOT, MISSING_HINT)
        self.image_size = image_size
        self.crop_size = crop_size
        self.families = check_families(families)
        if not self.categories():
            hint = looks_like_category_folder(self.root)
            raise UserError(
                f"no MVTec AD category folder in {self.root} (expected e.g. {self.root}/bottle/train/good): "
                + (hint or MISSING_HINT.format(root=self.root))
            )

    def categories(self) -> list[str]:
        """The official categories present, in the paper's order, then any other folder in the layout."""
        official = [c for c in CATEGORIES if (self.root / c).is_dir()]
        custom = [f.name for f in list_subfolders(self.root)
                  if f.name not in CATEGORIES and ((f / "train").is_dir() or (f / "test").is_dir())]
        return official + custom

    def known_categories(self) -> list[str]:
        """All 15 official categories when any of them is here (a mean over a few is not the paper's mean),
        plus your own categories."""
        present = self.categories()
        custom = [c for c in present if c not in CATEGORIES]
        return (list(CATEGORIES) if len(custom) < len(present) else []) + custom

    def family(self, category: str) -> Family:
        self._known(category)
        return self.families.get(category, _family_of(category))  # type: ignore[return-value]

    def train(self, category: str, seed: int) -> FileSplit:
        folder = self._category_dir(category) / "train" / GOOD
        records = [Record(str(p), None, 0, f"{GOOD}/{p.stem}") for p in list_images(folder)]
        if not records:
            raise UserError(f"no training images in {folder}: the category is incomplete, download it again")
        self._check_native_size(category)
        return FileSplit(records, self._transform(category, seed, "train"))

    def test(self, category: str, seed: int) -> FileSplit:
        category_dir = self._category_dir(category)
        records, missing = _defect_records(category_dir)
        if not records:
            raise UserError(f"no test images in {category_dir / 'test'}: the category is incomplete, download it again")
        if missing:
            raise UserError(f"{len(missing)} defect image(s) in {category_dir / 'test'} have no mask, e.g. {missing[0]}")
        mismatched = mask_size_mismatches(records)
        if mismatched:
            raise UserError(mismatched[0])
        self._check_native_size(category)
        return FileSplit(records, self._transform(category, seed, "test"))

    def problems(self, category: str) -> list[str]:
        """Everything wrong with one category on disk, one line each (``data check`` and the run's preflight):
        missing masks, masks without an image, masks of the wrong size, an empty train or test folder."""
        category_dir = self._category_dir(category)
        records, missing = _defect_records(category_dir)
        empty = [f"no images in {folder}" for folder, found in ((category_dir / "train" / GOOD, list_images),
                                                                 (category_dir / "test", list_subfolders))
                 if not found(folder)]
        return empty + [f"missing mask: {m}" for m in missing] + _extra_masks(category_dir) + mask_size_mismatches(records)

    def _check_native_size(self, category: str) -> None:
        if self.image_size is None:
            category_dir = self.root / category
            folders = [category_dir / "train" / GOOD, *list_subfolders(category_dir / "test")]
            check_one_size([p for folder in folders for p in list_images(folder)], f"{self.name} '{category}'")

    def _transform(self, category: str, seed: int, split: str) -> PairTransform:
        return ResizeCrop(self.image_size, self.crop_size)

    def _known(self, category: str) -> None:
        if category not in CATEGORIES and category not in self.categories():
            raise UserError(f"unknown {self.name} category '{category}'; the categories are: "
                            f"{', '.join(dict.fromkeys(CATEGORIES + tuple(self.categories())))}")

    def _category_dir(self, category: str) -> Path:
        self._known(category)
        folder = self.root / category
        if not folder.is_dir():
            present = ", ".join(self.categories())
            raise UserError(
                f"{self.name} category '{category}' not found in {self.root} (present: {present}); "
                f"download the full dataset with `anombench data download mvtec --root {self.root}`"
            )
        return folder

    @staticmethod
    def download(root: str, url: str | None = None, sha256: str | None = None) -> None:
        """Fetch and extract the official archive into ``root`` (resumable, verified, idempotent).

        Without ``url`` the official archive and its SHA-256 are used, and nothing is fetched if ``root``
        already holds the complete release (extracted by hand, say); with a ``url`` only the given ``sha256``
        (if any) is checked, since a mirror may serve something else.
        """
        path = Path(root).expanduser()
        if url is None and all(count_category(path / c).status(c) == "ok" for c in CATEGORIES):
            log.info("MVTec AD is already complete in %s; nothing to download", path)
            return
        fetch_archive(url or DEFAULT_URL, path, sha256 if url else (sha256 or DEFAULT_SHA256))

    @staticmethod
    def check(root: str, categories: Sequence[str] | None = None) -> str:
        """A table of what is on disk for ``categories`` (default: the 15 of the release), compared with the
        official release."""
        path = resolve_root(root, ENV_ROOT, MISSING_HINT)
        counts = {category: count_category(path / category) for category in categories or CATEGORIES}
        complete = sum(n.status(c) == "ok" for c, n in counts.items())
        total = CategoryCounts(*(sum(column) for column in zip(*(astuple(n) for n in counts.values()), strict=True)))
        return "\n".join(
            [f"MVTec AD at {path}", _row("category", "family", ("train", "test good", "test defect", "masks"), "status")]
            + [_row(c, _family_of(c), astuple(n), n.status(c)) for c, n in counts.items()]
            + [_row("total", "", astuple(total), f"{complete} of {len(counts)} categories complete")]
        )


class RdMVTecAD(MVTecAD):
    """Rd-MVTec AD: MVTec AD with a seeded random rotation and crop of every train and test image."""

    name = "Rd-MVTec AD"

    def __init__(
        self,
        root: str | None = None,
        image_size: PositiveInt = 256,
        crop_size: PositiveInt = 224,
        max_degrees: Annotated[float, Range(0, 180)] = 10.0,
        families: dict[str, str] | None = None,
    ) -> None:
        if image_size is None or crop_size is None:
            raise UserError("rd_mvtec rotates and crops at a fixed size: image_size and crop_size cannot be null")
        check_arguments(RdMVTecAD, {"image_size": image_size, "crop_size": crop_size, "max_degrees": max_degrees},
                        "rd_mvtec")
        super().__init__(root=root, image_size=image_size, crop_size=crop_size, families=families)
        self.max_degrees = max_degrees

    def _transform(self, category: str, seed: int, split: str) -> PairTransform:
        return RandomRotateCrop(self.image_size, self.crop_size, seed, category, split, self.max_degrees)


@hookimpl
def anombench_register_datasets(register: Register) -> None:
    register("mvtec", MVTecAD)
    register("rd_mvtec", RdMVTecAD)
