"""Layer wavefront for E1, measured against its prediction (docs/kernels.md): dense (not adopted) and heads.

The idea: one dense E1 recurrence is latency-bound (~5 us per step whatever the batch), so run the
recurrences of two layers at once, layer l on time chunk c while layer l+1 works on chunk c-1.
Prints, on one GPU, in one run:

1. Concurrency of the persistent scan (forward, T = 512, H = 1760): one scan; two serially; two
   on two streams; and one scan next to a stream of GEMMs. At B = 32 one scan takes 2 batch
   groups x 55 blocks = 110 of the 132 SMs, so two fit side by side only with the groups capped
   at 1 (:func:`capped_plan`, this benchmark's own launch plan), which makes each scan slower.
2. The whole E1 d26 model (dim 1760, bf16) forward+backward, each variant captured in ONE CUDA
   graph so that Python/launch cost does not decide (eager, the wavefront's ~C x more kernel
   launches make it CPU-bound): plain vs the wavefront with C chunks on 2 streams, plus the
   gradient difference to plain (the wavefront rounds the carried state gradient to bf16 at
   chunk boundaries and sums dW_h per chunk).

    python benchmarks/bench_wavefront.py --json results/e1-wavefront-h100/wavefront.json

``--model heads`` (E1 heads 14 x 128 d31, dim 1792, B 32) instead: one heads scan holds 28 of the
132 SMs, latency-bound, so the rest of the GPU can work on the neighbouring chunks while it runs.
Each layer's chunk c is split in three: ``pre`` (LayerNorm, in_proj, silu, W_x) and ``post`` (the
gate, out_proj, the residual) on the main stream, the scan (from the state chunk c-1 left) on a
high-priority side stream; the main stream queues ``pre`` of the next chunk (or layer) before
``post`` of the chunk being scanned, so each scan runs beside GEMMs, and autograd's backward, in
the reverse order on the same streams, again. Rows (forward+backward in one CUDA graph, no
optimizer, same weights and batch): the package's model eager and compiled (its gate beside the
scan, ``elman_scan_beside_linear``), and the wavefront with ``pre`` / ``post`` eager and compiled
(one compiled function each, shared by every layer and chunk), C chunks each.

    python benchmarks/bench_wavefront.py --model heads --chunks 2 4 --json OUT/heads.json
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import datetime
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_kernels import timeit  # noqa: E402

from rnnlab.models import LM, ModelConfig  # noqa: E402
from rnnlab.ops.elman import persistent  # noqa: E402
from rnnlab.ops.elman.triton import dw_dense  # noqa: E402
from rnnlab.ops.streams import sm_carveout  # noqa: E402

H, T = 1760, 512


def capped_plan(x: torch.Tensor, groups: int | None) -> persistent.Plan:
    """The persistent kernel's launch for ``x`` with at most ``groups`` batch groups (None = as
    chosen), so that the grid leaves SMs free for a second scan: the wavefront's experiment, not
    a kernel option."""
    plan = persistent.make_plan(x)
    return plan if groups is None else dataclasses.replace(plan, groups=min(plan.groups, groups))


class CappedScan(torch.autograd.Function):
    """The dense bf16 Elman scan on the persistent kernel with :func:`capped_plan` (forward and
    backward), the rest of the backward as ``rnnlab.ops.elman.triton`` computes it."""

    @staticmethod
    def forward(ctx, wx, w, h0, groups):
        plan = capped_plan(wx, groups)
        h = persistent.forward(wx.contiguous(), w.contiguous(), None if h0 is None else h0.contiguous(), plan)
        ctx.plan = plan
        ctx.save_for_backward(w, h, h0)
        return h

    @staticmethod
    def backward(ctx, g):
        w, h, h0 = ctx.saved_tensors
        dpre = persistent.backward(g.contiguous(), h, w.contiguous(), ctx.plan)
        dh0 = None if h0 is None else (dpre[:, 0].float() @ w.float()).to(h0.dtype)
        return dpre, dw_dense(dpre, h, h0), dh0, None


def concurrency(rows: list) -> None:
    w = (torch.randn(H, H, device="cuda") * 0.02).bfloat16()
    side = [torch.cuda.Stream(), torch.cuda.Stream()]

    def on_streams(*fns):
        cur = torch.cuda.current_stream()
        for s, fn in zip(side, fns):
            s.wait_stream(cur)
            with torch.cuda.stream(s):
                fn()
        for s in side:
            cur.wait_stream(s)

    for B, groups in ((16, 1), (32, 2), (32, 1)):
        wx = [torch.randn(B, T, H, device="cuda").bfloat16() for _ in range(2)]
        plan = capped_plan(wx[0], groups)
        a, b = (lambda: persistent.forward(wx[0], w, None, plan)), (lambda: persistent.forward(wx[1], w, None, plan))
        one, serial = timeit(a, 10), timeit(lambda: (a(), b()), 10)
        both = timeit(lambda: on_streams(a, b), 10)
        rows.append(dict(part="scans", B=B, max_groups=groups, one_ms=round(one, 3),
                         us_per_step=round(one / T * 1e3, 2), two_serial_ms=round(serial, 3),
                         two_streams_ms=round(both, 3), speedup=round(serial / both, 2)))
        print(rows[-1], flush=True)
    wx = torch.randn(16, T, H, device="cuda").bfloat16()
    plan = capped_plan(wx, 1)
    a, m = torch.randn(16 * T, H, device="cuda").bfloat16(), torch.randn(2 * H, H, device="cuda").bfloat16()
    scan = lambda: persistent.forward(wx, w, None, plan)  # noqa: E731
    gemms = lambda: [a @ m.t() for _ in range(20)]  # noqa: E731
    ts, tg, tb = timeit(scan, 10), timeit(gemms, 10), timeit(lambda: on_streams(scan, gemms), 10)
    rows.append(dict(part="scan+gemms", B=16, scan_ms=round(ts, 3), gemms_ms=round(tg, 3),
                     together_ms=round(tb, 3), serial_ms=round(ts + tg, 3)))
    print(rows[-1], flush=True)


# ------------------------------------------------------------------------------- wavefront
def e1_chunk(mixer, x, h0, w_h, groups):
    """E1's forward on one time chunk from state ``h0`` (None = zeros): ``(y, last state)``. The
    same steps as ``E1.forward`` with the spectral-normed ``w_h`` computed once per model step and
    the scan's batch groups capped at ``groups``."""
    xr, z = mixer.inputs(x)
    h = CappedScan.apply(F.linear(xr, mixer.W_x, mixer.b), w_h, h0, groups)
    return mixer.readout(h, z), h[:, -1]


