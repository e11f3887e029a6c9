"""E1's kernels beside their peers, per layer, same shapes, same run: forward and
forward+backward time and model-FLOPs utilisation at B=32, T=512, bf16.

    python benchmarks/bench_peers.py [--B 32] [--T 512] [--reps 10] [--only TEXT ...] [--skip TEXT ...]
                                     [--json results/x/peers.json]

Two sections, every row from the same seeded inputs:

* **recurrence** (``wx = x W_x^T + b`` given; the Elman recurrence only, forward and all
  gradients): rnnlab's E1 kernels as the package runs them (dense: on Hopper the wgmma CUDA
  kernel, elsewhere the persistent one, and the per-step Triton kernel they fall back to; heads
  14x128 and 28x64: the Gluon kernels on Hopper, else Triton's; the selective decay and low-rank
  r=8 scans),
  FlashRNN's Elman (NX-AI; ``cuda``, the alternating
  cuBLAS + pointwise backend, and ``cuda_fused``; FlashRNN's ``R`` is our ``W_h`` per head,
  untransposed), and a per-timestep cuBLAS loop (``torch.addmm`` + ``tanh`` per step, autograd
  backward: what the reference study's own E1 kernel does), eager and captured with
  ``torch.cuda.make_graphed_callables``. The ``check`` column is ``max |h - h_rnnlab|`` on the
  same inputs (the peers compute the same math).
* **mixer** (``x: [B, T, D] -> [B, T, D]``, projections included): rnnlab's E1 layers and the
  official Mamba2 mixer (``mamba_ssm.modules.mamba2.Mamba2``, d_state 64, headdim 64, expand 2)
  at the same width D, eager; E88 (its Triton kernel) and Gated DeltaNet (fla's layer) at the
  widths of suite race-400m.

MFU = 6 * weights * B * T / (forward+backward time) / the GPU's dense bf16 peak (989 TFLOP/s on
H100/H200 SXM, ``rnnlab.bench.mfu``; ``--peak-tflops``): for a recurrence the weights are ``W_h`` (+ ``U, V``), whose
products are exactly 6 FLOPs per weight and token; for a mixer all its parameters. ``rel`` is a
row's speed relative to the row it names (``vs`` in the json): the selective scans and the peers
against rnnlab's plain kernel of the shape, the mixers against E1's mixer of the width.

A peer that cannot run here (not installed, no CUDA toolkit to build it, a shape it declines)
prints one line ``<row>: skipped: <reason>`` and the run goes on; build output goes to
``--log`` (default: a file in the temp dir), not the screen.

FlashRNN on CUDA 13: its ``gpu_info.cc`` (built by the ``cuda_fused`` backend only) reads
``cudaDeviceProp`` fields that CUDA 13 removed, so this script imports flashrnn from a temp copy
of the installed package with those reads deleted (:func:`import_flashrnn`); nothing is vendored.
Install it with ``pip install --no-deps flashrnn-1.0.8-py3-none-any.whl`` (``benchmarks/
stage_gpu.sh`` stages the wheel; it needs einops, ninja and the cuBLAS headers).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from rnnlab.bench.mfu import benchmark_peak, mfu, peak_note

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_kernels  # noqa: E402  (fwd_bwd: CUDA-event timing)
import bench_models  # noqa: E402  (versions)

DEV, DT = "cuda", torch.bfloat16
RANK = 8  # the low-rank rows' r (E1's selective_rank default)
# cudaDeviceProp fields that CUDA 13 removed and flashrnn's gpu_info.cc reads (only into a dict
# that flashrnn never looks up)
CUDA13_REMOVED = ("clockRate", "deviceOverlap", "kernelExecTimeoutEnabled", "computeMode", "maxTexture1DLinear",
                  "memoryClockRate", "singleToDoublePrecisionPerfRatio", "cooperativeMultiDeviceLaunch")


class Skip(Exception):
    """A row that cannot run here: it prints ``skipped: <reason>``."""


@dataclass
class Case:
    """One timed row: ``fn(*inputs)`` returns ``(output, anything)``; ``weights`` counts for MFU;
    ``states`` (optional) maps the output to ``[B, T, H]`` for the check against rnnlab."""

    fn: Callable
    inputs: list
    weights: int
    states: Callable | None = None
    note: str = ""
    grad: torch.Tensor | None = field(default=None, init=False)


# ------------------------------------------------------------------------------ inputs
def elman_inputs(B: int, T: int, nh: int, hd: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``wx: [B, T, nh*hd]`` and ``W_h`` (dense ``[H, H]`` for nh = 1, else ``[nh, hd, hd]``), bf16,
    seeded: every row of a shape sees the same values."""
    g = torch.Generator(device=DEV).manual_seed(0)
    wx = (torch.randn(B, T, nh * hd, device=DEV, generator=g) * 0.5).to(DT)
    w = (torch.randn(nh, hd, hd, device=DEV, generator=g) * (0.9 / hd**0.5)).to(DT)
    return wx, w[0] if nh == 1 else w


