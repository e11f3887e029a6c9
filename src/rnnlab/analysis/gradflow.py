"""Gradient-flow analysis of trained runs: ``rnnlab analyze gradflow``.

For a run's checkpoint (its newest usable one in ``ckpt/``, and ``config.json``) and a few
held-out batches (the run's own held-out split, deterministic windows) it measures, in fp32 and
eval mode:

(a) ``param_grad_norms``: the norm of the gradient of the mean training loss (all positions) for
    every parameter, grouped per block (``blocks.i`` -> ``{"mixer.W_h": ..., "norm.weight": ...}``)
    plus the non-block parameters (``embed.weight``, ``norm_f.*``).
(b) ``temporal``: for each held-out window's own loss at its last ``last`` positions only (their
    mean, ``l``), ``||dl/dx_t^(l)||`` of each block's input (the residual stream entering block l)
    over time steps t, averaged over the windows: a curve of length ``seq_len`` per layer. Residual
    and MLP paths act per position, so the gradient reaches t < T - last only through the mixers:
    how fast the curve falls with the lag ``T - 1 - t`` is the layer's memory of the past.
    ``horizon`` gives the first lag where the curve, normalised by its value at t = T-1, drops below
    1e-1 / 1e-2 / 1e-3 (None = never).
    Works for every mixer.
(c) ``recurrence`` (E1-type layers, i.e. mixers with E1's public ``inputs`` / ``recurrence``): the
    spectral radius (max |eigenvalue|) and spectral norm of ``W_h_eff``, and the largest singular
    value of the recurrence Jacobian ``J_t = dh_t/dh_{t-1} = diag(1 - h_t^2) W_h_eff`` (times
    ``diag(a_t)`` for ``selective="decay"``; ``W_h_eff + U diag(s_t) V^T`` for ``"lowrank"``),
    estimated by ``power_iters`` power iterations on ``J_t^T J_t`` for every (sequence, t) of
    the held-out batches at once, then averaged over t (``jacobian_sigma_mean``; per-t curve in
    ``jacobian_sigma_t``). Products of Jacobians with sigma < 1 shrink: together with (b) this
    tells whether the recurrence itself or the tanh saturation limits the memory.

Several checkpoints of a run (every usable checkpoint in ``ckpt/`` and any other
rnnlab ``*/model.safetensors`` under the run dir, ordered by their step: ``RunDir.weight_files``) or
several runs give one record each, and the plots show the quantities over training steps.
Output: ``gradflow.json`` and PNG plots in ``--out``.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from rnnlab.bench.plots import pyplot, save
from rnnlab.data import eval_windows, heldout_split
from rnnlab.errors import counted
from rnnlab.train.rundir import GRADFLOW_JSON, RunDir

THRESHOLDS = (1e-1, 1e-2, 1e-3)


# ------------------------------------------------------------------------- data
def heldout_batches(cfg, seq_len: int, batch_size: int, n_batches: int) -> list[torch.Tensor]:
    """The first ``n_batches`` batches of deterministic held-out windows ``[b, seq_len + 1]``; a split
    too short for them all gives fewer, with a warning saying how many (the analysis is of those)."""
    split = heldout_split(cfg.data.path, cfg.data.val_path, cfg.data.val_fraction)
    if len(split) < seq_len + 1:  # eval_windows refuses it too, but advises a larger file: the run's is fixed
        raise ValueError(f"held-out split has {counted(len(split), 'byte')}, fewer than seq_len+1 = {seq_len + 1}; "
                         f"use a smaller --seq-len")
    # n_batches * batch_size windows of seq_len targets span this many bytes (each window's first
    # byte is the previous one's last), so eval_windows yields at most n_batches batches
    batches = list(eval_windows(split, seq_len, batch_size, seq_len * batch_size * n_batches + 1))
    windows = sum(len(b) for b in batches)
    if windows < n_batches * batch_size:
        warnings.warn(f"{split.described()} ({counted(len(split), 'byte')}) holds "
                      f"{counted(windows, 'window')} of "
                      f"{seq_len + 1} bytes, fewer than the {n_batches} x {batch_size} asked: measured on those")
    return batches


# ------------------------------------------------------------------------- (a) + (b)
def _block_inputs(model: nn.Module) -> tuple[list[torch.Tensor], list]:
    """Forward pre-hooks that keep every block's input (``torch.autograd.grad`` then takes the
    loss's gradient with respect to each)."""
    store: list[torch.Tensor] = []

    def hook(_mod, args):
        store.append(args[0])

    handles = [b.register_forward_pre_hook(hook) for b in model.blocks]
    return store, handles


