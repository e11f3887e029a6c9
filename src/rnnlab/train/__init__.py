"""Training: ``TrainConfig`` (the config), ``run_training`` (``Trainer(cfg).train()``, the loop),
``RunDir`` (a run's folder), optimizers, checkpoints, and the CLI."""

from rnnlab.train.config import TrainConfig, load_config
from rnnlab.train.rundir import RunDir


def run_training(cfg, *, progress=True):
    """Train one model (``rnnlab.train.trainer``, imported on first use); returns the summary dict."""
    from rnnlab.train.trainer import run_training as _run

    return _run(cfg, progress=progress)


__all__ = ["RunDir", "TrainConfig", "load_config", "run_training"]
