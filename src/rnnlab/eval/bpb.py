"""Held-out loss and bits per byte.

``evaluate`` runs the model (in eval mode, no grad) over ``rnnlab.data.eval_windows``: fixed,
non-overlapping windows covering the split in order, so the number is deterministic and the
same for every model. Loss is the mean cross-entropy per predicted byte in nats; bits per byte
is ``loss / ln 2`` (one token = one byte).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from rnnlab.data import eval_windows
from rnnlab.ops.dtypes import autocast


@torch.no_grad()
def evaluate(model: nn.Module, split, seq_len: int, batch_size: int, max_bytes: int | None = None,
             *, precision: str = "fp32") -> dict[str, float]:
    """``{"loss", "bpb", "bytes"}`` over ``split`` (its first ``max_bytes`` bytes when given).

    ``model(idx, targets)`` must return the mean cross-entropy; the forward runs under the
    autocast of the run's ``precision`` (``rnnlab.ops.dtypes.autocast``: bf16 for
    ``bf16-mixed``). The model's train/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    try:
        for win in eval_windows(split, seq_len, batch_size, max_bytes):
            win = win.to(device, non_blocking=True)
            x, y = win[:, :-1], win[:, 1:]
            with autocast(device, precision):
                loss = model(x, y)
            n = y.numel()
            total += float(loss.float()) * n
            count += n
    finally:
        model.train(was_training)
    loss = total / count
    return {"loss": loss, "bpb": loss / math.log(2), "bytes": count}

