"""Core: what a collab model learned, as the lesson reads it: each item's and user's bias beside its mean rating,
their rank correlation, and the principal components of the item factors. Pure torch, numpy and pandas, so every
collab run computes it as it ends (`lesson5.lifecycle`) and `python -m lesson5.interpret` for a finished run.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import torch

MIN_RATINGS = 50  # as the lesson looks at the most-rated movies (its top 1000 of 1,682 have about 30 or more)


def ratings(data) -> tuple[torch.Tensor, torch.Tensor]:
    """Every rating of the data set once: the first fold's train and valid parts together."""
    fold = data.folds[0]
    return torch.cat([fold.train[0], fold.valid[0]]), torch.cat([fold.train[1], fold.valid[1]])


def _stats(index: torch.Tensor, y: torch.Tensor, n: int) -> tuple[np.ndarray, np.ndarray]:
    counts = torch.bincount(index, minlength=n).double()
    sums = torch.bincount(index, weights=y.double(), minlength=n)
    return (sums / counts.clamp(min=1)).numpy(), counts.numpy().astype(int)


def bias_tables(model, data, min_ratings: int = MIN_RATINGS) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(items, users): name, bias, mean_rating, n_ratings, sorted by bias, those under min_ratings left out."""
    x, y = ratings(data)
    out = []
    for col, name, vocab, bias in ((1, "title", data.vocab["items"], model.item_bias.weight),
                                   (0, "user", data.vocab["users"], model.user_bias.weight)):
        mean, count = _stats(x[:, col], y, len(vocab))
        table = pd.DataFrame({name: vocab, "bias": bias.detach().cpu().squeeze(1).numpy(), "mean_rating": mean,
                              "n_ratings": count}).iloc[1:]  # index 0 is the unknown-id slot
        out.append(table[table.n_ratings >= min_ratings].sort_values("bias").reset_index(drop=True))
    return out[0], out[1]


def spearman(table: pd.DataFrame) -> float:
    """The rank correlation between bias and mean rating (nan for fewer than 3 rows)."""
    # Pearson's correlation of the ranks (ties averaged) is Spearman's; pandas' method="spearman" imports scipy
    return float(table.bias.rank().corr(table.mean_rating.rank())) if len(table) >= 3 else float("nan")


def pca(model, data, min_ratings: int = MIN_RATINGS, k: int = 3, ends: int = 10):
    """(per-item components, explained variance ratios, the `ends` items at each end of each component)."""
    x, y = ratings(data)
    _, count = _stats(x[:, 1], y, len(data.vocab["items"]))
    keep = np.flatnonzero(count >= min_ratings)
    keep = keep[keep > 0]
    w = model.item_factors.weight.detach().cpu().double().numpy()[keep]
    if len(keep) < k + 1:
        return pd.DataFrame(columns=["title", "n_ratings", *[f"pc{i + 1}" for i in range(k)]]), [], pd.DataFrame()
    centred = w - w.mean(0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    comps = centred @ vt[:k].T
    explained = (s[:k] ** 2 / (s**2).sum()).tolist()
    table = pd.DataFrame({"title": [data.vocab["items"][i] for i in keep], "n_ratings": count[keep],
                          **{f"pc{i + 1}": comps[:, i] for i in range(k)}})
    rows = []
    for i in range(k):
        ordered = table.sort_values(f"pc{i + 1}")
        for end, part in (("low", ordered.head(ends)), ("high", ordered.tail(ends)[::-1])):
            rows += [{"component": i + 1, "explained_variance": explained[i], "end": end, "rank": r + 1,
                      "title": t, "value": v} for r, (t, v) in enumerate(zip(part.title, part[f"pc{i + 1}"]))]
    return table, explained, pd.DataFrame(rows)


def artifacts(model, data, min_ratings: int = MIN_RATINGS) -> tuple[dict[str, bytes], dict[str, float], pd.DataFrame]:
    """(files to log, metrics to log, the item table): the CSVs, and the JSON the plots are drawn from."""
    items, users = bias_tables(model, data, min_ratings)
    comps, explained, ends = pca(model, data, min_ratings)
    rho = spearman(items)
    top = comps.sort_values("n_ratings").tail(40)
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
        files["interpret/pca.json"] = json.dumps({"x": top.pc1.tolist(), "y": top.pc2.tolist(),
                                                  "titles": top.title.tolist(), "explained": explained}).encode()
    metrics = {"interpret_spearman_bias_mean_rating": rho} if rho == rho else {}
    return files, metrics, items
