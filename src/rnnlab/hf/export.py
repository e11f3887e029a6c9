"""A training run as a Hugging Face ``save_pretrained`` folder (``rnnlab export``).

The folder holds ``config.json`` (``RnnlabConfig``, model type ``rnnlab``), ``model.safetensors``
(the run's shipped weights, in their training dtype, keys ``model.*``), ``generation_config.json``
and the byte tokenizer (``tokenizer.json``, ``tokenizer_config.json``). After ``import rnnlab``,
``AutoModelForCausalLM.from_pretrained(folder)`` loads it.

Kernel choices (a layer's ``backend`` option) are not exported: where the folder is loaded each
layer takes the fast path available there (checkpoints move freely between backends), so a
Mamba2 trained with the official CUDA kernels loads on CPU with the SSD reference.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from rnnlab.hf.modeling import RnnlabConfig, RnnlabForCausalLM
from rnnlab.hf.tokenizer import byte_tokenizer


def load_trained(run_dir: str | os.PathLike):
    """The run's TrainConfig and its LM with the shipped weights, on CPU. The one place this
    package reaches into ``rnnlab.train``."""
    from rnnlab.train.rundir import RunDir

    cfg, model, _ = RunDir(run_dir).load("cpu")
    return cfg, model


def export_run(run_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write the run's model and the byte tokenizer to ``out_dir`` (which must not hold files)."""
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--out {out} already exists and is not an empty directory")
    cfg, lm = load_trained(run_dir)
    layer = {k: v for k, v in (cfg.model.layer or {}).items() if k != "backend"}
    hf_config = RnnlabConfig.from_model_config(dataclasses.replace(cfg.model, layer=layer), seq_len=cfg.data.seq_len)
    model = RnnlabForCausalLM(hf_config).to(next(lm.parameters()).dtype)
    model.model.load_state_dict(lm.state_dict())
    model.save_pretrained(out)
    byte_tokenizer(cfg.data.seq_len).save_pretrained(out)
    return out
