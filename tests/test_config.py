"""The one config source: sectioned dataclasses whose field declarations drive type checks,
validation messages, the resumable set and the flat keys of config.json (rnnlab.options)."""

from __future__ import annotations

import json
import typing
from pathlib import Path

import pytest

from rnnlab.options import Bounds, positive
from rnnlab.train.config import (FIELDS, MAX_TOKENS_PER_STEP, MODEL_KEYS, RESUMABLE, BudgetConfig, TrainConfig,
                                 apply_overrides, resume_mismatch, shown_setting)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only add contention

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
             "cuda_graph": False,
             "decay_marked": True}  # a run saved before this field decayed every parameter (LEGACY_DEFAULTS)
    model_added = {"rescale_prenorm_residual": False, "norm": "layernorm", "residual_in_fp32": False}
    assert cfg.to_dict() == {**old, **added, "model": {**old["model"], **model_added}}  # plus fields added since
    assert TrainConfig().optim.decay_marked is False and TrainConfig.from_dict(old).optim.decay_marked is False
    assert resume_mismatch(RunDir(tmp_path).saved_config(), cfg) is None
    new = TrainConfig.from_dict({**old, "decay_marked": False})
    assert resume_mismatch(RunDir(tmp_path).saved_config(), new)[0] == "decay_marked"


def test_a_config_with_a_retired_model_field_loads_and_resumes_without_it(tmp_path):
    """A run saved while rnnlab had ``fused_add_norm`` (how it was computed, not its weights) still
    loads, resumes and reports, with or without that field on; an unknown model field still fails."""
    from rnnlab.train.rundir import RunDir

    cfg = TrainConfig.from_dict({"model": {"model": "mingru", "dim": 32}})
    for on in (False, True):
        saved = cfg.to_dict()
        saved["model"]["fused_add_norm"] = on
        (tmp_path / "config.json").write_text(json.dumps(saved))
        assert RunDir(tmp_path).config() == cfg
        assert resume_mismatch(RunDir(tmp_path).saved_config(), cfg) is None
    saved["model"]["no_such_field"] = 1
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="no_such_field"):
        RunDir(tmp_path).config()


def test_resume_compares_the_model_section_field_by_field():
    """A model field the saved config lacks (one added to rnnlab since) counts as its default; the
    model's shape may not change."""
    saved = TrainConfig.from_dict({"model": {"model": "mingru", "dim": 32}}).to_dict()
    same = TrainConfig.from_dict({"model": {"model": "mingru", "dim": 32}})
    wider = TrainConfig.from_dict({"model": {"model": "mingru", "dim": 48}})
    assert resume_mismatch(saved, same) is None
    assert resume_mismatch(saved, wider) == ("model.dim", 32, 48)
    saved["model"].pop("tie_embeddings")  # absent: its default (True), as the new config's
    assert resume_mismatch(saved, same) is None
    untied = TrainConfig.from_dict({"model": {"model": "mingru", "dim": 32, "tie_embeddings": False}})
    assert resume_mismatch(saved, untied) == ("model.tie_embeddings", True, False)


def test_a_resume_may_change_the_lr_schedule_schedule_free_ignores_not_adamws():
    """Schedule-Free ignores ``lr_schedule``, so a resume that changes it is not refused; AdamW's is."""
    for optimizer, differs in (("schedulefree-adamw", None), ("adamw", ("lr_schedule", "cosine", "constant"))):
        saved = TrainConfig.from_dict({"optimizer": optimizer, "lr_schedule": "cosine", "steps": 10}).to_dict()
        new = TrainConfig.from_dict({"optimizer": optimizer, "lr_schedule": "constant", "steps": 10})
        assert resume_mismatch(saved, new) == differs


def test_a_resume_with_a_config_file_keeps_what_the_file_leaves_out(tmp_path, capsys):
    """``--resume --config F`` started from F alone: a run made with ``--config F --steps 4`` and
    resumed with ``--config F`` took the default budget (1,000 steps) and went on to it without a
    word. The run's config.json is now the base, F over it, flags over both."""
    from rnnlab.cli import build_parser, main
    from rnnlab.train.cli import config_from_args

    toml, run = tmp_path / "run.toml", tmp_path / "r"
    toml.write_text('model = "e1"\ndim = 32\ndepth = 2\nseq_len = 32\nbatch_size = 4\nprecision = "fp32"\n'
                    'eval_bytes = 4096\n')
    assert main(["train", "--config", str(toml), "--steps", "4", "--out", str(run), "--no-progress"]) == 0
    capsys.readouterr()

    def resumed(*flags):
        return config_from_args(build_parser().parse_args(["train", "--resume", "--config", str(toml),
                                                           "--out", str(run), *flags])).to_dict()

    assert resumed()["steps"] == 4  # the run's budget, not the default's
    assert resumed("--steps", "6")["steps"] == 6
    toml.write_text(toml.read_text() + "eval_every = 3\n")  # the file over the run's config.json
    assert resumed()["eval_every"] == 3 and resumed("--eval-every", "2")["eval_every"] == 2


