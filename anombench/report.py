"""``anombench report``: a run's tables and provenance as markdown (written into the run after every cell too)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from anombench.results import load_cells, load_provenance, write_atomic
from anombench.suite import TableSpec, table_of
from anombench.tables import long_table, render_markdown


def failed_cells(cells) -> list[str]:
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
    """A run's table and what it is made of, read back from the run directory."""

    doc: dict[str, Any]  # the suite as run
    spec: TableSpec
    reference: dict[str, Any]
    cells: pd.DataFrame  # in suite order
    long: pd.DataFrame  # see tables.long_table


def read_run_table(run_dir: str | Path) -> RunTable:
    run_dir = Path(run_dir)
    doc = yaml.safe_load((run_dir / "suite.yaml").read_text())
    spec, reference = table_of(doc, str(run_dir / "suite.yaml"))
    info = load_provenance(run_dir)
    cells = in_suite_order(load_cells(run_dir), info.get("grid") or [])
    long = long_table(cells, spec, reference, list(doc.get("datasets") or []), info.get("family_sizes"),
                      len(info.get("seeds") or [0]))
    return RunTable(doc, spec, reference, cells, long)


def tables_markdown(run_dir: str | Path) -> tuple[str, pd.DataFrame]:
    """The run's table in markdown and its long frame (numbers in display units)."""
    table = read_run_table(run_dir)
    return render_markdown(table.long, table.spec, table.reference, failed_cells(table.cells)), table.long


def write_tables(run_dir: str | Path) -> None:
    """Refresh table.md and table.csv of a run (called after each finished cell, so partial runs show progress)."""
    run_dir = Path(run_dir)
    markdown, long = tables_markdown(run_dir)
    notice = overrides_notice(run_dir)
    write_atomic(run_dir / "table.md", f"{notice}\n\n{markdown}" if notice else markdown)
    write_atomic(run_dir / "table.csv", long.to_csv(index=False))


def provenance_markdown(run_dir: str | Path) -> str:
    info = load_provenance(run_dir)
    keys = ("suite", "overrides", "anombench_version", "git_commit", "device", "gpu", "cpu", "threads", "seeds", "batch_size",
            "started_at", "suite_sha256", "command")
    lines = [f"- **{key}**: {info[key]}" for key in keys if info.get(key) not in (None, "")]
    versions = ", ".join(f"{name} {version}" for name, version in sorted((info.get("versions") or {}).items()))
    if versions:
        lines.append(f"- **versions**: {versions}")
    return "\n".join(lines)


def overrides_notice(run_dir: str | Path) -> str:
    """A visible line when the run departs from its suite file (e.g. a backbone substituted), since the paper's
    figures beside ours then compare different setups."""
    overrides = load_provenance(run_dir).get("overrides") or []
    if not overrides:
        return ""
    return "**Run with overrides of the suite file** (figures may not be comparable with the paper's): " + \
        ", ".join(f"`{item}`" for item in overrides)


def report_markdown(run_dir: str | Path) -> str:
    run_dir = Path(run_dir)
    doc = yaml.safe_load((run_dir / "suite.yaml").read_text())
    markdown, _ = tables_markdown(run_dir)
    title = f"# {doc.get('name', run_dir.name)}"
    description = str(doc.get("description") or "").strip()
    parts = [title, description, overrides_notice(run_dir), markdown, "## Provenance", provenance_markdown(run_dir)]
    return "\n\n".join(p for p in parts if p) + "\n"
