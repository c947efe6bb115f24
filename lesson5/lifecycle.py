"""Services: one tracked run, from its start to its end, for every entry point.

The command line, sweep trials, the claims report, transfer, the lr finder and the benchmarks all go through here:

- `quiet_config(overrides)`: a config for code that runs many, without a progress bar or an MLflow model, and
  untracked unless asked;
- `TrackedRun`: one MLflow run as a context manager. Entering starts it (params, tags, `config.yaml`, the data set
  input) under its parent, if any; leaving ends it with the status and `outcome` tag of however the block ended
  (`lesson5.outcome`). In between it takes metrics, artifacts and the MLflow model. Without a tracker
  (`tracking=none`) it does nothing, so callers need no branch for it;
- `TrackMetrics`: the callback that streams a fit's recorded values into a TrackedRun.
"""

from __future__ import annotations

import copy
import io
import json
import platform
from collections.abc import Callable, Sequence
from typing import Any, Optional

import torch
from omegaconf import DictConfig, OmegaConf

import lesson5
from lesson5 import metrics, naming
from lesson5.callback import Callback
from lesson5.config import Config, compose
from lesson5.data import Data, Fold
from lesson5.errors import ConfigError
from lesson5.learner import Learner
from lesson5.outcome import Outcome, outcome
from lesson5.recorder import Recorder
from lesson5.tracking import Tracker, store
from lesson5.tracking.messages import Started

# What a config run among many leaves out: the progress bar and the MLflow model (seconds each, of no use there).
QUIET = ("trainer.progress=false", "tracking.log_model=false")


def quiet_config(overrides: Sequence[str] = (), *, track: bool = False, experiment: Optional[str] = None,
                 run_name: Optional[str] = None) -> DictConfig:
    """The config of `overrides` for code that runs many: quiet, and untracked unless `track` (then into
    `experiment`, named `run_name`, where given). The caller's overrides win over the quiet defaults."""
    cfg = compose([*QUIET, *([] if track else ["tracking=none"]), *overrides])
    if experiment is not None:
        cfg.tracking.experiment = experiment
    if run_name is not None:
        cfg.tracking.run_name = run_name
    return cfg


def run_weights(conf: Config, run_id: str, dest: str) -> str:
    """The `weights.pt` of lesson5 run `run_id` in conf's tracking store, downloaded into folder `dest`."""
    uri = store.resolve_uri(conf.tracking.uri)
    try:
        return store.download(uri, run_id, "weights.pt", dest)
    except Exception as e:  # noqa: BLE001 - no such run, or it logged no weights
        raise ConfigError(f"model.weights={conf.model.weights}: could not get weights.pt of run {run_id} from {uri} "
                          f"({type(e).__name__}: {str(e).splitlines()[0]}). Check the run id and tracking.uri.") \
            from None


def standard_tags(conf: Config, params: dict[str, Any], name: str, overrides: Sequence[str],
                  device: torch.device) -> dict[str, str]:
    """The tags every lesson5 run starts with: what ran, where, and MLflow's own source and note columns."""
    return {"overrides": " ".join(overrides) or "(defaults)", "torch_version": torch.__version__,
            "lesson5_version": lesson5.__version__, "python_version": platform.python_version(),
            "device": str(device), "seed": str(conf.trainer.seed), "model": conf.model.name,
            "data": conf.data.name, "seed_group": naming.seed_group(conf, params),
            "mlflow.source.name": naming.source_name(), "mlflow.source.type": "LOCAL",
            "mlflow.source.git.commit": store.git_commit(), "mlflow.note.content": naming.note(conf, name, overrides)}


def dataset_input(conf: Config, data: Data) -> dict[str, str]:
    """The run's MLflow dataset input: the data set's name, content digest, source and size."""
    info = data.info
    profile = {k: v for k, v in info.items() if k.startswith("n_")}
    return {"name": str(info.get("variant", conf.data.name)), "digest": str(info.get("digest", "unknown")),
            "source": str(info.get("source", conf.data.name)), "source_type": "local",
            "profile": json.dumps(profile)}


class TrackedRun:
    """One MLflow run, from `with` to its end; every method does nothing without a tracker."""

    def __init__(self, tracker: Optional[Tracker], *, experiment: str, name: Optional[str],
                 params: Optional[dict[str, Any]] = None, tags: Optional[dict[str, str]] = None,
                 files: Optional[dict[str, bytes]] = None, parent: Optional[int | str] = None,
                 datasets: Sequence[dict[str, str]] = (),
                 end_tags: Optional[Callable[[Outcome], dict[str, str]]] = None):
        self.tracker, self.rid = tracker, None
        self._start = dict(experiment=experiment, name=name, params=params or {}, tags=tags or {},
                           files=files or {}, parent=parent, datasets=list(datasets))
        self._end_tags = end_tags or (lambda end: {})

    @property
    def tracked(self) -> bool:
        return self.tracker is not None

    def __enter__(self) -> TrackedRun:
        if self.tracker is None:
            return self
        self.rid = self.tracker.start_run(**self._start)
        parent = self._start["parent"]
        if isinstance(parent, str) and parent not in self.tracker.parents_seen:
            self.tracker.run_info(self.rid)  # a parent that does not exist fails here, before any training
            self.tracker.parents_seen.add(parent)  # later runs under it (a worker's trials) need not wait
        return self

    def __exit__(self, kind, error, tb) -> bool:
        if self.rid is not None:
            end = outcome(error)
            self.tracker.end_run(self.rid, end.status, {**end.tags(), **self._end_tags(end)})
        return False  # whatever ended the block goes on up

    def log_metrics(self, rows: Sequence[tuple[str, float, int]]) -> None:
        """(key, value, step) rows."""
        if self.rid is not None and rows:
            self.tracker.log_metrics(self.rid, list(rows))

    def log_files(self, files: dict[str, bytes]) -> None:
        """Artifacts by their path in the run."""
        if self.rid is not None:
            self.tracker.log_files(self.rid, files)

    def log_fit(self, conf: Config, data: Data, fold: Fold, learn: Learner) -> None:
        """What a fold's run logs as it ends: the weights, the tables its plots are drawn from, what a collab
        model learned (`tracking.interpret`) and, with `tracking.log_model`, the MLflow model."""
        if self.rid is None:
            return
        files, found = fit_artifacts(conf, data, fold, learn)
        self.log_metrics([(k, v, learn.step) for k, v in found.items()])
        self.log_files(files)
        if conf.tracking.log_model:
            self.tracker.log_model(self.rid, mlflow_model(learn.model, fold))

    def callback(self, conf: Config, recorder: Recorder) -> list[Callback]:
        """The callbacks that stream a fit into this run (none when untracked)."""
        if self.rid is None:
            return []
        return [TrackMetrics(self.tracker, self.rid, recorder, conf.tracking.log_every_n_steps,
                             conf.tracking.flush_every)]

    def info(self) -> Optional[Started]:
        """The MLflow run id and experiment id, once the writer has created the run."""
        return self.tracker.run_info(self.rid) if self.rid is not None else None


