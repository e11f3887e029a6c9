"""Hugging Face interoperability: ``rnnlab export`` -> Auto classes -> logits / generate equal
rnnlab's own, for every model kind (tiny runs trained 2 steps on CPU)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from rnnlab.cli import main  # noqa: E402  (importing rnnlab registers the model type)
from rnnlab.eval.sampling import generate  # noqa: E402
from rnnlab.hf.modeling import RnnlabForCausalLM  # noqa: E402
from rnnlab.train.config import TrainConfig  # noqa: E402
from rnnlab.train.rundir import RunDir  # noqa: E402
from rnnlab.train.trainer import run_training  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

# Every model kind, tiny; E1 with block-diagonal heads and a conv (a second state tensor).
KINDS = {
    "e1": {},
    "e1-heads-conv": {"heads": 4, "conv": 4},
    "e16": {},
    "mamba2": {"headdim": 16, "d_state": 16, "backend": "reference"},
    "mingru": {},
    "minlstm": {},
    "transformer": {"head_dim": 16},
    "e88": {"n_state": 8},
    "gdn": {"head_dim": 8, "backend": "reference"},
}
PROMPT = b"the quick \xc3\xa9"


def _model_of(kind: str, models) -> str:
    """The registered model a ``KINDS`` key names: the key itself, or the longest model name it
    starts with before ``-<variant>`` (``e1-heads-conv`` is ``e1``; a model named with a ``-``
    is its own key)."""
    return max((m for m in models if kind == m or kind.startswith(m + "-")), key=len, default=kind)


def test_every_registered_model_kind_is_exported():
    from rnnlab.models.registry import MODELS

    missing = sorted(set(MODELS) - {_model_of(name, MODELS) for name in KINDS})
    assert not missing, f"add {missing} to KINDS here: name -> its tiny --layer options"


def test_a_kinds_key_names_its_model_even_when_the_model_name_holds_a_dash():
    """A new model registered as ``elman-relu`` and added to KINDS under that name counts as
    covered (taking the key's text before its first ``-`` read ``elman`` and asked again to add
    ``elman-relu``)."""
    models = ["e1", "e16", "elman-relu"]
    assert [_model_of(k, models) for k in ("e1", "e1-heads-conv", "e16", "elman-relu", "elman-relu-wide")] == \
        ["e1", "e1", "e16", "elman-relu", "elman-relu"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name -> (run dir, exported folder), each trained for 2 steps and exported via the CLI."""
    from rnnlab.models.registry import MODELS

    root = tmp_path_factory.mktemp("hf")
    corpus = root / "corpus.txt"
    corpus.write_bytes((b"the quick brown fox jumps over the lazy dog. " * 200)[:8000])
    torch.set_num_threads(1)
    out = {}
    for name, layer in KINDS.items():
        run, hf = root / f"run-{name}", root / f"hf-{name}"
        cfg = TrainConfig.from_dict({"model": {"model": _model_of(name, MODELS), "dim": 32, "depth": 2, "layer": layer},
                                     "data": str(corpus), "batch_size": 4, "seq_len": 32, "steps": 2,
                                     "precision": "fp32", "lr": 3e-3, "eval_bytes": 1024, "device": "cpu",
                                     "out": str(run)})
        run_training(cfg, progress=False)
        assert main(["export", "--run", str(run), "--out", str(hf)]) == 0
        out[name] = (run, hf)
    return out


@pytest.mark.parametrize("name", KINDS)
def test_loaded_model_matches_rnnlab(exported, name):
    run, hf = exported[name]
    config = AutoConfig.from_pretrained(hf)
    assert config.model_type == "rnnlab" and config.seq_len == 32
    assert "backend" not in config.layer  # kernel choice is left to where the model is loaded
    model = AutoModelForCausalLM.from_pretrained(hf)
    assert isinstance(model, RnnlabForCausalLM) and not model.training
    _, ref, _ = RunDir(run).load("cpu")

    ids = torch.tensor([list(PROMPT), list(b"jumps over t")])
    logits = model(ids).logits
    # Not bit-equal in general: the loaded weights are memory-mapped from model.safetensors and
    # their alignment can change which SIMD path a CPU matmul takes (~1e-7 differences).
    torch.testing.assert_close(logits, ref(ids), rtol=0, atol=1e-5)
    stepped = model(ids, use_cache=True)  # through LM.step, returning the state
    torch.testing.assert_close(stepped.logits, logits, rtol=0, atol=1e-5)
    assert len(stepped.cache.layers) == 2

    tok = AutoTokenizer.from_pretrained(hf)
    out = model.generate(**tok(PROMPT.decode(), return_tensors="pt"), max_new_tokens=24, do_sample=False)
    assert bytes(out[0, len(PROMPT):].tolist()) == generate(ref, PROMPT, 24, temperature=0)


@pytest.mark.parametrize("name", ["mamba2", "gdn"])
def test_an_official_layer_loads_as_its_reference_onto_the_cpu_of_a_gpu_machine(exported, official_would_run, name):
    """``from_pretrained(folder)`` (onto the CPU) where backend auto would pick the official layer
    (a GPU and its library): a Mamba2 or Gated DeltaNet layer is built as ``rnnlab eval --device
    cpu`` builds it, the PyTorch reference, and runs on CPU tensors; it built the official layer
    before, whose forward refuses them. The exported config keeps auto."""
    run, hf = exported[name]
    model = AutoModelForCausalLM.from_pretrained(hf)
    assert {m.backend for m in model.modules() if hasattr(m, "_build_reference")} == {"reference"}
    assert "backend" not in model.config.layer
    _, ref, _ = RunDir(run).load("cpu")
    ids = torch.tensor([list(PROMPT)])
    torch.testing.assert_close(model(ids).logits, ref(ids), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["mamba2", "gdn"])
