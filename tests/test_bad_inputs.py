"""Every bad input gets one clear line: a table of careless and hostile command lines (issue 16),
each through the real entry point. Each must exit 2 with one line ``rnnlab <cmd>: error: ...`` on
stderr naming the problem, no traceback, and leave every file of the runs around it unchanged
(the folders' ``.lock`` files aside: a command that reaches a run folder takes its lock, which
records the holder)."""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from rnnlab.cli import main, named_by_flag
from rnnlab.train.rundir import LOCK, RunLock

pytestmark = pytest.mark.usefixtures("one_thread")

LEGACY = Path(__file__).parent / "data" / "legacy-run"  # a run folder written before checkpoint manifests
TINY = ["--model", "e1", "--dim", "32", "--depth", "2", "--seq-len", "32", "--batch-size", "4", "--precision", "fp32",
        "--eval-bytes", "4096", "--device", "cpu", "--no-progress", "--lr", "3e-3"]
FRESH = ["train", *TINY, "--data", "{corpus}", "--out", "{new}"]  # a fresh run that would be valid ...
TRAIN = [*FRESH, "--steps", "2"]  # ... with its budget

CONFIG_FILES = {  # placeholder: (file name, content)
    "betas5": ("betas5.toml", "betas = 5\n"),
    "mlp_two": ("mlp_two.toml", 'mlp_ratio = "two"\n'),
    "layer5": ("layer5.toml", "layer = 5\n"),
    "out5": ("out5.toml", "out = 5\n"),
    "compile_no": ("compile_no.toml", 'compile = "no"\n'),
    "tie_no": ("tie_no.yaml", "model:\n  tie_embeddings: 'no'\n"),
    "batch_text": ("batch_text.toml", 'batch_size = "256"\n'),
    "curve_text": ("curve_text.toml", 'curve_eval_bytes = "lots"\n'),
    "twice_json": ("twice.json", '{"steps": 2, "steps": 3}\n'),
    "twice_yaml": ("twice.yaml", "model:\n  dim: 32\n  dim: 48\n"),
    "two_spellings": ("two_spellings.toml", "batch_size = 4\nbatch-size = 8\n"),
    "layer_number_key": ("layer_number_key.yaml", "model:\n  layer:\n    bogus: 2\n    1: 3\n"),  # 1 unquoted
    "vocab_text": ("vocab_text.toml", '[model]\nvocab_size = "256"\n'),
    "toml_syntax": ("syntax.toml", "steps = = 3\n"),
    "yaml_syntax": ("syntax.yaml", "steps: [3\n"),
    "json_list": ("list.json", "[1, 2]\n"),
    "unknown_key": ("unknown.toml", "bogus = 1\n"),
    "layer_typo": ("layer_typo.toml", "[model.layer]\nexpansoin = 2\n"),
    "ini": ("wrong.ini", "steps = 3\n"),
    "resume_true": ("resume_true.toml", "resume = true\n"),
    "data_table": ("data_table.toml", "[data]\nbatch_size = 4\nsteps = 2\n"),
    "dim_twice": ("dim_twice.toml", "dim = 32\n[model]\ndim = 64\n"),  # the top level's won, silently
    "seed_in_model": ("seed_in_model.toml", "seed = 3\n[model]\nseed = 4\n"),  # not a model field: not "twice"
    "layer_twice": ("layer_twice.toml", "[layer]\nheads = 2\n[model.layer]\nexpansion = 2\n"),
    "optim_table": ("optim_table.toml", "[optim]\nlr = 1e-3\n"),  # a heading of train --help
    "other_names": ("other_names.yaml", "learning_rate: 0.001\nbatchsize: 4\n"),
    "suite_binary": ("suite_binary.toml", "\udcff\udcfe garbage"),  # bytes 0xff 0xfe: not UTF-8
    "suite_runs": ("suite_runs.toml", 'name = "s"\nruns = 5\n'),
    "suite_defaults": ("suite_defaults.toml", 'name = "s"\ndefaults = 3\n[[runs]]\nmodel = "e1"\ndim = 32\ndepth = 2\n'),
    "suite_reference": ("suite_reference.toml", 'name = "s"\nreference = 5\n[[runs]]\nmodel = "e1"\ndim = 32\ndepth = 2\n'),
    "suite_reference_loss": ("suite_reference_loss.toml", 'name = "s"\n[reference.runs]\ne1-d2 = { loss = "1.5" }\n'
                                                          '[[runs]]\nmodel = "e1"\ndim = 32\ndepth = 2\n'),
    "suite_layer": ("suite_layer.toml", 'name = "s"\n[[runs]]\nmodel = "e1"\ndim = 32\ndepth = 2\nlayer = 3\n'),
}

