"""Suite files: YAML -> a validated Suite -> the list of Cells to run.

A suite names datasets (with categories), method variants (a row or column of a paper table each), metrics,
seeds, runner settings, the table layout and the paper's reference figures. Everything is checked against the
registered plugins before anything runs, and every error is one line naming the file and the key.

Example (suites/quickstart.yaml is a complete one)::

    name: quickstart
    datasets:
      synthetic: {params: {image_size: 224}, categories: [stripes, disc]}
    methods:
      padim-lite0: {plugin: padim, params: {backbone: efficientnet_lite0}}
    metrics: [pixel_auroc, pro, image_auroc, fit_seconds]
    seeds: [0]
    run: {batch_size: 16}
    table: {rows: category, columns: method, cell: [pixel_auroc, pro], aggregates: [textures, objects, all]}
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable

import yaml

from anombench import params as paramcheck
from anombench.errors import UserError
from anombench.params import Range
from anombench.plugins import Kind, Registry

TOP_LEVEL_KEYS = ("name", "description", "datasets", "methods", "metrics", "seeds", "run", "table", "reference")
MEASURED_KEYS = ("datasets", "methods", "metrics", "seeds")  # what the suite hash covers (``Suite.sha256``)
TABLE_KEYS = ("rows", "columns", "cell", "percent", "aggregates", "title", "note")
REFERENCE_KEYS = ("source", "values", "only")
AGGREGATES = ("textures", "objects", "all")
ENTRY_SECTIONS = ("datasets", "methods")  # mappings of named entries
LIST_SHORTHANDS = ("categories", "datasets", "methods", "seeds")  # --set categories=bottle,cable reads as a list


@dataclass(frozen=True)
class RunSettings:
    """The suite's ``run:`` block (and the same ``--set`` shorthands): how cells run, not what they compute.

    ``None`` for batch_size, workers and threads means the runner picks from the machine; ``cell_timeout``
    (seconds) and ``max_memory_gb`` (peak RSS of a cell's processes) are per-cell limits, off when None; ``ci``
    is the confidence level of bootstrap intervals (off when None) drawn with ``ci_resamples`` resamples.
    The annotations are the schema (``anombench.params``), so a wrong key or value is one line naming it.
    """

    batch_size: Annotated[int, Range(1, None)] | None = None
    workers: Annotated[int, Range(0, None)] | None = None
    threads: Annotated[int, Range(0, None)] | None = None
    cell_timeout: Annotated[float, Range(0, None, lo_open=True)] | None = None
    max_memory_gb: Annotated[float, Range(0, None, lo_open=True)] | None = None
    ci: Annotated[float, Range(0, 1, lo_open=True, hi_open=True)] | None = None
    ci_resamples: Annotated[int, Range(1, None)] = 1000


RUN_KEYS = tuple(field.name for field in dataclasses.fields(RunSettings))
SHORTHANDS = {
    "categories": "every dataset's categories (categories=bottle,cable)",
    "image_size": "every dataset's params.image_size",
    "backbone": "every method's params.backbone",
    **{key: f"run.{key}" for key in RUN_KEYS},
    "seeds": "seeds (seeds=0,1)",
    "datasets": "keep only those of the suite's datasets (datasets=mvtec)",
    "methods": "keep only those of the suite's methods (methods=spade,padim-r18-rd100)",
}


def unknown_override(key: str, methods: list[str]) -> str:
    """The one-line error for a --set key that is neither a shorthand nor a dotted path: the shorthand it is
    closest to, else where one method's parameter of that name goes."""
    close = difflib.get_close_matches(key, list(SHORTHANDS), n=1)
    hint = f"did you mean {close[0]}?" if close else \
        f"a method's parameter is methods.NAME.params.{key}, NAME one of: {', '.join(methods) or 'none'}"
    return f"--set {key}: unknown key ({hint}); shorthands: {', '.join(SHORTHANDS)}"


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset entry of the suite: its ``name`` (the suite's key, used in cell ids, records and tables), the
    registered dataset it uses (``plugin:`` in YAML, default: the name), its parameters and categories."""

    name: str
    plugin: str
    params: dict[str, Any]
    categories: list[str] | None


@dataclass(frozen=True)
class MethodSpec:
    """A method variant of the suite: its ``name`` (the suite's key: a row or column of the table), the registered
    method it uses (``plugin:`` in YAML, default: the name) and its parameters."""

    name: str
    plugin: str
    params: dict[str, Any]


@dataclass(frozen=True)
class TableSpec:
    rows: str = "category"
    columns: str = "method"
    cell: list[str] = field(default_factory=list)
    percent: bool = True
    aggregates: list[str] = field(default_factory=list)
    title: str = ""
    note: str = ""


def suite_where(path: str, overrides: Sequence[str]) -> str:
    """How errors name a suite: its file, and the --set overrides applied to it (a bad value may be theirs)."""
    return f"{path} with --set {' '.join(overrides)}" if overrides else path


@dataclass(frozen=True)
class Suite:
    """A validated suite. ``source`` is the YAML as loaded after overrides (kept for provenance)."""

    name: str
    description: str
    path: str
    datasets: list[DatasetSpec]
    methods: list[MethodSpec]
    metrics: dict[str, dict[str, Any]]
    seeds: list[int]
    run: RunSettings
    table: TableSpec
    reference: dict[str, Any]
    source: dict[str, Any]
    overrides: tuple[str, ...] = ()

    @property
    def where(self) -> str:
        """How errors name the suite (``suite_where``)."""
        return suite_where(self.path, self.overrides)

    def sha256(self) -> str:
        """Hash of what the suite measures (``MEASURED_KEYS``): editing its description, table layout, reference
        figures or run settings (loader workers, threads) leaves it, so ``compare`` does not call the run another
        suite; a change there that moved a figure shows in the figures themselves."""
        measured = {key: self.source[key] for key in MEASURED_KEYS if key in self.source}
        return hashlib.sha256(yaml.safe_dump(measured, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Cell:
    """One unit of work: a method variant on one category of one dataset with one seed."""

    method: str
    dataset: str
    category: str
    seed: int

    @property
    def id(self) -> str:
        return f"{self.method}|{self.dataset}|{self.category}|{self.seed}"


def _expect(where: str, value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise UserError(f"{where}: expected {what}, got {value!r}")
    return value


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` with the value parsed as YAML (``categories=[bottle]``, ``batch_size=8``); the list shorthands
    also take ``categories=bottle,cable`` (see ``apply_overrides``)."""
    if "=" not in text:
        raise UserError(f"--set {text!r}: expected KEY=VALUE, e.g. --set categories=[bottle]")
    key, raw = text.split("=", 1)
    if key.strip() in LIST_SHORTHANDS and not raw.lstrip().startswith(("[", "{")):
        return key.strip(), raw  # names stay text: categories=001 is category '001', not the number 1
    try:
        return key.strip(), yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise UserError(f"--set {key}: value {raw!r} is not valid YAML ({exc.problem})") from None


def _set_dotted(doc: dict[str, Any], dotted: str, value: Any) -> None:
    """Set a dotted path, creating mappings on the way, except a method or dataset entry: a misspelt or dropped
    name would otherwise come back as a new entry with the plugin's defaults."""
    node = doc
    parts = dotted.split(".")
    if parts[0] in ENTRY_SECTIONS and len(parts) > 2 and parts[1] not in _section(doc, parts[0]):
        raise UserError(f"--set {dotted}: no {parts[0][:-1]} '{parts[1]}' in the suite; its {parts[0]}: "
                        f"{', '.join(_section(doc, parts[0])) or 'none'}")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise UserError(f"--set {dotted}: '{part}' is not a mapping in the suite")
        node = child
    node[parts[-1]] = value


def _section(doc: dict[str, Any], section: str) -> dict[str, Any]:
    """The suite's ``datasets`` or ``methods`` mapping to edit in place; {} when it is missing or malformed (then
    build_suite reports it on one line)."""
    entries = doc.get(section)
    return entries if isinstance(entries, dict) else {}


def _narrowed(key: str, entries: dict[str, Any], keep: list[str]) -> dict[str, Any]:
    """``--set datasets=mvtec``: the suite's entries named in ``keep``, in the suite's order."""
    singular = key[:-1]
    if not keep:
        raise UserError(f"--set {key}: an empty list; the suite's {key}: {', '.join(entries)}")
    for name in keep:
        if name not in entries:
            raise UserError(f"--set {key}: no {singular} '{name}' in the suite; its {key}: {', '.join(entries)}")
    return {name: spec for name, spec in entries.items() if name in keep}


def _as_list(key: str, value: Any) -> list[Any]:
    """A list shorthand's value: a YAML list as is, ``a,b`` or ``a`` as a list (no brackets or spaces needed).
    Names stay text (category ``001`` is not the number 1); seeds are read as YAML numbers."""
    if isinstance(value, list):
        return value
    items = [item.strip() for item in value.split(",")] if isinstance(value, str) else [value]
    return [yaml.safe_load(item) if key == "seeds" and isinstance(item, str) else item for item in items if item != ""]


def apply_overrides(doc: dict[str, Any], overrides: list[tuple[str, Any]], data_roots: dict[str, str],
                    has_backbone: Callable[[str], bool] = lambda plugin: True) -> dict[str, Any]:
    """Apply ``--set`` overrides (shorthands or dotted paths) and ``--data plugin=root`` to a loaded suite.
    The ``backbone`` shorthand reaches only methods whose plugin ``has_backbone`` (a VAE has none)."""
    doc = copy.deepcopy(doc)
    for section in ENTRY_SECTIONS:  # "padim:" with no value is an entry with defaults: make it a mapping to edit
        entries = _section(doc, section)
        entries.update({name: {} for name, spec in entries.items() if spec is None})
    for key, raw in overrides:
        value = _as_list(key, raw) if key in LIST_SHORTHANDS and not isinstance(raw, dict) else raw
        if key in ("categories", "image_size"):
            for spec in _section(doc, "datasets").values():
                if isinstance(spec, dict):
                    target = spec if key == "categories" else spec.setdefault("params", {})
                    target[key] = value
        elif key == "backbone":
            for name, spec in _section(doc, "methods").items():
                if isinstance(spec, dict) and has_backbone(str(spec.get("plugin", name))):
                    spec.setdefault("params", {})["backbone"] = value
        elif key in RUN_KEYS:
            run = doc.get("run")
            if run is None:
                run = doc["run"] = {}
            if isinstance(run, dict):  # else build_suite reports the malformed block
                run[key] = value
        elif key in ENTRY_SECTIONS and not isinstance(value, dict):  # a list narrows; a mapping replaces the section
            doc[key] = _narrowed(key, _section(doc, key), [str(v) for v in value])
        elif "." in key or key in TOP_LEVEL_KEYS:
            _set_dotted(doc, key, value)
        else:
            raise UserError(unknown_override(key, list(_section(doc, "methods"))))
    for name, spec in _section(doc, "datasets").items():
        plugin = spec.get("plugin", name) if isinstance(spec, dict) else name
        if isinstance(spec, dict) and (plugin in data_roots or name in data_roots):
            spec.setdefault("params", {})["root"] = data_roots.get(name, data_roots.get(plugin))
    return doc


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: suite file not found")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.MarkedYAMLError as exc:
        at = f" at line {exc.problem_mark.line + 1}" if exc.problem_mark else ""
        raise UserError(f"{path}: not valid YAML{at}: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise UserError(f"{path}: a suite must be a mapping with keys {', '.join(TOP_LEVEL_KEYS)}")
    return doc


def _entry(where: str, name: str, spec: Any) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """Split a dataset/method entry into (registered name it uses, params, the rest)."""
    spec = {} if spec is None else _expect(where, spec, dict, "a mapping with 'plugin' and 'params'")
    plugin = _expect(f"{where}.plugin", spec.get("plugin", name), str, "a registered method or dataset name")
    params = _expect(f"{where}.params", spec.get("params") or {}, dict, "a mapping of parameters")
    rest = {k: v for k, v in spec.items() if k not in ("plugin", "params")}
    return plugin, params, rest


def _registered(registry: Registry, kind: Kind, name: str, where: str) -> Callable[..., Any]:
    """The factory registered under ``name``; an unknown name is a one-line error naming the suite key."""
    try:
        return registry.get(kind, name).factory
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None


def _datasets(where: str, doc: Any, registry: Registry) -> list[DatasetSpec]:
    specs = []
    for name, raw in _expect(where, doc, dict, "a mapping of dataset names").items():
        at = f"{where}.{name}"
        plugin, params, rest = _entry(at, name, raw)
        unknown = set(rest) - {"categories"}
        if unknown:
            raise UserError(f"{at}.{sorted(unknown)[0]}: unknown key; allowed: plugin, params, categories")
        categories = rest.get("categories")
        if categories is not None:
            categories = [str(c) for c in _expect(f"{at}.categories", categories, list, "a list of category names")]
        factory = _registered(registry, "dataset", plugin, f"{at}.plugin")
        paramcheck.validate(f"{at}.params", factory, params)
        specs.append(DatasetSpec(str(name), plugin, params, categories))
    if not specs:
        raise UserError(f"{where}: at least one dataset is needed")
    return specs


def _methods(where: str, doc: Any, registry: Registry) -> list[MethodSpec]:
    specs = []
    for name, raw in _expect(where, doc, dict, "a mapping of method variant names").items():
        at = f"{where}.{name}"
        plugin, params, rest = _entry(at, name, raw)
        if rest:
            raise UserError(f"{at}.{sorted(rest)[0]}: unknown key; allowed: plugin, params")
        factory = _registered(registry, "method", plugin, f"{at}.plugin")
        paramcheck.validate(f"{at}.params", factory, params, hidden=paramcheck.RUNNER_SUPPLIED)
        specs.append(MethodSpec(str(name), plugin, params))
    if not specs:
        raise UserError(f"{where}: at least one method is needed")
    return specs


def _metrics(where: str, doc: Any, registry: Registry) -> dict[str, dict[str, Any]]:
    if isinstance(doc, list):
        doc = {name: {} for name in doc}
    metrics = {}
    for name, params in _expect(where, doc, dict, "a list of metric names or a mapping name -> params").items():
        params = _expect(f"{where}.{name}", params or {}, dict, "a mapping of parameters")
        paramcheck.validate(f"{where}.{name}", _registered(registry, "metric", name, f"{where}.{name}"), params)
        metrics[str(name)] = params
    if not metrics:
        raise UserError(f"{where}: at least one metric is needed")
    return metrics


def _table(where: str, doc: Any, metrics: dict[str, Any]) -> TableSpec:
    doc = _expect(where, doc or {}, dict, "a mapping")
    unknown = set(doc) - set(TABLE_KEYS)
    if unknown:
        raise UserError(f"{where}.{sorted(unknown)[0]}: unknown key; allowed: {', '.join(TABLE_KEYS)}")
    table = TableSpec(**{**doc, "cell": list(doc.get("cell") or list(metrics)[:2]),
                         "aggregates": list(doc.get("aggregates") or [])})
    for axis, value in (("rows", table.rows), ("columns", table.columns)):
        if value not in ("category", "method"):
            raise UserError(f"{where}.{axis}: expected 'category' or 'method', got {value!r}")
    if table.rows == table.columns:
        raise UserError(f"{where}: rows and columns must differ (one 'category', one 'method')")
    for metric in table.cell:
        if metric not in metrics:
            raise UserError(f"{where}.cell: metric '{metric}' is not in the suite's metrics ({', '.join(metrics)})")
    for aggregate in table.aggregates:
        if aggregate not in AGGREGATES:
            raise UserError(f"{where}.aggregates: unknown aggregate {aggregate!r}; allowed: {', '.join(AGGREGATES)}")
    return table


def _run_settings(where: str, doc: Any) -> RunSettings:
    doc = _expect(where, {} if doc is None else doc, dict, "a mapping")
    paramcheck.validate(where, RunSettings, doc, noun="key")
    return RunSettings(**doc)


def _split_label(label: str) -> tuple[str, str]:
    """(dataset, category or aggregate) of a reference row key: 'mvtec:all' -> ('mvtec', 'all'), 'bottle' -> ('',
    'bottle'); the same reading as the tables' ``label_parts``."""
    dataset, _, name = label.rpartition(":")
    return dataset, name


def _figures(where: str, value: Any, arity: int) -> None:
    """A reference cell: one figure per metric of ``table.cell`` (a list), or a bare number when there is one
    metric; ``null`` is a figure the paper does not give."""
    figures = value if isinstance(value, list) else [value]
    if len(figures) != arity:
        shape = "a number" if arity == 1 else f"a list of {arity} figures (one per table.cell metric)"
        raise UserError(f"{where}: expected {shape}, got {value!r}")
    for figure in figures:
        if figure is not None and not paramcheck.matches(figure, float):
            raise UserError(f"{where}: figures must be numbers or null, got {figure!r}")


def _reference(where: str, doc: Any, table: TableSpec, datasets: list[DatasetSpec], methods: list[MethodSpec]
               ) -> dict[str, Any]:
    """Check the reference block's shape against the suite: keys (``values``, not ``value``), our methods under
    ``values``, row keys (a category, or an aggregate of ``table.aggregates``, as 'NAME:all' when the suite has
    several datasets) and one figure per ``table.cell`` metric. Whether a category exists is checked when the
    datasets are opened (``check_reference_categories``)."""
    doc = _expect(where, {} if doc is None else doc, dict, "a mapping")
    unknown = set(doc) - set(REFERENCE_KEYS)
    if unknown:
        raise UserError(f"{where}.{sorted(unknown)[0]}: unknown key; allowed: {', '.join(REFERENCE_KEYS)}")
    _expect(f"{where}.source", doc.get("source", ""), str, "text naming where the figures come from")
    ours, dataset_names = [m.name for m in methods], [d.name for d in datasets]
    for part in ("values", "only"):
        entries = _expect(f"{where}.{part}", doc.get(part) or {}, dict, "a mapping of method -> row -> figures")
        for method, rows in entries.items():
            at = f"{where}.{part}.{method}"
            if part == "values" and method not in ours:
                raise UserError(f"{at}: no method '{method}' in the suite; its methods: {', '.join(ours)} "
                                f"(put methods the paper quotes but the suite does not run under 'only')")
            for label, figures in _expect(at, rows or {}, dict, "a mapping of category or aggregate -> figures").items():
                dataset, name = _split_label(str(label))
                if dataset and dataset not in dataset_names:
                    raise UserError(f"{at}.{label}: no dataset '{dataset}' in the suite; its datasets: "
                                    f"{', '.join(dataset_names)}")
                if name in AGGREGATES and name not in table.aggregates:
                    raise UserError(f"{at}.{label}: aggregate '{name}' is not in table.aggregates "
                                    f"({', '.join(table.aggregates) or 'none'}), so it would never be shown")
                _figures(f"{at}.{label}", figures, len(table.cell))
    return doc


def check_reference_categories(suite: Suite, known: dict[str, list[str]]) -> None:
    """Every category the reference block names exists in one of the suite's datasets (``known``: dataset name ->
    every category it defines, ``anombench.api.known_categories``); else a one-line error naming the key (a typo
    would otherwise silently drop the paper's figure). Called once the datasets are opened."""
    for part in ("values", "only"):
        for method, rows in (suite.reference.get(part) or {}).items():
            for label in rows or {}:
                dataset, name = _split_label(str(label))
                if name in AGGREGATES:
                    continue
                candidates = [dataset] if dataset else list(known)
                if not any(name in known.get(d, []) for d in candidates):
                    every = sorted({c for d in candidates for c in known.get(d, [])})
                    raise UserError(f"{suite.where}: reference.{part}.{method}.{label}: no category '{name}' in "
                                    f"{' or '.join(candidates)}; its categories: {', '.join(every) or 'none'}")


def build_suite(doc: dict[str, Any], path: str, registry: Registry) -> Suite:
    """Validate a loaded (and overridden) suite document against the registry."""
    unknown = set(doc) - set(TOP_LEVEL_KEYS)
    if unknown:
        raise UserError(f"{path}: {sorted(unknown)[0]}: unknown key; allowed: {', '.join(TOP_LEVEL_KEYS)}")
    for required in ("datasets", "methods", "metrics"):
        if required not in doc:
            raise UserError(f"{path}: missing key '{required}'")
    seeds = _expect(f"{path}: seeds", doc.get("seeds", [0]), list, "a list of integers")
    for seed in seeds:
        _expect(f"{path}: seeds", seed, int, "a list of integers")
    metrics = _metrics(f"{path}: metrics", doc["metrics"], registry)
    datasets = _datasets(f"{path}: datasets", doc["datasets"], registry)
    methods = _methods(f"{path}: methods", doc["methods"], registry)
    table = _table(f"{path}: table", doc.get("table"), metrics)
    return Suite(
        name=str(doc.get("name") or Path(path).stem),
        description=str(doc.get("description") or ""),
        path=str(path),
        datasets=datasets,
        methods=methods,
        metrics=metrics,
        seeds=[int(s) for s in seeds],
        run=_run_settings(f"{path}: run", doc.get("run")),
        table=table,
        reference=_reference(f"{path}: reference", doc.get("reference"), table, datasets, methods),
        source=doc,
    )


def load_suite(path: str | Path, registry: Registry, overrides: list[str] = (),
               data_roots: dict[str, str] | None = None) -> Suite:
    """Read, override and validate a suite file."""
    def has_backbone(plugin: str) -> bool:
        entry = registry.entries["method"].get(plugin)
        return entry is None or "backbone" in paramcheck.allowed_parameters(entry.factory)

    doc = apply_overrides(load_yaml(path), [parse_override(o) for o in overrides], data_roots or {}, has_backbone)
    suite = build_suite(doc, suite_where(str(path), overrides), registry)
    return dataclasses.replace(suite, path=str(path), overrides=tuple(overrides))


def expand(suite: Suite, categories_of: dict[str, list[str]]) -> list[Cell]:
    """The product grid: seeds x datasets x categories x methods, in a stable order that keeps the cells
    sharing data next to each other (so shared feature extraction can group them)."""
    return [
        Cell(method.name, dataset.name, category, seed)
        for seed in suite.seeds
        for dataset in suite.datasets
        for category in categories_of[dataset.name]
        for method in suite.methods
    ]


def table_of(doc: dict[str, Any], path: str) -> tuple[TableSpec, dict[str, Any]]:
    """The table layout and reference figures of a suite document, without the plugin registry (used by
    ``anombench report`` on a stored run, which may be read where the plugins are not installed)."""
    raw_metrics = doc.get("metrics") or []
    metric_names = {name: {} for name in (raw_metrics if isinstance(raw_metrics, list) else list(raw_metrics))}
    return _table(f"{path}: table", doc.get("table"), metric_names), dict(doc.get("reference") or {})
