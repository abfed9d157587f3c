"""Tables: seeds averaged with their standard error, the paper's group means, several datasets, substituted
models, undefined figures, intervals, every measurement, formatting as the paper prints cells."""

from __future__ import annotations

import io
from typing import Any

import pandas as pd
import pytest

from anombench.suite import TableSpec
from anombench.tables import (Context, cells_frame, csv_frame, long_table, measured_metrics, measurement_table,
                              measurement_wide, render_markdown, wide_table)


def record(method: str, dataset: str, category: str, family: str, seed: int, metrics: dict[str, float | None],
           label: str | None = None, substituted: bool = False, **extra: Any) -> dict[str, Any]:
    """A cell record as the runner stores it in cells.jsonl (the keys the tables read)."""
    return {"cell": f"{method}|{dataset}|{category}|{seed}", "method": method, "label": label or method,
            "substituted": substituted, "plugin": "padim", "dataset": dataset, "category": category, "family": family,
            "seed": seed, "status": "ok", "error": None, "metrics": metrics, **extra}


def cells(rows: list[tuple[str, str, str, str, int, float, float]]) -> pd.DataFrame:
    return cells_frame([record(m, d, c, g, s, {"pixel_auroc": a, "pro": p}) for m, d, c, g, s, a, p in rows])


SPEC = TableSpec(cell=["pixel_auroc", "pro"], aggregates=["textures", "objects", "all"])


def test_seeds_are_averaged_and_group_means_follow_the_paper():
    frame = cells([("padim", "mvtec", "carpet", "texture", 0, 0.90, 0.80),
                   ("padim", "mvtec", "carpet", "texture", 1, 0.92, 0.82),
                   ("padim", "mvtec", "bottle", "object", 0, 0.98, 0.94),
                   ("padim", "mvtec", "screw", "object", 0, 0.96, 0.90)])
    long = long_table(frame, SPEC, {}).set_index(["category", "metric"])["ours"]
    assert long[("carpet", "pixel_auroc")] == pytest.approx(91.0)
    assert long[("textures", "pro")] == pytest.approx(81.0)
    assert long[("objects", "pixel_auroc")] == pytest.approx(97.0)
    assert long[("all", "pixel_auroc")] == pytest.approx((91.0 + 98.0 + 96.0) / 3)  # mean over classes
    wide = wide_table(long_table(frame, SPEC, {}), SPEC)
    assert list(wide.index) == ["carpet", "bottle", "screw", "textures", "objects", "all"]
    assert wide.loc["carpet", "padim"] == "(91.0 ± 1.0, 81.0 ± 1.0)"  # two seeds: mean ± standard error
    assert wide.loc["bottle", "padim"] == "(98.0, 94.0)"


def test_failed_cells_are_left_out_of_means_and_listed():
    frame = cells([("padim", "mvtec", "bottle", "object", 0, 0.98, 0.94),
                   ("padim", "mvtec", "screw", "object", 0, 0.50, 0.50)])
    frame.loc[1, "status"], frame.loc[1, "error"] = "failed", "RuntimeError: boom"
    long = long_table(frame, SPEC, {})
    assert long.set_index(["category", "metric"])["ours"][("objects", "pro")] == pytest.approx(94.0)
    text = render_markdown(long, SPEC, {}, ["padim|mvtec|screw|0 (RuntimeError: boom)"])
    assert "FAILED cells (1): padim|mvtec|screw|0 (RuntimeError: boom)" in text


def test_several_datasets_get_their_own_aggregates_and_reference_keys():
    frame = cells([("padim", "mvtec", "bottle", "object", 0, 0.98, 0.94),
                   ("padim", "stc", "scene01", "other", 0, 0.90, 0.70)])
    spec = TableSpec(cell=["pixel_auroc", "pro"], aggregates=["all"])
    reference = {"values": {"padim": {"mvtec:all": [98.0, 94.0], "stc:all": [91.0, None]}}}
    long = long_table(frame, spec, reference, ["mvtec", "stc"]).set_index(["category", "metric"])
    assert long.loc[("mvtec:all", "pixel_auroc"), "ours"] == pytest.approx(98.0)
    assert long.loc[("stc:all", "pixel_auroc"), "diff"] == pytest.approx(-1.0)
    wide = wide_table(long.reset_index(), spec)
    assert list(wide.index) == ["bottle", "scene01", "mvtec:all", "stc:all"]
    assert wide.loc["stc:all", "padim paper"] == "(91.0, -)"


