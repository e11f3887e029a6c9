"""rnnlab's LM as a Hugging Face causal LM: ``RnnlabConfig`` (model type ``rnnlab``) and
``RnnlabForCausalLM``, which wraps ``rnnlab.models.LM`` unchanged (state-dict keys ``model.*``).

Two ways through the model:

- ``model(input_ids)`` runs the parallel forward (the one training used), for scoring text
  (lm-eval's loglikelihood, perplexity).
- ``model(input_ids, use_cache=True[, cache=state])`` steps the layers one byte at a time
  (``LM.step``) from ``cache`` (a ``RecurrentState``; a fresh one when none is given) and returns
  the advanced state as ``output.cache``. ``generate`` does this: the prompt is fed step by step
  (the layers' parallel forward does not return its final state), then each new byte costs one
  step, O(1) for the recurrent layers whatever the prefix length (attention's step still reads
  its growing key/value cache).

There is no attention mask inside a byte-level RNN: a mask with padding before real bytes (left
padding, as ``generate`` and lm-eval batch prompts of unequal length) sends the bytes through the
step path, where a row keeps its state at each of its pad positions, so its state and its logits at
real positions are those of its real bytes alone (its logits at pad positions mean nothing; pads
after real bytes are skipped so too when stepped). A Transformer's key/value cache cannot skip a row's
position so: left padding is refused for it. Right padding is harmless for a causal model and
accepted, but ``generate`` on right-padded prompts of unequal length would append new bytes after the
pads, which is refused.

A Mamba2 or Gated DeltaNet layer (backend auto: ``rnnlab export`` leaves the kernel choice to
where the folder is loaded) is built for the device the model is loaded onto, as ``rnnlab
train/eval/sample`` build it (``ModelConfig.on_device``): ``from_pretrained(folder)`` loads onto
the CPU and builds the PyTorch reference; ``from_pretrained(folder, device_map="cuda")`` (lm-eval's
HF backend passes its ``--device`` so) builds the official CUDA implementation where its library
imports, whose forward refuses CPU tensors; ``RnnlabForCausalLM(config)`` builds for the default
device (``torch.device`` context). A move to another kind of device (``.to("cuda")``, ``.cpu()``)
rebuilds such layers for it, with the same weights (move before building an optimizer, as torch
advises: the parameters are new objects).
"""

from __future__ import annotations

from contextvars import ContextVar
from pathlib import Path
from typing import Any

import torch
from transformers import GenerationMixin, PreTrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.utils import can_return_tuple

from rnnlab.hf import register_auto_classes
from rnnlab.models.config import ModelConfig
from rnnlab.models.lm import LM

# The device a running ``RnnlabForCausalLM.from_pretrained`` loads onto (its model is built inside
# transformers' meta-device context, which says nothing of where the weights will go).
_LOADING_ONTO: ContextVar[torch.device | None] = ContextVar("rnnlab_hf_loading_onto", default=None)
# device_map words for which accelerate spreads the model over the GPUs there are
DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")

# For tools that load a saved folder without importing rnnlab first (lm-eval's plain `lm_eval --model
# hf`): with trust_remote_code=True, transformers follows config.json's auto_map to this file in
# the folder, whose one line imports the classes from the installed rnnlab package.
SHIM = "modeling_rnnlab"
SHIM_AUTO_MAP = {"AutoConfig": f"{SHIM}.RnnlabConfig", "AutoModelForCausalLM": f"{SHIM}.RnnlabForCausalLM"}
SHIM_CODE = ('"""rnnlab model classes, from the installed rnnlab package (pip install rnnlab[hf])."""\n\n'
             "from rnnlab.hf.modeling import RnnlabConfig, RnnlabForCausalLM  # noqa: F401\n")

# The byte every special-token slot names: NUL, which text never contains (see rnnlab.hf.tokenizer).
SPECIAL_BYTE = 0


