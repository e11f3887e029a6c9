"""``rnnlab bench``, ``rnnlab sweep`` and ``rnnlab report``.

    rnnlab bench --list
    rnnlab bench tiny --out runs/bench/tiny                   # every model kind, about a minute on a CPU
    rnnlab bench seed-400m-sf --out runs/table-a              # the reference study's Table A (README)
    rnnlab bench depth-sweep --params 50M --steps 500 --seeds 1,2,3
    rnnlab bench e1-ablations --minutes 10                    # time-matched instead of step-matched
    rnnlab bench seed-400m-sf --plan                          # show dims/params/status, train nothing
    rnnlab sweep --model e1 --dim 512 --depth 6 --set lr=1e-4,3e-4,1e-3 --steps 500 --out runs/lr
    rnnlab sweep --model e1 --target-params 50M --set depth=6,12 --set layer.heads=1,8 --out runs/dh
    rnnlab report runs/bench/tiny                             # regenerate report.md / plots
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rnnlab.errors import counted
from rnnlab.models.config import layer_text, model_options_off_default
from rnnlab.models.params import count_arg
from rnnlab.options import checked, path_arg
from rnnlab.train.config import (FIELDS, MODEL_KEYS, RUNNER_KEYS, SUITE_KEYS, add_config_flags, config_flag_values,
                                 training_settings)


def _common_flags(p) -> None:
    """The flags of bench and sweep beside the config's: repetition, selection, scheduling, output."""
    b = p.add_argument_group("runs")
    b.add_argument("--seeds", metavar="S1,S2,..", help="repeat every run once per seed (folders NAME-sSEED; the "
                                                       "seed of NAME's run from a call without --seeds is that run, "
                                                       "not trained again)")
    b.add_argument("--runs", metavar="NAME,..", help="only these runs of the suite (bench: its rows' names; "
                                                      "sweep: its points' names; without their -sSEED)")
    b.add_argument("--gpus", type=checked(int), metavar="N", help="run up to N runs at once, one process per GPU, "
                                                         "each logging to OUT/logs/<run>.log (default, and "
                                                         "--gpus 1: one run at a time in this process)")
    b.add_argument("--plan", action="store_true", help="print the runs (width, params, status); train nothing")
    b.add_argument("--no-progress", action="store_true",
                   help="no per-run progress bar: plain log lines instead, one every log_every steps "
                        "(10 unless the suite file, or sweep's --log-every, sets it)")
    b.add_argument("--no-plots", action="store_true", help="report without PNG plots")


def register(sub) -> None:
    p = sub.add_parser("bench", help="run a benchmark suite and write its report",
                       description="Run every run of a suite (a shipped name or a .toml path) as a normal "
                                   "training run under --out, skipping complete runs and resuming partial "
                                   "ones (a complete run given a larger budget is extended from its "
                                   "checkpoint; one whose final evaluation lacks a new --extra-val-data "
                                   "file or --eval-bytes is scored again from its checkpoint, no training "
                                   "step; --plan says which), then write report.md, report.json and plots. "
                                   "The config flags "
                                   "below replace the suite's value for every run (not given: the suite's, "
                                   "else rnnlab train's default).")
    p.add_argument("suite", nargs="?", help="suite name (see --list) or path to a suite .toml")
    p.add_argument("--list", action="store_true", help="list the shipped suites")
    p.add_argument("--out", type=path_arg, help="output dir (default runs/bench/<suite>)")
    p.add_argument("--params", type=count_arg, metavar="N",
                   help="re-solve every run's width at its depth for N parameters (e.g. 50M)")
    add_config_flags(p, keys=SUITE_KEYS, show_defaults=False)
    _common_flags(p)
    p.set_defaults(func=run_bench)

    s = sub.add_parser("sweep", help="sweep any config field",
                       description="Train one run per point of the product of the --set axes and report "
                                   "metric vs swept value. The config flags below set the base of every "
                                   "point (not given: rnnlab train's defaults, which rnnlab train --help "
                                   "lists), except the model's size: give --depth and --dim (or "
                                   "--target-params), or sweep them. A swept key is set by its axis "
                                   "alone: its flag beside it (--lr with --set lr=...) is refused.")
    s.add_argument("--set", action="append", dest="sets", metavar="KEY=V1,V2,..", required=True,
                   help="a swept axis: a config field (lr=1e-4,3e-4), a model field (depth=6,12) "
                        "or a mixer option (layer.heads=1,4,8); a value of several numbers in brackets "
                        "('betas=[0.9,0.99],[0.9,0.95]': two values); repeatable (Cartesian product)")
    s.add_argument("--out", required=True, type=path_arg, help="output dir")
    s.add_argument("--target-params", type=count_arg, metavar="N",
                   help="solve each point's width at its depth for N parameters")
    add_config_flags(s, keys=[k for k in FIELDS if k not in RUNNER_KEYS], show_defaults=False)
    _common_flags(s)
    s.set_defaults(func=run_sweep)

    r = sub.add_parser("report", help="(re)write report.md, report.json and plots from run folders",
                       description="Collect the run folders under DIR (each with its summary.json) into "
                                   "one comparison: a results table, report.md, report.json and plots. Several "
                                   "DIRs make one comparison of all their runs (each named DIR/run), written "
                                   "to --out.")
    r.add_argument("dir", type=path_arg, nargs="+", metavar="DIR",
                   help="a suite/sweep output dir, or any dir of run folders")
    r.add_argument("--out", type=path_arg, help="write the report here (default: DIR; needed for several DIRs)")
    r.add_argument("--no-plots", action="store_true", help="report without PNG plots")
    r.add_argument("--at-bytes", type=byte_marks, metavar="B1,B2,..",
                   help="read every run's held-out curve (its evaluations during training: --eval-every) at "
                        "these training bytes (e.g. 20M,45M,83M; K, M, B: 10^3, 10^6, 10^9) in the "
                        "equal-bytes table, whatever the runs' bytes per step "
                        "(default: a quarter, half and all of the bytes every run reached, when the runs' "
                        "bytes per step differ)")
    r.set_defaults(func=run_report)