def test_from_pretrained_builds_the_layers_for_the_device_map(exported, official_would_run, monkeypatch, name):
    """The device ``from_pretrained`` loads onto (``load_device`` of its device_map) is the one the
    layers are built for: a GPU gets the official layer (its adoption stubbed here: no library)."""
    import rnnlab.hf.modeling as modeling
    from rnnlab.layers.gdn import GatedDeltaNet
    from rnnlab.layers.mamba2 import Mamba2

    for layer in (Mamba2, GatedDeltaNet):
        monkeypatch.setattr(layer, "_adopt_official", layer._build_reference)
    seen = []
    monkeypatch.setattr(modeling, "load_device", lambda device_map: seen.append(device_map) or torch.device("cuda"))
    run, hf = exported[name]
    model = AutoModelForCausalLM.from_pretrained(hf)  # the weights still load onto the CPU
    assert seen == [None]
    assert {m.backend for m in model.modules() if hasattr(m, "_build_reference")} == {"official"}

    # a move to another kind of device rebuilds the layers for it, with the same weights; a cast does not
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    assert model.cpu() is model
    assert {m.backend for m in model.modules() if hasattr(m, "_build_reference")} == {"reference"}
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, weights[k], rtol=0, atol=0, msg=k)
    assert model.model.head.weight is model.model.embed.weight and not model.training
    lm = model.model
    model.to(torch.float64).to("cpu")
    assert model.model is lm and lm.embed.weight.dtype == torch.float64
    _, ref, _ = RunDir(run).load("cpu")
    ids = torch.tensor([list(PROMPT)])
    torch.testing.assert_close(model(ids).logits, ref.double()(ids), rtol=0, atol=1e-5)


def test_a_move_that_rebuilds_the_layers_keeps_frozen_parameters_frozen(exported, official_would_run, monkeypatch):
    """Parameters frozen before a move to another kind of device (fine-tuning a part of the model)
    stay frozen in the layers rebuilt for it; the others stay trainable. They all became trainable."""
    import rnnlab.hf.modeling as modeling
    from rnnlab.layers.mamba2 import Mamba2

    monkeypatch.setattr(Mamba2, "_adopt_official", Mamba2._build_reference)
    monkeypatch.setattr(modeling, "load_device", lambda device_map: torch.device("cuda"))
    model = AutoModelForCausalLM.from_pretrained(exported["mamba2"][1])
    frozen = {"embed.weight", "blocks.0.mixer.A_log"}
    for name, p in model.model.named_parameters():
        p.requires_grad_(name not in frozen)
    lm = model.model
    model.cpu()
    assert model.model is not lm  # rebuilt: official to reference
    assert {name for name, p in model.model.named_parameters() if not p.requires_grad} == frozen


def test_a_cast_that_rebuilds_the_layers_keeps_its_dtype(exported, official_would_run, monkeypatch):
    """A cast on the CPU of a model built for the GPU (``.double()``) rebuilds its layers for the
    CPU in the cast's dtype: the weights are float64 and the logits rnnlab's own in float64."""
    import rnnlab.hf.modeling as modeling
    from rnnlab.layers.mamba2 import Mamba2

    monkeypatch.setattr(Mamba2, "_adopt_official", Mamba2._build_reference)
    monkeypatch.setattr(modeling, "load_device", lambda device_map: torch.device("cuda"))
    run, hf = exported["mamba2"]
    model = AutoModelForCausalLM.from_pretrained(hf)
    lm = model.model
    model.double()
    assert model.model is not lm  # rebuilt: official to reference
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    _, ref, _ = RunDir(run).load("cpu")
    ids = torch.tensor([list(PROMPT)])
    torch.testing.assert_close(model(ids).logits, ref.double()(ids), rtol=0, atol=1e-9)


@pytest.mark.parametrize("device_map,cuda,want", [
    (None, True, "cpu"), ("cpu", True, "cpu"), ("cuda", True, "cuda"), ("cuda:1", True, "cuda"), (0, True, "cuda"),
    (torch.device("cuda", 0), True, "cuda"), ({"": 0}, True, "cuda"), ({"": "cuda:0"}, True, "cuda"),
    ({"model.embed": 0, "model.blocks": "cpu"}, True, "cpu"), ({"": "disk"}, True, "cpu"), ({}, True, "cpu"),
    ("auto", True, "cuda"), ("balanced", True, "cuda"), ("auto", False, "cpu"), ("mps", True, "cpu")])
def test_load_device(monkeypatch, device_map, cuda, want):
    """CUDA only when every placement is a GPU; no device_map is the default device (the CPU)."""
    from rnnlab.hf.modeling import load_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert load_device(device_map).type == want


def test_greedy_generate_equals_rnnlab_sample(exported, capsys):
    run, hf = exported["e1"]
    assert main(["sample", "--run", str(run), "--prompt", "The ", "--tokens", "40", "--temperature", "0",
                 "--device", "cpu"]) == 0
    model = AutoModelForCausalLM.from_pretrained(hf)
    ids = model.generate(torch.tensor([list(b"The ")]), max_new_tokens=40, do_sample=False)
    assert ids.shape == (1, 44)  # no end-of-text byte stops generation early
    assert capsys.readouterr().out == bytes(ids[0].tolist()).decode("utf-8", errors="replace") + "\n"


def test_beam_search_reorders_the_recurrent_state(exported):
    model = AutoModelForCausalLM.from_pretrained(exported["e1-heads-conv"][1])
    ids = torch.tensor([list(PROMPT)])
    kw = dict(max_new_tokens=8, num_beams=3, do_sample=False)
    with_state = model.generate(ids, use_cache=True, **kw)
    rerun_prefix = model.generate(ids, use_cache=False, **kw)  # parallel forward over the whole text
    assert torch.equal(with_state, rerun_prefix)


def test_byte_tokenizer(exported):
    tok = AutoTokenizer.from_pretrained(exported["e1"][1])
    text = "héllo\n\x00 Ā wörld 日本"
    ids = tok(text).input_ids
    assert ids == list(text.encode("utf-8"))  # no BOS/EOS added, a literal NUL or "Ā" is its bytes
    assert len(tok) == 256 and tok.model_max_length == 32
    assert tok.bos_token_id == tok.eos_token_id == tok.pad_token_id == 0
    assert tok.decode(ids) == text
    assert tok.decode(ids, skip_special_tokens=True) == text.replace("\x00", "")


