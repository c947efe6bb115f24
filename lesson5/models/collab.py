"""Core: the lesson's collaborative-filtering model, a dot product of embeddings plus biases squashed into y_range
(declared as model=collab in lesson5.config)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn import functional as F


def embedding(n: int, dim: int) -> nn.Embedding:
    """An embedding initialised as fastai does: normal(0, 0.01) truncated at two standard deviations."""
    e = nn.Embedding(n, dim)
    with torch.no_grad():
        e.weight.normal_().fmod_(2).mul_(0.01)
    return e


class EmbeddingDotBias(nn.Module):
    """rating = sigmoid(u·i + user_bias + item_bias) * (hi - lo) + lo (fastai's EmbeddingDotBias)."""

    def __init__(self, n_users: int, n_items: int, n_factors: int, y_range: Optional[Sequence[float]] = None):
        super().__init__()
        self.user_factors, self.item_factors = embedding(n_users, n_factors), embedding(n_items, n_factors)
        self.user_bias, self.item_bias = embedding(n_users, 1), embedding(n_items, 1)
        self.y_range = tuple(y_range) if y_range is not None else None

    def forward(self, x: Tensor, y_range: Optional[Tensor] = None) -> Tensor:
        """Ratings for (user, item) rows; `y_range` as a tensor overrides the model's (a stack's member's own)."""
        users, items = x.t().contiguous()  # one copy; strided columns would be copied by each lookup and its backward
        # F.embedding on the weights: the same lookup as calling the modules, without four module dispatches
        u, i = F.embedding(users, self.user_factors.weight), F.embedding(items, self.item_factors.weight)
        ub, ib = F.embedding(users, self.user_bias.weight), F.embedding(items, self.item_bias.weight)
        res = (u * i).sum(1) + ub.squeeze(1) + ib.squeeze(1)
        if y_range is None and self.y_range is None:
            return res
        lo, hi = self.y_range if y_range is None else y_range
        return torch.sigmoid(res) * (hi - lo) + lo

    def forward_stack(self, w: dict[str, Tensor], x: Tensor, y_range: Optional[Tensor] = None) -> Tensor:
        """forward for a stack of K such models (lesson5.stack): weights [K, ...], rows [K, bs, 2], y_range [K, 2]."""
        users, items = x[..., 0], x[..., 1]
        k = torch.arange(len(x), device=x.device)[:, None]  # each member gathers from its own tables
        res = ((w["user_factors.weight"][k, users] * w["item_factors.weight"][k, items]).sum(-1)
               + w["user_bias.weight"][k, users, 0] + w["item_bias.weight"][k, items, 0])
        if y_range is None:
            return res
        lo, hi = y_range[:, :1], y_range[:, 1:]
        return torch.sigmoid(res) * (hi - lo) + lo

    def member_kwargs(self) -> dict[str, Tensor]:
        """What a stack's member passes to forward besides its parameters (lesson5.stack)."""
        return {} if self.y_range is None else {"y_range": torch.tensor(self.y_range, dtype=torch.float32)}

    def layer_groups(self) -> list[list[nn.Parameter]]:
        return [list(self.parameters())]


def build(conf, data) -> EmbeddingDotBias:
    """The model for conf (lesson5.config.CollabConf), sized by the data's users and items."""
    return EmbeddingDotBias(data.sizes["n_users"], data.sizes["n_items"], conf.n_factors, conf.y_range)
