"""The measured bound of a model's training step at the board's power limit: the step's own GEMMs
with copies moving the bytes of its memory-bound work's floor between them, replayed back to back
as one CUDA graph, beside the model's real step, in one run (issue #19's MFU targets).

    python benchmarks/bench_bound.py [--only NAME ...] [--bound-only] [--model-operands] [--model-scans]
                                     [--scan-launches 64x1 256x4 ...] [--yardstick] [--profile]
                                     [--json results/x/bound.json]

Why: the GEMM-bound models' steps run at the board's power limit (``results/scoreboard-h200-1204``:
700 W, SM clock 1290–1680 of 1980 MHz), so a GEMM's speed depends on what runs around it: alone,
back to back, bf16 GEMMs ran at 658–685 TFLOP/s, between the step's memory-bound kernels at
736–750 (``results/tma-scans-h200``). Neither figure nor a sum of floors is the step's bound;
this script measures it. For each model of ``BOUND_MODELS``:

- **its GEMMs** (``record_gemms``): every matrix product of one training step, recorded from the
  model's forward and backward on the meta device at the benchmark's B and T (shapes, order,
  which operand is a transposed view, so cuBLAS runs the same layouts); their FLOPs are the
  6 · params · tokens that MFU counts (each row's ``gemm_share``);
- **its floor bytes** (``floor_bytes``): what its memory-bound work must read and write at least
  once, in passes over ``[B·T, width]`` bf16 tensors (``floor_passes``: the residual add and
  LayerNorm fused, 4 passes each way a layer; the scans' inputs and outputs, the gates around
  them; the final LayerNorm, embedding and logits; Schedule-Free AdamW's 7 passes over the
  parameters), moved by copies (``copy``: a Triton kernel; the meta gives torch's own copy's
  rate outside a graph, the bandwidth docs/kernels.md's floors are at), spread evenly after the
  forward's and the backward's GEMMs, the optimizer's after the last;
- **rows**, one run: the model's real step in its fastest mode (compiled + CUDA graph,
  ``bench_models.bench``: steps queued back to back after synced ones), ``floor step`` (GEMMs and
  floor copies), ``GEMMs alone``, ``copies alone`` (the floor's bytes at the copy's rate in this
  run). The three synthetic rows are one CUDA graph each, replayed for ``--warm-seconds``
  (the board settles at its power limit within ≈ 0.4 s) and then ``--steps`` times back to back
  (``bench_models.back_to_back``, with the SM clock and power while they run).

``floor step``'s MFU (6 · params · B·T over its time, over the GPU's dense bf16 peak) is the bound:
a step that ran every memory-bound pass once at a copy's bandwidth and nothing else between its
GEMMs, at the clock the board's power allows for that mix. It is not a proof: it leaves out work
run beside the GEMMs instead of between them, passes fused into the GEMMs, kernels faster than a
copy. Operands are random normal bf16, each shape's allocated once and shared by the layers; a
GEMM's power, so its speed at the power limit, depends on its data: ``--model-operands`` runs the
GEMM rows again on the operands of one eager step of the model (``model_operands``).
``--model-scans`` runs the floor step with the model's own scan kernels in place of the copies of
their bytes, and those kernels alone (``scan_kernels``): how much longer they make the step than
their time alone beyond their copies' says what they cost the GEMMs (a kernel that keeps the SMs
busy at a fraction of a copy's bandwidth may draw more of the board's power).
``--scan-launches`` repeats those two rows for minGRU's and minLSTM's scans at other launches
(channels and warps a program; over 128 channels the forward takes the pointer kernel, not TMA):
whether a launch slower alone costs less between the GEMMs, where the board's power is short.
E1's scans (dense and heads) hold its recurrence's matrix products, and E1 heads' gate
projection runs beside its scan inside the same op: for E1 the GEMMs recorded are those outside
the scan ops, and its bound is the floor step with its own scans (the plain floor step, with
copies in their place, would leave those products out, so it is not run). ``--yardstick`` times
Mamba2's own step first in the same run: dense E1's other target is ≥ 1.0× its speed.
``--profile`` adds the GPU time by kind of kernel of the model's step and the floor step (the
GEMMs' time in each), two steps each after the timed ones: indicative, as profiled steps start
from the profiler's pause.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import json
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

import torch
import triton
import triton.language as tl
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_kernels import ceilings, fused_scan_passes  # noqa: E402
from bench_models import (DEFAULT, MFU_TARGETS, MIN_COMPILE_WARMUP, MODELS, PROFILE_STEPS,  # noqa: E402
                          X_MAMBA2_TARGETS, back_to_back, bench, build, cuda_kernels, idle_time, kernel_breakdown,
                          kernel_spans, nvidia_smi, print_profiles, run_meta, write_json)

from rnnlab.bench.mfu import mfu, peak_note  # noqa: E402
from rnnlab.ops.elman.options import DEFAULT as E1_OPTIONS  # noqa: E402 - the options E1's layers run

# issue #19's MFU targets' rows: the ≥ 60% ones, dense E1's ≥ 30% (and ≥ 1.0x Mamba2), E1 heads' ≥ 55%
BOUND_MODELS = ("minGRU 3520x16", "minLSTM 2880x16", "E16 s4 1024x10 e2", "E1 d26 dense", "E1 heads 14x128 d31")
SCANS_HOLD_PRODUCTS = ("e1",)  # model kinds whose recurrence's matrix products run inside their scan kernels
YARDSTICK = "Mamba2 d22"  # the model X_MAMBA2_TARGETS' ratios are to (``--yardstick``)
EL = 2  # bytes an element: pure bf16 training
NORM_PASSES = (4, 4)  # a layer's residual add + LayerNorm, fused: forward (read x, mixer out; write x, normed), backward
OPTIMIZER_PASSES = 7  # Schedule-Free AdamW: reads y, z, the second moment, the gradient; writes three of them
ATEN_MM = (torch.ops.aten.mm.default, torch.ops.aten.addmm.default)
# matrix products that are not a plain GEMM: with a vector operand (E1's spectral norm: memory-bound,
# their bytes join the floor) or a recurrence's step (``record_gemms``); any other is refused
OTHER_PRODUCTS = tuple(getattr(torch.ops.aten, op).default for op in ("bmm", "baddbmm", "mv", "addmv", "dot"))


@dataclasses.dataclass(frozen=True)
class Gemm:
    """One matrix product ``a @ b`` of shapes ``[m, k] @ [k, n]``; ``a_t`` / ``b_t``: that operand
    was a transposed view (column-major), as the backward's products of weights and activations are."""

    m: int
    k: int
    n: int
    a_t: bool
    b_t: bool

    @property
    def flops(self) -> int:
        return 2 * self.m * self.k * self.n