CASES = [
    # --- train: fields and flags
    ("model_unknown", [*TRAIN, "--model", "nope"], "--model must be one of e1,"),
    ("dim_zero", [*TRAIN, "--dim", "0"], "--dim must be a positive integer (at most 65,536), got 0"),
    ("dim_huge", [*TRAIN, "--dim", "1000000"], "--dim must be a positive integer (at most 65,536), got 1000000"),
    ("dim_text", [*TRAIN, "--dim", "abc"], "--dim must be a positive integer (at most 65,536), got 'abc'"),
    ("depth_negative", [*TRAIN, "--depth", "-1"], "--depth must be a positive integer"),
    ("batch_zero", [*TRAIN, "--batch-size", "0"], "--batch-size must be a positive integer"),
    ("batch_huge", [*TRAIN, "--batch-size", "100000000"], "--batch-size must be a positive integer (at most 65,536)"),
    # each field the line names by its value is written as the flag that set it (TINY's --batch-size 4)
    ("grad_accum_flags", [*TRAIN, "--grad-accum", "3"], "--grad-accum (3) must divide --batch-size (4): "),
    ("lr_zero", [*TRAIN, "--lr", "0"], "--lr must be a positive finite number, got 0"),
    ("lr_negative_exponent", [*TRAIN, "--lr", "-1e-3"], "--lr must be a positive finite number, got -0.001"),
    ("lr_nan", [*TRAIN, "--lr", "nan"], "--lr must be a positive finite number, got 'nan'"),
    ("lr_inf", [*TRAIN, "--lr", "inf"], "--lr must be a positive finite number, got 'inf'"),
    ("lr_minus_inf", [*TRAIN, "--lr", "-inf"],  # not "expected one argument"
     "--lr must be a positive finite number, got '-inf'"),
    ("minutes_minus_nan", [*TRAIN, "--minutes", "-NaN"], "--minutes must be a positive finite number, got '-NaN'"),
    ("tokens_text", [*TRAIN, "--tokens", "lots"], "--tokens must be a token count (e.g. 50M, 1e9), got 'lots'"),
    ("two_budgets", [*TRAIN, "--minutes", "1"], "give one budget (steps, minutes or tokens)"),
    ("betas_range", [*TRAIN, "--betas", "0.9", "1"], "--betas must be two numbers in [0, 1), got [0.9, 1]"),
    ("val_fraction", [*TRAIN, "--val-fraction", "1.5"], "--val-fraction must be a number in (0, 1), got 1.5"),
    ("precision", [*TRAIN, "--precision", "fp64"], "--precision must be one of bf16, bf16-mixed, fp32, got 'fp64'"),
    ("optimizer", [*TRAIN, "--optimizer", "sgd"], "--optimizer must be one of schedulefree-adamw, adamw, got 'sgd'"),
    ("warmup_exceeds", [*TRAIN, "--warmup-steps", "50"], "error: --warmup-steps (50) must not exceed the step budget (2)"),
    ("adamw_minutes", [*FRESH, "--optimizer", "adamw", "--minutes", "1"], "adamw decays its LR on a cosine"),
    ("device_unknown", [*TRAIN, "--device", "tpu"], "error: --device must be auto, cpu, cuda, cuda:N or mps, got 'tpu'"),
    ("device_index_not_ascii", [*TRAIN, "--device", "cuda:\u0663"],  # an Arabic-Indic 3: str.isdigit says yes
     "device must be auto, cpu, cuda, cuda:N or mps, got 'cuda:\u0663'"),
    ("device_index_superscript", [*TRAIN, "--device", "cuda:\u00b2"],
     "device must be auto, cpu, cuda, cuda:N or mps, got 'cuda:\u00b2'"),
    ("device_cuda_missing", [*TRAIN, "--device", "cuda"], "requested but CUDA is not available (use --device cpu)"),
    ("cuda_graph_on_cpu", [*TRAIN, "--cuda-graph"], "error: --cuda-graph needs a CUDA device, got device 'cpu' (use --no-cuda-graph)"),
    ("cuda_graph_auto_cpu", [*TRAIN, "--cuda-graph", "--device", "auto"],
     "error: --cuda-graph needs a CUDA device; this run's device is cpu (use --no-cuda-graph)"),
    ("eval_every_negative", [*TRAIN, "--eval-every", "-1"], "--eval-every must be an integer >= 0"),
    ("checkpoint_every_negative", [*TRAIN, "--checkpoint-every", "-2"], "--checkpoint-every must be an integer >= 0"),
    ("keep_checkpoints_zero", [*TRAIN, "--keep-checkpoints", "0"], "--keep-checkpoints must be a positive integer"),
    ("eval_bytes_text", [*TRAIN, "--eval-bytes", "lots"],  # as eval says it (its parse's words, not the type's)
     "--eval-bytes must be a byte count (e.g. 1M, 500000) or all, got 'lots'"),
    ("eval_bytes_fraction", [*TRAIN, "--eval-bytes", "20.5"],  # not rounded to 20 or 21 bytes
     "--eval-bytes must be a byte count (e.g. 1M, 500000) or all, got '20.5'"),
    # a flag's bad value is named by the flag typed, not by the config field behind it (eval_bytes)
    ("eval_bytes_negative", [*TRAIN, "--eval-bytes", "-5"],
     "error: --eval-bytes must be a byte count (e.g. 1M, 500000) or all, got '-5'"),
    ("tokens_zero", [*FRESH, "--tokens", "0"], "error: --tokens must be a token count (e.g. 50M, 1e9), got '0'"),
    ("bench_steps_negative", ["bench", "tiny", "--plan", "--steps", "-1"], "error: --steps must be a positive integer"),
    # a cap below one window failed only at the first evaluation, after the whole training budget
    ("eval_bytes_below_a_window", [*TRAIN, "--seq-len", "16", "--eval-bytes", "10"],
     "error: --eval-bytes must be all (0) or at least one evaluation window, seq_len+1 = 17 bytes, got 10"),
    ("curve_eval_bytes_below_a_window", [*TRAIN, "--seq-len", "16", "--eval-every", "1", "--curve-eval-bytes", "16"],
     "error: --curve-eval-bytes must be all (0) or at least one evaluation window, seq_len+1 = 17 bytes, got 16"),
    ("gpus_zero", [*TRAIN, "--gpus", "0"], "--gpus must be a positive integer, got 0"),
    ("gpus_exponent", [*TRAIN, "--gpus", "1e3"], "argument --gpus: must be an integer, got '1e3'"),  # not "invalid int"
    ("flag_unknown", [*TRAIN, "--bogus"], "unrecognized arguments: --bogus"),
    ("layer_unknown", [*TRAIN, "--layer", "bogus=1"], "unknown e1 layer option(s) ['bogus']"),
    # dim is the model's, not a layer option: not a TypeError of a keyword given twice
    ("layer_dim", [*TRAIN, "--layer", "dim=64"], "unknown e1 layer option(s) ['dim']: dim is the model's own "
                                                 "setting, not a layer option: give --dim VALUE (in a config file, "
                                                 "dim = ...)"),
    ("layer_tie_embeddings", [*TRAIN, "--layer", "tie_embeddings=false"],  # a switch: no --tie-embeddings VALUE
     "tie_embeddings is the model's own setting, not a layer option: give --tie-embeddings or --no-tie-embeddings"),
    # spelt as the flags are (with dashes), or nearly right: the line names the option meant
    ("layer_dashed_key", [*TRAIN, "--model", "mamba2", "--dim", "64", "--layer", "d-state=16"],
     "unknown mamba2 layer option(s) ['d-state']: did you mean d_state? (layer options are spelt with underscores); "
     "known: ['backend',"),
    ("layer_misspelt_key", [*TRAIN, "--layer", "selectve=decay"],
     "unknown e1 layer option(s) ['selectve']: did you mean selective?; known: ['backend',"),
    ("backend_triton_cpu", [*TRAIN, "--layer", "backend=triton"],
     "e1 layer option backend=triton runs only on CUDA; this run's device is cpu (use backend=auto, which runs "
     "the PyTorch reference there)"),
    ("backend_official_cpu", [*TRAIN, "--model", "mamba2", "--dim", "64", "--layer", "backend=official"],
     "mamba2 layer option backend=official runs only on CUDA; this run's device is cpu"),
    ("layer_value", [*TRAIN, "--layer", "heads=two"], "e1 layer option heads must be a positive integer (at most 65,536), got 'two'"),
    ("layer_syntax", [*TRAIN, "--layer", "expansion"], "option 'expansion' must look like KEY=VALUE"),
    ("layer_twice", [*TRAIN, "--layer", "heads=2", "--layer", "heads=4"],  # a config file refuses it too
     "option 'heads' is given twice ('heads=2' and 'heads=4')"),
    # --- train: data and memory
    ("data_missing", [*TRAIN, "--data", "/nonexistent/x.txt"], "data file not found: /nonexistent/x.txt"),
    ("data_empty_path", [*TRAIN, "--data", ""], "data must be a path, got '' (omit --data for its default)"),
    ("out_empty_path", [*TRAIN, "--out", ""],  # not the default folder, runs/e1-32x2
     "out must be a path, got '' (omit --out for its default)"),
    # a ~ that no shell expanded (quoted, or in a config file): not "not found", nor a folder named ~ made here
    ("data_unexpanded_home", [*TRAIN, "--data", "~/corpus.txt"],
     "data ~/corpus.txt starts with ~, which only a shell expands, and not where it is quoted or follows --flag= or in "
     "a config file: write it as " + os.path.expanduser("~/corpus.txt")),
    ("out_unexpanded_home", [*TRAIN, "--out", "~/runs/x"],
     "out ~/runs/x starts with ~, which only a shell expands, and not where it is quoted or follows --flag= or in a "
     "config file: write it as " + os.path.expanduser("~/runs/x")),
    ("export_out_unexpanded_home", ["export", "--run", "{run}", "--out", "~/hf/x"],  # not a folder ./~ made
     "argument --out: ~/hf/x starts with ~, which only a shell expands, and not where it is quoted or follows "
     "--flag= or in a config file: write it as " + os.path.expanduser("~/hf/x")),
    # ~user of no such user: no home to expand it to (Path.expanduser raised, a traceback), so a plain path
    ("data_unknown_user_home", [*TRAIN, "--data", "~nosuchuser9/x.txt"], "data file not found: ~nosuchuser9/x.txt"),
    ("data_directory", [*TRAIN, "--data", "{dir}"], "is a directory"),
    # a held-out file is named as such (by its key, as "not found" does), not as "corpus file"
    ("val_data_directory", [*TRAIN, "--val-data", "{dir}"], "val_data file {dir} is a directory, expected a raw byte"),
    ("extra_val_data_directory", [*TRAIN, "--extra-val-data", "{dir}"], "extra_val_data file {dir} is a directory"),
    ("data_empty", [*TRAIN, "--data", "{empty}"], "is empty"),
    ("data_compressed", [*TRAIN, "--data", "{gz}"],
     "corpus file {gz} is gzip-compressed, and rnnlab reads raw bytes: unpack it first (`rnnlab data prepare {gz} --out FILE`"),
    ("eval_data_compressed", ["eval", "--run", "{run}", "--data", "{gz}"], "is gzip-compressed"),
    ("data_unreadable", [*TRAIN, "--data", "{unreadable}"], "Permission denied: "),
    ("corpus_short", [*TRAIN, "--seq-len", "30000", "--eval-bytes", "all"], "shorter than seq_len+1 = 30001 bytes"),
    ("heldout_short", [*TRAIN, "--seq-len", "4000"],  # held out of --data: its share is what grows
     "; use a smaller --seq-len or a larger --val-fraction or --val-data FILE"),
    ("rescale_without_output_projection", [*TRAIN, "--model", "mingru", "--rescale-prenorm-residual"],
     "rescale_prenorm_residual: this mingru layer has no output projection to rescale"),
    ("heldout_short_sample",
     ["train", *TINY, "--out", "{new}", "--steps", "2", "--seq-len", "400000", "--eval-bytes", "all"],
     "; use a smaller --seq-len or your own --data FILE"),  # the bundled sample's held-out file: no share to grow
    ("val_data_short", [*TRAIN, "--val-data", "{val32}"],  # one byte short of a window: refused before training
     "held-out file {val32} has 32 bytes, fewer than seq_len+1 = 33; use a smaller --seq-len or a larger "
     "--val-data"),
    ("extra_val_short", [*TRAIN, "--extra-val-data", "{file}"],
     "held-out file {file} has 1 byte, fewer than seq_len+1 = 33; use a smaller --seq-len or a larger "
     "--extra-val-data"),
    ("activations_too_big", [*TRAIN, "--data", "{huge}", "--val-data", "{huge_val}", "--seq-len", "4000000",
                             "--batch-size", "512", "--eval-bytes", "all"], "of activations (plus"),
    # --- train: config files
    ("config_empty_path", [*TRAIN, "--config", ""], "argument --config: must be a path, got '' (an empty argument: an unset shell variable?)"),
    ("config_twice", [*TRAIN, "--config", "{betas5}", "--config", "{out5}"],  # not the last one alone, silently
     "argument --config: given twice ('{betas5}' and '{out5}'): one config file is read; merge them into one"),
    ("config_missing", [*TRAIN, "--config", "/nonexistent.toml"], "config file not found: /nonexistent.toml"),
    ("config_betas", [*TRAIN, "--config", "{betas5}"], "betas must be two numbers in [0, 1), got 5"),
    ("config_mlp_ratio", [*TRAIN, "--config", "{mlp_two}"], "mlp_ratio must be a finite number >= 0 (at most 64), got 'two'"),
    ("config_layer", [*TRAIN, "--config", "{layer5}", "--layer", "expansion=2"],
     "error: config file {layer5}: layer must be a table of options, got 5"),  # the file's value: --layer adds to it
    ("config_out", ["train", *TINY, "--data", "{corpus}", "--config", "{out5}"],
     "error: config file {out5}: out must be a string, got 5"),
    ("config_compile", [*TRAIN, "--config", "{compile_no}"],
     "error: config file {compile_no}: compile must be true or false, got 'no'"),
    ("config_tie", [*TRAIN, "--config", "{tie_no}"], "tie_embeddings must be true or false, got 'no'"),
    ("config_batch_text", ["train", "--config", "{batch_text}", "--data", "{corpus}", "--out", "{new}"],
     "batch_size must be a positive integer (at most 65,536), got '256'"),
    ("config_curve_eval_bytes_text", [*TRAIN, "--config", "{curve_text}"],  # its own name, not eval_bytes
     "curve_eval_bytes must be a byte count (e.g. 1M, 500000) or all, got 'lots'"),
    ("curve_eval_bytes_text", [*TRAIN, "--curve-eval-bytes", "lots"],
     "--curve-eval-bytes must be a byte count (e.g. 1M, 500000) or all, got 'lots'"),
    ("config_json_key_twice", [*FRESH, "--config", "{twice_json}"],  # as TOML refuses it: not the last one, silently
     "cannot parse config file {twice_json}: key 'steps' is given twice"),
    ("config_yaml_key_twice", [*FRESH, "--config", "{twice_yaml}"],
     "cannot parse config file {twice_yaml}: key 'dim' is given twice"),
    ("config_key_spelled_twice", [*FRESH, "--config", "{two_spellings}"],  # not the later one, silently
     "config file {two_spellings}: keys 'batch_size' and 'batch-size' are one field, given twice: keep one"),
    # an option named by a number among named ones: their list was sorted for the line, and failed (TypeError)
    ("config_layer_number_key", [*TRAIN, "--config", "{layer_number_key}"],
     "config file {layer_number_key}: layer option 1 is not an option name (quote it if it is one; rnnlab layers "
     "lists them)"),
    ("config_vocab_text", [*TRAIN, "--config", "{vocab_text}"], "vocab_size must be one of 256, got '256'"),
    ("config_toml_syntax", [*TRAIN, "--config", "{toml_syntax}"], "cannot parse config file {toml_syntax}: "),
    ("config_yaml_syntax", [*TRAIN, "--config", "{yaml_syntax}"], "cannot parse config file {yaml_syntax}: "),
    ("config_not_table", [*TRAIN, "--config", "{json_list}"], "must hold a table/mapping at top level"),
    ("config_unknown_key", [*TRAIN, "--config", "{unknown_key}"], "unknown config file {unknown_key} field(s) ['bogus']"),
    ("config_layer_typo", [*TRAIN, "--config", "{layer_typo}"],  # the file named, as for its other keys
     "config file {layer_typo}: unknown e1 layer option(s) ['expansoin']: did you mean expansion?"),
    ("config_data_table", [*FRESH, "--config", "{data_table}"],  # --data would drop the table's steps = 2
     "config file {data_table}: [data] is a table, but data is one value: write the fields in it at top level "
     "(only [model] and [layer] hold fields)"),
    ("config_dim_twice", [*FRESH, "--config", "{dim_twice}"],
     "config file {dim_twice}: dim is given twice, at top level and in [model]: keep one"),
    ("config_seed_in_model", [*FRESH, "--config", "{seed_in_model}"], "model field(s) ['seed']; known: ['depth'"),
    ("config_layer_twice", [*FRESH, "--config", "{layer_twice}"],
     "config file {layer_twice}: layer is given twice, [layer] and [model.layer]: keep one"),
    ("config_optim_table", [*FRESH, "--config", "{optim_table}"],
     "config file {optim_table}: [optim] is a heading of rnnlab train --help, not a table: write the fields in it at "
     "top level (only [model] and [layer] hold fields)"),
    # another trainer's name for a field, or a near miss: the field meant is named, not every field after it
    ("config_other_names", [*TRAIN, "--config", "{other_names}"],
     "unknown config file {other_names} field(s) ['batchsize', 'learning_rate']: did you mean batchsize -> "
     "batch_size, learning_rate -> lr?"),
    ("config_suffix", [*TRAIN, "--config", "{ini}"], "must end in .toml, .yaml, .yml or .json"),
    # --- train: run folders
    ("out_is_file", [*TRAIN, "--out", "{file}"], "exists and is not a directory"),
    ("fresh_over_checkpointless_run", [*TRAIN, "--out", "{nockpt}"],  # not --resume: it would have nothing to go on from
     "already holds a complete run that saved no checkpoint; pass --overwrite to start it over, or choose another "
     "--out"),
    ("fresh_over_run", [*TRAIN, "--out", "{run}"], "already holds a complete run; pass --resume with a larger "
                                                   "--steps, --minutes or --tokens to extend it, --overwrite to "
                                                   "delete it"),
    # a folder of runs (bench, sweep): the run's files would lie beside them, and report would not see it
    ("fresh_into_folder_of_runs", [*TRAIN, "--out", "{root}"], "--out {root} is a folder of runs (it holds damaged, "),
    ("overwrite_folder_of_runs", [*TRAIN, "--out", "{root}", "--overwrite"],
     "not a run folder: give the run a folder of its own, e.g. --out {root}/NAME"),
    ("resume_no_folder", [*TRAIN, "--resume"], "holds no run to resume (no such folder; check --out)"),
    ("resume_empty_folder", [*TRAIN, "--resume", "--out", "{dir}"], "holds no run to resume (an empty folder"),
    ("resume_a_folder_of_runs", [*TRAIN, "--resume", "--out", "{of_tiny}"],
     "--resume: {of_tiny} is a folder of runs (it holds e1), not a run folder: give the run's own folder, e.g. "
     "--out {of_tiny}/e1"),
    ("resume_folder_of_other_files", [*TRAIN, "--resume", "--out", "{of_sweep}"],  # its suite.json: not "empty"
     "holds no run to resume (a folder without config.json, metrics.jsonl, summary.json or ckpt/; check --out)"),
    ("resume_no_checkpoint", [*TRAIN, "--resume", "--out", "{nockpt}"], "no usable checkpoint in {nockpt}/ckpt "
                                                                        "(there is none); nothing was changed"),
    ("resume_slim_record", [*TRAIN, "--resume", "--out", "{slim}"], "no usable checkpoint in {slim}/ckpt "
                                                                     "(there is none); nothing was changed"),
    ("resume_corpus_moved", ["train", "--resume", "--out", "{moved}"],  # the path it needs, and why that one
     "data file not found: {root}/gone.txt (the run's data, as its config.json names it): a resumed run reads the "
     "same path, so put the file back there"),
    ("resume_extra_val_moved", ["train", "--resume", "--out", "{moved_extra}"],
     "extra_val_data file not found: {root}/gone.txt (the run's extra_val_data, as its config.json names it): a "
     "resumed run reads the same path, so put the file back there"),
    # 0 switches clipping off, so "must be a positive finite number" (the bound's words) was wrong for -1
    ("grad_clip_negative", [*TRAIN, "--grad-clip", "-1"], "--grad-clip must be a positive number, or 0 for no "
                                                         "clipping, got '-1'"),
    ("grad_clip_text", [*TRAIN, "--grad-clip", "off"], "--grad-clip must be a positive number, or 0 for no clipping, "
                                                       "got 'off'"),
    ("resume_other_dim", [*TRAIN, "--resume", "--out", "{run}", "--dim", "48"],
     "was made with a different config: field model.dim is 32, not 48"),
    # another model kind: named as such, not by the new kind's check of the run's settings (transformer's head_dim
    # 64 does not divide the run's dim 32, whose hint --layer head_dim=32 the resume would refuse next)
    ("resume_other_model", [*TRAIN, "--resume", "--out", "{run}", "--model", "transformer"],
     'was made with a different config: field model.model is "e1", not "transformer"'),
    # the bundled sample by name, not "null"
    ("resume_other_data", ["train", *TINY, "--resume", "--out", "{sample_run}", "--data", "{corpus}"],
     'was made with a different config: field data is the bundled sample, not "{corpus}"'),
    # a layer option: named by itself, not as the whole layer table
    ("resume_other_layer_option", [*TRAIN, "--resume", "--out", "{run}", "--layer", "heads=2"],
     "was made with a different config: field model.layer.heads is 1, not 2 (a run continues with the settings it "
     "was made with"),
    ("resume_other_dim_no_checkpoint", [*TRAIN, "--resume", "--out", "{nockpt}", "--dim", "48"],
     "was made with a different config: field model.dim is 32, not 48"),
    ("resume_and_overwrite", [*TRAIN, "--resume", "--overwrite", "--out", "{run}"], "give one of them"),
    ("resume_past_budget", [*FRESH, "--steps", "1", "--resume", "--out", "{run}"],
     "is at step 2, past this budget (steps 1): nothing to train, nothing changed"),
    ("resume_all_damaged", [*TRAIN, "--resume", "--out", "{damaged}"], "does not match the sha256 in its manifest"),
    ("resume_true_in_config", [*TRAIN, "--config", "{resume_true}", "--out", "{nockpt}"],
     "no usable checkpoint"),
    ("folder_locked", [*TRAIN, "--out", "{locked}"], "is in use by pid {pid} on "),
    # --- eval, sample and the other commands
    ("eval_no_run", ["eval", "--run", "{new}"],
     "run dir not found: {new} (--run takes the --out folder of `rnnlab train`)"),
    ("eval_no_data", ["eval", "--run", "{run}", "--data", "{new}"], "data file not found: {new}"),  # as train says it
    ("report_no_folder", ["report", "{new}"], "report dir not found: {new} (the --out folder of `rnnlab bench`"),
    ("eval_not_a_run", ["eval", "--run", "{dir}"], "is not a run dir (no readable config.json)"),
    ("eval_suite_folder", ["eval", "--run", "{root}"],  # a folder of runs: say which, and how to name one
     "{root} is not a run dir (no readable config.json); it holds runs: damaged, "),
    # a run's checkpoint folder, or one step of it, given for the run: named as such, with the --run meant
    ("eval_run_is_its_ckpt", ["eval", "--run", "{run}/ckpt"],
     "{run}/ckpt is not a run dir (no readable config.json); it is inside the run {run} (--run {run})"),
    ("sample_run_is_a_step", ["sample", "--run", "{run}/ckpt/step-000002"],
     "{run}/ckpt/step-000002 is not a run dir (no readable config.json); it is inside the run {run} (--run {run})"),
    ("eval_run_is_file", ["eval", "--run", "{file}"], "{file} is not a run dir (a file, not a folder)"),  # not "not found"
    ("report_dir_is_file", ["report", "{file}"], "report dir {file} is a file, not a folder of runs"),
    # an output folder where a file is: the system's "File exists" named the path, not the problem
    ("report_out_is_file", ["report", "{run}", "--out", "{file}"], "{file} is a file; a folder is wanted there"),
    ("gradflow_out_under_a_file", ["analyze", "gradflow", "--run", "{run}", "--out", "{file}/x"],
     "{file}/x: {file} is a file; a folder is wanted there"),
    ("bench_plan_out_is_file", ["bench", "tiny", "--out", "{file}", "--plan"],
     "{file} is a file; a folder is wanted there"),
    ("train_out_under_a_file", [*TRAIN, "--out", "{file}/run"], "{file} is a file; a folder is wanted there"),
    ("eval_batch_zero", ["eval", "--run", "{run}", "--batch-size", "0"],
     "argument --batch-size: must be a positive integer, got '0'"),
    ("eval_eval_bytes_text", ["eval", "--run", "{run}", "--eval-bytes", "lots"], "--eval-bytes must be a byte count (e.g. 1M, 500000) or all, got 'lots'"),
    ("eval_eval_bytes_negative", ["eval", "--run", "{run}", "--eval-bytes", "-5"],
     "error: --eval-bytes must be a byte count (e.g. 1M, 500000) or all, got '-5'"),
    ("eval_run_data_gone", ["eval", "--run", "{moved}"],  # its corpus moved since training
     "data file not found: {root}/gone.txt (the run's data, as its config.json names it): put it back there, or "
     "score another file with --data FILE"),
    ("eval_data_empty_path", ["eval", "--run", "{run}", "--data", ""],  # not the run's own split, silently
     "argument --data: must be a path, got '' (an empty argument: an unset shell variable?)"),
    ("eval_run_empty_path", ["eval", "--run", ""], "argument --run: must be a path, got '' (an empty argument: an unset shell variable?)"),
    ("export_out_empty_path", ["export", "--run", "{run}", "--out", ""], "argument --out: must be a path, got '' (an empty argument: an unset shell variable?)"),
    ("bench_out_empty_path", ["bench", "tiny", "--out", ""], "argument --out: must be a path, got '' (an empty argument: an unset shell variable?)"),  # not the default folder
    ("sweep_out_empty_path", ["sweep", "--model", "e1", "--set", "lr=1e-3", "--out", ""], "argument --out: must be a path, got '' (an empty argument: an unset shell variable?)"),
    # a swept key also set by its flag: one of the two was dropped without a word
    ("sweep_flag_and_axis", ["sweep", *TINY, "--set", "lr=1e-4,1e-3", "--out", "{new}", "--steps", "1"],
     "--lr sets lr for every point, and --set lr=... sweeps it: give one of them, not both"),
    ("sweep_layer_option_and_axis",
     ["sweep", *TINY, "--layer", "heads=2", "--set", "layer.heads=1,4", "--out", "{new}"],
     "--layer heads=... sets layer.heads for every point, and --set layer.heads=... sweeps it: give one of them, "
     "not both"),
    ("sweep_axis_twice", ["sweep", *TINY[:6], "--set", "layer.heads=1", "--set", "layer.heads=4", "--out", "{new}"],
     "--set layer.heads given twice: list all its values in one --set layer.heads=V1,V2,..."),
    ("sweep_axis_unknown", ["sweep", *TINY[:6], "--set", "lrate=1e-4,1e-3", "--out", "{new}"],
     "--set: unknown key 'lrate'; use a config field (batch_size, betas,"),
    ("sweep_list_axis_unbracketed", ["sweep", *TINY, "--set", "betas=0.9,0.99", "--out", "{new}"],
     "--set 'betas=0.9,0.99' gives betas single values, and each of its values is a list, in brackets: "
     "--set betas=[0.9,0.99] is one"),
    ("sweep_point_refused", ["sweep", *TINY, "--set", "weight_decay=-1,0", "--out", "{new}"],
     "sweep-new-run, point weight_decay--1: weight_decay must be"),
    ("sweep_runs_unknown", ["sweep", *TINY, "--set", "seed=1,2", "--runs", "nope", "--out", "{new}", "--plan"],
     "sweep sweep-new-run has no point(s) ['nope']; its points: ['seed-1', 'seed-2']"),
    ("sweep_points_alike", ["sweep", *TINY, "--set", "grad_clip=0,null", "--out", "{new}"],
     "--set points grad_clip-0 and grad_clip-null would train the same run (0 and null both mean no clipping): "
     "drop one grad_clip value"),
    ("report_empty_path", ["report", ""], "argument DIR: must be a path, got '' (an empty argument: an unset shell variable?)"),
    ("report_at_bytes_not_counts", ["report", "{run}", "--at-bytes", "20M,lots"],
     "argument --at-bytes: must be training byte counts separated by commas, e.g. 20M,45M, got '20M,lots'"),
    ("report_at_bytes_zero", ["report", "{run}", "--at-bytes", "0"],
     "argument --at-bytes: must be training byte counts separated by commas, e.g. 20M,45M, got '0'"),
    ("gradflow_out_empty_path", ["analyze", "gradflow", "--run", "{run}", "--out", ""], "argument --out: must be a path, got '' (an empty argument: an unset shell variable?)"),
    ("eval_data_missing", ["eval", "--run", "{run}", "--data", "/nonexistent.txt"], "not found: /nonexistent.txt"),
    ("eval_data_short", ["eval", "--run", "{run}", "--data", "{file}"],
     "is shorter than one evaluation window, seq_len+1 = 33 bytes; use a larger file"),
    ("eval_all_damaged", ["eval", "--run", "{damaged}"], "no usable checkpoint in {damaged}/ckpt"),
    ("eval_legacy_truncated_state", ["eval", "--run", "{legacy_truncated}"], "state.pt is damaged ("),
    ("eval_legacy_nan_weights", ["eval", "--run", "{legacy_nan}"], "holds non-finite values in"),
    ("eval_legacy_bad_header", ["eval", "--run", "{legacy_header}"], "model.safetensors is damaged ("),
    ("sample_temperature_nan", ["sample", "--run", "{run}", "--temperature", "nan"],
     "argument --temperature: must be a finite number >= 0, got 'nan'"),
    ("sample_temperature_negative", ["sample", "--run", "{run}", "--temperature", "-1"],
     "argument --temperature: must be a finite number >= 0, got '-1'"),
    ("sample_tokens_negative", ["sample", "--run", "{run}", "--tokens", "-5"], "argument --tokens: must be an integer >= 0"),
    ("sample_top_k_negative", ["sample", "--run", "{run}", "--top-k", "-1"], "argument --top-k: must be an integer >= 0"),
    ("sample_seed_too_large", ["sample", "--run", "{run}", "--seed", "99999999999999999999999"],
     "argument --seed: must be an integer >= 0 (at most 9,223,372,036,854,775,807)"),
    ("sample_prompt_empty", ["sample", "--run", "{run}", "--prompt", ""],  # a model steps from a byte: what to give
     "argument --prompt: must be at least one character, got '' (leave --prompt out to start after a newline)"),
    ("sample_no_run", ["sample", "--run", "{new}"], "run dir not found"),
    ("eval_device_unknown", ["eval", "--run", "{run}", "--device", "tpu"],
     "error: --device must be auto, cpu, cuda, cuda:N or mps, got 'tpu'"),
    ("eval_device_index_not_ascii", ["eval", "--run", "{run}", "--device", "cuda:\u0663"],
     "device must be auto, cpu, cuda, cuda:N or mps, got 'cuda:\u0663'"),
    ("sample_device_malformed", ["sample", "--run", "{run}", "--device", "cuda:x"],
     "device must be auto, cpu, cuda, cuda:N or mps, got 'cuda:x'"),
    ("gradflow_device_meta", ["analyze", "gradflow", "--run", "{run}", "--device", "meta"],  # not "damaged"
     "error: --device must be auto, cpu, cuda, cuda:N or mps, got 'meta'"),
    ("gradflow_last_whole_sequence", ["analyze", "gradflow", "--run", "{run}", "--last", "32"],
     "--last (32) must be below the sequence length (32)"),
    ("params_dim_zero", ["params", "--model", "e1", "--dim", "0"], "--dim must be a positive integer"),
    ("params_mlp_of_no_units", ["params", "--model", "e1", "--dim", "64", "--mlp-ratio", "0.001"],
     "--mlp-ratio must give an MLP of at least one unit at dim 64, got 0.001 (0 means no MLP)"),
    ("params_target_option_no_width_takes", ["params", "--model", "transformer", "--target", "1M", "--layer",
                                             "head_dim=3"], "transformer layer option head_dim must be even for RoPE"),
    ("params_head_dim", ["params", "--model", "transformer", "--dim", "96"],  # what would fit
     "head_dim must divide --dim (96), got 64: --layer head_dim=48 fits, or another even divisor of 96"),
    ("gradflow_batches_zero", ["analyze", "gradflow", "--run", "{run}", "--batches", "0"],
     "argument --batches: must be a positive integer, got '0'"),
    ("gradflow_seq_len_zero", ["analyze", "gradflow", "--run", "{run}", "--seq-len", "0"],
     "argument --seq-len: must be a positive integer, got '0'"),
    ("gradflow_run_data_gone", ["analyze", "gradflow", "--run", "{moved}"],  # its held-out bytes are the run's
     "data file not found: {root}/gone.txt (the run's data, as its config.json names it): put it back there"),
    # no subcommand: argparse named its internal field (data_command, analysis), not what to type
    ("data_no_command", ["data"], "the following arguments are required: COMMAND (see rnnlab data --help)"),
    ("gradflow_archived_run", ["analyze", "gradflow", "--run", "{slim_moved}"],  # no weights: not "put it back"
     "no usable checkpoint in {slim_moved}/ckpt (there is none)"),
    ("analyze_no_command", ["analyze"], "the following arguments are required: COMMAND (see rnnlab analyze --help)"),
    ("prepare_missing_source", ["data", "prepare", "/nonexistent.txt", "--out", "{new}"], "source not found"),
    # an empty argument (an unset shell variable) is Path(""), the current folder: not read, nor written over
    ("prepare_device_source", ["data", "prepare", "/dev/null", "--out", "{new}"],  # it exists: not "not found"
     "source /dev/null is not a regular file or a folder (a pipe or a device?): write its bytes to a file first"),
    ("prepare_empty_source", ["data", "prepare", "", "--out", "{new}"], "argument SRC: must be a path, got '' (an empty argument: an unset shell variable?)"),
    ("prepare_empty_out", ["data", "prepare", "{corpus}", "--out", ""], "argument --out: must be a path, got '' (an empty argument: an unset shell variable?)"),
    ("bench_unknown_suite", ["bench", "nosuchsuite", "--out", "{new}"], "unknown suite 'nosuchsuite'"),
    # trained once all the same, where --seeds 1,1 is refused: a repeat is asked of --seeds
    ("bench_runs_twice", ["bench", "tiny", "--runs", "e1,mingru,e1", "--out", "{new}"],
     "--runs names e1 twice: each run trains once, in its own folder; to repeat a run, give --seeds S1,S2,.. "
     "(one folder NAME-sSEED per seed)"),
    ("bench_suite_not_utf8", ["bench", "{suite_binary}", "--out", "{new}", "--plan"],
     "cannot parse suite file suite_binary.toml: 'utf-8' codec can't decode byte 0xff in position 0"),
    ("bench_suite_runs_not_list", ["bench", "{suite_runs}", "--out", "{new}", "--plan"],
     "suite s (suite_runs.toml): runs must be a list of [[runs]] tables, got 5"),
    ("bench_suite_defaults_not_table", ["bench", "{suite_defaults}", "--out", "{new}", "--plan"],
     "suite s (suite_defaults.toml): defaults must be a [defaults] table, got 3"),
    ("bench_suite_reference_not_table", ["bench", "{suite_reference}", "--out", "{new}", "--plan"],  # not after training
     "suite s (suite_reference.toml): reference must be a [reference] table, got 5"),
    ("bench_suite_reference_text", ["bench", "{suite_reference_loss}", "--out", "{new}", "--plan"],
     "suite s (suite_reference_loss.toml): reference.runs.e1-d2 must be a table of numbers (params, loss, tok_per_s, "
     "mem_gb, time_s), got {{'loss': '1.5'}}"),
    ("bench_suite_layer_not_table", ["bench", "{suite_layer}", "--out", "{new}", "--plan"],
     "suite s (suite_layer.toml), run e1-d2: layer must be a table of options, got 3"),
    # a run's folder: the suite's runs would nest inside that run (refused by --plan too)
    ("bench_into_a_run", ["bench", "tiny", "--out", "{run}", "--plan"],
     "--out {run} is a run folder (it holds a run), not a folder of runs: give the suite a folder of its own"),
    ("sweep_plan_into_a_run", ["sweep", *TINY, "--set", "seed=1,2", "--out", "{run}", "--plan"],
     "--out {run} is a run folder (it holds a run), not a folder of runs: give the sweep a folder of its own"),
    ("sweep_into_a_run", ["sweep", *TINY, "--set", "seed=1,2", "--out", "{run}", "--steps", "1"],
     "--out {run} is a run folder (it holds a run), not a folder of runs: give the sweep a folder of its own"),
    # a parameter count flag's refusal names the flag
    ("bench_params_negative", ["bench", "tiny", "--params", "-5", "--out", "{new}", "--plan"],
     "argument --params: parameter count must be positive, got '-5'"),
    ("sweep_target_params_text", ["sweep", *TINY, "--set", "seed=1,2", "--target-params", "many", "--out", "{new}"],
     "argument --target-params: cannot read a count from 'many' (try 400M, 1.5B, 1e9, 50000000)"),
    # another suite's or a sweep's folder: its record (commands, runs) would be replaced by this one's
    ("sweep_into_a_suite", ["sweep", *TINY, "--set", "seed=1,2", "--out", "{of_tiny}", "--steps", "1"],
     "--out {of_tiny} is suite tiny's folder (its suite.json), not this sweep's: give the sweep a folder of its own "
     "(another --out)"),
    ("bench_into_a_sweep", ["bench", "tiny", "--out", "{of_sweep}", "--plan"],
     "--out {of_sweep} is a sweep's folder (its suite.json), not suite tiny's: give the suite a folder of its own"),
    ("bench_gpus_text", ["bench", "tiny", "--out", "{new}", "--gpus", "two"],
     "argument --gpus: must be an integer, got 'two'"),
    ("bench_gpus_zero", ["bench", "tiny", "--out", "{new}", "--gpus", "0"], "--gpus must be a positive integer, got 0"),
    ("bench_plan_gpus_negative", ["bench", "tiny", "--out", "{new}", "--gpus", "-1", "--plan"],
     "--gpus must be a positive integer, got -1"),
]