def _steps_to_generate(model, prefix_len: int, new_bytes: int = 33) -> int:
    """How many one-byte steps (``LM.step``) greedy generation of ``new_bytes`` after a random
    prefix of ``prefix_len`` bytes takes."""
    lm, calls = model.model, []
    step = lm.step

    def counted(*args, **kwargs):
        calls.append(1)
        return step(*args, **kwargs)

    lm.step = counted  # an instance attribute, shadowing the method for this call only
    try:
        ids = torch.randint(32, 127, (1, prefix_len), generator=torch.Generator().manual_seed(prefix_len))
        out = model.generate(ids, max_new_tokens=new_bytes, do_sample=False)
    finally:
        del lm.step
    assert out.shape[1] == prefix_len + new_bytes
    return len(calls)


def test_generation_cost_per_token_does_not_grow_with_the_prefix(exported):
    """Generation carries the recurrent state: the prefix is stepped through once, then each new
    byte costs one step whatever the prefix's length (re-running the prefix for every new byte, as
    a model without a cache would, costs ``prefix x bytes`` steps). Counted, not timed."""
    model = AutoModelForCausalLM.from_pretrained(exported["e1"][1])
    short, long = _steps_to_generate(model, 8), _steps_to_generate(model, 512)
    assert long - short == 512 - 8
    assert short <= 8 + 33


def test_right_padding_is_accepted_and_generate_after_it_refused(exported):
    model = AutoModelForCausalLM.from_pretrained(exported["e1"][1])
    ids = torch.tensor([[0, 104, 105], [104, 105, 106]])
    right = model(ids, attention_mask=torch.tensor([[1, 1, 0], [1, 1, 1]]))  # trailing pads: fine
    assert right.logits.shape == (2, 3, 256)
    # generate on right-padded prompts of unequal length appends bytes after the pads: refused
    # in one message that names what works (README, Hugging Face models)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    with pytest.raises(ValueError, match=r"generate: pad on the left \(a tokenizer loaded with padding_side=\"left\"\), "
                                         r"batch prompts of equal length, or one at a time\)$"):
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=2, do_sample=False)
    assert model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=2,
                          do_sample=False).shape == (2, 5)


# prompts of unequal lengths, left-padded with the pad byte (NUL) to the longest, as generate and lm-eval batch them
LEFT_PADDED = [PROMPT, b"jumps", b"o"]


