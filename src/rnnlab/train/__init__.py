"""Training: ``TrainConfig``, ``run_training`` (the loop), optimizers, checkpoints, and the CLI."""

from rnnlab.train.config import TrainConfig, load_config


def run_training(cfg, *, progress=True):
    """Train one model (see ``rnnlab.train.trainer.run_training``); returns the summary dict."""
    from rnnlab.train.trainer import run_training as _run

    return _run(cfg, progress=progress)


__all__ = ["TrainConfig", "load_config", "run_training"]