class RnnlabConfig(PreTrainedConfig):
    """``rnnlab.models.ModelConfig``'s fields (``tie_embeddings`` under HF's name
    ``tie_word_embeddings``) plus ``seq_len``, the training context in bytes (informational: a
    recurrent model has no position limit)."""

    model_type = "rnnlab"

    model: str = "e1"
    dim: int = 256
    depth: int = 4
    vocab_size: int = 256
    mlp_ratio: float | None = None
    tie_word_embeddings: bool = True
    rescale_prenorm_residual: bool = False
    norm: str = "layernorm"
    residual_in_fp32: bool = False
    layer: dict[str, Any] | None = None
    seq_len: int | None = None
    bos_token_id: int | None = SPECIAL_BYTE
    pad_token_id: int | None = SPECIAL_BYTE
    eos_token_id: int | None = None  # no end-of-text byte: generate runs for max_new_tokens

    @classmethod
    def from_model_config(cls, cfg: ModelConfig, seq_len: int | None = None) -> "RnnlabConfig":
        d = cfg.to_dict()
        d["tie_word_embeddings"] = d.pop("tie_embeddings")
        return cls(**d, seq_len=seq_len)

    @classmethod
    def register_for_auto_class(cls, auto_class: Any = "AutoConfig") -> None:
        """Nothing (transformers calls it on a ``trust_remote_code`` load): saving must not copy this
        module into the folder as ``modeling.py`` and point ``auto_map`` at it; the folder's
        ``modeling_rnnlab.py`` imports the installed classes (``RnnlabForCausalLM.save_pretrained``)."""

    def to_model_config(self) -> ModelConfig:
        return ModelConfig(model=self.model, dim=self.dim, depth=self.depth, vocab_size=self.vocab_size,
                           mlp_ratio=self.mlp_ratio, tie_embeddings=self.tie_word_embeddings,
                           rescale_prenorm_residual=self.rescale_prenorm_residual, norm=self.norm,
                           residual_in_fp32=self.residual_in_fp32, layer=dict(self.layer or {}))


