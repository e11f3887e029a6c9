"""The recurrences of every layer, one op each: a pure-PyTorch reference (``<pkg>/naive.py``) beside
its GPU kernel (``<pkg>/triton.py``), run through one registry and backend vocabulary
(``rnnlab.ops.registry``). Every scan returns ``(all states or outputs, final state)``, so a
layer's ``step`` is its op run on one token; E1's spectral norm of its recurrent weight is an op
too (its kernel chosen the same way) and returns ``(scaled weight, power-iteration vector)``."""

from rnnlab.ops.delta import gated_delta_scan
from rnnlab.ops.diag import diag_elman_scan
from rnnlab.ops.e88 import e88_scan
from rnnlab.ops.elman import elman_decay_scan, elman_lowrank_scan, elman_scan
from rnnlab.ops.registry import BACKENDS, OPS
from rnnlab.ops.scan import linear_scan, mingru_scan, minlstm_scan
from rnnlab.ops.ssd import ssd_scan

__all__ = ["BACKENDS", "OPS", "diag_elman_scan", "e88_scan", "elman_decay_scan", "elman_lowrank_scan", "elman_scan",
           "gated_delta_scan", "linear_scan", "mingru_scan", "minlstm_scan", "ssd_scan"]
