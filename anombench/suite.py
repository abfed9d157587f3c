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
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from anombench import params as paramcheck
from anombench.errors import UserError
from anombench.plugins import Registry

TOP_LEVEL_KEYS = ("name", "description", "datasets", "methods", "metrics", "seeds", "run", "table", "reference")
RUN_KEYS = {"batch_size": int, "workers": int}
TABLE_KEYS = ("rows", "columns", "cell", "percent", "aggregates", "title", "note")
AGGREGATES = ("textures", "objects", "all")
ENTRY_SECTIONS = ("datasets", "methods")  # mappings of named entries
SHORTHANDS = {
    "categories": "every dataset's categories",
    "image_size": "every dataset's params.image_size",
    "backbone": "every method's params.backbone",
    "batch_size": "run.batch_size",
    "workers": "run.workers",
    "seeds": "seeds",
    "datasets": "a list keeps only those dataset aliases",
    "methods": "a list keeps only those method variants",
}


@dataclass(frozen=True)
class DatasetSpec:
    alias: str
    plugin: str
    params: dict[str, Any]
    categories: list[str] | None


@dataclass(frozen=True)
class MethodSpec:
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
    batch_size: int
    workers: int
    table: TableSpec
    reference: dict[str, Any]
    source: dict[str, Any]
    overrides: tuple[str, ...] = ()

    def sha256(self) -> str:
        return hashlib.sha256(yaml.safe_dump(self.source, sort_keys=True).encode()).hexdigest()


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
    """``key=value`` with the value parsed as YAML (``categories=[bottle]``, ``batch_size=8``)."""
    if "=" not in text:
        raise UserError(f"--set {text!r}: expected KEY=VALUE, e.g. --set categories=[bottle]")
    key, raw = text.split("=", 1)
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
    """``--set datasets=[mvtec]``: the suite's entries named in ``keep``, in the suite's order."""
    unknown = [name for name in keep if name not in entries]
    if unknown or not keep:
        raise UserError(f"--set {key}={keep}: {unknown or 'an empty list'} not in the suite; "
                        f"its {key}: {', '.join(entries)}")
    return {name: spec for name, spec in entries.items() if name in keep}


def apply_overrides(doc: dict[str, Any], overrides: list[tuple[str, Any]], data_roots: dict[str, str],
                    has_backbone: Callable[[str], bool] = lambda plugin: True) -> dict[str, Any]:
    """Apply ``--set`` overrides (shorthands or dotted paths) and ``--data plugin=root`` to a loaded suite.
    The ``backbone`` shorthand reaches only methods whose plugin ``has_backbone`` (a VAE has none)."""
    doc = copy.deepcopy(doc)
    for section in ENTRY_SECTIONS:  # "padim:" with no value is an entry with defaults: make it a mapping to edit
        entries = _section(doc, section)
        entries.update({name: {} for name, spec in entries.items() if spec is None})
    for key, value in overrides:
        if key in ("categories", "image_size"):
            for spec in _section(doc, "datasets").values():
                if isinstance(spec, dict):
                    target = spec if key == "categories" else spec.setdefault("params", {})
                    target[key] = value
        elif key == "backbone":
            for name, spec in _section(doc, "methods").items():
                if isinstance(spec, dict) and has_backbone(str(spec.get("plugin", name))):
                    spec.setdefault("params", {})["backbone"] = value
        elif key in ("batch_size", "workers"):
            doc.setdefault("run", {})[key] = value
        elif key in ("datasets", "methods") and isinstance(value, list):
            doc[key] = _narrowed(key, _section(doc, key), [str(v) for v in value])
        elif "." in key or key in TOP_LEVEL_KEYS:
            _set_dotted(doc, key, value)
        else:
            listed = ", ".join(f"{k} ({v})" for k, v in SHORTHANDS.items())
            raise UserError(f"--set {key}: unknown key; use a dotted path such as methods.NAME.params.KEY or one of: {listed}")
    for alias, spec in _section(doc, "datasets").items():
        plugin = spec.get("plugin", alias) if isinstance(spec, dict) else alias
        if isinstance(spec, dict) and (plugin in data_roots or alias in data_roots):
            spec.setdefault("params", {})["root"] = data_roots.get(alias, data_roots.get(plugin))
    return doc


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: suite file not found")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}: not valid YAML{at}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(doc, dict):
        raise UserError(f"{path}: a suite must be a mapping with keys {', '.join(TOP_LEVEL_KEYS)}")
    return doc


def _entry(where: str, alias: str, spec: Any) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """Split a dataset/method entry into (plugin name, params, the rest)."""
    spec = {} if spec is None else _expect(where, spec, dict, "a mapping with 'plugin' and 'params'")
    plugin = _expect(f"{where}.plugin", spec.get("plugin", alias), str, "a plugin name")
    params = _expect(f"{where}.params", spec.get("params") or {}, dict, "a mapping of parameters")
    rest = {k: v for k, v in spec.items() if k not in ("plugin", "params")}
    return plugin, params, rest


