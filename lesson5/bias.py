"""Core: what a collab model learned, as the lesson reads it: each item's and user's bias beside its mean rating,
their rank correlation, and the principal components of the item factors. Pure torch, numpy and pandas, so every
collab run computes it as it ends (`lesson5.lifecycle`) and `python -m lesson5.interpret` for a finished run.
"""

from __future__ import annotations

import json
from typing import Optional

import numpy as np
import pandas as pd
import torch

from lesson5.models.ensemble import Ensemble

MIN_RATINGS = 50  # a count threshold: 605 of MovieLens-100k's movies have 50 or more ratings
LESSON_TOP = 1000  # the lesson's protocol: fastai's course-v3 notebook ranks the 1,000 most-rated movies


def learned(model, table: str) -> torch.Tensor:
    """A collab model's learned table (`user_bias`, `item_bias`, `item_factors`), [rows, dim], detached on the CPU.

    Of an ensemble (lesson5.models.ensemble), the members' biases are averaged: each is the same quantity on the
    same scale (an offset inside the same sigmoid), so their mean is the ensemble's. Their factors are concatenated,
    [rows, K * n_factors], not averaged: independently seeded members learn their factors in arbitrary rotations of
    each other, so a mean of them blurs them, while the principal components of the concatenation are those of the
    sum of the members' item-by-item dot products (the Gram matrix), whatever each member's rotation.
    """
    if not isinstance(model, Ensemble):
        return getattr(model, table).weight.detach().cpu()
    weights = [learned(m, table) for m in model.members]
    return torch.cat(weights, 1) if table.endswith("factors") else torch.stack(weights).mean(0)


def ratings(data) -> tuple[torch.Tensor, torch.Tensor]:
    """Every rating of the data set once: the first fold's train and valid parts together."""
    fold = data.folds[0]
    return torch.cat([fold.train[0], fold.valid[0]]), torch.cat([fold.train[1], fold.valid[1]])


def _stats(index: torch.Tensor, y: torch.Tensor, n: int) -> tuple[np.ndarray, np.ndarray]:
    counts = torch.bincount(index, minlength=n).double()
    sums = torch.bincount(index, weights=y.double(), minlength=n)
    return (sums / counts.clamp(min=1)).numpy(), counts.numpy().astype(int)


def most_rated(count: np.ndarray, names, top: int) -> np.ndarray:
    """The indices of the `top` most-rated items (index 0, the unknown-id slot, never), as the lesson picks them.

    fastai's notebook takes `ratings.groupby('title')['rating'].count()` (titles in order), sorts it descending
    and keeps the first 1000; its sort is not stable, so ties at the cut fall either way. Here the sort is stable
    over the titles in order: a tie at the cut keeps the titles that come first.
    """
    by_title = sorted(range(1, len(count)), key=lambda i: str(names[i]))
    ranked = sorted(by_title, key=lambda i: -count[i])  # stable: equal counts stay in title order
    return np.array(sorted(ranked[:top]), dtype=int)


def keep(count: np.ndarray, names, min_ratings: int = MIN_RATINGS, top: Optional[int] = None) -> np.ndarray:
    """The item (or user) indices a table keeps: the `top` most-rated if `top` is given, those with at least
    `min_ratings` ratings among them; never index 0."""
    index = most_rated(count, names, top) if top is not None else np.arange(1, len(count))
    return index[count[index] >= min_ratings]


