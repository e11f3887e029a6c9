#!/usr/bin/env bash
# Nsight Compute's view of rnnlab's recurrence kernels at the 400M widths (B 32, T 512, bf16, the
# package's launch): where their warps stall, how busy memory and the pipes are. Needs a GPU
# machine where ncu reads the hardware counters (Firecracker; the device tool's H200.md) and the
# staged environment (benchmarks/gpu_env.sh); ~1 minute a kernel family.
# Usage: bash benchmarks/ncu_kernels.sh OUTDIR FAMILY [FAMILY ...]
#   scans     the fused minGRU (H 3520) and minLSTM (H 2880) scans, `_scan_fwd` / `_scan_bwd`
#   e1-dense  dense E1's kernel (H 1760) as the package runs it: `elman_wgmma` on Hopper, else
#             `elman_persistent` (forward, backward)
#   e1-heads  E1 heads' kernels (14 heads of 128) as the package runs them: the Gluon scans `_fwd` /
#             `_bwd` and W_h's gradient sum `_heads_dw` on Hopper, else the Triton `_heads_fwd` / `_heads_bwd`
# Every launch is profiled (`--set full`); read the last forward / backward pair of a model (warm
# caches, as in training): e1-dense and e1-heads run twice, scans three times a model (the launch
# sweep's reference and check pairs, then one more). Writes OUTDIR/ncu_FAMILY_details.txt (every
# section of each launch), OUTDIR/ncu_FAMILY_raw.csv (every metric; the stall reasons are
# smsp__pcsamp_warps_issue_stalled_*), OUTDIR/ncu_FAMILY_source.csv (sampled stalls per SASS
# instruction), OUTDIR/ncu_FAMILY_summary.txt (a line a launch: benchmarks/ncu_summary.py),
# OUTDIR/ncu_FAMILY_hot.txt (each launch's hottest instructions: ncu_summary.py on the source CSV;
# its --ranges totals stretches of them) and OUTDIR/ncu_FAMILY.ncu-rep (the report, for ncu-ui).
set -euo pipefail
out=$1; shift
[ $# -gt 0 ] || { echo "ncu_kernels.sh: name a kernel family: scans, e1-dense or e1-heads" >&2; exit 2; }
# shellcheck source=benchmarks/gpu_env.sh
source benchmarks/gpu_env.sh >/dev/null 2>&1
for family in "$@"; do
  case $family in
    scans) kernels='_scan_(fwd|bwd)' ;;
    e1-dense) kernels='elman_(persistent|wgmma)' ;;
    e1-heads) kernels='^(_heads_(fwd|bwd|dw)|_fwd|_bwd)$' ;;
    *) echo "ncu_kernels.sh: unknown kernel family $family (scans, e1-dense, e1-heads)" >&2; exit 2 ;;
  esac
  rep=$out/ncu_$family
  ncu --clock-control none --set full --import-source yes --kernel-name regex:"$kernels" -f -o "$rep" \
    python3 - "$family" <<'PY'
import sys

import torch

sys.path.insert(0, "benchmarks")
family = sys.argv[1]
dt = torch.bfloat16
if family == "scans":
    from bench_kernels import FUSED_SCANS, scan_launch_sweep
    from rnnlab.ops.scan import triton as stri

    for name, mode, H in FUSED_SCANS:  # minGRU (mode 1), minLSTM (mode 2)
        x0 = torch.randn(32, 512, (mode + 1) * H, device="cuda", dtype=dt)
        g = torch.randn(32, 512, H, device="cuda", dtype=dt)
        # the sweep's reference and check pairs, then this pair: three of each kernel a model
        for _block, _warps, forward, backward in scan_launch_sweep(x0, mode, g, [(stri.BLOCK, stri.NUM_WARPS)]):
            forward()
            backward()
else:
    from rnnlab.ops.elman import elman_scan

    H, w_shape = (1760, (1760, 1760)) if family == "e1-dense" else (1792, (14, 128, 128))
    wx = torch.randn(32, 512, H, device="cuda", dtype=dt, requires_grad=True)
    w = (torch.randn(*w_shape, device="cuda") * (0.9 / w_shape[-1] ** 0.5)).to(dt).requires_grad_()
    g = torch.randn(32, 512, H, device="cuda", dtype=dt)
    for _ in range(2):
        h, _ = elman_scan(wx, w)
        h.backward(g)
torch.cuda.synchronize()
print(family, "profiled", flush=True)
PY
  ncu --import "$rep.ncu-rep" --page details > "${rep}_details.txt"
  ncu --import "$rep.ncu-rep" --page raw --csv > "${rep}_raw.csv"
  python3 benchmarks/ncu_summary.py "${rep}_raw.csv" | tee "${rep}_summary.txt" || true
  ncu --import "$rep.ncu-rep" --page source --print-source sass --csv > "${rep}_source.csv" 2>&1 || true
  python3 benchmarks/ncu_summary.py "${rep}_source.csv" > "${rep}_hot.txt" || true
done