def _transposed(t: torch.Tensor) -> bool:
    return t.dim() == 2 and t.stride(0) == 1 and t.size(0) > 1


def _dims(func, a: torch.Tensor, b: torch.Tensor) -> tuple[int, int, int]:
    """``(m, k, n)`` of a product of ``OTHER_PRODUCTS`` or ``ATEN_MM`` (a vector's missing side 1)."""
    return (a.size(-2) if a.dim() > 1 else 1, a.size(-1), b.size(-1) if b.dim() > 1 else 1)


class _RecordGemms(TorchDispatchMode):
    """Records the step's GEMMs over its tokens (``m`` or ``k`` = ``tokens``); the bytes of its
    products with a vector operand (``vector_bytes``: operands read, output written); refuses any
    other product (a recurrence's per-step products belong in its scan op, ``record_gemms``)."""

    def __init__(self, tokens: int, keep: bool = False):
        super().__init__()
        self.gemms: list[Gemm] = []
        self.operands: list[tuple[torch.Tensor, torch.Tensor]] = []  # copies of them, with ``keep``
        self.vector_bytes = 0
        self.tokens, self.keep = tokens, keep

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in ATEN_MM or func in OTHER_PRODUCTS:
            a, b = args[-2:]  # addmm(bias, a, b)
            m, k, n = _dims(func, a, b)
            if 1 in (m, k, n):
                self.vector_bytes += sum(t.numel() * t.element_size() for t in (a, b, out))
            elif func in ATEN_MM and self.tokens in (m, k):
                self.gemms.append(Gemm(m, k, n, _transposed(a), _transposed(b)))
                if self.keep:  # clone keeps a transposed view's strides
                    self.operands.append((a.detach().clone(), b.detach().clone()))
            else:
                raise ValueError(f"{func} of [{m}, {k}] @ [{k}, {n}] in the step: bench_bound.py times "
                                 f"GEMMs over the step's {self.tokens} tokens only")
        return out


@contextlib.contextmanager
def _scans_as_on_a_gpu():
    """E1's scans run as their custom ops, the ops a GPU runs (on the meta device their fakes, which
    compute nothing), so that a recorded step holds the GEMMs outside the scan kernels only: the
    recurrence's products (``h W_h^T`` forward, ``dh W_h`` and ``dW_h`` backward; E1 heads' gate
    projection, forward and backward, beside the scan) are those kernels' work (``scan_kernels``)."""
    from rnnlab.ops import elman

    kernels = importlib.import_module("rnnlab.ops.elman.triton")  # the GPU's implementations, and their ops

    def scan_beside(wx, w_h, x, wl):  # the op itself: its entry point asks autocast about x's device, meta
        h, z = torch.ops.rnnlab.elman_scan_beside_fwd(wx, w_h, x, wl, E1_OPTIONS.to_ints())
        return h, None, z

    with (mock.patch.object(elman.ELMAN_SCAN, "implementation", lambda *_: kernels.elman_scan),
          mock.patch.object(elman.ELMAN_SCAN_BESIDE_LINEAR, "implementation", lambda *_: scan_beside)):
        yield


def _recorded_step(cfgd: dict, B: int, T: int, device: str, keep: bool = False):
    torch.manual_seed(0)
    with torch.device(device):
        model = build(cfgd).to(torch.bfloat16)
    x = torch.randint(0, 256, (B, T + 1), device=device)
    scans = _scans_as_on_a_gpu() if cfgd["model"] in SCANS_HOLD_PRODUCTS else contextlib.nullcontext()
    with scans:
        with _RecordGemms(B * T, keep) as fwd:
            loss = model(x[:, :-1], x[:, 1:])
        with _RecordGemms(B * T, keep) as bwd:
            loss.backward()
    return fwd, bwd, sum(p.numel() for p in model.parameters())


