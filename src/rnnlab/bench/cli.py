"""``rnnlab bench``, ``rnnlab sweep`` and ``rnnlab report``.

    rnnlab bench --list
    rnnlab bench tiny --out runs/bench/tiny                   # ~10 s on a laptop CPU
    rnnlab bench seed-400m-sf --out runs/table-a              # the seed's Table A
    rnnlab bench depth-sweep --params 50M --steps 500 --seeds 1,2,3
    rnnlab bench e1-ablations --minutes 10                    # time-matched instead of step-matched
    rnnlab bench seed-400m-sf --plan                          # show dims/params/status, train nothing
    rnnlab sweep --model e1 --dim 512 --depth 6 --set lr=1e-4,3e-4,1e-3 --steps 500 --out runs/lr
    rnnlab sweep --model e1 --depth 6 --target-params 50M --set depth=6,12 --set layer.heads=1,8 --out runs/dh
    rnnlab report runs/bench/tiny                             # regenerate report.md / plots
"""

from __future__ import annotations

import sys
from pathlib import Path

from rnnlab.options import parse_key_values
from rnnlab.models.params import parse_count


def _eval_bytes(text: str) -> int:
    return 0 if text.lower() in ("all", "0") else parse_count(text)


def _scaling_flags(p, sweep: bool = False) -> None:
    b = p.add_argument_group("budget and data (override the suite's)")
    if not sweep:
        b.add_argument("--params", metavar="N", help="re-solve every run's width at its depth for N "
                                                     "parameters (e.g. 50M)")
    g = b.add_mutually_exclusive_group()
    g.add_argument("--steps", type=int, help="steps per run (step-matched)")
    g.add_argument("--minutes", type=float, help="training minutes per run (time-matched)")
    g.add_argument("--tokens", type=parse_count, help="tokens per run (e.g. 50M)")
    b.add_argument("--seeds", metavar="S1,S2,..", help="repeat every run once per seed (folders NAME-sSEED)")
    b.add_argument("--runs", metavar="NAME,..", help="only these runs of the suite")
    b.add_argument("--data", help="raw training file (default: the suite's, else the bundled sample)")
    b.add_argument("--val-data", help="raw held-out file")
    b.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    b.add_argument("--eval-bytes", type=_eval_bytes, help="held-out bytes per eval (e.g. 1M, or all)")
    b.add_argument("--gpus", type=int, metavar="N", help="run up to N runs at once, one process per GPU "
                                                         "(default: one run at a time in this process)")
    b.add_argument("--plan", action="store_true", help="print the runs (width, params, status); train nothing")
    b.add_argument("--no-progress", action="store_true", help="no per-run progress bar")
    b.add_argument("--no-plots", action="store_true", help="report without PNG plots")


def register(sub) -> None:
    p = sub.add_parser("bench", help="run a benchmark suite and write its report",
                       description="Run every run of a suite (a shipped name or a .toml path) as a normal "
                                   "training run under --out, skipping complete runs and resuming partial "
                                   "ones, then write report.md, report.json and plots.")
    p.add_argument("suite", nargs="?", help="suite name (see --list) or path to a suite .toml")
    p.add_argument("--list", action="store_true", help="list the shipped suites")
    p.add_argument("--out", help="output dir (default runs/bench/<suite>)")
    _scaling_flags(p)
    p.set_defaults(func=run_bench)

    s = sub.add_parser("sweep", help="sweep any config field",
                       description="Train one run per point of the product of the --set axes and "
                                   "report metric vs swept value.")
    s.add_argument("--model", required=True)
    s.add_argument("--dim", type=int)
    s.add_argument("--depth", type=int, help="required unless swept with --set depth=...")
    s.add_argument("--target-params", metavar="N", help="solve each point's width at its depth for N parameters")
    s.add_argument("--mlp-ratio", type=float)
    s.add_argument("--layer", action="append", metavar="KEY=VALUE", help="a fixed mixer option (repeatable)")
    s.add_argument("--set", action="append", dest="sets", metavar="KEY=V1,V2,..", required=True,
                   help="a swept axis: a TrainConfig field (lr=1e-4,3e-4), a model field (depth=6,12) "
                        "or a mixer option (layer.heads=1,4,8); repeatable (Cartesian product)")
    s.add_argument("--out", required=True, help="output dir")
    t = s.add_argument_group("training (defaults: the seed's Table A protocol)")
    t.add_argument("--batch-size", type=int)
    t.add_argument("--seq-len", type=int)
    t.add_argument("--optimizer")
    t.add_argument("--lr", type=float)
    t.add_argument("--weight-decay", type=float)
    t.add_argument("--warmup-steps", type=int)
    t.add_argument("--grad-clip", type=float)
    t.add_argument("--precision")
    t.add_argument("--seed", type=int)
    _scaling_flags(s, sweep=True)
    s.set_defaults(func=run_sweep)

    r = sub.add_parser("report", help="(re)write report.md, report.json and plots from run folders")
    r.add_argument("dir", help="a suite/sweep output dir, or any dir of run folders")
    r.add_argument("--out", help="write the report here (default: DIR)")
    r.add_argument("--no-plots", action="store_true")
    r.set_defaults(func=run_report)