def _left_pad(prompts: list[bytes]) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` of ``prompts`` left-padded with NUL to the longest."""
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + list(p) for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


@pytest.mark.parametrize("name", [k for k in KINDS if k != "transformer"])
def test_a_left_padded_batch_equals_each_prompt_alone(exported, name):
    """A left-padded row's state is the one its real bytes alone give (its pads are skipped, not
    fed): its logits at real positions and its state equal the unpadded prompt's, and greedy
    ``generate`` on the batch gives each prompt's own bytes; the pad positions' logits are finite."""
    model = AutoModelForCausalLM.from_pretrained(exported[name][1])
    ids, mask = _left_pad(LEFT_PADDED)
    batch = model(ids, attention_mask=mask, use_cache=True)
    assert torch.isfinite(batch.logits).all()
    assert torch.equal(model(ids, attention_mask=mask).logits, batch.logits)  # without use_cache: stepped too
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=16, do_sample=False)
    for row, prompt in enumerate(LEFT_PADDED):
        alone_ids = torch.tensor([list(prompt)])
        alone = model(alone_ids, use_cache=True)
        torch.testing.assert_close(batch.logits[row, -len(prompt):], model(alone_ids).logits[0], rtol=0, atol=1e-5)
        for got, want in zip(_tensors(batch.cache.layers), _tensors(alone.cache.layers), strict=True):
            torch.testing.assert_close(got[row], want[0], rtol=0, atol=1e-5)
        alone_out = model.generate(alone_ids, max_new_tokens=16, do_sample=False)
        assert bytes(out[row, ids.shape[1]:].tolist()) == bytes(alone_out[0, len(prompt):].tolist()), row


def _tensors(state) -> list[torch.Tensor]:
    """Every tensor of a state's lists and tuples, in order."""
    return [state] if isinstance(state, torch.Tensor) else [t for s in state for t in _tensors(s)]


def test_a_fully_padded_row_keeps_the_initial_state(exported):
    """A row of pads only (mask all 0) takes nothing in: its state stays ``init_state``'s, beside a
    real row that is its own, and generate runs on."""
    model = AutoModelForCausalLM.from_pretrained(exported["e1-heads-conv"][1])
    ids, mask = _left_pad([b"jumps", b""])
    out = model(ids, attention_mask=mask, use_cache=True)
    assert torch.isfinite(out.logits).all()
    for got, init in zip(_tensors(out.cache.layers), _tensors(model.model.init_state(1)), strict=True):
        assert torch.equal(got[1], init[0])
    torch.testing.assert_close(out.logits[0], model(ids[:1]).logits[0], rtol=0, atol=1e-5)
    assert model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False).shape == (2, 9)


def test_a_transformer_refuses_left_padding_in_one_line(exported):
    """The Transformer's key/value cache keeps every position fed, a pad too: left padding is
    refused (forward and generate) in one line naming the model kind and what works."""
    model = AutoModelForCausalLM.from_pretrained(exported["transformer"][1])
    ids, mask = _left_pad(LEFT_PADDED)
    for call in (lambda: model(ids, attention_mask=mask),
                 lambda: model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=2, do_sample=False)):
        with pytest.raises(ValueError, match=r"^rnnlab transformer models cannot skip padding before real bytes "
                                             r"\(left padding\)") as err:
            call()
        assert "\n" not in str(err.value) and "one at a time" in str(err.value)
    # generate after right padding names no left padding, which it would refuse too
    ids, mask = torch.tensor([[104, 105, 0], [104, 105, 106]]), torch.tensor([[1, 1, 0], [1, 1, 1]])
    with pytest.raises(ValueError, match=r"\(generate: batch prompts of equal length, or one at a time\)$"):
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=2, do_sample=False)


def test_lm_eval_generate_until_of_a_batch_equals_one_at_a_time(exported):
    """lm-eval left-pads a batch's prompts for ``generate_until``: ``--batch_size 3`` gives what
    ``--batch_size 1`` does (it raised on the left padding before)."""
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    hf = exported["e1"][1]
    requests = [Instance(request_type="generate_until", doc={}, idx=i,
                         arguments=(context, {"until": ["\n\n"], "max_gen_toks": 8, "do_sample": False}))
                for i, context in enumerate(["the quick brown", "jumps", "a lazy d"])]
    batched = HFLM(pretrained=str(hf), device="cpu", batch_size=3).generate_until(requests, disable_tqdm=True)
    alone = HFLM(pretrained=str(hf), device="cpu", batch_size=1).generate_until(requests, disable_tqdm=True)
    assert batched == alone and all(batched)


def test_generate_of_one_byte_after_right_padding_is_refused(exported):
    """A right-padded prompt of a batch of unequal lengths is refused by ``generate`` for one new byte
    too: it was refused only from the second step on (the pad-then-1 mask), so ``max_new_tokens=1``
    returned a byte predicted after the pad bytes, with no error."""
    model = AutoModelForCausalLM.from_pretrained(exported["e1"][1])
    ids = torch.tensor([[104, 105, 0], [104, 105, 106]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    with pytest.raises(ValueError, match=r"follow its pads \(generate: pad on the left"):
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=1, do_sample=False)


def test_generate_takes_a_nul_byte_in_the_prompt_as_a_byte(exported):
    """Without an ``attention_mask`` every prompt byte is text, NUL too (the BOS byte lm-eval
    conditions on, or a NUL in the data): generate gives ``rnnlab sample``'s greedy bytes instead of
    taking byte 0 (the pad id) for padding and refusing the prompt as left-padded."""
    run, hf = exported["e1"]
    model = AutoModelForCausalLM.from_pretrained(hf)
    _, ref, _ = RunDir(run).load("cpu")
    for prompt in (b"\x00The ", b"a\x00b", b"ab\x00"):
        out = model.generate(torch.tensor([list(prompt)]), max_new_tokens=8, do_sample=False)
        assert bytes(out[0, len(prompt):].tolist()) == generate(ref, prompt, 8, temperature=0)


def test_exported_files_get_the_umask_mode(exported):
    """Every file of an exported folder has the mode a new file gets under the umask (the weights'
    writer makes them owner-only): colleagues can load what the umask lets them read."""
    from rnnlab.train.durable import new_file_mode

    hf = exported["e1"][1]
    modes = {f.name: f.stat().st_mode & 0o777 for f in hf.iterdir()}
    assert "model.safetensors" in modes and modes == dict.fromkeys(modes, new_file_mode())


def test_export_user_errors(exported, tmp_path, capsys):
    run, hf = exported["e1"]
    (tmp_path / "a-file").write_text("x")
    for argv, msg in ((["--run", str(run), "--out", str(hf)], f"--out {hf} already holds files: choose another --out"),
                      (["--run", str(run), "--out", str(tmp_path / "a-file")],
                       f"--out {tmp_path / 'a-file'} is a file, and export writes a folder: choose another --out"),
                      (["--run", str(tmp_path / "nope"), "--out", str(tmp_path / "x")], "run dir not found"),
                      # an export given as --run: said so, not its transformers keys as unknown config fields
                      (["--run", str(hf), "--out", str(tmp_path / "x")],
                       f"{hf} is a Hugging Face model folder (rnnlab export), not a run dir: give the run folder")):
        assert main(["export", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("rnnlab export: error:") and msg in err and "\n" not in err
    saved = json.loads((hf / "config.json").read_text())
    assert saved["architectures"] == ["RnnlabForCausalLM"] and saved["eos_token_id"] is None


def test_export_into_an_existing_empty_folder(exported, tmp_path):
    """An empty folder (made ahead, e.g. a mount point) is a fine ``--out``: only one that holds
    files is refused."""
    run, _ = exported["e1"]
    out = tmp_path / "empty"
    out.mkdir()
    assert main(["export", "--run", str(run), "--out", str(out)]) == 0
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()


def test_an_export_reaches_the_disk_before_the_rename_that_shows_it(exported, tmp_path, monkeypatch):
    """Each staged file and the staging folder are fsync'd before the rename makes ``--out``, and the
    folder holding it after (for a new ``--out``; files renamed into an empty one: that folder), so a
    power loss after the export leaves the whole model or none of it."""
    import os

    import rnnlab.hf.export as export

    run, _ = exported["e1"]
    events, real = [], os.rename
    monkeypatch.setattr(export, "fsync_file", lambda p: events.append(("file", Path(p).name)))
    monkeypatch.setattr(export, "fsync_dir", lambda p: events.append(("dir", Path(p))))
    monkeypatch.setattr(export.os, "rename", lambda a, b: (events.append(("rename", Path(b))), real(a, b)))
    out = tmp_path / "new"
    assert main(["export", "--run", str(run), "--out", str(out)]) == 0
    at = events.index(("rename", out))
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= {n for kind, n in events[:at] if kind == "file"}
    assert events[at - 1][0] == "dir" and events[at - 1][1].name.startswith(".tmp-")
    assert events[at + 1:] == [("dir", tmp_path)]
    events.clear()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["export", "--run", str(run), "--out", str(empty)]) == 0
    assert events[-1] == ("dir", empty)


def test_export_into_the_current_folder_as_dot(exported, tmp_path, monkeypatch):
    """``--out .`` in an empty folder writes the model there (staging beside ``.``, a path with no name,
    failed: "PosixPath('.') has an empty name")."""
    run, _ = exported["e1"]
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    assert main(["export", "--run", str(run), "--out", "."]) == 0
    assert (here / "model.safetensors").is_file() and (here / "config.json").is_file()


@pytest.mark.parametrize("stop, code", [(KeyboardInterrupt, 130), (lambda: OSError(28, "No space left on device"), 2)],
                         ids=["ctrl-c", "disk-full"])
@pytest.mark.parametrize("out_is", ["new", "nested", "empty"])
def test_an_interrupted_export_leaves_nothing_behind(exported, tmp_path, monkeypatch, capsys, stop, code, out_is):
    """A Ctrl-C or a full disk while the folder is written (here: the tokenizer, after the weights) leaves no
    part of a model folder, which a rerun refused as "already holds files", nor the folders made for --out, nor
    a staging folder; an empty --out that was there stays, empty, and the rerun then writes it."""
    from rnnlab.hf import export, tokenizer

    run, _ = exported["e1"]
    out = {"new": tmp_path / "hf", "nested": tmp_path / "a" / "b" / "hf", "empty": tmp_path / "hf"}[out_is]
    if out_is == "empty":
        out.mkdir()
    real = tokenizer.byte_tokenizer

    def failing(seq_len):
        tok = real(seq_len)

        def save(folder, *a, **k):
            assert (Path(folder) / "model.safetensors").is_file()  # the weights were written first
            raise stop()

        tok.save_pretrained = save
        return tok

    monkeypatch.setattr(export, "byte_tokenizer", failing)
    assert main(["export", "--run", str(run), "--out", str(out)]) == code
    err = capsys.readouterr().err.strip()
    assert err == ("rnnlab export: interrupted (Ctrl-C)" if code == 130
                   else f"rnnlab export: error: No space left on device: {out}"), err
    assert sorted(p.name for p in tmp_path.rglob("*")) == (["hf"] if out_is == "empty" else [])
    monkeypatch.setattr(export, "byte_tokenizer", real)
    assert main(["export", "--run", str(run), "--out", str(out)]) == 0
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()


@pytest.mark.parametrize("out_is", ["new", "empty"])
def test_a_ctrl_c_as_the_export_is_moved_into_place_leaves_it_whole(exported, tmp_path, monkeypatch, capsys, out_is):
    """A Ctrl-C held back while the staged files are renamed into place comes once the export is whole: it
    stands, and the command says so and succeeds, where it said "interrupted" (exit 130) over a complete
    folder that a rerun then refused as "already holds files"."""
    import os
    import signal

    import rnnlab.hf.export as export

    run, _ = exported["e1"]
    out = tmp_path / "hf"
    if out_is == "empty":
        out.mkdir()
    real = os.rename

    def renaming(a, b):  # the Ctrl-C lands during the renames, which hold it back
        signal.raise_signal(signal.SIGINT)
        return real(a, b)

    monkeypatch.setattr(export.os, "rename", renaming)
    assert main(["export", "--run", str(run), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert (f"rnnlab: warning: a stop (Ctrl-C) came as the export's files were moved into place: {out} "
            "is complete") in err, err
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]  # no staging folder left


def test_a_rename_that_fails_beside_a_held_ctrl_c_is_a_failed_export(exported, tmp_path, monkeypatch, capsys):
    """A Ctrl-C held back during the renames and a rename that fails: the Ctrl-C comes out in place of the
    error, and the export is said to be interrupted and leaves nothing, not "complete" over no folder."""
    import signal

    import rnnlab.hf.export as export

    run, _ = exported["e1"]

    def failing(a, b):
        signal.raise_signal(signal.SIGINT)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export.os, "rename", failing)
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "hf")]) == 130
    assert capsys.readouterr().err == "rnnlab export: interrupted (Ctrl-C)\n"
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_names_the_out_folder_not_its_hidden_staging_name(exported, tmp_path, monkeypatch, capsys):
    """An --out whose parent takes no new folder (no write permission, a read-only mount) fails at the
    staging folder: the line names the --out the user gave, not the hidden ``.tmp-<pid>-...`` beside it."""
    import errno

    run, _ = exported["e1"]
    real = Path.mkdir

    def refused(self, *a, **k):
        if self.name.startswith(".tmp-"):
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", refused)
    out = tmp_path / "hf"
    assert main(["export", "--run", str(run), "--out", str(out)]) == 2
    assert capsys.readouterr().err == f"rnnlab export: error: Permission denied: {out}\n"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("out_is", ["new", "empty"])
def test_a_staging_folder_of_a_killed_export_does_not_block_the_rerun(exported, tmp_path, out_is):
    """An export killed outright (``kill -9``) leaves its staging folder, beside a new ``--out`` or inside an
    empty one; the rerun deletes it, where the one inside made it refuse "already holds files" over a folder
    that ``ls`` shows empty. A staging folder of a process still running, and other hidden files, stay."""
    import os
    import subprocess
    import sys

    run, _ = exported["e1"]
    out = tmp_path / "hf"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    holder = out if out_is == "empty" else tmp_path
    holder.mkdir(exist_ok=True)
    (holder / f".tmp-{dead}-{dead}-hf").mkdir()
    (holder / f".tmp-{dead}-{dead}-hf" / "model.safetensors").write_bytes(b"half")
    (tmp_path / f".tmp-{os.getpid()}-1-hf").mkdir()  # a live process's: not this export's to delete
    (tmp_path / ".hidden").write_text("the user's")
    assert main(["export", "--run", str(run), "--out", str(out)]) == 0
    assert not (holder / f".tmp-{dead}-{dead}-hf").exists() and (out / "model.safetensors").is_file()
    assert (tmp_path / f".tmp-{os.getpid()}-1-hf").is_dir() and (tmp_path / ".hidden").is_file()


@pytest.mark.parametrize("bars_on", [True, False])
def test_export_prints_no_progress_bar_and_keeps_the_setting(exported, tmp_path, capsys, bars_on):
    """transformers' "Writing model shards" bar stays off stderr; its global progress-bar setting
    is as it was before the export (on or off)."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    (hf_logging.enable_progress_bar if bars_on else hf_logging.disable_progress_bar)()
    try:
        assert main(["export", "--run", str(exported["e1"][0]), "--out", str(tmp_path / "hf")]) == 0
        assert hf_logging.is_progress_bar_enabled() is bars_on
    finally:
        (hf_logging.enable_progress_bar if was else hf_logging.disable_progress_bar)()
    err = capsys.readouterr().err
    assert "Writing model shards" not in err and "%|" not in err, err


def test_lm_eval_bits_per_byte_equal_rnnlab_eval(exported, tmp_path, capsys):
    """lm-eval's HF wrapper scores a text with ``loglikelihood_rolling``: windows of
    ``max_length`` = the tokenizer's ``model_max_length`` (the run's seq_len, 32) bytes, the first
    conditioned on the BOS byte (NUL), each later one on the byte before it. That is exactly
    ``rnnlab eval``'s non-overlapping windows over NUL + text when the text is a whole number of
    windows, so the two bits-per-byte agree to float rounding."""
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    run, hf = exported["e1"]
    text = ("Pack my box with five dozen liquor jugs. " * 8)[:320]  # 10 windows of 32 bytes
    lm = HFLM(pretrained=str(hf), device="cpu", batch_size=3)
    request = Instance(request_type="loglikelihood_rolling", doc={}, arguments=(text,), idx=0)
    [loglik] = lm.loglikelihood_rolling([request], disable_tqdm=True)
    lm_eval_bpb = -loglik / (len(text) * math.log(2))

    data = tmp_path / "doc.bin"
    data.write_bytes(b"\x00" + text.encode())
    assert main(["eval", "--run", str(run), "--data", str(data), "--eval-bytes", "all", "--json"]) == 0
    ours = json.loads(capsys.readouterr().out)
    assert ours["bytes"] == len(text)
    assert lm_eval_bpb == pytest.approx(ours["val_bpb"], rel=1e-6)


# the end of a fresh interpreter's program: what is alive frozen, so that its exit skips collecting all that
# transformers' and torch's imports made (about 1 s; rnnlab.cli.leave does the same for rnnlab's commands)
QUICK_EXIT = "; import gc; gc.freeze()"


def test_import_rnnlab_registers_when_transformers_is_imported():
    """In a fresh interpreter: ``import rnnlab`` does not import transformers (every CLI command
    and worker process would pay for it), and a later import of transformers finds the model type."""
    code = ("import sys, rnnlab; assert 'transformers' not in sys.modules; "
            "from transformers import AutoConfig; print(type(AutoConfig.for_model('rnnlab')).__name__)" + QUICK_EXIT)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "RnnlabConfig"
    # rnnlab.hf.modeling itself importing transformers first: the hook waits, the module registers
    code = ("import sys, rnnlab.hf.modeling; from transformers import AutoConfig; "
            "print(type(AutoConfig.for_model('rnnlab')).__name__)" + QUICK_EXIT)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "RnnlabConfig"


def test_export_in_a_fresh_process_and_load_without_importing_rnnlab(exported, tmp_path):
    """``rnnlab export`` where rnnlab.hf itself imports transformers first (the CLI: the import
    hook must wait for the module), and a process that never imports rnnlab (the plain `lm_eval
    --model hf --model_args pretrained=DIR,trust_remote_code=True`) loads the folder through its
    ``auto_map`` and gets rnnlab's logits."""
    run, _ = exported["e1"]
    hf = tmp_path / "hf"
    subprocess.run([sys.executable, "-m", "rnnlab", "export", "--run", str(run), "--out", str(hf)],
                   capture_output=True, text=True, check=True)
    code = ("import sys, torch; from transformers import AutoModelForCausalLM as A; "
            f"m = A.from_pretrained({str(hf)!r}, trust_remote_code=True); "
            "print(type(m).__module__); torch.save(m(torch.tensor([[116, 104, 101]])).logits, sys.argv[1])"
            + QUICK_EXIT)
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "logits.pt")], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "rnnlab.hf.modeling"
    _, model, _ = RunDir(run).load("cpu")
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), model(torch.tensor([[116, 104, 101]])),
                               rtol=0, atol=1e-5)


def test_save_pretrained_refuses_to_push_a_folder_without_its_modeling_file(exported, tmp_path):
    """transformers' ``save_pretrained(push_to_hub=True)`` uploads inside the call, before the folder's
    ``modeling_rnnlab.py`` is written, so the upload would not load with ``trust_remote_code``: refused
    in one line naming ``push_to_hub(repo_id)``, before anything is written or sent."""
    model = AutoModelForCausalLM.from_pretrained(exported["e1"][1])
    with pytest.raises(ValueError, match=r"^save_pretrained\(push_to_hub=True\) would upload .* model\.push_to_hub"):
        model.save_pretrained(tmp_path / "out", push_to_hub=True, repo_id="someone/model")
    assert not (tmp_path / "out").exists()


def test_a_model_loaded_with_remote_code_saves_a_folder_that_loads_so_too(exported, tmp_path):
    """``save_pretrained`` of a model loaded with ``trust_remote_code=True`` (fine-tuning an export
    in a process that never imports rnnlab) writes ``modeling_rnnlab.py`` and names it in
    ``auto_map``, so the saved folder loads the same way, with the run's logits. It wrote a copy of
    rnnlab's ``modeling.py`` instead, named for AutoConfig only, and loading the folder failed."""
    run, hf = exported["e1"]
    code = ("import sys, torch; from transformers import AutoModelForCausalLM as A; "
            "m = A.from_pretrained(sys.argv[1], trust_remote_code=True); m.save_pretrained(sys.argv[2]); "
            "torch.save(m(torch.tensor([[116, 104, 101]])).logits, sys.argv[3])" + QUICK_EXIT)
    for src, dst in ((hf, tmp_path / "a"), (tmp_path / "a", tmp_path / "b")):
        subprocess.run([sys.executable, "-c", code, str(src), str(dst), str(tmp_path / "logits.pt")],
                       capture_output=True, text=True, check=True)
        assert {f.name for f in dst.iterdir()} == {"config.json", "generation_config.json", "model.safetensors",
                                                   "modeling_rnnlab.py"}
        assert json.loads((dst / "config.json").read_text())["auto_map"] == {
            "AutoConfig": "modeling_rnnlab.RnnlabConfig", "AutoModelForCausalLM": "modeling_rnnlab.RnnlabForCausalLM"}
    _, model, _ = RunDir(run).load("cpu")
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), model(torch.tensor([[116, 104, 101]])),
                               rtol=0, atol=1e-5)


def test_a_given_cache_is_stepped_from_without_use_cache(exported):
    """``model(ids, cache=state)`` continues from ``state`` even without ``use_cache=True``: the
    logits of a text fed in two parts, the second from the first part's cache, are those of the
    whole text's parallel forward."""
    model = AutoModelForCausalLM.from_pretrained(exported["e1-heads-conv"][1])
    ids = torch.tensor([list(PROMPT), list(b"jumps over t")])
    whole = model(ids).logits
    first = model(ids[:, :5], use_cache=True)
    second = model(ids[:, 5:], cache=first.cache)
    torch.testing.assert_close(second.logits, whole[:, 5:], rtol=0, atol=1e-5)


def test_no_bytes_through_a_cache_give_empty_logits_and_leave_it(exported):
    """Zero bytes fed with a cache give ``[B, 0, 256]`` logits of the model's dtype, as the parallel
    forward does, and leave the cache where it was (it raised in ``torch.stack`` before)."""
    model = AutoModelForCausalLM.from_pretrained(exported["e1-heads-conv"][1])
    ids = torch.tensor([list(b"the quick "), list(b"jumps over")])
    cache = model(ids, use_cache=True).cache
    out = model(ids[:, :0], cache=cache)
    empty = model(ids[:, :0]).logits
    assert out.logits.shape == empty.shape == (2, 0, 256) and out.logits.dtype == empty.dtype
    assert cache.get_seq_length() == 10
    more = model(ids[:, :1], cache=cache).logits  # the state is the ten bytes' still
    torch.testing.assert_close(more, model(torch.cat([ids, ids[:, :1]], 1)).logits[:, -1:], rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["e1-heads-conv", "transformer"])
def test_generate_continues_from_a_given_cache(exported, name):
    """``generate(ids, cache=state)`` feeds only the bytes of ``ids`` the state has not taken in
    (HF's continuation from a cache): continuing from a returned cache, or from a prefix's forward,
    gives the bytes of one uninterrupted greedy generation. It raised AttributeError (the state had
    no ``is_compileable`` / ``get_seq_length``)."""
    model = AutoModelForCausalLM.from_pretrained(exported[name][1])
    ids = torch.tensor([list(b"the quick "), list(b"jumps over")])
    whole = model.generate(ids, max_new_tokens=12, do_sample=False)
    first = model.generate(ids, max_new_tokens=5, do_sample=False, return_dict_in_generate=True)
    assert first.cache.get_seq_length() == 10 + 5 - 1  # the last new byte is not stepped through yet
    assert torch.equal(model.generate(first.sequences, cache=first.cache, max_new_tokens=7, do_sample=False), whole)
    prefix = model(ids[:, :-1], use_cache=True).cache
    assert prefix.get_seq_length() == 9
    assert torch.equal(model.generate(ids, cache=prefix, max_new_tokens=12, do_sample=False), whole)


def test_scoring_without_a_cache_runs_the_parallel_forward(exported, monkeypatch):
    """``model(ids)`` (lm-eval's loglikelihood, perplexity) is the layers' parallel forward, the one
    training used, not a byte-at-a-time loop of ``LM.step`` (equal logits, T Python steps), and it
    returns no cache."""
    model = AutoModelForCausalLM.from_pretrained(exported["e1"][1])

    def no_step(*args, **kwargs):
        raise AssertionError("LM.step was called")

    monkeypatch.setattr(model.model, "step", no_step)
    out = model(torch.tensor([list(PROMPT)]))
    assert out.logits.shape == (1, len(PROMPT), 256) and out.cache is None


def test_labels_give_the_mean_next_byte_cross_entropy(exported):
    """``model(ids, labels=ids).loss`` (HF Trainer, perplexity scripts) is the mean over every
    predicted byte of -log p(next byte): the labels are shifted inside, as for every HF causal LM."""
    model = AutoModelForCausalLM.from_pretrained(exported["e1"][1])
    ids = torch.tensor([list(PROMPT), list(b"jumps over t")])
    out = model(ids, labels=ids)
    logp = torch.log_softmax(out.logits[:, :-1].double(), dim=-1)
    want = -logp.gather(-1, ids[:, 1:, None]).mean()
    assert out.loss is not None and float(out.loss.detach()) == pytest.approx(float(want.detach()), rel=1e-5)


def test_return_dict_false_gives_a_tuple(exported):
    """``return_dict=False`` (argument or config) gives ``(loss, logits)`` / ``(logits, cache)`` as a
    tuple, as every HF model does: the output object came back instead, and unpacking it gave its
    key names (``loss, logits = model(..., return_dict=False)`` set two strings)."""
    model = AutoModelForCausalLM.from_pretrained(exported["e1"][1])
    ids = torch.tensor([list(PROMPT)])
    want = model(ids, labels=ids)
    loss, logits = model(ids, labels=ids, return_dict=False)
    assert torch.equal(loss, want.loss) and torch.equal(logits, want.logits)
    logits, cache = model(ids, use_cache=True, return_dict=False)
    assert torch.equal(logits, model(ids, use_cache=True).logits) and len(cache.layers) == 2
    model.config.return_dict = False
    try:
        out = model(ids)
        assert isinstance(out, tuple) and len(out) == 1 and torch.equal(out[0], want.logits)
        assert model.generate(ids, max_new_tokens=3, do_sample=False).shape == (1, len(PROMPT) + 3)
    finally:
        model.config.return_dict = True


def test_untied_head_and_mlp_export_and_load(tmp_path, tiny_train):
    """A run with its own output head (``tie_embeddings = false``), an MLP per block (``mlp_ratio``)
    and mamba_ssm's wrapper (``norm = "rmsnorm"``, ``residual_in_fp32``) loads with all of them: its
    own head weights, the MLP's weights, rnnlab's logits. ``RnnlabConfig()``'s defaults are
    ``ModelConfig()``'s (a config.json leaves out default values)."""
    from rnnlab.hf.modeling import RnnlabConfig
    from rnnlab.models import ModelConfig

    run = tmp_path / "run"
    options = dict(tie_embeddings=False, mlp_ratio=2.0, norm="rmsnorm", residual_in_fp32=True)
    run_training(tiny_train(run, steps=1, **options), progress=False)
    assert json.loads((run / "summary.json").read_text())["model_options"] == options  # each off its default
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "hf")]) == 0
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    _, ref, _ = RunDir(run).load("cpu")
    assert model.config.to_model_config() == ModelConfig(model="e1", dim=32, depth=2, **options)
    assert model.model.head.weight is not model.model.embed.weight
    torch.testing.assert_close(model.model.head.weight, ref.head.weight, rtol=0, atol=0)
    ids = torch.tensor([list(PROMPT)])
    torch.testing.assert_close(model(ids).logits, ref(ids), rtol=0, atol=1e-5)
    assert RnnlabConfig().to_model_config() == ModelConfig()


def test_a_bf16_run_exports_bf16_weights(tmp_path, tiny_train):
    """The exported weights keep the run's training dtype: a pure-bf16 run ships bf16 tensors in
    model.safetensors (half the bytes of fp32), and loads as bf16."""
    from safetensors import safe_open

    run = tmp_path / "run"
    run_training(tiny_train(run, steps=1, precision="bf16"), progress=False)
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "hf")]) == 0
    with safe_open(str(tmp_path / "hf" / "model.safetensors"), "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert dtypes == {"BF16"}
    assert next(AutoModelForCausalLM.from_pretrained(tmp_path / "hf").parameters()).dtype == torch.bfloat16


def test_lm_eval_loglikelihood_of_a_bf16_run_is_its_float32_log_probs(tmp_path, tiny_train):
    """lm-eval's loglikelihood of a pure-bf16 run's export is the sum of the log-probs rnnlab takes
    from the same logits (``LM.forward`` scores in float32): the logits come out in float32. They
    came out in bf16, lm-eval's log-softmax rounded each log-prob to bf16, and the sums were off by
    up to ~0.07 nats for a few bytes (enough to flip a multiple-choice answer)."""
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    run = tmp_path / "run"
    run_training(tiny_train(run, steps=1, precision="bf16"), progress=False)
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "hf")]) == 0
    _, ref, _ = RunDir(run).load("cpu")
    pairs = [("the quick", " brown"), ("jumps over", " the lazy dog")]
    lm = HFLM(pretrained=str(tmp_path / "hf"), device="cpu", batch_size=2)
    got = lm.loglikelihood([Instance(request_type="loglikelihood", doc={}, arguments=p, idx=i)
                            for i, p in enumerate(pairs)], disable_tqdm=True)
    for (context, continuation), (loglik, _) in zip(pairs, got):
        ids = torch.tensor([list((context + continuation).encode())])
        logp = torch.log_softmax(ref(ids[:, :-1]).float(), dim=-1)[0, -len(continuation):]
        want = logp.gather(-1, ids[0, -len(continuation):, None]).sum()
        assert loglik == pytest.approx(float(want.detach()), abs=1e-4)
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "hf")(ids).logits.dtype == torch.float32


@pytest.mark.parametrize("missing", ["lm_eval", "transformers"])
def test_python_m_rnnlab_hf_lm_eval_says_what_is_missing(missing, monkeypatch, capsys):
    """Without lm-eval, or with a transformers rnnlab does not register with (lm-eval would then
    fail later with "model type rnnlab not recognized"), the command is one line, exit 2."""
    from rnnlab.hf import lm_eval as entry

    if missing == "lm_eval":
        monkeypatch.setitem(sys.modules, "lm_eval.__main__", None)  # its import fails as if not installed
    else:
        monkeypatch.setattr(entry, "transformers_problem", lambda: "transformers 9.0 is installed; rnnlab.hf needs")
    with pytest.raises(SystemExit) as stop:
        entry.main()
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and err.startswith("python -m rnnlab.hf.lm_eval: ")
    assert ("lm-eval is not installed" if missing == "lm_eval" else "transformers 9.0") in err


def test_python_m_rnnlab_hf_lm_eval_is_the_lm_eval_command():
    """``python -m rnnlab.hf.lm_eval ARGS`` runs lm-eval's own command line (here its --help)
    with rnnlab imported, rather than importing and exiting silently."""
    pytest.importorskip("lm_eval")
    out = subprocess.run([sys.executable, "-m", "rnnlab.hf.lm_eval", "--help"], capture_output=True, text=True,
                         check=True)
    assert out.stdout.startswith("usage: lm-eval") and "Language Model Evaluation Harness" in out.stdout


@pytest.mark.parametrize("installed, fits", [("5.26.0.dev0", True), ("5.24.0", True), ("5.23.9", False),
                                             ("5.24.0.dev0", False), ("6.0.0.dev0", False), ("6.0.0", False)])
def test_transformers_versions_accepted_include_pre_releases_inside_the_range(installed, fits, monkeypatch):
    """A transformers installed from git (``5.26.0.dev0``) is inside ``>=5.24,<6``; one before the
    range or a pre-release of the next major is not, and the line names the installed version."""
    import importlib.metadata

    import rnnlab.hf as hf

    monkeypatch.setattr(hf, "TRANSFORMERS_VERSIONS", ">=5.24,<6")
    monkeypatch.setattr(importlib.metadata, "version", lambda name: installed)
    problem = hf.transformers_problem()
    assert (problem is None) == fits
    if not fits:
        assert problem == (f"transformers {installed} is installed; rnnlab.hf needs transformers>=5.24,<6 "
                           "(pip install 'rnnlab[hf]')")


def test_export_says_which_step_it_holds_and_whether_the_run_is_complete(exported, tmp_path, capsys):
    """``rnnlab export`` names the step whose weights the folder holds, and says so when the run is not
    complete (stopped, or still training): its checkpoint's weights are from part way."""
    import shutil

    run, _ = exported["e1"]
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "done")]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {tmp_path / 'done'} (the weights of step 2); load it with ")
    stopped = tmp_path / "stopped"
    shutil.copytree(run, stopped)
    summary = json.loads((stopped / "summary.json").read_text())
    (stopped / "summary.json").write_text(json.dumps({**summary, "complete": False}))  # as a stopped run's says
    assert main(["export", "--run", str(stopped), "--out", str(tmp_path / "part")]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {tmp_path / 'part'} (the weights of step 2; the run is not "
                                              "complete: its budget is 2 steps); load it with ")
