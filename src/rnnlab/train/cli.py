"""``rnnlab train``, ``rnnlab eval`` and ``rnnlab sample``.

    rnnlab train --model e1 --dim 512 --depth 6 --steps 2000 --out runs/e1
    rnnlab train --config exp.toml --lr 1e-3            # flags override the file
    rnnlab train --resume --out runs/e1 --steps 4000    # continue (and extend) a run
    rnnlab train --gpus 2 --batch-size 32 ...           # 2 processes via torchrun (global batch 32)
    torchrun --standalone --nproc-per-node 2 -m rnnlab train --distributed fsdp2 ...
    rnnlab eval --run runs/e1 [--data file.txt]
    rnnlab sample --run runs/e1 --prompt "The " --tokens 200
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rnnlab.models.cli import parse_layer_options
from rnnlab.models.params import parse_count

# flag dest -> TrainConfig field (model fields go through the config's shortcuts)
_FLAG_FIELDS = ("model", "dim", "depth", "mlp_ratio", "data", "val_data", "val_fraction", "batch_size",
                "seq_len", "steps", "minutes", "tokens", "optimizer", "lr", "weight_decay",
                "warmup_steps", "grad_clip", "precision", "seed", "eval_every", "eval_bytes",
                "eval_batch_size", "log_every", "checkpoint_every", "out", "compile", "device", "distributed")


def _count(text: str) -> int:
    return parse_count(text)


def _eval_bytes(text: str) -> int:
    return 0 if text.lower() in ("all", "0") else parse_count(text)


def register(sub) -> None:
    from rnnlab.train.config import DISTRIBUTED, OPTIMIZERS, PRECISIONS

    p = sub.add_parser("train", help="train one model",
                       description="Train one model. Defaults follow the seed's Table A protocol "
                                   "(bf16 weights, Schedule-Free AdamW 3e-4, wd 0.1, batch 16x512, seed 42).")
    p.add_argument("--config", metavar="FILE", help="TOML or YAML config file (flags override it)")
    m = p.add_argument_group("model")
    m.add_argument("--model", help="mixer kind, e.g. e1, mamba2, mingru, minlstm, e16, transformer")
    m.add_argument("--dim", type=int)
    m.add_argument("--depth", type=int)
    m.add_argument("--mlp-ratio", type=float)
    m.add_argument("--layer", action="append", metavar="KEY=VALUE",
                   help="a mixer option, e.g. --layer expansion=2.5 (repeatable)")
    d = p.add_argument_group("data")
    d.add_argument("--data", help="raw training file (default: the bundled sample)")
    d.add_argument("--val-data", help="raw held-out file (default: the tail of --data)")
    d.add_argument("--val-fraction", type=float)
    d.add_argument("--batch-size", type=int, help="the GLOBAL batch (split over --gpus processes)")
    d.add_argument("--seq-len", type=int)
    b = p.add_argument_group("budget (one of)")
    b.add_argument("--steps", type=int)
    b.add_argument("--minutes", type=float, help="training time (excludes eval and checkpoints)")
    b.add_argument("--tokens", type=_count, help="e.g. 50M")
    o = p.add_argument_group("optimization")
    o.add_argument("--optimizer", choices=OPTIMIZERS)
    o.add_argument("--lr", type=float)
    o.add_argument("--weight-decay", type=float)
    o.add_argument("--warmup-steps", type=int)
    o.add_argument("--grad-clip", type=float)
    o.add_argument("--precision", choices=PRECISIONS)
    o.add_argument("--seed", type=int)
    r = p.add_argument_group("run")
    r.add_argument("--eval-every", type=int, help="steps between held-out evals (0 = end only)")
    r.add_argument("--eval-bytes", type=_eval_bytes, help="held-out bytes per eval (e.g. 1M, or all)")
    r.add_argument("--eval-batch-size", type=int)
    r.add_argument("--log-every", type=int)
    r.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (0 = end only)")
    r.add_argument("--out", help="run dir (default runs/<model>-d<dim>-l<depth>)")
    r.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    r.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile the training forward+loss (README: torch.compile)")
    r.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("multi-GPU (docs/distributed.md)")
    g.add_argument("--gpus", type=int, metavar="N",
                   help="train on N processes (one GPU each): re-launches this command through torchrun")
    g.add_argument("--distributed", choices=DISTRIBUTED,
                   help="data parallelism under torchrun: ddp (default) or fsdp2 (sharded weights, "
                        "grads and optimizer state)")
    p.set_defaults(func=run_train)

    e = sub.add_parser("eval", help="held-out loss and bits per byte of a run")
    e.add_argument("--run", required=True, metavar="DIR")
    e.add_argument("--data", help="a raw file to evaluate whole (up to --eval-bytes) instead of the "
                                  "run's held-out split")
    e.add_argument("--eval-bytes", type=_eval_bytes, help="cap on bytes (default: the run's eval_bytes)")
    e.add_argument("--batch-size", type=int)
    e.add_argument("--device", default="auto")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.set_defaults(func=run_eval_cmd)

    s = sub.add_parser("sample", help="generate text from a run")
    s.add_argument("--run", required=True, metavar="DIR")
    s.add_argument("--prompt", default="\n")
    s.add_argument("--tokens", type=int, default=200, help="bytes to generate")
    s.add_argument("--temperature", type=float, default=0.8,
                   help="0 = greedy: always the most likely byte (--top-k is then ignored)")
    s.add_argument("--top-k", type=int, default=50)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="auto")
    s.set_defaults(func=run_sample)


def config_from_args(args):
    """Defaults < ``--config`` file (or, with ``--resume`` and no file, the run's config.json) < flags."""
    from rnnlab.train.config import TrainConfig, apply_overrides, load_config
    from rnnlab.train.rundir import RunDir

    overrides = {k: getattr(args, k, None) for k in _FLAG_FIELDS}
    layer = parse_layer_options(args.layer)
    if args.config:
        cfg = load_config(args.config)
    else:
        cfg = TrainConfig()
        saved = None
        if args.resume:
            out = args.out or apply_overrides(TrainConfig(), dict(overrides)).out_dir()
            saved = RunDir(out).saved_config()
        if saved is not None:
            cfg = TrainConfig.from_dict(saved)
    apply_overrides(cfg, overrides, source="flag")
    if layer:
        cfg.model.layer = {**(cfg.model.layer or {}), **layer}
    cfg.run.resume = bool(args.resume)
    return cfg


def torchrun_command(nproc: int, argv: list[str]) -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc-per-node N -m rnnlab train ...``
    with ``--gpus`` taken out of ``argv`` (the arguments after ``rnnlab``)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--gpus":
            skip = True
        elif not a.startswith("--gpus="):
            out.append(a)
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "rnnlab", *out]


