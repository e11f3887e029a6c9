"""`rnnlab ARGS` with a thread that logs SIGINT's disposition whenever it changes (Python's handler,
the process's ignored / caught bits from /proc, and the kernel's handler address and flags, which
a native library's own handler changes: LLVM's at Triton's first compile, until the trainer puts
Python's back after the step), and a last line at a clean interpreter exit: a process that ends without that line died
of a signal (faulthandler prints every thread's stack on a fatal one). SIGINT starts at Python's
default, as in a foreground process (a script's `cmd &` would start it ignored)."""
import atexit
import ctypes
import faulthandler
import runpy
import signal
import sys
import threading
import time


class Sigaction(ctypes.Structure):  # glibc's struct sigaction
    _fields_ = [("handler", ctypes.c_void_p), ("mask", ctypes.c_ulong * 16), ("flags", ctypes.c_int),
                ("restorer", ctypes.c_void_p)]


def disposition() -> tuple[str, dict[str, bool], str]:
    status = dict(line.split(":\t", 1) for line in open("/proc/self/status").read().splitlines() if ":\t" in line)
    bit = 1 << (signal.SIGINT - 1)
    action = Sigaction()
    ctypes.CDLL(None).sigaction(signal.SIGINT, None, ctypes.byref(action))
    return (repr(signal.getsignal(signal.SIGINT)), {k: bool(int(status[k], 16) & bit) for k in ("SigIgn", "SigCgt")},
            f"kernel: handler {action.handler or 0:#x} flags {action.flags & 0xFFFFFFFF:#x}")


def watch() -> None:
    last = None
    while True:
        now = disposition()
        if now != last:
            print(f"[watch {time.strftime('%H:%M:%S')}] SIGINT: {now}", file=sys.stderr, flush=True)
            last = now
        time.sleep(0.1)


faulthandler.enable(all_threads=True)
signal.signal(signal.SIGINT, signal.default_int_handler)
atexit.register(lambda: print(f"[watch {time.strftime('%H:%M:%S')}] clean interpreter exit", file=sys.stderr, flush=True))
threading.Thread(target=watch, daemon=True).start()
sys.argv = ["rnnlab", *sys.argv[1:]]
runpy.run_module("rnnlab", run_name="__main__", alter_sys=True)