def test_a_resume_may_change_the_layers_backend_and_nothing_else_of_the_layer():
    """A run trained with a CUDA-only backend (``--layer backend=triton``) could not resume on a CPU
    or another machine: its backend refused the device, and ``--layer backend=auto`` was refused as a
    new model. A backend computes the same layer, so it may change; any other layer option may not."""
    def cfg(**layer):
        return TrainConfig.from_dict({"model": {"model": "e1", "dim": 32, "depth": 2, "layer": layer}})

    saved = cfg(backend="triton", heads=2).to_dict()
    assert resume_mismatch(saved, cfg(backend="auto", heads=2)) is None
    assert resume_mismatch(saved, cfg(heads=2)) is None
    assert resume_mismatch(saved, cfg(backend="auto", heads=4)) == ("model.layer.heads", 2, 4)  # named by itself
    # an option not set is its default: e1's conv 0, heads 1
    assert resume_mismatch(saved, cfg(backend="auto", heads=2, conv=4)) == ("model.layer.conv", 0, 4)
    assert resume_mismatch(cfg(heads=2, conv=4).to_dict(), cfg(heads=2)) == ("model.layer.conv", 4, 0)
    assert resume_mismatch(cfg().to_dict(), cfg(heads=1, conv=0)) is None


def test_a_refused_resume_writes_what_a_settings_none_means():
    """``shown_setting``: JSON, but a None that means something is written as what it means; a
    layer option whose default is None (e88's heads, chosen from the width) as that default."""
    e88 = TrainConfig.from_dict({"model": {"model": "e88", "dim": 64, "depth": 1, "layer": {}}})
    key, old, new = resume_mismatch(e88.to_dict(), TrainConfig.from_dict(
        {"model": {"model": "e88", "dim": 64, "depth": 1, "layer": {"heads": 2}}}))
    assert (key, shown_setting(key, old), shown_setting(key, new)) == (
        "model.layer.heads", "the layer's default (unset)", "2")
    assert [shown_setting(k, None) for k in ("data", "val_data", "grad_clip", "seed")] == [
        "the bundled sample", "the held-out tail of data", "no clipping", "null"]
    assert shown_setting("data", "/x") == '"/x"'


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
    ({"compile": 1}, "compile must be true or false, got 1"),  # an int is no bool, though a bool is an int
    ({"tie_embeddings": "no"}, "tie_embeddings must be true or false, got 'no'"),
    ({"batch_size": "256"}, "batch_size must be a positive integer (at most 65,536), got '256'"),
    ({"steps": 2.5}, "steps must be a positive integer (at most 1,000,000,000,000), got 2.5"),
    ({"lr": float("inf")}, "lr must be a positive finite number, got inf"),
    ({"val_fraction": 1.0}, "val_fraction must be a number in (0, 1), got 1"),
    ({"betas": 5}, "betas must be two numbers in [0, 1), got 5"),
    ({"mlp_ratio": "two"}, "mlp_ratio must be a finite number >= 0 (at most 64), got 'two'"),
    ({"mlp_ratio": 0.001}, "mlp_ratio must give an MLP of at least one unit at dim 256, got 0.001 (0 means no MLP)"),
    ({"layer": 5}, "layer must be a table of options, got 5"),
    ({"layer": {"heads": "two"}}, "e1 layer option heads must be a positive integer (at most 65,536), got 'two'"),
    ({"vocab_size": 300}, "vocab_size must be one of 256, got 300"),
    ({"distributed": "zero3"}, "distributed must be one of ddp, fsdp2, got 'zero3'"),
    # each bound at its edge: a zero epsilon or log cadence, one byte over the held-out caps' limit
    ({"eps": 0.0}, "eps must be a positive finite number, got 0"),
    ({"log_every": 0}, "log_every must be a positive integer (at most 1,000,000,000,000), got 0"),
    ({"eval_bytes": 2**50 + 1},
     "eval_bytes must be an integer >= 0 (at most 1,125,899,906,842,624), got 1125899906842625"),
    ({"curve_eval_bytes": 2**50 + 1},
     "curve_eval_bytes must be an integer >= 0 (at most 1,125,899,906,842,624), got 1125899906842625"),
])
def test_type_and_range_messages(values, message):
    with pytest.raises(ValueError) as e:
        apply_overrides(TrainConfig(), values).validate()
    assert str(e.value) == message


