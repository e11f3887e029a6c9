"""The one config source: sectioned dataclasses whose field declarations drive type checks,
validation messages, the resumable set and the flat keys of config.json (rnnlab.options)."""

from __future__ import annotations

import json
import typing

import pytest

from rnnlab.options import Bounds, positive
from rnnlab.train.config import FIELDS, MODEL_KEYS, RESUMABLE, TrainConfig, apply_overrides, resume_mismatch

# config.json as the trainer wrote it before the config became sectioned (commit b051db5)
OLD_CONFIG_JSON = (
    '{"model": {"model": "e1", "dim": 32, "depth": 2, "vocab_size": 256, "mlp_ratio": null, "tie_embeddings": '
    'true, "layer": {}}, "data": null, "val_data": null, "val_fraction": 0.01, "batch_size": 4, "seq_len": 32, '
    '"steps": 8, "minutes": null, "tokens": null, "optimizer": "schedulefree-adamw", "lr": 0.003, '
    '"weight_decay": 0.1, "betas": [0.9, 0.999], "eps": 1e-08, "warmup_steps": 0, "grad_clip": null, '
    '"precision": "fp32", "seed": 42, "eval_every": 0, "eval_bytes": 4096, "eval_batch_size": null, '
    '"log_every": 10, "checkpoint_every": 1000, "out": "/tmp/pin/before/sf", "resume": false, "compile": false, '
    '"device": "cpu", "distributed": null}')


def test_old_config_json_loads_and_round_trips(tmp_path):
    from rnnlab.train.rundir import RunDir

    old = json.loads(OLD_CONFIG_JSON)
    (tmp_path / "config.json").write_text(OLD_CONFIG_JSON)
    cfg = RunDir(tmp_path).config().validate()
    assert (cfg.data.batch_size, cfg.budget.steps, cfg.optim.lr, cfg.run.eval_bytes) == (4, 8, 3e-3, 4096)
    added = {"lr_schedule": "cosine", "grad_accum": 1, "keep_checkpoints": 2, "keep_checkpoint_every": 0,
             "wandb": None, "overwrite": False, "extra_val_data": None, "curve_eval_bytes": None,
             "decay_marked": True}  # a run saved before this field decayed every parameter (LEGACY_DEFAULTS)
    assert cfg.to_dict() == {**old, **added}  # the same flat file, plus fields added since (their defaults)
    assert TrainConfig().optim.decay_marked is False and TrainConfig.from_dict(old).optim.decay_marked is False
    assert resume_mismatch(RunDir(tmp_path).saved_config(), cfg) is None
    new = TrainConfig.from_dict({**old, "decay_marked": False})
    assert resume_mismatch(RunDir(tmp_path).saved_config(), new)[0] == "decay_marked"


def _wrong_value(spec):
    """A value of the wrong type for the field (a string where a number or bool is expected...)."""
    base = typing.get_args(spec.type)[0] if type(None) in typing.get_args(spec.type) else spec.type
    return 5 if base is str else "no"


@pytest.mark.parametrize("key", sorted(FIELDS))
def test_every_field_is_type_checked(key):
    section, spec = FIELDS[key]
    value = _wrong_value(spec)
    if spec.meta.parse is not None:
        value = True  # fields with a parser accept text ("50M", "all"): a bool is still wrong
    cfg = apply_overrides(TrainConfig(), {key: value})
    with pytest.raises(ValueError, match=rf"^{key} must be .*, got {value!r}$"):
        cfg.validate()


@pytest.mark.parametrize("values, message", [
    ({"compile": "no"}, "compile must be true or false, got 'no'"),
    ({"tie_embeddings": "no"}, "tie_embeddings must be true or false, got 'no'"),
    ({"batch_size": "256"}, "batch_size must be a positive integer (at most 65,536), got '256'"),
    ({"steps": 2.0}, "steps must be a positive integer (at most 1,000,000,000,000), got 2.0"),
    ({"lr": float("inf")}, "lr must be a positive finite number, got inf"),
    ({"val_fraction": 1.0}, "val_fraction must be a number in (0, 1), got 1.0"),
    ({"betas": 5}, "betas must be two numbers in [0, 1), got 5"),
    ({"mlp_ratio": "two"}, "mlp_ratio must be a finite number >= 0, got 'two'"),
    ({"layer": 5}, "layer must be a table of options, got 5"),
    ({"layer": {"heads": "two"}}, "e1 layer option heads must be a positive integer, got 'two'"),
    ({"vocab_size": 300}, "vocab_size must be one of 256, got 300"),
    ({"distributed": "zero3"}, "distributed must be one of ddp, fsdp2, got 'zero3'"),
])
def test_type_and_range_messages(values, message):
    with pytest.raises(ValueError) as e:
        apply_overrides(TrainConfig(), values).validate()
    assert str(e.value) == message


def test_budget_one_of_and_default():
    assert TrainConfig().budget.chosen() == ("steps", 1000)  # the default budget, declared once
    cfg = apply_overrides(TrainConfig.from_dict({"steps": 7}), {"minutes": 2})
    assert cfg.budget.chosen() == ("minutes", 2.0)  # a budget given replaces the others
    assert apply_overrides(TrainConfig(), {"tokens": "50M"}).budget.chosen() == ("tokens", 50_000_000)


def test_eval_bytes_default_is_the_whole_split():
    assert TrainConfig().run.eval_bytes == 0  # 0 = all
    assert apply_overrides(TrainConfig(), {"eval_bytes": "1M"}).run.eval_bytes == 1_000_000
    assert apply_overrides(TrainConfig.from_dict({"eval_bytes": 5}), {"eval_bytes": "all"}).run.eval_bytes == 0


def test_derived_key_lists():
    assert RESUMABLE == {"steps", "minutes", "tokens", "extra_val_data", "grad_accum", "eval_every", "eval_bytes",
                         "curve_eval_bytes", "eval_batch_size", "log_every", "wandb", "checkpoint_every",
                         "keep_checkpoints", "keep_checkpoint_every", "out", "resume", "overwrite", "compile", "device",
                         "distributed"}
    assert MODEL_KEYS == ("model", "dim", "depth", "vocab_size", "mlp_ratio", "tie_embeddings", "layer")
    assert set(TrainConfig().to_dict()) == set(FIELDS) - set(MODEL_KEYS) | {"model"}


def test_bounds_describe_and_contain():
    assert positive(10).describe("integer") == "a positive integer (at most 10)"
    assert Bounds(0, 1, hi_open=True).describe("number") == "a number in [0, 1)"
    assert not Bounds(0, 1, hi_open=True).contains(1.0) and Bounds(0, 1, hi_open=True).contains(0.0)
