"""How rnnlab compiles a model: ``torch.compile`` with Inductor, plus one heuristic of ours, row
reductions kept in one pass ("persistent") up to ``PERSISTENT_ROWS`` elements instead of 1024.

Why: a residual add + LayerNorm over a row of d channels is a reduction along the row. Inductor
makes it a persistent kernel (the row held in registers, read from memory once) only up to 1024
elements; a wider row runs a looped kernel that reads it twice (statistics, then normalising). The
400M models' rows are 1600 to 3520 channels wide. Every compiled model, baselines included, is
compiled this way (``rnnlab train --compile``, ``benchmarks/bench_models.py``; its ``--rows-against``
twin compiles with another limit in the same run: results/persistent-rows-h200).

How: Inductor's heuristics live in one "choices" object per thread (``InductorChoices``), made at
the thread's first compile and kept for every later one. Each compile here carries a post-grad
graph pass of ours (``RowLimit``, an Inductor compile option, so it holds for this compile only,
the backward's included: Inductor patches its config around the backward's compile, in autograd's
thread, as well). The pass leaves the graph as it is; it puts a ``RowChoices`` in the compiling
thread where another choices object is there (a plain ``torch.compile`` earlier in the thread, or
a library's), before Inductor generates the kernels. ``RowChoices`` then decides with the limit
of the compile under way, read from the config that compile patched, so in a later plain compile
it chooses as Inductor does, and two compiles with different limits in one process (the
benchmark's twins) each get their own. The pass's ``uuid()`` puts the limit in the compile
cache's key, so the cache never hands one limit's kernels to another.
"""

from __future__ import annotations

import torch
from torch import nn
from torch._inductor import config as inductor_config
from torch._inductor import list_mode_options
from torch._inductor.choices import InductorChoices
from torch._inductor.custom_graph_pass import CustomGraphPass
from torch._inductor.runtime.hints import ReductionHint
from torch._inductor.virtualized import V

# Widest row (elements) reduced in one pass: the widest 400M model's (minGRU's 3520) fits; Inductor's own is 1024
PERSISTENT_ROWS = 4096
INDUCTOR_ROWS = 1024  # Inductor's own limit: with it, RowChoices chooses exactly as Inductor does
HEURISTIC_VERSION = 1  # part of the compile cache's key: change it when RowChoices decides differently


class RowLimit(CustomGraphPass):
    """The compile option that carries the row limit: a post-grad pass that changes no graph and
    makes sure the compiling thread's choices are ``RowChoices`` (module docstring)."""

    def __init__(self, limit: int):
        self.limit = limit

    def __call__(self, graph: torch.fx.Graph) -> None:
        if not isinstance(V.choices, RowChoices):
            V.set_choices_handler(RowChoices())  # for the thread from now on (RowChoices follows each compile's config)

    def uuid(self) -> str:
        return f"rnnlab.train.inductor.RowLimit(limit={self.limit}, version={HEURISTIC_VERSION})"

    def __repr__(self) -> str:
        return f"RowLimit({self.limit})"


def compiling_limit() -> int | None:
    """The row limit of the compile under way (None when it did not come through ``compile_model``)."""
    option = inductor_config.post_grad_custom_post_pass
    return option.limit if isinstance(option, RowLimit) else None


class RowChoices(InductorChoices):
    """Inductor's choices, except that a row (inner) reduction is persistent up to the limit of
    the compile under way, or wherever Inductor would make it persistent anyway."""

    @staticmethod
    def should_use_persistent_reduction(features, cooperative_reduction: bool) -> bool:
        if InductorChoices.should_use_persistent_reduction(features, cooperative_reduction):
            return True
        limit = compiling_limit()
        return (limit is not None and inductor_config.triton.persistent_reductions and not cooperative_reduction
                and features.get_reduction_hint() == ReductionHint.INNER
                and V.graph.sizevars.statically_known_leq(features.reduction_numel, limit))


def compile_options(mode: str = "default", rows: int = PERSISTENT_ROWS) -> dict:
    """Inductor's options for ``torch.compile``: ``mode``'s own (``torch.compile`` takes a mode or
    options, not both) and row reductions persistent up to ``rows`` elements."""
    return dict(list_mode_options(mode), post_grad_custom_post_pass=RowLimit(rows))


def compile_model(module: nn.Module, mode: str = "default", rows: int = PERSISTENT_ROWS) -> nn.Module:
    """``module`` compiled by ``torch.compile`` in ``mode`` with row reductions persistent up to
    ``rows`` elements (module docstring)."""
    return torch.compile(module, options=compile_options(mode, rows))
