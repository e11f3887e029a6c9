"""Prototype: the heads forward in Gluon with explicit layouts."""
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import mma_v2


@gluon.jit
def _tanh_fast(x):
    return gl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f", [x], dtype=gl.float32,
                                     is_pure=True, pack=1)


@gluon.jit
def _step(prev, nxt, wt0, wt1, x, h_ptrs, mask, KH: gl.constexpr, KSPLIT: gl.constexpr,
          a_l: gl.constexpr, mma: gl.constexpr, STORE: gl.constexpr, TANH: gl.constexpr):
    if KSPLIT == 2:
        acc = mma_v2(prev.slice(0, KH, dim=1).load(a_l), wt0, x.to(gl.float32))
        acc1 = mma_v2(prev.slice(KH, KH, dim=1).load(a_l), wt1, gl.zeros(x.shape, gl.float32, mma))
        acc = acc + acc1
    else:
        acc = mma_v2(prev.load(a_l), wt0, x.to(gl.float32))
    if TANH:
        acc = _tanh_fast(acc)
    h = acc.to(h_ptrs.dtype.element_ty)
    if STORE:
        gl.store(h_ptrs, h, mask=mask)
    nxt.store(h)
    gl.thread_barrier()


@gluon.jit
def heads_fwd_gluon(wx_ptr, w_ptr, h_ptr, B, T, H,
                    HD: gl.constexpr, BT: gl.constexpr, NW: gl.constexpr, KSPLIT: gl.constexpr,
                    LOAD: gl.constexpr = True, STORE: gl.constexpr = True, TANH: gl.constexpr = True,
                    U4: gl.constexpr = False):
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[1, NW], instr_shape=[16, 8])
    a_l: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
    b_l: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=mma, k_width=2)
    blk: gl.constexpr = gl.BlockedLayout(size_per_thread=[8, 1], threads_per_warp=[16, 2], warps_per_cta=[1, NW], order=[0, 1])
    sh: gl.constexpr = gl.SwizzledSharedLayout(vec=8, per_phase=1, max_phase=8, order=[1, 0])
    sh_w: gl.constexpr = gl.SwizzledSharedLayout(vec=8, per_phase=1, max_phase=8, order=[0, 1])
    head = gl.program_id(0)
    pid_b = gl.program_id(1)
    # W^T into registers (B operand) once: wt[k, n] = W[head, n, k]
    kk = gl.arange(0, HD, layout=gl.SliceLayout(1, blk))
    nn = gl.arange(0, HD, layout=gl.SliceLayout(0, blk))
    w_tile = gl.load(w_ptr + head * HD * HD + kk[:, None] + nn[None, :] * HD)  # [k, n]
    w_sm = gl.allocate_shared_memory(w_ptr.dtype.element_ty, [HD, HD], sh_w, w_tile)
    KH: gl.constexpr = HD // KSPLIT
    wt0 = w_sm.slice(0, KH, dim=0).load(b_l)
    wt1 = wt0
    if KSPLIT == 2:
        wt1 = w_sm.slice(KH, KH, dim=0).load(b_l)
    # the state tile exchanged between warps: two buffers, one barrier a step
    h_a = gl.allocate_shared_memory(h_ptr.dtype.element_ty, [BT, HD], sh)
    h_b = gl.allocate_shared_memory(h_ptr.dtype.element_ty, [BT, HD], sh)
    rb = pid_b * BT + gl.arange(0, BT, layout=gl.SliceLayout(1, mma))
    rc = head * HD + gl.arange(0, HD, layout=gl.SliceLayout(0, mma))
    mask = (rb < B)[:, None] & (rc < H)[None, :]
    offs = rb[:, None].to(gl.int64) * T * H + rc[None, :]
    h_b.store(gl.zeros([BT, HD], h_ptr.dtype.element_ty, mma))
    gl.thread_barrier()
    if U4:
        x0 = gl.load(wx_ptr + offs, mask=mask & (T > 0), other=0.0)
        x1 = gl.load(wx_ptr + offs + H, mask=mask & (T > 1), other=0.0)
        x2 = gl.load(wx_ptr + offs + 2 * H, mask=mask & (T > 2), other=0.0)
        x3 = gl.load(wx_ptr + offs + 3 * H, mask=mask & (T > 3), other=0.0)
        for t in range(0, T, 4):
            n0 = gl.load(wx_ptr + offs + (t + 4) * H, mask=mask & (t + 4 < T) & LOAD, other=0.0)
            n1 = gl.load(wx_ptr + offs + (t + 5) * H, mask=mask & (t + 5 < T) & LOAD, other=0.0)
            n2 = gl.load(wx_ptr + offs + (t + 6) * H, mask=mask & (t + 6 < T) & LOAD, other=0.0)
            n3 = gl.load(wx_ptr + offs + (t + 7) * H, mask=mask & (t + 7 < T) & LOAD, other=0.0)
            _step(h_b, h_a, wt0, wt1, x0, h_ptr + offs + t * H, mask, KH, KSPLIT, a_l, mma, STORE, TANH)
            _step(h_a, h_b, wt0, wt1, x1, h_ptr + offs + (t + 1) * H, mask & (t + 1 < T), KH, KSPLIT, a_l, mma, STORE, TANH)
            _step(h_b, h_a, wt0, wt1, x2, h_ptr + offs + (t + 2) * H, mask & (t + 2 < T), KH, KSPLIT, a_l, mma, STORE, TANH)
            _step(h_a, h_b, wt0, wt1, x3, h_ptr + offs + (t + 3) * H, mask & (t + 3 < T), KH, KSPLIT, a_l, mma, STORE, TANH)
            x0 = n0
            x1 = n1
            x2 = n2
            x3 = n3
    else:
        x0 = gl.load(wx_ptr + offs, mask=mask & (T > 0), other=0.0)
        x1 = gl.load(wx_ptr + offs + H, mask=mask & (T > 1), other=0.0)
        for t in range(0, T, 2):
            x2 = gl.load(wx_ptr + offs + (t + 2) * H, mask=mask & (t + 2 < T) & LOAD, other=0.0)
            x3 = gl.load(wx_ptr + offs + (t + 3) * H, mask=mask & (t + 3 < T) & LOAD, other=0.0)
            _step(h_b, h_a, wt0, wt1, x0, h_ptr + offs + t * H, mask, KH, KSPLIT, a_l, mma, STORE, TANH)
            _step(h_a, h_b, wt0, wt1, x1, h_ptr + offs + (t + 1) * H, mask & (t + 1 < T), KH, KSPLIT, a_l, mma, STORE, TANH)
            x0 = x2
            x1 = x3


