"""Evaluation: held-out loss / bits per byte (``evaluate``) and text generation (``generate``)."""

from rnnlab.eval.bpb import evaluate
from rnnlab.eval.sampling import generate

__all__ = ["evaluate", "generate"]
