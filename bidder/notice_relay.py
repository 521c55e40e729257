"""A notice is counted by the worker whose bid it is, wherever it lands.

`serve --workers N` runs N processes on one port, and an exchange's notice
lands on any of them.  Each worker holds its own bids' state: the replay
memory that counts a notice once, and (with budget leases) the reservation
its lease holds for the bid.  So the worker where a notice lands checks its
signature and expiry (a forged or expired notice is refused there) and hands
a valid notice signed for a sibling's bidder id, whole, to that sibling over a
Unix datagram socket named by bidder id, in a private directory the workers
share.  The sibling handles it as if it had landed there: refused if
replayed, else answered in its metrics, events, frequency counts and lease.
A sibling that is gone (restarted under a new id) has no state to keep; its
notice is handled where it landed, without touching that worker's lease.

Each sibling is reached over a datagram socket connected to its mailbox.  A
mailbox holds only a few datagrams (net.unix.max_dgram_qlen, often 10), so a
burst of notices finds it full; those wait here, in order, until the sibling
has read, and are never handled in the wrong place.  A connected socket is
writable exactly when the sibling's mailbox has room, so the wait costs
nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
from collections import deque
from collections.abc import Callable
from pathlib import Path

_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}").fullmatch
MAX_DATAGRAM = 65536
MAX_WAITING = 10_000  # notices waiting for one sibling's full mailbox; past this it is stuck, and they are handled here
log = logging.getLogger("streambid.serve")


def notice_bidder(query: str) -> str:
    """The bidder id (`n=`) of a notice query string, unverified; "" when absent."""
    start = query.find("n=")
    while start > 0 and query[start - 1] != "&" and query[start - 1] != "?":
        start = query.find("n=", start + 1)
    if start < 0:
        return ""
    end = query.find("&", start)
    return query[start + 2:end if end >= 0 else len(query)]


class _Sibling:
    """The way to one sibling's mailbox: a socket connected to it, and the notices waiting for room there."""

    __slots__ = ("sock", "waiting")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.waiting: deque[tuple[bytes, str, str]] = deque()  # (datagram, kind, query)


class NoticeRelay:
    """This worker's mailbox for its own bids' notices, and the way to a sibling's."""

    def __init__(self, directory: Path, bidder_id: str, handle: Callable[[str, str], object],
                 orphan: Callable[[str, str], object] | None = None) -> None:
        if not _ID(bidder_id):
            raise ValueError(f"bidder id {bidder_id!r} cannot name a socket")
        self.directory = directory
        self.bidder_id = bidder_id
        self.handle = handle  # (kind, query): a notice for one of our bids that landed on a sibling
        # (kind, query): a notice that waited for a sibling which then went away, to be handled here after all
        self.orphan = orphan
        self.forwarded = 0
        self.received = 0
        self.unreachable = 0
        self.waited = 0  # notices that found a sibling's mailbox full and waited for room
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._siblings: dict[str, _Sibling] = {}

    def path(self, bidder_id: str) -> Path:
        return self.directory / f"{bidder_id}.sock"

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        self.path(self.bidder_id).unlink(missing_ok=True)
        sock.bind(str(self.path(self.bidder_id)))
        self._sock, self._loop = sock, loop
        loop.add_reader(sock.fileno(), self._drain)

    def _drain(self) -> None:
        assert self._sock is not None
        while True:
            try:
                data = self._sock.recv(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            kind, sep, query = data.decode(errors="replace").partition("\n")
            if not sep or not kind:
                continue  # not from a sibling of this version
            self.received += 1
            try:
                self.handle(kind, query)
            except Exception:  # one bad notice must not stop the mailbox
                log.exception("relayed notice")

    def forward(self, owner: str, kind: str, query: str) -> bool:
        """Hand a notice (its kind and query string) to the sibling `owner`; False if it is this worker or cannot be
        reached, and the notice is to be handled here.  True once the sibling has it or it waits for room there."""
        if self._sock is None or owner == self.bidder_id or not _ID(owner):
            return False
        data = f"{kind}\n{query}".encode()
        sibling = self._siblings.get(owner) or self._connect(owner)
        if sibling is None or len(data) > MAX_DATAGRAM:
            self.unreachable += 1
            return False
        if not sibling.waiting:
            try:
                sibling.sock.send(data)
                self.forwarded += 1
                return True
            except (BlockingIOError, InterruptedError):
                pass  # its mailbox is full: the sibling is alive and will read
            except OSError:  # gone since we connected
                self._drop(owner)
                self.unreachable += 1
                return False
        if len(sibling.waiting) >= MAX_WAITING:
            self.unreachable += 1
            return False
        if not sibling.waiting:
            assert self._loop is not None
            self._loop.add_writer(sibling.sock.fileno(), self._send_waiting, owner)
        sibling.waiting.append((data, kind, query))
        self.waited += 1
        return True

    def _connect(self, owner: str) -> _Sibling | None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        try:
            sock.connect(str(self.path(owner)))
        except OSError:  # no such sibling (any more)
            sock.close()
            return None
        sibling = self._siblings[owner] = _Sibling(sock)
        return sibling

    def _send_waiting(self, owner: str) -> None:
        """The sibling's mailbox has room: send what waits for it, in order, until it is full again."""
        sibling = self._siblings.get(owner)
        if sibling is None:
            return
        waiting = sibling.waiting
        while waiting:
            try:
                sibling.sock.send(waiting[0][0])
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # the sibling went away with notices still waiting for it: they are handled here
                self._drop(owner)
                for _, kind, query in waiting:
                    self.unreachable += 1
                    if self.orphan is not None:
                        self.orphan(kind, query)
                return
            waiting.popleft()
            self.forwarded += 1
        assert self._loop is not None
        self._loop.remove_writer(sibling.sock.fileno())

    def _drop(self, owner: str) -> None:
        sibling = self._siblings.pop(owner, None)
        if sibling is None:
            return
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_writer(sibling.sock.fileno())
        sibling.sock.close()

    def close(self) -> None:
        """Stop relaying, losing no notice the exchange was answered 200 for: those still waiting for a sibling's
        mailbox are handled here (`orphan`), and those already in this worker's mailbox are handled before it
        closes.  Both used to be dropped: a stopping worker lost the bills of a burst.  The mailbox stops taking
        datagrams before its last read, so a sibling that sends one later is refused and handles the notice
        itself; one taken between that read and the close was lost."""
        for owner, sibling in list(self._siblings.items()):
            waiting = list(sibling.waiting)
            sibling.waiting.clear()
            self._drop(owner)
            for _, kind, query in waiting:
                self.unreachable += 1
                if self.orphan is not None:
                    self.orphan(kind, query)
        if self._sock is None:
            return
        self.path(self.bidder_id).unlink(missing_ok=True)  # siblings that look for it now handle our notices
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._sock.fileno())
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RD)  # later sends fail (EPIPE); what is queued can still be read
        self._drain()
        self._sock.close()
        self._sock = None
