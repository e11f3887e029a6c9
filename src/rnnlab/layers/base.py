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

from typing import Any

State = tuple[Any, ...]


def check_positive(name: str, value: float) -> None:
    """Raise a ValueError naming the field when a size is not positive."""
    if value is None or value <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
