"""``rnnlab export``: a training run as a Hugging Face model folder (``rnnlab.hf.export``).

    rnnlab export --run runs/e1 --out hf/e1
"""

from __future__ import annotations

from rnnlab.hf import transformers_problem
from rnnlab.options import path_arg


def register(sub) -> None:
    p = sub.add_parser("export", help="write a run as a Hugging Face model folder",
                       description="Write a run's model and the byte tokenizer as a Hugging Face "
                                   "save_pretrained folder; after `import rnnlab`, "
                                   "AutoModelForCausalLM.from_pretrained(DIR) loads it.")
    p.add_argument("--run", required=True, type=path_arg, metavar="DIR", help="a training run folder")
    p.add_argument("--out", required=True, type=path_arg, metavar="DIR", help="the folder to write (new or empty)")
    p.set_defaults(func=run_export)


def run_export(args) -> int:
    problem = transformers_problem()
    if problem is not None:
        raise ValueError(problem)
    from rnnlab.hf.export import export_run
    from rnnlab.train.rundir import RunDir

    out, step = export_run(args.run, args.out)
    print(f"wrote {out} (the weights of step {step:,}{_unfinished(RunDir(args.run))}); load it with `import rnnlab` "
          f"and transformers.AutoModelForCausalLM.from_pretrained({str(out)!r})")
    return 0


def _unfinished(run) -> str:
    """``; the run is not complete: its budget is 100,000 steps`` for a run stopped or still training (its
    export holds a checkpoint's weights from part way), else ""."""
    if run.status() == "complete":
        return ""
    budget = run.config().max_steps()
    return "; the run is not complete" + (f": its budget is {budget:,} steps" if budget is not None else "")