def byte_marks(text: str) -> list[int]:
    """``--at-bytes``: ``"20M,45M"`` -> ``[20_000_000, 45_000_000]`` (sorted, each once)."""
    from rnnlab.models.params import parse_count

    try:
        return sorted({parse_count(t) for t in text.split(",")})
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be training byte counts separated by commas, e.g. 20M,45M, "
                                         f"got {text!r}") from None


def _execute(suite, out: Path, args) -> int:
    """Plan the suite with the options given, then print the plan (``--plan``) or train it and
    write the report."""
    from rnnlab.bench.runner import run_plan
    from rnnlab.bench.suite import command_line, plan_suite

    if args.gpus is not None and args.gpus < 1:  # before --plan, which would show a plan the command refuses
        raise ValueError(f"--gpus must be a positive integer, got {args.gpus}")
    overrides = {k: v for k, v in config_flag_values(args).items() if k in SUITE_KEYS}
    opts = {"params": getattr(args, "params", None), "seeds": args.seeds, "runs": args.runs}
    plan = plan_suite(suite, out, **opts, **overrides)
    _note_unreachable_targets(plan, "sweep" if suite.sweep else "bench", {r.name: r.multiple for r in suite.runs})
    if args.plan:
        _print_plan(suite, plan, out)
        return 0
    options = {**{k: v for k, v in opts.items() if v is not None}, **overrides}
    gpus = None
    if args.gpus is not None:
        from rnnlab.bench.parallel import visible_gpus

        gpus = visible_gpus(args.gpus) if args.gpus > 1 else None
    if gpus is None:  # runs in this process: a device it lacks fails every run to train, after the folder is made
        from rnnlab.bench.suite import run_status
        from rnnlab.train.runtime import pick_device

        for device in dict.fromkeys(pr.cfg.run.device for pr in plan if run_status(pr) not in ("complete", "stale")):
            pick_device(device)
    result = run_plan(suite, plan, out, progress=not args.no_progress and gpus is None, command=command_line(),
                      options=options, gpus=gpus)
    write_and_show_report(out, None, plots=not args.no_plots)
    if result["failed"]:
        print(f"{counted(len(result['failed']), 'run')} failed: {', '.join(result['failed'])}", file=sys.stderr)
        return 1
    return 130 if result["stopped"] else 0


def _note_unreachable_targets(plan, command: str, multiples: dict[str, int | None]) -> None:
    """On stderr, under ``rnnlab <command>``'s name, each run whose width solved for
    ``target_params`` lands more than 10% away from it (as ``rnnlab params --target`` says it: no
    width at that depth in steps of the row's ``multiple`` (``multiples``, by row name; None: the
    model's) comes closer; a bench row's smaller ``multiple`` may). Once per row: its seeds share the width."""
    from rnnlab.models.params import nearest_width

    noted = set()
    for pr in plan:
        if pr.target_params and abs(pr.params - pr.target_params) > 0.1 * pr.target_params and pr.name not in noted:
            noted.add(pr.name)
            step, where = nearest_width(pr.cfg.model.model, multiples.get(pr.name))
            smaller = "a smaller multiple (the row's `multiple = N`) or " if step > 1 and command == "bench" else ""
            print(f"rnnlab {command}: note: {pr.name} comes to {pr.params:,} parameters at depth {pr.cfg.model.depth}, "
                  f"the nearest to {pr.target_params:,} {where}; {smaller}another depth may come closer",
                  file=sys.stderr)


