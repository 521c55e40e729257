"""Kafka adapters for the bidder: a non-blocking event producer and a state follower.

The bid path only appends to a bounded in-memory buffer; a background task
sends batches.  When Kafka cannot take them, batches spill to a local file
and are replayed, in order, once the broker answers again, so an outage costs
disk, not events.  The follower reads campaign, model and pacing topics from
the beginning and applies each message to the engine's snapshots.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import math
import os
import re
import stat
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka import errors as kafka_errors
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from aiokafka.partitioner import DefaultPartitioner

from streams import topics

log = logging.getLogger("streambid.kafka")


def topic_for(kind: str) -> str:
    return f"{topics.PREFIX}.{kind}"


async def ensure_topics(bootstrap: str, specs: tuple[topics.TopicSpec, ...] = topics.ALL) -> None:
    """Create the project's topics with their partitions and configs (idempotent)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [NewTopic(t.name, t.partitions, 1, topic_configs=t.config) for t in specs if t.name not in existing]
        if new:
            try:
                await admin.create_topics(new)
            except TopicAlreadyExistsError:
                pass
    finally:
        await admin.close()


async def read_values(bootstrap: str, topic: str, partition: int, start: int, end: int) -> list[tuple[int, bytes]]:
    """(offset, value) of every record at offsets [start, end) of one partition."""
    tp = TopicPartition(topic, partition)
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await c.start()
    out: list[tuple[int, bytes]] = []
    try:
        c.assign([tp])
        c.seek(tp, max(start, 0))
        while await c.position(tp) < end:
            for msg in (await c.getmany(tp, timeout_ms=1000, max_records=10_000)).get(tp, []):
                if msg.offset >= end:
                    return out
                out.append((msg.offset, msg.value))
        return out
    finally:
        await c.stop()