from triton.experimental.gluon.language.nvidia.ampere import async_copy as ac


@gluon.jit
def _sstep(prev, nxt, xcur, xdst, wt, x_src, x_mask, out_ptrs, out_mask,
           a_l: gl.constexpr, mma: gl.constexpr, io: gl.constexpr):
    """One step after the previous step's barrier: h_{t-1} in ``prev``, x_t in ``xcur``."""
    a = prev.load(a_l)
    x = xcur.load(mma)
    gl.store(out_ptrs, prev.load(io), mask=out_mask)  # h_{t-1}, coalesced, from the exchange tile
    ac.async_copy_global_to_shared(xdst, x_src, mask=x_mask)  # x_{t+2}
    ac.commit_group()
    acc = mma_v2(a, wt, x.to(gl.float32))
    nxt.store(_tanh_fast(acc).to(nxt.dtype))
    ac.wait_group(1)  # this thread's copy of x_{t+1} has landed
    gl.thread_barrier()


@gluon.jit
def heads_fwd_smem(wx_ptr, w_ptr, h_ptr, B, T, H, HD: gl.constexpr, BT: gl.constexpr, NW: gl.constexpr):
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[1, NW], instr_shape=[16, 8])
    a_l: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
    b_l: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=mma, k_width=2)
    blk: gl.constexpr = gl.BlockedLayout(size_per_thread=[8, 1], threads_per_warp=[16, 2], warps_per_cta=[1, NW], order=[0, 1])
    io: gl.constexpr = gl.BlockedLayout(size_per_thread=[1, 8], threads_per_warp=[2, 16], warps_per_cta=[NW, 1], order=[1, 0])
    sh: gl.constexpr = gl.SwizzledSharedLayout(vec=8, per_phase=1, max_phase=8, order=[1, 0])
    sh_w: gl.constexpr = gl.SwizzledSharedLayout(vec=8, per_phase=1, max_phase=8, order=[0, 1])
    head = gl.program_id(0)
    pid_b = gl.program_id(1)
    kk = gl.arange(0, HD, layout=gl.SliceLayout(1, blk))
    nn = gl.arange(0, HD, layout=gl.SliceLayout(0, blk))
    w_sm = gl.allocate_shared_memory(w_ptr.dtype.element_ty, [HD, HD], sh_w,
                                     gl.load(w_ptr + head * HD * HD + kk[:, None] + nn[None, :] * HD))
    wt = w_sm.load(b_l)
    dt: gl.constexpr = h_ptr.dtype.element_ty
    ha = gl.allocate_shared_memory(dt, [BT, HD], sh)
    hb = gl.allocate_shared_memory(dt, [BT, HD], sh)
    x0 = gl.allocate_shared_memory(dt, [BT, HD], sh)
    x1 = gl.allocate_shared_memory(dt, [BT, HD], sh)
    x2 = gl.allocate_shared_memory(dt, [BT, HD], sh)
    rb = pid_b * BT + gl.arange(0, BT, layout=gl.SliceLayout(1, io))
    rc = head * HD + gl.arange(0, HD, layout=gl.SliceLayout(0, io))
    m = (rb < B)[:, None] & (rc < H)[None, :]
    offs = rb[:, None].to(gl.int64) * T * H + rc[None, :]
    hb.store(gl.zeros([BT, HD], dt, mma))
    ac.async_copy_global_to_shared(x0, wx_ptr + offs, mask=m & (T > 0))
    ac.commit_group()
    ac.async_copy_global_to_shared(x1, wx_ptr + offs + H, mask=m & (T > 1))
    ac.commit_group()
    ac.wait_group(1)
    gl.thread_barrier()
    for t in range(0, T, 6):
        _sstep(hb, ha, x0, x2, wt, wx_ptr + offs + (t + 2) * H, m & (t + 2 < T),
               h_ptr + offs + (t - 1) * H, m & (t >= 1) & (t - 1 < T), a_l, mma, io)
        _sstep(ha, hb, x1, x0, wt, wx_ptr + offs + (t + 3) * H, m & (t + 3 < T),
               h_ptr + offs + t * H, m & (t < T), a_l, mma, io)
        _sstep(hb, ha, x2, x1, wt, wx_ptr + offs + (t + 4) * H, m & (t + 4 < T),
               h_ptr + offs + (t + 1) * H, m & (t + 1 < T), a_l, mma, io)
        _sstep(ha, hb, x0, x2, wt, wx_ptr + offs + (t + 5) * H, m & (t + 5 < T),
               h_ptr + offs + (t + 2) * H, m & (t + 2 < T), a_l, mma, io)
        _sstep(hb, ha, x1, x0, wt, wx_ptr + offs + (t + 6) * H, m & (t + 6 < T),
               h_ptr + offs + (t + 3) * H, m & (t + 3 < T), a_l, mma, io)
        _sstep(ha, hb, x2, x1, wt, wx_ptr + offs + (t + 7) * H, m & (t + 7 < T),
               h_ptr + offs + (t + 4) * H, m & (t + 4 < T), a_l, mma, io)
    ac.wait_group(0)
    gl.store(h_ptr + offs + (T - 1) * H, hb.load(io), mask=m & (T % 6 == 0) & (T > 0))