def _options(args) -> dict:
    return {k: getattr(args, k, None) for k in ("params", "steps", "minutes", "tokens", "seeds", "data",
                                                 "val_data", "device", "runs")}


def _execute(suite, out: Path, args) -> int:
    from rnnlab.bench.suite import command_line, plan_suite, run_plan, run_status

    opts = _options(args)
    extra = {"eval_bytes": args.eval_bytes} if args.eval_bytes is not None else None
    plan = plan_suite(suite, out, extra=extra, **opts)
    if args.plan:
        print(f"suite {suite.name}: {len(plan)} run(s) under {out}")
        for pr in plan:
            c = pr.cfg
            kind, value = c.budget.chosen()
            m = c.model
            print(f"  {pr.label:<28} {m.model:<11} dim={m.dim:<5} depth={m.depth:<3} {pr.params:>13,} params  "
                  f"{kind}={value:g}  {c.optim.optimizer} lr={c.optim.lr:g}  {c.run.precision}  [{run_status(pr)}]"
                  + (f"  {m.layer}" if m.layer else ""))
        return 0
    options = {**{k: v for k, v in opts.items() if v is not None}, **(extra or {})}
    gpus = None
    if args.gpus is not None:
        if args.gpus < 1:
            raise ValueError(f"--gpus must be a positive integer, got {args.gpus}")
        from rnnlab.bench.parallel import visible_gpus

        gpus = visible_gpus(args.gpus) if args.gpus > 1 else None
    result = run_plan(suite, plan, out, progress=not args.no_progress and gpus is None, command=command_line(),
                      options=options, report=False, gpus=gpus)
    from rnnlab.bench.report import main_table, write_report, aggregate, collect, describe_device

    paths = write_report(out, plots=not args.no_plots)
    data = collect(out)
    print(main_table(aggregate(data["records"]), describe_device(data["records"])))
    print(f"\nreport: {paths['md']}")
    if result["failed"]:
        print(f"{len(result['failed'])} run(s) failed: {', '.join(result['failed'])}", file=sys.stderr)
        return 1
    return 130 if result["stopped"] else 0


def run_bench(args) -> int:
    from rnnlab.bench.suite import list_suites, load_suite

    if args.list:
        for s in list_suites():
            print(f"{s.name:<24} {len(s.runs):>2} runs  {s.description}")
        return 0
    if not args.suite:
        raise ValueError("give a suite name or path (see rnnlab bench --list)")
    suite = load_suite(args.suite)
    out = Path(args.out) if args.out else Path("runs") / "bench" / suite.name
    return _execute(suite, out, args)


def run_sweep(args) -> int:
    from rnnlab.bench.sweep import build_sweep

    defaults = {k: getattr(args, k) for k in ("batch_size", "seq_len", "optimizer", "lr", "weight_decay",
                                              "warmup_steps", "grad_clip", "precision", "seed")
                if getattr(args, k) is not None}
    suite = build_sweep(args.model, args.depth, args.sets, dim=args.dim, target_params=args.target_params,
                        layer=parse_key_values(args.layer), mlp_ratio=args.mlp_ratio, defaults=defaults,
                        name=f"sweep-{Path(args.out).name}")
    args.params = None
    return _execute(suite, Path(args.out), args)


def run_report(args) -> int:
    from rnnlab.bench.report import aggregate, collect, describe_device, main_table, write_report

    paths = write_report(args.dir, args.out, plots=not args.no_plots)
    data = collect(args.dir)
    print(main_table(aggregate(data["records"]), describe_device(data["records"])))
    print(f"\nreport: {paths['md']}" + (f" (+ {len(paths['plots'])} plots)" if paths["plots"] else ""))
    return 0