def grad_norms_and_temporal(model: nn.Module, batches: list[torch.Tensor], last: int = 1
                            ) -> dict[str, Any]:
    """(a) per-parameter gradient norms of the mean loss and (b) ``||dL_last/dx_t^(l)||`` curves.

    Also returns, under ``"_inputs"``, every block's input for each batch (``[batch][layer]``,
    detached) for (c), ``recurrence_stats``, to reuse without another forward; ``analyze_model``
    pops it before the record is written."""
    device = next(model.parameters()).device
    params = dict(model.named_parameters())
    grad_sum = {n: torch.zeros_like(p) for n, p in params.items()}
    curves = None
    inputs: list[list[torch.Tensor]] = []
    n = 0  # windows: a short last batch (eval_windows') weighs each of its windows as much as the others'
    for batch in batches:
        batch = batch.to(device)
        x, y = batch[:, :-1], batch[:, 1:]
        b = x.shape[0]
        # (a) full loss, parameter gradients
        model.zero_grad(set_to_none=True)
        model(x, y).backward()
        for name, p in params.items():
            if p.grad is not None:
                grad_sum[name] += p.grad * b
        # (b) loss at the last positions, gradients w.r.t. the block inputs
        per, store = _last_loss_input_grads(model, x, y, last)
        curves = per * b if curves is None else curves + per * b
        inputs.append([s.detach() for s in store])
        n += b
    model.zero_grad(set_to_none=True)
    norms = {name: float((g / n).float().norm()) for name, g in grad_sum.items()}
    return {"param_grad_norms": _group_by_block(norms), **_temporal_summary((curves / n).cpu()), "_inputs": inputs}


def _group_by_block(values: dict[str, float]) -> dict[str, Any]:
    """``{"blocks.1.mixer.W_h": v, "embed.weight": w}`` -> ``{"blocks.1": {"mixer.W_h": v},
    "embed.weight": w}``: a block's parameters under the block, the others as they are."""
    out: dict[str, Any] = {}
    for name, v in values.items():
        parts = name.split(".")
        if parts[0] == "blocks" and len(parts) > 2:
            out.setdefault(f"blocks.{parts[1]}", {})[".".join(parts[2:])] = v
        else:
            out[name] = v
    return out


