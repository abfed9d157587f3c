"""Checking suite parameters against a plugin factory's signature, value ranges included.

Why: a typo in a suite file (``n_feature: 100``) or a wrong value (``eps: 0``, ``eps: "0.01"``) must fail before
hours of compute, with one line that names the suite key and says what is allowed. The factory's own signature
(names, annotations, defaults) is the schema, so plugin authors write no separate schema and no hand-written
``check_*_params`` function.

Value constraints sit next to the annotation, with ``typing.Annotated``; the host checks them when the suite loads::

    from typing import Annotated, Literal
    from anombench.params import Check, Length, Range

    class PaDiM:
        def __init__(
            self,
            n_features: Annotated[int, Range(1, None)] | None = None,      # >= 1, or null
            eps: Annotated[float, Range(0, None, lo_open=True)] = 0.01,     # > 0
            reduction: Literal["none", "random", "pca"] = "random",         # choices: a Literal
            layers: Annotated[list[str], Length(1, None)] = ("layer1",),    # at least one item
            k: Annotated[int, Check(lambda v: v % 2 == 1, "odd")] = 3,      # any one-argument predicate
            device: str = "cpu", seed: int = 0,
        ) -> None: ...

- ``Range(lo, hi, lo_open=False, hi_open=False)``: a number in [lo, hi]; ``None`` = unbounded on that side;
  ``lo_open``/``hi_open`` exclude the bound. Error: ``methods.padim.params.eps: must be > 0, got 0``.
- ``Length(lo, hi)``: a list/tuple/str with lo..hi items (``None`` = unbounded).
- ``Check(predicate, description)``: ``predicate(value)`` must be true; the error says ``must be <description>``.
- ``Literal[...]``: one of the listed values. ``X | None``: null is allowed (constraints apply to X only).
- ``list[Annotated[int, Range(1, None)]]``: constraints on each item (the error names the item's index).

Constraints that tie two parameters together (``crop_size <= image_size``) stay in the plugin: a method checks them
in ``preflight()`` (``anombench.api.Preflight``), which the host calls before any cell runs.

The same markers hold outside a suite. A method's constructor stores its arguments and checks nothing (the
scikit-learn rule); its ``preflight()`` and the start of its fit call ``check_config(self)``, so ``PaDiM(eps=0)``
built in Python fails with ``PaDiM parameter eps: must be > 0, got 0`` before any work. A constructor that works
at once (a dataset scanning its files) calls ``check_arguments(Factory, {"image_size": image_size})`` first.
``PositiveInt`` (>= 1) and ``PositiveFloat`` (> 0) name the two commonest constraints.

A plugin class that defines no ``__init__`` takes no parameters: any key under its ``params`` is an error. A
factory with ``**kwargs`` accepts unknown keys (it says so by its signature).

``config_of(obj)`` reads a plugin's configuration back from its signature: the attribute named like each parameter
(scikit-learn's ``get_params`` rule), for writing model files without a hand-kept dict.
"""

from __future__ import annotations

import collections.abc
import inspect
import numbers
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Literal, Union

from anombench.errors import UserError

RUNNER_SUPPLIED = ("device", "seed")
SEQUENCES = (list, tuple, collections.abc.Sequence, collections.abc.Iterable)  # a YAML list fits any of them


class Constraint:
    """A value constraint placed in ``Annotated[type, constraint]``; ``problem`` says what is wrong, or None."""

    def problem(self, value: Any) -> str | None:
        raise NotImplementedError


