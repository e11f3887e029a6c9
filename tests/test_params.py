"""Parameter counts reproduce the seed's logged configs exactly (spec §1.7), and the solver works."""

import dataclasses
import json
import re

import pytest

from rnnlab.cli import main
from rnnlab.models import ModelConfig, count_params, solve_dim
from rnnlab.models.params import parse_count
from rnnlab.models.registry import MODELS

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only add contention

SEED_CONFIGS = [
    ("e1", 1760, 26, {}, 403_279_360),
    ("e1", 3584, 6, {}, 386_340_864),
    ("e1", 2560, 12, {}, 393_968_640),
    ("e1", 2208, 16, {}, 390_696_768),
    ("e1", 1984, 20, {}, 394_256_512),
    ("e1", 1024, 19, {"expansion": 2.5}, 398_810_624),
    ("mingru", 2752, 24, {}, 364_370_304),
    ("mingru", 3520, 16, {}, 397_513_600),
    ("minlstm", 2304, 24, {}, 382_910_976),
    ("minlstm", 2880, 16, {}, 398_966_400),
    ("mamba2", 1728, 22, {}, 402_064_492),
    ("mamba2", 1728, 22, {"d_state": 128}, 406_944_620),
    ("e16", 1024, 10, {"expansion": 2, "state_expansion": 4}, 398_825_472),
]


@pytest.mark.parametrize("model,dim,depth,layer,expected", SEED_CONFIGS)
def test_seed_parameter_counts(model, dim, depth, layer, expected):
    assert count_params(ModelConfig(model=model, dim=dim, depth=depth, layer=layer)) == expected


