"""Apps: `lesson5-recommend <run id> user=<id>|new [k=10] [min_ratings=50] [top=N] [tracking.uri=URI]` (or
`python -m lesson5.recommend`): recommendations from a trained collab run.

- A known user: the top-k items they have not rated, by predicted rating.
- `user=new`: the lesson's cold-start advice, with nothing known of the user but the movies: the top-k items by
  learned bias among well-rated ones (at least `min_ratings` ratings; with `top=N`, among the N most-rated, as
  `lesson5-interpret` picks them), the movies liked whatever the viewer's taste.
"""

from __future__ import annotations

import sys
from typing import Optional

import pandas as pd
import torch

from lesson5 import cli
from lesson5.errors import ConfigError


def for_user(loaded, user: str, k: int = 10) -> pd.DataFrame:
    """The top-k unseen items for a known user, by predicted rating."""
    from lesson5.bias import ratings

    users, items = loaded.data.vocab["users"], loaded.data.vocab["items"]
    index = {str(u): i for i, u in enumerate(users) if i > 0}
    if user not in index:
        raise ConfigError(f"user={user} is not among the {len(index)} users of run {loaded.run_id}'s data "
                          f"({loaded.conf.data.name}); use one of its user ids, or user=new")
    u = index[user]
    x, _ = ratings(loaded.data)
    seen = set(x[x[:, 0] == u, 1].tolist())
    candidates = torch.tensor([i for i in range(1, len(items)) if i not in seen])
    with torch.no_grad():
        pred = loaded.model(torch.stack([torch.full_like(candidates, u), candidates], 1))
    top = pred.topk(min(k, len(candidates)))
    return pd.DataFrame({"title": [items[candidates[i]] for i in top.indices.tolist()],
                         "predicted_rating": top.values.numpy()})


def for_new_user(loaded, k: int = 10, min_ratings: int = 50, top: Optional[int] = None) -> pd.DataFrame:
    """The cold-start list: the top-k items by bias among items with at least min_ratings ratings (and among the
    `top` most-rated, if given)."""
    from lesson5.bias import bias_tables

    items, _ = bias_tables(loaded.model, loaded.data, min_ratings, top)
    return items.sort_values("bias", ascending=False).head(k).reset_index(drop=True)


COMMAND = cli.Command(
    name="lesson5-recommend", module="lesson5.recommend",
    summary="recommendations from a trained collab run: a known user's top-k unseen items by predicted rating, "
            "or with user=new the lesson's cold-start list (the top-k items by learned bias).",
    example="0123456789abcdef0123456789abcdef user=new k=5",
    arguments=(("run_id", "the MLflow run id of a finished collab run"),),
    options=(cli.Option("user", str, "a user id of the run's data, or new", required=True),
             cli.Option("k", int, "how many items to list", default=10, low=1),
             cli.Option("min_ratings", int, "user=new: only items with at least this many ratings", default=50,
                        low=0),
             cli.Option("top", int, "user=new: only the N most-rated items (1000: the lesson's protocol)", low=1),
             cli.Option("tracking.uri", str, "the MLflow store that holds the run (default: lesson5's, "
                                             "sqlite:///mlflow.db in this folder)")))


def _recommend(args) -> int:
    from lesson5.load import load_run

    try:
        uri = cli.existing_store(args.tracking_uri)  # a missing SQLite file is not made into an empty store
        loaded = load_run(args.run_id, uri, kind="collab")
        if args.user == "new":
            from lesson5.interpret import refuse_empty

            refuse_empty(loaded, args.min_ratings, args.top, need_items=1, users=False)
        table = (for_new_user(loaded, args.k, args.min_ratings, args.top) if args.user == "new"
                 else for_user(loaded, args.user, args.k))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    with pd.option_context("display.width", 120, "display.max_colwidth", 50):
        print(table.to_string(index=False, float_format="{:.3f}".format))
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    """The `lesson5-recommend` command (argv: default sys.argv[1:]); its exit code."""
    return cli.run(COMMAND, argv, _recommend)


if __name__ == "__main__":
    sys.exit(main())
