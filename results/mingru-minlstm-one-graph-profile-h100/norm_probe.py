"""Throwaway probe: residual add + LayerNorm at the minGRU shape (16384 x 3520 bf16), fwd+bwd."""
import sys, torch, torch.nn.functional as F
torch.manual_seed(0)
M, D = 16384, int(sys.argv[1]) if len(sys.argv) > 1 else 3520
dev = "cuda"
x = torch.randn(M, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
y = torch.randn(M, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
w = torch.ones(D, device=dev, dtype=torch.bfloat16, requires_grad=True)
b = torch.zeros(D, device=dev, dtype=torch.bfloat16, requires_grad=True)
gs = torch.randn(M, D, device=dev, dtype=torch.bfloat16)
gn = torch.randn(M, D, device=dev, dtype=torch.bfloat16)

def add_ln(x, y, w, b):
    s = x + y
    return s, F.layer_norm(s, (D,), w, b, 1e-5)

def ln(s, w, b):
    return F.layer_norm(s, (D,), w, b, 1e-5)

def timeit(fn, n=50):
    for _ in range(5): fn()
    torch.cuda.synchronize()
    st = [torch.cuda.Event(enable_timing=True) for _ in range(n + 1)]
    st[0].record()
    for i in range(n):
        fn(); st[i + 1].record()
    torch.cuda.synchronize()
    ts = sorted(st[i].elapsed_time(st[i + 1]) * 1e3 for i in range(n))
    return ts[n // 2]

MB = M * D * 2 / 1e6
def report(name, f):
    def fwd():
        return f(x, y, w, b)
    def fb():
        s, n = f(x, y, w, b)
        torch.autograd.backward([s, n], [gs, gn])
    tf = timeit(lambda: fwd()); tfb = timeit(fb)
    print(f"{name:40s} fwd {tf:7.1f} us ({4*MB/tf/1e3:5.2f} TB/s at 4 tensors)  fwd+bwd {tfb:7.1f} us  bwd ~{tfb-tf:7.1f} us ({4*MB/(tfb-tf)/1e3:5.2f} TB/s at 4)", flush=True)

def report_ln(name, f):
    def fwd(): return f(x, w, b)
    def fb():
        n = f(x, w, b); n.backward(gn)
    tf = timeit(fwd); tfb = timeit(fb)
    print(f"{name:40s} fwd {tf:7.1f} us ({2*MB/tf/1e3:5.2f} TB/s at 2)  fwd+bwd {tfb:7.1f} us  bwd ~{tfb-tf:7.1f} us ({3*MB/(tfb-tf)/1e3:5.2f} TB/s at 3)", flush=True)

def copy_bw():
    a = torch.empty(M, D, device=dev, dtype=torch.bfloat16); c = torch.empty_like(a)
    t = timeit(lambda: c.copy_(a)); print(f"copy {t:.1f} us {2*MB/t/1e3:.2f} TB/s", flush=True)

print(torch.cuda.get_device_name(), torch.__version__, "M", M, "D", D, f"{MB:.0f} MB a tensor", flush=True)
copy_bw()
report("eager add+LN", add_ln)
report_ln("eager LN", ln)
report("compiled add+LN", torch.compile(add_ln))
report_ln("compiled LN", torch.compile(ln))
import torch._inductor.config as ic
ic.coordinate_descent_tuning = True
torch._dynamo.reset()
report("compiled add+LN coord-descent", torch.compile(add_ln))
report_ln("compiled LN coord-descent", torch.compile(ln))
