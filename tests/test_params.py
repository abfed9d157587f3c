"""Parameter checking (anombench.params): ranges and choices declared with Annotated next to the annotation,
classes without __init__, config_of reading a plugin's configuration back from its signature, and check_config /
check_arguments holding the same markers for objects built in Python."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
import pytest

from anombench.errors import UserError
from anombench.params import (RUNNER_SUPPLIED, Check, Length, PositiveFloat, PositiveInt, Range, allowed_parameters,
                              check_arguments, check_config, config_of, describe, problem, validate)


class Plugin:
    def __init__(self, n: Annotated[int, Range(1, None)] | None = None,
                 eps: Annotated[float, Range(0, None, lo_open=True)] = 0.01,
                 share: Annotated[float, Range(0, 1)] = 0.5,
                 kind: Literal["pca", "random"] = "random",
                 layers: Annotated[list[str], Length(1, 3)] = ("layer1",),
                 ks: Annotated[list[Annotated[int, Range(1, 5)]], Length(3, 3)] = (1, 2, 3),
                 odd: Annotated[int, Check(lambda v: v % 2 == 1, "odd")] = 1,
                 device: str = "cpu", seed: int = 0) -> None:
        self.n, self.eps, self.share, self.kind, self.layers, self.ks, self.odd = n, eps, share, kind, layers, ks, odd


def error(params: dict[str, Any], factory: Any = Plugin) -> str:
    with pytest.raises(UserError) as info:
        validate("s.yaml: methods.p.params", factory, params, hidden=RUNNER_SUPPLIED)
    return str(info.value)


@pytest.mark.parametrize("params,expected", [
    ({"n": 0}, "n: must be >= 1, got 0"),
    ({"n": "x"}, "n: expected int >= 1 | None, got 'x'"),
    ({"eps": 0}, "eps: must be > 0, got 0"),
    ({"eps": float("nan")}, "eps: must be > 0, got nan"),
    ({"share": 1.5}, "share: must be in [0, 1], got 1.5"),
    ({"kind": "svd"}, "kind: expected one of 'pca', 'random', got 'svd'"),
    ({"layers": []}, "layers: must have 1 to 3 items, got 0"),
    ({"ks": [1, 2, 3, 4]}, "ks: must have exactly 3 items, got 4"),
    ({"ks": [1, 9, 2]}, "ks: item 1: must be in [1, 5], got 9"),
    ({"odd": 4}, "odd: must be odd, got 4"),
])
def test_out_of_range_values_name_the_key(params, expected):
    assert error(params) == f"s.yaml: methods.p.params.{expected}"


def test_values_in_range_pass():
    validate("w", Plugin, {"n": None, "eps": 1e-9, "share": 1, "kind": "pca", "layers": ["a", "b"], "ks": [5, 1, 2],
                           "odd": 3}, hidden=RUNNER_SUPPLIED)


def test_a_class_without_init_takes_no_parameters_and_kwargs_take_any():
    class Bare:
        pass

    def open_ended(**options: Any) -> None: ...

    assert error({"n": 1}, Bare) == "s.yaml: methods.p.params.n: unknown parameter; allowed: none"
    assert allowed_parameters(Bare) == []
    validate("w", open_ended, {"anything": 1})


def test_describe_and_problem():
    assert describe(Annotated[float, Range(0, None, lo_open=True)] | None) == "float > 0 | None"
    assert problem(3, Annotated[int, Range(None, 2, hi_open=True)]) == "must be < 2, got 3"
    assert problem(True, int) == "expected int, got True"


def test_config_of_reads_the_configuration_back_from_the_signature():
    plugin = Plugin(n=4, layers=("a",))
    config = config_of(plugin)
    assert config == {"n": 4, "eps": 0.01, "share": 0.5, "kind": "random", "layers": ["a"], "ks": [1, 2, 3],
                      "odd": 1}
    assert config_of(Plugin(**config)) == config  # what a model file stores rebuilds the same object


def test_config_of_names_a_parameter_the_object_does_not_keep():
    class Forgetful:
        def __init__(self, width: int = 3) -> None:
            self.w = width

    with pytest.raises(TypeError, match="Forgetful keeps no attribute 'width' for its parameter 'width'"):
        config_of(Forgetful())


@pytest.mark.parametrize("params,expected", [
    ({"n": 0}, "n: must be >= 1, got 0"),
    ({"eps": 0}, "eps: must be > 0, got 0"),
    ({"kind": "svd"}, "kind: expected one of 'pca', 'random', got 'svd'"),
    ({"ks": (1, 9, 2)}, "ks: item 1: must be in [1, 5], got 9"),  # a tuple, as Python callers pass it
    ({"odd": 4}, "odd: must be odd, got 4"),
])
def test_check_config_holds_the_signature_for_an_object_built_in_python(params, expected):
    """The constructor stores its arguments unchecked; check_config (a method's preflight and fit) says the same
    as a suite would, in one line naming the plugin and the parameter."""
    plugin = Plugin(**params)
    with pytest.raises(UserError) as info:
        check_config(plugin)
    assert str(info.value) == f"Plugin parameter {expected}"
    with pytest.raises(UserError) as info:
        check_config(plugin, "p")
    assert str(info.value) == f"p parameter {expected}"


def test_check_config_passes_a_valid_configuration_numpy_numbers_included():
    check_config(Plugin())
    check_config(Plugin(n=np.int64(3), eps=np.float32(0.5), share=np.float64(1.0), ks=[np.int32(5), 1, 2]))
    with pytest.raises(UserError, match=r"^Plugin parameter n: must be >= 1, got np.int64\(0\)$"):
        check_config(Plugin(n=np.int64(0)))  # a numpy number is range-checked, not waved through


def test_check_arguments_checks_the_values_given_against_the_signature():
    def make(size: Annotated[int, Range(32, None)] = 64, rate: PositiveFloat = 1.0, count: PositiveInt = 1) -> None:
        ...

    check_arguments(make, {"size": 32, "rate": 0.5})
    with pytest.raises(UserError, match=r"^make parameter size: must be >= 32, got 16$"):
        check_arguments(make, {"size": 16})
    with pytest.raises(UserError, match=r"^maker parameter count: expected int >= 1, got 1.5$"):
        check_arguments(make, {"rate": 2.0, "count": 1.5}, "maker")
