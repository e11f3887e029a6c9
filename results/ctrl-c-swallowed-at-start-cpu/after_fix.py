"""`rnnlab train` under Python's own Ctrl-C handler (as in a terminal); a run still alive 9 s in says
LOST and exits 5."""
import os, signal, sys, threading, time
signal.signal(signal.SIGINT, signal.default_int_handler)
def watchdog():
    time.sleep(9)
    sys.__stderr__.write("LOST CTRL-C: still running at 9 s\n"); sys.__stderr__.flush()
    os._exit(5)
threading.Thread(target=watchdog, daemon=True).start()
import rnnlab.cli
rnnlab.cli.command()
