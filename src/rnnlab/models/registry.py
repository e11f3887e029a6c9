"""The model registry: one name per mixer kind, bound to its config dataclass and layer class.

Entries name classes as ``"module:Class"`` strings, resolved on first use, so importing the
registry stays cheap and an external mixer can be registered the same way (``register``).

A mixer's config dataclass has ``dim`` (the model width, set by ``--dim``) and declares every
other field, its ``--layer`` options, with ``rnnlab.options.option``::

    expansion: float = option(1.0, help="inner width di = int(dim * expansion)", bounds=positive())
    backend: str = option("auto", choices=BACKENDS, help="...")

``rnnlab layers`` lists them from these declarations (``ModelSpec.layer_options``), the config's
``validate()`` checks values against their types, choices and bounds
(``rnnlab.layers.base.check_options``), and tests/test_layer_contract.py fails for a field
declared without help, or a number declared without bounds.

A layer class may define ``training_blocker(device) -> str | None`` (a static method): why it
cannot train on that device (e.g. its library refuses the backward there), checked before a run
starts (``ModelSpec.training_blocker``).
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from functools import cached_property

from rnnlab.options import Spec, specs


@dataclass(frozen=True)
class ModelSpec:
    name: str
    layer_path: str  # "module:LayerClass"
    config_path: str  # "module:ConfigClass"
    description: str
    mlp_ratio: float = 0.0  # default MLP sub-block width per layer (0 = none)
    dim_multiple: int = 32  # the width solver steps dims by this

    def __post_init__(self):
        for field in ("layer_path", "config_path"):
            module, _, attr = getattr(self, field).partition(":")
            if not module or not attr:
                raise ValueError(f"model {self.name!r}: {field} must be 'module:Class', got {getattr(self, field)!r}")

    def _resolve(self, field: str):
        """The class ``field`` (``layer_path`` or ``config_path``) names; a path that does not load
        raises an ImportError naming this entry (the cause chained)."""
        path = getattr(self, field)
        module, _, attr = path.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise ImportError(f"model {self.name!r}: its registry entry's {field} {path!r} does not load "
                              f"({type(e).__name__}: {e})") from e

    @cached_property
    def layer_cls(self):
        return self._resolve("layer_path")

    @cached_property
    def config_cls(self):
        return self._resolve("config_path")

    def layer_options(self) -> list[Spec]:
        """The mixer's ``--layer`` options: its config's ``option`` fields (``dim`` is not one)."""
        return [s for s in specs(self.config_cls) if s.name != "dim"]

    def training_blocker(self, device) -> str | None:
        """Why this mixer cannot train on ``device`` (its layer class's answer), or None."""
        blocker = getattr(self.layer_cls, "training_blocker", None)
        return blocker(device) if blocker is not None else None

    def undeclared_options(self) -> list[str]:
        """Config fields (but ``dim``) not declared with ``option(..., help=...)``: undocumented."""
        declared = {s.name for s in self.layer_options() if s.meta.help}
        return [f.name for f in dataclasses.fields(self.config_cls) if f.name != "dim" and f.name not in declared]


MODELS: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    MODELS[spec.name] = spec
    return spec


def get_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(sorted(MODELS))}") from None


register(ModelSpec("e1", "rnnlab.layers.e1:E1", "rnnlab.layers.e1:E1Config",
                   "E1 gated Elman: h = tanh(W_x x + W_h h + b), y = h * silu(z)"))
register(ModelSpec("e16", "rnnlab.layers.e16:E16", "rnnlab.layers.e16:E16Config",
                   "E16 diagonal state-expanded Elman: h = tanh(A*h + silu(x) B), y = (h C) * silu(z)"))
register(ModelSpec("mingru", "rnnlab.layers.mingru:MinGRU", "rnnlab.layers.mingru:MinGRUConfig",
                   "minGRU (Feng et al. 2024): h = (1-z) h + z g(h~)"))
register(ModelSpec("minlstm", "rnnlab.layers.minlstm:MinLSTM", "rnnlab.layers.minlstm:MinLSTMConfig",
                   "minLSTM (Feng et al. 2024): h = f' h + i' g(h~)"))
register(ModelSpec("mamba2", "rnnlab.layers.mamba2:Mamba2", "rnnlab.layers.mamba2:Mamba2Config",
                   "Mamba2 (official mamba_ssm kernels on CUDA, SSD reference elsewhere)"))
register(ModelSpec("transformer", "rnnlab.layers.attention:CausalSelfAttention",
                   "rnnlab.layers.attention:AttentionConfig",
                   "Transformer: causal SDPA attention with RoPE, plus an MLP sub-block",
                   mlp_ratio=4.0, dim_multiple=64))
register(ModelSpec("e88", "rnnlab.layers.e88:E88", "rnnlab.layers.e88:E88Config",
                   "E88 nonlinear matrix state: S = tanh(d S + k (v - S^T k)^T), y = (S^T q) * silu(g)"))
register(ModelSpec("gdn", "rnnlab.layers.gdn:GatedDeltaNet", "rnnlab.layers.gdn:GatedDeltaNetConfig",
                   "Gated DeltaNet (fla's official layer and kernels on CUDA, a PyTorch reference elsewhere)"))