def _last_loss_input_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor, last: int
                           ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``(||dl/dx_t^(l)|| averaged over the batch: [depth, T], the block inputs)``, ``l`` each
    window's own mean loss at its last ``last`` positions (so a window's gradient does not depend on
    how many windows share its batch)."""
    T = x.shape[1]
    k = min(max(1, last), T)
    model.zero_grad(set_to_none=True)
    store, handles = _block_inputs(model)
    try:
        logits = model(x)
    finally:
        for h in handles:
            h.remove()
    # the batch's mean times its size: the sum of the windows' own means (windows do not interact)
    loss_last = F.cross_entropy(logits[:, T - k:].float().reshape(-1, logits.size(-1)),
                                y[:, T - k:].reshape(-1)) * x.shape[0]
    grads = torch.autograd.grad(loss_last, store, allow_unused=True)
    per = torch.stack([
        (g if g is not None else torch.zeros_like(s)).float().norm(dim=-1).mean(0)
        for g, s in zip(grads, store)
    ])
    return per, store


def _temporal_summary(curves: torch.Tensor) -> dict[str, Any]:
    """Per layer: the curve, the curve over its value at t = T-1, and the first lag below each
    threshold."""
    temporal, normalized, horizon = {}, {}, {}
    for layer in range(curves.shape[0]):
        c = curves[layer]
        ref = float(c[-1])
        temporal[f"layer_{layer}"] = [float(v) for v in c]
        norm = [float(v) / ref if ref > 0 else float("nan") for v in c]
        normalized[f"layer_{layer}"] = norm
        lagged = norm[::-1]  # index = lag T-1-t
        horizon[f"layer_{layer}"] = {
            f"{th:g}": next((lag for lag, v in enumerate(lagged) if v < th), None) for th in THRESHOLDS
        }
    return {"temporal": temporal, "temporal_normalized": normalized, "horizon": horizon}


# ------------------------------------------------------------------------- (c) E1 recurrences
def is_recurrent_e1(mixer: nn.Module) -> bool:
    """Whether ``mixer`` exposes E1's recurrence API (``inputs``, ``recurrence``)."""
    return hasattr(mixer, "inputs") and hasattr(mixer, "recurrence")


def dense_recurrence(w_h: torch.Tensor) -> torch.Tensor:
    """``[K, K]`` matrix W with ``recur(h, w_h) == h @ W.T`` (block-diagonal for heads)."""
    return w_h if w_h.dim() == 2 else torch.block_diag(*w_h.unbind(0))


def spectral_radius(w: torch.Tensor) -> float:
    """max |eigenvalue| (for ``[n, hd, hd]`` heads: over all heads)."""
    return float(torch.linalg.eigvals(w.double()).abs().max())


def spectral_norm(w: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(w.double(), ord=2).max())


def jacobian_sigma(d: torch.Tensor, w: torch.Tensor, iters: int = 10, gate: torch.Tensor | None = None,
                   lowrank: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
                   seed: int = 0) -> torch.Tensor:
    """Largest singular value of ``J = diag(d) diag(gate) (W + U diag(s) V^T)`` for many rows at
    once by power iteration on ``J^T J`` (J never formed).

    ``d, gate: [N, K]`` (gate optional), ``w: [K, K]`` dense (``recur(h) = h @ w.T``, so
    ``J v = d * gate * (v @ w.T)``), ``lowrank = (U [K,r], V [K,r], s [N,r])``. Returns ``[N]``.
    """
    d = d.double()
    w = w.double()
    g = d if gate is None else d * gate.double()
    if lowrank is not None:
        U, V, s = (t.double() for t in lowrank)

    def jv(v):
        out = v @ w.T
        if lowrank is not None:
            out = out + ((v @ V) * s) @ U.T
        return g * out

    def jtu(u):
        u = g * u
        out = u @ w
        if lowrank is not None:
            out = out + ((u @ U) * s) @ V.T
        return out

    gen = torch.Generator(device="cpu").manual_seed(seed)
    v = torch.randn(d.shape, generator=gen, dtype=torch.float64).to(d.device)
    v = v / v.norm(dim=-1, keepdim=True)
    for _ in range(max(1, iters)):
        v = jtu(jv(v))
        v = v / (v.norm(dim=-1, keepdim=True) + 1e-300)
    return jv(v).norm(dim=-1)


@torch.no_grad()
def e1_states(mixer: nn.Module, x_norm: torch.Tensor):
    """``(recurrence, h)``: an E1 mixer's ``Recurrence`` on its (normalised) input and its hidden
    states ``h [B, T, K]`` (the reference scan; the model is fp32: ``analyze`` casts it)."""
    xr, _z = mixer.inputs(x_norm)
    rec = mixer.recurrence(xr, update=False)
    h, _ = rec.scan(None, backend="naive")
    return rec, h


