"""As where_raised.py, printing instead whether torch still sees Triton after the loss."""
import os, signal, sys, threading, time, traceback
seen = []
def h(signum, frame):
    seen.append("".join(traceback.format_stack(frame)))
    raise KeyboardInterrupt
signal.signal(signal.SIGINT, h)
def watchdog():
    time.sleep(9)
    if seen:
        import torch.utils._triton as t; sys.__stderr__.write(f"LOST CTRL-C has_triton={t.has_triton_package()} triton_in_modules={'triton' in sys.modules}\n")
        sys.__stderr__.flush()
        os._exit(5)
threading.Thread(target=watchdog, daemon=True).start()
import rnnlab.cli
rnnlab.cli.command()
