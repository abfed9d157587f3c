"""Checking suite parameters against a plugin factory's signature.

Why: a typo in a suite file (``n_feature: 100``) or a wrong type (``eps: "0.01"``) must fail before hours of
compute, with one line that names the key and lists what is allowed. The factory's own signature (names,
annotations, defaults) is the schema, so plugin authors write no separate schema.
"""

from __future__ import annotations

import inspect
import types
import typing
from typing import Any, Callable, Literal, Union

from anombench.errors import UserError

RUNNER_SUPPLIED = ("device", "seed")


def _parameters(factory: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    target = factory.__init__ if inspect.isclass(factory) else factory
    params = dict(inspect.signature(target).parameters)
    params.pop("self", None)
    return {name: p for name, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def _hints(factory: Callable[..., Any]) -> dict[str, Any]:
    target = factory.__init__ if inspect.isclass(factory) else factory
    try:
        return typing.get_type_hints(target)
    except Exception:  # unresolvable annotations: fall back to no type checking rather than refuse the plugin
        return {}


def accepts_kwargs(factory: Callable[..., Any]) -> bool:
    target = factory.__init__ if inspect.isclass(factory) else factory
    return any(p.kind == p.VAR_KEYWORD for p in inspect.signature(target).parameters.values())


def allowed_parameters(factory: Callable[..., Any], hidden: tuple[str, ...] = ()) -> list[str]:
    """The parameter names a suite may set (those the runner supplies are hidden)."""
    return [name for name in _parameters(factory) if name not in hidden]


def matches(value: Any, annotation: Any) -> bool:
    """Whether a YAML-loaded value fits a type annotation (the subset of typing that configuration uses)."""
    if annotation is Any or annotation is inspect.Parameter.empty:
        return True
    if annotation is None or annotation is type(None):
        return value is None
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        return any(matches(value, arg) for arg in args)
    if origin is Literal:
        return value in args
    if origin in (list, tuple, typing.Sequence):
        return isinstance(value, (list, tuple)) and all(matches(v, args[0]) for v in value) if args else isinstance(value, (list, tuple))
    if origin is dict:
        return isinstance(value, dict)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def describe(annotation: Any) -> str:
    """A short readable name for an annotation, for error messages."""
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def validate(where: str, factory: Callable[..., Any], params: dict[str, Any], hidden: tuple[str, ...] = ()) -> None:
    """Raise a one-line UserError for an unknown parameter or a value of the wrong type.

    ``where`` is the suite location, e.g. "suites/table3.yaml: methods.padim-r18.params".
    """
    known = _parameters(factory)
    hints = _hints(factory)
    open_ended = accepts_kwargs(factory)
    for key, value in params.items():
        if key in hidden:
            raise UserError(f"{where}.{key}: set by the runner (from --device / seeds), not by the suite")
        if key not in known:
            if open_ended:
                continue
            allowed = ", ".join(allowed_parameters(factory, hidden)) or "none"
            raise UserError(f"{where}.{key}: unknown parameter; allowed: {allowed}")
        annotation = hints.get(key, known[key].annotation)
        if not matches(value, annotation):
            raise UserError(f"{where}.{key}: expected {describe(annotation)}, got {value!r}")
    missing = [name for name, p in known.items()
               if p.default is inspect.Parameter.empty and name not in params and name not in hidden]
    if missing:
        raise UserError(f"{where}: missing required parameter(s): {', '.join(missing)}")
