"""The HTML report: one self-contained file (every picture embedded as a data URI) with a table of contents, the
paper-layout table (ours, the paper's figure and the difference stacked in one cell), the measurements table,
curves per class (every curve a metric stores, plus the image-level ROC from the stored image scores), a grid of
test images per method with the anomaly map over each and a colour bar, and provenance.

Why one file: it is mailed, attached to issues and archived with papers; it must open anywhere, offline.
Why small pictures: a full Table III run (15 classes x 4 methods: 15 curve rows and 60 example grids) must stay
under ``SIZE_BUDGET`` bytes and open in a browser in a few seconds. Example grids are composed with numpy at the
stored thumbnails' own resolution (128 px) and saved as JPEG; curves are palette PNGs.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib import colormaps  # noqa: E402
from matplotlib.cm import ScalarMappable  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402
from PIL import Image  # noqa: E402

from anombench.report import RunTable, paired_lines, provenance_markdown, read_run_table  # noqa: E402
from anombench.results import RunStore, load_provenance  # noqa: E402
from anombench.suite import TableSpec  # noqa: E402
from anombench.tables import Footnotes, column_names, measurement_wide, table_notes, wide_table  # noqa: E402

SIZE_BUDGET = 10_000_000  # bytes of report.html for a full Table III run (15 classes x 4 methods)
TILE_BUDGET = 960  # test images drawn on one page: Table III's 60 grids of 4 kinds x 4 (about 6.5 kB each as JPEG)
# examples.npz kinds (anombench.examples.ExampleKeeper) -> what the row shows
KINDS = {"best": "highest-scored defects", "missed": "lowest-scored defects",
         "false_alarm": "highest-scored normals", "typical": "random test images"}
# stored curve name -> (panel title, x label, y label, is a ROC curve whose x axis may go logarithmic)
CURVES = {"pixel_auroc": ("pixel ROC", "false positive rate (pixels)", "true positive rate (pixels)", True),
          "pro": ("PRO curve", "false positive rate (pixels)", "per-region overlap (fraction)", False),
          "image_roc": ("image ROC", "false positive rate (images)", "true positive rate (images)", True)}
LINE_STYLES = [("-", "o"), ("--", "s"), ("-.", "^"), (":", "D"), ((0, (5, 1)), "v"), ((0, (1, 1)), "P")]
LOG_FPR_ABOVE = 0.9  # a ROC panel whose every curve has AUC above this gets a log FPR axis (they hug 1.0)
MAP_ALPHA = 0.45
JPEG_QUALITY = 75
STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1500px; margin: 1.5em auto; padding: 0 1.5em; color: #222; }
table { border-collapse: collapse; font-size: 12px; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 2px 6px; text-align: right; white-space: nowrap; vertical-align: top; }
th:first-child, td:first-child { text-align: left; }
.scroll { overflow-x: auto; }
img { display: block; max-width: 100%; height: auto; margin: 0.4em 0; }
.grids { display: flex; flex-wrap: wrap; gap: 0.5em 1.5em; align-items: flex-start; }
.grids img { width: calc(50% - 0.75em); min-width: 420px; }
h2 { border-bottom: 2px solid #ddd; padding-bottom: 0.2em; margin-top: 1.5em; }
h3 { margin: 1.2em 0 0.3em; }
nav { background: #f6f6f6; padding: 0.4em 1em; columns: 3; font-size: 14px; }
nav ul { margin: 0.2em 0; padding-left: 1.2em; }
.banner { background: #fff3cd; border: 1px solid #e0c060; padding: 0.4em 0.8em; font-weight: 600; }
.failed { color: #b00020; }
.ref { color: #666; }
.note { font-size: 13px; color: #444; margin: 0.2em 0; }
"""