@gluon.jit
def _bstep(dp_prev, dp_next, g_sm, h_sm, g_dst, h_dst, w_b, dw, dh0, t, g_src, h_src, src_mask, in_mask,
           out_ptrs, out_mask, a_l: gl.constexpr, aw_l: gl.constexpr, bw_l: gl.constexpr,
           mma: gl.constexpr, io: gl.constexpr):
    """Step t of the backward after the previous step's barrier: dpre_{t+1} in ``dp_prev``,
    g_t and h_t in ``g_sm`` / ``h_sm``."""
    carry = mma_v2(dp_prev.load(a_l), w_b, gl.zeros([16, w_b.shape[1]], gl.float32, mma))  # dpre_{t+1} @ W
    dw = mma_v2(dp_prev.permute([1, 0]).load(aw_l), h_sm.load(bw_l), dw)  # += dpre_{t+1}^T h_t
    gl.store(out_ptrs, dp_prev.load(io), mask=out_mask)  # dpre_{t+1}, coalesced
    ac.async_copy_global_to_shared(g_dst, g_src, mask=src_mask)  # g_{t-2}
    ac.async_copy_global_to_shared(h_dst, h_src, mask=src_mask)  # h_{t-2}
    ac.commit_group()
    dh0 = gl.where(t == -1, carry, dh0)
    hh = h_sm.load(mma).to(gl.float32)
    dpre = (g_sm.load(mma).to(gl.float32) + carry) * (1.0 - hh * hh)
    dp_next.store(dpre.to(dp_next.dtype))
    ac.wait_group(1)
    gl.thread_barrier()
    return dw, dh0


