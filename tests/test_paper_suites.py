"""The paper's tables as suites (suites/table1.yaml ... table8.yaml): each one validates against the real plugin
registry, its reference figures fit its table and are all the paper prints for it (359 figures in
all, a sample checked figure by figure), its grid has the paper's size, Tables I and II share one
ResNet-18 extraction per category, and a suite run without its data stops with one line saying what to get.

No dataset is read: the suites are validated without data (dataset plugins only check their root when they are
instantiated), and the category lists come from the plugins' own constants.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from anombench.runner import RunOptions, plan
from anombench.suite import AGGREGATES, Cell, Suite, build_suite, expand, load_suite, load_yaml
from anombench.tables import aggregate_label, long_table, render_markdown
from anombench_plugins.mvtec import CATEGORIES as MVTEC_CATEGORIES, TEXTURES as MVTEC_TEXTURES

REPO = Path(__file__).resolve().parents[1]
SUITES = REPO / "suites"
PAPER_TABLES = [f"table{n}" for n in range(1, 9)]
STC_TEST_SCENES = [f"scene{n:02d}" for n in range(1, 13)]  # the public STC test set covers scenes 01-12
# method variants x categories x seeds of the paper's protocol (15 MVTec AD classes, 12 STC scenes)
EXPECTED_CELLS = {"table1": 5 * 15, "table2": 5 * 15 * 10, "table3": 4 * 15, "table4": 2 * 12, "table5": 2 * 15,
                  "table6": 3 * 15 * 5, "table7": 4 * 15, "table8": 4 * (15 + 12)}
CELL_FORMAT = {"table1": 2, "table2": 2, "table3": 2, "table6": 2, "table4": 1, "table5": 1, "table7": 1,
               "table8": 2}
R18_VARIANTS = 10  # Table I's five and Table II's five
# Every figure the paper prints in Tables I-VIII (its '-' cells are no figure): 359 in all.
PAPER_FIGURES = {"table1": 30, "table2": 30, "table3": 252, "table4": 3, "table5": 15, "table6": 18, "table7": 4,
                 "table8": 7}
# (suite, method, row, figures as the paper prints them): a sample typed from the paper, across tables, rows,
# reference-only columns and '-' cells, so a shifted row or a swapped column fails here.
PAPER_SAMPLE = [
    ("table1", "padim-r18-layer3", "textures", [94.8, 89.6]),
    ("table1", "padim-r18", "objects", [97.5, 90.1]),
    ("table2", "padim-r18-pca200", "all", [95.7, 89.3]),
    ("table2", "padim-r18-all448", "textures", [96.3, 92.3]),
    ("table3", "AE-SSIM", "tile", [59, 17.5]),
    ("table3", "AE-L2", "leather", [75, 81.9]),
    ("table3", "vae", "toothbrush", [91.9, 85.4]),
    ("table3", "Student", "transistor", [None, 70.1]),
    ("table3", "Patch-SVDD", "metal_nut", [98.0, None]),
    ("table3", "spade", "capsule", [99.0, 93.7]),
    ("table3", "padim-r18-rd100", "all", [96.7, 90.1]),
    ("table3", "padim-wr50-rd550", "wood", [94.9, 91.1]),
    ("table4", "CAVGA-RU", "all", [85]),
    ("table5", "GANomaly", "all", [76.2]),
    ("table5", "MahalanobisAD", "objects", [94.8]),
    ("table5", "padim-effb5", "textures", [99.0]),
    ("table6", "spade", "objects", [88.2, 65.8]),
    ("table7", "spade", "all", [7.10]),
    ("table8", "padim-r18-rd100", "stc:all", [0.21, None]),
]


def paper_categories(plugin: str) -> list[str]:
    """The categories a complete copy of the dataset offers, without reading it."""
    return list(MVTEC_CATEGORIES) if plugin in ("mvtec", "rd_mvtec") else STC_TEST_SCENES


def category_group(plugin: str, category: str) -> str:
    if plugin == "stc":
        return "other"
    return "texture" if category in MVTEC_TEXTURES else "object"


def table_keys(suite: Suite) -> set[str]:
    """Row keys a reference figure may name: every category and every aggregate row (named per dataset,
    'mvtec:all', when the suite spans several datasets)."""
    several = len(suite.datasets) > 1
    categories = {c for spec in suite.datasets for c in paper_categories(spec.plugin)}
    return categories | {aggregate_label(a, spec.name, several) for spec in suite.datasets
                         for a in suite.table.aggregates}


def load_paper_suite(name: str, registry) -> Suite:
    return load_suite(SUITES / f"{name}.yaml", registry)


def reference_figures(suite: Suite) -> list[tuple[str, str, list[Any], bool]]:
    """(method, category, figures, reference_only) for every figure the suite quotes from the paper."""
    rows = []
    for part, only in (("values", False), ("only", True)):
        for method, per_category in (suite.reference.get(part) or {}).items():
            for category, figures in per_category.items():
                rows.append((method, category, figures if isinstance(figures, list) else [figures], only))
    return rows


def paper_grid(suite: Suite) -> list[Cell]:
    return expand(suite, {spec.name: paper_categories(spec.plugin) for spec in suite.datasets})


def fake_cells(suite: Suite) -> pd.DataFrame:
    """One finished cell per grid point, every metric 0.5: enough to lay the table out around the references."""
    plugin_of = {spec.name: spec.plugin for spec in suite.datasets}
    return pd.DataFrame([
        {"method": cell.method, "dataset": cell.dataset, "category": cell.category, "seed": cell.seed,
         "family": category_group(plugin_of[cell.dataset], cell.category), "status": "ok",
         **{metric: 0.5 for metric in suite.metrics}}
        for cell in paper_grid(suite)
    ])


def test_there_is_one_suite_per_table_of_the_paper():
    assert sorted(p.stem for p in SUITES.glob("table[0-9].yaml")) == PAPER_TABLES


@pytest.mark.parametrize("name", PAPER_TABLES)
def test_suite_validates_against_the_registry_without_data(name, registry):
    suite = load_paper_suite(name, registry)
    assert suite.name == name and suite.reference.get("source") and suite.table.title
    assert len(suite.table.cell) == CELL_FORMAT[name]
    assert suite.table.percent == (name not in ("table7", "table8"))
    assert set(suite.table.aggregates) <= set(AGGREGATES)


@pytest.mark.parametrize("name", PAPER_TABLES)
def test_every_reference_figure_belongs_to_a_variant_and_a_row_and_fits_the_cell(name, registry):
    suite = load_paper_suite(name, registry)
    variants, keys = {m.name for m in suite.methods}, table_keys(suite)
    figures = reference_figures(suite)
    assert any(not only for *_, only in figures), "a paper suite quotes at least one figure for its own variants"
    for method, category, values, only in figures:
        assert only != (method in variants), f"{name}: {method} is {'run here' if only else 'not a variant'}"
        assert category in keys, f"{name}: reference {method}.{category} names no row of the table"
        assert len(values) == len(suite.table.cell), f"{name}: {method}.{category} has {values}"
        present = [v for v in values if v is not None]
        assert present and all(isinstance(v, (int, float)) for v in present), f"{name}: {method}.{category}"
        if suite.table.percent:
            assert all(0 <= v <= 100 for v in present), f"{name}: {method}.{category} is not a percentage"


@pytest.mark.parametrize("name", PAPER_TABLES)
def test_suite_carries_every_figure_the_paper_prints_in_its_table(name, registry):
    figures = reference_figures(load_paper_suite(name, registry))
    assert sum(v is not None for *_, values, _ in figures for v in values) == PAPER_FIGURES[name]
    assert sum(PAPER_FIGURES.values()) == 359


@pytest.mark.parametrize("name, method, row, printed", PAPER_SAMPLE,
                         ids=[f"{n}-{m}-{r}" for n, m, r, _ in PAPER_SAMPLE])
def test_reference_figures_are_the_papers_as_printed(name, method, row, printed, registry):
    quoted = {(m, c): values for m, c, values, _ in reference_figures(load_paper_suite(name, registry))}
    assert quoted[(method, row)] == printed


@pytest.mark.parametrize("name", PAPER_TABLES)
def test_grid_has_the_papers_number_of_cells(name, registry):
    suite = load_paper_suite(name, registry)
    cells = paper_grid(suite)
    assert len(cells) == len({c.id for c in cells}) == EXPECTED_CELLS[name]


@pytest.mark.parametrize("name", PAPER_TABLES)
def test_rendered_table_shows_every_reference_figure_beside_ours(name, registry):
    suite = load_paper_suite(name, registry)
    long = long_table(fake_cells(suite), suite.table, suite.reference, [spec.name for spec in suite.datasets])
    scale = 100.0 if suite.table.percent else 1.0
    for method, category, values, only in reference_figures(suite):
        for metric, value in zip(suite.table.cell, values):
            row = long[(long["method"] == method) & (long["category"] == category) & (long["metric"] == metric)]
            assert len(row) == 1, f"{name}: no table row for {method} / {category} / {metric}"
            if value is not None:
                assert row["paper"].item() == pytest.approx(value)
                assert only or row["ours"].item() == pytest.approx(0.5 * scale)
    markdown = render_markdown(long, suite.table, suite.reference, [])
    assert suite.table.title in markdown
    for method in suite.reference.get("only") or {}:
        assert f"{method} (paper only)" in markdown


OFFLINE_STAND_INS = {"padim-lite0-rd100": ("padim-r18-rd100", "PaDiM-R18-Rd100"),
                     "padim-lite0-all176": ("padim-wr50-rd550", "PaDiM-WR50-Rd550"),
                     "spade-lite0-k10": ("spade", "SPADE-WR50")}


def test_offline_table3_runs_lite0_stand_ins_beside_the_papers_figures_of_the_methods_they_replace(registry):
    """table3_offline needs no weights but Lite0's (installed with a package), names each variant for what it
    runs, and shows the paper's figures only as reference-only columns (a different model: no difference is
    computed), the same figures as table3's for the method each variant replaces."""
    offline, table3 = load_paper_suite("table3_offline", registry), load_paper_suite("table3", registry)
    assert {m.name: m.params["backbone"] for m in offline.methods} == dict.fromkeys(OFFLINE_STAND_INS,
                                                                                   "efficientnet_lite0")
    assert not offline.reference.get("values")
    assert (offline.table.cell, offline.table.aggregates) == (table3.table.cell, table3.table.aggregates)
    quoted = offline.reference["only"]
    assert quoted == {paper: table3.reference["values"][ours] for ours, paper in OFFLINE_STAND_INS.values()}
    assert len(paper_grid(offline)) == len(OFFLINE_STAND_INS) * len(MVTEC_CATEGORIES)


