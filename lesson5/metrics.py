"""Core: validation metrics by the loss a model declares (`model.loss`)."""

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
def predict(model: torch.nn.Module, source) -> tuple[Tensor, Tensor]:
    """The model's outputs (as float) and the targets over every batch of a source, in order, in eval mode."""
    model.eval()
    outs, ys = zip(*((model(xb), yb) for xb, yb in source.epoch(None)))
    model.train()
    dim = 1 if getattr(model, "members", 0) else 0  # a stack's batches are [members, bs, ...]
    return torch.cat(outs, dim).float(), torch.cat(ys, dim)


def confusion_matrix(logits: Tensor, y: Tensor) -> list[list[int]]:
    """Counts of (true class, predicted class)."""
    n = logits.shape[1]
    counts = torch.bincount(y * n + logits.argmax(1), minlength=n * n)
    return counts.view(n, n).tolist()


def most_wrong(logits: Tensor, y: Tensor, input_of, classes=None, k: int = 9) -> dict:
    """The k validation items with the highest loss, as grey images for a plot: `input_of(i)` gives item i's input
    (a flat 28x28 vector, or a normalized 3-channel image)."""
    losses = F.cross_entropy(logits, y, reduction="none")
    top = losses.topk(min(k, len(losses))).indices.tolist()
    name = (lambda c: str(classes[c])) if classes else str
    items = []
    for i in top:
        x = input_of(i).float().cpu()
        img = x.view(28, 28) if x.dim() == 1 and x.numel() == 784 else x.mean(0) if x.dim() == 3 else x.view(-1, 1)
        items.append({"image": img.round(decimals=3).tolist(), "true": name(int(y[i])),
                      "pred": name(int(logits[i].argmax())), "loss": float(losses[i])})
    return {"items": items}


# JSON artifacts a run logs at its end, by the model's loss, from the last validation outputs
TABLES = {"mse": {}, "cross_entropy": {"confusion_matrix.json": confusion_matrix}}


def tables(out: Tensor, y: Tensor, loss: str) -> dict[str, object]:
    return {name: table(out, y) for name, table in TABLES[loss].items()}

