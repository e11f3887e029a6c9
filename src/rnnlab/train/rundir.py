"""RunDir: one training run's folder. It alone knows the folder's file names, when the folder
holds a run and when that run is complete, which checkpoint a run continues from, and how to load
the run back; the trainer, eval and sample, export, the benchmark suite and report, and the
analyses all go through it.

    config.json     the resolved TrainConfig (flat keys, ``TrainConfig.to_dict``)
    env.json        versions, device, host, git commit, command line
    metrics.jsonl   one JSON object per training step (``metrics.jsonl.xz`` in a finished run
                    archived in results/: read the same)
    eval.jsonl      one JSON object per held-out evaluation
    summary.json    the run's result; ``"complete": true`` once the budget was spent
    ckpt/           the checkpoints: step-NNNNNN/ directories (rnnlab.train.checkpoint)
    tb/             TensorBoard events
    .lock           the writer lock; records the pid, host and start time of its holder
    wandb/, wandb-id.txt   Weights & Biases files and run id (``--wandb`` only)

A folder *holds a run* when any of config.json, summary.json, metrics.jsonl or ckpt/ exists (an
archived run keeps its config.json and summary.json);
the run is *complete* when summary.json says so. Rules for training into a folder
(``prepare``), all checked while holding the lock, before anything is written:

- one writer: a process that trains into the folder holds an exclusive lock on ``.lock`` until
  it ends; a second one stops with an error naming the holder;
- a fresh run refuses a folder that holds a run, unless ``overwrite`` (then the run's files are
  deleted first), and a folder of runs (folders with a run's config.json in it), ``overwrite`` or not;
- ``resume`` continues from the newest checkpoint that verifies, or stops with an error saying
  what is missing (no folder, no config.json, another config, no usable checkpoint), changing
  nothing; damaged newer checkpoints are reported and renamed ``damaged-step-...``; the logs
  are cut back to the checkpoint's step, so every step appears in them once.
"""

from __future__ import annotations

import fcntl
import json
import lzma
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Iterable

from rnnlab.errors import counted, name_file
from rnnlab.signals import raise_swallowed_ctrl_c
from rnnlab.train.config import (LEGACY_DEFAULTS, RETIRED_MODEL_FIELDS, TrainConfig, budget_clock, legacy_hint,
                                 resume_mismatch, shown_setting)
from rnnlab.train.durable import clear_temporaries, remove_tree, write_atomic

CONFIG = "config.json"
ENV = "env.json"
METRICS = "metrics.jsonl"
ARCHIVED = ".xz"  # the suffix of a finished run's records archived in results/ (benchmarks/suite_carry.sh)
METRICS_XZ = METRICS + ARCHIVED
EVALS = "eval.jsonl"
SUMMARY = "summary.json"
CKPT = "ckpt"
TB = "tb"
LOCK = ".lock"
WANDB = "wandb"  # Weights & Biases keeps its files here (--wandb)
WANDB_ID = "wandb-id.txt"  # the W&B run id, so that a resumed run continues its W&B run
# what env.json keeps of a resumed run's earlier sessions (world_size: the processes that trained, which a
# checkpoint may change; the summary's is the last session's, its tok/s all sessions'; argv: the command)
SESSION_KEYS = ("started", "git_sha", "git_dirty", "gpu", "world_size", "argv")
CORPUS_KEYS = ("data", "val_data", "extra_val_data")  # config.json's corpus files, each a path or None
RUN_FILES = (CONFIG, ENV, METRICS, METRICS_XZ, EVALS, SUMMARY, CKPT, TB, WANDB, WANDB_ID)  # what --overwrite deletes
# ... and what rnnlab's other commands wrote into a run folder about that run alone, which would describe the
# deleted one (RunDir.about_the_run): `analyze gradflow`'s default output, `report RUN`'s report and plots
GRADFLOW, GRADFLOW_JSON = "gradflow", "gradflow.json"  # the folder and the records analyze gradflow writes
REPORT_MD, REPORT_JSON = "report.md", "report.json"


