"""Apps: the one command-line style every entry point shares.

    lesson5-<command> [arguments] [key=value ...] [--config-dir DIR]

A command declares its options (`Option`: a key with a type, a range and a help line); any other `key=value` whose
key starts with a config group or field (model, data, trainer, tracking, experiment, hydra...) is a Hydra override,
taken as `python -m lesson5` takes it, for every run the command makes. `--config-dir DIR` adds a folder of the
user's own configs (`experiment/NAME.yaml`...) to Hydra's search path. `--help` prints what the command does, its
keys and an example. Exit codes, the same for every entry point: 0 done, 2 refused input, 130 interrupted (143
by SIGTERM).
"""

from __future__ import annotations

import math
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from lesson5.config import CONF_DIR, Config, searchpath
from lesson5.errors import Lesson5Error, describe
from lesson5.naming import plain_name  # noqa: F401 - an Option check the commands use as cli.plain_name

DONE, REFUSED, INTERRUPTED, TERMINATED = 0, 2, 130, 143
HELP = ("-h", "--help")
CONFIG_DIR = "--config-dir"
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


class UsageError(Lesson5Error):
    """A command line the command cannot take: it exits 2 with the usage."""


class _Help(Exception):
    """--help was asked for."""


@dataclass(frozen=True)
class Option:
    """A `key=value` option: its type (int, float, bool, str, Path or list), allowed range and help line."""

    key: str
    type: type
    help: str
    default: Any = None
    low: Optional[float] = None  # the smallest value allowed
    above: Optional[float] = None  # values must be greater than this
    high: Optional[float] = None  # the largest value allowed (where a larger one can only be a mistake)
    why_high: str = ""  # what the upper bound is, in words, for the message that refuses a larger value
    choices: Optional[Sequence[str]] = None  # for str, and for each item of a list
    required: bool = False
    check: Optional[Callable[[Any], Optional[str]]] = None  # what is wrong with a typed value (None: nothing)

    def allowed(self) -> str:
        """What the option takes, in words: `an integer >= 1`, `true or false`, `one of a, b`."""
        if self.type is bool:
            return "true or false"
        kind = {int: "an integer", float: "a number", Path: "a path"}.get(self.type, "a string")
        if self.choices is not None:
            kind = ("a comma-separated list of " if self.type is list else "one of ") + ", ".join(self.choices)
        elif self.type is list:
            kind = "a comma-separated list"
        low = f" >= {self.low:g}" if self.low is not None else ""
        above = f" > {self.above:g}" if self.above is not None else ""
        high = f" <= {self.high:g}" if self.high is not None else ""
        return kind + low + above + high

    def parse(self, text: str) -> Any:
        """The typed value of `key=text`, or a UsageError naming the key and what it takes."""
        bad = UsageError(f"{self.key}={text}: expected {self.allowed()}")
        if not text.strip():
            raise UsageError(f"{self.key}= is empty: give {self.allowed()}" + (f" (default {self.default})"
                                                                              if self.default is not None else ""))
        if self.type is bool:
            if text.lower() not in _TRUE + _FALSE:
                raise bad
            return self._checked(text, text.lower() in _TRUE)
        if self.type is list:
            items = [t.strip() for t in text.strip("[]").split(",") if t.strip()]
            if not items or (self.choices is not None and set(items) - set(self.choices)):
                raise bad
            return self._checked(text, items)
        try:
            value = self.type(text)
        except ValueError:
            raise bad from None
        if self.type is float and not math.isfinite(value):
            raise UsageError(f"{self.key}={text}: expected a finite number, {self.allowed()}")
        if self.high is not None and value > self.high:
            raise UsageError(f"{self.key}={text}: expected {self.allowed()}"
                             + (f" ({self.why_high})" if self.why_high else ""))
        if ((self.low is not None and value < self.low) or (self.above is not None and value <= self.above)
                or (self.choices is not None and value not in self.choices)):
            raise bad
        return self._checked(text, value)

    def _checked(self, text: str, value: Any) -> Any:
        problem = self.check(value) if self.check is not None else None
        if problem:
            raise UsageError(f"{self.key}={text}: {problem}")
        return value


