"""``anombench compare``: tolerance units and bound, equal drops, counted improvements, the --exact gate on
figures and map fingerprints (both directions), suite differences and missing cells.

Run directories are real: written through the result store (``RunStore.add``, ``run.json``), and one pair made by
two small real runs at 1 and 2 threads, which must pass the exact gate (the noise the gate's tolerance is set from).
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import numpy as np
import pytest

from anombench.compare import EXACT_RTOL, MAX_TOLERANCE, compare_runs, parse_tolerance
from anombench.errors import UserError
from anombench.fingerprint import MapFingerprint
from anombench.results import CellResult, RunStore, write_json
from anombench.runner import RunOptions, run_suite
from anombench.suite import build_suite

CELL_A, CELL_B = "m|synthetic|disc|0", "m|synthetic|stripes|0"


def fingerprint(scale: float = 1.0) -> dict:
    """A real fingerprint of two small batches of maps."""
    from tests.test_examples import batch_of

    keeper = MapFingerprint(per_label=1, size=2)
    for start, values in ((0, [0.1, 0.7]), (2, [0.3, 0.9])):
        scores, batch = batch_of([v * scale for v in values], [0, 1], start, size=4)
        keeper.update(scores, batch)
    return keeper.to_json()


def write_run(directory: Path, figures: dict[str, dict[str, float]], suite: str = "quickstart",
              sha: str = "abc", fingerprints: dict[str, dict] | None = None,
              failed: dict[str, str] | None = None) -> str:
    store = RunStore(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_json(directory / "run.json", {"suite": suite, "suite_sha256": sha})
    for cell, metrics in figures.items():
        error = (failed or {}).get(cell)
        result = CellResult(cell=cell, method="m", plugin="m", params={}, label="m", substituted=False,
                            dataset="synthetic", category=cell.split("|")[2], family="object", seed=0,
                            metrics=dict(metrics))
        if error:
            result.fail(error, None)
        if fingerprints and cell in fingerprints:
            result.artifacts = {"fingerprint.json": json.dumps(fingerprints[cell]).encode()}
        store.add(result)
    return str(directory)


FIGURES = {CELL_A: {"pixel_auroc": 0.97, "pro": 0.9, "image_auroc": 1.0},
           CELL_B: {"pixel_auroc": 0.95, "pro": 0.88, "image_auroc": 0.98}}


@pytest.mark.parametrize("text,value", [("0.005", 0.005), ("0.5pt", 0.005), ("10pt", 0.1), ("0", 0.0),
                                        ("1e-3", 0.001)])
def test_tolerance_is_a_fraction_or_points(text, value):
    assert parse_tolerance(text) == pytest.approx(value)


@pytest.mark.parametrize("text,message", [
    ("0.5", "--tol 0.5 allows a drop of 50 points, more than the gate's bound of 0.1 (10 points), so it could "
            "never fail; if you meant points, write --tol 0.5pt"),
    ("11pt", "--tol 11pt allows a drop of 11 points"),
    ("-0.1", "--tol -0.1: write a fraction (0.005) or points with 'pt' (0.5pt)"),
    ("half", "--tol half: write a fraction"),
])
def test_tolerance_beyond_the_bound_or_unreadable_is_refused(text, message):
    with pytest.raises(UserError) as error:
        parse_tolerance(text)
    assert str(error.value).startswith(message)
    assert MAX_TOLERANCE == 0.1


def test_a_drop_equal_to_the_tolerance_passes_and_improvements_are_counted(tmp_path, registry):
    base = write_run(tmp_path / "base", FIGURES)
    run_figures = copy.deepcopy(FIGURES)
    run_figures[CELL_A]["image_auroc"] = 0.995  # one swapped pair of 10 x 20 images: exactly the tolerance
    run_figures[CELL_B]["pro"] = 0.95
    result = compare_runs(write_run(tmp_path / "run", run_figures), base, 0.005, registry)
    assert result.failures == 0
    assert result.counts() == {"better": 1, "equal": 5, "worse": 0, "changed": 0}
    assert result.summary() == "6 compared: 1 better, 5 equal, 0 worse (tolerance 0.005 = 0.5pt)"
    row = result.rows.set_index(["cell", "metric"]).loc[(CELL_A, "image_auroc")]
    assert row["verdict"] == "equal" and row["diff"] == pytest.approx(-0.005)


def test_a_drop_beyond_the_tolerance_fails_and_swapped_arguments_show_it(tmp_path, registry):
    base = write_run(tmp_path / "base", FIGURES)
    worse = copy.deepcopy(FIGURES)
    worse[CELL_B]["pro"] = 0.68
    run = write_run(tmp_path / "run", worse)
    result = compare_runs(run, base, 0.005, registry)
    assert result.failures == 1 and "| WORSE" in result.to_text()
    assert result.summary().startswith("6 compared: 0 better, 5 equal, 1 worse")
    swapped = compare_runs(base, run, 0.005, registry)  # run and baseline the wrong way round: it says "better"
    assert swapped.failures == 0 and swapped.counts()["better"] == 1


def test_exact_gate_fails_on_a_change_in_either_direction_and_asks_for_a_refresh(tmp_path, registry):
    prints = {cell: fingerprint() for cell in FIGURES}
    base = write_run(tmp_path / "base", FIGURES, fingerprints=prints)
    better = copy.deepcopy(FIGURES)
    better[CELL_A]["pro"] += 0.0048  # a bug that raises PRO by half a point
    better[CELL_B]["pixel_auroc"] *= 1 + EXACT_RTOL / 2  # noise: within the relative tolerance
    result = compare_runs(write_run(tmp_path / "run", better, fingerprints=prints), base, EXACT_RTOL, registry,
                          exact=True)
    assert result.failures == 1 and result.counts()["better"] == 1
    assert "| BETTER" in result.to_text() and "refresh the baseline deliberately" in result.advice()
    assert result.counts()["equal"] == 5 + 6  # the other figures and 3 fingerprint parts per cell


def test_exact_gate_compares_maps_even_when_every_figure_is_equal(tmp_path, registry):
    base = write_run(tmp_path / "base", FIGURES, fingerprints={cell: fingerprint() for cell in FIGURES})
    moved = {CELL_A: fingerprint(), CELL_B: fingerprint(scale=1.001)}  # e.g. N instead of N - 1
    result = compare_runs(write_run(tmp_path / "run", FIGURES, fingerprints=moved), base, EXACT_RTOL, registry,
                          exact=True)
    changed = result.rows[result.rows["verdict"] == "CHANGED"]
    assert result.failures == 3 and set(changed["cell"]) == {CELL_B}
    assert set(changed["metric"]) == {f"maps: {part} (relative diff)" for part in ("image_scores", "quantiles", "maps")}
    assert changed["diff"].max() == pytest.approx(0.001, rel=1e-3)
    maps_line = next(line for line in result.to_text().splitlines() if CELL_B in line and "maps: maps" in line)
    assert "nan" not in maps_line and re.search(r"\|\s+-\s+\|\s+-\s+\|", maps_line)  # no single value: "-"


def test_missing_and_failed_cells_are_listed_once_with_their_reason(tmp_path, registry):
    base = write_run(tmp_path / "base", FIGURES, fingerprints={CELL_A: fingerprint()})
    run = write_run(tmp_path / "run", FIGURES, failed={CELL_B: "RuntimeError: boom"})
    result = compare_runs(run, base, 0.005, registry)
    assert result.missing == [(CELL_B, "failed in the run: RuntimeError: boom")] and result.failures == 1
    assert result.to_text().count(CELL_B) == 1
    alone = write_run(tmp_path / "alone", {CELL_A: FIGURES[CELL_A]})
    exact = compare_runs(alone, base, EXACT_RTOL, registry, exact=True)
    assert exact.missing == [(CELL_A, "the run wrote no fingerprint.json"), (CELL_B, "not in the run")]
    figures_too = write_run(tmp_path / "bare", {CELL_A: {k: v for k, v in FIGURES[CELL_A].items() if k != "pro"}})
    both = compare_runs(figures_too, base, EXACT_RTOL, registry, exact=True)
    assert [cell for cell, _ in both.missing] == [CELL_A, CELL_A, CELL_B]  # no pro, no maps; not in the run
    assert both.summary().endswith("; 2 cell(s) not fully compared")


def test_different_suites_are_reported_before_the_rows(tmp_path, registry):
    base = write_run(tmp_path / "base", FIGURES)
    other = write_run(tmp_path / "other", FIGURES, suite="table3")
    text = compare_runs(other, base, 0.005, registry).to_text()
    assert text.startswith("NOTE: different suites: the run is 'table3', the baseline 'quickstart'\n")
    edited = write_run(tmp_path / "edited", FIGURES, sha="def")
    result = compare_runs(edited, base, EXACT_RTOL, registry, exact=True)
    assert result.notes == ["suite 'quickstart' differs from the baseline's (sha256 def vs abc): other data, "
                            "methods or parameters"]
    assert compare_runs(edited, base, 0.005, registry).failures == 0 and result.failures >= 1


def test_reruns_at_one_and_two_threads_pass_the_exact_gate(tmp_path, registry):
    """Real runs of a small suite (PixelGaussian on synthetic data), the runner writing fingerprint.json."""
    doc = {"name": "gate-test",
           "datasets": {"synthetic": {"params": {"image_size": 48, "n_train": 6, "n_test_good": 3,
                                                 "n_test_defective": 9}, "categories": ["disc", "weave"]}},
           "methods": {"pg": {"plugin": "pixel_gaussian"}},
           "metrics": ["pixel_auroc", "pro", "image_auroc"], "run": {"batch_size": 4, "workers": 0}}
    suite = build_suite(doc, "gate-test.yaml", registry)
    for threads in (1, 2):
        run_suite(suite, tmp_path / f"t{threads}", RunOptions(threads=threads, show_progress=False), registry=registry)
    result = compare_runs(str(tmp_path / "t2"), str(tmp_path / "t1"), EXACT_RTOL, registry, exact=True)
    assert result.failures == 0 and not result.missing and len(result.rows) == 2 * (3 + 3)
    stored = json.loads((RunStore(tmp_path / "t1").artifact_dir("pg|synthetic|disc|0") / "fingerprint.json").read_text())
    assert len(stored["ids"]) == 12 and len(stored["maps"]) == 4 and len(stored["quantiles"][0]) == 7


def test_fingerprint_keeps_every_score_map_quantiles_and_the_first_maps_of_each_label():
    printed = fingerprint()
    assert printed["ids"] == ["img0", "img1", "img2", "img3"]
    assert printed["image_scores"] == pytest.approx([0.1, 0.7, 0.3, 0.9])
    assert printed["map_ids"] == ["img0", "img1"] and np.allclose(printed["maps"][1], 0.7)
    assert printed["quantiles"][3] == pytest.approx([0.9] * len(printed["quantile_levels"]))
    assert json.loads(json.dumps(printed)) == printed
