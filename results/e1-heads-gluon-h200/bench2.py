"""The Gluon heads scan (candidate module) against float64 and the package's Triton kernels, then timed."""
import json, os, sys
import torch
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rnnlab.ops.elman import heads_gluon as G
from rnnlab.ops.elman.options import ElmanKernelOptions
from rnnlab.ops.elman import heads

dev = "cuda"
DEFAULT = ElmanKernelOptions(heads_gluon=False)  # the Triton kernels
res = {"device": torch.cuda.get_device_name(), "checks": [], "times": {}}
rel = lambda a, b: ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()
mx = lambda a, b: (a.double() - b.double()).abs().max().item()


def check(B, T, nh, hd, with_h0, dtype=torch.bfloat16):
    H = nh * hd
    wx = (torch.randn(B, T, H, device=dev) * 0.5).to(dtype)
    w = (torch.randn(nh, hd, hd, device=dev) * (0.9 / hd ** 0.5)).to(dtype)
    h0 = torch.randn(B, H, device=dev).tanh().to(dtype) if with_h0 else None
    g = torch.randn(B, T, H, device=dev).to(dtype)
    x64, w64 = wx.double().requires_grad_(), w.double().requires_grad_()
    h064 = (h0.double() if with_h0 else torch.zeros(B, H, dtype=torch.float64, device=dev)).requires_grad_()
    hs, hc = [], h064.view(B, nh, hd)
    for t in range(T):
        hc = torch.tanh(x64[:, t].view(B, nh, hd) + torch.einsum("bnk,njk->bnj", hc, w64))
        hs.append(hc.reshape(B, H))
    href = torch.stack(hs, 1) if T else torch.zeros(B, 0, H, dtype=torch.float64, device=dev)
    grads = torch.autograd.grad(href, [x64, w64, h064], g.double(), allow_unused=True) if T else None
    ht = heads.forward(wx, w, h0, DEFAULT)
    hg = G.forward(wx, w, h0)
    row = {"shape": [B, T, nh, hd], "h0": with_h0, "dtype": str(dtype)[6:],
           "fwd_rel": [rel(ht, href), rel(hg, href)] if T else None, "fwd_gluon_vs_triton_max": mx(hg, ht)}
    if T:
        tp, tw, th, _ = heads.backward(g, w, ht, h0, True, DEFAULT)
        sp, sw, sh = G.backward(g, w, ht, h0)
        row["bwd_rel_triton"] = [rel(tp, grads[0]), rel(tw, grads[1]), rel(th, grads[2])]
        row["bwd_rel_gluon"] = [rel(sp, grads[0]), rel(sw, grads[1]), rel(sh, grads[2])]
        row["bwd_gluon_vs_triton_max"] = [mx(sp, tp), mx(sw, tw), mx(sh, th)]
    res["checks"].append(row)
    print(row, flush=True)


torch.manual_seed(0)
for shp in [(32, 64, 14, 128), (3, 37, 2, 128), (1, 1, 1, 128), (5, 50, 3, 64), (2, 12, 1, 128), (4, 5, 2, 64),
            (17, 300, 4, 128), (32, 512, 14, 128)]:
    for with_h0 in (False, True):
        check(*shp, with_h0)
check(3, 40, 2, 128, True, torch.float16)

B, T, nh, hd = 32, 512, 14, 128
H = nh * hd
wx = (torch.randn(B, T, H, device=dev) * 0.5).bfloat16()
w = (torch.randn(nh, hd, hd, device=dev) / hd ** 0.5).bfloat16()
gg = torch.randn(B, T, H, device=dev).bfloat16()
hh = heads.forward(wx, w, None, DEFAULT)
fns = {"fwd_triton": lambda: heads.forward(wx, w, None, DEFAULT), "fwd_gluon": lambda: G.forward(wx, w, None),
       "bwd_triton": lambda: heads.backward(gg, w, hh, None, True, DEFAULT), "bwd_gluon": lambda: G.backward(gg, w, hh, None)}
for f in fns.values():
    f()
torch.cuda.synchronize()
times = {k: [] for k in fns}
for rnd in range(7):
    for k, f in fns.items():
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(50):
            f()
        e.record(); torch.cuda.synchronize()
        times[k].append(s.elapsed_time(e) / 50)
for k, v in times.items():
    v.sort(); res["times"][k] = v
    print(k, "median ms", round(v[3], 4), "all", [round(x, 4) for x in v], flush=True)
json.dump(res, open(os.path.join(os.environ.get("OUT", "/tmp"), "gluon_heads.json"), "w"), indent=1)