def test_a_whole_float_for_a_count_is_that_count():
    """A config file writes 1e9 as a float (TOML has no other way): a whole one is the count, as
    the flag's "1e9" is; a fraction is refused (above)."""
    cfg = apply_overrides(TrainConfig(), {"tokens": 1e9, "eval_bytes": 1e6, "batch_size": 8.0})
    cfg.validate()
    assert (cfg.budget.tokens, cfg.run.eval_bytes, cfg.data.batch_size) == (10**9, 10**6, 8)
    assert all(type(v) is int for v in (cfg.budget.tokens, cfg.run.eval_bytes, cfg.data.batch_size))


@pytest.mark.parametrize("values, message", [
    ({"cuda_graph": True, "device": "cpu"}, "cuda_graph needs a CUDA device, got device 'cpu' (use --no-cuda-graph)"),
    ({"cuda_graph": True, "device": "mps"}, "cuda_graph needs a CUDA device, got device 'mps' (use --no-cuda-graph)"),
    ({"cuda_graph": True, "device": "cuda", "batch_size": 8, "grad_accum": 2},
     "cuda_graph captures one forward and backward per step: it needs grad_accum 1, got 2"),
])
def test_cuda_graph_rules(values, message):
    """--cuda-graph captures one forward and backward on CUDA: a CPU device or gradient
    accumulation is refused in one line (the CUDA case runs in tests/gpu)."""
    with pytest.raises(ValueError) as e:
        TrainConfig.from_dict(values).validate()
    assert str(e.value) == message
    TrainConfig.from_dict({**values, "cuda_graph": False}).validate()  # only the combination is wrong


def test_budget_one_of_and_default():
    assert TrainConfig().budget.chosen() == ("steps", 1000)  # the default budget, declared once
    cfg = apply_overrides(TrainConfig.from_dict({"steps": 7}), {"minutes": 2})
    assert cfg.budget.chosen() == ("minutes", 2.0)  # a budget given replaces the others
    assert apply_overrides(TrainConfig(), {"tokens": "50M"}).budget.chosen() == ("tokens", 50_000_000)


def test_no_budget_or_two_budgets_is_one_clear_error():
    with pytest.raises(ValueError, match=r"^give one budget \(steps, minutes or tokens\), got none$"):
        BudgetConfig(steps=None).chosen()
    with pytest.raises(ValueError, match=r"^give one budget \(steps, minutes or tokens\), got steps=5, minutes=2$"):
        BudgetConfig(steps=5, minutes=2).chosen()


