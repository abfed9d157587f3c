"""Comparing a run with a stored baseline: the check CI runs after the quickstart.

Only quality metrics are compared (a metric class says so with ``higher_is_better = True``); time and memory
depend on the machine and are reported, not gated. A baseline cell that the run lacks or failed is a failure too,
so a run cannot pass by skipping work.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from anombench.errors import UserError
from anombench.plugins import Registry
from anombench.results import load_cells


@dataclass(frozen=True)
class Comparison:
    rows: pd.DataFrame  # cell, metric, baseline, run, diff, verdict
    failures: int

    def to_markdown(self) -> str:
        return self.rows.to_markdown(index=False, floatfmt=".4f")


def gated_metrics(registry: Registry) -> set[str]:
    """Metrics whose registered class declares ``higher_is_better = True``."""
    return {name for name, entry in registry.entries["metric"].items()
            if getattr(entry.factory, "higher_is_better", False)}


def compare_runs(run_dir: str, baseline_dir: str, tolerance: float, registry: Registry,
                 metrics: list[str] | None = None) -> Comparison:
    """Every (baseline cell, gated metric): verdict 'ok', 'better', 'REGRESSION' (below baseline - tolerance),
    'MISSING' (no finished cell in the run) or 'FAILED' (the run's cell failed)."""
    run, base = load_cells(run_dir).set_index("cell"), load_cells(baseline_dir).set_index("cell")
    gated = gated_metrics(registry)
    not_quality = sorted(set(metrics or []) - gated)
    if not_quality:  # a faster run would read as a drop: time and memory are reported, never gated
        raise UserError(f"--metrics {', '.join(not_quality)}: only quality metrics (higher is better) can be gated; "
                        f"these are: {', '.join(sorted(gated))}")
    chosen = set(metrics) if metrics else gated
    rows = []
    for cell, expected in base[base["status"] == "ok"].iterrows():
        names = sorted(m for m in chosen if m in base.columns and pd.notna(expected.get(m)))
        got = run.loc[cell] if cell in run.index else None
        for metric in names:
            value = float("nan") if got is None or got["status"] != "ok" else float(got.get(metric, float("nan")))
            diff = value - float(expected[metric])
            if got is None:
                verdict = "MISSING"
            elif got["status"] != "ok":
                verdict = "FAILED"
            elif not diff >= -tolerance:
                verdict = "REGRESSION"
            else:
                verdict = "better" if diff > tolerance else "ok"
            rows.append({"cell": cell, "metric": metric, "baseline": float(expected[metric]), "run": value,
                         "diff": diff, "verdict": verdict})
    frame = pd.DataFrame(rows, columns=["cell", "metric", "baseline", "run", "diff", "verdict"])
    if frame.empty:
        raise UserError(f"{baseline_dir}: no quality figure to compare (metrics {sorted(chosen) or 'none'}); "
                        "a gate that compares nothing would always pass")
    return Comparison(frame, int(frame["verdict"].isin(["MISSING", "FAILED", "REGRESSION"]).sum()))
