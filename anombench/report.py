"""``anombench report``: a run's tables and provenance as markdown (table.md and table.csv are also refreshed after
every cell by ``TableWriter``, so a partial run shows its progress)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from anombench.errors import UserError
from anombench.results import CELLS, RunStore, load_provenance, write_atomic
from anombench.suite import TableSpec, table_of
from anombench.tables import (Context, cells_frame, csv_frame, long_table, measured_metrics, measurement_table,
                              render_markdown)

log = logging.getLogger(__name__)


def failed_cells(cells: pd.DataFrame) -> list[str]:
    failed = cells[cells["status"] != "ok"]
    return [f"{row.cell} ({row.error})" for row in failed.itertuples()]


def in_suite_order(cells: pd.DataFrame, grid: list[str]) -> pd.DataFrame:
    """Cells in the suite's order (methods as listed, categories as the dataset lists them), not in the order
    they finished, so a local, a process-pool and a Dask run render the same table."""
    position = {cell: index for index, cell in enumerate(grid)}
    return cells.assign(_order=cells["cell"].map(position).fillna(len(position))).sort_values(
        "_order", kind="stable").drop(columns="_order")


@dataclass(frozen=True)
class RunTable:
    """A run's tables and what they are made of, read back from the run directory."""

    doc: dict[str, Any]  # the suite as run
    spec: TableSpec
    reference: dict[str, Any]
    cells: pd.DataFrame  # in suite order, see tables.cells_frame
    long: pd.DataFrame  # the paper layout, see tables.long_table
    measurements: pd.DataFrame  # every metric per cell, see tables.measurement_table
    context: Context
    grid: list[str]  # every cell id of the suite as run ([] for a run stored without one)

    def failed(self) -> list[str]:
        return failed_cells(self.cells)

    def banners(self, overrides: list[str]) -> list[str]:
        """Lines a reader must see before the figures: an unfinished run, substituted models, overrides."""
        return [line for line in (completion_notice(self.cells, self.grid), substitution_notice(self.cells),
                                  overrides_notice(overrides)) if line]


def read_run_table(run_dir: str | Path) -> RunTable:
    run_dir = Path(run_dir)
    if not (run_dir / CELLS).exists():
        raise UserError(f"{run_dir}: not a run directory (no {CELLS})")
    doc = yaml.safe_load((run_dir / "suite.yaml").read_text())
    spec, reference = table_of(doc, str(run_dir / "suite.yaml"))
    info = load_provenance(run_dir)
    grid = list(info.get("grid") or [])
    cells = in_suite_order(cells_frame(RunStore(run_dir).records.values()), grid)
    seeds = len(info.get("seeds") or doc.get("seeds") or [0])
    long = long_table(cells, spec, reference, list(doc.get("datasets") or []), info.get("family_sizes"), seeds)
    raw_metrics = doc.get("metrics") or []
    metrics = measured_metrics(cells, list(raw_metrics if isinstance(raw_metrics, list) else raw_metrics))
    ci = info.get("ci") or (doc.get("run") or {}).get("ci")
    return RunTable(doc, spec, reference, cells, long, measurement_table(cells, metrics),
                    Context(float(ci) if ci else None, seeds), grid)


def completion_notice(cells: pd.DataFrame, grid: list[str]) -> str:
    """'incomplete: 4 of 8 cells' while cells of the suite's grid have no record yet (ok or failed), else ''."""
    if not grid:
        return ""
    done = len(set(grid) & set(cells["cell"]))
    return f"incomplete: {done} of {len(grid)} cells" if done < len(grid) else ""


def substitution_notice(cells: pd.DataFrame) -> str:
    """A line naming every substituted method label: a different model than the suite (and the paper) states."""
    labels = list(dict.fromkeys(cells.loc[cells["substituted"], "label"])) if not cells.empty else []
    if not labels:
        return ""
    return ("substituted models (a different model than the paper's; shown beside the paper's figure without a "
            "difference): " + ", ".join(labels))


def overrides_notice(overrides: list[str]) -> str:
    """A visible line when the run departs from its suite file (e.g. a backbone substituted), since the paper's
    figures beside ours then compare different setups."""
    if not overrides:
        return ""
    return "Run with overrides of the suite file (figures may not be comparable with the paper's): " + \
        ", ".join(f"`{item}`" for item in overrides)


