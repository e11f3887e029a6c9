"""ModelConfig: everything needed to build an LM, as one plain dataclass (saved with every run)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from rnnlab.models.registry import get_spec

MAX_DIM = 65536
MAX_DEPTH = 1024


@dataclass
class ModelConfig:
    """A byte-level LM: ``model`` names the mixer in the registry; ``layer`` holds that mixer's own
    fields (e.g. ``{"expansion": 2.5}`` for E1, ``{"d_state": 128}`` for Mamba2).

    ``mlp_ratio=None`` takes the registry's default for the model (0 = no MLP sub-block, as in the
    seed's recurrent models; 4 for the Transformer).
    """

    model: str = "e1"
    dim: int = 256
    depth: int = 4
    vocab_size: int = 256
    mlp_ratio: float | None = None
    tie_embeddings: bool = True
    layer: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        get_spec(self.model)  # raises ValueError naming the known models
        if not isinstance(self.dim, int) or not 0 < self.dim <= MAX_DIM:
            raise ValueError(f"dim must be an integer in 1..{MAX_DIM}, got {self.dim!r}")
        if not isinstance(self.depth, int) or not 0 < self.depth <= MAX_DEPTH:
            raise ValueError(f"depth must be an integer in 1..{MAX_DEPTH}, got {self.depth!r}")
        if self.vocab_size != 256:
            raise ValueError(f"rnnlab models are byte-level: vocab_size must be 256, got {self.vocab_size}")
        if self.mlp_ratio is not None and self.mlp_ratio < 0:
            raise ValueError(f"mlp_ratio must be >= 0, got {self.mlp_ratio}")
        self.layer_config().validate()

    def resolved_mlp_ratio(self) -> float:
        return get_spec(self.model).mlp_ratio if self.mlp_ratio is None else float(self.mlp_ratio)

    def layer_config(self):
        """The mixer's own config dataclass, built from ``dim`` and ``layer``."""
        cls = get_spec(self.model).config_cls
        known = {f.name for f in dataclasses.fields(cls)} - {"dim"}
        unknown = sorted(set(self.layer) - known)
        if unknown:
            raise ValueError(
                f"unknown {self.model} layer option(s) {unknown}; known: {sorted(known)}"
            )
        return cls(dim=self.dim, **self.layer)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model config field(s) {unknown}; known: {sorted(known)}")
        return cls(**d)
