"""Comparing a run with a stored baseline: what ``anombench compare`` and the CI gate run.

Two modes (README, "Baselines and CI"):
- tolerance (default): a quality figure that falls below its baseline by *more* than ``--tol`` is a regression.
  The tolerance is in stated units, a fraction (``0.005``) or the tables' points (``0.5pt``), and at most
  ``MAX_TOLERANCE``: ``--tol 0.5`` would allow 50 points and never fail, so it is refused. A drop equal to the
  tolerance passes (the comparison allows ``EPSILON`` for float rounding: 0.995 - 1.0 is -0.0050000000000000044).
- exact (``--exact``, the stored-baseline gate): figures *and* map fingerprints (``anombench.fingerprint``) must
  match the baseline within ``EXACT_RTOL``, relative, in either direction. A bug that raises a figure is as much
  a change of the protocol as one that lowers it; an intended change needs a deliberate baseline refresh.
  ``EXACT_RTOL`` is 1e-5, from the measured noise: the quickstart (narrowed to stripes and plate) run at
  ``--threads 1`` and at ``--threads 2`` differs by at most 1.1e-6 relative on map fingerprints and 3.6e-8 on
  figures; reruns at the same thread count are bit-identical. That measurement holds for one machine and one set
  of library versions: a baseline from another CPU or torch build may differ by more, so refresh it where CI runs.

Only quality metrics are compared (a metric class says so with ``higher_is_better = True``); time and memory
depend on the machine and are reported, not gated. A baseline cell that the run lacks or failed is a failure too,
so a run cannot pass by skipping work; such cells are listed once, with the reason, before the rows.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

import pandas as pd

from anombench.errors import UserError
from anombench.fingerprint import PARTS, largest_relative_change
from anombench.plugins import Registry
from anombench.results import RunStore, load_cells, load_provenance

MAX_TOLERANCE = 0.1  # 10 points: a looser gate cannot tell a broken method from a working one
EPSILON = 1e-9  # float rounding allowance on figures in [0, 1] (far below run-to-run noise and any tolerance)
EXACT_RTOL = 1e-5  # see the module docstring for how it was measured
FINGERPRINT = "fingerprint.json"
COLUMNS = ["cell", "metric", "baseline", "run", "diff", "verdict"]


def parse_tolerance(text: str) -> float:
    """``--tol``: ``0.005`` (a fraction of AUROC/PRO) or ``0.5pt`` (the tables' points) -> 0.005.

    Raises UserError for anything else, a negative value, or more than MAX_TOLERANCE.
    """
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(pt)?\s*", text)
    if match is None:
        raise UserError(f"--tol {text}: write a fraction (0.005) or points with 'pt' (0.5pt)")
    value = float(match.group(1)) / (100 if match.group(2) else 1)
    if value > MAX_TOLERANCE:
        points = f"{value * 100:g} points"
        hint = "" if match.group(2) else f"; if you meant points, write --tol {match.group(1)}pt"
        raise UserError(f"--tol {text} allows a drop of {points}, more than the gate's bound of "
                        f"{MAX_TOLERANCE} ({MAX_TOLERANCE * 100:g} points), so it could never fail{hint}")
    return value


@dataclass(frozen=True)
class Comparison:
    """The outcome: notes on the suites, cells that could not be compared, one row per compared figure or map part."""

    rows: pd.DataFrame  # COLUMNS; verdict equal / better / worse / changed (maps), upper case where it fails
    missing: list[tuple[str, str]]  # (cell, reason), once per cell
    notes: list[str]  # suite name / hash differences, shown before the rows
    exact: bool
    tolerance: float
    failures: int = field(init=False)

    def __post_init__(self) -> None:
        failing = self.rows["verdict"].str.isupper().sum() + len(self.missing)
        failing += len(self.notes) if self.exact else 0
        object.__setattr__(self, "failures", int(failing))

    def counts(self) -> dict[str, int]:
        verdicts = self.rows["verdict"].str.lower()
        return {kind: int((verdicts == kind).sum()) for kind in ("better", "equal", "worse", "changed")}

    def summary(self) -> str:
        """E.g. '24 compared: 6 better, 18 equal, 0 worse (tolerance 0.005 = 0.5pt)'."""
        counts = self.counts()
        bound = (f"relative tolerance {self.tolerance:g}, either direction fails" if self.exact
                 else f"tolerance {self.tolerance:g} = {self.tolerance * 100:g}pt")
        cells = len({cell for cell, _ in self.missing})  # a cell may lack both figures and maps: counted once
        missing = f"; {cells} cell(s) not fully compared" if self.missing else ""
        maps = f", {counts['changed']} map part(s) changed" if self.exact else ""
        return (f"{len(self.rows)} compared: {counts['better']} better, {counts['equal']} equal, "
                f"{counts['worse']} worse{maps} ({bound}){missing}")

    def to_text(self) -> str:
        lines = [f"NOTE: {note}" for note in self.notes]
        lines += [f"MISSING {cell}: {reason}" for cell, reason in self.missing]
        shown = self.rows.astype(object).where(self.rows.notna(), None)  # a maps row has no single value: "-"
        table = shown.to_markdown(index=False, floatfmt=".6g", missingval="-") if len(self.rows) else "(no rows)"
        return "\n".join(lines + ([""] if lines else []) + [table, "", self.summary()])

    def advice(self) -> str:
        """The line to print when the gate fails."""
        if self.exact:
            return (f"{self.failures} difference(s) from the stored baseline (up or down). If the change is intended, "
                    "refresh the baseline deliberately and say why in the commit (README, 'Baselines and CI').")
        return f"{self.failures} figure(s) below the baseline by more than {self.tolerance:g}, missing or failed"


def gated_metrics(registry: Registry) -> set[str]:
    """Metrics whose registered class declares ``higher_is_better = True``."""
    return {name for name, entry in registry.entries["metric"].items()
            if getattr(entry.factory, "higher_is_better", False)}


def suite_notes(run_dir: str, baseline_dir: str) -> list[str]:
    """A line per difference in suite name or suite hash (run.json's ``suite``, ``suite_sha256``)."""
    run, base = load_provenance(run_dir), load_provenance(baseline_dir)
    notes = []
    if run.get("suite") != base.get("suite"):
        notes.append(f"different suites: the run is '{run.get('suite')}', the baseline '{base.get('suite')}'")
    elif run.get("suite_sha256") != base.get("suite_sha256"):
        notes.append(f"suite '{run.get('suite')}' differs from the baseline's (sha256 "
                     f"{str(run.get('suite_sha256'))[:12]} vs {str(base.get('suite_sha256'))[:12]}): "
                     "other data, methods or parameters")
    return notes


def _verdict(diff: float, allowed: float, exact: bool) -> str:
    """'equal' within ``allowed`` (+ EPSILON), else 'better' / 'worse'; upper case where the gate fails."""
    if abs(diff) <= allowed + EPSILON:
        return "equal"
    if diff > 0:
        return "BETTER" if exact else "better"
    return "WORSE"


def _figure_rows(cell: str, expected: pd.Series, got: pd.Series, names: list[str], tolerance: float,
                 exact: bool) -> tuple[list[dict], list[str]]:
    rows, absent = [], []
    for metric in names:
        value, reference = got.get(metric), float(expected[metric])
        if value is None or pd.isna(value):
            absent.append(metric)
            continue
        diff = float(value) - reference
        allowed = tolerance * abs(reference) if exact else tolerance
        rows.append({"cell": cell, "metric": metric, "baseline": reference, "run": float(value), "diff": diff,
                     "verdict": _verdict(diff, allowed, exact)})
    return rows, absent


def _fingerprint(directory: str, cell: str) -> dict | None:
    path = RunStore(directory).artifact_dir(cell) / FINGERPRINT
    return json.loads(path.read_text()) if path.exists() else None


def _map_rows(cell: str, run_dir: str, baseline_dir: str, rtol: float) -> tuple[list[dict], str | None]:
    """One row per fingerprint part (largest relative change), or the reason they cannot be compared."""
    theirs, ours = _fingerprint(baseline_dir, cell), _fingerprint(run_dir, cell)
    if theirs is None:
        return [], f"the baseline has no {FINGERPRINT} (refresh the baseline)"
    if ours is None:
        return [], f"the run wrote no {FINGERPRINT}"
    try:
        changes = largest_relative_change(ours, theirs)
    except ValueError as exc:
        return [], f"maps not comparable: {exc}"
    return [{"cell": cell, "metric": f"maps: {part} (relative diff)", "baseline": math.nan, "run": math.nan,
             "diff": changes[part],
             "verdict": "equal" if changes[part] <= rtol else "CHANGED"} for part in PARTS], None


def compare_runs(run_dir: str, baseline_dir: str, tolerance: float, registry: Registry,
                 metrics: list[str] | None = None, exact: bool = False) -> Comparison:
    """Compare every (baseline cell, gated metric); with ``exact``, ``tolerance`` is relative and the cells'
    map fingerprints are compared too. See the module docstring for the verdicts."""
    if not 0 <= tolerance <= MAX_TOLERANCE:
        raise UserError(f"tolerance {tolerance} must be in 0..{MAX_TOLERANCE}")
    run, base = load_cells(run_dir).set_index("cell"), load_cells(baseline_dir).set_index("cell")
    gated = gated_metrics(registry)
    not_quality = sorted(set(metrics or []) - gated)
    if not_quality:  # a faster run would read as a drop: time and memory are reported, never gated
        raise UserError(f"--metrics {', '.join(not_quality)}: only quality metrics (higher is better) can be gated; "
                        f"these are: {', '.join(sorted(gated))}")
    chosen = set(metrics) if metrics else gated
    rows: list[dict] = []
    missing: list[tuple[str, str]] = []
    for cell, expected in base[base["status"] == "ok"].iterrows():
        names = sorted(m for m in chosen if m in base.columns and pd.notna(expected.get(m)))
        got = run.loc[cell] if cell in run.index else None
        if got is None:
            missing.append((cell, "not in the run"))
            continue
        if got["status"] != "ok":
            missing.append((cell, f"failed in the run: {got.get('error')}"))
            continue
        figure_rows, absent = _figure_rows(cell, expected, got, names, tolerance, exact)
        rows += figure_rows
        if absent:
            missing.append((cell, f"no value in the run for {', '.join(absent)}"))
        if exact:
            map_rows, reason = _map_rows(cell, run_dir, baseline_dir, tolerance)
            rows += map_rows
            if reason:
                missing.append((cell, reason))
    if not rows and not missing:
        raise UserError(f"{baseline_dir}: no quality figure to compare (metrics {sorted(chosen) or 'none'}); "
                        "a gate that compares nothing would always pass")
    return Comparison(pd.DataFrame(rows, columns=COLUMNS), missing, suite_notes(run_dir, baseline_dir), exact,
                      tolerance)
