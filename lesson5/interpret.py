"""Apps: `lesson5-interpret <run id> [top=N] [min_ratings=N] [tracking.uri=URI]` (or `python -m lesson5.interpret`):
what a collab model learned, as the lesson reads it, logged to that run.

Which items: `top=1000` ranks the 1,000 most-rated items, the lesson's protocol (fastai's course-v3 notebook keeps
the top 1000 of `ratings.groupby('title')['rating'].count()`); `min_ratings=N` leaves out items with fewer than N
ratings (default 50 without `top`, 0 with it; both apply when both are given).

- `interpret/item_bias.csv`: every kept item's `title`, `bias`, `mean_rating` and `n_ratings`, sorted by bias;
  the terminal shows the 15 lowest and the 15 highest.
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

import pandas as pd

from lesson5 import cli
from lesson5.bias import LESSON_TOP, MIN_RATINGS, artifacts
from lesson5.errors import ConfigError

SHOW = 15
PCA_ITEMS = 4  # the fewest items the 3 principal components take


def which(min_ratings: int, top: Optional[int] = None) -> str:
    """The items a table keeps, in words: `the 1000 most-rated items`, `items with >= 50 ratings`."""
    words = [f"the {top} most-rated items"] if top is not None else []
    if min_ratings > 0 or top is None:
        words.append(f"{'those' if words else 'items'} with >= {min_ratings} ratings")
    return ", ".join(words)


def min_ratings_for(min_ratings: Optional[int], top: Optional[int]) -> int:
    """min_ratings= as given, else 50 without top= and 0 with it (the lesson's protocol has no count threshold)."""
    return min_ratings if min_ratings is not None else (MIN_RATINGS if top is None else 0)


def refuse_empty(loaded, min_ratings: int, top: Optional[int], need_items: int = PCA_ITEMS,
                 users: bool = True) -> None:
    """A ConfigError, before anything is logged, when min_ratings= and top= keep fewer than `need_items` items (or,
    with `users`, no user): an empty table must not replace a run's results. It names the key, how many there
    are, and the largest value that keeps enough."""
    import numpy as np

    from lesson5.bias import keep, most_rated, ratings

    x, _ = ratings(loaded.data)
    names = loaded.data.vocab["items"]
    counts = np.bincount(x[:, 1].numpy(), minlength=len(names))
    kept = len(keep(counts, names, min_ratings, top))
    n_items = len(names) - 1
    where = f"run {loaded.run_id}'s data has {n_items} items"
    if kept < need_items:
        pool = most_rated(counts, names, top) if top is not None else np.arange(1, len(names))
        what = f"{need_items} items" + (" (the principal components need 4)" if need_items == PCA_ITEMS else "")
        if len(pool) < need_items:
            raise ConfigError(f"top={top} keeps {len(pool)} items, fewer than the {what}; {where}: give top="
                              f"{need_items} or more")
        enough = int(np.sort(counts[pool])[::-1][need_items - 1])
        raise ConfigError(f"min_ratings={min_ratings} keeps {kept} items, fewer than the {what}: {where}"
                          + (f", the {top} most-rated among them" if top is not None else "")
                          + f", and the most-rated has {int(counts[pool].max())} ratings. Give min_ratings={enough} "
                            f"or less (nothing was logged: the run's interpret/ files are as they were)")
    if users:
        user_counts = np.bincount(x[:, 0].numpy(), minlength=len(loaded.data.vocab["users"]))[1:]
        if not (user_counts >= min_ratings).any():
            raise ConfigError(f"min_ratings={min_ratings} keeps no user: the most active of run {loaded.run_id}'s "
                              f"{len(user_counts)} users has {int(user_counts.max())} ratings. Give min_ratings="
                              f"{int(user_counts.max())} or less (nothing was logged: the run's interpret/ files are "
                              f"as they were)")


def show(items: pd.DataFrame, min_ratings: int, rho: float, file=None, top: Optional[int] = None) -> None:
    """The lesson's two tables: the 15 lowest and the 15 highest biases."""
    file = file or sys.stdout
    if items.empty:
        print(f"No item is among {which(min_ratings, top)}: the table is empty. Lower min_ratings= or raise top=.",
              file=file)
        return
    with pd.option_context("display.width", 120, "display.max_colwidth", 45):
        print(f"Lowest item biases ({which(min_ratings, top)}):", file=file)
        print(items.head(SHOW).to_string(index=False, float_format="{:.3f}".format), file=file)
        print("\nHighest item biases:", file=file)
        print(items.tail(SHOW)[::-1].to_string(index=False, float_format="{:.3f}".format), file=file)
    print(f"\nSpearman correlation of bias and mean rating: {rho:.3f} ({len(items)} items)", file=file)


COMMAND = cli.Command(
    name="lesson5-interpret", module="lesson5.interpret",
    summary="what a finished collab run's model learned, as the lesson reads it (its biases, the principal "
            "components of its factors), printed and logged to that run as CSVs and plots.",
    example=f"0123456789abcdef0123456789abcdef top={LESSON_TOP}",
    arguments=(("run_id", "the MLflow run id of a finished collab run"),),
    options=(cli.Option("top", int, f"rank only the N most-rated items ({LESSON_TOP}: the lesson's protocol)",
                        low=1),
             cli.Option("min_ratings", int, f"leave out items with fewer ratings than this ({MIN_RATINGS} without "
                                            "top=, 0 with it)", low=0),
             cli.Option("tracking.uri", str, "the MLflow store that holds the run (default: lesson5's, "
                                             "sqlite:///mlflow.db in this folder)")))


def _interpret(args) -> int:
    from lesson5.load import load_run

    try:
        uri = cli.existing_store(args.tracking_uri)  # a missing SQLite file is not made into an empty store
        loaded = load_run(args.run_id, uri, kind="collab")
        min_ratings = min_ratings_for(args.min_ratings, args.top)
        refuse_empty(loaded, min_ratings, args.top)  # before anything replaces the run's interpret/ files
        files, metrics, items = artifacts(loaded.model, loaded.data, min_ratings, args.top)
        from lesson5 import plots

        tables = {k: json.loads(v) for k, v in files.items() if k.endswith(".json")}
        files.update(dict(plots.run_plots({}, tables)))
        loaded.log(files, metrics)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    show(items, min_ratings, metrics.get("interpret_spearman_bias_mean_rating", float("nan")), top=args.top)
    print(f"\nLogged {', '.join(sorted(files))} to run {args.run_id}.")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    """The `lesson5-interpret` command (argv: default sys.argv[1:]); its exit code."""
    return cli.run(COMMAND, argv, _interpret)


if __name__ == "__main__":
    sys.exit(main())
