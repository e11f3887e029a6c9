"""Benchmark suites, sweeps and reports.

    suites/*.toml  shipped suites (tiny, seed-400m-sf, seed-400m-step-matched, depth-sweep, e1-ablations)
    suite.py       load / plan (scaling: --params, --steps, --minutes, --seeds, --data) / run, resumable
    sweep.py       ``rnnlab sweep``: Cartesian product of --set axes as a suite
    report.py      report.md (seed columns, mean ± std over seeds, seed-vs-ours), report.json
    plots.py       loss vs step / wall-clock, tok/s bars, loss vs depth, metric vs swept value
    cli.py         ``rnnlab bench``, ``rnnlab sweep``, ``rnnlab report``
"""