def wavefront_loss(model: LM, idx, tgt, chunks: int, groups: int, streams: list) -> torch.Tensor:
    """``model(idx, tgt)`` computed as a wavefront: block l runs chunk c on stream l % len(streams)
    after block l-1 has run chunk c; autograd replays the backward on the same streams in the
    reverse order, which is again a wavefront."""
    cur = torch.cuda.current_stream()
    w_h = [b.mixer.recurrent_weight() for b in model.blocks]
    xs = list(model.embed(idx).chunk(chunks, dim=1))
    start = cur.record_event()
    L = len(model.blocks)
    done = [[None] * chunks for _ in range(L)]
    state = [None] * L
    for d in range(L + chunks - 1):  # anti-diagonals: every (l, c) with l + c = d
        for l in range(max(0, d - chunks + 1), min(L, d + 1)):
            c, s, blk = d - l, streams[l % len(streams)], model.blocks[l]
            s.wait_event(start if l == 0 else done[l - 1][c])
            with torch.cuda.stream(s):
                x = xs[c]
                x.record_stream(s)
                y, state[l] = e1_chunk(blk.mixer, blk.norm(x), state[l], w_h[l], groups)
                xs[c] = x + y
                done[l][c] = s.record_event()
    for c in range(chunks):
        cur.wait_event(done[L - 1][c])
        xs[c].record_stream(cur)
    logits = model.head(model.norm_f(torch.cat(xs, dim=1)))
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), tgt.reshape(-1))


