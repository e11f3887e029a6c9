"""Rewrite a wheel in place with its shared libraries' debug sections stripped (`strip --strip-debug`).

Why: a GPU call carries at most 64 MiB with the tree, and causal_conv1d's wheel (26 MB, a 42 MB library
of which 10 MB is DWARF debug information) left a Mamba2 suite call 3 MiB over. Only the debug
sections go: the machine code and the CUDA fat binary (`.nv_fatbin`) are kept byte for byte, so the
library computes the same. The wheel's RECORD gets the new hashes and sizes, as pip expects.

Usage: python3 benchmarks/strip_wheel.py WHEEL   (prints the size before and after)
"""

import base64
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def strip_wheel(path: str) -> None:
    with zipfile.ZipFile(path) as wheel:
        infos = [info for info in wheel.infolist() if not info.is_dir()]  # kept: their permission bits
        members = {info.filename: wheel.read(info) for info in infos}
    record = next(name for name in members if name.endswith(".dist-info/RECORD"))
    with tempfile.TemporaryDirectory() as tmp:
        for name in [n for n in members if n.endswith(".so") or ".so." in n]:
            lib = os.path.join(tmp, "lib.so")
            with open(lib, "wb") as f:
                f.write(members[name])
            subprocess.run(["strip", "--strip-debug", lib], check=True)
            with open(lib, "rb") as f:
                members[name] = f.read()
    lines = [_record_line(name, data) for name, data in members.items() if name != record]
    members[record] = ("\n".join(lines + [f"{record},,"]) + "\n").encode()
    before = os.path.getsize(path)
    with zipfile.ZipFile(path + ".tmp", "w", zipfile.ZIP_DEFLATED, compresslevel=9) as wheel:
        for info in infos:
            wheel.writestr(info, members[info.filename], compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    os.replace(path + ".tmp", path)
    after = os.path.getsize(path)
    print(f"{os.path.basename(path)}: {before / 1e6:.1f} -> {after / 1e6:.1f} MB, debug sections stripped")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python3 benchmarks/strip_wheel.py WHEEL")
    strip_wheel(sys.argv[1])