@dataclass(frozen=True)
class Command:
    """An entry point: its console script, module, what it does, its arguments and options, and an example."""

    name: str  # the console script, e.g. lesson5-sync
    module: str  # for `python -m`, e.g. lesson5.sync
    summary: str  # what it does, in a sentence or two
    example: str  # a command line after the name
    arguments: tuple[tuple[str, str], ...] = ()  # positional (name, help), all required
    options: tuple[Option, ...] = ()
    overrides: str = ""  # what Hydra overrides apply to ("every trial"); empty: it takes none

    def usage(self) -> str:
        """The usage line and the keys, printed with a refused command line."""
        args = " ".join(f"<{a}>" for a, _ in self.arguments)
        opts = " [key=value ...]" if self.options or self.overrides else ""
        extra = f" [{CONFIG_DIR} DIR]" if self.overrides else ""
        lines = [f"usage: {self.name} {args}{opts}{extra}".replace("  ", " "), f"   or: python -m {self.module} ..."]
        if self.arguments:
            lines += ["", "arguments:", *(f"  {a:<20} {h}" for a, h in self.arguments)]
        if self.options:
            lines += ["", "options (key=value):"]
            for o in self.options:
                shown = str(o.default).lower() if o.type is bool else o.default
                default = "required" if o.required else f"default {shown}" if o.default is not None else ""
                notes = ", ".join(filter(None, [o.allowed() if o.type is not str or o.choices else "", default]))
                lines.append(f"  {o.key + '=':<20} {o.help}" + (f" ({notes})" if notes else ""))
        if self.overrides:
            lines += ["", f"Hydra overrides (key=value), for {self.overrides}: any key of the config, as `lesson5`",
                      "  takes them (trainer.epochs=3, data.path=DIR, tracking.uri=URI, experiment=NAME).",
                      f"  {CONFIG_DIR} DIR adds your own config folder (DIR/experiment/NAME.yaml...) to Hydra's",
                      "  search path, after the shipped configs; the same as hydra.searchpath=[file:///abs/DIR]."]
        return "\n".join(lines)

    def help(self) -> str:
        """The --help text: what the command does, its keys, exit codes and an example."""
        return (f"{self.name}: {self.summary}\n\n{self.usage()}\n\nexit codes: 0 done, 2 refused input, "
                f"130 interrupted (143 by SIGTERM)\n\nexample:\n  {self.name} {self.example}")

    def parse(self, argv: Sequence[str]) -> SimpleNamespace:
        """The arguments, options (typed, defaults filled in) and Hydra overrides in argv; UsageError if it
        holds anything this command does not take."""
        if any(a in HELP for a in argv):
            raise _Help
        options = {o.key: o for o in self.options}
        values: dict[str, Any] = {}
        positional: list[str] = []
        overrides: list[str] = []
        dirs: list[Path] = []
        rest = list(argv)
        while rest:
            arg = rest.pop(0)
            if self.overrides and (arg == CONFIG_DIR or arg.startswith(CONFIG_DIR + "=")):
                if arg == CONFIG_DIR and not rest:
                    raise UsageError(f"{CONFIG_DIR} needs a folder")
                dirs.append(config_dir(arg.split("=", 1)[1] if "=" in arg else rest.pop(0)))
            elif arg.startswith("-"):
                key = arg.lstrip("-").split("=", 1)[0].replace("-", "_")
                hint = f" (options are key=value: {key}=...)" if key in options else ""
                raise UsageError(f"unknown option {arg}{hint}")
            elif "=" in arg or arg.startswith("~"):
                key, _, text = arg.partition("=")
                if key in options:
                    if key in values:
                        raise UsageError(f"{key}= is given twice")
                    values[key] = options[key].parse(text)
                elif self.overrides and root(key) in config_roots(dirs + _dirs_in(rest)):
                    overrides.append(arg)
                else:
                    known = ", ".join(options) or "none"
                    more = "; a Hydra override starts with a config group such as model, data, trainer or tracking"
                    raise UsageError(f"unknown option {key!r}: this command's options are {known}"
                                     + (more if self.overrides else ""))
            else:
                positional.append(arg)
        if len(positional) > len(self.arguments):
            raise UsageError(f"unexpected argument {positional[len(self.arguments)]!r}")
        if len(positional) < len(self.arguments):
            raise UsageError(f"missing <{self.arguments[len(positional)][0]}>")
        for (name, about), given in zip(self.arguments, positional):
            if not given.strip():
                raise UsageError(f"<{name}> is empty: give {about}")
        for o in self.options:
            if o.required and o.key not in values:
                raise UsageError(f"{o.key}= is required: {o.help}")
            values.setdefault(o.key, o.default)
        if dirs:
            if any(root(o) == "hydra" and o.lstrip("+~").startswith("hydra.searchpath") for o in overrides):
                raise UsageError(f"give {CONFIG_DIR} or hydra.searchpath=, not both")
            overrides.append(searchpath(dirs))
        named = {**dict(zip((a for a, _ in self.arguments), positional)), **values}
        # an option such as tracking.uri is the attribute tracking_uri
        return SimpleNamespace(**{k.replace(".", "_"): v for k, v in named.items()}, overrides=overrides,
                               config_dirs=dirs, argv=list(argv))


