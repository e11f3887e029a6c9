"""Whole-model training throughput (tok/s), model-FLOPs utilisation and peak memory at the 400M
reference configurations, every model in the compile modes that can be its fastest, in one run.

    python benchmarks/bench_models.py [--batches 32] [--T 512] [--steps 8] [--warmup 3]
                                      [--compile MODE ...] [--graph] [--only NAME ...] [--skip NAME ...]
                                      [--profile] [--sf-step fused foreach] [--peak-tflops TFLOPS]
                                      [--scan-against FILE] [--e1-against KEY=VALUE[,...]]
                                      [--rows-against LIMIT] [--json results/x/models.json] [--commit SHA]

Protocol: pure bf16 weights, Schedule-Free AdamW (lr 3e-4, wd 0.1; rnnlab's one-launch step, as
``rnnlab train`` runs it on CUDA, and/or with ``--sf-step foreach`` schedulefree's own step, each
mode of each model once per step kind: the optimizer's share in one run), T=512, the same random
bytes and the same initial weights (seed 0) for every mode of a model; ``--warmup`` steps (at
least 3 when compiling: compilation, autotuning) are not timed; tok/s is B*T over the median
step time of ``--steps`` steps queued back to back (``back_to_back``: CUDA events on the GPU's
timeline, no synchronisation between the steps, so the host queues ahead as in a training loop
that does not wait for each step). ``synced_step_ms`` is the median of ``--steps`` steps each
started from an idle GPU and synchronised at its end, timed first (the step time of the runs
before 2026-12-04): right after the compilation's pause, before the board reaches its power
limit, it read GEMM-bound models up to ≈ 3% faster than the queued steps after it
(``results/scoreboard-h200-1204``). ``sm_mhz`` / ``power_w``: the median SM clock and board power while the
queued steps ran (nvidia-smi; the meta gives the board's power limit): a GEMM-bound step at the
power limit runs at the clock the limit allows, which differs between boards. MFU = 6 * params * tok/s / the GPU's dense bf16 peak
(``--peak-tflops``, default 989 for H100/H200 SXM): every model pays 6*N FLOPs per token for its
weights, so MFU is the share of the chip a model turns into training.

Rows:
- every rnnlab model (``rnnlab.models.LM`` with its default fast path: Triton/CUDA kernels for the
  recurrences, the official ``mamba_ssm`` module for Mamba2, fla's layer for Gated DeltaNet: their
  ``backend="official"``, so a library that does not import gives an error row, not the reference);
- ``Mamba2 standalone``: the official ``mamba_ssm`` Mamba2 in a minimal LM written here (embedding,
  pre-norm LayerNorm residual blocks, final LayerNorm, tied head, fp32 cross-entropy), outside
  rnnlab, so the cost of rnnlab's wrapper is visible (rnnlab's best Mamba2 / standalone best).

Modes: each model runs in its ``MODES`` below (the candidates for its fastest mode), or in the
modes given by ``--compile`` (``off`` = eager, ``default``, ``reduce-overhead``, ``max-autotune``:
Inductor's GEMM autotuning, for the GEMM-bound models). A mode is used as
"fastest correct" only if it trains like the model's first mode: the loss of every step agrees
(same weights, same batches; the GPU tests check compiled vs eager more tightly on small models)
within the model's tolerance: ``LOSS_TOL``, or twice its *rounding twin's* difference when that
is larger, and the first step's loss (same weights, same batch, before any update) within
``FIRST_STEP_TOL`` whatever the twin says, so a mode whose forward is off cannot hide in a wide
tolerance. The rounding twin is the first mode once more with every weight moved by about one
bf16 rounding step (``round_weights_apart``): how far rounding alone carries this model's losses
apart over the benchmark's steps (they memorise 4 batches of random bytes, where differences grow
step by step), the yardstick for a compiled mode, whose kernels round differently but compute the
same. A model run in one mode only has no twin, nor do ``--scan-against`` / ``--rows-against``'s
twin rows (compared with the package's rows instead; device time). The table gives each row's ratio
to the fastest correct Mamba2 mode of rnnlab in the same run.

After the table, each speed target whose rows ran (``MFU_TARGETS``, ``X_MAMBA2_TARGETS``,
``RATIO_TARGETS``: issue #19's, in docs/kernels.md) is judged on this run's fastest correct modes:
measured, bound, met or not (also in ``--json``'s ``targets``).

``--graph`` adds, for each mode but reduce-overhead (its own CUDA graphs cannot be captured inside
another), a row with the step's forward and backward captured whole in one CUDA graph and replayed
as ``rnnlab train --cuda-graph`` does (``rnnlab.train.cuda_graph``; the optimizer step runs outside
it): no launching left on the host, so a model whose step is bound by the CPU's launching shows
what that costs.

Every row also gives ``host_ms``: how long the CPU takes to queue one step while the GPU is kept
busy by a spin kernel (``host_time``; "blocked" where the step waited for the GPU instead). A
step whose host time nears its step time is bound by the host, and its speed then moves with the
machine's CPU (results/mamba2-trainer-steps-h200); the ``--graph`` row beside it says what the
host's part costs.

``--scan-against FILE`` (another copy of ``rnnlab/ops/scan/triton.py``, e.g. an earlier commit's)
adds, for each minGRU / minLSTM row, a twin row (``SCAN_SUFFIX``) that trains with that copy's
scan kernels in place of the package's: a kernel change as a whole-model ratio of one run.
``--e1-against KEY=VALUE[,...]`` does the same for E1 rows (``E1_SUFFIX``): their Elman scans run
with those kernel options (``ElmanKernelOptions``, e.g. ``heads_gluon=0``: the Triton heads
kernels instead of the Gluon ones).

Every compiled row is compiled as ``rnnlab train --compile`` compiles (``rnnlab.train.inductor``:
Inductor with row reductions persistent up to ``PERSISTENT_ROWS`` elements). ``--rows-against
LIMIT`` adds, for each compiled row, a twin row (``ROWS_SUFFIX``) compiled with that limit instead
(1024: Inductor's own): the heuristic as a whole-model ratio of one run.

``--profile`` then runs each row ``PROFILE_STEPS`` more steps under ``torch.profiler`` (after
``PROFILE_HOT_S`` seconds of steps, so that the board is at its power limit, as in the timed ones) and adds
the GPU time per step by kind of kernel (``KERNEL_KINDS``: the sequence mixer's kernels, matmuls,
Inductor's fused kernels, the optimizer, other), the costliest kernels, and the GPU's idle time
between kernels by the kernels around each gap (``idle_time``): where a model's step goes, for
the kernel work on MFU (docs/kernels.md).

Peak memory is ``torch.cuda.max_memory_allocated`` over the timed steps and
``max_memory_reserved``; a ``--graph`` row's over its capture too (its replays allocate nothing:
their activations are in the memory the capture allocated); under ``reduce-overhead`` the CUDA
graphs are recorded in the warm-up and their memory pool is reserved, not allocated, so compare
the reserved column there. Every row is appended to ``--json`` as soon as
it is measured (a run cut short keeps what it measured).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import gc
import itertools
import json
import math
import statistics
import subprocess
import sys
import time
import types
from importlib import metadata
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from rnnlab.bench.mfu import benchmark_peak, mfu, peak_note
from rnnlab.ops.elman import ELMAN_SCAN, ELMAN_SCAN_BESIDE_LINEAR
from rnnlab.ops.elman.options import ElmanKernelOptions
from rnnlab.ops.registry import traced
from rnnlab.ops.scan import LINEAR_SCAN, MINGRU_SCAN, MINLSTM_SCAN
from rnnlab.train.cuda_graph import GraphedForwardBackward
from rnnlab.train.runtime import git_commit_label

OFF, DEFAULT, RO = None, "default", "reduce-overhead"
# max-autotune: Inductor times its Triton matmul templates against cuBLAS for every GEMM shape and
# keeps the faster (minutes of compilation at 400M; without CUDA graphs, which reduce-overhead has).
# No model's candidate: cuBLAS won every layer GEMM and minGRU ran 0.984x (results/max-autotune-h200)
MAX_AUTOTUNE = "max-autotune-no-cudagraphs"
MODE_NAMES = {"off": OFF, "default": DEFAULT, "on": DEFAULT, "reduce-overhead": RO, "max-autotune": MAX_AUTOTUNE}
# The layers with an official implementation name it: on backend "auto" a missing or broken mamba_ssm / fla
# would build the PyTorch reference, timed under the official's name (and every ratio to Mamba2 against it);
# "official" makes that an error row instead
MAMBA2 = dict(model="mamba2", dim=1728, depth=22, layer={"d_state": 64, "backend": "official"})
# (name, config, modes that can be its fastest). Eager is left out where earlier runs measured
# it slower than compiled (results/e1-heads-compile-h100: E1 dense and heads; the standalone
# Mamba2, as rnnlab's ran 79.6K eager vs 111.8K compiled in results/fair-baselines-h200).
MODELS = [
    ("Mamba2 d22 standalone", dict(MAMBA2, standalone=True), [DEFAULT, RO]),
    ("Mamba2 d22", MAMBA2, [OFF, DEFAULT, RO]),
    ("E1 d26 dense", dict(model="e1", dim=1760, depth=26), [DEFAULT, RO]),
    ("E1 heads 14x128 d31", dict(model="e1", dim=1792, depth=31, layer={"heads": 14}), [DEFAULT, RO]),
    # E1's selective switches at ~400M (width or depth re-solved: W_a adds a [di, di] matrix per
    # layer): the target is >= 0.8x the tok/s of the E1 row above it (docs/kernels.md)
    ("E1 d26 decay 1600", dict(model="e1", dim=1600, depth=26, layer={"selective": "decay"}), [DEFAULT, RO]),
    ("E1 d26 lowrank 1744", dict(model="e1", dim=1744, depth=26, layer={"selective": "lowrank"}), [DEFAULT, RO]),
    ("E1 heads 14x128 d25 decay", dict(model="e1", dim=1792, depth=25, layer={"heads": 14, "selective": "decay"}),
     [DEFAULT, RO]),
    # reduce-overhead for these three too: with the fused optimizer step E16 (and Mamba2) saved less
    # than the step's GPU time, a sign of host-side gaps that CUDA graphs may close
    # (results/sf-adamw-fused-h200)
    ("minGRU 3520x16", dict(model="mingru", dim=3520, depth=16), [OFF, DEFAULT, RO]),
    ("minLSTM 2880x16", dict(model="minlstm", dim=2880, depth=16), [OFF, DEFAULT, RO]),
    ("E16 s4 1024x10 e2", dict(model="e16", dim=1024, depth=10,
                                layer={"expansion": 2.0, "state_expansion": 4}), [OFF, DEFAULT, RO]),
    # E88 at the width `rnnlab params --target 400M` solves at the reference's depth 31 (50 heads),
    # and the race's and Table B's (suites/race-400m.toml): 49 heads, whose scan runs ~1.3x faster
    # (results/e88-kernel-h200, head-count sweep; results/e88-mamba2-h200); GDN as in the race
    ("E88 50x32 d31", dict(model="e88", dim=1600, depth=31), [OFF, DEFAULT, RO]),
    ("E88 49x32 d32", dict(model="e88", dim=1568, depth=32), [OFF, DEFAULT, RO]),
    ("GDN 13x128 d17 (fla)", dict(model="gdn", dim=1760, depth=17, layer={"backend": "official"}), [OFF, DEFAULT]),
]


# The speed targets (issue #19; docs/kernels.md): each row's fastest correct mode at least this MFU
# (dense E1 also at least Mamba2's fastest tok/s), and E1's ablation switches at least this share
# of plain E1's tok/s, each in its fastest correct mode; judged per batch size by `targets`.
MFU_TARGETS = {"E1 d26 dense": 0.30, "E1 heads 14x128 d31": 0.55, "minGRU 3520x16": 0.60,
               "minLSTM 2880x16": 0.60, "E16 s4 1024x10 e2": 0.60}
X_MAMBA2_TARGETS = {"E1 d26 dense": 1.0}
RATIO_TARGETS = {"E1 d26 decay 1600": ("E1 d26 dense", 0.8), "E1 d26 lowrank 1744": ("E1 d26 dense", 0.8)}

GRAPHED_SUFFIX = " + graph"  # a row's mode when its forward and backward replay a CUDA graph (--graph)


def mode_name(mode: str | None, graphed: bool = False) -> str:
    """A row's mode as it is named: eager, default, reduce-overhead, max-autotune, each with
    ``GRAPHED_SUFFIX`` when the step replays a CUDA graph."""
    name = "eager" if mode is OFF else {MAX_AUTOTUNE: "max-autotune"}.get(mode, mode)
    return name + (GRAPHED_SUFFIX if graphed else "")


MIN_COMPILE_WARMUP = 3  # step 1 compiles forward and backward; keep later steps out of it too
LOSS_TOL = 5e-2  # nats, any step: a mode that differs more from the model's first mode is not "correct"
TWIN_FACTOR = 2  # ... unless it differs less than twice the rounding twin's difference (one sample of it)
# nats, the first step (same weights, same batch, no update yet: only the kernels' rounding differs), whatever
# the twin says: every published row's modes agreed within 0.0005 there, E88's eager and compiled within 0.0039,
# where the trajectory's tolerance grew to 0.32 for models whose losses part fast (results/scoreboard-h200-1204)
FIRST_STEP_TOL = 2e-2
TWIN_STEP = 2.0**-7  # the twin's weights: w * (1 +- TWIN_STEP), one bf16 step (7 stored mantissa bits)


def round_weights_apart(model: nn.Module, seed: int = 1) -> None:
    """Move every weight of ``model`` by about one bf16 rounding step, up or down at random
    (``w * (1 +- TWIN_STEP)``; zeros stay zero): the rounding twin's start."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            sign = torch.randint(0, 2, p.shape, generator=g).to(p.device, torch.float32) * 2 - 1
            p.copy_(p.float() * (1 + TWIN_STEP * sign))