def _digests(root: Path) -> dict[str, str]:
    """Every file under ``root`` by path, with its sha256 (a lock file's holder record aside: that
    the file is there counts)."""
    return {str(p.relative_to(root)): "" if p.name == LOCK else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _damage(path: Path, at: int = 1000, n: int = 64, byte: int | None = None) -> None:
    """Flip (or set to ``byte``) ``n`` bytes of ``path`` from offset ``at``."""
    data = bytearray(path.read_bytes())
    for i in range(at, at + n):
        data[i] = byte if byte is not None else data[i] ^ 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def world(tmp_path_factory, one_thread_module):
    """The paths the cases name: a small corpus, a trained run and damaged copies of it, old-format
    runs with damaged files, config files, odd files and a run folder whose lock is held."""
    root = tmp_path_factory.mktemp("world")
    w = {"root": root, "new": root / "new-run", "dir": root / "a-dir", "file": root / "a-file",
         "empty": root / "empty.txt", "unreadable": root / "unreadable.txt", "huge": root / "huge.bin",
         "huge_val": root / "huge-val.bin",
         "corpus": root / "corpus.txt", "val32": root / "val32.txt", "gz": root / "shard.jsonl.gz", "pid": os.getpid()}
    w["dir"].mkdir()
    w["file"].write_text("x")
    w["val32"].write_bytes(b"0123456789abcdef" * 2)  # seq_len (32) bytes: one short of a window
    w["empty"].write_bytes(b"")
    w["gz"].write_bytes(gzip.compress(b'{"text": "the quick brown fox"}\n' * 2000))
    w["unreadable"].write_bytes(b"text " * 4000)
    w["unreadable"].chmod(0)
    for key in ("huge", "huge_val"):  # sparse: enough bytes for a 4M-byte window, no disk used
        with open(w[key], "wb") as f:
            f.truncate(5_000_000)
    w["corpus"].write_bytes((b"the quick brown fox jumps over the lazy dog. " * 500)[:20000])
    for key, (name, text) in CONFIG_FILES.items():
        w[key] = root / name
        w[key].write_text(text, errors="surrogateescape")  # \udcXX: the byte XX
    for key, record in (("of_tiny", {"suite": "tiny", "sweep": None}),
                        ("of_sweep", {"suite": "sweep-x", "sweep": {"axes": {"lr": [0.001]}}})):
        w[key] = root / key
        w[key].mkdir()
        (w[key] / "suite.json").write_text(json.dumps({**record, "runs": []}))
    w["run"] = root / "run"
    argv = ["train", *TINY, "--steps", "2", "--data", str(w["corpus"]), "--out", str(w["run"]), "--checkpoint-every", "1"]
    assert main(argv) == 0
    for name in ("damaged", "nockpt", "locked"):
        w[name] = root / name
        shutil.copytree(w["run"], w[name])
    shutil.copytree(w["run"], w["of_tiny"] / "e1")  # a suite's folder holds its runs
    w["sample_run"] = root / "sample_run"  # trained on the bundled sample (no --data)
    assert main(["train", *TINY, "--steps", "1", "--out", str(w["sample_run"])]) == 0
    for ckpt in (w["damaged"] / "ckpt").iterdir():
        _damage(ckpt / "model.safetensors")
    shutil.rmtree(w["nockpt"] / "ckpt")
    w["slim"] = root / "slim"  # a run's record without checkpoint or lock file (a results folder)
    w["slim"].mkdir()
    for name in ("config.json", "summary.json"):
        shutil.copy(w["run"] / name, w["slim"] / name)
    w["moved"] = root / "moved"
    shutil.copytree(w["run"], w["moved"])
    saved = json.loads((w["moved"] / "config.json").read_text())
    (w["moved"] / "config.json").write_text(json.dumps({**saved, "data": str(root / "gone.txt")}))
    w["slim_moved"] = root / "slim_moved"  # a results folder whose corpus is gone too
    shutil.copytree(w["slim"], w["slim_moved"])
    (w["slim_moved"] / "config.json").write_text(json.dumps({**saved, "data": str(root / "gone.txt")}))
    w["moved_extra"] = root / "moved_extra"  # its extra held-out text (--extra-val-data) moved
    shutil.copytree(w["run"], w["moved_extra"])
    (w["moved_extra"] / "config.json").write_text(json.dumps({**saved, "extra_val_data": str(root / "gone.txt")}))
    for name in ("legacy_truncated", "legacy_nan", "legacy_header"):
        w[name] = root / name
        shutil.copytree(LEGACY, w[name])
    state = w["legacy_truncated"] / "ckpt" / "state.pt"
    state.write_bytes(state.read_bytes()[:5000])
    weights = w["legacy_nan"] / "ckpt" / "model.safetensors"
    _damage(weights, at=weights.stat().st_size - 200, n=64, byte=0xFF)  # 0xFFFFFFFF is a NaN
    _damage(w["legacy_header"] / "ckpt" / "model.safetensors", at=10, n=16)
    lock = RunLock(w["locked"] / LOCK)
    lock.acquire()
    yield w
    lock.release()
    w["unreadable"].chmod(0o644)


@pytest.mark.parametrize("name, argv, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line(name, argv, message, world, capsys, monkeypatch):
    monkeypatch.chdir(world["root"])  # a default relative path (runs/...) lands where the digests look
    if name == "data_unreadable" and os.geteuid() == 0:
        pytest.skip("root reads a file without read permission")
    if name in ("device_cuda_missing", "cuda_graph_auto_cpu") and torch.cuda.is_available():
        pytest.skip("CUDA is available")
    before = _digests(world["root"])
    fill = {k: str(v) for k, v in world.items()}
    try:
        rc = main([a.format(**fill) for a in argv])
    except SystemExit as e:  # argparse's own errors (an unknown flag, a --batch-size of 0)
        rc = e.code
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.count("\n") == 0 and "Traceback" not in err, err  # one line, no traceback
    command = " ".join(argv[:2]) if argv[0] in ("analyze", "data") else argv[0]
    assert err.startswith(f"rnnlab {command}: error: "), err
    assert message.format(**fill) in err, err
    assert _digests(world["root"]) == before  # nothing written, deleted or changed
    assert not world["new"].exists()


def test_an_error_line_names_the_fields_set_by_flags_as_flags():
    """``named_by_flag``: the line's subject and each field followed by its number are written as the
    flag that set them; a field left to its default (or a file) keeps its key, and a field's name
    as a plain word in an OS error's text is not taken for the field."""
    args = argparse.Namespace(grad_accum=3, batch_size=None, device="cpu", eval_bytes=10)
    assert (named_by_flag("grad_accum (3) must divide batch_size (16): ...", args)
            == "--grad-accum (3) must divide batch_size (16): ...")
    args.batch_size = 16
    assert (named_by_flag("grad_accum (3) must divide batch_size (16): ...", args)
            == "--grad-accum (3) must divide --batch-size (16): ...")
    assert named_by_flag("eval_bytes must be all (0) or ...", args) == "--eval-bytes must be all (0) or ..."
    args.data, args.seed = "/tmp/x/data", 3
    for line in ("No space left on device (os error 28): run/ckpt",  # words and paths that end in a field's name
                 "corpus /tmp/x/data (3 bytes) is too small to split", "held-out file /tmp/val.data (1 byte) is short",
                 "--seed (3) must ..."):  # a flag already written
        assert named_by_flag(line, args) == line


def test_an_error_line_whose_subject_the_config_file_set_names_the_file(tmp_path):
    """A line whose subject is a key the ``--config`` file sets (top level or its ``model`` table)
    and no flag overrides begins with the file's name; one whose subject a flag set, or the file
    does not, or a file that cannot be read, does not."""
    path = tmp_path / "run.toml"
    path.write_text("grad_accum = 3\n[model]\ndim = -4\n[model.layer]\nexpansion = -1\n")
    args = argparse.Namespace(config=str(path), grad_accum=None, batch_size=4, dim=None, layer=None)
    assert (named_by_flag("grad_accum (3) must divide batch_size (4): ...", args)
            == f"config file {path}: grad_accum (3) must divide --batch-size (4): ...")
    assert named_by_flag("dim must be ...", args) == f"config file {path}: dim must be ..."
    assert named_by_flag("seq_len must be ...", args) == "seq_len must be ..."
    assert (named_by_flag("e1 layer option expansion must ...", args)
            == f"config file {path}: e1 layer option expansion must ...")
    assert named_by_flag("e1 layer option heads must ...", args) == "e1 layer option heads must ..."  # not the file's
    args.layer = ["expansion=-2"]  # --layer's options are added over the file's table: the flag's value is refused
    assert named_by_flag("e1 layer option expansion must ...", args) == "e1 layer option expansion must ..."
    args.grad_accum = 3
    assert named_by_flag("grad_accum (3) must ...", args) == "--grad-accum (3) must ..."
    args.config = str(tmp_path / "gone.toml")
    assert named_by_flag("dim must be ...", args) == "dim must be ..."


def test_a_missing_path_typed_with_resume_is_not_called_the_runs(world, capsys):
    """The moved-corpus hint (``resume_corpus_moved``) is for a path config.json names; a path typed
    with ``--resume`` that does not exist is only said to be missing."""
    typo = world["root"] / "typo.txt"
    for run in ("run", "moved"):  # "moved": its config.json names a file that is gone too
        assert main(["train", "--resume", "--out", str(world[run]), "--data", str(typo)]) == 2
        assert capsys.readouterr().err.strip() == f"rnnlab train: error: data file not found: {typo}"


def test_eval_reads_only_the_held_out_file(world, tmp_path, capsys):
    """A run with a held-out file of its own (``val_data``) is scored on it although its training
    file has moved: eval neither needs nor looks for the training file then."""
    run = tmp_path / "own-val"
    shutil.copytree(world["run"], run)
    saved = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**saved, "data": str(world["root"] / "gone.txt"),
                                                 "val_data": str(world["corpus"])}))
    assert main(["eval", "--run", str(run), "--json", "--eval-bytes", "256"]) == 0
    assert json.loads(capsys.readouterr().out)["data"] == str(world["corpus"])


