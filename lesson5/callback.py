"""Core: the callback protocol of the training loop (fastai's events), apart from the loop itself, so that the
schedule, the stages and the recorder can be callbacks without importing the Learner that calls them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the Learner calls callbacks; importing it at run time would be a cycle
    from lesson5.learner import Learner

EVENTS = ("before_fit", "before_epoch", "before_batch", "after_step", "after_epoch", "after_fit")


class CancelFit(Exception):
    """Raised by a callback to end a fit early by design (the lr finder once the loss explodes): `fit` returns."""


class Callback:
    """Hooks called by Learner.fit, in ascending `order`; each receives the learner and reads what it needs.

    after_fit also runs when the fit raises, so a callback can send or release what it holds.
    """

    order = 50

    def handles(self, event: str) -> bool:
        """Whether this callback does anything on `event` (the loop calls only those, per step each call counts)."""
        return getattr(type(self), event) is not getattr(Callback, event)

    def before_fit(self, learn: Learner) -> None: ...
    def before_epoch(self, learn: Learner) -> None: ...
    def before_batch(self, learn: Learner) -> None: ...
    def after_step(self, learn: Learner) -> None: ...
    def after_epoch(self, learn: Learner) -> None: ...
    def after_fit(self, learn: Learner) -> None: ...


class Wrapper(Callback):
    """A callback that runs another, `cb`, through `_call(event, learn)`, which decides what `cb` sees (one
    member of a stack, an ensemble of them) and when; it handles the events `cb` handles, in `cb`'s order."""

    def __init__(self, cb: Callback):
        self.cb, self.order = cb, cb.order

    def handles(self, event: str) -> bool:
        return self.cb.handles(event)

    def _call(self, event: str, learn: Learner) -> None:
        raise NotImplementedError

    def before_fit(self, learn):
        self._call("before_fit", learn)

    def before_epoch(self, learn):
        self._call("before_epoch", learn)

    def before_batch(self, learn):
        self._call("before_batch", learn)

    def after_step(self, learn):
        self._call("after_step", learn)

    def after_epoch(self, learn):
        self._call("after_epoch", learn)

    def after_fit(self, learn):
        self._call("after_fit", learn)