def root(key: str) -> str:
    """The config group or field an override key starts with: `model` of `+model.n_factors` or `model@x`."""
    for sep in ".@/":
        key = key.split(sep, 1)[0]
    return key.lstrip("+~")


def _groups(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))}


def config_roots(dirs: Sequence[Path] = ()) -> set[str]:
    """What an override may start with: the config's fields and groups (files in conf/ or `dirs`, and those the
    components declare in Hydra's ConfigStore)."""
    declared = {n for n in ConfigStore.instance().list("") if not n.endswith(".yaml")}
    return {"hydra", *(f.name for f in fields(Config)), *declared, *_groups(CONF_DIR),
            *(g for d in dirs for g in _groups(d))}


def group_options(group: str) -> list[str]:
    """The options of a config group: its files in conf/ and the components declared in it (not the schemas,
    which are named base_*)."""
    try:
        declared = ConfigStore.instance().list(group)
    except OSError:  # a group with files only
        declared = []
    names = {n[:-5] for n in declared if n.endswith(".yaml") and not n.startswith("base_")}
    return sorted(names | {p.stem for p in (CONF_DIR / group).glob("*.yaml")})


def _dirs_in(rest: Sequence[str]) -> list[Path]:
    """The --config-dir folders still ahead on the command line: their groups are known to overrides before them."""
    out = []
    for i, arg in enumerate(rest):
        if arg.startswith(CONFIG_DIR + "="):
            out.append(Path(arg.split("=", 1)[1]))
        elif arg == CONFIG_DIR and i + 1 < len(rest):
            out.append(Path(rest[i + 1]))
    return [d for d in out if d.is_dir()]


def config_dir(text: str) -> Path:
    """A user's config folder, made absolute (Hydra resolves file:// paths against the working folder)."""
    path = Path(text).expanduser().resolve()
    if not path.is_dir():
        raise UsageError(f"{CONFIG_DIR} {text}: no such folder; give a folder holding your configs, such as "
                         f"DIR/experiment/NAME.yaml")
    return path


def max_workers() -> int:
    """The most worker processes one machine's command may start: more than 4 per CPU core, or 256, can only be
    a mistake (each worker trains with at least one thread)."""
    return min(256, 4 * (os.cpu_count() or 1))


WORKERS_BOUND = f"4 per CPU core of this machine's {os.cpu_count() or 1}, at most 256"


