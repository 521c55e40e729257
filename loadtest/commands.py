"""Subcommands this package adds to `streambid`."""

from __future__ import annotations

import argparse


def register(groups: dict[str, argparse._SubParsersAction]) -> None:
    """Add this package's subcommands to the command tree."""
