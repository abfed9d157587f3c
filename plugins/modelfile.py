"""Fitted models as one safetensors file: tensors, plus the configuration as JSON metadata under a kind tag.

safetensors holds plain tensors only, so loading a model file never runs code from it (unlike a pickle), and the
kind tag ("anombench.padim", "anombench.spade", ...) turns "this file is some other model" into a one-line error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from anombench.errors import UserError
from anombench.params import config_of as signature_config

T = TypeVar("T")
RUNTIME_PARAMETERS = ("device",)  # where the model runs is the loader's choice, not part of the saved model


def config_of(method: Any) -> dict[str, Any]:
    """The constructor's arguments as the object stores them (``anombench.params.config_of``: attributes named like
    the parameters, the scikit-learn rule), ``seed`` included and ``device`` not: what a model file saves so that
    ``load`` rebuilds the same method wherever it is loaded."""
    return signature_config(method, exclude=RUNTIME_PARAMETERS)


def write_model_file(path: str | Path, kind: str, config: dict[str, Any], state: dict[str, torch.Tensor]) -> None:
    """Write ``state`` (contiguous CPU tensors are made here) with ``config`` as the JSON metadata of ``kind``."""
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in state.items()}
    save_file(tensors, str(path), metadata={kind: json.dumps(config)})


def read_model_file(path: str | Path, kind: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The configuration and tensors of a file written by ``write_model_file``; a UserError if it is not one."""
    if not Path(path).is_file():
        raise UserError(f"model file '{path}' does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for a file that is not one
        raise UserError(f"'{path}' is not a safetensors model file ({type(exc).__name__}: {exc})") from None
    if kind not in metadata:
        raise UserError(f"'{path}' is not a saved {kind.split('.')[-1]} model (no '{kind}' metadata)")
    try:
        config = json.loads(metadata[kind])
    except json.JSONDecodeError as exc:
        raise UserError(f"'{path}': the '{kind}' configuration is not valid JSON ({exc})") from None
    return config, load_file(str(path))


def build_from_config(path: str | Path, factory: Callable[..., T], config: dict[str, Any], **extra: Any) -> T:
    """``factory(**config, **extra)``, with a configuration this version does not accept (a file written by
    another version of the plugin) as a one-line error naming the file."""
    try:
        return factory(**config, **extra)
    except TypeError as exc:
        raise UserError(f"'{path}': its configuration does not fit this version of the model ({exc})") from None
