"""From stored cells to tables: the paper's layout (ours beside the paper's figure) and a table of every measurement.

Two frames carry the numbers; the markdown, CSV and HTML are views of them, so no reader has to parse a
formatted cell:
- ``long_table``: the paper-layout table, one row per (method label, row, metric) with ``ours``, ``lo``/``hi``
  (our interval), ``se`` (standard error over seeds), ``paper`` and ``diff``, in display units;
- ``measurement_table``: every metric of every finished cell, per seed, in each metric's own unit.

Method columns are keyed by the record's ``label`` (the variant name, plus what a ``--set`` override changed,
e.g. ``padim-r18-rd100 [backbone=efficientnet_lite0]``); a ``substituted`` record keeps the paper's figure
beside it, marked "different model", and gets no difference. Rows are keyed by dataset as well as category:
a class two datasets share is named ``mvtec:bottle`` and ``rd_mvtec:bottle``.

Reference figures in a suite::

    reference:
      source: "Defard et al. 2020, Table III"
      values:                       # our method variants: category or aggregate -> figure(s) as printed
        padim-r18-rd100: {bottle: [98.1, 93.9], all: [97.5, 92.1]}
      only:                         # methods quoted by the paper that nobody here implements
        AE-SSIM: {bottle: [93.0, 83.4]}
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import pandas as pd

from anombench.api import Resources
from anombench.suite import TableSpec

AGGREGATE_FAMILIES = {"textures": ("texture",), "objects": ("object",), "all": ("texture", "object", "other")}
REFERENCE_KEYS = ("source", "values", "only")
RECORD_KEYS = ("cell", "method", "label", "substituted", "plugin", "dataset", "category", "family", "seed", "status",
               "error")
LONG_COLUMNS = ["method", "variant", "substituted", "dataset", "category", "metric", "unit", "ours", "lo", "hi", "se",
                "seeds", "paper", "diff", "paper_in_interval", "reference_only", "undefined"]
MEASUREMENT_COLUMNS = ["method", "variant", "substituted", "dataset", "category", "seed", "metric", "unit", "ours",
                       "lo", "hi", "undefined"]
# metric -> (heading, unit); fractions (AUROC, PRO) are shown in percent. Other metrics: their name, raw units.
MEASURES = {"image_auroc": ("image AUROC", "%"), "pixel_auroc": ("pixel AUROC", "%"), "pro": ("PRO", "%"),
            "fit_seconds": ("fit", "s"), "infer_seconds_per_image": ("inference", "s/image"),
            "peak_rss_gb": ("peak RSS", "GB"), "peak_cuda_gb": ("peak CUDA", "GB"), "model_gb": ("model", "GB")}
NAN = float("nan")
RESOURCE_FIGURES = ("fit_seconds", "infer_seconds_per_image", "peak_rss_gb", "peak_cuda_gb", "model_gb")
RESOURCES_NOTE = ("Times are end to end, data loading included; methods that share one feature extraction each count "
                  "it in full (what each would cost alone), and peak memory is their job's: do not add them up.")


def lo_column(metric: str) -> str:
    return f"{metric}:lo"


def hi_column(metric: str) -> str:
    return f"{metric}:hi"


def cells_frame(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """One row per stored cell record: its keys (``label`` defaults to the method name), one column per metric
    (NaN where undefined or not reported), ``metric:lo`` / ``metric:hi`` where the record has an interval, and
    ``undefined`` ({metric: reason})."""
    rows = []
    for record in records:
        row = {key: record.get(key) for key in RECORD_KEYS}
        row.update(resource_figures(record.get("resources") or {}))
        row.update({name: NAN if value is None else value for name, value in (record.get("metrics") or {}).items()})
        for name, (lo, hi) in (record.get("intervals") or {}).items():
            row[lo_column(name)], row[hi_column(name)] = lo, hi
        row["undefined"] = dict(record.get("undefined") or {})
        rows.append(row)
    return normalised(pd.DataFrame(rows, columns=list(RECORD_KEYS)) if not rows else pd.DataFrame(rows))


def resource_figures(measured: dict[str, Any]) -> dict[str, float]:
    """What the runner measured around a cell (a record's ``resources``) under the resource metrics' names, the
    ones it has: a suite that lists only quality metrics still shows its time and memory."""
    resources = Resources.from_record(measured)
    figures = {name: float(getattr(resources, name)) for name in RESOURCE_FIGURES}
    return {name: value for name, value in figures.items() if not math.isnan(value)}


def normalised(cells: pd.DataFrame) -> pd.DataFrame:
    """Cells with every column the tables read: a record without ``label`` is labelled by its method name, without
    ``substituted`` is not substituted, without ``undefined`` has no undefined metric."""
    cells = cells.copy()
    if "label" not in cells:
        cells["label"] = cells["method"]
    cells["label"] = cells["label"].where(cells["label"].notna() & (cells["label"] != ""), cells["method"])
    cells["substituted"] = cells["substituted"].fillna(False).astype(bool) if "substituted" in cells else False
    if "undefined" not in cells:
        cells["undefined"] = [{} for _ in range(len(cells))]
    cells["undefined"] = [u if isinstance(u, dict) else {} for u in cells["undefined"]]
    return cells


@dataclass(frozen=True)
class Figure:
    """One table figure in stored units: a value (NaN when missing or undefined), our interval, the standard
    error over seeds (NaN for one seed), and why the figure does not exist ('' when it does)."""

    value: float
    lo: float = NAN
    hi: float = NAN
    se: float = NAN
    undefined: str = ""


def _reasons(rows: pd.DataFrame, metric: str) -> str:
    return "; ".join(dict.fromkeys(u[metric] for u in rows["undefined"] if u.get(metric)))


def over_seeds(rows: pd.DataFrame, metric: str) -> Figure:
    """A cell's figure over its seeds: the value and interval of a single seed; with several, the mean and its
    standard error (sample standard deviation / sqrt(n)), and no interval. A figure missing in any seed makes the
    mean missing: a mean over fewer seeds than listed would pass for the suite's."""
    values = rows[metric].astype(float).to_numpy() if metric in rows else np.full(len(rows), NAN)
    reason = _reasons(rows, metric)
    if len(values) == 1:
        lo = float(rows[lo_column(metric)].iloc[0]) if lo_column(metric) in rows else NAN
        hi = float(rows[hi_column(metric)].iloc[0]) if hi_column(metric) in rows else NAN
        return Figure(float(values[0]), lo, hi, NAN, reason)
    if np.isnan(values).any():
        return Figure(NAN, undefined=reason)
    return Figure(float(values.mean()), se=float(values.std(ddof=1) / math.sqrt(len(values))))


def over_classes(rows: pd.DataFrame, metric: str) -> Figure:
    """A group mean (textures, objects, all) over the finished classes' seed means; its standard error is that of
    the per-seed class means when every class has the same seeds. Missing when the figure is missing for any
    class (the reason names the classes), since a mean over fewer classes would pass for the group's."""
    if metric not in rows:
        return Figure(NAN)
    undefined = [c for c, u in zip(rows["category"], rows["undefined"]) if u.get(metric)]
    class_means = rows.groupby("category", sort=False)[metric].agg(lambda v: v.mean(skipna=False))
    if class_means.isna().any():
        return Figure(NAN, undefined=f"undefined for {', '.join(dict.fromkeys(undefined))}" if undefined else "")
    seed_sets = rows.groupby("category", sort=False)["seed"].apply(frozenset)
    per_seed = rows.groupby("seed")[metric].mean()
    se = float(per_seed.std(ddof=1) / math.sqrt(len(per_seed))) if len(per_seed) > 1 and seed_sets.nunique() == 1 \
        else NAN
    return Figure(float(class_means.mean()), se=se)


def aggregate_label(name: str, dataset: str, several_datasets: bool, covered: int = 0, total: int = 0,
                    seeds_done: int = 1, seeds: int = 1) -> str:
    """'all', or 'mvtec:all' when the table holds several datasets (Table VIII: MVTec AD and STC). A mean over
    only some of the classes the paper averages, or over fewer seeds than the suite's, says so: 'all (1/15)',
    'all (15/15, 1/5 seeds)'; no paper figure is then set beside it."""
    label = f"{dataset}:{name}" if several_datasets else name
    if covered >= total and seeds_done >= seeds:
        return label
    notes = ([f"{covered}/{total}"] if total else []) + ([f"{seeds_done}/{seeds} seeds"] if seeds_done < seeds else [])
    return f"{label} ({', '.join(notes)})"


def label_parts(label: str) -> tuple[str, str]:
    """(dataset, name) of a category label: 'mvtec:all (1/15)' -> ('mvtec', 'all'), 'bottle' -> ('', 'bottle')."""
    dataset, _, name = label.split(" (", 1)[0].rpartition(":")
    return dataset, name


def is_aggregate(label: str) -> bool:
    return label_parts(label)[1] in AGGREGATE_FAMILIES


def row_labels(cells: pd.DataFrame) -> dict[tuple[str, str], str]:
    """(dataset, category) -> the table's row label: the category, or 'dataset:category' when two of the run's
    datasets (say mvtec and rd_mvtec, or two aliases of one plugin) have that class."""
    pairs = list(dict.fromkeys(zip(cells["dataset"], cells["category"])))
    datasets_with = Counter(category for _, category in pairs)
    return {(d, c): f"{d}:{c}" if datasets_with[c] > 1 else str(c) for d, c in pairs}


@dataclass(frozen=True)
class Row:
    """One row of the paper-layout table for one method label, before scaling: a figure per metric."""

    label: str
    variant: str
    substituted: bool
    dataset: str
    category: str
    figures: dict[str, Figure]
    seeds: int


def class_rows(ok: pd.DataFrame, metrics: list[str], labels: dict[tuple[str, str], str]) -> list[Row]:
    """Per (method label, dataset, class): each metric over the seeds that finished."""
    rows = []
    for (label, dataset, category), group in ok.groupby(["label", "dataset", "category"], sort=False):
        first = group.iloc[0]
        rows.append(Row(label, first["method"], bool(first["substituted"]), dataset, labels[(dataset, category)],
                        {m: over_seeds(group, m) for m in metrics}, len(group)))
    return rows


def aggregate_rows(ok: pd.DataFrame, metrics: list[str], aggregates: list[str], several_datasets: bool,
                   family_sizes: dict[str, dict[str, int]] | None, seeds: int) -> list[Row]:
    """The paper's group means (textures, objects, all) per method label and dataset, over the classes that
    finished. ``family_sizes`` (dataset -> family -> number of classes it defines) and ``seeds`` (the suite's
    number of seeds) mark a mean over fewer classes or seeds than the paper's, e.g. a run narrowed to bottle or
    one killed after its first seed."""
    rows = []
    for name in aggregates:
        members = ok[ok["family"].isin(AGGREGATE_FAMILIES[name])]
        for (label, dataset), group in members.groupby(["label", "dataset"], sort=False):
            total = sum((family_sizes or {}).get(dataset, {}).get(f, 0) for f in AGGREGATE_FAMILIES[name])
            seeds_done = int(group.groupby("category", sort=False).size().min())
            category = aggregate_label(name, dataset, several_datasets, group["category"].nunique(), total,
                                       seeds_done, seeds)
            first = group.iloc[0]
            rows.append(Row(label, first["method"], bool(first["substituted"]), dataset, category,
                            {m: over_classes(group, m) for m in metrics}, seeds_done))
    return rows


def _as_list(value: Any) -> list[float]:
    if isinstance(value, (list, tuple)):
        return [NAN if v is None else float(v) for v in value]
    return [NAN if value is None else float(value)]


def for_one_dataset(figures: dict[str, dict[str, Any]], alias: str) -> dict[str, dict[str, Any]]:
    """Reference figures of a several-dataset table run on one of its datasets (Table VIII without STC): that
    dataset's 'mvtec:all' becomes the run's 'all'; the other datasets' figures are left out."""
    out: dict[str, dict[str, Any]] = {}
    for method, per_category in figures.items():
        mine = out.setdefault(method, {})
        for key, value in (per_category or {}).items():
            dataset, name = label_parts(key)
            if not dataset or dataset == alias:
                mine.setdefault(name, value)
    return out


def unit_of(metric: str, percent: bool) -> str:
    """The unit of a paper-layout figure: '%' when the table shows percent, else the metric's raw unit (a
    fraction shown as a fraction has none)."""
    unit = MEASURES.get(metric, (metric, ""))[1]
    return "%" if percent else ("" if unit == "%" else unit)


def _long_row(method: str, variant: str, substituted: bool, dataset: str, category: str, metric: str, unit: str,
              ours: Figure, scale: float, paper: float, seeds: int, reference_only: bool = False) -> dict[str, Any]:
    lo, hi = ours.lo * scale, ours.hi * scale
    inside = bool(lo <= paper <= hi) if not (math.isnan(lo) or math.isnan(paper)) else False
    return {"method": method, "variant": variant, "substituted": substituted, "dataset": dataset,
            "category": category, "metric": metric, "unit": unit, "ours": ours.value * scale, "lo": lo, "hi": hi,
            "se": ours.se * scale, "seeds": seeds, "paper": paper,
            "diff": NAN if substituted else ours.value * scale - paper, "paper_in_interval": inside and not substituted,
            "reference_only": reference_only, "undefined": ours.undefined}


def long_table(cells: pd.DataFrame, spec: TableSpec, reference: dict[str, Any],
               datasets: list[str] | None = None, family_sizes: dict[str, dict[str, int]] | None = None,
               seeds: int = 1) -> pd.DataFrame:
    """The paper-layout table as a long frame (see ``LONG_COLUMNS``), in display units (percent when
    ``spec.percent``). ``method`` is the record's label, ``variant`` the suite's method name the paper's figure
    is looked up by.

    ``datasets``: the suite's dataset aliases (default: those in ``cells``); with several, aggregates are named
    per dataset ('mvtec:all', 'stc:all') and reference figures are keyed the same way. ``family_sizes`` and
    ``seeds``: see ``aggregate_rows`` (the runner stores both in run.json)."""
    cells = normalised(cells)
    scale = 100.0 if spec.percent else 1.0
    aliases = list(datasets) if datasets is not None else list(dict.fromkeys(cells["dataset"]))
    ok = cells[cells["status"] == "ok"]
    table_rows = class_rows(ok, spec.cell, row_labels(ok)) + \
        aggregate_rows(ok, spec.cell, spec.aggregates, len(aliases) > 1, family_sizes, seeds)
    values, only = reference.get("values") or {}, reference.get("only") or {}
    if len(aliases) == 1:
        values, only = for_one_dataset(values, aliases[0]), for_one_dataset(only, aliases[0])
    rows = []
    for row in table_rows:
        paper = _as_list((values.get(row.variant) or {}).get(row.category))
        for k, metric in enumerate(spec.cell):
            rows.append(_long_row(row.label, row.variant, row.substituted, row.dataset, row.category, metric,
                                  unit_of(metric, spec.percent), row.figures[metric], scale,
                                  paper[k] if k < len(paper) else NAN, row.seeds))
    produced = {(r.label, r.category) for r in table_rows}
    for label, variant, substituted in dict.fromkeys((r.label, r.variant, r.substituted) for r in table_rows):
        for category, figures in (values.get(variant) or {}).items():  # group means a partial run has no figure for
            if is_aggregate(category) and (label, category) not in produced:
                for metric, ref in zip(spec.cell, _as_list(figures)):
                    rows.append(_long_row(label, variant, substituted, "", category, metric,
                                          unit_of(metric, spec.percent), Figure(NAN), scale, ref, 0))
    for method, per_category in only.items():
        for category, figures in per_category.items():
            for metric, ref in zip(spec.cell, _as_list(figures)):
                rows.append(_long_row(method, method, False, "", category, metric, unit_of(metric, spec.percent),
                                      Figure(NAN), scale, ref, 0, reference_only=True))
    return pd.DataFrame(rows, columns=LONG_COLUMNS)


def measured_metrics(cells: pd.DataFrame, suite_metrics: list[str]) -> list[str]:
    """The suite's metrics in its order, then any other metric a record carries."""
    known = set(RECORD_KEYS) | {"undefined"}
    extra = [c for c in cells.columns if c not in known and ":" not in c and c not in suite_metrics]
    return list(suite_metrics) + extra


def measurement_table(cells: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Every metric of every finished cell, per seed, in its own unit (see ``MEASUREMENT_COLUMNS``): so nothing
    measured is only in cells.jsonl."""
    ok = normalised(cells)
    ok = ok[ok["status"] == "ok"]
    labels = row_labels(ok)
    rows = []
    for record in ok.to_dict("records"):
        for metric in metrics:
            unit = MEASURES.get(metric, (metric, ""))[1]
            scale = 100.0 if unit == "%" else 1.0
            value = float(record.get(metric, NAN)) if record.get(metric) is not None else NAN
            rows.append({"method": record["label"], "variant": record["method"], "substituted": record["substituted"],
                         "dataset": record["dataset"], "category": labels[(record["dataset"], record["category"])],
                         "seed": record["seed"], "metric": metric, "unit": unit, "ours": value * scale,
                         "lo": float(record.get(lo_column(metric), NAN)) * scale,
                         "hi": float(record.get(hi_column(metric), NAN)) * scale,
                         "undefined": record["undefined"].get(metric, "")})
    return pd.DataFrame(rows, columns=MEASUREMENT_COLUMNS)


def csv_frame(long: pd.DataFrame, measurements: pd.DataFrame) -> pd.DataFrame:
    """table.csv: the paper-layout rows (``table`` = 'paper', seed means) then every measurement per seed
    (``table`` = 'measurements'); ``lo``/``hi`` are our interval, ``se`` the standard error over seeds."""
    paper = long.assign(table="paper", seed="")
    frames = [paper, measurements.assign(table="measurements")]
    columns = ["table", *dict.fromkeys([*LONG_COLUMNS[:5], "seed", *LONG_COLUMNS[5:]])]
    frame = pd.concat([f for f in frames if not f.empty] or [paper], ignore_index=True).reindex(columns=columns)
    return frame.astype({"seeds": "Int64"})


@dataclass
class Footnotes:
    """Numbered reasons for figures that do not exist, shared by the tables of one page: one number per reason."""

    reasons: dict[str, list[str]] = field(default_factory=dict)

    def mark(self, reason: str, where: str) -> str:
        places = self.reasons.setdefault(reason, [])
        if where not in places:
            places.append(where)
        return f"-[{list(self.reasons).index(reason) + 1}]"

    def lines(self) -> list[str]:
        return [f"[{n}] {reason} ({', '.join(places)})" for n, (reason, places) in enumerate(self.reasons.items(), 1)]


def digits_for(unit: str) -> int:
    return 1 if unit == "%" else 3


def format_figure(value: float, digits: int, lo: float = NAN, hi: float = NAN, se: float = NAN) -> str:
    """'97.7', '97.7 [97.1, 98.2]' (our interval) or '97.7 ± 0.3' (standard error over seeds); '-' if missing."""
    if math.isnan(value):
        return "-"
    text = f"{value:.{digits}f}"
    if not math.isnan(se):
        return f"{text} ± {se:.{digits}f}"
    if not (math.isnan(lo) or math.isnan(hi)):
        return f"{text} [{lo:.{digits}f}, {hi:.{digits}f}]"
    return text


def _tuple(texts: list[str]) -> str:
    """One figure, or a tuple of figures as the paper prints them: "(98.1, 93.9)"; all missing: ''."""
    if all(t == "-" for t in texts):
        return ""
    return texts[0] if len(texts) == 1 else "(" + ", ".join(texts) + ")"


def ours_text(figures: pd.DataFrame, notes: Footnotes) -> str:
    texts = []
    for row in figures.itertuples():
        if isinstance(row.undefined, str) and row.undefined and math.isnan(row.ours):
            texts.append(notes.mark(row.undefined, f"{row.metric}: {row.method} on {row.category}"))
        else:
            texts.append(format_figure(row.ours, digits_for(row.unit), row.lo, row.hi, row.se))
    return _tuple(texts)


def paper_text(figures: pd.DataFrame) -> str:
    return _tuple([format_figure(row.paper, digits_for(row.unit)) for row in figures.itertuples()])


def diff_text(figures: pd.DataFrame) -> str:
    """Signed differences; '†' marks one whose paper figure lies inside our interval."""
    texts = ["-" if math.isnan(row.diff) else f"{row.diff:+.{digits_for(row.unit)}f}" + "†" * row.paper_in_interval
             for row in figures.itertuples()]
    return _tuple(texts)


def column_names(method: str, substituted: bool) -> tuple[str, str, str]:
    """(ours, paper, diff) column names of a method label."""
    return method, f"{method} paper" + (" (different model)" if substituted else ""), f"{method} diff"


def _ordered(items: pd.Series) -> list[str]:
    """Distinct items in first-seen order, aggregates last (by dataset, then textures, objects, all)."""
    seen = list(dict.fromkeys(items))
    order = list(AGGREGATE_FAMILIES)
    return [s for s in seen if not is_aggregate(s)] + sorted(
        (s for s in seen if is_aggregate(s)), key=lambda s: (label_parts(s)[0], order.index(label_parts(s)[1])))


def wide_table(long: pd.DataFrame, spec: TableSpec, notes: Footnotes | None = None) -> pd.DataFrame:
    """The paper's layout as a frame of strings: per method label an 'ours' column, and where the paper has
    figures, a 'paper' column (marked '(different model)' for a substituted label) and, unless substituted, a
    'diff' column; reference-only methods get one 'paper only' column. Undefined figures are '-[n]', numbered
    in ``notes``."""
    if long.empty:
        return pd.DataFrame()
    notes = notes if notes is not None else Footnotes()
    categories, methods = _ordered(long["category"]), _ordered(long["method"])
    columns: dict[str, dict[str, str]] = {}
    for method in methods:
        mine = long[long["method"] == method]
        substituted = bool(mine["substituted"].any())
        ours, paper, diff = column_names(method, substituted)
        has_paper = bool(mine["paper"].notna().any())
        for category in categories:
            figures = mine[mine["category"] == category].drop_duplicates("metric").set_index("metric") \
                .reindex(spec.cell).reset_index()
            if bool(mine["reference_only"].all()):
                columns.setdefault(f"{method} (paper only)", {})[category] = paper_text(figures)
                continue
            columns.setdefault(ours, {})[category] = ours_text(figures, notes)
            if has_paper:
                columns.setdefault(paper, {})[category] = paper_text(figures)
                if not substituted:
                    columns.setdefault(diff, {})[category] = diff_text(figures)
    frame = pd.DataFrame(columns).reindex(categories).fillna("")
    frame.index.name = "category"
    return frame.T if spec.rows == "method" else frame


def measurement_wide(measurements: pd.DataFrame, notes: Footnotes | None = None) -> pd.DataFrame:
    """The measurements as one row per cell (method label, dataset, class, seed) and one column per metric,
    headed with its unit: 'image AUROC %', 'fit s', 'peak RSS GB'."""
    if measurements.empty:
        return pd.DataFrame()
    notes = notes if notes is not None else Footnotes()
    keys = ["method", "dataset", "category", "seed"]
    rows = []
    for key, group in measurements.groupby(keys, sort=False):
        row = dict(zip(keys, key))
        for m in group.itertuples():
            heading = " ".join(filter(None, (MEASURES.get(m.metric, (m.metric, ""))[0], m.unit)))
            if m.undefined and math.isnan(m.ours):
                row[heading] = notes.mark(m.undefined, f"{m.metric}: {m.method} on {m.category}")
            else:
                row[heading] = format_figure(m.ours, 1, m.lo, m.hi) if m.unit == "%" else \
                    _significant(m.ours, m.lo, m.hi)
        rows.append(row)
    return pd.DataFrame(rows).fillna("")


def _significant(value: float, lo: float, hi: float) -> str:
    """A raw-unit measurement with three significant digits (times and sizes span 1e-3 to 1e3)."""
    if math.isnan(value):
        return "-"
    text = f"{value:.3g}"
    return text if math.isnan(lo) or math.isnan(hi) else f"{text} [{lo:.3g}, {hi:.3g}]"


@dataclass(frozen=True)
class Context:
    """What the notes under a table say besides the figures: the interval's confidence level (None: unknown)
    and the suite's number of seeds."""

    ci: float | None = None
    seeds: int = 1


def table_notes(long: pd.DataFrame, spec: TableSpec, reference: dict[str, Any], failed: list[str],
                context: Context) -> list[str]:
    """The lines under the paper-layout table: what a cell holds, and the conventions of intervals, standard
    errors, differences and substitutions, each only where the table uses it."""
    unit = "%" if spec.percent else "raw units"
    lines = [f"Cells: {', '.join(spec.cell)} ({unit})" + ("." if context.seeds <= 1 else
             f"; mean ± standard error over {context.seeds} seeds (per-seed figures in table.csv).")]
    if long["lo"].notna().any():
        level = f"{context.ci:.0%} " if context.ci else ""
        lines.append(f"'x [lo, hi]': our figure and its {level}bootstrap percentile interval over the test images "
                     "(lo/hi columns in table.csv); '†' after a difference: the paper's figure lies inside our "
                     "interval.")
    if reference.get("source"):
        lines.append(f"'paper' columns: {reference['source']}; 'diff' = ours - paper.")
    substituted = sorted(set(long.loc[long["substituted"].astype(bool), "method"]))
    if substituted:
        lines.append("'paper (different model)': the paper's figure for the variant as the suite states it, while "
                     f"ours ran a substituted model ({'; '.join(substituted)}); no difference is computed for it.")
    if spec.note:
        lines.append(spec.note)
    if failed:
        lines.append(f"FAILED cells ({len(failed)}): " + "; ".join(failed))
    return lines


def render_markdown(long: pd.DataFrame, spec: TableSpec, reference: dict[str, Any], failed: list[str],
                    measurements: pd.DataFrame | None = None, context: Context | None = None) -> str:
    """The paper-layout table and the measurements table as markdown, with notes saying what the figures are,
    where the paper's come from, which figures are undefined and why, and which cells failed."""
    notes = Footnotes()
    lines = [f"### {spec.title}", ""] if spec.title else []
    wide = wide_table(long, spec, notes)
    lines.append(wide.to_markdown(disable_numparse=True) if not wide.empty else "_no finished cells yet_")
    lines += ["", *table_notes(long, spec, reference, failed, context or Context())]
    if measurements is not None and not measurements.empty:
        table = measurement_wide(measurements, notes)
        lines += ["", "### Measurements (every finished cell, per seed)", "",
                  table.to_markdown(index=False, disable_numparse=True)]
        if set(measurements["metric"]) & set(RESOURCE_FIGURES):
            lines += ["", RESOURCES_NOTE]
    if notes.reasons:
        lines += ["", "Undefined figures ('-[n]'):", *[f"- {line}" for line in notes.lines()]]
    return "\n".join(lines) + "\n"
