"""Built-in suites: the YAML files of the repository's ``suites/`` folder, installed as the package data of
``anombench_suites`` (pyproject maps that package onto ``suites/``), so ``anombench run table3`` works from any
directory, in a clone (editable install) and in a wheel install alike."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from anombench.errors import UserError

SUITE_SUFFIX = ".yaml"


def _builtin_folder() -> Path:
    """The installed ``suites/`` folder (a real directory: anombench_suites is a regular package)."""
    return Path(str(resources.files("anombench_suites")))


def builtin_suites() -> list[str]:
    """Names of the built-in suites, sorted: 'quickstart', 'table1', ..."""
    return sorted(p.name[: -len(SUITE_SUFFIX)] for p in _builtin_folder().glob(f"*{SUITE_SUFFIX}"))


def find_suite(name_or_path: str) -> Path:
    """The suite file to load: a path that exists wins (a local 'table3' file shadows the built-in one); else a
    built-in name, with or without '.yaml'; else a one-line UserError listing the built-in names."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    name = name_or_path.removesuffix(SUITE_SUFFIX)
    if name in builtin_suites():
        return _builtin_folder() / f"{name}{SUITE_SUFFIX}"
    raise UserError(f"{name_or_path}: no such suite file and no built-in suite of that name; built-in suites: "
                    f"{', '.join(builtin_suites())}")
