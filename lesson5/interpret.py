"""Apps: `lesson5-interpret <run id> [min_ratings=N] [tracking.uri=URI]` (or `python -m lesson5.interpret`): what a
collab model learned, as the lesson reads it, logged to that run.

- `interpret/item_bias.csv`: every item's `title`, `bias`, `mean_rating` and `n_ratings`, sorted by bias (items
  with fewer than `min_ratings` ratings left out); the terminal shows the 15 lowest and the 15 highest.
- `interpret/user_bias.csv`: the same for users.
- `interpret/pca.csv`: the items' 3 principal components of their factors, with `interpret/pca_ends.csv` (the 10
  items at each end of each component, and its share of the variance) and `interpret/pca.png` (the most-rated
  items on the first two components, labelled).
- `interpret/bias_vs_mean_rating.png`, and the Spearman correlation between bias and mean rating as the run's
  metric `interpret_spearman_bias_mean_rating`.

Every collab run does this as it ends (`tracking.interpret`, on by default); this command does it for a finished
run, loaded back from MLflow alone (`lesson5.load`).
"""

from __future__ import annotations

import json
import sys
from typing import Optional

import numpy as np
import pandas as pd
import torch

from lesson5 import cli
from lesson5.errors import ConfigError

MIN_RATINGS = 50  # as the lesson looks at the most-rated movies (its top 1000 of 1,682 have about 30 or more)
SHOW = 15


def _ratings(data) -> tuple[torch.Tensor, torch.Tensor]:
    """Every rating of the data set once: the first fold's train and valid parts together."""
    fold = data.folds[0]
    return torch.cat([fold.train[0], fold.valid[0]]), torch.cat([fold.train[1], fold.valid[1]])


def _stats(index: torch.Tensor, y: torch.Tensor, n: int) -> tuple[np.ndarray, np.ndarray]:
    counts = torch.bincount(index, minlength=n).double()
    sums = torch.bincount(index, weights=y.double(), minlength=n)
    return (sums / counts.clamp(min=1)).numpy(), counts.numpy().astype(int)


def bias_tables(model, data, min_ratings: int = MIN_RATINGS) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(items, users): name, bias, mean_rating, n_ratings, sorted by bias, those under min_ratings left out."""
    x, y = _ratings(data)
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
    x, y = _ratings(data)
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
                 "labels": [[t, m, b] for t, m, b in zip(extremes.title, extremes.mean_rating, extremes.bias)]}).encode()}
    if len(explained) >= 2:
        files["interpret/pca.json"] = json.dumps({"x": top.pc1.tolist(), "y": top.pc2.tolist(),
                                                  "titles": top.title.tolist(), "explained": explained}).encode()
    metrics = {"interpret_spearman_bias_mean_rating": rho} if rho == rho else {}
    return files, metrics, items


def show(items: pd.DataFrame, min_ratings: int, rho: float, file=None) -> None:
    """The lesson's two tables: the 15 lowest and the 15 highest biases."""
    file = file or sys.stdout
    if items.empty:
        print(f"No item has {min_ratings} or more ratings: the table is empty. Lower min_ratings=.", file=file)
        return
    with pd.option_context("display.width", 120, "display.max_colwidth", 45):
        print(f"Lowest item biases (items with >= {min_ratings} ratings):", file=file)
        print(items.head(SHOW).to_string(index=False, float_format="{:.3f}".format), file=file)
        print("\nHighest item biases:", file=file)
        print(items.tail(SHOW)[::-1].to_string(index=False, float_format="{:.3f}".format), file=file)
    print(f"\nSpearman correlation of bias and mean rating: {rho:.3f} ({len(items)} items)", file=file)


COMMAND = cli.Command(
    name="lesson5-interpret", module="lesson5.interpret",
    summary="what a finished collab run's model learned, as the lesson reads it (its biases, the principal "
            "components of its factors), printed and logged to that run as CSVs and plots.",
    example="0123456789abcdef0123456789abcdef min_ratings=100",
    arguments=(("run_id", "the MLflow run id of a finished collab run"),),
    options=(cli.Option("min_ratings", int, "leave out items with fewer ratings than this", default=MIN_RATINGS,
                        low=0),
             cli.Option("tracking.uri", str, "the MLflow store that holds the run (default: lesson5's, "
                                             "sqlite:///mlflow.db in this folder)")))


def _interpret(args) -> int:
    from lesson5.load import load_run

    try:
        loaded = load_run(args.run_id, args.tracking_uri, kind="collab")
        files, metrics, items = artifacts(loaded.model, loaded.data, args.min_ratings)
        from lesson5 import plots

        tables = {k: json.loads(v) for k, v in files.items() if k.endswith(".json")}
        files.update(dict(plots.run_plots({}, tables)))
        loaded.log(files, metrics)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    show(items, args.min_ratings, metrics.get("interpret_spearman_bias_mean_rating", float("nan")))
    print(f"\nLogged {', '.join(sorted(files))} to run {args.run_id}.")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    """The `lesson5-interpret` command (argv: default sys.argv[1:]); its exit code."""
    return cli.run(COMMAND, argv, _interpret)


if __name__ == "__main__":
    sys.exit(main())
