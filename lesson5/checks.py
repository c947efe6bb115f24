"""The lesson's two exact identities, measured: the tests and the claims report (`lesson5.reproduce`) call these.

- An embedding lookup is a one-hot vector times the embedding matrix (the lesson's spreadsheet).
- Weight decay applied to the weights (decoupled) is the same update as an L2 penalty for plain SGD, but not for
  Adam, whose per-weight step sizes rescale the penalty's gradient (Loshchilov & Hutter, arXiv:1711.05101).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lesson5 import optim
from lesson5.config import Impl, OptimConf, WdMode


def embedding_vs_one_hot(n_users: int = 7, n_items: int = 9, n_factors: int = 4, seed: int = 0) -> float:
    """The largest gap between a collab model's predictions by lookup and by one-hot matrix products."""
    from lesson5.models.collab import EmbeddingDotBias

    torch.manual_seed(seed)
    m = EmbeddingDotBias(n_users, n_items, n_factors)
    users, items = torch.randint(0, n_users, (32,)), torch.randint(0, n_items, (32,))
    ou, oi = F.one_hot(users, n_users).float(), F.one_hot(items, n_items).float()
    by_matmul = ((ou @ m.user_factors.weight) * (oi @ m.item_factors.weight)).sum(1) \
        + (ou @ m.user_bias.weight).squeeze(1) + (oi @ m.item_bias.weight).squeeze(1)
    with torch.no_grad():
        return (m(torch.stack([users, items], 1)) - by_matmul).abs().max().item()


def trajectory(conf: OptimConf, steps: int = 20, seed: int = 0, extra_loss=None) -> torch.Tensor:
    """Every parameter after each of `steps` optimizer steps on a small fixed classification problem."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
    opt = optim.build(conf, [list(model.parameters())], [conf.lr])
    out = []
    for i in range(steps):
        xb, yb = x[(i * 16) % 64:][:16], y[(i * 16) % 64:][:16]
        loss = F.cross_entropy(model(xb), yb)
        if extra_loss is not None:
            loss = loss + extra_loss(model)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        out.append(torch.cat([p.detach().flatten() for p in model.parameters()]).clone())
    return torch.stack(out)


def decay_vs_l2(name: str, impl: Impl = Impl.torch, wd: float = 0.05) -> float:
    """The largest gap between the weights trained with decoupled weight decay and with an L2 penalty."""
    lr = 0.1 if name in ("sgd", "momentum") else 1e-2
    runs = [trajectory(OptimConf(name=name, impl=impl, lr=lr, wd=wd, wd_mode=mode)) for mode in WdMode]
    return (runs[0] - runs[1]).abs().max().item()
