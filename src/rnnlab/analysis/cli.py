"""``rnnlab analyze``: analyses of trained runs.

    rnnlab analyze gradflow --run runs/e1 [--run runs/e1-identity] [--out DIR] [--batches 4]
"""

from __future__ import annotations

from pathlib import Path

from rnnlab.options import checked, path_arg, positive


def register(sub) -> None:
    p = sub.add_parser("analyze", help="gradient-flow analysis of a run",
                       description="Analyses of trained runs.")
    asub = p.add_subparsers(dest="analysis", required=True, metavar="COMMAND")
    g = asub.add_parser("gradflow", help="gradient norms, temporal gradient flow, E1 recurrence Jacobians",
                        description="Per-layer gradient norms, ||dL/dx_t|| of each block's input over "
                                    "time for the loss at the last position(s), and for E1-type layers "
                                    "the spectral radius of W_h_eff and the mean top singular value of "
                                    "the recurrence Jacobian. Several checkpoints or runs give the "
                                    "values over training steps. Writes gradflow.json and PNG plots.")
    g.add_argument("--run", action="append", required=True, type=path_arg, metavar="DIR",
                   help="a run dir (repeatable: several runs are compared)")
    g.add_argument("--out", type=path_arg, metavar="DIR", help="output dir (default: <first run>/gradflow)")
    g.add_argument("--batches", type=checked(int, positive()), default=4, help="held-out batches (default 4)")
    g.add_argument("--batch-size", type=checked(int, positive()), default=8, help="sequences per batch (default 8)")
    g.add_argument("--seq-len", type=checked(int, positive()), help="window length (default: the run's seq_len)")
    g.add_argument("--last", type=checked(int, positive()), default=1, metavar="K", help="loss at the last K positions (default 1)")
    g.add_argument("--power-iters", type=checked(int, positive()), default=10, help="power iterations for sigma_max(J_t) (default 10)")
    g.add_argument("--no-history", action="store_true", help="only the run's newest usable checkpoint")
    g.add_argument("--no-plots", action="store_true", help="write gradflow.json only")
    g.add_argument("--device", default="cpu", help="cpu (default), cuda, auto")
    g.add_argument("--json", action="store_true", help="print gradflow.json's path only")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (shown on a terminal: one step per "
                                                                "checkpoint, naming the run and its windows)")
    g.set_defaults(func=run_gradflow, command="analyze gradflow")


def run_gradflow(args) -> int:
    from rnnlab.analysis.gradflow import analyze, format_table
    from rnnlab.train.rundir import GRADFLOW, GRADFLOW_JSON

    out = Path(args.out) if args.out else Path(args.run[0]) / GRADFLOW
    result = analyze(args.run, out, batches=args.batches, batch_size=args.batch_size, seq_len=args.seq_len,
                     last=args.last, power_iters=args.power_iters, device=args.device,
                     history=not args.no_history, plots=not args.no_plots, progress=not args.no_progress)
    if args.json:
        print(out / GRADFLOW_JSON)
        return 0
    print(format_table(result))
    print(f"wrote {out / GRADFLOW_JSON}" + (f" and {len(result.get('plots', []))} plots" if not args.no_plots else ""))
    return 0