def _print_plan(suite, plan, out: Path) -> None:
    """``--plan``: one line per planned run (model, width, depth, params, budget, optimizer, its
    folder's status, layer options and the settings that differ between runs), then each conflict
    that training would refuse."""
    from rnnlab.bench.suite import budget_change, budget_label, scores_lacking, status_and_conflict

    print(f"suite {suite.name}: {counted(len(plan), 'run')} under {out}")
    found = [status_and_conflict(pr) for pr in plan]  # each folder's config.json read once
    varying = varying_settings(plan)
    label_width = max([28, *(len(pr.label) for pr in plan)])  # the columns after it aligned
    for pr, (status, _) in zip(plan, found):
        c = pr.cfg
        m = c.model
        print(f"  {pr.label:<{label_width}} {m.model:<11} dim={m.dim:<5} depth={m.depth:<3} {pr.params:>13,} params  "
              f"{budget_label(pr)}  {c.optim.optimizer} lr={c.optim.lr:g}  {c.run.precision}  [{status}]"
              + "".join(f"  {text}" for text in (layer_text(m.layer), varying[pr.label]) if text))
    for pr, (status, why) in zip(plan, found):
        if why:  # what training the plan would refuse, and why
            print(f"  conflict: {why}")
        elif change := budget_change(pr, status):  # complete under another budget: no partial run
            print(f"  {status}: {pr.label} is {change}")
        elif status == "rescore":  # complete, scored again from its checkpoint
            print(f"  rescore: {pr.label} is complete; its final evaluation will be scored again from its "
                  f"checkpoint, no training step ({'; '.join(scores_lacking(pr))})")
        elif status == "stale":
            print(f"  stale: {pr.label} is complete, but its final evaluation lacks what this command asks "
                  f"({'; '.join(scores_lacking(pr))}) and it has no checkpoint to score it again from: skipped")


# what a plan line shows in its columns (the model's kind, width, depth and layer options among them),
# or what is no setting of the run
_PLAN_COLUMNS = {"model", "dim", "depth", "layer", "steps", "minutes", "tokens", "optimizer", "lr", "precision", "out",
                 "resume", "overwrite"}


def varying_settings(plan) -> dict[str, str]:
    """By run label, the settings that differ between the plan's runs and are not in a plan line's
    columns, as ``batch_size=8 seed=43 grad_clip=off``, and the model settings off their defaults
    (``rescale_prenorm_residual=True``) even where every run has them ("" for neither): a suite's
    rows that differ in batch, seed or optimizer settings say so before anything trains. AdamW's
    ``lr_schedule`` is a setting of AdamW's runs only (Schedule-Free ignores it)."""
    def flat(cfg) -> dict:  # the run's fields and its model's side by side
        d = training_settings(cfg)
        return {k: v for k, v in {**d, **d["model"]}.items() if k not in _PLAN_COLUMNS}

    configs = {pr.label: flat(pr.cfg) for pr in plan}
    off_default = {k for pr in plan for k in model_options_off_default(pr.cfg.model.to_dict())}
    keys = [k for k in dict.fromkeys(k for c in configs.values() for k in c)
            if len({repr(c.get(k)) for c in configs.values()}) > 1 or k in off_default]

    def text(key: str, value) -> str:
        if key == "grad_clip" and value is None:
            return "grad_clip=off"
        return f"{key}={','.join(map(str, value)) if isinstance(value, list) else value}"

    return {label: " ".join(text(k, c[k]) for k in keys if k in c) for label, c in configs.items()}


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
    """The base of every point from the config flags: model fields, then the fields a run may set
    (the suite's defaults); the suite-wide fields (budget, data, device) go to ``_execute``."""
    from rnnlab.bench.sweep import build_sweep, keep_earlier_names, sweep_name

    given = config_flag_values(args)
    model = {k: v for k, v in given.items() if k in MODEL_KEYS}
    defaults = {k: v for k, v in given.items() if k not in MODEL_KEYS and k not in SUITE_KEYS}
    suite = build_sweep(model, args.sets, target_params=args.target_params, defaults=defaults,
                        name=sweep_name(Path(args.out)))
    return _execute(keep_earlier_names(suite, Path(args.out)), Path(args.out), args)


def run_report(args) -> int:
    write_and_show_report(args.dir, args.out, plots=not args.no_plots, at_bytes=args.at_bytes)
    return 0


def write_and_show_report(runs: str | Path | list[str | Path], out: str | Path | None, plots: bool,
                          at_bytes: list[int] | None = None) -> None:
    """Write the report of the run folders in ``runs`` (a folder, or a list of several: one
    comparison; into ``out``, default ``runs``; the
    equal-bytes table at ``at_bytes`` when given) and print its results table (and that table,
    or why there is none, when asked for)."""
    from rnnlab.bench.report import write_report

    paths = write_report(runs, out, plots=plots, at_bytes=at_bytes)
    print(paths["table"])
    if at_bytes:
        print("\n" + paths["equal_bytes"])
    print(f"\nreport: {paths['md']}" + (f" (+ {len(paths['plots'])} plots)" if paths["plots"] else ""))