def _launch(args) -> int | None:
    """Re-launch through torchrun for ``--gpus N`` (N > 1) unless already under torchrun."""
    import os
    import subprocess

    n = args.gpus
    if n is None or n == 1 or "WORLD_SIZE" in os.environ:
        return None
    if n < 1:
        raise ValueError(f"gpus must be a positive integer, got {n}")
    import torch

    if (args.device or "auto") != "cpu" and torch.cuda.is_available() and n > torch.cuda.device_count():
        raise ValueError(f"--gpus {n} asks for more GPUs than the {torch.cuda.device_count()} visible")
    argv = sys.argv[1:]
    if "train" not in argv:
        raise ValueError("--gpus re-launches the command line; call it as `rnnlab train ... --gpus N`")
    cmd = torchrun_command(n, argv)
    print("rnnlab train: " + " ".join(cmd[1:]), file=sys.stderr)
    try:
        return subprocess.call(cmd)
    except KeyboardInterrupt:
        return 130


def run_train(args) -> int:
    from rnnlab.train import distributed as dist
    from rnnlab.train.trainer import NonFiniteLossError, run_training

    launched = _launch(args)
    if launched is not None:
        return launched
    cfg = config_from_args(args)
    ctx = dist.context()
    finished = False
    try:
        summary = run_training(cfg, progress=not args.no_progress)
        finished = True
    except NonFiniteLossError as e:
        print(f"rnnlab train: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("rnnlab train: aborted; the last checkpoint (if any) is kept", file=sys.stderr)
        return 130
    finally:
        ctx.close(sync=finished)
    if ctx.is_main:
        print(format_summary(summary))
    return 0 if summary["complete"] else 130


def format_summary(s: dict) -> str:
    def fmt(v, spec=""):
        if v is None:
            return "-"
        return format(v, spec) if spec else str(v)

    rows = [
        ("model", f"{s['model']} dim={s['dim']} depth={s['depth']}" + (f" {s['layer']}" if s.get("layer") else "")),
        ("params", fmt(s["params"], ",")),
        ("steps / tokens", f"{s['steps']:,} / {s['tokens']:,}"),
        ("loss (last 100)", fmt(s["loss"], ".4f")),
        ("val loss / bpb", f"{fmt(s['val_loss'], '.4f')} / {fmt(s['val_bpb'], '.4f')}"
                           + (f" ({s['val_bytes']:,} held-out bytes)" if s.get("val_bytes") else "")),
        ("tok/s", fmt(s["tok_per_s"], ",.0f")),
        ("peak mem GiB", fmt(s["peak_mem_gib"], ".2f")),
        ("time s", fmt(s["time_s"], ".1f")),
        ("optimizer", f"{s['optimizer']} lr={s['lr']:g} ({s['precision']}, seed {s['seed']})"),
        ("complete", str(s["complete"])),
        ("run dir", s.get("run_dir", "-")),
    ]
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)


def run_eval_cmd(args) -> int:
    from rnnlab.data import ByteCorpus, Split, load_splits
    from rnnlab.eval.bpb import evaluate_run
    from rnnlab.train.rundir import RunDir

    cfg, model, step = RunDir(args.run).load(args.device)
    if args.data:
        corpus = ByteCorpus(args.data)
        split = Split(corpus, 0, len(corpus), "eval")
    else:
        split = load_splits(cfg.data.path, cfg.data.val_path, cfg.data.val_fraction).val
    r = evaluate_run(model, split, cfg, batch_size=args.batch_size, max_bytes=args.eval_bytes)
    out = {"run": str(args.run), "step": step, "data": str(split.path),
           "val_loss": r["loss"], "val_bpb": r["bpb"], "bytes": r["bytes"]}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{args.run} (step {out['step']}) on {out['data']}: val_loss {r['loss']:.4f}  "
              f"val_bpb {r['bpb']:.4f}  ({r['bytes']:,} bytes)")
    return 0


def run_sample(args) -> int:
    from rnnlab.eval.sampling import generate
    from rnnlab.train.rundir import RunDir

    _, model, _ = RunDir(args.run).load(args.device)
    prompt = args.prompt.encode("utf-8")
    out = generate(model, prompt, args.tokens, args.temperature, args.top_k, args.seed)
    sys.stdout.write((prompt + out).decode("utf-8", errors="replace") + "\n")
    return 0
