"""Parsing helpers shared by every ``mxd-saelens`` command: the parser whose mistakes are one
``error:`` line, and flags generated from a dataclass. Kept apart from :mod:`mxd_saelens.cli.main`
so that the modules defining commands import these without importing the dispatcher."""

from __future__ import annotations

import difflib
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import fields
from typing import Any, NoReturn, TypeVar

from simple_parsing import ArgumentParser

Options = TypeVar("Options")

# a % that does not start argparse's %(name)s or %% escapes
_LONE_PERCENT = re.compile(r"(?<!%)%(?![(%])")


class UserError(ValueError):
    """A mistake in what the user asked for: printed as one ``error:`` line."""


class CommandParser(ArgumentParser):
    """simple_parsing's parser, whose mistakes (unknown flags, bad values) raise
    :class:`UserError` instead of printing the usage block and exiting.

    ``flag_help`` maps a flag's destination (``cfg.lr``) to its help sentence, or None to keep
    the one simple_parsing read from the source; ``group_help`` maps a dataclass's name to its
    group's description. Both replace what simple_parsing generated, when the help is shown.
    """

    def __init__(
        self,
        *args: Any,
        flag_help: Callable[[str], str | None] | None = None,
        group_help: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("allow_abbrev", False)  # a typo must not silently pick another flag
        super().__init__(*args, **kwargs)
        self._flag_help = flag_help
        self._group_help = dict(group_help or {})

    def format_help(self) -> str:
        self._preprocessing()  # simple_parsing adds the flags only now; a no-op once done
        for action in self._actions:
            text = self._flag_help(action.dest) if self._flag_help else None
            if text is not None:
                action.help = text
            if action.help:  # argparse %-formats help: a docstring's "5 % of steps" would crash
                action.help = _LONE_PERCENT.sub("%%", action.help)
        for group in self._action_groups:
            name = (group.title or "").split(" ")[0]  # "LoggingConfig ['cfg.logger']"
            if name in self._group_help:
                group.description = self._group_help[name]
        return super().format_help()

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{_with_closest_choice(message)} ({self.prog} --help lists the flags)")

    def parse_args(self, args: Any = None, namespace: Any = None) -> Any:
        """As argparse's, with a config class refusing a value reported as a :class:`UserError`,
        after any unknown flag (simple_parsing builds the configs before it checks the flags)."""
        try:
            return super().parse_args(args, namespace)
        except (ValueError, TypeError) as error:
            unknown = [
                a
                for a in args or ()
                if _is_flag(a) and a.split("=")[0] not in self._option_string_actions
            ]
            if unknown:
                self.error(f"unrecognized arguments: {' '.join(unknown)}")
            raise UserError(str(error)) from None


def _with_closest_choice(message: str) -> str:
    """argparse's "invalid choice" message, with the closest choices named first."""
    found = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
    if found is None:
        return message
    choices = re.findall(r"'([^']*)'", found.group(2))
    close = difflib.get_close_matches(found.group(1), choices, n=2, cutoff=0.5)
    if not close:
        return message
    end = found.end() - 1  # the closing parenthesis of the choices
    return f"{message[:end]}; did you mean {' or '.join(close)}?{message[end:]}"


def _is_flag(arg: str) -> bool:
    try:
        float(arg)
    except ValueError:
        return arg.startswith("-")
    return False  # a negative number is a value


# an old spelling → the flag that replaced it: still accepted, with a warning, by a command
# that has the new one (one name for one thing: every command's text is --dataset_path)
RENAMED_FLAGS: dict[str, str] = {"--dataset": "--dataset_path"}


def renamed_flags(args: Sequence[str], flags: Iterable[str]) -> list[str]:
    """``args`` with each old spelling in :data:`RENAMED_FLAGS` whose new name is among
    ``flags`` replaced by the new name, warning on stderr once per old name."""
    flags = set(flags)
    out, warned = [], set()
    for arg in args:
        old, eq, value = arg.partition("=")
        new = RENAMED_FLAGS.get(old)
        if new is not None and new in flags:
            if old not in warned:
                print(f"warning: {old} is deprecated; use {new}", file=sys.stderr)
                warned.add(old)
            arg = f"{new}{eq}{value}"
        out.append(arg)
    return out


def parse_options(cls: type[Options], args: Sequence[str], prog: str, description: str) -> Options:
    """An instance of the dataclass ``cls`` from command-line flags named after its fields."""
    parser = CommandParser(prog=prog, description=description)
    parser.add_arguments(cls, dest="options")
    flags = {f"--{f.name}" for f in fields(cls)}
    return parser.parse_args(renamed_flags(args, flags)).options
