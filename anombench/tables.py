"""From stored cells to paper-layout tables: per class, textures / objects / all means, ours beside the paper.

The long frame (``long_table``) is the source of truth: one row per (method, category-or-aggregate, metric) with
``ours``, ``paper`` and ``diff`` columns, so CSV readers and ``compare`` need no parsing of formatted cells.
``render_markdown`` lays it out as the paper does: a cell holds one figure or a tuple such as "(98.1, 93.9)".

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
from typing import Any

import pandas as pd

from anombench.suite import TableSpec

AGGREGATE_FAMILIES = {"textures": ("texture",), "objects": ("object",), "all": ("texture", "object", "other")}
REFERENCE_KEYS = ("source", "values", "only")


def mean_over_seeds(cells: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Successful cells averaged over seeds (Rd-MVTec AD reports the mean of five): one row per
    (method, dataset, category, group), with the number of seeds averaged in ``seeds``."""
    ok = cells[cells["status"] == "ok"]
    present = [m for m in metrics if m in ok.columns]
    columns = ["method", "dataset", "category", "family", "seeds", *metrics]
    if ok.empty or not present:
        return pd.DataFrame(columns=columns)
    grouped = ok.groupby(["method", "dataset", "category", "family"], sort=False)
    means = grouped[present].mean().assign(seeds=grouped.size()).reset_index()
    return means.reindex(columns=columns)


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


def with_aggregates(per_class: pd.DataFrame, metrics: list[str], aggregates: list[str], several_datasets: bool,
                    family_sizes: dict[str, dict[str, int]] | None = None, seeds: int = 1) -> pd.DataFrame:
    """Append the paper's group means (textures, objects, all) as extra 'category' rows per method and dataset,
    over the classes that finished. ``family_sizes`` (dataset -> group -> number of classes it defines) and
    ``seeds`` (the suite's number of seeds) mark a mean over fewer classes or seeds than the paper's, e.g. a run
    narrowed to bottle or one killed after its first seed."""
    rows = [per_class]
    for name in aggregates:
        members = per_class[per_class["family"].isin(AGGREGATE_FAMILIES[name])]
        if members.empty:
            continue
        grouped = members.groupby(["method", "dataset"], sort=False)
        means = grouped[metrics].mean().reset_index()
        covered, seeds_done = grouped["category"].nunique().to_numpy(), grouped["seeds"].min().to_numpy()
        totals = [sum((family_sizes or {}).get(d, {}).get(g, 0) for g in AGGREGATE_FAMILIES[name]) for d in means["dataset"]]
        means["category"] = [aggregate_label(name, d, several_datasets, n, total, int(done), seeds)
                             for d, n, total, done in zip(means["dataset"], covered, totals, seeds_done)]
        means["family"] = "aggregate"
        rows.append(means)
    return pd.concat(rows, ignore_index=True)


def _as_list(value: Any) -> list[float]:
    if isinstance(value, (list, tuple)):
        return [float("nan") if v is None else float(v) for v in value]
    return [float("nan") if value is None else float(value)]


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


def long_table(cells: pd.DataFrame, spec: TableSpec, reference: dict[str, Any],
               datasets: list[str] | None = None, family_sizes: dict[str, dict[str, int]] | None = None,
               seeds: int = 1) -> pd.DataFrame:
    """method, category, metric, ours, paper, diff, in display units (percent when ``spec.percent``).

    ``datasets``: the suite's dataset aliases (default: those in ``cells``); with several, aggregates are named
    per dataset ('mvtec:all', 'stc:all') and reference figures are keyed the same way. ``family_sizes`` and
    ``seeds``: see ``with_aggregates`` (the runner stores both in run.json)."""
    scale = 100.0 if spec.percent else 1.0
    aliases = list(datasets) if datasets is not None else list(dict.fromkeys(cells["dataset"]))
    several = len(aliases) > 1
    per_class = with_aggregates(mean_over_seeds(cells, spec.cell), spec.cell, spec.aggregates, several, family_sizes,
                                seeds)
    values, only = reference.get("values") or {}, reference.get("only") or {}
    if len(aliases) == 1:
        values, only = for_one_dataset(values, aliases[0]), for_one_dataset(only, aliases[0])
    rows = []
    produced = set(zip(per_class["method"], per_class["category"]))
    for record in per_class.to_dict("records"):
        paper = _as_list((values.get(record["method"]) or {}).get(record["category"]))
        for k, metric in enumerate(spec.cell):
            ours = record[metric] * scale if record[metric] is not None else float("nan")
            ref = paper[k] if k < len(paper) else float("nan")
            rows.append({"method": record["method"], "dataset": record["dataset"], "category": record["category"],
                         "metric": metric, "ours": ours, "paper": ref, "diff": ours - ref, "reference_only": False})
    for method in dict.fromkeys(per_class["method"]):  # the paper's group means a partial run has no figure for
        for category, figures in (values.get(method) or {}).items():
            if is_aggregate(category) and (method, category) not in produced:
                for metric, ref in zip(spec.cell, _as_list(figures)):
                    rows.append({"method": method, "dataset": "", "category": category, "metric": metric,
                                 "ours": float("nan"), "paper": ref, "diff": float("nan"), "reference_only": False})
    for method, per_category in only.items():
        for category, figures in per_category.items():
            for metric, ref in zip(spec.cell, _as_list(figures)):
                rows.append({"method": method, "dataset": "", "category": category, "metric": metric,
                             "ours": float("nan"), "paper": ref, "diff": float("nan"), "reference_only": True})
    return pd.DataFrame(rows, columns=["method", "dataset", "category", "metric", "ours", "paper", "diff",
                                       "reference_only"])


