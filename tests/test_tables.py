"""Tables: seeds averaged, the paper's group means, several datasets, formatting as the paper prints cells."""

from __future__ import annotations

import pandas as pd
import pytest

from anombench.suite import TableSpec
from anombench.tables import long_table, render_markdown, wide_table


def cells(rows: list[tuple[str, str, str, str, int, float, float]]) -> pd.DataFrame:
    return pd.DataFrame([{"cell": f"{m}|{d}|{c}|{s}", "method": m, "dataset": d, "category": c, "family": g,
                          "seed": s, "status": "ok", "error": None, "pixel_auroc": a, "pro": p}
                         for m, d, c, g, s, a, p in rows])


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
    assert wide.loc["carpet", "padim"] == "(91.0, 81.0)"


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
