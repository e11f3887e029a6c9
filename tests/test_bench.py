"""Benchmark suites, sweeps and reports (CPU, fast)."""

from __future__ import annotations

import dataclasses
import csv
import json
import math
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from rnnlab.bench.collect import aggregate, collect
from rnnlab.bench.report import describe_git, write_report
from rnnlab.bench.runner import run_plan
from rnnlab.bench.suite import (list_suites, load_suite, parse_suite, plan_suite, run_conflict, run_status,
                                scores_lacking, suites_dir)
from rnnlab.bench.sweep import build_sweep
from rnnlab.cli import main
from rnnlab.models.params import count_params

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only add contention

SHIPPED = {"tiny", "seed-400m-sf", "seed-400m-step-matched", "depth-sweep", "e1-ablations", "race-400m",
           "e88-recipe-400m", "scale-1b"}


def _table_rows(md: str, header_start: str = "| Model | Params | Loss") -> list[list[str]]:
    lines = md.splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[i + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


# ------------------------------------------------------------------------------------ suite files
def test_shipped_suites_load():
    suites = {s.name: s for s in list_suites()}
    assert SHIPPED <= set(suites)
    for s in suites.values():
        assert s.runs and s.description
    assert load_suite("tiny").name == "tiny"
    with pytest.raises(ValueError, match="unknown suite"):
        load_suite("no-such-suite")


def test_tiny_suite_trains_every_model_kind():
    """Suite ``tiny`` (the README's demo, the CPU smoke test) has a run of every registered model kind."""
    from rnnlab.models.registry import MODELS

    missing = sorted(set(MODELS) - {r.model["model"] for r in load_suite("tiny").runs})
    assert not missing, f"add a [[runs]] entry for {missing} to src/rnnlab/bench/suites/tiny.toml"


def test_a_folder_named_like_a_suite_is_not_a_suite_file(tmp_path, monkeypatch):
    """``rnnlab bench tiny --out tiny`` run twice: the second time a folder ``tiny`` is in the
    working directory, and ``tiny`` still names the shipped suite."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").mkdir()
    assert load_suite("tiny").path == str(suites_dir() / "tiny.toml")


def test_a_suite_file_is_a_toml_name_or_an_existing_file(tmp_path):
    """``load_suite``: a path ending in .toml is a suite file (a missing one is said so, not looked
    up among the shipped suites); an existing file of any name is one too."""
    with pytest.raises(FileNotFoundError, match="suite file not found"):
        load_suite(tmp_path / "missing.toml")
    f = tmp_path / "mine.txt"
    f.write_text('name = "mine"\n[[runs]]\nmodel = "e1"\ndim = 16\ndepth = 1\n')
    assert (load_suite(f).name, load_suite(str(f)).path) == ("mine", str(f))


def test_e88_recipe_suite_is_the_reference_train_py_recipe_on_the_race_models(tmp_path):
    """e88-recipe-400m: the race's E88, Mamba2, E1 heads and E16 (same widths and minutes) under
    the reference's train.py recipe, each at the reference's E88 run's batch and lr and at its
    Mamba2 run's; every model in its fastest mode (compiled + CUDA graph), E1 heads also in the
    race's mode (compiled); E1 heads' learning rate searched in its fastest mode; a second and a
    third seed of its best row, of Mamba2's own and of E88's own (the third at the mean of the first
    two's steps, so that any card trains the same tokens); that row again with Mamba2-style init;
    E88's and E1 heads' best rows under the race's optimizer settings (-raceopt, at those rows' steps);
    E1 heads' and Mamba2's best rows at three times the steps (-3x), at seeds 42, 43 and 44, saving a
    checkpoint every 2,000 steps (their calls are chained on one machine)."""
    race = {p.name: p.cfg for p in plan_suite(load_suite("race-400m"), tmp_path / "race")}
    runs = {p.name: p.cfg for p in plan_suite(load_suite("e88-recipe-400m"), tmp_path / "recipe")}
    settings = {name: (c.data.batch_size, c.optim.lr) for name, c in runs.items()}
    search = {"e1-heads-graph-b16-lr1.5e-3": (16, 1.5e-3), "e1-heads-graph-b16-lr9.2e-4-rerun": (16, 9.2e-4),
              "e1-heads-graph-b16-lr6e-4": (16, 6e-4),
              "e1-heads-graph-b8-lr9.2e-4": (8, 9.2e-4), "e1-heads-graph-b16-lr9.2e-4-seed43": (16, 9.2e-4),
              "mamba2-b8-lr3e-4-seed43": (8, 3e-4), "e88-b16-lr9.2e-4-seed43": (16, 9.2e-4),
              "e1-heads-graph-b16-lr9.2e-4-mamba2init": (16, 9.2e-4), "e1-heads-graph-b16-lr9.2e-4-seed44": (16, 9.2e-4),
              "mamba2-b8-lr3e-4-seed44": (8, 3e-4), "e88-b16-lr9.2e-4-seed44": (16, 9.2e-4),
              "e88-b16-lr9.2e-4-raceopt": (16, 9.2e-4), "e1-heads-graph-b16-lr9.2e-4-raceopt": (16, 9.2e-4),
              "e1-heads-graph-b16-lr9.2e-4-3x": (16, 9.2e-4), "mamba2-b8-lr3e-4-3x": (8, 3e-4),
              "e1-heads-graph-b16-lr9.2e-4-3x-seed43": (16, 9.2e-4), "mamba2-b8-lr3e-4-3x-seed43": (8, 3e-4),
              "e1-heads-graph-b16-lr9.2e-4-3x-seed44": (16, 9.2e-4), "mamba2-b8-lr3e-4-3x-seed44": (8, 3e-4)}
    assert settings == {f"{m}-{s}": v for m in ("e88", "mamba2", "e1-heads", "e1-heads-graph", "e16-s4")
                        for s, v in (("b16-lr9.2e-4", (16, 9.2e-4)), ("b8-lr3e-4", (8, 3e-4)))} | search
    for name, c in runs.items():
        o = c.optim
        model = race[name.rsplit("-b", 1)[0].replace("-graph", "")]
        recipe = model.optim if name.endswith("-raceopt") else \
            dataclasses.replace(model.optim, betas=(0.9, 0.95), grad_clip=1.0, weight_decay=0.01, decay_marked=True)
        assert (o.optimizer, tuple(o.betas), o.grad_clip, o.weight_decay, o.decay_marked, o.warmup_steps) == \
            (recipe.optimizer, tuple(recipe.betas), recipe.grad_clip, recipe.weight_decay, recipe.decay_marked,
             recipe.warmup_steps), name
        steps = {"e1-heads-graph-b16-lr9.2e-4-seed44": (5701 + 5889) // 2, "mamba2-b8-lr3e-4-seed44": 6795,
                 "e88-b16-lr9.2e-4-seed44": (2640 + 2576) // 2,  # seeds 42 and 43's mean
                 "e88-b16-lr9.2e-4-raceopt": 2640, "e1-heads-graph-b16-lr9.2e-4-raceopt": 5701,  # their recipe rows'
                 "e1-heads-graph-b16-lr9.2e-4-3x": 3 * 5795, "mamba2-b8-lr3e-4-3x": 3 * 6795}  # 3x the seed-44 rows'
        base = name.removesuffix("-seed43").removesuffix("-seed44") if "-3x" in name else name.removesuffix("-seed43")
        budget = (None, steps[base]) if base in steps else (5, None)
        assert c.run.checkpoint_every == (2000 if "-3x" in name else 0), name
        assert (c.data.seq_len, (c.budget.minutes, c.budget.steps), c.run.precision) == (512, budget, "bf16"), name
        assert c.run.seed == {"-seed43": 43, "-seed44": 44}.get(name[-7:], 42), name
        init = {"init": "mamba2"} if name.endswith("-mamba2init") else {}  # the race's model, Mamba2's init
        assert c.model == dataclasses.replace(model.model, layer={**model.model.layer, **init}), name
        race_mode = name.startswith("e1-heads-b")
        assert (c.run.compile, c.run.cuda_graph) == ((True, False) if race_mode else (True, True)), name
        if race_mode:
            assert (c.run.compile, c.run.cuda_graph) == (model.run.compile, model.run.cuda_graph), name


def test_seed_suites_reproduce_seed_param_counts(tmp_path):
    for name in ("seed-400m-sf", "seed-400m-step-matched"):
        suite = load_suite(name)
        plan = plan_suite(suite, tmp_path / name)
        refs = suite.reference["runs"]
        assert set(refs) <= {p.name for p in plan}  # every reference row is planned (Table B has more)
        for p in plan:
            if p.name in refs:
                assert p.params == refs[p.name]["params"], p.name
    sf = {p.name: p.cfg for p in plan_suite(load_suite("seed-400m-sf"), tmp_path / "a")}
    c = sf["mamba2-d22"]
    assert (c.optim.optimizer, c.optim.lr, c.optim.weight_decay, c.run.precision, c.optim.grad_clip, c.run.seed) == \
        ("schedulefree-adamw", 3e-4, 0.1, "bf16", None, 42)
    assert (c.data.batch_size, c.data.seq_len, c.budget.steps) == (16, 512, 1500)
    assert c.model.layer == {"d_state": 64}
    # Table B: the reference's AdamW reading on the -adamw rows, Table A's optimizer on the others
    tb = {p.name: p.cfg for p in plan_suite(load_suite("seed-400m-step-matched"), tmp_path / "b")}
    a = tb["e1-exp2.5-adamw"].optim
    assert (a.optimizer, a.lr, a.warmup_steps, a.lr_schedule) == ("adamw", 1e-4, 100, "constant")
    assert tb["e1-exp2.5"].optim.optimizer == "schedulefree-adamw" and tb["e1-exp2.5"].optim.lr == 3e-4


def test_race_suite_is_table_b_plus_the_new_cells_at_equal_time(tmp_path):
    """Every Table B model at its width, plus E1 heads, E88 and GDN, all within 2.5% of 400M
    parameters, 5 minutes each of 32 x 512 with Schedule-Free AdamW 3e-4 in bf16, a learning curve
    on 256K held-out bytes and the whole split at the end."""
    race = {p.name: p for p in plan_suite(load_suite("race-400m"), tmp_path / "race")}
    table_b = {p.name: p for p in plan_suite(load_suite("seed-400m-step-matched"), tmp_path / "b")
               if p.cfg.optim.optimizer == "schedulefree-adamw" and p.cfg.run.seed == 42}  # one row per model
    assert set(race) == set(table_b) | {"e1-heads"}
    for name, p in race.items():
        assert abs(p.params - 4e8) < 0.025 * 4e8, name
        if name in table_b:
            assert p.cfg.model == table_b[name].cfg.model, name
        c = p.cfg
        assert (c.budget.minutes, c.budget.steps, c.data.batch_size, c.data.seq_len) == (5, None, 32, 512)
        assert (c.run.eval_every, c.run.curve_eval_bytes, c.run.eval_bytes) == (250, 256_000, 0)
        assert (c.optim.optimizer, c.optim.lr, c.run.precision) == ("schedulefree-adamw", 3e-4, "bf16")


def test_scale_suite_is_the_race_at_1b_for_1000_steps(tmp_path):
    """scale-1b's rows are the race's Mamba2 and E1 heads at ~1B (within 1%), their layer options
    but the head count as in the race, on the race's data, optimizer and evaluation settings, for
    1,000 steps, captured: the race's runs at their step 1,000 are their 400M twins. Its warm-up arm
    is those four shapes again with a 100-step warm-up, nothing else changed; its precision arm the
    warm-up arm's runs in bf16-mixed, nothing else changed; its init arm the 400M pair of either
    precision with rescale_prenorm_residual, nothing else changed, and the pure-bf16 pair of those in
    mamba_ssm's whole LM (RMSNorm and the residual in fp32 besides)."""
    race = {p.name: p for p in plan_suite(load_suite("race-400m"), tmp_path / "race")}
    plan = {p.name: p for p in plan_suite(load_suite("scale-1b"), tmp_path / "scale")}
    scale = {name: p for name, p in plan.items() if name.endswith("-1b")}
    assert set(scale) == {"mamba2-1b", "e1-heads-1b"}
    for name, p in scale.items():
        twin = race[name.removesuffix("-1b")].cfg
        assert abs(p.params - 1e9) < 0.01 * 1e9, name
        assert (p.cfg.budget.steps, p.cfg.budget.minutes) == (1000, None)
        assert (p.cfg.run.compile, p.cfg.run.cuda_graph) == (True, True)
        assert p.cfg.model.model == twin.model.model, name
        assert p.cfg.model.dim > twin.model.dim and p.cfg.model.depth > twin.model.depth, name
        assert {k: v for k, v in p.cfg.model.layer.items() if k != "heads"} == \
            {k: v for k, v in twin.model.layer.items() if k != "heads"}
        assert (p.cfg.data, p.cfg.optim) == (twin.data, twin.optim), name
        run = lambda c: dataclasses.replace(c.run, out=None, cuda_graph=False)  # noqa: E731
        assert run(p.cfg) == run(twin), name
    assert scale["e1-heads-1b"].cfg.model.dim == 128 * scale["e1-heads-1b"].cfg.model.layer["heads"]
    # the warm-up arm: each 400M (the race's shape) and 1B run again with a 100-step warm-up, nothing else changed
    arm = {name: p for name, p in plan.items() if name.endswith("-warmup")}
    assert set(arm) == {f"{m}-{size}-warmup" for m in ("mamba2", "e1-heads") for size in ("400m", "1b")}
    for name, p in arm.items():
        model, size = name.removesuffix("-warmup").rsplit("-", 1)
        same = (race[model] if size == "400m" else scale[f"{model}-1b"]).cfg
        assert p.cfg.optim == dataclasses.replace(same.optim, warmup_steps=100), name
        assert (p.cfg.model, p.cfg.data, p.cfg.budget) == (same.model, same.data, scale[f"{model}-1b"].cfg.budget), name
        assert dataclasses.replace(p.cfg.run, out=None) == dataclasses.replace(scale[f"{model}-1b"].cfg.run, out=None)
    # the precision arm: the warm-up arm's runs in bf16-mixed, nothing else changed
    mixed = {name: p for name, p in plan.items() if name.endswith("-mixed")}
    assert set(mixed) == {f"{m}-{size}-warmup-mixed" for m in ("mamba2", "e1-heads") for size in ("400m", "1b")}
    for name, p in mixed.items():
        same = arm[name.removesuffix("-mixed")].cfg
        assert p.cfg.run.precision == "bf16-mixed" and same.run.precision == "bf16", name
        assert (p.cfg.model, p.cfg.data, p.cfg.optim, p.cfg.budget) == (same.model, same.data, same.optim,
                                                                        same.budget), name
        assert dataclasses.replace(p.cfg.run, out=None, precision="bf16") == dataclasses.replace(same.run, out=None)
    # the init arm: the 400M pair of each precision with mamba_ssm's out_proj / sqrt(depth), nothing else changed
    rescaled = {name: p for name, p in plan.items() if name.endswith("-rescaled")}
    assert set(rescaled) == {f"{m}-400m-warmup{p}-rescaled" for m in ("mamba2", "e1-heads") for p in ("", "-mixed")}
    for name, p in rescaled.items():
        same = plan[name.removesuffix("-rescaled")].cfg
        assert p.cfg.model.rescale_prenorm_residual and not same.model.rescale_prenorm_residual, name
        assert (dataclasses.replace(p.cfg.model, rescale_prenorm_residual=False), p.cfg.data, p.cfg.optim,
                p.cfg.budget) == (same.model, same.data, same.optim, same.budget), name
        assert dataclasses.replace(p.cfg.run, out=None) == dataclasses.replace(same.run, out=None), name
    # mamba_ssm's whole LM: each rescaled pure-bf16 run with RMSNorm and the residual in fp32 besides
    wrapped = {name: p for name, p in plan.items() if name.endswith("-mixermodel")}
    assert set(wrapped) == {f"{m}-400m-warmup-mixermodel" for m in ("mamba2", "e1-heads")}
    for name, p in wrapped.items():
        same = rescaled[name.replace("-mixermodel", "-rescaled")].cfg
        assert (p.cfg.model.norm, p.cfg.model.residual_in_fp32) == ("rmsnorm", True), name
        assert dataclasses.replace(p.cfg, model=same.model, run=same.run) == same, name
        assert dataclasses.replace(p.cfg.model, norm="layernorm", residual_in_fp32=False) == same.model, name
        assert dataclasses.replace(p.cfg.run, out=None) == dataclasses.replace(same.run, out=None), name
    assert len(plan) == len(scale) + len(arm) + len(mixed) + len(rescaled) + len(wrapped)


def test_scaling_options(tmp_path):
    suite = load_suite("tiny")
    plan = plan_suite(suite, tmp_path, params="150K", steps=7, seeds="1,2", device="cpu")
    assert len(plan) == 2 * len(suite.runs)
    assert [p.dir.name for p in plan[:2]] == ["e1-s1", "e1-s2"]
    assert [p.cfg.run.seed for p in plan[:2]] == [1, 2]
    wide = plan_suite(suite, tmp_path, seeds="3,13,103", runs="e1")  # one folder per seed, whatever its digits
    assert [(p.dir.name, p.seed, p.cfg.run.seed) for p in wide] == [("e1-s3", 3, 3), ("e1-s13", 13, 13),
                                                                     ("e1-s103", 103, 103)]
    for p in plan:
        assert p.cfg.budget.steps == 7 and p.cfg.budget.minutes is None and p.cfg.run.device == "cpu"
        assert p.params == count_params(p.cfg.model)
        assert abs(p.params - 150_000) / 150_000 < 0.3, (p.label, p.params)
        assert p.cfg.model.depth == 2  # depth kept, width re-solved
    base = {p.name: p.cfg.model.dim for p in plan_suite(suite, tmp_path)}
    assert any(p.cfg.model.dim != base[p.name] for p in plan)
    timed = plan_suite(suite, tmp_path, minutes=0.5)
    assert all(p.cfg.budget.minutes == 0.5 and p.cfg.budget.steps is None for p in timed)
    cosine = parse_suite({"name": "c", "defaults": {"optimizer": "adamw", "steps": 10},
                          "runs": [{"model": "e1", "dim": 32, "depth": 2}]})
    with pytest.raises(ValueError, match="schedulefree"):  # a cosine needs a step budget
        plan_suite(cosine, tmp_path, minutes=5)
    plan_suite(load_suite("seed-400m-step-matched"), tmp_path, minutes=5)  # its AdamW rows are constant-LR
    with pytest.raises(ValueError, match="seeds"):
        plan_suite(suite, tmp_path, seeds="1,x")


def test_suite_file_target_params_and_errors(tmp_path):
    text = """
name = "mine"
[defaults]
steps = 3
lr = 1e-3
[[runs]]
name = "a"
model = "e1"
depth = 2
target_params = "100K"
[[runs]]
name = "b"
model = "mingru"
dim = 32
depth = 3
lr = 2e-3
"""
    f = tmp_path / "mine.toml"
    f.write_text(text)
    suite = load_suite(f)
    plan = {p.name: p for p in plan_suite(suite, tmp_path / "out")}
    assert abs(plan["a"].params - 100_000) < 20_000 and plan["a"].target_params == 100_000
    assert plan["a"].cfg.optim.lr == 1e-3 and plan["b"].cfg.optim.lr == 2e-3
    assert plan["b"].cfg.model.dim == 32 and plan["b"].cfg.model.depth == 3
    with pytest.raises(ValueError, match="dim"):
        parse_suite({"runs": [{"name": "x", "model": "e1", "depth": 2}]})
    with pytest.raises(ValueError, match="unknown top-level"):
        parse_suite({"runz": []})
    with pytest.raises(ValueError, match="twice"):
        parse_suite({"runs": [{"name": "x", "model": "e1", "depth": 2, "dim": 32}] * 2})
    assert parse_suite({"runs": [{"model": "e1", "depth": 2, "dim": 32}]}).runs[0].name == "e1-d2"  # unnamed
    with pytest.raises(ValueError, match=r"reference\.runs\.x must be a table of numbers .*got \{'loss': True\}"):
        parse_suite({"runs": [{"name": "x", "model": "e1", "depth": 2, "dim": 32}],  # TOML's true is no number
                     "reference": {"runs": {"x": {"loss": True}}}})
    with pytest.raises(ValueError, match="run b"):
        plan_suite(parse_suite({"runs": [{"name": "b", "model": "e1", "depth": 2, "dim": 32,
                                          "layer": {"bogus": 1}}]}), tmp_path)


def test_suite_run_unknown_key_reported_before_missing_field(tmp_path, capsys):
    # a misspelt depth: the error names the key (not "needs 'depth'") and the run, by name when it has one
    f = tmp_path / "typo.toml"
    f.write_text('name = "t"\n[[runs]]\nname = "deep"\nmodel = "e1"\ndim = 32\ndpth = 4\n')
    with pytest.raises(ValueError, match=r"^suite t \(.*typo\.toml\), run deep: unknown key\(s\) \['dpth'\]: did you "
                                         r"mean depth\?$"):  # the key meant, not forty others after it
        load_suite(f)
    with pytest.raises(ValueError, match=r"^suite s, run 2: unknown key\(s\) \['dpth'\]"):  # nor depth: its number
        parse_suite({"name": "s", "runs": [{"name": "a", "model": "e1", "depth": 2, "dim": 32},
                                           {"model": "e1", "dim": 32, "dpth": 4}]})
    # no name: the one --plan shows (<model>-d<depth>), not its number
    with pytest.raises(ValueError, match=r"^suite s, run e1-d4: unknown key\(s\) \['stepz'\]"):
        parse_suite({"name": "s", "runs": [{"name": "a", "model": "e1", "depth": 2, "dim": 32},
                                           {"model": "e1", "dim": 32, "depth": 4, "stepz": 4}]})
    with pytest.raises(ValueError, match=r"^suite s, run a: unknown key\(s\) \['stepz'\]"):  # caught at load
        parse_suite({"name": "s", "runs": [{"name": "a", "model": "e1", "depth": 2, "dim": 32, "stepz": 4}]})
    with pytest.raises(ValueError, match=r"^suite s, run a: must not set \['out'\]"):  # a known key, refused
        parse_suite({"name": "s", "runs": [{"name": "a", "model": "e1", "depth": 2, "dim": 32, "out": "x"}]})
    with pytest.raises(ValueError, match=r"^suite s, run 2: not a table"):  # runs = [{...}, 1]
        parse_suite({"name": "s", "runs": [{"name": "a", "model": "e1", "depth": 2, "dim": 32}, 1]})
    assert main(["bench", str(f), "--plan", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "run deep: unknown key(s) ['dpth']" in err and "needs" not in err and len(err.strip().splitlines()) == 1


def test_a_typo_in_defaults_is_one_line_naming_defaults(tmp_path, capsys):
    """A misspelt [defaults] key is refused when the suite loads, as [defaults]'s: not as an error
    of the suite's first run, whose list of known keys offered dim, depth and out, which [defaults]
    must not set."""
    f = tmp_path / "s.toml"
    f.write_text('name = "s"\n[defaults]\nstps = 3\n[[runs]]\nname = "a"\nmodel = "e1"\ndim = 16\ndepth = 1\n')
    with pytest.raises(ValueError, match=r"^suite s \(.*s\.toml\): unknown \[defaults\] key\(s\) \['stps'\]: did "
                                         r"you mean steps\?$"):
        load_suite(f)
    f.write_text('name = "s"\n[defaults]\nzzz = 3\n[[runs]]\nname = "a"\nmodel = "e1"\ndim = 16\ndepth = 1\n')
    with pytest.raises(ValueError, match=r"^suite s \(.*s\.toml\): unknown \[defaults\] key\(s\) \['zzz'\]; "
                                         r"known: ") as e:  # nothing near: every key [defaults] takes
        load_suite(f)
    known = e.value.args[0].split("known: ")[1]
    assert "'steps'" in known and "'lr'" in known
    assert not any(f"'{k}'" in known for k in ("dim", "depth", "model", "out", "resume", "name"))
    assert main(["bench", str(f), "--plan", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rnnlab bench: error: suite s (") and "run a" not in err and len(err.splitlines()) == 1


def test_a_bad_value_in_defaults_is_named_as_defaults(tmp_path, capsys):
    """A [defaults] value of the wrong type or out of bounds is refused when the suite loads, as
    [defaults]'s: not as an error of the suite's first run, which does not set it."""
    f = tmp_path / "s.toml"
    f.write_text('name = "s"\n[defaults]\nsteps = 10.5\n[[runs]]\nname = "a"\nmodel = "e1"\ndim = 16\ndepth = 1\n')
    assert main(["bench", str(f), "--plan", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == (f"rnnlab bench: error: suite s ({f}): [defaults] steps must be a positive "
                                       "integer (at most 1,000,000,000,000), got 10.5\n")
    row = {"name": "a", "model": "e1", "depth": 2, "dim": 32}
    with pytest.raises(ValueError, match=r"^suite s: \[defaults\] optimizer must be one of schedulefree-adamw, adamw, "
                                         r"got 'adam'$"):
        parse_suite({"name": "s", "defaults": {"optimizer": "adam"}, "runs": [row]})
    with pytest.raises(ValueError, match=r"^suite s: \[defaults\] eval_bytes must be a byte count"):
        parse_suite({"name": "s", "defaults": {"eval_bytes": "16Q"}, "runs": [row]})
    ok = parse_suite({"name": "s", "defaults": {"betas": [0.9, 0.95], "eval_bytes": "16K", "tokens": "1M"},
                      "runs": [row]})
    assert plan_suite(ok, tmp_path / "o")[0].cfg.run.eval_bytes == 16_000  # as given, once checked


def test_a_top_level_key_written_below_a_table_says_so(tmp_path, capsys):
    """``name``, ``description`` or ``runs = []`` written below ``[defaults]`` (or a ``[[runs]]``
    entry) belong to that table in TOML: said so, not refused as a model field or an unknown key."""
    f = tmp_path / "s.toml"
    f.write_text('[defaults]\nsteps = 5\nname = "mine"\n[[runs]]\nmodel = "e1"\ndim = 32\ndepth = 2\n')
    assert main(["bench", str(f), "--plan", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == (
        f"rnnlab bench: error: suite s ({f}): [defaults] holds ['name'], key(s) of the suite's top level: in TOML a "
        "key written below [defaults] belongs to it; write it above the file's first [table]\n")
    row = {"name": "a", "model": "e1", "depth": 2, "dim": 32}
    with pytest.raises(ValueError, match=r"^suite s: \[defaults\] holds \['description', 'runs'\], key\(s\) of the "):
        parse_suite({"name": "s", "defaults": {"description": "d", "runs": []}, "runs": [row]})
    with pytest.raises(ValueError, match=r"^suite s, run a: \[\[runs\]\] holds \['notes'\], key\(s\) of the suite's "
                                         r"top level: in TOML a key written below \[\[runs\]\] belongs to it; "):
        parse_suite({"name": "s", "runs": [{**row, "notes": "n"}]})


def test_a_suite_keys_typo_or_other_tools_name_is_pointed_to_its_key():
    """An unknown key in [defaults] or a [[runs]] row says which key was meant, as a config file's
    does: nearly right (``target_param``) or another trainer's name for it (``learning_rate``)."""
    row = {"name": "a", "model": "e1", "depth": 2, "dim": 32}
    with pytest.raises(ValueError, match=r"^suite s: unknown \[defaults\] key\(s\) \['learning_rate'\]: did you mean "
                                         r"lr\?$"):
        parse_suite({"name": "s", "defaults": {"learning_rate": 1e-3}, "runs": [row]})
    with pytest.raises(ValueError, match=r"^suite s, run a: unknown key\(s\) \['num_layers', 'target_param'\]: did you "
                                         r"mean num_layers -> depth, target_param -> target_params\?$"):
        parse_suite({"name": "s", "runs": [{**row, "num_layers": 2, "target_param": "1M"}]})
    with pytest.raises(ValueError, match=r"^suite s, run a: unknown key\(s\) \['target_param', 'zzz'\]: did you mean "
                                         r"target_param -> target_params\?; known: "):  # zzz: nothing near
        parse_suite({"name": "s", "runs": [{**row, "zzz": 1, "target_param": "1M"}]})


def test_a_suite_files_errors_name_its_path(tmp_path, monkeypatch, capsys):
    """An error from a suite file's content names the file to fix, a shipped suite's too: relative
    to the current directory when under it, else as given; still one line."""
    bad = tmp_path / "sub" / "bad.toml"
    bad.parent.mkdir()
    bad.write_text('name = "s"\n[defaults]\ndim = 32\n[[runs]]\nmodel = "e1"\ndim = 32\ndepth = 2\n')
    monkeypatch.chdir(tmp_path)
    assert main(["bench", str(bad), "--plan", "--out", "o"]) == 2
    assert capsys.readouterr().err == ("rnnlab bench: error: suite s (sub/bad.toml): [defaults] must not set ['dim'] "
                                       "(put model fields in [[runs]])\n")
    shipped = Path(str(suites_dir() / "tiny.toml"))
    for cwd, shown in ((shipped.parent.parent, "suites/tiny.toml"), (tmp_path, str(shipped))):
        monkeypatch.chdir(cwd)
        with pytest.raises(ValueError, match=rf"^suite tiny \({re.escape(shown)}\), run [\w-]+: warmup_steps \(2\) "
                                             r"must not exceed the step budget \(1\)$"):
            plan_suite(load_suite("tiny"), tmp_path / "out", steps=1, warmup_steps=2)


def test_a_suite_files_missing_relative_data_says_where_it_was_looked_for(tmp_path, monkeypatch, capsys):
    """A relative ``data`` path in a suite file that is not found says it was read from the current
    directory, not from the suite file's folder (and that the file is there, when it is); a path
    given by a flag is as rnnlab train says it."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "corpus.txt").write_text("hello world " * 1000)
    (tmp_path / "sub" / "s.toml").write_text('name = "s"\n[defaults]\ndata = "corpus.txt"\n[[runs]]\nname = "a"\n'
                                             'model = "e1"\ndim = 16\ndepth = 1\n')
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "sub/s.toml", "--plan", "--out", "o"]) == 2
    assert capsys.readouterr().err == (
        f"rnnlab bench: error: suite s (sub/s.toml), run a: data file not found: corpus.txt (a suite file's relative "
        f"paths are read from the current directory, {tmp_path}, not from the suite file's folder; sub/corpus.txt is "
        f"there)\n")
    assert main(["bench", "sub/s.toml", "--plan", "--out", "o", "--data", "gone.txt"]) == 2
    assert capsys.readouterr().err == ("rnnlab bench: error: suite s (sub/s.toml), run a: data file not found: "
                                       "gone.txt\n")
    monkeypatch.chdir(tmp_path / "sub")
    assert main(["bench", "s.toml", "--plan", "--out", "o"]) == 0


def test_a_models_parameters_are_counted_once_for_the_rows_that_share_it(monkeypatch):
    """``resolve_dim`` keeps explicit widths' counts as it keeps solved ones: a suite's rows of one
    model (seeds, learning rates) build it once; another width is counted anew."""
    from rnnlab.bench import suite as suite_module

    counted = []

    def counting(cfg):
        counted.append(cfg)
        return count_params(cfg)

    monkeypatch.setattr(suite_module, "_SOLVE_CACHE", {})
    monkeypatch.setattr(suite_module, "count_params", counting)
    rows = [suite_module.RunSpec(name=f"r{i}", model={"model": "mingru", "dim": 32, "depth": 2}, overrides={"lr": lr})
            for i, lr in enumerate((1e-3, 2e-3, 3e-3))]
    said = [suite_module.resolve_dim(r, None, "cpu") for r in rows]
    assert said == [(32, count_params(rows[0].model_config()))] * 3 and len(counted) == 1
    wider = suite_module.RunSpec(name="w", model={"model": "mingru", "dim": 48, "depth": 2})
    assert suite_module.resolve_dim(wider, None, "cpu") == (48, count_params(wider.model_config()))
    assert len(counted) == 2


def test_dim_beside_target_params_is_refused():
    """A suite row or a sweep given both a width and a parameter target: the solved width would
    replace the dim given without a word."""
    with pytest.raises(ValueError, match=r"^suite s, run a: needs 'dim' or 'target_params', not both$"):
        parse_suite({"name": "s", "runs": [{"name": "a", "model": "e1", "depth": 2, "dim": 32, "target_params": "1M"}]})
    with pytest.raises(ValueError, match=r"^give --dim or --target-params, not both"):
        build_sweep({"model": "e1", "depth": 2, "dim": 32}, ["lr=1e-3"], target_params="1M")


def test_a_suite_row_target_params_is_checked_where_it_is_written():
    """``target_params = 0`` (or ``-5``, ``true``) in a suite row is refused naming the suite and
    row, not planned as the narrowest width."""
    for bad, message in ((0, "must be positive"), (-5, "must be positive"), (True, "cannot read")):
        with pytest.raises(ValueError, match=rf"^suite s, run a: target_params: .*{message}"):
            parse_suite({"name": "s", "runs": [{"name": "a", "model": "e1", "depth": 2, "target_params": bad}]})


def _tiny_suite(name: str = "s", runs: str = "ab"):
    """A suite of tiny E1 rows, one per letter of ``runs``."""
    return parse_suite({"name": name, "defaults": {"steps": 3, "device": "cpu"},
                        "runs": [{"name": n, "model": "e1", "depth": 1, "dim": 16} for n in runs]})


def _plan_doc(out):
    return json.loads((out / "suite.json").read_text())


def test_a_suite_run_the_config_refuses_is_named_and_a_cosine_under_minutes_says_why(tmp_path):
    """A planned run the config refuses names the suite and run; AdamW's cosine schedule under
    ``--minutes`` adds that time-matched runs need schedulefree-adamw, another refusal does not."""
    suite = parse_suite({"name": "s", "defaults": {"optimizer": "adamw"},
                         "runs": [{"name": "a", "model": "e1", "depth": 1, "dim": 16}]})
    with pytest.raises(ValueError) as e:
        plan_suite(suite, tmp_path, minutes=1.0)
    assert str(e.value).startswith("suite s, run a: optimizer adamw decays its LR on a cosine") and str(e.value).endswith(
        " (suite s uses AdamW with a cosine schedule; time-matched --minutes needs schedulefree-adamw)")
    with pytest.raises(ValueError) as e:
        plan_suite(suite, tmp_path, steps=10, warmup_steps=11)
    assert str(e.value) == "suite s, run a: warmup_steps (11) must not exceed the step budget (10)"


def test_a_suite_plan_takes_at_most_one_budget(tmp_path):
    with pytest.raises(ValueError, match=r"^give at most one of --steps, --minutes, --tokens$"):
        plan_suite(_tiny_suite(), tmp_path, steps=5, minutes=1.0)
    assert [p.cfg.budget.chosen() for p in plan_suite(_tiny_suite(), tmp_path, minutes=1.0)] == [("minutes", 1.0)] * 2


@pytest.mark.parametrize("name", [".hidden", "a/b", "..\\x", 5])
def test_a_run_name_must_be_a_plain_folder_name(name):
    with pytest.raises(ValueError, match=re.escape(f"suite s, run {name}: run name {name!r} must be a plain "
                                                   f"folder name (text)")):
        parse_suite({"name": "s", "runs": [{"name": name, "model": "e1", "depth": 1, "dim": 16}]})


def test_a_run_may_not_be_named_logs():
    """OUT/logs/ holds each --gpus N run's log and config: a run folder there would mix with them."""
    with pytest.raises(ValueError, match=r"^suite s, run logs: run name 'logs' is the suite folder's logs/"):
        parse_suite({"name": "s", "runs": [{"name": "logs", "model": "e1", "depth": 1, "dim": 16}]})


@pytest.mark.parametrize("name", ["../../etc", "a/b", 5, ""])
def test_a_suite_name_must_be_a_plain_folder_name(name):
    """The suite's name is its default output folder, runs/bench/<name>: never outside runs/bench/,
    nor runs/bench/ itself."""
    with pytest.raises(ValueError, match=re.escape(f"suite {name}: suite name {name!r} must be a plain folder name")):
        parse_suite({"name": name, "runs": [{"model": "e1", "depth": 1, "dim": 16}]})


@pytest.mark.parametrize("key, value", [("target_params", "1M"), ("multiple", 8), ("dim", 32), ("out", "x")])
def test_suite_defaults_may_not_set_a_rows_own_keys(key, value):  # name: test_a_top_level_key_written_below_a_table
    with pytest.raises(ValueError, match=rf"^suite s: \[defaults\] must not set \['{key}'\]"):
        parse_suite({"name": "s", "defaults": {key: value}, "runs": [{"model": "e1", "depth": 1, "dim": 16}]})


@pytest.mark.parametrize("key", ["mlp-ratio", "target-params"])
def test_a_suite_row_or_defaults_key_written_with_a_dash_is_the_same_key(key, tmp_path):
    """``mlp-ratio = 4`` in a row is ``mlp_ratio = 4`` (a config file's keys take either): the row's
    model has it, so its parameter count and a solved width count it; in [defaults] it is refused
    as a model field, as ``mlp_ratio`` is."""
    if key == "mlp-ratio":
        (dashed,) = plan_suite(parse_suite({"name": "s", "runs": [{"name": "a", "model": "e1", "depth": 2,
                                                                  "target_params": "200K", key: 4}]}), tmp_path)
        (plain,) = plan_suite(parse_suite({"name": "s", "runs": [{"name": "a", "model": "e1", "depth": 2,
                                                                 "target_params": "200K", "mlp_ratio": 4}]}), tmp_path)
        assert dashed.params == count_params(dashed.cfg.model)
        assert (dashed.cfg.model.dim, dashed.params) == (plain.cfg.model.dim, plain.params)
    else:
        (dashed,) = plan_suite(parse_suite({"name": "s", "runs": [{"name": "a", "model": "e1", "depth": 2,
                                                                  key: "200K"}]}), tmp_path)
        assert dashed.target_params == 200_000
    with pytest.raises(ValueError, match=r"^suite s: \[defaults\] must not set"):
        parse_suite({"name": "s", "defaults": {key: 4}, "runs": [{"model": "e1", "depth": 1, "dim": 16}]})


def test_a_complete_run_is_redone_when_its_budget_kind_changes(tmp_path):
    """A run complete on --steps 3 is complete for --steps 3, not for --minutes 1: then resumed from its
    checkpoint, or, without one (a slim copy kept in results/), refused, never trained afresh over."""
    (planned,) = plan_suite(_tiny_suite(runs="a"), tmp_path)
    planned.dir.mkdir()
    (planned.dir / "config.json").write_text(json.dumps(planned.cfg.to_dict()))
    (planned.dir / "summary.json").write_text(json.dumps({"complete": True, "budget": {"steps": 3}}))
    assert run_status(planned) == "complete"
    (timed,) = plan_suite(_tiny_suite(runs="a"), tmp_path, minutes=1.0)
    assert run_status(timed) == "conflict"
    assert run_conflict(timed) == (f"{timed.dir} holds a run complete (steps=3) without a checkpoint, so it cannot be "
                                   "extended to minutes=1: a suite extends a run, it does not train one afresh over a "
                                   "finished one")
    (tokens,) = plan_suite(_tiny_suite(runs="a"), tmp_path, tokens=1_234_567)  # a count in full, not 1.23457e+06
    assert "so it cannot be extended to tokens=1,234,567: " in run_conflict(tokens)


def _scored_suite(tmp_path):
    """A one-run suite file of a tiny E1 (3 steps, fp32, 32-byte windows, 4K held-out bytes; RMSNorm,
    a model setting off its default) and an extra held-out text beside it."""
    extra = tmp_path / "extra.txt"
    extra.write_bytes(bytes(range(32, 122)) * 30)  # 2,700 bytes
    path = tmp_path / "s.toml"
    path.write_text('name = "s"\n[defaults]\nsteps = 3\ndevice = "cpu"\nprecision = "fp32"\nbatch_size = 2\n'
                    'seq_len = 32\neval_bytes = "4K"\n[[runs]]\nname = "a"\nmodel = "e1"\ndim = 16\ndepth = 1\n'
                    'norm = "rmsnorm"\n')
    return load_suite(path), extra


def test_a_complete_run_asked_for_a_new_extra_file_or_eval_bytes_is_rescored_from_its_checkpoint(tmp_path, capsys):
    """``rnnlab bench`` again over complete runs with a new --extra-val-data or --eval-bytes: each
    run is resumed from its checkpoint, trains no step, and its final evaluation is scored again
    for what it lacked (summary.json, eval.jsonl and the log line say the new numbers; the held-out
    split's kept where it was covered); --plan says so first; the same command again skips it."""
    suite, extra = _scored_suite(tmp_path)
    out = tmp_path / "out"
    said: list[str] = []
    run_plan(suite, plan_suite(suite, out), out, progress=False, log=said.append)
    assert said[0].startswith("[1/1] a: training e1 dim=16 depth=1 norm=rmsnorm (")  # its settings off their defaults
    run = out / "a"
    first = json.loads((run / "summary.json").read_text())
    steps = (run / "metrics.jsonl").read_text()
    assert (first["val_bytes"], first["extra_val"]) == (3968, None)

    assert main(["bench", str(tmp_path / "s.toml"), "--out", str(out), "--plan", "--extra-val-data", str(extra)]) == 0
    assert ("rescore: a is complete; its final evaluation will be scored again from its checkpoint, no training "
            "step (no score on extra.txt)") in capsys.readouterr().out
    (planned,) = plan_suite(suite, out, extra_val_data=str(extra))
    said = []
    result = run_plan(suite, [planned], out, progress=False, log=said.append)
    assert (result["rescored"], result["trained"], result["skipped"]) == (["a"], [], [])
    s = json.loads((run / "summary.json").read_text())
    assert (s["steps"], s["loss"], s["val_bpb"], s["val_bytes"]) == (3, first["loss"], first["val_bpb"], 3968)
    assert s["extra_val"]["data"] == str(extra.resolve()) and s["extra_val"]["bytes"] == 2688
    assert said[0] == ("[1/1] a: complete; scoring its final evaluation again from its checkpoint, no training step "
                       "(no score on extra.txt)")
    assert said[-1] == f"[1/1] a: loss {s['loss']:.4f}, val bpb {s['val_bpb']:.4f}, extra.txt bpb " \
                       f"{s['extra_val']['val_bpb']:.4f}"
    assert (run / "metrics.jsonl").read_text() == steps  # no step trained
    assert main(["eval", "--run", str(run), "--data", str(extra), "--eval-bytes", "all", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["val_bpb"] == pytest.approx(s["extra_val"]["val_bpb"], rel=1e-6)
    assert run_status(planned) == "complete"
    # the file at another path (a run folder moved to another machine): the same name and size is the same
    # file; another text of that name is not
    (tmp_path / "elsewhere").mkdir()
    moved = tmp_path / "elsewhere" / "extra.txt"
    moved.write_bytes(extra.read_bytes())
    assert run_status(plan_suite(suite, out, extra_val_data=str(moved))[0]) == "complete"
    moved.write_bytes(extra.read_bytes() * 2)
    (other,) = plan_suite(suite, out, extra_val_data=str(moved))
    assert (run_status(other), scores_lacking(other)) == ("rescore", [f"scored {extra.resolve()}, not {moved}"])

    (capped,) = plan_suite(suite, out, extra_val_data=str(extra), eval_bytes="2K")
    assert run_status(capped) == "rescore"
    said.clear()
    run_plan(suite, [capped], out, progress=False, log=said.append)
    assert "(held-out split scored on 3,968 bytes, --eval-bytes 2,000 scores 1,984)" in said[0]
    again = json.loads((run / "summary.json").read_text())
    assert (again["val_bytes"], again["extra_val"], again["loss"]) == (1984, s["extra_val"], first["loss"])
    evals = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
    assert [(e["step"], e["bytes"], e["val_bpb"], e["extra_val_bpb"]) for e in evals] == [
        (3, 1984, again["val_bpb"], s["extra_val"]["val_bpb"])]
    assert run_status(capped) == "complete" and run_status(planned) == "rescore"  # 4K asked again: 3,968 bytes


def test_a_sweeps_stale_points_are_named_under_rnnlab_sweep(tmp_path, capsys):
    """The line naming complete runs that cannot be scored again (no checkpoint) speaks as the command
    that ran: under rnnlab sweep it said ``rnnlab bench:``."""
    out = tmp_path / "sw"
    argv = ["sweep", "--model", "e1", "--dim", "16", "--depth", "1", "--set", "lr=1e-3", "--steps", "2",
            "--batch-size", "2", "--seq-len", "32", "--precision", "fp32", "--device", "cpu", "--no-plots",
            "--no-progress", "--out", str(out)]
    assert main(argv + ["--eval-bytes", "2K"]) == 0
    shutil.rmtree(out / "lr-1e-3" / "ckpt")
    capsys.readouterr()
    assert main(argv + ["--eval-bytes", "4K"]) == 0
    err = capsys.readouterr().err
    assert "rnnlab sweep: 1 complete run keeps final scores that do not cover this command" in err
    assert "rnnlab bench" not in err


def test_a_complete_run_without_a_checkpoint_lacking_new_scores_is_named_not_silently_kept(tmp_path, capsys):
    """The same over a slim copy of the runs (no checkpoints, as results/ keeps them): nothing can
    score them again, so they are skipped with a line each and one line naming them all and what
    they lack, their records untouched; --plan marks them stale; a run trained beside them with the
    extra file makes the report warn that the rows were scored on different files."""
    suite, extra = _scored_suite(tmp_path)
    out = tmp_path / "out"
    run_plan(suite, plan_suite(suite, out), out, progress=False, log=lambda m: None)
    shutil.rmtree(out / "a" / "ckpt")
    before = (out / "a" / "summary.json").read_text()
    assert main(["bench", str(tmp_path / "s.toml"), "--out", str(out), "--plan", "--extra-val-data", str(extra),
                 "--eval-bytes", "2K"]) == 0
    assert ("stale: a is complete, but its final evaluation lacks what this command asks (no score on extra.txt; "
            "held-out split scored on 3,968 bytes, --eval-bytes 2,000 scores 1,984) and it has no checkpoint to "
            "score it again from: skipped") in capsys.readouterr().out
    (planned,) = plan_suite(suite, out, extra_val_data=str(extra))
    said: list[str] = []
    result = run_plan(suite, [planned], out, progress=False, log=said.append)
    assert (result["skipped"], result["stale"], result["rescored"]) == (["a"], {"a": ["no score on extra.txt"]}, [])
    assert said == ["[1/1] a: complete, skipped; its final evaluation lacks what this command asks (no score on "
                    "extra.txt) and the run has no checkpoint to score it again from",
                    "rnnlab bench: 1 complete run keeps final scores that do not cover this command, having no "
                    "checkpoint to score them again from: a (no score on extra.txt); the report marks the difference "
                    "(re-score them where their checkpoints are, or delete their folders to train them again)"]
    assert (out / "a" / "summary.json").read_text() == before
    # the command's report: no row scored on the file, so no column for it; it says which runs lack it
    assert main(["bench", str(tmp_path / "s.toml"), "--out", str(out), "--extra-val-data", str(extra),
                 "--no-progress"]) == 0
    md = (out / "report.md").read_text()
    lacking = ("> **Warning: the latest command asked for --extra-val-data extra.txt, which these complete runs were "
               "not scored on**: {} (kept from before, with no checkpoint to score it from).")
    assert lacking.format("a") in md and "extra.txt bpb" not in md and "extra held-out file scored" not in md
    b = dataclasses.replace(suite.runs[0], name="b")
    both = dataclasses.replace(suite, runs=[suite.runs[0], b])
    run_plan(both, plan_suite(both, out, extra_val_data=str(extra)), out, progress=False, log=lambda m: None,
             options={"extra_val_data": str(extra)})
    md = write_report(out, plots=False)["md"].read_text()
    assert "> - extra held-out file scored: a none; b extra.txt" in md and lacking.format("a") in md
    c = dataclasses.replace(suite.runs[0], name="c")  # not among the runs of the command that asked: no "no checkpoint"
    three = dataclasses.replace(suite, runs=[*both.runs, c])
    run_plan(three, plan_suite(three, out, runs="c"), out, progress=False, log=lambda m: None)
    run_plan(three, plan_suite(three, out, runs="b", extra_val_data=str(extra)), out, progress=False,
             log=lambda m: None, options={"runs": "b", "extra_val_data": str(extra)})
    assert (lacking[:-1].format("a") + "; c (not among its runs; a command that runs them with the file scores them "
            "again from their checkpoints).") in write_report(out, plots=False)["md"].read_text()
    run_plan(both, plan_suite(both, out), out, progress=False, log=lambda m: None)  # a command asking for none
    assert "Warning: the latest command asked for" not in write_report(out, plots=False)["md"].read_text()
    assert {r[0]: r[5] for r in _table_rows(md)}["a"] == "-"


@pytest.mark.parametrize("where", ["flag", "defaults", "run"])
def test_a_cpu_suite_on_a_gpu_machine_plans_options_only_the_official_kernels_refuse(tmp_path, official_would_run,
                                                                                     where):
    """``rnnlab bench --device cpu`` (or a suite's device cpu) on a machine where backend auto would
    pick the official Mamba2: its width solving and parameter count build the reference the
    trainer builds there, so Mamba2 d_conv 5 plans as ``rnnlab train --device cpu`` takes it (it
    was refused with the official kernel's limit); on the GPU (device auto) it is refused."""
    layer = {"d_state": 8, "headdim": 16, "d_conv": 5}
    runs = [{"name": "fixed", "model": "mamba2", "dim": 32, "depth": 1, "layer": layer},
            {"name": "solved", "model": "mamba2", "target_params": "20K", "depth": 1, "layer": layer}]
    cpu = {"device": "cpu"}
    suite = parse_suite({"name": "m", "defaults": {"steps": 2, **(cpu if where == "defaults" else {})},
                         "runs": [{**r, **(cpu if where == "run" else {})} for r in runs]})
    plan = plan_suite(suite, tmp_path / "cpu", **(cpu if where == "flag" else {}))
    assert [(p.cfg.model.dim, p.cfg.run.device, p.cfg.model.layer) for p in plan] == [(32, "cpu", layer)] * 2
    gpu = parse_suite({"name": "m", "defaults": {"steps": 2}, "runs": runs})
    with pytest.raises(ValueError, match="causal_conv1d's CUDA kernel takes d_conv 2 to 4, got 5"):
        plan_suite(gpu, tmp_path / "gpu")


def test_a_complete_run_past_a_smaller_budget_is_a_conflict_not_partial(tmp_path, capsys):
    """``bench tiny`` then ``bench tiny --steps 50`` into one folder: the 150-step runs cannot be
    resumed to 50 steps (``--resume`` refuses a budget a run has passed), so --plan says conflict,
    not partial, and the bench refuses before training anything; a larger budget extends them."""
    (planned,) = plan_suite(_tiny_suite(runs="a"), tmp_path)
    planned.dir.mkdir()
    (planned.dir / "config.json").write_text(json.dumps(planned.cfg.to_dict()))
    (planned.dir / "summary.json").write_text(json.dumps({"complete": True, "steps": 3, "budget": {"steps": 3}}))
    (shorter,) = plan_suite(_tiny_suite(runs="a"), tmp_path, steps=2)
    assert run_status(shorter) == "conflict"
    with pytest.raises(ValueError, match=r"holds a run complete at step 3, past this budget \(steps 2\)"):
        run_plan(_tiny_suite(runs="a"), [shorter], tmp_path, progress=False)
    (longer,) = plan_suite(_tiny_suite(runs="a"), tmp_path, steps=4)
    assert run_status(longer) == "conflict"  # no checkpoint here to extend from (a larger one with: test below)
    # under a minutes budget, the trainer's rule (RunDir.past_budget, as --resume applies it): step 3
    # started after a minute of training by step 2, so a 1-minute budget is passed, a longer one not
    (planned.dir / "metrics.jsonl").write_text("".join(json.dumps({"step": i, "elapsed_s": 30.0 * i, "warmup_s": 0.0})
                                                       + "\n" for i in (1, 2, 3)))
    (minute,) = plan_suite(_tiny_suite(runs="a"), tmp_path, steps=None, minutes=1)
    assert run_conflict(minute) == (f"{minute.dir} holds a run complete at step 3, and had trained 1 minute by step 2, "
                                    f"past this budget (minutes 1): a suite extends a run, it does not shorten one")
    (more,) = plan_suite(_tiny_suite(runs="a"), tmp_path, steps=None, minutes=1.5)
    # not past it: only the lack of a checkpoint to extend from stands in the way
    assert run_conflict(more).endswith("without a checkpoint, so it cannot be extended to minutes=1.5: a suite extends "
                                       "a run, it does not train one afresh over a finished one")


def test_a_complete_run_given_a_larger_budget_is_extended_not_partial(tmp_path, monkeypatch, capsys):
    """A sweep run again into its folder with a larger --steps: its complete points are no partial
    runs. One with a checkpoint is marked "extend" by --plan and "extending" as it trains, each line
    naming the step it completed at and the budget it now trains to; one without a checkpoint (a slim
    copy kept in results/) is a conflict, refused before anything trains, never trained afresh over."""
    import rnnlab.train.trainer as trainer

    calls: list = []
    monkeypatch.setattr(trainer, "run_training", _fake_trainer(calls))
    out = tmp_path / "sw"
    sweep = ["sweep", "--model", "e1", "--dim", "16", "--depth", "1", "--set", "lr=1e-3,2e-3", "--device", "cpu",
             "--no-plots", "--no-progress", "--out", str(out)]
    assert main([*sweep, "--steps", "2"]) == 0
    shutil.rmtree(out / "lr-2e-3" / "ckpt")
    capsys.readouterr()
    assert main([*sweep, "--steps", "5", "--plan"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[-1] for line in lines if line.startswith("  lr-")] == ["[extend]", "[conflict]"]
    extended = "complete at step 2 (steps=2); trained on from its checkpoint to steps=5"
    refused = (f"{out / 'lr-2e-3'} holds a run complete at step 2 (steps=2) without a checkpoint, so it cannot be "
               "extended to steps=5: a suite extends a run, it does not train one afresh over a finished one")
    assert lines[-2:] == [f"  extend: lr-1e-3 is {extended}", f"  conflict: {refused}"]
    calls.clear()
    assert main([*sweep, "--steps", "5"]) == 2
    assert calls == []  # refused before anything trains
    assert refused in capsys.readouterr().err
    shutil.rmtree(out / "lr-2e-3")
    assert main([*sweep, "--steps", "5"]) == 0
    assert calls == [("lr-1e-3", True), ("lr-2e-3", False)]  # extended; the deleted point trained anew
    err = capsys.readouterr().err
    assert re.search(rf"^\[1/2\] lr-1e-3: extending e1 dim=16 depth=1 \([\d,]+ params\): {re.escape(extended)}$", err,
                     re.M), err


def test_a_stopped_run_saved_past_a_smaller_budget_is_a_conflict_not_partial(tmp_path):
    """A run stopped (Ctrl-C, a kill) with its newest checkpoint at step 3: a suite of --steps 2
    cannot resume it (``--resume`` would refuse), so --plan says conflict, naming the step; at
    --steps 3 or more it is partial. The newest checkpoint counts, not an older one nor a summary's
    step (a failure records the step it reached, past its checkpoint)."""
    (planned,) = plan_suite(_tiny_suite(runs="a"), tmp_path)
    planned.dir.mkdir()
    (planned.dir / "config.json").write_text(json.dumps(planned.cfg.to_dict()))
    (planned.dir / "summary.json").write_text(json.dumps({"complete": False, "steps": 5, "budget": {"steps": 9}}))
    for step in (1, 3):
        (planned.dir / "ckpt" / f"step-{step:06d}").mkdir(parents=True)
    (shorter,) = plan_suite(_tiny_suite(runs="a"), tmp_path, steps=2)
    assert run_conflict(shorter) == (f"{shorter.dir} holds a run saved at step 3, past this budget (steps 2): "
                                     "a suite extends a run, it does not shorten one")
    for steps in (3, 4):
        (fits,) = plan_suite(_tiny_suite(runs="a"), tmp_path, steps=steps)
        assert run_status(fits) == "partial"


def test_report_names_each_run_file_it_cannot_read(tmp_path, capsys):
    """A run's config.json, summary.json or env.json that holds no JSON object (damaged, edited by
    hand) is named in a warning: its row then says nothing of what the file held (a complete run reads as
    partial), and the warning says why. A file that is not there is not named."""
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.json").write_text("{bad")
    (run / "summary.json").write_text("[1]")  # JSON, but not an object
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    [record] = collect(tmp_path)["records"]
    assert record["summary"] == record["config"] == {}
    err = capsys.readouterr().err.splitlines()
    assert err == [f"rnnlab: warning: {run / name} holds no readable JSON object: the report leaves out what it held"
                   for name in ("config.json", "summary.json")]
    (run / "env.json").write_bytes(b"\xff")  # not even text
    collect(tmp_path)
    assert f"{run / 'env.json'} holds no readable JSON object" in capsys.readouterr().err


def test_a_suite_folder_is_refused_to_another_suite(tmp_path):
    """Another suite planned into a suite's folder is refused (--plan too), its record kept: its
    suite.json would have been replaced, and the report would have shown the first suite's runs under
    the second's command and settings."""
    from rnnlab.bench.suite import write_plan

    out = tmp_path / "out"
    first = _tiny_suite("first", "ab")
    write_plan(first, plan_suite(first, out), out, "rnnlab bench first", {})
    for p in plan_suite(first, out):  # both runs trained
        p.dir.mkdir()
        (p.dir / "summary.json").write_text('{"complete": true}')
    before = (out / "suite.json").read_text()
    with pytest.raises(ValueError, match=rf"^--out {re.escape(str(out))} is suite first's folder \(its suite.json\), "
                                         r"not suite second's: give the suite a folder of its own \(another --out\)$"):
        plan_suite(_tiny_suite("second", "c"), out)
    assert (out / "suite.json").read_text() == before
    assert [p.name for p in plan_suite(first, out)] == ["a", "b"]  # the same suite continues


def test_suite_json_keeps_earlier_runs_that_hold_a_run_and_lists_a_repeated_command_once(tmp_path):
    """A suite continued in one folder: ``--runs a`` then ``--runs b`` lists a (trained) and b,
    and not an earlier entry whose folder never held a run; the same command again (a resume) is
    listed once. A run planned again keeps the GPU it was recorded on only if it is complete
    (skipped): one to be trained again gets the GPU of its new run. A run of a row the suite no
    longer has comes after the suite's rows."""
    from rnnlab.bench.suite import write_plan

    out, suite = tmp_path / "out", _tiny_suite("s", "abc")
    write_plan(suite, plan_suite(suite, out, runs="a,c"), out, "bench --runs a,c", {"runs": "a,c"})
    doc = _plan_doc(out)
    for r in doc["runs"]:
        r["gpu"] = "0"
    (out / "suite.json").write_text(json.dumps(doc))
    (out / "a").mkdir()
    (out / "a" / "summary.json").write_text('{"complete": true}')  # a trained; c never started
    write_plan(suite, plan_suite(suite, out, runs="b"), out, "bench --runs b", {"runs": "b"})
    write_plan(suite, plan_suite(suite, out, runs="b"), out, "bench --runs b", {"runs": "b"})
    doc = _plan_doc(out)
    assert [(r["dir"], r.get("gpu")) for r in doc["runs"]] == [("a", "0"), ("b", None)]
    assert [c["command"] for c in doc["invocations"]] == ["bench --runs a,c", "bench --runs b"]
    doc["runs"][1]["gpu"] = "1"  # b recorded on GPU 1 but not complete: planned again, its GPU is the new run's
    (out / "suite.json").write_text(json.dumps(doc))
    write_plan(suite, plan_suite(suite, out, runs="a,b"), out, "bench --runs a,b", {"runs": "a,b"})
    assert [(r["dir"], r.get("gpu")) for r in _plan_doc(out)["runs"]] == [("a", "0"), ("b", None)]
    edited = _tiny_suite("s", "bc")  # the suite file lost row a: its run stays listed, after the suite's rows
    write_plan(edited, plan_suite(edited, out, runs="c"), out, "bench --runs c", {"runs": "c"})
    assert [r["dir"] for r in _plan_doc(out)["runs"]] == ["c", "a"]


# ------------------------------------------------------------------------------------ resume
def _fake_trainer(calls, interrupt_at=None):
    """A stand-in for run_training that writes a plausible run folder."""

    def fake(cfg, progress=True):
        calls.append((Path(cfg.run.out).name, cfg.run.resume))
        out = Path(cfg.run.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg.to_dict()))
        complete = len(calls) != interrupt_at
        steps = cfg.budget.steps if complete else 1
        (out / "ckpt" / f"step-{steps:06d}").mkdir(parents=True, exist_ok=True)  # listed, never loaded
        with open(out / "metrics.jsonl", "w") as f:
            for s in range(1, steps + 1):
                f.write(json.dumps({"step": s, "tokens": s * 64, "loss": 5.0 / s, "lr": cfg.optim.lr,
                                    "tok_per_s": 1000.0, "peak_mem_gib": None, "elapsed_s": 0.1 * s}) + "\n")
        summary = {"model": cfg.model.model, "params": 1000, "steps": steps, "tokens": steps * 64,
                   "loss": 1.0 + len(calls) / 10, "val_loss": 1.0, "val_bpb": 1.44, "tok_per_s": 1000.0,
                   "peak_mem_gib": None, "time_s": 0.1 * steps, "complete": complete,
                   "dim": cfg.model.dim, "depth": cfg.model.depth, "layer": cfg.model.layer,
                   "seed": cfg.run.seed, "budget": {"steps": cfg.budget.steps}, "device": "cpu"}
        (out / "summary.json").write_text(json.dumps(summary))
        return summary

    return fake


def _suite_of_fakes(tmp_path, monkeypatch, names: str, b_summary: dict):
    """A suite of tiny E1 runs, one per letter of ``names``, trained by ``_fake_trainer`` whose
    summary of run b gets ``b_summary`` too: ``(suite, out, calls)``."""
    import rnnlab.train.trainer as trainer

    suite = parse_suite({"name": "s", "runs": [{"name": n, "model": "e1", "depth": 1, "dim": 16} for n in names]})
    calls: list = []
    fake = _fake_trainer(calls)

    def train(cfg, progress=True):
        summary = fake(cfg, progress)
        return {**summary, **b_summary} if Path(cfg.run.out).name == "b" else summary

    monkeypatch.setattr(trainer, "run_training", train)
    return suite, tmp_path / "suite", calls


def test_a_ctrl_c_at_a_runs_end_stops_the_suite_after_that_run(tmp_path, monkeypatch):
    """A run whose Ctrl-C came after its budget was spent finishes complete (the trainer lets its
    final evaluation and checkpoint end) and says so in its summary: the suite logs its outcome,
    keeps it as trained, and stops there instead of starting the next run."""
    suite, out, calls = _suite_of_fakes(tmp_path, monkeypatch, "abc", {"interrupted_at_end": True})
    said: list[str] = []
    res = run_plan(suite, plan_suite(suite, out, steps=2), out, progress=False, log=said.append)
    assert [c[0] for c in calls] == ["a", "b"] and res["trained"] == ["a", "b"] and res["stopped"]
    assert said[-2].startswith("[2/3] b: loss ") and said[-1].startswith("[2/3] b: interrupted; stopping the suite")


def test_one_process_suite_records_the_gpu_of_each_cuda_run(tmp_path, monkeypatch):
    """``rnnlab bench`` without --gpus (or with --gpus 1) names the GPU of each run that trained on
    CUDA in suite.json, as the one-process-per-GPU path does; CPU runs get none."""
    suite, out, _ = _suite_of_fakes(tmp_path, monkeypatch, "ab", {"device": "cuda"})
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    run_plan(suite, plan_suite(suite, out, steps=2), out, progress=False, log=lambda m: None)
    runs = json.loads((out / "suite.json").read_text())["runs"]
    assert [(r["dir"], r.get("gpu")) for r in runs] == [("a", None), ("b", "3")]


def test_one_process_suite_records_the_gpu_a_device_index_names(tmp_path, monkeypatch):
    """``rnnlab bench --device cuda:1`` trains on the second visible GPU: suite.json names that one
    (the run's summary says ``cuda:1``), not none."""
    suite, out, _ = _suite_of_fakes(tmp_path, monkeypatch, "ab", {"device": "cuda:1"})
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    run_plan(suite, plan_suite(suite, out, steps=2), out, progress=False, log=lambda m: None)
    runs = json.loads((out / "suite.json").read_text())["runs"]
    assert [(r["dir"], r.get("gpu")) for r in runs] == [("a", None), ("b", "5")]


def test_one_process_rescore_keeps_the_gpu_the_run_trained_on(tmp_path, monkeypatch):
    """A complete run re-scored in this process (``--device cuda:1`` again, other GPUs visible now)
    keeps in suite.json the GPU it trained on, as ``--gpus N`` does: re-scoring trains no step."""
    import rnnlab.bench.runner as runner

    suite, out, calls = _suite_of_fakes(tmp_path, monkeypatch, "ab", {"device": "cuda:1"})
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    run_plan(suite, plan_suite(suite, out, steps=2), out, progress=False, log=lambda m: None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,7")
    monkeypatch.setattr(runner, "run_status", lambda pr: "rescore")
    result = run_plan(suite, plan_suite(suite, out, steps=2), out, progress=False, log=lambda m: None)
    assert result["rescored"] == ["a", "b"] and len(calls) == 4
    runs = json.loads((out / "suite.json").read_text())["runs"]
    assert [(r["dir"], r.get("gpu")) for r in runs] == [("a", None), ("b", "5")]


def test_a_ctrl_c_between_two_runs_stops_the_suite_and_returns_its_result(tmp_path, monkeypatch):
    """A Ctrl-C while the bench looks at the next run (its status, its plan), no run training, stops
    the suite as one during a run does: the result comes back, so the report is still written (it
    escaped ``run_plan`` before and the command ended without one)."""
    import rnnlab.bench.runner as runner

    suite, out, calls = _suite_of_fakes(tmp_path, monkeypatch, "abc", {})
    status = runner.run_status

    def ctrl_c_at_b(pr):
        if pr.label == "b":
            raise KeyboardInterrupt
        return status(pr)

    monkeypatch.setattr(runner, "run_status", ctrl_c_at_b)
    said: list[str] = []
    try:
        res = run_plan(suite, plan_suite(suite, out, steps=2), out, progress=False, log=said.append)
    except KeyboardInterrupt:  # failed here, not as an interrupted pytest
        pytest.fail("the Ctrl-C between two runs escaped run_plan")
    assert res["stopped"] and res["trained"] == ["a"] and len(calls) == 1
    assert said[-1] == f"interrupted between runs; stopping the suite ({runner.RESUME_HINT})"


def test_a_device_this_machine_lacks_is_one_line_before_any_folder(tmp_path, monkeypatch, capsys):
    """``--device cuda`` where CUDA is missing: one line, exit 2, no folder; each run failed to train
    (exit 1, three lines) after suite.json and a report of no runs were written."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "sw"
    assert main(["sweep", "--model", "e1", "--dim", "16", "--depth", "1", "--set", "lr=1e-3", "--steps", "2",
                 "--device", "cuda", "--no-plots", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "rnnlab sweep: error: device 'cuda' requested but CUDA is not available (use --device cpu)"
    assert not out.exists()
    assert main(["bench", "tiny", "--runs", "e1", "--device", "cuda", "--out", str(out), "--plan"]) == 0  # plan: any
    assert not out.exists()


def test_a_sweep_is_named_after_its_folder_however_out_is_spelt(tmp_path, monkeypatch):
    """``--out .`` names the sweep after the folder, as its path does: it was ``sweep-``, so the same
    sweep continued as ``--out DIR`` was another suite, whose suite.json replaced the earlier one's
    points and commands."""
    out = tmp_path / "sw"
    out.mkdir()
    argv = ["sweep", "--model", "e1", "--dim", "16", "--depth", "1", "--steps", "2", "--batch-size", "2",
            "--seq-len", "32", "--precision", "fp32", "--device", "cpu", "--eval-bytes", "2K", "--no-plots",
            "--no-progress"]
    monkeypatch.chdir(out)
    assert main(argv + ["--set", "lr=1e-3", "--out", "."]) == 0
    monkeypatch.chdir(tmp_path)
    assert main(argv + ["--set", "lr=2e-3", "--out", "sw"]) == 0
    doc = json.loads((out / "suite.json").read_text())
    assert doc["suite"] == "sweep-sw" and sorted(doc["sweep"]["axes"]["lr"]) == [0.001, 0.002]
    assert sorted(r["name"] for r in doc["runs"]) == ["lr-1e-3", "lr-2e-3"]


def test_an_interrupted_sweep_says_to_run_the_same_command_again_not_rnnlab_bench(tmp_path, monkeypatch, capsys):
    """A Ctrl-C stopping ``rnnlab sweep`` tells how to resume it: the same command again; it named
    ``rnnlab bench``, which cannot run a sweep."""
    import rnnlab.bench.runner as runner

    def ctrl_c(cfg, progress):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "_train", ctrl_c)
    code = main(["sweep", "--model", "e1", "--dim", "16", "--depth", "1", "--set", "lr=1e-3,2e-3", "--steps", "2",
                 "--no-plots", "--out", str(tmp_path / "sw")])
    err = capsys.readouterr().err
    assert code == 130 and f"[1/2] lr-1e-3: aborted; stopping the suite ({runner.RESUME_HINT})" in err
    assert "rnnlab bench" not in err and "run the same command again" in err


def test_interrupted_suite_resumes_only_missing_runs(tmp_path, monkeypatch):
    import rnnlab.train.trainer as trainer

    suite = load_suite("tiny")
    out = tmp_path / "suite"
    plan = plan_suite(suite, out, steps=3)
    calls: list = []
    monkeypatch.setattr(trainer, "run_training", _fake_trainer(calls, interrupt_at=3))
    said: list[str] = []
    res = run_plan(suite, plan, out, progress=False, log=said.append)
    names = [r.name for r in suite.runs]  # the suite's order; a new model kind's run comes at the end
    assert names[:3] == ["e1", "mamba2", "mingru"]
    assert res["stopped"] and len(calls) == 3 and res["trained"] == names[:3]
    assert any(m.endswith("mingru: interrupted; stopping the suite (run the same command again to "
                          "resume the suite and complete its report)") for m in said), said

    calls.clear()
    monkeypatch.setattr(trainer, "run_training", _fake_trainer(calls))
    res = run_plan(suite, plan_suite(suite, out, steps=3), out, progress=False, log=lambda m: None)
    # the interrupted run is resumed, complete ones are skipped, the rest start fresh
    assert calls == [("mingru", True)] + [(name, False) for name in names[3:]]
    assert res["skipped"] == ["e1", "mamba2"] and not res["stopped"]

    calls.clear()
    run_plan(suite, plan_suite(suite, out, steps=3), out, progress=False, log=lambda m: None)
    assert calls == []  # everything complete
    run_plan(suite, plan_suite(suite, out, steps=5), out, progress=False, log=lambda m: None)
    assert len(calls) == len(suite.runs) and all(resume for _, resume in calls)  # budget grew: extend

    md = write_report(out)["md"].read_text()
    assert len(_table_rows(md)) == len(suite.runs)

    # a run stopped before its first checkpoint has nothing to resume: it starts over
    shutil.rmtree(out / "e16" / "ckpt")
    (out / "e16" / "summary.json").unlink()
    assert run_status(next(pr for pr in plan if pr.label == "e16")) == "restart"
    calls.clear()
    restarted = []
    monkeypatch.setattr(trainer, "run_training", lambda cfg, progress: restarted.append(
        (cfg.run.resume, cfg.run.overwrite)) or _fake_trainer(calls)(cfg, progress))
    run_plan(suite, plan_suite(suite, out, steps=5), out, progress=False, log=lambda m: None)
    assert calls == [("e16", False)] and restarted == [(False, True)]

    # a different model config in the same folder is refused, not silently reused
    with pytest.raises(ValueError, match="model.dim"):
        run_plan(suite, plan_suite(suite, out, steps=5, params="200K"), out, progress=False, log=lambda m: None)


def test_failed_run_does_not_stop_suite(tmp_path, monkeypatch):
    import rnnlab.train.trainer as trainer

    suite = load_suite("tiny")
    calls: list = []
    good = _fake_trainer(calls)

    def flaky(cfg, progress=True):
        if Path(cfg.run.out).name == "mamba2":
            calls.append(("mamba2", cfg.run.resume))
            raise RuntimeError("diverged")
        return good(cfg, progress)

    monkeypatch.setattr(trainer, "run_training", flaky)
    res = run_plan(suite, plan_suite(suite, tmp_path, steps=2), tmp_path, progress=False, log=lambda m: None)
    assert len(calls) == len(suite.runs) and list(res["failed"]) == ["mamba2"]
    md = write_report(tmp_path)["md"].read_text()
    assert "mamba2 (missing" in md or "mamba2 (failed" in md


# ------------------------------------------------------------------------------------ report
def _synthetic_run(root: Path, name: str, loss: float, bpb: float, tok: float, depth: int = 2, model: str = "e1",
                   seed: int = 42, mem: float | None = 2.0, steps: int = 10, params: int = 400_000_000,
                   gpu: str | None = "NVIDIA H100 80GB HBM3", world_size: int = 1):
    d = root / name
    d.mkdir(parents=True)
    s = {"model": model, "params": params, "steps": steps, "tokens": steps * 512, "loss": loss, "val_loss": bpb * 0.693,
         "val_bpb": bpb, "tok_per_s": tok, "tok_per_wall_s": tok / 2, "peak_mem_gib": mem, "time_s": 100.0,
         "warmup_s": 10.0 + depth, "complete": True, "dim": 64,
         "depth": depth, "layer": {}, "seed": seed, "budget": {"steps": steps}, "device": "cuda" if gpu else "cpu",
         "world_size": world_size}
    (d / "summary.json").write_text(json.dumps(s))
    (d / "config.json").write_text(json.dumps({"data": "/data/pile.txt", "val_data": None, "val_fraction": 0.01,
                                               "steps": steps, "batch_size": 16, "seq_len": 512, "optimizer": "adamw",
                                               "lr": 1e-4, "weight_decay": 0.1, "grad_clip": None,
                                               "precision": "bf16", "model": {"model": model, "dim": 64,
                                                                              "depth": depth, "layer": {}}}))
    (d / "env.json").write_text(json.dumps({"device": "cuda" if gpu else "cpu", "gpu": gpu,
                                            "git_sha": "0123456789abcdef", "git_dirty": False}))
    (d / "metrics.jsonl").write_text("".join(
        json.dumps({"step": i, "loss": 3.0 - 0.1 * i, "elapsed_s": i * 0.5, "tok_per_s": tok}) + "\n"
        for i in range(1, 11)))


def test_rows_trained_for_the_same_minutes_are_one_protocol_whatever_their_steps(tmp_path):
    """The equal-time race: rows of one --minutes budget run different steps by design, and its
    report warned on every call that they were "not run under one protocol" (steps run). The
    steps run are compared among step-budget rows only; the budget itself among all."""
    for name, steps in (("fast", 900), ("slow", 300)):
        _synthetic_run(tmp_path, name, 1.6, 2.3, 16000.0, steps=steps)
        _set_config(tmp_path, name, steps=None, minutes=5.0)
    md = write_report(tmp_path, plots=False)["md"].read_text()
    assert "not run under one protocol" not in md
    _synthetic_run(tmp_path, "stepped", 1.6, 2.3, 16000.0, steps=600)
    md = write_report(tmp_path, plots=False)["md"].read_text()
    warning = md[md.index("> **Warning: the rows below were not run under one protocol"):md.index("## Results")]
    assert "> - budget: fast, slow minutes 5; stepped steps 600\n" in warning and "steps run" not in warning


def test_a_warm_up_is_part_of_the_protocol(tmp_path):
    """Rows trained with and without a learning-rate warm-up are not one protocol (the warning names
    it; a config.json from before the key was written trained with none), and the protocol line
    says the warm-up."""
    _synthetic_run(tmp_path, "cold", 1.6, 2.3, 16000.0)  # its config.json has no warmup_steps
    _synthetic_run(tmp_path, "warm", 1.6, 2.3, 16000.0)
    _set_config(tmp_path, "warm", warmup_steps=100)
    md = write_report(tmp_path, plots=False)["md"].read_text()
    assert "> - warmup_steps: cold 0; warm 100\n" in md
    assert "adamw lr 0.0001 after 100 warm-up steps wd 0.1" in md
    _set_config(tmp_path, "warm", warmup_steps=0)
    assert "not run under one protocol" not in write_report(tmp_path, plots=False)["md"].read_text()


def test_a_report_of_several_folders_keeps_each_folders_runs_apart(tmp_path, capsys, monkeypatch):
    """``rnnlab report A B --out C``: one comparison of both folders' runs, each named by its folder
    (runs of the same name in two folders are two rows, not seeds of one); --out is needed; a folder
    given twice is refused; two folders of the same name are told apart by their paths."""
    from rnnlab.cli import main

    for folder, bpb in (("race", 2.3), ("scale", 2.1)):
        _synthetic_run(tmp_path / folder, "mamba2", 1.6, bpb, 16000.0)
        _synthetic_run(tmp_path / folder, "e1", 1.7, bpb + 0.2, 16000.0)
    assert main(["report", str(tmp_path / "race"), str(tmp_path / "scale"), "--out", str(tmp_path / "both"),
                 "--no-plots"]) == 0
    md = (tmp_path / "both" / "report.md").read_text()
    rows = {r[0]: r for r in _table_rows(md)}
    assert set(rows) == {"race/mamba2", "race/e1", "scale/mamba2", "scale/e1"}
    assert "2.3000" in rows["race/mamba2"] and "2.1000" in rows["scale/mamba2"]
    assert md.startswith("# Benchmark report: race + scale\n")
    assert not (tmp_path / "race" / "report.md").exists()
    capsys.readouterr()
    assert main(["report", str(tmp_path / "race"), str(tmp_path / "scale")]) == 2
    assert capsys.readouterr().err == ("rnnlab report: error: a report of several folders needs --out: a folder of "
                                       "its own to write it in\n")
    assert main(["report", str(tmp_path / "race"), str(tmp_path / "race"), "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.endswith("race is given twice: give each folder of runs once\n")
    assert main(["report", str(tmp_path / "race"), str(tmp_path / "race" / "e1"), "--out", str(tmp_path / "x")]) == 2
    assert f"is given twice (it is inside {tmp_path / 'race'})" in capsys.readouterr().err
    for out in ("scale", "scale/mamba2"):  # it would replace that folder's (or run's) own report
        assert main(["report", str(tmp_path / "race"), str(tmp_path / "scale"), "--out", str(tmp_path / out)]) == 2
        assert "one of the folders reported: a report of several folders needs a folder of its own" in \
            capsys.readouterr().err
    assert not (tmp_path / "scale" / "report.md").exists() and not (tmp_path / "x").exists()
    # run folders given themselves keep their names, once; "." is the folder it stands for
    monkeypatch.chdir(tmp_path / "race")
    write_report([Path("."), tmp_path / "scale" / "mamba2"], tmp_path / "runs", plots=False)
    md = (tmp_path / "runs" / "report.md").read_text()
    assert {r[0] for r in _table_rows(md)} == {"race/mamba2", "race/e1", "mamba2"}
    assert md.startswith("# Benchmark report: race + mamba2\n") and "Runs of 2 folders in one comparison" in md
    _synthetic_run(tmp_path / "other" / "race", "mamba2", 1.6, 2.5, 16000.0)
    write_report([tmp_path / "race", tmp_path / "other" / "race"], tmp_path / "named", plots=False)
    names = {r[0] for r in _table_rows((tmp_path / "named" / "report.md").read_text())}
    assert names == {f"{tmp_path / 'race'}/mamba2", f"{tmp_path / 'race'}/e1", f"{tmp_path / 'other' / 'race'}/mamba2"}


def test_token_budgets_that_differ_in_a_low_digit_are_a_protocol_difference(tmp_path):
    """Budgets are compared as the report writes them, whole counts in full: 1,234,567 and 1,234,568
    tokens differ (a 6-digit float format had written both 1.23457e+06 and warned of nothing)."""
    for name, tokens in (("a", 1_234_567), ("b", 1_234_568)):
        _synthetic_run(tmp_path, name, 1.6, 2.3, 16000.0)
        _set_config(tmp_path, name, steps=None, tokens=tokens)
    md = write_report(tmp_path, plots=False)["md"].read_text()
    assert "> - budget: a tokens 1,234,567; b tokens 1,234,568\n" in md


def test_a_sweep_report_does_not_warn_that_its_axes_differ(tmp_path):
    """A sweep over lr is not "not run under one protocol" for its lr; a setting it did not sweep
    that differs (weight decay here) still is. Its command's options are said beside `rnnlab
    train`'s defaults, not as departures from a "suite as shipped" (a sweep has none)."""
    for name, lr, wd in (("lr-1e-4", 1e-4, 0.1), ("lr-1e-3", 1e-3, 0.0)):
        _synthetic_run(tmp_path, name, 1.6, 2.3, 16000.0)
        _set_config(tmp_path, name, lr=lr, weight_decay=wd)
    (tmp_path / "suite.json").write_text(json.dumps({"suite": "sweep-lr", "sweep": {"axes": {"lr": [1e-4, 1e-3]}}, "runs": [
        {"name": n, "seed": None, "dir": n, "point": {"lr": lr}} for n, lr in (("lr-1e-4", 1e-4), ("lr-1e-3", 1e-3))],
        "options": {"steps": 30}}))
    md = write_report(tmp_path, plots=False)["md"].read_text()
    assert "not run under one protocol" in md and "> - weight_decay:" in md and "> - lr:" not in md
    assert "- **Options beside `rnnlab train`'s defaults:** steps = 30\n" in md and "as shipped" not in md


def test_a_planned_run_not_started_is_no_protocol_difference(tmp_path):
    """An interrupted suite's report (its later runs not started) warned that the rows "were not run
    under one protocol", listing every setting as None for the rows never started; those rows have
    no protocol, and a real difference among the others is still said."""
    for name in ("a", "b"):
        _synthetic_run(tmp_path, name, 1.6, 2.3, 16000.0)
    (tmp_path / "suite.json").write_text(json.dumps({"suite": "s", "runs": [
        {"name": n, "seed": None, "dir": n, "point": None} for n in ("a", "b", "c")]}))
    md = write_report(tmp_path, plots=False)["md"].read_text()
    assert "c (missing: 0 of 1 runs complete)" in md and "not run under one protocol" not in md
    _set_config(tmp_path, "b", lr=1e-3)
    md = write_report(tmp_path, plots=False)["md"].read_text()
    assert "> - lr: a 0.0001; b 0.001\n" in md and "None" not in md[:md.index("## Results")]


def test_a_planned_run_not_started_records_no_commit(tmp_path):
    """An interrupted suite's report said "Git commit: none recorded (c); 0123456789ab (a, b)" for a
    run never started; that run has no commit to record, so the line is the runs' one commit."""
    for name in ("a", "b"):
        _synthetic_run(tmp_path, name, 1.6, 2.3, 16000.0)
    (tmp_path / "suite.json").write_text(json.dumps({"suite": "s", "runs": [
        {"name": n, "seed": None, "dir": n, "point": None} for n in ("a", "b", "c")]}))
    md = write_report(tmp_path, plots=False)["md"].read_text()
    assert "c (missing: 0 of 1 runs complete)" in md and "- **Git commit:** 0123456789ab\n" in md


def test_a_sweep_report_lists_its_base_flags_beside_the_defaults(tmp_path):
    """A sweep's "Options beside `rnnlab train`'s defaults" named only its budget and scoring flags
    (``--steps``, ``--eval-bytes``), not the base flags it trained every point with (``--batch-size 4``
    here, suite.json's defaults); a flag at the default's value and the run folder's ``--out`` are none."""
    from rnnlab.bench.report import protocol_overrides

    plan = {"sweep": {"axes": {"lr": [1e-4, 1e-3]}}, "defaults": {"batch_size": 4, "seq_len": 512, "out": "x"},
            "invocations": [{"options": {"steps": 30}}]}
    assert protocol_overrides(plan) == {"batch_size": 4, "steps": 30}
    assert protocol_overrides({k: v for k, v in plan.items() if k != "sweep"}) == {"steps": 30}  # a suite's own


def test_rows_trained_on_other_data_are_not_one_protocol(tmp_path):
    """Rows of one suite folder trained on different corpora (a part run with another --data) were
    set side by side with no warning, only the header's Corpus line listing both: their held-out bpb
    is not on one split. Compared by env.json's fingerprints (the same data under another path is one)."""
    for name in ("a", "b", "c"):
        _synthetic_run(tmp_path, name, 1.6, 2.3, 16000.0)
    for name, prints in (("a", ("11", "22")), ("b", ("11", "22")), ("c", ("33", "44"))):
        env = json.loads((tmp_path / name / "env.json").read_text())
        env["corpus"] = {"train_fingerprint": prints[0], "heldout_fingerprint": prints[1]}
        (tmp_path / name / "env.json").write_text(json.dumps(env))
    md = write_report(tmp_path, plots=False)["md"].read_text()
    assert "> - corpus (training/held-out split fingerprints): a, b 11/22; c 33/44\n" in md
    shutil.rmtree(tmp_path / "c")
    assert "not run under one protocol" not in write_report(tmp_path, plots=False)["md"].read_text()


def test_a_missing_memory_figure_reads_by_the_rows_own_device(tmp_path):
    """In a report of CPU and GPU runs, a CPU row's memory is "n/a (CPU)" (a CPU run measures
    none) and a GPU row without a figure is "-" (missing), whatever the other rows ran on."""
    _synthetic_run(tmp_path, "cpu-run", 1.6, 2.3, 16000.0, mem=None, gpu=None)
    _synthetic_run(tmp_path, "gpu-run", 1.6, 2.3, 16000.0, mem=None)
    rows = {r[0]: r for r in _table_rows(write_report(tmp_path, plots=False)["md"].read_text())}
    assert "n/a (CPU)" in rows["cpu-run"] and "n/a (CPU)" not in rows["gpu-run"] and "-" in rows["gpu-run"]


def test_report_of_runs_without_a_suite_names_each_runs_command(tmp_path):
    """``rnnlab report`` on a folder of runs trained one by one (no suite.json) lists each run's
    own command once, not the first run's for all, and a resumed run's every session's (env.json
    keeps the earlier sessions' commands), not its last alone."""
    for name, argv in (("a", ["rnnlab", "train", "--steps", "3"]), ("b", ["rnnlab", "train", "--steps", "5"]),
                       ("c", ["rnnlab", "train", "--steps", "3"])):
        _synthetic_run(tmp_path, name, 1.6, 2.3, 16000.0)
        env = tmp_path / name / "env.json"
        env.write_text(json.dumps({**json.loads(env.read_text()), "argv": argv}))
    md = write_report(tmp_path, plots=False)["md"].read_text()
    how = "the runs' own, in the runs' order, a resumed run's sessions oldest first"
    assert (f"- **Commands** (2, {how}):\n  - `rnnlab train --steps 3`\n"
            "  - `rnnlab train --steps 5`\n") in md
    env = tmp_path / "b" / "env.json"  # trained, resumed to train on, then scored on another file
    resumed = ["rnnlab", "train", "--resume", "--steps", "9"]
    scored = ["rnnlab", "train", "--resume", "--extra-val-data", "w"]
    env.write_text(json.dumps({**json.loads(env.read_text()), "argv": resumed, "started": "2026-01-02T00:00:00Z",
                               "earlier_sessions": [{"argv": ["rnnlab", "train", "--steps", "5"],
                                                     "started": "2026-01-01T00:00:00Z"}],
                               "scoring_sessions": [{"argv": scored, "started": "2026-01-03T00:00:00Z"}]}))
    md = write_report(tmp_path, plots=False)["md"].read_text()
    assert (f"- **Commands** (4, {how}):\n  - `rnnlab train --steps 3`\n  - `rnnlab train --steps 5`\n"
            "  - `rnnlab train --resume --steps 9`\n  - `rnnlab train --resume --extra-val-data w`\n") in md


def test_report_mfu_is_per_gpu_and_only_for_gpus_of_known_peak(tmp_path):
    """MFU = 6 x params x tok/s over the peak of every GPU the run used (its tok/s counts all its
    processes' tokens); no MFU column when no run was on a GPU of known peak (CPU, unknown GPU)."""
    from rnnlab.bench.mfu import peak_tflops

    assert (peak_tflops("NVIDIA A100-SXM4-80GB"), peak_tflops("NVIDIA H200"), peak_tflops("NVIDIA RTX 6000 Ada"),
            peak_tflops(None)) == (312.0, 989.0, None, None)
    from rnnlab.bench.mfu import benchmark_peak

    assert (benchmark_peak("NVIDIA H200"), benchmark_peak("NVIDIA H200", 700.0), benchmark_peak("NVIDIA RTX 6000 Ada"),
            benchmark_peak("NVIDIA RTX 6000 Ada", 364.0)) == ((989.0, False), (700.0, False), (989.0, True), (364.0, False))
    _synthetic_run(tmp_path / "g", "one", 1.5, 2.0, 30000.0, gpu="NVIDIA A100-SXM4-80GB")
    _synthetic_run(tmp_path / "g", "two", 1.5, 2.0, 30000.0, gpu="NVIDIA A100-SXM4-80GB", world_size=2)
    rows = {r[0]: r for r in _table_rows(write_report(tmp_path / "g", plots=False)["md"].read_text())}
    assert (rows["one"][5], rows["two"][5]) == ("23.1%", "11.5%")  # 6 * 400M * 30K / 312T, then / 2
    for root, gpu in (("cpu", None), ("ada", "NVIDIA RTX 6000 Ada")):
        _synthetic_run(tmp_path / root, "r", 1.5, 2.0, 30000.0, gpu=gpu)
        assert "| MFU |" not in write_report(tmp_path / root, plots=False)["md"].read_text()


def test_mfu_peak_by_board_not_chip_alone():
    """The PCIe and NVL boards of H100 / H200 have their own (lower) dense bf16 peaks, not the SXM
    board's 989; an RTX A1000 is no A100 and a MIG slice has no whole GPU's peak; an unknown GPU's
    assumed peak is said in the benchmarks' printed note."""
    from rnnlab.bench.mfu import peak_note, peak_tflops

    names = ("NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe", "NVIDIA H100 NVL", "NVIDIA H200 NVL", "NVIDIA GH200 480GB",
             "NVIDIA H20", "NVIDIA RTX A1000 6GB Laptop GPU", "NVIDIA A100-PCIE-40GB", "NVIDIA H100 80GB HBM3 MIG 3g.40gb")
    assert [peak_tflops(n) for n in names] == [989.0, 756.0, 835.0, 835.0, 989.0, None, None, 312.0, None]
    assert "ASSUMED" in peak_note(dict(device="NVIDIA L4", peak_tflops=989.0, peak_assumed=True))
    assert "ASSUMED" not in peak_note(dict(device="NVIDIA H200", peak_tflops=989.0, peak_assumed=False))


def test_report_mfu_only_for_a_row_trained_at_one_peak(tmp_path):
    """A row whose seeds, or a run's resumed sessions, trained on GPUs of different peaks (an H100
    PCIe and an SXM board) has no MFU: its tok/s mixes their rates; GPUs of one peak keep it. A run
    without a steady tok/s has none either; one whose summary has no world_size ran on one GPU."""
    _synthetic_run(tmp_path, "mixed-s1", 1.5, 2.0, 30000.0, seed=1)
    _synthetic_run(tmp_path, "mixed-s2", 1.5, 2.0, 30000.0, seed=2, gpu="NVIDIA H100 PCIe")
    _synthetic_run(tmp_path, "same-s1", 1.5, 2.0, 30000.0, seed=1)
    _synthetic_run(tmp_path, "same-s2", 1.5, 2.0, 30000.0, seed=2, gpu="NVIDIA H200")
    _synthetic_run(tmp_path, "resumed", 1.5, 2.0, 30000.0)
    env = tmp_path / "resumed" / "env.json"
    env.write_text(json.dumps({**json.loads(env.read_text()), "earlier_sessions": [{"gpu": "NVIDIA H100 NVL"}]}))
    _synthetic_run(tmp_path, "warm-up-only", 1.5, 2.0, 30000.0)  # only warm-up steps: no steady tok/s
    _set_summary(tmp_path, "warm-up-only", tok_per_s=None)
    _synthetic_run(tmp_path, "old", 1.5, 2.0, 30000.0)  # a summary from before world_size: one GPU
    summary = tmp_path / "old" / "summary.json"
    summary.write_text(json.dumps({k: v for k, v in json.loads(summary.read_text()).items() if k != "world_size"}))
    rows = {r["name"]: r for r in aggregate(collect(tmp_path)["records"])}
    assert (rows["mixed"]["mfu"], rows["resumed"]["mfu"], rows["warm-up-only"]["mfu"]) == (None, None, None)
    assert rows["same"]["mfu"] == pytest.approx(6 * 400e6 * 30000 / 989e12)
    assert rows["old"]["mfu"] == pytest.approx(6 * 400e6 * 30000 / 989e12)


def test_report_mfu_only_for_a_row_trained_on_one_number_of_gpus(tmp_path):
    """Seeds of a row trained on 1 and on 2 GPUs (at the same per-GPU rate: 30K and 60K tok/s) average
    tok/s that no one world_size divides: the row's MFU was their mean over the first run's GPUs
    (10.9%, 1.5x the 7.3% each ran at); now none, and the row is said to mix its runs' setups."""
    from rnnlab.bench.report import mixed_row_warning

    _synthetic_run(tmp_path, "e1-s1", 1.5, 2.0, 30000.0, seed=1)
    _synthetic_run(tmp_path, "e1-s2", 1.5, 2.0, 60000.0, seed=2, world_size=2)
    _synthetic_run(tmp_path, "two-s1", 1.5, 2.0, 60000.0, seed=1, world_size=2)
    _synthetic_run(tmp_path, "two-s2", 1.5, 2.0, 60000.0, seed=2, world_size=2)
    rows = {r["name"]: r for r in aggregate(collect(tmp_path)["records"])}
    assert rows["e1"]["mfu"] is None
    assert rows["two"]["mfu"] == pytest.approx(6 * 400e6 * 30000 / 989e12)
    assert mixed_row_warning([rows["two"]]) == []
    assert "e1 (processes 1/2)" in mixed_row_warning([rows["e1"]])[-1]


def test_report_mfu_only_for_a_run_trained_on_one_number_of_gpus(tmp_path):
    """A checkpoint of 2 ranks resumes on 1: the summary's world_size is the last session's (1), its
    tok/s all sessions', 2 GPUs' share included, so that MFU over 1 GPU overstated the run's; env.json
    keeps each session's world_size, and such a run has no MFU. A session from before env.json
    recorded it counts as the summary's."""
    for name, earlier in (("resumed", [{"gpu": "NVIDIA H100 80GB HBM3", "world_size": 2}]),
                          ("same", [{"gpu": "NVIDIA H100 80GB HBM3", "world_size": 1}]),
                          ("old", [{"gpu": "NVIDIA H100 80GB HBM3"}])):
        _synthetic_run(tmp_path, name, 1.5, 2.0, 30000.0)
        env = tmp_path / name / "env.json"
        env.write_text(json.dumps({**json.loads(env.read_text()), "world_size": 1, "earlier_sessions": earlier}))
    rows = {r["name"]: r for r in aggregate(collect(tmp_path)["records"])}
    assert rows["resumed"]["mfu"] is None
    assert rows["same"]["mfu"] == rows["old"]["mfu"] == pytest.approx(6 * 400e6 * 30000 / 989e12)


def test_a_folder_named_like_a_seed_is_a_seed_only_when_its_config_says_so(tmp_path):
    """Without suite.json, ``e1-s1`` and ``e1-s2`` (config seeds 1 and 2) are seeds of one row
    ``e1``; ``e16-s4`` trained with seed 42 (race-400m's E16 of state expansion 4) is the row
    ``e16-s4``, seed 42, not seed 4 of a row ``e16``."""
    from rnnlab.bench.collect import run_seed

    for name, seed in (("e1-s1", 1), ("e1-s2", 2), ("e16-s4", 42)):
        _synthetic_run(tmp_path, name, 1.6, 2.3, 16000.0, seed=seed)
        config = tmp_path / name / "config.json"
        config.write_text(json.dumps({**json.loads(config.read_text()), "seed": seed}))
    data = collect(tmp_path)
    assert [(r["name"], run_seed(r)) for r in data["records"]] == [("e1", 1), ("e1", 2), ("e16-s4", 42)]
    assert [(r["name"], r["seeds"]) for r in aggregate(data["records"])] == [("e1", [1, 2]), ("e16-s4", [42])]


def test_a_run_started_without_a_summary_yet_is_partial_not_missing(tmp_path):
    """A run still training (or killed before it wrote summary.json: its config.json and metrics
    are there) is a partial row, as "Not complete" lists it; "missing" is a planned run never started."""
    _synthetic_run(tmp_path, "a", 1.5, 2.0, 30000.0)
    _synthetic_run(tmp_path, "b", 1.6, 2.1, 30000.0)
    (tmp_path / "b" / "summary.json").unlink()
    (tmp_path / "suite.json").write_text(json.dumps({"suite": "s", "runs": [
        {"name": n, "seed": None, "dir": n, "point": None} for n in ("a", "b", "c")]}))
    md = write_report(tmp_path, plots=False)["md"].read_text()
    assert [r[0] for r in _table_rows(md)] == ["a", "b (partial: 0 of 1 runs complete)",
                                                "c (missing: 0 of 1 runs complete)"]
    assert "- `b`: incomplete" in md and "- `c`: missing" in md


def test_a_run_without_a_summary_is_no_steps_run_difference(tmp_path):
    """A run killed before its summary.json (or with the file deleted) has no steps run to compare:
    the report warned "steps run: a 10; b None" though both rows ran one protocol; a real
    difference in steps among the rows that have them is still said."""
    for name in ("a", "b"):
        _synthetic_run(tmp_path, name, 1.6, 2.3, 16000.0)
    (tmp_path / "b" / "summary.json").unlink()
    md = write_report(tmp_path, plots=False)["md"].read_text()
    assert "not run under one protocol" not in md and "None" not in md
    _synthetic_run(tmp_path, "c", 1.6, 2.3, 16000.0, steps=20)
    md = write_report(tmp_path, plots=False)["md"].read_text()
    assert "> - steps run: a 10; c 20\n" in md


@pytest.mark.parametrize("damaged", ['{"model": ', "[1, 2]"])
def test_report_reads_a_damaged_summary_as_none(tmp_path, damaged):
    """A run whose summary.json is cut short or holds JSON that is not an object (a hand-edited
    file) is a row without results, not a traceback, also when its config.json's model is not
    an object."""
    _synthetic_run(tmp_path, "a", 1.5, 2.0, 30000.0)
    _synthetic_run(tmp_path, "b", 1.6, 2.1, 30000.0)
    (tmp_path / "b" / "summary.json").write_text(damaged)
    rows = _table_rows(write_report(tmp_path, plots=False)["md"].read_text())
    assert [r[:3] for r in rows] == [["a", "400M", "1.5000"], ["b (partial: 0 of 1 runs complete)", "-", "-"]]
    (tmp_path / "b" / "config.json").write_text(json.dumps({"model": 3, "steps": 10}))
    assert _table_rows(write_report(tmp_path, plots=False)["md"].read_text()) == rows


def test_a_run_folder_alone_is_a_report_of_that_run(tmp_path):
    """``rnnlab report RUN`` on one run's own folder (no run folders inside it) reads that run, its
    name and seed from the folder's name as in a folder of runs."""
    _synthetic_run(tmp_path, "e1-s7", 1.5, 2.0, 30000.0, seed=7)
    [record] = collect(tmp_path / "e1-s7")["records"]
    assert (record["name"], record["seed"], record["dir"], record["status"]) == ("e1", 7, "e1-s7", "complete")


def test_a_rows_layer_options_are_its_summarys_else_its_configs(tmp_path):
    """A row's mixer options (the Configs table) are summary.json's, else (a summary from before
    it recorded them) config.json's model's."""
    _synthetic_run(tmp_path, "a", 1.5, 2.0, 30000.0)
    _set_summary(tmp_path, "a", layer={"expansion": 2.0})
    _synthetic_run(tmp_path, "b", 1.5, 2.0, 30000.0)
    summary = tmp_path / "b" / "summary.json"
    summary.write_text(json.dumps({k: v for k, v in json.loads(summary.read_text()).items() if k != "layer"}))
    config = tmp_path / "b" / "config.json"
    cfg = json.loads(config.read_text())
    config.write_text(json.dumps({**cfg, "model": {**cfg["model"], "layer": {"heads": 4}}}))
    rows = {r["name"]: r["layer"] for r in aggregate(collect(tmp_path)["records"])}
    assert rows == {"a": {"expansion": 2.0}, "b": {"heads": 4}}


def test_report_skips_an_export_folder_beside_the_runs(tmp_path):
    """A folder of runs may also hold an ``rnnlab export`` output (a Hugging Face config.json):
    the report leaves it out instead of reading it as a run; alone it is no run folder."""
    _synthetic_run(tmp_path / "g", "r", 1.5, 2.0, 30000.0)
    export = tmp_path / "g" / "r-hf"
    export.mkdir()
    (export / "config.json").write_text(json.dumps({"model_type": "rnnlab", "model": "e1", "dim": 64}))
    assert [r[0] for r in _table_rows(write_report(tmp_path / "g", plots=False)["md"].read_text())] == ["r"]
    with pytest.raises(FileNotFoundError, match="no run folders in"):
        collect(export)


def test_report_on_a_folder_of_suites_names_its_folders_of_runs(tmp_path):
    """``rnnlab report runs/bench`` (a folder of suites, each a folder of runs) said only "no run
    folders in runs/bench"; it names the folders that hold runs and the command for the first."""
    for suite in ("tiny", "sweep-lr"):
        _synthetic_run(tmp_path / "bench" / suite, "r", 1.5, 2.0, 30000.0)
    (tmp_path / "bench" / "notes").mkdir()
    root = tmp_path / "bench"
    with pytest.raises(FileNotFoundError) as e:
        collect(root)
    assert str(e.value) == (f"no run folders in {root}; the folders of runs in it: sweep-lr, tiny "
                            f"(rnnlab report {root / 'sweep-lr'})")
    with pytest.raises(FileNotFoundError, match=r"^no run folders in \S+notes$"):
        collect(root / "notes")


def test_report_skips_the_logs_folder_of_a_suite_whose_run_is_named_like_a_run_file(tmp_path):
    """``--gpus N`` writes each run's config to ``OUT/logs/<run>.json``: a run named ``config`` (or
    ``summary``) leaves a logs/config.json, which made logs/ read as a run, a "logs (partial)" row."""
    for name in ("config", "summary"):
        _synthetic_run(tmp_path, name, 1.5, 2.0, 30000.0)
        (tmp_path / "logs").mkdir(exist_ok=True)
        (tmp_path / "logs" / f"{name}.json").write_text((tmp_path / name / "config.json").read_text())
    (tmp_path / "suite.json").write_text(json.dumps({"suite": "s", "runs": [
        {"name": n, "seed": None, "dir": n, "point": None} for n in ("config", "summary")]}))
    assert [r[0] for r in _table_rows(write_report(tmp_path, plots=False)["md"].read_text())] == ["config", "summary"]


def test_report_commit_is_the_runs_else_this_code(monkeypatch):
    """The commit the runs recorded (env.json), marked dirty as recorded, each with its runs when
    they differ or some recorded none; where none did, the commit of the code writing the report
    (RNNLAB_GIT_COMMIT where the tree is a copy), labelled as such."""
    monkeypatch.setenv("RNNLAB_GIT_COMMIT", "fedcba98" * 5)
    dirty = {"git_sha": "0123456789abcdef", "git_dirty": True}
    runs = [{"dir": "a", "env": {"git_sha": None}}, {"dir": "b", "env": dirty}, {"dir": "c", "env": dirty}]
    assert describe_git(runs[1:]) == "0123456789ab (dirty)"
    assert describe_git(runs) == "none recorded (a); 0123456789ab (dirty) (b, c)"
    assert describe_git(runs[:1]) == "fedcba98fedc (the code writing this report; the runs recorded none)"
    runs.append({"dir": "d", "env": {"git_sha": "abcdef0"}})
    assert describe_git(runs[1:]) == "0123456789ab (dirty) (b, c); abcdef0 (d)"
    runs.append({"dir": "e", "env": {"git_sha": "abcdef0-dirty", "git_dirty": None}})  # as older runs recorded it
    assert describe_git(runs[3:]) == "abcdef0 (d); abcdef0 (dirty) (e)"
    monkeypatch.setenv("RNNLAB_GIT_COMMIT", "not-a-commit")
    assert describe_git(runs[:1]) == "- (not a git checkout)"


def test_report_corpus_names_each_runs_training_and_held_out_data():
    """The header's corpus: a held-out file beside the training file, else the share of the
    training file held out at its end (the config's default 1% where config.json has none), else
    the bundled sample; each text once, in the runs' order; a run without config.json adds none."""
    from rnnlab.bench.report import describe_corpus

    configs = ({"data": "/d/a.txt", "val_data": "/d/v.txt"}, {"data": "/d/a.txt", "val_fraction": 0.05},
               {"data": "/d/b.txt"}, {}, {"data": None, "val_data": "/d/v.txt"}, {"data": "/d/a.txt", "val_data": "/d/v.txt"})
    assert describe_corpus([{"config": c} for c in configs]) == (
        "train /d/a.txt; held-out /d/v.txt; /d/a.txt (held-out: last 0.05 of the file); "
        "/d/b.txt (held-out: last 0.01 of the file); bundled sample (rnnlab/data/sample); held-out /d/v.txt")
    assert describe_corpus([{"config": {}}]) == "-"


def test_report_mean_std_over_seeds(tmp_path):
    for seed, loss in zip((1, 2, 3), (1.4, 1.5, 1.6)):
        _synthetic_run(tmp_path, f"mamba2-s{seed}", loss, 2.0 + seed / 100, 20000.0 + 1000 * seed, model="mamba2",
                       depth=22, seed=seed)
    _synthetic_run(tmp_path, "e1-d6-s1", 1.7, 2.4, 25000.0, depth=6)
    _synthetic_run(tmp_path, "e1-d26-s1", 1.6, 2.3, 15000.0, depth=26)
    paths = write_report(tmp_path)
    md = paths["md"].read_text()
    rows = {r[0]: r for r in _table_rows(md)}
    assert set(rows) == {"mamba2", "e1-d6", "e1-d26"}
    assert rows["mamba2"][2] == "1.5000 ± 0.1000"  # sample std of 1.4, 1.5, 1.6
    assert rows["mamba2"][3] == "2.0200 ± 0.0100"
    assert rows["mamba2"][4] == "22.0K ± 1.00K"
    assert rows["mamba2"][5] == "5.3%"  # MFU: 6 x 400M params x 22.0K tok/s / the H100's 989 TFLOP/s
    assert rows["mamba2"][6] == "11.0K ± 500"  # tokens / whole wall clock
    assert rows["mamba2"][7] == "2.0 ± 0.0 GiB" and rows["e1-d6"][7] == "2.0 GiB"
    assert rows["e1-d6"][2] == "1.7000" and rows["e1-d6"][1] == "400M"
    configs = {r[0]: r for r in _table_rows(md, "| Model | Config")}
    assert (configs["mamba2"][5], configs["e1-d6"][5]) == ("32.0 s ± 0.0 s", "16.0 s")  # warm-up: 10 s + depth
    for r in rows.values():
        assert all(c and c != "-" for c in r), r
    assert "NVIDIA H100 80GB HBM3" in md and "0123456789ab" in md and "/data/pile.txt" in md
    from rnnlab.train.config import WARMUP_STEPS

    assert f"Tok/s (steady) = training tokens per second of training-step time, the first {WARMUP_STEPS} steps" in md
    doc = json.loads(paths["json"].read_text())
    m = next(r for r in doc["rows"] if r["name"] == "mamba2")
    assert m["loss_n"] == 3 and abs(m["loss_std"] - 0.1) < 1e-9 and m["seeds"] == [1, 2, 3]
    assert m["mfu"] == pytest.approx(6 * 400e6 * 22000 / 989e12)
    names = {p.name for p in paths["plots"]}
    assert {"loss_and_bpb.png", "loss_vs_time.png", "tok_per_s.png", "loss_vs_depth.png"} <= names
    for p in paths["plots"]:
        assert p.stat().st_size > 1000


def test_each_main_table_column_holds_the_metric_its_header_names(tmp_path):
    """Read by header, not position: MFU sits right after the steady tok/s it is computed from,
    Time is the training time (not the warm-up within it), and a row of 2 complete seeds and an
    unfinished one shows plain mean ± std (the unfinished run is not one the mean left out)."""
    from rnnlab.bench.report import main_table

    for seed, loss, bpb, tok, time_s in ((1, 1.4, 2.0, 20000.0, 100.0), (2, 1.6, 2.2, 22000.0, 120.0)):
        _synthetic_run(tmp_path, f"a-s{seed}", loss, bpb, tok, seed=seed)
        _set_summary(tmp_path, f"a-s{seed}", time_s=time_s)
    _synthetic_run(tmp_path, "a-s3", 3.0, 4.0, 1000.0, seed=3)
    _set_summary(tmp_path, "a-s3", complete=False)
    header, _, cells = main_table(aggregate(collect(tmp_path)["records"])).splitlines()
    row = dict(zip((h.strip() for h in header.strip("|").split("|")), (c.strip() for c in cells.strip("|").split("|"))))
    sd = 0.1 * 2**0.5  # sample std of two values 0.2 apart
    assert row == {"Model": "a (partial: 2 of 3 runs complete)", "Params": "400M", "Loss": f"1.5000 ± {sd:.4f}",
                   "held-out bpb": f"2.1000 ± {sd:.4f}", "Tok/s (steady)": "21.0K ± 1.41K",
                   "MFU": f"{100 * 6 * 400e6 * 21000 / 989e12:.1f}%", "Tok/s (wall)": "10.5K ± 707",
                   "Memory": "2.0 ± 0.0 GiB", "Time": "110 s ± 14.1 s"}

def test_departures_compare_with_the_suite_as_the_config_reads_it():
    """A time-matched suite run with ``--steps 1000`` (the config's default steps) departs from it;
    ``--curve-eval-bytes 256K`` on a suite that writes ``"256K"`` does not."""
    from rnnlab.bench.report import protocol_overrides

    plan = {"defaults": load_suite("race-400m").defaults}
    for options, departs in (({"steps": 1000}, {"steps": 1000}), ({"curve_eval_bytes": 256_000, "minutes": 5.0}, {})):
        assert protocol_overrides({**plan, "invocations": [{"options": options}]}) == departs


def test_params_that_every_row_targets_already_do_not_depart(tmp_path):
    """``--params N`` on rows whose suite entries target N already plans the same runs: no departure
    (it was one whenever given). Another N, or a row that sets its dim, departs; with ``--runs`` only
    the rows it ran count."""
    from rnnlab.bench.report import protocol_overrides
    from rnnlab.bench.suite import write_plan

    suite = parse_suite({"name": "t", "runs": [
        {"name": "a", "model": "e1", "depth": 2, "target_params": "100K"},
        {"name": "b", "model": "e1", "depth": 3, "target_params": "100K"},
        {"name": "c", "model": "e1", "depth": 2, "target_params": "200K"},
        {"name": "fixed", "model": "e1", "depth": 2, "dim": 32}]})
    for params, runs, departs in (("100K", "a,b", False), ("100000", "a,b", False), ("200K", "a,b", True),
                                  ("100K", "a,c", True), ("100K", "a,fixed", True)):
        out = tmp_path / f"{params}-{runs}"
        options = {"params": params, "runs": runs}
        write_plan(suite, plan_suite(suite, out, **options), out, "rnnlab bench t", options)
        plan = json.loads((out / "suite.json").read_text())
        assert protocol_overrides(plan) == ({"params": params} if departs else {}), (params, runs)


def test_report_reference_rows_only_where_protocol_and_params_match(tmp_path):
    _synthetic_run(tmp_path, "e1-d26", 1.60, 2.3, 16000.0, depth=26)
    _synthetic_run(tmp_path, "e1-d6", 1.70, 2.4, 25000.0, depth=6, params=258_000)
    _synthetic_run(tmp_path, "mamba2-d22", 1.50, 2.2, 24000.0, depth=22, model="mamba2", steps=20)
    ref = {"params": 403279360, "loss": 1.5875, "tok_per_s": 15800, "mem_gb": 9.7, "time_s": 778}
    _synthetic_run(tmp_path, "e1-d24", 1.62, 2.3, 16000.0, depth=24, params=int(ref["params"] * 1.04))
    _synthetic_run(tmp_path, "e1-d20", 1.64, 2.3, 16000.0, depth=20, params=int(ref["params"] * 1.07))
    plan = {"suite": "seed-400m-sf", "defaults": {"steps": 10, "batch_size": 16, "optimizer": "adamw",
                                                  "eval_bytes": 0},
            "options": {"steps": 20, "device": "cuda", "eval_bytes": 0},  # eval_bytes as the suite's: no departure
            "runs": [{"name": n, "seed": None, "dir": n, "point": None}
                     for n in ("e1-d26", "e1-d6", "mamba2-d22", "e1-d24", "e1-d20")],
            "reference": {"source": "reference Table A", "runs": {
                "e1-d26": ref, "e1-d6": ref, "mamba2-d22": dict(ref, params=402064492), "e1-d24": ref, "e1-d20": ref}}}
    (tmp_path / "suite.json").write_text(json.dumps(plan))
    md = write_report(tmp_path, plots=False)["md"].read_text()
    rows = _table_rows(md, "| Model | Params (reference / ours)")
    assert [r[0] for r in rows] == ["e1-d26", "e1-d24"]  # run as the reference was, params within 5%
    # each column in its own unit: ours 2.0 GiB = 2.15 GB, times in seconds
    assert rows[0] == ["e1-d26", "403M / 400M", "1.5875 / 1.6000", "+0.0125", "15.8K / 16.0K", "9.7 / 2.1",
                       "778 s / 100 s"]
    [ours, _] = json.loads((tmp_path / "report.json").read_text())["reference"]  # report.json: the same numbers
    assert ours["ours"]["mem_gb"] == pytest.approx(2.0 * 2**30 / 1e9) and ours["loss_delta"] == pytest.approx(0.0125)
    assert "- e1-d6: 258K params (reference 403M)" in md and "- e1-d20: 432M params (reference 403M)" in md
    assert "- mamba2-d22: steps 20 (reference 10)" in md
    assert "**Departs from the suite as shipped:** steps = 20\n" in md
    plan["defaults"].pop("eval_bytes")  # a suite that leaves it to the config's default (0 = all)
    (tmp_path / "suite.json").write_text(json.dumps(plan))
    assert "**Departs from the suite as shipped:** steps = 20\n" in write_report(tmp_path, plots=False)["md"].read_text()
    warning = md[md.index("> **Warning"):md.index("## Results")]
    assert "steps run: e1-d26, e1-d6, e1-d24, e1-d20 10; mamba2-d22 20" in warning and "parameter counts" not in warning
    # the suite sets widths, not a parameter budget: differing counts are a note, not a warning
    assert ("> Note: the parameter counts differ by design (the suite sets each model's width and depth, not a "
            "parameter budget): e1-d26") in md


def test_a_reference_row_of_several_seeds_shows_ours_as_mean_and_std(tmp_path):
    """Reference vs ours showed a row of several seeds by its mean alone, where the results table
    shows mean ± std: ours is the results table's cell (memory in GB)."""
    for seed, loss, tok in ((1, 1.5, 15000.0), (2, 1.7, 17000.0)):
        _synthetic_run(tmp_path, f"e1-s{seed}", loss, 2.3, tok, seed=seed, mem=2.0 + seed)
    ref = {"params": 400_000_000, "loss": 1.55, "tok_per_s": 15800, "mem_gb": 9.7, "time_s": 778}
    (tmp_path / "suite.json").write_text(json.dumps({
        "suite": "s", "defaults": {"steps": 10}, "reference": {"source": "r", "runs": {"e1": ref}},
        "runs": [{"name": "e1", "seed": s, "dir": f"e1-s{s}", "point": None} for s in (1, 2)]}))
    [row] = _table_rows(write_report(tmp_path, plots=False)["md"].read_text(), "| Model | Params (reference / ours)")
    assert row == ["e1", "400M / 400M", "1.5500 / 1.6000 ± 0.1414", "+0.0500", "15.8K / 16.0K ± 1.41K",
                   "9.7 / 3.8 ± 0.8", "778 s / 100 s ± 0.0 s"]


def test_a_reference_row_must_be_complete_and_within_5_percent_of_the_references_params():
    """``reference_mismatch``: a row compares while complete and its own parameter count is within
    5% of the reference's, either way (4.9% fewer compares, 5.1% fewer does not)."""
    from rnnlab.bench.report import reference_mismatch

    ref = {"params": 1_000_000, "loss": 1.5}
    row = {"status": "complete", "protocol": {"steps": 10}, "params": 951_000}
    assert reference_mismatch(row, ref, {"steps": 10}) is None
    assert reference_mismatch({**row, "params": 1_049_000}, ref, {"steps": 10}) is None
    assert reference_mismatch({**row, "params": 949_000}, ref, {"steps": 10}) == "949K params (reference 1.00M)"
    assert reference_mismatch({**row, "status": "partial"}, ref, {"steps": 10}) == "run partial"


def test_a_reference_protocol_is_read_as_the_config_reads_it():
    """A suite's ``tokens = "50M"`` (or ``betas = [0.9, 0.95]``, ``grad_clip = 0``) is the run's
    50000000 (config.json's list, None): the row is not left out as differing from its reference."""
    from rnnlab.bench.report import reference_mismatch

    row = {"status": "complete", "params": 1_000_000,
           "protocol": {"steps": None, "tokens": 50_000_000, "betas": [0.9, 0.95], "grad_clip": None}}
    ref = {"params": 1_000_000}
    assert reference_mismatch(row, ref, {"tokens": "50M", "betas": [0.9, 0.95], "grad_clip": 0}) is None
    assert reference_mismatch(row, ref, {"tokens": "40M", "betas": [0.9, 0.99]}) == \
        "tokens 50000000 (reference 40000000); betas [0.9, 0.95] (reference [0.9, 0.99])"


def test_report_flags_schedulefree_average_worse_than_train_point(tmp_path):
    _synthetic_run(tmp_path, "good", 1.6, 2.30, 16000.0)
    _synthetic_run(tmp_path, "bad", 1.6, 3.10, 16000.0)
    _synthetic_run(tmp_path, "better", 1.6, 2.20, 16000.0)
    for name, y in (("good", 2.29), ("bad", 2.40), ("better", 2.40)):
        path = tmp_path / name / "summary.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "val_bpb_train_point": y}))
    md = write_report(tmp_path, plots=False)["md"].read_text()
    rows = {r[0]: r for r in _table_rows(md)}
    assert rows["bad"][3:5] == ["3.1000", "2.4000"] and rows["good"][3:5] == ["2.3000", "2.2900"]
    warning = md[md.index("averaged weights"):md.index("## Results")]
    assert "bad (+0.70 bpb)" in warning and "good" not in warning and "better" not in warning
    assert "lost to rounding" in warning  # the runs are pure bf16

    config = tmp_path / "bad" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "precision": "fp32"}))
    md = write_report(tmp_path, plots=False)["md"].read_text()
    warning = md[md.index("averaged weights"):md.index("## Results")]
    assert "bad (+0.70 bpb)" in warning and "rounding" not in warning  # no bf16 to blame


@pytest.mark.parametrize("x_minus_y, flagged", [(0.04, False), (0.055, True), (-0.5, False)])
def test_schedulefree_average_is_flagged_beyond_0_05_bpb_worse_than_its_train_point(x_minus_y, flagged):
    """The x-vs-y warning threshold is X_VS_Y_TOL = 0.05 bpb, one way: an average x a little
    worse (rounding noise between two evaluations) or better than y is no warning."""
    from rnnlab.bench.report import averaging_warning

    rows = [{"name": "r", "val_bpb": 2.0 + x_minus_y, "val_bpb_train_point": 2.0, "protocol": {"precision": "fp32"}}]
    assert bool(averaging_warning(rows)) == flagged

@pytest.mark.parametrize("x_minus_y, shown", [(0.0504, "+0.0504"), (0.05004, "+0.05004"), (0.053, "+0.053"),
                                              (0.7, "+0.70")])
def test_a_flagged_schedulefree_gap_reads_above_its_threshold(x_minus_y, shown):
    """A gap just over X_VS_Y_TOL = 0.05 bpb was printed "+0.05 bpb", which reads as not over it: it
    takes the digits that show it over (two decimals at least)."""
    from rnnlab.bench.report import averaging_warning

    rows = [{"name": "r", "val_bpb": 2.0 + x_minus_y, "val_bpb_train_point": 2.0, "protocol": {"precision": "fp32"}}]
    assert f"r ({shown} bpb)" in averaging_warning(rows)[1]


def test_report_shows_the_extra_held_out_file_beside_the_split(tmp_path):
    """Rows scored on an --extra-val-data file get its bpb at x and y, named after the file, in
    columns after the held-out split's; a row without it shows "-", a row scored on it in only some
    of its seeds says in how many."""
    w = "/d/wikitext2.txt"
    for name, extra in (("a", {"data": w, "val_bpb": 2.5, "val_bpb_train_point": 2.25}),
                        ("b", {"data": w, "val_bpb": 3.5, "val_bpb_train_point": 3.0}), ("c", None),
                        ("d-s1", None), ("d-s2", {"data": w, "val_bpb": 3.0, "val_bpb_train_point": 2.0}),
                        ("d-s3", {"data": w, "val_bpb": 3.2, "val_bpb_train_point": 2.0})):
        _synthetic_run(tmp_path, name, 1.6, 2.3, 16000.0)
        path = tmp_path / name / "summary.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "val_bpb_train_point": 2.2, "extra_val": extra}))
    md = write_report(tmp_path, plots=False)["md"].read_text()
    header = next(line for line in md.splitlines() if line.startswith("| Model | Params | Loss"))
    assert header.split(" | ")[3:7] == ["held-out bpb", "held-out bpb (train point)", "wikitext2.txt bpb",
                                        "wikitext2.txt bpb (train point)"]
    rows = {r[0]: r[3:7] for r in _table_rows(md)}
    assert rows == {"a": ["2.3000", "2.2000", "2.5000", "2.2500"], "b": ["2.3000", "2.2000", "3.5000", "3.0000"],
                    "c": ["2.3000", "2.2000", "-", "-"],
                    "d": ["2.3000 ± 0.0000", "2.2000 ± 0.0000", "3.1000 ± 0.1414 (2 of 3 runs)",
                          "2.0000 ± 0.0000 (2 of 3 runs)"]}
    assert "wikitext2.txt bpb = that file (--extra-val-data)" in md
    assert "> - extra held-out file scored: a, b, d wikitext2.txt; c none" in md  # a row's "-" explained
    _set_summary(tmp_path, "c", extra_val={"data": "/d/lambada.txt", "val_bpb": 2.0, "val_bpb_train_point": 1.9})
    md = write_report(tmp_path, plots=False)["md"].read_text()  # two files: the columns name neither, the legend both
    header = next(line for line in md.splitlines() if line.startswith("| Model | Params | Loss"))
    assert header.split(" | ")[5:7] == ["extra held-out file bpb", "extra held-out file bpb (train point)"]
    assert "lambada.txt / wikitext2.txt bpb = that file (--extra-val-data)" in md


def test_report_row_averages_its_complete_seeds_only(tmp_path):
    """A row with some seeds complete averages those; its unfinished seeds are only counted. A row
    with none complete averages its unfinished runs and says that none of them is complete, and
    that it failed when one of them did (a failed run's summary.json holds its numbers and error),
    though another was only stopped."""
    for seed, loss in ((1, 1.5), (2, 1.7)):
        _synthetic_run(tmp_path, f"e1-s{seed}", loss, 2.3, 16000.0, seed=seed)
    _synthetic_run(tmp_path, "e1-s3", 3.0, 4.0, 16000.0, seed=3)
    summary = tmp_path / "e1-s3" / "summary.json"
    summary.write_text(json.dumps({**json.loads(summary.read_text()), "complete": False}))
    [row] = aggregate(collect(tmp_path)["records"])
    assert (row["status"], row["n_complete"], row["n_runs"], row["seeds"]) == ("partial", 2, 3, [1, 2])
    assert row["loss"] == pytest.approx(1.6) and row["val_bpb"] == pytest.approx(2.3)
    md = write_report(tmp_path, plots=False)["md"].read_text()
    assert "| e1 (partial: 2 of 3 runs complete) |" in md and "- `e1-s3`: incomplete, 10 steps done" in md
    _synthetic_run(tmp_path, "m", 2.5, 3.0, 16000.0)
    _set_summary(tmp_path, "m", complete=False)
    for seed in (1, 2):  # seed 1 failed (diverged), still writing its numbers; seed 2 was stopped
        _synthetic_run(tmp_path, f"f-s{seed}", 4.5, 5.0, 16000.0, seed=seed)
        _set_summary(tmp_path, f"f-s{seed}", complete=False, **({"error": "RuntimeError: loss is nan"} if seed == 1 else {}))
    md = write_report(tmp_path, plots=False)["md"].read_text()
    assert "| m (partial: 0 of 1 runs complete) | 400M | 2.5000 | 3.0000 |" in md
    assert "| f (failed: 0 of 2 runs complete, 1 failed) | 400M | 4.5000 ± 0.0000 | 5.0000 ± 0.0000 |" in md
    assert "- `f-s1`: failed (RuntimeError: loss is nan), 10 steps done" in md
    # an interrupted run whose last evaluation is of an earlier step says so (its bpb beside a later loss)
    _set_summary(tmp_path, "m", val_step=4)
    md = write_report(tmp_path, plots=False)["md"].read_text()
    assert "| m (partial: 0 of 1 runs complete; held-out bpb of step 4) | 400M | 2.5000 | 3.0000 |" in md
    _set_summary(tmp_path, "m", val_step=10)  # of its last step: nothing to say
    assert "| m (partial: 0 of 1 runs complete) |" in write_report(tmp_path, plots=False)["md"].read_text()
    # a row of complete and failed seeds says how many failed ("partial" alone read as stopped)
    _set_summary(tmp_path, "e1-s3", error="RuntimeError: loss is nan")
    assert "| e1 (partial: 2 of 3 runs complete, 1 failed) |" in write_report(tmp_path, plots=False)["md"].read_text()


def test_a_rows_steps_and_settings_are_its_complete_runs_even_when_an_unfinished_one_comes_first(tmp_path):
    """The row's steps, tokens and protocol come from a run it averages: seed 1 stopped at step 4
    is listed first but is not the row's; nor are its held-out bytes, step times, setup (no mixed
    row) or extra held-out file."""
    from rnnlab.bench.report import mixed_row_warning

    _synthetic_run(tmp_path, "e1-s1", 3.0, 4.0, 16000.0, seed=1, steps=4)
    _set_summary(tmp_path, "e1-s1", complete=False, extra_val={"data": "/d/w.txt", "val_bpb": 9.0})
    (tmp_path / "e1-s1" / "eval.jsonl").write_text(json.dumps({"step": 4, "val_bpb": 4.0, "bytes": 500}) + "\n")
    (tmp_path / "e1-s1" / "metrics.jsonl").write_text("".join(  # steps enough for a spread of step times
        json.dumps({"step": i, "loss": 2.0, "elapsed_s": 0.1 * i, "warmup_s": 0.0}) + "\n" for i in range(1, 41)))
    for seed in (2, 3):
        _synthetic_run(tmp_path, f"e1-s{seed}", 1.6, 2.3, 16000.0, seed=seed)
        (tmp_path / f"e1-s{seed}" / "eval.jsonl").write_text(json.dumps({"step": 10, "val_bpb": 2.3, "bytes": 6000}) + "\n")
    [row] = aggregate(collect(tmp_path)["records"])
    assert (row["steps"], row["tokens"], row["protocol"]["steps"], row["seeds"]) == (10, 5120, 10, [2, 3])
    assert (row["val_bytes"], row["step_ms"], row["extra_val_bpb"], row["extra_data"]) == (6000, None, None, None)
    assert [s["steps"] for s in row["run_setups"]] == [10, 10] and mixed_row_warning([row]) == []


def test_a_minutes_rows_steps_and_tokens_are_the_mean_of_its_seeds(tmp_path):
    """Seeds of a --minutes budget stop at different steps: the row shows their mean (rounded),
    not the first seed's count."""
    for seed, steps in ((1, 10), (2, 13), (3, 15)):
        _synthetic_run(tmp_path, f"e1-s{seed}", 1.6, 2.3, 16000.0, seed=seed, steps=steps)
    [row] = aggregate(collect(tmp_path)["records"])
    assert (row["steps"], row["tokens"]) == (13, round(38 / 3 * 512))


@pytest.mark.parametrize("ratio,flagged", [(1.08, False), (1.12, True)])
def test_report_warns_when_parameter_counts_spread_beyond_the_tolerance(tmp_path, ratio, flagged):
    """Rows compare while every parameter count is within 5% of a common middle: the largest at
    most 1 + 2 * 5% times the smallest."""
    _synthetic_run(tmp_path, "small", 1.6, 2.3, 16000.0)
    _synthetic_run(tmp_path, "large", 1.6, 2.3, 16000.0, params=int(400_000_000 * ratio))
    md = write_report(tmp_path, plots=False)["md"].read_text()
    assert ("> - parameter counts: large" in md) == flagged and ("Warning" in md) == flagged


def test_differing_param_counts_under_a_parameter_budget_are_a_warning(tmp_path):
    """A suite whose rows set ``target_params`` means them to have one size: counts more than 10%
    apart are a protocol warning there, not the by-design note of a suite that sets widths."""
    _synthetic_run(tmp_path, "small", 1.6, 2.3, 16000.0)
    _synthetic_run(tmp_path, "large", 1.6, 2.3, 16000.0, params=int(400_000_000 * 1.12))
    (tmp_path / "suite.json").write_text(json.dumps({"suite": "s", "runs": [
        {"name": n, "seed": None, "dir": n, "point": None, "target_params": 400_000_000} for n in ("small", "large")]}))
    md = write_report(tmp_path, plots=False)["md"].read_text()
    assert "> - parameter counts: small 400M; large 448M" in md and "differ by design" not in md


def test_parameter_counts_exactly_10_percent_apart_still_compare():
    """``differing_param_counts``: a largest count at most 1 + 2 * 5% times the smallest compares
    (1.00M beside 1.10M, exactly 10% apart); one parameter more lists every row's count."""
    from rnnlab.bench.report import differing_param_counts

    rows = [{"name": "a", "params": 1_000_000}, {"name": "b", "params": 1_100_000}, {"name": "c", "params": None}]
    assert differing_param_counts(rows) is None
    rows[1]["params"] += 1
    assert differing_param_counts(rows) == "a 1.00M; b 1.10M; c -"


def test_sweep_table_cells_are_each_metrics_mean_and_std():
    """The sweep table: a row's point on each axis ("-" off it), then params, loss, held-out bpb
    and tok/s, each its own mean ± std, saying over how many runs where some seeds lack it; where a
    point used Schedule-Free, its held-out bpb at the training point y too (what the sweep plot
    draws: the table showed x alone, a different number)."""
    from rnnlab.bench.report import sweep_table

    def row(point, params, n=2, **m):
        r = {"point": point, "params": params, "status": "complete", "n_used": 2}
        for k in ("loss", "val_bpb", "val_bpb_train_point", "tok_per_s"):
            r |= {k: m.get(k), k + "_std": m.get(k + "_std"), k + "_n": n if m.get(k) is not None else 0}
        return r

    rows = [row({"lr": 0.001}, 57_900, loss=1.5, loss_std=0.1, val_bpb=2.0, val_bpb_std=0.02, tok_per_s=20000.0,
                tok_per_s_std=1000.0),
            row(None, None, n=1, val_bpb=2.25, tok_per_s=999.0)]
    assert sweep_table(rows, ["lr"]).splitlines() == [
        "| lr | Params | Loss | held-out bpb | Tok/s |", "|---|---|---|---|---|",
        "| 0.001 | 57.9K | 1.5000 ± 0.1000 | 2.0000 ± 0.0200 | 20.0K ± 1.00K |",
        "| - | - | - | 2.2500 (1 of 2 runs) | 999 (1 of 2 runs) |"]
    rows[0] |= {"val_bpb_train_point": 1.9, "val_bpb_train_point_n": 2}
    assert sweep_table(rows, ["lr"]).splitlines()[::2] == [
        "| lr | Params | Loss | held-out bpb | held-out bpb (train point) | Tok/s |",
        "| 0.001 | 57.9K | 1.5000 ± 0.1000 | 2.0000 ± 0.0200 | 1.9000 | 20.0K ± 1.00K |"]


def test_a_sweep_point_not_complete_is_marked_in_the_sweep_table_and_hollow_in_its_plot(tmp_path):
    """A failed or partial point's numbers were set in the sweep table and its plot as a finished
    point's: the table marks it as the results table does, the plot draws it hollow and says so."""
    from rnnlab.bench import plots as P
    from rnnlab.bench.report import sweep_table

    points = {"lr-1e-4": 1e-4, "lr-3e-4": 3e-4, "lr-1e-3": 1e-3}
    for name in points:
        _synthetic_run(tmp_path, name, 1.6, 2.3, 16000.0)
    _set_summary(tmp_path, "lr-3e-4", complete=False, error="RuntimeError: loss is nan")
    (tmp_path / "suite.json").write_text(json.dumps({
        "suite": "sweep-lr", "sweep": {"axes": {"lr": list(points.values())}},
        "runs": [{"name": n, "seed": None, "dir": n, "point": {"lr": v}} for n, v in points.items()]}))
    rows = aggregate(collect(tmp_path)["records"])
    assert [r[0] for r in _table_rows(sweep_table(rows, ["lr"]), "| lr |")] == [
        "0.0001", "0.0003 (failed: 0 of 1 runs complete)", "0.001"]
    fig = P.sweep_figure(rows, ["lr"])
    for ax in fig.axes:
        (line, _, _), = ax.containers
        hollow = ax.get_lines()[-1]  # drawn over the line
        assert line.get_markevery() == [0, 2] and (list(hollow.get_xdata()), hollow.get_markerfacecolor()) == (
            [3e-4], "none")
    assert fig._suptitle.get_text() == "sweep over lr\n(hollow: a point not complete, failed or partial)"
    P.pyplot().close(fig)


def test_held_out_bytes_are_the_final_evaluations_not_the_curves(tmp_path):
    """A run's held-out bytes (the legend, the protocol warnings) are its last evaluation's, the
    final one that the table's bpb comes from, not those of its curve evaluations before it; a run
    without evaluations (c) scored none, which is no difference in the bytes scored."""
    _synthetic_run(tmp_path, "c", 1.6, 2.3, 16000.0)
    for name, curve in (("a", True), ("b", False)):
        _synthetic_run(tmp_path, name, 1.6, 2.3, 16000.0)
        records = ([{"step": 5, "val_bpb": 2.6, "bytes": 992}] if curve else []) + [
            {"step": 10, "val_bpb": 2.3, "bytes": 6000, "final": True}]
        (tmp_path / name / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    md = write_report(tmp_path, plots=False)["md"].read_text()
    assert "(bytes scored: 6,000)" in md and "held-out bytes scored" not in md


def test_report_without_differences_has_no_warning(tmp_path):
    for seed in (1, 2):
        _synthetic_run(tmp_path, f"e1-s{seed}", 1.6, 2.3, 16000.0, seed=seed)
    md = write_report(tmp_path, plots=False)["md"].read_text()
    assert "Warning" not in md and "Departs" not in md


def test_step_times_leave_out_warm_up_steps_evaluations_and_gaps():
    """A run's steady step times come from consecutive steps' elapsed_s, without the process's
    warm-up steps (their time is added to warmup_s: the first steps, and those after a resume),
    evaluation records, or a step missing between two records."""
    from rnnlab.bench.collect import step_times_ms

    def rec(step, elapsed, warmup):
        return {"step": step, "loss": 1.0, "elapsed_s": elapsed, "warmup_s": warmup}

    metrics = [rec(1, 5.0, 5.0), rec(2, 5.5, 5.5), rec(3, 6.0, 6.0),  # warm-up: compilation
               rec(4, 6.1, 6.0), {"step": 4, "val_bpb": 2.0}, rec(5, 6.3, 6.0),
               rec(6, 8.3, 8.0), rec(7, 8.8, 8.5), rec(8, 9.3, 9.0),  # resumed at step 5: warm-up again
               rec(9, 9.4, 9.0), rec(11, 9.6, 9.0), rec(12, 9.75, 9.0)]  # step 10 missing
    assert step_times_ms(metrics) == pytest.approx([100.0, 200.0, 100.0, 150.0])
    # records from before warmup_s: only the run's first WARMUP_STEPS steps are known warm-ups
    old = [{"step": s, "loss": 1.0, "elapsed_s": e} for s, e in ((1, 5.0), (2, 5.5), (3, 6.0), (4, 6.1), (5, 6.3))]
    assert step_times_ms(old) == pytest.approx([100.0, 200.0])


def test_a_rows_step_spread_is_its_unsteadiest_runs():
    """Seeds that are each steady at different speeds (other GPUs) do not make a row unsteady: the
    row takes its widest run's spread, not the pooled steps'."""
    from rnnlab.bench.collect import unsteadiest

    fast, slow = {"median": 100.0, "p10": 99.0, "p90": 101.0}, {"median": 200.0, "p10": 199.0, "p90": 202.0}
    assert unsteadiest([slow, None, fast]) is fast and unsteadiest([None]) is None


def test_step_spread_needs_min_steps_step_times():
    from rnnlab.bench.collect import MIN_TIMED_STEPS, spread

    ms = [100.0 + i for i in range(MIN_TIMED_STEPS)]
    assert spread(ms[:-1]) is None
    assert spread(ms) == {"median": 109.5, "p10": 101.9, "p90": 117.1}
    assert spread([5.0, 7.0], min_steps=2) == {"median": 6.0, "p10": 5.2, "p90": 6.8}
    assert spread([5.0, 7.34], min_steps=2) == {"median": 6.17, "p10": 5.23, "p90": 7.11}  # to 0.01 ms
    assert spread([5.0], min_steps=0) is None  # one time is no spread


@pytest.mark.parametrize("p10, p90, flagged", [(100.0, 100.0, False), (100.0, 114.9, False), (100.0, 115.1, True),
                                                (90.0, 110.0, True), (20.0, 23.0, False)])
def test_unsteady_steps_are_flagged_beyond_15_percent(p10, p90, flagged):
    """The 90th over the 10th percentile step time, not over the median (110 / 90 is flagged
    though 110 is within 15% of the median 100); exactly 15% (23 / 20) is not beyond it. The
    warning names the row's 10th-90th percentile times and its median."""
    from rnnlab.bench.report import jitter_warning

    rows = [{"name": "a", "gpu_name": "NVIDIA H200", "step_ms": {"median": 100.0, "p10": p10, "p90": p90}}]
    assert bool(jitter_warning(rows)) == flagged
    if flagged:
        assert f"a {p10:.0f}–{p90:.0f} ms (median 100)" in jitter_warning(rows)[1]


@pytest.mark.parametrize("slow_every, gpu, flagged", [(0, "NVIDIA H200", False), (3, "NVIDIA H200", True),
                                                      (3, None, False)])
def test_report_warns_of_unsteady_step_times(tmp_path, slow_every, gpu, flagged):
    """A GPU row whose steady steps spread widely (every third step 1.5x slower) is named with its
    10th-90th percentile step times; steady rows and CPU rows (their steps vary with the machine's
    load) are not; report.json has each row's spread."""
    _synthetic_run(tmp_path, "steady", 1.6, 2.3, 16000.0)
    _synthetic_run(tmp_path, "jumpy", 1.6, 2.3, 16000.0, gpu=gpu)
    elapsed, lines = 0.0, []
    for i in range(1, 41):
        elapsed += 0.15 if slow_every and i % slow_every == 0 else 0.1
        lines.append(json.dumps({"step": i, "loss": 2.0, "elapsed_s": elapsed, "warmup_s": 0.0}) + "\n")
    (tmp_path / "jumpy" / "metrics.jsonl").write_text("".join(lines))
    paths = write_report(tmp_path, plots=False)
    md = paths["md"].read_text()
    assert ("unsteady times" in md) == flagged
    if flagged:
        warning = md[md.index("unsteady times"):].splitlines()[0]
        assert "jumpy 100–150 ms (median 100)" in warning and "steady" not in warning.split(":")[1]
    rows = {r["name"]: r["step_ms"] for r in json.loads(paths["json"].read_text())["rows"]}
    assert rows["steady"] is None  # 9 steps: too few for a spread
    assert rows["jumpy"] == {"median": 100.0, "p10": 100.0, "p90": 150.0 if slow_every else 100.0}


def test_report_warns_when_a_cpu_run_started_on_a_busy_machine(tmp_path):
    """A CPU run is busy when its start's 1-minute load average is above its core count: a load
    of 2.0 on 2 cores (every core taken, none contended) is not."""
    for name, load in (("quiet-run", 0.4), ("busy-run", 3.2), ("full-run", 2.0)):
        _synthetic_run(tmp_path, name, 1.6, 2.3, 16000.0)
        (tmp_path / name / "env.json").write_text(json.dumps({"device": "cpu", "load_avg": [load, 1.0, 1.0],
                                                             "cpu_count": 2}))
    paths = write_report(tmp_path, plots=False)
    md = paths["md"].read_text()
    assert "- **Machine load at start (CPU runs):** 1-minute load average 0.4–3.2 on 2 cores" in md
    warning = md[md.index("> **Warning: the machine was busy"):md.index("## Results")]
    assert "when 1 CPU run started" in warning and "busy-run 3.2" in warning and "quiet-run" not in warning
    assert "full-run" not in warning
    assert json.loads(paths["json"].read_text())["machine_load"]["busy"] == ["busy-run"]


def test_plots_integer_steps_bar_values_and_bpb_vs_training_time(tmp_path):
    """Step axes tick whole steps; every tok/s bar is labelled with its value; the held-out panel
    puts each evaluation at the training time of its step in metrics.jsonl, without the warm-up
    steps' time (compilation), as the --minutes budget counts it."""
    from rnnlab.bench import plots as P

    run = tmp_path / "e1"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(
        json.dumps({"step": i, "loss": 3.0 - 0.1 * i, "elapsed_s": 2.0 * i + 30, "warmup_s": 30.0}) + "\n"
        for i in (1, 2, 3)))
    (run / "eval.jsonl").write_text(json.dumps({"step": 2, "val_bpb": 2.5}) + "\n"
                                    + json.dumps({"step": 3, "val_bpb": 2.4}) + "\n")
    curves = P.run_curves(collect(tmp_path)["records"])
    assert curves["e1"]["bpb"] == [(4.0, 2.5), (6.0, 2.4)]
    left, right = P.loss_and_bpb_figure(curves, P.colors_for(["e1"])).axes
    ticks = [t for t in left.get_xticks() if 1 <= t <= 3]
    assert ticks and all(float(t).is_integer() for t in ticks)
    (line,) = right.get_lines()
    assert list(line.get_xdata()) == [4.0, 6.0] and list(line.get_ydata()) == [2.5, 2.4]
    assert right.get_xlabel() == "training time, compilation excluded (s)"
    assert right.get_ylabel() == "held-out bits per byte"  # these records name no byte count
    assert P.held_out_label({"a": {"bytes": {100}}, "b": {"bytes": {200}}}) == "held-out bits per byte (bytes scored vary)"
    (loss,) = P.loss_vs_time_figure(curves, P.colors_for(["e1"])).axes[0].get_lines()
    assert list(loss.get_xdata()) == [2.0, 4.0, 6.0]
    # Schedule-Free: solid at the training point y, dashed at the average x
    (run / "eval.jsonl").write_text(json.dumps({"step": 2, "val_bpb": 2.5, "val_bpb_train_point": 2.2}) + "\n"
                                    + json.dumps({"step": 3, "val_bpb": 2.4, "val_bpb_train_point": 2.1}) + "\n")
    curves = P.run_curves(collect(tmp_path)["records"])
    right = P.loss_and_bpb_figure(curves, P.colors_for(["e1"])).axes[1]
    assert [(ln.get_linestyle(), list(ln.get_ydata())) for ln in right.get_lines()] == [
        ("-", [2.2, 2.1]), ("--", [2.5, 2.4])]
    assert "filled at y, hollow at x" in right.get_title()
    assert [ln.get_markerfacecolor() for ln in right.get_lines()][1] == "none"
    rows = [{"name": "e1", "tok_per_s": 40213.0, "tok_per_s_std": None},
            {"name": "mamba2", "tok_per_s": 1.26e6, "tok_per_s_std": 1e4}]
    bars = P.tok_bar_figure(rows, P.colors_for(["e1", "mamba2"])).axes[0]
    assert [t.get_text() for t in bars.texts] == ["40.2k", "1.3M"]
    # the report's table has a steady and a wall-clock tok/s: the bars say which they are
    assert bars.get_ylabel() == "training tokens / s (steady)"


def test_a_diverged_run_does_not_flatten_the_other_loss_curves(tmp_path):
    """A run whose loss blew up (1e12 before it turned NaN) is drawn, but the loss panels' y range
    stops at 1.1 x the highest first loss and their titles say so; without such a run, nothing is
    cut and the titles say nothing."""
    from rnnlab.bench import plots as P

    losses = {"good": [5.5 - 0.1 * i for i in range(20)], "bad": [5.5] * 10 + [10.0 ** i for i in range(3, 13)]}
    for name, ys in losses.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.jsonl").write_text("".join(
            json.dumps({"step": i + 1, "loss": y, "elapsed_s": float(i), "warmup_s": 0.0}) + "\n"
            for i, y in enumerate(ys)))
    curves = P.run_curves(collect(tmp_path)["records"])
    colors = P.colors_for(sorted(losses))
    for ax in (P.loss_and_bpb_figure(curves, colors).axes[0], P.loss_vs_time_figure(curves, colors).axes[0]):
        assert len(ax.get_lines()) == 2 and ax.get_ylim()[1] < 1.1 * 5.5 + 0.3
        assert ax.get_title().endswith("(losses above 1.1 x the highest first loss not shown)")
    (tmp_path / "bad" / "metrics.jsonl").unlink()
    curves = P.run_curves(collect(tmp_path)["records"])
    left = P.loss_and_bpb_figure(curves, colors).axes[0]
    assert left.get_title() == "training loss vs step" and left.get_ylim()[0] < 3.6 < 5.0 < left.get_ylim()[1]


def test_bpb_vs_bytes_puts_each_evaluation_at_the_bytes_its_step_had_read(tmp_path):
    """bpb_vs_bytes.png: runs of different batch sizes side by side at equal data: each held-out
    point at the training bytes read by its step (metrics.jsonl's tokens), in millions; at y solid
    for Schedule-Free, x dashed; written by make_plots."""
    from rnnlab.bench import plots as P

    for name, per_step in (("b8", 4096), ("b16", 8192)):
        run = tmp_path / name
        run.mkdir()
        (run / "metrics.jsonl").write_text("".join(
            json.dumps({"step": i, "loss": 3.0, "tokens": i * per_step, "elapsed_s": float(i), "warmup_s": 0.0}) + "\n"
            for i in (250, 500)))
        (run / "eval.jsonl").write_text("".join(
            json.dumps({"step": i, "val_bpb": 2.2 - i / 1000, "val_bpb_train_point": 2.0 - i / 1000}) + "\n"
            for i in (250, 500)))
    curves = P.run_curves(collect(tmp_path)["records"])
    assert curves["b16"]["bpb_y_bytes"] == [(250 * 8192, 1.75), (500 * 8192, 1.5)]
    ax = P.bpb_vs_bytes_figure(curves, P.colors_for(["b8", "b16"])).axes[0]
    lines = {(ln.get_label(), ln.get_linestyle()): list(ln.get_xdata()) for ln in ax.get_lines()}
    assert lines[("b8", "-")] == [1.024, 2.048] and lines[("b16", "-")] == [2.048, 4.096]
    assert ax.get_xlabel() == "training bytes read (millions)" and "filled at y" in ax.get_title()
    assert ax.get_ylim()[1] > 1.95 and "not shown" not in ax.get_title()  # x within 1.25x of y's top: on the axis
    for name in ("b8", "b16"):  # x broken by rounding, far above y: left above the axis, said so
        (tmp_path / name / "eval.jsonl").write_text(json.dumps({"step": 500, "val_bpb": 9.0, "val_bpb_train_point": 1.5}) + "\n")
    ax = P.bpb_vs_bytes_figure(P.run_curves(collect(tmp_path)["records"]), P.colors_for(["b8", "b16"])).axes[0]
    assert ax.get_ylim()[1] < 2.0 and ax.get_title().endswith("\n(points at x above the axis not shown)")
    rows = [{"name": n, "tok_per_s": None, "loss": None} for n in ("b8", "b16")]
    written = P.make_plots(tmp_path, collect(tmp_path)["records"], rows)
    assert tmp_path / "bpb_vs_bytes.png" in written


def _two_batch_runs(tmp_path, b8_steps, b16_steps):
    """Runs b8 (4096 bytes a step) and b16 (8192) evaluated at the given steps, their curves at y
    on one line, 3 - bytes / 4.096M."""
    for name, per_step, steps in (("b8", 4096, b8_steps), ("b16", 8192, b16_steps)):
        run = tmp_path / name
        run.mkdir()
        (run / "metrics.jsonl").write_text("".join(
            json.dumps({"step": i, "loss": 3.0, "tokens": i * per_step}) + "\n" for i in steps))
        (run / "eval.jsonl").write_text("".join(
            json.dumps({"step": i, "val_bpb": 9.0, "val_bpb_train_point": 3.0 - i * per_step / 4096e3,
                        "bytes": 1000}) + "\n" for i in steps))


def test_report_skips_run_records_that_are_no_json_object(tmp_path):
    """A metrics.jsonl or eval.jsonl line of valid JSON that is no object (``5``, a hand edit or a
    damaged file) is skipped as an unreadable line is, not a traceback of the report."""
    _two_batch_runs(tmp_path, (1, 2, 3, 4), (1, 2))
    for name in ("metrics.jsonl", "eval.jsonl"):
        with open(tmp_path / "b8" / name, "a") as f:
            f.write('5\n"x"\nnull\n[1]\n')
    records = collect(tmp_path)["records"]
    assert [len(r["metrics"]) for r in records] == [2, 4] and [len(r["evals"]) for r in records] == [2, 4]
    assert "## Held-out bpb at equal training bytes" in write_report(tmp_path, plots=False)["md"].read_text()


def test_report_reads_runs_of_different_batches_at_equal_training_bytes(tmp_path):
    """report.md's equal-bytes table: when the runs read different bytes per step, each run's
    held-out curve (at y) at a quarter, half and all of the bytes every run reached, linearly
    between its evaluations; "-" before a run's first evaluation; no table when every run reads
    the same bytes per step."""
    from rnnlab.bench.report import equal_bytes_lines, interpolate

    assert interpolate([(0.0, 2.0), (10.0, 1.0)], 2.5) == 1.75 and interpolate([(1.0, 2.0), (2.0, 1.0)], 0.5) is None
    _two_batch_runs(tmp_path, (250, 500, 750, 1000), (250, 500))
    lines = equal_bytes_lines(collect(tmp_path)["records"])
    assert lines[0] == "## Held-out bpb at equal training bytes" and "scores 1,000 held-out bytes" in lines[2]
    table = lines[4].splitlines()
    assert table[0] == "| Run | 1.02M bytes | 2.05M bytes | 4.10M bytes |"
    # bytes reached in common: 500 * 8192 = 4,096,000; b8 at y = 3 - bytes / 4.096M, b16 the same line
    assert sorted(table[2:]) == ["| b16 | - | 2.5000 | 2.0000 |", "| b8 | 2.7500 | 2.5000 | 2.0000 |"]
    for name in ("b8", "b16"):  # the same bytes per step: no table
        (tmp_path / name / "metrics.jsonl").write_text("".join(
            json.dumps({"step": i, "loss": 3.0, "tokens": i * 4096}) + "\n" for i in (250, 500)))
    assert equal_bytes_lines(collect(tmp_path)["records"]) == []


def test_equal_bytes_table_is_for_different_bytes_per_step_not_different_lengths(tmp_path):
    """Two runs of the same batch (4096 bytes a step) that stopped at different steps (a --minutes
    budget's seeds) read the same bytes per step: tokens / step is 4096 for both, no table."""
    from rnnlab.bench.report import equal_bytes_lines

    _two_batch_runs(tmp_path, (250, 500, 750), (100, 200))
    (tmp_path / "b16" / "metrics.jsonl").write_text("".join(
        json.dumps({"step": i, "loss": 3.0, "tokens": i * 4096}) + "\n" for i in (100, 200)))
    assert equal_bytes_lines(collect(tmp_path)["records"]) == []

def test_interpolate_reads_a_single_point_only_at_its_own_x():
    from rnnlab.bench.report import interpolate

    assert interpolate([(5.0, 2.0)], 5.0) == 2.0 and interpolate([(5.0, 2.0)], 4.0) is None
    assert interpolate([(5.0, 2.0)], 6.0) is None
    assert interpolate([(1.0, 3.0), (2.0, 1.0)], 1.0) == 3.0 and interpolate([(1.0, 3.0), (2.0, 1.0)], 2.0) == 1.0


def test_equal_bytes_marks_stop_at_the_bytes_every_run_reached(tmp_path):
    """b8 reaches 3.07M training bytes, b16 4.10M: the marks are a quarter, half and all of the
    3.07M both reached (not of the 4.10M b8 never read), "-" before a run's first evaluation."""
    from rnnlab.bench.report import equal_bytes_lines

    _two_batch_runs(tmp_path, (250, 500, 750), (250, 500))
    table = equal_bytes_lines(collect(tmp_path)["records"])[4].splitlines()
    assert table[0] == "| Run | 0.77M bytes | 1.54M bytes | 3.07M bytes |"
    assert sorted(table[2:]) == ["| b16 | - | - | 2.2500 |", "| b8 | - | 2.6250 | 2.2500 |"]
    # b16 evaluated once: no curve to read between evaluations, and b8's alone compares with nothing
    (tmp_path / "one-eval").mkdir()
    _two_batch_runs(tmp_path / "one-eval", (250, 500, 750), (250,))
    assert equal_bytes_lines(collect(tmp_path / "one-eval")["records"]) == []
    # the runs' evaluations scored different held-out bytes: the text names each run's counts, no one count
    ev = tmp_path / "b16" / "eval.jsonl"
    ev.write_text(ev.read_text().replace('"bytes": 1000', '"bytes": 2000'))
    text = equal_bytes_lines(collect(tmp_path)["records"])[2]
    assert "linearly between its evaluations. Not every point scores the same held-out bytes (" in text
    assert "b8 1,000" in text and "b16 2,000" in text and "scores 1,000" not in text
    ev.write_text(ev.read_text().replace('"bytes": 2000}\n', '"bytes": 1000}\n', 1))  # b16's first point back
    assert "b16 1,000 and 2,000" in equal_bytes_lines(collect(tmp_path)["records"])[2]
    # only a run left out of the table (one evaluation, no curve) scored other bytes: the table's one count
    ev.write_text(ev.read_text().replace('"bytes": 2000', '"bytes": 1000'))
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "metrics.jsonl").write_text(json.dumps({"step": 9, "loss": 3.0, "tokens": 9 * 2048}) + "\n")
    (tmp_path / "one" / "eval.jsonl").write_text(json.dumps({"step": 9, "val_bpb": 2.0, "bytes": 5000}) + "\n")
    text = equal_bytes_lines(collect(tmp_path)["records"])[2]
    assert text.endswith("(each point scores 1,000 held-out bytes).") and "Not every" not in text, text


def test_equal_bytes_table_at_the_bytes_asked_for(tmp_path, capsys):
    """``rnnlab report --at-bytes``: every run's curve read at those bytes, "-" where it does not
    reach them (before its first evaluation, past its last), also when the runs read the same
    bytes per step (no table by default then); the text says the marks were asked for."""
    from rnnlab.bench.report import equal_bytes_lines
    from rnnlab.cli import main

    _two_batch_runs(tmp_path, (250, 500, 750), (250, 500))  # b8 to 3.07M bytes, b16 2.05M to 4.10M
    lines = equal_bytes_lines(collect(tmp_path)["records"], marks=[1_024_000, 3_072_000, 4_096_000, 5_000_000])
    assert "those asked for (`--at-bytes`" in lines[2]
    table = lines[4].splitlines()
    assert table[0] == "| Run | 1.024M bytes | 3.072M bytes | 4.096M bytes | 5M bytes |"  # as asked, exact
    assert sorted(table[2:]) == ["| b16 | - | 2.2500 | 2.0000 | - |", "| b8 | 2.7500 | 2.2500 | - | - |"]
    small = equal_bytes_lines(collect(tmp_path)["records"], marks=[3_000, 5_000, 100_000_000])[4].splitlines()[0]
    assert small == "| Run | 3K bytes | 5K bytes | 100M bytes |"  # not 3.00K, 100.00M
    capsys.readouterr()
    assert main(["report", str(tmp_path), "--no-plots", "--at-bytes", "3072K,1.024M,3.072M"]) == 0
    md = (tmp_path / "report.md").read_text()
    assert "| Run | 1.024M bytes | 3.072M bytes |\n" in md and "| b8 | 2.7500 | 2.2500 |" in md
    out = capsys.readouterr().out  # asked for: on the terminal too, after the results table
    assert "\n## Held-out bpb at equal training bytes\n" in out and "| b8 | 2.7500 | 2.2500 |" in out
    for name in ("b8", "b16"):  # the same bytes per step: a table only when asked for
        (tmp_path / name / "metrics.jsonl").write_text("".join(
            json.dumps({"step": i, "loss": 3.0, "tokens": i * 4096}) + "\n" for i in (250, 500)))
    records = collect(tmp_path)["records"]
    assert equal_bytes_lines(records) == []
    assert equal_bytes_lines(records, marks=[1_024_000])[2].startswith("Here each run's learning curve")


def test_equal_bytes_table_names_the_runs_it_leaves_out_for_want_of_a_curve(tmp_path):
    """``rnnlab report --at-bytes``: a run evaluated once (no curve to read) was dropped from the table
    without a word, as if it had not run; a line under the table names it and says why."""
    from rnnlab.bench.report import equal_bytes_lines

    _two_batch_runs(tmp_path, (250, 500, 750), (250,))
    lines = equal_bytes_lines(collect(tmp_path)["records"], marks=[1_024_000, 2_048_000])
    assert lines[4].splitlines()[2:] == ["| b8 | 2.7500 | 2.5000 |"]
    assert lines[5:] == ["", "Left out: b16 (fewer than two held-out evaluations, no curve to read; train with "
                             "`--eval-every N`).", ""]
    assert main(["report", str(tmp_path), "--no-plots", "--at-bytes", "1.024M"]) == 0
    assert "\n\nLeft out: b16 (fewer than two held-out evaluations" in (tmp_path / "report.md").read_text()


def test_equal_bytes_table_asked_for_without_curves_says_why_it_is_empty(tmp_path, capsys):
    """``rnnlab report --at-bytes`` over runs evaluated once each (no --eval-every): no curve to
    read, and report.md says so rather than leaving out the section asked for without a word."""
    from rnnlab.cli import main

    _two_batch_runs(tmp_path, (250,), (250,))
    assert main(["report", str(tmp_path), "--no-plots", "--at-bytes", "1M"]) == 0
    md = (tmp_path / "report.md").read_text()
    assert "No run has a held-out learning curve to read at the bytes asked for (`--at-bytes`)" in md
    assert "No run has a held-out learning curve" in capsys.readouterr().out  # and on the terminal
    assert main(["report", str(tmp_path), "--no-plots"]) == 0  # not asked: no section
    assert "Held-out bpb at equal training bytes" not in (tmp_path / "report.md").read_text()
    assert "Held-out bpb at equal training bytes" not in capsys.readouterr().out


def test_equal_bytes_marks_of_a_small_run_name_their_bytes(tmp_path):
    """Marks under 0.1M bytes (a small CPU run's) are named to three digits, not rounded to
    hundredths of a million: 4,096 and 8,192 bytes were both "0.01M" (or "0.00M")."""
    from rnnlab.bench.report import equal_bytes_lines

    _two_batch_runs(tmp_path, (1, 2, 3, 4), (1, 2))
    table = equal_bytes_lines(collect(tmp_path)["records"])[4].splitlines()
    assert table[0] == "| Run | 4.10K bytes | 8.19K bytes | 16.4K bytes |"


def test_depth_plot_draws_a_line_only_over_runs_that_differ_in_depth_alone():
    """loss_vs_depth: Mamba2 at two depths is a line; two E1 runs that differ in layer options too
    (the race's 2.5x-expansion E1 and its 14-head E1) are not; one model at two depths under two
    learning rates is two lines, each named by its rate, and so is one at two depths under two model
    settings (mlp_ratio) or two swept seeds; the line's points are in depth order."""
    from rnnlab.bench import plots as P

    def row(model, depth, loss, layer=None):
        return {"model": model, "depth": depth, "loss": loss, "loss_std": None, "layer": layer}

    rows = [row("mamba2", 32, 1.3, {"d_state": 64}), row("mamba2", 22, 1.2, {"d_state": 64}),
            row("e1", 19, 1.5, {"expansion": 2.5}), row("e1", 31, 1.4, {"heads": 14}), row("e16", 10, None)]
    series = P._depth_series(rows)
    assert list(series) == ["mamba2 d_state=64"]
    two_lrs = [dict(row("e16", d, 1.0 + d / 100), protocol={"lr": lr}) for d in (8, 12) for lr in (1e-3, 3e-4)]
    assert [[r["protocol"]["lr"] for r in rs] for rs in P._depth_series(two_lrs).values()] == [[1e-3] * 2, [3e-4] * 2]
    assert list(P._depth_series(two_lrs)) == ["e16 lr=0.001", "e16 lr=0.0003"]  # not "e16", "e16 (2)": which lr?
    ax = P.loss_vs_depth_figure(series).axes[0]
    (line, _, _), = ax.containers  # one errorbar: its data line, caps and bars
    assert (list(line.get_xdata()), list(line.get_ydata())) == ([22, 32], [1.2, 1.3])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["mamba2 d_state=64 train loss"]
    assert P._depth_series(rows[2:]) == {}
    # a sweep over depth and dim (widths set, not solved): one line per width, not a zigzag through all four
    grid = [dict(row("e1", d, 1.0 + d / 100 + w / 1000), dim=w) for d in (2, 4) for w in (32, 64)]
    assert {k: [(r["depth"], r["dim"]) for r in rs] for k, rs in P._depth_series(grid).items()} == {
        "e1 dim=32": [(2, 32), (4, 32)], "e1 dim=64": [(2, 64), (4, 64)]}
    assert P.loss_vs_depth_figure(P._depth_series(grid)).axes[0].get_xlabel() == "depth (width held)"
    solved = [dict(row("e1", d, 1.0), dim=w, target_params=50_000) for d, w in ((2, 64), (4, 48))]
    assert P.loss_vs_depth_figure(P._depth_series(solved)).axes[0].get_xlabel() == (
        "depth (width solved for the parameter budget)")
    # rows apart in a model setting, or in another swept value (a seed), are lines of their own, named by it
    mlp = [dict(row("e1", d, 1.0 + d / 100), model_options=o) for d in (1, 2) for o in ({"mlp_ratio": 1.0}, {})]
    assert {k: [r["depth"] for r in rs] for k, rs in P._depth_series(mlp).items()} == {
        "e1 mlp_ratio=1.0": [1, 2], "e1": [1, 2]}
    seeds = [dict(row("e1", d, 1.0 + d / 100 + s / 1000), point={"seed": s, "depth": d}) for d in (1, 2) for s in (1, 2)]
    assert {k: [r["point"]["seed"] for r in rs] for k, rs in P._depth_series(seeds).items()} == {
        "e1 seed=1": [1, 1], "e1 seed=2": [2, 2]}


def test_depth_plot_says_widths_were_solved_only_where_the_suite_solved_them(tmp_path):
    """A suite whose rows set each width by hand (``dim``, no ``target_params``) at two depths: the
    loss_vs_depth axis said "width solved for the parameter budget", which no row asked for; it says
    so only when suite.json records each run's ``target_params``."""
    from rnnlab.bench import plots as P

    for name, depth in (("e1-d2", 2), ("e1-d4", 4)):
        _synthetic_run(tmp_path, name, 1.6 - depth / 100, 2.3, 16000.0, depth=depth)
        _set_summary(tmp_path, name, dim=16 * depth)
    runs = [{"name": n, "seed": None, "dir": n, "point": None} for n in ("e1-d2", "e1-d4")]

    def xlabel(target):
        (tmp_path / "suite.json").write_text(json.dumps({"suite": "s", "runs": [
            {**r, "target_params": target} for r in runs]}))
        fig = P.loss_vs_depth_figure(P._depth_series(aggregate(collect(tmp_path)["records"])))
        P.pyplot().close(fig)
        return fig.axes[0].get_xlabel()

    assert xlabel(None) == "depth (width set per row)"
    assert xlabel(400_000_000) == "depth (width solved for the parameter budget)"


def test_sweep_plot_draws_schedule_free_runs_at_their_training_point():
    """sweep_figure: the held-out panel takes a Schedule-Free run's bpb at y (``val_bpb_train_point``),
    as the other plots do, and says so; a run with one point (AdamW) at its weights; points in
    the axis's order, the loss panel the training loss."""
    from rnnlab.bench import plots as P

    def row(lr, loss, x, y):
        return {"point": {"lr": lr}, "loss": loss, "loss_std": None, "val_bpb": x, "val_bpb_std": None,
                "val_bpb_train_point": y, "val_bpb_train_point_std": None, "status": "complete"}

    fig = P.sweep_figure([row(3e-4, 1.1, 9.0, 1.6), row(1e-4, 1.2, 8.0, 1.7), row(1e-3, 1.0, 1.5, None)], ["lr"])
    loss_ax, bpb_ax = fig.axes
    (loss_line, _, _), = loss_ax.containers
    (bpb_line, _, _), = bpb_ax.containers
    assert list(loss_line.get_ydata()) == [1.2, 1.1, 1.0]
    assert (list(bpb_line.get_xdata()), list(bpb_line.get_ydata())) == ([1e-4, 3e-4, 1e-3], [1.7, 1.6, 1.5])
    assert bpb_ax.get_ylabel() == "held-out bits per byte (Schedule-Free at y)"


# ------------------------------------------------------------------------------------ sweep
def test_sweep_expands_points(tmp_path):
    s = build_sweep({"model": "e1", "depth": 2, "dim": 64}, ["lr=1e-4,3e-4,1e-3", "layer.heads=1,4"])
    assert len(s.runs) == 6
    names = [r.name for r in s.runs]
    assert names[0] == "lr-1e-4_heads-1" and len(set(names)) == 6
    r = s.runs[3]
    assert r.point == {"lr": 3e-4, "layer.heads": 4} and r.overrides == {"lr": 3e-4}
    assert r.model == {"model": "e1", "depth": 2, "dim": 64, "layer": {"heads": 4}}
    assert s.sweep["axes"] == {"lr": [1e-4, 3e-4, 1e-3], "layer.heads": [1, 4]}

    d = build_sweep({"model": "e1", "layer": {"expansion": 2.0}}, ["depth=2,4"], target_params="500K")
    plan = plan_suite(d, tmp_path)
    assert [p.cfg.model.depth for p in plan] == [2, 4]
    assert plan[0].cfg.model.dim > plan[1].cfg.model.dim  # width re-solved per depth
    assert all(abs(p.params - 500_000) < 75_000 for p in plan)
    assert all(p.cfg.model.layer == {"expansion": 2.0} for p in plan)

    base = {"model": "e1", "depth": 2, "dim": 64}
    shared = r"cannot sweep 'steps': every point of a sweep shares it, so that the points compare \(set it once with --steps\)"
    for key in ("resume", "overwrite"):  # no flag of sweep's to "set it once with": the runner sets them
        with pytest.raises(ValueError) as e:
            build_sweep(base, [f"{key}=true,false"])
        assert str(e.value) == (f"--set cannot sweep {key!r}: rnnlab sweep sets it per point (a partial point "
                                "resumes, a complete one is skipped; to train a point afresh, delete its folder)")
    with pytest.raises(ValueError) as e:  # a point is one process, even under --gpus N: --distributed does nothing
        build_sweep(base, ["distributed=ddp,fsdp2"])
    assert str(e.value) == ("--set cannot sweep 'distributed': each point of a sweep trains in one process (--gpus N "
                            "runs N points at once, one GPU each), where --distributed does nothing")
    for bad, match in ((["out=a,b"], "cannot sweep"), (["steps=1,2"], shared), (["layer=1,2"], "layer.NAME"),
                       (["nope=1,2"], "unknown key"), (["lr"], "KEY=V1"), (["lr=1,1"], "repeats"),
                       (["lr=0.001,3e-4,1e-3"], r"repeats a value \(0.001 and 1e-3\)")):
        with pytest.raises(ValueError, match=match):
            build_sweep(base, bad)
    with pytest.raises(ValueError, match="conflicts"):
        build_sweep({"model": "e1", "depth": 2}, ["dim=32,64"], target_params="1M")
    with pytest.raises(ValueError, match="--dim"):
        build_sweep({"model": "e1", "depth": 2}, ["lr=1e-3"])
    with pytest.raises(ValueError, match="--depth"):
        build_sweep({"model": "e1", "dim": 64}, ["lr=1e-3"])
    assert [r.model["depth"] for r in build_sweep({"model": "e1", "dim": 64}, ["depth=2,3"]).runs] == [2, 3]


def test_sweep_values_read_as_layer_options_are():
    """``none`` is a choice of E1's norm (not None), ``null`` unsets an optional field."""
    s = build_sweep({"model": "e1", "depth": 2, "dim": 64}, ["layer.norm=spectral,none", "grad_clip=null,1"])
    assert [(r.model["layer"]["norm"], r.point["grad_clip"]) for r in s.runs] == [
        ("spectral", None), ("spectral", 1), ("none", None), ("none", 1)]
    plan = plan_suite(s, "unused")
    assert [(p.cfg.model.layer["norm"], p.cfg.optim.grad_clip) for p in plan][2] == ("none", None)


def test_sweep_set_items_are_read_as_typed_and_checked():
    """``--set`` takes a key as its flag is spelled (``weight-decay`` = ``weight_decay``) and skips
    empty items (a trailing comma); an item with no values, a key given twice or a ``layer.``
    with no option name is refused, rather than sweeping nothing or overwriting an axis."""
    base = {"model": "e1", "depth": 2, "dim": 64}
    s = build_sweep(base, ["weight-decay=0,0.1", "lr=1e-3,,3e-3,"])
    assert [r.name for r in s.runs] == ["weight_decay-0_lr-1e-3", "weight_decay-0_lr-3e-3",
                                        "weight_decay-0.1_lr-1e-3", "weight_decay-0.1_lr-3e-3"]
    assert s.runs[3].overrides == {"weight_decay": 0.1, "lr": 3e-3}
    assert s.sweep["axes"] == {"weight_decay": [0, 0.1], "lr": [1e-3, 3e-3]}
    for bad, match in ((["lr="], "lists no values"), (["lr= , "], "lists no values"),
                       (["lr=1e-3", "lr=3e-3"], "given twice"), (["layer.=1,2"], "mixer option name")):
        with pytest.raises(ValueError, match=match):
            build_sweep(base, bad)


def test_sweep_point_names_keep_what_tells_values_apart():
    """A point's folder name keeps ``+`` and ``-`` (``1e+5``, ``1e-4``, as written) and a one-letter
    mixer option's name (``layer.k``)."""
    s = build_sweep({"model": "e1", "depth": 2, "dim": 64}, ["lr=1e-4,1e+5,1e4", "layer.k=1"])
    assert [r.name for r in s.runs] == ["lr-1e-4_k-1", "lr-1e+5_k-1", "lr-1e4_k-1"]
    assert [r.model["layer"] for r in s.runs] == [{"k": 1}] * 3


def test_a_sweep_takes_list_values():
    """``--set betas=[0.9,0.99],[0.9,0.95]`` is two points: a comma inside brackets belongs to the
    list (it was split there, and refused as "repeats a value"); each folder keeps the items apart."""
    s = build_sweep({"model": "e1", "depth": 2, "dim": 64}, ["betas=[0.9,0.99],[0.9,0.95]", "lr=1e-3,2e-3"])
    assert [r.name for r in s.runs][::2] == ["betas-0.9-0.99_lr-1e-3", "betas-0.9-0.95_lr-1e-3"]
    assert s.sweep["axes"]["betas"] == [[0.9, 0.99], [0.9, 0.95]]
    assert plan_suite(s, "unused")[2].cfg.optim.betas == (0.9, 0.95)


def test_a_swept_seed_beside_seeds_is_refused(tmp_path, capsys):
    """``--set seed=1,2 --seeds 3``: --seeds sets every point's seed, so the swept seeds were
    replaced and both points trained seed 3, in two folders; refused in one line. So is ``--seed 5
    --seeds 1,2``, whose --seed was dropped."""
    out = tmp_path / "o"
    assert main(["sweep", "--model", "e1", "--dim", "32", "--depth", "1", "--set", "seed=1,2", "--seeds", "3",
                 "--out", str(out), "--plan"]) == 2
    err = capsys.readouterr().err
    assert "seed" in err and "--seeds" in err and len(err.strip().splitlines()) == 1
    assert main(["sweep", "--model", "e1", "--dim", "32", "--depth", "1", "--set", "lr=1e-3,2e-3", "--seeds", "3",
                 "--out", str(out), "--plan"]) == 0
    capsys.readouterr()
    # --seed beside --seeds: every point trained the --seeds seeds, --seed's was dropped without a word
    assert main(["sweep", "--model", "e1", "--dim", "32", "--depth", "1", "--set", "lr=1e-3,2e-3", "--seed", "5",
                 "--seeds", "1,2", "--out", str(out), "--plan"]) == 2
    assert capsys.readouterr().err == ("rnnlab sweep: error: --seeds sets every point's seed, which would replace "
                                       "--seed's: give --seed or --seeds, not both\n")
    assert main(["sweep", "--model", "e1", "--dim", "32", "--depth", "1", "--set", "lr=1e-3,2e-3", "--seed", "5",
                 "--out", str(out), "--plan"]) == 0
    assert "seed=" not in capsys.readouterr().out  # every point at seed 5: no setting differs


def test_a_swept_key_set_by_its_flag_too_is_refused():
    """``--lr 5e-2 --set lr=1e-3,2e-3``: the axis replaced the flag's value at every point without a
    word (and ``--depth 3 --set depth=1,2``, ``--layer heads=4 --set layer.heads=1,2`` likewise);
    refused in one line naming both. A layer option the axis does not name stays beside it."""
    base = {"model": "e1", "depth": 2, "dim": 32}
    for model, defaults, axis, message in (
            (base, {"lr": 5e-2}, "lr=1e-3,2e-3", "--lr sets lr for every point, and --set lr=... sweeps it"),
            (base, {"weight_decay": 0.1}, "weight-decay=0,0.2",
             "--weight-decay sets weight_decay for every point, and --set weight_decay=... sweeps it"),
            (base, {"compile": False}, "compile=true,false",
             "--no-compile sets compile for every point, and --set compile=... sweeps it"),
            (base, {}, "depth=1,2", "--depth sets depth for every point, and --set depth=... sweeps it"),
            (base, {}, "model=e1,mingru", "--model sets model for every point, and --set model=... sweeps it"),
            ({**base, "layer": {"heads": 4}}, {}, "layer.heads=1,2",
             "--layer heads=... sets layer.heads for every point, and --set layer.heads=... sweeps it")):
        with pytest.raises(ValueError) as e:
            build_sweep(model, [axis], defaults=defaults)
        assert str(e.value) == message + ": give one of them, not both"
    s = build_sweep({**base, "layer": {"expansion": 2.0}}, ["layer.heads=1,2", "batch_size=4,8"], defaults={"lr": 1e-3})
    assert [(r.model["layer"], r.overrides) for r in s.runs][-1] == ({"expansion": 2.0, "heads": 2}, {"batch_size": 8})


def test_sweep_cli_refuses_a_flag_beside_its_axis(tmp_path, capsys):
    """Through ``rnnlab sweep``: one line, exit 2, nothing planned or written."""
    out = tmp_path / "o"
    assert main(["sweep", "--model", "e1", "--dim", "32", "--depth", "1", "--lr", "5e-2", "--set", "lr=1e-3,2e-3",
                 "--out", str(out), "--plan"]) == 2
    assert capsys.readouterr().err == ("rnnlab sweep: error: --lr sets lr for every point, and --set lr=... sweeps "
                                       "it: give one of them, not both\n")
    assert main(["sweep", "--model", "e1", "--dim", "32", "--set", "depth=1,2", "--set", "depth=3",
                 "--out", str(out)]) == 2
    assert capsys.readouterr().err == ("rnnlab sweep: error: --set depth given twice: list all its values in one "
                                       "--set depth=V1,V2,...\n")
    assert not out.exists()


def test_a_swept_dim_needs_no_base_dim():
    """``--set dim=...`` gives every point its width: no ``--dim`` (or ``--target-params``) is needed."""
    s = build_sweep({"model": "e1", "depth": 2}, ["dim=32,64"])
    assert [(r.name, r.model["dim"]) for r in s.runs] == [("dim-32", 32), ("dim-64", 64)]


def test_a_sweep_is_named_as_given_or_after_its_model():
    """``build_sweep(name=...)`` names the sweep's suite (``rnnlab sweep`` passes ``sweep-<its --out
    folder's name>``); without it the suite is ``sweep-<model>``."""
    base = {"model": "mingru", "depth": 2, "dim": 32}
    assert (build_sweep(base, ["lr=1e-3"], name="mine").name, build_sweep(base, ["lr=1e-3"]).name) == \
        ("mine", "sweep-mingru")


# ------------------------------------------------------------------------------------ end to end
def test_bench_list_and_plan(tmp_path, capsys):
    assert main(["bench", "--list"]) == 0
    out = capsys.readouterr().out
    for name in SHIPPED:
        assert name in out
    assert main(["bench", "tiny", "--plan", "--out", str(tmp_path), "--params", "100K", "--seeds", "3"]) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("  ")]
    assert len(lines) == len(load_suite("tiny").runs) and all("[new]" in x and "-s3" in x for x in lines)
    assert not any(tmp_path.iterdir())  # --plan trains and writes nothing
    assert main(["bench"]) == 2  # no suite named: a one-line error
    capsys.readouterr()
    # a width solved for a count its depth cannot come near: said, as `rnnlab params --target` says it
    assert main(["bench", "tiny", "--plan", "--out", str(tmp_path), "--params", "20K", "--runs", "e1,mingru"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ("rnnlab bench: note: mingru comes to 12,480 parameters at depth 2, the nearest to 20,000 "
                            "at this depth in widths that are multiples of 32; a smaller multiple (the row's `multiple "
                            "= N`) or another depth may come closer\n")  # e1's 18,688 is within 10%
    assert "mamba2" not in captured.out


def test_a_sweeps_note_is_under_the_sweeps_name(tmp_path, capsys):
    """A point whose solved width lands far from ``--target-params`` is noted as ``rnnlab sweep``'s, not bench's."""
    assert main(["sweep", "--model", "e1", "--depth", "2", "--target-params", "1K", "--set", "lr=1e-3",
                 "--out", str(tmp_path), "--plan"]) == 0
    assert capsys.readouterr().err.startswith("rnnlab sweep: note: lr-1e-3 comes to 18,688 parameters")


def test_a_rows_multiple_is_the_step_its_note_names(tmp_path, capsys):
    """The note on a width far from its row's ``target_params`` names the width step it was solved in
    (the row's ``multiple``): at step 1 no width at that depth comes closer."""
    f = tmp_path / "m.toml"
    f.write_text('name = "m"\n[[runs]]\nname = "a"\nmodel = "e1"\ntarget_params = 10\nmultiple = 1\ndepth = 2\n'
                 '[[runs]]\nname = "b"\nmodel = "e1"\ntarget_params = "40K"\nmultiple = 16\ndepth = 2\n')
    assert main(["bench", str(f), "--plan", "--out", str(tmp_path / "o"), "--seeds", "1,2"]) == 0  # once per row
    assert capsys.readouterr().err == (
        "rnnlab bench: note: a comes to 274 parameters at depth 2, the nearest to 10 this depth allows; another depth "
        "may come closer\n"
        "rnnlab bench: note: b comes to 35,712 parameters at depth 2, the nearest to 40,000 at this depth in widths "
        "that are multiples of 16; a smaller multiple (the row's `multiple = N`) or another depth may come closer\n")



def test_a_rows_multiple_beside_dim_is_refused_unless_params_solves_the_width(tmp_path, capsys):
    """``multiple`` steps only a width solved for a parameter count: beside ``dim`` it changed nothing, without
    a word, so it is refused in one line (as ``rnnlab params`` refuses ``--multiple`` without ``--target``);
    ``--params``, which re-solves every row's width, takes it as that width's step."""
    f = tmp_path / "m.toml"
    f.write_text('name = "m"\n[[runs]]\nmodel = "e1"\ndim = 32\nmultiple = 64\ndepth = 2\n')
    assert main(["bench", str(f), "--plan", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == (
        "rnnlab bench: error: suite m (" + str(f) + "), run e1-d2: multiple (64) steps only a width solved for a "
        "parameter count (target_params, or --params), and this run sets dim: drop multiple, or give target_params "
        "instead of dim\n")
    assert main(["bench", str(f), "--plan", "--out", str(tmp_path / "o"), "--params", "60K"]) == 0
    assert "dim=64 " in capsys.readouterr().out

def test_a_plan_line_shows_the_settings_its_runs_differ_in(tmp_path, capsys):
    """Settings outside the plan's columns (batch, seed, the optimizer's betas and clipping) are
    shown on each line where the suite's runs do not all agree on them, and only then; a model
    setting off its default always (a suite whose every run rescales says so)."""
    f = tmp_path / "s.toml"
    f.write_text('name = "s"\n[defaults]\nbatch_size = 16\ngrad_clip = 1.0\n'
                 '[[runs]]\nname = "a"\nmodel = "e1"\ndim = 32\ndepth = 1\n'
                 '[[runs]]\nname = "b"\nmodel = "e1"\ndim = 32\ndepth = 1\nbatch_size = 8\ngrad_clip = 0\n'
                 'betas = [0.9, 0.95]\nmlp_ratio = 2.0\n')

    def plan_lines(*flags):  # the plan's run lines
        assert main(["bench", str(f), "--plan", "--out", str(tmp_path / "o"), *flags]) == 0
        return [x for x in capsys.readouterr().out.splitlines() if x.startswith("  ")]

    a, b = plan_lines()
    assert a.endswith("[new]  batch_size=16 betas=0.9,0.999 grad_clip=1.0 mlp_ratio=None"), a
    assert b.endswith("[new]  batch_size=8 betas=0.9,0.95 grad_clip=off mlp_ratio=2.0"), b
    assert plan_lines("--runs", "a")[0].endswith("[new]")  # one run: nothing differs
    assert plan_lines("--runs", "b")[0].endswith("[new]  mlp_ratio=2.0")  # but a model setting off its default
    # AdamW's schedule on AdamW's line alone: Schedule-Free ignores it
    f.write_text('name = "s"\n[[runs]]\nname = "a"\nmodel = "e1"\ndim = 32\ndepth = 1\n'
                 '[[runs]]\nname = "b"\nmodel = "e1"\ndim = 32\ndepth = 1\noptimizer = "adamw"\n'
                 'lr_schedule = "constant"\nwarmup_steps = 10\n')
    a, b = plan_lines()
    assert a.endswith("[new]  warmup_steps=0"), a
    assert b.endswith("[new]  warmup_steps=10 lr_schedule=constant"), b


def test_tiny_suite_end_to_end(tmp_path, monkeypatch, capsys):
    out = tmp_path / "tiny"
    rc = main(["bench", "tiny", "--out", str(out), "--steps", "4", "--device", "cpu", "--no-progress",
               "--eval-bytes", "4096"])
    assert rc == 0
    md = (out / "report.md").read_text()
    rows = _table_rows(md)
    assert [r[0] for r in rows] == [r.name for r in load_suite("tiny").runs]
    for r in rows:
        assert len(r) == 9 and all(c and c != "-" for c in r), r  # Schedule-Free: bpb at x and at y
        assert re.fullmatch(r"\d\.\d{4}", r[2]) and all(re.fullmatch(r"\d+\.\d{4}", c) for c in r[3:5])
    for key in ("Suite:** tiny", "Device:** CPU", "Corpus:** bundled sample", "Command:** `"):
        assert key in md
    for p in ("loss_and_bpb.png", "loss_vs_time.png", "tok_per_s.png", "report.json", "suite.json"):
        assert (out / p).stat().st_size > 0

    def keys(o):
        if isinstance(o, dict):
            for k, v in o.items():
                yield k
                yield from keys(v)
        elif isinstance(o, list):
            for v in o:
                yield from keys(v)
    # report.json is for programs: every key an identifier (or a run's or file's name), its words report.md's
    named = list(keys(json.loads((out / "report.json").read_text())))
    assert "decay_rates" in named and "val_bytes" in named and all(re.fullmatch(r"[\w.-]+", k) for k in named), named
    # a shipped suite is recorded by its package path, not this machine's install path
    assert json.loads((out / "suite.json").read_text())["path"] == "rnnlab/bench/suites/tiny.toml"
    assert "(`rnnlab/bench/suites/tiny.toml`)" in md
    data = collect(out)
    assert all(r["status"] == "complete" for r in data["records"])
    assert all(r["steps"] == 4 for r in aggregate(data["records"]))

    # a second invocation trains nothing; `rnnlab report` rewrites the report
    import rnnlab.train.trainer as trainer

    calls: list = []
    monkeypatch.setattr(trainer, "run_training", _fake_trainer(calls))
    assert main(["bench", "tiny", "--out", str(out), "--steps", "4", "--device", "cpu", "--no-progress",
                 "--eval-bytes", "4096", "--no-plots"]) == 0  # (the plots are `rnnlab report`'s below)
    assert calls == []
    (out / "report.md").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.md").exists()
    assert main(["report", str(out), "--out", str(tmp_path / "elsewhere"), "--no-plots"]) == 0  # written there
    assert (tmp_path / "elsewhere" / "report.md").exists() and "## Plots" in (out / "report.md").read_text()


def test_an_extended_sweeps_axes_list_every_point_it_keeps(tmp_path):
    """``--set lr=1e-3,1e-2``, then ``--set lr=1e-2,3e-2`` into the same folder: suite.json keeps the
    lr-1e-3 run, so its axes (the report's "Axes:" line) list 0.001 too, not only the last command's
    values; a point left out by ``--runs`` is not listed."""
    from rnnlab.bench.suite import write_plan

    out, base = tmp_path / "o", {"model": "mingru", "depth": 1, "dim": 16}
    first = build_sweep(base, ["lr=1e-3,1e-2"], name="sweep-o")
    write_plan(first, plan_suite(first, out, runs="lr-1e-3"), out, "sweep a", {})
    assert _plan_doc(out)["sweep"] == {"axes": {"lr": [1e-3]}}
    write_plan(first, plan_suite(first, out), out, "sweep b", {})
    for p in plan_suite(first, out):  # both points trained
        p.dir.mkdir()
        (p.dir / "summary.json").write_text('{"complete": true}')
    second = build_sweep(base, ["lr=1e-2,3e-2", "batch_size=4"], name="sweep-o")
    write_plan(second, plan_suite(second, out), out, "sweep c", {})
    doc = _plan_doc(out)
    assert [r["dir"] for r in doc["runs"]] == ["lr-1e-2_batch_size-4", "lr-3e-2_batch_size-4", "lr-1e-3", "lr-1e-2"]
    assert doc["sweep"] == {"axes": {"lr": [1e-2, 3e-2, 1e-3], "batch_size": [4]}}


def test_an_extended_sweeps_description_names_every_point_it_keeps(tmp_path):
    """``--set lr=1e-3``, then ``--set lr=1e-2`` into the same folder: the report's "Suite:" line
    said "mingru sweep over lr in ['1e-2']" above a table of both points; it names both values, as
    the "Axes:" line does. A sweep run once keeps the values as typed."""
    from rnnlab.bench.suite import write_plan

    out, base = tmp_path / "o", {"model": "mingru", "depth": 1, "dim": 16}
    first = build_sweep(base, ["lr=1e-3"], name="sweep-o")
    write_plan(first, plan_suite(first, out), out, "sweep a", {})
    assert _plan_doc(out)["description"] == "mingru sweep over lr in ['1e-3']"
    for p in plan_suite(first, out):
        p.dir.mkdir()
        (p.dir / "summary.json").write_text('{"complete": true}')
    second = build_sweep(base, ["lr=1e-2"], name="sweep-o")
    write_plan(second, plan_suite(second, out), out, "sweep b", {})
    assert _plan_doc(out)["description"] == "mingru sweep over lr in [0.01, 0.001]"


def test_a_rerun_sweep_finds_its_points_whatever_the_order_or_spelling_of_its_axes(tmp_path):
    """``--set lr=1e-3,1e-2 --set batch_size=4``, then ``--set batch_size=4 --set lr=0.001,0.03``
    into the same folder: the point swept before keeps its folder (its complete run is skipped, not
    trained again under ``batch_size-4_lr-0.001``); a new point gets a name of its own."""
    from rnnlab.bench.suite import write_plan
    from rnnlab.bench.sweep import keep_earlier_names

    out, base = tmp_path / "o", {"model": "mingru", "depth": 1, "dim": 16}
    first = build_sweep(base, ["lr=1e-3,1e-2", "batch_size=4"], name="sweep-o")
    write_plan(first, plan_suite(first, out), out, "sweep a", {})
    again = keep_earlier_names(build_sweep(base, ["batch_size=4", "lr=0.001,0.03"], name="sweep-o"), out)
    assert [r.name for r in again.runs] == ["lr-1e-3_batch_size-4", "batch_size-4_lr-0.03"]
    assert keep_earlier_names(first, tmp_path / "none").runs == first.runs  # no earlier sweep: names as built
    # a whole number spelt as an int or a float is one value (parse_set refuses 1 beside 1.0 as a repeat)
    more = keep_earlier_names(build_sweep(base, ["batch_size=4.0", "lr=0.001"], name="sweep-o"), out)
    assert [r.name for r in more.runs] == ["lr-1e-3_batch_size-4"]
    # a value its field stores otherwise: grad_clip 0 is null (no clipping)
    clip = tmp_path / "clip"
    write_plan(off := build_sweep(base, ["grad_clip=0,1"], name="sweep-clip"), plan_suite(off, clip), clip, "a", {})
    again = keep_earlier_names(build_sweep(base, ["grad_clip=null,1.0"], name="sweep-clip"), clip)
    assert [r.name for r in again.runs] == ["grad_clip-0", "grad_clip-1"]


@pytest.mark.parametrize("sets,why", [
    (["grad_clip=0,null"], " (0 and null both mean no clipping): drop one grad_clip value"),
    (["lr_schedule=cosine,constant"], " (Schedule-Free ignores lr_schedule): drop one lr_schedule value"),
    (["lr=1e-3,2e-3", "grad_clip=null,0"], " (0 and null both mean no clipping), as would every pair apart in "
                                           "grad_clip alone: drop one grad_clip value")])
def test_sweep_points_that_would_train_the_same_run_are_refused(tmp_path, sets, why):
    """Two values that parse apart but train alike at every point (grad_clip 0 and null;
    lr_schedule under Schedule-Free) would be folders training one run twice: refused in one line
    naming two such points and why, --seeds or not. Under AdamW lr_schedule's values are two runs,
    and crossed with the optimizer they are alike under Schedule-Free only: the sweep is planned."""
    base = {"model": "mingru", "depth": 1, "dim": 16}
    sweep = build_sweep(base, sets, name="sweep-x")
    a, b = (r.name for r in sweep.runs[:2])
    for seeds in (None, "1,2"):
        with pytest.raises(ValueError, match=f"^--set points {re.escape(a)} and {re.escape(b)} would train the same "
                                             f"run{re.escape(why)}$"):
            plan_suite(sweep, tmp_path / "x", seeds=seeds)
    adamw = build_sweep(base, ["lr_schedule=cosine,constant"], name="sweep-y", defaults={"optimizer": "adamw"})
    assert len(plan_suite(adamw, tmp_path / "y")) == 2
    crossed = build_sweep(base, ["optimizer=adamw,schedulefree-adamw", "lr_schedule=cosine,constant"], name="sweep-z")
    assert len(plan_suite(crossed, tmp_path / "z")) == 4


def test_a_sweep_rerun_with_seeds_keeps_the_seedless_run_of_a_seed_it_lists(tmp_path, monkeypatch, capsys):
    """A sweep run without --seeds (seed 42, the default), then again with ``--seeds 42,43`` into the
    same folder: each point's seed 42 is its complete run ``lr-1e-3``, skipped, not trained again in
    ``lr-1e-3-s42``; only seed 43 trains. A seedless run of another seed, or of another config
    (it could not go on), is no run of a listed seed; a NAME-sSEED folder that holds one keeps it."""
    import rnnlab.train.trainer as trainer

    calls: list = []
    monkeypatch.setattr(trainer, "run_training", _fake_trainer(calls))
    out = tmp_path / "sw"
    sweep = ["sweep", "--model", "e1", "--dim", "16", "--depth", "1", "--set", "lr=1e-3,2e-3", "--steps", "2",
             "--device", "cpu", "--no-plots", "--no-progress", "--out", str(out)]
    assert main(sweep) == 0 and [name for name, _ in calls] == ["lr-1e-3", "lr-2e-3"]
    calls.clear()
    assert main([*sweep, "--seeds", "42,43", "--plan"]) == 0
    plan = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("  lr-")]
    assert [(p[0], p[-2], p[-1]) for p in plan] == [
        ("lr-1e-3", "[complete]", "seed=42"), ("lr-1e-3-s43", "[new]", "seed=43"),
        ("lr-2e-3", "[complete]", "seed=42"), ("lr-2e-3-s43", "[new]", "seed=43")]
    assert main([*sweep, "--seeds", "42,43"]) == 0
    assert [name for name, _ in calls] == ["lr-1e-3-s43", "lr-2e-3-s43"]
    runs = {r["dir"]: r["seed"] for r in _plan_doc(out)["runs"]}
    assert runs == {"lr-1e-3": 42, "lr-1e-3-s43": 43, "lr-2e-3": 42, "lr-2e-3-s43": 43}
    # another seed, another config (a batch size the run cannot resume with), or a NAME-sSEED that holds a run
    suite = build_sweep({"model": "e1", "depth": 1, "dim": 16}, ["lr=1e-3,2e-3"], defaults={}, name="sweep-sw")
    assert [p.label for p in plan_suite(suite, out, steps=2, device="cpu", seeds="7")] == ["lr-1e-3-s7", "lr-2e-3-s7"]
    assert [p.label for p in plan_suite(suite, out, steps=2, device="cpu", seeds="42", batch_size=4)] == [
        "lr-1e-3-s42", "lr-2e-3-s42"]
    (out / "lr-2e-3-s42").mkdir()
    shutil.copy(out / "lr-2e-3" / "config.json", out / "lr-2e-3-s42")
    assert [p.label for p in plan_suite(suite, out, steps=2, device="cpu", seeds="42")] == ["lr-1e-3", "lr-2e-3-s42"]
    # a larger budget: the seedless run goes on from its checkpoint as seed 42's, in its own folder
    calls.clear()
    assert main([*sweep, "--steps", "4", "--seeds", "42,43", "--runs", "lr-1e-3"]) == 0
    assert calls == [("lr-1e-3", True), ("lr-1e-3-s43", True)]


def test_sweep_cli_end_to_end(tmp_path, capsys):
    out = tmp_path / "lr"
    rc = main(["sweep", "--model", "mingru", "--dim", "32", "--depth", "1", "--set", "lr=1e-3,1e-2",
               "--steps", "4", "--batch-size", "4", "--seq-len", "32", "--precision", "fp32",
               "--device", "cpu", "--eval-bytes", "2048", "--no-progress", "--out", str(out)])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["lr-1e-2", "lr-1e-3"]
    md = (out / "report.md").read_text()
    assert "## Sweep" in md and (out / "sweep_lr.png").exists()
    rows = _table_rows(md, "| lr | Params")
    assert [r[0] for r in rows] == ["0.001", "0.01"] and all(re.fullmatch(r"\d\.\d{4}", r[2]) for r in rows)
    cfg = json.loads((out / "lr-1e-2" / "config.json").read_text())
    assert cfg["lr"] == 1e-2 and cfg["batch_size"] == 4 and cfg["model"]["model"] == "mingru"
    # the same points spelt otherwise: found complete in their folders, nothing to train
    assert main(["sweep", "--model", "mingru", "--dim", "32", "--depth", "1", "--set", "lr=0.01,0.001",
                 "--steps", "4", "--batch-size", "4", "--seq-len", "32", "--precision", "fp32",
                 "--device", "cpu", "--eval-bytes", "2048", "--plan", "--out", str(out)]) == 0
    plan = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("  lr-")]
    assert sorted((p[0], p[-1]) for p in plan) == [("lr-1e-2", "[complete]"), ("lr-1e-3", "[complete]")]
    # moved, and extended by a value: the sweep it was (its name, its earlier points beside the new one)
    moved = out.rename(tmp_path / "lr-moved")
    assert main(["sweep", "--model", "mingru", "--dim", "32", "--depth", "1", "--set", "lr=1e-3,1e-2,3e-3",
                 "--steps", "4", "--batch-size", "4", "--seq-len", "32", "--precision", "fp32", "--device", "cpu",
                 "--eval-bytes", "2048", "--no-progress", "--no-plots", "--out", str(moved)]) == 0
    record = json.loads((moved / "suite.json").read_text())
    assert record["suite"] == "sweep-lr" and record["sweep"]["axes"] == {"lr": [1e-3, 1e-2, 3e-3]}
    assert sorted(r["name"] for r in record["runs"]) == ["lr-1e-2", "lr-1e-3", "lr-3e-3"]


def test_runs_subset(tmp_path):
    suite = load_suite("tiny")
    plan = plan_suite(suite, tmp_path, runs="mamba2,e1")
    assert [p.name for p in plan] == ["e1", "mamba2"]  # suite order kept
    assert [p.name for p in plan_suite(suite, tmp_path, runs="mamba2, e1")] == ["e1", "mamba2"]  # as --seeds: spaces
    with pytest.raises(ValueError, match=r"has no run\(s\) \['nope'\]"):
        plan_suite(suite, tmp_path, runs="e1,nope")


def test_an_empty_runs_option_selects_no_run_it_is_refused(tmp_path, capsys):
    """``--runs ""`` (a script's ``--runs "$RUNS"`` with RUNS unset) names no run: refused in one
    line, not read as no --runs, which trains the whole suite."""
    assert main(["bench", "tiny", "--runs", "", "--plan", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "has no run(s) ['']" in err and len(err.strip().splitlines()) == 1


def test_bench_and_sweep_flags_come_from_the_config():
    """bench replaces the suite-wide fields (corpus, budget, device, held-out bytes, W&B project) for every
    run; sweep takes every field but the run folder's; both lists derive from the declarations."""
    from rnnlab.cli import build_parser
    from rnnlab.options import flag_name
    from rnnlab.train.config import FIELDS, RUNNER_KEYS, SUITE_KEYS

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices

    def flags(cmd):
        return {o for a in sub[cmd]._actions for o in a.option_strings}

    assert set(SUITE_KEYS) == {"data", "val_data", "extra_val_data", "val_fraction", "steps", "minutes", "tokens", "eval_bytes",
                               "curve_eval_bytes",
                               "wandb", "device"}
    assert {flag_name(k) for k in SUITE_KEYS} <= flags("bench") and "--lr" not in flags("bench")
    expected = {flag_name(k) for k, (_, s) in FIELDS.items() if s.meta.flag and k not in RUNNER_KEYS}
    assert expected <= flags("sweep") and "--resume" not in flags("sweep")


def _set_summary(root: Path, name: str, **kw) -> None:
    p = root / name / "summary.json"
    p.write_text(json.dumps({**json.loads(p.read_text()), **kw}))


def test_report_compares_decay_rates_only_where_a_model_has_them(tmp_path):
    """Whether weight decay reached A_log, dt_bias, D differs only between rows whose models have
    them: a new E1 run (none marked) beside an old one is no protocol difference; a Mamba2 run
    sparing them beside one from before ``decay_marked`` (which decayed them) is."""
    _synthetic_run(tmp_path, "e1-old", 1.6, 2.3, 16000.0)  # no decay_rates: from before the field
    _synthetic_run(tmp_path, "e1-new", 1.6, 2.3, 16000.0)
    _set_summary(tmp_path, "e1-new", decay_rates=None)
    md = write_report(tmp_path, plots=False)["md"].read_text()
    assert "decay rates:" not in md and "weight decay not on A_log" not in md  # no run spared them
    _synthetic_run(tmp_path, "mamba2-new", 1.5, 2.2, 24000.0, model="mamba2")
    _set_summary(tmp_path, "mamba2-new", decay_rates="spared")
    md = write_report(tmp_path, plots=False)["md"].read_text()
    assert "decay rates: e1-old decayed; mamba2-new spared" in md
    assert "; weight decay not on A_log, dt_bias, D (the models' decay rates)" in md
    # a sweep over decay_marked differs there by design: no warning
    from rnnlab.bench.report import protocol_differences

    rows = aggregate(collect(tmp_path)["records"])
    assert any(line.startswith("decay rates:") for line in protocol_differences(rows))
    assert not any(line.startswith("decay rates:") for line in protocol_differences(rows, {"decay_marked": [1, 0]}))


def test_recorded_command_names_rnnlab_not_this_machines_path(monkeypatch):
    """env.json's argv and suite.json's command say ``rnnlab ...``, as a user types it, not the
    path of the package on the machine that ran it."""
    from rnnlab.bench.suite import command_line
    from rnnlab.train.runtime import command_argv

    monkeypatch.setattr("sys.argv", ["/work/x/src/rnnlab/__main__.py", "bench", "tiny", "--runs", "a b"])
    assert command_argv() == ["rnnlab", "bench", "tiny", "--runs", "a b"]
    assert command_line() == "rnnlab bench tiny --runs 'a b'"
    monkeypatch.setattr("sys.argv", ["/venv/bin/rnnlab", "train"])
    assert command_argv() == ["rnnlab", "train"]
    for other in (["/usr/bin/python3", "-c"], ["/venv/lib/pytest/__main__.py", "-q"]):
        monkeypatch.setattr("sys.argv", other)
        assert command_argv() == other


def test_report_dates_its_runs_and_names_seeds_only_when_repeated(tmp_path):
    """The header's date spans the runs' starts (env.json); a Seeds line appears only when some
    row repeats a run over seeds."""
    for name, started in (("a", "2026-11-30T19:32:05Z"), ("b", "2026-12-01T02:22:59Z")):
        _synthetic_run(tmp_path, name, 1.5, 2.0, 1000.0)
        env = tmp_path / name / "env.json"
        env.write_text(json.dumps({**json.loads(env.read_text()), "started": started}))
    md = write_report(tmp_path, plots=False)["md"].read_text()
    assert re.search(r"- \*\*Date:\*\* runs started 2026-11-30 19:32 to 2026-12-01 02:22 UTC; report written "
                     r"\d{4}-\d\d-\d\d \d\d:\d\d UTC\n", md)
    assert "**Seeds:**" not in md
    _synthetic_run(tmp_path, "a-s7", 1.6, 2.1, 1000.0, seed=7)
    md = write_report(tmp_path, plots=False)["md"].read_text()
    assert "- **Seeds:** 7, 42 (mean ± sample std over seeds)" in md and "same seed" not in md
    _synthetic_run(tmp_path, "a-s42", 1.6, 2.1, 1000.0, seed=42)  # --seeds 42 beside the unsuffixed seed-42 run
    md = write_report(tmp_path, plots=False)["md"].read_text()
    assert "**Warning: some rows average runs of the same seed** (the spread is then not over seeds): " \
           "a (seed 42 2 times)." in md


def test_report_warns_of_a_row_averaging_runs_trained_differently(tmp_path):
    """``--seeds 43 --steps 20`` into a folder whose run of that name trained 150 steps: the row's
    mean ± std mixes two budgets, and the report says so, as it does seeds of different parameter
    counts; seeds of one protocol are not flagged, nor seeds of one --minutes budget that ran
    different step counts."""
    def budget(name, **kw):
        c = json.loads((tmp_path / name / "config.json").read_text())
        (tmp_path / name / "config.json").write_text(json.dumps({**c, **kw}))

    _synthetic_run(tmp_path, "a", 1.5, 2.0, 1000.0, steps=150)
    _synthetic_run(tmp_path, "a-s7", 1.6, 2.1, 1000.0, seed=7, steps=150)
    assert "trained differently" not in write_report(tmp_path, plots=False)["md"].read_text()
    _synthetic_run(tmp_path, "m", 1.5, 2.0, 1000.0, steps=140)
    _synthetic_run(tmp_path, "m-s7", 1.6, 2.1, 1000.0, seed=7, steps=150)
    for name in ("m", "m-s7"):
        budget(name, steps=None, minutes=5)
    assert "trained differently" not in write_report(tmp_path, plots=False)["md"].read_text()
    _synthetic_run(tmp_path, "a-s43", 3.6, 5.1, 1000.0, seed=43, steps=20)
    md = write_report(tmp_path, plots=False)["md"].read_text()
    assert ("> **Warning: some rows average runs trained differently** (their mean ± std is not a spread over "
            "seeds; give the runs another suite folder, or the same settings): a (steps 150/20/150).") in md
    _synthetic_run(tmp_path, "p", 1.5, 2.0, 1000.0, steps=150)  # seeds of another size (summary.json's params)
    _synthetic_run(tmp_path, "p-s7", 1.6, 2.1, 1000.0, seed=7, steps=150, params=200_000_000)
    assert "a (steps 150/20/150), p (params 400000000/200000000)." in write_report(tmp_path, plots=False)["md"].read_text()


def test_report_warns_of_a_row_whose_seeds_trained_on_another_corpus_or_scored_other_bytes(tmp_path):
    """``--seeds 3 --data other.txt`` (or ``--eval-bytes 4K``) into a folder whose seeds 1 and 2
    trained on the suite's corpus: the row's held-out bpb averages two measures, and says so."""
    from rnnlab.bench.report import mixed_row_warning

    for seed in (1, 2, 3):
        _synthetic_run(tmp_path, f"a-s{seed}", 1.6, 2.1, 1000.0, seed=seed)
        _synthetic_run(tmp_path, f"b-s{seed}", 1.6, 2.1, 1000.0, seed=seed)
        for row in "ab":
            scored = 4000 if row == "b" and seed == 3 else 2000
            (tmp_path / f"{row}-s{seed}" / "eval.jsonl").write_text(json.dumps({"step": 10, "bytes": scored}) + "\n")
    assert mixed_row_warning(aggregate(collect(tmp_path)["records"]))[1].endswith("b (held-out bytes 2000/2000/4000).")
    _set_config(tmp_path, "a-s3", data="/data/other.txt")
    assert "a (data /data/pile.txt/" in mixed_row_warning(aggregate(collect(tmp_path)["records"]))[1]


def test_report_warns_of_a_row_whose_seeds_trained_on_a_file_changed_under_the_same_path(tmp_path):
    """Seeds of one row trained on the same --data path, the file changed between them, were averaged
    without a word (their config's paths agree): env.json's fingerprints must agree too. A run from
    before the fingerprints compares by its paths, as before."""
    from rnnlab.bench.report import mixed_row_warning

    for row, prints in (("a", ("11", "22", "33")), ("b", (None, "11", "11")), ("c", ("11", "11", "11"))):
        for seed, p in enumerate(prints, 1):
            _synthetic_run(tmp_path, f"{row}-s{seed}", 1.6, 2.1, 1000.0, seed=seed)
            if p:
                env = tmp_path / f"{row}-s{seed}" / "env.json"
                env.write_text(json.dumps({**json.loads(env.read_text()),
                                           "corpus": {"train_fingerprint": p, "heldout_fingerprint": "ff"}}))
    assert mixed_row_warning(aggregate(collect(tmp_path)["records"]))[1].endswith(
        ": a (corpus (training/held-out split fingerprints) 11/ff/22/ff/33/ff).")


def test_archived_metrics_read_as_the_plain_file(tmp_path, capsys):
    """A finished run kept in results/ with metrics.jsonl xz'd (benchmarks/suite_carry.sh) reads the
    same records; a plain metrics.jsonl beside it wins (a run that trains again writes that one)."""
    import lzma

    from rnnlab.train.rundir import RunDir

    _synthetic_run(tmp_path, "a", 1.5, 2.0, 1000.0)
    plain = tmp_path / "a" / "metrics.jsonl"
    records = RunDir(tmp_path / "a").metrics()
    assert len(records) == 10
    (tmp_path / "a" / "metrics.jsonl.xz").write_bytes(lzma.compress(plain.read_bytes()))
    plain.write_text(json.dumps(records[0]) + "\n")
    assert RunDir(tmp_path / "a").metrics() == records[:1]
    plain.unlink()
    assert RunDir(tmp_path / "a").metrics() == records
    assert "loss_vs_time.png" in {p.name for p in write_report(tmp_path)["plots"]}
    RunDir._unarchive(plain)  # what a resumed run does first: it appends to the plain file
    assert not (tmp_path / "a" / "metrics.jsonl.xz").exists() and RunDir(tmp_path / "a").metrics() == records
    (tmp_path / "a" / "metrics.jsonl.xz").write_bytes(lzma.compress(plain.read_bytes())[:-20])  # cut short
    plain.unlink()
    assert RunDir(tmp_path / "a").metrics() == []
    assert "metrics.jsonl.xz is unreadable" in capsys.readouterr().err


def test_a_run_resumed_on_another_gpu_names_both():
    from rnnlab.bench.report import describe_device

    env = {"device": "cuda", "gpu": "NVIDIA H200", "earlier_sessions": [{"gpu": "NVIDIA H100 80GB HBM3"}]}
    assert describe_device([{"env": env, "summary": {}}]) == "NVIDIA H100 80GB HBM3, NVIDIA H200"


def test_suite_carry_in_keeps_the_commands_and_runs_of_calls_that_started_from_one_copy(tmp_path):
    """Two GPU calls continue a suite from the same slim copy; bringing both back
    (benchmarks/suite_carry.sh in) keeps both calls' commands and runs, in the suite's order; a
    repeated command (a resume) is listed once, with its latest date; a GPU recorded earlier stays."""
    import subprocess
    import tarfile

    repo = Path(__file__).resolve().parents[1]

    def run(name, d, seed, gpu=None):
        entry = {"name": name, "seed": seed, "dir": d, "params": 1, "model": {"model": name}}
        return entry if gpu is None else {**entry, "gpu": gpu}

    def inv(cmd, written):
        return {"command": cmd, "options": {"runs": cmd}, "written": written}

    kept = {"suite": "s", "invocations": [inv("a", "2026-01-01T00:00:00Z")],
            "runs": [run("m", "m", None, "0"), run("e1", "e1", None, "1")]}
    results = tmp_path / "results"
    results.mkdir()
    (results / "suite.json").write_text(json.dumps(kept))
    calls = [("b", "2026-01-02T00:00:00Z", "e1-s43", 43), ("c", "2026-01-03T00:00:00Z", "e1-s44", 44),
             ("c", "2026-01-04T00:00:00Z", "e1-s44", 44)]
    for i, (cmd, written, d, seed) in enumerate(calls):
        call = tmp_path / f"call{i}" / "s"
        (call / d).mkdir(parents=True)
        (call / d / "metrics.jsonl").write_text('{"step": 1}\n')
        (call / "logs").mkdir()
        (call / "logs" / f"call-{i}.log").write_text(f"call {i}\n")  # run_suites_gpu.sh's log of the call
        doc = {**kept, "invocations": kept["invocations"] + [inv(cmd, written)],
               "runs": [kept["runs"][0], run("e1", "e1", None), run("e1", d, seed)]}
        (call / "suite.json").write_text(json.dumps(doc))
        with tarfile.open(tmp_path / f"call{i}.tgz", "w:gz") as tar:
            tar.add(call, arcname="s")
        proc = subprocess.run(["bash", str(repo / "benchmarks/suite_carry.sh"), "in", str(tmp_path / f"call{i}.tgz"),
                               str(results)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    merged = json.loads((results / "suite.json").read_text())
    assert [(c["command"], c["written"][8:10]) for c in merged["invocations"]] == [("a", "01"), ("b", "02"), ("c", "04")]
    assert [(r["dir"], r.get("gpu")) for r in merged["runs"]] == [("m", "0"), ("e1", "1"), ("e1-s43", None),
                                                                  ("e1-s44", None)]
    assert (results / "e1-s43" / "metrics.jsonl.xz").exists() and (results / "e1-s44" / "metrics.jsonl.xz").exists()
    assert sorted(p.name for p in (results / "logs").iterdir()) == [f"call-{i}.log.xz" for i in range(3)]


def test_suite_carry_out_makes_a_slim_copy_with_what_bench_and_the_report_need(tmp_path):
    """benchmarks/suite_carry.sh out: suite.json and each run's config, summary and env (the GPU,
    for the report's MFU), never its metrics."""
    import subprocess

    results, runs = tmp_path / "results", tmp_path / "runs" / "s"
    (results / "a").mkdir(parents=True)
    (results / "suite.json").write_text('{"suite": "s"}')
    for name in ("config.json", "summary.json", "env.json", "metrics.jsonl.xz", "eval.jsonl"):
        (results / "a" / name).write_text("{}")
    proc = subprocess.run(["bash", str(Path(__file__).resolve().parents[1] / "benchmarks/suite_carry.sh"), "out",
                           str(results), str(runs)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (runs / "a").iterdir()) == ["config.json", "env.json", "summary.json"]
    assert (runs / "suite.json").exists()

def test_staged_commit_counts_only_the_code(tmp_path):
    """benchmarks/staged_commit.sh (gpu_env.sh's RNNLAB_GIT_COMMIT) names the staged commit while the
    code is the code staged, also after results change (a suite's runs carried to the next call);
    a changed or added code file, one line on stderr and no commit."""
    import subprocess

    script = Path(__file__).resolve().parents[1] / "benchmarks/staged_commit.sh"
    (tmp_path / "src").mkdir()
    (tmp_path / "results").mkdir()
    (tmp_path / ".gpu").mkdir()
    (tmp_path / "src" / "a.py").write_text("x = 1\n")
    (tmp_path / "results" / "suite.json").write_text("{}")
    listing = subprocess.run(["sha1sum", "src/a.py", "results/suite.json"], cwd=tmp_path, capture_output=True,
                             text=True, check=True).stdout
    (tmp_path / ".gpu" / "tree.sha1").write_text(listing)
    (tmp_path / ".gpu" / "commit").write_text("734304d28a54\n")

    def staged():
        proc = subprocess.run(["bash", str(script)], cwd=tmp_path, capture_output=True, text=True)
        assert proc.returncode == 0
        return proc.stdout.strip(), proc.stderr.strip()

    assert staged() == ("734304d28a54", "")
    (tmp_path / "results" / "suite.json").write_text('{"runs": []}')  # results only: still the commit
    (tmp_path / "results" / "new.md").write_text("a run")
    (tmp_path / "pyprojectXtoml").write_text("not pyproject.toml")  # the code's paths match exactly
    assert staged() == ("734304d28a54", "")
    paths = subprocess.run(["bash", str(script), "--paths"], capture_output=True, text=True, check=True).stdout
    assert paths.split() == ["src", "tests", "benchmarks", "scripts", "pyproject.toml"]
    (tmp_path / "src" / "b.py").write_text("y = 2\n")
    out, err = staged()
    assert out == "" and "code added" in err and "src/b.py" in err and len(err.splitlines()) == 1
    (tmp_path / "src" / "b.py").unlink()
    (tmp_path / "src" / "a.py").write_text("x = 2\n")
    out, err = staged()
    assert out == "" and "code changed since 734304d28a54" in err and len(err.splitlines()) == 1


def _benchmark_script(name: str):
    """A script of benchmarks/ (no package) loaded as a module (registered under its name while it
    runs, as an import would: dataclasses look their module up there)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    before = sys.modules.get(name)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        if before is None:
            del sys.modules[name]
        else:
            sys.modules[name] = before
    return module


def test_bench_models_rows_are_valid_models():
    """Every bench_models.py row but the standalone Mamba2 is a valid ModelConfig, with unique names."""
    from rnnlab.models.config import ModelConfig

    bm = _benchmark_script("bench_models")
    names = [name for name, _, _ in bm.MODELS]
    assert len(set(names)) == len(names)
    for _, cfgd, _ in bm.MODELS:
        if not cfgd.get("standalone"):
            ModelConfig(**cfgd).validate()


def test_bench_models_official_layers_run_their_official_implementation_or_fail():
    """A bench_models.py row of a layer with an official implementation (Mamba2: mamba_ssm, Gated
    DeltaNet: fla) names backend "official": on "auto" a mamba_ssm or fla that does not import built
    the PyTorch reference silently, timed under the official's name and taken as the yardstick of
    every ratio to Mamba2; "official" makes it an error row."""
    import dataclasses

    from rnnlab.layers.base import OFFICIAL_BACKENDS
    from rnnlab.models.registry import get_spec

    bm = _benchmark_script("bench_models")
    official = 0
    for name, cfgd, _ in bm.MODELS:
        if cfgd.get("standalone"):
            continue
        field = {f.name: f for f in dataclasses.fields(get_spec(cfgd["model"]).config_cls)}.get("backend")
        if field is not None and field.metadata["option"].choices == OFFICIAL_BACKENDS:
            official += 1
            assert cfgd.get("layer", {}).get("backend") == "official", name
    assert official >= 2  # Mamba2 and Gated DeltaNet


def test_bench_models_profile_breakdown_sorts_kernels_by_kind():
    """bench_models.py --profile: each kernel name lands in its kind (the first listed kind that
    matches), per-step milliseconds add up, the costliest kernels come first."""
    bm = _benchmark_script("bench_models")
    kernels = [("sm90_xmma_gemm_bf16bf16_bf16f32", 40.0, 20), ("nvjet_tst_128x256_64x4", 20.0, 10),
               ("triton_tem_fused_mm_0", 2.0, 2), ("_heads_fwd", 10.0, 62), ("elman_persistent<bf16>", 8.0, 52),
               ("_chunk_scan_fwd_kernel", 6.0, 44), ("triton_poi_fused_silu_mul_3", 4.0, 100),
               ("multi_tensor_apply_kernel<...>", 3.0, 6), ("vectorized_elementwise_kernel<4>", 1.0, 8),
               ("void (anonymous namespace)::elman_wgmma<28, false>(...)", 4.0, 52)]  # a scan, not a GEMM
    out = bm.kernel_breakdown(kernels, steps=2)
    assert out["by_kind_ms"] == {"matmul": 31.0, "mixer": 14.0, "Inductor's fused kernels": 2.0,
                                 "optimizer": 1.5, "other": 0.5}
    assert out["gpu_ms_per_step"] == 49.0 and out["kernels_per_step"] == 178.0
    assert [t["kernel"] for t in out["top"][:2]] == ["sm90_xmma_gemm_bf16bf16_bf16f32", "nvjet_tst_128x256_64x4"]
    assert out["top"][3] == {"kernel": "elman_persistent<bf16>", "kind": "mixer", "ms_per_step": 4.0,
                             "launches_per_step": 26.0}


def test_bench_models_kinds_of_the_default_kernels():
    """The kernels the models run by default land in their kinds: E1 heads' Gluon scans (named
    only ``_fwd`` / ``_bwd``) and its W_h sum as the mixer, the fused Schedule-Free step as the
    optimizer; an Inductor kernel whose name ends in ``_fwd`` stays Inductor's."""
    bm = _benchmark_script("bench_models")
    assert [bm.kernel_kind(k) for k in ("_fwd", "_bwd", "_heads_dw", "_sf_adamw_kernel", "triton_poi_fused_fwd")] == \
        ["mixer", "mixer", "mixer", "optimizer", "Inductor's fused kernels"]


def test_bench_models_idle_time_counts_only_when_no_kernel_runs():
    """bench_models.py --profile's idle time: a gap counts only where no kernel runs on any stream
    (a kernel inside another's span closes none), and goes to the kinds of the kernel that ended
    last before it and of the one after it."""
    bm = _benchmark_script("bench_models")
    spans = [(0.0, 100.0, "nvjet_a"), (10.0, 50.0, "_scan_bwd"),  # beside the GEMM: no gap
             (104.0, 150.0, "_scan_fwd_tma"),  # 4 us after the GEMM
             (160.0, 200.0, "nvjet_b"), (150.0, 155.0, "triton_per_fused_x")]
    out = bm.idle_time(sorted(spans), steps=2)
    assert out["idle_ms_per_step"] == round((4 + 5) / 1e3 / 2, 3)
    assert out["by_pair"] == [{"pair": "Inductor's fused kernels -> matmul", "ms_per_step": 0.003, "gaps_per_step": 0.5},
                              {"pair": "matmul -> mixer", "ms_per_step": 0.002, "gaps_per_step": 0.5}]
    assert out["by_kernels"][0] == {"pair": "triton_per_fused_x -> nvjet_b", "ms_per_step": 0.003, "gaps_per_step": 0.5}
    assert bm.idle_time([], steps=1) == {"idle_ms_per_step": 0.0, "by_pair": [], "by_kernels": []}


def test_bench_models_reads_clock_and_power_from_nvidia_smi(monkeypatch):
    """bench_models.py's clock / power samples: nvidia-smi's CSV fields as numbers for the current
    GPU (named by its UUID), None where nvidia-smi is missing, fails or answers "[N/A]"."""
    bm = _benchmark_script("bench_models")
    monkeypatch.setattr(bm.torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(bm.torch.cuda, "get_device_properties", lambda i: types.SimpleNamespace(uuid="1234-ab"))
    calls, answers = [], iter(["1560, 693.25\n", FileNotFoundError("nvidia-smi"),
                               subprocess.CalledProcessError(9, "nvidia-smi"), "[N/A], 80\n"])

    def run(cmd, **kw):
        calls.append(cmd)
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return types.SimpleNamespace(stdout=answer)

    monkeypatch.setattr(bm.subprocess, "run", run)
    assert bm.nvidia_smi("clocks.sm,power.draw") == [1560.0, 693.25]
    assert calls[0][1:3] == ["--id=GPU-1234-ab", "--query-gpu=clocks.sm,power.draw"]
    assert [bm.nvidia_smi("power.limit") for _ in range(3)] == [None, None, None]


def test_bench_models_back_to_back_times_copies_losses_and_samples_clocks(monkeypatch):
    """bench_models.py's queued window: a step's time between the events around it, the batches
    from ``start`` on (cycling), each loss copied as its step ends (a graph's loss tensor is
    rewritten by the next replay), and clock samples kept only while the GPU is still busy."""
    bm = _benchmark_script("bench_models")
    clock = {"now": 0.0, "busy": 3}  # ms on a fake GPU timeline; how many more queries see it busy

    class Event:
        def __init__(self, enable_timing=False):
            self.t = None

        def record(self):
            self.t = clock["now"]

        def query(self):
            clock["busy"] -= 1
            return clock["busy"] < 0

        def elapsed_time(self, end):
            return end.t - self.t

    monkeypatch.setattr(bm.torch.cuda, "Event", Event)
    monkeypatch.setattr(bm.torch.cuda, "synchronize", lambda: None)
    samples = iter([[1980.0, 300.0], [1560.0, 695.0], [1500.0, 700.0]])
    monkeypatch.setattr(bm, "clock_and_power", lambda: next(samples))
    batches = [torch.tensor(float(i)) for i in range(4)]
    loss, seen = torch.zeros(()), []

    def step(x):  # like a replayed graph: the same loss tensor, rewritten
        seen.append(int(x))
        clock["now"] += 10.0 + int(x)
        loss.fill_(x * 2)
        return loss

    seconds, losses, clocks = bm.back_to_back(step, batches, 3, start=11)
    assert seen == [3, 0, 1]
    assert seconds == [0.013, 0.010, 0.011]
    assert losses == [6.0, 0.0, 2.0]
    # 3 busy answers: the loop's check, the first sample's check, the second's; its third check sees the GPU done
    assert clocks == [[1980.0, 300.0]]


def test_bench_models_table_shows_clock_power_and_limit(capsys):
    """The table's MHz and W columns, "-" without a sample, and the power limit in its header only
    where nvidia-smi gave one."""
    bm = _benchmark_script("bench_models")
    meta = dict(device="GPU", date="today", torch="2", triton="3", mamba_ssm=None, causal_conv1d=None,
                mamba2_fused_path=False, git_commit="abc", power_limit_w=700.0)

    def row(name, **extra):
        return dict(name=name, mode="default", params=10, B=32, tok_per_s=1000, losses=[1.0], step_ms=2.0,
                    synced_step_ms=1.5, host_ms=0.5, peak_mem_gib=1.0, peak_reserved_gib=1.0, first_step_s=1.0, **extra)

    rows = [row("minGRU 3520x16", sm_mhz=1605, power_w=697), row("E16 s4", sm_mhz=None, power_w=None)]
    bm.annotate(rows, peak=989.0)
    bm.print_table(meta, rows)
    lines = capsys.readouterr().out.splitlines()
    assert "(power limit 700 W)" in lines[1]
    header = lines[2].split()
    assert header[header.index("ms") + 1:header.index("ms") + 4] == ["synced", "MHz", "W"]
    assert lines[3].split()[-10:-6] == ["2.0", "1.5", "1605", "697"]
    assert lines[4].split()[-10:-6] == ["2.0", "1.5", "-", "-"]
    bm.print_table(dict(meta, power_limit_w=None), rows)
    assert "power limit" not in capsys.readouterr().out


def test_bench_models_says_where_a_cuda_graph_mode_ran_without_cuda_graphs(capsys):
    """A reduce-overhead row whose compiled graphs Inductor declined to capture runs them as the
    default mode does, which Inductor says only in its cudagraphs log: the row records the skips
    (Inductor's counter, cleared with Dynamo's at each row's start) and the table names it."""
    from torch._dynamo.utils import counters

    bm = _benchmark_script("bench_models")
    counters.clear()
    counters["graph_break"]["some reason"] += 2
    counters["stats"]["unique_graphs"] += 3
    counters["inductor"]["cudagraph_skips"] += 1
    try:
        assert bm.graph_stats() == {"graph_breaks": 2, "graphs": 3, "cudagraph_skips": 1}
    finally:
        counters.clear()
    meta = dict(device="GPU", date="today", torch="2", triton="3", mamba_ssm=None, causal_conv1d=None,
                mamba2_fused_path=False, git_commit="abc")

    def row(mode, skips):
        return dict(name="E1 d26 dense", mode=mode, params=10, B=32, tok_per_s=1000, losses=[1.0], step_ms=2.0,
                    synced_step_ms=1.5, host_ms=0.5, peak_mem_gib=1.0, peak_reserved_gib=1.0, first_step_s=1.0,
                    graph_breaks=0, graphs=1, cudagraph_skips=skips)

    rows = [row("default", 0), row("reduce-overhead", 2)]
    bm.annotate(rows, peak=989.0)
    bm.print_table(meta, rows)
    notes = [line for line in capsys.readouterr().out.splitlines() if "WITHOUT CUDA graphs" in line]
    assert notes == ["E1 d26 dense (reduce-overhead, B=32): 2 compiled graph(s) ran WITHOUT CUDA graphs "
                     "(Inductor skipped them; TORCH_LOGS=cudagraphs says why)"]


def test_bench_models_prints_idle_gaps_by_kernels(capsys):
    """--profile's printout: the idle time, the kinds around the gaps, then each named pair."""
    bm = _benchmark_script("bench_models")
    idle = bm.idle_time([(0.0, 10.0, "nvjet_a"), (1210.0, 1300.0, "triton_per_x"), (1302.0, 1400.0, "_scan_bwd")], 1)
    prof = dict(gpu_ms_per_step=1.0, by_kind_ms={"matmul": 1.0}, idle=idle)
    bm.print_profiles([dict(name="minGRU", mode="default + graph", step_ms=2.0, profile=prof)])
    out = capsys.readouterr().out.splitlines()
    assert out[1] == ("  idle 1.20 ms per step, by the kernels around each gap (ms, gaps a step): "
                      "matmul -> Inductor's fused kernels 1.20 (1), Inductor's fused kernels -> mixer 0.00 (1)")
    assert out[2] == "    1.200 ms (1 a step): nvjet_a -> triton_per_x"
    assert out[3] == "    0.002 ms (1 a step): triton_per_x -> _scan_bwd"


def test_bench_kernels_json_of_a_call_cut_short_keeps_its_rows(tmp_path, monkeypatch):
    """bench_kernels.py writes --json after each row (complete: false) into a folder it makes, so a
    call stopped by its time limit keeps what it measured; finish() writes it complete."""
    bk = _benchmark_script("bench_kernels")
    monkeypatch.setattr(bk.torch.cuda, "get_device_name", lambda: "GPU X")
    monkeypatch.setenv("RNNLAB_GIT_COMMIT", "abc1234")
    args = types.SimpleNamespace(B=2, T=3, json=str(tmp_path / "new" / "k.json"))
    bk.write_json(args.json, dict(meta=bk.kernels_meta(args, 1e12, 1e15, complete=False), rows=[{"name": "a"}]))
    doc = json.loads(Path(args.json).read_text())
    assert doc["rows"] == [{"name": "a"}]
    assert {k: doc["meta"][k] for k in ("device", "git_commit", "B", "T", "complete")} == \
        {"device": "GPU X", "git_commit": "abc1234", "B": 2, "T": 3, "complete": False}
    bk.finish(args, [{"name": "a"}, {"name": "b"}], 1e12, 1e15, None, {})
    doc = json.loads(Path(args.json).read_text())
    assert len(doc["rows"]) == 2 and doc["meta"]["complete"] is True and doc["meta"]["git_commit"] == "abc1234"


def test_bench_kernels_heads_note_is_no_bit_for_bit_over_a_nan():
    """bench_kernels.py's heads rows: a variant whose states agree bit for bit but whose gradient is
    nan reads "outputs within nan", not "bit for bit" (max() passed over the nan)."""
    bk = _benchmark_script("bench_kernels")
    h, d = torch.ones(2, 3), torch.full((2, 3), 2.0)
    assert bk.worst_relative_difference([h, d], [h, d]) == 0.0
    assert bk.worst_relative_difference([h, d * 1.5], [h, d]) == pytest.approx(0.5)
    assert math.isnan(bk.worst_relative_difference([h, d.clone().fill_(float("nan"))], [h, d]))


def test_bench_models_a_mode_whose_losses_are_not_finite_is_not_correct(capsys):
    """A loss that is nan after the first step makes a mode incorrect (max() passed over it: the
    mode read as training alike, and could be the fastest); a rounding twin that diverged widens no
    tolerance; a model whose first mode diverged has no correct mode, and the run still annotates
    (the empty max raised before)."""
    bm = _benchmark_script("bench_models")
    nan = float("nan")

    def row(name, mode, loss, tok_per_s=1000, **extra):
        return dict(name=name, mode=mode, params=10, B=32, tok_per_s=tok_per_s, losses=[5.0, loss], step_ms=1.0,
                    synced_step_ms=1.0, host_ms=0.5, peak_mem_gib=1.0, peak_reserved_gib=1.0, first_step_s=1.0, **extra)

    assert bm.max_dloss([5.0, nan, 4.0], [5.0, 4.5, 4.0]) == bm.max_dloss([5.0, 4.0], [5.0, float("inf")]) == float("inf")
    later = [row("A", "eager", 4.9, twin_losses=[5.0, nan]), row("A", "default", nan, tok_per_s=2000)]
    first = [row("B", "eager", nan), row("B", "default", 5.0)]
    bm.annotate(later + first, peak=989.0)
    assert later[1]["loss_tol"] == bm.LOSS_TOL
    assert [(r["correct"], r["fastest"]) for r in later + first] == [(True, True), (False, False), (False, False),
                                                                     (False, False)]


def test_bench_models_table_ratio_to_mamba2_only_where_mamba2_ran(capsys):
    """The x Mamba2 column: each row's tok/s over Mamba2's fastest correct mode of the same run;
    "-" (not nan) in a run without a Mamba2 row."""
    bm = _benchmark_script("bench_models")
    meta = dict(device="GPU", date="today", torch="2", triton="3", mamba_ssm=None, causal_conv1d=None,
                mamba2_fused_path=False, git_commit="abc")

    def row(name, tok_per_s, mode="default", loss=1.0):
        return dict(name=name, mode=mode, params=10, B=32, tok_per_s=tok_per_s, losses=[loss],
                    step_ms=1.0, synced_step_ms=1.0, host_ms=0.5, peak_mem_gib=1.0, peak_reserved_gib=1.0, first_step_s=1.0)

    # Mamba2's fastest correct mode is reduce-overhead: "off" is faster but trains differently
    with_mamba2 = [row("Mamba2 d22", 100_000), row("Mamba2 d22", 125_000, "reduce-overhead"),
                   row("Mamba2 d22", 150_000, "off", loss=1.0 + 2 * bm.LOSS_TOL), row("E88 49x32 d32", 100_000)]
    bm.annotate(with_mamba2, peak=989.0)
    bm.print_table(meta, with_mamba2)
    ratios = [line.split()[-11] for line in capsys.readouterr().out.splitlines()[3:7]]
    assert ratios == ["0.80", "1.00", "1.20", "0.80"]
    alone = [row("E1 d26 dense", 70_000)]
    bm.annotate(alone, peak=989.0)
    bm.print_table(meta, alone)
    assert capsys.readouterr().out.splitlines()[3].split()[-11] == "-"
    # rows of schedulefree's own step are set against Mamba2 with that step, the others against the fused one
    steps = [row(bm.row_name("Mamba2 d22", "fused"), 120_000), row(bm.row_name("Mamba2 d22", "foreach"), 100_000),
             row(bm.row_name("E16 s4", "fused"), 240_000), row(bm.row_name("E16 s4", "foreach"), 230_000)]
    bm.annotate(steps, peak=989.0)
    assert [r["name"] for r in steps] == ["Mamba2 d22", "Mamba2 d22 [sf foreach]", "E16 s4", "E16 s4 [sf foreach]"]
    assert [r["x_mamba2_best"] for r in steps] == [1.0, 1.0, 2.0, 2.3]


def test_bench_models_tolerance_grows_with_the_rounding_twin(capsys):
    """A mode counts as training like the first mode within LOSS_TOL, or within TWIN_FACTOR times
    the first mode's rounding twin's loss difference when that is larger; the table names both."""
    bm = _benchmark_script("bench_models")

    def row(name, mode, losses, tok_per_s, **extra):
        return dict(name=name, mode=mode, params=10, B=32, tok_per_s=tok_per_s, losses=losses, step_ms=1.0, synced_step_ms=1.0,
                    host_ms=0.5, peak_mem_gib=1.0, peak_reserved_gib=1.0, first_step_s=1.0, **extra)

    stray = 5.0 + bm.LOSS_TOL + 0.003  # just past the fixed tolerance, like E1 low-rank's compiled 0.053
    wide = [row("A", "eager", [5.0, 5.0], 1, twin_losses=[5.0, 5.04]), row("A", "default", [5.0, stray], 2)]
    narrow = [row("B", "eager", [5.0, 5.0], 1, twin_losses=[5.0, 5.01]), row("B", "default", [5.0, stray], 2)]
    alone = [row("C", "eager", [5.0, 5.0], 1), row("C", "default", [5.0, stray], 2)]
    rows = wide + narrow + alone
    bm.annotate(rows, peak=989.0)
    assert [r["correct"] for r in rows] == [True, True, True, False, True, False]
    assert [r["fastest"] for r in rows] == [False, True, True, False, True, False]
    assert (wide[0]["max_dloss_twin"], wide[1]["loss_tol"], narrow[1]["loss_tol"]) == (0.04, 0.08, bm.LOSS_TOL)
    bm.print_table(dict(device="GPU", date="today", torch="2", triton="3", mamba_ssm=None, causal_conv1d=None,
                        mamba2_fused_path=False, git_commit="abc"), rows)
    out = capsys.readouterr().out
    assert "A (B=32): rounding twin's dloss 0.0400, tolerance 0.0800" in out
    assert "B (B=32): rounding twin's dloss 0.0100, tolerance 0.0500" in out


def test_bench_models_a_mode_off_at_its_first_step_is_not_correct_whatever_the_twin():
    """A mode whose first step's loss (same weights and batch, before any update) differs from the
    first mode's by more than FIRST_STEP_TOL is not correct, even inside a tolerance widened by a
    rounding twin whose losses part fast (0.32 in the scoreboard): at the first step only the
    kernels' rounding differs (published runs: within 0.0005, E88 0.0039)."""
    bm = _benchmark_script("bench_models")

    def row(mode, losses, tok_per_s, **extra):
        return dict(name="A", mode=mode, params=10, B=32, tok_per_s=tok_per_s, losses=losses, step_ms=1.0,
                    synced_step_ms=1.0, host_ms=0.5, peak_mem_gib=1.0, peak_reserved_gib=1.0, first_step_s=1.0, **extra)

    first = row("eager", [6.0, 5.0, 4.0], 1, twin_losses=[6.0, 5.2, 4.3])  # tolerance 0.6
    off = 6.0 + bm.FIRST_STEP_TOL + 0.01
    rows = [first, row("default", [off, 5.1, 4.2], 3), row("reduce-overhead", [6.004, 5.3, 4.5], 2)]
    bm.annotate(rows, peak=989.0)
    assert rows[1]["loss_tol"] == 0.6 and rows[1]["max_dloss_vs_first_mode"] < 0.6
    assert [r["correct"] for r in rows] == [True, False, True]
    assert [r["fastest"] for r in rows] == [False, False, True]
    assert rows[2]["dloss_first_step"] == 0.004


def test_bench_models_judges_the_speed_targets_in_fastest_correct_modes(capsys):
    """bench_models.py's targets: MFU of each target row's fastest correct mode, dense E1's tok/s
    over Mamba2's and the ablation rows' over plain E1's, each against its bound; rows that did not
    run (or whose partner did not) give no line; a faster mode that trains differently does not count."""
    bm = _benchmark_script("bench_models")

    def row(name, tok_per_s, mode="default", params=400_000_000, loss=1.0):
        return dict(name=name, mode=mode, params=params, B=32, tok_per_s=tok_per_s, losses=[loss])

    peak = 989.0
    at = lambda mfu: round(mfu * peak * 1e12 / (6 * 400_000_000))  # noqa: E731 - tok/s giving this MFU
    rows = [row("Mamba2 d22", 120_000), row("E1 d26 dense", at(0.29)),
            row("E1 d26 dense", at(0.31), mode="off", loss=2.0),  # faster, but trains differently
            row("E1 d26 decay 1600", round(at(0.29) * 0.81)), row("E1 d26 lowrank 1744", round(at(0.29) * 0.79)),
            row("E16 s4 1024x10 e2", at(0.61)), row("minGRU 3520x16", at(0.59996))]  # a hair under: not met
    bm.annotate(rows, peak)
    found = {(t["row"], t["what"]): (t["value"], t["met"]) for t in bm.targets(rows)}
    assert found == {("E1 d26 dense", "MFU"): (pytest.approx(0.29, abs=3e-6), False),
                     ("E1 d26 dense", "x Mamba2"): (pytest.approx(at(0.29) / 120_000), False),
                     ("E1 d26 decay 1600", "x E1 d26 dense"): (pytest.approx(0.81, abs=1e-5), True),
                     ("E1 d26 lowrank 1744", "x E1 d26 dense"): (pytest.approx(0.79, abs=1e-5), False),
                     ("E16 s4 1024x10 e2", "MFU"): (pytest.approx(0.61, abs=3e-6), True),
                     ("minGRU 3520x16", "MFU"): (pytest.approx(0.59996, abs=3e-6), False)}
    bm.print_targets(bm.targets(rows))
    out = capsys.readouterr().out
    assert "E16 s4 1024x10 e2 (B=32): MFU 61.0%, target >= 60%: met" in out
    assert "minGRU 3520x16 (B=32): MFU 60.0%, target >= 60%: NOT met" in out
    assert "E1 d26 lowrank 1744 (B=32): x E1 d26 dense 0.790, target >= 0.80: NOT met" in out
    without_dense = bm.targets([r for r in rows if r["name"] != "E1 d26 dense"])
    assert [t["row"] for t in without_dense] == ["E16 s4 1024x10 e2", "minGRU 3520x16"]


def test_bench_models_rounding_twin_moves_each_weight_one_bf16_step():
    """round_weights_apart: every nonzero bf16 weight moves up or down (both happen) by one or two
    bf16 steps, zeros stay, and the same seed moves them the same way."""
    bm = _benchmark_script("bench_models")
    torch.manual_seed(0)
    model = torch.nn.Linear(64, 32).to(torch.bfloat16)
    with torch.no_grad():
        model.bias[:4] = 0
    before = [p.detach().clone() for p in model.parameters()]
    bm.round_weights_apart(model)
    for old, new in zip(before, model.parameters()):
        moved = new.float() / old.float().where(old != 0, torch.ones_like(old.float())) - 1
        nonzero = old != 0
        assert (new[~nonzero] == 0).all()
        assert (moved[nonzero].abs() >= bm.TWIN_STEP / 2).all() and (moved[nonzero].abs() <= 3 * bm.TWIN_STEP).all()
        assert (moved[nonzero] > 0).any() and (moved[nonzero] < 0).any()
    again = torch.nn.Linear(64, 32).to(torch.bfloat16)
    again.load_state_dict({k: v.clone() for k, v in zip(("weight", "bias"), before)})
    bm.round_weights_apart(again)
    assert all(torch.equal(a, b) for a, b in zip(again.parameters(), model.parameters()))


def test_bench_models_sets_each_fused_step_row_beside_schedulefrees(capsys):
    """--sf-step fused foreach: each fused row (the plain name) gets its loss difference from and
    tok/s ratio to the same model, mode and batch under schedulefree's step; rows without a twin
    (another mode, or no foreach row) get neither."""
    bm = _benchmark_script("bench_models")

    def row(name, tok_per_s, losses, mode="default"):
        return dict(name=name, mode=mode, B=32, tok_per_s=tok_per_s, losses=losses)

    rows = [row("E16 s4", 220_000, [5.0, 4.25]), row("E16 s4" + bm.FOREACH_SUFFIX, 200_000, [5.0, 4.0]),
            row("minGRU", 1.0, [1.0], mode="off"), row("minGRU" + bm.FOREACH_SUFFIX, 1.0, [1.0])]
    bm.compare_twins(rows, bm.FOREACH_SUFFIX, "foreach", "schedulefree's step")
    assert (rows[0]["x_foreach"], rows[0]["max_dloss_vs_foreach"]) == (1.1, 0.25)
    assert not any("x_foreach" in r for r in rows[1:])
    assert capsys.readouterr().out.strip() == ("E16 s4 (default, B=32): 1.100x the tok/s of "
                                               "schedulefree's step, losses within 0.25000")


def test_bench_models_sets_each_row_beside_its_scan_against_twin(capsys):
    """--scan-against: each minGRU row is compared with its twin of the other scan kernels, the
    foreach-step row with the foreach-step twin (suffixes in row_name's order), and the twin's
    ratio to Mamba2 is the one of Mamba2 with the same optimizer step."""
    bm = _benchmark_script("bench_models")

    def row(name, tok_per_s, losses):
        return dict(name=name, mode="off", B=32, tok_per_s=tok_per_s, losses=losses)

    names = [bm.row_name("minGRU", step, against) for step in ("fused", "foreach") for against in ("", bm.SCAN_SUFFIX)]
    assert names == ["minGRU", "minGRU [--scan-against]", "minGRU [sf foreach]", "minGRU [sf foreach] [--scan-against]"]
    rows = [row(names[0], 230_000, [5.0, 4.0]), row(names[1], 200_000, [5.0, 4.01]),
            row(names[2], 100_000, [5.0, 4.0]), row(names[3], 125_000, [5.0, 4.0])]
    bm.compare_twins(rows, bm.SCAN_SUFFIX, "scan_against", "--scan-against's scan kernels")
    assert [r.get("x_scan_against") for r in rows] == [1.15, None, 0.8, None]
    assert rows[0]["max_dloss_vs_scan_against"] == 0.01
    assert capsys.readouterr().out.splitlines()[1] == ("minGRU [sf foreach] (off, B=32): 0.800x the tok/s of "
                                                       "--scan-against's scan kernels, losses within 0.00000")
    mamba2 = [dict(row("Mamba2 d22", 100_000, [1.0]), params=1), dict(row("Mamba2 d22 [sf foreach]", 50_000, [1.0]), params=1)]
    steps = mamba2 + [dict(r, params=1) for r in rows]
    bm.annotate(steps, peak=989.0)
    assert [r["x_mamba2_best"] for r in steps[2:]] == [2.3, 2.0, 2.0, 2.5]


def test_a_kernel_module_replaced_inside_the_block_only():
    """LazyKernel.replaced (bench_models.py --scan-against): the op's kernel module is the other
    one inside the block and its own after it, also after an error inside."""
    from types import SimpleNamespace

    from rnnlab.ops.scan import MINGRU_SCAN

    own = MINGRU_SCAN.kernel.get()
    other = SimpleNamespace(mingru_scan=lambda p, h0: ("other", None))
    with pytest.raises(KeyError):
        with MINGRU_SCAN.kernel.replaced(other):
            assert MINGRU_SCAN.kernel.get() is other
            raise KeyError
    assert MINGRU_SCAN.kernel.get() is own and MINGRU_SCAN.kernel.error is None


def test_merge_suite_json_keeps_a_command_repeated_later_and_an_old_format_record():
    """A command run again later (not right after itself) stays twice, in date order; a kept
    suite.json from before continued suites (its command at the top level) keeps its command."""
    m = _benchmark_script("merge_suite_json")

    def inv(cmd, written):
        return {"command": cmd, "options": {}, "written": written}

    kept = {"suite": "s", "invocations": [inv("A", "1"), inv("B", "2"), inv("A", "3")], "runs": []}
    call = {"suite": "s", "invocations": [inv("A", "1"), inv("B", "2"), inv("C", "4")], "runs": []}
    assert [c["command"] for c in m.merge(kept, call)["invocations"]] == ["A", "B", "A", "C"]
    old = {"suite": "s", "command": "X", "options": {}, "written": "0", "runs": []}
    merged = m.merge(old, call)
    assert [c["command"] for c in merged["invocations"]] == ["X", "A", "B", "C"] and "command" not in merged


def test_merge_suite_json_orders_runs_as_the_suite_defines_them():
    """Two calls that started from the same slim copy come back in either order; the merged runs
    follow the suite's TOML (depth-sweep: e1-d22, e1-d32, e1-d40), not the order of arrival."""
    m = _benchmark_script("merge_suite_json")

    def run(name):
        return {"name": name, "dir": name, "seed": None}

    doc = {"suite": "depth-sweep", "path": "rnnlab/bench/suites/depth-sweep.toml"}
    kept = {**doc, "invocations": [], "runs": [run("e1-d22"), run("e1-d32")]}
    call = {**doc, "invocations": [], "runs": [run("e1-d22"), run("e1-d40")]}
    order = m.suite_order(call)
    assert order.index("e1-d22") < order.index("e1-d32") < order.index("e1-d40")
    assert [r["name"] for r in m.merge(kept, call, order)["runs"]] == ["e1-d22", "e1-d32", "e1-d40"]
    assert [r["name"] for r in m.merge(kept, call)["runs"]] == ["e1-d22", "e1-d40", "e1-d32"]  # arrival
    assert m.suite_order({"suite": "gone", "path": "rnnlab/bench/suites/no-such.toml"}) == []


def test_mean_std_is_the_sample_std_over_finite_values():
    """A diverged seed (nan, inf) or a missing value (None) is left out of a row's mean ± std,
    which uses the sample standard deviation (n - 1), and counts only what it used."""
    from rnnlab.bench.collect import mean_std

    m, s, n = mean_std([1.0, float("nan"), 3.0, None, float("inf")])
    assert (m, n) == (2.0, 2) and s == pytest.approx(2**0.5)
    assert mean_std([1.0, 2.0, 6.0]) == pytest.approx((3.0, 7**0.5, 3))  # the mean (the median is 2)
    assert mean_std([5.0]) == (5.0, None, 1) and mean_std([None]) == (None, None, 0)


@pytest.mark.parametrize("n, text", [(999, "999"), (1000, "1.00K"), (9_994, "9.99K"), (10_000, "10.0K"),
                                     (99_940, "99.9K"), (100_000, "100K"), (1_000_000, "1.00M"),
                                     (12_345_678, "12.3M"), (1e9, "1.00B"), (400e9, "400B"), (None, "-"),
                                     (999_950, "1.00M"), (99_960, "100K"), (9_996, "10.0K")])
def test_counts_keep_three_significant_digits(n, text):
    from rnnlab.bench.report import fmt_count

    assert fmt_count(n) == text


def test_times_of_100_s_and_more_are_whole_seconds():
    from rnnlab.bench.report import fmt_time

    assert [fmt_time(v) for v in (5.04, 99.94, 100.0, 515.4)] == ["5.0 s", "99.9 s", "100 s", "515 s"]


def test_a_runs_seed_is_its_planned_seed_else_its_configs():
    from rnnlab.bench.collect import run_seed

    assert run_seed({"seed": 3, "config": {}, "summary": {}}) == 3  # planned, not run yet
    assert run_seed({"seed": 3, "config": {"seed": 3}, "summary": {"seed": 3}}) == 3
    assert run_seed({"seed": None, "config": {"seed": 7}, "summary": {"seed": 8}}) == 7
    assert run_seed({"seed": None, "config": {}, "summary": {"seed": 9}}) == 9


def _set_config(root: Path, name: str, **kw) -> None:
    p = root / name / "config.json"
    p.write_text(json.dumps({**json.loads(p.read_text()), **kw}))


def test_cli_params_replace_a_rows_own_target_params(tmp_path):
    """``--params N`` (``plan_suite(params=...)``) re-solves every run for N parameters, a row's own
    ``target_params`` included (depth-sweep: "scale down with --params 50M"); without it the row's
    own target holds."""
    suite = parse_suite({"name": "t", "runs": [{"name": "solved", "model": "e1", "depth": 2, "target_params": "100K"},
                                              {"name": "fixed", "model": "e1", "depth": 2, "dim": 32}]})
    own = {p.name: p for p in plan_suite(suite, tmp_path)}
    assert own["solved"].target_params == 100_000 and abs(own["solved"].params - 100_000) < 20_000
    assert own["fixed"].target_params is None and own["fixed"].cfg.model.dim == 32
    scaled = {p.name: p for p in plan_suite(suite, tmp_path, params="400K")}
    for p in scaled.values():
        assert p.target_params == 400_000 and abs(p.params - 400_000) < 60_000, (p.name, p.params)
        assert p.params == count_params(p.cfg.model) and p.cfg.model.depth == 2


def test_report_flags_rows_that_differ_in_weight_decay(tmp_path):
    """Runs that differ only in weight decay were not run under one protocol: the report warns,
    and a row whose weight decay is not the reference's is left out of the reference table."""
    _synthetic_run(tmp_path, "a", 1.6, 2.3, 16000.0)
    _synthetic_run(tmp_path, "b", 1.6, 2.3, 16000.0)
    _set_config(tmp_path, "b", weight_decay=0.0)
    ref = {"params": 400_000_000, "loss": 1.6}
    (tmp_path / "suite.json").write_text(json.dumps({
        "suite": "s", "defaults": {"weight_decay": 0.1},
        "runs": [{"name": n, "seed": None, "dir": n, "point": None} for n in "ab"],
        "reference": {"source": "ref", "runs": {"a": ref, "b": ref}}}))
    md = write_report(tmp_path, plots=False)["md"].read_text()
    assert "> - weight_decay: a 0.1; b 0.0" in md
    assert [r[0] for r in _table_rows(md, "| Model | Params (reference / ours)")] == ["a"]
    assert "- b: weight_decay 0.0 (reference 0.1)" in md


def test_a_suites_grad_clip_0_is_a_rows_no_clipping_beside_its_reference(tmp_path):
    """A suite whose defaults say ``grad_clip = 0`` (no clipping) and a row whose config.json says
    None (how 0 is stored) ran one protocol: the row stands beside its reference numbers."""
    _synthetic_run(tmp_path, "a", 1.6, 2.3, 16000.0)
    _set_config(tmp_path, "a", grad_clip=None)
    ref = {"params": 400_000_000, "loss": 1.6}
    (tmp_path / "suite.json").write_text(json.dumps({
        "suite": "s", "defaults": {"grad_clip": 0},
        "runs": [{"name": "a", "seed": None, "dir": "a", "point": None}],
        "reference": {"source": "ref", "runs": {"a": ref}}}))
    md = write_report(tmp_path, plots=False)["md"].read_text()
    assert [r[0] for r in _table_rows(md, "| Model | Params (reference / ours)")] == ["a"]


def test_report_flags_rows_that_differ_in_betas_or_clipping(tmp_path):
    """Adam's betas and gradient clipping are part of a row's protocol: rows that differ in them
    are flagged, and the protocol line says each row's."""
    for name in "abc":
        _synthetic_run(tmp_path, name, 1.6, 2.3, 16000.0)
        _set_config(tmp_path, name, betas=[0.9, 0.95], grad_clip=1.0)
    _set_config(tmp_path, "b", betas=[0.9, 0.999])
    _set_config(tmp_path, "c", grad_clip=None)
    md = write_report(tmp_path, plots=False)["md"].read_text()
    assert "> - betas: a, c [0.9, 0.95]; b [0.9, 0.999]" in md
    assert "> - grad_clip: a, b 1.0; c None" in md
    assert "betas 0.9/0.999 wd 0.1, clip 1, bf16" in md and "betas 0.9/0.95 wd 0.1, no clipping" in md


def test_report_settings_are_the_same_within_float_tolerance(tmp_path):
    """A setting equal to the reference's up to float rounding (1e-4 computed as 0.3e-3 / 3) is the
    same protocol; one that differs beyond that (by 1e-4 relative) is not."""
    from rnnlab.bench.report import _same

    assert _same(3e-4, 0.1 * 3e-3) and _same(16, 16.0) and _same("adamw", "adamw")
    assert not _same(1e-4, 1.0001e-4) and not _same(0.1, 0.0) and not _same("adamw", "schedulefree-adamw")
    names = ("rounded", "exact", "other")
    for name, lr in zip(names, (0.3e-3 / 3, 1e-4, 1.0001e-4)):
        _synthetic_run(tmp_path, name, 1.6, 2.3, 16000.0)
        _set_config(tmp_path, name, lr=lr)
    ref = {"params": 400_000_000, "loss": 1.6}
    (tmp_path / "suite.json").write_text(json.dumps({
        "suite": "s", "defaults": {"lr": 1e-4},
        "runs": [{"name": n, "seed": None, "dir": n, "point": None} for n in names],
        "reference": {"source": "ref", "runs": dict.fromkeys(names, ref)}}))
    md = write_report(tmp_path, plots=False)["md"].read_text()
    assert [r[0] for r in _table_rows(md, "| Model | Params (reference / ours)")] == ["rounded", "exact"]
    assert "- other: lr 0.00010001 (reference 0.0001)" in md and "- rounded:" not in md
    # the protocol warning groups the same way: rounded with exact, other apart
    assert re.search(r"> - lr: rounded, exact 9\.99\d*e-05; other 0\.00010001$", md, re.M), md


def test_seeds_beside_a_run_that_sets_its_own_seed_is_refused(tmp_path, capsys):
    """``rnnlab bench e88-recipe-400m --seeds 45`` trained its ``-seed43`` rows at seed 45 (folder
    ``NAME-seed43-s45``), the suite file's seed dropped without a word; refused in one line naming
    those runs. ``--runs`` without them, or no ``--seeds``, plans as before."""
    suite = load_suite("e88-recipe-400m")
    with pytest.raises(ValueError, match=r"--seeds would replace the seed these runs set: .*"
                                         r"e1-heads-graph-b16-lr9\.2e-4-seed43 \(seed = 43\)"):
        plan_suite(suite, tmp_path, seeds="45", device="cpu")
    assert [p.cfg.run.seed for p in plan_suite(suite, tmp_path, seeds="45,46", runs="e88-b16-lr9.2e-4",
                                                device="cpu", cuda_graph=False)] == [45, 46]
    assert main(["bench", "e88-recipe-400m", "--plan", "--seeds", "45",
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "mamba2-b8-lr3e-4-3x-seed43 (seed = 43)" in err
    assert not (tmp_path / "o").exists()


def test_repeated_seeds_are_refused_in_one_line(tmp_path, capsys):
    """``--seeds 1,1`` would train one folder twice and count it as two seeds: refused in one
    line (exit 2), as are negative seeds (0 is a seed); nothing is written."""
    from rnnlab.bench.suite import parse_seeds

    for seeds in ("1,1", "3,2,3", "-1"):
        with pytest.raises(ValueError, match="distinct non-negative"):
            plan_suite(load_suite("tiny"), tmp_path, seeds=seeds)
    assert parse_seeds("0, 1") == [0, 1]
    assert main(["bench", "tiny", "--plan", "--seeds", "2,1,2", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == ("rnnlab bench: error: --seeds must list distinct non-negative "
                                               "integers, got '2,1,2'")
    assert not (tmp_path / "o").exists()


def _second_run_raises(monkeypatch, error: BaseException) -> list:
    """Fake training for suite ``tiny`` whose second run (mamba2) raises ``error``; the calls made. The
    stand-in is the Trainer, so that the package's own ``run_training`` calls it (and unwraps a Ctrl-C
    that a library wrapped, as it does for a real run)."""
    import rnnlab.train.trainer as trainer

    calls: list = []
    fake = _fake_trainer(calls)

    class Trainer:
        def __init__(self, cfg, progress=True):
            self.cfg, self.progress = cfg, progress

        def train(self):
            if Path(self.cfg.run.out).name == "mamba2":
                raise error
            return fake(self.cfg, self.progress)

    monkeypatch.setattr(trainer, "Trainer", Trainer)
    return calls


def test_a_failed_run_makes_the_suite_exit_1(tmp_path, capsys, monkeypatch):
    """A run that fails does not stop ``rnnlab bench``: the other runs train, the report is
    written, and the command exits 1 naming the failed runs (a script or CI job sees it)."""
    calls = _second_run_raises(monkeypatch, RuntimeError("CUDA error: out of memory"))
    out = tmp_path / "s"
    assert main(["bench", "tiny", "--steps", "2", "--out", str(out), "--no-plots", "--no-progress"]) == 1
    assert capsys.readouterr().err.endswith("\n1 run failed: mamba2\n")
    assert len(calls) == len(load_suite("tiny").runs) - 1 and (out / "report.md").exists()


@pytest.mark.parametrize("ctrl_c", [KeyboardInterrupt("aborted by Ctrl-C at step 1"),
                                    ImportError("initialization failed")], ids=["bare", "wrapped"])
def test_ctrl_c_stops_the_suite_with_exit_130(tmp_path, capsys, monkeypatch, ctrl_c):
    """A Ctrl-C that aborts a run of ``rnnlab bench`` stops the suite (later runs are not started)
    and exits 130 after writing the report of what ran; no traceback. So does one that a library
    wrapped (pybind11's ImportError, as a kernel first loads), where the suite recorded a failed run
    and went on."""
    if not isinstance(ctrl_c, KeyboardInterrupt):
        ctrl_c.__cause__ = KeyboardInterrupt()
    calls = _second_run_raises(monkeypatch, ctrl_c)
    out = tmp_path / "s"
    assert main(["bench", "tiny", "--steps", "2", "--out", str(out), "--no-plots", "--no-progress"]) == 130
    err = capsys.readouterr().err
    assert f"[2/{len(load_suite('tiny').runs)}] mamba2: aborted; stopping the suite" in err and "Traceback" not in err
    assert [name for name, _ in calls] == ["e1"] and (out / "report.md").exists()


def test_bench_trainer_rows_time_the_trainers_steps_with_their_change_only():
    """bench_trainer.py's trainer rows (CPU smoke: a tiny E16): the steps after the first 10, their
    spread in order; each row's change (TensorBoard off, the garbage collector off) in effect while
    it trains, and undone after it."""
    import gc

    from rnnlab.train import metrics

    bt = _benchmark_script("bench_trainer")
    kept = metrics.TensorBoard
    rows = {change: bt.trainer_row("e16", bt.SMOKE["e16"], change, steps=13, smoke=True)
            for change in ("none", "no TensorBoard", "no gc")}
    for change, row in rows.items():
        assert row["steps"] == len(row["step_ms"]) == 3 and row["change"] == change
        assert row["min_ms"] <= row["p10_ms"] <= row["median_ms"] <= row["p90_ms"] <= row["max_ms"]
        assert ("TensorBoard" in row["trackers"]) == (change != "no TensorBoard")
        assert row["gc_on_while_training"] == (change != "no gc")
        assert row["graphs"] == 0  # the smoke rows do not compile
        assert metrics.TensorBoard is kept and gc.isenabled()


def _bench_distributed_json(tmp_path, monkeypatch, *args) -> dict:
    """bench_distributed.py's --json for a run whose ``rnnlab train`` calls are stood in for."""
    bd = _benchmark_script("bench_distributed")
    steps = [{"tok_per_s": 1000.0}] * 12
    monkeypatch.setattr(bd, "run", lambda *a: {"params": 10, "peak_mem_gib": 0.1, "loss": 5.0,
                                                "tok_per_s": steps, "steps": 12})
    out = tmp_path / "dist.json"
    monkeypatch.setattr(sys, "argv", ["bench_distributed.py", "--models", "e1", "--steps", "12", "--warmup", "2",
                                      *args, "--json", str(out)])
    assert bd.main() == 0
    return json.loads(out.read_text())


def test_bench_distributed_records_the_commit(tmp_path, monkeypatch):
    """bench_distributed.py's --json names the code's commit beside its device and date, as every
    other benchmark's does (results/distributed_h200x2.json had none)."""
    monkeypatch.setenv("RNNLAB_GIT_COMMIT", "abc1234")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H200")
    meta = _bench_distributed_json(tmp_path, monkeypatch)["meta"]
    assert (meta["git_commit"], meta["device"]) == ("abc1234", "2 x NVIDIA H200") and meta["date"]


def test_bench_distributed_cpu_smoke_run_writes_its_json(tmp_path, monkeypatch):
    """The CPU smoke run bench_distributed.py offers (--dim 64 --depth 2) writes its --json after
    training instead of failing on the GPU's name."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    doc = _bench_distributed_json(tmp_path, monkeypatch, "--dim", "64", "--depth", "2")
    assert doc["meta"]["device"] == "cpu" and doc["rows"][0]["1gpu"]["tok_per_s"] == 1000.0


def test_bench_distributed_compile_trains_every_run_compiled(tmp_path, monkeypatch, capsys):
    """--compile reaches every ``rnnlab train`` the benchmark runs (1 GPU, DDP, FSDP2) and is
    recorded in its --json and table; without it every run is eager."""
    bd = _benchmark_script("bench_distributed")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    for flag in ([], ["--compile"]):
        cmds = []
        monkeypatch.setattr(bd.subprocess, "run", lambda cmd, **kw: cmds.append(cmd) or
                            subprocess.CompletedProcess(cmd, 1, "", "stood in"))
        out = tmp_path / f"d{len(flag)}.json"
        monkeypatch.setattr(sys, "argv", ["bench_distributed.py", "--models", "e1", "--dim", "64", "--depth", "2",
                                          *flag, "--json", str(out)])
        assert bd.main() == 0
        trains = [c for c in cmds if c[1:4] == ["-m", "rnnlab", "train"]]  # (git asks for the commit too)
        assert len(trains) == 3 and all(("--compile" in c) == bool(flag) for c in trains)
        doc = json.loads(out.read_text())
        assert doc["meta"]["compile"] == doc["rows"][0]["compile"] == bool(flag)
        assert ("bf16, compiled" if flag else "bf16, eager") in capsys.readouterr().out


def test_bench_trainer_models_are_the_races_in_their_race_modes(tmp_path):
    """bench_trainer.py measures the race's Mamba2, E16 and Gated DeltaNet: the same configs, and
    compiled or eager as the race runs them."""
    bt = _benchmark_script("bench_trainer")
    race = {p.name: p.cfg for p in plan_suite(load_suite("race-400m"), tmp_path)}
    for kind, run in {"mamba2": "mamba2", "e16": "e16-s4", "gdn": "gdn"}.items():
        m, ours = race[run].model, bt.MODELS[kind]
        assert (ours["model"], ours["dim"], ours["depth"]) == (m.model, m.dim, m.depth)
        assert (kind in bt.EAGER) == (not race[run].run.compile)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="runs the Triton interpreter (CPU-only machines)")
@pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning")
def test_heads_floor_kernel_computes_the_heads_recurrence():
    """bench_kernels.py's heads-floor loop is the E1 heads recurrence (so its floor is that of the
    real work): with every part on, all states equal the float64 reference and, bit for bit, the
    package's heads forward (fp32 and the 16-bit path the GPU times; a padded head width, two batch
    tiles); without the load each step reuses step 0's input; the dW MMA is sum_t h_t^T h_{t-1}
    per batch tile."""
    from rnnlab.ops.elman import heads, naive
    from rnnlab.ops.elman.options import ElmanKernelOptions

    bk = _benchmark_script("bench_kernels")
    g = torch.Generator().manual_seed(0)
    B, T, nh, hd = 20, 4, 2, 12
    wx, w = torch.randn(B, T, nh * hd, generator=g), torch.randn(nh, hd, hd, generator=g) / hd**0.5
    h, dw = bk.heads_chain(wx, w, load=True, store=True, dw=True)
    ref, _ = naive.elman_scan(wx.double(), w.double(), None)
    torch.testing.assert_close(h, ref.float(), rtol=1e-5, atol=2e-5)
    for dtype in (torch.float32, torch.float16):
        x16, w16 = wx.to(dtype), w.to(dtype)
        assert torch.equal(bk.heads_chain(x16, w16)[0], heads.forward(x16, w16, None, ElmanKernelOptions()))
    hs = ref.view(B, T, nh, hd)
    prev = torch.cat([torch.zeros_like(hs[:, :1]), hs[:, :-1]], 1)
    per_tile = [torch.einsum("btnk,btnj->nkj", hs[i:i + 16], prev[i:i + 16]).float() for i in (0, 16)]
    torch.testing.assert_close(dw, torch.stack(per_tile), rtol=1e-5, atol=2e-5)
    h, _ = bk.heads_chain(wx, w, load=False, store=False, out=torch.zeros_like(wx))
    same_input, _ = naive.elman_scan(wx[:, :1].expand(B, T, -1).double(), w.double(), None)
    torch.testing.assert_close(h[:, -1], same_input[:, -1].float(), rtol=1e-5, atol=2e-5)
    assert not h[:, :-1].any()  # only the last step's state was stored


def test_dense_floor_cuts_match_the_persistent_kernel():
    """bench_kernels.py's dense-floor copies of persistent.cu: every cut edits the package's current
    source (each edit matching exactly once, so a kernel change that moves a part fails here, not in
    a GPU call), the copies differ from the source and from each other, and a source the cuts no
    longer match is refused with the cut's name."""
    from rnnlab.ops.elman import persistent

    bk = _benchmark_script("bench_kernels")
    text = persistent.SOURCE.read_text()
    copies = {cuts: bk.dense_floor_source(cuts, text) for cuts in bk.DENSE_FLOOR_VARIANTS}
    assert len(set(copies.values()) | {text}) == len(copies) + 1
    everything = copies[("wait", "stage", "mma")]
    assert "wait_producers(myflags" not in everything and "kt < kt1" not in everything
    assert "< kt1) tile(" not in everything  # nor from W's fragments in registers
    assert "cp_async16(d, g)" in everything  # the per-warp staging's loop is still compiled, never entered
    wread = copies[("wread",)]  # W's fragments read once a step, before the K loop
    assert wread.count("load_matrix_sync(bf[j]") == 1 and "ws + j * 16 * ld + kt0 * 16" in wread
    assert "w < WARPS; ++w) a += part" not in copies[("reduce",)]
    assert "kt * 16, ld);" not in copies[("sread",)].split("auto tile")[1].split("};")[0]  # no per-tile state read
    assert "i % 2 == 0 && kt0 + i < kt1" in copies[("mma-half",)]
    assert copies[("mma-twice",)].count("tile(kt0 + i, wf[i]);") == 2
    with pytest.raises(ValueError, match="cut 'mma'"):
        bk.dense_floor_source(("mma",), text.replace("for (int kt = kt0; kt < kt1; ++kt)", "for (int kt = kt1; kt--;)"))


def test_dense_wgmma_probe_runs_match_its_kernel():
    """bench_kernels.py's dense-wgmma section passes the probe kernel's Part bits as
    dense_wgmma_probe.cu defines them, each timed run's name says which parts it runs, every
    combination is one the kernel accepts (the epilogue and st.async need the reduction), and the
    descriptor offsets tried first are the state layout's (core matrices 128 bytes apart in K, KC / 8
    of them a row of 8)."""
    bk = _benchmark_script("bench_kernels")
    source = bk.WGMMA_PROBE.read_text()
    enum = re.search(r"enum Part : int \{(.*?)\};", source, re.S).group(1)
    bits = dict(re.findall(r"k(\w+) = (\d+)", enum))
    assert bits == {"Mma": "1", "Reduce": "2", "Epilogue": "4", "Async": "8", "Stage": "16", "Bulk": "32",
                    "Vec4": "64", "BulkReduce": "128"}
    words = {1: "MMAs", 2: "reduction", 4: "epilogue", 8: "st.async", 16: "staging", 32: "bulk staging",
             64: "v4", 128: "bulk copies"}
    runs = dict(bk.WGMMA_PROBE_PARTS)
    assert len(set(runs.values())) == len(runs)
    for name, parts in runs.items():
        assert [bool(parts & bit) for bit in words] == [word in name for word in words.values()], name
        assert ("cluster barrier" in name) == (parts & (2 | 8 | 128) == 2), name
        assert not parts & (4 | 8 | 128) or parts & 2, name
        assert not parts & 32 or parts & 16, name
        assert not parts & 64 or parts & 8, name
        assert not (parts & 128 and parts & 8), name
    kc = int(re.search(r"constexpr int KC = (\d+);", source).group(1))
    assert bk.WGMMA_PROBE_OFFSETS[0] == (128, kc // 8 * 128)
    # the bulk staging's tiled state: element (b, k) where the kernel's layout puts it
    state = torch.arange(32 * 4 * kc, dtype=torch.float32).view(32, 4 * kc)
    tiled = bk.wgmma_probe_tiles(state)
    for b, k in ((0, 0), (3, 5), (9, 17), (31, kc + 8), (17, 4 * kc - 1)):
        s, kk = divmod(k, kc)
        assert tiled[s * 32 * kc + ((b // 8) * kc // 8 + kk // 8) * 64 + b % 8 * 8 + kk % 8] == state[b, k]


@pytest.mark.parametrize("kernel, edit", [("persistent", ("mbar_wait(bar, phase);", "mbar_wait(bar, phase ^ 0u);")),
                                          ("wgmma", ("mbar_wait(bar0 + 16, s & 1);", "mbar_wait(bar0 + 16, (s & 1) ^ 0u);"))])
def test_kernel_candidates_edit_the_current_kernel(kernel, edit, monkeypatch):
    """bench_kernels.py's candidate changes to the persistent and wgmma kernels apply to the
    package's current source (each edit exactly once), are refused by name where they no longer
    match, and reach the timing as copies of the source (here a candidate written for the test)."""
    import importlib

    source = importlib.import_module(f"rnnlab.ops.elman.{kernel}").SOURCE
    bk = _benchmark_script("bench_kernels")
    candidates, candidate = getattr(bk, f"{kernel.upper()}_CANDIDATES"), getattr(bk, f"{kernel}_candidate")
    for name in candidates:  # the open ones, if any, still match the kernel
        assert candidate(name).read_text() != source.read_text()
    monkeypatch.setitem(candidates, "test-edit", (edit,))
    path = candidate("test-edit")
    assert path.name == f"{kernel}_test_edit.cu" and path.read_text() == source.read_text().replace(*edit)
    monkeypatch.setitem(candidates, "stale", (("no such line;", ""),))
    with pytest.raises(ValueError, match=f"{kernel} candidate 'stale' matches {kernel}.cu 0 times"):
        candidate("stale")


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="runs the Triton interpreter (CPU-only machines)")
@pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning")
def test_scan_launch_sweep_runs_the_package_scans_with_other_launches():
    """bench_kernels.py's scan-launch sweep: every launch's minGRU / minLSTM states and gradients
    are the package's own op's, bit for bit (the sweep asserts it per launch; here against
    ``mingru_scan`` / ``minlstm_scan`` too), and a launch that miscounted its programs would fail."""
    from rnnlab.ops.scan import triton as stri

    bk = _benchmark_script("bench_kernels")
    g = torch.Generator().manual_seed(0)
    B, T, H = 2, 5, 37  # H not a multiple of any block
    for mode, op in ((1, stri.mingru_scan), (2, stri.minlstm_scan)):
        x0 = torch.randn(B, T, (mode + 1) * H, generator=g)
        dh = torch.randn(B, T, H, generator=g)
        p = x0.clone().requires_grad_()
        h_op = op(p)[0]
        h_op.backward(dh)
        launches = [(16, 1), (64, 2)]
        done = []
        for block, warps, forward, backward in bk.scan_launch_sweep(x0, mode, dh, launches):
            done.append((block, warps))
        assert done == launches
        h_ref = torch.empty(B, T, H)
        stri.launch_forward(stri._views(x0, mode + 1, H), (mode + 1) * H, x0, h_ref, mode, False, 16, 1)
        assert torch.equal(h_ref, h_op.detach())
        dp, dh0 = torch.empty_like(x0), torch.zeros(B, H)
        stri.launch_backward(stri._views(x0, mode + 1, H), (mode + 1) * H, h_ref, h_ref, dh,
                             stri._views(dp, mode + 1, H), dh0, mode, False, 16, 1)
        assert torch.equal(dp, p.grad)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="runs the Triton interpreter (CPU-only machines)")
@pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning")
def test_scan_against_times_another_copy_of_the_scan_module(tmp_path):
    """bench_kernels.py --scan-against: a copy of rnnlab/ops/scan/triton.py from a file is a
    module of its own (its kernels not the package's objects, the same values), and the launch
    sweep given it launches its kernels, not the package's."""
    from rnnlab.ops.scan import triton as stri

    bk = _benchmark_script("bench_kernels")
    copy = tmp_path / "scan_old.py"
    copy.write_text(Path(stri.__file__).read_text() + (
        "\n_launched = []\n_launch_forward = launch_forward\n\n\n"
        "def launch_forward(*args, **kwargs):\n    _launched.append(args[6:])\n"
        "    return _launch_forward(*args, **kwargs)\n"))
    other = bk.scan_module_from(str(copy))
    assert other is not stri and other._scan_fwd is not stri._scan_fwd
    B, T, H = 2, 5, 7
    p = torch.randn(B, T, 3 * H, generator=torch.Generator().manual_seed(0))
    g = torch.randn(B, T, H, generator=torch.Generator().manual_seed(1))
    assert torch.equal(other.minlstm_scan(p)[0], stri.minlstm_scan(p)[0])
    other._launched.clear()
    (block, warps, forward, backward), = bk.scan_launch_sweep(p, 2, g, [(16, 1)], other,
                                                            bk.fused_scan_outputs(p, 2, g, stri))
    forward()
    assert other._launched == [(), (16, 1), (16, 1)]  # its own launch (the reference), the one checked, this call
    broken = tmp_path / "scan_broken.py"  # minLSTM's normalised forget gate off by 10%
    broken.write_text(Path(stri.__file__).read_text().replace("a = u2 * r\n", "a = u2 * r * 0.9\n"))
    with pytest.raises(AssertionError):
        next(bk.scan_launch_sweep(p, 2, g, [(16, 1)], bk.scan_module_from(str(broken)), bk.fused_scan_outputs(p, 2, g, stri)))
    # each copy keeps its own custom ops: the broken one loaded after it changed nothing of the first's
    assert torch.equal(other.minlstm_scan(p)[0], stri.minlstm_scan(p)[0])
    # and they compile (torch.compile imports a custom op's module by name: bench_models' twins)
    compiled = torch.compile(lambda p: other.minlstm_scan(p)[0], backend="aot_eager", fullgraph=True)
    assert torch.equal(compiled(p), stri.minlstm_scan(p)[0])


@pytest.mark.parametrize("option,name,text,why", [
    ("--scan-against", "missing.py", None, "needs an existing Python file"),
    ("--scan-against", "scan.txt", "x = 1\n", "needs an existing Python file"),
    ("--scan-against", "bad.py", "def (:\n", "does not import (SyntaxError"),
    ("--scan-against", "other.py", "x = 1\n", "has no launch_forward, launch_backward, _views"),
    ("--persistent-against", "missing.cu", None, "needs an existing CUDA file"),
    ("--persistent-against", "persistent.py", "x = 1\n", "needs an existing CUDA file"),
])
def test_against_options_refuse_what_is_no_copy_in_one_line(tmp_path, capsys, option, name, text, why):
    """bench_kernels.py's --scan-against / --persistent-against: a file that is not a copy of the
    package's module / kernel source stops the script in one line, exit 2, before anything runs."""
    bk = _benchmark_script("bench_kernels")
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    with pytest.raises(SystemExit) as stop:
        (bk.scan_module_from if option == "--scan-against" else bk.persistent_source)(str(path))
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and "\n" not in err
    assert err.startswith(f"bench_kernels.py: {option} {path}: {why}")


def test_ncu_summary_lists_hot_instructions_of_the_source_view(tmp_path, capsys):
    """benchmarks/ncu_summary.py on ncu's source CSV: per launch (a C++ kernel's view, which ncu
    prints twice, counted once) its hottest SASS instructions with their shares of the samples and
    their own top stall reasons, and --ranges' totals; a launch or range it does not hold is
    refused in one line, exit 2."""
    ns = _benchmark_script("ncu_summary")
    header = ["Address", "Source", ns.SAMPLES, "Instructions Executed", "stall_long_sb", "stall_barrier",
              "stall_long_sb (Not Issued)"]
    spin = [["0x10", "  LDG.E.STRONG.GPU R21, [R16]", "10", "700", "0", "0", "9"],
            ["0x20", "  CCTL.IVALL", "60", "700", "59", "1", "50"],
            ["0x30", "  BAR.SYNC 0x0", "30", "100", "0", "30", "0"]]
    path = tmp_path / "source.csv"
    with path.open("w", newline="") as f:
        f.write("==WARNING== No source files were imported.\n")  # ncu's own lines come first
        w = csv.writer(f)
        for name, rows in (("elman_persistent", spin), ("elman_persistent", spin), ("_heads_fwd", spin[:1])):
            w.writerows([["Kernel Name", name], header, *rows])
    ns.main([str(path), "--top", "2", "--stalls", "1"])
    assert capsys.readouterr().out.splitlines() == [
        "launch 0", "elman_persistent: 100 samples, 3 instructions",
        "     1   60.0%         700  CCTL.IVALL  (long_sb 98%)",
        "     2   30.0%         100  BAR.SYNC 0x0  (barrier 100%)", "",
        "launch 1", "_heads_fwd: 10 samples, 1 instructions",
        "     0  100.0%         700  LDG.E.STRONG.GPU R21, [R16]  ()"]
    ns.main([str(path), "--launch", "0", "--top", "0", "--ranges", "0:2,2:3"])
    assert capsys.readouterr().out.splitlines()[2:] == ["instructions 0:2: 70.0% of samples",
                                                        "instructions 2:3: 30.0% of samples"]
    raw = tmp_path / "raw.csv"
    raw.write_text('"ID","Kernel Name"\n"",""\n"0","k"\n')
    raw_only = "--launch, --top and --ranges read ncu's source CSV"
    for file, args, why in ((path, ["--launch", "2"], "--launch 2: the file holds launches 0 to 1"),
                            (path, ["--ranges", "3:1"], "--ranges takes START:END"),
                            (path, ["--launch", "0", "--ranges", "0:4"], "a range ends past them"),
                            (path, ["--top", "-1"], "--top and --stalls take counts"),
                            (path, ["--stalls", "-1"], "--top and --stalls take counts"),
                            (raw, ["--launch", "0"], raw_only), (raw, ["--top", "3"], raw_only),
                            (raw, ["--ranges", "0:1"], raw_only)):
        with pytest.raises(SystemExit) as stop:
            ns.main([str(file), *args])
        err = capsys.readouterr().err.strip()
        assert stop.value.code == 2 and "\n" not in err and err.startswith(f"ncu_summary.py: {file}: ") and why in err
    path.write_text(path.read_text().replace("  CCTL.IVALL,60,", "  CCTL.IVALL,"))  # a short row
    with pytest.raises(SystemExit) as stop:
        ns.main([str(path)])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and "\n" not in err and "not ncu's source CSV" in err


def test_persistent_against_pairs_the_package_kernels_with_the_copy(tmp_path, monkeypatch):
    """bench_kernels.py --persistent-against: each launch shape that fits yields the package's
    kernels, then each copy's (a plan with the copy's source: its forward and its backward),
    flagged bit for bit when their states and dpre are equal; a copy whose outputs differ beyond
    bf16 rounding stops the benchmark, naming itself."""
    from rnnlab.ops.elman import persistent

    bk = _benchmark_script("bench_kernels")
    copy, same_again = tmp_path / "persistent_old.cu", tmp_path / "persistent_same.cu"
    offset = {"h": 0.0, "dpre": 0.0}  # how far the copy's outputs are from the package's

    def forward(wx, w, h0, plan):
        return wx.tanh() + (offset["h"] if plan.source == copy else 0.0)

    def backward(g, h, w, plan):
        return g * (1 - h * h) + (offset["dpre"] if plan.source == copy else 0.0), None

    monkeypatch.setattr(persistent, "make_plan", lambda x, shapes: persistent.Plan(shapes[0][0], *shapes[0][1], 1))
    monkeypatch.setattr(persistent, "forward", forward)
    monkeypatch.setattr(persistent, "backward", backward)
    wx, w, g = torch.randn(2, 3, 8), torch.randn(8, 8), torch.randn(2, 3, 8)
    pairs = list(bk.persistent_pairs(wx, w, g, [copy, same_again]))
    assert [(shape, label, same) for shape, label, _, _, same in pairs] == [
        (shape, label, True) for shape in persistent.SHAPES for label in ("", copy.name, same_again.name)]
    offset.update(h=1e-3, dpre=2e-3)  # within bf16 rounding: timed, not bit for bit
    pairs = list(bk.persistent_pairs(wx, w, g, [copy]))
    assert [same for *_, same in pairs] == [True, False] * len(persistent.SHAPES)
    (_, _, fwd_pkg, bwd_pkg, _), (_, _, fwd_copy, bwd_copy, _) = pairs[:2]
    assert torch.equal(fwd_pkg(), wx.tanh()) and torch.equal(fwd_copy(), wx.tanh() + 1e-3)
    assert not torch.equal(bwd_pkg()[0], bwd_copy()[0])  # each row's backward is its own version's
    offset.update(h=0.0)  # only dpre off: still caught
    assert [same for *_, same in bk.persistent_pairs(wx, w, g, [copy])][:2] == [True, False]
    for key in ("h", "dpre"):
        offset.update({"h": 0.0, "dpre": 0.0, key: 0.5})
        with pytest.raises(AssertionError, match="persistent_old.cu at"):
            next(bk.persistent_pairs(wx, w, g, [copy]))


def test_timed_in_rounds_interleaves_the_rows_and_takes_medians(monkeypatch):
    """bench_kernels.timed_in_rounds times every row once a round (forward then backward, each
    timing ``back_to_back`` calls), the rounds one after another, and keeps the median of each
    row's timings."""
    bk = _benchmark_script("bench_kernels")
    calls, clock = [], iter([5.0, 1.0, 9.0, 2.0, 7.0, 3.0, 6.0, 4.0, 8.0, 5.0, 1.0, 6.0])
    monkeypatch.setattr(bk, "timeit", lambda fn, reps, back_to_back: (calls.append((fn(), back_to_back)), next(clock))[1])
    rows = [(key, lambda key=key: f"{key} fwd", lambda key=key: f"{key} bwd") for key in ("a", "b")]
    times = bk.timed_in_rounds(rows, reps=10, back_to_back=20)
    assert calls == [(f"{key} {way}", 20) for key in "ab" for way in ("fwd", "bwd")] * 3
    assert times == {"a": (7.0, 3.0), "b": (6.0, 4.0)}  # medians of (5, 7, 8), (1, 3, 5); (9, 6, 1), (2, 4, 6)


def test_wgmma_timeline_instruments_the_kernel_and_splits_its_step():
    """bench_kernels.py --wgmma-timeline: its clock reads apply to the package's wgmma.cu (each
    edit exactly once) and add only stamps (the kernel's lines all kept); the step's parts come
    out in µs at each SM's own clock rate, across a wrap of the 32-bit clock, and sum to the step."""
    from rnnlab.ops.elman import wgmma

    bk = _benchmark_script("bench_kernels")
    source = wgmma.SOURCE.read_text()
    timed = bk.wgmma_timeline_source().read_text()
    assert timed.count("clock()") == 8 and "stamp_buf" in timed and '"stamps"' in timed
    kept = [line for line in source.splitlines() if line.strip()]
    timed_lines = iter(timed.splitlines())
    assert all(any(line == t for t in timed_lines) for line in kept)  # in order, none dropped
    ctas, steps = 3, 20
    durations = torch.tensor([5.0, 1.0, 2.0, 3.0, 1.5, 0.25, 0.5])  # µs a part
    rate = torch.tensor([2000.0, 1500.0, 1800.0])  # clocks a µs, each CTA's SM
    ticks = (durations[None, :] * rate[:, None]).round().to(torch.int64)  # [ctas, 7]
    start = torch.tensor([2**32 - 40_000, 0, 123])  # CTA 0's clock wraps mid-run
    step = ticks.sum(1)
    stamps = torch.zeros(ctas + 1, steps, 8, dtype=torch.int64)
    for s in range(steps):
        at = start + s * step
        stamps[:ctas, s, 0] = at
        stamps[:ctas, s, 1:] = at[:, None] + ticks.cumsum(1)
    low = stamps & 0xFFFFFFFF  # the kernel's 32-bit unsigned clocks, read back as int32
    stamps = torch.where(low >= 2**31, low - 2**32, low).to(torch.int32)
    clocks = torch.zeros(ctas + 1, 4, dtype=torch.int64)
    clocks[:ctas, 1] = (rate * 1000).to(torch.int64)  # clock64 over a millisecond of global timer
    clocks[:ctas, 3] = 10**6
    parts = bk.timeline_phases(stamps, clocks, ctas, steps)
    assert list(parts) == [*bk.WGMMA_TIMELINE_PHASES, "step"]
    for name, want in zip(bk.WGMMA_TIMELINE_PHASES, durations.tolist()):
        assert parts[name] == pytest.approx((want, want), abs=1e-3), name
    assert parts["step"] == pytest.approx((durations.sum().item(),) * 2, abs=1e-3)
    with pytest.raises(ValueError, match="leave none"):
        bk.timeline_phases(stamps, clocks, ctas, 9)


def test_wgmma_rows_time_the_package_kernel_then_each_checked_copy(tmp_path, monkeypatch):
    """bench_kernels.py --wgmma-candidates: the package's wgmma kernel first, then each copy's
    (built from its own source), flagged bit for bit when their states and dpre are equal; a copy
    whose outputs differ beyond bf16 rounding stops the benchmark, naming itself."""
    from rnnlab.ops.elman import wgmma

    bk = _benchmark_script("bench_kernels")
    copy = tmp_path / "wgmma_copy.cu"
    offset = {"h": 0.0, "dpre": 0.0}

    def forward(wx, w, h0, source=wgmma.SOURCE):
        return wx.tanh() + (offset["h"] if source == copy else 0.0)

    def backward(g, h, w, source=wgmma.SOURCE):
        return g * (1 - h * h) + (offset["dpre"] if source == copy else 0.0)

    monkeypatch.setattr(wgmma, "forward", forward)
    monkeypatch.setattr(wgmma, "backward", backward)
    wx, w, g = torch.randn(2, 3, 8), torch.randn(8, 8), torch.randn(2, 3, 8)
    rows = list(bk.wgmma_rows(wx, w, g, {"candidate x": copy}))
    assert [(label, same) for label, _, _, same in rows] == [("", True), ("candidate x", True)]
    offset.update(dpre=2e-3)  # within bf16 rounding: timed, not bit for bit
    (_, fwd_pkg, bwd_pkg, _), (_, fwd_copy, bwd_copy, same) = bk.wgmma_rows(wx, w, g, {"candidate x": copy})
    assert not same and torch.equal(fwd_pkg(), fwd_copy()) and not torch.equal(bwd_pkg(), bwd_copy())
    offset.update(h=0.5)
    with pytest.raises(AssertionError, match="candidate x: its states differ"):
        list(bk.wgmma_rows(wx, w, g, {"candidate x": copy}))


def test_against_options_need_their_sections(capsys, monkeypatch):
    bk = _benchmark_script("bench_kernels")
    monkeypatch.setitem(bk.PERSISTENT_CANDIDATES, "test-edit", ())
    for option, value, why in (
            ("--scan-against", "old_copy", "--scan-against times in the scan-launch section"),
            ("--persistent-against", "old_copy", "--persistent-against times in the dense or persistent section"),
            ("--persistent-candidates", "test-edit", "--persistent-candidates times in the dense or persistent section")):
        with pytest.raises(SystemExit) as stop:
            bk.main(["--sections", "scan", option, value])
        assert stop.value.code == 2 and why in capsys.readouterr().err
    for section in ("dense", "persistent"):  # either section takes it: the file is checked next
        with pytest.raises(SystemExit) as stop:
            bk.main(["--sections", section, "--persistent-against", "missing.cu"])
        assert stop.value.code == 2 and "needs an existing CUDA file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        bk.main(["--sections", "scan", "--wgmma-timeline"])
    assert stop.value.code == 2 and "--wgmma-timeline times in the dense or persistent section" in capsys.readouterr().err


def test_scan_instructions_counts_the_fused_scans_time_loop(tmp_path):
    """benchmarks/scan_instructions.py: the fused scans' MUFU ops a channel-step, read from their
    sm_90 PTX (compiled without a GPU; run as a script, outside Triton's interpreter): minGRU 4
    (sigmoid(k) and g's sigmoid, an exponential and a division each), minLSTM 6 (three
    exponentials and a reciprocal for the gates, g's sigmoid), no logarithm in either pass; a gate
    written back as softplus / sigmoid pairs would raise them."""
    import subprocess

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "scan_instructions.py"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = tmp_path / "counts.json"
    subprocess.run([sys.executable, str(script), "--json", str(out)], env=env, check=True, capture_output=True)
    got = {(r["kernel"], r["pass"]): r for r in json.loads(out.read_text())["rows"]}
    assert {k: r["mufu"] for k, r in got.items()} == {("minGRU", "fwd"): 4, ("minGRU", "bwd"): 4,
                                                      ("minLSTM", "fwd"): 6, ("minLSTM", "bwd"): 6}
    assert all(r["lg2"] == 0 and r["version"] == "package" for r in got.values())
    assert got[("minLSTM", "fwd")]["instructions"] < 2 * got[("minGRU", "fwd")]["instructions"]
    si = _benchmark_script("scan_instructions")
    body = si.loop_body("mov.u32 %r1, 0;\n$L__BB0_2:  // loop\nex2.approx.f32 %f1, %f2;\n"
                        "@%p1 bra $L__BB0_2;\nret;\n")
    assert body == ["ex2.approx.f32 %f1, %f2;", "@%p1 bra $L__BB0_2;"]
    with pytest.raises(ValueError, match="no backward branch"):
        si.loop_body("ret;\n")


CUOBJDUMP = """
\tcode for sm_90
\t\tFunction : _Z4spinPj
\t.headerflags\t@"EF_CUDA_SM90 EF_CUDA_VIRTUAL_SM(EF_CUDA_SM90)"
        /*0000*/                   LDC R1, c[0x0][0x28] ;                 /* 0x00000a00ff017b82 */
                                                                          /* 0x000fe40000000800 */
        /*0010*/                   CCTL.IVALL ;                           /* 0x0000000000007990 */
        /*0020*/              @!P0 BRA 0x10 ;                             /* 0xfffffffc00e08947 */
        /*0030*/                   LDGDEPBAR ;                            /* 0x00000000000079af */
        /*0040*/                   EXIT ;                                 /* 0x000000000000794d */
\t\t..........
\t\tFunction : _Z4tailv
        /*0000*/                   EXIT ;                                 /* 0x000000000000794d */
"""


def test_cuda_sass_reads_kernels_and_stretches_and_refuses_bad_input(tmp_path, capsys, monkeypatch):
    """benchmarks/cuda_sass.py: each kernel's instructions from cuobjdump's SASS (addresses and
    encodings left out, predicates kept), the stretch from one instruction to the next one named,
    a table of kernels by file; a file that is no CUDA source, or a missing nvcc, stops it in one
    line, exit 2; ``--arch`` reaches nvcc."""
    import subprocess

    cs = _benchmark_script("cuda_sass")
    kernels = cs.functions(CUOBJDUMP)
    assert kernels == {"_Z4spinPj": ["LDC R1, c[0x0][0x28]", "CCTL.IVALL", "@!P0 BRA 0x10", "LDGDEPBAR", "EXIT"],
                       "_Z4tailv": ["EXIT"]}
    assert cs.between(kernels["_Z4spinPj"], "CCTL.IVALL", "LDGDEPBAR") == 2
    assert cs.between(kernels["_Z4tailv"], "CCTL.IVALL", "LDGDEPBAR") is None
    assert cs.between(kernels["_Z4spinPj"] * 2, "EXIT", "EXIT") == 5  # to the next one, not itself
    assert cs.short_name("void (anonymous namespace)::elman_persistent<__nv_bfloat16, 16, 32, 16, false, 0>"
                         "(const T1 *, int (*)[2], int)") == "elman_persistent<__nv_bfloat16, 16, 32, 16, false, 0>"
    assert cs.table({"old.cu": {"spin": (5, 2)}, "new.cu": {"spin": (4, 1), "tail": (1, None)}}, True) == [
        "kernel  old.cu  new.cu", "spin  5 (2 between)  4 (1 between)", "tail  -  1 (- between)"]
    (tmp_path / "kernel.py").write_text("x = 1\n")  # exists, but no CUDA source
    (tmp_path / "twice.cu").write_text("__global__ void k() {}\n")
    for argv, why in (([str(tmp_path / "kernel.py")], "needs an existing CUDA file"),
                      ([str(tmp_path / "missing.cu")], "needs an existing CUDA file"),
                      ([str(tmp_path / "twice.cu"), str(tmp_path / "." / "twice.cu")], "a file is named twice"),
                      ([str(tmp_path / "twice.cu"), "--kernel", "("], "is not a regular expression"),
                      ([str(tmp_path / "twice.cu"), "--arch", "90a"], "is not a GPU target like sm_90")):
        with pytest.raises(SystemExit) as stop:
            cs.main(argv)
        err = capsys.readouterr().err.strip()
        assert stop.value.code == 2 and "\n" not in err and why in err
    source = tmp_path / "kernel.cu"
    source.write_text("__global__ void k() {}\n")
    commands = []

    def fake_run(cmd, **kw):  # nvcc, then cuobjdump: the target reaches nvcc
        commands.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, stdout=CUOBJDUMP, stderr="")

    monkeypatch.setattr(cs.shutil, "which", lambda name: f"/bin/{name}")
    monkeypatch.setattr(cs.subprocess, "run", fake_run)
    assert cs.compile_sass(source, arch="sm_90a") == CUOBJDUMP
    assert "-arch=sm_90a" in commands[0] and commands[1][1:] == ["-sass", commands[0][commands[0].index("-o") + 1]]
    monkeypatch.setattr(cs.shutil, "which", lambda name: None)
    with pytest.raises(SystemExit) as stop:
        cs.main([str(source)])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and err == "cuda_sass.py: nvcc not found (needs the CUDA toolkit's nvcc on PATH)"


def test_bench_models_scan_against_twins_only_the_scan_models(monkeypatch, tmp_path, capsys):
    """bench_models.py --scan-against FILE: a twin row for each minGRU / minLSTM row (with FILE's
    kernels in place while it trains, the package's back after), none for the other models; a
    file that is no scan module is refused in one line. A model run in several modes gets one
    rounding twin of its first mode, run last. --rows-against LIMIT: a twin for each compiled row
    (twin rows get no rounding twin)."""
    from rnnlab.ops.scan import MINGRU_SCAN
    from rnnlab.ops.scan import triton as stri

    bm = _benchmark_script("bench_models")
    copy = tmp_path / "scan_old.py"
    copy.write_text(Path(stri.__file__).read_text())
    seen = []

    def fake_bench(name, cfgd, B, T, steps, warmup, mode, profile, sf_step, graphed, twin=False, row_limit=None):
        seen.append((name, MINGRU_SCAN.kernel.get().__file__ == str(copy)) + (("twin", mode),) * twin
                    + (("rows", row_limit),) * (row_limit is not None))
        return dict(name=name, mode=bm.mode_name(mode, graphed), B=B, params=1, tok_per_s=1, losses=[1.0],
                    step_ms=1.0, synced_step_ms=1.0, host_ms=0.1, peak_mem_gib=1.0, peak_reserved_gib=1.0, first_step_s=1.0)

    monkeypatch.setattr(bm, "bench", fake_bench)
    monkeypatch.setattr(bm.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(bm.torch.cuda, "get_device_name", lambda: "NVIDIA H200")
    monkeypatch.setattr(bm, "nvidia_smi", lambda fields: [700.0])
    bm.main(["--only", "minGRU", "E16", "--compile", "off", "--scan-against", str(copy)])
    assert seen == [("minGRU 3520x16", False), ("minGRU 3520x16 [--scan-against]", True), ("E16 s4 1024x10 e2", False)]
    assert MINGRU_SCAN.kernel.get() is stri
    seen.clear()
    bm.main(["--only", "E16", "--compile", "off", "default"])
    assert seen == [("E16 s4 1024x10 e2", False)] * 2 + [("E16 s4 1024x10 e2", False, ("twin", bm.OFF))]
    with pytest.raises(SystemExit) as stop:
        bm.main(["--only", "minGRU", "--scan-against", str(tmp_path / "missing.py")])
    assert stop.value.code == 2 and capsys.readouterr().err.strip().startswith("bench_models.py: --scan-against")
    # --rows-against: a twin compiled with that row limit for each compiled mode, none for eager
    seen.clear()
    bm.main(["--only", "E16", "--compile", "off", "default", "--rows-against", "1024"])
    assert seen == [("E16 s4 1024x10 e2", False), ("E16 s4 1024x10 e2", False),
                    ("E16 s4 1024x10 e2 [--rows-against]", False, ("rows", 1024)),
                    ("E16 s4 1024x10 e2", False, ("twin", bm.OFF))]
    seen.clear()  # a twin row group run in several modes gets no rounding twin (the package's rows do)
    bm.main(["--only", "E16", "--compile", "off", "default", "--graph", "--rows-against", "1024"])
    assert [s[0] for s in seen].count("E16 s4 1024x10 e2 [--rows-against]") == 2
    assert [s for s in seen if "twin" in {e[0] for e in s[2:]}] == [("E16 s4 1024x10 e2", False, ("twin", bm.OFF))]
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        bm.main(["--only", "E16", "--rows-against", "0"])
    assert stop.value.code == 2
    assert capsys.readouterr().err == "bench_models.py: error: --rows-against must be a positive number of elements, got 0\n"


def test_bench_models_e1_against_twins_e1_rows_with_those_kernel_options(monkeypatch, capsys):
    """bench_models.py --e1-against KEY=VALUE[,...]: a twin row for each E1 row whose Elman scans
    run with those kernel options while it trains (the package's kernels back after), none for the
    other models; a pair that is not an option and an integer is refused in one line, exit 2."""
    from rnnlab.ops.elman import ELMAN_SCAN
    from rnnlab.ops.elman import triton as et

    bm = _benchmark_script("bench_models")
    seen = []

    def fake_bench(name, cfgd, B, T, steps, warmup, mode, profile, sf_step, graphed, twin=False, row_limit=None):
        kernels = ELMAN_SCAN.kernel.get()
        opts = None if kernels is et else kernels.options
        seen.append((name, None if opts is None else (opts.heads_gluon, opts.dense_wgmma, kernels.elman_scan.traced)))
        return dict(name=name, mode=bm.mode_name(mode, graphed), B=B, params=1, tok_per_s=1, losses=[1.0],
                    step_ms=1.0, synced_step_ms=1.0, host_ms=0.1, peak_mem_gib=1.0, peak_reserved_gib=1.0, first_step_s=1.0)

    monkeypatch.setattr(bm, "bench", fake_bench)
    monkeypatch.setattr(bm.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(bm.torch.cuda, "get_device_name", lambda: "NVIDIA H200")
    monkeypatch.setattr(bm, "nvidia_smi", lambda fields: [700.0])
    bm.main(["--only", "E1 heads 14x128 d31", "E16", "--compile", "off", "--e1-against", "heads_gluon=0,dense_wgmma=0"])
    assert seen == [("E1 heads 14x128 d31", None), ("E1 heads 14x128 d31 [--e1-against]", (False, False, True)),
                    ("E16 s4 1024x10 e2", None)]
    assert ELMAN_SCAN.kernel.get() is et
    capsys.readouterr()
    for bad in ("heads_glu=0", "heads_gluon", "heads_gluon=no"):
        with pytest.raises(SystemExit) as stop:
            bm.main(["--only", "E1 heads", "--e1-against", bad])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and err.count("\n") == 1
        assert err.startswith("bench_models.py: error: --e1-against takes KEY=INTEGER pairs") and repr(bad) in err


def test_bench_models_e1_against_scan_stays_in_the_compiled_graph(monkeypatch):
    """--e1-against's stand-in scan is traced by torch.compile like the package's (no graph break
    around it: a twin with breaks would be slower for that alone, as a functools.partial's was)."""
    from rnnlab.ops.elman import ELMAN_SCAN, ELMAN_SCAN_BESIDE_LINEAR
    from rnnlab.ops.elman import triton as et
    from rnnlab.ops.elman.options import ElmanKernelOptions

    bm = _benchmark_script("bench_models")
    stand_in = bm.e1_kernels_with(ElmanKernelOptions(heads_gluon=False))
    seen = []
    monkeypatch.setattr(et, "elman_scan", lambda wx, w, h0, options: (seen.append(options), (wx @ w, wx))[1])
    monkeypatch.setattr(ELMAN_SCAN, "implementation", lambda backend, x: stand_in.elman_scan)
    torch._dynamo.reset()
    step = torch.compile(lambda x, w: ELMAN_SCAN(x, w, None)[0].sum(), backend="eager", fullgraph=True)
    x, w = torch.randn(2, 3), torch.randn(3, 3)
    torch.testing.assert_close(step(x, w), (x @ w).sum())
    assert seen and all(o is stand_in.options for o in seen) and not seen[0].heads_gluon
    # the heads layers' scan with the gate beside it (E1's forward with heads) likewise
    seen.clear()
    monkeypatch.setattr(et, "elman_scan_beside_linear",
                        lambda wx, w, x, wl, options: (seen.append(options), (wx @ w, wx, x @ wl))[1])
    monkeypatch.setattr(ELMAN_SCAN_BESIDE_LINEAR, "implementation", lambda backend, x: stand_in.elman_scan_beside_linear)
    torch._dynamo.reset()
    step = torch.compile(lambda x, w: ELMAN_SCAN_BESIDE_LINEAR(x, w, x, w)[2].sum(), backend="eager", fullgraph=True)
    torch.testing.assert_close(step(x, w), (x @ w).sum())
    assert seen and all(o is stand_in.options for o in seen)


def test_ncu_summary_lines_and_bad_input(tmp_path, capsys):
    """benchmarks/ncu_summary.py: a launch's line shows its metrics and its largest stall reasons
    as shares of the samples (the not-issued variants left out); a file that is not ncu's raw CSV
    is refused in one line, exit 2."""
    ns = _benchmark_script("ncu_summary")
    stall = ns.STALL
    header = ["ID", "Kernel Name", "gpu__time_duration.sum", "launch__grid_size", stall + "long_scoreboard",
              stall + "wait", stall + "selected", stall + "long_scoreboard_not_issued"]
    raw = tmp_path / "raw.csv"
    with raw.open("w", newline="") as f:
        csv.writer(f).writerows([header, ["", "", "us", "", "", "", "", ""],
                                 ["0", "_scan_fwd", "1,234.5", "448", "60", "30", "10", "999"]])
    ns.main([str(raw), "--stalls", "2"])
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["#  kernel  us  grid  top stalls (share of samples)",
                     "0  _scan_fwd  1234.5  448  long_scoreboard 60%, wait 30%"]
    with raw.open("w", newline="") as f:  # ncu scales units: a long kernel's time comes in ms
        f.write("==WARNING== clocks not locked\n")  # what ncu may print before the table: skipped
        csv.writer(f).writerows([header, ["", "", "ms", "", "", "", "", ""],
                                 ["0", "elman_persistent", "3.25", "110", "1", "0", "0", "0"]])
    ns.main([str(raw), "--stalls", "1"])
    assert capsys.readouterr().out.splitlines()[1] == "0  elman_persistent  3250.0  110  long_scoreboard 100%"
    (tmp_path / "other.csv").write_text("a,b\n1,2\n3,4\n")
    with pytest.raises(SystemExit) as stop:
        ns.main([str(tmp_path / "other.csv")])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and "\n" not in err and "not ncu's raw CSV" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="the message for a machine without a GPU")
@pytest.mark.parametrize("script", ["bench_kernels", "bench_models", "bench_peers"])
def test_gpu_benchmarks_say_in_one_line_that_they_need_a_gpu(script, capsys):
    """On a machine without a GPU each GPU benchmark stops with one line and status 2, not a traceback."""
    with pytest.raises(SystemExit) as stop:
        _benchmark_script(script).main([])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err == f"{script}.py: error: needs a CUDA GPU (torch sees none)\n"


def _tiny_bound_model(kind: str, **layer) -> dict:
    return dict(model=kind, dim=16, depth=2, **({"layer": layer} if layer else {}))


def test_bench_bound_records_every_gemm_of_the_step():
    """bench_bound.py: a training step's GEMMs, recorded on the meta device, are the model's matrix
    parameters' 6 FLOPs a token (forward 2, backward 4), with each layer's in_proj and the tied head
    forward once and twice backward, and the weight gradients' activations as transposed views."""
    bb = _benchmark_script("bench_bound")
    B, T = 3, 5
    forward, backward, params, vector_bytes = bb.record_gemms(_tiny_bound_model("mingru"), B, T)
    assert len(forward) == 2 + 1 and len(backward) == 2 * len(forward) and vector_bytes == (0, 0)
    matrices = 2 * 16 * 16 * 2 + 256 * 16  # two in_proj [2*16, 16], the embedding (the head's weight)
    assert sum(g.flops for g in forward) == 2 * matrices * B * T
    assert sum(g.flops for g in backward) == 4 * matrices * B * T
    assert params > matrices  # LayerNorms too
    weight_grads = [g for g in backward if g.k == B * T]
    assert len(weight_grads) == 3 and all(g.a_t and not g.b_t for g in weight_grads)
    assert not any(g.a_t for g in forward)


def test_bench_bound_leaves_e1s_recurrence_to_its_scan_kernels():
    """bench_bound.py records E1's step with its scans as the GPU's custom ops: the recurrence's
    products (and E1 heads' gate projection, run beside the scan) are the scan kernels' work, not
    GEMMs of the step; the spectral norm's products with a vector (memory-bound) count as bytes;
    a reference recurrence's per-step products are refused, not taken for GEMMs."""
    bb = _benchmark_script("bench_bound")
    B, T, D = 3, 5, 16
    forward, backward, params, vector_bytes = bb.record_gemms(_tiny_bound_model("e1"), B, T)
    outside = 2 * (2 * D * D + D * D + D * D) + 256 * D  # in_proj, W_x, out_proj a layer, the head
    assert sum(g.flops for g in forward) == 2 * outside * B * T and sum(g.flops for g in backward) == 4 * outside * B * T
    assert len(forward) == 2 * 3 + 1 and all(B * T in (g.m, g.k) for g in forward + backward)
    # a layer's power iterations: 6 products [D, D] @ [D], then sigma = u^T W_h v: [1, D] @ [D, D], a dot,
    # in fp32 (the reference's arithmetic for a bf16 W_h: 4 bytes an element)
    per_layer = 6 * (D * D + 2 * D) + (D + D * D + D) + (2 * D + 1)
    assert vector_bytes[0] == 2 * per_layer * 4 and vector_bytes[1] > 0
    forward, backward, _, _ = bb.record_gemms(_tiny_bound_model("e1", heads=2), B, T)
    outside = 2 * (D * D + D * D + D * D) + 256 * D  # the gate's half of in_proj runs beside the scan
    assert sum(g.flops for g in forward) == 2 * outside * B * T and sum(g.flops for g in backward) == 4 * outside * B * T
    with pytest.raises(ValueError, match=r"aten.mm.default of \[3, 16\] @ \[16, 16\] in the step: bench_bound.py "
                                         r"times GEMMs over the step's 15 tokens only"):
        bb.record_gemms(_tiny_bound_model("e1", selective="decay"), B, T)  # its reference loop's products


def test_bench_bound_floor_bytes_count_each_pass():
    """bench_bound.py's floor: per layer the fused residual add + LayerNorm (4 passes each way) and the
    mixer's own (minGRU's fused scan 3 / 6 passes of di; E16's gates over di and scan over ds), the
    embedding, final norm and logits, and Schedule-Free AdamW's 7 passes over the parameters, bf16."""
    bb = _benchmark_script("bench_bound")
    BT, D = 3 * 5, 16
    got = bb.floor_bytes(_tiny_bound_model("mingru"), 1000, 3, 5)
    assert got == dict(forward=(2 * (4 + 3) * D + 3 * D + 256) * BT * 2,
                       backward=(2 * (4 + 6) * D + 4 * D + 256) * BT * 2, optimizer=7 * 1000 * 2,
                       scans_forward=2 * 3 * D * BT * 2, scans_backward=2 * 6 * D * BT * 2)
    di, ds = 32, 32 * 4
    got = bb.floor_bytes(_tiny_bound_model("e16", expansion=2.0, state_expansion=4), 10, 3, 5)
    assert got["forward"] == (2 * (4 * D + 5 * di + 2 * ds) + 3 * D + 256) * BT * 2
    assert got["backward"] == (2 * (4 * D + 8 * di + 3 * ds) + 4 * D + 256) * BT * 2
    assert (got["scans_forward"], got["scans_backward"]) == (2 * 2 * ds * BT * 2, 2 * 3 * ds * BT * 2)
    got = bb.floor_bytes(_tiny_bound_model("minlstm"), 10, 3, 5)  # three parts: 4 / 8 passes of di
    assert got["forward"] == (2 * (4 + 4) * D + 3 * D + 256) * BT * 2
    assert got["backward"] == (2 * (4 + 8) * D + 4 * D + 256) * BT * 2
    # E1: silu (2) and the gate (3) around the scan (2) forward; backward the gate (5), the bias's
    # gradient (1), silu (3) and the scan (3), with heads the normed input's second gradient (1 of
    # dim, the gate's projection beside the scan); the spectral norm's vector products' bytes on top
    got = bb.floor_bytes(_tiny_bound_model("e1", heads=2), 10, 3, 5, vector_bytes=(7, 11))
    assert got["forward"] == (2 * (4 * D + 5 * D + 2 * D) + 3 * D + 256) * BT * 2 + 7
    assert got["backward"] == (2 * (4 * D + 9 * D + 3 * D + D) + 4 * D + 256) * BT * 2 + 11  # + D: x's 2nd gradient
    assert (got["scans_forward"], got["scans_backward"]) == (2 * 2 * D * BT * 2, 2 * 3 * D * BT * 2)
    with pytest.raises(ValueError, match="no floor accounting for model 'e1' {'selective': 'decay'}"):
        bb.floor_passes(_tiny_bound_model("e1", selective="decay"))


def test_bench_bound_floor_step_computes_and_moves_its_bytes():
    """bench_bound.py's synthetic step (on the CPU here): each GEMM's output is its product in the
    recorded layout, the copies move the floor's bytes (to an element a copy), and the GEMMs-alone
    and copies-alone variants leave the other half out."""
    bb = _benchmark_script("bench_bound")
    forward, backward, params, _ = bb.record_gemms(_tiny_bound_model("mingru"), 3, 5)
    floor = bb.floor_bytes(_tiny_bound_model("mingru"), params, 3, 5)
    step = bb.FloorStep(forward, backward, floor, "cpu", dtype=torch.float32, align=1)
    step()
    for half, gemms in zip((forward, backward), step.work):
        for g, (a, b, out) in zip(half, gemms[0]):
            assert a.shape == (g.m, g.k) and b.shape == (g.k, g.n)
            assert a.is_contiguous() != g.a_t and b.is_contiguous() != g.b_t
            torch.testing.assert_close(out, a @ b)
    assert step.verify()
    total = floor["forward"] + floor["backward"] + floor["optimizer"]
    assert 0 <= total - step.moved < 4 * (len(forward + backward) + 1)
    assert step.flops == sum(g.flops for g in forward + backward)
    alone = bb.FloorStep(forward, backward, floor, "cpu", copies=False, dtype=torch.float32, align=1)
    assert alone.moved == 0 and alone.flops == step.flops
    copies = bb.FloorStep(forward, backward, floor, "cpu", gemms=False, dtype=torch.float32, align=1)
    assert copies.flops == 0 and copies.moved == step.moved and not any(g for g, _, _ in copies.work)
    blocks = bb.FloorStep(forward, backward, floor, "cpu", gemms=False, dtype=torch.float32, align=64)
    assert all(n % 64 == 0 and n > 0 for _, ns, _ in blocks.work for n in ns)
    assert 0 <= step.moved - blocks.moved < 4 * 64 * (len(forward + backward) + 1)
    assert any(g.b_t for g in forward) and any(not g.b_t for g in backward)  # both layouts met
    calls = []  # kernels (the model's scans on a GPU) run once a step each, spread over the GEMMs
    kernels = ([lambda i=i: calls.append(("fwd", i)) for i in range(2)], [lambda i=i: calls.append(("bwd", i)) for i in range(2)])
    scans = bb.FloorStep(forward, backward, floor, "cpu", dtype=torch.float32, align=1, kernels=kernels)
    scans()
    assert calls == [("fwd", 0), ("fwd", 1), ("bwd", 0), ("bwd", 1)] and scans.scan_bytes == (
        floor["scans_forward"] + floor["scans_backward"])
    assert 0 <= total - scans.scan_bytes - scans.moved < 4 * (len(forward + backward) + 1)
    assert [len(c) for c in scans.work[0][2]] == [1, 1, 0]  # after each layer's in_proj, none after the head
    ops = bb.model_operands(_tiny_bound_model("mingru"), 3, 5, device="cpu")  # the model's own operands
    assert [(a.shape, b.shape) for a, b in ops[0] + ops[1]] == [((g.m, g.k), (g.k, g.n)) for g in forward + backward]
    assert [a.is_contiguous() != g.a_t for (a, _), g in zip(ops[1], backward)] == [True] * len(backward)
    own = bb.FloorStep(forward, backward, floor, "cpu", dtype=torch.bfloat16, align=1, operands=ops)
    own()
    assert own.verify() and all(a is x for (a, _, _), (x, _) in zip(own.work[1][0], ops[1]))


def test_bench_bound_refuses_in_one_line(capsys):
    """bench_bound.py: an --only that matches no bound model, a --scan-launches not CHANNELSxWARPS,
    or no GPU: one line, exit 2."""
    bb = _benchmark_script("bench_bound")
    with pytest.raises(SystemExit) as e:
        bb.main(["--only", "Mamba2"])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"bench_bound.py: error: --only Mamba2 matches none of {', '.join(bb.BOUND_MODELS)}"]
    with pytest.raises(SystemExit) as e:
        bb.main(["--scan-launches", "64x1", "256"])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "bench_bound.py: error: --scan-launches takes CHANNELSxWARPS, e.g. 64x1 (got 64x1 256)")
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit) as e:
            bb.main(["--only", "minGRU", "--bound-only"])
        assert e.value.code == 2
        assert capsys.readouterr().err.strip() == "bench_bound.py: error: needs a CUDA GPU (torch sees none)"


def test_bench_bound_runs_each_models_bound_first():
    """bench_bound.py's rows a model runs: its bound first (the plain floor step, or E1's with its
    own scans, whose kernels do the recurrence's products: E1 never runs the plain one), the GEMMs
    and copies alone, the options' rows; the yardstick's own step first, even with --bound-only."""
    bb = _benchmark_script("bench_bound")
    rows = lambda plan: [(what, scans, own) for what, _, _, scans, own in plan]  # noqa: E731
    assert rows(bb.row_plan("mingru")) == [("floor step", False, False), ("GEMMs alone", False, False),
                                           ("copies alone", False, False)]
    with_scans = [("floor step, the model's scans", True, False), ("scans alone", True, False)]
    assert rows(bb.row_plan("mingru", with_scans=True, scan_launches=((128, 2),)))[3:] == with_scans + [
        ("floor step, the model's scans [128 x 2]", (128, 2), False), ("scans alone [128 x 2]", (128, 2), False)]
    assert rows(bb.row_plan("e16", with_model_operands=True))[3:] == [
        ("floor step [model's operands]", False, True), ("GEMMs alone [model's operands]", False, True)]
    e1 = [with_scans[0], ("GEMMs alone", False, False), ("copies alone", False, False), with_scans[1]]
    assert rows(bb.row_plan("e1")) == rows(bb.row_plan("e1", with_scans=True, scan_launches=((128, 2),))) == e1
    assert [g for _, g, _, _, _ in bb.row_plan("e1")] == [True, True, False, False]
    assert bb.run_order(["E1 d26 dense"], bound_only=True, yardstick=True) == [
        (bb.YARDSTICK, True, False), ("E1 d26 dense", False, True)]
    assert bb.run_order(["a", "b"], bound_only=False, yardstick=False) == [("a", True, True), ("b", True, True)]


def test_bench_bound_table_says_what_the_target_leaves(capsys):
    """bench_bound.py's summary: the bound's MFU, the step time the model's MFU target allows and
    its distance from the floor step, the model's step as a multiple of the floor step; copies
    alone show a rate, not an MFU."""
    bb = _benchmark_script("bench_bound")
    name = "minGRU 3520x16"
    rows = [dict(name=name, row="model step", step_ms=66.0, tok_per_s=1, mfu=0.5),
            dict(name=name, row="floor step", step_ms=60.0, tok_per_s=2, mfu=0.66, gemm_tflops=600.0, bound=True),
            dict(name=name, row="copies alone", step_ms=9.0, copy_gbps=4000)]
    bb.print_table(rows)
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == (f"{name}: bound 66.0% MFU; its target 60% needs a step of 66.00 ms, +6.00 ms on the "
                       "floor step; the model's step takes 1.100x the floor step")
    copies = next(line for line in out if "copies alone" in line)
    assert "%" not in copies and "4000" in copies
    rows[1]["floor_gb"] = dict(scans_forward=4.0, scans_backward=8.0)  # 3 ms as copies at 4000 GB/s
    rows += [dict(name=name, row="floor step, the model's scans", step_ms=64.5, tok_per_s=2, mfu=0.6),
             dict(name=name, row="scans alone", step_ms=5.0, scan_gbps=2400)]
    bb.print_table(rows)
    assert capsys.readouterr().out.splitlines()[-1] == (
        "  the model's scans: +4.50 ms on the floor step; alone 5.00 ms, +2.00 ms on their bytes' copies")
    rows += [dict(name=name, row="floor step, the model's scans [256 x 4]", step_ms=64.0, tok_per_s=2, mfu=0.6),
             dict(name=name, row="scans alone [256 x 4]", step_ms=5.5, scan_gbps=2200, power_w=650)]
    bb.print_table(rows)
    assert capsys.readouterr().out.splitlines()[-1] == (
        "  the model's scans [256 x 4]: +4.00 ms on the floor step; alone 5.50 ms at 650 W, +2.50 ms on their "
        "bytes' copies")
    # E1's bound is its floor step with its own scans; dense E1's also a ratio to Mamba2's step, same run
    e1 = "E1 d26 dense"
    rows = [dict(name=bb.YARDSTICK, row="model step", step_ms=125.0, tok_per_s=1, mfu=0.3),
            dict(name=e1, row="model step", step_ms=140.0, tok_per_s=1, mfu=0.28),
            dict(name=e1, row="floor step, the model's scans", step_ms=130.0, tok_per_s=2, mfu=0.31, bound=True),
            dict(name=e1, row="scans alone", step_ms=75.0)]
    bb.print_table(rows)
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"{e1}: bound 31.0% MFU (with its own scans); its target 30% needs a step of 134.33 ms, +4.33 ms on the "
        "floor step; the floor step is 0.962x Mamba2 d22's step (125.00 ms, this run; target 1.0x); the model's "
        "step takes 1.077x the floor step")


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="runs the Triton interpreter (CPU-only machines)")
@pytest.mark.parametrize("kind", ["mingru", "minlstm"])
def test_bench_bound_scans_at_another_launch_compute_what_the_ops_compute(kind):
    """bench_bound.py --scan-launches: minGRU's and minLSTM's scans launched at other channels and
    warps a program are the same work as the package's ops at the model's shapes (the states
    forward, the projection's gradient backward), so that the rows time the same scans."""
    bb = _benchmark_script("bench_bound")
    cfgd = _tiny_bound_model(kind)
    ops_fwd, ops_bwd = bb.scan_kernels(cfgd, 2, 5, device="cpu")
    fwd, bwd = bb.scan_kernels(cfgd, 2, 5, device="cpu", launch=(32, 1))
    assert len(fwd) == len(bwd) == cfgd["depth"]
    h = ops_fwd[0]()
    assert h.shape == (2, 5, 16) and torch.equal(fwd[0](), h)
    torch.testing.assert_close(bwd[0](), ops_bwd[0]()[0], rtol=0, atol=0)
    with pytest.raises(ValueError, match="no scan kernels for model kind 'e16' at another launch"):
        bb.scan_kernels(_tiny_bound_model("e16"), 2, 5, device="cpu", launch=(32, 1))


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="runs the Triton interpreter (CPU-only machines)")
@pytest.mark.parametrize("heads", [1, 2])
def test_bench_bound_e1_scans_hold_what_the_record_leaves_out(heads):
    """bench_bound.py's E1 scan kernels are the layer's custom ops at its shapes: the states (and
    with heads the gate's projection z), backward the recurrent weight's gradient (and with heads
    the projection's dx and dW): the work ``record_gemms`` leaves to them."""
    bb = _benchmark_script("bench_bound")
    cfgd = _tiny_bound_model("e1", **({"heads": heads} if heads > 1 else {}))
    layer = bb.build(cfgd).blocks[0].mixer
    fwd, bwd = bb.scan_kernels(cfgd, 2, 5, device="cpu", dtype=torch.float32)
    assert len(fwd) == len(bwd) == cfgd["depth"]
    out, grads = fwd[0](), bwd[0]()
    if heads > 1:
        (h, z), (dpre, dw, dx, dwz) = out, grads
        assert z.shape == (2, 5, 16) and dx.shape == (2, 5, 16) and dwz.shape == (16, 16) and dwz.abs().sum() > 0
    else:
        h, (dpre, dw, _) = out, grads
    assert h.shape == dpre.shape == (2, 5, 16) and dw.shape == layer.W_h.shape and dw.abs().sum() > 0
    assert 0 < h.float().abs().max() < 0.99 and dpre.abs().min() > 0  # not saturated: a model's gradients


def test_benchmark_run_meta_names_gpu_peak_fields_and_commit(monkeypatch):
    """bench_models.run_meta (bench_models.py's and bench_bound.py's meta): the GPU, its dense bf16
    peak for MFU (given, or the GPU's), the script's fields, and the commit given for a copy."""
    bm = _benchmark_script("bench_models")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H200")
    meta = bm.run_meta(None, "abc1234", steps=8)
    assert (meta["device"], meta["peak_tflops"], meta["peak_assumed"], meta["steps"], meta["git_commit"]) == (
        "NVIDIA H200", 989.0, False, 8, "abc1234")
    assert bm.run_meta(500.0, None)["peak_tflops"] == 500.0 and "torch" in meta and "date" in meta


def test_a_run_folder_of_another_config_is_a_conflict_said_by_plan_and_refused(tmp_path, capsys, monkeypatch):
    """A suite folder whose run trained with other settings (here another corpus) cannot be resumed
    or skipped as that run: ``--plan`` marks it and says why (reading each folder's config.json
    once), and training it is refused in one line, exit 2, before anything trains."""
    from rnnlab.train.rundir import RunDir

    out, other = tmp_path / "s", tmp_path / "other.txt"
    other.write_bytes(bytes(range(256)) * 64)
    base = ["bench", "tiny", "--steps", "1", "--eval-bytes", "4K", "--out", str(out)]
    assert main([*base, "--runs", "e1", "--no-plots", "--no-progress"]) == 0
    capsys.readouterr()
    why = f"{out / 'e1'} holds a run with data = the bundled sample, but the suite now asks for \"{other}\""
    read, saved_config = [], RunDir.saved_config
    monkeypatch.setattr(RunDir, "saved_config", lambda self: read.append(self.path) or saved_config(self))
    assert main([*base, "--runs", "e1,mingru", "--data", str(other), "--plan"]) == 0
    assert read == [out / "e1", out / "mingru"]
    assert capsys.readouterr().out.splitlines() == [
        f"suite tiny: 2 runs under {out}",
        "  e1                           e1          dim=64    depth=2          57,856 params  steps=1  "
        "schedulefree-adamw lr=0.003  fp32  [conflict]",
        "  mingru                       mingru      dim=64    depth=2          33,152 params  steps=1  "
        "schedulefree-adamw lr=0.003  fp32  [new]",
        f"  conflict: {why}"]
    before = (out / "e1" / "metrics.jsonl").read_bytes()
    assert main([*base, "--runs", "e1", "--data", str(other), "--no-progress"]) == 2
    assert capsys.readouterr().err == f"rnnlab bench: error: {why} (use another --out, or delete those run folders)\n"
    assert (out / "e1" / "metrics.jsonl").read_bytes() == before


def test_a_row_with_a_complete_seed_is_partial_whatever_its_other_seeds_did(tmp_path):
    """"failed" and "missing" are said of a row none of whose runs completed: a complete seed beside
    a failed one, or beside a planned one never started, makes a partial row (its complete seed is
    the row's numbers)."""
    _synthetic_run(tmp_path, "f-s1", 1.5, 2.0, 30000.0, seed=1)
    _synthetic_run(tmp_path, "f-s2", 1.6, 2.1, 30000.0, seed=2)
    _set_summary(tmp_path, "f-s2", complete=False, error="RuntimeError: loss is nan")
    _synthetic_run(tmp_path, "m-s1", 1.5, 2.0, 30000.0, seed=1)  # m-s2: planned, never started
    (tmp_path / "suite.json").write_text(json.dumps({"suite": "s", "runs": [
        {"name": n, "seed": s, "dir": f"{n}-s{s}", "point": None} for n in ("f", "m") for s in (1, 2)]}))
    rows = aggregate(collect(tmp_path)["records"])
    assert [(r["name"], r["status"], r["n_complete"], r["n_runs"]) for r in rows] == [
        ("f", "partial", 1, 2), ("m", "partial", 1, 2)]


def test_the_legend_names_the_held_out_bytes_of_every_row_in_the_table(tmp_path):
    """The legend's "bytes scored" are those of every row the table shows, a partial row's too."""
    _synthetic_run(tmp_path, "a", 1.5, 2.0, 30000.0)
    _synthetic_run(tmp_path, "b", 1.6, 2.1, 30000.0)
    _set_summary(tmp_path, "b", complete=False)
    for name, n in (("a", 6000), ("b", 500)):
        (tmp_path / name / "eval.jsonl").write_text(json.dumps({"step": 10, "val_bpb": 2.0, "bytes": n}) + "\n")
    md = write_report(tmp_path, plots=False)["md"].read_text()
    assert "(bytes scored: 500, 6,000)" in md


def test_a_curves_last_point_is_the_final_evaluations_curve_score(tmp_path):
    """The final evaluation scores the whole held-out split (the table's bpb) and, as ``curve_*``,
    the curve's bytes: the learning curve (plots, equal-bytes table) ends on the latter, scored on
    the same bytes as its other points."""
    from rnnlab.bench import plots as P

    _synthetic_run(tmp_path, "a", 1.5, 2.0, 30000.0)
    (tmp_path / "a" / "eval.jsonl").write_text(
        json.dumps({"step": 4, "val_bpb": 3.0, "bytes": 500}) + "\n"
        + json.dumps({"step": 10, "val_bpb": 2.0, "bytes": 6000, "curve_val_bpb": 2.5, "curve_bytes": 500}) + "\n")
    [curve] = P.run_curves(collect(tmp_path)["records"]).values()
    assert curve["bpb"] == [(2.0, 3.0), (5.0, 2.5)] and curve["bytes"] == {500}


def test_smooth_is_a_trailing_mean_over_the_window():
    from rnnlab.bench.plots import smooth

    assert smooth([1.0, 2.0, 3.0, 4.0], 2) == [1.0, 1.5, 2.5, 3.5]
    assert smooth([1.0, 2.0, 3.0, 4.0], 3) == [1.0, 1.5, 2.0, 3.0]
    assert smooth([1.0, 2.0], 1) == [1.0, 2.0]


def test_a_time_axis_is_in_seconds_below_10_minutes_minutes_below_3_hours_then_hours():
    from rnnlab.bench.plots import time_unit

    assert [time_unit(s) for s in (0, 599, 600, 3 * 3600 - 1, 3 * 3600)] == [
        (1, "s"), (1, "s"), (60, "min"), (60, "min"), (3600, "h")]


def test_held_out_points_at_x_above_1_25_times_the_solid_curves_are_left_above_the_axis():
    from rnnlab.bench.plots import _draw_bpb, pyplot

    def clipped(x_bpb: float) -> bool:
        fig, ax = pyplot().subplots()
        curves = {"r": {"name": "r", "bpb": [(1.0, x_bpb)], "bpb_y": [(1.0, 1.0)], "bytes": {100}}}
        try:
            return _draw_bpb(ax, curves, {"r": "C0"}, "", 1.0)
        finally:
            pyplot().close(fig)

    assert clipped(1.26) and not clipped(1.24)


def test_a_numeric_sweep_axis_spanning_ten_times_is_drawn_on_a_log_scale():
    from rnnlab.bench.plots import pyplot, sweep_figure

    rows = [{"point": {"lr": lr}, "loss": 1.0, "loss_std": None, "val_bpb": 1.5, "val_bpb_std": None,
             "status": "complete"} for lr in (1e-3, 1e-2)]
    fig = sweep_figure(rows, ["lr"])
    assert [ax.get_xscale() for ax in fig.axes] == ["log", "log"]
    pyplot().close(fig)


def test_bench_wavefront_heads_computes_the_models_loss_and_gradients():
    """bench_wavefront.py's E1 heads wavefront (``--model heads``) is the model: for any number of time
    chunks its loss and every gradient equal ``LM.forward``'s (float64, the reference scan, no streams),
    so its timings compare the same computation."""
    bw = _benchmark_script("bench_wavefront")
    from rnnlab.models import LM, ModelConfig

    torch.manual_seed(0)
    model = LM(ModelConfig(model="e1", dim=64, depth=3, layer={"heads": 4})).double()
    u0 = [b.mixer.spectral_u.clone() for b in model.blocks]
    x = torch.randint(0, 256, (2, 33))
    idx, tgt = x[:, :-1], x[:, 1:]
    want = model(idx, tgt)
    want_g = torch.autograd.grad(want, list(model.parameters()))
    for chunks in (1, 2, 3):
        for b, u in zip(model.blocks, u0):
            b.mixer.spectral_u.copy_(u)
        got = bw.heads_wavefront_loss(model, idx, tgt, chunks, None, bw.heads_pre, bw.heads_post)
        got_g = torch.autograd.grad(got, list(model.parameters()))
        torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
        for g, w in zip(got_g, want_g):
            torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-13)


def test_the_reports_config_cell_names_the_model_settings_that_differ_from_their_defaults(tmp_path):
    """A row whose config.json sets ``rescale_prenorm_residual``, ``tie_embeddings`` or ``mlp_ratio``
    away from its default says so in its config cell (it looked like the same model without it);
    a row at the defaults, or setting one to its default, says nothing more."""
    from rnnlab.bench.report import config_text

    settings = {"plain": {}, "default-said": {"tie_embeddings": True, "mlp_ratio": None},
                "rescaled": {"rescale_prenorm_residual": True},
                "untied-mlp": {"tie_embeddings": False, "mlp_ratio": 2.0}}
    for name, model in settings.items():
        _synthetic_run(tmp_path, name, 1.5, 2.0, 20000.0)
        config = json.loads((tmp_path / name / "config.json").read_text())
        config["model"].update(model)
        (tmp_path / name / "config.json").write_text(json.dumps(config))
    rows = {r["name"]: config_text(r) for r in aggregate(collect(tmp_path)["records"])}
    assert rows == {"plain": "e1 64x2", "default-said": "e1 64x2", "rescaled": "e1 64x2 rescale_prenorm_residual=True",
                    "untied-mlp": "e1 64x2 mlp_ratio=2.0 tie_embeddings=False"}
