"""Parameter counting and width solving, so models of different kinds can be matched by size.

Counts come from building the real module on the ``meta`` device (no memory, no init cost), so
they can never drift from the model that trains. Tied weights are counted once. For the reference
study's configs these reproduce its logged counts exactly (``tests/test_params.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re

import torch

from rnnlab.models.config import MAX_DIM, ModelConfig
from rnnlab.models.lm import LM
from rnnlab.models.registry import get_spec

_SUFFIX = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9}


def parse_count(text: str | int | float) -> int:
    """``"400M"`` -> 400_000_000; ``"1.5B"``, ``"50m"``, ``"123456"``, ``"1e9"`` likewise. A number
    from a suite file (``target_params = 400000000``) is checked as text is: positive, and no bool."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        text = str(text)
    m = (re.fullmatch(r"\s*(-?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([kKmMbBgG]?)\s*", text)
         if isinstance(text, str) else None)
    number = float(m.group(1)) * _SUFFIX[m.group(2).upper()] if m else None
    if number is None or not math.isfinite(number):  # "1e400" reads as inf
        raise ValueError(f"cannot read a count from {text!r} (try 400M, 1.5B, 1e9, 50000000)")
    value = int(round(number))
    if abs(number - value) > 1e-9 * max(abs(number), 1):  # "1.1K" is 1100.0000000000002: a whole number
        raise ValueError(f"a count is a whole number, got {text!r} (= {number:g})")
    if value <= 0:
        raise ValueError(f"parameter count must be positive, got {text!r}")
    return value


def count_arg(text: str) -> str:
    """An argparse ``type=`` for a parameter count flag (``--params``, ``--target``): the text as
    typed (``50M``, as suite.json records it) once ``parse_count`` reads it; its refusal argparse's
    error, which names the flag."""
    try:
        parse_count(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def count_params(cfg: ModelConfig) -> int:
    """Number of distinct parameters of the LM described by ``cfg``."""
    with torch.device("meta"):
        model = LM(cfg)
    return sum(p.numel() for p in model.parameters())


def nearest_width(model: str, multiple: int | None = None) -> tuple[int, str]:
    """``(step, where)`` for a note on a width that :func:`solve_dim` solved and that misses its target:
    the width step searched (``multiple``, default the model's) and how far the search went, "this
    depth allows" or "at this depth in widths that are multiples of N" (a smaller step may come closer)."""
    step = multiple or get_spec(model).dim_multiple
    return step, "this depth allows" if step == 1 else f"at this depth in widths that are multiples of {step}"


def solve_dim(cfg: ModelConfig, target: int, multiple: int | None = None) -> tuple[int, int]:
    """The width (a multiple of ``multiple``, default the model's ``dim_multiple``) whose parameter
    count at ``cfg.depth`` is closest to ``target``; returns ``(dim, params)``. Widths the layer
    refuses (E1 ``heads=14`` takes only states that 14 divides) are stepped over; an option that
    no width takes raises the layer's error at the narrowest width its whole-number options divide
    (the Transformer's ``head_dim=3``: odd, which RoPE refuses at any width, not "must divide 64").

    The count grows monotonically with width, so a bisection over multiples finds the bracket.
    """
    step = get_spec(cfg.model).dim_multiple if multiple is None else multiple  # 0 is an error, not "default"
    if isinstance(step, bool) or not isinstance(step, int) or not 0 < step <= MAX_DIM:
        raise ValueError(f"multiple must be a positive integer (at most {MAX_DIM:,}, the widest dim), got {step!r}")

    def at(k: int) -> int:
        return count_params(dataclasses.replace(cfg, dim=k * step))

    top = MAX_DIM // step  # the widest multiple ModelConfig accepts
    takes: dict[int, bool] = {}

    def fits(k: int) -> bool:
        if k not in takes:
            try:
                dataclasses.replace(cfg, dim=k * step).validate()
                takes[k] = True
            except ValueError:
                takes[k] = False
        return takes[k]

    def taken(k: int, way: int) -> int | None:
        """The first multiple from ``k`` on (``way`` +1 up, -1 down) that the layer takes."""
        while 1 <= k <= top and not fits(k):
            k += way
        return k if 1 <= k <= top else None

    def reaches(k: int) -> bool:  # monotone in k: the first width taken from k on has target or more
        t = taken(k, 1)
        return t is None or at(t) >= target

    unreachable = f"no width up to {MAX_DIM} reaches {target:,} parameters at depth {cfg.depth}"
    lo, hi = 1, 1
    while not reaches(hi):
        if hi >= top:
            raise ValueError(unreachable)
        lo, hi = hi, min(hi * 2, top)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if reaches(mid):
            hi = mid
        else:
            lo = mid
    below, above = taken(hi - 1, -1), taken(hi, 1)
    if below is None and above is None:  # the layer's own error, at the narrowest width its whole options divide
        options = cfg.layer.values() if isinstance(cfg.layer, dict) else ()  # not a table: validate says so
        whole = [v for v in options if isinstance(v, int) and not isinstance(v, bool) and v > 0]
        wide = math.lcm(step, *whole)
        dataclasses.replace(cfg, dim=wide if wide <= MAX_DIM else step).validate()  # head_dim=3: odd, not 64's divisor
    if above is None:  # every width the layer takes has fewer than target
        raise ValueError(unreachable)
    found = [k for k in (below, above) if k is not None]
    best = min(found, key=lambda k: abs(at(k) - target))
    return best * step, at(best)
