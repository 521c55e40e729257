"""`campaign set` against a broker that stops answering: every campaign is sent at once and acknowledged under one
deadline, and a run that stops short (failed deliveries, the deadline, Ctrl-C) says which campaigns are published and
which are not, promptly, with no traceback.

A fake stands in for aiokafka's producer: `send` hands back a delivery future that each test settles its own way,
and `stop()` waits for every pending delivery unless the sender was closed first, as aiokafka's does.  It has no
`send_and_wait`: a round trip per campaign is what made a large file hang on a broker that had gone.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiokafka
import orjson
import pytest
from aiokafka.errors import KafkaConnectionError, RequestTimedOutError

import streams.kafka_io
from bidder.cli import main
from streams import topics
from streams.commands import _about
from tests.helpers import campaign

Settle = Callable[[int, asyncio.Future], None]  # (record index, its delivery future)


class FakeSender:
    def __init__(self) -> None:
        self.closed = False

    async def close(self) -> None:
        self.closed = True


class FakeProducer:
    """Records what is sent; `settle` decides each delivery; `stop()` hangs on pending ones while the sender lives."""

    settle: Settle = staticmethod(lambda i, fut: fut.set_result(None))
    made: list[FakeProducer] = []

    def __init__(self, **config: Any) -> None:
        self.config = config
        self.sent: list[tuple[str, str]] = []
        self.acks: list[asyncio.Future] = []
        self._sender = FakeSender()
        self.stopped = False
        FakeProducer.made.append(self)

    async def start(self) -> None:
        pass

    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self.sent.append((topic, key.decode()))
        self.acks.append(fut)
        type(self).settle(len(self.acks) - 1, fut)
        return fut

    async def stop(self) -> None:
        pending = [a for a in self.acks if not a.done()]
        if pending and not self._sender.closed:
            await asyncio.wait(pending)  # aiokafka delivers every queued batch first: forever, with the broker gone
        self.stopped = True


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[FakeProducer]]:
    async def no_topics(broker: str) -> None:
        pass

    FakeProducer.made = []
    monkeypatch.setattr(aiokafka, "AIOKafkaProducer", FakeProducer)
    monkeypatch.setattr(streams.kafka_io, "ensure_topics", no_topics)
    yield FakeProducer


def campaign_file(tmp_path: Path, n: int) -> tuple[Path, list[str]]:
    ids = [f"camp{i:03d}" for i in range(n)]
    path = tmp_path / "campaigns.json"
    path.write_bytes(orjson.dumps([campaign(id=cid) for cid in ids]))
    return path, ids


def run(capsys: pytest.CaptureFixture[str], path: Path, *flags: str) -> tuple[int, str, str, float]:
    t0 = time.monotonic()
    code = main(["campaign", "set", str(path), "--broker", "fake:9092", *flags])
    out, err = capsys.readouterr()
    return code, out, err, time.monotonic() - t0


def listed(err: str, label: str) -> list[str]:
    """The ids on the report line that starts with `label` (without the "... and N more" tail)."""
    line = next(x for x in err.splitlines() if x.strip().startswith(label))
    return re.findall(r"camp\d{3}", line)


def test_every_campaign_sent_at_once_and_acknowledged_is_a_success(fake: type[FakeProducer], tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    path, ids = campaign_file(tmp_path, 25)
    code, out, err, _ = run(capsys, path)
    assert code == 0, err
    # a long file's ids do not bury the message: the first 20, then how many more
    assert out.strip() == f"published 25 campaign(s): {', '.join(ids[:20])} ... and 5 more" and err == ""
    [producer] = fake.made
    assert producer.sent == [(topics.CAMPAIGNS.name, cid) for cid in ids]  # keyed by campaign id, in file order
    assert producer.config["enable_idempotence"] and producer.config["acks"] == "all" and producer.stopped


def test_failed_deliveries_name_the_published_and_the_unconfirmed_campaigns(
        fake: type[FakeProducer], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    def settle(i: int, fut: asyncio.Future) -> None:
        if i in (2, 4):
            fut.set_exception(RequestTimedOutError())
        else:
            fut.set_result(None)

    monkeypatch.setattr(FakeProducer, "settle", staticmethod(settle))
    path, ids = campaign_file(tmp_path, 6)
    code, out, err, _ = run(capsys, path)
    assert code == 1 and out == "" and "Traceback" not in err
    assert "RequestTimedOutError" in err and "did not take 2 campaign(s)" in err, err
    assert listed(err, "published (4 of 6)") == ["camp000", "camp001", "camp003", "camp005"], err
    assert listed(err, "NOT confirmed (2 of 6") == ["camp002", "camp004"], err
    assert "`streambid campaign set` with the same file again is safe" in err


def test_the_deadline_ends_the_wait_at_once_with_a_partial_report(
        fake: type[FakeProducer], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    def settle(i: int, fut: asyncio.Future) -> None:
        if i < 10:
            fut.set_result(None)  # the rest are never acknowledged: the broker is gone

    monkeypatch.setattr(FakeProducer, "settle", staticmethod(settle))
    path, ids = campaign_file(tmp_path, 45)
    code, out, err, elapsed = run(capsys, path, "--timeout", "0.5")
    assert code == 1 and out == "" and "Traceback" not in err
    assert elapsed < 0.5 + 2.0, f"took {elapsed:.1f} s"
    assert "within 0.5 s (--timeout)" in err, err
    assert listed(err, "published (10 of 45)") == ids[:10], err
    assert listed(err, "NOT confirmed (35 of 45") == ids[10:30] and "... and 15 more" in err, err
    [producer] = fake.made
    assert producer._sender.closed and producer.stopped  # closed without the pending batches: nothing goes out later


def test_ctrl_c_during_the_wait_exits_130_with_a_partial_report(
        fake: type[FakeProducer], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    def settle(i: int, fut: asyncio.Future) -> None:
        if i < 3:
            fut.set_result(None)
        if i == 4:
            asyncio.get_running_loop().call_later(0.2, signal.raise_signal, signal.SIGINT)

    monkeypatch.setattr(FakeProducer, "settle", staticmethod(settle))
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, whoever started pytest
    try:
        path, ids = campaign_file(tmp_path, 5)
        code, out, err, elapsed = run(capsys, path)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert code == 130 and out == "" and "Traceback" not in err
    assert elapsed < 2.0 + 2.0, f"took {elapsed:.1f} s"
    assert err.startswith("streambid: interrupted"), err
    assert listed(err, "published (3 of 5)") == ids[:3], err
    assert listed(err, "NOT confirmed (2 of 5") == ids[3:], err


def test_a_broker_unreachable_from_the_start_keeps_its_message(
        fake: type[FakeProducer], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    async def unreachable(self: FakeProducer, topic: str, value: bytes, key: bytes) -> asyncio.Future:
        raise KafkaConnectionError("Unable to bootstrap from [('fake', 9092)]")

    monkeypatch.setattr(FakeProducer, "send", unreachable)
    path, _ = campaign_file(tmp_path, 3)
    with pytest.raises(SystemExit) as ended:
        run(capsys, path)
    message = str(ended.value.code)
    assert "cannot reach the Kafka broker at fake:9092" in message and "kafka.sh start" in message
    assert "published" not in message and "NOT confirmed" not in capsys.readouterr().err


def test_pause_and_show_of_one_campaign_read_only_the_messages_about_it() -> None:
    """Validating every campaign of a big account takes seconds: pause, resume and show ID skip the messages that
    are neither keyed by the campaign nor name it, and keep every one that may set it."""
    mine = orjson.dumps({"campaign": {"id": "c1"}})
    assert _about(b"c1", mine, "c1") and _about(b"", mine, "c1")  # keyed by it, or naming it under another key
    assert _about(b"c1", None, "c1")  # a tombstone keyed by it
    assert not _about(b"c10", orjson.dumps({"campaign": {"id": "c10"}}), "c1")  # a prefix is another campaign
    assert not _about(None, None, "c1")
    assert _about(b"c10", orjson.dumps({"campaign": {"id": "c10"}}), None)  # no id: every message


def test_state_topics_written_every_few_seconds_roll_segments_so_compaction_keeps_up() -> None:
    """Compaction only reads closed segments: a model or pacing topic that never rolls keeps every superseded
    snapshot, and a restarted bidder reads (and applies) all of them before the newest."""
    for spec in (topics.MODEL, topics.PACING, topics.LEARNER):
        assert spec.config["cleanup.policy"] == "compact" and int(spec.config["segment.ms"]) <= 3_600_000, spec.name


@pytest.mark.parametrize("broker", ["foo:bar", "127.0.0.1:99999", "127.0.0.1", ":9092"])
def test_a_malformed_broker_address_is_a_usage_error_naming_it(broker: str, capsys: pytest.CaptureFixture[str],
                                                               tmp_path: Path) -> None:
    path, _ = campaign_file(tmp_path, 1)
    for argv in (["campaign", "set", str(path)], ["campaign", "pause", "c1"], ["campaign", "show"]):
        with pytest.raises(SystemExit) as ended:
            main([*argv, "--broker", broker])
        err = capsys.readouterr().err
        assert ended.value.code == 2 and f"--broker {broker!r}" in err and "is not HOST:PORT" in err, err


def test_pause_and_show_stop_at_their_timeout_on_a_broker_that_never_answers(capsys: pytest.CaptureFixture[str]) -> None:
    """A listener that takes connections and says nothing (a wrong port) made pause and show wait 40 s."""
    import socket
    import threading

    silent = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    def accept_and_say_nothing() -> None:
        while True:
            try:
                held.append(silent.accept()[0])
            except OSError:  # closed at the end of the test
                return

    threading.Thread(target=accept_and_say_nothing, daemon=True).start()
    broker = f"127.0.0.1:{silent.getsockname()[1]}"
    try:
        for argv in (["campaign", "pause", "c1"], ["campaign", "show"]):
            t0 = time.monotonic()
            with pytest.raises(SystemExit) as ended:
                main([*argv, "--broker", broker, "--timeout", "1"])
            assert "did not answer within 1 s (--timeout); nothing was changed" in str(ended.value.code)
            assert time.monotonic() - t0 < 20, argv  # not aiokafka's own 40 s request timeout
    finally:
        silent.close()
        for s in held:
            s.close()
