"""A sibling worker's bid settles in that worker's lease, wherever its notice lands.

`serve --workers N` runs N processes on one port, and an exchange's notice
lands on any of them.  With budget leases, a bid's reservation is held by the
engine of the worker that bid (its bidder id is signed into the notice URL);
a loss or bill handled elsewhere would leave it held until it expires, and
charge the wrong lease.  So the worker where the notice lands handles it as
always (answer, event, frequency) but without touching its own lease, and
hands the lease effect (bill: cost; loss: release) to the bidding sibling over
a Unix datagram socket named by bidder id, in a private directory the workers
share.  A sibling that is gone (restarted under a new id) has no lease to
settle; its grant is spent or stranded, never overspent.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections.abc import Callable
from pathlib import Path

_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}").fullmatch
MAX_DATAGRAM = 65536


def notice_bidder(query: str) -> str:
    """The bidder id (`n=`) of a notice query string, unverified; "" when absent."""
    start = query.find("n=")
    while start > 0 and query[start - 1] != "&" and query[start - 1] != "?":
        start = query.find("n=", start + 1)
    if start < 0:
        return ""
    end = query.find("&", start)
    return query[start + 2:end if end >= 0 else len(query)]


class NoticeRelay:
    """This worker's mailbox for its own bids' notices, and the way to a sibling's."""

    def __init__(self, directory: Path, bidder_id: str, handle: Callable[[str, str, str, int], object]) -> None:
        if not _ID(bidder_id):
            raise ValueError(f"bidder id {bidder_id!r} cannot name a socket")
        self.directory = directory
        self.bidder_id = bidder_id
        self.handle = handle  # (kind, campaign, bid id, cost micros): a sibling's notice for one of our bids
        self.forwarded = 0
        self.received = 0
        self.unreachable = 0
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

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
            try:
                kind, campaign, bid_id, cost = data.decode().split("\n")
                settlement = (kind, campaign, bid_id, int(cost))
            except ValueError:
                continue  # not from a sibling of this version
            self.received += 1
            self.handle(*settlement)

    def forward(self, owner: str, kind: str, campaign: str, bid_id: str, cost: int) -> bool:
        """Hand a notice's lease effect to the sibling `owner`; False if it is this worker or cannot be reached."""
        if self._sock is None or owner == self.bidder_id or not _ID(owner):
            return False
        try:
            self._sock.sendto(f"{kind}\n{campaign}\n{bid_id}\n{cost}".encode(), str(self.path(owner)))
        except OSError:  # no such sibling (any more), or its mailbox is full
            self.unreachable += 1
            return False
        self.forwarded += 1
        return True

    def close(self) -> None:
        if self._sock is None:
            return
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        self._sock = None
        self.path(self.bidder_id).unlink(missing_ok=True)
