"""Parameter checking (anombench.params): ranges and choices declared with Annotated next to the annotation,
classes without __init__, and config_of reading a plugin's configuration back from its signature."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import pytest

from anombench.errors import UserError
from anombench.params import (RUNNER_SUPPLIED, Check, Length, Range, allowed_parameters, config_of, describe,
                              problem, validate)


class Plugin:
    def __init__(self, n: Annotated[int, Range(1, None)] | None = None,
                 eps: Annotated[float, Range(0, None, lo_open=True)] = 0.01,
                 share: Annotated[float, Range(0, 1)] = 0.5,
                 kind: Literal["pca", "random"] = "random",
                 layers: Annotated[list[str], Length(1, 3)] = ("layer1",),
                 ks: list[Annotated[int, Range(1, 5)]] = (1,),
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
    ({"ks": [1, 9]}, "ks: item 1: must be in [1, 5], got 9"),
    ({"odd": 4}, "odd: must be odd, got 4"),
])
def test_out_of_range_values_name_the_key(params, expected):
    assert error(params) == f"s.yaml: methods.p.params.{expected}"


def test_values_in_range_pass():
    validate("w", Plugin, {"n": None, "eps": 1e-9, "share": 1, "kind": "pca", "layers": ["a", "b"], "ks": [5],
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
    assert config == {"n": 4, "eps": 0.01, "share": 0.5, "kind": "random", "layers": ["a"], "ks": [1], "odd": 1}
    assert config_of(Plugin(**config)) == config  # what a model file stores rebuilds the same object


def test_config_of_names_a_parameter_the_object_does_not_keep():
    class Forgetful:
        def __init__(self, width: int = 3) -> None:
            self.w = width

    with pytest.raises(TypeError, match="Forgetful keeps no attribute 'width' for its parameter 'width'"):
        config_of(Forgetful())
