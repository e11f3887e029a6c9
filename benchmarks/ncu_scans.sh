#!/usr/bin/env bash
# Nsight Compute's view of the fused minGRU / minLSTM scans at the 400M widths (B 32, T 512, bf16,
# the package's launch): why they run at 1.6-1.7x their bytes floor (docs/kernels.md). Needs a
# GPU machine with ncu reading the hardware counters (Firecracker runtime; the device tool's
# H200.md) and the staged environment (benchmarks/gpu_env.sh); ~2 minutes.
# Usage: bash benchmarks/ncu_scans.sh OUTDIR
# Writes OUTDIR/ncu_details.txt (every section of each launch: speed of light, memory, warp
# states, scheduler, occupancy), OUTDIR/ncu_raw.csv (every metric: the stall reasons are
# smsp__pcsamp_warps_issue_stalled_*), OUTDIR/ncu_source.csv (the sampled stalls per SASS
# instruction) and OUTDIR/ncu_scans.ncu-rep (the report, for ncu-ui). Six launches per model:
# forward and backward as the reference, as the launch's check (bench_kernels.scan_launch_sweep),
# then the pair to read.
set -euo pipefail
out=$1
# shellcheck source=benchmarks/gpu_env.sh
source benchmarks/gpu_env.sh >/dev/null 2>&1
ncu --clock-control none --set full --import-source yes --kernel-name regex:'_scan_(fwd|bwd)' \
  -f -o "$out/ncu_scans" python3 - <<'EOF'
import sys
import torch
sys.path.insert(0, "benchmarks")
from bench_kernels import FUSED_SCANS, scan_launch_sweep
from rnnlab.ops.scan import triton as stri

for name, mode, H in FUSED_SCANS:  # minGRU (mode 1), minLSTM (mode 2) at their 400M widths
    x0 = torch.randn(32, 512, (mode + 1) * H, device="cuda", dtype=torch.bfloat16)
    g = torch.randn(32, 512, H, device="cuda", dtype=torch.bfloat16)
    for _block, _warps, forward, backward in scan_launch_sweep(x0, mode, g, [(stri.BLOCK, stri.NUM_WARPS)]):
        forward()
        backward()
    torch.cuda.synchronize()
    print(name, "H", H, "profiled", flush=True)
EOF
ncu --import "$out/ncu_scans.ncu-rep" --page details > "$out/ncu_details.txt"
ncu --import "$out/ncu_scans.ncu-rep" --page raw --csv > "$out/ncu_raw.csv"
ncu --import "$out/ncu_scans.ncu-rep" --page source --print-source sass --csv > "$out/ncu_source.csv" 2>&1 || true
