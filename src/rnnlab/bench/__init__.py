"""Benchmark suites, sweeps and reports. Imports run one way: cli -> runner -> parallel -> suite,
cli -> report -> collect, plots, sweep -> suite; every run folder is read through ``RunDir``.

    suites/*.toml  shipped suites (``rnnlab bench --list``)
    suite.py       load / plan (scaling: --params, --seeds, --runs, and config flags for every run) / status
    sweep.py       ``rnnlab sweep``: Cartesian product of --set axes as a suite
    runner.py      train a plan: one run at a time in this process, or through parallel.py
    parallel.py    ``--gpus N``: up to N runs at once, one ``rnnlab train`` process per GPU
    collect.py     run folders read into records (one per folder) and averaged into rows (mean ± std over seeds)
    report.py      report.md (reference columns, mean ± std over seeds, reference vs ours), report.json
    plots.py       loss vs step and training time, held-out bpb vs training time, tok/s bars, loss vs
                   depth, metric vs swept value
    mfu.py         model-FLOPs utilisation: 6 * params * tok/s over the GPUs' dense bf16 peak
    cli.py         ``rnnlab bench``, ``rnnlab sweep``, ``rnnlab report``
"""