def test_raw_units_and_reference_only_columns():
    frame = cells([("padim", "mvtec", "bottle", "object", 0, 0.0231, 0.5)])
    spec = TableSpec(cell=["pixel_auroc"], percent=False)
    reference = {"values": {"padim": {"bottle": 0.03}}, "only": {"SPADE": {"bottle": 0.339}}}
    wide = wide_table(long_table(frame, spec, reference), spec)
    assert wide.loc["bottle"].to_dict() == {"padim": "0.023", "padim paper": "0.030", "padim diff": "-0.007",
                                            "SPADE (paper only)": "0.339"}


def test_a_mean_over_some_classes_is_labelled_and_not_set_against_the_papers():
    """A run narrowed to bottle: its 'all' is a mean over 1 of 15 classes, so it is shown as 'all (1/15)' with no
    diff, and the paper's 15-class mean stays on its own 'all' row."""
    frame = cells([("padim", "mvtec", "bottle", "object", 0, 0.98, 0.94)])
    reference = {"values": {"padim": {"bottle": [98.1, 93.9], "objects": [97.0, 90.0], "all": [97.5, 92.1]}}}
    sizes = {"mvtec": {"texture": 5, "object": 10}}
    long = long_table(frame, SPEC, reference, family_sizes=sizes)
    wide = wide_table(long, SPEC)
    assert list(wide.index) == ["bottle", "objects (1/10)", "objects", "all (1/15)", "all"]
    assert wide.loc["all (1/15)"].to_dict() == {"padim": "(98.0, 94.0)", "padim paper": "", "padim diff": ""}
    assert wide.loc["all"].to_dict() == {"padim": "", "padim paper": "(97.5, 92.1)", "padim diff": ""}
    assert wide.loc["bottle", "padim diff"] == "(-0.1, +0.1)"
    complete = long_table(frame, SPEC, reference, family_sizes={"mvtec": {"object": 1}})
    assert set(complete["category"]) == {"bottle", "objects", "all"}  # every class the dataset has: plain labels


def test_a_mean_over_fewer_seeds_than_the_suites_says_so():
    """Rd-MVTec AD averages five seeds: a run killed after its first has every class but not every seed."""
    frame = cells([("padim", "mvtec", c, "object", 0, 0.9, 0.8) for c in ("bottle", "screw")])
    long = long_table(frame, SPEC, {"values": {"padim": {"all": [97.0, 91.0]}}},
                      family_sizes={"mvtec": {"object": 2}}, seeds=5)
    wide = wide_table(long, SPEC)
    assert wide.loc["all (2/2, 1/5 seeds)"].to_dict() == {"padim": "(90.0, 80.0)", "padim paper": "", "padim diff": ""}
    assert wide.loc["all"].to_dict() == {"padim": "", "padim paper": "(97.0, 91.0)", "padim diff": ""}


def test_one_dataset_of_a_several_dataset_table_takes_its_own_reference_figures():
    """Table VIII narrowed to MVTec AD: its 'all' is compared with the paper's 'mvtec:all'; STC's figures go."""
    frame = cells([("padim", "mvtec", "bottle", "object", 0, 0.98, 0.94)])
    spec = TableSpec(cell=["pixel_auroc"], aggregates=["all"])
    reference = {"values": {"padim": {"mvtec:all": 97.0, "stc:all": 90.0}}, "only": {"SPADE": {"stc:all": 80.0}}}
    long = long_table(frame, spec, reference, ["mvtec"], family_sizes={"mvtec": {"object": 1}})
    assert long.set_index("category").loc["all", "diff"] == pytest.approx(1.0)
    assert set(long["category"]) == {"bottle", "all"} and "SPADE" not in set(long["method"])