@torch.no_grad()
def recurrence_stats(model: nn.Module, inputs: list[list[torch.Tensor]], iters: int = 10
                     ) -> dict[str, Any]:
    """(c) for every E1-type block: radius / norm of W_h_eff and the Jacobian's top singular value."""
    out: dict[str, Any] = {}
    for li, block in enumerate(model.blocks):
        mixer = block.mixer
        if not is_recurrent_e1(mixer):
            continue
        sig_sum, count, w_eff = None, 0, None
        for per_layer in inputs:
            rec, h = e1_states(mixer, block.norm(per_layer[li].float()))
            w_eff = rec.w_h.detach()
            B, T, K = h.shape
            d = (1 - h * h).reshape(B * T, K)
            gate = None if rec.decay is None else rec.decay.reshape(B * T, K)
            lowrank = None
            if rec.lowrank is not None:
                U, V, s = rec.lowrank
                lowrank = (U, V, s.reshape(B * T, -1))
            sig = jacobian_sigma(d, dense_recurrence(w_eff), iters, gate=gate, lowrank=lowrank).reshape(B, T).sum(0)
            sig_sum = sig if sig_sum is None else sig_sum + sig
            count += B
        curve = (sig_sum / count).cpu()
        out[f"layer_{li}"] = {
            "spectral_radius": spectral_radius(w_eff),
            "spectral_norm": spectral_norm(w_eff),
            "jacobian_sigma_mean": float(curve.mean()),
            "jacobian_sigma_t": [float(v) for v in curve],
            "selective": mixer.cfg.selective,
            "heads": int(w_eff.shape[0]) if w_eff.dim() == 3 else 1,
        }
    return out


# ------------------------------------------------------------------------- driver
def analyze_model(model: nn.Module, batches: list[torch.Tensor], last: int = 1, power_iters: int = 10
                  ) -> dict[str, Any]:
    r = grad_norms_and_temporal(model, batches, last)
    inputs = r.pop("_inputs")
    r["recurrence"] = recurrence_stats(model, inputs, power_iters)
    return r


def analyze(runs: list[str | os.PathLike], out: str | os.PathLike, batches: int = 4, batch_size: int = 8,
            seq_len: int | None = None, last: int = 1, power_iters: int = 10, device: str = "cpu",
            history: bool = True, plots: bool = True, progress: bool = True) -> dict[str, Any]:
    """Analyse every checkpoint of every run; write ``gradflow.json`` (+ PNGs) to ``out``. ``last``
    is checked against each run's sequence length, and each run's held-out file is looked for (both
    from its config.json), before any weights load; a run without weights (archived in results/
    without its checkpoints) is named first, as there is nothing of it to analyse on any corpus.
    ``progress``: a bar on stderr when it is a terminal, one step per checkpoint, naming the run and
    the windows it is measured on (a long ``seq_len`` takes minutes a checkpoint)."""
    lengths = [seq_len or RunDir(run).config().data.seq_len for run in runs]
    for run in map(RunDir, runs):  # its held-out bytes come from the run's own corpus: moved or deleted since?
        if not run.has_checkpoint() and not (history and run.weight_files()):
            run.checkpoint()  # no weights: its CheckpointError says so
        if missing := run.missing_corpus(heldout=True):
            raise FileNotFoundError(f"{missing}: put it back there")
    for T in lengths:
        if last >= T:  # no earlier position would be left to measure: every lag None, silently
            raise ValueError(f"--last ({last}) must be below the sequence length ({T}): the curves follow the "
                             f"gradient of the loss at the last {last} positions back to the earlier ones")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)  # a file in the way of --out is refused before minutes of analysis
    records = []
    jobs = [(run, T, weights) for run, T in zip(runs, lengths)
            for weights in (RunDir(run).weight_files() if history else []) or [None]]
    with tqdm(jobs, unit="checkpoint", dynamic_ncols=True, disable=None if progress else True) as bar:
        for run, T, weights in bar:  # disable=None: on a terminal only
            bar.set_description(f"gradflow {run}: {batches} x {batch_size} windows of {T + 1:,} bytes")
            with tqdm.external_write_mode():  # a warning (a held-out split short of windows) not over the bar
                cfg, model, step = RunDir(run).load(device, weights)
                data = heldout_batches(cfg, T, batch_size, batches)
            model = model.float()
            r = analyze_model(model, data, last, power_iters)
            records.append({
                "run": str(run), "weights": str(weights) if weights else None, "step": step,
                "model": cfg.model.model, "dim": cfg.model.dim, "depth": cfg.model.depth,
                "layer": cfg.model.layer, "seq_len": T, "batches": len(data),
                "batch_size": len(data[0]), "last": last, "power_iters": power_iters, **r,
            })
    result = {"records": records}
    (out / GRADFLOW_JSON).write_text(json.dumps(_strict_json(result), indent=1, allow_nan=False, default=str) + "\n")
    if plots:
        result["plots"] = [str(p) for p in write_plots(records, out)]
    return result


