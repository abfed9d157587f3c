"""The report: markdown tables with paper beside ours, banners a reader must see, tables that cannot sink a run,
and one self-contained HTML file whose pictures render, with a table of contents, labelled curves and a size
that a full Table III run keeps under budget."""

from __future__ import annotations

import base64
import functools
import io
import json
import logging
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from anombench.api import Batch, Scores
from anombench.examples import ExampleKeeper
from anombench.html_report import CURVES, SIZE_BUDGET, _style_axis, example_columns, render_html
from anombench.report import TableWriter, report_markdown, write_tables
from anombench.results import RunStore, write_json
from anombench.runner import run_suite
from anombench.suite import build_suite
from anombench_plugins.synthetic import defects_for, render
from tests.test_runner import QUIET, suite_doc  # the same small suite the runner tests use


class Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []
        self.ids: set[str] = set()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "img":
            self.images.append(attributes.get("src", ""))
        if tag in ("link", "script") and (attributes.get("href") or attributes.get("src")):
            self.links.append(tag)
        if attributes.get("id"):
            self.ids.add(attributes["id"])
        if tag == "a" and (attributes.get("href") or "").startswith("#"):
            self.hrefs.append(attributes["href"][1:])


def parsed(page: str) -> Collector:
    parser = Collector()
    parser.feed(page)
    return parser


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, registry):
    doc = suite_doc({"pg": {"plugin": "pixel_gaussian"}, "pg-wide": {"plugin": "pixel_gaussian",
                                                                      "params": {"min_std": 0.2}}})
    doc["reference"] = {"source": "a test reference", "values": {"pg": {"disc": [97.0, 91.0]}},
                        "only": {"AE-SSIM": {"disc": [93.0, 83.4]}}}
    out = tmp_path_factory.mktemp("report") / "run"
    run_suite(build_suite(doc, "t.yaml", registry), out, QUIET, registry=registry)
    return out


