"""Core: where a fit's batches come from. The Learner sees only `len(source)` and `source.epoch(gen)`.

Two sources share that interface:
- `TensorBatches`: whole in-memory tensors (MovieLens, MNIST), moved to the device once. A batch is a slice of
  the data gathered into shuffled order once per epoch, with no per-row Dataset/DataLoader cost.
- `LoaderBatches`: a torch `DataLoader` over a `Dataset`, with workers and transforms, for data that does not fit
  in memory as one tensor (image folders, augmentation).

Both shuffle with `torch.randperm(n, generator=gen)`, so on the same rows and seed they give the same batches.

A training source made with `drop_one` (models with BatchNorm, which cannot train on one row) leaves out a last
batch of one row: the epoch's last row in its shuffled order, so each epoch another (`drops_one` says whether a
part has one).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from typing import Optional, Union

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

Batch = tuple[Tensor, Tensor]
# A fold's train or valid part, as data modules return it: (inputs, targets) tensors, or a Dataset of pairs.
Part = Union[tuple[Tensor, Tensor], Dataset]

# Up to this size a dataset is gathered into shuffled order once per epoch and batches are free slices of it;
# beyond, allocating (and page-faulting) a fresh copy each epoch costs more than gathering each batch.
PERMUTE_MAX_BYTES = 1 << 24
VALID_TENSOR_BS = 8192  # in-memory validation needs no small batches: fewer, larger calls


def size(part: Part) -> int:
    """The rows of a fold's part."""
    return len(part[1]) if isinstance(part, tuple) else len(part)


def _rows(n: int, bs: int, drop_one: bool) -> int:
    """The rows an epoch uses: all of them, or with `drop_one` all but a last batch of one row."""
    return n - 1 if drop_one and n > 1 and n % bs == 1 else n


def drops_one(part: Part, bs: int) -> bool:
    """Whether batches of `bs` leave a last batch of one row in this part (what `drop_one` leaves out)."""
    return _rows(size(part), bs, True) < size(part)


class TensorBatches:
    """Batches sliced from (x, y) tensors held on the device."""

    def __init__(self, x: Tensor, y: Tensor, bs: int, device: torch.device, drop_one: bool = False):
        self.x, self.y, self.bs, self.device = x.to(device), y.to(device), bs, device
        self.n = _rows(len(y), bs, drop_one)

    def __len__(self) -> int:
        return math.ceil(self.n / self.bs)

    def epoch(self, gen: Optional[torch.Generator] = None) -> Iterator[Batch]:
        """One pass: in order when `gen` is None, else in a fresh random order drawn from it."""
        x, y, bs = self.x, self.y, self.bs
        if gen is None:
            n = self.n
            return zip(x[:n].split(bs), y[:n].split(bs)) if n < len(y) else zip(x.split(bs), y.split(bs))
        perm = torch.randperm(len(y), generator=gen)[: self.n].to(self.device)
        if x.nbytes + y.nbytes <= PERMUTE_MAX_BYTES:
            return zip(x.index_select(0, perm).split(bs), y.index_select(0, perm).split(bs))
        return ((x.index_select(0, idx), y.index_select(0, idx)) for idx in perm.split(bs))


class _Order(Sampler[int]):
    """Row order for one epoch: a permutation from the generator set just before it, or 0..n-1."""

    def __init__(self, n: int):
        self.n, self.gen = n, None

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.n) if self.gen is None else torch.randperm(self.n, generator=self.gen).tolist())


class _Chunks(Sampler[list[int]]):
    """The order's rows in batches of `bs`, less a last batch of one row with `drop_one`."""

    def __init__(self, order: _Order, bs: int, drop_one: bool):
        self.order, self.bs, self.n = order, bs, _rows(order.n, bs, drop_one)

    def __len__(self) -> int:
        return math.ceil(self.n / self.bs)

    def __iter__(self) -> Iterator[list[int]]:
        # a generator: the order is drawn at the first batch, not when iter() is called (torch's first loader
        # iterator calls it twice, and an eager draw took the epoch's shuffle from the generator twice)
        rows = list(self.order)[: self.n]
        for i in range(0, self.n, self.bs):
            yield rows[i : i + self.bs]


def _own_process_group(worker_id: int) -> None:
    """A DataLoader worker leaves the process group: SIGINT or SIGTERM sent to the group (Ctrl-C, `scancel`)
    would kill it, and torch would then fail the fit ("DataLoader worker ... is killed by signal") while the main
    process closes the run as KILLED. The main process ends its workers itself (and a worker whose main process
    dies exits on its own); ignoring the signals instead would also ignore multiprocessing's terminate at exit."""
    os.setpgid(0, 0)


class LoaderBatches:
    """Batches from a DataLoader over `dataset`; workers persist across epochs, and across fits of a Learner."""

    def __init__(self, dataset: Dataset, bs: int, device: torch.device, num_workers: int = 0, drop_one: bool = False):
        self.order, self.device = _Order(len(dataset)), device
        self.loader = DataLoader(dataset, batch_sampler=_Chunks(self.order, bs, drop_one), num_workers=num_workers,
                                 pin_memory=device.type == "cuda", persistent_workers=num_workers > 0,
                                 worker_init_fn=_own_process_group if num_workers > 0 else None)

    def __len__(self) -> int:
        return len(self.loader)

    def epoch(self, gen: Optional[torch.Generator] = None) -> Iterator[Batch]:
        """One pass: in order when `gen` is None, else shuffled by it (the sampler runs in this process)."""
        self.order.gen = gen
        for xb, yb in self.loader:
            yield xb.to(self.device, non_blocking=True), yb.to(self.device, non_blocking=True)


Batches = Union[TensorBatches, LoaderBatches]


def batches(part: Part, bs: int, device: torch.device, *, train: bool, num_workers: int = 0,
            drop_one: bool = False) -> Batches:
    """The source for a fold's part: tensors stay whole on the device, a Dataset goes through a DataLoader.
    Validation over in-memory tensors uses large batches; over a Dataset, twice the training batch. `drop_one`
    (training only) leaves out a last batch of one row, which BatchNorm cannot train on."""
    drop_one = drop_one and train
    if isinstance(part, tuple):
        return TensorBatches(*part, bs if train else max(bs, VALID_TENSOR_BS), device, drop_one)
    return LoaderBatches(part, bs if train else 2 * bs, device, num_workers, drop_one)
