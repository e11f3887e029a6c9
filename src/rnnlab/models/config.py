"""ModelConfig: everything needed to build an LM, as one plain dataclass (saved with every run)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from rnnlab.layers.base import MAX_FACTOR, OFFICIAL_BACKENDS
from rnnlab.models.registry import MODELS, get_spec
from rnnlab.options import at_least, check, did_you_mean, option, positive

MAX_DIM = 65536
MAX_DEPTH = 1024
NORMS = ("layernorm", "rmsnorm")


def layer_text(layer: dict[str, Any] | None) -> str:
    """A model's layer options as ``--layer`` writes them, ``heads=14 expansion=2.0`` ("" for none):
    for log lines, summaries and reports."""
    return " ".join(f"{k}={v}" for k, v in (layer or {}).items())


def model_options_off_default(model: dict[str, Any]) -> dict[str, Any]:
    """A saved model config's settings beyond its kind, size and layer options that differ from their
    defaults (``{"mlp_ratio": 2.0}``)."""
    defaults = ModelConfig()
    return {k: model[k] for k in _OPTION_FIELDS if k in model and model[k] != getattr(defaults, k)}


def model_options_text(model: dict[str, Any]) -> str:
    """:func:`model_options_off_default` as ``mlp_ratio=2.0 tie_embeddings=False`` ("" for none)."""
    return " ".join(f"{k}={v}" for k, v in model_options_off_default(model).items())


def model_text(kind: str, size: str, layer: dict[str, Any] | None, options: dict[str, Any] | None) -> str:
    """``e1 dim=64 depth=2 heads=4 norm=rmsnorm``: a model as log lines, summaries, plans and reports name
    it: its kind, its size as the caller writes it (``dim=64 depth=2``, ``64x2``), its layer options and
    its settings off their defaults (``options``, a saved model config or part of one), or two models
    built differently would look the same."""
    return " ".join(t for t in (kind, size, layer_text(layer), model_options_text(options or {})) if t)


def unknown_layer_options(model: str, names) -> str | None:
    """The error line for those of ``names`` that are not options of ``model``'s layer, or None."""
    known = {f.name for f in dataclasses.fields(get_spec(model).config_cls)} - {"dim"}
    unknown = sorted(set(names) - known)
    if not unknown:
        return None
    return (f"unknown {model} layer option(s) {unknown}{_spelling_hint(unknown, known)}; known: {sorted(known)} "
            "(rnnlab layers)")


def _spelling_hint(unknown: list[str], known: set[str]) -> str:
    """``: did you mean d_state? ...`` for unknown layer options spelt with a flag's dashes (``d-state``;
    the options are named with underscores, as ``rnnlab layers`` lists them) or nearly right (``dstate``)."""
    model_fields = [k for k in unknown if isinstance(k, str) and k.replace("-", "_") in MODEL_FIELDS]
    if model_fields:  # --layer dim=64: the model's width, a flag (or field) of its own
        key = model_fields[0].replace("-", "_")
        flag = "--" + key.replace("_", "-")
        how = (f"{flag} or --no-{flag[2:]}" if isinstance(getattr(ModelConfig, key, None), bool) else f"{flag} VALUE")
        return f": {key} is the model's own setting, not a layer option: give {how} (in a config file, {key} = ...)"
    meant = did_you_mean(unknown, known, cutoff=0.8)
    dashes = (" (layer options are spelt with underscores)"
              if any(isinstance(k, str) and "-" in k and k.replace("-", "_") in known for k in unknown) else "")
    return meant + dashes if meant else ""


