"""VisA (Visual Anomaly, Zou et al., ECCV 2022; CC BY 4.0) as a dataset plugin ("visa").

The release layout (``VisA_20220922.tar`` extracted into the root)::

    <root>/<class>/Data/Images/Normal/0000.JPG
    <root>/<class>/Data/Images/Anomaly/000.JPG
    <root>/<class>/Data/Masks/Anomaly/000.png       any non-zero value is defect (the release stores small labels)
    <root>/split_csv/1cls.csv                       columns object, split, label, image, mask (paths from the root)

The split is the release's one-class split (``1cls.csv``): train rows are normal, test rows normal or anomalous.
Sample ids are ``Normal/<stem>`` and ``Anomaly/<stem>`` (what ``saved_maps`` looks up). All 12 classes are
objects (the paper groups them as complex structure, multiple instances and single instance, which is not a
texture/object distinction). Images are 1.5-2 Mpx JPEGs: the usual resize to ``image_size`` applies.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from anombench import hookimpl
from anombench.api import Family
from anombench.errors import UserError
from anombench.params import PositiveInt
from anombench.hookspecs import Register
from anombench_plugins.datafetch import fetch_archive
from anombench_plugins.datacheck import FilePreflight
from anombench_plugins.imagefiles import (
    FileSplit,
    MaskFile,
    Record,
    ResizeCrop,
    check_one_size,
    check_sizes,
    looks_like_category_folder,
    mask_size_mismatches,
    resolve_root,
)

CLASSES = ("candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2",
           "pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum")  # fmt: skip
SPLIT_FILE = Path("split_csv") / "1cls.csv"
SPLIT_COLUMNS = ("object", "split", "label", "image", "mask")
DEFAULT_URL = "https://amazon-visual-anomaly.s3.us-west-2.amazonaws.com/VisA_20220922.tar"
ENV_ROOT = "ANOMBENCH_DATA_VISA"
MISSING_HINT = (
    "get VisA (https://github.com/amazon-science/spot-diff) with `anombench data download visa --root {root}`, "
    f"or pass --data visa=/path/to/VisA (or set {ENV_ROOT})"
)


@dataclass(frozen=True)
class SplitRow:
    category: str
    split: str  # "train" | "test"
    anomalous: bool
    image: Path
    mask: Path | None


def read_split(root: Path) -> list[SplitRow]:
    """The rows of ``split_csv/1cls.csv``; a missing file or column is a one-line error naming it."""
    path = root / SPLIT_FILE
    if not path.is_file():
        hint = looks_like_category_folder(root)
        raise UserError(f"VisA split file {path} not found: " + (hint or MISSING_HINT.format(root=root)))
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in SPLIT_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise UserError(f"{path}: columns {missing} missing; expected {', '.join(SPLIT_COLUMNS)}")
        rows = []
        for line, row in enumerate(reader, start=2):
            label = row["label"].strip().lower()
            if row["split"] not in ("train", "test") or label not in ("normal", "anomaly"):
                raise UserError(f"{path}:{line}: split must be train/test and label normal/anomaly, got "
                                f"{row['split']!r}/{row['label']!r}")
            mask = row["mask"].strip()
            rows.append(SplitRow(row["object"], row["split"], label == "anomaly", root / row["image"].strip(),
                                 root / mask if mask else None))
        return rows


def _record(row: SplitRow) -> Record:
    kind = "Anomaly" if row.anomalous else "Normal"
    return Record(str(row.image), MaskFile(str(row.mask)) if row.mask else None, int(row.anomalous),
                  f"{kind}/{row.image.stem}")


class VisA(FilePreflight):
    """The 12 VisA classes with the release's one-class split."""

    name = "VisA"

    def __init__(self, root: str | None = None, image_size: PositiveInt | None = 256,
                 crop_size: PositiveInt | None = 224) -> None:
        check_sizes(VisA, "visa", image_size, crop_size)
        self.root = resolve_root(root, ENV_ROOT, MISSING_HINT)
        self.image_size, self.crop_size = image_size, crop_size
        self.rows = read_split(self.root)

    def categories(self) -> list[str]:
        listed = {row.category for row in self.rows}
        return [c for c in CLASSES if c in listed and (self.root / c).is_dir()]

    def known_categories(self) -> list[str]:
        return list(CLASSES)

    def family(self, category: str) -> Family:
        self._rows(category, "train")
        return "object"

    def train(self, category: str, seed: int) -> FileSplit:
        return self._split(category, "train")

    def test(self, category: str, seed: int) -> FileSplit:
        return self._split(category, "test")

    def problems(self, category: str) -> list[str]:
        """Files the split names that are not there, anomalous rows without a mask, masks of the wrong size."""
        rows = self._rows(category, "train") + self._rows(category, "test")
        missing = [f"missing image: {r.image} (listed in {SPLIT_FILE})" for r in rows if not r.image.is_file()]
        missing += [f"missing mask: {r.mask} of {r.image}" for r in rows if r.mask and not r.mask.is_file()]
        no_mask = [f"missing mask: anomalous {r.image} has no mask in {SPLIT_FILE}"
                   for r in rows if r.anomalous and r.mask is None]
        present = [_record(r) for r in rows if r.image.is_file() and (r.mask is None or r.mask.is_file())]
        return missing + no_mask + mask_size_mismatches(present)

    def _rows(self, category: str, split: str) -> list[SplitRow]:
        if category not in CLASSES:
            raise UserError(f"unknown VisA class '{category}'; the classes are: {', '.join(CLASSES)}")
        return [r for r in self.rows if r.category == category and r.split == split]

    def _split(self, category: str, split: str) -> FileSplit:
        rows = self._rows(category, split)
        if not rows:
            raise UserError(f"VisA class '{category}' has no {split} rows in {self.root / SPLIT_FILE}")
        problems = [p for p in self.problems(category) if p.startswith("missing")]
        if problems:
            raise UserError(f"{len(problems)} file(s) of VisA '{category}' missing, e.g. {problems[0]}")
        records = [_record(r) for r in rows]
        if self.image_size is None:
            check_one_size([Path(r.image) for r in records], f"VisA '{category}'")
        return FileSplit(records, ResizeCrop(self.image_size, self.crop_size))

    @staticmethod
    def download(root: str, url: str | None = None, sha256: str | None = None) -> None:
        """Fetch and extract the release archive into ``root`` (resumable, idempotent). The release publishes no
        SHA-256, so the archive's is logged for you to pin with --sha256."""
        fetch_archive(url or DEFAULT_URL, Path(root).expanduser(), sha256)


@hookimpl
def anombench_register_datasets(register: Register) -> None:
    register("visa", VisA)
