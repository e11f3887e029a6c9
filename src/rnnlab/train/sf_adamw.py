"""Schedule-Free AdamW with its step fused into one Triton launch per param group and dtype (CUDA).

schedulefree's own step (its ``foreach`` path) makes ten passes over parameter-sized tensors: on
a 400M model in bf16 about 21 GB of memory traffic, 6.6-6.9 ms of a 70-80 ms step on an H200
(``results/min-rnn-profile-h200``). The kernel here reads y (the parameter), z, the second moment
and the gradient once and writes y, z and the moment once, for all parameters of a group with one
device and dtype in a single launch (a table of their addresses: per-tensor launches would leave
the GPU waiting on Python for the small ones).

It computes what the ``foreach`` step computes, operation by operation, rounding to the
parameter's dtype after each of the ten as the ``foreach`` ops do (in pure bf16, the reference
study's numerics, that rounding matters: it is where the move of y towards z is lost, see
``docs/findings.md``), with PyTorch's CUDA arithmetic: multiply-adds as FMAs (nvcc's default), the
division by the bias correction as a product with its reciprocal (computed in double, as
``_foreach_div`` by a scalar does), IEEE division by the denominator and IEEE square root.
Everything else (``train()`` / ``eval()``, the state dict, the bookkeeping of ``k``, ``lr_max``
and ``weight_sum``) is schedulefree's; CPU parameters, and parameters the kernel does not take (not
contiguous, not 16-byte aligned, another dtype: one warning says which), run schedulefree's own step. Unlike that step,
this one leaves ``p.grad`` as it was. In fp32 (the master weights of fp32 and bf16-mixed runs) it
agrees with schedulefree's step to about one ulp, not bit for bit (the two compilers contract
different products into FMAs): such a run resumed across the switch continues within rounding.

Checked against schedulefree's step in Triton's interpreter (fp32, tests/test_sf_adamw.py) and on an
H200 (bit for bit in bf16, tests/gpu/test_train_gpu.py): 2.0 ms per step over 400M bf16 values
against schedulefree's 6.9, 1.01-1.07x the whole training step's tok/s
(``results/sf-adamw-fused-h200``). ``rnnlab train`` builds this class for Schedule-Free AdamW.
"""

from __future__ import annotations

import contextlib
import warnings

import schedulefree
import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: schedulefree's step
    triton = None

__all__ = ["AdamWScheduleFree", "status"]

BLOCK = 2048  # elements per program
DTYPES = (torch.bfloat16, torch.float32)  # pure bf16, and the fp32 master weights of bf16-mixed / fp32


def status() -> str:
    """Which step Schedule-Free AdamW takes on this machine (``rnnlab doctor``)."""
    if triton is None:
        return "schedulefree's foreach step (the fused one needs Triton)"
    if not torch.cuda.is_available():
        return "schedulefree's foreach step (the fused one needs CUDA)"
    return "fused (rnnlab.train.sf_adamw) on CUDA parameters"


def _named(p: torch.Tensor) -> str:
    """A declined parameter as the warning names it (formatted only where one is declined: the
    check runs every step)."""
    return f"a parameter of shape {tuple(p.shape)}"