def test_params_cli_json(capsys):
    assert main(["params", "--model", "e1", "--dim", "1760", "--depth", "26", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {"model": "e1", "dim": 1760, "depth": 26, "params": 403_279_360}


def test_params_cli_target(capsys):
    assert main(["params", "--model", "e1", "--target", "400M", "--depth", "20", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["dim"] % 32 == 0 and out["depth"] == 20
    assert abs(out["params"] - 400_000_000) < 0.02 * 400_000_000
    # the neighbours on the 32-grid are no closer to the target
    for d in (out["dim"] - 32, out["dim"] + 32):
        assert abs(count_params(ModelConfig("e1", d, 20)) - 4e8) >= abs(out["params"] - 4e8)


def test_params_cli_says_when_the_target_is_out_of_reach(capsys):
    """A target the depth cannot come near (the smallest width already has more) is said so."""
    assert main(["params", "--model", "e1", "--target", "10", "--depth", "2"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("e1 dim=32 depth=2: ") and out.endswith(
        "(target 10): the nearest at this depth in widths that are multiples of 32; a smaller --multiple or another "
        "--depth may come closer")
    # not "the nearest this depth allows" where a smaller step comes closer: 48 (35,712) is nearer 40K than 64
    assert main(["params", "--model", "e1", "--target", "40K", "--depth", "2"]) == 0
    assert capsys.readouterr().out.strip().startswith("e1 dim=64 depth=2: 57,856 parameters")
    assert main(["params", "--model", "e1", "--target", "40K", "--depth", "2", "--multiple", "8"]) == 0
    assert capsys.readouterr().out.strip().startswith("e1 dim=48 depth=2: 35,712 parameters")
    assert main(["params", "--model", "e1", "--target", "10", "--depth", "2", "--multiple", "1"]) == 0
    assert capsys.readouterr().out.strip() == ("e1 dim=1 depth=2: 274 parameters (target 10): the nearest this depth "
                                               "allows; another --depth may come closer")
    assert main(["params", "--model", "e1", "--target", "400M", "--depth", "20"]) == 0
    assert capsys.readouterr().out.strip().endswith("(target 400,000,000)")


def test_solver_matches_seed_search_rule():
    dim, params = solve_dim(ModelConfig("e1", 64, 26), 403_279_360)
    assert (dim, params) == (1760, 403_279_360)


@pytest.mark.parametrize("text,value", [("400M", 400_000_000), ("1.5B", 1_500_000_000), ("50m", 50_000_000), ("123", 123),
                                        ("2k", 2_000), ("1G", 1_000_000_000), ("1e9", 1_000_000_000),
                                        ("2.5E8", 250_000_000), ("4e+2K", 400_000),
                                        ("1.005K", 1_005),  # 1.005 * 1000 = 1004.99999...: rounded, not cut
                                        ("1.1K", 1_100), ("0.1M", 100_000), ("2.3e-1K", 230)])
def test_parse_count(text, value):
    assert parse_count(text) == value


@pytest.mark.parametrize("given,message", [(0, "must be positive, got '0'"), (-5, "must be positive, got '-5'"),
                                           (True, "cannot read a count from True"),
                                           ("1e400", "cannot read a count from '1e400'"),  # inf: no OverflowError
                                           (1e400, "cannot read a count from 'inf'"),
                                           ("1.5", r"a count is a whole number, got '1.5' \(= 1.5\)"),
                                           (2.5, r"a count is a whole number, got '2.5'"),
                                           ("1.0005K", r"got '1.0005K' \(= 1000.5\)")])
def test_parse_count_checks_a_number_as_it_checks_text(given, message):
    """A suite file's ``target_params = 0`` (or ``-5``, ``true``) is refused, as ``"0"`` is, not
    solved to the narrowest width; a number that is a count (``4e8``) still reads."""
    with pytest.raises(ValueError, match=message):
        parse_count(given)
    assert (parse_count(400_000_000), parse_count(4e8)) == (400_000_000, 400_000_000)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--model", "nope", "--dim", "64", "--depth", "2"],
         f"model must be one of {', '.join(MODELS)}, got 'nope'"),  # every registered kind, in order
        (["--model", "e1", "--dim", "0", "--depth", "2"], "dim must be a positive integer (at most 65,536), got 0"),
        (["--model", "e1", "--dim", "64", "--depth", "-3"], "depth must be a positive integer (at most 1,024), got -3"),
        (["--model", "e1", "--target", "lots", "--depth", "2"], "argument --target: cannot read a count from 'lots'"),
        (["--model", "e1", "--target", "-5M", "--depth", "2"],
         "argument --target: parameter count must be positive, got '-5M'"),
        (["--model", "e1", "--dim", "64", "--depth", "2", "--layer", "bogus=1"], "unknown e1 layer option"),
    ],
)
def test_params_cli_errors(argv, message, capsys):
    try:
        rc = main(["params", *argv])
    except SystemExit as e:  # argparse's own errors (a --target it cannot read)
        rc = e.code
    assert rc == 2
    assert message in capsys.readouterr().err


def test_layers_lists_every_option_with_its_default(capsys):
    assert main(["layers"]) == 0
    out = capsys.readouterr().out
    for name, spec in MODELS.items():
        assert f"{name}: {spec.description}" in out
        for s in spec.layer_options():
            shown = s.key if s.default is None else f"{s.key}={re.escape(str(s.default))}"
            assert re.search(rf"^  --layer {shown} +{re.escape(s.meta.help)}", out, re.M)
    assert "=None" not in out and re.search(r"^  --layer heads +number of heads \(default: balanced", out, re.M)
    assert "--layer selective=none" in out and "[none | decay | lowrank]" in out
    assert main(["layers", "mamba2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("mamba2: ") and "e1:" not in out and "--layer d_state=64 " in out


def test_layer_option_choices_are_checked():
    with pytest.raises(ValueError, match=r"e1 layer option selective must be one of none, decay, lowrank, got 'gate'"):
        ModelConfig(model="e1", layer={"selective": "gate"}).validate()


def test_multiple_must_be_positive_and_its_default_is_shown(capsys):
    """``--multiple 0`` is an error, not the model's default in disguise; the help names the
    default each model steps by."""
    for bad in ("0", "-3"):
        with pytest.raises(SystemExit) as e:  # argparse's check: it exits 2 itself
            main(["params", "--model", "e1", "--target", "1M", "--depth", "2", "--multiple", bad])
        assert e.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"rnnlab params: error: argument --multiple: must be a positive integer, got '{bad}'")
        assert "\n" not in err
    with pytest.raises(ValueError, match=r"multiple must be a positive integer \(at most 65,536, the widest dim\), got 0"):
        solve_dim(ModelConfig("e1", 64, 2), 1_000_000, multiple=0)
    assert solve_dim(ModelConfig("e1", 64, 2), 1_000_000, multiple=48)[0] % 48 == 0
    with pytest.raises(SystemExit):
        main(["params", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "width step for --target (default: the model's, 64 for transformer, 32 for the others)" in help_text


def test_multiple_without_target_is_refused(capsys):
    """``--multiple`` steps the solved width only: with ``--dim`` it was ignored without a word."""
    assert main(["params", "--model", "e1", "--dim", "64", "--depth", "2", "--multiple", "7"]) == 2
    assert capsys.readouterr().err == ("rnnlab params: error: --multiple is the width step for --target; "
                                       "give --target with it\n")


def test_solve_dim_reaches_the_widest_multiple_below_max_dim():
    """The doubling search stops at MAX_DIM's last multiple, not at the first power of two past it:
    with a step of 3000, 60000 (k = 20) is found although k = 32 would be past 65536."""
    cfg = ModelConfig("e1", 64, 1)
    target = count_params(dataclasses.replace(cfg, dim=60_000))
    assert solve_dim(cfg, target, multiple=3000) == (60_000, target)
    with pytest.raises(ValueError, match="no width up to 65536 reaches"):
        solve_dim(cfg, count_params(dataclasses.replace(cfg, dim=65_536)) + 1, multiple=3000)
    with pytest.raises(ValueError, match=r"multiple must be a positive integer \(at most 65,536, the widest dim\), "
                                         "got 70000"):  # not "dim must be ...": the flag typed is --multiple
        solve_dim(cfg, 1_000_000, multiple=70_000)


@pytest.mark.parametrize("model,layer,grid", [("e1", {"heads": 14}, 224),  # the state 32k divides by 14: k % 7 == 0
                                              ("mamba2", {"headdim": 128}, 64)])  # headdim divides 2 * dim
def test_solver_steps_over_widths_the_layer_refuses(model, layer, grid, capsys, tmp_path):
    """A layer option that some widths refuse (race-400m's E1 heads=14) is solved to the nearest
    width that the layer takes, as ``rnnlab params --target``, ``rnnlab bench --params`` and
    ``rnnlab sweep --target-params`` ask: the solver failed at the first width it tried (dim 32)."""
    cfg = ModelConfig(model, 64, 2, layer=layer)
    dim, params = solve_dim(cfg, 2_000_000)
    assert dim % grid == 0 and params == count_params(dataclasses.replace(cfg, dim=dim))
    for d in (dim - grid, dim + grid):  # the neighbours the layer takes are no closer
        assert abs(count_params(dataclasses.replace(cfg, dim=d)) - 2e6) >= abs(params - 2e6)
    argv = ["params", "--model", model, "--target", "2M", "--depth", "2", "--json"]
    assert main([*argv, *[a for k, v in layer.items() for a in ("--layer", f"{k}={v}")]]) == 0
    assert json.loads(capsys.readouterr().out)["dim"] == dim
    from rnnlab.bench.suite import parse_suite, plan_suite
    suite = parse_suite({"runs": [{"name": "r", "model": model, "depth": 2, "dim": 256, "layer": layer}]})
    assert plan_suite(suite, tmp_path, params="2M")[0].cfg.model.dim == dim


def test_solver_reports_an_option_no_width_takes():
    """An option that no width takes is still refused with the layer's own message, at a width its
    whole-number options divide (so the message is why no width takes it)."""
    with pytest.raises(ValueError, match="e1 layer option heads must divide the state width"):
        solve_dim(ModelConfig("e1", 64, 2, layer={"heads": 65536, "expansion": 0.5}), 1_000_000)
    # its own reason, not that it does not divide the narrowest width tried (64: 3 divides 192)
    with pytest.raises(ValueError, match=r"^transformer layer option head_dim must be even for RoPE, got 3$"):
        solve_dim(ModelConfig("transformer", 64, 2, layer={"head_dim": 3}), 1_000_000)


def test_solver_says_when_no_width_the_layer_takes_reaches_the_target():
    """With heads=14 the widest multiple of 32 (65536) is refused: a target past the widest width
    taken (65408) is out of reach, as it is for a layer that takes every width."""
    cfg = ModelConfig("e1", 64, 1, layer={"heads": 14})
    widest = count_params(dataclasses.replace(cfg, dim=65_408))
    assert solve_dim(cfg, widest) == (65_408, widest)
    with pytest.raises(ValueError, match="no width up to 65536 reaches"):
        solve_dim(cfg, widest + 1)


def test_mlp_ratio_has_a_top(capsys):
    """``--mlp-ratio`` is a factor like a layer's expansion, topped at MAX_FACTOR: 1e300 was a torch
    traceback from building the MLP, not a one-line error."""
    from rnnlab.layers.base import MAX_FACTOR
    assert main(["params", "--model", "e1", "--dim", "64", "--depth", "2", "--mlp-ratio", "1e300"]) == 2
    assert "--mlp-ratio must be" in capsys.readouterr().err
    assert count_params(ModelConfig("e1", 64, 1, mlp_ratio=MAX_FACTOR)) > 0


def test_layers_with_an_empty_model_name_is_refused(capsys):
    """``rnnlab layers ""`` (an unset shell variable) names no model kind: refused as one, not read as
    no argument, which listed every model."""
    assert main(["layers", ""]) == 2
    err = capsys.readouterr()
    assert err.err.startswith("rnnlab layers: error: unknown model ''") and err.out == ""