def test_two_datasets_on_one_class_give_two_rows():
    """MVTec AD and Rd-MVTec AD on bottle (Table III beside Table VI), or two aliases of one plugin: one row per
    dataset, named 'dataset:class', where pandas used to fail with duplicate labels."""
    frame = cells([("padim", "mvtec", "bottle", "object", 0, 0.98, 0.94),
                   ("padim", "rd_mvtec", "bottle", "object", 0, 0.96, 0.90),
                   ("padim", "mvtec", "screw", "object", 0, 0.90, 0.80)])
    reference = {"values": {"padim": {"mvtec:bottle": [98.1, 93.9]}}}
    long = long_table(frame, SPEC, reference, ["mvtec", "rd_mvtec"])
    wide = wide_table(long, SPEC)
    assert list(wide.index)[:3] == ["mvtec:bottle", "rd_mvtec:bottle", "screw"]
    assert wide.loc["rd_mvtec:bottle", "padim"] == "(96.0, 90.0)"
    assert wide.loc["mvtec:bottle", "padim diff"] == "(-0.1, +0.1)" and wide.loc["rd_mvtec:bottle", "padim diff"] == ""
    assert {"mvtec:objects", "rd_mvtec:objects"} <= set(wide.index)
    measured = measurement_wide(measurement_table(frame, ["pixel_auroc"]))
    assert list(measured["category"]) == ["mvtec:bottle", "rd_mvtec:bottle", "screw"]


def test_undefined_figure_is_a_dash_with_its_reason_and_the_cells_other_figures_stay():
    """A class without good images has no image AUROC; its pixel figures and times are shown, the group mean of
    image AUROC is left out (a mean over fewer classes would pass for the group's), and a footnote says why."""
    reason = "image AUROC needs good and defective test images; the test set has no good images"
    frame = cells_frame([
        record("padim", "mvtec", "bottle", "object", 0, {"image_auroc": 0.99, "pixel_auroc": 0.98, "fit_seconds": 3.0}),
        record("padim", "mvtec", "toothbrush", "object", 0, {"image_auroc": None, "pixel_auroc": 0.97,
                                                             "fit_seconds": 2.0}, undefined={"image_auroc": reason})])
    spec = TableSpec(cell=["image_auroc", "pixel_auroc"], aggregates=["all"])
    long = long_table(frame, spec, {})
    text = render_markdown(long, spec, {}, [], measurement_table(frame, ["image_auroc", "pixel_auroc", "fit_seconds"]))
    wide = wide_table(long, spec)
    assert wide.loc["toothbrush", "padim"] == "(-[1], 97.0)"
    assert wide.loc["all", "padim"] == "(-[2], 97.5)"
    assert f"- [1] {reason} (image_auroc: padim on toothbrush)" in text
    assert "- [2] undefined for toothbrush (image_auroc: padim on all)" in text
    row = next(line for line in text.splitlines() if "| toothbrush" in line and "synthetic" not in line
               and line.count("|") > 5)
    assert "-[1]" in row and "97.0" in row and "2" in row  # the measurements row: fit s still there


def test_substituted_model_is_labelled_everywhere_and_gets_no_difference():
    label = "padim-r18-rd100 [backbone=efficientnet_lite0]"
    frame = cells_frame([record("padim-r18-rd100", "mvtec", "bottle", "object", 0,
                                {"pixel_auroc": 0.97, "pro": 0.9}, label=label, substituted=True)])
    reference = {"source": "Table III", "values": {"padim-r18-rd100": {"bottle": [98.1, 93.9]}}}
    long = long_table(frame, SPEC, reference)
    assert set(long["method"]) == {label} and long["diff"].isna().all()
    assert list(long.loc[long["category"] == "bottle", "paper"]) == [98.1, 93.9]
    wide = wide_table(long, SPEC)
    assert list(wide.columns) == [label, f"{label} paper (different model)"]
    assert wide.loc["bottle", f"{label} paper (different model)"] == "(98.1, 93.9)"
    text = render_markdown(long, SPEC, reference, [], measurement_table(frame, ["pixel_auroc"]))
    assert "no difference is computed" in text and f"| {label}" in text  # the measurements row is labelled too
    csv = pd.read_csv(io.StringIO(csv_frame(long, measurement_table(frame, ["pixel_auroc"])).to_csv(index=False)))
    assert set(csv["method"]) == {label} and csv["substituted"].all()