def record_gemms(cfgd: dict, B: int, T: int) -> tuple[list[Gemm], list[Gemm], int, tuple[int, int]]:
    """``(forward GEMMs, backward GEMMs, params, vector bytes)`` of one training step of
    ``bench_models.build(cfgd)`` in bf16 at batch ``B`` × ``T`` bytes, recorded on the meta device
    (no memory, no arithmetic): the GEMMs over the step's tokens; the bytes its products with a
    vector operand move, forward and backward (E1's spectral norm: memory-bound work of the floor,
    ``floor_bytes``). minGRU's, minLSTM's and E16's recurrences take their PyTorch references
    there, which hold no product; E1's run as its scan ops (``_scans_as_on_a_gpu``), whose
    kernels do the recurrence's products."""
    fwd, bwd, params = _recorded_step(cfgd, B, T, "meta")
    return fwd.gemms, bwd.gemms, params, (fwd.vector_bytes, bwd.vector_bytes)


def model_operands(cfgd: dict, B: int, T: int, device: str = "cuda") -> tuple[list, list]:
    """``(forward, backward)``: copies of the operands of every GEMM of one eager training step of
    the model (seed 0, random bytes) on ``device``, in ``record_gemms``' order: a GEMM's power, so
    its speed at the power limit, depends on its data, and random normal operands are not the model's."""
    fwd, bwd, _ = _recorded_step(cfgd, B, T, device, keep=True)
    return fwd.operands, bwd.operands


def floor_passes(cfgd: dict) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """``(forward, backward)``: the whole model's memory-bound floor as ``(passes, width)`` pairs,
    each a read or write of a ``[B·T, width]`` tensor (``floor_bytes`` sizes them); the optimizer apart."""
    dim, depth, layer = cfgd["dim"], cfgd["depth"], cfgd.get("layer", {})
    di = int(dim * layer.get("expansion", 1.0))
    kind = cfgd["model"]
    scan_fwd, scan_bwd = scan_passes(cfgd)
    if kind in ("mingru", "minlstm"):  # the fused gate + scan kernels: the gates are inside the scan
        mixer_fwd, mixer_bwd = [scan_fwd], [scan_bwd]
    elif kind == "e16":  # forward silu(x) (read, write) and y = hC * silu(z) (read both, write); backward
        # the gate's (read dy, hC, z; write d(hC), dz) and silu's (read, read, write)
        mixer_fwd, mixer_bwd = [(2 + 3, di), scan_fwd], [(5 + 3, di), scan_bwd]
    else:  # e1: as e16's gates over di, and backward the bias's gradient (read dL/dwx once); with
        # heads the normed input's gradient comes in two parts (in_proj's half and the gate's
        # projection beside the scan), one more read of dim
        mixer_fwd, mixer_bwd = [(2 + 3, di), scan_fwd], [(5 + 3 + 1, di), scan_bwd]
        if layer.get("heads", 1) > 1:
            mixer_bwd.append((1, dim))
    per_layer = lambda passes, mixer: [(passes, dim)] + mixer  # noqa: E731
    forward = [(p * depth, w) for p, w in per_layer(NORM_PASSES[0], mixer_fwd)]
    backward = [(p * depth, w) for p, w in per_layer(NORM_PASSES[1], mixer_bwd)]
    # the embedding's output (write; backward read), the final LayerNorm (read, write; backward 3),
    # the logits (written by the head's GEMM, read by the loss; backward their gradient written)
    forward += [(1 + 2, dim), (1, 256)]
    backward += [(1 + 3, dim), (1, 256)]
    return forward, backward


def scan_passes(cfgd: dict) -> tuple[tuple[int, int], tuple[int, int]]:
    """``(forward, backward)``: a layer's scan's floor as ``(passes, width)``: minGRU's / minLSTM's
    fused gate + scan kernels (``bench_kernels.fused_scan_passes``), E16's diagonal scan (forward
    read u, write h; backward read dh, h, write du) over its state width, and E1's at its defaults
    but heads (the same over di). E1's recurrent weight's own passes, a few MB a layer, are
    counted roughly: its spectral norm's products with a vector each a read of W_h
    (``record_gemms``; consecutive ones may hit L2 instead), its rescaling ``W_h · r / σ`` and that
    product's backward (about as many bytes again) not at all."""
    kind, layer = cfgd["model"], cfgd.get("layer", {})
    di = int(cfgd["dim"] * layer.get("expansion", 1.0))
    if kind in ("mingru", "minlstm"):
        fwd, bwd = fused_scan_passes(1 if kind == "mingru" else 2)
        return (fwd, di), (bwd, di)
    if kind == "e16":
        ds = di * layer.get("state_expansion", 2)
        return (2, ds), (3, ds)
    if kind == "e1" and set(layer) <= {"heads", "expansion", "backend"}:
        return (2, di), (3, di)
    raise ValueError(f"no floor accounting for model {kind!r} {layer} (bench_bound.py knows {BOUND_MODELS})")


