"""A model added from outside the package, as a user adds one: this file, and LESSON5_PLUGINS=toy_model.

`model=toy` predicts a rating as a learned mean plus the user's and the item's bias: collab without its
embeddings. tests/test_registry.py trains it through `python -m lesson5`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lesson5.components import ModelSpec, declare
from lesson5.config import ModelConf, rule


@dataclass
class ToyConf(ModelConf):
    start: float = rule(lambda v: 0 <= v <= 5, "a rating in [0, 5]", 3.5)  # the mean rating it starts from


class Biases(nn.Module):
    def __init__(self, n_users: int, n_items: int, start: float):
        super().__init__()
        self.mean = nn.Parameter(torch.tensor(float(start)))
        self.user, self.item = nn.Embedding(n_users, 1), nn.Embedding(n_items, 1)
        nn.init.zeros_(self.user.weight)
        nn.init.zeros_(self.item.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mean + self.user(x[:, 0]).squeeze(1) + self.item(x[:, 1]).squeeze(1)

    def layer_groups(self) -> list[list[nn.Parameter]]:
        return [list(self.parameters())]


def build(conf: ToyConf, data) -> Biases:
    return Biases(data.sizes["n_users"], data.sizes["n_items"], conf.start)


declare(ModelSpec(name="toy", schema=ToyConf, build=build, loss="mse", data="movielens", device="cpu",
                  recipe={"optim": {"lr": 3e-2, "wd": 0.0}, "trainer": {"epochs": 3, "bs": 128}}))