def selective_inputs(which: str, B: int, T: int, H: int) -> list[torch.Tensor]:
    """The decay ``a`` (near E1's init, sigmoid(3) ~ 0.95) or the low-rank ``U, V, s``."""
    g = torch.Generator(device=DEV).manual_seed(1)
    if which == "decay":
        return [torch.sigmoid(torch.randn(B, T, H, device=DEV, generator=g) + 3).to(DT)]
    return [(torch.randn(H, RANK, device=DEV, generator=g) * s).to(DT) for s in (0.2, H**-0.5)] + \
        [torch.randn(B, T, RANK, device=DEV, generator=g).to(DT)]


def leaves(*xs: torch.Tensor) -> list[torch.Tensor]:
    return [x.detach().clone().requires_grad_() for x in xs]


# ------------------------------------------------------------------------------ recurrence rows
def rnnlab_case(nh: int, hd: int, B: int, T: int, which: str = "plain", persistent: bool = True) -> Case:
    """rnnlab's GPU scan for ``which`` in plain, decay, lowrank (``persistent=False``: the dense
    per-step kernel instead of the persistent ones: wgmma.cu for plain bf16 scans it runs, else
    persistent.cu)."""
    from rnnlab.ops import OPS
    from rnnlab.ops.elman.options import ElmanKernelOptions

    wx, w = elman_inputs(B, T, nh, hd)
    extra = [] if which == "plain" else selective_inputs(which, B, T, nh * hd)
    name = "elman_scan" if which == "plain" else f"elman_{which}_scan"
    module = OPS[name].kernel.get()
    if module is None:
        raise Skip(f"the kernel does not import ({OPS[name].kernel.error})")
    kernel = getattr(module, name)
    opts = ElmanKernelOptions(persistent=persistent)
    weights = w.numel() + (2 * nh * hd * RANK if which == "lowrank" else 0)
    case = Case(lambda *a: kernel(*a, None, options=opts), leaves(wx, w, *extra), weights)
    if nh == 1 and persistent:  # the persistent kernel's rows (plain, decay, low-rank): say if it fell back
        kernel(*case.inputs, None, options=opts)  # builds it (or records why it cannot)
        from rnnlab.ops.elman import wgmma
        from rnnlab.ops.elman.triton import PERSISTENT_BUILDS, WGMMA_BUILD

        why = PERSISTENT_BUILDS[which == "lowrank"].error
        case.note = f"persistent kernel unavailable, per-step kernel ran ({why})"[:200] if why else "persistent kernel"
        if which == "plain" and WGMMA_BUILD.error is None and wgmma.supported(case.inputs[0]):
            case.note = "wgmma kernel"
    return case


