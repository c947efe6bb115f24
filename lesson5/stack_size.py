"""Services: how many trials train as one stack (lesson5.stack), for a sweep's worker and the claims report alike.

`auto` takes the size measured best for the model on its device (benchmarks/bench_stack.py; BENCHMARKS.md): on a
CPU, collab gains up to about 8 and the classifiers' matmuls gain nothing; on a GPU, many. Never more than memory
holds (lesson5.run.stack_capacity); a size asked for that memory cannot hold is refused before any training.
"""

from __future__ import annotations

from typing import Optional, Union

from omegaconf import DictConfig

from lesson5.errors import ConfigError

AUTO = {("collab", "cpu"): 8, ("logistic", "cpu"): 1, ("mlp", "cpu"): 1}
AUTO_CUDA = 32


def stack_size(cfg: DictConfig, want: Union[int, str] = "auto") -> tuple[int, Optional[str]]:
    """(trials per stack, why it is one when it cannot be more) for trials of `cfg`'s shape, `want` being `auto`
    or a whole number."""
    from lesson5.config import validate
    from lesson5.run import pick_device, stack_capacity, stackable

    if want == 1:
        return 1, None
    conf = validate(cfg)
    why = stackable(conf)
    if why:
        return 1, why
    device = pick_device(conf.trainer.device, conf.model.name).type
    size = want if want != "auto" else AUTO_CUDA if device == "cuda" else AUTO.get((conf.model.name, device), 1)
    fits = stack_capacity(cfg) if size > 1 else 1
    if want != "auto" and size > fits:
        raise ConfigError(f"stack={size}: a stack of {size} trials of this shape does not fit in the memory free on "
                          f"{device}; the largest that fits is {fits} (or stack=auto)")
    return min(size, fits), None