def checked(overrides: Sequence[str], base: Sequence[str] = ()):
    """(cfg, conf): the config of `base` then the command line's `overrides`, composed and validated before a
    command opens a store or reads data, so that a refused one leaves nothing behind; a ConfigError naming the
    override and why Hydra could not take it (the cause Hydra's own message leaves out)."""
    from lesson5.config import compose, validate
    from lesson5.errors import ConfigError

    try:
        cfg = compose([*base, *overrides])
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(f"{describe(e)}\n(the command line's Hydra overrides: {' '.join(overrides) or 'none'}; "
                          f"`lesson5 --cfg job` prints every key and its value)") from None
    return cfg, validate(cfg)


def writable(path: Path, key: str, folder: bool = False) -> Path:
    """`key=path`, a file (or with `folder`, a folder) the command writes once its work is done, checked before
    the work: the folder is made if it is missing, and a file can be created in it. A ConfigError naming the key,
    the path and the operating system's reason."""
    from lesson5.errors import ConfigError

    target = Path(path).expanduser()
    if not folder and target.is_dir():
        raise ConfigError(f"{key}={path}: {target} is a folder; give a file name, such as {target / 'report.md'}")
    if folder and target.exists() and not target.is_dir():
        raise ConfigError(f"{key}={path}: {target} is a file; give a folder (it is made if it does not exist)")
    where = target if folder else target.parent
    try:
        where.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=where, prefix=".lesson5-probe-"):
            pass
    except OSError as e:
        raise ConfigError(f"{key}={path}: cannot write in {where.resolve() if where.is_absolute() else where} "
                          f"({e.strerror or type(e).__name__}: {e.filename or where}); give a folder you can write "
                          f"to") from None
    return target


def existing_store(uri: Optional[str], key: str = "tracking.uri") -> str:
    """The MLflow store a command reads runs from (default: sqlite:///mlflow.db in this folder), refused naming its
    file when it is an SQLite file that does not exist: opening it would create an empty store."""
    from lesson5.errors import ConfigError
    from lesson5.tracking.store import resolve_uri

    resolved = resolve_uri(uri)
    if resolved.startswith("sqlite:///"):
        path = Path(resolved[len("sqlite:///"):].split("?", 1)[0])
        if str(path) not in ("", ":memory:") and not path.is_file():
            given = f"{key}={uri}" if uri else f"the default store, as no {key}= was given"
            raise ConfigError(f"no MLflow store at {path} ({given}): run the command in the folder that holds the "
                              f"run's mlflow.db, or give {key}=sqlite:////abs/path/mlflow.db or a server's "
                              f"http://host:5000")
    return resolved


def run(command: Command, argv: Optional[Sequence[str]], body: Callable[[SimpleNamespace], Optional[int]]) -> int:
    """Parse argv (default: sys.argv[1:]) for `command` and call body with what it holds; the shared exit codes:
    0 done (or --help), 2 refused input (a bad command line, or a Lesson5Error from body), 130 interrupted (143
    by SIGTERM)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = command.parse(argv)
    except _Help:
        print(command.help())
        return DONE
    except UsageError as e:
        print(f"error: {e}\n\n{command.usage()}\n\n{command.name} --help shows an example.", file=sys.stderr)
        return REFUSED
    previous = signal.signal(signal.SIGTERM, _interrupt)  # `timeout`, `scancel`, a container's stop: as Ctrl-C
    try:
        code = body(args)
    except (Lesson5Error, HydraException, OmegaConfBaseException) as e:  # Hydra's: an override it cannot compose
        print(f"error: {describe(e)}", file=sys.stderr)
        return REFUSED
    except KeyboardInterrupt as e:
        print("interrupted", file=sys.stderr)
        return TERMINATED if isinstance(e, _Terminated) else INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous)
    return DONE if code is None else code


class _Terminated(KeyboardInterrupt):
    """SIGTERM, taken as Ctrl-C but exiting 143."""


def _interrupt(signum, frame):
    raise _Terminated