def test_tokens_per_step_limit_is_inclusive():
    """batch_size * seq_len may be exactly MAX_TOKENS_PER_STEP (2**31), not one row more."""
    seq_len = 1 << 22
    ok = TrainConfig.from_dict({"batch_size": MAX_TOKENS_PER_STEP // seq_len, "seq_len": seq_len})
    assert ok.validate().tokens_per_step() == MAX_TOKENS_PER_STEP
    with pytest.raises(ValueError, match=r"^batch_size \* seq_len must be at most 2,147,483,648 tokens per step, "
                                         r"got 513 \* 4194304 = 2,151,677,952$"):
        apply_overrides(ok, {"batch_size": MAX_TOKENS_PER_STEP // seq_len + 1}).validate()


@pytest.mark.parametrize("device, ok", [("cuda:0", True), ("cuda:12", True), ("cuda:", False), ("cuda:x", False),
                                        ("cuda:1x", False), ("cuda0", False), ("cuda01", False),
                                        ("cuda:\u0663", False), ("cuda:\u00b2", False)])
def test_device_names(device, ok):
    cfg = TrainConfig.from_dict({"device": device})
    if ok:
        assert cfg.validate().run.device == device
    else:
        with pytest.raises(ValueError) as e:
            cfg.validate()
        assert str(e.value) == f"device must be auto, cpu, cuda, cuda:N or mps, got {device!r}"


def test_a_top_level_model_field_beats_the_model_table():
    """``dim`` given both in the model table and at top level (one config file): the top-level
    one counts."""
    cfg = apply_overrides(TrainConfig(), {"model": {"model": "e1", "dim": 64, "depth": 3}, "dim": 128})
    assert (cfg.model.model, cfg.model.dim, cfg.model.depth) == ("e1", 128, 3)


def test_default_run_folder_names_width_and_depth():
    cfg = TrainConfig.from_dict({"model": {"model": "mingru", "dim": 64, "depth": 3}})
    assert cfg.out_dir() == Path("runs") / "mingru-64x3"
    assert apply_overrides(cfg, {"out": "elsewhere"}).out_dir() == Path("elsewhere")


def test_eval_bytes_default_is_the_whole_split():
    assert TrainConfig().run.eval_bytes == 0  # 0 = all
    assert apply_overrides(TrainConfig(), {"eval_bytes": "1M"}).run.eval_bytes == 1_000_000
    assert apply_overrides(TrainConfig.from_dict({"eval_bytes": 5}), {"eval_bytes": "all"}).run.eval_bytes == 0


def test_a_grad_clip_of_0_is_no_clipping(tmp_path):
    """A suite's or config file's ``grad_clip = 0`` (TOML has no null) and ``--grad-clip 0`` switch
    off clipping that defaults set: stored as None, as if never given; a negative clip is refused."""
    from rnnlab.train.config import load_config

    toml = tmp_path / "c.toml"
    toml.write_text("grad_clip = 0\n")
    assert load_config(toml).validate().optim.grad_clip is None
    clipped = TrainConfig.from_dict({"grad_clip": 1.0})
    assert apply_overrides(clipped, {"grad_clip": "0"}).validate().optim.grad_clip is None
    assert apply_overrides(clipped, {"grad_clip": 0}).validate().optim.grad_clip is None
    assert apply_overrides(TrainConfig(), {"grad_clip": "0.5"}).validate().optim.grad_clip == 0.5
    with pytest.raises(ValueError, match="grad_clip must be a positive number, or 0 for no clipping, got -1"):
        apply_overrides(TrainConfig(), {"grad_clip": -1}).validate()
    # the flag over a config file that clips: the flag's 0 is given, not "not given"
    from rnnlab.cli import build_parser
    from rnnlab.train.cli import config_from_args

    toml.write_text("grad_clip = 1.0\n")
    args = build_parser().parse_args(["train", "--config", str(toml), "--grad-clip", "0"])
    assert config_from_args(args).optim.grad_clip is None
    args = build_parser().parse_args(["train", "--config", str(toml)])
    assert config_from_args(args).optim.grad_clip == 1.0


def test_derived_key_lists():
    assert RESUMABLE == {"steps", "minutes", "tokens", "extra_val_data", "grad_accum", "eval_every", "eval_bytes",
                         "curve_eval_bytes", "eval_batch_size", "log_every", "wandb", "checkpoint_every",
                         "keep_checkpoints", "keep_checkpoint_every", "out", "resume", "overwrite", "compile", "cuda_graph",
                         "device", "distributed"}
    assert MODEL_KEYS == ("model", "dim", "depth", "vocab_size", "mlp_ratio", "tie_embeddings",
                          "rescale_prenorm_residual", "norm", "residual_in_fp32", "layer")
    assert set(TrainConfig().to_dict()) == set(FIELDS) - set(MODEL_KEYS) | {"model"}


def test_bounds_describe_and_contain():
    assert positive(10).describe("integer") == "a positive integer (at most 10)"
    assert Bounds(0, 1, hi_open=True).describe("number") == "a number in [0, 1)"
    assert not Bounds(0, 1, hi_open=True).contains(1.0) and Bounds(0, 1, hi_open=True).contains(0.0)


def test_tokens_budget_rounds_up_to_whole_steps():
    """A --tokens budget trains at least that many tokens: steps = ceil(tokens / (batch_size x
    seq_len)) (not floor or round, which would stop short), whatever --grad-accum (it splits a
    step's batch, it does not add to it)."""
    def steps(tokens, grad_accum=1):
        return TrainConfig.from_dict({"batch_size": 4, "seq_len": 32, "tokens": tokens,
                                      "grad_accum": grad_accum}).validate().max_steps()

    # 128 tokens per step
    assert [steps(t) for t in (1, 127, 128, 129, 191, 192, 256, 257)] == [1, 1, 1, 2, 2, 2, 2, 3]
    assert steps(257, grad_accum=2) == steps(257, grad_accum=4) == 3


def test_defaults_are_table_a_but_for_the_budget_and_the_marked_decay_rates():
    """``rnnlab train``'s defaults are the reference's Table A protocol (README; suite
    seed-400m-sf): Schedule-Free AdamW lr 3e-4, weight decay 0.1, Adam's betas and eps, no warmup
    or clipping, pure bf16, seed 42, batches of 16 x 512; they differ from the suite only where the
    README says: 1000 steps instead of 1500, and the marked decay rates spared."""
    from rnnlab.bench.suite import load_suite

    cfg = TrainConfig()
    o, d, r = cfg.optim, cfg.data, cfg.run
    assert (o.optimizer, o.lr, o.weight_decay, o.betas, o.eps, o.warmup_steps, o.grad_clip) == \
        ("schedulefree-adamw", 3e-4, 0.1, (0.9, 0.999), 1e-8, 0, None)
    assert (r.precision, r.seed, d.batch_size, d.seq_len, d.grad_accum) == ("bf16", 42, 16, 512, 1)
    assert (cfg.budget.chosen(), o.decay_marked) == (("steps", 1000), False)
    suite = load_suite("seed-400m-sf").defaults
    defaults = cfg.to_dict()
    differ = {k: (defaults[k], v) for k, v in suite.items() if defaults[k] != v}
    # the budget and decay_marked (README), and how the suite runs its rows (not the protocol)
    assert differ == {"steps": (1000, 1500), "decay_marked": (False, True), "checkpoint_every": (1000, 500),
                      "compile": (False, True)}


def test_whole_numbers_for_float_fields_become_floats(tmp_path):
    """``lr = 1`` in a config file (TOML has no 1.0 unless written so) or a sweep's ``--set lr=1``
    gives a float field a float: config.json records 1.0 and the field's type holds; int fields
    stay ints and bools are not numbers."""
    toml = tmp_path / "c.toml"
    toml.write_text("minutes = 2\nlr = 1\nweight_decay = 0\neps = 1\ngrad_clip = 1\nbatch_size = 8\n")
    from rnnlab.train.config import load_config

    cfg = load_config(toml).validate()
    values = (cfg.budget.minutes, cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.eps, cfg.optim.grad_clip)
    assert values == (2.0, 1.0, 0.0, 1.0, 1.0) and all(type(v) is float for v in values)
    assert type(cfg.data.batch_size) is int
    saved = json.dumps(cfg.to_dict())
    assert '"lr": 1.0' in saved and '"minutes": 2.0' in saved and '"batch_size": 8' in saved
    swept = apply_overrides(TrainConfig(), {"lr": 2, "steps": 3})  # rnnlab sweep --set lr=2 (JSON: an int)
    assert type(swept.optim.lr) is float and type(swept.budget.steps) is int
    assert apply_overrides(TrainConfig(), {"lr": True}).optim.lr is True  # left for validate() to refuse


@pytest.mark.parametrize("values, message", [
    ({"betas": [0.9]}, "betas must be two numbers in [0, 1), got [0.9]"),
    ({"betas": [0.9, 0.999, 0.5]}, "betas must be two numbers in [0, 1), got [0.9, 0.999, 0.5]"),
    ({"grad_clip": False}, "grad_clip must be a positive finite number, got False"),
])
def test_a_tuple_field_checks_its_length_and_a_bool_is_no_clip(values, message):
    """``betas`` holds exactly two numbers (a wrong count is not cut to fit); a bool for
    ``grad_clip`` is refused, not read as 0 (no clipping)."""
    with pytest.raises(ValueError) as e:
        apply_overrides(TrainConfig(), values).validate()
    assert str(e.value) == message


def test_none_is_refused_where_a_field_is_not_optional():
    """``None`` passes only for ``X | None`` fields: a section built with ``lr=None`` is refused."""
    from rnnlab.options import check, check_value
    from rnnlab.train.config import OptimConfig

    check_value("grad_clip", float | None, None)
    with pytest.raises(ValueError, match=r"^lr must be a positive finite number, got None$"):
        check(OptimConfig(lr=None))


def test_command_line_values_are_json_then_text():
    """``--layer`` / ``--set`` values: true/false in any case are bools, JSON where it parses, else
    the text; an item is split at its first ``=``, and needs a key."""
    from rnnlab.options import parse_key_values, parse_value

    assert [parse_value(t) for t in ("True", " FALSE ", "null", "2.5", "[1, 2]", "none")] == \
        [True, False, None, 2.5, [1, 2], "none"]
    assert parse_key_values(["name=a=b", "heads=4"]) == {"name": "a=b", "heads": 4}
    for bad in ("=5", "heads"):
        with pytest.raises(ValueError, match=rf"^option '{bad}' must look like KEY=VALUE$"):
            parse_key_values([bad])


@pytest.mark.parametrize("text", ["all", " All ", "0", "ALL"])
def test_eval_bytes_all_or_0_is_the_whole_split(text):
    """``--eval-bytes all`` or ``0`` (any case, surrounding blanks) is stored as 0: the whole split."""
    from rnnlab.train.config import parse_eval_bytes

    assert parse_eval_bytes(text) == 0 and parse_eval_bytes("1M") == 1_000_000


def test_help_names_a_plain_default_unless_the_help_does():
    """A flag's help ends with its default when that is a plain number or word (not a bool), unless
    the help already speaks of the default (``eval_bytes``: "default: all = 0")."""
    from rnnlab.options import _help

    assert _help(FIELDS["lr"][1]) == "peak learning rate (default: 0.0003)"
    assert _help(FIELDS["eval_bytes"][1]).endswith("the whole held-out split)")
    resume = FIELDS["resume"][1]
    assert _help(resume) == resume.meta.help  # a bool's default is no word to show (--resume / --no-resume)


def test_resolve_makes_every_data_path_absolute(tmp_path, monkeypatch):
    """``resolve`` records each corpus path absolute, the extra held-out file too, so the run folder
    can be evaluated from another working directory."""
    monkeypatch.chdir(tmp_path)
    for name in ("train.txt", "val.txt", "wiki.txt"):
        (tmp_path / name).write_bytes(b"x" * 100)
    cfg = TrainConfig.from_dict({"data": "train.txt", "val_data": "val.txt", "extra_val_data": "wiki.txt",
                                 "out": "run"}).resolve()
    d = cfg.data
    assert (d.path, d.val_path, d.extra_val_path) == tuple(str(tmp_path / n) for n in ("train.txt", "val.txt",
                                                                                       "wiki.txt"))


@pytest.mark.parametrize("values, message", [
    ({"batch_size": 6, "grad_accum": 4},
     "grad_accum (4) must divide batch_size (6): every micro-batch has batch_size / grad_accum rows"),
    ({"steps": 10, "warmup_steps": 11}, "warmup_steps (11) must not exceed the step budget (10)"),
    ({"optimizer": "adamw", "minutes": 1.0}, "optimizer adamw decays its LR on a cosine over the step budget: give "
                                             "--steps or --tokens (or --lr-schedule constant, or schedulefree-adamw)"),
    ({"betas": [0.0, 0.999]}, "schedulefree-adamw needs betas[0] above 0: its averaged weights x, which "
                              "evaluations and checkpoints use, are recovered from y and z by dividing by betas[0]"),
])
def test_rules_between_fields(values, message):
    """The checks across fields, each at its edge: a grad_accum that does not divide the batch (though
    smaller than it), a warmup one step longer than the budget, a cosine AdamW without a step count, a
    Schedule-Free beta1 of 0 (its ``eval()`` divides by it: the run would train, then fail at its first
    evaluation or checkpoint)."""
    with pytest.raises(ValueError) as e:
        TrainConfig.from_dict(values).validate()
    assert str(e.value) == message


@pytest.mark.parametrize("values", [
    {"batch_size": 6, "grad_accum": 3}, {"steps": 10, "warmup_steps": 10},
    {"optimizer": "adamw", "lr_schedule": "constant", "minutes": 1.0},
    {"seq_len": 16, "eval_bytes": 17}, {"seq_len": 16, "eval_every": 1, "curve_eval_bytes": 17},
    {"seq_len": 16, "curve_eval_bytes": 16}, {"optimizer": "adamw", "betas": [0.0, 0.999]},
])
def test_rules_between_fields_allow_their_edges(values):
    """What those checks allow: a grad_accum that divides the batch, a warmup as long as the budget,
    a constant-LR AdamW under a minutes budget, held-out caps of exactly one window (seq_len+1
    bytes), a curve cap below a window where no evaluation during training reads it, and AdamW with a
    beta1 of 0 (it keeps one point)."""
    TrainConfig.from_dict(values).validate()


def test_config_file_forms(tmp_path):
    """What a config file may say: a suffix in any case, ``.yml`` as ``.yaml``, an empty YAML file (no
    fields), a top-level ``[layer]`` table, ``[model] name = ...`` for the model kind, model fields
    with dashes."""
    from rnnlab.train.config import load_config, read_config_file

    upper = tmp_path / "C.TOML"
    upper.write_text('lr = 0.01\n[model]\nname = "e1"\nmlp-ratio = 2.0\n[layer]\nheads = 2\n')
    cfg = load_config(upper)
    assert (cfg.optim.lr, cfg.model.model, cfg.model.mlp_ratio, cfg.model.layer) == (0.01, "e1", 2.0, {"heads": 2})
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing set\n")
    assert read_config_file(empty) == {}
    short = tmp_path / "c.yml"  # YAML's other suffix
    short.write_text("lr: 0.02\n")
    assert load_config(short).optim.lr == 0.02


def test_legacy_hint_names_the_value_as_json():
    """The hint for a resume refused on ``decay_marked`` gives the value as a config file writes it."""
    from rnnlab.train.config import legacy_hint

    assert legacy_hint("decay_marked") == (" (runs saved before rnnlab had decay_marked count as decay_marked = "
                                           "true: set it to continue them)")
    assert legacy_hint("lr") == ""


def test_budget_clock_leaves_out_the_warmup():
    """A --minutes budget counts training time without each process's warmup steps."""
    from rnnlab.train.config import budget_clock

    assert (budget_clock(10.0, 2.5), budget_clock(10.0, None), budget_clock(None, 1.0)) == (7.5, 10.0, None)


def test_seed_is_at_most_int64():
    """The seed must fit a signed 64-bit integer (torch's generators take no more)."""
    TrainConfig.from_dict({"seed": 2**63 - 1}).validate()
    with pytest.raises(ValueError) as e:
        TrainConfig.from_dict({"seed": 2**63}).validate()
    assert str(e.value) == "seed must be an integer >= 0 (at most 9,223,372,036,854,775,807), got 9223372036854775808"


def test_flags_override_the_config_file(tmp_path):
    """``load_config``: defaults, then the file, then the flags (which win where both set a field)."""
    from rnnlab.train.config import load_config

    toml = tmp_path / "c.toml"
    toml.write_text("lr = 0.01\nweight_decay = 0.2\n")
    cfg = load_config(toml, {"lr": 0.02, "eps": None})
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.eps) == (0.02, 0.2, 1e-8)


def test_a_model_table_naming_its_kind_twice_is_refused(tmp_path):
    """``[model] name = ...`` stands for ``model = ...``; a table with both keeps ``name`` as the
    unknown field it then is, rather than letting one silently replace the other."""
    from rnnlab.train.config import load_config

    toml = tmp_path / "c.toml"
    toml.write_text('[model]\nmodel = "e1"\nname = "mingru"\n')
    with pytest.raises(ValueError, match=r"^unknown config file .* model field\(s\) \['name'\]"):
        load_config(toml)


def test_an_unknown_field_names_the_one_meant_or_else_every_field():
    """An unknown key's error names the field meant where there is one for each unknown key (the
    list of every field after it would bury it), and lists every field where there is not."""
    with pytest.raises(ValueError, match=r"^unknown flag field\(s\) \['stepz'\]: did you mean steps\?$"):
        apply_overrides(TrainConfig(), {"stepz": 3}, source="flag")
    with pytest.raises(ValueError, match=r"^unknown flag field\(s\) \['stepz', 'zzz'\]: did you mean stepz -> steps\?; "
                                         r"known: \['batch_size', .*'steps'"):
        apply_overrides(TrainConfig(), {"stepz": 3, "zzz": 1}, source="flag")


def test_the_held_out_share_defaults_to_1_percent():
    """Without --val-data the last 1% of --data is held out (README); a rerun with another share
    would score other bytes."""
    assert TrainConfig().data.val_fraction == 0.01


def test_the_betas_flag_takes_exactly_two_numbers():
    """``--betas`` takes two values on the command line: one or three are an argparse usage error."""
    from rnnlab.cli import build_parser
    from rnnlab.train.cli import config_from_args

    parser = build_parser()
    assert config_from_args(parser.parse_args(["train", "--betas", "0.8", "0.95"])).optim.betas == (0.8, 0.95)
    for values in (["0.9"], ["0.9", "0.99", "0.5"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["train", "--betas", *values, "--steps", "1"])


def test_a_yaml_file_reads_exponent_numbers_as_numbers(tmp_path):
    """``lr: 3e-4`` in YAML is the number TOML's ``lr = 3e-4`` is (PyYAML alone reads it as a string,
    which the check of ``lr`` then refused); a quoted one stays a string."""
    from rnnlab.train.config import load_config, read_config_file

    path = tmp_path / "run.yaml"
    path.write_text('lr: 3e-4\neps: 1E-8\nweight_decay: 1.5e-2\nwandb: "1e3"\n')
    assert read_config_file(path) == {"lr": 3e-4, "eps": 1e-8, "weight_decay": 0.015, "wandb": "1e3"}
    cfg = load_config(path).validate()
    assert (cfg.optim.lr, cfg.optim.eps) == (3e-4, 1e-8)


def test_a_yaml_merge_key_may_be_overridden(tmp_path):
    """A key given twice is refused (``config_*_key_twice`` in test_bad_inputs), but a key a YAML
    merge (``<<: *base``) brings in may be set again beside it: that is what a merge is for."""
    from rnnlab.train.config import read_config_file

    path = tmp_path / "c.yaml"
    path.write_text("base: &base {dim: 32, depth: 2}\nmodel:\n  <<: *base\n  dim: 48\n")
    assert read_config_file(path)["model"] == {"dim": 48, "depth": 2}


def test_a_token_budget_reads_counts_and_leaves_numbers_to_the_check():
    """``--tokens 50M`` and ``--tokens 1e9`` are counts; a file's number goes to the field's check
    (``tokens = true`` is refused as not an integer, not by the text parser's words)."""
    assert [apply_overrides(TrainConfig(), {"tokens": t}).budget.tokens for t in ("50M", "1e9", 123)] == \
        [50_000_000, 1_000_000_000, 123]
    with pytest.raises(ValueError, match=r"^tokens must be a positive integer .*, got True$"):
        apply_overrides(TrainConfig(), {"tokens": True}).validate()


@pytest.mark.parametrize("text, key", [("1: 2\n", "1"), ("true: 2\n", "True"), ("model:\n  null: e1\n", "None")])
def test_a_yaml_key_that_is_not_text_is_one_clear_error(tmp_path, text, key):
    """YAML reads an unquoted key ``1``, ``true`` or ``null`` as a number, bool or None: the file is
    refused in one line naming the key (it was an AttributeError traceback, exit status 1)."""
    from rnnlab.train.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=rf"^config file .*c\.yaml: key {key} is not a field name"):
        load_config(path)


def test_a_token_budget_takes_at_most_the_largest_step_budget():
    """A token budget over small steps may not ask for more steps than ``--steps`` may (10^12): such a
    config is refused, where 2e21 tokens at 32 tokens a step started training and then failed in a
    traceback (its log line's ETA overflowed). Exactly 10^12 steps' worth is allowed."""
    shape = {"batch_size": 2, "seq_len": 16}
    TrainConfig.from_dict({**shape, "tokens": 32 * 10**12}).validate()
    with pytest.raises(ValueError) as e:
        TrainConfig.from_dict({**shape, "tokens": 32 * 10**12 + 1}).validate()
    assert str(e.value) == ("tokens (32,000,000,000,001) at batch_size * seq_len = 32 tokens per step take "
                            "1,000,000,000,001 steps, more than the 1,000,000,000,000 a step budget may be")


def test_a_backend_chosen_is_built_as_chosen_off_cuda():
    """``ModelConfig.on_device``: off CUDA, only a layer on backend auto takes its PyTorch reference;
    one that names its backend (``backend=official``) is built as named, never swapped for another
    without a word (the official layer then refuses CPU tensors itself)."""
    import torch

    from rnnlab.models.config import ModelConfig

    for model in ("mamba2", "gdn"):
        auto = ModelConfig(model=model, dim=64, depth=1)
        assert auto.on_device(None).layer == {"backend": "reference"}
        assert auto.on_device(torch.device("cuda")) is auto
        official = ModelConfig(model=model, dim=64, depth=1, layer={"backend": "official"})
        assert official.on_device(None) is official
        assert official.on_device(torch.device("cpu")).layer == {"backend": "official"}
