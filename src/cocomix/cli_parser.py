"""The `cocomix` command line's conventions (no paper equation): every option's default shown in `--help`, an
argument error as one line with exit code 2 (as every other cocomix error), library errors that name a setting
shown with the command's flag of that name, and cocomix's own warnings as one line."""

from __future__ import annotations

import argparse
import re
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import NoReturn

DEVICE_HELP = "auto (CUDA when available), cpu, cuda or cuda:N"


class Help(argparse.HelpFormatter):
    """Help that shows an option's default unless it is None / False or the text already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        hidden = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if hidden or "default" in text or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


ARGV: list[str] = []
"""The command line being parsed (`cli.main` sets it), for the hints of `Parser.error`."""


class Parser(argparse.ArgumentParser):
    """argparse with the one-line error convention of every other cocomix error (exit code 2), and defaults in
    every subcommand's help."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", Help)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        flag = message.removeprefix("argument ").partition(":")[0]
        given = ARGV[ARGV.index(flag) + 1:ARGV.index(flag) + 2] if flag in ARGV else []
        if message.endswith("expected one argument") and given and given[0][:1] == "-" and (
                given[0][1:2].isdigit() or given[0][1:2] == "."):  # `--alphas -10,0,1`: a negative value
            message += f" (argparse reads {given[0]!r} as an option: write {flag}={given[0]})"
        self.exit(2, f"cocomix: error: {message} (see `{self.prog} --help`)\n")


_SETTING_EQ = re.compile(r"(?<![\w.\-/])([a-z][a-z0-9]*(?:_[a-z0-9]+)*)=([^\s,;:)]+)")  # k_attr=4


def as_flag(message: str, parser: argparse.ArgumentParser, command: str, given: Iterable[object] = ()) -> str:
    """A library error that names its settings names the command's flags instead, where the command has a flag of
    that name: a leading `max_new_tokens: ...` becomes `--max-new-tokens: ...`, and `k_attr=4` anywhere in the
    message `--k-attr 4` (`gradient_at=reconstruction: needs attribution_loss=next_token`); `train`'s settings
    stay config keys, as its `--set` takes them. A leading name that is one of the values the user `given` (a run
    directory called `data`, say: `data: not a cocomix run`) is that path, not a setting, and stays."""
    if command == "train":
        return message
    try:
        options = subcommand(parser, command)._option_string_actions
    except KeyError:
        return message

    def flag(name: str) -> str | None:
        candidate = "--" + name.replace("_", "-")
        return candidate if candidate in options else None

    given = [g for g in given if isinstance(g, str) and g]
    name, sep, rest = message.partition(": ")
    if sep and name.replace("_", "").isalpha() and name.islower() and flag(name) and name not in given:
        message = f"{flag(name)}: {rest}"
    kept = [(i, i + len(g)) for g in given for i in _occurrences(message, g)]  # a folder called `seed=1`

    def rename(m: re.Match[str]) -> str:
        inside = any(start <= m.start() and m.end() <= end for start, end in kept)
        return f"{flag(m[1])} {m[2]}" if flag(m[1]) and not inside else m[0]

    return _SETTING_EQ.sub(rename, message)


def _occurrences(text: str, part: str) -> list[int]:
    """Where `part` starts in `text`, every time."""
    found, i = [], text.find(part)
    while i >= 0:
        found.append(i)
        i = text.find(part, i + 1)
    return found


def warn_on_rank0_only() -> bool:
    """Under torchrun, silence cocomix's warnings on every rank but 0 (each would say the same); whether this
    process is rank 0 (or the only one)."""
    import os

    from cocomix.errors import CocomixWarning

    host = os.environ.get("RANK", "0") == "0"
    if not host:
        warnings.filterwarnings("ignore", category=CocomixWarning)
    return host


def short_warnings() -> None:
    """Print cocomix's own warnings (`CocomixWarning`) as one line, `cocomix: warning: ...`, like its errors;
    warnings of other packages keep Python's format (file, line and source, which help there)."""
    from cocomix.errors import CocomixWarning

    default = warnings.formatwarning

    def fmt(message: Warning | str, category: type[Warning], filename: str, lineno: int,
            line: str | None = None) -> str:
        if issubclass(category, CocomixWarning):
            return f"cocomix: warning: {' '.join(str(message).split())}\n"
        return default(message, category, filename, lineno, line)

    warnings.formatwarning = fmt


def utf8_text(value: str) -> str:
    """argparse type of a text argument (`--prompt`, `--text`): bytes of the command line that are not UTF-8
    reach Python as lone surrogates, which no tokenizer encodes; refused as an argument error."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError("not valid UTF-8 text (check the shell's or the script's encoding)") from None
    return value


def seed_arg(text: str) -> int:
    """argparse type of `--seed`: an integer in torch's seed range [0, 2**64) (larger ones overflow its generator)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 0 <= value < 2**64:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, 2**64) (torch's seed range), got {text}")
    return value


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Every `cocomix COMMAND` parser, by command."""
    return next(a for a in parser._subparsers._group_actions if isinstance(a, argparse._SubParsersAction)).choices


def subcommand(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    """The parser of `cocomix COMMAND`."""
    return _commands(parser)[command]


def add_run(s: argparse.ArgumentParser, help: str) -> None:
    """The run a command reads, given either way: `cocomix eval RUN` or `cocomix eval --run RUN`
    (`merge_run` checks that exactly one was given)."""
    s.add_argument("run", nargs="?", default=None, metavar="RUN", help=f"{help} (or --run RUN)")
    s.add_argument("--run", dest="run_option", default=None, metavar="RUN", help="the same as RUN")


def add_debug(parser: argparse.ArgumentParser) -> None:
    """`--debug` after the subcommand too (`cocomix eval --debug ...`), as well as before it."""
    for s in _commands(parser).values():
        s.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the traceback of user errors too")


def merge_run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """One `args.run` from the positional RUN or `--run`; neither, or two different runs, is an argument error."""
    if not hasattr(args, "run_option"):
        return
    given = [r for r in (args.run, args.run_option) if r is not None]
    if not given:
        subcommand(parser, args.command).error("the following arguments are required: RUN (or --run RUN)")
    if len(given) == 2 and Path(given[0]).expanduser().resolve() != Path(given[1]).expanduser().resolve():
        subcommand(parser, args.command).error(f"RUN {given[0]!r} and --run {given[1]!r} differ; give the run once")
    args.run = given[0]
    del args.run_option