@gluon.jit
def heads_bwd_smem(w_ptr, h_ptr, g_ptr, dpre_ptr, dh0_ptr, dw_ptr, B, T, H,
                   HD: gl.constexpr, BT: gl.constexpr, NW: gl.constexpr):
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[1, NW], instr_shape=[16, 8])
    a_l: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
    b_l: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=mma, k_width=2)
    mma_w: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[NW, 1], instr_shape=[16, 8])
    aw_l: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma_w, k_width=2)
    bw_l: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=mma_w, k_width=2)
    blk: gl.constexpr = gl.BlockedLayout(size_per_thread=[1, 8], threads_per_warp=[2, 16], warps_per_cta=[NW, 1], order=[1, 0])
    io: gl.constexpr = gl.BlockedLayout(size_per_thread=[1, 8], threads_per_warp=[2, 16], warps_per_cta=[NW, 1], order=[1, 0])
    sh: gl.constexpr = gl.SwizzledSharedLayout(vec=8, per_phase=1, max_phase=8, order=[1, 0])
    head = gl.program_id(0)
    pid_b = gl.program_id(1)
    dt: gl.constexpr = h_ptr.dtype.element_ty
    kk = gl.arange(0, HD, layout=gl.SliceLayout(1, blk))
    nn = gl.arange(0, HD, layout=gl.SliceLayout(0, blk))
    w_sm = gl.allocate_shared_memory(dt, [HD, HD], sh, gl.load(w_ptr + head * HD * HD + kk[:, None] * HD + nn[None, :]))
    w_b = w_sm.load(b_l)  # w[n, k] = W[head, n, k]: carry = dpre @ W
    dpa = gl.allocate_shared_memory(dt, [BT, HD], sh)
    dpb = gl.allocate_shared_memory(dt, [BT, HD], sh)
    g0 = gl.allocate_shared_memory(dt, [BT, HD], sh)
    g1 = gl.allocate_shared_memory(dt, [BT, HD], sh)
    g2 = gl.allocate_shared_memory(dt, [BT, HD], sh)
    h0s = gl.allocate_shared_memory(dt, [BT, HD], sh)
    h1s = gl.allocate_shared_memory(dt, [BT, HD], sh)
    h2s = gl.allocate_shared_memory(dt, [BT, HD], sh)
    rb = pid_b * BT + gl.arange(0, BT, layout=gl.SliceLayout(1, io))
    rc = head * HD + gl.arange(0, HD, layout=gl.SliceLayout(0, io))
    m = (rb < B)[:, None] & (rc < H)[None, :]
    offs = rb[:, None].to(gl.int64) * T * H + rc[None, :]
    dpb.store(gl.zeros([BT, HD], dt, mma))
    ac.async_copy_global_to_shared(g0, g_ptr + offs + (T - 1) * H, mask=m & (T > 0))
    ac.async_copy_global_to_shared(h0s, h_ptr + offs + (T - 1) * H, mask=m & (T > 0))
    ac.commit_group()
    ac.async_copy_global_to_shared(g1, g_ptr + offs + (T - 2) * H, mask=m & (T > 1))
    ac.async_copy_global_to_shared(h1s, h_ptr + offs + (T - 2) * H, mask=m & (T > 1))
    ac.commit_group()
    ac.wait_group(1)
    gl.thread_barrier()
    dw = gl.zeros([HD, HD], gl.float32, mma_w)
    dh0 = gl.zeros([BT, HD], gl.float32, mma)
    for p in range(0, T + 1, 6):  # positions p .. p + 5: t = T - 1 - p - k, down to t = -1 at least
        t = T - 1 - p
        dw, dh0 = _bstep(dpb, dpa, g0, h0s, g2, h2s, w_b, dw, dh0, t, g_ptr + offs + (t - 2) * H,
                         h_ptr + offs + (t - 2) * H, m & (t - 2 >= 0), m, dpre_ptr + offs + (t + 1) * H,
                         m & (t + 1 < T) & (t + 1 >= 0), a_l, aw_l, bw_l, mma, io)
        t = T - 2 - p
        dw, dh0 = _bstep(dpa, dpb, g1, h1s, g0, h0s, w_b, dw, dh0, t, g_ptr + offs + (t - 2) * H,
                         h_ptr + offs + (t - 2) * H, m & (t - 2 >= 0), m, dpre_ptr + offs + (t + 1) * H,
                         m & (t + 1 < T) & (t + 1 >= 0), a_l, aw_l, bw_l, mma, io)
        t = T - 3 - p
        dw, dh0 = _bstep(dpb, dpa, g2, h2s, g1, h1s, w_b, dw, dh0, t, g_ptr + offs + (t - 2) * H,
                         h_ptr + offs + (t - 2) * H, m & (t - 2 >= 0), m, dpre_ptr + offs + (t + 1) * H,
                         m & (t + 1 < T) & (t + 1 >= 0), a_l, aw_l, bw_l, mma, io)
        t = T - 4 - p
        dw, dh0 = _bstep(dpa, dpb, g0, h0s, g2, h2s, w_b, dw, dh0, t, g_ptr + offs + (t - 2) * H,
                         h_ptr + offs + (t - 2) * H, m & (t - 2 >= 0), m, dpre_ptr + offs + (t + 1) * H,
                         m & (t + 1 < T) & (t + 1 >= 0), a_l, aw_l, bw_l, mma, io)
        t = T - 5 - p
        dw, dh0 = _bstep(dpb, dpa, g1, h1s, g0, h0s, w_b, dw, dh0, t, g_ptr + offs + (t - 2) * H,
                         h_ptr + offs + (t - 2) * H, m & (t - 2 >= 0), m, dpre_ptr + offs + (t + 1) * H,
                         m & (t + 1 < T) & (t + 1 >= 0), a_l, aw_l, bw_l, mma, io)
        t = T - 6 - p
        dw, dh0 = _bstep(dpa, dpb, g2, h2s, g1, h1s, w_b, dw, dh0, t, g_ptr + offs + (t - 2) * H,
                         h_ptr + offs + (t - 2) * H, m & (t - 2 >= 0), m, dpre_ptr + offs + (t + 1) * H,
                         m & (t + 1 < T) & (t + 1 >= 0), a_l, aw_l, bw_l, mma, io)
    ac.wait_group(0)
    rbm = pid_b * BT + gl.arange(0, BT, layout=gl.SliceLayout(1, mma))
    rcm = head * HD + gl.arange(0, HD, layout=gl.SliceLayout(0, mma))
    gl.store(dh0_ptr + rbm[:, None] * H + rcm[None, :], dh0, mask=(rbm < B)[:, None] & (rcm < H)[None, :])
    rk = gl.arange(0, HD, layout=gl.SliceLayout(1, mma_w))
    rn = gl.arange(0, HD, layout=gl.SliceLayout(0, mma_w))
    gl.store(dw_ptr + (pid_b * (H // HD) + head) * HD * HD + rk[:, None] * HD + rn[None, :], dw)
