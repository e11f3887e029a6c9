"""Models: the config, the byte-level LM, the registry of layer kinds, and parameter matching."""

from rnnlab.models.config import ModelConfig
from rnnlab.models.lm import LM
from rnnlab.models.params import count_params, solve_dim
from rnnlab.models.registry import MODELS, get_spec

__all__ = ["LM", "MODELS", "ModelConfig", "count_params", "get_spec", "solve_dim"]
