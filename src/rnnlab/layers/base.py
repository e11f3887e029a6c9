"""The one contract every mixer layer follows.

A layer maps ``x: [B, T, dim] -> y: [B, T, dim]`` causally and can also run one token at a time:

    y = layer(x)                                # full sequence (training), zero initial state
    state = layer.init_state(batch, device, dtype)
    y_t, state = layer.step(x_t, state)         # x_t: [B, dim]; equals y[:, t] of the full forward

``state`` is any tuple of tensors. For recurrent layers it has a fixed size (constant memory per
generated token) and ``step`` runs the layer's recurrence op (``rnnlab.ops``) on one token; for
attention it is a growing key/value cache, and the layer class says so with ``state_grows = True``
(a fixed-size state can skip a row's token by keeping that row's old state: the Hugging Face
wrapper's left padding). The class's ``output_projection`` names the ``nn.Linear`` attribute that
writes into the residual stream (None on an instance that has none: minGRU at expansion 1), which
``ModelConfig.rescale_prenorm_residual`` scales. tests/test_layer_contract.py checks this contract
for every registered model.

Each layer is built from a config dataclass with a ``dim`` field and a ``validate()`` method that
raises ``ValueError("<name> must ..., got ...")`` for impossible values. Every other field is a
``--layer`` option, declared with ``rnnlab.options.option(default, help=..., choices=...,
bounds=...)`` like the run config's fields: ``rnnlab layers`` lists the options from these
declarations (rnnlab.models.registry), :func:`check_options` checks each value against its
declaration, and ``validate()`` adds only the rules between fields, each message starting with
the option it names (``ModelConfig`` prefixes it with "<model> layer option").
tests/test_layer_contract.py fails for a field declared without help.

Shared here: the config check, the inner width of the layers with an ``expansion`` option
(:class:`InnerWidth`), the ``backend`` option of every recurrent layer (:func:`op_backend_option`:
which implementation of its op runs; :func:`official_backend_option`: the official library's
module or the reference), the causal depthwise convolution of E1, Mamba2 and Gated DeltaNet
(:func:`causal_conv`, and one token of it: :func:`causal_conv_step`), and for a layer with an
official implementation (Mamba2, Gated DeltaNet) the choice between it and the reference
(:func:`resolve_official`, :class:`OfficialOrReference`) and the adoption of the library's module
(:func:`adopt`).
"""

from __future__ import annotations

import types
from typing import Any, Callable

import torch
from torch import nn

from rnnlab.options import check, check_value, option, positive

State = tuple[Any, ...]
OFFICIAL_BACKENDS = ("auto", "official", "reference")  # of a layer with an official implementation
# the backends that run only on CUDA tensors: an op's GPU kernel (rnnlab.ops.registry's "triton")
# and a layer's official implementation (resolve_official)
CUDA_ONLY_BACKENDS = ("triton", "official")
# how to choose the PyTorch reference, in an official kernel's limit message (``resolve_official``)
REFERENCE_WAY_OUT = "backend=reference (--layer backend=reference; in a Hugging Face export, the config's layer dict)"
# The largest size (a width, a head count, a rank, a state, a kernel, a chunk) and factor (an
# expansion) a --layer option takes: far past any model a GPU holds, and small enough that no
# weight's element count overflows at any dim up to MAX_DIM (expansion=1e300 was a torch traceback)
MAX_SIZE = 65536
MAX_FACTOR = 64


def op_backend_option(backends: tuple[str, ...], **alternatives: str) -> Any:
    """The ``backend`` option of a layer whose recurrence is an op (E1, E16, E88, minGRU, minLSTM):
    the op's ``backends`` (``Op.backends``), passed as they are to the op, whose
    :meth:`~rnnlab.ops.registry.Op.implementation` picks what runs; ``alternatives`` says what each
    named alternative of the op is (name = description), for ``--help`` and ``rnnlab layers``."""
    said = {"auto": "auto (the GPU kernel on CUDA, else the PyTorch reference)", "naive": "naive (the reference)",
            "triton": "triton (the GPU kernel, CUDA only)", **{k: f"{k} ({v})" for k, v in alternatives.items()}}
    if missing := [b for b in backends if b not in said]:
        raise ValueError(f"op_backend_option: describe the op's alternative backends {missing}")
    words = [said[b] for b in backends]
    return option("auto", choices=backends, help="the scan: " + ", ".join(words[:-1]) + " or " + words[-1])


