"""Core: losses by the name a model declares, from torch or written from their definitions (`loss.impl`)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from lesson5.config import Impl


def log_softmax(x: Tensor) -> Tensor:
    """x - log(sum(exp(x))), with the max subtracted first so exp cannot overflow (the log-sum-exp trick)."""
    m = x.max(dim=1, keepdim=True).values
    return x - (m + (x - m).exp().sum(dim=1, keepdim=True).log())


def nll(log_probs: Tensor, target: Tensor) -> Tensor:
    """Negative log-likelihood: minus the mean log-probability given to the right class."""
    return -log_probs[range(len(target)), target].mean()


def cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """The lesson's cross-entropy: softmax, then the log-likelihood of the right class."""
    return nll(log_softmax(logits), target)


def mse(pred: Tensor, target: Tensor) -> Tensor:
    return (pred - target).pow(2).mean()


TORCH = {"mse": F.mse_loss, "cross_entropy": F.cross_entropy}
SCRATCH = {"mse": mse, "cross_entropy": cross_entropy}


def build(name: str, impl: Impl = Impl.torch):
    """The loss function for a model's declared loss name."""
    return (SCRATCH if impl is Impl.scratch else TORCH)[name]
