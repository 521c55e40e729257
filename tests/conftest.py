"""Shared fixtures: a real Kafka broker for the integration tests, and small project-made data."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kafka_harness import ensure_bootstrap, stop_all

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """A running broker: $KAFKA_BOOTSTRAP, or one started here (and stopped at the end, pass or fail).

    Under CI=true a broker that cannot be obtained fails the run instead of skipping.
    """
    bootstrap, reason = ensure_bootstrap(ROOT)
    if bootstrap is None:
        pytest.skip(f"{reason}\nTo run the Kafka tests: install a JDK 17 and Maven, or set KAFKA_BOOTSTRAP=host:port")
    os.environ.setdefault("KAFKA_BOOTSTRAP", bootstrap)
    yield bootstrap
    stop_all()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