def graphed(model: LM, loss_fn, around=contextlib.nullcontext) -> torch.cuda.CUDAGraph:
    """Forward+backward of ``loss_fn()`` captured in one CUDA graph (grads in the graph's pool), each
    pass inside ``around()`` (e.g. an SM carveout for its GEMMs)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            model.zero_grad(set_to_none=True)
            with around():
                loss_fn().backward()
    torch.cuda.current_stream().wait_stream(s)
    model.zero_grad(set_to_none=True)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g), around():
        loss_fn().backward()
    return g


def whole_model(rows: list, batches: list[int], chunk_counts: list[int]) -> None:
    torch.manual_seed(0)
    model = LM(ModelConfig(model="e1", dim=H, depth=26)).to("cuda", torch.bfloat16).train()
    u0 = [b.mixer.spectral_u.clone() for b in model.blocks]
    streams = [torch.cuda.Stream(), torch.cuda.Stream()]

    def reset_u():
        for b, u in zip(model.blocks, u0):
            b.mixer.spectral_u.copy_(u)

    for B in batches:
        x = torch.randint(0, 256, (B, T + 1), device="cuda")
        idx, tgt = x[:, :-1].contiguous(), x[:, 1:].contiguous()
        variants = [(1, None)] + [(c, g) for g in ((1,) if B <= 16 else (1, 2)) for c in chunk_counts]
        ref = None
        for chunks, groups in variants:
            fn = (lambda: model(idx, tgt)) if chunks == 1 else (
                lambda c=chunks, g=groups: wavefront_loss(model, idx, tgt, c, g, streams))
            g = graphed(model, fn)
            reset_u()
            g.replay()
            grads = [p.grad.float().clone() for p in model.parameters()]
            ref = ref or grads
            err = max(((a - b).norm() / b.norm()).item() for a, b in zip(grads, ref))
            ms = timeit(g.replay, 5)
            rows.append(dict(part="model", B=B, chunks=chunks, max_groups=groups, fwd_bwd_ms=round(ms, 1),
                             ktok_s=round(B * T / ms, 1), max_rel_grad_diff=float(f"{err:.2e}")))
            print(rows[-1], flush=True)
            del g
            model.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()


# ------------------------------------------------------------------------- E1 heads' wavefront
HEADS_DIM, HEADS_DEPTH, HEADS = 1792, 31, 14


def heads_pre(x, ln_w, ln_b, w_in, w_x, b):
    """A block's work before the scan on one chunk: ``(wx, z)`` (E1's ``inputs`` and ``recurrence``
    for the plain heads layer: no conv, no selective term)."""
    xr, z = F.linear(F.layer_norm(x, (x.shape[-1],), ln_w, ln_b), w_in).chunk(2, dim=-1)
    return F.linear(F.silu(xr), w_x, b), z


def heads_post(x, h, z, w_out):
    """A block's work after the scan on one chunk: the residual plus E1's default readout."""
    return x + F.linear(h * F.silu(z), w_out)


def heads_wavefront_loss(model: LM, idx, tgt, chunks: int, scan_stream, pre, post) -> torch.Tensor:
    """``model(idx, tgt)`` as a wavefront over ``chunks`` time chunks: ``pre`` and ``post`` of every
    (layer, chunk) on the current stream, in the order (pre of the next, then post of the last
    scanned) that keeps GEMMs queued while a scan runs; the scans on ``scan_stream`` (None: no
    streams, the same order: the CPU test's)."""
    from rnnlab.ops.elman import elman_scan

    cur = None if scan_stream is None else torch.cuda.current_stream()
    blocks = model.blocks
    w_h = [b.mixer.recurrent_weight() for b in blocks]
    xs = list(model.embed(idx).chunk(chunks, dim=1))
    state: list = [None] * len(blocks)
    pending: list = []  # (layer, chunk, h, z, event) scanned, waiting for their post

    def run_post():
        l, c, h, z, ev = pending.pop(0)
        if cur is not None:
            cur.wait_event(ev)
            h.record_stream(cur)
        xs[c] = post(xs[c], h, z, blocks[l].mixer.out_proj.weight)

    for l, blk in enumerate(blocks):
        m = blk.mixer
        for c in range(chunks):
            wx, z = pre(xs[c], blk.norm.weight, blk.norm.bias, m.in_proj.weight, m.W_x, m.b)
            if cur is not None:
                scan_stream.wait_stream(cur)
                wx.record_stream(scan_stream)  # made here, read there: not reused before the scan has read it
                w_h[l].record_stream(scan_stream)
            with torch.cuda.stream(scan_stream):  # (None: no change)
                h, state[l] = elman_scan(wx, w_h[l], state[l])
            pending.append((l, c, h, z, None if cur is None else scan_stream.record_event()))
            if len(pending) > 1 or chunks == 1:  # the scan just queued runs beside this post and the next pre
                run_post()
    while pending:
        run_post()
    logits = model.head(model.norm_f(torch.cat(xs, dim=1)))
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), tgt.reshape(-1))