def test_eval_names_a_held_out_tail_as_such(world, capsys):
    """A run's held-out split that is the tail of its training file is named so: "on FILE" alone is
    what ``--data FILE`` scores, the whole file."""
    assert main(["eval", "--run", str(world["run"])]) == 0
    line = capsys.readouterr().out
    assert f" on the held-out split of {world['corpus'].resolve()} (its last 1%): val_loss " in line, line
    assert main(["eval", "--run", str(world["run"]), "--data", str(world["corpus"]), "--eval-bytes", "256"]) == 0
    assert f" on {world['corpus']}: val_loss " in capsys.readouterr().out


def test_a_cuda_only_backend_is_refused_before_the_layer_warns(world, monkeypatch):
    """``--layer backend=official`` on a CPU is refused before the model is built: no warning of the
    official layer's (causal_conv1d missing) precedes the one line (pytest would hide it from capsys)."""
    import warnings

    import rnnlab.layers.mamba2 as mamba2

    monkeypatch.setattr(mamba2.CAUSAL_CONV1D, "warned", False)
    argv = next(c[1] for c in CASES if c[0] == "backend_official_cpu")
    fill = {k: str(v) for k, v in world.items()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main([a.format(**fill) for a in argv]) == 2
    assert not [w for w in caught if "causal_conv1d" in str(w.message)]


def test_gradflow_refuses_last_before_loading_any_weights(world, capsys, monkeypatch):
    """``analyze gradflow --last K`` with K >= the run's seq_len is refused from its config.json,
    before any checkpoint loads (a large model's weights would take long, to be thrown away)."""
    from rnnlab.train.rundir import RunDir

    loads = []
    monkeypatch.setattr(RunDir, "load", lambda self, *a, **kw: loads.append(self.path) or pytest.fail("loaded"))
    assert main(["analyze", "gradflow", "--run", str(world["run"]), "--last", "32", "--no-plots"]) == 2
    assert loads == []
    assert capsys.readouterr().err == ("rnnlab analyze gradflow: error: --last (32) must be below the sequence length "
                                       "(32): the curves follow the gradient of the loss at the last 32 positions "
                                       "back to the earlier ones\n")


def test_a_held_out_file_of_seq_len_plus_one_bytes_is_enough(world, tmp_path):
    """The early refusal of a short held-out file (``val_data_short``) is exact: seq_len + 1 bytes
    make one evaluation window and pass the check that runs before the run folder is touched."""
    from rnnlab.train import distributed as dist
    from rnnlab.train.config import TrainConfig
    from rnnlab.train.trainer import open_data

    val = tmp_path / "val33.txt"
    val.write_bytes(world["val32"].read_bytes() + b"!")
    cfg = TrainConfig.from_dict({"model": {"model": "e1", "dim": 32, "depth": 2}, "seq_len": 32, "batch_size": 4,
                                 "data": str(world["corpus"]), "val_data": str(val)})
    split, extra, _ = open_data(cfg, dist.context())
    assert (split.path, len(split), extra) == (val, 33, None)
    cfg.data.val_path = str(world["val32"])
    with pytest.raises(ValueError, match="has 32 bytes, fewer than seq_len\\+1 = 33"):
        open_data(cfg, dist.context())


def test_a_val_fraction_that_splits_nothing_is_said(world, tmp_path, capsys):
    """``--val-fraction`` splits a --data file given without --val-data; beside --val-data, or with
    the bundled sample (its own held-out file), it changed nothing without a word: one warning line
    naming why. Where it splits --data, or left at its default, nothing is said."""
    from rnnlab.train import distributed as dist
    from rnnlab.train.config import TrainConfig
    from rnnlab.train.trainer import open_data

    base = {"model": {"model": "e1", "dim": 32, "depth": 2}, "seq_len": 32, "batch_size": 4}
    for extra, why in (({"data": str(world["corpus"]), "val_data": str(world["val32"]), "seq_len": 16},
                        "--val-data gives the held-out split"),
                       ({}, "the bundled sample has its own held-out file")):
        open_data(TrainConfig.from_dict({**base, "val_fraction": 0.2, **extra}), dist.context())
        assert capsys.readouterr().err == (f"rnnlab: warning: --val-fraction 0.2 has no effect: {why} (it splits "
                                           "a --data file given without --val-data)\n")
    for cfg in ({**base, "val_fraction": 0.2, "data": str(world["corpus"])}, base):
        open_data(TrainConfig.from_dict(cfg), dist.context())
        assert capsys.readouterr().err == ""


def test_cases_cover_the_issue():
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)


