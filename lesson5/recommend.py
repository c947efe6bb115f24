"""`python -m lesson5.recommend <run id> user=<id>|new [k=10] [min_ratings=50] [overrides]`: recommendations from
a trained collab run.

- A known user: the top-k items they have not rated, by predicted rating.
- `user=new`: the lesson's cold-start advice, with nothing known of the user but the movies: the top-k items by
  learned bias among well-rated ones (at least `min_ratings` ratings), the movies liked whatever the viewer's taste.
"""

from __future__ import annotations

import sys
from typing import Optional

import pandas as pd
import torch

from lesson5.errors import ConfigError


def for_user(loaded, user: str, k: int = 10) -> pd.DataFrame:
    """The top-k unseen items for a known user, by predicted rating."""
    from lesson5.interpret import _ratings

    users, items = loaded.data.vocab["users"], loaded.data.vocab["items"]
    index = {str(u): i for i, u in enumerate(users) if i > 0}
    if user not in index:
        raise ConfigError(f"user={user} is not among the {len(index)} users of run {loaded.run_id}'s data "
                          f"({loaded.conf.data.name}); use one of its user ids, or user=new")
    u = index[user]
    x, _ = _ratings(loaded.data)
    seen = set(x[x[:, 0] == u, 1].tolist())
    candidates = torch.tensor([i for i in range(1, len(items)) if i not in seen])
    with torch.no_grad():
        pred = loaded.model(torch.stack([torch.full_like(candidates, u), candidates], 1))
    top = pred.topk(min(k, len(candidates)))
    return pd.DataFrame({"title": [items[candidates[i]] for i in top.indices.tolist()],
                         "predicted_rating": top.values.numpy()})


def for_new_user(loaded, k: int = 10, min_ratings: int = 50) -> pd.DataFrame:
    """The cold-start list: the top-k items by bias among items with at least min_ratings ratings."""
    from lesson5.interpret import bias_tables

    items, _ = bias_tables(loaded.model, loaded.data, min_ratings)
    return items.sort_values("bias", ascending=False).head(k).reset_index(drop=True)


def _count(opts: dict[str, str], key: str, default: int) -> int:
    try:
        value = int(opts.get(key, default))
    except ValueError:
        value = -1
    if value < 0:
        raise ConfigError(f"{key}={opts[key]}: expected a whole number >= 0")
    return value


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0].startswith("-") or "=" in argv[0]:
        print(__doc__, file=sys.stderr)
        return 2
    run_id, opts = argv[0], dict(a.split("=", 1) for a in argv[1:] if "=" in a)
    from lesson5.errors import Lesson5Error
    from lesson5.load import load_run

    try:
        if "user" not in opts:
            raise ConfigError("give user=<id> (a user of the run's data) or user=new")
        k, min_ratings = (_count(opts, key, default) for key, default in (("k", 10), ("min_ratings", 50)))
        loaded = load_run(run_id, opts.get("tracking.uri"), kind="collab")
        table = for_new_user(loaded, k, min_ratings) if opts["user"] == "new" else for_user(loaded, opts["user"], k)
    except (Lesson5Error, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    with pd.option_context("display.width", 120, "display.max_colwidth", 50):
        print(table.to_string(index=False, float_format="{:.3f}".format))
    return 0


if __name__ == "__main__":
    sys.exit(main())