def heads_model(rows: list, chunk_counts: list[int], reps: int) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(model="e1", dim=HEADS_DIM, depth=HEADS_DEPTH, layer={"heads": HEADS})
    model = LM(cfg).to("cuda", torch.bfloat16).train()
    n_params = sum(p.numel() for p in model.parameters())
    u0 = [b.mixer.spectral_u.clone() for b in model.blocks]
    scan_stream = torch.cuda.Stream(priority=-1)  # high: its programs take SMs first as a GEMM's retire
    B = 32
    x = torch.randint(0, 256, (B, T + 1), device="cuda")
    idx, tgt = x[:, :-1].contiguous(), x[:, 1:].contiguous()
    compiled = torch.compile(model)
    pre_c, post_c = torch.compile(heads_pre, fullgraph=True), torch.compile(heads_post, fullgraph=True)
    # the GEMMs beside a scan sized for the SMs it leaves (rnnlab.ops.streams: its programs + 4), as
    # the package's gate beside the scan is; without, cuBLAS's persistent GEMMs hold every SM
    scan_sms = HEADS * -(-B // 16) + 4
    carveout = functools.partial(sm_carveout, scan_sms)
    none = contextlib.nullcontext
    variants = [("plain eager", none, lambda: model(idx, tgt)), ("plain compiled", none, lambda: compiled(idx, tgt))]
    # the same order on one stream: what splitting the block and the time costs, without overlap
    for chunks in [1, *chunk_counts]:
        variants.append((f"chunked C={chunks} compiled, one stream", none, lambda c=chunks:
                         heads_wavefront_loss(model, idx, tgt, c, None, pre_c, post_c)))
    for chunks in chunk_counts:
        for kind, pre, post in (("eager", heads_pre, heads_post), ("compiled", pre_c, post_c)):
            for around, note in ((none, ""), (carveout, f", GEMMs on {132 - scan_sms} SMs")):
                variants.append((f"wavefront C={chunks} {kind}{note}", around, lambda c=chunks, pr=pre, po=post:
                                 heads_wavefront_loss(model, idx, tgt, c, scan_stream, pr, po)))
    ref = None
    for name, around, fn in variants:
        for b, u in zip(model.blocks, u0):
            b.mixer.spectral_u.copy_(u)
        try:
            g = graphed(model, fn, around)
        except Exception as e:  # noqa: BLE001 - a variant that cannot be captured is a row saying why
            rows.append(dict(part="heads model", variant=name, error=f"{type(e).__name__}: {str(e)[:300]}"))
            print(rows[-1], flush=True)
            model.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            continue
        for b, u in zip(model.blocks, u0):
            b.mixer.spectral_u.copy_(u)
        g.replay()
        grads = [p.grad.float().clone() for p in model.parameters()]
        ref = ref or grads
        err = max(((a - b).norm() / b.norm()).item() for a, b in zip(grads, ref))
        ms = timeit(g.replay, reps)
        tok_s = B * T / ms * 1e3
        rows.append(dict(part="heads model", variant=name, fwd_bwd_ms=round(ms, 2), ktok_s=round(tok_s / 1e3, 1),
                         fwd_bwd_mfu=round(6 * n_params * tok_s / 989e12, 4),
                         max_rel_grad_diff=float(f"{err:.2e}")))
        print(rows[-1], flush=True)
        del g
        model.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=("dense", "heads"), default="dense")
    ap.add_argument("--batches", type=int, nargs="+", default=[16, 32], help="dense only")
    ap.add_argument("--chunks", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--reps", type=int, default=5, help="timings per row (heads; each a replay of the graph)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    if not torch.cuda.is_available():
        ap.exit(2, "bench_wavefront.py: error: needs a CUDA GPU (torch sees none)\n")
    # nothing on the legacy default stream: autograd records it for the leaves, and a captured
    # backward must not depend on it
    torch.cuda.set_stream(torch.cuda.Stream())
    rows: list = []
    if a.model == "heads":
        heads_model(rows, a.chunks, a.reps)
        model = (f"E1 heads {HEADS}x{HEADS_DIM // HEADS} d{HEADS_DEPTH} dim {HEADS_DIM}, bf16, B=32, T=512, "
                 "fwd+bwd in one CUDA graph (no optimizer); MFU of the fwd+bwd alone, 989 TFLOP/s peak")
    else:
        concurrency(rows)
        whole_model(rows, a.batches, a.chunks)
        model = "E1 d26 dim 1760, bf16, T=512, fwd+bwd in one CUDA graph (no optimizer)"
    meta = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, command=" ".join(sys.argv),
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), model=model)
    print(json.dumps(meta))
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))


if __name__ == "__main__":
    main()
