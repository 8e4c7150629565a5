"""The `cocomix` command line's conventions (no paper equation): every option's default shown in `--help`, an
argument error as one line with exit code 2 (as every other cocomix error), and library errors that name a
setting shown with the command's flag of that name."""

from __future__ import annotations

import argparse
from typing import NoReturn


class Help(argparse.HelpFormatter):
    """Help that shows an option's default unless it is None / False or the text already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        hidden = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if hidden or "default" in text or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


class Parser(argparse.ArgumentParser):
    """argparse with the one-line error convention of every other cocomix error (exit code 2), and defaults in
    every subcommand's help."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", Help)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"cocomix: error: {message} (see `{self.prog} --help`)\n")


def as_flag(message: str, parser: argparse.ArgumentParser, command: str) -> str:
    """A library error that names its setting (`max_new_tokens: expected ...`) names the command's flag instead
    (`--max-new-tokens: ...`) where the command has one of that name; `train`'s settings stay config keys."""
    name, sep, rest = message.partition(": ")
    if not sep or command == "train" or not name.replace("_", "").isalpha() or not name.islower():
        return message
    flag = "--" + name.replace("_", "-")
    sub = next(a for a in parser._subparsers._group_actions if isinstance(a, argparse._SubParsersAction))
    options = sub.choices[command]._option_string_actions if command in sub.choices else {}
    return f"{flag}: {rest}" if flag in options else message
