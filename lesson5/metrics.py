"""Validation metrics by the loss a model declares (`model.loss`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

def regression(pred: Tensor, y: Tensor) -> dict[str, float]:
    err = pred - y
    mse = err.pow(2).mean().item()
    return {"valid_loss": mse, "valid_rmse": mse**0.5, "valid_mae": err.abs().mean().item()}


def classification(logits: Tensor, y: Tensor) -> dict[str, float]:
    return {"valid_loss": F.cross_entropy(logits, y).item(),
            "valid_accuracy": (logits.argmax(1) == y).float().mean().item()}


METRICS = {"mse": regression, "cross_entropy": classification}


@torch.inference_mode()
def predict(model: torch.nn.Module, x: Tensor, bs: int = 8192) -> Tensor:
    """The model's outputs for all of x, in large batches, in eval mode."""
    model.eval()
    out = torch.cat([model(x[i : i + bs]) for i in range(0, len(x), bs)])
    model.train()
    return out.float()


def evaluate(model: torch.nn.Module, x: Tensor, y: Tensor, loss: str) -> dict[str, float]:
    """Validation metrics over the whole set."""
    return METRICS[loss](predict(model, x), y)


def confusion_matrix(model: torch.nn.Module, x: Tensor, y: Tensor, n_classes: int) -> list[list[int]]:
    """Counts of (true class, predicted class) over the validation set."""
    pred = predict(model, x).argmax(1)
    counts = torch.bincount(y * n_classes + pred, minlength=n_classes * n_classes)
    return counts.view(n_classes, n_classes).tolist()
