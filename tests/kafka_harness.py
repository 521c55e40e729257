"""Start/stop a throwaway local Kafka broker for the test suite.

Wraps ``deploy/kafka-local/kafka.sh`` (a single-node KRaft Kafka assembled from
Maven Central jars).  Typical use from a ``conftest.py``::

    bootstrap, reason = ensure_bootstrap(REPO_ROOT)
    if bootstrap is None:
        pytest.skip(reason)

Set ``KAFKA_BOOTSTRAP=host:port`` to use an existing broker instead.
"""

from __future__ import annotations

import atexit
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

SCRIPT = Path("deploy") / "kafka-local" / "kafka.sh"
# Covers a cold Maven fetch plus kafka.sh's own 90 s readiness timeout.
START_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 60.0

_handles: list[BrokerHandle] = []


@dataclass
class BrokerHandle:
    """A broker started by :func:`start_broker`; call :meth:`stop` when done."""

    bootstrap: str
    repo_root: Path
    state_file: Path
    _stopped: bool = field(default=False, repr=False)

    def stop(self) -> None:
        """Stop the broker and delete its temp dir.  Safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        subprocess.run(
            ["bash", str(self.repo_root / SCRIPT), "stop"],
            cwd=self.repo_root,
            env=_script_env(self.state_file),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=STOP_TIMEOUT_S,
            check=False,
        )


def _script_env(state_file: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["STREAMBID_KAFKA_STATE"] = str(state_file)
    return env


def start_broker(repo_root: Path) -> BrokerHandle:
    """Run ``kafka.sh start`` and return a handle with the bootstrap address.

    Each calling process gets its own state file, so a broker a developer
    started by hand from the repo root is never reused or stopped here.

    Raises:
        RuntimeError: the script failed; the message holds its output.
    """
    repo_root = Path(repo_root).resolve()
    state_file = repo_root / ".kafka-local" / f"pytest-{os.getpid()}.state"
    try:
        proc = subprocess.run(
            ["bash", str(repo_root / SCRIPT), "start"],
            cwd=repo_root,
            env=_script_env(state_file),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        BrokerHandle("", repo_root, state_file).stop()
        raise RuntimeError(f"kafka.sh start did not complete: {exc}") from exc

    bootstrap = ""
    for line in proc.stdout.splitlines():
        if line.startswith("KAFKA_BOOTSTRAP="):
            bootstrap = line.split("=", 1)[1].strip()
    if proc.returncode != 0 or not bootstrap:
        raise RuntimeError(
            f"kafka.sh start failed (exit {proc.returncode}):\n"
            f"{proc.stdout}{proc.stderr}".rstrip()
        )
    handle = BrokerHandle(bootstrap, repo_root, state_file)
    _handles.append(handle)
    return handle


def ensure_bootstrap(repo_root: Path) -> tuple[str | None, str]:
    """Return ``(bootstrap, reason)`` for the tests' Kafka broker.

    * ``KAFKA_BOOTSTRAP`` set: use it as is.
    * Otherwise start a local broker (stopped automatically at interpreter exit,
      or earlier via ``stop_all()``).
    * If that fails: raise ``RuntimeError`` under ``CI=true``; elsewhere return
      ``(None, reason)`` so the caller can ``pytest.skip(reason)``.
    """
    env_bootstrap = os.environ.get("KAFKA_BOOTSTRAP", "").strip()
    if env_bootstrap:
        return env_bootstrap, "KAFKA_BOOTSTRAP from environment"
    try:
        handle = start_broker(repo_root)
    except RuntimeError as exc:
        if os.environ.get("CI") == "true":
            raise
        return None, f"no Kafka broker available: {exc}"
    return handle.bootstrap, f"local broker started by {SCRIPT}"


def stop_all() -> None:
    """Stop every broker this process started (also registered with atexit)."""
    while _handles:
        _handles.pop().stop()


atexit.register(stop_all)
