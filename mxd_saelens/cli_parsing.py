"""Parsing helpers shared by every ``mxd-saelens`` command: the parser whose mistakes are one
``error:`` line, and flags generated from a dataclass. Kept apart from :mod:`mxd_saelens.cli`
so that the modules defining commands import these without importing the dispatcher."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NoReturn, TypeVar

from simple_parsing import ArgumentParser

Options = TypeVar("Options")


class UserError(ValueError):
    """A mistake in what the user asked for: printed as one ``error:`` line."""


class CommandParser(ArgumentParser):
    """simple_parsing's parser, whose mistakes (unknown flags, bad values) raise
    :class:`UserError` instead of printing the usage block and exiting."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)  # a typo must not silently pick another flag
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message} ({self.prog} --help lists the flags)")

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


def _is_flag(arg: str) -> bool:
    try:
        float(arg)
    except ValueError:
        return arg.startswith("-")
    return False  # a negative number is a value


def parse_options(cls: type[Options], args: Sequence[str], prog: str, description: str) -> Options:
    """An instance of the dataclass ``cls`` from command-line flags named after its fields."""
    parser = CommandParser(prog=prog, description=description)
    parser.add_arguments(cls, dest="options")
    return parser.parse_args(list(args)).options
