"""Preflight of a dataset on disk: every missing, extra or broken file, found before any model is fitted.

``preflight_data(dataset, categories, verify)`` returns one line per problem (an empty list: all good):
- structure: what the dataset's ``problems(category)`` reports (missing masks, masks without an image, masks
  of another size, empty folders), or, for a dataset without that method, the error its splits raise;
- with ``verify``: every image and mask of the splits is decoded in full (in parallel worker processes, with a
  progress bar), so a truncated or unreadable file is named now and not an hour into a run.

The host imports no plugin by name: ``anombench data check`` and the runner's preflight reach this through the
optional dataset method ``check_files(category, verify, progress) -> list[str]`` that ``FilePreflight`` gives
the file-based datasets.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from typing import Any

from tqdm import tqdm

from anombench.api import Dataset
from anombench.errors import UserError
from anombench_plugins.imagefiles import MaskFile, open_image, open_mask


def _split_files(split: Any) -> list[tuple[str, str]]:
    """(kind, path) of every image and mask file a split reads; splits that are not file based give none."""
    files = []
    for record in getattr(split, "records", []):
        files.append(("image", record.image))
        if isinstance(record.mask, MaskFile):
            files.append(("mask", record.mask.path))
    return files


def _decode(item: tuple[str, str]) -> str | None:
    kind, path = item
    try:
        (open_image if kind == "image" else open_mask)(path)
    except UserError as exc:
        return f"broken {kind}: {exc}"
    return None


def category_problems(dataset: Dataset, category: str) -> tuple[list[str], list[tuple[str, str]]]:
    """(problem lines, files to decode) of one category."""
    problems_of = getattr(dataset, "problems", None)
    problems = list(problems_of(category)) if callable(problems_of) else []
    files: list[tuple[str, str]] = []
    for build in (dataset.train, dataset.test):
        try:
            files += _split_files(build(category, 0))
        except UserError as exc:
            if not problems:  # the structural report already says it, line by line
                problems.append(f"{category}: {exc}")
    return problems, list(dict.fromkeys(files))


def verify_files(files: list[tuple[str, str]], workers: int = 0, progress: bool = True) -> list[str]:
    """Decode every file fully; one line per file that fails. ``workers`` 0: one process per CPU."""
    bar = tqdm(total=len(files), desc="verify", unit="file", disable=not progress)
    broken = []
    with ProcessPoolExecutor(max_workers=workers or None) as pool:
        for result in pool.map(_decode, files, chunksize=16):
            bar.update()
            if result:
                broken.append(result)
    bar.close()
    return broken


def preflight_data(dataset: Dataset, categories: list[str] | None = None, verify: bool = True,
                   workers: int = 0, progress: bool = False) -> list[str]:
    """Every problem of the dataset's categories (default: all present), one line each; see the module doc."""
    problems: list[str] = []
    files: list[tuple[str, str]] = []
    for category in categories or dataset.categories():
        found, category_files = category_problems(dataset, category)
        problems += found
        files += category_files
    if verify and files:
        problems += verify_files(files, workers, progress)
    return problems


class FilePreflight:
    """Mixin for a file-based dataset: ``check_files`` for the runner's preflight before any cell."""

    def check_files(self, category: str, verify: bool = True, progress: bool = False) -> list[str]:
        """One line per missing, extra or broken file of ``category`` (decoding every file if ``verify``, in
        one process per CPU, with a progress bar if ``progress``)."""
        return preflight_data(self, [category], verify=verify, progress=progress)  # type: ignore[arg-type]