def test_markdown_shows_ours_paper_and_difference(finished_run):
    text = report_markdown(finished_run)
    row = next(line for line in text.splitlines() if line.startswith("| disc"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert "(97.0, 91.0)" in cells and "(93.0, 83.4)" in cells
    ours = re.match(r"\((\d+\.\d), (\d+\.\d)\)", cells[1])
    diff = re.match(r"\(([+-]\d+\.\d), ([+-]\d+\.\d)\)", cells[3])
    assert ours and diff and abs(float(ours[1]) - 97.0 - float(diff[1])) < 0.11
    assert "AE-SSIM (paper only)" in text and "| all" in text and "'paper' columns: a test reference" in text
    assert "### Measurements" in text and "fit s" in text and "peak RSS GB" in text
    assert "incomplete" not in text


def test_html_is_self_contained_with_contents_and_every_picture_decodes(finished_run):
    page = render_html(finished_run)
    parser = parsed(page)
    assert not parser.links, "the report must not load anything from outside"
    # per class: one curves figure + one example grid per method
    assert len(parser.images) == 2 * (1 + 2)
    for src in parser.images:
        assert src.startswith(("data:image/png;base64,", "data:image/jpeg;base64,"))
        picture = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        picture.verify()
        assert picture.size[0] > 200
    assert parser.hrefs and set(parser.hrefs) <= parser.ids, "every contents link leads somewhere"
    assert {"table", "measurements", "classes", "provenance"} <= set(parser.hrefs)
    assert "Provenance" in page and "AE-SSIM (paper only)" in page and "peak RSS GB" in page
    # one column per method, the paper's figure and the difference stacked under ours
    head = page.split('<h2 id="table">Table</h2>', 1)[1].split("</thead>", 1)[0]
    headers = re.findall(r"<th>([^<]*)</th>", head)
    assert [h for h in headers if h.strip()] == ["category", "pg", "pg-wide", "AE-SSIM (paper only)"]
    assert re.search(r'<td>\(\d+\.\d, \d+\.\d\)<br><small class="ref">paper \(97\.0, 91\.0\) &Delta; '
                     r'\([+-]\d+\.\d, [+-]\d+\.\d\)</small></td>', page)


@pytest.mark.parametrize("panel", list(CURVES))
def test_every_curve_panel_has_axis_labels_with_units_and_log_fpr_when_curves_hug_one(panel):
    figure, axis = plt.subplots()
    fpr = np.linspace(0, 1, 50)
    _style_axis(axis, panel, [(fpr, np.minimum(1, 0.9 + fpr)), (fpr, np.minimum(1, 0.95 + fpr))])
    assert "false positive rate (" in axis.get_xlabel() and "(" in axis.get_ylabel()
    assert axis.get_xscale() == ("log" if CURVES[panel][3] else "linear")
    _style_axis(axis, panel, [(fpr, fpr)])  # a chance-level curve: linear FPR
    plt.close(figure)


def fake_record(method: str, dataset: str, category: str, seed: int, metrics: dict[str, float | None],
                **extra: Any) -> dict[str, Any]:
    return {"cell": f"{method}|{dataset}|{category}|{seed}", "method": method, "label": method, "substituted": False,
            "plugin": "padim", "params": {}, "dataset": dataset, "category": category, "family": "object",
            "seed": seed, "status": "ok", "error": None, "metrics": metrics, **extra}


def fake_run(out: Path, records: list[dict[str, Any]], grid: list[str], datasets: list[str],
             reference: dict[str, Any] | None = None, seeds: tuple[int, ...] = (0,)) -> Path:
    """A run directory as the runner leaves it (suite.yaml, run.json, cells.jsonl, artifacts), without fitting."""
    doc = {"name": "fake", "datasets": {d: {"plugin": "synthetic"} for d in datasets},
           "methods": {r["method"]: {"plugin": "padim"} for r in records},
           "metrics": ["pixel_auroc", "pro", "image_auroc", "fit_seconds", "peak_rss_gb"], "seeds": list(seeds),
           "table": {"cell": ["pixel_auroc", "pro"], "aggregates": ["all"]}, "reference": reference or {}}
    out.mkdir(parents=True)
    (out / "suite.yaml").write_text(yaml.safe_dump(doc))
    write_json(out / "run.json", {"grid": grid, "seeds": list(seeds), "overrides": [],
                                  "family_sizes": {d: {"object": 15} for d in datasets}})
    store = RunStore(out)  # the lines and files RunStore.add writes, written here so any record shape is possible
    for record in records:
        for name, payload in record.pop("artifacts", {}).items():
            store.artifact_dir(record["cell"]).mkdir(parents=True, exist_ok=True)
            (store.artifact_dir(record["cell"]) / name).write_bytes(payload)
    (out / "cells.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return out


def test_an_unfinished_run_says_so_at_the_top(tmp_path):
    grid = [f"padim|mvtec|c{i}|0" for i in range(8)]
    run = fake_run(tmp_path / "run", [fake_record("padim", "mvtec", f"c{i}", 0, {"pixel_auroc": 0.9, "pro": 0.8})
                                      for i in range(4)], grid, ["mvtec"])
    write_tables(run)
    assert (run / "table.md").read_text().startswith("**incomplete: 4 of 8 cells**")
    assert report_markdown(run).split("\n\n")[1] == "**incomplete: 4 of 8 cells**"
    assert '<p class="banner">incomplete: 4 of 8 cells</p>' in render_html(run)


def test_two_datasets_on_one_class_and_a_substituted_model_render_everywhere(tmp_path):
    label = "padim-r18-rd100 [backbone=efficientnet_lite0]"
    records = [fake_record("padim-r18-rd100", d, "bottle", 0, {"pixel_auroc": 0.97, "pro": 0.9},
                           label=label, substituted=True) for d in ("mvtec", "rd_mvtec")]
    reference = {"source": "Table III", "values": {"padim-r18-rd100": {"mvtec:bottle": [98.1, 93.9]}}}
    run = fake_run(tmp_path / "run", records, [r["cell"] for r in records], ["mvtec", "rd_mvtec"], reference)
    write_tables(run)
    table = (run / "table.md").read_text()
    assert "| mvtec:bottle" in table and "| rd_mvtec:bottle" in table
    assert f"{label} paper (different model)" in table and f"{label} diff" not in table
    assert table.startswith(f"**substituted models (a different model than the paper's; shown beside the paper's "
                            f"figure without a difference): {label}**")
    page = render_html(run)
    assert f"<th>{label}</th>" in page and page.count("paper (different model) (98.1, 93.9)</small>") == 1
    assert '<h3 id="c-mvtec-bottle-0">mvtec / bottle</h3>' in page and "rd_mvtec / bottle" in page


def test_several_seeds_show_mean_and_standard_error_keep_each_seed_in_the_csv_and_draw_one(tmp_path):
    records = [fake_record("padim", "mvtec", "bottle", seed, {"pixel_auroc": value, "pro": 0.8})
               for seed, value in ((0, 0.90), (1, 0.92))]
    run = fake_run(tmp_path / "run", records, [r["cell"] for r in records], ["mvtec"], seeds=(0, 1))
    write_tables(run)
    assert "| bottle     | (91.0 ± 1.0, 80.0 ± 0.0)" in (run / "table.md").read_text()
    assert "mean ± standard error over 2 seeds" in (run / "table.md").read_text()
    csv = pd.read_csv(run / "table.csv")
    per_seed = csv[(csv["table"] == "measurements") & (csv["metric"] == "pixel_auroc")]
    assert list(per_seed["seed"]) == [0, 1] and list(per_seed["ours"]) == pytest.approx([90.0, 92.0])
    page = render_html(run)
    assert page.count("<h3 ") == 1 and "mvtec / bottle (seed 0)</h3>" in page


def test_a_table_that_cannot_be_rendered_is_logged_in_one_line_and_never_raised(tmp_path, caplog):
    run = fake_run(tmp_path / "run", [fake_record("padim", "mvtec", "bottle", 0, {"pixel_auroc": 0.9, "pro": 0.8})],
                   ["padim|mvtec|bottle|0"], ["mvtec"])
    (run / "suite.yaml").write_text("table: {cell: [no_such_metric]}\nmetrics: [pixel_auroc]\n")
    with caplog.at_level(logging.WARNING):
        TableWriter().cells_finished(RunStore(run))
    assert len(caplog.records) == 1 and "\n" not in caplog.records[0].getMessage()
    assert "table.md not refreshed" in caplog.records[0].getMessage()
    assert "no_such_metric" in caplog.records[0].getMessage()


@functools.lru_cache(maxsize=1)
def synthetic_test_set(category: str, index: int) -> tuple[list[tuple[str | None, int]], torch.Tensor, torch.Tensor]:
    """30 synthetic test images of a class (10 good, 20 defective), 224 px, with masks: rendered once per class."""
    defects = defects_for(category)
    items = [(None, n) for n in range(10)] + [(defects[n % len(defects)], n) for n in range(20)]
    rendered = [render(index, category, "test", n, defect, 224) for defect, n in items]
    return (items, torch.from_numpy(np.stack([img for img, _ in rendered])).permute(0, 3, 1, 2).contiguous(),
            torch.from_numpy(np.stack([mask for _, mask in rendered])))


def example_artifacts(category: str, index: int, method: int) -> dict[str, bytes]:
    """examples.npz (the runner's own ExampleKeeper fed real synthetic test images and smooth maps peaking on
    the defects), curves.json (1000-point curves, as the metrics thin them) and scores.npz of one cell."""
    rng = np.random.default_rng(100 * index + method)
    items, images, masks = synthetic_test_set(category, index)
    smooth = functools.partial(torch.nn.functional.interpolate, size=(224, 224), mode="bilinear")
    blurred = smooth(torch.nn.functional.avg_pool2d(masks[:, None].float(), 8))[:, 0]
    noise = smooth(torch.from_numpy(rng.random((len(items), 1, 14, 14), np.float32)))[:, 0]
    maps = (200 * noise + 900 * blurred).numpy()
    labels = torch.tensor([int(defect is not None) for defect, _ in items])
    keeper = ExampleKeeper(seed=index)
    keeper.update(Scores(maps, maps.reshape(len(items), -1).max(axis=1)),
                  Batch(images, masks, labels, [f"{defect or 'good'}/{n:03d}" for defect, n in items]))
    x = np.sort(rng.random(1000))
    curves = {"pixel_auroc": {"x": x.tolist(), "y": (x ** 0.02).tolist()},
              "pro": {"x": (0.3 * x).tolist(), "y": (x ** 0.1).tolist()}}
    scores = io.BytesIO()
    np.savez(scores, ids=np.array([f"{n}" for n in range(len(items))]), labels=labels.numpy(),
             image_scores=maps.reshape(len(items), -1).max(axis=1))
    return {"examples.npz": keeper.to_bytes(), "curves.json": json.dumps(curves).encode(),
            "scores.npz": scores.getvalue()}


@pytest.mark.slow
def test_a_full_table_three_report_stays_under_the_size_budget(tmp_path):
    """15 classes x 4 methods, as a full Table III run stores them: report.html stays under SIZE_BUDGET."""
    bases = ["stripes", "weave", "disc", "plate"]
    methods = ["spade", "vae", "padim-r18-rd100", "padim-wr50-rd550"]
    records = []
    for index in range(15):
        for number, method in enumerate(methods):
            record = fake_record(method, "mvtec", f"class{index:02d}", 0,
                                 {"pixel_auroc": 0.95, "pro": 0.9, "image_auroc": 0.97, "fit_seconds": 30.0,
                                  "peak_rss_gb": 2.0})
            record["artifacts"] = example_artifacts(bases[index % 4], index, number)
            records.append(record)
    run = fake_run(tmp_path / "run", records, [r["cell"] for r in records], ["mvtec"])
    page = render_html(run)
    size = len(page.encode())
    print(f"synthetic 15 x 4 report: {size / 1e6:.2f} MB")
    assert len(parsed(page).images) == 15 * (1 + 4)
    assert size < SIZE_BUDGET, f"report.html of a 15-class x 4-method run is {size / 1e6:.1f} MB"


def test_larger_pages_draw_fewer_examples_per_row():
    assert [example_columns(n) for n in (8, 60, 75, 108, 225, 2000)] == [4, 4, 3, 2, 1, 1]