class RecurrentState:
    """What ``generate`` carries between steps: each block's layer state from ``LM.init_state``
    (fixed size for recurrent layers, a growing key/value cache for attention), and how many bytes
    it has taken in. ``generate(ids, cache=state)`` reads the count (``get_seq_length``) to feed
    only the bytes of ``ids`` after them, as it does a key/value cache (continuing a generation
    from its returned cache); a recurrent state is neither compilable nor croppable."""

    is_compileable = False
    is_croppable = False

    def __init__(self, layers: list, seen: int = 0):
        self.layers = layers
        self.seen = seen

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """The number of bytes stepped through so far (of every row: a batch steps together)."""
        return self.seen

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Keep the rows of ``beam_idx`` (beam search): every state tensor is batch-first."""
        self.layers = [tuple(t.index_select(0, beam_idx.to(t.device)) for t in s) for s in self.layers]


class RnnlabForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = RnnlabConfig
    base_model_prefix = "model"
    _tied_weights_keys = {"model.head.weight": "model.embed.weight"}  # applied when tie_word_embeddings
    _is_stateful = True  # a recurrent state cannot be rolled back (no assisted generation)

    def __init__(self, config: RnnlabConfig):
        super().__init__(config)
        device = _LOADING_ONTO.get() or torch.empty(0).device  # else the default device / its context
        model_cfg = config.to_model_config().on_device(device)
        self.model = LM(model_cfg)
        self._built_layer = model_cfg.layer  # the layer options the model was built with, backend resolved
        self.post_init()

    def _apply(self, fn, recurse: bool = True):
        """``to``, ``cuda``, ``cpu`` (and dtype casts) as torch's, then :meth:`_build_for_device`."""
        super()._apply(fn, recurse)
        self._build_for_device()
        return self

    def _build_for_device(self) -> None:
        """Rebuild the model, with the same weights, where the device it now sits on takes another
        implementation of its layers (``ModelConfig.on_device``): loaded onto the CPU then moved with
        ``.to("cuda")``, a Mamba2 or Gated DeltaNet layer becomes the official one (where its
        library imports), and the other way round. Not while ``from_pretrained`` loads (it has
        built the model for where the weights go), nor on the meta device."""
        param = next(self.model.parameters(), None)
        if param is None or param.device.type == "meta" or _LOADING_ONTO.get() is not None:
            return
        model_cfg = self.config.to_model_config().on_device(param.device)
        if model_cfg.layer == self._built_layer:
            return
        model = LM(model_cfg).to(device=param.device, dtype=param.dtype)
        model.load_state_dict(self.model.state_dict())  # both implementations hold the same state_dict
        frozen = {name for name, p in self.model.named_parameters() if not p.requires_grad}
        for name, p in model.named_parameters():  # parameters frozen before the move stay frozen
            p.requires_grad_(name not in frozen)
        self.model = model.train(self.model.training)
        self._built_layer = model_cfg.layer

    @classmethod
    def register_for_auto_class(cls, auto_class: Any = "AutoModelForCausalLM") -> None:
        """Nothing, as ``RnnlabConfig.register_for_auto_class``."""

    def save_pretrained(self, save_directory, is_main_process: bool = True, **kwargs) -> None:
        """transformers' ``save_pretrained``, with ``config.json``'s ``auto_map`` naming the folder's
        ``modeling_rnnlab.py``, written too: a saved model (an export, or one fine-tuned from it) loads
        with ``trust_remote_code=True`` where rnnlab is not imported first. ``push_to_hub=True`` is
        refused: transformers would upload the folder before ``modeling_rnnlab.py`` is in it
        (``push_to_hub(repo_id)`` uploads the whole saved folder)."""
        if kwargs.get("push_to_hub"):
            raise ValueError("save_pretrained(push_to_hub=True) would upload the folder without modeling_rnnlab.py, "
                             "which its config.json names: use model.push_to_hub(repo_id)")
        self.config.auto_map = dict(SHIM_AUTO_MAP)
        super().save_pretrained(save_directory, is_main_process=is_main_process, **kwargs)
        if is_main_process:
            Path(save_directory, f"{SHIM}.py").write_text(SHIM_CODE)

    @classmethod
    def from_pretrained(cls, *args, **kwargs) -> "RnnlabForCausalLM":
        """transformers' ``from_pretrained``, building each layer for the device ``device_map``
        loads it onto (see the module docstring; :func:`load_device`)."""
        token = _LOADING_ONTO.set(load_device(kwargs.get("device_map")))
        try:
            return super().from_pretrained(*args, **kwargs)
        finally:
            _LOADING_ONTO.reset(token)

    def _init_weights(self, module: torch.nn.Module) -> None:
        """Nothing: rnnlab's layers initialise themselves when built, and an exported model's
        weights all come from its checkpoint; HF's generic init must not overwrite either."""

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        # generate must not create a key/value DynamicCache: forward builds a RecurrentState.
        return False

    def _prepare_attention_mask_for_generation(self, inputs_tensor: torch.Tensor, generation_config,
                                               model_kwargs: dict) -> torch.LongTensor:
        # generate without an attention_mask: every byte is text. The pad id is byte 0, a byte a
        # prompt may hold (the BOS lm-eval conditions on), so transformers' default of taking it
        # for padding would refuse such a prompt as left-padded.
        return torch.ones(inputs_tensor.shape[:2], dtype=torch.long, device=inputs_tensor.device)

    def generate(self, *args, **kwargs):
        """GenerationMixin's ``generate``, refusing an ``attention_mask`` with a row of real bytes whose last
        column is a pad: that prompt's new bytes would follow its pads in the output. A row of pads only
        generates from the initial state."""
        mask = kwargs.get("attention_mask")
        if mask is not None and mask.shape[-1] > 0 and bool(((mask[:, -1] == 0) & (mask != 0).any(-1)).any()):
            works = "" if self._state_grows() else 'pad on the left (a tokenizer loaded with padding_side="left"), '
            raise ValueError("rnnlab models cannot generate after padding: a right-padded prompt's new bytes would "
                             f"follow its pads (generate: {works}batch prompts of equal length, or one at a time)")
        return super().generate(*args, **kwargs)

    def _state_grows(self) -> bool:
        """Whether a layer's state grows with the bytes fed (the Transformer's key/value cache), which
        cannot skip pads: left padding is refused."""
        return any(getattr(b.mixer, "state_grows", False) for b in self.model.blocks)

    def get_input_embeddings(self) -> torch.nn.Embedding:
        return self.model.embed

    @can_return_tuple
    def forward(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None,
                cache: RecurrentState | None = None, use_cache: bool = False,
                labels: torch.LongTensor | None = None, **kwargs) -> CausalLMOutputWithPast:
        """``input_ids: [B, T]`` bytes -> ``logits [B, T, 256]``, float32 for a bf16 or fp16 model (rnnlab
        scores in float32; lm-eval's log-softmax in bf16 would round every log-prob), and the shifted-label
        loss when ``labels`` is given. ``use_cache=True`` or a ``cache`` steps from that state instead of
        running the parallel forward, and returns the new state as ``cache``. ``attention_mask`` covers the
        cached bytes and ``input_ids`` (HF's convention); a 0 before a 1 (left padding) steps too, each row
        keeping its state where its mask is 0 (see the module docstring). ``return_dict=False`` (or the
        config's ``return_dict``) gives the fields that are set as a tuple, as every HF model does."""
        grows = self._state_grows()
        if grows and _left_padded(attention_mask):
            raise ValueError(f"rnnlab {self.config.model} models cannot skip padding before real bytes (left padding): "
                             "their key/value cache keeps every position; pad on the right (generate: batch prompts of "
                             "equal length, or one at a time)")
        # the mask's columns of the bytes fed now, where a fixed-size state skips pads (None: every byte is fed)
        start = 0 if attention_mask is None else attention_mask.shape[1] - input_ids.shape[1]
        fed = None if attention_mask is None or grows else attention_mask[:, start:]
        fed = None if fed is None or bool(fed.all()) else fed
        keep = use_cache or cache is not None
        if keep or _left_padded(fed):
            state = cache if cache is not None else RecurrentState(self.model.init_state(input_ids.shape[0]))
            logits = self._step_through(input_ids, state, fed)
            cache = state if keep else None
        else:
            logits = self.model(input_ids)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=cache)

    def _step_through(self, input_ids: torch.LongTensor, cache: RecurrentState,
                      fed: torch.Tensor | None = None) -> torch.Tensor:
        """Feed ``input_ids`` one byte at a time through ``LM.step``, advancing ``cache`` in place
        (no bytes: ``[B, 0, 256]`` logits, the cache unchanged, as the parallel forward gives). With
        ``fed`` (``[B, T]``, 0 at pads), a row keeps its old state at its pads."""
        logits = []
        for t in range(input_ids.shape[1]):
            step_logits, layers = self.model.step(input_ids[:, t], cache.layers)
            cache.layers = layers if fed is None else _where_fed(fed[:, t].bool(), layers, cache.layers)
            cache.seen += 1
            logits.append(step_logits)
        if not logits:
            head = self.model.head.weight
            return head.new_empty(input_ids.shape[0], 0, head.shape[0])
        return torch.stack(logits, dim=1)


