"""Training: the loop (method-agnostic), optimizer and schedule, checkpoints and resume, metric logging."""

from cocomix.train.checkpoint import latest_checkpoint, resolve_checkpoint
from cocomix.train.loop import TrainResult, train
from cocomix.train.optim import build_optimizer, lr_at

__all__ = ["TrainResult", "build_optimizer", "latest_checkpoint", "lr_at", "resolve_checkpoint", "train"]
