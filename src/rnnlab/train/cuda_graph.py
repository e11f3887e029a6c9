"""A training step's forward and backward as one CUDA graph (``rnnlab train --cuda-graph``).

A compiled step that the GPU finishes faster than the CPU can queue it is bound by the host: its
speed then moves with the machine's CPU (compiled Mamba2, ~20 kernels per layer launched from
Python around 8 graphs: results/mamba2-trainer-steps-h200). Captured once and replayed, the
forward and backward cost the host one launch. The optimizer step stays outside the graph
(Schedule-Free's step takes new scalars from the host every step) and so do the loss and
gradient-norm reads.

The gradients live in the graph's memory and every replay rewrites them: the trainer must not set
them to None after the optimizer step (``Trainer.train_step``). That memory, with the step's
activations, stays reserved for the whole run, so an evaluation's memory comes on top of it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

WARMUP_PASSES = 2  # forward+backward passes on a side stream before capturing, as capturing requires


class GraphedForwardBackward:
    """``forward_backward(batch) -> loss`` captured as a CUDA graph on a batch shaped like
    ``example``; calling it copies the batch in, replays the graph and returns the loss tensor
    (rewritten by each replay).

    Capturing first runs ``WARMUP_PASSES`` passes on a side stream (compilation, autotuning and
    the autograd engine's first-use set-up cannot happen during a capture) and then puts back the
    model's buffers and drops the gradients, so the run's numbers are those of the uncaptured
    step: E1's spectral-norm vector moves on every training forward, and must move once per step.

    Capture before any step's output is kept (the trainer captures at its first step): a loss held
    from an uncaptured step keeps its autograd graph, whose gradient accumulators belong to the
    stream that step ran on; if that is the default stream, the captured backward would make it
    wait on the capture, which CUDA refuses ("legacy stream depend on a capturing blocking stream").
    """

    def __init__(self, forward_backward: Callable[[torch.Tensor], torch.Tensor], model: nn.Module,
                 example: torch.Tensor):
        self.static = example.to(next(model.parameters()).device, copy=True)
        with torch.cuda.device(self.static.device):  # streams and graphs belong to the current device
            self._capture(forward_backward, model)

    def _capture(self, forward_backward, model: nn.Module) -> None:
        buffers = list(model.buffers())
        saved = [b.clone() for b in buffers]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_PASSES):
                model.zero_grad(set_to_none=True)
                forward_backward(self.static)
        torch.cuda.current_stream().wait_stream(side)
        with torch.no_grad():
            for b, s in zip(buffers, saved):
                b.copy_(s)
        model.zero_grad(set_to_none=True)  # the captured backward then writes the gradients, not adds
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.loss = forward_backward(self.static)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if batch.shape != self.static.shape:
            raise ValueError(f"a CUDA-graphed step takes batches of shape {tuple(self.static.shape)}, "
                             f"got {tuple(batch.shape)}")
        with torch.cuda.device(self.static.device):
            self.static.copy_(batch, non_blocking=True)
            self.graph.replay()
        return self.loss
