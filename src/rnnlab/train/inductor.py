"""How rnnlab compiles a model: ``torch.compile`` with Inductor, plus one heuristic of ours, row
reductions kept in one pass ("persistent") up to ``PERSISTENT_ROWS`` elements instead of 1024.

Why: a residual add + LayerNorm over a row of d channels is a reduction along the row. Inductor
makes it a persistent kernel (the row held in registers, read from memory once) only up to 1024
elements; a wider row runs a looped kernel that reads it twice (statistics, then normalising). The
400M models' rows are 1600 to 3520 channels wide. Every compiled model, baselines included, is
compiled this way (``rnnlab train --compile``, ``benchmarks/bench_models.py``; its ``--rows-against``
twin compiles with another limit in the same run: results/persistent-rows-h200).

How: Inductor's seam for its heuristics, ``config.inductor_choices_class`` (a factory of
``InductorChoices``), given as a compile option, so that it holds for this compile only, the
backward's included (Inductor patches its config around the backward's compile as well). Two
traps of that seam, met here:

- Inductor makes one choices object per thread, at the thread's first compile, and keeps it: a
  later compile with another factory still gets the first object. So ``RowChoices`` decides with
  the limit of the compile under way (read from Inductor's config, which that compile patched),
  not a limit of its own; and a thread whose first compile did not come through ``compile_model``
  keeps Inductor's own choices (rnnlab compiles nothing else).
- torch before pytorch#179055 (April 2026; torch 2.11 is before it) leaves the factory out of
  the compile cache's key, so two compiles of one graph under different limits would share the
  cached kernels. There these compiles skip the FX graph cache (and AOTAutograd's, built on it).
"""

from __future__ import annotations

import torch
from torch import nn
from torch._inductor import config as inductor_config
from torch._inductor import list_mode_options
from torch._inductor.choices import InductorChoices
from torch._inductor.runtime.hints import ReductionHint
from torch._inductor.virtualized import V

# Widest row (elements) reduced in one pass: the widest 400M model's (minGRU's 3520) fits; Inductor's own is 1024
PERSISTENT_ROWS = 4096
INDUCTOR_ROWS = 1024  # Inductor's own limit: with it, RowChoices chooses exactly as Inductor does


class PersistentRows:
    """The factory for Inductor's ``inductor_choices_class`` option: row reductions persistent up
    to ``limit`` elements (``RowChoices`` reads the limit back from the option while compiling)."""

    def __init__(self, limit: int):
        self.limit = limit

    def __call__(self) -> RowChoices:
        return RowChoices()

    def __repr__(self) -> str:
        return f"PersistentRows({self.limit})"


def compiling_limit() -> int | None:
    """The row limit of the compile under way (None when it did not come through ``compile_model``)."""
    factory = inductor_config.inductor_choices_class
    return factory.limit if isinstance(factory, PersistentRows) else None


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

    def uuid(self) -> str:
        """The compile cache's key for these choices (torch from pytorch#179055 on asks for it)."""
        return f"rnnlab.train.inductor.RowChoices(limit={compiling_limit()})"


def cache_keys_choices() -> bool:
    """Whether this torch puts ``inductor_choices_class`` in its compile cache's key (pytorch#179055)."""
    return "inductor_choices_class" in getattr(inductor_config, "_cache_config_factory_keys", ())


def compile_options(mode: str = "default", rows: int = PERSISTENT_ROWS) -> dict:
    """Inductor's options for ``torch.compile``: ``mode``'s own (``torch.compile`` takes a mode or
    options, not both) and row reductions persistent up to ``rows`` elements."""
    options = dict(list_mode_options(mode), inductor_choices_class=PersistentRows(rows))
    if not cache_keys_choices():
        options["fx_graph_cache"] = False
    return options


def compile_model(module: nn.Module, mode: str = "default", rows: int = PERSISTENT_ROWS) -> nn.Module:
    """``module`` compiled by ``torch.compile`` in ``mode`` with row reductions persistent up to
    ``rows`` elements (module docstring)."""
    return torch.compile(module, options=compile_options(mode, rows))
