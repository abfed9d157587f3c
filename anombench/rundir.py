"""The run directory's lifecycle: choosing it, holding it (one writer at a time) and checking that a --resume
continues the same setup."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from anombench.errors import UserError
from anombench.suite import ENTRY_SECTIONS, Suite

LOCK = ".lock"  # in a run directory: held by the one process writing it


def default_run_dir(suite: Suite, root: str | Path = "results/runs") -> Path:
    return Path(root) / suite.name / datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def check_fresh(out: Path, resume: bool) -> None:
    """A run writes into an empty directory unless it resumes one."""
    if out.exists() and any(p.name != LOCK for p in out.iterdir()) and not resume:
        raise UserError(f"{out}: run directory exists and is not empty; pass --resume to continue it or choose --out")


@contextmanager
def exclusive_writer(out: Path) -> Iterator[None]:
    """Hold an advisory lock on the run directory: two writers would each rewrite cells.jsonl from their own
    records (losing the other's cells) and delete each other's temporaries."""
    with open(out / LOCK, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"{out}: another anombench run is writing this run directory; wait for it or choose "
                            "another --out") from None
        yield


def _leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    """A nested mapping as {dotted.key: value}."""
    if isinstance(node, dict) and node:
        return {key: value for k, v in node.items() for key, value in _leaves(v, f"{prefix}{k}.").items()}
    return {prefix[:-1]: node}


def changed_configs(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """Where the configuration (plugin, params) of methods and datasets present in both suites differs, as
    "key: old -> new".

    Which cells a suite has (categories, seeds, adding or dropping a method) may change on --resume: the finished
    cells stay valid. A method's or dataset's parameters may not, or the table would mix two setups under one
    name; a dataset's root may (data moved, same data)."""
    changes = []
    for section in ENTRY_SECTIONS:
        old, new = before.get(section) or {}, now.get(section) or {}
        for name in old.keys() & new.keys():
            a, b = _leaves(old[name] or {}), _leaves(new[name] or {})
            for key in sorted(a.keys() | b.keys()):
                if key not in ("categories", "params.root") and a.get(key) != b.get(key):  # lists are leaves
                    changes.append(f"{section}.{name}.{key}: {a.get(key)} -> {b.get(key)}")
    return changes


def check_resumable(out: Path, suite: Suite) -> None:
    stored = out / "suite.yaml"
    if not stored.is_file():
        return
    changes = changed_configs(yaml.safe_load(stored.read_text()) or {},
                                    yaml.safe_load(yaml.safe_dump(suite.source)))
    if changes:
        raise UserError(f"{out}: cannot --resume with another configuration than the run's "
                        f"({'; '.join(changes)}); resume with the same configuration or choose another --out")
