"""Pure-PyTorch SSD (Mamba2's state-space duality scan): the sequential reference ``ssd_scan`` and
the chunked form ``ssd_chunked`` (backend "chunked", what the reference Mamba2 layer trains with).

Per head ``h`` (group ``g = h // (H/G)``), with ``dt`` already positive (softplus applied):

    S_t = exp(dt_t * A_h) * S_{t-1} + dt_t * x_t B_t^T      # S: [P, N]
    y_t = S_t C_t                                          # y: [P]

Shapes: ``x [B,T,H,P]``, ``dt [B,T,H]``, ``A [H]`` (negative), ``B, C [B,T,G,N]``,
``initial_state [B,H,P,N]`` (None = zeros). Math in fp32 (or float64). Both forms return
``(y, S_T)``: outputs in ``x``'s dtype and the final state ``[B,H,P,N]`` in the compute dtype.
``D`` skip and gating are not part of the scan (the layer adds them), matching ``mamba_ssm``'s
``ssd_minimal_discrete`` with ``X = x*dt`` and ``A = A*dt``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rnnlab.ops.dtypes import compute_dtype


def _heads(t: torch.Tensor, nheads: int) -> torch.Tensor:
    """``[B,T,G,N] -> [B,T,H,N]``: head h reads group h // (H/G) (mamba_ssm's convention)."""
    groups = t.shape[2]
    if nheads % groups:
        raise ValueError(f"nheads ({nheads}) must be a multiple of ngroups ({groups})")
    return t.repeat_interleave(nheads // groups, dim=2) if groups != nheads else t


def _up(*ts: torch.Tensor):
    """Upcast to fp32 (float64 stays float64, for gradcheck)."""
    return tuple(t.to(compute_dtype(t.dtype)) for t in ts)


def segsum(x: torch.Tensor) -> torch.Tensor:
    """``[..., T] -> [..., T, T]``: ``out[i, j] = sum(x[j+1 : i+1])`` for ``i >= j``, else -inf
    (the stable form of the SSD paper's Listing 1)."""
    T = x.size(-1)
    x = x[..., None].expand(*x.shape, T)
    x = x.masked_fill(~torch.tril(torch.ones(T, T, dtype=torch.bool, device=x.device), -1), 0)
    out = torch.cumsum(x, dim=-2)
    return out.masked_fill(~torch.tril(torch.ones(T, T, dtype=torch.bool, device=x.device), 0), -torch.inf)


def ssd_chunked(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int = 256,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked SSD: quadratic attention-like form inside chunks of ``chunk_size``, a linear
    recurrence over chunk states between them. ``T`` need not divide ``chunk_size`` (zero
    padding, dt=0, leaves the state unchanged). Returns ``(y, final_state)``."""
    if x.shape[1] == 0:  # no chunks: the sequential form's empty result (outputs [B,0,H,P], the initial state)
        return ssd_scan(x, dt, A, B, C, chunk_size, initial_state)
    dtype = x.dtype
    b, T, h, p = x.shape
    x, dt, A, B, C = _up(x, dt, A, B, C)
    B, C = _heads(B, h), _heads(C, h)
    chunk_size = max(1, min(chunk_size, T))  # the chunked form is exact for any chunk size
    pad = (-T) % chunk_size
    if pad:
        x, B, C = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (x, B, C))
        dt = F.pad(dt, (0, 0, 0, pad))
    nc, L = (T + pad) // chunk_size, chunk_size
    xdt = (x * dt[..., None]).reshape(b, nc, L, h, p)
    B = B.reshape(b, nc, L, h, -1)
    C = C.reshape(b, nc, L, h, -1)
    dA = (dt * A).reshape(b, nc, L, h).permute(0, 3, 1, 2)  # [b, h, c, l]
    cum = torch.cumsum(dA, dim=-1)

    # 1. within each chunk (diagonal blocks)
    decay = torch.exp(segsum(dA))  # [b, h, c, l, s]
    scores = torch.einsum("bclhn,bcshn->bhcls", C, B) * decay
    y_diag = torch.einsum("bhcls,bcshp->bclhp", scores, xdt)
    # 2. state contributed by each chunk, at its end
    decay_states = torch.exp(cum[..., -1:] - cum)  # [b, h, c, l]
    states = torch.einsum("bclhn,bhcl,bclhp->bchpn", B, decay_states, xdt)
    # 3. recurrence over chunk boundaries
    if initial_state is None:
        initial_state = torch.zeros_like(states[:, 0])
    states = torch.cat([_up(initial_state)[0][:, None], states], dim=1)  # [b, c+1, h, p, n]
    decay_chunk = torch.exp(segsum(F.pad(cum[..., -1], (1, 0))))  # [b, h, c+1, c+1]
    states = torch.einsum("bhzc,bchpn->bzhpn", decay_chunk, states)
    states, final = states[:, :-1], states[:, -1]
    # 4. carried-in state -> outputs
    y_off = torch.einsum("bclhn,bchpn,bhcl->bclhp", C, states, torch.exp(cum))
    y = (y_diag + y_off).reshape(b, nc * L, h, p)[:, :T].to(dtype)
    return y, final


def ssd_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int = 256,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference: the recurrence above one time step at a time, ``(y, final_state)``
    (``chunk_size`` is accepted for the common signature and unused)."""
    dtype = x.dtype
    b, T, h, p = x.shape
    x, dt, A, B, C = _up(x, dt, A, B, C)
    B, C = _heads(B, h), _heads(C, h)
    S = x.new_zeros(b, h, p, B.shape[-1]) if initial_state is None else _up(initial_state)[0]
    ys = []
    for t in range(T):
        dA = torch.exp(dt[:, t] * A)  # [b, h]
        S = S * dA[..., None, None] + torch.einsum("bh,bhn,bhp->bhpn", dt[:, t], B[:, t], x[:, t])
        ys.append(torch.einsum("bhpn,bhn->bhp", S, C[:, t]))
    y = torch.stack(ys, dim=1).to(dtype) if T else x.new_zeros(b, 0, h, p).to(dtype)
    return y, S