def _fmt(values: list[float], percent: bool, signed: bool = False) -> str:
    """One figure, or a tuple of figures as the paper prints them: "(98.1, 93.9)"; missing figures are '-'."""
    digits = 1 if percent else 3
    texts = ["-" if math.isnan(v) else (f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}") for v in values]
    if all(t == "-" for t in texts):
        return ""
    return texts[0] if len(texts) == 1 else "(" + ", ".join(texts) + ")"


def _aggregate_order(label: str) -> tuple[str, int]:
    """Sort key of an aggregate label: by dataset, then textures, objects, all (partial means beside full ones)."""
    dataset, name = label_parts(label)
    return dataset, list(AGGREGATE_FAMILIES).index(name)


def _ordered(items: pd.Series) -> list[str]:
    """Distinct items in first-seen order, aggregates last."""
    seen = list(dict.fromkeys(items))
    return [s for s in seen if not is_aggregate(s)] + sorted((s for s in seen if is_aggregate(s)), key=_aggregate_order)


def wide_table(long: pd.DataFrame, spec: TableSpec) -> pd.DataFrame:
    """The paper's layout as a frame of strings: per method an 'ours' column, and where the paper has figures,
    'paper' and 'diff' columns beside it; reference-only methods get one 'paper only' column."""
    if long.empty:
        return pd.DataFrame()
    categories, methods = _ordered(long["category"]), _ordered(long["method"])
    columns: dict[str, dict[str, str]] = {}
    for method in methods:
        mine = long[long["method"] == method]
        only = bool(mine["reference_only"].all())
        has_paper = bool(mine["paper"].notna().any())
        for category in categories:
            figures = mine[mine["category"] == category].set_index("metric").reindex(spec.cell)
            if only:
                columns.setdefault(f"{method} (paper only)", {})[category] = _fmt(list(figures["paper"]), spec.percent)
                continue
            columns.setdefault(f"{method}", {})[category] = _fmt(list(figures["ours"]), spec.percent)
            if has_paper:
                columns.setdefault(f"{method} paper", {})[category] = _fmt(list(figures["paper"]), spec.percent)
                columns.setdefault(f"{method} diff", {})[category] = _fmt(list(figures["diff"]), spec.percent, True)
    frame = pd.DataFrame(columns).reindex(categories).fillna("")
    frame.index.name = "category"
    return frame.T if spec.rows == "method" else frame


def render_markdown(long: pd.DataFrame, spec: TableSpec, reference: dict[str, Any], failed: list[str]) -> str:
    """The table as markdown, with a caption saying what the figures are, where the paper's come from, and
    which cells failed."""
    unit = "%" if spec.percent else "raw units"
    lines = []
    if spec.title:
        lines += [f"### {spec.title}", ""]
    wide = wide_table(long, spec)
    lines.append(wide.to_markdown(disable_numparse=True) if not wide.empty else "_no finished cells yet_")
    lines += ["", f"Cells: {', '.join(spec.cell)} ({unit}); seeds averaged."]
    if reference.get("source"):
        lines.append(f"'paper' columns: {reference['source']}; 'diff' = ours - paper.")
    if spec.note:
        lines.append(spec.note)
    if failed:
        lines.append(f"FAILED cells ({len(failed)}): " + "; ".join(failed))
    return "\n".join(lines) + "\n"