class StandaloneLM(nn.Module):
    """The official mamba_ssm Mamba2 in the smallest LM around it (no rnnlab code): embedding
    N(0, 0.02), ``x + mixer(LayerNorm(x))`` per layer, final LayerNorm, head tied to the
    embedding, mean fp32 cross-entropy."""

    def __init__(self, dim: int, depth: int, d_state: int):
        super().__init__()
        from rnnlab.ops.ssd import import_mamba_ssm

        if import_mamba_ssm() is None:
            raise RuntimeError("mamba_ssm does not import")
        from mamba_ssm.modules.mamba2 import Mamba2

        self.embed = nn.Embedding(256, dim)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(depth))
        self.mixers = nn.ModuleList(Mamba2(dim, d_state=d_state, d_conv=4, expand=2, headdim=64)
                                    for _ in range(depth))
        self.norm_f = nn.LayerNorm(dim)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = self.embed(idx)
        for norm, mixer in zip(self.norms, self.mixers):
            x = x + mixer(norm(x))
        logits = self.norm_f(x) @ self.embed.weight.t()
        return F.cross_entropy(logits.float().reshape(-1, 256), targets.reshape(-1))


def build(cfgd: dict) -> nn.Module:
    if cfgd.get("standalone"):
        return StandaloneLM(cfgd["dim"], cfgd["depth"], cfgd["layer"]["d_state"])
    from rnnlab.models import LM, ModelConfig

    return LM(ModelConfig(**cfgd))