def test_intervals_are_shown_and_a_paper_figure_inside_ours_is_marked():
    frame = cells_frame([record("padim", "mvtec", "bottle", "object", 0, {"pixel_auroc": 0.977, "pro": 0.95},
                                intervals={"pixel_auroc": [0.971, 0.982], "pro": [0.94, 0.955]})])
    reference = {"values": {"padim": {"bottle": [98.1, 93.9]}}}
    long = long_table(frame, SPEC, reference)
    wide = wide_table(long, SPEC)
    assert wide.loc["bottle", "padim"] == "(97.7 [97.1, 98.2], 95.0 [94.0, 95.5])"
    assert wide.loc["bottle", "padim diff"] == "(-0.4†, +1.1)"  # 98.1 lies inside [97.1, 98.2]; 93.9 not in its
    text = render_markdown(long, SPEC, reference, [], context=Context(ci=0.95))
    assert "95% bootstrap percentile interval" in text and "'†'" in text
    table = csv_frame(long, measurement_table(frame, ["pixel_auroc", "pro"]))
    paper = table[(table["table"] == "paper") & (table["metric"] == "pixel_auroc")].iloc[0]
    assert (paper["lo"], paper["hi"]) == pytest.approx((97.1, 98.2)) and paper["paper_in_interval"]


def test_every_measurement_is_in_the_measurements_table_and_the_csv_per_seed():
    metrics = ["pixel_auroc", "image_auroc", "fit_seconds", "infer_seconds_per_image", "peak_rss_gb", "model_gb",
               "a_plugin_metric"]
    frame = cells_frame([record("padim", "mvtec", "bottle", "object", seed,
                                {m: 0.5 + seed / 10 for m in metrics}) for seed in (0, 1)])
    measurements = measurement_table(frame, metrics)
    wide = measurement_wide(measurements)
    assert list(wide.columns) == ["method", "dataset", "category", "seed", "pixel AUROC %", "image AUROC %", "fit s",
                                  "inference s/image", "peak RSS GB", "model GB", "a_plugin_metric"]
    assert list(wide["image AUROC %"]) == ["50.0", "60.0"] and list(wide["peak RSS GB"]) == ["0.5", "0.6"]
    table = csv_frame(long_table(frame, SPEC, {}), measurements)
    per_seed = table[table["table"] == "measurements"]
    assert len(per_seed) == 2 * len(metrics) and set(per_seed["seed"]) == {0, 1}
    assert set(table.loc[table["table"] == "paper", "seeds"].dropna()) == {2}


def test_time_and_memory_are_shown_even_when_the_suite_lists_only_quality_metrics():
    """The runner measures every cell's resources; a suite asking only for AUROC still shows them, from the
    record's ``resources`` (a figure it could not measure, null there, is left out)."""
    resources = {"fit_seconds": 12.0, "infer_seconds": 3.0, "n_train": 10, "n_test": 6, "peak_rss_gb": 1.25,
                 "peak_cuda_gb": None, "model_gb": None, "start_rss_gb": 0.5}
    frame = cells_frame([record("padim", "mvtec", "bottle", "object", 0, {"pixel_auroc": 0.9}, resources=resources)])
    wide = measurement_wide(measurement_table(frame, measured_metrics(frame, ["pixel_auroc"])))
    assert list(wide.columns) == ["method", "dataset", "category", "seed", "pixel AUROC %", "fit s",
                                  "inference s/image", "peak RSS GB"]
    assert list(wide.iloc[0])[4:] == ["90.0", "12", "0.5", "1.25"]
    spec = TableSpec(cell=["pixel_auroc"])
    text = render_markdown(long_table(frame, spec, {}), spec, {}, [],
                           measurement_table(frame, measured_metrics(frame, ["pixel_auroc"])))
    assert "each count it in full (what each would cost alone)" in text