def _weights(model: torch.nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, buf)
    return buf.getvalue()


def _input(part, i: int) -> torch.Tensor:
    """Input i of a fold's part ((x, y) tensors or a Dataset of (x, y) pairs)."""
    return part[0][i] if isinstance(part, (tuple, list)) else part[i][0]


def _size(part) -> int:
    return len(part[1]) if isinstance(part, (tuple, list)) else len(part)


def fit_artifacts(conf: Config, data: Data, fold: Fold, learn: Learner) -> tuple[dict[str, bytes], dict[str, float]]:
    """(files, metrics) a fold's run logs as it ends: the weights, the tables its plots are drawn from (confusion
    matrix and most-wrong images for classifiers) and, for collab, what the model learned (lesson5.bias)."""
    from lesson5 import bias  # pandas' tables: only for collab runs that interpret

    files = {"weights.pt": _weights(learn.model)}
    for name, table in metrics.tables(learn.valid_out, learn.valid_y, learn.loss_name).items():
        files[name] = json.dumps(table).encode()
    found = {"train_seconds": learn.train_seconds}
    if learn.loss_name == "cross_entropy":
        files["most_wrong.json"] = json.dumps(metrics.most_wrong(
            learn.valid_out, learn.valid_y, lambda i: _input(fold.valid, i), data.vocab.get("classes"))).encode()
    if conf.tracking.interpret and conf.model.name == "collab":
        more, learned, _ = bias.artifacts(learn.model, data)
        files.update(more)
        found.update(learned)
    return files, found


def mlflow_model(model: torch.nn.Module, fold: Fold) -> bytes:
    """The payload of an MLflow model: the CPU model in eval mode and an example batch with its output (for the
    signature), pickled here so that the writer, not the trainer, pays for MLflow's model code."""
    x = torch.stack([_input(fold.valid, i) for i in range(min(5, _size(fold.valid)))])
    model = copy.deepcopy(model).cpu().eval()
    with torch.no_grad():
        out = model(x)
    buf = io.BytesIO()
    torch.save({"model": model, "input": x, "output": out}, buf)
    return buf.getvalue()


def config_yaml(cfg: DictConfig) -> bytes:
    return OmegaConf.to_yaml(cfg, resolve=True).encode()


class TrackMetrics(Callback):
    """Sends the recorder's values at every `every`-th global step and at each epoch's and fit's last step, in
    chunks of about `flush_every` steps, and the epoch metrics at each epoch's last step. A fit that stops
    partway (diverged, interrupted, pruned) still sends its steps up to there."""

    order = 30  # after the recorder

    def __init__(self, tracker: Tracker, rid: int, recorder: Recorder, every: int = 10, flush_every: int = 256):
        self.tracker, self.rid, self.rec = tracker, rid, recorder
        self.every, self.flush_every = every, flush_every
        self.sent = 0  # recorder entries already looked at

    def _flush(self, last: bool) -> None:
        """Send the unsent steps that fall on the `every` grid; with `last`, the latest recorded step too."""
        n = self.rec.settle()
        rec, rows = self.rec, []
        for i in range(self.sent, n):
            s = rec.steps[i]
            if s % self.every == 0 or (last and i == n - 1):
                rows += [("train_loss_step", rec.losses[i], s), ("lr", rec.lrs[i], s)]
                if rec.moms[i] is not None:
                    rows.append(("momentum", rec.moms[i], s))
        if rows:
            self.tracker.log_metrics(self.rid, rows)
        self.sent = n

    def after_step(self, learn: Learner) -> None:
        if len(self.rec.steps) - self.sent >= self.flush_every:
            self._flush(last=False)

    def after_epoch(self, learn: Learner) -> None:
        self._flush(last=True)
        rows = [(k, v, learn.step) for k, v in learn.metrics.items()] + [("epoch", learn.epoch + 1, learn.step)]
        self.tracker.log_metrics(self.rid, rows)
        self.tracker.check()

    def after_fit(self, learn: Learner) -> None:
        self._flush(last=True)  # nothing left after a whole fit; a stopped one sends its steps up to the stop