# Kinds of GPU kernel in a training step, by name (first match wins): the sequence mixers' own
# kernels (rnnlab's scans, mamba_ssm's and fla's chunk kernels and their helpers, the causal
# convolution), the projections' matrix products (cuBLAS / CUTLASS, Inductor's matmul templates),
# Inductor's fused elementwise and reduction kernels, the optimizer's multi-tensor kernels; the rest (eager
# elementwise, copies, reductions, and names not listed here, e.g. TileLang's) is "other": the
# breakdown's top kernels name them.
KERNEL_KINDS = [
    ("mixer", ("_scan_fwd", "_scan_bwd", "_diag_fwd", "_diag_bwd", "_heads_fwd", "_heads_bwd", "_heads_dw", "_dense_step",
               "_e88_fwd", "_e88_bwd", "elman_persistent", "elman_wgmma", "_state_passing", "_bmm_chunk", "causal_conv1d",
               "chunk_", "fused_recurrent", "wy_repr", "recompute_w_u", "solve_tril", "merge_16x16", "l2norm")),
    ("matmul", ("gemm", "cutlass", "xmma", "nvjet", "cublas", "wgmma", "triton_tem_")),
    ("Inductor's fused kernels", ("triton_",)),
    ("optimizer", ("multi_tensor_apply", "foreach", "_sf_adamw")),
]
# Kernels whose whole name is too short to find by a part of it: E1 heads' Gluon scans
EXACT_KINDS = {"_fwd": "mixer", "_bwd": "mixer"}
PROFILE_STEPS = 2
PROFILE_HOT_S = 2.0  # steps run before the profiled ones: the board at its power limit, as in the timed steps


def kernel_kind(name: str) -> str:
    if name in EXACT_KINDS:
        return EXACT_KINDS[name]
    low = name.lower()
    return next((kind for kind, keys in KERNEL_KINDS if any(k in low for k in keys)), "other")


def cuda_kernels(prof) -> list[tuple[str, float, int]]:
    """``(name, total ms, launches)`` of every GPU kernel a ``torch.profiler`` run recorded; the
    user annotations (compiled regions, ``Optimizer.step`` spans), which are device-typed but
    cover kernels counted already, left out."""
    return [(e.key, e.self_device_time_total / 1e3, e.count) for e in prof.key_averages()
            if e.device_type == torch.autograd.DeviceType.CUDA and e.self_device_time_total > 0
            and not e.is_user_annotation]


def kernel_spans(prof) -> list[tuple[float, float, str]]:
    """``(start µs, end µs, name)`` of every GPU kernel and copy a ``torch.profiler`` run recorded,
    in start order (user annotations left out, as in :func:`cuda_kernels`)."""
    return sorted((e.time_range.start, e.time_range.end, e.name) for e in prof.events()
                  if e.device_type == torch.autograd.DeviceType.CUDA and not e.is_user_annotation)


def idle_time(spans: list[tuple[float, float, str]], steps: int, top: int = 6) -> dict:
    """Where the GPU ran no kernel on any stream, per step: the idle milliseconds between the
    kernels of ``spans`` (:func:`kernel_spans`, over ``steps`` steps) in all, and by the kinds of
    the kernel that ended last before each gap and of the one that started after it (the
    ``top`` costliest pairs, with their gaps a step), then by the two kernels' names (their first
    60 characters): the gaps a graphed step still keeps, and where."""
    kinds: dict[str, list[float]] = {}
    names: dict[str, list[float]] = {}
    busy_end, last = (spans[0][1], spans[0][2]) if spans else (0.0, "")
    for start, end, name in spans[1:]:
        if start > busy_end:
            for table, key in ((kinds, f"{kernel_kind(last)} -> {kernel_kind(name)}"),
                               (names, f"{last[:60]} -> {name[:60]}")):
                gap = table.setdefault(key, [0.0, 0])
                gap[0] += start - busy_end
                gap[1] += 1
        if end > busy_end:
            busy_end, last = end, name

    def ranked(table):
        return [{"pair": k, "ms_per_step": round(ms / 1e3 / steps, 3), "gaps_per_step": n / steps}
                for k, (ms, n) in sorted(table.items(), key=lambda kv: -kv[1][0])[:top]]

    return {"idle_ms_per_step": round(sum(ms for ms, _ in kinds.values()) / 1e3 / steps, 3),
            "by_pair": ranked(kinds), "by_kernels": ranked(names)}


