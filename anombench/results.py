"""The result store: one run directory, written cell by cell so a run that dies keeps every finished cell.

Layout of a run directory::

    cells.jsonl      one JSON object per finished cell (ok or failed), replaced atomically after each cell
    run.json         provenance: versions, git commit, machine, threads, device, suite hash, command line
    suite.yaml       the suite as run (after --set / --data overrides)
    table.csv/.md    the rendered table (rewritten after each cell, so a partial run still shows its progress)
    artifacts/<cell>/ examples.npz (thumbnails, masks, maps of chosen test images; every image score) and
                     curves.json (ROC / PRO curves) for the report

Atomicity: every file is written to a temporary sibling, fsynced and renamed over the old one; a SIGKILL at any
moment leaves either the old or the new file, never a torn one. Files get the permissions a plain ``open`` would
give them (0644 under umask 022), so a teammate, a CI artifact step or a web server can read them.

A cell's result is a typed ``CellResult`` while the run holds it; it becomes a JSON line (``to_record``) and artifact
files only here, in ``RunStore.add``.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from anombench.api import Resources
from anombench.errors import UserError

CELLS = "cells.jsonl"
PROVENANCE = "run.json"


@dataclass
class CellResult:
    """What one cell produced, as the runner holds it (like pytest's TestReport): every figure once, artifacts apart.

    ``artifacts``: {file name: bytes} stored under artifacts/<cell>/ (examples.npz, curves.json, ...), never in the
    JSON line. ``extra``: where it ran (a Dask worker's address and torch threads), added to the line as is.
    """

    cell: str
    method: str
    plugin: str
    params: dict[str, Any]
    label: str  # the method variant's column label ("name [backbone=...]" when a --set override substituted it)
    substituted: bool
    dataset: str
    category: str
    family: str
    seed: int
    status: str = "ok"  # "ok" or "failed"
    error: str | None = None  # one line
    traceback: str | None = None
    shared_features_with: list[str] = field(default_factory=list)
    resources: Resources = field(default_factory=Resources)
    metrics: dict[str, float | None] = field(default_factory=dict)  # None: undefined for this cell (see undefined)
    undefined: dict[str, str] = field(default_factory=dict)  # metric -> why it does not exist for this cell
    metric_error_bounds: dict[str, float] = field(default_factory=dict)
    intervals: dict[str, list[float]] = field(default_factory=dict)  # metric -> [lo, hi] (runs with --ci)
    finished_at: str = ""
    artifacts: dict[str, bytes] = field(default_factory=dict, repr=False)
    extra: dict[str, Any] = field(default_factory=dict)

    def fail(self, error: str, trace: str | None) -> None:
        """Mark the cell failed; figures computed before the failure are dropped (they would look finished)."""
        self.status, self.error, self.traceback = "failed", error, trace
        self.metrics, self.undefined, self.metric_error_bounds, self.artifacts = {}, {}, {}, {}
        self.intervals = {}

    def to_record(self) -> dict[str, Any]:
        """The cells.jsonl line (keys as documented in the README's result format)."""
        record = {
            "cell": self.cell, "method": self.method, "plugin": self.plugin, "params": self.params,
            "label": self.label, "substituted": self.substituted, "dataset": self.dataset,
            "category": self.category, "family": self.family, "seed": self.seed, "status": self.status,
            "error": self.error, "traceback": self.traceback, "shared_features_with": self.shared_features_with,
            "resources": self.resources.to_record(),
            "metrics": self.metrics, "undefined": self.undefined, "finished_at": self.finished_at,
        }
        if self.metric_error_bounds:
            record["metric_error_bounds"] = self.metric_error_bounds
        if self.intervals:
            record["intervals"] = self.intervals
        return record | self.extra


def cell_dirname(cell: str) -> str:
    """A file-system-safe folder name for a cell id ("padim|mvtec|bottle|0" -> "padim__mvtec__bottle__0")."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in cell.replace("|", "__"))


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so that readers see the old or the new content, never a mix."""
    write_atomic_bytes(path, text.encode())


def _umask() -> int:
    """The process's umask (reading it means setting it: set it back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic_bytes(path: Path, payload: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a plain open() would give 0666 less the umask
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class RunStore:
    """The cells of one run, keyed by cell id; the last record of a cell wins (a resumed retry replaces a failure)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.records: dict[str, dict[str, Any]] = {}
        cells = self.directory / CELLS
        if cells.exists():
            for number, line in enumerate(cells.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    raise UserError(f"{cells}:{number}: not a JSON line; the run directory is damaged") from None
                self.records[record["cell"]] = record

    def discard_stale_temporaries(self) -> None:
        """Remove temporaries of a writer killed before its rename (the files they were replacing are intact).
        Only the run's writer may call this: a reader would race with a live writer's temporaries."""
        for stale in self.directory.rglob(".*.tmp"):
            stale.unlink(missing_ok=True)

    def finished(self) -> set[str]:
        """Ids of cells that completed successfully (failed cells are retried on --resume)."""
        return {cell for cell, record in self.records.items() if record.get("status") == "ok"}

    def artifact_dir(self, cell: str) -> Path:
        return self.directory / "artifacts" / cell_dirname(cell)

    def add(self, result: CellResult) -> None:
        """Store a finished cell: its artifacts first, then the cell line, so a listed cell has its files."""
        for name, payload in result.artifacts.items():
            write_atomic_bytes(self.artifact_dir(result.cell) / name, payload)
        self.records[result.cell] = result.to_record()
        lines = "".join(json.dumps(r, sort_keys=True, allow_nan=False) + "\n" for r in self.records.values())
        write_atomic(self.directory / CELLS, lines)


def write_json(path: Path, data: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def load_cells(directory: str | Path) -> pd.DataFrame:
    """One row per cell: method, dataset, category, group, seed, status, error, and one column per metric."""
    directory = Path(directory)
    if not (directory / CELLS).exists():
        raise UserError(f"{directory}: not a run directory (no {CELLS})")
    rows = []
    for record in RunStore(directory).records.values():
        row = {key: record.get(key) for key in ("cell", "method", "plugin", "dataset", "category", "family", "seed",
                                                 "status", "error")}
        row.update(record.get("metrics") or {})
        rows.append(row)
    return pd.DataFrame(rows)


def load_provenance(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / PROVENANCE
    return json.loads(path.read_text()) if path.exists() else {}


def latest_run(root: str | Path) -> Path:
    """The most recent run directory under ``root`` (directories are named by UTC timestamp)."""
    root = Path(root)
    runs = sorted(p.parent for p in root.glob(f"**/{CELLS}"))
    if not runs:
        raise UserError(f"no runs found under {root}; run `anombench run SUITE` first or name a run directory")
    return max(runs, key=lambda p: (p / CELLS).stat().st_mtime)
