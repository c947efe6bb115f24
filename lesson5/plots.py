"""Core: the figures logged with each run, drawn from its metric series (imported by the tracking writer only)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

Series = dict[str, list[tuple[int, float]]]
MAX_POINTS = 2000  # per line: a 700-pixel-wide PNG shows no more, and drawing more delays each run's end


def fixed_margins(fig) -> None:
    """Fixed margins that fit these plots' labels: tight_layout would lay all the text out twice, while the
    command waits for its run to close."""
    fig.subplots_adjust(left=0.12, right=0.87, bottom=0.12, top=0.92)


def _thin(points: list[tuple[int, float]]) -> tuple:
    """(steps, values) of every k-th point, the last one included; the full series stays in the run's metrics."""
    kept = points[:: -(-len(points) // MAX_POINTS)]
    if kept[-1] != points[-1]:
        kept.append(points[-1])
    return tuple(zip(*kept))


def loss_curve(series: Series):
    """Per-step train loss with the per-epoch validation loss on the same step axis."""
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(*_thin(series["train_loss_step"]), lw=0.6, alpha=0.7, label="train loss (per step)")
    if series.get("valid_loss"):  # logged at the global step that ends each epoch
        ax.plot(*zip(*series["valid_loss"]), "o-", label="valid loss (per epoch)")
    ax.set(xlabel="step", ylabel="loss", title="Loss")
    ax.legend()
    fixed_margins(fig)
    return fig


def schedule(series: Series):
    """The lr and momentum actually used at each step."""
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(*_thin(series["lr"]), color="tab:blue")
    ax.set(xlabel="step", ylabel="lr", title="Schedule")
    if series.get("momentum"):
        ax2 = ax.twinx()
        ax2.plot(*_thin(series["momentum"]), color="tab:orange")
        ax2.set_ylabel("momentum", color="tab:orange")
    fixed_margins(fig)
    return fig


def confusion(matrix: list[list[int]]):
    """Validation counts by true (rows) and predicted (columns) class."""
    n = len(matrix)
    fig, ax = plt.subplots(figsize=(6, 5.5))
    im = ax.imshow(matrix, cmap="Blues")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, matrix[i][j], ha="center", va="center", fontsize=7)
    ax.set(xlabel="predicted", ylabel="actual", title="Confusion matrix (validation)", xticks=range(n), yticks=range(n))
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return fig


def most_wrong(table: dict):
    """The validation images the model got most wrong: true and predicted label, and the loss."""
    items = table["items"]
    cols = 3
    rows = -(-len(items) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols, 2.5 * rows), squeeze=False)
    for ax, it in zip(axes.flat, items):
        ax.imshow(it["image"], cmap="gray")
        ax.set_title(f"true {it['true']} / pred {it['pred']}\nloss {it['loss']:.2f}", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle("Most wrong (validation)")
    fig.tight_layout()
    return fig


def bias_scatter(table: dict):
    """Each item's learned bias against its mean rating, the extremes labelled."""
    fig, ax = plt.subplots(figsize=(7, 5))
    ax.scatter(table["mean_rating"], table["bias"], s=6, alpha=0.5)
    for title, x, y in table["labels"]:
        ax.annotate(title[:28], (x, y), fontsize=6)
    ax.set(xlabel="mean rating", ylabel="learned bias",
           title=f"Item bias against mean rating (Spearman {table['spearman']:.2f})")
    fig.tight_layout()
    return fig


def pca_scatter(table: dict):
    """The most-rated items on the first two principal components of the item factors, labelled."""
    fig, ax = plt.subplots(figsize=(9, 7))
    ax.scatter(table["x"], table["y"], s=8, alpha=0.6)
    for title, x, y in zip(table["titles"], table["x"], table["y"]):
        ax.annotate(title[:24], (x, y), fontsize=6)
    v = table["explained"]
    ax.set(xlabel=f"PC1 ({v[0]:.0%} of variance)", ylabel=f"PC2 ({v[1]:.0%})",
           title="Item factors: principal components 1 and 2")
    fig.tight_layout()
    return fig


def png(fig) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


# JSON artifact -> (the PNG drawn from it, how)
TABLE_PLOTS = {"confusion_matrix.json": ("plots/confusion_matrix.png", confusion),
               "most_wrong.json": ("plots/most_wrong.png", most_wrong),
               "interpret/bias.json": ("interpret/bias_vs_mean_rating.png", bias_scatter),
               "interpret/pca.json": ("interpret/pca.png", pca_scatter)}


def run_plots(series: Series, tables: Optional[dict[str, object]] = None) -> Iterator[tuple[str, bytes]]:
    """(artifact path, PNG) for every plot the metric series and JSON artifacts allow."""
    tables = tables or {}
    drawable = [(f"plots/{name}.png", draw, series) for name, draw, needs in
                (("loss", loss_curve, "train_loss_step"), ("schedule", schedule, "lr")) if series.get(needs)]
    drawable += [(*TABLE_PLOTS[name], table) for name, table in tables.items() if name in TABLE_PLOTS]
    for path, draw, source in drawable:
        yield path, png(draw(source))