def kernel_breakdown(kernels: list[tuple[str, float, int]], steps: int) -> dict:
    """GPU milliseconds per step by kind of kernel and the 12 costliest kernels, from
    ``(name, total ms, launches)`` over ``steps`` profiled steps."""
    kinds: dict[str, float] = {}
    for name, ms, _ in kernels:
        kind = kernel_kind(name)
        kinds[kind] = kinds.get(kind, 0.0) + ms / steps
    top = sorted(kernels, key=lambda k: -k[1])[:12]
    return {"gpu_ms_per_step": round(sum(kinds.values()), 2),
            "kernels_per_step": round(sum(c for _, _, c in kernels) / steps, 1),
            "by_kind_ms": {k: round(v, 2) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
            "top": [{"kernel": n[:120], "kind": kernel_kind(n), "ms_per_step": round(ms / steps, 3),
                     "launches_per_step": c / steps} for n, ms, c in top]}


def graph_stats() -> dict:
    """The compile's graph breaks and graphs (Dynamo's counters, cleared at each row's start) and
    ``cudagraph_skips``: the compiled graphs a CUDA-graph mode (reduce-overhead) runs without CUDA
    graphs, because Inductor declined them (``TORCH_LOGS=cudagraphs`` says why). Inductor says so
    only in that log: a row with skips is labelled reduce-overhead but runs, wholly or in part, as
    default does."""
    from torch._dynamo.utils import counters

    return {"graph_breaks": sum(counters["graph_break"].values()),
            "graphs": counters["stats"]["unique_graphs"],
            "cudagraph_skips": counters["inductor"]["cudagraph_skips"]}


def nvidia_smi(fields: str) -> list[float] | None:
    """The current GPU's ``fields`` (nvidia-smi's ``--query-gpu`` names, comma-separated) as
    numbers, e.g. ``"clocks.sm,power.draw"`` (MHz, W); None where nvidia-smi does not answer."""
    uuid = f"GPU-{torch.cuda.get_device_properties(torch.cuda.current_device()).uuid}"
    try:
        out = subprocess.run(["nvidia-smi", f"--id={uuid}", f"--query-gpu={fields}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
        return [float(v) for v in out.split(",")]
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def clock_and_power() -> list[float] | None:
    """``[SM clock MHz, board power W]`` now: the instantaneous power where nvidia-smi has it (on
    Hopper ``power.draw`` is a 1-s average, longer than a benchmark's window), else the average."""
    return nvidia_smi("clocks.sm,power.draw.instant") or nvidia_smi("clocks.sm,power.draw")


def back_to_back(step, batches: list[torch.Tensor], steps: int, start: int) -> tuple[list[float], list[float], list[list[float]]]:
    """``(seconds, losses, clocks)`` of ``steps`` more steps queued back to back after an idle GPU,
    on ``batches`` from index ``start`` on (the steps before took the ones up to it, so that rows
    with the same steps in all see the same batches at each step): each step's time between CUDA
    events recorded on the current stream before and after it, with no synchronisation until the
    last, so the GPU waits for the host only where the host is slower (the first step, which
    starts from idle, included). Each loss is copied as its step ends (a CUDA graph rewrites its
    loss tensor at every replay) and read at the end. ``clocks``: :func:`clock_and_power` samples
    taken while the queued steps run, a sample kept only if the GPU was still busy when it came
    back (a GPU at its power limit lowers its clock: a GEMM-bound step's speed follows it)."""
    events = [torch.cuda.Event(enable_timing=True) for _ in range(steps + 1)]
    losses, clocks = [], []
    torch.cuda.synchronize()
    events[0].record()
    for i in range(steps):
        losses.append(step(batches[(start + i) % len(batches)]).detach().clone())
        events[i + 1].record()
    while not events[-1].query():
        sample = clock_and_power()
        if sample is None or events[-1].query():
            break
        clocks.append(sample)
    torch.cuda.synchronize()
    return ([a.elapsed_time(b) / 1e3 for a, b in zip(events, events[1:])],
            [loss.item() for loss in losses], clocks)


SPIN_CYCLES = 2_000_000_000  # torch.cuda._sleep's GPU clock cycles: ~1 s on an H100 / H200, longer than any step's queueing
HOST_STEPS = 3


def host_time(step, batches: list[torch.Tensor]) -> tuple[float, float]:
    """``(host ms, spin ms)``: the median time the CPU takes to queue one ``step`` while the GPU
    is still running a ~1-s spin kernel queued just before (``HOST_STEPS`` steps), and that
    kernel's own time. A host time of half the spin's or more is no measurement (``blocked``): the
    step waited for the GPU inside, at a synchronisation or because its launches filled the
    driver's queue of pending work (on the order of a thousand kernels)."""
    times, spin = [], 0.0
    for i in range(HOST_STEPS):
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        torch.cuda._sleep(SPIN_CYCLES)
        end.record()
        t0 = time.perf_counter()
        step(batches[i % len(batches)])
        times.append(time.perf_counter() - t0)
        torch.cuda.synchronize()
        spin = start.elapsed_time(end)
    return round(statistics.median(times) * 1e3, 2), round(spin, 1)


def bench(name, cfgd, B, T, steps, warmup, mode, profile=False, sf_step="fused", graphed=False, twin=False,
          row_limit=None):
    """Train ``warmup + 2 * steps`` steps of one model in one mode (the timed ``steps`` synced, then
    ``steps`` queued back to back: ``back_to_back``) with Schedule-Free AdamW's
    ``sf_step`` ("fused": rnnlab's one-launch step; "foreach": schedulefree's own), ``graphed``:
    the timed steps replay a CUDA graph of the forward and backward, captured after the warm-up
    steps as ``rnnlab train --cuda-graph`` captures it (``GraphedForwardBackward``; the optimizer
    step outside); returns the row (with ``profile``, also the GPU time per step by kind of
    kernel and its idle time, from ``PROFILE_STEPS`` more steps; ``twin``: the weights start one rounding step apart,
    ``round_weights_apart``; ``row_limit``: compiled with row reductions persistent up to that
    many elements instead of the package's ``PERSISTENT_ROWS``)."""
    import schedulefree

    from rnnlab.train import sf_adamw
    from rnnlab.train.inductor import PERSISTENT_ROWS, compile_model

    torch.manual_seed(0)
    model = build(cfgd).to("cuda", torch.bfloat16)
    if twin:
        round_weights_apart(model)
    model.train()
    params = sum(p.numel() for p in model.parameters())
    torch._dynamo.reset()  # fresh caches and recompile budget for every row
    torch._dynamo.utils.counters.clear()  # reset() keeps the graph-break counters
    row_limit = row_limit or PERSISTENT_ROWS
    fwd = model if mode is OFF else compile_model(model, mode, row_limit)
    cls = sf_adamw.AdamWScheduleFree if sf_step == "fused" else schedulefree.AdamWScheduleFree
    opt = cls(model.parameters(), lr=3e-4, weight_decay=0.1)
    opt.train()
    g = torch.Generator(device="cuda").manual_seed(0)
    batches = [torch.randint(0, 256, (B, T + 1), device="cuda", generator=g) for _ in range(4)]
    def forward_backward(x):
        loss = fwd(x[:, :-1], x[:, 1:])
        loss.backward()
        return loss

    def eager_step(x):
        opt.zero_grad(set_to_none=True)
        loss = forward_backward(x)
        opt.step()
        return loss

    def graphed_step(x):  # the graph's replay rewrites the gradients: none are set to None
        loss = graph(x)
        opt.step()
        return loss

    times, losses, step, graph = [], [], eager_step, None
    for i in range(warmup + steps):
        if i == warmup:
            torch.cuda.synchronize()
            loss = None  # frees the last step's autograd graph, made on the default stream (see GraphedForwardBackward)
            # before a capture: a replay allocates nothing, its activations live in the memory the capture allocated
            torch.cuda.reset_peak_memory_stats()
            if graphed:
                graph, step = GraphedForwardBackward(forward_backward, model, batches[0]), graphed_step
        x = batches[i % len(batches)]
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = step(x)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        losses.append(loss.item())
    synced = statistics.median(times[warmup:])
    queued, queued_losses, clocks = back_to_back(step, batches, steps, start=warmup + steps)
    losses += queued_losses
    med = statistics.median(queued)
    row = dict(name=name, mode=mode_name(mode, graphed), config=cfgd, params=params,
               persistent_rows=None if mode is OFF else row_limit,
               B=B, T=T, warmup=warmup, step_ms=round(med * 1e3, 2), tok_per_s=round(B * T / med),
               synced_step_ms=round(synced * 1e3, 2),
               sm_mhz=round(statistics.median(c[0] for c in clocks)) if clocks else None,
               power_w=round(statistics.median(c[1] for c in clocks)) if clocks else None,
               peak_mem_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2),
               peak_reserved_gib=round(torch.cuda.max_memory_reserved() / 2**30, 2),
               first_step_s=round(times[0], 2), losses=[round(v, 5) for v in losses])
    if mode is not OFF:
        row.update(graph_stats())
    row["host_ms"], row["spin_ms"] = host_time(step, batches)
    row["host_blocked"] = row["host_ms"] >= row["spin_ms"] / 2
    if profile:  # after the timed steps, so the profiler's own cost stays out of tok/s
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        hot = time.perf_counter() + PROFILE_HOT_S  # host_time's spins let the board cool: back to its power limit
        while time.perf_counter() < hot:
            step(batches[0])
            torch.cuda.synchronize()
        with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
            for i in range(PROFILE_STEPS):
                step(batches[i % len(batches)])
            torch.cuda.synchronize()
        row["profile"] = kernel_breakdown(cuda_kernels(prof), PROFILE_STEPS)
        row["profile"]["idle"] = idle_time(kernel_spans(prof), PROFILE_STEPS)
    del model, fwd, opt, batches, step, eager_step, graphed_step, forward_backward, graph
    torch._dynamo.reset()
    gc.collect()
    torch.cuda.empty_cache()
    return row


def versions() -> dict:
    from rnnlab.layers.mamba2 import causal_conv1d_available

    def v(pkg):
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    import triton

    return dict(torch=torch.__version__, triton=triton.__version__, cuda=torch.version.cuda,
                mamba_ssm=v("mamba-ssm") or v("mamba_ssm"), causal_conv1d=v("causal-conv1d") or v("causal_conv1d"),
                mamba2_fused_path=causal_conv1d_available(), git_commit=git_commit_label())


def run_meta(peak_tflops: float | None, commit: str | None, **fields) -> dict:
    """What a benchmark run records beside its rows: the GPU, the date, the command, the dense bf16
    peak its MFU is over (``peak_tflops`` given, else the GPU's, ``peak_assumed`` if unknown), the
    script's own ``fields``, the versions and the commit (``commit`` where this copy is no checkout)."""
    device = torch.cuda.get_device_name()
    peak, assumed = benchmark_peak(device, peak_tflops)
    meta = dict(device=device, date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                command=" ".join(sys.argv), peak_tflops=peak, peak_assumed=assumed, **fields, **versions())
    meta["git_commit"] = commit or meta["git_commit"]
    return meta


FOREACH_SUFFIX = " [sf foreach]"  # the row name of a model run with schedulefree's own step
SCAN_SUFFIX = " [--scan-against]"  # the row name of a model run with --scan-against's scan kernels
SCAN_MODELS = ("mingru", "minlstm")  # the model kinds whose layers run those kernels
E1_SUFFIX = " [--e1-against]"  # the row name of an E1 run with --e1-against's kernel options
ROWS_SUFFIX = " [--rows-against]"  # the row name of a model compiled with --rows-against's limit


def row_name(model: str, sf_step: str, kernels_suffix: str = "", rows_against: bool = False) -> str:
    """A row's name: the model's for rnnlab's fused Schedule-Free step (what `rnnlab train` runs),
    the package's kernels and its compile, marked with ``FOREACH_SUFFIX`` for schedulefree's own
    step, ``kernels_suffix`` (``SCAN_SUFFIX`` / ``E1_SUFFIX``) for ``--scan-against``'s /
    ``--e1-against``'s kernels and ``ROWS_SUFFIX`` for ``--rows-against``'s compile (each its own
    row group)."""
    return (model + ("" if sf_step == "fused" else FOREACH_SUFFIX) + kernels_suffix
            + (ROWS_SUFFIX if rows_against else ""))


def e1_options(spec: str) -> ElmanKernelOptions:
    """E1's kernel options with ``spec``'s comma-separated ``KEY=INTEGER`` pairs set (booleans as
    0 / 1); ValueError, one line, naming a pair that is not one."""
    fields = {f.name: f for f in dataclasses.fields(ElmanKernelOptions)}
    changes = {}
    for pair in spec.split(","):
        key, _, value = pair.partition("=")
        if key not in fields or not value.lstrip("-").isdigit():
            raise ValueError(f"--e1-against takes KEY=INTEGER pairs of E1's kernel options "
                             f"({', '.join(fields)}), got {pair!r}")
        changes[key] = type(fields[key].default)(int(value))
    return ElmanKernelOptions(**changes)


def e1_kernels_with(options: ElmanKernelOptions):
    """A stand-in for E1's kernel module (``rnnlab.ops.elman.triton``) whose plain Elman scan runs
    and its scan with the gate beside it (E1 heads) run with ``options``: what ``--e1-against``'s
    twin rows train with (the selective scans' ops are not replaced)."""
    from rnnlab.ops.elman import triton as et

    @traced  # a function, not a functools.partial: Dynamo reads a function's `traced`, not a partial's
    def elman_scan(wx, w_h, h0=None):
        return et.elman_scan(wx, w_h, h0, options)

    @traced
    def elman_scan_beside_linear(wx, w_h, x, wl):
        return et.elman_scan_beside_linear(wx, w_h, x, wl, options)

    stand_in = types.ModuleType(f"{et.__name__} [--e1-against]")
    stand_in.elman_scan, stand_in.elman_scan_beside_linear = elman_scan, elman_scan_beside_linear
    stand_in.options = options
    return stand_in


@contextlib.contextmanager
def kernels(model: str, module):
    """Inside the block the ``model`` kind's layers run ``module``'s kernels (None: the
    package's): the minGRU / minLSTM (and linear) scan ops, or E1's Elman scan op."""
    ops = (ELMAN_SCAN, ELMAN_SCAN_BESIDE_LINEAR) if model == "e1" else (LINEAR_SCAN, MINGRU_SCAN, MINLSTM_SCAN)
    with contextlib.ExitStack() as stack:
        if module is not None:
            for op in ops:
                stack.enter_context(op.kernel.replaced(module))
        yield


def max_dloss(losses: list[float], ref: list[float]) -> float:
    """The largest difference between two runs' losses at the same step (nats, 5 decimals); inf
    where either run's loss at a step is not finite (``max`` would pass over a nan after the first
    step: a mode that diverges must not read as training alike)."""
    diffs = [abs(a - b) for a, b in zip(losses, ref)]
    return math.inf if any(math.isnan(d) or math.isinf(d) for d in diffs) else round(max(diffs), 5)


def annotate(rows: list[dict], peak: float) -> None:
    """Per row: MFU, whether it trains like its model's first mode, and the ratio to the fastest
    correct rnnlab Mamba2 row; per model: which row is its fastest correct mode."""
    by_model: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        if "error" not in r:
            by_model.setdefault((r["name"], r["B"]), []).append(r)
    for group in by_model.values():
        ref = group[0]["losses"]
        tol = LOSS_TOL
        if "twin_losses" in group[0]:
            group[0]["max_dloss_twin"] = twin = max_dloss(group[0]["twin_losses"], ref)
            if math.isfinite(twin):  # a twin that diverged is no yardstick of rounding
                tol = max(tol, TWIN_FACTOR * twin)
        for r in group:
            r["mfu"] = mfu(r["params"], r["tok_per_s"], peak)  # unrounded: targets judge it
            r["max_dloss_vs_first_mode"] = max_dloss(r["losses"], ref)
            r["dloss_first_step"] = max_dloss(r["losses"][:1], ref[:1])
            r["loss_tol"] = round(tol, 5)
            r["correct"] = r["max_dloss_vs_first_mode"] <= tol and r["dloss_first_step"] <= FIRST_STEP_TOL
            r["fastest"] = False
        # none where the first mode's losses are not finite (every dloss is then nan): no fastest mode
        best = max((r for r in group if r["correct"]), key=lambda r: r["tok_per_s"], default=None)
        if best is not None:
            best["fastest"] = True
    for r in rows:
        if "error" in r:
            continue
        step = FOREACH_SUFFIX if FOREACH_SUFFIX in r["name"] else ""  # Mamba2 with the same optimizer step
        for key, ref_name in (("x_mamba2_best", "Mamba2 d22"), ("x_standalone_best", "Mamba2 d22 standalone")):
            best = [m for m in by_model.get((ref_name + step, r["B"]), []) if m["fastest"]]
            if best:
                r[key] = r["tok_per_s"] / best[0]["tok_per_s"]


def targets(rows: list[dict]) -> list[dict]:
    """The speed targets whose rows ran (annotated rows), per batch size: what was measured in the
    fastest correct modes (MFU, tok/s over Mamba2's, or tok/s over another row's), the bound and
    whether it is met; printed by ``print_targets``."""
    best = {(r["name"], r["B"]): r for r in rows if r.get("fastest")}
    out = []
    for (name, B), r in best.items():
        if name in MFU_TARGETS:
            out.append(dict(row=name, B=B, what="MFU", value=r["mfu"], bound=MFU_TARGETS[name]))
        if name in X_MAMBA2_TARGETS and "x_mamba2_best" in r:
            out.append(dict(row=name, B=B, what="x Mamba2", value=r["x_mamba2_best"], bound=X_MAMBA2_TARGETS[name]))
        if name in RATIO_TARGETS and (RATIO_TARGETS[name][0], B) in best:
            other, bound = RATIO_TARGETS[name]
            x = r["tok_per_s"] / best[(other, B)]["tok_per_s"]
            out.append(dict(row=name, B=B, what=f"x {other}", value=x, bound=bound))
    for t in out:
        t["met"] = t["value"] >= t["bound"]
    return out


def print_targets(found: list[dict]) -> None:
    """One line per target ``targets`` found: measured, bound, met or not."""
    if found:
        print("\ntargets (fastest correct modes, this run):")
    for t in found:
        value = f"{100 * t['value']:.1f}%" if t["what"] == "MFU" else f"{t['value']:.3f}"
        bound = f"{100 * t['bound']:.0f}%" if t["what"] == "MFU" else f"{t['bound']:.2f}"
        print(f"  {t['row']} (B={t['B']}): {t['what']} {value}, target >= {bound}: {'met' if t['met'] else 'NOT met'}")


def print_table(meta: dict, rows: list[dict]) -> None:
    limit = f" (power limit {meta['power_limit_w']:g} W)" if meta.get("power_limit_w") else ""
    print(f"\n{meta['device']}{limit}  {meta['date']}  torch {meta['torch']}  triton {meta['triton']}  "
          f"mamba_ssm {meta['mamba_ssm']}  causal_conv1d {meta['causal_conv1d']} "
          f"(fused path: {meta['mamba2_fused_path']})  commit {meta['git_commit']}")
    w = max([24] + [len(r["name"]) for r in rows])
    print(f"{'model':{w}s} {'mode':>15s} {'params':>12s} {'B':>3s} {'tok/s':>9s} {'MFU':>6s} {'xMamba2':>7s} "
          f"{'step ms':>8s} {'synced':>7s} {'MHz':>5s} {'W':>4s} {'host ms':>8s} {'peak GiB':>8s} {'reserved':>8s} {'1st s':>6s} {'dloss':>7s} {'breaks':>6s}")
    for r in rows:
        if "error" in r:
            print(f"{r['name']:{w}s} {r['mode']:>15s} {'':>12s} {r['B']:3d} ERROR {r['error'][:80]}")
            continue
        flag = "*" if r["fastest"] else ("!" if not r["correct"] else " ")
        x_mamba2 = f"{r['x_mamba2_best']:7.2f}" if "x_mamba2_best" in r else f"{'-':>7s}"  # no Mamba2 row ran
        print(f"{r['name']:{w}s} {r['mode']:>15s} {r['params']:12,d} {r['B']:3d} {r['tok_per_s']:9,d}{flag}"
              f"{100 * r['mfu']:5.1f}% {x_mamba2} {r['step_ms']:8.1f} {r['synced_step_ms']:7.1f} "
              f"{r.get('sm_mhz') or '-':>5} {r.get('power_w') or '-':>4} "
              f"{'blocked' if r.get('host_blocked') else format(r['host_ms'], '.1f'):>8s} "
              f"{r['peak_mem_gib']:8.2f} {r['peak_reserved_gib']:8.2f} {r['first_step_s']:6.1f} "
              f"{r['max_dloss_vs_first_mode']:7.4f} {r.get('graph_breaks', '-'):>6}")
    for r in rows:
        if "max_dloss_twin" in r:
            print(f"{r['name']} (B={r['B']}): rounding twin's dloss {r['max_dloss_twin']:.4f}, tolerance {r['loss_tol']:.4f}")
    for r in rows:
        if r.get("cudagraph_skips"):
            print(f"{r['name']} ({r['mode']}, B={r['B']}): {r['cudagraph_skips']} compiled graph(s) ran WITHOUT CUDA "
                  "graphs (Inductor skipped them; TORCH_LOGS=cudagraphs says why)")
    print("* = the model's fastest correct mode; ! = losses differ from its first mode by more than its "
          f"tolerance (not counted: {LOSS_TOL}, or {TWIN_FACTOR}x its rounding twin's dloss when larger; the first "
          f"step's within {FIRST_STEP_TOL} always); xMamba2 = tok/s / rnnlab Mamba2's fastest correct mode; "
          "step ms = steps queued back to back "
          "(tok/s, MFU); synced = each step from an idle GPU to a synchronised end; MHz, W = the median SM clock and "
          "board power while the queued steps ran (nvidia-smi; -: no sample); host ms = the CPU's "
          "time to queue one step behind a busy GPU (near step ms: bound by the host; blocked: it waited for the GPU)")
    if "peak_tflops" in meta:
        print(peak_note(meta))


def compare_twins(rows: list[dict], suffix: str, key: str, what: str) -> None:
    """Per row without ``suffix`` in its name: the largest loss difference from its twin (the row
    of the same name with ``suffix``, mode and batch: same weights, same batches) and its tok/s
    ratio to it, as ``max_dloss_vs_KEY`` and ``x_KEY``; printed, the twin named ``what``."""
    twins = {(r["name"].replace(suffix, ""), r["mode"], r["B"]): r
             for r in rows if "error" not in r and suffix in r["name"]}
    for r in rows:
        twin = twins.get((r["name"], r["mode"], r["B"]))
        if "error" in r or suffix in r["name"] or twin is None:
            continue
        r[f"max_dloss_vs_{key}"] = dloss = max_dloss(r["losses"], twin["losses"])
        r[f"x_{key}"] = x = r["tok_per_s"] / twin["tok_per_s"]
        print(f"{r['name']} ({r['mode']}, B={r['B']}): {x:.3f}x the tok/s of {what}, losses within {dloss:.5f}")


def write_json(path: str, doc) -> None:
    """``doc`` as indented JSON at ``path``, its folder made: the benchmarks write their rows after
    each one, so a call cut short keeps what it measured (bench_peers.py, bench_trainer.py, bench_kernels.py too)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(doc, indent=1))


def print_profiles(rows: list[dict]) -> None:
    for r in rows:
        if "profile" in r:
            prof = r["profile"]
            kinds = ", ".join(f"{k} {v:.1f}" for k, v in prof["by_kind_ms"].items())
            print(f"{r['name']} ({r['mode']}): GPU {prof['gpu_ms_per_step']:.1f} ms per step of "
                  f"{r['step_ms']:.1f}: {kinds}")
            if idle := prof.get("idle"):
                gaps = ", ".join(f"{g['pair']} {g['ms_per_step']:.2f} ({g['gaps_per_step']:g})" for g in idle["by_pair"])
                print(f"  idle {idle['idle_ms_per_step']:.2f} ms per step, by the kernels around each gap "
                      f"(ms, gaps a step): {gaps}")
                for g in idle["by_kernels"]:
                    print(f"    {g['ms_per_step']:.3f} ms ({g['gaps_per_step']:g} a step): {g['pair']}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", type=int, nargs="+", default=[32], help="batch sizes: every model at each")
    p.add_argument("--T", type=int, default=512, help="sequence length in bytes")
    p.add_argument("--steps", type=int, default=8,
                   help="timed steps each way: synchronised one by one, then as many queued back to back (tok/s)")
    p.add_argument("--warmup", type=int, default=3, help=f"untimed steps (at least {MIN_COMPILE_WARMUP} compiled)")
    p.add_argument("--compile", choices=list(MODE_NAMES), nargs="+", default=None, metavar="MODE",
                   help="run every model in these modes instead of its own candidates (off, default, "
                        "reduce-overhead, max-autotune)")
    p.add_argument("--only", nargs="+", default=None, help="keep models whose name contains any of these")
    p.add_argument("--skip", nargs="+", default=None, help="then drop models whose name contains any of these")
    p.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak for MFU (default by GPU name)")
    p.add_argument("--graph", action="store_true",
                   help="also run each mode but reduce-overhead with the forward and backward replayed as one CUDA graph")
    p.add_argument("--profile", action="store_true",
                   help=f"after each row's timed steps, profile {PROFILE_STEPS} more: GPU time per step by kind of kernel, "
                        "and the GPU's idle time between kernels")
    p.add_argument("--sf-step", choices=["fused", "foreach"], nargs="+", default=["fused"],
                   help="Schedule-Free AdamW's step: rnnlab's fused kernel (rnnlab.train.sf_adamw, what `rnnlab "
                        "train` runs on CUDA) and/or schedulefree's own foreach step; each one a row (default: fused)")
    p.add_argument("--scan-against", default=None, metavar="FILE",
                   help="another copy of rnnlab/ops/scan/triton.py (e.g. an earlier commit's): each minGRU / "
                        "minLSTM row gets a twin row training with its scan kernels")
    p.add_argument("--e1-against", default=None, metavar="KEY=VALUE[,...]",
                   help="E1's kernel options (rnnlab.ops.elman.options.ElmanKernelOptions, e.g. heads_gluon=0): "
                        "each E1 row gets a twin row training with its Elman scans run that way")
    p.add_argument("--rows-against", type=int, default=None, metavar="LIMIT",
                   help="each compiled row gets a twin row compiled with row reductions persistent up to LIMIT "
                        "elements instead of the package's (1024: Inductor's own)")
    p.add_argument("--json", default=None, help="write the rows (each as it is measured), the meta and the targets here")
    p.add_argument("--commit", default=None, help="the code's git commit, when this copy is not a git checkout")
    args = p.parse_args(argv)
    against = None
    if args.scan_against:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from bench_kernels import scan_module_from

        against = scan_module_from(args.scan_against, "bench_models.py: --scan-against")

    e1_against = None
    if args.e1_against:
        try:
            e1_against = e1_kernels_with(e1_options(args.e1_against))
        except ValueError as e:
            p.exit(2, f"bench_models.py: error: {e}\n")
    if args.rows_against is not None and args.rows_against < 1:
        p.exit(2, f"bench_models.py: error: --rows-against must be a positive number of elements, got {args.rows_against}\n")
    if not torch.cuda.is_available():
        p.exit(2, "bench_models.py: error: needs a CUDA GPU (torch sees none)\n")
    from rnnlab.train.inductor import PERSISTENT_ROWS  # imports Inductor (seconds): here, not for bench_models' tests

    meta = run_meta(args.peak_tflops, args.commit, optimizer="Schedule-Free AdamW lr 3e-4 wd 0.1", weights="bf16",
                    steps=args.steps, loss_tol=LOSS_TOL, twin_factor=TWIN_FACTOR, twin_step=TWIN_STEP,
                    persistent_rows=PERSISTENT_ROWS, rows_against=args.rows_against, e1_against=args.e1_against,
                    power_limit_w=(nvidia_smi("power.limit") or [None])[0])
    peak = meta["peak_tflops"]
    def named(name, words):
        return any(w.lower() in name.lower() for w in words or ())

    todo = [m for m in MODELS if (not args.only or named(m[0], args.only)) and not named(m[0], args.skip)]
    if args.profile:  # CUDA graphs captured before the profiler first starts lose their kernels in its trace
        from torch.profiler._utils import _init_for_cuda_graphs

        _init_for_cuda_graphs()
    rows: list[dict] = []

    def run_row(label, cfgd, B, mode, sf_step, graphed, module, limit, twin=False):
        warmup = args.warmup if mode is OFF else max(args.warmup, MIN_COMPILE_WARMUP)
        try:
            with kernels(cfgd["model"], module):
                return bench(label, cfgd, B, args.T, args.steps, warmup, mode, args.profile and not twin, sf_step,
                             graphed, twin, limit)
        except Exception as e:  # noqa: BLE001 - report and continue with the next row
            torch._dynamo.reset()
            gc.collect()
            torch.cuda.empty_cache()
            return dict(name=label, mode=mode_name(mode, graphed), config=cfgd, B=B, T=args.T,
                        error=f"{type(e).__name__}: {e}")

    for name, cfgd, modes in todo:
        # the kernels of this model's --scan-against / --e1-against twin rows (None: no such rows), their mark
        twin_kernels, twin_suffix = ((against, SCAN_SUFFIX) if cfgd["model"] in SCAN_MODELS else
                                     (e1_against, E1_SUFFIX) if cfgd["model"] == "e1" else (None, ""))
        for B in args.batches:
            firsts: dict[str, tuple] = {}  # per row name: its first mode's row and how it was run
            counts: dict[str, int] = {}  # per row name: the modes run
            for mode, sf_step, graphed, module, limit in itertools.product(
                    [MODE_NAMES[m] for m in args.compile] if args.compile else modes, args.sf_step,
                    [False, True] if args.graph else [False], [None] if twin_kernels is None else [None, twin_kernels],
                    [None, args.rows_against] if args.rows_against else [None]):
                if graphed and mode == RO:  # its CUDA graphs cannot be captured inside another
                    continue
                if limit is not None and mode is OFF:  # nothing compiled: no twin
                    continue
                label = row_name(name, sf_step, "" if module is None else twin_suffix, limit is not None)
                r = run_row(label, cfgd, B, mode, sf_step, graphed, module, limit)
                firsts.setdefault(label, (r, (label, cfgd, B, mode, sf_step, graphed, module, limit)))
                counts[label] = counts.get(label, 0) + 1
                rows.append(r)
                print(json.dumps({k: v for k, v in r.items() if k != "losses"}), flush=True)
                if args.json:
                    write_json(args.json, dict(meta=meta, rows=rows))
            # the rounding twin of each first mode that other modes are compared with
            for label, (r, how) in firsts.items():
                if counts[label] > 1 and "error" not in r and not any(x in label for x in (SCAN_SUFFIX, E1_SUFFIX, ROWS_SUFFIX)):
                    t = run_row(*how, twin=True)
                    if "error" in t:
                        r["twin_error"] = t["error"]
                    else:
                        r["twin_losses"] = t["losses"]
                    print(json.dumps(dict(name=label, mode=r["mode"], rounding_twin=t.get("losses", t.get("error")))),
                          flush=True)
                    if args.json:
                        write_json(args.json, dict(meta=meta, rows=rows))
    annotate(rows, peak)
    print_table(meta, rows)
    found = targets(rows)
    print_targets(found)
    compare_twins(rows, FOREACH_SUFFIX, "foreach", "schedulefree's step")
    compare_twins(rows, SCAN_SUFFIX, "scan_against", "--scan-against's scan kernels")
    compare_twins(rows, E1_SUFFIX, "e1_against", f"E1's kernels with {args.e1_against}")
    compare_twins(rows, ROWS_SUFFIX, "rows_against", f"row reductions persistent up to {args.rows_against}")
    print_profiles(rows)
    if args.json:
        write_json(args.json, dict(meta=meta, rows=rows, targets=found))


if __name__ == "__main__":
    main()
