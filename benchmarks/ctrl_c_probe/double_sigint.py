"""Two SIGINTs back to back (as ``timeout -s INT`` sends them: to the process, then to its process
group) to a Python process that handles SIGINT, after a Triton compile without a cache, with and
without ``rnnlab.signals.reclaim_handlers`` after it; no GPU needed (the kernel is compiled for
sm_90 here). Counts the processes that die of the signal instead of handling it: LLVM, inside
Triton's compiler, puts its own SIGINT / SIGTERM handler in the kernel at its first compile, one
that resets the signal to its default action on entry (docs/reliability.md).

    python benchmarks/ctrl_c_probe/double_sigint.py [--tries N]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time

CASES = {"no compile": [], "cold compile": ["compile"], "cold compile, then reclaim_handlers": ["compile", "reclaim"]}


def target(steps: list[str]) -> None:
    """The process signalled: a Python SIGINT handler, the steps, then 2 s busy on a CPU (so that it
    enters a handler at once) and a last line if it is still alive."""
    signal.signal(signal.SIGINT, lambda signum, frame: None)
    if "compile" in steps:
        import triton
        import triton.language as tl
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource

        @triton.jit
        def double(x_ptr, BLOCK: tl.constexpr):
            offs = tl.arange(0, BLOCK)
            tl.store(x_ptr + offs, tl.load(x_ptr + offs) * 2)

        triton.compile(ASTSource(double, {"x_ptr": "*fp32", "BLOCK": "constexpr"}, {"BLOCK": 128}),
                       target=GPUTarget("cuda", 90, 32))
    if "reclaim" in steps:
        from rnnlab.signals import reclaim_handlers

        reclaim_handlers()
    print("ready", flush=True)
    end = time.time() + 2
    while time.time() < end:
        pass
    print("alive", flush=True)


def died(steps: list[str]) -> bool:
    """Whether a fresh target (an empty Triton cache of its own) dies of two SIGINTs back to back."""
    with tempfile.TemporaryDirectory() as cache:
        proc = subprocess.Popen([sys.executable, __file__, "--target", *steps], stdout=subprocess.PIPE, text=True,
                                env={**os.environ, "TRITON_CACHE_DIR": cache})
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.3)
        os.kill(proc.pid, signal.SIGINT)
        os.kill(proc.pid, signal.SIGINT)
        return "alive" not in proc.communicate()[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tries", type=int, default=30, help="fresh processes a case")
    p.add_argument("--target", nargs="*", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.target is not None:
        return target(args.target)
    import triton

    print(f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}; Triton {triton.__version__}; {os.cpu_count()} CPUs; "
          f"{args.tries} processes a case", flush=True)
    for name, steps in CASES.items():
        print(f"{name}: {sum(died(steps) for _ in range(args.tries))} of {args.tries} died of the second SIGINT",
              flush=True)


if __name__ == "__main__":
    main()