def bias_tables(model, data, min_ratings: int = MIN_RATINGS,
                top: Optional[int] = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(items, users): name, bias, mean_rating, n_ratings, sorted by bias; items under min_ratings left out, and
    with `top`, every item but the `top` most-rated (the lesson's protocol: top=1000); users by min_ratings."""
    x, y = ratings(data)
    out = []
    for col, name, vocab, bias, n in ((1, "title", data.vocab["items"], learned(model, "item_bias"), top),
                                      (0, "user", data.vocab["users"], learned(model, "user_bias"), None)):
        mean, count = _stats(x[:, col], y, len(vocab))
        table = pd.DataFrame({name: vocab, "bias": bias.squeeze(1).numpy(), "mean_rating": mean,
                              "n_ratings": count})
        out.append(table.iloc[keep(count, vocab, min_ratings, n)].sort_values("bias")
                   .reset_index(drop=True))
    return out[0], out[1]


def spearman(table: pd.DataFrame) -> float:
    """The rank correlation between bias and mean rating (nan for fewer than 3 rows)."""
    # Pearson's correlation of the ranks (ties averaged) is Spearman's; pandas' method="spearman" imports scipy
    return float(table.bias.rank().corr(table.mean_rating.rank())) if len(table) >= 3 else float("nan")


def pca(model, data, min_ratings: int = MIN_RATINGS, k: int = 3, ends: int = 10, top: Optional[int] = None):
    """(per-item components, explained variance ratios, the `ends` items at each end of each component), over the
    items `bias_tables` keeps."""
    x, y = ratings(data)
    _, count = _stats(x[:, 1], y, len(data.vocab["items"]))
    kept = keep(count, data.vocab["items"], min_ratings, top)
    w = learned(model, "item_factors").double().numpy()[kept]
    if len(kept) < k + 1:
        return pd.DataFrame(columns=["title", "n_ratings", *[f"pc{i + 1}" for i in range(k)]]), [], pd.DataFrame()
    centred = w - w.mean(0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    comps = centred @ vt[:k].T
    explained = (s[:k] ** 2 / (s**2).sum()).tolist()
    table = pd.DataFrame({"title": [data.vocab["items"][i] for i in kept], "n_ratings": count[kept],
                          **{f"pc{i + 1}": comps[:, i] for i in range(k)}})
    rows = []
    for i in range(k):
        ordered = table.sort_values(f"pc{i + 1}")
        for end, part in (("low", ordered.head(ends)), ("high", ordered.tail(ends)[::-1])):
            rows += [{"component": i + 1, "explained_variance": explained[i], "end": end, "rank": r + 1,
                      "title": t, "value": v} for r, (t, v) in enumerate(zip(part.title, part[f"pc{i + 1}"]))]
    return table, explained, pd.DataFrame(rows)


def artifacts(model, data, min_ratings: int = MIN_RATINGS,
              top: Optional[int] = None) -> tuple[dict[str, bytes], dict[str, float], pd.DataFrame]:
    """(files to log, metrics to log, the item table): the CSVs, and the JSON the plots are drawn from."""
    items, users = bias_tables(model, data, min_ratings, top)
    comps, explained, ends = pca(model, data, min_ratings, top=top)
    rho = spearman(items)
    labelled = comps.sort_values("n_ratings").tail(40)
    extremes = pd.concat([items.head(5), items.tail(5)])
    files = {"interpret/item_bias.csv": items.to_csv(index=False).encode(),
             "interpret/user_bias.csv": users.to_csv(index=False).encode(),
             "interpret/pca.csv": comps.to_csv(index=False).encode(),
             "interpret/pca_ends.csv": ends.to_csv(index=False).encode(),
             "interpret/bias.json": json.dumps({
                 "mean_rating": items.mean_rating.round(4).tolist(), "bias": items.bias.round(4).tolist(),
                 "spearman": rho if rho == rho else 0.0,
                 "labels": [[t, m, b] for t, m, b in zip(extremes.title, extremes.mean_rating, extremes.bias)],
             }).encode()}
    if len(explained) >= 2:
        files["interpret/pca.json"] = json.dumps({"x": labelled.pc1.tolist(), "y": labelled.pc2.tolist(),
                                                  "titles": labelled.title.tolist(),
                                                  "explained": explained}).encode()
    metrics = {"interpret_spearman_bias_mean_rating": rho} if rho == rho else {}
    return files, metrics, items
