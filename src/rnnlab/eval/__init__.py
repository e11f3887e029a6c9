"""Evaluation: held-out loss / bits per byte (``evaluate``) and text generation (``generate``)."""

from rnnlab.eval.bpb import evaluate, evaluate_run
from rnnlab.eval.sampling import generate

__all__ = ["evaluate", "evaluate_run", "generate"]