async def log_start_offsets(bootstrap: str, partitions: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
    """The first offset still on the log of each (topic, partition): where retention has cut it."""
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await c.start()
    try:
        found = await c.beginning_offsets([TopicPartition(t, p) for t, p in partitions])
        return {(tp.topic, tp.partition): offset for tp, offset in found.items()}
    finally:
        await c.stop()


async def read_event_ids(bootstrap: str, topic: str, partition: int, start: int, end: int) -> list[str]:
    """The `id` of every event at offsets [start, end) of one partition (what a restarted consumer already saw)."""
    ids: list[str] = []
    for _, value in await read_values(bootstrap, topic, partition, start, end):
        try:
            eid = orjson.loads(value)["id"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            continue  # dead-lettered when it was first consumed
        if type(eid) is str:  # an id of another type was dead-lettered too, and would not even hash
            ids.append(eid)
    return ids


Record = tuple[str, bytes, bytes]  # (topic, key, value)
Sent = tuple[Record, asyncio.Future]  # a record handed to the Kafka producer, and what it makes of it
MAX_REMEMBERED_KEYS = 100_000  # keys are campaign ids; past this many, partitions are computed each time
SPILL_AFTER_S = 0.25  # a batch unacknowledged this long is written down: a crash must not lose what was answered
# Events written to the spill file at a time from the event loop: encoding and writing a slice costs the bid path
# about a millisecond; a whole buffer (10^5 events) stalled every answer in flight for over a hundred.
SPILL_SLICE = 1000
HELD_WHEN_DISK_FAILS = 4  # times max_buffer held in memory while the spill file cannot be written; older are dropped
DISK_LOG_EVERY_S = 30.0  # a spill disk that keeps failing is logged once per this long
# What the broker refuses in a record itself: sending it again changes nothing.  Any other failure (a partition
# without a leader while a broker stops, a timeout, a sequence gap the idempotent producer cannot get past) says
# nothing about the record, which is sent again by a fresh producer.
_REFUSED_FOR_GOOD = tuple(getattr(kafka_errors, name) for name in (
    "MessageSizeTooLargeError", "RecordTooLargeError", "RecordListTooLargeError", "InvalidTopicError",
    "TopicAuthorizationFailedError", "CorruptRecordException", "UnsupportedForMessageFormatError",
) if hasattr(kafka_errors, name))
# A worker's spill file, and its companions that hold events: the batch that was in flight, a replay under way.
_WORKER_SPILL = re.compile(r"spill-(0|[1-9][0-9]*)\.jsonl(?:\.inflight|\.replay)?")


class SpillDirInUse(RuntimeError):
    """Another running `streambid serve` holds the spill directory."""


class SpillDirUnsafe(SpillDirInUse):
    """The spill directory is not this user's alone (another owner, or group or others may write to it): billing
    lines planted there would be replayed as this bidder's.  Refused wherever one in use is, its message saying
    what to do."""


class _DiskError(Exception):
    """A spill file could not be read, moved or removed: the disk's trouble, which says nothing about Kafka."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


def private_dir(directory: Path) -> None:
    """Make `directory` (0700 when new, whatever the umask) and check that it is this user's alone: whoever else
    can write there can plant events for the next start to replay.  Raises SpillDirUnsafe when it is not."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    try:
        directory.mkdir(mode=0o700)
        os.chmod(directory, 0o700)
    except FileExistsError:
        pass
    st = os.stat(directory)
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(directory))
    if st.st_uid != os.geteuid():
        raise SpillDirUnsafe(f"--spill-dir {directory} belongs to another user (uid {st.st_uid}; this bidder runs as uid "
                             f"{os.geteuid()}), so what it holds may not be this bidder's events; give a directory of "
                             "this user's own, or chown it to this user")
    if st.st_mode & 0o022:
        raise SpillDirUnsafe(f"--spill-dir {directory} can be written by group or others (mode {st.st_mode & 0o777:o}), "
                             f"so anyone could plant events there for this bidder to replay; run `chmod go-w {directory}` "
                             "or give a private directory")


def lock_spill_dir(directory: Path) -> IO[str]:
    """Hold `directory` for this process and the workers it forks, for as long as the returned file stays open.

    Two bidders sharing one spill directory replayed each other's files (sending billing events twice) and
    overwrote each other's in-flight copies.  Raises SpillDirInUse naming the holder's pid, SpillDirUnsafe for a
    directory others may write to (`private_dir`); OSError when the directory cannot be made.
    """
    private_dir(directory)
    try:  # never through a symbolic link: one truncated the file it pointed to
        fd = os.open(directory / "serve.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as e:
        if e.errno != errno.ELOOP:
            raise
        raise SpillDirUnsafe(f"--spill-dir {directory}: serve.lock is a symbolic link; remove it (the directory is to "
                             "hold this bidder's files only)") from None
    f = os.fdopen(fd, "r+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "?"
        f.close()
        raise SpillDirInUse(f"--spill-dir {directory} is in use by another streambid serve (pid {holder}); give each "
                            "bidder its own --spill-dir") from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def worker_spill(directory: Path, index: int) -> Path:
    """Where worker `index` of a serve spills its events."""
    return directory / f"spill-{index}.jsonl"


def left_over_spills(directory: Path, index: int, workers: int) -> list[Path]:
    """The spill files worker `index` of `workers` takes over: those of worker indexes no worker has any more (a
    serve stopped in an outage and started again with fewer workers).  Index k goes to worker k % workers, so each
    file has exactly one taker; and a spill directory belongs to one serve at a time (`lock_spill_dir`)."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    except OSError as e:
        log.error("cannot list the spill directory %s (%s): spill files of workers no longer running are not replayed; "
                  "make --spill-dir readable by this user and restart", directory, e.strerror or e)
        return []
    workers = max(workers, 1)
    found = {int(m[1]) for m in map(_WORKER_SPILL.fullmatch, names) if m}
    return [worker_spill(directory, k) for k in sorted(found) if k >= workers and k % workers == index]


async def _cancel(task: asyncio.Task | None) -> None:
    """Cancel a background task and wait until it has stopped, whatever it raised."""
    if task is not None:
        task.cancel()
        try:
            await task
        except (asyncio.CancelledError, Exception):
            pass


def refused_for_good(error: BaseException) -> bool:
    """True when the broker refused the record itself (too large, say); False when it may take it if sent again."""
    return isinstance(error, _REFUSED_FOR_GOOD)


def _acknowledged(future: asyncio.Future) -> bool:
    return future.done() and not future.cancelled() and future.exception() is None


def _companion(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


class EventProducer:
    """Bounded, batched, spill-to-disk event producer; `emit` never blocks or raises.

    One batch at a time goes to an idempotent Kafka producer, which retries it until the broker takes it, with
    sequence numbers that make a retry land once.  A batch not acknowledged within SPILL_AFTER_S is written down
    (`<spill>.inflight`), and everything emitted meanwhile goes to the spill file instead of waiting in memory,
    so a crash loses no event that has waited that long.  Not acknowledged within the request timeout, the
    broker counts as unreachable.  Once the batch is acknowledged the in-flight copy is deleted.  What waits on
    disk is replayed before anything newer, oldest first: the in-flight copy, then the spill file; then those a
    worker that no longer runs left (`take_over`).  A batch the producer gives up on (a stopping broker's
    partitions without a leader, a timeout) stays in, or goes back to, the front of what waits on disk, and a
    fresh producer sends it; only a record Kafka refuses itself (too large, say), whether the client or the
    broker says so, is dropped, logged and counted in `failed`.  So within a process every event reaches the
    topic once and in order; after a crash or a stop in mid-outage, what is on disk is replayed at the next start
    and events that might have made it already are sent again (consumers count event ids once).  A spill disk
    that fails is not an outage: events go on to Kafka while it answers.
    """

    def __init__(self, bootstrap: str, spill_path: Path, max_buffer: int = 100_000, linger_s: float = 0.05,
                 batch: int = 5000, request_timeout_ms: int = 5000, retry_s: float = 1.0) -> None:
        self.bootstrap = bootstrap
        self.spill_path = spill_path
        self.max_buffer = max_buffer
        self.linger_s = linger_s
        self.batch = batch
        self.request_timeout_s = request_timeout_ms / 1000
        self.retry_s = retry_s
        self.buffer: deque[Record] = deque()
        self.sent = 0
        self.spilled = 0
        self.replayed = 0
        self.failed = 0  # refused by Kafka for good (e.g. too large), or dropped when neither broker nor disk took it
        self.set_aside = 0  # unreadable spill lines (a write cut short by a crash or a full disk), moved to .corrupt
        self._spill_retry_at = -math.inf  # monotonic time before which a failing disk is not tried again
        self._disk_logged_at = -math.inf
        self.connected = False
        self._warned = False
        self._producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task | None = None
        self._inflight: list[Sent] = []
        self._inflight_at = 0.0
        self._inflight_written = False
        self._taken: list[Path] = []  # spill files of workers that no longer run, replayed after this one's own
        self._replay: IO[bytes] | None = None  # open file being replayed
        self._replaying = spill_path  # its path
        self._replay_end = 0  # its byte offset after the chunk in flight
        self._partitioner = DefaultPartitioner()
        self._taken_at = -math.inf  # loop time of the last take from the buffer
        self._partitions: dict[tuple[str, bytes], int] = {}  # (topic, key) -> partition, for this connection

    @classmethod
    def for_worker(cls, bootstrap: str, directory: Path, index: int, workers: int) -> EventProducer:
        """Worker `index`'s producer: its own spill file, and those it takes over from worker indexes that a serve
        with fewer workers no longer runs (`left_over_spills`)."""
        producer = cls(bootstrap, worker_spill(directory, index))
        producer.take_over(left_over_spills(directory, index, workers))
        return producer

    def take_over(self, spills: list[Path]) -> None:
        """Replay, once and after this producer's own, what other spill files hold (each with its in-flight copy
        and a replay under way): left by a worker that no longer runs, they would otherwise stay on disk unsent."""
        new = [s for s in spills if s != self.spill_path and s not in self._taken]
        if new:
            self._taken += new
            size = sum(self._size(path) for spill in new for path in self._files(spill))
            log.warning("taking over %s (%d bytes of events left on disk by workers no longer running); replaying them "
                        "once, after this worker's own", ", ".join(s.name for s in new), size)

    # -- paths ---------------------------------------------------------------------------

    @property
    def inflight_path(self) -> Path:
        return _companion(self.spill_path, ".inflight")

    @property
    def replay_path(self) -> Path:
        return _companion(self.spill_path, ".replay")

    @property
    def _progress_path(self) -> Path:
        return self._progress_of(self.replay_path)

    @property
    def corrupt_path(self) -> Path:
        return _companion(self.spill_path, ".corrupt")

    @staticmethod
    def _progress_of(path: Path) -> Path:
        """Where the replay of `path` notes how far it got."""
        return _companion(path, ".done")

    @staticmethod
    def _files(spill: Path) -> tuple[Path, Path, Path]:
        """The files of a spill path whose events wait to be sent, oldest first: the batch that was in flight,
        a replay under way, the spill file."""
        return _companion(spill, ".inflight"), _companion(spill, ".replay"), spill

    @property
    def running(self) -> bool:
        """Whether the sender task is alive (it retries every failure; False only after a stop)."""
        return self._task is not None and not self._task.done()

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    def on_disk(self) -> list[Record]:
        """What waits on disk, in the order it will be sent."""
        out: list[Record] = []
        for spill in (self.spill_path, *self._taken):
            for path in self._files(spill):
                data = self._read_bytes(path)
                out += self._decode(data[self._mark(path) if path != spill else 0:], set_aside=False)
        return out

    # -- the bid path ----------------------------------------------------------------------

    def emit(self, kind: str, key: str, event: dict[str, Any]) -> None:
        """The engine's sink: O(1), no I/O unless the buffer overflows (then the oldest half goes to disk)."""
        self.buffer.append((topic_for(kind), key.encode(), orjson.dumps(event)))
        if len(self.buffer) > self.max_buffer:
            self._overflow()

    def _overflow(self) -> None:
        """The oldest SPILL_SLICE (half of a smaller bound) to disk; while the disk refuses, memory holds up to
        HELD_WHEN_DISK_FAILS times the bound (tried again each retry_s, not on every event), then the oldest are
        dropped and counted in `failed`."""
        if time.monotonic() >= self._spill_retry_at:
            self._spill(self._take(max(1, min(SPILL_SLICE, self.max_buffer // 2))), sync=False)
        while len(self.buffer) > self.max_buffer * HELD_WHEN_DISK_FAILS:
            self.buffer.popleft()
            self.failed += 1

    def _take(self, n: int) -> list[Record]:
        return [self.buffer.popleft() for _ in range(min(n, len(self.buffer)))]

    # -- files -------------------------------------------------------------------------------

    @staticmethod
    def _encode(batch: list[Record]) -> bytes:
        return b"".join(orjson.dumps([t, k.decode(), v.decode()]) + b"\n" for t, k, v in batch)

    @staticmethod
    def _record(line: bytes) -> Record | None:
        """The record a spill line holds; None for a line that is not one (cut short by a crash or a full disk)."""
        try:
            t, k, v = orjson.loads(line)
        except (orjson.JSONDecodeError, ValueError, TypeError):
            return None
        if type(t) is not str or type(k) is not str or type(v) is not str:  # else one line would fail every send
            return None
        return t, k.encode(), v.encode()

    def _decode(self, data: bytes, set_aside: bool = True) -> list[Record]:
        """The records of `data`'s lines; unreadable lines are set aside (`_set_aside`), never allowed to stop the
        sender: one torn line used to end it for good, and every restart read the same file."""
        out, bad = [], []
        for line in data.splitlines():
            if line.strip():
                record = self._record(line)
                if record is None:
                    bad.append(line)
                else:
                    out.append(record)
        if bad and set_aside:
            self._set_aside(bad)
        return out

    def _set_aside(self, lines: list[bytes]) -> None:
        self.set_aside += len(lines)
        try:
            self._write(self.corrupt_path, b"".join(line + b"\n" for line in lines), append=True)
        except OSError:
            pass
        log.error("%d unreadable line(s) in the spill files (a write cut short by a crash or a full disk); kept in %s, "
                  "not sent", len(lines), self.corrupt_path)

    @staticmethod
    def _open_read(path: Path) -> IO[bytes]:
        """`path` opened for reading, never through a symbolic link (one could point the replay at any file)."""
        return os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb")

    @classmethod
    def _read_bytes(cls, path: Path) -> bytes:
        """What `path` holds; b"" when there is no such file."""
        try:
            f = cls._open_read(path)
        except FileNotFoundError:
            return b""
        with f:
            return f.read()

    @staticmethod
    def _size(path: Path) -> int:
        try:
            return os.lstat(path).st_size
        except OSError:
            return 0

    def _mark(self, path: Path) -> int:
        """The byte offset where the replay of `path` resumes: what its mark says, 0 without a readable one."""
        try:
            return int(self._read_bytes(self._progress_of(path)) or 0)
        except ValueError:
            return 0

    @staticmethod
    def _write(path: Path, data: bytes, append: bool, sync: bool = True) -> None:
        """Write or append `data`, never through a symbolic link, to a file only this user may read (billing lines
        carry prices and user hashes).  An append starts on a line of its own (a crash may have cut the last line
        short), and one that fails (disk full) is taken back, so the file never keeps half a record; a write that
        fails leaves no file."""
        if not path.parent.is_dir():
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_APPEND if append else os.O_TRUNC)
        fd = os.open(path, flags, 0o600)
        size = os.fstat(fd).st_size if append else 0
        try:
            if size and os.pread(fd, 1, size - 1) != b"\n":
                data = b"\n" + data
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if sync:
                os.fsync(fd)
        except OSError:
            try:
                if append:
                    os.ftruncate(fd, size)
                else:
                    os.unlink(path)
            except OSError:
                pass
            raise
        finally:
            os.close(fd)

    @classmethod
    def _replace_file(cls, path: Path, data: bytes) -> None:
        """Put `data` in place of `path` whole or not at all: the file keeps what it held if the disk refuses."""
        tmp = _companion(path, ".tmp")
        cls._write(tmp, data, append=False)
        tmp.replace(path)

    def _spill(self, batch: list[Record], sync: bool = True) -> bool:
        """Append to the spill file (fsync'd off the bid path: an outage must not lose what it spilled); a disk
        that refuses puts the batch back in front of memory (`_disk_failed`) and gives False."""
        if batch:
            try:
                self._write(self.spill_path, self._encode(batch), append=True, sync=sync)
            except OSError as e:
                self._disk_failed(batch, e)
                return False
            self.spilled += len(batch)
        return True

    async def _spill_memory(self) -> None:
        """What memory holds now, to the spill file SPILL_SLICE events at a time with the loop let in between (the
        answers in flight go on), fsync'd once at the end.  Events emitted meanwhile queue behind them in memory,
        and an overflow meanwhile spills from the same front, so the file keeps their order."""
        left = len(self.buffer)
        while left > 0:
            n = min(left, SPILL_SLICE)
            left -= n
            if not self._spill(self._take(n), sync=left <= 0) or left <= 0:
                return
            await asyncio.sleep(0)

    def _unspill(self, batch: list[Record]) -> None:
        """Put records back at the *front* of the spill file: they precede anything spilled since."""
        if batch:
            try:
                self._replace_file(self.spill_path, self._encode(batch) + self._read_bytes(self.spill_path))
            except OSError as e:
                self._disk_failed(batch, e)
                return
            self.spilled += len(batch)

    def _write_down(self, records: list[Record]) -> bool:
        """Write the live batch in flight to `.inflight` (a replayed chunk is on disk already); False if the disk
        refused it, which is logged and tried again after retry_s, with the broker still counted as connected."""
        if self._inflight_written or self._replay is not None:
            return True
        try:
            self._progress_of(self.inflight_path).unlink(missing_ok=True)  # a crash's mark must not skip into it
            self._write(self.inflight_path, self._encode(records), append=False)
        except OSError as e:
            self._disk_trouble(e)
            return False
        self._inflight_written = True
        self.spilled += len(records)
        return True

    def _disk_failed(self, batch: list[Record], error: OSError) -> None:
        """The spill disk refused `batch` (full, or not writable): it goes back in front of memory, which holds it
        until the broker or the disk takes it (up to HELD_WHEN_DISK_FAILS times the buffer's bound)."""
        self.buffer.extendleft(reversed(batch))
        self._disk_trouble(error)

    def _disk_trouble(self, error: OSError, what: str = "write") -> None:
        """A spill file the disk refused: said at most once per DISK_LOG_EVERY_S, and the disk is tried again only
        after retry_s.  Nothing here touches `connected`: a full disk is no Kafka outage."""
        now = time.monotonic()
        self._spill_retry_at = now + self.retry_s
        if now - self._disk_logged_at >= DISK_LOG_EVERY_S:
            self._disk_logged_at = now
            log.error("cannot %s the spill file %s (%s); %d event(s) held in memory until Kafka or the disk takes them, "
                      "%d dropped so far: free disk space, or give --spill-dir a writable disk", what,
                      error.filename or self.spill_path, error.strerror or error, len(self.buffer), self.failed)

    # -- the sender ------------------------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def _connect(self) -> AIOKafkaProducer:
        p = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5, acks="all", enable_idempotence=True,
                             request_timeout_ms=int(self.request_timeout_s * 1000), max_batch_size=256 * 1024)
        try:
            await p.start()
        except BaseException:
            await self._stop_quietly(p)
            raise
        return p

    async def _run(self) -> None:
        while True:
            try:
                if self._producer is None:
                    self._producer = await self._connect()
                    self._partitions.clear()
                    self._back()
                if self._inflight:
                    await self._await_inflight()
                elif not await self._replay_next():
                    wait = self._linger_left()
                    if wait > 0:
                        await asyncio.sleep(wait)
                        continue
                    batch = self._take(self.batch)
                    if batch:
                        self._taken_at = asyncio.get_running_loop().time()
                        await self._enqueue(batch)
                    else:
                        await asyncio.sleep(self.linger_s)
            except asyncio.CancelledError:
                raise
            except _DiskError as e:  # what waits on disk cannot be read now; the broker is no less there for it
                self._disk_trouble(e.error, "use")
                await asyncio.sleep(self.retry_s)
            except (KafkaError, OSError) as e:  # no broker to start with, or a send that could not even be queued
                self._lost(type(e).__name__)
                await self._spill_memory()
                await asyncio.sleep(self.retry_s)
            except Exception as e:  # a bug must not end the sender: events would wait in memory and on disk for good
                log.error("event sender: unexpected %s (%s); retrying in %.1fs", type(e).__name__, e, self.retry_s,
                          exc_info=e)
                await self._spill_memory()
                await asyncio.sleep(self.retry_s)

    def _linger_left(self) -> float:
        """Seconds to let events gather before the next take: a produce round costs about the same for ten events
        as for a thousand, and taking whatever arrived while the last round was acknowledged made rounds of a
        handful.  A full batch goes at once."""
        if len(self.buffer) >= self.batch:
            return 0.0
        return self._taken_at + self.linger_s - asyncio.get_running_loop().time()

    def _lost(self, why: str) -> None:
        if self.connected or not self._warned:
            log.warning("kafka unavailable (%s); spilling events to %s", why, self.spill_path)
            self._warned = True
        self.connected = False

    def _back(self) -> None:
        if not self.connected and self._warned:
            log.warning("kafka reachable again; replaying what was spilled")
        self.connected = True

    def _refuse(self, refused: list[tuple[Record, BaseException]]) -> None:
        """Records Kafka refuses for good (sending them again changes nothing): dropped, counted in `failed`, and
        logged by topic, error and size, never by content (billing lines carry prices and user hashes)."""
        if not refused:
            return
        self.failed += len(refused)
        sizes: dict[tuple[str, str], list[int]] = {}
        for (topic, key, value), error in refused:
            sizes.setdefault((topic, type(error).__name__), []).append(len(key) + len(value))
        for (topic, why), found in sizes.items():
            log.error("kafka refused %d event(s) on %s for good (%s; largest %d bytes): dropped and counted in `failed`; "
                      "check the topic's max.message.bytes and this bidder's rights on it", len(found), topic, why,
                      max(found))

    async def _enqueue(self, batch: list[Record], replay_offsets: list[int] | None = None) -> None:
        """Hand `batch` to the Kafka producer; what could not be queued goes back to disk, in front.

        Live events go as one record batch per partition (`_enqueue_grouped`).  A replayed chunk goes event by
        event, in file order, so that after a failure the rest of it is a suffix of the file; an event the client
        refuses for good (over max_request_size, say) is passed over, so one event cannot hold up all the rest.
        """
        assert self._producer is not None
        self._inflight_at = asyncio.get_running_loop().time()
        self._inflight_written = False
        if replay_offsets is None:
            await self._enqueue_grouped(batch)
            return
        assert self._replay is not None
        refused: list[tuple[Record, BaseException]] = []
        try:
            for i, (t, k, v) in enumerate(batch):
                try:
                    future = await self._producer.send(t, v, key=k)
                except KafkaError as e:
                    if not refused_for_good(e):  # the rest stays in the replay file, from here
                        self._replay_end = replay_offsets[i]
                        self._replay.seek(self._replay_end)
                        raise
                    refused.append(((t, k, v), e))
                else:
                    self._inflight.append(((t, k, v), future))
        finally:
            self._refuse(refused)

    async def _enqueue_grouped(self, batch: list[Record]) -> None:
        """Queue live events as record batches, one per partition, each on the partition `send` would pick.

        `send` per event (a coroutine, a partitioner call and an accumulator lookup each) cost a bidder more than a
        tenth of its core.  Each partition's events keep their order, the only order Kafka keeps.  Events of a
        topic Kafka refuses for good (this bidder may not write to it, say) are dropped and counted.
        """
        assert self._producer is not None
        queued = bytearray(len(batch))  # 1: queued, or refused for good
        refused: list[tuple[Record, BaseException]] = []
        try:
            groups: dict[tuple[str, int], list[int]] = {}
            for i, (t, k, _) in enumerate(batch):
                p = self._partitions.get((t, k))
                if p is None:
                    try:
                        p = await self._partition_for(t, k)  # may wait for metadata, and fail
                    except KafkaError as e:
                        if not refused_for_good(e):
                            raise
                        refused.append((batch[i], e))
                        queued[i] = 1
                        continue
                groups.setdefault((t, p), []).append(i)
            for (t, p), members in groups.items():
                start = 0
                while start < len(members):
                    builder, end = self._producer.create_batch(), start
                    # the first record always fits; the builder says None once the batch is full
                    while end < len(members) and builder.append(key=batch[members[end]][1], value=batch[members[end]][2],
                                                                timestamp=None) is not None:
                        end += 1
                    future = await self._producer.send_batch(builder, t, partition=p)
                    for i in members[start:end]:
                        self._inflight.append((batch[i], future))
                        queued[i] = 1
                    start = end
        except BaseException:  # a failure, or a stop that cancels the sender here: what was not queued waits on disk
            self._unspill([r for r, q in zip(batch, queued, strict=True) if not q])
            raise
        finally:
            self._refuse(refused)

    async def _partition_for(self, topic: str, key: bytes) -> int:
        """The partition `send` picks for `key`: the default murmur2 partitioner, as Java clients use, so every
        producer of a topic puts a campaign's events on the same partition.  Remembered per key until the next
        connection (a topic that gains partitions moves keys only then)."""
        assert self._producer is not None
        parts = sorted(await self._producer.partitions_for(topic))
        p = self._partitioner(key, parts, parts)
        if len(self._partitions) < MAX_REMEMBERED_KEYS:
            self._partitions[(topic, key)] = p
        return p

    async def _await_inflight(self) -> None:
        futures = [f for _, f in self._inflight]
        _, pending = await asyncio.wait(futures, timeout=max(self.linger_s, 0.05))
        loop = asyncio.get_running_loop()
        if pending:
            waited = loop.time() - self._inflight_at
            if self.connected and waited > self.request_timeout_s:
                self._lost(f"no acknowledgement in {self.request_timeout_s:.1f}s")
            if (waited > SPILL_AFTER_S or not self.connected) and time.monotonic() >= self._spill_retry_at:
                self._write_down([r for r, _ in self._inflight])
                await self._spill_memory()
            return
        errors = [(r, f.exception()) for r, f in self._inflight]
        self._refuse([(r, e) for r, e in errors if e is not None and refused_for_good(e)])
        again = [(r, e) for r, e in errors if e is not None and not refused_for_good(e)]
        acked = sum(e is None for _, e in errors)
        self.sent += acked
        self._inflight = []
        if again:
            await self._send_again([r for r, _ in again], type(again[0][1]).__name__)
            return
        self._back()
        if self._inflight_written:
            self._inflight_written = False
            try:
                self.inflight_path.unlink(missing_ok=True)
            except OSError as e:  # it is sent again from the file at the next start; consumers count it once
                self._disk_trouble(e, "remove")
        if self._replay is not None:
            self.replayed += acked
            self._mark_replayed(self._replay_end)

    def _mark_replayed(self, end: int) -> None:
        """Note how far the file being replayed has been sent, for a restart to resume there; a disk that refuses
        the note costs only events sent again after a crash."""
        try:
            self._write(self._progress_of(self._replaying), str(end).encode(), append=False)
        except OSError as e:
            self._disk_trouble(e)

    async def _send_again(self, records: list[Record], why: str) -> None:
        """The producer gave up on `records`: back to disk, in front of anything spilled since, and a fresh producer
        (a batch given up on leaves a gap in the old one's sequence numbers, which it would never get past)."""
        if self._replay is not None:  # a replayed chunk goes again from its last mark; what made it goes twice
            self._replay.close()
            self._replay = None
        elif self._inflight_written:  # `.inflight` is replayed first; cut to what was not acknowledged if the disk lets
            try:
                self._replace_file(self.inflight_path, self._encode(records))
            except OSError as e:
                self._disk_trouble(e)
        else:
            self._unspill(records)
        self._inflight_written = False
        self._lost(why)
        if self._producer is not None:
            await self._stop_quietly(self._producer, wait_s=1.0)
            self._producer = None
        await asyncio.sleep(self.retry_s)

    async def _replay_next(self) -> bool:
        """Queue the next chunk of what waits on disk; False when nothing does."""
        try:
            chunk = self._next_chunk()
        except OSError as e:
            raise _DiskError(e) from e
        if chunk is None:
            return False
        offsets, records = chunk
        await self._enqueue(records, replay_offsets=offsets)
        if not self._inflight:  # Kafka refused every one of them for good: nothing to wait for
            self._mark_replayed(self._replay_end)
        return True

    def _next_chunk(self) -> tuple[list[int], list[Record]] | None:
        """The next chunk of what waits on disk, as (byte offsets, records); None when nothing does.  Unreadable
        lines are set aside; a file read to its end is removed, with its mark."""
        while True:
            if self._replay is None:
                path = self._next_replay()
                if path is None:
                    return None
                try:
                    self._replay, self._replaying = self._open_read(path), path
                except OSError as e:
                    if e.errno != errno.ELOOP:
                        raise
                    path.unlink()  # the link only: what it points to is no spill of ours, and must not hold the rest up
                    log.error("%s is a symbolic link, not a spill file: removed, not replayed; check what else can "
                              "write to --spill-dir %s", path, path.parent)
                    continue
                self._replay.seek(self._mark(path))
            offsets: list[int] = []
            records: list[Record] = []
            bad: list[bytes] = []
            while len(records) < self.batch:
                at = self._replay.tell()
                line = self._replay.readline()
                if not line:
                    break
                if line.strip():
                    record = self._record(line)
                    if record is None:
                        bad.append(line.rstrip(b"\n"))
                    else:
                        offsets.append(at)
                        records.append(record)
            if bad:
                self._set_aside(bad)
            if records:
                self._replay_end = self._replay.tell()
                return offsets, records
            self._replay.close()
            self._replay = None
            self._replaying.unlink()
            self._progress_of(self._replaying).unlink(missing_ok=True)

    def _next_replay(self) -> Path | None:
        """The next file to replay, oldest first: for this producer's spill path, then each one taken over, the
        batch that was in flight (`.inflight`), a replay under way (`.replay`), then the spill file, renamed to
        `.replay` so that new spills start a new file.  None when nothing waits on disk.

        The in-flight copy is replayed where it is, never copied into the spill file: on a full disk that copy
        failed, and the only one on disk was deleted all the same."""
        for spill in (self.spill_path, *self._taken):
            inflight, replay, _ = self._files(spill)
            if inflight.exists():
                return inflight
            if replay.exists():
                return replay
            if spill.exists():
                self._progress_of(replay).unlink(missing_ok=True)  # a mark left by a crash, of the file before
                spill.replace(replay)
                return replay
            if spill != self.spill_path:
                self._taken.remove(spill)
                for path in (inflight, replay):
                    self._progress_of(path).unlink(missing_ok=True)
                log.warning("replayed everything %s held", spill.name)
        return None

    @staticmethod
    async def _stop_quietly(producer: AIOKafkaProducer, wait_s: float = 5.0) -> None:
        try:
            await asyncio.wait_for(producer.stop(), wait_s)
            return
        except Exception:  # it waits for every queued batch, which a broker that is away never takes
            pass
        # Stop its sender outright: a batch it still holds (and that we wrote to disk) must not reach the broker
        # later, from a producer we have let go, as a duplicate of what the next start replays.
        try:
            await producer._sender.close()
            await producer.client.close()
        except Exception:  # already broken; nothing left to send with
            pass

    async def flush(self, timeout: float = 10.0) -> bool:
        """Wait until nothing waits in memory, while the broker answers (e.g. before shutdown); True if so."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while (self.buffer or self._inflight) and loop.time() < end and self.connected:
            await asyncio.sleep(0.02)
        return not (self.buffer or self._inflight)

    async def stop(self) -> None:
        """Send what can be sent; what cannot waits on disk for the next start.  If the disk refuses it too, Kafka
        is given it while it answers.  The Kafka producer is stopped in any case, and whatever neither took is
        counted in `failed` and logged: a full disk used to end the stop with the buffer neither sent nor kept."""
        at_risk: list[Sent] = []  # handed to Kafka and on no disk: lost unless acknowledged before the producer stops
        try:
            await self.flush()
            await _cancel(self._task)
            at_risk = self._put_away_inflight()
            self._spill(self._take(len(self.buffer)))
            if self.buffer and self.connected and self._producer is not None:
                at_risk += await self._hand_over_rest()
        finally:
            if self._producer is not None:
                producer, self._producer = self._producer, None
                await self._stop_quietly(producer, 5.0 if self.connected else 0.0)
            self._spill(self._take(len(self.buffer)))  # a stop cut short still writes down what it can
            self._count_lost(at_risk)

    def _put_away_inflight(self) -> list[Sent]:
        """At a stop, the unacknowledged part of the batch in flight: a replayed chunk is still in its file, a live
        one goes to `.inflight`; returns what the disk refused."""
        unacked = [(r, f) for r, f in self._inflight if not _acknowledged(f)]
        self._inflight = []
        if self._replay is not None:
            self._replay.close()
            self._replay = None
            return []
        if not unacked or self._write_down([r for r, _ in unacked]):
            return []
        return unacked

    async def _hand_over_rest(self) -> list[Sent]:
        """At a stop, the disk refused what is left in memory and the broker answers: queue it there, for the stop
        to wait on.  What cannot be queued stays in memory."""
        try:
            await asyncio.wait_for(self._enqueue_grouped(self._take(len(self.buffer))), self.request_timeout_s)
        except (TimeoutError, KafkaError):  # what was not queued went back to disk, or to memory if it still refuses
            pass
        queued, self._inflight = self._inflight, []
        return queued

    def _count_lost(self, at_risk: list[Sent]) -> None:
        """At exit: what neither Kafka acknowledged nor the disk took is gone, and counted in `failed`."""
        acked = sum(_acknowledged(f) for _, f in at_risk)
        self.sent += acked
        lost = len(at_risk) - acked + len(self.buffer)
        self.buffer.clear()
        if lost:
            self.failed += lost
            log.error("%d event(s) lost at exit: Kafka did not acknowledge them and the spill file %s could not be "
                      "written; free disk space on --spill-dir (or give it a writable disk) before the next stop",
                      lost, self.spill_path)


class StateFollower:
    """Reads the state topics from the beginning and hands each message to a callback.

    `from_end`: only what is written after it starts (lease grants: a bidder id is new with each process, so
    older grants are never for it); after a lost connection it resumes from the end again.
    `since`: from the first record stamped at or after `since()` (epoch ms), and from there again after a lost
    connection, so its handlers must take a record twice (billed impressions for the caps: since the day began).

    Catching up: on each (re)connection it notes where every partition ends and calls `on_behind`, then
    `on_caught_up` once it has handed over everything up to there, so a bidder can hold back what is costly to
    apply one message at a time (index rebuilds, model tables) and not bid on half-read state.  It yields to the
    event loop every `YIELD_S` of handing over: records already fetched come back without a pause, and a backlog
    of thousands must not hold the bid path.  `after_batch` runs once each batch is handed over, for what is
    cheaper applied together (a bulk edit of campaigns: one index rebuild).
    """

    BATCH = 2000  # messages asked for at once (a bulk edit of campaigns is one batch, so one rebuild)
    YIELD_S = 0.005  # longest run of handlers between two turns of the event loop (one handler may run longer)

    def __init__(self, bootstrap: str, handlers: dict[str, Callable[[bytes, bytes], None]], from_end: bool = False,
                 since: Callable[[], int] | None = None, on_behind: Callable[[], None] | None = None,
                 on_caught_up: Callable[[], None] | None = None, after_batch: Callable[[], None] | None = None) -> None:
        self.bootstrap = bootstrap
        self.handlers = handlers
        self.from_end = from_end
        self.since = since
        self.on_behind = on_behind
        self.on_caught_up = on_caught_up
        self.after_batch = after_batch
        self.applied = 0
        self.errors = 0
        self.caught_up = False  # this connection has handed over every message there was when it began
        self.behind: int | None = None  # messages left to that point (None: not known yet)
        self.lost = False  # cut off from the broker now: said once when it happens and once when it ends
        self._ends: dict[TopicPartition, int] = {}
        self._task: asyncio.Task | None = None
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            try:
                # no consumer group: every partition of every state topic, always from the beginning
                c = self._consumer = AIOKafkaConsumer(*self.handlers, bootstrap_servers=self.bootstrap,
                                                      enable_auto_commit=False, fetch_max_wait_ms=100,
                                                      auto_offset_reset="latest" if self.from_end else "earliest")
                await c.start()
                self._behind()
                if self.since is not None:
                    await self._seek_since(c, self.since())
                if self.lost:
                    log.warning("state follower reached kafka again")
                    self.lost = False
                await self._note_ends(c)
                await self._check_caught_up(c)
                while True:
                    batch = await c.getmany(timeout_ms=1000, max_records=self.BATCH)
                    turn = time.perf_counter()
                    for msgs in batch.values():
                        for msg in msgs:
                            self._hand_over(msg.topic, msg.key or b"", msg.value or b"")
                            if time.perf_counter() - turn > self.YIELD_S:
                                await asyncio.sleep(0)
                                turn = time.perf_counter()
                    if batch and self.after_batch is not None:
                        self._after_batch(self.after_batch)
                    if not self.caught_up:
                        await self._check_caught_up(c)
                    await asyncio.sleep(0)
            except asyncio.CancelledError:
                raise
            except (KafkaError, OSError) as e:
                if not self.lost:  # retried every second: one line per outage, not one per try
                    log.warning("state follower lost kafka (%s); bidding on last state, retrying", type(e).__name__)
                    self.lost = True
                await self._close()
                await asyncio.sleep(1.0)

    def _hand_over(self, topic: str, key: bytes, value: bytes) -> None:
        try:
            self.handlers[topic](key, value)
            self.applied += 1
        except Exception as e:  # a bad state message must not stop the follower
            self.errors += 1
            log.warning("ignored message on %s: %s", topic, e)

    def _after_batch(self, hook: Callable[[], None]) -> None:
        try:
            hook()
        except Exception:  # one bad apply must not stop the follower; the next batch tries again
            self.errors += 1
            log.exception("applying a batch of state messages")

    def _behind(self) -> None:
        self.caught_up, self.behind, self._ends = False, None, {}
        if self.on_behind is not None:
            self.on_behind()

    async def _note_ends(self, c: AIOKafkaConsumer) -> None:
        """Where every partition ends now: catching up means reaching these (from the end: nothing to catch up)."""
        if self.from_end:
            return
        await self._wait_assigned(c)
        tps = sorted(c.assignment())
        self._ends = await c.end_offsets(tps)

    async def _check_caught_up(self, c: AIOKafkaConsumer) -> None:
        behind = 0
        for tp, end in self._ends.items():
            behind += max(end - await c.position(tp), 0)
        self.behind = behind
        if behind == 0:
            self.caught_up = True
            if self.on_caught_up is not None:
                self.on_caught_up()

    @staticmethod
    async def _wait_assigned(c: AIOKafkaConsumer) -> None:
        for _ in range(200):  # without a group, every partition is assigned once the topics' metadata is in
            if c.assignment():
                return
            await asyncio.sleep(0.05)
        raise KafkaError("no partitions of the followed topics were assigned within 10 s")

    async def _seek_since(self, c: AIOKafkaConsumer, since_ms: int) -> None:
        """Move every partition of the topics to its first record stamped at or after `since_ms`."""
        await self._wait_assigned(c)
        tps = sorted(c.assignment())
        ends = await c.end_offsets(tps)  # asked first: a record sent meanwhile is at or past these
        found = await c.offsets_for_times(dict.fromkeys(tps, since_ms))
        for tp in tps:
            at = found.get(tp)
            c.seek(tp, ends[tp] if at is None else at.offset)  # none that recent: from the end as it was

    async def _close(self) -> None:
        """Best effort on a broken connection.  A consumer whose broker is gone can raise a CancelledError of its
        own (a fetch it cancelled) from stop(): that one must not cut its caller's shutdown short; ours goes on."""
        if self._consumer is not None:
            try:
                await self._consumer.stop()
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
            except Exception:
                pass
            self._consumer = None

    async def stop(self) -> None:
        await _cancel(self._task)
        await self._close()