def _datasets(where: str, doc: Any, registry: Registry) -> list[DatasetSpec]:
    specs = []
    for alias, raw in _expect(where, doc, dict, "a mapping of dataset aliases").items():
        at = f"{where}.{alias}"
        plugin, params, rest = _entry(at, alias, raw)
        unknown = set(rest) - {"categories"}
        if unknown:
            raise UserError(f"{at}.{sorted(unknown)[0]}: unknown key; allowed: plugin, params, categories")
        categories = rest.get("categories")
        if categories is not None:
            categories = [str(c) for c in _expect(f"{at}.categories", categories, list, "a list of category names")]
        factory = registry.get("dataset", plugin).factory
        paramcheck.validate(f"{at}.params", factory, params)
        specs.append(DatasetSpec(alias, plugin, params, categories))
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
        factory = registry.get("method", plugin).factory
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
        paramcheck.validate(f"{where}.{name}", registry.get("metric", name).factory, params)
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
    for axis in ("rows", "columns"):
        if getattr(table, axis) not in ("category", "method"):
            raise UserError(f"{where}.{axis}: expected 'category' or 'method', got {getattr(table, axis)!r}")
    if table.rows == table.columns:
        raise UserError(f"{where}: rows and columns must differ (one 'category', one 'method')")
    for metric in table.cell:
        if metric not in metrics:
            raise UserError(f"{where}.cell: metric '{metric}' is not in the suite's metrics ({', '.join(metrics)})")
    for aggregate in table.aggregates:
        if aggregate not in AGGREGATES:
            raise UserError(f"{where}.aggregates: unknown aggregate {aggregate!r}; allowed: {', '.join(AGGREGATES)}")
    return table


def _run_settings(where: str, doc: Any) -> dict[str, int]:
    doc = _expect(where, doc or {}, dict, "a mapping")
    settings = {"batch_size": 16, "workers": 1}
    for key, value in doc.items():
        if key not in RUN_KEYS:
            raise UserError(f"{where}.{key}: unknown key; allowed: {', '.join(RUN_KEYS)}")
        settings[key] = _expect(f"{where}.{key}", value, int, "an integer")
        if value < (1 if key == "batch_size" else 0):
            raise UserError(f"{where}.{key}: must be {'positive' if key == 'batch_size' else '>= 0'}, got {value}")
    return settings


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
    settings = _run_settings(f"{path}: run", doc.get("run"))
    return Suite(
        name=str(doc.get("name") or Path(path).stem),
        description=str(doc.get("description") or ""),
        path=str(path),
        datasets=_datasets(f"{path}: datasets", doc["datasets"], registry),
        methods=_methods(f"{path}: methods", doc["methods"], registry),
        metrics=metrics,
        seeds=[int(s) for s in seeds],
        batch_size=settings["batch_size"],
        workers=settings["workers"],
        table=_table(f"{path}: table", doc.get("table"), metrics),
        reference=_expect(f"{path}: reference", doc.get("reference") or {}, dict, "a mapping"),
        source=doc,
    )


def load_suite(path: str | Path, registry: Registry, overrides: list[str] = (),
               data_roots: dict[str, str] | None = None) -> Suite:
    """Read, override and validate a suite file."""
    def has_backbone(plugin: str) -> bool:
        entry = registry.entries["method"].get(plugin)
        return entry is None or "backbone" in paramcheck.allowed_parameters(entry.factory)

    doc = apply_overrides(load_yaml(path), [parse_override(o) for o in overrides], data_roots or {}, has_backbone)
    suite = build_suite(doc, str(path), registry)
    return dataclasses.replace(suite, overrides=tuple(overrides))


def expand(suite: Suite, categories_of: dict[str, list[str]]) -> list[Cell]:
    """The product grid: seeds x datasets x categories x methods, in a stable order that keeps the cells
    sharing data next to each other (so shared feature extraction can group them)."""
    return [
        Cell(method.name, dataset.alias, category, seed)
        for seed in suite.seeds
        for dataset in suite.datasets
        for category in categories_of[dataset.alias]
        for method in suite.methods
    ]


def table_of(doc: dict[str, Any], path: str) -> tuple[TableSpec, dict[str, Any]]:
    """The table layout and reference figures of a suite document, without the plugin registry (used by
    ``anombench report`` on a stored run, which may be read where the plugins are not installed)."""
    raw_metrics = doc.get("metrics") or []
    metric_names = {name: {} for name in (raw_metrics if isinstance(raw_metrics, list) else list(raw_metrics))}
    return _table(f"{path}: table", doc.get("table"), metric_names), dict(doc.get("reference") or {})