def _strict_json(v):
    """``v`` with every non-finite float as None: JSON has no NaN or infinity, and strict readers
    (JavaScript's ``JSON.parse``) refuse the bare ``NaN`` that ``json.dumps`` would write (a curve
    normalised by a zero last value is NaN)."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _strict_json(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_strict_json(x) for x in v]
    return v


def _run_name(run: str, runs: list[str]) -> str:
    """``run``'s folder name, or as many of its path's last parts as tell it from the other
    ``runs`` (``runs/a/e1`` beside ``runs/b/e1``: ``a/e1``)."""
    parts = Path(run).parts
    others = [Path(r).parts for r in runs if r != run]
    n = 1
    while n < len(parts) and any(o[-n:] == parts[-n:] for o in others):
        n += 1
    return "/".join(parts[-n:])


def _label(rec: dict, records: list[dict]) -> str:
    """``run@step``, the run named as :func:`_run_name` tells it from the other ``records``' runs."""
    name = _run_name(rec["run"], [r["run"] for r in records])
    return f"{name}@{rec['step']}" if rec.get("step") is not None else name


def write_plots(records: list[dict], out: Path) -> list[Path]:
    """temporal_flow.png, grad_norms.png (when the model has blocks) and recurrence.png (E1)."""
    plt = pyplot()
    paths = [_plot_temporal(plt, records[-4:], out / "temporal_flow.png")]
    grads = _plot_grad_norms(plt, records[-1], out / "grad_norms.png")
    rec_recs = [r for r in records if r["recurrence"]]
    recurrence = _plot_recurrence(plt, rec_recs, out / "recurrence.png") if rec_recs else None
    return paths + [p for p in (grads, recurrence) if p is not None]


def _plot_temporal(plt, shown: list[dict], path: Path) -> Path:
    """One panel per record (the records given, in their order: the last 4 of the history), one line per
    layer, vs lag."""
    fig, axes = plt.subplots(1, len(shown), figsize=(5 * len(shown), 3.8), squeeze=False)
    for ax, rec in zip(axes[0], shown):
        for name, curve in rec["temporal_normalized"].items():
            lag = list(range(len(curve)))
            # NaN in memory, null (None) read back from gradflow.json: a gap either way
            vals = [max(v, 1e-12) if v is not None and v == v else float("nan") for v in curve[::-1]]
            ax.semilogy(lag, vals, label=name)
        ax.set_xlabel("lag T-1-t (bytes back from the last position)")
        ax.set_ylabel("||dL/dx_t|| / ||dL/dx_{T-1}||")
        ax.set_title(_label(rec, shown), fontsize=9)
        ax.legend(fontsize=7)
    return save(fig, path)


