"""``rnnlab doctor``: versions, device, and which fast paths can load — the first thing to run when
a kernel install misbehaves."""

from __future__ import annotations

import importlib
import platform
import warnings

from rnnlab.signals import is_ctrl_c
from rnnlab.train.cli import aligned


def _version(dist: str) -> str:
    """The installed version of the distribution ``dist`` (``mamba-ssm``), "" where none is recorded."""
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return ""


def _try(module: str, dist: str | None = None) -> str:
    """"ok VERSION" or why ``module`` does not import (its import-time warnings, e.g. fla's on a
    machine without a GPU, are what this line reports, so they are not printed too); the version is
    the module's ``__version__`` or, where it has none, its distribution's (``dist``, default the
    module's name)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = importlib.import_module(module)
    except Exception as e:  # report any import failure, whatever its kind (not a Ctrl-C pybind11 made one)
        if is_ctrl_c(e):
            raise
        return f"unavailable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    return f"ok {getattr(m, '__version__', None) or _version(dist or module)}".rstrip()


def _mamba2_backend(backend: str, fused: bool) -> str:
    if backend != "official":
        return backend
    return "official (fused path)" if fused else "official (non-fused: causal_conv1d missing)"


def report() -> dict[str, str]:
    import torch

    from rnnlab.hf import transformers_problem
    from rnnlab.layers import gdn
    from rnnlab.layers.mamba2 import causal_conv1d_available, resolve_backend
    from rnnlab.ops import OPS
    from rnnlab.ops.ssd import import_mamba_ssm
    from rnnlab.train import peers, sf_adamw

    out = {
        "rnnlab": _version("rnnlab") or "not installed (run from its source tree)",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": _try("numpy"),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "not available",
        "triton": _try("triton"),
        "schedulefree": _try("schedulefree"),
        "schedule-free step": sf_adamw.status(),
        "safetensors": _try("safetensors"),
        "causal_conv1d": _try("causal_conv1d"),
        "mamba_ssm": f"ok {_version('mamba-ssm')}".rstrip() if import_mamba_ssm() is not None
        else "unavailable (Mamba2 uses the SSD reference)",
        "mamba2 backend (auto)": _mamba2_backend(resolve_backend("auto"), causal_conv1d_available()),
        "fla layers": _try("fla.layers.gated_deltanet", "flash-linear-attention"),
        # a version rnnlab.hf refuses imports all the same: export and the Auto classes would not work
        "transformers (rnnlab export)": (f"unavailable ({problem})" if (problem := transformers_problem())
                                         else _try("transformers")),
        "gdn backend (auto)": gdn.resolve_backend("auto"),
        "gdn training on cuda": (gdn.GatedDeltaNet.training_blocker(torch.device("cuda")) or "ok")
        if torch.cuda.is_available() else "needs CUDA",
    }
    for name, op in OPS.items():
        # an op without a kernel says so on any machine, not "needs CUDA" as if CUDA would run one
        out[f"kernel {name}"] = (_kernel_status(op.kernel) if torch.cuda.is_available() or op.kernel is None
                                 else "needs CUDA")
    out["lost-peer watch (--gpus N)"] = (
        "on" if peers.process_identity() is not None else
        "off: no /proc of this pid namespace (a rank left waiting for a dead peer ends by torchrun's kill, "
        "without its line)")
    return out


def _kernel_status(kernel) -> str:
    """Whether a GPU kernel module (a registered op's ``kernel``, None if it has none) imports."""
    if kernel is None:
        return "none yet (the reference runs)"
    return f"ok ({kernel.module})" if kernel.available() else f"unavailable ({kernel.error})"


def register(sub) -> None:
    p = sub.add_parser("doctor", help="print versions and which fast paths load",
                       description="Print the versions of rnnlab's dependencies, whether CUDA is "
                                   "available, each model's backend, and for every kernel whether its "
                                   "fast path runs here or why not.")
    p.set_defaults(func=lambda args: print(aligned(report().items())))