@dataclass(frozen=True)
class Range(Constraint):
    """A number in [lo, hi] (``None``: unbounded; ``lo_open``/``hi_open``: the bound itself is excluded)."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def problem(self, value: Any) -> str | None:
        if not isinstance(value, numbers.Real) or isinstance(value, bool):
            return None  # the type check reports it
        too_low = self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo)
        too_high = self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi)
        if too_low or too_high or value != value:  # NaN, whatever its type (no float conversion)
            return f"must be {self}, got {value!r}"
        return None

    def __str__(self) -> str:
        lo_op, hi_op = (">" if self.lo_open else ">="), ("<" if self.hi_open else "<=")
        if self.lo is not None and self.hi is not None:
            return f"in {'(' if self.lo_open else '['}{self.lo}, {self.hi}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return f"{lo_op} {self.lo}"
        return f"{hi_op} {self.hi}" if self.hi is not None else "a number"


@dataclass(frozen=True)
class Length(Constraint):
    """A list, tuple or string with ``lo``..``hi`` items (``None``: unbounded)."""

    lo: int | None = None
    hi: int | None = None

    def problem(self, value: Any) -> str | None:
        if not isinstance(value, (list, tuple, str)):
            return None
        if (self.lo is not None and len(value) < self.lo) or (self.hi is not None and len(value) > self.hi):
            return f"must have {self} items, got {len(value)}"
        return None

    def __str__(self) -> str:
        if self.lo is not None and self.lo == self.hi:
            return f"exactly {self.lo}"
        if self.lo is not None and self.hi is not None:
            return f"{self.lo} to {self.hi}"
        return f"at least {self.lo}" if self.lo is not None else f"at most {self.hi}"


@dataclass(frozen=True)
class Check(Constraint):
    """Any one-argument predicate, with the words that finish "must be ..." in the error."""

    predicate: Callable[[Any], bool]
    description: str

    def problem(self, value: Any) -> str | None:
        return None if self.predicate(value) else f"must be {self.description}, got {value!r}"


PositiveInt = Annotated[int, Range(1, None)]  # a count: 1, 2, ...
PositiveFloat = Annotated[float, Range(0, None, lo_open=True)]  # a number > 0


def signature_parameters(factory: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    """Every parameter of the factory, ``**kwargs`` included; a class without ``__init__`` has none."""
    try:
        params = dict(inspect.signature(factory).parameters)
    except (TypeError, ValueError):  # a builtin without a signature: nothing to check against
        return {}
    params.pop("self", None)
    return params


def _parameters(factory: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    return {name: p for name, p in signature_parameters(factory).items()
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def _hints(factory: Callable[..., Any]) -> dict[str, Any]:
    """The parameters' annotations, resolved, with ``Annotated`` constraints kept."""
    targets = [factory.__init__, factory] if inspect.isclass(factory) else [factory]
    for target in targets:
        if target is object.__init__:
            continue
        try:
            return typing.get_type_hints(target, include_extras=True)
        except Exception:  # unresolvable annotations: try the next place, else check no types rather than refuse
            continue
    return {}


def _schema(factory: Callable[..., Any]) -> dict[str, Any]:
    """Each parameter's annotation (``Annotated`` constraints kept; the bare one where hints cannot be resolved)."""
    hints = _hints(factory)
    return {name: hints.get(name, p.annotation) for name, p in _parameters(factory).items()}


def accepts_kwargs(factory: Callable[..., Any]) -> bool:
    """Whether the factory takes ``**kwargs`` (then unknown suite keys are its business)."""
    return any(p.kind == p.VAR_KEYWORD for p in signature_parameters(factory).values())


def allowed_parameters(factory: Callable[..., Any], hidden: tuple[str, ...] = ()) -> list[str]:
    """The parameter names a suite may set (those the runner supplies are hidden)."""
    return [name for name in _parameters(factory) if name not in hidden]


def _plain(annotation: Any) -> Any:
    """``Annotated[X, ...]`` -> X."""
    return typing.get_args(annotation)[0] if typing.get_origin(annotation) is Annotated else annotation


def _type_fits(value: Any, annotation: Any) -> bool:
    """Whether a YAML-loaded value has the annotation's type (the subset of typing that configuration uses),
    ignoring constraints."""
    annotation = _plain(annotation)
    if annotation is Any or annotation is inspect.Parameter.empty:
        return True
    if annotation is None or annotation is type(None):
        return value is None
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        return any(_type_fits(value, arg) for arg in args)
    if origin is Literal:
        return value in args
    if origin in SEQUENCES:
        return isinstance(value, (list, tuple)) and (not args or all(_type_fits(v, args[0]) for v in value))
    if origin is dict:
        return isinstance(value, dict)
    if annotation is float:  # numpy scalars too (a Python caller's values need not come from YAML)
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def problem(value: Any, annotation: Any) -> str | None:
    """What is wrong with ``value`` for ``annotation`` (type, then constraints), in words; None if it fits."""
    if not _type_fits(value, annotation):
        return f"expected {describe(annotation)}, got {value!r}"
    if typing.get_origin(annotation) is Annotated:
        for marker in annotation.__metadata__:
            found = marker.problem(value) if isinstance(marker, Constraint) else None
            if found:
                return found
        annotation = _plain(annotation)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        arms = [arm for arm in args if _type_fits(value, arm)]
        reasons = [problem(value, arm) for arm in arms]
        return None if any(r is None for r in reasons) else reasons[0]
    if origin in SEQUENCES and args and isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found = problem(item, args[0])
            if found:
                return f"item {index}: {found}"
    return None