@dataclass
class ModelConfig:
    """A byte-level LM: ``model`` names the mixer in the registry; ``layer`` holds that mixer's own
    fields (e.g. ``{"expansion": 2.5}`` for E1, ``{"d_state": 128}`` for Mamba2).

    ``mlp_ratio=None`` takes the registry's default for the model (0 = no MLP sub-block, as in the
    reference's recurrent models; 4 for the Transformer).
    """

    model: str = option("e1", help="model kind: its mixer layer (rnnlab layers lists them)",
                        choices=lambda: tuple(MODELS))
    dim: int = option(256, help="model width", bounds=positive(MAX_DIM))
    depth: int = option(4, help="number of blocks", bounds=positive(MAX_DEPTH))
    vocab_size: int = option(256, help="bytes: always 256", choices=(256,), flag=False)
    mlp_ratio: float | None = option(None, help="MLP width per block as a multiple of dim (default: the "
                                                "model's: 0 = no MLP for recurrent models, 4 for the Transformer)",
                                     bounds=at_least(0, MAX_FACTOR))
    tie_embeddings: bool = option(True, help="share the input embedding with the output head (default: on)")
    rescale_prenorm_residual: bool = option(False, help="divide each block's output projections (the mixer's, "
                                                        "the MLP's) by sqrt(their number x depth) after their "
                                                        "init, as mamba_ssm's LM and GPT-2 do (default: off, as "
                                                        "the reference study; in pure bf16 it trained Mamba2 "
                                                        "400M 0.11-0.12 bpb lower in 1,000 steps and E1 "
                                                        "heads 400M 0.11, results/scale-1b-h100)")
    norm: str = option("layernorm", help="the LM's pre-norms (each block's and the final one): layernorm "
                                         "(weight and bias, as the reference's January runs) or rmsnorm (weight "
                                         "only, as mamba_ssm's LM and the reference's later LadderLM); E1's norm "
                                         "of its state is another setting, --layer norm", choices=NORMS)
    residual_in_fp32: bool = option(False, help="keep the residual stream in fp32, each norm computed on it in "
                                                "fp32 and rounded to the weights' dtype (as mamba_ssm's LM and "
                                                "the reference's later LadderLM); changes pure bf16 only (in "
                                                "bf16-mixed and fp32 the stream is fp32 already)")
    layer: dict[str, Any] = option(default_factory=dict, help="a mixer option, e.g. --layer expansion=2.5 "
                                                              "(repeatable; rnnlab layers lists them)")

    def validate(self) -> None:
        check(self)
        if self.resolved_mlp_ratio() > 0 and self.mlp_width() < 1:
            raise ValueError(f"mlp_ratio must give an MLP of at least one unit at dim {self.dim}, got "
                             f"{self.mlp_ratio} (0 means no MLP)")
        self.layer_config()  # builds and validates the mixer's config

    def resolved_mlp_ratio(self) -> float:
        return get_spec(self.model).mlp_ratio if self.mlp_ratio is None else float(self.mlp_ratio)

    def mlp_width(self) -> int:
        """The MLP's hidden width, ``round(dim * ratio)`` (0: no MLP sub-block)."""
        return int(round(self.dim * self.resolved_mlp_ratio()))

    def layer_config(self):
        """The mixer's own config dataclass, built from ``dim`` and ``layer`` and validated by its
        ``validate()``, whose errors come prefixed: "e1 layer option heads must be ..."."""
        cls = get_spec(self.model).config_cls
        if (unknown := unknown_layer_options(self.model, self.layer)) is not None:
            raise ValueError(unknown)
        cfg = cls(dim=self.dim, **self.layer)
        try:
            cfg.validate()
        except ValueError as e:
            raise ValueError(f"{self.model} layer option {e}") from None
        return cfg

    def on_device(self, device) -> "ModelConfig":
        """The config that builds this model for ``device`` (a ``torch.device``, or None for the CPU):
        off CUDA, a layer with an official implementation (Mamba2, Gated DeltaNet) on backend auto
        (the default) takes its PyTorch reference, whose weights are the same; ``self`` otherwise.
        The layer's own "auto" looks only at whether a GPU is visible, and the official layer's
        forward refuses CPU tensors. Every place that builds a model for a device resolves it here
        (``rnnlab.train.runtime.build_model``, the trainer's parameter count, ``rnnlab.hf``)."""
        if getattr(device, "type", "cpu") == "cuda" or self.layer.get("backend", "auto") != "auto":
            return self
        options = get_spec(self.model).layer_options()
        if not any(s.name == "backend" and s.choices == OFFICIAL_BACKENDS for s in options):
            return self
        return dataclasses.replace(self, layer={**self.layer, "backend": "reference"})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


MODEL_FIELDS = frozenset(f.name for f in dataclasses.fields(ModelConfig)) - {"layer", "vocab_size"}
# the model's settings beyond its kind, size and layer options (model_options_off_default reads them)
_OPTION_FIELDS = [f.name for f in dataclasses.fields(ModelConfig)
                  if f.name not in ("model", "dim", "depth", "vocab_size", "layer")]
