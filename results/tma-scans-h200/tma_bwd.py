"""One-off: the dropped TMA backward (98126e3's file) at several pipeline depths beside the
package's pointer backward, B 32 T 512 bf16, interleaved rounds; gradients compared."""
import sys, json, torch, triton
sys.path.insert(0, "benchmarks")
import bench_kernels as bk
from rnnlab.ops.scan import triton as pkg
both = bk.scan_module_from(".gpu/scan_tma_both.py")
B, T, N = 32, 512, 10
rows = []
for name, mode, H in bk.FUSED_SCANS:
    G = mode + 1
    x0 = torch.randn(B, T, G * H, device="cuda", dtype=torch.bfloat16)
    g = torch.randn(B, T, H, device="cuda", dtype=torch.bfloat16)
    h, dref = bk.fused_scan_outputs(x0, mode, g, pkg)
    ptrs = pkg._views(x0, G, H)
    dh0 = torch.zeros(B, H, device="cuda")
    descs = both._tma_descriptors(ptrs, G * H, h.shape, 64, used=mode + 1)
    states = both._tma_descriptors([h, g], H, h.shape, 64)
    grid = (B, triton.cdiv(H, 64))
    fns = []
    dp = torch.empty_like(x0)
    fns.append(("pointer", lambda: [pkg.launch_backward(ptrs, G * H, h, h, g, pkg._views(dp, G, H), dh0, mode, False) for _ in range(N)], 0.0))
    for st in (2, 3, 4):
        d = torch.empty_like(x0)
        f = (lambda d=d, st=st: [both._scan_bwd_tma[grid](*descs, *states, h, *pkg._views(d, G, H), dh0, G * H, T, H, MODE=mode,
                                 HAS_H0=False, BLOCK=64, STAGES=st, num_warps=1) for _ in range(N)])
        f(); torch.cuda.synchronize()
        err = ((d.float() - dref.float()).norm() / dref.float().norm()).item()
        fns.append((f"tma{st}", f, err))
    times = bk.timed_in_rounds([(lab, f, f) for lab, f, _ in fns], 10)
    for lab, _, err in fns:
        rows.append(dict(scan=name, kernel=lab, bwd_ms=round(times[lab][0] / N, 4), rel_err_vs_pointer=err))
        print(rows[-1], flush=True)
    json.dump(rows, open(sys.argv[1], "w"), indent=1)
