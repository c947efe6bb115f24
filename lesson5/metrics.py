"""Losses and metrics by the name a model declares (`model.loss`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

LOSSES = {"mse": F.mse_loss, "cross_entropy": F.cross_entropy}


def regression(pred: Tensor, y: Tensor) -> dict[str, float]:
    err = pred - y
    mse = err.pow(2).mean().item()
    return {"valid_loss": mse, "valid_rmse": mse**0.5, "valid_mae": err.abs().mean().item()}


def classification(logits: Tensor, y: Tensor) -> dict[str, float]:
    return {"valid_loss": F.cross_entropy(logits, y).item(),
            "valid_accuracy": (logits.argmax(1) == y).float().mean().item()}


METRICS = {"mse": regression, "cross_entropy": classification}


@torch.inference_mode()
def evaluate(model: torch.nn.Module, x: Tensor, y: Tensor, loss: str, bs: int = 8192) -> dict[str, float]:
    """Validation metrics over the whole set, predicted in large batches."""
    model.eval()
    out = torch.cat([model(x[i : i + bs]) for i in range(0, len(x), bs)])
    model.train()
    return METRICS[loss](out.float(), y)