def palette_png_uri(figure: plt.Figure) -> str:
    """A line-art figure as a palette PNG (64 colours: a third of the RGBA size, no visible loss on plots)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    buffer.seek(0)
    out = io.BytesIO()
    Image.open(buffer).convert("RGB").quantize(colors=64).save(out, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def jpeg_uri(figure: plt.Figure) -> str:
    """A figure of photographs, laid out to its final size, as a JPEG data URI."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="jpg", dpi=100, pil_kwargs={"quality": JPEG_QUALITY})
    plt.close(figure)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def image_roc(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC points from image scores (ties merged), for the plot only; the figure in the table comes from the
    image_auroc metric."""
    order = np.argsort(-scores, kind="stable")
    sorted_scores, positives = scores[order], labels[order].astype(np.float64)
    last_of_run = np.r_[np.diff(sorted_scores) != 0, True]
    tps, fps = np.cumsum(positives)[last_of_run], np.cumsum(1 - positives)[last_of_run]
    return np.r_[0, fps / max(fps[-1], 1)], np.r_[0, tps / max(tps[-1], 1)]


def _area(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2))


def _style_axis(axis: plt.Axes, panel: str, curves: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """Title, axis labels with units, and a log FPR axis on a ROC panel whose curves all hug 1.0 (on a linear
    axis they would overlap in the top-left corner)."""
    title, xlabel, ylabel, is_roc = CURVES.get(panel, (panel, "x", "y", False))
    if is_roc and curves and all(_area(x, y) > LOG_FPR_ABOVE for x, y in curves):
        positive = [v for x, _ in curves for v in x if v > 0]
        axis.set_xscale("log", nonpositive="clip")
        axis.set_xlim(max(min(positive, default=1e-3) / 2, 1e-5), 1.0)
        xlabel += ", log scale"
    axis.set_title(title, fontsize=9)
    axis.set_xlabel(xlabel, fontsize=8)
    axis.set_ylabel(ylabel, fontsize=8)
    axis.tick_params(labelsize=7)
    axis.grid(alpha=0.3, which="both")


def curves_figure(per_method: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]) -> str:
    """One row of plots for a class: each stored curve and the image ROC; every method one line with its own
    colour, dash pattern and markers, so overlapping curves stay apart; one legend under the row."""
    panels = list(dict.fromkeys(name for curves in per_method.values() for name in curves))
    figure, axes = plt.subplots(1, len(panels), figsize=(4.3 * len(panels), 3.2), squeeze=False)
    handles = {}
    for axis, panel in zip(axes[0], panels):
        drawn = []
        for number, (method, curves) in enumerate(per_method.items()):
            if panel not in curves:
                continue
            x, y = curves[panel]
            dash, marker = LINE_STYLES[number % len(LINE_STYLES)]
            (line,) = axis.plot(x, y, linestyle=dash, marker=marker, markevery=0.12, markersize=4, linewidth=1.4,
                                color=f"C{number % 10}", label=method, alpha=0.9)
            handles.setdefault(method, line)
            drawn.append((np.asarray(x), np.asarray(y)))
        _style_axis(axis, panel, drawn)
    figure.tight_layout(rect=(0, 0.08 + 0.03 * (len(handles) // 4), 1, 1))
    figure.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(len(handles), 4), fontsize=8,
                  frameon=False)
    return palette_png_uri(figure)


def _outline(mask: np.ndarray) -> np.ndarray:
    """The boundary pixels of a 0/1 mask (a pixel of the mask with a 4-neighbour outside it)."""
    inside = mask.astype(bool)
    padded = np.pad(inside, 1)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return inside & ~interior


def overlay_tile(image: np.ndarray, score_map: np.ndarray, mask: np.ndarray, norm: Normalize) -> np.ndarray:
    """(t, t, 3) float in [0, 1]: the map in the jet colour scale blended over the image, the ground truth's
    outline in white."""
    colours = colormaps["jet"](norm(score_map.astype(np.float32)))[..., :3]
    tile = (1 - MAP_ALPHA) * image.astype(np.float32) / 255 + MAP_ALPHA * colours
    tile[_outline(mask)] = 1.0
    return tile


def _mosaic_layout(width: int, height: int) -> tuple[plt.Figure, plt.Axes, plt.Axes]:
    """A figure that shows a width x height px mosaic at 1:1 (100 dpi), with fixed margins in inches for the row
    names (left), the title (top) and the colour bar (right): laid out once, so saving draws it once."""
    left, right, top, bottom = 1.05, 0.95, 0.3, 0.05  # inches
    w, h = width / 100 + left + right, height / 100 + top + bottom
    figure = plt.figure(figsize=(w, h))
    axis = figure.add_axes((left / w, bottom / h, width / 100 / w, height / 100 / h))
    bar = figure.add_axes(((left + width / 100 + 0.12) / w, bottom / h + 0.15 * height / 100 / h, 0.12 / w,
                           0.7 * height / 100 / h))
    return figure, axis, bar


def overlay_figure(title: str, examples: Any, columns: int = 4) -> str:
    """A grid: one row per kind of example (named for what it shows), up to ``columns`` test images each with its
    map over it and the ground truth outlined; one colour scale for the whole cell (1st to 99.5th percentile of
    the kept maps), drawn as a colour bar, so rows compare. Composed as one mosaic at the thumbnails' resolution."""
    kinds = [k for k in KINDS if f"{k}_images" in examples.files]
    maps = np.concatenate([examples[f"{k}_maps"].astype(np.float32).ravel() for k in kinds])
    norm = Normalize(float(np.percentile(maps, 1)), float(np.percentile(maps, 99.5)))
    size = examples[f"{kinds[0]}_images"].shape[1]
    columns = min(columns, max(len(examples[f"{k}_images"]) for k in kinds))
    gap, caption = 4, 26  # px between tiles, px under a tile for its caption
    step_x, step_y = size + gap, size + caption
    mosaic = np.ones((len(kinds) * step_y, columns * step_x - gap, 3), np.float32)
    figure, axis, bar_axis = _mosaic_layout(mosaic.shape[1], mosaic.shape[0])
    for row, kind in enumerate(kinds):
        for col in range(min(columns, len(examples[f"{kind}_images"]))):
            top, left = row * step_y, col * step_x
            mosaic[top:top + size, left:left + size] = overlay_tile(
                examples[f"{kind}_images"][col], examples[f"{kind}_maps"][col], examples[f"{kind}_masks"][col], norm)
            state = "defect" if examples[f"{kind}_labels"][col] else "normal"
            axis.text(left + size / 2, top + size + 2, f"{examples[f'{kind}_ids'][col]}\n{state}, "
                      f"score {examples[f'{kind}_scores'][col]:.4g}", ha="center", va="top", fontsize=6)
    axis.imshow(mosaic, interpolation="nearest")
    axis.set_xticks([])
    axis.set_yticks([row * step_y + size / 2 for row in range(len(kinds))],
                    [KINDS[k].replace(" ", "\n", 1) for k in kinds], fontsize=8)
    for spine in axis.spines.values():
        spine.set_visible(False)
    axis.tick_params(length=0)
    bar = figure.colorbar(ScalarMappable(norm=norm, cmap="jet"), cax=bar_axis)
    bar.set_label("anomaly score (map value)", fontsize=7)
    bar.ax.tick_params(labelsize=6)
    axis.set_title(title, fontsize=8)
    return jpeg_uri(figure)


def _image_scores(folder: Path, examples: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """(labels, scores) of every test image: scores.npz when the run stored it, else the examples' copy."""
    if (folder / "scores.npz").exists():
        stored = np.load(folder / "scores.npz")
        return stored["labels"], stored["image_scores"]
    if examples is not None and "all_scores" in examples.files and len(examples["all_scores"]):
        return examples["all_labels"], examples["all_scores"]
    return None


def cell_curves(folder: Path, examples: Any) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The curves of one cell: those in curves.json, and the image ROC from its image scores."""
    stored = json.loads((folder / "curves.json").read_text()) if (folder / "curves.json").exists() else {}
    curves = {name: (np.asarray(c["x"]), np.asarray(c["y"])) for name, c in stored.items()}
    scores = _image_scores(folder, examples)
    if scores is not None:
        curves["image_roc"] = image_roc(*scores)
    return curves


def anchor(*parts: Any) -> str:
    return "c-" + re.sub(r"[^A-Za-z0-9_-]+", "-", "-".join(str(p) for p in parts)).strip("-")


def example_columns(grids: int) -> int:
    """Test images per row of an example grid: 4 up to Table III's 60 grids, fewer on larger pages (Table VIII's
    108: 2), so the page's photographs stay within ``TILE_BUDGET`` and the page within ``SIZE_BUDGET``."""
    return max(1, min(4, TILE_BUDGET // (max(grids, 1) * len(KINDS))))


def class_sections(store: RunStore, cells: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(anchor, heading, html) per (dataset, class): the curves of every method, then each method's example grid,
    side by side where the page is wide enough. Of several seeds only the first finished one is drawn (its seed is
    named): Table II's ten seeds would make the page ten times as large, and the tables average them all."""
    sections = []
    ok = cells[cells["status"] == "ok"]
    several_seeds = ok["seed"].nunique() > 1
    ok = ok[ok["seed"] == ok.groupby(["dataset", "category"], sort=False)["seed"].transform("min")]
    columns = example_columns(len(ok))
    for (dataset, category, seed), group in ok.groupby(["dataset", "category", "seed"], sort=False):
        heading = f"{dataset} / {category}" + (f" (seed {seed})" if several_seeds else "")
        curves, grids = {}, []
        for row in group.itertuples():
            folder = store.artifact_dir(row.cell)
            examples = np.load(folder / "examples.npz") if (folder / "examples.npz").exists() else None
            curves[row.label] = cell_curves(folder, examples)
            if examples is not None and any(f"{k}_images" in examples.files for k in KINDS):
                title = f"{row.label} on {dataset}/{category}: anomaly map over each image, ground truth outlined"
                grids.append(f'<img loading="lazy" alt="examples {html.escape(row.label)}" '
                             f'src="{overlay_figure(title, examples, columns)}">')
        parts = [f'<img loading="lazy" alt="curves {html.escape(str(category))}" src="{curves_figure(curves)}">'
                 ] if any(curves.values()) else ['<p class="note">no curves stored</p>']
        if grids:
            parts.append(f'<div class="grids">{"".join(grids)}</div>')
        sections.append((anchor(dataset, category, seed), heading, "\n".join(parts)))
    return sections


def _markdown_list_to_html(text: str) -> str:
    items = [line[2:] for line in text.splitlines() if line.startswith("- ")]
    return "<ul>" + "".join(f"<li>{html.escape(item).replace('**', '')}</li>" for item in items) + "</ul>"


def stacked_table_html(wide: pd.DataFrame, spec: TableSpec, substituted: set[str]) -> str:
    """The paper-layout table with one column per method: each cell holds ours, and beneath it in small type the
    paper's figure and the difference ('different model' and no difference for a substituted label). The
    markdown's separate 'paper' and 'diff' columns make Table III 15 columns wide; stacked, it fits a page."""
    if wide.empty:
        return "<p>no finished cells</p>"
    frame = wide.T if spec.rows == "method" else wide  # categories down, wide_table's columns across
    methods = [c for c in frame.columns if not c.endswith((" paper", " diff", " (different model)"))]
    stacked = pd.DataFrame(index=frame.index, columns=methods, dtype=object)
    for category in frame.index:
        for method in methods:
            _, paper_column, diff_column = column_names(method, method in substituted)
            ours, paper = frame.at[category, method], frame.get(paper_column, {}).get(category, "")
            diff = frame.get(diff_column, {}).get(category, "")
            cell = html.escape(ours)
            if paper:
                kind = "paper (different model)" if method in substituted else "paper"
                cell += f'<br><small class="ref">{kind} {html.escape(paper)}' + \
                        (f" &Delta; {html.escape(diff)}" if diff else "") + "</small>"
            stacked.at[category, method] = cell
    out = stacked.T if spec.rows == "method" else stacked
    out.columns = pd.Index([html.escape(str(c)) for c in out.columns], name=out.index.name)  # one header row
    out.index = pd.Index([html.escape(str(i)) for i in out.index])
    return out.to_html(escape=False)


def _notes_html(lines: list[str]) -> str:
    """Notes under a table; the line listing failed cells in red."""
    return "".join(f'<p class="{"note failed" if line.startswith("FAILED") else "note"}">{html.escape(line)}</p>'
                   for line in lines)


def contents(sections: list[tuple[str, str, str]]) -> str:
    classes = "".join(f'<li><a href="#{a}">{html.escape(h)}</a></li>' for a, h, _ in sections)
    return ('<nav><strong>Contents</strong><ul><li><a href="#table">Table</a></li>'
            '<li><a href="#measurements">Measurements</a></li>'
            f'<li><a href="#classes">Curves and examples</a><ul>{classes}</ul></li>'
            '<li><a href="#provenance">Provenance</a></li></ul></nav>')


def tables_html(table: RunTable) -> list[str]:
    """The paper-layout table with its notes, and the measurements table, sharing numbered footnotes."""
    notes = Footnotes()
    substituted = set(table.long.loc[table.long["substituted"].astype(bool), "method"])
    wide = wide_table(table.long, table.spec, notes)
    measured = measurement_wide(table.measurements, notes)
    parts = ['<h2 id="table">Table</h2>', f'<div class="scroll">{stacked_table_html(wide, table.spec, substituted)}'
             "</div>", _notes_html(table_notes(table.long, table.spec, table.reference, table.failed(),
                                               table.context)),
             '<h2 id="measurements">Measurements</h2>',
             '<p class="note">Every metric of every finished cell, per seed, in its own unit.</p>',
             f'<div class="scroll">{measured.to_html(index=False) if not measured.empty else "<p>none yet</p>"}</div>']
    if notes.reasons:
        parts.append(_notes_html(["Undefined figures ('-[n]'):", *notes.lines()]))
    return parts


def _paired_html(run_dir: Path) -> list[str]:
    """The paired comparisons of a ``--ci`` run's methods (report.paired_lines), or nothing."""
    lines = paired_lines(run_dir)
    if not lines:
        return []
    items = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
    return ['<h2 id="paired">Paired comparisons</h2>', f"<ul>{items}</ul>"]


def render_html(run_dir: str | Path) -> str:
    run_dir = Path(run_dir)
    table = read_run_table(run_dir)
    sections = class_sections(RunStore(run_dir), table.cells)
    banners = table.banners(load_provenance(run_dir).get("overrides") or [])
    parts = [f"<h1>{html.escape(str(table.doc.get('name', run_dir.name)))}</h1>",
             *[f'<p class="banner">{html.escape(line.replace("`", ""))}</p>' for line in banners],
             f"<p>{html.escape(str(table.doc.get('description') or ''))}</p>", contents(sections),
             *tables_html(table), '<h2 id="classes">Curves and examples</h2>',
             '<p class="note">Per class: the ROC and PRO curves of every method (false positive rate on a log scale '
             "where all curves hug 1.0) and, per method, test images with the anomaly map in the jet colour scale "
             "over each (its colour bar gives the scores) and the ground truth outlined in white.</p>",
             *[f'<h3 id="{a}">{html.escape(h)}</h3>\n{body}' for a, h, body in sections],
             *_paired_html(run_dir),
             '<h2 id="provenance">Provenance</h2>', _markdown_list_to_html(provenance_markdown(run_dir))]
    body = "\n".join(parts)
    title = html.escape(str(table.doc.get("name", "anombench report")))
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><style>{STYLE}</style></head>"
            f"<body>\n{body}\n</body></html>\n")