def test_debug_shows_the_traceback(world, capsys):
    with pytest.raises(ValueError, match="dim must be a positive integer"):
        main(["train", "--debug", *TINY, "--steps", "2", "--dim", "0", "--data", str(world["corpus"]), "--out", str(world["new"])])


def out_of_memory(*args, **kwargs):
    """In place of a step, an evaluation, a save or a command's work: CUDA's out-of-memory error."""
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


def test_out_of_memory_names_the_knobs(world, capsys, monkeypatch):
    """An out-of-memory error in a step becomes one line naming --batch-size and --seq-len."""
    from rnnlab.train.trainer import Trainer

    monkeypatch.setattr(Trainer, "forward_backward", out_of_memory)
    out = world["root"] / "oom"
    assert main(["train", *TINY, "--steps", "2", "--data", str(world["corpus"]), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("rnnlab train: error: out of memory at step 1 on cpu: lower "
                                                   "--batch-size (4) or --seq-len (32) or raise --grad-accum (1)"), err
    assert "no checkpoint was written" in err and "--eval-batch-size" not in err
    assert "out of memory" in json.loads((out / "summary.json").read_text())["error"]
    # a batch already split into micro-batches of one row: raising --grad-accum is no way out, not named
    assert main(["train", *TINY, "--steps", "2", "--grad-accum", "4", "--data", str(world["corpus"]),
                 "--out", str(out), "--overwrite"]) == 2
    err = capsys.readouterr().err.strip()
    assert "lower --batch-size (4) or --seq-len (32); " in err and "--grad-accum" not in err, err


def test_out_of_memory_in_a_training_evaluation_names_its_knob(world, capsys, monkeypatch):
    """An out-of-memory error in an evaluation during training names --eval-batch-size and the
    step it evaluated, not the next step's --batch-size and --seq-len (which it said before,
    leaving the reader to guess which applied)."""
    from rnnlab.train.trainer import Trainer

    monkeypatch.setattr(Trainer, "score", out_of_memory)
    out = world["root"] / "oom-eval"
    assert main(["train", *TINY, "--steps", "2", "--eval-every", "1", "--data", str(world["corpus"]),
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("rnnlab train: error: out of memory in the evaluation at step 1 on cpu: lower "
                          "--eval-batch-size (512); "), err
    assert "--seq-len" not in err


def test_out_of_memory_while_saving_a_checkpoint_says_so(world, capsys, monkeypatch):
    """An out-of-memory error while a checkpoint is gathered and written (FSDP2 gathers the state
    on every rank; one process copies it to the CPU) is named as the save's, not as the next step's
    with --batch-size and --seq-len, which it said before."""
    from rnnlab.train.checkpoint import Checkpointer

    monkeypatch.setattr(Checkpointer, "save", out_of_memory)
    out = world["root"] / "oom-save"
    assert main(["train", *TINY, "--steps", "3", "--checkpoint-every", "2", "--data", str(world["corpus"]),
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == ("rnnlab train: error: out of memory while saving the checkpoint of step 2 on cpu; "
                   "no checkpoint was written")
    assert json.loads((out / "summary.json").read_text())["error"].startswith("out of memory while saving"), err


@pytest.mark.parametrize("command, module, name, hint", [
    ("eval", "rnnlab.train.runtime", "evaluate_run", "lower --batch-size (and --seq-len where the command has it)"),
    # sample has no --batch-size or --seq-len: its line names what it has
    ("sample", "rnnlab.eval.sampling", "stream",
     "fewer --tokens (a Transformer's key/value cache grows with each byte), or --device cpu"),
])
def test_out_of_memory_names_the_commands_knob(world, capsys, monkeypatch, command, module, name, hint):
    monkeypatch.setattr(importlib.import_module(module), name, out_of_memory)
    assert main([command, "--run", str(world["run"])]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"rnnlab {command}: error: out of memory (CUDA out of memory. Tried to allocate 20.00 GiB): {hint}"


def test_a_warning_of_rnnlab_is_one_line_and_others_are_as_python_shows_them(capsys):
    """Under the command line (``warnings_of_rnnlab_in_one_line``), a UserWarning raised in rnnlab's
    code (``rnnlab.ops.extensions``' cleared build lock, a kernel that falls back) is one line on
    stderr; another package's keeps Python's form (file, line, category); leaving the block puts
    Python's display back."""
    import warnings

    import rnnlab.ops.registry
    from rnnlab.cli import warnings_of_rnnlab_in_one_line

    ours, theirs = rnnlab.ops.registry.__file__, torch.__file__
    passed_on = []
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = python_shows = lambda message, category, filename, lineno, *rest: passed_on.append(
            (str(message), category, filename, lineno))
        with warnings_of_rnnlab_in_one_line():
            warnings.warn_explicit("e1_scan: GPU kernel unavailable; using the slow reference loop", UserWarning,
                                   ours, 142)
            warnings.warn_explicit("a warning of torch's", UserWarning, theirs, 7)
            warnings.warn_explicit("an old way", DeprecationWarning, ours, 9)
        assert warnings.showwarning is python_shows
    assert capsys.readouterr().err == "rnnlab: warning: e1_scan: GPU kernel unavailable; using the slow reference loop\n"
    assert passed_on == [("a warning of torch's", UserWarning, theirs, 7), ("an old way", DeprecationWarning, ours, 9)]
