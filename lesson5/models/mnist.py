"""The lesson's MNIST models: `Mnist_Logistic` (784->10) and `Mnist_NN` (784->50->10 with ReLU)."""

from __future__ import annotations

from torch import Tensor, nn


class Classifier(nn.Module):
    """Linear layers with ReLU between them; optional batch norm and dropout (the lesson's regularizers)."""

    loss = "cross_entropy"

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

    def layer_groups(self) -> list[list[nn.Parameter]]:
        return [list(self.parameters())]


def build(conf, data) -> Classifier:
    n_in, n_out = data.sizes["n_inputs"], data.sizes["n_classes"]
    if conf.name == "logistic":
        return Classifier([n_in, n_out])
    return Classifier([n_in, *conf.hidden, n_out], conf.dropout, conf.batchnorm)