def warn(message: str) -> None:
    """A loud one-line warning on stderr (a damaged checkpoint passed over, ...)."""
    print(f"rnnlab: warning: {message}", file=sys.stderr, flush=True)


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically (``durable.write_atomic``)."""
    write_atomic(path, json.dumps(obj, indent=2, default=str) + "\n")


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None when it is missing, unreadable or not an object (every
    JSON file of a run folder or a suite holds one)."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def val_step_behind(summary: dict[str, Any]) -> int | None:
    """The step of a summary's held-out scores when it is earlier than the run's last step (an
    interrupted run's last evaluation), else None: ``rnnlab train``'s closing table and the report
    both say so beside the scores."""
    step = summary.get("val_step")
    return None if step in (None, summary.get("steps")) else step


def archived_path(path: Path) -> Path:
    """Where a run file lives once archived (xz'd)."""
    return Path(f"{path}{ARCHIVED}")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file, or of ``PATH.xz`` when only that exists (a finished run
    archived in results/, benchmarks/suite_carry.sh); unreadable lines, and lines holding no JSON
    object (every record is one), skipped; [] when missing."""
    path, packed = Path(path), archived_path(path)
    try:
        archived = packed.exists() and not path.exists()
        lines = (lzma.decompress(packed.read_bytes()).decode() if archived else path.read_text()).splitlines()
    except OSError:
        return []
    except (lzma.LZMAError, UnicodeDecodeError) as e:
        warn(f"{packed} is unreadable ({e}); its records are left out")
        return []
    out = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


class RunLock:
    """The one-writer lock of a run folder: an exclusive ``flock`` on its ``.lock`` file, held for
    the life of the process that trains into it and released by the kernel however that process
    ends (``kill -9`` included). The holder writes its pid, host and start time into the file so
    that a second process can say who holds it (docs/reliability.md: why not ``filelock``)."""

    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None
        self.created = False  # whether acquire made the file (a refusal then takes it away again)

    def acquire(self) -> None:
        while True:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._holder(fd)
                os.close(fd)
                raise ValueError(f"run dir {self.path.parent} is in use by {holder}: one process at a time "
                                 f"trains into a run folder") from None
            except OSError as e:  # no flock on this file system: a refusal, which takes away a file it made
                if self.created:
                    self.path.unlink(missing_ok=True)
                os.close(fd)
                raise ValueError(f"cannot lock run dir {self.path.parent} ({e.strerror}); a run folder needs "
                                 f"a file system with flock") from None
            if self._linked(fd):
                break
            os.close(fd)  # a refusal took the file away between our open and our lock: take the new one
        self.fd = fd
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        except OSError as e:  # a full disk: a refusal, which takes away the file this process made
            self.release(undo=True)
            name_file(e, self.path)
            raise

    def _open(self) -> int:
        """The lock file, opened (made if missing; ``created`` says which)."""
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)  # less the umask
                self.created = True
                return fd
            except FileExistsError:
                pass
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
                self.created = False
                return fd
            except FileNotFoundError:  # taken away in between: make it
                continue

    def _linked(self, fd: int) -> bool:
        """Whether ``fd`` is still the file at the lock's path (a lock on a file unlinked since
        would exclude no one)."""
        try:
            there = os.stat(self.path)
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
        return (there.st_dev, there.st_ino) == (mine.st_dev, mine.st_ino)

    @staticmethod
    def _holder(fd: int) -> str:
        try:
            h = json.loads(os.pread(fd, 4096, 0))
            return f"pid {h['pid']} on {h['host']} (started {h['started']})"
        except (OSError, ValueError, KeyError, TypeError):
            return "another process (which has not recorded itself yet)"

    def release(self, *, undo: bool = False) -> None:
        """Drop the lock; ``undo``: a refusal, so a lock file this process made goes too (a refused
        ``--resume`` leaves the folder as it found it)."""
        if self.fd is not None:
            if undo and self.created:
                self.path.unlink(missing_ok=True)  # while still held: no other process has it
            os.close(self.fd)  # closing the file drops the lock
            self.fd = None


def _holding(runs: list[str]) -> str:
    """``it holds a, b, ...``: the first two of a folder's runs, as its refusals name them."""
    return f"it holds {', '.join(runs[:2])}{', ...' if len(runs) > 2 else ''}"


def corpus_record(train, heldout) -> dict[str, int | str]:
    """What env.json records of a run's data (``"corpus"``): the training and held-out splits'
    lengths in bytes and their fingerprints (``Split.fingerprint``); a resumed run must open the
    same data (``RunDir.prepare``)."""
    return {"train_bytes": len(train), "heldout_bytes": len(heldout),
            "train_fingerprint": train.fingerprint(), "heldout_fingerprint": heldout.fingerprint()}


class RunDir:
    """The run folder at ``path`` (which need not exist yet)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.lock = RunLock(self.path / LOCK)
        self.made: list[Path] = []  # the folders ``prepare`` made (the run's, then its new parents)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def file(self, name: str) -> Path:
        """The path of one of the folder's files (``CONFIG``, ``METRICS``, ...)."""
        return self.path / name

    @property
    def ckpt_dir(self) -> Path:
        return self.path / CKPT

    # ------------------------------------------------------------------ what the folder holds
    def holds_run(self) -> bool:
        return self.path.is_dir() and any(self.file(n).exists() for n in (CONFIG, SUMMARY, METRICS, CKPT))

    def is_hf_export(self) -> bool:
        """Whether config.json is a Hugging Face model's (``rnnlab export`` writes one, naming its
        ``model_type``), not a run's: such a folder is no run, though it holds a config.json."""
        return "model_type" in (read_json(self.file(CONFIG)) or {})

    def runs_inside(self) -> list[str]:
        """The names of the folders in this one that hold a run's config.json, sorted (a folder of
        runs, as ``rnnlab bench`` and ``sweep`` write); an ``rnnlab export`` output beside them is
        none (``is_hf_export``); [] if none or no folder."""
        if not self.path.is_dir():
            return []
        return sorted(p.name for p in self.path.iterdir() if (p / CONFIG).is_file() and not RunDir(p).is_hf_export())

    def summary(self) -> dict[str, Any] | None:
        return read_json(self.file(SUMMARY))

    def saved_config(self) -> dict[str, Any] | None:
        """config.json (flat keys), a field it predates as :data:`LEGACY_DEFAULTS` says, without
        the model fields rnnlab retired (:data:`RETIRED_MODEL_FIELDS`); or None."""
        saved = read_json(self.file(CONFIG))
        if saved is None:
            return None
        if isinstance(saved.get("model"), dict):
            saved["model"] = {k: v for k, v in saved["model"].items() if k not in RETIRED_MODEL_FIELDS}
        return {**LEGACY_DEFAULTS, **saved}

    def missing_corpus(self, keys: Iterable[str] = CORPUS_KEYS, heldout: bool = False) -> str | None:
        """The first corpus file that config.json names under ``keys`` and that is gone, as one
        phrase saying whose path it is; None if all are there. ``heldout``: only the file the
        run's held-out split is read from instead (``val_data`` where it has one, else ``data``,
        its tail). Callers add the remedy: a resumed run needs the same paths, ``eval`` can score
        another file."""
        saved = self.saved_config() or {}
        if heldout:
            keys = ("val_data",) if saved.get("val_data") else ("data",)
        for key in keys:
            path = saved.get(key)
            if path and not Path(path).exists():
                return f"{key} file not found: {path} (the run's {key}, as its config.json names it)"
        return None

    def minutes_trained(self, step: int) -> float | None:
        """Training time by ``step`` as a ``--minutes`` budget counts it (compilation left out), from
        metrics.jsonl's last record at or before it; None without one."""
        timed = [m for m in read_jsonl(self.file(METRICS)) if m.get("elapsed_s") is not None and m.get("step", 0) <= step]
        if not timed:
            return None
        last = max(timed, key=lambda m: m["step"])
        return budget_clock(last["elapsed_s"], last.get("warmup_s")) / 60

    def past_budget(self, step: int | None, cfg) -> str | None:
        """How this run at ``step`` has passed ``cfg``'s budget, so that resuming it would train
        nothing (the words after "at step N"), or None: a step count past the budget's, or for
        ``--minutes`` the trainer's rule (a step starts while the time is under the budget)."""
        if step is None:
            return None
        budget = cfg.max_steps()
        kind, value = cfg.budget.chosen()
        if budget is not None and step > budget:
            at = "" if kind == "steps" else f", step {budget:,}"
            return f", past this budget ({kind} {value:,}{at})"
        if kind != "minutes":
            return None
        trained = self.minutes_trained(step - 1)
        if trained is None or trained < value:
            return None
        return (f", and had trained {trained:.4g} minute{'' if f'{trained:.4g}' == '1' else 's'} by step {step - 1:,}, "
                f"past this budget (minutes {value:g})")

    def env(self) -> dict[str, Any] | None:
        return read_json(self.file(ENV))

    def metrics(self) -> list[dict[str, Any]]:
        return read_jsonl(self.file(METRICS))

    def evals(self) -> list[dict[str, Any]]:
        return read_jsonl(self.file(EVALS))

    def status(self) -> str:
        """``"empty"`` (no run), ``"complete"``, ``"failed"`` (summary.json records an error other
        than a Ctrl-C's abort) or ``"incomplete"`` (started, stopped, or still running)."""
        if not self.holds_run():
            return "empty"
        s = self.summary() or {}
        # summaries from before the "aborted" flag (2026-12-06) say so only in their error
        aborted = s.get("aborted") or str(s.get("error", "")).startswith("aborted by Ctrl-C")
        return "complete" if s.get("complete") else "failed" if s.get("error") and not aborted else "incomplete"

    def checkpointer(self, cfg=None):
        """The ``Checkpointer`` of ckpt/, keeping what ``cfg`` asks (``keep_checkpoints``,
        ``keep_checkpoint_every``) when given."""
        from rnnlab.train.checkpoint import Checkpointer

        if cfg is None:
            return Checkpointer(self.ckpt_dir)
        return Checkpointer(self.ckpt_dir, cfg.run.keep_checkpoints, cfg.run.keep_checkpoint_every)

    def has_checkpoint(self) -> bool:
        """Whether any checkpoint was committed (not verified: ``checkpoint`` does that)."""
        return bool(self.checkpointer().checkpoints())

    def checkpoint(self):
        """The newest checkpoint that verifies; damaged newer ones are reported on stderr.
        ``CheckpointError`` saying what was found when there is none."""
        return self._usable_checkpoint(self.checkpointer(), resuming=False)

    def _usable_checkpoint(self, checkpointer, resuming: bool, check=None):
        """The newest checkpoint of ``checkpointer`` that verifies, each damaged newer one reported
        on stderr and, when ``resuming``, renamed aside (a legacy one is left in place);
        ``CheckpointError`` saying what was found when none verifies. ``check(checkpoint)`` runs
        before anything is renamed (an error it raises leaves the folder as it was)."""
        from rnnlab.train.checkpoint import CheckpointError

        usable, damaged = checkpointer.find()
        if usable is not None and check is not None:
            check(usable)
        if usable is None:
            found = "; ".join(why for _, why in damaged) or "there is none"
            if resuming:
                raise CheckpointError(f"--resume: no usable checkpoint in {self.ckpt_dir} ({found}); nothing was "
                                      f"changed (start over with --overwrite, which deletes this run)")
            raise CheckpointError(f"no usable checkpoint in {self.ckpt_dir} ({found})")
        for c, why in damaged:
            aside = f"; it is kept as {checkpointer.quarantine(c).name}" if resuming and not c.legacy else ""
            warn(f"checkpoint {c.path} is damaged: {why}; {'resuming from' if resuming else 'using'} {usable} "
                 f"instead{aside}")
        return usable

    def weight_files(self) -> list[Path]:
        """The weights of every usable checkpoint and every other ``model.safetensors`` in the
        folder outside ckpt/ (copies of older ones), ordered by the step in their metadata
        (unknown last); a step seen twice is listed once, the checkpoint's own file first. A file
        whose metadata names another format than rnnlab's is left out: a Hugging Face export
        (``rnnlab export --out RUN/hf``, format "pt", keys ``model.*``) is no weights of the run's LM."""
        from rnnlab.train.checkpoint import MODEL_FILE, CheckpointError, read_weights_metadata

        def metadata(p: Path) -> dict[str, str]:
            try:
                return read_weights_metadata(p)
            except CheckpointError:  # an unreadable copy sorts last rather than failing the listing
                return {}

        own = []
        for c in self.checkpointer().checkpoints():
            try:
                c.verify()
                own.append((c.step, False, str(c.weights), c.weights))
            except CheckpointError:
                continue
        ckpt = self.ckpt_dir.resolve()
        copies = []
        for p in self.path.rglob(MODEL_FILE):
            if p.is_file() and ckpt not in p.resolve().parents:
                meta = metadata(p)
                if meta.get("format", "rnnlab") == "rnnlab":
                    step = int(meta["step"]) if meta.get("step") is not None else None
                    copies.append((step, True, str(p), p))
        out, seen = [], set()
        for s, _, _, p in sorted(own + copies, key=lambda r: (r[0] is None, r[0] or 0, r[1], r[2])):
            if s is None or s not in seen:
                seen.add(s)
                out.append(p)
        return out

    # ------------------------------------------------------------------ loading
    def config(self):
        """The run's TrainConfig (from config.json)."""
        if not self.path.exists():
            raise FileNotFoundError(f"run dir not found: {self.path} (--run takes the --out folder of `rnnlab train`)")
        if not self.path.is_dir():
            raise NotADirectoryError(f"{self.path} is not a run dir (a file, not a folder)")
        saved = self.saved_config()
        if saved is None:
            runs = self.runs_inside()
            inside = f"; it holds runs: {', '.join(runs[:8])}{', ...' if len(runs) > 8 else ''} " \
                     f"(--run {self.path / runs[0]})" if runs else ""
            # a run's ckpt/ or one of its step folders: the run is the folder above
            owner = next((p for p in list(self.path.parents)[:2]
                          if RunDir(p).saved_config() is not None and not RunDir(p).is_hf_export()), None)
            if owner is not None and not runs:
                inside = f"; it is inside the run {owner} (--run {owner})"
            raise FileNotFoundError(f"{self.path} is not a run dir (no readable {CONFIG}){inside}")
        if self.is_hf_export():  # transformers' config.json: its keys would be listed as unknown fields
            raise ValueError(f"{self.path} is a Hugging Face model folder (rnnlab export), not a run dir: give the "
                             f"run folder it was exported from, or load it with transformers")
        return TrainConfig.from_dict(saved)

    def load(self, device: str = "auto", weights: str | os.PathLike | None = None, train_point: bool = False):
        """``(TrainConfig, LM in eval mode, step)``: the run's model with the shipped weights
        (Schedule-Free's x) of its newest usable checkpoint, or with Schedule-Free's training
        point y there (``train_point``), or with ``weights`` (another ``model.safetensors`` of the
        run, e.g. from ``weight_files``), at the run's precision on ``device``. A run trained with a
        CUDA-only layer backend (triton, official) loads with ``auto``: that backend where it runs,
        else its PyTorch reference (the same weights and function), so another device, or a GPU
        without the backend's library or kernel, still scores and samples it (the backend named
        would raise there). A checkpoint that a run still training deletes while it is read gives
        way to the newest one then."""
        from rnnlab.layers.base import CUDA_ONLY_BACKENDS
        from rnnlab.train.checkpoint import CheckpointError, load_checkpoint, load_train_point_weights, load_weights
        from rnnlab.train.optim import in_order, param_groups
        from rnnlab.train.runtime import build_model, pick_device

        cfg = self.config()
        dev = pick_device(device)
        if cfg.model.layer.get("backend") in CUDA_ONLY_BACKENDS:
            cfg.model.layer = {**cfg.model.layer, "backend": "auto"}
        model = build_model(cfg, dev)
        raise_swallowed_ctrl_c()  # one that came as the model was built (Triton loading) stops the command here
        if weights is None:
            for attempt in range(3):  # a run still training deletes old checkpoints (keep_checkpoints) as it goes
                checkpoint = self.checkpoint()
                try:
                    step = load_checkpoint(checkpoint, model)["step"]
                    if train_point:
                        load_train_point_weights(checkpoint, model, in_order(param_groups(model, cfg)))
                    break
                except CheckpointError:
                    if checkpoint.path.exists() or attempt == 2:  # damaged, not deleted while being read
                        raise
        else:
            meta = load_weights(model, weights)
            step = int(meta["step"]) if meta.get("step") is not None else None
        model.eval()
        return cfg, model, step

    # ------------------------------------------------------------------ training
    def prepare(self, cfg, corpus: dict[str, int | str] | None = None, *, clear_leftovers: bool = True):
        """Take the folder for training ``cfg`` into it (module docstring: the rules); returns
        the checkpoint to resume from (None for a fresh run). Holds the lock until ``release``.
        ``corpus``: ``corpus_record`` of the data this session opened, which a resumed run's must
        equal (env.json's, when it has them). ``clear_leftovers``: remove what interrupted writes left
        (``clear_temporaries``), warning of what stays; ``--gpus N``'s check leaves that to rank 0."""
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"--out {self.path} exists and is not a directory")
        if cfg.run.resume and cfg.run.overwrite:
            raise ValueError("--resume continues the run in --out and --overwrite deletes it: give one of them")
        if cfg.run.resume and not self.holds_run():
            runs = self.runs_inside()
            if runs:  # a suite's or a sweep's folder: the run to resume is one of its folders
                raise ValueError(f"--resume: {self.path} is a folder of runs ({_holding(runs)}), not a run folder: "
                                 f"give the run's own folder, e.g. --out {self.path / runs[0]}")
            if not self.path.is_dir():
                what = "no such folder"
            elif any(p.name != LOCK for p in self.path.iterdir()):
                what = f"a folder without {CONFIG}, {METRICS}, {SUMMARY} or {CKPT}/"
            else:
                what = "an empty folder"
            raise ValueError(f"--resume: {self.path} holds no run to resume ({what}; check --out)")
        self.made, folder = [], self.path
        while not folder.exists() and folder != folder.parent:
            self.made.append(folder)
            folder = folder.parent
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            self.lock.acquire()
            start = self._resume_point(cfg, corpus) if cfg.run.resume else None
            if not cfg.run.resume:
                self._clear(cfg)
            for folder in (self.path, self.ckpt_dir) if clear_leftovers else ():
                for entry, e in clear_temporaries(folder) if folder.is_dir() else []:
                    warn(f"could not remove {entry}, left by an interrupted write or an old checkpoint's deletion "
                         f"({e.strerror or e}); it stays, and training goes on (delete it by hand)")
            return start
        except BaseException:
            self.release(undo=True)
            raise

    def corpus_changed(self, corpus: dict[str, int | str]) -> str | None:
        """How ``corpus`` (``corpus_record``'s keys, those known) differs from what env.json
        recorded when the run trained: "the held-out split is now N bytes, but the run in DIR
        trained with M", or, sizes equal, "... holds other bytes than ...", or None (the same, or
        nothing recorded: runs from before the fingerprints are compared by size)."""
        before = (self.env() or {}).get("corpus")
        if not isinstance(before, dict):
            return None
        for split, what in (("train", "training split"), ("heldout", "held-out split")):
            size, mark = f"{split}_bytes", f"{split}_fingerprint"
            if size in corpus and before.get(size) is not None and before[size] != corpus[size]:
                return (f"the {what} is now {counted(corpus[size], 'byte')}, but the run in {self.path} trained with "
                        f"{before[size]:,}")
            if mark in corpus and before.get(mark) is not None and before[mark] != corpus[mark]:
                return (f"the {what} holds other bytes than the run in {self.path} trained with (the same "
                        f"{counted(corpus[size], 'byte')}, fingerprint {corpus[mark]}, not {before[mark]})")
        return None

    def refuse_other_config(self, saved: dict[str, Any], cfg, keys: Iterable[str] | None = None) -> None:
        """Refuse ``cfg`` where it differs from ``saved``, the run's config, in a field that matters
        for resuming (``keys``: among these top-level fields only; ``resume_mismatch``)."""
        diff = resume_mismatch(saved, cfg, keys)
        if diff is not None:
            key, old, new = diff
            hint = legacy_hint(key) or (" (a run continues with the settings it was made with: leave that "
                                        "setting as it was, or start a new run with another --out)")
            raise ValueError(f"run dir {self.path} was made with a different config: field {key} is "
                             f"{shown_setting(key, old)}, not {shown_setting(key, new)}{hint}")

    def _resume_point(self, cfg, corpus: dict[str, int | str] | None):
        """The newest usable checkpoint of a run made with ``cfg``'s config and, when ``corpus``
        and env.json say, on a corpus of the same sizes, else an error that changes nothing;
        damaged newer checkpoints are renamed aside, loudly."""
        saved = self.saved_config()
        if saved is None:
            raise ValueError(f"--resume: {self.path} has no readable {CONFIG}, so its run cannot be checked "
                             f"or continued (start over with --overwrite)")
        self.refuse_other_config(saved, cfg)
        changed = self.corpus_changed(corpus) if corpus is not None else None
        if changed is not None:
            raise ValueError(f"--resume: {changed}: the data changed since, so the run would not go on with the "
                             f"same bytes (restore the files, or start a new run with another --out)")
        kind, _ = cfg.budget.chosen()

        def within_budget(checkpoint) -> None:
            past = self.past_budget(checkpoint.step, cfg)
            if past is not None:
                raise ValueError(f"--resume: the run in {self.path} is at step {checkpoint.step:,}{past}: nothing to "
                                 f"train, nothing changed (a larger --{kind} extends a run)")

        return self._usable_checkpoint(self.checkpointer(cfg), resuming=True, check=within_budget)

    def _clear(self, cfg) -> None:
        """A fresh run: refuse a folder holding a run, or delete that run's files (``overwrite``);
        refuse a folder of runs (``runs_inside``), where the run's files would lie beside them."""
        if not self.holds_run():
            runs = self.runs_inside()
            if runs:
                raise ValueError(f"--out {self.path} is a folder of runs ({_holding(runs)}), not a run folder: give "
                                 f"the run a folder of its own, e.g. --out {self.path / 'NAME'}")
            return
        if not cfg.run.overwrite:
            status = self.status()
            held = f"run dir {self.path} already holds {'an' if status == 'incomplete' else 'a'} {status} run"
            if not self.checkpointer().checkpoints():  # --resume would have nothing to go on from
                raise ValueError(f"{held} that saved no checkpoint; pass --overwrite to start it over, or "
                                 f"choose another --out")
            # a complete run has nothing left to continue: --resume extends it only with a larger budget
            resume = ("pass --resume with a larger --steps, --minutes or --tokens to extend it" if status == "complete"
                      else "pass --resume to continue it")
            raise ValueError(f"{held}; {resume}, --overwrite to delete it and start over, or choose another --out")
        about = self.about_the_run()  # read before the run's files go
        self._remove_run_files()
        for name in about:
            path = self.file(name)
            if name == GRADFLOW:
                remove_tree(path)
            elif path.is_file():
                path.unlink()

    def about_the_run(self) -> list[str]:
        """What rnnlab wrote into the folder about its run alone, which ``--overwrite`` deletes with the
        run: ``rnnlab report RUN``'s report.md, report.json and the plots report.json names (when
        report.json's runs are this folder's alone: a report of other runs written here stays), and
        ``analyze gradflow``'s default ``gradflow/`` (when each of its records is of a run of this
        folder's name)."""
        about = []
        report = read_json(self.file(REPORT_JSON)) or {}
        runs = [r.get("dir") if isinstance(r, dict) else None for r in report.get("runs") or []]
        if runs == [self.path.name]:
            plots = [p for p in report.get("plots") or [] if isinstance(p, str) and p.endswith(".png")
                     and Path(p).name == p]
            about += [*plots, REPORT_MD, REPORT_JSON]
        records = (read_json(self.file(GRADFLOW) / GRADFLOW_JSON) or {}).get("records") or []
        if self.file(GRADFLOW).is_dir() and records and all(
                isinstance(r, dict) and Path(str(r.get("run"))).name == self.path.name for r in records):
            about.append(GRADFLOW)
        return about

    def _remove_run_files(self) -> None:
        for name in RUN_FILES:
            path = self.file(name)
            if path.is_dir():
                remove_tree(path)
            else:
                path.unlink(missing_ok=True)

    def abandon_fresh(self) -> None:
        """A fresh run that failed before its first step (a W&B run that could not start, the
        model out of memory): remove what its start wrote, so the same command runs again without
        ``--overwrite``, and let go of the folder; a folder that ``prepare`` made (and the parents it
        made) goes too, with its lock file, where nothing else is left in it. A file that will not go
        is left: the failure being raised says more than an error removing it would."""
        try:
            self._remove_run_files()
        except OSError:
            pass
        finally:
            self.release(undo=bool(self.made))

    def start(self, cfg, env: dict[str, Any], resumed_step: int | None, trains_on: bool = False,
              scores_only: bool = False) -> None:
        """Record the config and this session's environment; a resumed run cuts its logs back to
        ``resumed_step`` (the lines of steps after its checkpoint are written again) and keeps its
        earlier sessions' start, commit, GPU, processes and command (``SESSION_KEYS``) in env.json's
        ``earlier_sessions``. A complete run resumed to train on
        (``trains_on``: a larger budget) has its summary.json say incomplete until it ends again, so that a session
        that dies does not leave it complete at the old budget under config.json's new one; a failed
        or aborted run's summary loses its error as it resumes, so that such a session does not leave
        it failed for a cause of an earlier session. A session that trains no step (``scores_only``: a
        finished run's final evaluation scored again) keeps env.json's training environment (device,
        GPU, load, commit: what the report reads beside the training's tok/s) and adds its own to
        ``scoring_sessions``."""
        if resumed_step is not None:
            for name in (METRICS, EVALS):
                self._unarchive(self.file(name))
                self._truncate(self.file(name), resumed_step)
            summary = self.summary() or {}
            # how this session ends is not known yet: a session that dies leaves the run incomplete,
            # neither complete at the old budget nor failed or aborted as the last session ended
            now = {k: v for k, v in summary.items() if k not in ("error", "aborted")}
            if trains_on and now.get("complete"):
                now["complete"] = False
            if now != summary:
                self.write_summary(now)
            before = self.env() or {}
            if scores_only and before.get("started"):
                env = {**before, "scoring_sessions": before.get("scoring_sessions", []) + [
                    {k: env.get(k) for k in SESSION_KEYS}]}
            elif before.get("started"):
                env = {**env, "earlier_sessions": before.get("earlier_sessions", []) + [
                    {k: before.get(k) for k in SESSION_KEYS}],
                       **{k: before[k] for k in ("scoring_sessions",) if k in before}}
        # how this session was started is no part of the run: a config.json reused as --config
        # must not resume or delete anything
        write_json(self.file(CONFIG), {**cfg.to_dict(), "resume": False, "overwrite": False})
        write_json(self.file(ENV), env)

    def release(self, *, undo: bool = False) -> None:
        """Let go of the folder (the lock ``prepare`` took); ``undo``: as ``prepare`` found it, the lock
        file and the folders it made going too where nothing else is in them (``abandon_fresh``; ``--gpus
        N``'s check before launching, so that rank 0 makes them itself and knows them for its own)."""
        self.lock.release(undo=undo)
        if undo:
            for folder in self.made:  # the run's folder first; one that holds anything else stays, and its parents
                try:
                    folder.rmdir()
                except OSError:
                    break

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json(self.file(SUMMARY), summary)

    @staticmethod
    def _unarchive(path: Path) -> None:
        """An archived ``PATH.xz`` back to ``PATH``, so a resumed run appends to its records."""
        packed = archived_path(path)
        if packed.exists() and not path.exists():
            write_atomic(path, "".join(json.dumps(r) + "\n" for r in read_jsonl(path)))
            packed.unlink()

    def keep_last_final_eval(self, step: int) -> None:
        """eval.jsonl with one final evaluation's record of ``step``, its last: a complete run's
        re-scored final evaluation (``Trainer.scored_record``) is appended beside the record it
        replaces, which leaves only once the new one is on the disk (a re-score stopped or killed
        midway keeps the old one). Call with the logs closed (their handle appends to the file)."""
        self._truncate(self.file(EVALS), step)

    @staticmethod
    def _truncate(path: Path, max_step: int) -> None:
        """Drop records past ``max_step``, any line a crash cut short, and all but the last final
        evaluation's record of ``max_step`` (``keep_last_final_eval``)."""
        if not path.exists():
            return
        records = []
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
                records.append((line, record.get("step", 0), bool(record.get("final"))))
            except (json.JSONDecodeError, AttributeError):
                continue
        finals = [i for i, (_, step, final) in enumerate(records) if step == max_step and final]
        drop = set(finals[:-1])
        keep = [line for i, (line, step, _) in enumerate(records) if step <= max_step and i not in drop]
        write_atomic(path, "".join(k + "\n" for k in keep))
