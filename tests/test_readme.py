"""Every lesson5 command line in README.md's code blocks parses as its entry point parses it (issue 21, item 9):
Hydra overrides through Hydra's own override parser, a command's options through its `cli.Command.parse`.

A command line is read as bash reads it (shlex: quotes removed, comments dropped, `\\` continuations joined), with
placeholders such as `<run id>` given dummy values and optional `[key=value]` taken as given.
"""

import importlib
import re
import shlex
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import OverrideParseException

from lesson5 import cli

ROOT = Path(__file__).resolve().parents[1]
DUMMY_RUN_ID = "0123456789abcdef0123456789abcdef"
HOME = "/home/user"
# `lesson5`'s Hydra flags that take a value, and those that do not (HYDRA_FLAGS in lesson5/__main__.py)
HYDRA_VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
                     "--config-dir", "-cd", "--info", "-i", "--experimental-rerun", "--shell-completion", "-sc"}
SEPARATORS = {"&&", "||", ";", "|"}


def code_blocks(text: str) -> list[str]:
    """The bodies of the shell code blocks (```bash, ```sh) of a Markdown text."""
    return re.findall(r"^```(?:bash|sh|shell|console)\n(.*?)^```", text, flags=re.S | re.M)


def command_lines(block: str) -> list[str]:
    """A block's lines, continuations joined."""
    return block.replace("\\\n", " ").splitlines()


def _fill(line: str) -> str:
    """Placeholders made concrete: `<run id>` a run id, an optional `[key=value]` given, $HOME and $PWD a folder."""
    line = re.sub(r"<[^<>\n]*\bid>", DUMMY_RUN_ID, line)
    line = re.sub(r"\$\{?(HOME|PWD)\}?", HOME, line)
    return re.sub(r"(?<=\s)\[([\w.]+=[^\]\s]*)\]", r"\1", line)


def lesson5_commands(text: str) -> list[tuple[str, list[str], str]]:
    """(module, its arguments, the README line) for each lesson5 command in the code blocks: `python -m lesson5...`
    (any python, after `&&` too) or a console script `lesson5[-name]`."""
    scripts = _scripts()
    out = []
    for block in code_blocks(text):
        for line in command_lines(block):
            if "lesson5" not in line:
                continue
            lexer = shlex.shlex(_fill(line), posix=True, punctuation_chars=";&|")
            lexer.whitespace_split, lexer.commenters = True, "#"
            # bash expands a word's leading ~ (not one after `key=`: Hydra then gets the ~, which it cannot parse)
            tokens, segment = [HOME + t[1:] if t == "~" or t.startswith("~/") else t for t in lexer], []
            for tok in [*tokens, ";"]:
                if tok not in SEPARATORS:
                    segment.append(tok)
                    continue
                found = _command(segment, scripts)
                if found:
                    out.append((*found, line.strip()))
                segment = []
    return out


def _command(tokens: list[str], scripts: dict[str, str]):
    for i, tok in enumerate(tokens):
        if tok == "-m" and i + 1 < len(tokens) and re.fullmatch(r"lesson5(\.\w+)*", tokens[i + 1]) and \
                Path(tokens[i - 1]).name.startswith("python"):
            return tokens[i + 1], tokens[i + 2:]
    if tokens and tokens[0] in scripts:
        return scripts[tokens[0]], tokens[1:]
    return None


def _scripts() -> dict[str, str]:
    """The console scripts (pyproject.toml's [project.scripts]) by name, each its module."""
    import tomllib

    table = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    return {name: target.split(":")[0].removesuffix(".__main__") for name, target in table.items()}


def _entry_point(module: str):
    """The `cli.Command` of an entry point module (a package's is in its __main__), or None for `lesson5` itself,
    whose command line is Hydra's."""
    if module == "lesson5":
        return None
    mod = importlib.import_module(module)
    command = getattr(mod, "COMMAND", None)
    return command if command is not None else importlib.import_module(f"{module}.__main__").COMMAND


def _hydra_overrides(args: list[str]) -> list[str]:
    """`lesson5`'s arguments less Hydra's flags (and their values)."""
    out, rest = [], list(args)
    while rest:
        arg = rest.pop(0)
        if arg in HYDRA_VALUE_FLAGS:
            rest.pop(0) if rest and not rest[0].startswith("-") else None
        elif not arg.startswith("-"):
            out.append(arg)
    return out


def parse(module: str, args: list[str], config_dir: Path) -> list:
    """Parse a README command as its entry point would: the Hydra overrides it ends up with, parsed by Hydra."""
    command = _entry_point(module)
    if command is None:
        overrides = _hydra_overrides(args)
    else:  # --config-dir must name a folder that exists: a dummy one
        args = [str(config_dir) if i and args[i - 1] == cli.CONFIG_DIR else a for i, a in enumerate(args)]
        overrides = command.parse(args).overrides
        overrides = [o for o in overrides if not o.startswith("hydra.searchpath=")]
    return OverridesParser.create().parse_overrides(overrides)


README = (ROOT / "README.md").read_text()
COMMANDS = lesson5_commands(README)


def test_the_readme_has_the_commands_it_shows():
    modules = {m for m, _, _ in COMMANDS}
    assert len(COMMANDS) >= 40 and {"lesson5", "lesson5.sweep", "lesson5.sync", "lesson5.recommend"} <= modules
    assert any("data.label_regex" in line for _, _, line in COMMANDS)


@pytest.mark.parametrize("module, args, line", COMMANDS, ids=[f"{i}" for i in range(len(COMMANDS))])
def test_every_readme_command_line_parses(module, args, line, tmp_path):
    try:
        parse(module, args, tmp_path)
    except (OverrideParseException, cli.UsageError) as e:
        pytest.fail(f"README.md: {line}\n  does not parse as {module} parses it: {e}")


def test_the_pets_regex_reaches_the_config_as_written():
    """The README's Pets example, through the shell and Hydra, gives the regex itself."""
    from lesson5 import compose

    (_, args, _), *_ = [c for c in COMMANDS if any(a.startswith("data.label_regex=") for a in c[1])]
    regex = compose(["model=resnet34", *(a for a in args if a.startswith("data.label_regex="))]).data.label_regex
    assert regex == r"^(.+)_\d+\.jpg$" and re.match(regex, "great_pyrenees_173.jpg").group(1) == "great_pyrenees"


@pytest.mark.parametrize("before", ["python -m lesson5 model=resnet34 'data.label_regex=^(.+)_\\d+\\.jpg$'",
                                    "python -m lesson5 model=resnet34 data.path=~/photos/train"],
                         ids=["unquoted regex", "tilde after ="])
def test_the_readmes_old_examples_are_caught(before):
    """The README's examples as they were fail here: the regex unquoted for Hydra, and `key=~/...`, whose ~ bash
    leaves (it expands only a word's leading ~) and Hydra's grammar refuses."""
    [(module, args, _)] = lesson5_commands(f"```bash\n{before}\n```\n")
    with pytest.raises(OverrideParseException):
        parse(module, args, Path("."))