def official_backend_option(library: str) -> Any:
    """The ``backend`` option of a layer with an official implementation (Mamba2, Gated DeltaNet):
    :data:`OFFICIAL_BACKENDS`, which :func:`resolve_official` turns into the whole layer's
    implementation at construction; ``library`` names what "official" runs."""
    return option("auto", choices=OFFICIAL_BACKENDS,
                  help=f"official ({library}, CUDA only), reference (PyTorch, any device, same weights) or auto "
                       "(official where it runs)")


def causal_conv(conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """``conv`` (depthwise, padded by its kernel size - 1) over the time axis of ``x: [B, T, C]``,
    causally: output ``t`` sees inputs up to ``t``. A zero-length ``x`` gives a zero-length output
    (torch's convolution refuses an empty input)."""
    T = x.shape[1]
    if T == 0:
        return x
    return conv(x.transpose(1, 2))[..., :T].transpose(1, 2)


def causal_conv_step(conv: nn.Conv1d, window: torch.Tensor) -> torch.Tensor:
    """:func:`causal_conv`'s output at the newest input of ``window: [B, C, kernel]`` (the last
    ``kernel`` inputs, oldest first): what ``step`` computes from its carried window."""
    y = (window * conv.weight[:, 0]).sum(-1)
    return y if conv.bias is None else y + conv.bias


def check_options(cfg: Any) -> None:
    """Check a layer config's ``dim`` (a positive integer) and each of its declared ``--layer``
    options against the type, ``choices`` and ``bounds`` of its ``option`` declaration
    (:func:`rnnlab.options.check`), raising ``ValueError("<name> must be <what>, got <value>")``
    as the run config does. Each config's ``validate()`` calls this, then checks only the rules
    between fields."""
    check_value("dim", int, cfg.dim, bounds=positive())
    check(cfg)


class InnerWidth:
    """Config mixin of the layers with an ``expansion`` option (E1, E16, minGRU/minLSTM): the inner
    width ``d_inner = int(dim * expansion)``, checked to be at least 1 by :meth:`check_inner_width`."""

    @property
    def d_inner(self) -> int:
        return int(self.dim * self.expansion)

    def check_inner_width(self) -> None:
        if self.d_inner < 1:
            raise ValueError("expansion must give at least one inner unit (int(dim*expansion) >= 1), "
                             f"got {self.expansion!r} (dim {self.dim})")


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


def resolve_official(backend: str, layer: str, official_error: Callable[[], str | None],
                     official_limit: Callable[[], str | None] = lambda: None) -> str:
    """``"official"`` or ``"reference"`` for ``backend`` of a layer with an official
    implementation; ``official_error()`` imports its library (on first call) and says why it
    cannot, or None. ``"auto"`` is official on CUDA when the library imports (never imported
    without CUDA); an explicit ``"official"`` that cannot load raises ``ValueError`` (one line
    under the command line, as a missing optional package is elsewhere). Where official is chosen,
    ``official_limit()`` says which of the layer's options its kernels do not take (the limit and
    the way out), or None: then this raises ``ValueError`` in one line, at construction, rather
    than the kernel at the first forward on the GPU (the reference takes every option)."""
    if backend not in OFFICIAL_BACKENDS:
        raise ValueError(f"backend must be one of {OFFICIAL_BACKENDS}, got {backend!r}")
    if backend == "reference" or (backend == "auto" and not torch.cuda.is_available()):
        return "reference"
    error = official_error()
    if error is not None and backend == "official":
        raise ValueError(f"{layer} backend='official' needs {error}")
    if error is not None:
        return "reference"
    limit = official_limit()
    if limit is not None:
        chosen = "backend=official" if backend == "official" else "backend=auto (the official implementation on CUDA)"
        raise ValueError(f"{layer} {chosen}: {limit}")
    return "official"


class OfficialOrReference(nn.Module):
    """A mixer whose ``backend`` (``"official"`` or ``"reference"``, see :func:`resolve_official`)
    chooses the whole implementation (Mamba2, Gated DeltaNet). A subclass defines
    ``_adopt_official(cfg)`` (build the library's module and :func:`adopt` it) and
    ``_build_reference(cfg)`` (the PyTorch reference, with the same state_dict)."""

    def __init__(self, cfg: Any, backend: str):
        super().__init__()
        self.backend = backend
        if backend == "official":
            self._adopt_official(cfg)
        else:
            self._build_reference(cfg)
        self.cfg = cfg

    def _check_official_input(self, x: torch.Tensor) -> None:
        """Refuse ``x`` off CUDA in one line: the official implementation's kernels run only there."""
        if not x.is_cuda:
            raise RuntimeError(f"{type(self).__name__} backend='official' runs only on CUDA tensors; "
                               "use backend='reference' on CPU")