def test_tables_one_and_two_share_one_resnet18_extraction_per_category(registry):
    """All ten R18 variants of Tables I and II (five layer choices, five reductions) in one suite on small
    synthetic data: the plan puts them in one job per category, i.e. one feature extraction feeds all ten.
    Random weights stand in for ImageNet's, which are not available offline; sharing depends on the backbone,
    layers and weights being equal, not on their values."""
    tables = [load_yaml(SUITES / f"{name}.yaml") for name in ("table1", "table2")]
    methods = {name: {**spec, "params": {**spec["params"], "weights": "none"}}
               for doc in tables for name, spec in doc["methods"].items()}
    doc = {**tables[0], "name": "tables-1-2", "methods": methods, "seeds": [0],
           "datasets": {"synthetic": {"params": {"image_size": 64, "n_train": 4, "n_test_good": 2,
                                                 "n_test_defective": 2}}}}
    suite = build_suite(doc, "tables-1-2", registry)
    jobs = plan(suite, registry, set(), RunOptions(show_progress=False)).jobs
    assert len(methods) == R18_VARIANTS
    assert sorted(job.category for job in jobs) == sorted(["stripes", "weave", "disc", "plate"])
    for job in jobs:
        assert {cell.spec.name for cell in job.cells} == set(methods)


def run_without_data(directory: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANOMBENCH_DATA_")}
    command = [sys.executable, "-m", "anombench.cli", "run", str(SUITES / "table3.yaml"), "--out",
               str(directory / "run"), "--quiet", *extra]
    return subprocess.run(command, cwd=directory, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module", params=[(), ("--data", "mvtec=missing/mvtec_ad")], ids=["no-root", "missing-root"])
def without_data(request, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    directory = tmp_path_factory.mktemp("no-data")
    return directory, run_without_data(directory, *request.param)


def test_a_suite_without_its_data_says_in_one_line_what_to_download(without_data):
    directory, result = without_data
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("anombench: error:") and "MVTec AD" in line
    assert "anombench data download mvtec" in line and "--data mvtec=" in line
    assert not (directory / "run").exists(), "nothing is written before the data is found"