def floor_bytes(cfgd: dict, params: int, B: int, T: int, vector_bytes: tuple[int, int] = (0, 0)) -> dict[str, int]:
    """The bytes the step's memory-bound work moves at least: ``forward``, ``backward`` (each with
    its products' with a vector operand, ``record_gemms``) and ``optimizer``; ``scans_forward`` /
    ``scans_backward``: the scans' share of the first two."""
    fwd, bwd = floor_passes(cfgd)
    size = lambda pairs: sum(p * w for p, w in pairs) * B * T * EL  # noqa: E731
    scan_fwd, scan_bwd = scan_passes(cfgd)
    return dict(forward=size(fwd) + vector_bytes[0], backward=size(bwd) + vector_bytes[1],
                optimizer=OPTIMIZER_PASSES * params * EL,
                scans_forward=size([scan_fwd]) * cfgd["depth"], scans_backward=size([scan_bwd]) * cfgd["depth"])


def scan_kernels(cfgd: dict, B: int, T: int, device: str = "cuda", launch: tuple[int, int] | None = None,
                 dtype: torch.dtype = torch.bfloat16) -> tuple[list, list]:
    """``(forward, backward)``: the model's own scan kernels (the package's ops, as its layers call
    them), one call a layer each way, on random inputs at its shapes: ``FloorStep`` runs them in
    place of the copies of their floor's bytes, to see what the real kernels cost between the
    GEMMs (their time, and the power they leave the GEMMs). ``launch`` (minGRU, minLSTM):
    ``(channels, warps)`` a program instead of the package's launch (``--scan-launches``); those
    calls return their outputs (``h``, the projection's gradient). E1's scans hold the
    recurrence's products (the recurrent weight's gradient included) and, with heads, the gate's
    projection beside the scan, forward and backward (as the model runs them: ``record_gemms``
    leaves those products to them). ``dtype``: the inputs' (tests on a CPU take fp32: Triton's
    interpreter multiplies the bit patterns of bf16 ``tl.dot`` operands, triton-lang/triton#11584,
    so E1's kernels there are wrong in bf16)."""
    kind, layer = cfgd["model"], cfgd.get("layer", {})
    di = int(cfgd["dim"] * layer.get("expansion", 1.0))
    g = torch.Generator(device=device).manual_seed(1)

    def rand(*shape):
        return torch.randn(shape, generator=g, device=device, dtype=dtype)

    if kind in ("mingru", "minlstm"):
        importlib.import_module("rnnlab.ops.scan.triton")  # registers the ops

        mode = 1 if kind == "mingru" else 2
        p, grad = rand(B, T, (mode + 1) * di), rand(B, T, di)
        h = torch.ops.rnnlab.linear_scan_fwd(mode, p, None, None)
        if launch is None:
            fwd, bwd = (lambda: torch.ops.rnnlab.linear_scan_fwd(mode, p, None, None),
                        lambda: torch.ops.rnnlab.linear_scan_bwd(mode, grad, p, h, None))
        else:  # the same kernels launched as bench_kernels.py's sweep launches them
            st, (block, warps) = sys.modules["rnnlab.ops.scan.triton"], launch
            ptrs, out, dp = st._views(p, mode + 1, di), torch.empty_like(h), torch.empty_like(p)
            outs, dh0 = st._views(dp, mode + 1, di), torch.zeros(B, di, device=device)
            fwd, bwd = (lambda: (st.launch_forward(ptrs, p.shape[2], ptrs[0], out, mode, False, block, warps), out)[1],
                        lambda: (st.launch_backward(ptrs, p.shape[2], h, h, grad, outs, dh0, mode, False, block, warps),
                                 dp)[1])
    elif kind == "e16" and launch is None:
        importlib.import_module("rnnlab.ops.diag.triton")  # registers the ops

        ds = di * layer.get("state_expansion", 2)
        u, grad, a = rand(B, T, ds), rand(B, T, ds), torch.full((ds,), 0.5, device=device, dtype=dtype)
        h = torch.ops.rnnlab.diag_elman_fwd(u, a, None)
        fwd, bwd = (lambda: torch.ops.rnnlab.diag_elman_fwd(u, a, None),
                    lambda: torch.ops.rnnlab.diag_elman_bwd(grad, a, h, None))
    elif kind == "e1" and launch is None:
        importlib.import_module("rnnlab.ops.elman.triton")  # registers the ops

        opts, heads = E1_OPTIONS.to_ints(), layer.get("heads", 1)
        w = rand(heads, di // heads, di // heads).float()  # each head's spectral norm 0.99, as the layer's:
        w = (w * 0.99 / torch.linalg.matrix_norm(w, ord=2)[:, None, None]).to(dtype)  # states that
        w = w if heads > 1 else w[0]  # neither saturate nor vanish, so gradients (and power) are a model's
        wx, grad = rand(B, T, di) / 2, rand(B, T, di)
        if heads > 1:  # the gate's projection z = x W_z^T beside the scan (E1 heads' forward)
            x, wz, gz = rand(B, T, cfgd["dim"]), rand(di, cfgd["dim"]) / cfgd["dim"] ** 0.5, rand(B, T, di)
            h, _ = torch.ops.rnnlab.elman_scan_beside_fwd(wx, w, x, wz, opts)
            fwd, bwd = (lambda: torch.ops.rnnlab.elman_scan_beside_fwd(wx, w, x, wz, opts),
                        lambda: torch.ops.rnnlab.elman_scan_beside_bwd(grad, w, h, x, wz, gz, True, True, True, opts))
        else:
            h = torch.ops.rnnlab.elman_scan_fwd(wx, w, None, opts)
            fwd, bwd = (lambda: torch.ops.rnnlab.elman_scan_fwd(wx, w, None, opts),
                        lambda: torch.ops.rnnlab.elman_scan_bwd(grad, w, h, None, True, opts))
    else:
        raise ValueError(f"no scan kernels for model kind {kind!r}{' at another launch' if launch else ''} "
                         f"(bench_bound.py knows {BOUND_MODELS})")
    return [fwd] * cfgd["depth"], [bwd] * cfgd["depth"]


@triton.jit
def _copy(src, dst, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(dst + offs, tl.load(src + offs, mask=mask), mask=mask)


COPY_BLOCK, COPY_WARPS = 8192, 8  # 16-byte loads and stores, four each a thread in bf16


def copy(dst: torch.Tensor, src: torch.Tensor) -> None:
    """``dst.copy_(src)`` as a kernel on the SMs on CUDA: in a CUDA graph, torch's copy of one
    contiguous tensor into another becomes a memcpy node, which ran at ≈ 2.7 TB/s on an H200
    against ≈ 3.9 for a kernel (``results/bound-h200``)."""
    if src.device.type != "cuda":
        dst.copy_(src)
        return
    n = src.numel()
    _copy[(triton.cdiv(n, COPY_BLOCK),)](src, dst, n, BLOCK=COPY_BLOCK, num_warps=COPY_WARPS)


class FloorStep:
    """The synthetic step: ``forward`` GEMMs, then ``backward``'s, each followed by a copy of an
    equal share of that half's floor bytes (``gemms`` / ``copies`` False: leave them out), then the
    optimizer's bytes; operands random normal, allocated once a shape, or ``operands`` (the model's,
    ``model_operands``); each copy a multiple of ``align`` elements. ``kernels`` (``scan_kernels``:
    a forward and a backward list of calls): run spread over each half's GEMMs, in place of the
    copies of the scans' bytes. ``moved``: bytes a call copies; ``scan_bytes``: the scans' floor
    bytes, when ``kernels`` run."""

    def __init__(self, forward: list[Gemm], backward: list[Gemm], floor: dict[str, int], device,
                 gemms: bool = True, copies: bool = True, dtype=torch.bfloat16, align: int = COPY_BLOCK,
                 operands: tuple[list, list] | None = None, kernels: tuple[list, list] | None = None):
        g = torch.Generator(device=device).manual_seed(0)
        made: dict[tuple, torch.Tensor] = {}

        def operand(rows, cols, transposed):
            key = (rows, cols, transposed)
            if key not in made:
                shape = (cols, rows) if transposed else (rows, cols)
                t = torch.randn(shape, generator=g, device=device, dtype=dtype)
                made[key] = t.t() if transposed else t
            return made[key]

        def products(half, given):
            pairs = given or [(operand(x.m, x.k, x.a_t), operand(x.k, x.n, x.b_t)) for x in half]
            return [(a, b, torch.empty(a.size(0), b.size(1), device=device, dtype=dtype)) for a, b in pairs] if gemms else []

        def shares(total, count):  # elements a copy, `count` copies moving `total` bytes (read + write),
            # whole blocks: a copy of a length Triton cannot prove a multiple of 16 loads an element at a time
            return [total // (2 * EL * count) // align * align] * count if copies else []

        def placed(calls, slots):  # each call after the GEMM it falls at, spread evenly
            after = [[] for _ in range(slots)]
            for j, call in enumerate(calls):
                after[j * slots // len(calls)].append(call)
            return after

        given = operands or (None, None)
        scans = ("scans_forward", "scans_backward") if kernels else (None, None)
        self.work = [(products(half, given[i]), shares(floor[key] - floor.get(scans[i], 0), len(half)),
                      placed(kernels[i], len(half)) if kernels else [])
                     for i, (half, key) in enumerate(((forward, "forward"), (backward, "backward")))]
        self.work.append(([], shares(floor["optimizer"], 1), []))
        self.scan_bytes = floor["scans_forward"] + floor["scans_backward"] if kernels else 0
        largest = max((n for _, ns, _ in self.work for n in ns), default=0)
        self.src = torch.randn(largest, generator=g, device=device, dtype=dtype)
        self.dst = torch.empty_like(self.src)
        self.moved = sum(2 * EL * n for _, ns, _ in self.work for n in ns)
        self.flops = sum(x.flops for x in forward + backward) if gemms else 0

    def verify(self) -> bool:
        """After a call: each half's last GEMM holds its product (to bf16's rounding), and the
        copy destination its source as far as the last copy reached."""
        products = [gemms[-1] for gemms, _, _ in self.work if gemms]
        last = [ns[-1] for _, ns, _ in self.work if ns][-1:]
        return (all(torch.allclose(out.float(), (a @ b).float(), rtol=2e-2, atol=1e-2 * a.size(1) ** 0.5)
                    for a, b, out in products)
                and all(torch.equal(self.dst[:n], self.src[:n]) for n in last))

    def __call__(self) -> None:
        for gemms, copies, calls in self.work:
            for i in range(max(len(gemms), len(copies), len(calls))):
                if i < len(gemms):
                    a, b, out = gemms[i]
                    torch.mm(a, b, out=out)
                if i < len(copies):
                    copy(self.dst[:copies[i]], self.src[:copies[i]])
                for call in calls[i] if i < len(calls) else ():
                    call()


def sustained(step, steps: int, warm_seconds: float, profile: bool = False) -> dict:
    """``step`` captured as one CUDA graph, replayed for ``warm_seconds`` and then ``steps`` times
    back to back: the median step time (ms), SM clock (MHz) and board power (W) while they ran;
    ``profile``: then ``PROFILE_STEPS`` more under ``torch.profiler``, the GPU time by kind of kernel
    (``bench_models.kernel_breakdown``: the GEMMs are "matmul", the copies "other")."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # capture's warm-up: cuBLAS picks its kernels and workspace
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    end = time.perf_counter() + warm_seconds
    while time.perf_counter() < end:
        graph.replay()
        torch.cuda.synchronize()
    done = torch.zeros((), device="cuda")
    times, _, clocks = back_to_back(lambda _: (graph.replay(), done)[1], [done], steps, 0)
    out = dict(step_ms=round(statistics.median(times) * 1e3, 3),
               sm_mhz=round(statistics.median(c[0] for c in clocks)) if clocks else None,
               power_w=round(statistics.median(c[1] for c in clocks)) if clocks else None)
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(PROFILE_STEPS):
                graph.replay()
            torch.cuda.synchronize()
        out["profile"] = kernel_breakdown(cuda_kernels(prof), PROFILE_STEPS)
        out["profile"]["idle"] = idle_time(kernel_spans(prof), PROFILE_STEPS)
    return out


# (row, GEMMs, copies, the model's scans in place of their bytes' copies)
SYNTHETIC = (("floor step", True, True, False), ("GEMMs alone", True, False, False), ("copies alone", False, True, False))
MODEL_OPERANDS = " [model's operands]"  # the row name of a synthetic step on the model's own GEMM operands
WITH_SCANS = (("floor step, the model's scans", True, True, True), ("scans alone", False, False, True))


def launch_name(launch: tuple[int, int]) -> str:
    """A scan launch's row suffix: `` [64 x 1]`` (channels and warps a program)."""
    return f" [{launch[0]} x {launch[1]}]"


def row_plan(kind: str, with_model_operands: bool = False, with_scans: bool = False,
             scan_launches: tuple[tuple[int, int], ...] = ()) -> list[tuple[str, bool, bool, object, bool]]:
    """The synthetic rows ``bound_rows`` runs for a model of ``kind``, in order: ``(row, GEMMs,
    copies, scans, on the model's operands)``, ``scans`` False, True (the package's launch) or a
    ``(channels, warps)`` launch. The first is the model's bound (``print_table``): the plain
    floor step, or for E1 (``SCANS_HOLD_PRODUCTS``) the floor step with its own scans, which it
    always runs (the plain one, with copies in the scans' place, would leave the recurrence's
    products out, so it is not run)."""
    holds = kind in SCANS_HOLD_PRODUCTS
    scan_rows = [(what, gemms, copies, scans, False) for what, gemms, copies, scans in WITH_SCANS]
    synthetic = [(what, gemms, copies, scans, False) for what, gemms, copies, scans in SYNTHETIC
                 if not (holds and what == "floor step")]
    plan = (scan_rows[:1] + synthetic + scan_rows[1:]) if holds else synthetic
    if with_model_operands:
        plan += [(what + MODEL_OPERANDS, gemms, copies, scans, True) for what, gemms, copies, scans, _ in synthetic
                 if gemms]
    if with_scans and not holds:
        plan += scan_rows
    if kind in ("mingru", "minlstm"):
        plan += [(what + launch_name(launch), gemms, copies, launch, False)
                 for launch in scan_launches for what, gemms, copies, _ in WITH_SCANS]
    return plan


def bound_rows(name: str, cfgd: dict, B: int, T: int, steps: int, warm_seconds: float, peak: float,
               profile: bool = False, with_model_operands: bool = False, with_scans: bool = False,
               scan_launches: tuple[tuple[int, int], ...] = ()):
    """The synthetic rows of one model (``row_plan``), each with its MFU at the model's params,
    one at a time, the first marked ``bound`` (``profile``: the floor steps' GPU time by kind of
    kernel too; ``with_model_operands``: the GEMM rows again on the model's own operands,
    ``MODEL_OPERANDS``; ``with_scans``: ``WITH_SCANS``, the floor step with the model's scan
    kernels, and those alone; ``scan_launches``: ``WITH_SCANS`` again for each of these launches of
    minGRU's and minLSTM's scans, ``launch_name`` after the row's name)."""
    forward, backward, params, vector_bytes = record_gemms(cfgd, B, T)
    floor = floor_bytes(cfgd, params, B, T, vector_bytes)
    holds = cfgd["model"] in SCANS_HOLD_PRODUCTS
    plan = row_plan(cfgd["model"], with_model_operands, with_scans, scan_launches)
    ops = model_operands(cfgd, B, T) if with_model_operands else None
    for what, gemms, copies, scans, own in plan:
        launch = scans if isinstance(scans, tuple) else None
        step = FloorStep(forward, backward, floor, "cuda", gemms, copies, operands=ops if own else None,
                         kernels=scan_kernels(cfgd, B, T, launch=launch) if scans else None)
        step()
        r = dict(name=name, row=what, params=params, B=B, T=T, verified=step.verify(), bound=what == plan[0][0],
                 floor_gb={k: round(v / 1e9, 3) for k, v in floor.items()},
                 gemm_share=round(sum(x.flops for x in forward + backward) / (6 * params * B * T), 4),
                 **sustained(step, steps, warm_seconds, profile and gemms and (copies or scans)))
        seconds = r["step_ms"] / 1e3
        if gemms:  # a step of the model's FLOPs; copies alone are a rate, not a step
            r["tok_per_s"] = round(B * T / seconds)
            r["mfu"] = mfu(params, r["tok_per_s"], peak)
            if not (holds and scans):  # E1's scans do FLOPs the recorded GEMMs leave out
                r["gemm_tflops"] = round(step.flops / seconds / 1e12, 1)
        elif copies:
            r["copy_gbps"] = round(step.moved / seconds / 1e9)
        elif not holds:  # the scans alone: their floor's bytes over their time (not E1's: they do FLOPs too)
            r["scan_gbps"] = round(step.scan_bytes / seconds / 1e9)
        del step
        torch.cuda.empty_cache()
        yield r


def model_row(name: str, cfgd: dict, args, peak: float) -> dict:
    """The model's own step compiled + CUDA graph, as ``bench_models.py`` times it: the fastest mode of
    each bound model but minGRU (compiled alone there, within 1% of compiled + graph) and of Mamba2
    in ``results/scoreboard-h200-1204``."""
    r = bench(name, cfgd, args.B, args.T, args.steps, MIN_COMPILE_WARMUP, DEFAULT, graphed=True, profile=args.profile)
    r.update(row="model step", mfu=mfu(r["params"], r["tok_per_s"], peak))
    r.pop("losses")
    return r


def run_order(names: list[str], bound_only: bool, yardstick: bool) -> list[tuple[str, bool, bool]]:
    """``(model, its own step, its bound's rows)`` for each model ``main`` runs, in order: with
    ``yardstick`` first ``YARDSTICK``'s own step (even with ``bound_only``: it is a ratio's
    denominator), then each of ``names``, its own step unless ``bound_only``."""
    return [(YARDSTICK, True, False)] * yardstick + [(n, not bound_only, True) for n in names]


def print_table(rows: list[dict]) -> None:
    print(f"\n{'model':20} {'row':40} {'step ms':>8} {'tok/s':>9} {'MFU':>6} {'TFLOP/s':>8} {'GB/s':>6} {'MHz':>5} {'W':>4}")
    for r in rows:
        if "error" in r:
            print(f"{r['name']:20} {r['row']:40} error: {r['error']}")
            continue
        cell = lambda k, f="": "" if r.get(k) is None else format(r[k], f)  # noqa: E731
        print(f"{r['name']:20} {r['row']:40} {r['step_ms']:8.2f} {cell('tok_per_s', ','):>9} {cell('mfu', '.1%'):>6} "
              f"{cell('gemm_tflops'):>8} {cell('copy_gbps') or cell('scan_gbps'):>6} {cell('sm_mhz'):>5} {cell('power_w'):>4}")
    yardstick = next((r for r in rows if r["name"] == YARDSTICK and r["row"] == "model step" and "error" not in r),
                     None)
    for name in dict.fromkeys(r["name"] for r in rows):
        got = {r["row"]: r for r in rows if r["name"] == name and "error" not in r}
        floor = next((r for r in got.values() if r.get("bound")), None)  # row_plan's first row
        if floor is None:
            continue
        line = f"{name}: bound {floor['mfu']:.1%} MFU"
        if floor["row"] != "floor step":
            line += " (with its own scans)"
        if name in MFU_TARGETS:  # the step time the target allows, from the bound's own MFU and time
            allowed = floor["step_ms"] * floor["mfu"] / MFU_TARGETS[name]
            line += (f"; its target {MFU_TARGETS[name]:.0%} needs a step of {allowed:.2f} ms, "
                     f"{allowed - floor['step_ms']:+.2f} ms on the floor step")
        if name in X_MAMBA2_TARGETS and yardstick:
            line += (f"; the floor step is {yardstick['step_ms'] / floor['step_ms']:.3f}x {YARDSTICK}'s step "
                     f"({yardstick['step_ms']:.2f} ms, this run; target {X_MAMBA2_TARGETS[name]:.1f}x)")
        if "model step" in got:
            line += f"; the model's step takes {got['model step']['step_ms'] / floor['step_ms']:.3f}x the floor step"
        print(line)
        if floor["row"] != "floor step":
            continue
        launches = [""] + [r["row"][len(WITH_SCANS[1][0]):] for r in got.values()
                           if r["row"].startswith(WITH_SCANS[1][0] + " [")]
        for suffix in launches:  # what the real scans cost between the GEMMs, against alone
            scans, alone = got.get(WITH_SCANS[0][0] + suffix), got.get(WITH_SCANS[1][0] + suffix)
            if scans and alone and "copies alone" in got:
                floor_scans = floor["floor_gb"]["scans_forward"] + floor["floor_gb"]["scans_backward"]
                copied = floor_scans * 1e3 / got["copies alone"]["copy_gbps"]  # ms their bytes take as copies
                power = f" at {alone['power_w']} W" if alone.get("power_w") else ""
                print(f"  the model's scans{suffix}: {scans['step_ms'] - floor['step_ms']:+.2f} ms on the floor step; "
                      f"alone {alone['step_ms']:.2f} ms{power}, {alone['step_ms'] - copied:+.2f} ms on their bytes' copies")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="+", default=None, help=f"keep models whose name contains any of these (of {', '.join(BOUND_MODELS)})")
    p.add_argument("--B", type=int, default=32, help="batch size")
    p.add_argument("--T", type=int, default=512, help="sequence length in bytes")
    p.add_argument("--steps", type=int, default=20, help="steps timed back to back, each row")
    p.add_argument("--warm-seconds", type=float, default=3.0,
                   help="replay each synthetic step this long before timing (the board reaches its power limit)")
    p.add_argument("--bound-only", action="store_true",
                   help="leave out the models' own steps (no compiling; --yardstick's step still runs)")
    p.add_argument("--model-operands", action="store_true",
                   help="also run the GEMM rows on the model's own operands (one eager step's) instead of random ones")
    p.add_argument("--model-scans", action="store_true",
                   help="also run the floor step with the model's own scan kernels in place of their bytes' copies, "
                        "and those kernels alone (their time and the power they leave the GEMMs)")
    p.add_argument("--scan-launches", nargs="+", default=[], metavar="CHANNELSxWARPS",
                   help="minGRU and minLSTM: the --model-scans rows again with their scans launched at these "
                        "channels and warps a program (e.g. 64x1, the package's, 256x4): what each costs "
                        "between the GEMMs, and its power alone")
    p.add_argument("--yardstick", action="store_true",
                   help=f"also time {YARDSTICK}'s own step (compiled + CUDA graph) first, in the same run: "
                        "dense E1's speed target is a ratio to it")
    p.add_argument("--profile", action="store_true",
                   help="profile the model's step and the floor step (after their timed steps, at the power limit): "
                        "GPU time by kind of kernel, the GEMMs' time in each")
    p.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak for MFU (default by GPU name)")
    p.add_argument("--json", default=None, help="write the rows (each as it is measured) and the meta here")
    p.add_argument("--commit", default=None, help="the code's git commit, when this copy is not a git checkout")
    args = p.parse_args(argv)
    try:
        launches = tuple(tuple(int(v) for v in x.lower().split("x")) for x in args.scan_launches)
    except ValueError:
        launches = ((),)
    if any(len(x) != 2 or min(x) < 1 for x in launches):
        p.exit(2, f"bench_bound.py: error: --scan-launches takes CHANNELSxWARPS, e.g. 64x1 (got "
                  f"{' '.join(args.scan_launches)})\n")
    names = [n for n in BOUND_MODELS if not args.only or any(w.lower() in n.lower() for w in args.only)]
    if not names:
        p.exit(2, f"bench_bound.py: error: --only {' '.join(args.only)} matches none of {', '.join(BOUND_MODELS)}\n")
    if not torch.cuda.is_available():
        p.exit(2, "bench_bound.py: error: needs a CUDA GPU (torch sees none)\n")
    bw, fl = ceilings()
    meta = run_meta(args.peak_tflops, args.commit, copy_gbps_eager=round(bw / 1e9), gemm_tflops_8192=round(fl / 1e12, 1),
                    power_limit_w=(nvidia_smi("power.limit") or [None])[0])
    peak = meta["peak_tflops"]
    if args.profile:  # CUDA graphs captured before the profiler first starts lose their kernels in its trace
        from torch.profiler._utils import _init_for_cuda_graphs

        _init_for_cuda_graphs()
    rows: list[dict] = []
    configs = {n: c for n, c, _ in MODELS}
    for name, own, bound in run_order(names, args.bound_only, args.yardstick):
        cfgd = configs[name]
        parts = [("model step", lambda: [model_row(name, cfgd, args, peak)])] if own else []
        if bound:
            parts.append(("floor step", lambda: bound_rows(name, cfgd, args.B, args.T, args.steps, args.warm_seconds,
                                                           peak, args.profile, args.model_operands,
                                                           args.model_scans, launches)))
        for what, run in parts:
            try:
                for r in run():  # each row kept as it comes: a later failure loses none
                    rows.append(r)
                    print(json.dumps(r), flush=True)
            except Exception as e:  # noqa: BLE001 - report and continue with the next
                rows.append(dict(name=name, row=what, error=f"{type(e).__name__}: {e}"))
                print(json.dumps(rows[-1]), flush=True)
            torch.cuda.empty_cache()
            if args.json:
                write_json(args.json, dict(meta=meta, rows=rows))
    print_table(rows)
    print(peak_note(meta))
    print_profiles([dict(r, mode=r["row"]) for r in rows if "profile" in r])


if __name__ == "__main__":
    main()