def _cublas_loop(wx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``h_t = tanh(addmm(wx_t, h_{t-1}, W^T))``, one cuBLAS GEMM and one tanh per step."""
    h = wx.new_zeros(wx.shape[0], wx.shape[2])
    out = []
    for t in range(wx.shape[1]):
        h = torch.tanh(torch.addmm(wx[:, t], h, w.t()))
        out.append(h)
    return torch.stack(out, dim=1)


def cublas_case(H: int, B: int, T: int, graphed: bool) -> Case:
    wx, w = elman_inputs(B, T, 1, H)
    inputs = leaves(wx, w)
    fn = torch.cuda.make_graphed_callables(_cublas_loop, tuple(inputs)) if graphed else _cublas_loop
    return Case(lambda *a: (fn(*a), None), inputs, w.numel(),
                note="CUDA graph (make_graphed_callables)" if graphed else "eager")


def import_flashrnn():
    """``flashrnn.flashrnn`` from a temp copy of the installed package whose gpu_info.cc no longer
    reads the fields CUDA 13 removed (:data:`CUDA13_REMOVED`); raises :class:`Skip` without it."""
    if "flashrnn" in sys.modules:
        return sys.modules["flashrnn"].flashrnn
    spec = importlib.util.find_spec("flashrnn")
    if spec is None or not spec.submodule_search_locations:
        raise Skip("flashrnn is not installed (pip install --no-deps flashrnn-1.0.8-py3-none-any.whl)")
    copy = Path(tempfile.mkdtemp(prefix="flashrnn-cuda13-")) / "flashrnn"
    shutil.copytree(spec.submodule_search_locations[0], copy)
    cc = copy / "flashrnn" / "gpu_info" / "gpu_info.cc"
    text = cc.read_text()
    for name in CUDA13_REMOVED:
        text = re.sub(rf'dict\["{name}"\]\s*=\s*prop\.{name}\s*;', "", text)
    cc.write_text(text)
    sys.path.insert(0, str(copy.parent))
    import flashrnn

    assert Path(flashrnn.__file__).is_relative_to(copy), flashrnn.__file__
    return flashrnn.flashrnn


def flashrnn_case(nh: int, hd: int, B: int, T: int, backend: str) -> Case:
    """FlashRNN's Elman ``y_t = tanh(Wx_t + R y_{t-1} + b)``: ``Wx [B, T, 1, nh, hd]``,
    ``R [1, nh, hd, hd]`` (= our W_h), ``b [1, nh, hd]`` (zero: our wx holds the bias)."""
    run = import_flashrnn()
    wx, w = elman_inputs(B, T, nh, hd)
    inputs = leaves(wx.view(B, T, 1, nh, hd), w.reshape(1, nh, hd, hd), torch.zeros(1, nh, hd, device=DEV, dtype=DT))

    def states(y: torch.Tensor) -> torch.Tensor:  # [1, B, T(+1), nh, hd] -> [B, T, H]
        y = y[0] if y.dim() == 5 else y
        return (y[:, 1:] if y.shape[1] == T + 1 else y).reshape(B, T, nh * hd)

    def fn(*a):
        return run(*a, function="elman", backend=backend, dtype="bfloat16")

    return Case(fn, inputs, w.numel(), states)


# ------------------------------------------------------------------------------ mixer rows
def layer_mixer_case(model: str, D: int, B: int, T: int, **layer) -> Case:
    """rnnlab's layer of model kind ``model`` (its fast path on CUDA) at width ``D``."""
    from rnnlab.models.registry import get_spec

    spec = get_spec(model)
    why = spec.training_blocker(torch.device(DEV))  # e.g. fla's refused backward (gdn)
    if why:
        raise Skip(why)
    torch.manual_seed(0)
    return _mixer(spec.layer_cls(spec.config_cls(dim=D, **layer)), D, B, T)


def mamba2_mixer_case(D: int, B: int, T: int) -> Case:
    from rnnlab.layers.mamba2 import causal_conv1d_available
    from rnnlab.ops.ssd import import_mamba_ssm, mamba_ssm_error

    if import_mamba_ssm() is None:
        raise Skip(f"mamba_ssm does not import ({mamba_ssm_error()})")
    from mamba_ssm.modules.mamba2 import Mamba2

    torch.manual_seed(0)
    fused = causal_conv1d_available()
    mixer = Mamba2(D, d_state=64, d_conv=4, expand=2, headdim=64, use_mem_eff_path=fused)
    case = _mixer(mixer, D, B, T)
    case.note = "fused conv path" if fused else "use_mem_eff_path=False (no causal_conv1d)"
    return case


def _mixer(module: torch.nn.Module, D: int, B: int, T: int) -> Case:
    m = module.to(DEV, DT).train()
    x = torch.randn(B, T, D, device=DEV, generator=torch.Generator(device=DEV).manual_seed(2)).to(DT)
    # the parameters' gradients set to None in each forward, so a timed backward writes them fresh
    # instead of adding to the last rep's (one read and write of every parameter more)
    return Case(lambda x: (m(x), m.zero_grad(set_to_none=True)), leaves(x), sum(p.numel() for p in m.parameters()))


# ------------------------------------------------------------------------------ the rows
@dataclass(frozen=True)
class Row:
    """``make(B, T) -> Case``; ``check``: the row whose output this one must reproduce; ``vs``:
    the row its speed is compared with (``rel``)."""

    section: str
    name: str
    shape: str
    make: Callable[[int, int], Case]
    check: str | None = None
    vs: str | None = None


def _p(fn, *args, **kw) -> Callable[[int, int], Case]:
    """``make(B, T)`` calling ``fn(*args, B, T, **kw)``."""
    return lambda B, T: fn(*args, B, T, **kw)


def rows() -> list[Row]:
    """Every row, in run order: rnnlab's kernels and the cuBLAS loop, the mixers, then FlashRNN
    (``cuda_fused`` last: a kernel that fails can leave the CUDA context unusable)."""
    ours, flash = [], []
    for nh, hd in ((1, 1760), (14, 128), (28, 64)):
        base = f"rnnlab E1 {'dense' if nh == 1 else 'heads'}"
        shape = f"{nh}x{hd}"
        ours.append(Row("recurrence", base, shape, _p(rnnlab_case, nh, hd)))
        for which in ("decay", "lowrank") if hd != 64 else ():
            ours.append(Row("recurrence", f"{base} {which}", shape, _p(rnnlab_case, nh, hd, which=which),
                            vs=f"{base}@{shape}"))
        key = f"{base}@{shape}"
        if nh == 1:  # the per-step kernel (the persistent kernel's fallback) and the cuBLAS loop
            ours += [Row("recurrence", f"{base}, per-step kernel", shape, _p(rnnlab_case, nh, hd, persistent=False),
                         check=key, vs=key),
                     Row("recurrence", f"{base} decay, per-step kernel", shape,
                         _p(rnnlab_case, nh, hd, which="decay", persistent=False), vs=key)]
            ours += [Row("recurrence", f"cuBLAS loop {'graphed' if g else 'eager'}", shape, _p(cublas_case, hd, graphed=g),
                         check=key, vs=key) for g in (False, True)]
        flash += [Row("recurrence", f"FlashRNN {backend}", shape, _p(flashrnn_case, nh, hd, backend=backend),
                      check=key, vs=key) for backend in ("cuda", "cuda_fused")]
    mixers = []
    for D, layer in ((1760, {}), (1792, {"heads": 14})):
        base = "rnnlab E1 mixer" + (" heads 14x128" if layer else " dense")
        mixers.append(Row("mixer", base, f"D{D}", _p(layer_mixer_case, "e1", D, **layer)))
        mixers += [Row("mixer", f"{base} {which}", f"D{D}", _p(layer_mixer_case, "e1", D, selective=which, **layer),
                       vs=f"{base}@D{D}") for which in ("decay", "lowrank")]
        mixers.append(Row("mixer", "Mamba2 mixer (mamba_ssm)", f"D{D}", _p(mamba2_mixer_case, D), vs=f"{base}@D{D}"))
    # the race's E88 (49 heads of 32) and Gated DeltaNet (fla's layer, 13 heads of 128) widths
    mixers += [Row("mixer", "rnnlab E88 mixer 49x32", "D1568", _p(layer_mixer_case, "e88", 1568),
                   vs="rnnlab E1 mixer heads 14x128@D1792"),
               Row("mixer", "Gated DeltaNet mixer (fla)", "D1760", _p(layer_mixer_case, "gdn", 1760, backend="official"),
                   vs="rnnlab E1 mixer dense@D1760")]
    return ours + mixers + sorted(flash, key=lambda r: r.name == "FlashRNN cuda_fused")


# ------------------------------------------------------------------------------ measuring
@contextlib.contextmanager
def output_to(path: str):
    """Send this process's stdout and stderr (file descriptors 1 and 2: extension builds too)
    to ``path`` for the block."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(path, "ab") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, target in zip(saved, (1, 2)):
                os.dup2(fd, target)
                os.close(fd)


def measure(row: Row, B: int, T: int, reps: int, log: str, outputs: dict) -> dict:
    """One row's timings (ms), MFU and check; the output is kept in ``outputs`` for later checks.
    The first forward+backward (builds, autotuning) runs with its output sent to ``log``."""
    with output_to(log):
        case = row.make(B, T)
        out = case.fn(*case.inputs)[0]
        case.grad = torch.randn_like(out)
        torch.autograd.backward(out, case.grad)
        torch.cuda.synchronize()
    h = (case.states or (lambda y: y))(out.detach())
    outputs[f"{row.name}@{row.shape}"] = h
    fwd, bwd, total = bench_kernels.fwd_bwd(lambda: (case.fn, case.inputs, case.grad), reps)
    r = dict(section=row.section, name=row.name, shape=row.shape, fwd_ms=round(fwd, 3), bwd_ms=round(bwd, 3),
             total_ms=round(total, 3), us_per_step=round(total / T * 1e3, 2), weights=case.weights, note=case.note)
    if row.check in outputs:
        r["check"] = (h.float() - outputs[row.check].float()).abs().max().item()
    return r


def skip_reason(e: Exception, log: str) -> str:
    """One line: a :class:`Skip`'s reason, else the error's type and first line (and the log)."""
    if isinstance(e, Skip):
        return str(e)
    first = (str(e).strip().splitlines() or [""])[0][:160]
    return f"{type(e).__name__}: {first} (build/warm-up output: {log})"


def annotate(rows_out: list[dict], B: int, T: int, peak: float) -> None:
    """MFU of every measured row and ``rel`` (speed against its ``vs`` row)."""
    by_key = {f"{r['name']}@{r['shape']}": r for r in rows_out if "total_ms" in r}
    for r in by_key.values():
        r["mfu"] = round(mfu(r["weights"], B * T / (r["total_ms"] * 1e-3), peak), 4)
        if r.get("vs") in by_key:
            r["rel"] = round(by_key[r["vs"]]["total_ms"] / r["total_ms"], 3)


def print_table(meta: dict, rows_out: list[dict]) -> None:
    print(f"\n{meta['device']}  {meta['date']}  B={meta['B']} T={meta['T']} bf16  torch {meta['torch']}  "
          f"triton {meta['triton']}  commit {meta['git_commit']}")
    print(f"{'row':40s} {'shape':9s} {'fwd ms':>8s} {'bwd ms':>8s} {'total':>8s} {'us/step':>8s} {'MFU':>6s} "
          f"{'rel':>5s} {'check':>8s}  note")
    for section in ("recurrence", "mixer"):
        print(f"-- {section}")
        for r in (r for r in rows_out if r["section"] == section):
            if "skipped" in r:
                print(f"{r['name']:40s} {r['shape']:9s} skipped: {r['skipped']}")
                continue
            rel = f"{r['rel']:5.2f}" if "rel" in r else f"{'':5s}"
            check = f"{r['check']:8.1e}" if "check" in r else f"{'':8s}"
            print(f"{r['name']:40s} {r['shape']:9s} {r['fwd_ms']:8.3f} {r['bwd_ms']:8.3f} {r['total_ms']:8.3f} "
                  f"{r['us_per_step']:8.2f} {100 * r['mfu']:5.1f}% {rel} {check}  {r['note']}")
    print("total = forward+backward; us/step = total / T; MFU = 6 * weights * B * T / total / peak; rel = speed "
          "against the row named in the json's 'vs' (rnnlab's plain kernel or E1's mixer); check = max |h - h_rnnlab| "
          "on the same inputs")
    if "peak_tflops" in meta:
        print(peak_note(meta))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--B", type=int, default=32)
    p.add_argument("--T", type=int, default=512)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--only", nargs="+", default=None, help="keep rows whose name contains any of these")
    p.add_argument("--skip", nargs="+", default=None, help="then drop rows whose name contains any of these")
    p.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak for MFU (default by GPU name)")
    p.add_argument("--log", default=str(Path(tempfile.gettempdir()) / "bench_peers_build.log"),
                   help="where build and warm-up output goes")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        p.exit(2, "bench_peers.py: error: needs a CUDA GPU (torch sees none)\n")
    device = torch.cuda.get_device_name()
    peak, assumed = benchmark_peak(device, args.peak_tflops)
    meta = dict(device=device, date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                command=" ".join(sys.argv), B=args.B, T=args.T, dtype="bf16", peak_tflops=peak,
                peak_assumed=assumed, **bench_models.versions())
    def named(row, words):
        return any(w.lower() in row.name.lower() for w in words or ())

    todo = [r for r in rows() if (not args.only or named(r, args.only)) and not named(r, args.skip)]
    out, outputs = [], {}
    for row in todo:
        try:
            r = measure(row, args.B, args.T, args.reps, args.log, outputs)
            r["vs"] = row.vs
            print(f"{row.name} {row.shape}: {r['total_ms']:.3f} ms fwd+bwd", flush=True)
        except Exception as e:  # noqa: BLE001 - a peer that cannot run is reported, not fatal
            r = dict(section=row.section, name=row.name, shape=row.shape, skipped=skip_reason(e, args.log))
            print(f"{row.name} {row.shape}: skipped: {r['skipped']}", flush=True)
        out.append(r)
        if args.json:  # after every row: a call cut short keeps what it measured
            bench_models.write_json(args.json, dict(meta=meta, rows=out))
    annotate(out, args.B, args.T, peak)
    print_table(meta, out)
    if args.json:
        bench_models.write_json(args.json, dict(meta=meta, rows=out))


if __name__ == "__main__":
    main()