def _plot_grad_norms(plt, rec: dict, path: Path) -> Path | None:
    """Per-block parameter gradient norms of one record."""
    blocks = sorted((k for k in rec["param_grad_norms"] if k.startswith("blocks.")), key=lambda k: int(k.split(".")[1]))
    if not blocks:
        return None
    names = sorted({n for b in blocks for n in rec["param_grad_norms"][b]})
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(names) + 3), 3.8))
    width = 0.8 / len(blocks)
    for i, b in enumerate(blocks):
        vals = [rec["param_grad_norms"][b].get(n, 0.0) for n in names]
        ax.bar([j + i * width for j in range(len(names))], vals, width, label=b)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(names))])
    ax.set_xticklabels(names, rotation=45, ha="right", fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("||grad||")
    ax.set_title(f"parameter gradient norms, {_label(rec, [rec])}", fontsize=9)
    ax.legend(fontsize=7)
    return save(fig, path)


def _plot_recurrence(plt, rec_recs: list[dict], path: Path) -> Path:
    """E1 recurrence per layer: over steps when there are several records, else radius/norm bars
    and sigma_max(J_t) over t."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    if len(rec_recs) > 1:
        by_run: dict[str, list[dict]] = {}
        for r in rec_recs:
            by_run.setdefault(r["run"], []).append(r)
        for run, rs in by_run.items():
            xs = [r["step"] if r["step"] is not None else i for i, r in enumerate(rs)]
            for layer in rs[-1]["recurrence"]:
                tag = f"{_run_name(run, list(by_run))} {layer}"
                axes[0].plot(xs, [r["recurrence"].get(layer, {}).get("spectral_radius") for r in rs], "o-", label=tag)
                axes[1].plot(xs, [r["recurrence"].get(layer, {}).get("jacobian_sigma_mean") for r in rs], "o-", label=tag)
        for ax in axes:
            ax.set_xlabel("step")
    else:
        r = rec_recs[0]
        layers = list(r["recurrence"])
        axes[0].bar(range(len(layers)), [r["recurrence"][k]["spectral_radius"] for k in layers], label="radius")
        axes[0].plot(range(len(layers)), [r["recurrence"][k]["spectral_norm"] for k in layers], "ko", label="norm")
        axes[0].set_xticks(range(len(layers)))
        axes[0].set_xticklabels(layers, fontsize=7)
        for k in layers:
            axes[1].plot(r["recurrence"][k]["jacobian_sigma_t"], label=k)
        axes[1].set_xlabel("t")
    axes[0].set_title("W_h_eff spectral radius", fontsize=9)
    axes[1].set_title("sigma_max(J_t)" + (" (mean over t)" if len(rec_recs) > 1 else ""), fontsize=9)
    for ax in axes:
        ax.legend(fontsize=7)
    return save(fig, path)


def format_table(result: dict[str, Any]) -> str:
    """A short text table: per record and layer, the mixer's grad norm, the horizon, and (E1)
    radius and mean Jacobian sigma."""
    rows = [("run@step", "layer", "|g_mixer|", "lag<0.1", "lag<0.01", "radius", "sigma_J")]
    for rec in result["records"]:
        for name in rec["temporal"]:
            i = int(name.split("_")[1])
            g = rec["param_grad_norms"].get(f"blocks.{i}", {})
            gm = math.sqrt(sum(v * v for k, v in g.items() if k.startswith("mixer.")))
            hz = rec["horizon"][name]
            rc = rec["recurrence"].get(name)
            rows.append((_label(rec, result["records"]), str(i), f"{gm:.3g}", str(hz["0.1"]), str(hz["0.01"]),
                         f"{rc['spectral_radius']:.4f}" if rc else "-",
                         f"{rc['jacobian_sigma_mean']:.4f}" if rc else "-"))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows) + "\n" + TABLE_LEGEND


TABLE_LEGEND = ("|g_mixer| = the norm of the layer's mixer-parameter gradients; lag<0.1 / lag<0.01 = the first "
                "distance back in time (in bytes) at which the loss's gradient reaching the layer's input falls "
                "below 1/10 / 1/100 of its value at the last position (None: never, within the sequence): how far "
                "back the layer's memory reaches; radius = the spectral radius of the E1 recurrence W_h_eff; "
                "sigma_J = the mean top singular value of its Jacobian dh_t/dh_(t-1) (below 1: gradients shrink "
                "step by step). gradflow.json has every number and the per-step curves.")
