"""`rnnlab train` with a Ctrl-C handler that raises KeyboardInterrupt as Python's does and records where it
was raised; a run still alive 9 s in prints that stack (its Ctrl-C was swallowed) and exits 5. Not
Python's own handler, so rnnlab's remembering one (after the fix) does not take its place."""
import os, signal, sys, threading, time, traceback
seen = []
def h(signum, frame):
    seen.append("".join(traceback.format_stack(frame)))
    raise KeyboardInterrupt
signal.signal(signal.SIGINT, h)
def watchdog():
    time.sleep(9)
    if seen:
        sys.__stderr__.write("LOST CTRL-C, raised at:\n" + seen[0] + "\n")
        sys.__stderr__.flush()
        os._exit(5)
threading.Thread(target=watchdog, daemon=True).start()
import rnnlab.cli
rnnlab.cli.command()
