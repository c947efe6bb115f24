"""Core: the lesson's MNIST models, `Mnist_Logistic` (784->10) and `Mnist_NN` (784->50->10 with ReLU), declared as
model=logistic and model=mlp in lesson5.config."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class Classifier(nn.Module):
    """Linear layers with ReLU between them; optional batch norm and dropout (the lesson's regularizers)."""

    def __init__(self, sizes: list[int], dropout: float = 0.0, batchnorm: bool = False):
        super().__init__()
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
            layers.append(nn.Linear(n_in, n_out))
            if i < len(sizes) - 2:  # every layer but the output
                if batchnorm:
                    layers.append(nn.BatchNorm1d(n_out))
                layers.append(nn.ReLU())
                if dropout:
                    layers.append(nn.Dropout(dropout))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)

    def forward_stack(self, w: dict[str, Tensor], x: Tensor) -> Tensor:
        """forward for a stack of K such models (lesson5.stack): weights [K, ...], inputs [K, bs, n_inputs]."""
        for i, layer in enumerate(self.layers):
            if isinstance(layer, nn.Linear):  # each member's own matmul: a batched one rounds differently
                x = torch.stack([F.linear(xk, wk, bk) for xk, wk, bk in
                                 zip(x, w[f"layers.{i}.weight"], w[f"layers.{i}.bias"])])
            else:  # ReLU, Dropout: elementwise (a stack has no batch norm: it has buffers)
                x = layer(x)
        return x

    def layer_groups(self) -> list[list[nn.Parameter]]:
        return [list(self.parameters())]


def logistic(conf, data) -> Classifier:
    """Mnist_Logistic: one Linear from the data's inputs to its classes."""
    return Classifier([data.sizes["n_inputs"], data.sizes["n_classes"]])


def mlp(conf, data) -> Classifier:
    """Mnist_NN with conf's hidden sizes, dropout and batch norm (lesson5.config.MlpConf)."""
    return Classifier([data.sizes["n_inputs"], *conf.hidden, data.sizes["n_classes"]], conf.dropout, conf.batchnorm)
