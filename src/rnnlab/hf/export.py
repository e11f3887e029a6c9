"""A training run as a Hugging Face ``save_pretrained`` folder (``rnnlab export``).

The folder holds ``config.json`` (``RnnlabConfig``, model type ``rnnlab``), ``model.safetensors``
(the run's shipped weights, in their training dtype, keys ``model.*``), ``generation_config.json``
and the byte tokenizer (``tokenizer.json``, ``tokenizer_config.json``). After ``import rnnlab``,
``AutoModelForCausalLM.from_pretrained(folder)`` loads it; without that import,
``from_pretrained(folder, trust_remote_code=True)`` does (``modeling_rnnlab.py`` in the folder
imports the installed rnnlab), which is how the plain ``lm_eval --model hf`` command loads it.

Kernel choices (a layer's ``backend`` option) are not exported: where the folder is loaded each
layer takes the fast path available for the device it is loaded onto (checkpoints move freely
between backends), so a Mamba2 trained with the official CUDA kernels loads with the SSD
reference onto the CPU (``from_pretrained``'s default) and with the official kernels for
``device_map="cuda"`` or once moved there (``rnnlab.hf.modeling``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import warnings
from pathlib import Path

from transformers.utils import logging as hf_logging

from rnnlab.errors import name_file
from rnnlab.hf.modeling import RnnlabConfig, RnnlabForCausalLM
from rnnlab.hf.tokenizer import byte_tokenizer
from rnnlab.signals import process_lives
from rnnlab.train.durable import (TMP_PREFIX, fsync_dir, fsync_file, interrupts_deferred, new_file_mode,
                                  temporary_name)
from rnnlab.train.rundir import RunDir

def export_run(run_dir: str | os.PathLike, out_dir: str | os.PathLike) -> tuple[Path, int]:
    """Write the run's model and the byte tokenizer to ``out_dir`` (which must not hold files); returns
    the folder and the step of the checkpoint whose weights it holds."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, and export writes a folder: choose another --out")
    _clear_stale_staging(Path(os.path.abspath(out)))
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"--out {out} already holds files: choose another --out (a new or empty folder), "
                         f"or remove {out} first")
    cfg, lm, step = RunDir(run_dir).load("cpu")  # the shipped weights of its newest usable checkpoint
    layer = {k: v for k, v in (cfg.model.layer or {}).items() if k != "backend"}
    hf_config = RnnlabConfig.from_model_config(dataclasses.replace(cfg.model, layer=layer), seq_len=cfg.data.seq_len)
    model = RnnlabForCausalLM(hf_config).to(next(lm.parameters()).dtype)
    model.model.load_state_dict(lm.state_dict())

    def write(folder: Path) -> None:
        _save_quietly(model, folder)
        byte_tokenizer(cfg.data.seq_len).save_pretrained(folder)
        for f in folder.iterdir():  # the weights file comes owner-only from its writer; the folder is to share
            f.chmod(new_file_mode())

    _written_whole(out, write)
    return out, step


def _clear_stale_staging(out: Path) -> None:
    """Delete the staging folders (:func:`_written_whole`) that an export to ``out`` killed outright (``kill
    -9``, a power loss) left beside ``out`` or in it, those of a process that no longer runs on this
    machine (a process id is this machine's: an export to the same folder of a shared file system from
    another machine at the same time is not told apart). One in an empty ``--out`` made the rerun refuse
    it as "already holds files", for a file ``ls`` does not show. A folder that cannot be listed (a parent
    to write in but not to read) is left as it is."""
    staged = re.compile(rf"{re.escape(TMP_PREFIX)}(\d{{1,9}})-\d+-{re.escape(out.name)}")  # pid_max is 2^22
    for folder in (out.parent, out):
        try:
            entries = list(folder.iterdir()) if folder.is_dir() else []
        except OSError:
            continue
        for entry in entries:
            found = staged.fullmatch(entry.name)
            if found and entry.is_dir() and not entry.is_symlink() and not process_lives(int(found[1])):
                shutil.rmtree(entry, ignore_errors=True)


def _written_whole(out: Path, write) -> None:
    """``write(folder)`` staged in a ``.tmp-*`` folder, then moved to ``out`` whole, so an interrupted or
    failed export (Ctrl-C, a full disk) leaves neither a part of a model folder, which a rerun refuses as
    "already holds files" and ``from_pretrained`` half-loads, nor the folders it made for ``--out``. A new
    ``out`` is the staging folder renamed; an empty one that is there (a mount point, which no rename may
    replace) receives the staged files by rename, each one step, Ctrl-C held back meanwhile."""
    out = Path(os.path.abspath(out))  # --out . has no name to stage beside
    made = [p for p in (out, *out.parents) if not p.exists()]  # the folders this export makes, deepest first
    fresh = not out.exists()
    staging = temporary_name(out) if fresh else out / temporary_name(out).name
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging.mkdir()
        try:
            write(staging)
            for f in staging.iterdir():  # on the disk before the rename shows them (a power loss after it)
                fsync_file(f)
            fsync_dir(staging)
            moved = False
            try:
                with interrupts_deferred():
                    if fresh:
                        os.rename(staging, out)
                    else:
                        for f in staging.iterdir():
                            os.rename(f, out / f.name)
                        staging.rmdir()
                    moved = True
            except KeyboardInterrupt:  # held back until the renames were done: a whole export stands
                if not moved:  # a rename failed as it came (the error is its context): a failed export
                    raise
                warnings.warn(f"a stop (Ctrl-C) came as the export's files were moved into place: {out} is complete")
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    except BaseException as e:
        name_file(e, out)  # a full disk's write names no file: the line names the folder
        if isinstance(e, OSError) and isinstance(e.filename, str) and (
                e.filename == str(staging) or e.filename.startswith(str(staging) + os.sep)):
            e.filename = str(out) + e.filename[len(str(staging)):]  # the --out given, not its hidden staging name
        for p in made:
            with contextlib.suppress(OSError):
                p.rmdir()  # only while empty: another process's files stay
        raise
    fsync_dir(out.parent if fresh else out)  # the rename of the folder, or those of its files


def _save_quietly(model, out: Path) -> None:
    """``model.save_pretrained(out)`` without transformers' "Writing model shards" progress bar on
    stderr (``rnnlab export`` prints its own outcome); transformers' bar setting is restored after."""
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(out)
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
