"""The HTML report: one self-contained file (every picture embedded as a PNG data URI) with the run's table,
curves per class (every curve a metric offers, plus the image-level ROC from the stored image scores), a grid of
test images with ground truth and anomaly-map overlays (best, missed, false alarms, typical) and provenance.

Why one file: it is mailed, attached to issues and archived with papers; it must open anywhere, offline.
Laid out in one column no wider than a laptop screen, so it reads without scrolling sideways.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from anombench.report import failed_cells, overrides_notice, provenance_markdown, read_run_table  # noqa: E402
from anombench.results import RunStore  # noqa: E402
from anombench.suite import TableSpec  # noqa: E402
from anombench.tables import wide_table  # noqa: E402

KINDS = {"best": "best: top anomalies", "missed": "missed: lowest anomalies",
         "false_alarm": "false alarms: top normals", "typical": "typical: random"}
STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 1.5em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; font-size: 12px; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 2px 6px; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
.scroll { overflow-x: auto; }
img { display: block; max-width: 100%; height: auto; margin: 0.5em 0; }
h2 { border-bottom: 2px solid #ddd; padding-bottom: 0.2em; margin-top: 1.5em; }
.failed { color: #b00020; }
.ref { color: #666; }
"""


def png_data_uri(figure: plt.Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def image_roc(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC points from image scores (ties merged), for the plot only; the figure in the table comes from the
    image_auroc metric."""
    order = np.argsort(-scores, kind="stable")
    sorted_scores, positives = scores[order], labels[order].astype(np.float64)
    last_of_run = np.r_[np.diff(sorted_scores) != 0, True]
    tps, fps = np.cumsum(positives)[last_of_run], np.cumsum(1 - positives)[last_of_run]
    return np.r_[0, fps / max(fps[-1], 1)], np.r_[0, tps / max(tps[-1], 1)]


def curves_figure(category: str, per_method: dict[str, tuple[dict, np.lib.npyio.NpzFile | None]]) -> str:
    """One row of plots for a class: each stored metric curve and the image ROC, every method as one line."""
    names = sorted({name for curves, _ in per_method.values() for name in curves})
    panels = names + ["image ROC"]
    figure, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3.0), squeeze=False)
    for axis, panel in zip(axes[0], panels):
        for method, (curves, examples) in per_method.items():
            if panel == "image ROC" and examples is not None and len(examples["all_scores"]):
                x, y = image_roc(examples["all_labels"], examples["all_scores"])
            elif panel in curves:
                x, y = curves[panel]["x"], curves[panel]["y"]
            else:
                continue
            axis.plot(x, y, label=method, linewidth=1.4)
        axis.set_title(f"{category}: {panel}", fontsize=9)
        axis.set_xlabel("false positive rate", fontsize=8)
        axis.tick_params(labelsize=7)
        axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    return png_data_uri(figure)


def overlay_figure(title: str, examples: np.lib.npyio.NpzFile) -> str:
    """A grid: one row per kind of example; each image shows the map (jet, semi-transparent) over the picture
    and the ground-truth outline in white. One colour scale for the whole cell, so rows compare."""
    kinds = [k for k in KINDS if f"{k}_images" in examples.files]
    maps = np.concatenate([examples[f"{k}_maps"].astype(np.float32) for k in kinds])
    low, high = np.percentile(maps, 1), np.percentile(maps, 99.5)
    columns = max(len(examples[f"{k}_images"]) for k in kinds)
    figure, axes = plt.subplots(len(kinds), columns, figsize=(1.9 * columns, 2.05 * len(kinds)), squeeze=False)
    for row, kind in enumerate(kinds):
        for col in range(columns):
            axis = axes[row][col]
            axis.set_xticks([])
            axis.set_yticks([])
            for spine in axis.spines.values():
                spine.set_visible(False)
            if col >= len(examples[f"{kind}_images"]):
                continue
            axis.imshow(examples[f"{kind}_images"][col])
            axis.imshow(examples[f"{kind}_maps"][col].astype(np.float32), cmap="jet", alpha=0.45, vmin=low, vmax=high)
            if examples[f"{kind}_masks"][col].any():
                axis.contour(examples[f"{kind}_masks"][col], levels=[0.5], colors="white", linewidths=0.8)
            label = "anomalous" if examples[f"{kind}_labels"][col] else "normal"
            axis.set_title(f"{examples[f'{kind}_ids'][col]}\n{label}, score {examples[f'{kind}_scores'][col]:.3g}",
                           fontsize=6)
        axes[row][0].set_ylabel(KINDS[kind], fontsize=7)
    figure.suptitle(title, fontsize=9)
    return png_data_uri(figure)


def _load_artifacts(store: RunStore, cell: str) -> tuple[dict, np.lib.npyio.NpzFile | None]:
    folder = store.artifact_dir(cell)
    curves = json.loads((folder / "curves.json").read_text()) if (folder / "curves.json").exists() else {}
    examples = np.load(folder / "examples.npz") if (folder / "examples.npz").exists() else None
    return curves, examples


def _class_sections(store: RunStore, cells: pd.DataFrame) -> list[str]:
    """Per (dataset, category, seed): the curves of every method, then each method's example grid."""
    sections = []
    ok = cells[cells["status"] == "ok"]
    for (dataset, category, seed), group in ok.groupby(["dataset", "category", "seed"], sort=False):
        artifacts = {row.method: _load_artifacts(store, row.cell) for row in group.itertuples()}
        parts = [f"<h3>{html.escape(str(dataset))} / {html.escape(str(category))} (seed {seed})</h3>",
                 f'<img alt="curves {html.escape(str(category))}" src="{curves_figure(str(category), artifacts)}">']
        for method, (_, examples) in artifacts.items():
            if examples is not None and any(f"{k}_images" in examples.files for k in KINDS):
                title = f"{method} on {dataset}/{category}: anomaly map over image, ground truth outlined"
                parts.append(f'<img alt="examples {html.escape(method)}" src="{overlay_figure(title, examples)}">')
        sections.append("\n".join(parts))
    return sections


def _markdown_list_to_html(text: str) -> str:
    items = [line[2:] for line in text.splitlines() if line.startswith("- ")]
    return "<ul>" + "".join(f"<li>{html.escape(item).replace('**', '')}</li>" for item in items) + "</ul>"


def stacked_table_html(wide: pd.DataFrame, spec: TableSpec) -> str:
    """The paper-layout table with one column per method: each cell holds ours, and beneath it in small type the
    paper's figure and the difference. The markdown's separate 'paper' and 'diff' columns make Table III 15
    columns wide; stacked, it fits a page without scrolling sideways."""
    if wide.empty:
        return "<p>no finished cells</p>"
    frame = wide.T if spec.rows == "method" else wide  # categories down, wide_table's columns across
    methods = [c for c in frame.columns if not c.endswith((" paper", " diff"))]
    stacked = pd.DataFrame(index=frame.index, columns=methods, dtype=object)
    for category in frame.index:
        for method in methods:
            ours, paper = frame.at[category, method], frame.get(f"{method} paper", {}).get(category, "")
            cell = html.escape(ours)
            if paper:
                diff = frame.at[category, f"{method} diff"]
                cell += f'<br><small class="ref">paper {html.escape(paper)}' + \
                        (f" &Delta; {html.escape(diff)}" if diff else "") + "</small>"
            stacked.at[category, method] = cell
    out = stacked.T if spec.rows == "method" else stacked
    out.columns = pd.Index([html.escape(str(c)) for c in out.columns], name=out.index.name)  # one header row
    out.index = pd.Index([html.escape(str(i)) for i in out.index])
    return out.to_html(escape=False)


def render_html(run_dir: str | Path) -> str:
    run_dir = Path(run_dir)
    table = read_run_table(run_dir)
    doc, spec, reference, cells = table.doc, table.spec, table.reference, table.cells
    wide = wide_table(table.long, spec)
    failed = failed_cells(cells)
    parts = [f"<h1>{html.escape(str(doc.get('name', run_dir.name)))}</h1>",
             f"<p>{html.escape(str(doc.get('description') or ''))}</p>",
             f'<p class="failed">{html.escape(overrides_notice(run_dir).replace("**", "").replace("`", ""))}</p>',
             "<h2>Table</h2>",
             f'<div class="scroll">{stacked_table_html(wide, spec)}</div>',
             f"<p>Cells: {html.escape(', '.join(spec.cell))} ({'%' if spec.percent else 'raw units'}); "
             f"{html.escape(str(reference.get('source') or ''))}</p>"]
    if spec.note:
        parts.append(f"<p>{html.escape(spec.note)}</p>")
    if failed:
        parts.append('<p class="failed">FAILED: ' + html.escape("; ".join(failed)) + "</p>")
    parts += ["<h2>Curves and examples</h2>", *_class_sections(RunStore(run_dir), cells),
              "<h2>Provenance</h2>", _markdown_list_to_html(provenance_markdown(run_dir))]
    body = "\n".join(parts)
    title = html.escape(str(doc.get("name", "anombench report")))
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><style>{STYLE}</style></head>"
            f"<body>\n{body}\n</body></html>\n")
