"""Check the Gluon heads forward against float64 and the package's Triton kernel, then time both."""
import json, os, sys, time
import torch
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import heads_gluon as G
from rnnlab.ops.elman import heads
from rnnlab.ops.elman.options import DEFAULT

dev = "cuda"
def ref64(wx, w):
    B, T, H = wx.shape; nh, hd, _ = w.shape
    h = torch.zeros(B, nh, hd, dtype=torch.float64, device=dev)
    out = []
    w64 = w.double()
    for t in range(T):
        r = torch.einsum("bnk,njk->bnj", h, w64)
        h = torch.tanh(wx[:, t].double().view(B, nh, hd) + r)
        out.append(h.reshape(B, H))
    return torch.stack(out, 1)

def gluon_fwd(wx, w, ks, **kw):
    B, T, H = wx.shape; nh, hd, _ = w.shape
    h = torch.empty_like(wx)
    G.heads_fwd_gluon[(nh, (B + 15) // 16)](wx, w, h, B, T, H, HD=hd, BT=16, NW=kw.get('NW', 8), KSPLIT=ks, num_warps=kw.pop('NW', 8), **kw)
    return h

def smem_fwd(wx, w):
    B, T, H = wx.shape; nh, hd, _ = w.shape
    h = torch.empty_like(wx)
    G.heads_fwd_smem[(nh, (B + 15) // 16)](wx, w, h, B, T, H, HD=hd, BT=16, NW=8, num_warps=8)
    return h

def smem_bwd(g, w, h):
    B, T, H = h.shape; nh, hd, _ = w.shape
    nbt = (B + 15) // 16
    dpre = torch.empty_like(h)
    dh0 = torch.zeros(B, H, device=dev, dtype=torch.float32)
    dw = torch.zeros(nbt, nh, hd, hd, device=dev, dtype=torch.float32)
    G.heads_bwd_smem[(nh, nbt)](w, h, g, dpre, dh0, dw, B, T, H, HD=hd, BT=16, NW=8, num_warps=8)
    return dpre, dw.sum(0), dh0

def bwd_check(B, T, nh, hd):
    H = nh * hd
    wx = (torch.randn(B, T, H, device=dev) * 0.5).bfloat16()
    w = (torch.randn(nh, hd, hd, device=dev) / hd ** 0.5).bfloat16()
    g = torch.randn(B, T, H, device=dev).bfloat16()
    x64 = wx.double().requires_grad_(); w64 = w.double().requires_grad_()
    h064 = torch.zeros(B, H, dtype=torch.float64, device=dev, requires_grad=True)
    hs, hcur = [], h064.view(B, nh, hd)
    for t in range(T):
        hcur = torch.tanh(x64[:, t].view(B, nh, hd) + torch.einsum("bnk,njk->bnj", hcur, w64))
        hs.append(hcur.reshape(B, H))
    dx, dw_, dh0_ = torch.autograd.grad(torch.stack(hs, 1), [x64, w64, h064], g.double())
    h = heads.forward(wx, w, None, DEFAULT)
    tp, tw, th, _ = heads.backward(g, w, h, None, True, DEFAULT)
    sp, sw, sh = smem_bwd(g, w, h)
    rel = lambda a, b: ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()
    row = {"bwd_shape": [B, T, nh, hd], "triton_rel": [rel(tp, dx), rel(tw, dw_), rel(th, dh0_)],
           "smem_rel": [rel(sp, dx), rel(sw, dw_), rel(sh, dh0_)],
           "smem_vs_triton_max": [(sp.double() - tp.double()).abs().max().item(), (sw.double() - tw.double()).abs().max().item(),
                                  (sh.double() - th.double()).abs().max().item()]}
    res["checks"].append(row); print(row, flush=True)

res = {"device": torch.cuda.get_device_name(), "checks": [], "times": {}}
torch.manual_seed(0)
for (B, T, nh, hd) in [(32, 64, 14, 128), (3, 37, 2, 128), (1, 1, 1, 128), (5, 50, 3, 64), (2, 12, 1, 128), (4, 6, 2, 64), (32, 512, 14, 128)]:
    H = nh * hd
    wx = (torch.randn(B, T, H, device=dev) * 0.5).bfloat16()
    w = (torch.randn(nh, hd, hd, device=dev) / hd ** 0.5).bfloat16()
    r = ref64(wx, w)
    tri = heads.forward(wx, w, None, DEFAULT)
    row = {"shape": [B, T, nh, hd], "triton_err": (tri.double() - r).abs().max().item()}
    for ks in (1, 6):
        g = gluon_fwd(wx, w, ks) if ks < 4 else gluon_fwd(wx, w, 1, U4=True) if ks == 4 else smem_fwd(wx, w)
        row[f"gluon{ks}_err"] = (g.double() - r).abs().max().item()
        row[f"gluon{ks}_vs_triton"] = (g.double() - tri.double()).abs().max().item()
    res["checks"].append(row); print(row, flush=True)

for shp in [(32, 64, 14, 128), (3, 37, 2, 128), (1, 1, 1, 128), (5, 50, 3, 64), (2, 12, 1, 128), (4, 5, 2, 64), (32, 512, 14, 128)]:
    bwd_check(*shp)
B, T, nh, hd = 32, 512, 14, 128
H = nh * hd
wx = (torch.randn(B, T, H, device=dev) * 0.5).bfloat16()
w = (torch.randn(nh, hd, hd, device=dev) / hd ** 0.5).bfloat16()
fns = {"triton": lambda: heads.forward(wx, w, None, DEFAULT), "gluon1": lambda: gluon_fwd(wx, w, 1),
       "smem": lambda: smem_fwd(wx, w), "chain": lambda: gluon_fwd(wx, w, 1, LOAD=False, STORE=False)}
gg = torch.randn(B, T, H, device=dev).bfloat16()
hh = heads.forward(wx, w, None, DEFAULT)
fns["bwd_triton"] = lambda: heads.backward(gg, w, hh, None, True, DEFAULT)
fns["bwd_smem"] = lambda: smem_bwd(gg, w, hh)
for f in fns.values():
    f()
torch.cuda.synchronize()
times = {k: [] for k in fns}
for rnd in range(5):
    for k, f in fns.items():
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(50):
            f()
        e.record(); torch.cuda.synchronize()
        times[k].append(s.elapsed_time(e) / 50)
for k, v in times.items():
    v.sort(); res["times"][k] = v
    print(k, "median ms", v[2], "all", [round(x, 4) for x in v], flush=True)
json.dump(res, open(os.path.join(os.environ.get("OUT", "/tmp"), "gluon_fwd.json"), "w"), indent=1)
