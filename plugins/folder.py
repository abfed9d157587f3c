"""Your own images as a dataset plugin ("folder"), in the layout users of anomalib's ``Folder`` already have::

    <root>/good/*.png                      normal images (normal_dir): training, and a held-out part for testing
    <root>/crack/*.png, <root>/scratch/    anomalous test images (abnormal_dirs: one or more folders)
    <root>/mask/crack/000_mask.png         masks (mask_dir), per defect folder or flat (<root>/mask/000.png),
                                           matched to images by file stem, with or without a "_mask" suffix,
                                           whatever the case of the extension; non-zero is anomalous
    <root>/good_test/*.png                 optional normal test images (normal_test_dir)

Without ``normal_test_dir`` a seeded share ``normal_split_ratio`` of the normal images is held out for testing:
drawn from a hash of (seed, category), so seed s gives the same split in every run and on every machine.
Without ``mask_dir`` only the image-level metrics mean something (every defect's mask is empty).

Several categories side by side: if ``root`` itself does not hold ``normal_dir`` but its sub-folders do, each
of those sub-folders is a category in the same layout (``<root>/partA/good``, ``<root>/partB/good``). Otherwise
``root`` is one category, named ``category`` (default: the root folder's name). Every category's family is
``family`` (default "other") unless ``families: {name: texture}`` says otherwise.

Folder names may be relative to the category folder or absolute. Sample ids are ``<folder name>/<stem>``
(``crack/000``), which is what the ``saved_maps`` method looks up.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated

import numpy as np

from anombench import hookimpl
from anombench.api import Family
from anombench.errors import UserError
from anombench.hookspecs import Register
from anombench.params import PositiveInt, Range, check_arguments
from anombench_plugins.datacheck import FilePreflight
from anombench_plugins.imagefiles import (
    FileSplit,
    MaskFile,
    MaskLookup,
    Record,
    ResizeCrop,
    check_one_size,
    check_sizes,
    list_images,
    list_subfolders,
    mask_size_mismatches,
)
from anombench_plugins.mvtec import check_families


def seeded_holdout(paths: list[Path], ratio: float, seed: int, category: str) -> set[Path]:
    """The normal images held out for testing: round(ratio * n) of them, drawn from a hash of (seed, category)."""
    key = hashlib.blake2b(f"{seed}/{category}".encode(), digest_size=16).digest()
    rng = np.random.default_rng(int.from_bytes(key, "little"))
    count = int(round(ratio * len(paths)))
    return {paths[i] for i in rng.permutation(len(paths))[:count]}


class Folder(FilePreflight):
    """Images in plain folders: one folder of normal images, one or more of anomalous ones, optional masks."""

    name = "folder"

    def __init__(
        self,
        root: str,
        normal_dir: str = "good",
        abnormal_dirs: str | list[str] | None = None,
        mask_dir: str | None = None,
        normal_test_dir: str | None = None,
        normal_split_ratio: Annotated[float, Range(0, 1, hi_open=True)] = 0.2,
        image_size: PositiveInt | None = 256,
        crop_size: PositiveInt | None = 224,
        category: str | None = None,
        family: str = "other",
        families: dict[str, str] | None = None,
    ) -> None:
        check_sizes(Folder, "folder", image_size, crop_size)
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise UserError(f"folder dataset root {self.root} does not exist")
        check_arguments(Folder, {"normal_split_ratio": normal_split_ratio}, "folder")
        self.normal_dir, self.mask_dir, self.normal_test_dir = normal_dir, mask_dir, normal_test_dir
        self.abnormal_dirs = [abnormal_dirs] if isinstance(abnormal_dirs, str) else list(abnormal_dirs or [])
        self.ratio = normal_split_ratio
        self.image_size, self.crop_size = image_size, crop_size
        self.default_family = check_families({"family": family})["family"]
        self.families = check_families(families)
        self.folders = self._category_folders(category)

    def _category_folders(self, category: str | None) -> dict[str, Path]:
        if (self.root / self.normal_dir).is_dir() or Path(self.normal_dir).is_absolute():
            return {category or self.root.name: self.root}
        found = {f.name: f for f in list_subfolders(self.root) if (f / self.normal_dir).is_dir()}
        if not found:
            raise UserError(f"no normal image folder '{self.normal_dir}' in {self.root} nor in its sub-folders: "
                            "set normal_dir to the folder of your defect-free images")
        return found

    def categories(self) -> list[str]:
        return list(self.folders)

    def family(self, category: str) -> Family:
        self._folder(category)
        return self.families.get(category, self.default_family)

    def train(self, category: str, seed: int) -> FileSplit:
        normal = self._normal_images(category)
        held_out = self._held_out(category, normal, seed)
        records = [Record(str(p), None, 0, self._id(self.normal_dir, p)) for p in normal if p not in held_out]
        if not records:
            raise UserError(f"no training images left in {self._path(category, self.normal_dir)} "
                            f"(normal_split_ratio {self.ratio} of {len(normal)})")
        return self._split(category, records)

    def test(self, category: str, seed: int) -> FileSplit:
        records, missing = self._test_records(category, seed)
        if missing:
            raise UserError(f"{len(missing)} anomalous image(s) of {category} have no mask, e.g. {missing[0]}")
        mismatched = mask_size_mismatches(records)
        if mismatched:
            raise UserError(mismatched[0])
        if not records:
            raise UserError(f"no test images for {category}: set abnormal_dirs, normal_test_dir or normal_split_ratio")
        return self._split(category, records)

    def problems(self, category: str) -> list[str]:
        """Everything wrong on disk for one category, one line each (``data check`` and the run's preflight)."""
        records, missing = self._test_records(category, 0)
        folders = [self.normal_dir, *self.abnormal_dirs] + ([self.normal_test_dir] if self.normal_test_dir else [])
        empty = [f"no images in {self._path(category, d)}" for d in folders if not list_images(self._path(category, d))]
        return empty + [f"missing mask: {m}" for m in missing] + self._extra_masks(category) + mask_size_mismatches(records)

    def _extra_masks(self, category: str) -> list[str]:
        """Masks that no anomalous image claims (a flat mask folder is shared by all abnormal_dirs)."""
        stems: dict[Path, set[str]] = {}
        lookups: dict[Path, MaskLookup] = {}
        for folder in self.abnormal_dirs:
            lookup = self._mask_lookup(category, folder)
            if lookup is not None:
                lookups[lookup.folder] = lookup
                stems.setdefault(lookup.folder, set()).update(p.stem.lower() for p in
                                                              list_images(self._path(category, folder)))
        return [line for key, lookup in lookups.items() for line in lookup.extra(stems[key], "abnormal_dirs")]

    def _test_records(self, category: str, seed: int) -> tuple[list[Record], list[str]]:
        """Normal test images (held out or normal_test_dir), then anomalous ones with their masks; and one line
        per anomalous image whose mask is missing."""
        if self.normal_test_dir:
            normal_dir, normal = self.normal_test_dir, list_images(self._path(category, self.normal_test_dir))
        else:
            all_normal = self._normal_images(category)
            held_out = self._held_out(category, all_normal, seed)
            normal_dir, normal = self.normal_dir, [p for p in all_normal if p in held_out]
        records = [Record(str(p), None, 0, self._id(normal_dir, p)) for p in normal]
        missing = []
        for folder in self.abnormal_dirs:
            lookup = self._mask_lookup(category, folder)
            for image in list_images(self._path(category, folder)):
                mask = lookup.find(image.stem) if lookup else None
                if lookup and mask is None:
                    missing.append(f"{image} (expected mask {lookup.expected(image.stem)})")
                records.append(Record(str(image), MaskFile(str(mask)) if mask else None, 1, self._id(folder, image)))
        return records, missing

    def _mask_lookup(self, category: str, abnormal: str) -> MaskLookup | None:
        """Masks of one anomalous folder: ``<mask_dir>/<its name>/`` if that exists, else ``<mask_dir>/``."""
        if not self.mask_dir:
            return None
        base = self._path(category, self.mask_dir)
        per_defect = base / Path(abnormal).name
        return MaskLookup(per_defect if per_defect.is_dir() else base, ("_mask", ""))

    def _normal_images(self, category: str) -> list[Path]:
        images = list_images(self._path(category, self.normal_dir))
        if not images:
            raise UserError(f"no normal images in {self._path(category, self.normal_dir)}")
        return images

    def _held_out(self, category: str, normal: list[Path], seed: int) -> set[Path]:
        return set() if self.normal_test_dir else seeded_holdout(normal, self.ratio, seed, category)

    def _split(self, category: str, records: list[Record]) -> FileSplit:
        if self.image_size is None:
            check_one_size([Path(r.image) for r in records], f"folder dataset '{category}'")
        return FileSplit(records, ResizeCrop(self.image_size, self.crop_size))

    @staticmethod
    def _id(folder: str, image: Path) -> str:
        return f"{Path(folder).name}/{image.stem}"

    def _folder(self, category: str) -> Path:
        if category not in self.folders:
            raise UserError(f"unknown folder dataset category '{category}'; the categories are: "
                            f"{', '.join(self.folders)}")
        return self.folders[category]

    def _path(self, category: str, folder: str) -> Path:
        return self._folder(category) / folder  # an absolute ``folder`` replaces the category folder


@hookimpl
def anombench_register_datasets(register: Register) -> None:
    register("folder", Folder)