def load_device(device_map: Any) -> torch.device:
    """The device ``from_pretrained(..., device_map=device_map)`` loads the model onto, as far as
    building its layers goes: CUDA only when every placement is a GPU (an index, ``"cuda[:n]"``, a
    CUDA ``torch.device``, or a spreading strategy such as ``"auto"`` where CUDA is available);
    with no ``device_map``, the ``torch.device`` context or default device, as transformers does;
    the CPU otherwise (a map that puts any module on the CPU or disk)."""
    if device_map is None:
        return torch.empty(0).device
    if isinstance(device_map, str) and device_map in DEVICE_MAP_STRATEGIES:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    places = device_map.values() if isinstance(device_map, dict) else [device_map]
    on_gpu = all((isinstance(p, int) and not isinstance(p, bool)) or str(p).startswith("cuda") for p in places)
    return torch.device("cuda" if on_gpu and places else "cpu")


def _left_padded(attention_mask: torch.Tensor | None) -> bool:
    """Whether a row of the mask has a 0 before a 1: a pad byte the state must not take in."""
    return attention_mask is not None and bool((attention_mask[:, 1:] > attention_mask[:, :-1]).any())


def _where_fed(fed: torch.Tensor, new: Any, old: Any) -> Any:
    """The stepped state ``new`` in the rows where ``fed`` (``[B]`` bool) is true, ``old`` in the
    others, over a state's lists and tuples of batch-first tensors (``LM.init_state``)."""
    if isinstance(new, torch.Tensor):
        return torch.where(fed.to(new.device).view(-1, *(1,) * (new.dim() - 1)), new, old)
    return type(new)(_where_fed(fed, n, o) for n, o in zip(new, old, strict=True))


# The post-import hook of ``import rnnlab`` cannot register while this module is still being
# imported (when it is what imported transformers first): register now that the classes exist.
register_auto_classes()
