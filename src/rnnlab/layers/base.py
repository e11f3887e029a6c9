"""The one contract every mixer layer follows.

A layer maps ``x: [B, T, dim] -> y: [B, T, dim]`` causally and can also run one token at a time:

    y = layer(x)                                # full sequence (training), zero initial state
    state = layer.init_state(batch, device, dtype)
    y_t, state = layer.step(x_t, state)         # x_t: [B, dim]; equals y[:, t] of the full forward

``state`` is any tuple of tensors. For recurrent layers it has a fixed size (constant memory per
generated token) and ``step`` runs the layer's recurrence op (``rnnlab.ops``) on one token; for
attention it is a growing key/value cache. tests/test_layer_contract.py checks this contract for
every registered model.

Each layer is built from a config dataclass with a ``dim`` field and a ``validate()`` method that
raises ``ValueError`` with a clear message for impossible values.
"""

from __future__ import annotations

import types
from typing import Any

from torch import nn

State = tuple[Any, ...]


def check_positive(name: str, value: float) -> None:
    """Raise a ValueError naming the field when a size is not positive."""
    if value is None or value <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")


def adopt(layer: nn.Module, inner: nn.Module, methods: tuple[str, ...] = ()) -> None:
    """Make ``layer`` stand in for ``inner``, a freshly built official module (mamba_ssm's Mamba2,
    fla's GatedDeltaNet): its parameters, submodules and public attributes move onto ``layer``
    under the same names (no prefix, so the state_dict is the reference layer's) and the helper
    ``methods`` its forward calls are bound to ``layer``; ``type(inner).forward(layer, ...)`` then
    runs the official code unchanged."""
    for name, p in inner.named_parameters(recurse=False):
        layer.register_parameter(name, p)
    for name, m in inner.named_children():
        layer.add_module(name, m)
    for k, v in vars(inner).items():
        if not k.startswith("_") and k != "training":
            setattr(layer, k, v)
    for name in methods:
        setattr(layer, name, types.MethodType(getattr(type(inner), name), layer))
