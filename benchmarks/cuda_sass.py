"""The SASS of dense E1's persistent CUDA kernel (``rnnlab/ops/elman/persistent.cu``) or of other
copies of it, compiled here for sm_90 or ``--arch`` (nvcc; no GPU needed): each kernel's instruction count and,
with ``--between``, the count in the stretch from one instruction to another, e.g. from the flag
spin's L1 invalidation to the ``cp.async`` commit (``CCTL.IVALL LDGDEPBAR``: the state's staging).
The counts behind docs/kernels.md's "staging by adds"; a local build of the package's source
matched the SASS Nsight Compute profiled on the H200 instruction for instruction.

    python benchmarks/cuda_sass.py [FILE.cu ...] [--kernel REGEX] [--between FIRST LAST] [--lowrank] [--arch sm_90a]

FILE.cu: default the package's ``persistent.cu``; several files print side by side (an earlier
commit's: ``git show REV:src/rnnlab/ops/elman/persistent.cu > OLD.cu``). ``--kernel``: only kernels
whose demangled name matches (default: the bf16 ones). ``--lowrank``: the low-rank term's build.
``--arch``: the target (sm_90a, what the extension is built for on Hopper, for the code that
needs Hopper's arch-specific instructions: the cluster path's multicast bulk copies; the default
sm_90 build compiles that path out).
Compiles with the extension's flags (``persistent.ext_flags``) and torch's include paths; a CPU
build of torch lacks one generated CUDA header, ``c10/cuda/impl/cuda_cmake_macros.h``, which an empty
file stands in for. Needs nvcc and cuobjdump (Triton ships one); about 2 minutes a file.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

ARCH = "sm_90"  # the default target
_INSTRUCTION = re.compile(r"^\s*/\*[0-9a-f]{4,}\*/\s*(.*?)\s*;")


def tool(name: str) -> str:
    """The path of ``name`` (nvcc, cuobjdump): on PATH, else (cuobjdump) the one Triton ships."""
    found = shutil.which(name)
    if found is None and name == "cuobjdump":
        try:
            import triton

            bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
            found = str(bundled) if bundled.is_file() else None
        except ImportError:
            found = None
    if found is None:
        raise FileNotFoundError(f"{name} not found (needs the CUDA toolkit's {name} on PATH)")
    return found


def functions(sass: str) -> dict[str, list[str]]:
    """``{mangled kernel name: its instructions}`` from ``cuobjdump -sass`` output (each
    instruction without its address, predicate kept, e.g. ``@!P0 BRA 0x1ec0``)."""
    out: dict[str, list[str]] = {}
    current = None
    for line in sass.splitlines():
        head = re.match(r"\s*Function : (\S+)", line)
        if head:
            current = out.setdefault(head.group(1), [])
        elif current is not None and (m := _INSTRUCTION.match(line)):
            current.append(m.group(1))
    return out


def between(instructions: list[str], first: str, last: str) -> int | None:
    """Instructions from the first one containing ``first`` up to the next containing ``last``
    (that one excluded); None when either is missing."""
    try:
        start = next(i for i, x in enumerate(instructions) if first in x)
        end = next(i for i, x in enumerate(instructions[start + 1:], start + 1) if last in x)
    except StopIteration:
        return None
    return end - start


def demangle(names: list[str]) -> dict[str, str]:
    """Each mangled name's C++ form (c++filt; the name itself when c++filt is missing)."""
    filt = shutil.which("c++filt")
    if filt is None:
        return {n: n for n in names}
    out = subprocess.run([filt], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return dict(zip(names, out)) if len(out) == len(names) else {n: n for n in names}


def short_name(demangled: str) -> str:
    """A demangled kernel name without its return type, anonymous namespace and parameter list:
    ``elman_persistent<__nv_bfloat16, 16, 32, 16, false, 0>``."""
    name, depth = demangled.strip(), 0
    if name.endswith(")"):  # cut the parameter list: from the "(" matching the last ")"
        for i in range(len(name) - 1, -1, -1):
            depth += {")": 1, "(": -1}.get(name[i], 0)
            if depth == 0:
                name = name[:i]
                break
    return re.sub(r"^void |\(anonymous namespace\)::", "", name)


def compile_sass(source: Path, lowrank: bool = False, arch: str = ARCH) -> str:
    """``cuobjdump -sass`` of ``source`` compiled for ``arch`` with the extension's own flags (not
    torch's default nvcc flags, which did not change the SASS of this kernel)."""
    import torch.utils.cpp_extension as ext

    from rnnlab.ops.elman import persistent

    with tempfile.TemporaryDirectory() as tmp:
        includes = [*ext.include_paths(), sysconfig.get_paths()["include"]]
        header = "c10/cuda/impl/cuda_cmake_macros.h"
        if not any((Path(p) / header).is_file() for p in includes):  # a CPU build of torch
            (Path(tmp) / header).parent.mkdir(parents=True)
            (Path(tmp) / header).write_text("#pragma once\n")
            includes.append(tmp)
        obj = Path(tmp) / "kernel.o"
        cmd = [tool("nvcc"), *persistent.ext_flags(lowrank), f"-arch={arch}", "-DTORCH_EXTENSION_NAME=sass", *(f"-I{p}" for p in includes),
               "-c", str(source), "-o", str(obj)]
        built = subprocess.run(cmd, capture_output=True, text=True)
        if built.returncode != 0:
            errors = [x for x in built.stderr.splitlines() if "error" in x or "fatal" in x] or \
                built.stderr.strip().splitlines()[-1:] or ["(no message)"]
            raise RuntimeError(f"nvcc failed: {errors[0].strip()[:300]}")
        dumped = subprocess.run([tool("cuobjdump"), "-sass", str(obj)], capture_output=True, text=True)
        if dumped.returncode != 0:
            raise RuntimeError(f"cuobjdump failed: {(dumped.stderr.strip().splitlines() or ['(no message)'])[-1][:300]}")
        return dumped.stdout


def table(counts: dict[str, dict[str, tuple[int, int | None]]], spans: bool) -> list[str]:
    """Lines: a kernel a row, a column a file (its instruction count, and the --between stretch's)."""
    files = list(counts)
    kernels = sorted({k for per in counts.values() for k in per})
    lines = ["  ".join(["kernel", *files])]
    for k in kernels:
        cells = []
        for f in files:
            n = counts[f].get(k)
            span = "" if not spans or n is None else f" ({'-' if n[1] is None else n[1]} between)"
            cells.append("-" if n is None else f"{n[0]}{span}")
        lines.append("  ".join([k, *cells]))
    return lines


def main(argv=None) -> None:
    from rnnlab.ops.elman import persistent

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="*", type=Path, default=[persistent.SOURCE])
    p.add_argument("--kernel", default=r"__nv_bfloat16", help="a regex on the demangled kernel names")
    p.add_argument("--between", nargs=2, metavar=("FIRST", "LAST"), default=None,
                   help="also count the instructions from the first containing FIRST to the next containing LAST")
    p.add_argument("--lowrank", action="store_true", help="the low-rank term's build (-DRNNLAB_LOWRANK)")
    p.add_argument("--arch", default=ARCH, help=f"the target, e.g. sm_90a (default {ARCH})")
    args = p.parse_args(argv)
    try:
        if not re.fullmatch(r"sm_\d+[af]?", args.arch):
            raise ValueError(f"--arch {args.arch!r} is not a GPU target like sm_90 or sm_90a")
        try:
            kernel = re.compile(args.kernel)
        except re.error as e:
            raise ValueError(f"--kernel {args.kernel!r} is not a regular expression ({e})") from None
        for f in args.files:
            if not f.is_file() or f.suffix != ".cu":
                raise ValueError(f"{f}: needs an existing CUDA file (a copy of rnnlab/ops/elman/persistent.cu)")
        if len({f.resolve() for f in args.files}) < len(args.files):
            raise ValueError("a file is named twice")
        counts = {}
        for f in args.files:
            per = functions(compile_sass(f, args.lowrank, args.arch))
            names = demangle(list(per))
            key = f.name if [x.name for x in args.files].count(f.name) == 1 else str(f)
            counts[key] = {short_name(names[m]): (len(ins), between(ins, *args.between) if args.between else None)
                           for m, ins in per.items() if kernel.search(names[m])}
            if not counts[key]:
                raise ValueError(f"{f}: no kernel matches --kernel {args.kernel!r}")
    except (OSError, ValueError, RuntimeError) as e:
        print(f"cuda_sass.py: {e}", file=sys.stderr)
        sys.exit(2)
    print("\n".join(table(counts, args.between is not None)))


if __name__ == "__main__":
    main()
