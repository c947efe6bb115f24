"""The collab model: shapes, y_range bounds, and an embedding being a one-hot matrix product."""

import torch
import torch.nn.functional as F

from lesson5 import checks
from lesson5.models.collab import EmbeddingDotBias


def test_shapes_and_layer_groups():
    m = EmbeddingDotBias(10, 20, 5, (0.0, 5.5))
    x = torch.stack([torch.randint(0, 10, (32,)), torch.randint(0, 20, (32,))], 1)
    assert m(x).shape == (32,)
    assert m.user_factors.weight.shape == (10, 5) and m.item_bias.weight.shape == (20, 1)
    assert sum(p.numel() for g in m.layer_groups() for p in g) == sum(p.numel() for p in m.parameters())


def test_fastai_init_is_small_and_truncated():
    w = EmbeddingDotBias(500, 500, 40).item_factors.weight
    assert w.abs().max() <= 0.02 + 1e-7 and 0.005 < w.std() < 0.015


def test_y_range_bounds_hold_even_for_extreme_weights():
    m = EmbeddingDotBias(4, 4, 3, (1.0, 5.0))
    with torch.no_grad():
        for p in m.parameters():
            p.uniform_(-30, 30)
    x = torch.cartesian_prod(torch.arange(4), torch.arange(4))
    out = m(x)
    assert (out >= 1.0).all() and (out <= 5.0).all()
    assert out.max() > 4.9 and out.min() < 1.1  # the sigmoid reaches both ends
    m.y_range = None
    assert (m(x) > 5).any()  # without y_range nothing squashes


def test_embedding_lookup_equals_one_hot_matrix_product():
    assert checks.embedding_vs_one_hot() < 1e-6  # the number the claims report shows
    m = EmbeddingDotBias(7, 9, 4)
    users = torch.tensor([0, 3, 6, 3])
    assert torch.equal(m.user_factors(users), F.one_hot(users, 7).float() @ m.user_factors.weight)


