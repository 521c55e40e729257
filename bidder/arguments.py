"""Argument checks every command line shares: argparse `type=`s that refuse what argparse alone lets through
(negative counts, nan and inf, ports past 65535) and the `--out` check made before any long run starts."""

from __future__ import annotations

import argparse
import math
import os
import resource
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


def _number(kind: type, text: str) -> Any:
    """`text` as a finite `kind`: nan and inf pass every comparison, so they must be refused by name."""
    what = "whole number" if kind is int else "number"
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a {what}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite {what}")
    return value


def positive(kind: type, most: float | None = None) -> Callable[[str], Any]:
    """An argparse `type=` for a finite number > 0 (and <= `most`); argparse puts the flag's name before the message."""

    def parse(text: str) -> Any:
        value = _number(kind, text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text} is not > 0: give a positive {'whole ' if kind is int else ''}number")
        if most is not None and value > most:
            raise argparse.ArgumentTypeError(f"{text} is over the maximum of {most:,}")
        return value

    return parse


def non_negative(kind: type, most: float | None = None) -> Callable[[str], Any]:
    """An argparse `type=` for a finite number >= 0 (and <= `most`)."""

    def parse(text: str) -> Any:
        value = _number(kind, text)
        if value < 0:
            raise argparse.ArgumentTypeError(f"{text} is negative: give 0 or more")
        if most is not None and value > most:
            raise argparse.ArgumentTypeError(f"{text} is over the maximum of {most:,}")
        return value

    return parse


def port_or_zero(text: str) -> int:
    """An argparse `type=` for a TCP port; 0 is the command's own choice (any free port, or none)."""
    port = _number(int, text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port: use 1-65535, or 0")
    return port


FILES_SPARE = 64  # open files a load generator needs beside its connections (the interpreter, logs, the target)


def connections(text: str) -> int:
    """An argparse `type=` for a count of connections: positive, and within the open-files limit (each connection
    is a file; past the limit the run would fail to connect and report an empty load as if it were one)."""
    value = positive(int)(text)
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if limit != resource.RLIM_INFINITY and value > limit - FILES_SPARE:
        raise argparse.ArgumentTypeError(f"{value} connections need more open files than this shell allows "
                                         f"({limit}, `ulimit -n`): give at most {max(limit - FILES_SPARE, 1)}, or "
                                         f"raise the limit with `ulimit -n {value + FILES_SPARE}`")
    return value


def base_url(text: str) -> str:
    """An argparse `type=` for a public base URL (`--notice-base`): http(s), a host, no query or fragment; the
    notice paths are appended to it, so anything else would sign URLs no exchange can call."""
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an http:// or https:// URL with a host, e.g. "
                                         "https://bidder.example.com")
    if parts.query or parts.fragment:
        raise argparse.ArgumentTypeError(f"{text!r} has a query or fragment: give the base alone; the notice paths "
                                         "and their signed query are appended to it")
    return text


def bootstrap_problem(broker: str) -> str | None:
    """Why a bootstrap list is not HOST:PORT[,HOST:PORT...] (None: it is), before the Kafka client trips over it: it
    reads a missing port as 9092 and an unreadable one as a Python error."""
    for part in broker.split(","):
        host, sep, port = part.strip().rpartition(":")
        if not sep or not host.strip("[]") or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
            return f"{part.strip()!r} is not HOST:PORT with a port from 1 to 65535 (e.g. 127.0.0.1:9092)"
    return None


def broker_address_problem(flag: str | None) -> str | None:
    """Why the broker `--broker` gives, else $KAFKA_BOOTSTRAP, is not HOST:PORT, naming which of the two gave it;
    None when it is, or when neither gives one."""
    broker = flag or os.environ.get("KAFKA_BOOTSTRAP")
    problem = bootstrap_problem(broker) if broker else None
    return f"{'--broker' if flag else 'KAFKA_BOOTSTRAP'} {broker!r}: {problem}" if problem else None


def out_dir_problem(path: Path, flag: str = "--out") -> str | None:
    """Why `path` cannot take a command's results (None: it can, and now exists).

    Checked before the work starts: finding out when the PNG is written would lose a whole run's results.
    """
    if path.exists() and not path.is_dir():
        return f"{flag} {path}: not a directory; give a directory (it is created if missing)"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return f"{flag} {path}: cannot create the directory ({e.strerror or e}); give one you can write to"
    if not os.access(path, os.W_OK | os.X_OK):
        return f"{flag} {path}: the directory is not writable; give one you can write to"
    return None
