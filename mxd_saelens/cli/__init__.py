"""The ``mxd-saelens`` command line."""

from mxd_saelens.cli.main import main

__all__ = ["main"]