def tables_markdown(table: RunTable) -> str:
    """The run's paper-layout and measurements tables in markdown, with their notes."""
    return render_markdown(table.long, table.spec, table.reference, table.failed(), table.measurements, table.context)


def banner_markdown(banners: list[str]) -> str:
    return "\n\n".join(f"**{line}**" for line in banners)


def write_tables(run_dir: str | Path) -> None:
    """Refresh table.md and table.csv of a run from its stored cells."""
    run_dir = Path(run_dir)
    table = read_run_table(run_dir)
    banner = banner_markdown(table.banners(load_provenance(run_dir).get("overrides") or []))
    markdown = tables_markdown(table)
    write_atomic(run_dir / "table.md", f"{banner}\n\n{markdown}" if banner else markdown)
    write_atomic(run_dir / "table.csv", csv_frame(table.long, table.measurements).to_csv(index=False))


class TableWriter:
    """The run observer (``runner.RunObserver``) that refreshes table.md and table.csv after each job's cells are
    stored. A table that cannot be rendered is logged in one line and never raised: a table must not stop cells
    from running or being stored (they are in cells.jsonl; ``anombench report`` renders them again later)."""

    def cells_finished(self, store: RunStore) -> None:
        try:
            write_tables(store.directory)
        except Exception as exc:  # noqa: BLE001  (whatever a table does wrong, the run goes on)
            first_line = (str(exc).splitlines() or [""])[0]
            log.warning("%s: table.md not refreshed (%s: %s); the cells are stored, `anombench report %s` renders "
                        "them", store.directory, type(exc).__name__, first_line, store.directory)


def _shown(value: Any) -> str:
    """A provenance value as a reader wants it: a list as comma-separated items, not Python's repr."""
    return ", ".join(map(str, value)) if isinstance(value, list) else str(value)


def provenance_markdown(run_dir: str | Path) -> str:
    info = load_provenance(run_dir)
    keys = ("suite", "overrides", "anombench_version", "git_commit", "device", "gpu", "cpu", "threads", "seeds",
            "batch_size", "loader_workers", "picked", "executor", "jobs_at_once", "ci", "ci_resamples", "started_at",
            "suite_sha256", "command")
    lines = [f"- **{key}**: {_shown(info[key])}" for key in keys if info.get(key) not in (None, "", [])]
    versions = ", ".join(f"{name} {version}" for name, version in sorted((info.get("versions") or {}).items()))
    if versions:
        lines.append(f"- **versions**: {versions}")
    return "\n".join(lines)


def paired_lines(run_dir: str | Path) -> list[str]:
    """For a run made with ``--ci``: every pair of its method variants compared on the same test images (paired
    bootstrap of the difference, anombench.bootstrap), one line per metric for the mean over classes, or for the
    class when the run has one. Empty for a run without ``bootstrap.npz``."""
    from anombench.bootstrap import compare_methods, stored_summaries

    stored = stored_summaries(run_dir)
    methods = list(dict.fromkeys(record["method"] for record, _ in stored.values()))
    info = load_provenance(run_dir)
    level, resamples = info.get("ci") or 0.95, info.get("ci_resamples") or 1000
    lines = []
    for i, first in enumerate(methods):
        for second in methods[i + 1:]:
            results = compare_methods(run_dir, first, second, level, resamples)
            one_class = {r.scope for r in results} - {"mean"}
            lines += [r.text() for r in results if r.scope == "mean" or len(one_class) == 1]
    return lines


def report_markdown(run_dir: str | Path) -> str:
    run_dir = Path(run_dir)
    table = read_run_table(run_dir)
    title = f"# {table.doc.get('name', run_dir.name)}"
    description = str(table.doc.get("description") or "").strip()
    banner = banner_markdown(table.banners(load_provenance(run_dir).get("overrides") or []))
    paired = paired_lines(run_dir)
    comparisons = ["## Paired comparisons", "\n".join(f"- {line}" for line in paired)] if paired else []
    parts = [title, banner, description, tables_markdown(table), *comparisons, "## Provenance",
             provenance_markdown(run_dir)]
    return "\n\n".join(p for p in parts if p) + "\n"
