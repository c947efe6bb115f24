"""Core: an ensemble, K trained models of one shape whose prediction is their mean (`trainer.ensemble`): the
module a run of K seeds logs, and that `lesson5.load` gives back."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def mean_prediction(outs: Tensor, loss: str) -> Tensor:
    """The ensemble's output from its members' [K, ...]: the mean rating (mse); for a classifier (cross_entropy),
    the log of the mean probabilities, logits whose softmax is that mean (averaged logits are not)."""
    if loss == "cross_entropy":
        return torch.logsumexp(torch.log_softmax(outs, -1), 0) - torch.log(torch.tensor(float(len(outs))))
    return outs.mean(0)


class Ensemble(nn.Module):
    """K models as one: `forward(x)` is the mean of their predictions. Its state dict is theirs under
    `members.<k>.`; `loss` is the members' (they share one shape), and `layer_groups()` one group of every
    parameter."""

    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.loss = members[0].loss

    def forward(self, x: Tensor) -> Tensor:
        return mean_prediction(torch.stack([m(x) for m in self.members]), self.loss)

    def layer_groups(self) -> list[list[nn.Parameter]]:
        return [list(self.parameters())]