class AdamWScheduleFree(schedulefree.AdamWScheduleFree):
    """``schedulefree.AdamWScheduleFree`` whose step runs the fused kernel when the kernel takes
    every parameter with a gradient (:meth:`_fused_applies`), else schedulefree's step."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:  # first: it makes the gradients that decide the path
            with torch.enable_grad():
                loss = closure()
        if not self._fused_applies():
            self._say_why_not_fused()
            super().step()
            return loss
        if not self.param_groups[0]["train_mode"]:
            raise RuntimeError("the optimizer is in eval mode: call opt.train() before opt.step()")
        for group in self.param_groups:  # schedulefree 1.4's scalars, in its order
            beta1, beta2 = group["betas"]
            k, warmup = group["k"], group["warmup_steps"]
            lr = group["lr"] * ((k + 1) / warmup if k < warmup else 1.0)
            group["scheduled_lr"] = lr
            lr_max = group["lr_max"] = max(lr, group["lr_max"])
            weight = ((k + 1) ** group["r"]) * (lr_max ** group["weight_lr_power"])
            weight_sum = group["weight_sum"] = group["weight_sum"] + weight
            ckp1 = weight / weight_sum if weight_sum else 0.0
            active = [p for p in group["params"] if p.grad is not None]
            for p in active:
                if "z" not in self.state[p]:
                    self.state[p]["z"] = torch.clone(p, memory_format=torch.preserve_format)
                    self.state[p]["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            bias_correction2 = 1 - beta2 ** (k + 1)
            inv_bc2 = 1 / bias_correction2 if bias_correction2 else float("inf")  # C++'s 1. / 0.
            scalars = [float(v) for v in (beta2, 1 - beta2, inv_bc2, group["eps"], group["weight_decay"], ckp1,
                                          lr * (beta1 * (1 - ckp1) - 1), lr)]
            for device, dtype in {(p.device, p.dtype) for p in active}:
                params = [p for p in active if (p.device, p.dtype) == (device, dtype)]
                self._launch(params, [self.state[p]["z"] for p in params],
                             [self.state[p]["exp_avg_sq"] for p in params], scalars,
                             has_decay=group["weight_decay"] != 0)
            group["k"] = k + 1
        return loss

    def _fused_applies(self) -> bool:
        """Whether the kernel takes every parameter that has a gradient (and its state, if any):
        plain CUDA tensors (not FSDP2's DTensors), a dtype of :data:`DTYPES` throughout,
        contiguous and 16-byte aligned."""
        return self._declined() is None

    def _declined(self) -> str | None:
        """None where the kernel takes every parameter (:meth:`_fused_applies`), else why not: ""
        where that is by design (no Triton, CPU parameters, FSDP2's DTensor shards), else the first
        parameter the kernel cannot take and what it lacks."""
        if triton is None:
            return ""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = [self.state[p][k] for k in ("z", "exp_avg_sq") if k in self.state[p]]
                tensors = (p.data, p.grad, *state)
                if not p.is_cuda or any(type(t) is not torch.Tensor for t in tensors):  # FSDP2's shards
                    return ""
                if p.dtype not in DTYPES:
                    return f"{_named(p)} in {p.dtype} (it takes {' and '.join(str(d) for d in DTYPES)})"
                if any(t.dtype != p.dtype for t in tensors):
                    return f"{_named(p)} whose gradient or state is not in its dtype, {p.dtype}"
                if not all(t.is_contiguous() for t in tensors):
                    return f"{_named(p)} (or its gradient or state) that is not contiguous"
                if any(t.data_ptr() % 16 for t in tensors):  # read as 16-byte vectors
                    return f"{_named(p)} (or its gradient or state) that is not 16-byte aligned"
        return None

    def _say_why_not_fused(self) -> None:
        """Warn once where the fused step declines a CUDA parameter it is not declined by design
        for: the run then steps at schedulefree's speed (~5 ms more a step at 400M on an H200),
        which would slow that model's tok/s beside the others'."""
        if self.__dict__.get("_said_why") or not (why := self._declined()):
            return
        self._said_why = True
        warnings.warn(f"Schedule-Free AdamW's fused step does not take {why}: schedulefree's slower "
                      f"foreach step runs for this optimizer")

    def _block_map(self, numels: tuple[int, ...], device) -> tuple[torch.Tensor, torch.Tensor]:
        """For one list of tensor sizes: which tensor each program works on, and each tensor's
        first program (a model's parameter sizes do not change: built once per list)."""
        maps = self.__dict__.setdefault("_block_maps", {})
        key = (numels, str(device))
        if key not in maps:
            blocks = torch.tensor([-(-n // BLOCK) for n in numels])
            first = torch.cumsum(blocks, 0) - blocks
            owner = torch.repeat_interleave(torch.arange(len(numels)), blocks)
            maps[key] = (owner.to(device, torch.int32), first.to(device, torch.int64))
        return maps[key]

    def _launch(self, params, zs, sqs, scalars, has_decay):
        """One launch over all of ``params`` (one device and dtype): their y, z, second-moment and gradient
        addresses go in as a table, copied each step (loading a state dict replaces the state
        tensors, and each backward allocates new gradients)."""
        numels = tuple(p.numel() for p in params)
        owner, first = self._block_map(numels, params[0].device)
        table = torch.tensor([[t.data_ptr() for t in ts] for ts in (params, zs, sqs, [p.grad for p in params])]
                             + [list(numels)], dtype=torch.int64)
        if params[0].is_cuda:  # an asynchronous copy (a pageable one would wait for the backward)
            table = table.pin_memory().to(params[0].device, non_blocking=True)
        dt = tl.bfloat16 if params[0].dtype == torch.bfloat16 else tl.float32
        with torch.cuda.device(params[0].device) if params[0].is_cuda else contextlib.nullcontext():
            _sf_adamw_kernel[(owner.numel(),)](table, len(params), owner, first, *scalars, DT=dt, BLOCK=BLOCK,
                                               HAS_DECAY=has_decay, num_warps=8)


if triton is not None:

    @triton.jit
    def _round(x, DT: tl.constexpr):
        """``x`` (fp32) rounded to the parameters' dtype, as a ``foreach`` op stores its result."""
        return x.to(DT).to(tl.float32)

    @triton.jit
    def _sf_adamw_kernel(table, n_tensors, owner, first, beta2, one_minus_beta2, inv_bias_correction2, eps, decay,
                         ckp1, y_coef, lr, DT: tl.constexpr, BLOCK: tl.constexpr, HAS_DECAY: tl.constexpr):
        """One block of one tensor: its addresses from the table (16-byte aligned, checked on the
        host), then the step, without a mask (vector loads and stores) unless the block is the
        tensor's partial last one."""
        pid = tl.program_id(0)
        t = tl.load(owner + pid)
        start = (pid - tl.load(first + t)) * BLOCK
        offs = tl.max_contiguous(tl.multiple_of(start + tl.arange(0, BLOCK), BLOCK), BLOCK)
        n = tl.load(table + 4 * n_tensors + t)
        y_ptr = tl.multiple_of(tl.load(table + t).to(tl.pointer_type(DT)), 16)
        z_ptr = tl.multiple_of(tl.load(table + n_tensors + t).to(tl.pointer_type(DT)), 16)
        sq_ptr = tl.multiple_of(tl.load(table + 2 * n_tensors + t).to(tl.pointer_type(DT)), 16)
        g_ptr = tl.multiple_of(tl.load(table + 3 * n_tensors + t).to(tl.pointer_type(DT)), 16)
        if start + BLOCK <= n:
            _sf_adamw_block(y_ptr, z_ptr, sq_ptr, g_ptr, offs, n, beta2, one_minus_beta2, inv_bias_correction2, eps,
                            decay, ckp1, y_coef, lr, DT, HAS_DECAY, False)
        else:
            _sf_adamw_block(y_ptr, z_ptr, sq_ptr, g_ptr, offs, n, beta2, one_minus_beta2, inv_bias_correction2, eps,
                            decay, ckp1, y_coef, lr, DT, HAS_DECAY, True)

    @triton.jit
    def _sf_adamw_block(y_ptr, z_ptr, sq_ptr, g_ptr, offs, n, beta2, one_minus_beta2, inv_bias_correction2, eps,
                        decay, ckp1, y_coef, lr, DT: tl.constexpr, HAS_DECAY: tl.constexpr, MASKED: tl.constexpr):
        """schedulefree's foreach step on elements ``offs`` of one tensor, in its order of
        operations, each in the fp32 expression PyTorch's CUDA foreach kernel evaluates (the FMAs
        spelt out)."""
        mask = offs < n if MASKED else None
        y = tl.load(y_ptr + offs, mask=mask).to(tl.float32)
        z = tl.load(z_ptr + offs, mask=mask).to(tl.float32)
        sq = tl.load(sq_ptr + offs, mask=mask).to(tl.float32)
        g = tl.load(g_ptr + offs, mask=mask).to(tl.float32)
        sq = _round(sq * beta2, DT)  # exp_avg_sq.mul_(beta2)
        sq = _round(tl.fma(one_minus_beta2, g * g, sq), DT)  # .addcmul_(grad, grad, value=1 - beta2)
        d = _round(sq * inv_bias_correction2, DT)  # denom = sq / bc2: times the reciprocal
        d = _round(tl.math.sqrt_rn(d), DT)  # .sqrt_()
        d = _round(d + eps, DT)  # .add_(eps)
        u = _round(tl.math.div_rn(g, d), DT)  # grad.div_(denom)
        if HAS_DECAY:  # schedulefree skips the op when the decay is 0
            u = _round(tl.fma(decay, y, u), DT)  # .add_(y, alpha=decay)
        # y.lerp_(z, ckp1), torch's formula for either half of the weight's range
        diff = z - y
        y = _round(tl.where(ckp1 < 0.5, tl.fma(ckp1, diff, y), tl.fma(-diff, 1 - ckp1, z)), DT)
        y = _round(tl.fma(y_coef, u, y), DT)  # y.add_(grad, alpha=lr * (beta1 * (1 - ckp1) - 1))
        z = _round(tl.fma(-lr, u, z), DT)  # z.sub_(grad, alpha=lr)
        tl.store(y_ptr + offs, y.to(DT), mask=mask)
        tl.store(z_ptr + offs, z.to(DT), mask=mask)
        tl.store(sq_ptr + offs, sq.to(DT), mask=mask)