def matches(value: Any, annotation: Any) -> bool:
    """Whether a YAML-loaded value fits a type annotation, constraints included."""
    return problem(value, annotation) is None


def describe(annotation: Any) -> str:
    """A short readable name for an annotation, for error messages (``Annotated`` shows its constraints)."""
    if typing.get_origin(annotation) is Annotated:
        constraints = [str(m) for m in annotation.__metadata__ if isinstance(m, Range)]
        return " ".join([describe(_plain(annotation)), *constraints])
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return " | ".join("None" if arm is type(None) else describe(arm) for arm in typing.get_args(annotation))
    if typing.get_origin(annotation) is Literal:
        return "one of " + ", ".join(repr(choice) for choice in typing.get_args(annotation))
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def validate(where: str, factory: Callable[..., Any], params: dict[str, Any], hidden: tuple[str, ...] = (),
             noun: str = "parameter") -> None:
    """Raise a one-line UserError for an unknown parameter, a value of the wrong type or out of its range, or a
    missing required parameter.

    ``where`` is the suite location, e.g. "suites/table3.yaml: methods.padim-r18.params"; ``noun`` names what a
    key is in the error ("parameter", or "key" for the suite's own blocks).
    """
    known = _parameters(factory)
    schema = _schema(factory)
    open_ended = accepts_kwargs(factory)
    for key, value in params.items():
        if key in hidden:
            raise UserError(f"{where}.{key}: set by the runner (from --device / seeds), not by the suite")
        if key not in known:
            if open_ended:
                continue
            allowed = ", ".join(allowed_parameters(factory, hidden)) or "none"
            raise UserError(f"{where}.{key}: unknown {noun}; allowed: {allowed}")
        found = problem(value, schema[key])
        if found:
            raise UserError(f"{where}.{key}: {found}")
    missing = [name for name, p in known.items()
               if p.default is inspect.Parameter.empty and name not in params and name not in hidden]
    if missing:
        raise UserError(f"{where}: missing required {noun}(s): {', '.join(missing)}")


def config_of(obj: object, factory: Callable[..., Any] | None = None,
              exclude: tuple[str, ...] = RUNNER_SUPPLIED) -> dict[str, Any]:
    """The configuration ``obj`` was built with, read back through its factory's signature: for each parameter
    (but ``exclude``), the attribute of the same name. ``factory`` defaults to ``type(obj)``.

    Why: a model file then stores exactly what rebuilding the object needs (``factory(**config_of(obj))``) with no
    hand-kept dict that drifts from the signature. Tuples are returned as lists (JSON). Raises TypeError naming
    the parameter when the object does not keep it under its own name.
    """
    factory = factory or type(obj)
    config = {}
    for name in allowed_parameters(factory, exclude):
        try:
            value = getattr(obj, name)  # the sklearn get_params rule: a parameter is kept under its own name
        except AttributeError:
            raise TypeError(f"{type(obj).__name__} keeps no attribute '{name}' for its parameter '{name}'; "
                            f"config_of needs every parameter stored under its own name") from None
        config[name] = list(value) if isinstance(value, tuple) else value
    return config


def check_arguments(factory: Callable[..., Any], arguments: dict[str, Any], where: str | None = None) -> None:
    """Check values passed to ``factory`` against its signature (types, ``Annotated`` constraints): a one-line
    UserError such as ``synthetic parameter image_size: must be >= 32, got 16`` for the first that does not fit.

    ``arguments`` maps parameter names of ``factory`` to values; ``where`` names the plugin in the error (default
    the factory's name). For a constructor that works at once, before it keeps its arguments (a dataset).
    """
    schema = _schema(factory)
    for key, value in arguments.items():
        found = problem(value, schema[key])
        if found:
            raise UserError(f"{where or factory.__name__} parameter {key}: {found}")


def check_config(obj: object, where: str | None = None) -> None:
    """Check an object's stored configuration (``config_of(obj)``) against its own class's signature, as a suite
    is checked when it loads: a one-line UserError such as ``PaDiM parameter eps: must be > 0, got 0``.

    Why: a constructor stores its arguments and checks nothing (scikit-learn's rule: parameters are validated at
    fit, not in ``__init__``), so a method built in Python rather than from a suite calls this in ``preflight()``
    and when its fit begins, and the signature's markers hold there too. ``where`` names the plugin in the error
    (default the class name).
    """
    check_arguments(type(obj), config_of(obj), where or type(obj).__name__)
